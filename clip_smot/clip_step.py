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

from .clip_model import ClipModel
from .encoders import fast_image_encoder
from .prompt import PromptLearner
from .runtime import autocast
from .smot import cam_mask, perturb, sample_thresholds, smoothing_eps, smot_loss

__all__ = ["LOSSES", "make_fit_step"]

LOSSES = ("smot", "ce")

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
) -> Step:
    """Build ``step(images, cams, labels) -> loss`` for prompt learning with SMOT (or plain CE).

    One step: draw one threshold per image (Beta(alpha, beta), from ``generator``, a CPU
    generator by default, so no GPU sync), mask each image where its CAM >= t (SPEC section 1),
    normalise originals and masked copies with CLIP's mean/std, encode the 2B images (frozen, no
    grad; open_clip ViTs through :class:`~clip_smot.encoders.ImageEncoder` with the weights cast
    once to ``precision``, other towers through ``encode_image``) and the K prompts
    (``learner``), logits = ``logit_scale.exp() * cos``, the SMOT loss,
    backward into the context, ``optimizer.step()``. With ``loss="ce"`` (CoOp) the masked copies
    are neither made nor encoded.

    Args:
        clip: the frozen model (its image encoder is used under ``torch.no_grad``).
        learner: the prompt learner; build it with ``precision="bf16"`` for a bf16 run so that the
            frozen text weights are cast once rather than by autocast at every step.
        optimizer: over ``learner.parameters()`` (the context only).
        loss: "smot" or "ce".
        lam, T, alpha, beta, perturbation, sigma: SMOT's options (SPEC section 1).
        precision: "bf16", "fp16" or "fp32": the autocast around both encoders.
        generator: generator of the thresholds (its device is where they are drawn).
        noise_generator: generator of the noise of ``perturbation="noise"`` (on the images' device).

    Returns:
        ``step(images [B, 3, S, S] in [0, 1], cams [B, S, S] in [0, 255], labels [B]) -> loss``,
        all on the context's device; the loss is a detached 0-dim float32 tensor.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    device = learner.ctx.device
    mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)
    model = clip.model
    image_encoder = fast_image_encoder(model, precision)
    if image_encoder is None:  # not an open_clip ViT: open_clip's own path under autocast
        image_encoder = model.encode_image

    def step(images: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B = images.shape[0]
        if loss == "smot":
            t = sample_thresholds(B, alpha, beta, generator=generator).to(device, non_blocking=True)  # [B]
            masked = perturb(images, cam_mask(cams, t), perturbation, sigma, noise_generator)
            batch = torch.cat([images, masked])  # [2B, 3, S, S]: originals, then masked copies
        else:
            batch = images
        with autocast(device, precision):
            with torch.no_grad():
                image_features = image_encoder((batch - mean) / std)  # [2B, e]
            text_features = learner()  # [K, e]
        image_features = F.normalize(image_features.float(), dim=-1)
        text_features = F.normalize(text_features.float(), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.t()  # [2B, K]
        if loss == "smot":
            value = smot_loss(logits[:B], logits[B:], labels, smoothing_eps(t, T), lam)
        else:
            value = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        return value.detach()

    return step
