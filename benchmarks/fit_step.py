"""Time one CLIP prompt-learning step: a CoOp-style reference against clip-smot's SMOT fit step.

Both steps run in one process on the same random-weight open_clip model (default ViT-B-16:
the same compute as the pretrained weights) with K class prompts (default: the 1000 ImageNet
class names).

(a) reference: CoOp's step as CoOp runs it: [SOS] [ctx] [name . EOT pad] over all 77 positions
    through open_clip's own transformer with its float causal mask, the model and the context
    in fp16 (CoOp's default; fp32 on CPU, where fp16 is not supported, or with
    ``--reference-precision fp32``), the B images through the image encoder, cross-entropy,
    backward into the context, SGD step.
(b) ours: ``clip_smot.clip_step.make_fit_step`` (the step ``clip-smot fit`` runs): B images and
    B CAM-masked copies, the K prompts through ``PromptLearner``'s truncated, shared-prefix
    encoder (text weights cast once to the step's precision), SMOT loss, backward, SGD step.

Warm-up steps, then the median of ``--steps`` timed steps (CUDA events on a GPU). The last line
printed is one JSON object.

    python benchmarks/fit_step.py --device cpu --classes 20 --batch-size 4 --steps 3
    python benchmarks/fit_step.py --device cuda            # ViT-B-16, K = 1000, batch 32 + 32
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clip_smot.clip_model import load_clip  # noqa: E402
from clip_smot.clip_step import make_fit_step  # noqa: E402
from clip_smot.prompt import PromptLearner  # noqa: E402
from clip_smot.runtime import resolve_device  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 16  # CoOp's default context length
LR, MOMENTUM, WEIGHT_DECAY = 0.002, 0.9, 5e-4  # SPEC section 2 (CoOp's ImageNet recipe)


class CoOpReference:
    """CoOp's PromptLearner + TextEncoder + CustomCLIP step, written against open_clip.

    The prompts are [SOS] [ctx] [class tokens, ".", EOT, padding] over all 77 positions and go
    through open_clip's ``transformer(x, attn_mask=attn_mask)``, as CoOp's ``TextEncoder`` does.
    """

    def __init__(self, clip, classnames: list[str], dtype: torch.dtype, device: torch.device):
        self.model = copy.deepcopy(clip.model).to(dtype)  # CoOp: clip_model.type(fp16)
        self.dtype, self.K = dtype, len(classnames)
        prompts = [" ".join(["X"] * N_CTX) + " " + name + "." for name in classnames]
        self.tokens = clip.tokenizer(prompts).to(device)  # [K, 77]
        with torch.no_grad():
            embedding = self.model.token_embedding(self.tokens).to(dtype)  # [K, 77, d]
        self.prefix = embedding[:, :1]  # SOS
        self.suffix = embedding[:, 1 + N_CTX :]  # class tokens, ".", EOT, padding
        d = embedding.shape[-1]
        self.ctx = torch.nn.Parameter(torch.empty(N_CTX, d, dtype=dtype, device=device).normal_(0, 0.02))
        self.optimizer = torch.optim.SGD([self.ctx], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.mean = torch.tensor(clip.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(clip.std, device=device).view(1, 3, 1, 1)

    def text_features(self) -> torch.Tensor:
        m = self.model
        ctx = self.ctx.unsqueeze(0).expand(self.K, -1, -1)  # [K, n_ctx, d]
        x = torch.cat([self.prefix, ctx, self.suffix], dim=1)  # [K, 77, d]
        x = x + m.positional_embedding.to(self.dtype)
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x).to(self.dtype)
        x = x[torch.arange(self.K, device=x.device), self.tokens.argmax(dim=-1)]  # [K, d] at EOT
        return x @ m.text_projection

    def step(self, images: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        del cams  # CoOp has no masked copies
        m = self.model
        image_features = m.encode_image(((images - self.mean) / self.std).to(self.dtype))
        text_features = self.text_features()
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits = m.logit_scale.exp() * image_features @ text_features.t()
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def _timed(step, inputs, device: torch.device) -> float:
    """Milliseconds of one step (CUDA events on a GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(*inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    step(*inputs)
    return (time.perf_counter() - t0) * 1000


def time_interleaved(steps_by_name: dict, inputs, steps: int, warmup: int, device: torch.device) -> dict:
    """Median milliseconds per step of each step function, after ``warmup`` untimed steps each.

    The steps alternate (a, b, a, b, ...), so that both see the same machine load.
    """
    for step in steps_by_name.values():
        for _ in range(warmup):
            step(*inputs)
    times = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            times[name].append(_timed(step, inputs, device))
    return {name: statistics.median(t) for name, t in times.items()}


def first_step_peak(step, inputs, device: torch.device) -> float | None:
    """Run one step (which builds what it needs); on a GPU, the peak memory of a second step in GiB."""
    step(*inputs)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(*inputs)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def measure_breakdown(clip, names, images, precision, steps, warmup, device) -> dict:
    """Median ms of the parts: the image encoder on 2B images, and the K prompts' forward +
    backward for each text-encoder setting (which shortcut buys what)."""
    from clip_smot.encoders import fast_image_encoder
    from clip_smot.runtime import autocast

    def in_autocast(fn, prec):
        def run_it():
            with autocast(device, prec):
                return fn()
        return run_it

    batch = torch.cat([images, images])  # [2B, 3, S, S]
    enc = fast_image_encoder(clip.model, precision)
    parts = {
        "image_encoder_open_clip_autocast": in_autocast(lambda: clip.model.encode_image(batch), precision),
    }
    if enc is not None:
        parts["image_encoder_weights_cast_once"] = in_autocast(lambda: enc(batch), precision)
    settings = {  # name -> PromptLearner options
        "text_fp32_weights_autocast_mask": dict(precision="fp32", attention="mask", share_prefix=False, pack=False),
        f"text_{precision}_weights_mask": dict(precision=precision, attention="mask", share_prefix=False, pack=False),
        f"text_{precision}_weights_causal": dict(precision=precision, attention="causal", share_prefix=False,
                                                 pack=False),
        f"text_{precision}_weights_causal_shared_prefix": dict(precision=precision, attention="causal", share_prefix=True,
                                                                pack=False),
        f"text_{precision}_weights_causal_shared_prefix_packed": dict(precision=precision, attention="causal",
                                                                       share_prefix=True, pack=True),
    }
    results = {}
    for name, fn in parts.items():
        with torch.no_grad():
            results[name] = round(time_interleaved({name: fn}, (), steps, warmup, device)[name], 2)
    for name, opts in settings.items():  # all truncated to max(EOT)+1
        learner = PromptLearner(clip, names, n_ctx=N_CTX, **opts)

        def fwd_bwd(learner=learner):
            learner.ctx.grad = None
            with autocast(device, precision):
                out = learner()
            out.float().square().mean().backward()

        results[name] = round(time_interleaved({name: fwd_bwd}, (), steps, warmup, device)[name], 2)
        del learner
    return results


def run(
    model: str = "ViT-B-16",
    device: str = "auto",
    classes: int = 1000,
    batch_size: int = 32,
    steps: int = 10,
    warmup: int = 1,
    precision: str | None = None,
    reference_precision: str = "fp16",
    seed: int = 0,
    cuda_graph: bool = True,
    breakdown: bool = False,
) -> dict:
    """Time both steps; returns the result dict (see the module docstring)."""
    dev = resolve_device(device)
    torch.manual_seed(seed)
    names = (ROOT / "prompts" / "imagenet1k_classnames.txt").read_text().splitlines()
    if not 1 <= classes <= len(names):
        raise SystemExit(f"--classes must be in 1..{len(names)}, got {classes}")
    names = names[:classes]
    clip = load_clip(model, None, device=dev)
    precision = precision or "bf16"

    S = clip.image_size
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, S, S, generator=gen).to(dev)
    cams = (torch.rand(batch_size, S, S, generator=gen) * 255).to(dev)
    labels = torch.randint(0, classes, (batch_size,), generator=gen).to(dev)
    inputs = (images, cams, labels)

    def ours(cuda_graph: bool):
        learner = PromptLearner(clip, names, n_ctx=N_CTX, generator=gen, precision=precision)
        optimizer = torch.optim.SGD(learner.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        step = make_fit_step(clip, learner, optimizer, precision=precision,
                             generator=torch.Generator().manual_seed(seed), cuda_graph=cuda_graph)
        return learner, step

    # (b) ours; each peak memory is measured over one step before the next variant exists
    learner, step = ours(cuda_graph=False)
    peak = first_step_peak(step, inputs, dev)
    tokens_encoded = learner.tokens_encoded
    variants = {"ours": step}
    graph_peak = graph_error = None
    if dev.type == "cuda" and cuda_graph:
        try:
            _, graph_step = ours(cuda_graph=True)
            graph_peak = first_step_peak(graph_step, inputs, dev)
            variants["ours_cuda_graph"] = graph_step
        except Exception as e:  # reported, not fatal: the eager numbers still stand
            graph_error = f"{type(e).__name__}: {e}".splitlines()[0]

    # (a) the CoOp-style reference
    ref_note = reference_precision
    if reference_precision == "fp16" and dev.type == "cpu":
        reference_precision, ref_note = "fp32", "fp32 (fp16 is not supported on cpu)"
    ref = CoOpReference(clip, names, {"fp16": torch.float16, "fp32": torch.float32}[reference_precision], dev)
    ref_peak = first_step_peak(ref.step, inputs, dev)
    variants["reference"] = ref.step

    ms = time_interleaved(variants, inputs, steps, warmup, dev)
    ref_ms = ms["reference"]
    extra = {}
    if dev.type == "cuda" and cuda_graph:
        g = ms.get("ours_cuda_graph")
        extra = {
            "ms_per_step_cuda_graph": None if g is None else round(g, 2),
            "speedup_cuda_graph": None if g is None else round(ref_ms / g, 2),
            "peak_mem_gib_cuda_graph": None if graph_peak is None else round(graph_peak, 3),
            "cuda_graph_error": graph_error,
        }
    ms = ms["ours"]
    text_seq_len = int(ref.tokens.argmax(-1).max()) + 1
    if breakdown:
        del variants, ref
        extra["breakdown_ms"] = measure_breakdown(clip, names, images, precision, steps, warmup, dev)

    return {
        "model": clip.name,
        "classes": classes,
        "batch_size": batch_size,
        "images_per_step": 2 * batch_size,
        "reference_images_per_step": batch_size,
        "steps": steps,
        "precision": precision,
        "reference_precision": ref_note,
        "text_seq_len": text_seq_len,
        "tokens_encoded": tokens_encoded,
        "tokens_reference": classes * clip.model.positional_embedding.shape[0],
        "ms_per_step": round(ms, 2),
        "reference_ms_per_step": round(ref_ms, 2),
        "speedup": round(ref_ms / ms, 2),
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "peak_mem_gib": None if peak is None else round(peak, 3),
        "reference_peak_mem_gib": None if ref_peak is None else round(ref_peak, 3),
        **extra,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture name or model-config JSON")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--classes", type=int, default=1000, help="K: the first K ImageNet class names")
    p.add_argument("--batch-size", type=int, default=32, help="B images (ours also encodes B masked copies)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each first (after one to build)")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default=None,
                   help="our step's precision (default bf16: weights cast once, bf16 autocast)")
    p.add_argument("--reference-precision", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cuda-graph", action="store_true", help="on a GPU, skip the CUDA-graph variant of our step")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the parts: image encoder, and the text forward+backward per encoder setting")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default on --device cpu: 1, the steadiest timing on a shared machine)")
    a = p.parse_args(argv)
    if a.threads or a.device == "cpu":
        torch.set_num_threads(a.threads or 1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(a.model, a.device, a.classes, a.batch_size, a.steps, a.warmup, a.precision, a.reference_precision, a.seed,
                 not a.no_cuda_graph, a.breakdown)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
