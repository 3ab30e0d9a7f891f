"""One CLIP-track training step: images and their CAM-masked copies -> SMOT loss -> context update.

``make_fit_step`` returns the step used by ``clip-smot fit`` and by ``benchmarks/fit_step.py``,
so that the benchmark times exactly the training code. The step keeps everything on the
device of the context and never waits for the GPU (no ``.item()``, no host-side branching on
device values): the loss comes back as a 0-dim tensor.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from clip_smot.clip.encoders import fast_image_encoder
from clip_smot.clip.model import ClipModel
from clip_smot.clip.prompt import PromptLearner
from clip_smot.common.device import autocast
from clip_smot.smot import (
    cam_mask,
    label_smoothing_ce,
    logitnorm_loss,
    perturb,
    sample_thresholds,
    smoothing_eps,
    smot_loss,
)

__all__ = ["LOSSES", "make_fit_step"]

LOSSES = ("smot", "ce", "ls", "logitnorm")
# the baselines: a loss of the originals' logits alone (docs/method.md §1); ls: label smoothing
# eps 0.1, logitnorm: temperature 0.04 (the ResNet track's train --method ls / logitnorm)
_BASELINES = {"ce": F.cross_entropy, "ls": label_smoothing_ce, "logitnorm": logitnorm_loss}

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_fit_step(
    clip: ClipModel,
    learner: PromptLearner,
    optimizer: torch.optim.Optimizer,
    *,
    loss: str = "smot",
    lam: float = 0.1,
    T: float = 200.0,
    alpha: float = 50.0,
    beta: float = 20.0,
    perturbation: str = "zero",
    sigma: float = 0.1,
    precision: str = "bf16",
    generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
    cuda_graph: bool = False,
    compile_image: bool = False,
    overlap: bool = False,
) -> Step:
    """Build ``step(images, cams, labels) -> loss`` for prompt learning with SMOT (or plain CE).

    One step: draw one threshold per image (Beta(alpha, beta), from ``generator``, a CPU
    generator by default, so no GPU sync), mask each image where its CAM >= t (docs/method.md §1),
    normalise originals and masked copies with CLIP's mean/std, encode the 2B images (frozen, no
    grad; open_clip ViTs through :class:`~clip_smot.clip.encoders.ImageEncoder` with the weights cast
    once to ``precision``, other towers through ``encode_image``) and the K prompts
    (``learner``), logits = ``logit_scale.exp() * cos``, the SMOT loss,
    backward into the context, ``optimizer.step()``. With a baseline loss (``"ce"``: CoOp;
    ``"ls"``, ``"logitnorm"``) the masked copies are neither made nor encoded.

    Args:
        clip: the frozen model (its image encoder is used under ``torch.no_grad``).
        learner: the prompt learner; build it with ``precision="bf16"`` for a bf16 run so that the
            frozen text weights are cast once rather than by autocast at every step.
        optimizer: over ``learner.parameters()`` (the context only).
        loss: "smot", or a baseline on the originals: "ce" (CoOp), "ls" (label smoothing, eps
            0.1), "logitnorm" (LogitNorm, temperature 0.04).
        lam, T, alpha, beta, perturbation, sigma: SMOT's options (docs/method.md §1).
        precision: "bf16", "fp16" or "fp32": the autocast around both encoders.
        generator: generator of the thresholds (its device is where they are drawn).
        noise_generator: generator of the noise of ``perturbation="noise"`` (on the images' device).
        cuda_graph: on CUDA, capture the forward and backward pass in a CUDA graph (one per
            input shape) and replay it: the same kernels without per-kernel launch cost. The
            optimizer step runs eagerly after the replay (so a scheduler's lr applies). The
            context's ``.grad`` then belongs to the graph: do not zero it between steps.
        compile_image: ``torch.compile`` the image encoder's blocks (open_clip ViTs; compiled at
            the first step). The text layers are compiled on the learner
            (``learner.encoder.compile_layers()``).
        overlap: on CUDA, encode the images on a second stream while the text encoder's forward
            pass runs on the current one (the frozen image encoder does not depend on the context,
            so the result is the same; the two only share the GPU). Ignored on other devices.

    Returns:
        ``step(images [B, 3, S, S] in [0, 1], cams [B, S, S] in [0, 255], labels [B]) -> loss``,
        all on the context's device (``cams`` may be None with a baseline loss, which draws no
        thresholds); the loss is a detached 0-dim float32 tensor.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    device = learner.ctx.device
    forward_backward = _make_forward_backward(
        clip, learner, loss=loss, lam=lam, T=T, perturbation=perturbation, sigma=sigma, precision=precision,
        noise_generator=noise_generator, cuda_graph=cuda_graph, compile_image=compile_image, overlap=overlap)
    thresholds = _make_thresholds(loss, alpha, beta, generator, device)
    if not cuda_graph:
        return _eager_step(forward_backward, thresholds, optimizer)
    if device.type != "cuda":
        raise ValueError("cuda_graph needs the context on a CUDA device")
    if perturbation == "noise" and noise_generator is not None:
        raise ValueError("cuda_graph draws the noise from the default CUDA generator: pass noise_generator=None")
    return _graph_step(forward_backward, thresholds, optimizer, learner)


