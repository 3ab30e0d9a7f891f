"""Time one CLIP prompt-learning step: a CoOp-style reference against clip-smot's SMOT fit step.

Both steps run in one process on the same random-weight open_clip model (default ViT-B-16:
the same compute as the pretrained weights) with K class prompts (default: the 1000 ImageNet
class names).

(a) reference: CoOp's step as CoOp runs it: [SOS] [ctx] [name . EOT pad] over all 77 positions
    through open_clip's own transformer with its float causal mask, the model and the context
    in fp16 (CoOp's default; fp32 on CPU, where fp16 is not supported, or with
    ``--reference-precision fp32``), the B images through the image encoder, cross-entropy,
    backward into the context, SGD step.
(b) ours: ``clip_smot.clip.step.make_fit_step`` (the step ``clip-smot fit`` runs): B images and
    B CAM-masked copies, the K prompts through ``PromptLearner``'s truncated, shared-prefix
    encoder (text weights cast once to the step's precision), SMOT loss, backward, SGD step.

On a GPU, (b) is also timed replayed as a CUDA graph (``*_cuda_graph`` keys) and with the image
encoder on a second stream beside the text encoder (``*_overlap*`` keys; ``clip-smot fit
--overlap-encoders``). Warm-up steps, then the median of ``--steps`` timed steps, all variants
interleaved (CUDA events on a GPU). The last line printed is one JSON object; its
``*_fit_defaults`` keys are those of the variant that ``clip-smot fit`` runs by default on the
device (on a GPU: FlexAttention, compiled layers, CUDA graph, overlapped encoders).

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

from text_layouts import LayoutLearner  # (benchmarks/, the script's folder)

from clip_smot.clip.fit import FitConfig, resolve_speed
from clip_smot.clip.model import load_clip
from clip_smot.clip.prompt import PromptLearner
from clip_smot.clip.step import make_fit_step
from clip_smot.common.device import resolve_device

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 16  # CoOp's default context length
LR, MOMENTUM, WEIGHT_DECAY = 0.002, 0.9, 5e-4  # docs/method.md §2 (CoOp's ImageNet recipe)


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
    from clip_smot.clip.encoders import fast_image_encoder
    from clip_smot.common.device import autocast

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
        compiled = fast_image_encoder(clip.model, precision)
        compiled.compile_layers()  # compiled in the first (warm-up) call
        parts["image_encoder_compiled_layers"] = in_autocast(lambda: compiled(batch), precision)
    settings = {  # name -> LayoutLearner options (benchmarks/text_layouts.py)
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
        learner = LayoutLearner(clip, names, n_ctx=N_CTX, **opts)

        def fwd_bwd(learner=learner):
            learner.ctx.grad = None
            with autocast(device, precision):
                out = learner()
            out.float().square().mean().backward()

        results[name] = round(time_interleaved({name: fwd_bwd}, (), steps, warmup, device)[name], 2)
        del learner
    return results


def _error(e: BaseException) -> str:
    """One line naming an exception, for an ``error`` field of the JSON."""
    return (f"{type(e).__name__}: {e}".splitlines() or [type(e).__name__])[0][:300]


def text_variants(precision: str) -> dict:
    """Text-encoder settings to compare: name -> LayoutLearner options (all truncated to max(EOT)+1;
    shared prefix unless the name says no_prefix)."""
    low = precision if precision != "fp32" else "fp32"
    v = {
        "default_causal_packed": dict(attention="causal", pack=True),
        "causal_unpacked": dict(attention="causal", pack=False),
        "square_packed": dict(attention="square", pack=True),
        "square_unpacked": dict(attention="square", pack=False),
        "flex_packed": dict(attention="flex", pack=True),
    }
    if low != "fp32":
        v.update({
            f"residual_{low}_causal_packed": dict(attention="causal", pack=True, residual=low),
            f"residual_{low}_causal_unpacked": dict(attention="causal", pack=False, residual=low),
            f"residual_{low}_square_packed": dict(attention="square", pack=True, residual=low),
            f"residual_{low}_square_unpacked": dict(attention="square", pack=False, residual=low),
            f"residual_{low}_flex_packed": dict(attention="flex", pack=True, residual=low),
            # no shared prefix: plain is_causal over max(EOT)+1 positions, no layout glue at all
            f"residual_{low}_no_prefix_causal_unpacked": dict(attention="causal", pack=False, residual=low,
                                                              share_prefix=False),
            f"residual_{low}_no_prefix_causal_packed": dict(attention="causal", pack=True, residual=low,
                                                            share_prefix=False),
            f"residual_{low}_no_prefix_square_packed": dict(attention="square", pack=True, residual=low,
                                                            share_prefix=False),
        })
    return v


def _sdpa_context(backend: str | None):
    """A context forcing one SDPA backend ("flash", "efficient", "math"), or doing nothing."""
    import contextlib

    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "math": SDPBackend.MATH}[backend])


def _fwd_bwd(learner, device, precision, backend=None):
    """The K prompts' forward + backward into the context, under the step's autocast."""
    from clip_smot.common.device import autocast

    def run_it():
        learner.ctx.grad = None
        with _sdpa_context(backend), autocast(device, precision):
            out = learner()
        out.float().square().mean().backward()

    return run_it


def _ceilings(device: torch.device, dtype: torch.dtype) -> dict:
    """The device's two ceilings, measured: a large matrix product in ``dtype`` (TFLOP/s) and a
    large device-to-device copy (GB/s, bytes read + written); medians of a few runs."""
    n, nbytes = (8192, 2**30) if device.type == "cuda" else (1024, 2**26)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    mm = statistics.median(_timed(lambda: torch.mm(a, b), (), device) for _ in range(7))
    cp = statistics.median(_timed(lambda: dst.copy_(src), (), device) for _ in range(7))
    return {"matmul_tflops": 2 * n**3 / mm / 1e9, "matmul_dtype": str(dtype).removeprefix("torch."),
            "copy_gbs": 2 * nbytes / cp / 1e6}


def count_floor(clip, names, inputs, precision, attention, residual, seed, device, ref) -> dict:
    """The work a step must do, counted (``torch.utils.flop_counter``: matmuls and attention) on an
    eager copy of our step and on the reference, and the floor it implies on this device: the
    larger of FLOPs / measured matmul rate and frozen-weight bytes (read once, in the step's
    precision) / measured copy bandwidth. ("causal" is counted as "mask": the same shapes, and the
    counter cannot trace SDPA's CausalBias; "flex" is counted on its flat layout with a dense mask,
    as on the CPU: the counter has no rule for FlexAttention, seen on an H200. Both count the
    masked-out attention scores too, so the attention FLOPs are an upper bound.)"""
    from torch.utils.flop_counter import FlopCounterMode

    attention = "mask" if attention == "causal" else attention

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    learner = PromptLearner(clip, names, n_ctx=N_CTX, generator=torch.Generator().manual_seed(seed),
                            precision=precision, attention=attention, residual=residual)
    learner.encoder.flex_kernel = False  # attention="flex": a dense mask (only that attribute reads it)
    opt = torch.optim.SGD(learner.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    step = make_fit_step(clip, learner, opt, precision=precision, generator=torch.Generator().manual_seed(seed))
    step(*inputs)  # build (layouts) outside the count
    ours = flops(lambda: step(*inputs))
    text = flops(_fwd_bwd(learner, device, precision))
    reference = flops(lambda: ref.step(*inputs))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    weight_bytes = sum(p.numel() for p in clip.model.parameters()) * dtype.itemsize
    ceilings = _ceilings(device, dtype)
    floor_ms = max(ours / ceilings["matmul_tflops"] / 1e9, weight_bytes / ceilings["copy_gbs"] / 1e6)  # ms
    return {"flop_per_step": ours, "text_flop_fwd_bwd": text, "reference_flop_per_step": reference,
            "weight_bytes": weight_bytes, **ceilings, "floor_ms": floor_ms}


def _compiled_learner(clip, names, precision, opts, device, mode):
    """A PromptLearner whose encoder is ``torch.compile``-d (fullgraph if it can be) and already
    run once (compiled); returns (learner, its fwd+bwd, seconds of the compiling call, note)."""
    errors = []
    for fullgraph in (True, False):
        learner = LayoutLearner(clip, names, n_ctx=N_CTX, precision=precision, **opts)
        learner.encoder = torch.compile(learner.encoder, fullgraph=fullgraph, dynamic=False, mode=mode)
        fn = _fwd_bwd(learner, device, precision)
        t0 = time.perf_counter()
        try:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001 - e.g. a graph break under fullgraph: retry without
            errors.append(f"fullgraph={fullgraph}: {_error(e)}")
            torch._dynamo.reset()
            continue
        note = "fullgraph" if fullgraph else "graph breaks allowed; " + "; ".join(errors)
        return learner, fn, time.perf_counter() - t0, note
    raise RuntimeError("; ".join(errors))


def measure_variants(clip, names, precision, steps, warmup, device, inputs, seed, compile_mode, compile_text,
                     compile_whole=False) -> dict:
    """Time each text-encoder variant's forward+backward, the full fit step with the fastest against
    the default step, then the compiled variants (optional). Every variant is guarded: a failure
    becomes an ``errors`` entry, never a crash."""
    out: dict = {"text_fwd_bwd_ms": {}, "errors": {}}
    ms = out["text_fwd_bwd_ms"]
    options = text_variants(precision)
    if device.type == "cuda":  # which SDPA kernels run at all on these layouts
        for base in ("default_causal_packed", "square_packed"):
            for backend in ("flash", "efficient"):
                options[f"{base}_force_{backend}"] = dict(options[base], _backend=backend)
    learners = {}
    for name, opts in options.items():
        opts = dict(opts)
        backend = opts.pop("_backend", None)
        try:
            learner = LayoutLearner(clip, names, n_ctx=N_CTX, precision=precision, **opts)
            fn = _fwd_bwd(learner, device, precision, backend)
            fn()
            ms[name] = round(time_interleaved({name: fn}, (), steps, warmup, device)[name], 2)
            if backend is None:
                learners[name] = opts
            del learner, fn
        except Exception as e:  # noqa: BLE001 - reported per variant
            out["errors"][name] = _error(e)
    eager = {n: ms[n] for n in learners if n in ms}
    if not eager:
        return out
    best = min(eager, key=eager.get)
    out["best_eager_text_variant"] = best
    out["best_eager_options"] = learners[best]
    best_opts = learners[best]
    gen = torch.Generator().manual_seed(seed)

    def step_with(opts, encoder=None, cuda_graph=False):
        """A full fit step; with a (compiled) text ``encoder``, the image blocks are compiled too."""
        learner = LayoutLearner(clip, names, n_ctx=N_CTX, generator=gen, precision=precision, **opts)
        if encoder is not None:  # the same frozen weights, already compiled
            learner.encoder = encoder
        opt = torch.optim.SGD(learner.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        step = make_fit_step(clip, learner, opt, precision=precision, compile_image=encoder is not None,
                             generator=torch.Generator().manual_seed(seed), cuda_graph=cuda_graph)
        step(*inputs)  # builds (and captures) outside the timing
        return step

    def time_steps(candidates: dict) -> None:
        """Full fit steps, interleaved; into out["step_ms"]."""
        steps_by_name = {}
        for name, (opts, encoder, graph) in candidates.items():
            try:
                steps_by_name[name] = step_with(opts, encoder, graph)
            except Exception as e:  # noqa: BLE001
                out["errors"][name] = _error(e)
        try:
            timed = time_interleaved(steps_by_name, inputs, steps, warmup, device)
            out.setdefault("step_ms", {}).update({k: round(v, 2) for k, v in timed.items()})
        except Exception as e:  # noqa: BLE001
            out["errors"]["step_ms"] = _error(e)

    # the full fit step: the default learner against the fastest eager variant (and its CUDA graph)
    candidates = {"step_default": ({}, None, False), f"step_{best}": (best_opts, None, False)}
    if device.type == "cuda":
        candidates[f"step_{best}_cuda_graph"] = (best_opts, None, True)
    time_steps(candidates)
    out["best_text_variant"] = best
    print(json.dumps({"variants_eager": out}), flush=True)  # in case the compile below runs out of time

    if compile_text:
        best_ms = eager[best]

        def try_compiled(name, target, build):
            """Time a compiled learner's fwd+bwd; when it beats the best so far, the full step too."""
            nonlocal best_ms
            try:
                learner, fn, seconds, note = build(learners[target])
                out.setdefault("compile_s", {})[name] = round(seconds, 1)
                if note:
                    out.setdefault("compile_note", {})[name] = note
                ms[name] = round(time_interleaved({name: fn}, (), steps, warmup, device)[name], 2)
                if ms[name] < best_ms:
                    best_ms, out["best_text_variant"] = ms[name], name
                    candidates = {"step_default": ({}, None, False),
                                  f"step_{name}": (learners[target], learner.encoder, False)}
                    if device.type == "cuda":
                        candidates[f"step_{name}_cuda_graph"] = (learners[target], learner.encoder, True)
                    time_steps(candidates)
                print(json.dumps({"variants_so_far": out}), flush=True)
            except Exception as e:  # noqa: BLE001
                out["errors"][name] = _error(e)

        def regional(opts):  # every layer but the last: one compiled region, compiled once
            learner = LayoutLearner(clip, names, n_ctx=N_CTX, precision=precision, **opts)
            learner.encoder.compile_layers(**({"mode": compile_mode} if compile_mode else {}))
            fn = _fwd_bwd(learner, device, precision)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return learner, fn, time.perf_counter() - t0, None

        suffix = f"_{compile_mode}" if compile_mode else ""
        for kind in ("square", "flex"):  # the fastest eager variant of each layout that compile_layers takes
            of_kind = {n: t for n, t in eager.items() if learners[n].get("attention") == kind}
            if of_kind:
                target = min(of_kind, key=of_kind.get)
                try_compiled(f"compiled_layers_{target}{suffix}", target, regional)
        if not compile_whole:
            return out
        # the whole encoder (slower to compile): the fastest variant without a CausalBias object
        friendly = {n: t for n, t in eager.items()
                    if learners[n].get("attention") == "square" or learners[n].get("share_prefix") is False} or eager
        target = min(friendly, key=friendly.get)
        try_compiled(f"compiled_{target}{suffix}", target,
                     lambda opts: _compiled_learner(clip, names, precision, opts, device, compile_mode))
    return out