def _make_forward_backward(
    clip: ClipModel, learner: PromptLearner, *, loss: str, lam: float, T: float, perturbation: str, sigma: float,
    precision: str, noise_generator: torch.Generator | None, cuda_graph: bool, compile_image: bool, overlap: bool,
) -> Callable:
    """``forward_backward(images, cams, labels, t) -> loss``: both encoders, the loss, its
    backward into ``learner.ctx.grad`` (no optimizer step); see :func:`make_fit_step`."""
    device = learner.ctx.device
    mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
    model = clip.model
    image_encoder = fast_image_encoder(model, precision)
    if image_encoder is None:  # not an open_clip ViT: open_clip's own path under autocast
        image_encoder = model.encode_image
    elif compile_image:
        image_encoder.compile_layers()

    # Memory made on the image stream is only reused there, and each step's fork first waits for
    # everything queued before it on the main stream: no block is recycled while still being read.
    image_stream = torch.cuda.Stream(device) if overlap and device.type == "cuda" else None

    def encode_images(images, cams, t) -> torch.Tensor:
        """Features [2B, e] of the originals, then their masked copies ([B, e] for plain CE)."""
        if loss == "smot":
            masked = perturb(images, cam_mask(cams, t), perturbation, sigma, noise_generator)
            batch = torch.cat([images, masked])  # [2B, 3, S, S]
        else:
            batch = images
        with torch.no_grad():
            return image_encoder((batch - mean) / std)

    def forward_backward(images, cams, labels, t) -> torch.Tensor:
        """The loss of one batch, back-propagated into ``learner.ctx.grad`` (no optimizer)."""
        B = images.shape[0]
        with autocast(device, precision, cache=not cuda_graph):
            if image_stream is None:
                image_features = encode_images(images, cams, t)  # [2B, e]
                text_features = learner()  # [K, e]
            else:  # fork: the image side waits for its inputs, then runs beside the text encoder
                main = torch.cuda.current_stream(device)
                image_stream.wait_stream(main)
                with torch.cuda.stream(image_stream):
                    image_features = encode_images(images, cams, t)
                text_features = learner()
                main.wait_stream(image_stream)  # join (also what a CUDA-graph capture requires)
        image_features = F.normalize(image_features.float(), dim=-1)
        text_features = F.normalize(text_features.float(), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.t()  # [2B, K]
        if loss == "smot":
            value = smot_loss(logits[:B], logits[B:], labels, smoothing_eps(t, T), lam)
        else:
            value = _BASELINES[loss](logits, labels)
        value.backward()
        return value.detach()

    return forward_backward


def _make_thresholds(loss: str, alpha: float, beta: float, generator: torch.Generator | None,
                     device: torch.device) -> Callable[[int], torch.Tensor | None]:
    """``thresholds(B)``: SMOT's thresholds [B] on ``device`` (None for plain CE, which draws
    nothing from ``generator``)."""

    def thresholds(B: int) -> torch.Tensor | None:
        if loss != "smot":
            return None
        # drawn where the generator lives (the CPU by default: its rejection loop never syncs a GPU)
        t = sample_thresholds(B, alpha, beta, generator=generator)  # [B]
        if device.type == "cuda" and t.device.type == "cpu":
            t = t.pin_memory()  # from pinned memory the copy is truly asynchronous (pageable: staged by the driver)
        return t.to(device, non_blocking=True)

    return thresholds


def _eager_step(forward_backward: Callable, thresholds: Callable, optimizer: torch.optim.Optimizer) -> Step:
    """The step run eagerly: zero the gradient, forward and backward, ``optimizer.step()``."""

    def step(images: torch.Tensor, cams: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        value = forward_backward(images, cams, labels, thresholds(images.shape[0]))
        optimizer.step()
        return value

    return step


def _graph_step(forward_backward: Callable, thresholds: Callable, optimizer: torch.optim.Optimizer,
                learner: PromptLearner) -> Step:
    """The step with forward and backward replayed as a CUDA graph, captured once per input
    shape; the optimizer step runs eagerly after the replay."""
    device = learner.ctx.device
    graphs: dict[tuple, tuple] = {}  # input shapes -> (graph, static inputs, static loss, static grad)

    def capture(*inputs):
        static = [None if x is None else x.clone() for x in inputs]  # the graph reads these buffers
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm up (lazy initialisations) outside the capture
            for _ in range(3):
                learner.ctx.grad = None
                forward_backward(*static)
        torch.cuda.current_stream(device).wait_stream(side)
        learner.ctx.grad = None  # the captured backward allocates the gradient in the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            value = forward_backward(*static)
        return graph, static, value, learner.ctx.grad

    def step(images: torch.Tensor, cams: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        inputs = (images, cams, labels, thresholds(images.shape[0]))
        key = tuple(None if x is None else (tuple(x.shape), x.dtype) for x in inputs)
        if key not in graphs:
            graphs[key] = capture(*inputs)
        graph, static, value, grad = graphs[key]
        for dst, src in zip(static, inputs):
            if src is not None:
                dst.copy_(src, non_blocking=True)
        graph.replay()  # writes the loss into ``value`` and the gradient into ``grad``
        learner.ctx.grad = grad
        optimizer.step()
        return value.clone()

    return step