def profile_step(step, inputs, device, n_steps: int = 3, top: int = 15) -> list:
    """torch.profiler over ``n_steps`` steps: the top kernels by self device time (CPU time on a CPU).

    Prints a compact table and returns rows ``[name, total ms, calls, % of all]``.
    """
    from torch.profiler import ProfilerActivity, profile

    step(*inputs)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(n_steps):
            step(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def self_time(e):  # microseconds; the attribute's name changed across torch versions
        if device.type == "cuda":
            for a in ("self_device_time_total", "self_cuda_time_total"):
                if hasattr(e, a):
                    return getattr(e, a)
        return e.self_cpu_time_total

    events = [e for e in prof.key_averages() if self_time(e) > 0]
    total = sum(self_time(e) for e in events) or 1.0
    events.sort(key=self_time, reverse=True)
    rows = [[e.key[:90], round(self_time(e) / 1000 / n_steps, 3), e.count // n_steps,
             round(100 * self_time(e) / total, 1)] for e in events[:top]]
    what = "self CUDA" if device.type == "cuda" else "self CPU"
    print(f"top {top} ops by {what} time per step (total {total / 1000 / n_steps:.2f} ms/step):", file=sys.stderr)
    print(f"{'ms/step':>9} {'calls':>6} {'%':>5}  name", file=sys.stderr)
    for name, t, c, pct in rows:
        print(f"{t:9.3f} {c:6d} {pct:5.1f}  {name}", file=sys.stderr)
    return rows


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
    variants: bool = False,
    profile: bool = False,
    compile_mode: str | None = None,
    compile_text: bool = True,
    profile_steps: int = 3,
    compile_whole: bool = False,
    attention: str = "auto",
    residual: str = "fp32",
    compile_layers: bool | None = None,
    count_flops: bool = False,
) -> dict:
    """Time both steps; returns the result dict (see the module docstring). ``attention="auto"``
    and ``compile_layers=None`` take `clip-smot fit`'s defaults for the device."""
    dev = resolve_device(device)
    fit = resolve_speed(FitConfig(text_attention=attention, compile=compile_layers), dev)
    attention, compile_layers = fit.text_attention, fit.compile
    if compile_layers and attention not in ("square", "flex"):
        raise SystemExit(f"--compile-layers needs --attention square or flex, not {attention}")
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

    def ours(cuda_graph: bool, overlap: bool = False):
        learner = PromptLearner(clip, names, n_ctx=N_CTX, generator=gen, precision=precision, attention=attention,
                                residual=residual)
        if compile_layers:
            learner.encoder.compile_layers()
        optimizer = torch.optim.SGD(learner.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        step = make_fit_step(clip, learner, optimizer, precision=precision, compile_image=compile_layers,
                             generator=torch.Generator().manual_seed(seed), cuda_graph=cuda_graph,
                             overlap=overlap)
        return learner, step

    # (b) ours; each peak memory is measured over one step before the next variant exists
    learner, step = ours(cuda_graph=False)
    peak = first_step_peak(step, inputs, dev)
    tokens_encoded = learner.tokens_encoded
    step_fns = {"ours": step}
    peaks, errors = {}, {}  # of the CUDA variants: eager/graph, each with the encoders overlapped or not
    if dev.type == "cuda":
        step_variants = {"ours_overlap": (False, True)}
        if cuda_graph:
            step_variants |= {"ours_cuda_graph": (True, False), "ours_overlap_cuda_graph": (True, True)}
        for name, (graph, overlap) in step_variants.items():
            try:
                _, variant_step = ours(cuda_graph=graph, overlap=overlap)
                peaks[name] = first_step_peak(variant_step, inputs, dev)
                step_fns[name] = variant_step
            except Exception as e:  # reported, not fatal: the other numbers still stand
                errors[name] = f"{type(e).__name__}: {e}".splitlines()[0]
            variant_step = None

    # (a) the CoOp-style reference
    ref_note = reference_precision
    if reference_precision == "fp16" and dev.type == "cpu":
        reference_precision, ref_note = "fp32", "fp32 (fp16 is not supported on cpu)"
    ref = CoOpReference(clip, names, {"fp16": torch.float16, "fp32": torch.float32}[reference_precision], dev)
    ref_peak = first_step_peak(ref.step, inputs, dev)
    step_fns["reference"] = ref.step

    ms = time_interleaved(step_fns, inputs, steps, warmup, dev)
    ref_ms = ms["reference"]
    extra = {}
    if count_flops:
        try:
            extra["floor"] = count_floor(clip, names, inputs, precision, attention, residual, seed, dev, ref)
        except Exception as e:  # noqa: BLE001 - the timings still stand
            extra["floor_error"] = _error(e)
    for name in [*peaks, *errors]:
        suffix = name.removeprefix("ours_")  # cuda_graph, overlap, overlap_cuda_graph
        v, peak_v = ms.get(name), peaks.get(name)
        extra |= {f"ms_per_step_{suffix}": None if v is None else round(v, 2),
                  f"speedup_{suffix}": None if v is None else round(ref_ms / v, 2),
                  f"peak_mem_gib_{suffix}": None if peak_v is None else round(peak_v, 3)}
        if name in errors:
            extra[f"{suffix}_error"] = errors[name]
    # the variant `clip-smot fit` runs by default here (graph and overlap on a GPU)
    default_variant = "ours" + "_overlap" * fit.overlap_encoders + "_cuda_graph" * (fit.cuda_graph and cuda_graph)
    if default_variant in ms:
        extra |= {"fit_defaults_variant": default_variant, "ms_per_step_fit_defaults": round(ms[default_variant], 2),
                  "speedup_fit_defaults": round(ref_ms / ms[default_variant], 2)}
    ms = ms["ours"]
    text_seq_len = int(ref.tokens.argmax(-1).max()) + 1
    del step_fns, ref  # free the reference model and the CUDA graph's pool for what follows
    if breakdown:
        try:
            extra["breakdown_ms"] = measure_breakdown(clip, names, images, precision, steps, warmup, dev)
        except Exception as e:  # noqa: BLE001 - the other numbers still stand
            extra["breakdown_error"] = _error(e)
    if profile:
        try:
            extra["profile_default_step"] = profile_step(step, inputs, dev, profile_steps)
        except Exception as e:  # noqa: BLE001
            extra["profile_error"] = _error(e)
    if variants:
        print(json.dumps({"partial": {k: v for k, v in extra.items() if not k.startswith("profile")},
                          "ms_per_step": round(ms, 2), "reference_ms_per_step": round(ref_ms, 2)}), flush=True)
        del step
        try:
            extra["variants"] = measure_variants(clip, names, precision, steps, warmup, dev, inputs, seed,
                                                 compile_mode, compile_text, compile_whole)
        except Exception as e:  # noqa: BLE001
            extra["variants_error"] = _error(e)
        best = extra.get("variants", {}).get("best_eager_options")
        if profile and best is not None:
            try:
                learner = LayoutLearner(clip, names, n_ctx=N_CTX, precision=precision, **best)
                extra["profile_best_text_fwd_bwd"] = profile_step(
                    lambda: _fwd_bwd(learner, dev, precision)(), (), dev, profile_steps)
            except Exception as e:  # noqa: BLE001
                extra["profile_best_error"] = _error(e)

    return {
        "model": clip.name,
        "classes": classes,
        "batch_size": batch_size,
        "images_per_step": 2 * batch_size,
        "reference_images_per_step": batch_size,
        "steps": steps,
        "precision": precision,
        "text_options": {"attention": attention, "residual": residual, "compile_layers": compile_layers},
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
    p.add_argument("--attention", choices=("auto", "causal", "mask", "square", "flex"), default="auto",
                   help="our step's text attention (clip-smot fit --text-attention; auto: flex on a GPU, else causal)")
    p.add_argument("--residual", choices=("fp32", "precision"), default="fp32",
                   help="our step's text residual stream (clip-smot fit --text-residual)")
    p.add_argument("--compile-layers", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile our text layers (square or flex attention) and image blocks (clip-smot fit "
                        "--compile; default: on a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cuda-graph", action="store_true", help="on a GPU, skip the CUDA-graph variant of our step")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the parts: image encoder, and the text forward+backward per encoder setting")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default on --device cpu: 1, the steadiest timing on a shared machine)")
    p.add_argument("--variants", action="store_true",
                   help="time each text-encoder variant (fwd+bwd), torch.compile the fastest, and the full step with it")
    p.add_argument("--no-compile", action="store_true", help="with --variants: skip the torch.compile variant")
    p.add_argument("--compile-whole", action="store_true",
                   help="with --variants: also torch.compile the whole text encoder (fullgraph; a minute or more)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode for the compiled variant (e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler over a few steps: the top 15 ops by self device time (stderr table + JSON)")
    p.add_argument("--profile-steps", type=int, default=3, help="steps profiled by --profile")
    p.add_argument("--count-flops", action="store_true",
                   help="count each step's FLOPs, measure the device's matmul rate and copy bandwidth, report the floor")
    a = p.parse_args(argv)
    if a.threads or a.device == "cpu":
        torch.set_num_threads(a.threads or 1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(a.model, a.device, a.classes, a.batch_size, a.steps, a.warmup, a.precision, a.reference_precision, a.seed,
                 not a.no_cuda_graph, a.breakdown, a.variants, a.profile, a.compile_mode, not a.no_compile,
                 a.profile_steps, a.compile_whole, a.attention, a.residual, a.compile_layers, a.count_flops)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
