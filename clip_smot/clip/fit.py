"""`clip-smot fit`: learn a CoOp context for a frozen CLIP model with the SMOT loss, and export it.

The data path follows the performance notes: the few-shot images are decoded once and kept on
the device as uint8 [N, 3, S, S]; their CAMs are computed once and kept as uint8 [N, S, S]; each
step crops and flips image and CAM together on the device (:mod:`clip_smot.clip.augment`), then runs
:func:`clip_smot.clip.step.make_fit_step` (thresholds drawn on the CPU, masking, both encoders,
the SMOT loss, the SGD update). The permutation of an epoch is drawn at its start; the loss is
read back only every few steps (for the progress bar) and at the end of each epoch (the log
line and the non-finite check), so a step never waits for the device.

Files written under ``--out``:

* ``config.json``: every resolved option (a :class:`FitConfig`) plus a ``run`` block (classes,
  split SHA-256, model identity, CAM network and its file's SHA-256, device);
* ``split.txt``: the few-shot images (``relative/path<TAB>label``);
* ``log.jsonl``: one JSON line per epoch (epoch, mean loss, lr, seconds);
* ``checkpoint.pt``: context, optimizer, scheduler, RNG states, epoch; atomic, each epoch;
* ``prompt.safetensors``: the learned prompt (:mod:`clip_smot.clip.prompt_file`), at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clip_smot import __version__
from clip_smot.cam import normalize_cam
from clip_smot.clip.augment import random_resized_crop_flip
from clip_smot.clip.encoders import ATTENTION
from clip_smot.clip.prompt_file import CLASS_POSITIONS
from clip_smot.clip.step import LOSSES, make_fit_step
from clip_smot.common.configs import MAX_SEED, MAX_WORKERS, check_field_types
from clip_smot.common.device import PRECISIONS, resolve_device
from clip_smot.common.errors import UserError, first_line
from clip_smot.common.files import (
    atomic_save,
    atomic_write_text,
    check_output,
    make_folder,
    remove_stale_temporaries,
    same_file,
    sha256_file,
    write_json,
)
from clip_smot.common.progress import progress_bar, progress_write
from clip_smot.common.run_folder import holds_its_values, load_optimizer_state
from clip_smot.smot import PERTURBATIONS

__all__ = ["ATTENTION", "CLASS_POSITIONS", "LOSSES", "FitConfig", "export_prompt", "lr_factor", "resolve_speed",
           "run_fit"]

CHECKPOINT_FORMAT = "clip-smot-fit-checkpoint"
_CHECKPOINT_KEYS = ("epoch", "ctx", "optimizer", "scheduler", "rng", "config")  # what fit writes
_FILES = ("split.txt", "config.json", "log.jsonl", "checkpoint.pt", "prompt.safetensors")  # under --out


@dataclass(frozen=True)
class FitConfig:
    """Every option of a fit run; saved as ``OUT/config.json`` and inside the prompt file."""

    # data
    data: str | None = None  # DATA (DATA/train/<class>/* or DATA/<class>/*); None = bundled digits
    shots: int = 16  # images per class drawn for the few-shot split
    split: str | None = None  # reuse this split file instead of drawing one
    seed: int = 1  # split draw, context init, order, crops, thresholds
    out: str = "runs/fit"  # output folder
    workers: int = 4  # threads decoding images (once, before training)
    # model
    model: str = "ViT-B-16"  # open_clip name or model-config JSON
    pretrained: str = "openai"  # pretrained tag or checkpoint file ("none": random weights)
    cam_model: str = "resnet18-imagenet"  # CAM network: a name or a ResNet checkpoint file
    # prompt (CoOp)
    n_ctx: int = 16  # learnable context vectors
    ctx_init: str | None = None  # e.g. "a photo of a" (then n_ctx = its token count)
    csc: bool = False  # class-specific contexts
    class_position: str = "end"  # end, middle or front
    # loss (docs/method.md §1)
    loss: str = "smot"  # smot or ce (plain CoOp)
    alpha: float = 50.0  # Beta(alpha, beta) of the masking threshold s, t = 255 s
    beta: float = 20.0
    lam: float = 0.1  # weight of the masked term, in [0, 1]
    T: float = 200.0  # eps(t) temperature (ImageNet-1k CLIP track, docs/method.md §1)
    perturb: str = "zero"  # zero (black), one (white) or noise
    sigma: float = 0.1  # noise std for --perturb noise
    # optimisation (CoOp's ImageNet recipe, docs/method.md §2)
    epochs: int = 50
    batch_size: int = 32  # original images per step (SMOT adds as many masked copies)
    lr: float = 0.002  # SGD, cosine over the epochs after warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # epochs at the constant warm-up lr
    warmup_lr: float = 1e-5
    crop_scale: float = 0.08  # smallest area fraction of the random resized crop
    precision: str = "bf16"  # autocast dtype around the encoders; the context stays fp32
    text_residual: str = "fp32"  # text tower's residual stream: fp32 or precision (exact speed knobs)
    # exact speed options; "auto" / None: the fastest measured on the device (see resolve_speed)
    text_attention: str = "auto"  # auto, causal, mask, square or flex (see docs/prompt.md)
    compile: bool | None = None  # torch.compile the text layers (square or flex attention) and the image blocks
    cuda_graph: bool | None = None  # replay the step's forward+backward as a CUDA graph (CUDA only)
    overlap_encoders: bool | None = None  # image encoder on a second CUDA stream beside the text encoder
    device: str = "auto"
    # run control (not part of what makes two runs the same)
    resume: bool = False
    dry_run: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        """Build from a dict, ignoring unknown keys (such as ``run`` in config.json)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> FitConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# Options that may change between a run and its --resume.
_RUN_CONTROL = ("resume", "dry_run", "workers", "device", "out", "split", "cuda_graph", "text_residual",
                "text_attention", "compile", "overlap_encoders")  # (the split is compared by SHA-256)


def check_config(cfg: FitConfig) -> None:
    """Range checks of every option, as UserErrors naming the flag (the CLI checks them too)."""
    checks = [
        (0 <= cfg.seed <= MAX_SEED, "--seed", f"must be in [0, {MAX_SEED}]"),
        (cfg.shots >= 1, "--shots", "must be >= 1"),
        (cfg.n_ctx >= 1, "--n-ctx", "must be >= 1"),
        (cfg.class_position in CLASS_POSITIONS, "--class-position", f"must be one of {CLASS_POSITIONS}"),
        (cfg.loss in LOSSES, "--loss", f"must be one of {LOSSES}"),
        (cfg.alpha > 0, "--alpha", "must be > 0"),
        (cfg.beta > 0, "--beta", "must be > 0"),
        (0.0 <= cfg.lam <= 1.0, "--lam", "must be in [0, 1]"),
        (cfg.T > 0, "--T", "must be > 0"),
        (cfg.perturb in PERTURBATIONS, "--perturb", f"must be one of {PERTURBATIONS}"),
        (cfg.sigma >= 0, "--sigma", "must be >= 0"),
        (cfg.epochs >= 1, "--epochs", "must be >= 1"),
        (cfg.batch_size >= 1, "--batch-size", "must be >= 1"),
        (cfg.lr > 0, "--lr", "must be > 0"),
        (0 <= cfg.momentum <= 1, "--momentum", "must be in [0, 1]"),
        (cfg.weight_decay >= 0, "--weight-decay", "must be >= 0"),
        (cfg.warmup_lr > 0, "--warmup-lr", "must be > 0"),
        (cfg.warmup_epochs >= 0, "--warmup-epochs", "must be >= 0"),
        (0 < cfg.crop_scale <= 1, "FitConfig.crop_scale", "must be in (0, 1]"),  # (no command-line flag)
        (cfg.precision in PRECISIONS, "--precision", f"must be one of {PRECISIONS}"),
        (0 <= cfg.workers <= MAX_WORKERS, "--workers", f"must be in [0, {MAX_WORKERS}]"),
        (cfg.text_residual in ("fp32", "precision"), "--text-residual", "must be fp32 or precision"),
        (cfg.text_attention in ("auto", *ATTENTION), "--text-attention", f"must be auto or one of {ATTENTION}"),
        (not cfg.compile or cfg.text_attention in ("auto", "square", "flex"), "--compile",
         "needs --text-attention square or flex"),
        (not cfg.cuda_graph or cfg.device != "cpu", "--cuda-graph", "needs --device cuda"),
        (not cfg.overlap_encoders or cfg.device != "cpu", "--overlap-encoders", "needs --device cuda"),
    ]
    for name in ("alpha", "beta", "lam", "T", "sigma", "lr", "momentum", "weight_decay", "warmup_lr"):
        checks.insert(0, (math.isfinite(getattr(cfg, name)), f"--{name.replace('_', '-')}", "must be a finite number"))
    checks.insert(0, (math.isfinite(cfg.crop_scale), "FitConfig.crop_scale", "must be a finite number"))
    for ok, flag, what in checks:
        if not ok:
            field = flag.removeprefix("FitConfig.").removeprefix("--").replace("-", "_")
            raise UserError(f"{flag} {getattr(cfg, field)}: {what}")


def resolve_speed(cfg: FitConfig, device: torch.device) -> FitConfig:
    """``cfg`` with its speed options decided for ``device`` (what was given stays as given).

    On CUDA the defaults are the fastest exact step measured (benchmarks/RESULTS.md, run 3, H200:
    10.57 ms a step against 29.57 ms with square attention and none of the others): FlexAttention
    (``square`` where this torch or GPU has no FlexAttention kernel: before Ampere), compiled
    layers (where Triton can build kernels: compute capability 7.0 or newer), a CUDA graph and
    the image encoder on a second stream. Elsewhere they are off and the attention is
    ``causal``, or ``square`` where ``--compile`` asks for a compilable layout. ``--compile`` is
    off by default under an explicit ``causal`` or ``mask``.
    """
    from clip_smot.clip import encoders

    cuda = device.type == "cuda"
    attention = cfg.text_attention
    if attention == "auto":
        attention = ("flex" if encoders.flex_available(device) else "square") if cuda or cfg.compile else "causal"
    compile_ = cfg.compile if cfg.compile is not None else (
        cuda and attention in ("square", "flex") and encoders.compile_available(device))
    return dataclasses.replace(
        cfg, text_attention=attention, compile=compile_,
        cuda_graph=cfg.cuda_graph if cfg.cuda_graph is not None else cuda,
        overlap_encoders=cfg.overlap_encoders if cfg.overlap_encoders is not None else cuda)


def lr_factor(epoch: int, cfg: FitConfig) -> float:
    """LR multiplier of an epoch: CoOp's constant warm-up, then cosine (Dassl's schedule).

    Epochs ``< warmup_epochs`` run at ``warmup_lr``; epoch ``e`` after them at
    ``lr * (1 + cos(pi * (e - warmup_epochs) / epochs)) / 2``.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr / cfg.lr
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs))


def _build_prompt(clip, classnames, cfg: FitConfig, precision: str, compile_layers: bool = False,
                  attention: str | None = None):
    """The CoOp context module; its frozen text weights are cast once to ``precision``; with
    ``compile_layers``, its text layers are compiled (``--compile``); ``attention`` overrides
    ``cfg.text_attention`` (which must be resolved, not "auto")."""
    from clip_smot.clip.prompt import PromptLearner

    gen = torch.Generator().manual_seed(cfg.seed)  # the context init depends on the seed alone
    learner = PromptLearner(clip, list(classnames), n_ctx=cfg.n_ctx, ctx_init=cfg.ctx_init, csc=cfg.csc,
                            class_position=cfg.class_position, generator=gen, precision=precision,
                            residual=cfg.text_residual, attention=attention or cfg.text_attention)
    if compile_layers:
        learner.encoder.compile_layers()
    return learner


def _load_data(cfg: FitConfig, image_size: int):
    """Classes, the few-shot split (drawn or read) and the split file's text."""
    from clip_smot.clip.fewshot import (
        draw_split,
        read_split,
        resolve_classes,
        resolve_train_root,
    )
    from clip_smot.common.digits import ensure_digits

    root = resolve_train_root(cfg.data) if cfg.data else ensure_digits(size=image_size) / "train"
    classes = resolve_classes(root)
    split = read_split(cfg.split, classes) if cfg.split else draw_split(classes, cfg.shots, cfg.seed)
    return classes, split


def _rng_state(data_gen: torch.Generator, aug_gen: torch.Generator) -> dict:
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "data_gen": data_gen.get_state(),
        "aug_gen": aug_gen.get_state(),
        "aug_device": str(aug_gen.device),
    }


def _set_rng_state(state: dict, data_gen: torch.Generator, aug_gen: torch.Generator, path: Path) -> None:
    try:
        if state["aug_device"] != str(aug_gen.device):
            raise UserError(f"--resume {path}: written on {state['aug_device']}; resume it with --device "
                            f"{state['aug_device']}")
        torch.set_rng_state(state["torch_cpu"])
        if state["torch_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["torch_cuda"])
        data_gen.set_state(state["data_gen"])
        aug_gen.set_state(state["aug_gen"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # (a hand-edited or foreign state)
        raise UserError(f"--resume {path}: its random-number state is damaged ({type(e).__name__}: "
                        f"{first_line(e)})") from None


def _restore(saved: dict, prompt, optimizer, scheduler, data_gen, aug_gen, path: Path) -> None:
    """Put a checkpoint's context, optimizer, schedule and RNG states into the run's, each checked
    to fit first (a hand-edited checkpoint is one line, not a traceback at the first step)."""
    _copy_ctx(prompt, saved["ctx"], f"--resume {path}")
    load_optimizer_state(optimizer, saved["optimizer"], f"--resume {path}")
    sched = saved["scheduler"]
    if not (isinstance(sched, dict) and isinstance(sched.get("last_epoch"), int)
            and isinstance(sched.get("base_lrs"), list) and len(sched["base_lrs"]) == len(optimizer.param_groups)
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in sched["base_lrs"])):
        raise UserError(f"--resume {path}: its learning-rate schedule is damaged")
    scheduler.load_state_dict(sched)
    _set_rng_state(saved["rng"], data_gen, aug_gen, path)


def _copy_ctx(prompt, ctx: torch.Tensor, where: str) -> None:
    """Copy a saved context into ``prompt``'s, once its shape is seen to be the one the options
    and the CLIP model give."""
    if tuple(ctx.shape) != tuple(prompt.ctx.shape):
        raise UserError(f"{where}: its context has shape {list(ctx.shape)}, not the {list(prompt.ctx.shape)} of its "
                        "options and CLIP model")
    with torch.no_grad():
        prompt.ctx.copy_(ctx.to(prompt.ctx.device))


def _check_saved(saved: dict, where: str) -> None:
    """The types and ranges of what a fit checkpoint holds, before any of it is used: the epoch,
    a finite float context of 2 or 3 dimensions, a configuration that passes :func:`check_config`
    and the run block's records (the names and the model's identity)."""
    config, ctx = saved["config"], saved["ctx"]
    run = config["run"]
    problems = [
        (isinstance(saved["epoch"], int) and not isinstance(saved["epoch"], bool) and saved["epoch"] >= 0, "epoch"),
        (isinstance(ctx, torch.Tensor) and ctx.is_floating_point() and ctx.ndim in (2, 3) and holds_its_values(ctx)
         and bool(torch.isfinite(ctx).all()), "ctx (a finite float tensor [n_ctx, d] or [K, n_ctx, d])"),
        (isinstance(run.get("classnames"), list) and run["classnames"] != []
         and all(isinstance(c, str) for c in run["classnames"]), "config.run.classnames"),
        (isinstance(run.get("split_sha256"), str), "config.run.split_sha256"),
        (isinstance(run.get("clip"), dict) and all(isinstance(run["clip"].get(k), str) for k in
                                                   ("model", "model_config", "pretrained", "checkpoint_sha256")),
         "config.run.clip"),
        (all(isinstance(saved[k], dict) for k in ("optimizer", "scheduler", "rng")), "optimizer, scheduler or rng"),
    ]
    bad = [what for ok, what in problems if not ok]
    if bad:
        raise UserError(f"{where}: a damaged fit checkpoint ({bad[0]})")
    try:
        json.loads(run["clip"]["model_config"])
        cfg = FitConfig.from_dict(config)
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: a damaged fit checkpoint (config: {first_line(e)})") from None
    check_field_types(cfg, where)
    try:
        check_config(cfg)
    except UserError as e:
        raise UserError(f"{where}: its configuration is out of range ({e})") from None
    if ((ctx.ndim == 3) != cfg.csc or (cfg.csc and ctx.shape[0] != len(run["classnames"]))
            or (not cfg.ctx_init and ctx.shape[-2] != cfg.n_ctx)):
        raise UserError(f"{where}: its context has shape {list(ctx.shape)}, which --csc {cfg.csc}, its "
                        f"{len(run['classnames'])} classes and --n-ctx {cfg.n_ctx} do not give")


def _load_checkpoint(path: Path, config: dict | None, flag: str) -> dict:
    """Read a fit checkpoint; with ``config``, check that it was made with the same options."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors of every kind: a truncated or foreign file
        raise UserError(f"{flag} {path}: not a readable checkpoint ({first_line(e)})") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{flag} {path}: not a clip-smot fit checkpoint")
    missing = [k for k in _CHECKPOINT_KEYS if k not in saved]
    if not missing and not (isinstance(saved["config"], dict) and isinstance(saved["config"].get("run"), dict)):
        missing = ["config.run"]
    if missing:
        raise UserError(f"{flag} {path}: an incomplete fit checkpoint (no {', '.join(missing)})")
    _check_saved(saved, f"{flag} {path}")
    if config is not None:
        old = saved["config"]
        # a file given to --model, --pretrained or --cam-model is compared by its contents (below), not by
        # how its path is spelled (relative now, absolute then); names and tags by their strings
        by_content = {k for k, record in (("model", "clip"), ("pretrained", "clip"), ("cam_model", "cam_model_sha256"))
                      if record in old["run"] and os.path.isfile(config[k])}
        differ = [k for k in config if k not in _RUN_CONTROL and k != "run" and k not in by_content
                  and old.get(k) != config[k]]
        if old["run"]["split_sha256"] != config["run"]["split_sha256"]:
            if not differ:  # the same options: the images under --data changed since the split was drawn
                split = path.parent / "split.txt"
                raise UserError(f"{flag} {path}: the run's few-shot split ({split}) is not the one drawn now (did the "
                                f"images under --data change?); to continue on its images, add --split {split}")
            differ.append("split")
        if differ:
            raise UserError(f"{flag} {path}: made with other options ({', '.join(differ)}); rerun with the "
                            f"options in {path.parent / 'config.json'}")
        was, now = _recorded_activation(old["run"].get("clip")), config["run"]["clip"]["activation"]
        if was is not None and was != now:  # e.g. a run of ViT-B-16 + openai from before the tag's QuickGELU was honoured
            raise UserError(f"{flag} {path}: the run was trained with {was}, but these weights are built with {now}; "
                            "its context does not fit them: fit again in another --out")
        # the same options, other files behind them (a checkpoint or CAM network replaced at its path)
        for key, what in (("clip", f"--model {config['model']} --pretrained {config['pretrained']}"),
                          ("cam_model_sha256", f"--cam-model {config['cam_model']}")):
            if key in old["run"] and _contents(old["run"][key]) != _contents(config["run"][key]):
                raise UserError(f"{flag} {path}: {what} is not the model the run was trained with (the file "
                                "changed since); resume with the run's own files")
    return saved


def _recorded_activation(record) -> str | None:
    """The activation a run's CLIP record names (a record without one: its model config's), or
    None when the record is not one."""
    from clip_smot.clip.model import config_activation

    try:
        return record.get("activation") or config_activation(json.loads(record["model_config"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _since(t0: float, device: torch.device) -> float:
    """Seconds since ``t0`` (``time.perf_counter``), the device's queued work included (set-up only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _compiler_error(e: BaseException) -> bool:
    """Whether ``e`` was raised by torch.compile's machinery (dynamo, inductor) or a kernel compiler."""
    return any(t.__module__.startswith(("torch._dynamo", "torch._inductor", "triton")) for t in type(e).__mro__)


def _contents(record):
    """What a run record says of the weights' contents: a CLIP identity less the checkpoint file's
    name where its SHA-256 is known (a copy under another name holds the same weights)."""
    if isinstance(record, dict) and record.get("checkpoint_sha256"):
        return {k: v for k, v in record.items() if k != "pretrained"}
    return record


def _check_outputs(cfg: FitConfig) -> None:
    """Raise a UserError when ``--out`` would replace a file the run reads or lies inside the
    folder of its class folders (a later run would read the run's files as data). ``--split
    OUT/split.txt`` is the run's own split: it is not rewritten (see :func:`run_fit`)."""
    from clip_smot.clip.fewshot import resolve_train_root

    split = None if cfg.split and same_file(cfg.split, Path(cfg.out) / "split.txt") else cfg.split
    inputs = [("--split file", split), ("--model file", cfg.model), ("--pretrained file", cfg.pretrained),
              ("--cam-model file", cfg.cam_model)]
    folders = [("the --data folder", resolve_train_root(cfg.data))] if cfg.data and Path(cfg.data).is_dir() else []
    check_output(cfg.out, "--out", inputs, folders, writes=_FILES)


def _truncate_log(path: Path, epochs: int) -> None:
    """Keep the log lines of the first ``epochs`` epochs (all a checkpoint vouches for).

    A line that does not parse (a run killed while appending it, bytes that are not UTF-8, a
    record without a whole-number epoch) is dropped, not fatal.
    """
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines() if path.is_file() else []
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    kept = []
    for line in lines:
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        if isinstance(epoch, int) and not isinstance(epoch, bool) and 1 <= epoch <= epochs:
            kept.append(line)
    atomic_write_text("".join(line + "\n" for line in kept), path)


def run_fit(cfg: FitConfig) -> Path:
    """Fit a prompt; returns the output folder (with ``prompt.safetensors`` unless a dry run).

    Raises:
        UserError: any bad input (docs/method.md §6), or a non-finite loss (the last good
            checkpoint is kept).
    """
    from clip_smot.clip.encoders import flex_available
    from clip_smot.clip.fewshot import decode_and_hash, split_text
    from clip_smot.clip.model import load_clip

    check_config(cfg)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not cfg.resume and not cfg.dry_run:
        raise UserError(f"--out {out}: holds a fit checkpoint already; add --resume to continue it, or choose another --out")
    if cfg.resume and not ckpt_path.is_file():
        raise UserError(f"--resume: no checkpoint at {ckpt_path}")
    if not cfg.dry_run:
        _check_outputs(cfg)
    device = resolve_device(cfg.device)
    cfg = resolve_speed(cfg, device)
    for flag, wanted in (("--cuda-graph", cfg.cuda_graph), ("--overlap-encoders", cfg.overlap_encoders)):
        if wanted and device.type != "cuda":
            raise UserError(f"{flag}: needs a CUDA device, not {device}")
    compiled = {"--compile": "--no-compile"} if cfg.compile else {}  # what torch.compile builds -> what avoids it
    if cfg.text_attention == "flex" and flex_available(device):  # FlexAttention's kernel: compiled, --compile or not
        compiled["--text-attention flex"] = "--text-attention square"
    t_setup = time.perf_counter()
    clip = load_clip(cfg.model, cfg.pretrained, device)  # fails within seconds when weights are unavailable
    seconds = {"CLIP model": _since(t_setup, device)}
    classes, split = _load_data(cfg, clip.image_size)
    if len(classes.folders) == 1:  # a valid run, but one that cannot learn: say so before the slow work
        print(f"note: {classes.root} has one class: a softmax over one class is 1, so the loss is 0 and only "
              "weight decay moves the context", file=sys.stderr)
    seen = {label for _, label in split}
    unseen = [f for y, f in enumerate(classes.folders) if y not in seen]
    if unseen:  # a --split of another data set (e.g. of a subset of these classes)
        print(f"note: --split {cfg.split} has no image of {len(unseen)} of the {len(classes.folders)} classes of "
              f"{classes.root} ({', '.join(unseen[:3])}{' ...' if len(unseen) > 3 else ''}): the prompt holds "
              "them, but nothing trains on them", file=sys.stderr)
    cam_net, cam_sha = None, None
    if cfg.loss == "smot":
        from clip_smot.clip.cam_network import CAM_MODELS, load_cam_network

        cam_net = load_cam_network(cfg.cam_model)
        cam_sha = None if cfg.cam_model in CAM_MODELS else sha256_file(cfg.cam_model)

    # Resolve and save every option before any slow work.
    text = split_text(split)
    split_sha = hashlib.sha256(text.encode()).hexdigest()  # = sha256 of OUT/split.txt
    resolved = dataclasses.replace(cfg, data=str(classes.root.resolve()), device=str(device))
    config = resolved.to_dict() | {"run": {
        "classnames": list(classes.classnames), "class_folders": list(classes.folders),
        "n_images": len(split), "split_sha256": split_sha, "image_size": clip.image_size,
        "clip": clip.identity(), "cam_model": cam_net.source if cam_net else None,
        "cam_model_sha256": cam_sha,
        "library_version": __version__,
    }}
    saved = _load_checkpoint(ckpt_path, config, "--resume") if cfg.resume else None
    start_epoch = saved["epoch"] if saved else 0
    if saved and start_epoch >= cfg.epochs and (out / "prompt.safetensors").is_file():
        progress_write(f"fit: the run in {out} has finished its {start_epoch} epochs; nothing to do (nothing rewritten)")
        return out
    if not cfg.dry_run:  # a dry run writes nothing
        # --split OUT/split.txt, as resume's error advises: the run's own split, read and not rewritten
        own_split = bool(cfg.split) and same_file(cfg.split, out / "split.txt")
        if own_split and Path(cfg.split).read_text(encoding="utf-8") != text:
            raise UserError(f"--split {cfg.split}: is {out / 'split.txt'}, which this run writes in another form; "
                            "pass a copy of it")
        make_folder(out)
        remove_stale_temporaries(out, _FILES)  # of a run killed while writing

    # Data on the device, decoded once (and hashed: a resume checks the bytes too); CAMs once.
    labels = torch.tensor([y for _, y in split], device=device)  # [N]
    t = time.perf_counter()
    images, config["run"]["images_sha256"] = decode_and_hash(classes.root, [p for p, _ in split], clip.image_size,
                                                             cfg.workers, device if device.type == "cuda" else None)
    images = images.to(device)  # [N, 3, S, S] uint8
    seconds[f"{len(split)} images decoded"] = _since(t, device)
    if saved is not None and saved["config"]["run"].get("images_sha256") not in (None, config["run"]["images_sha256"]):
        raise UserError(f"--resume {ckpt_path}: an image of the run's few-shot split ({out / 'split.txt'}) has other "
                        "bytes than when the run started (replaced under the same name); the run cannot continue on "
                        "other images: restore them, or start a new run in another --out")
    cams = None
    if cam_net is not None:
        from clip_smot.clip.cam_network import build_cam_provider, cache_cams

        provider, label_map = build_cam_provider(cam_net, classes)
        if label_map is None and cam_net.class_ids is not None:  # a trained network: meant for these classes?
            print(f"note: --cam-model {cfg.cam_model} was trained on other classes ({', '.join(cam_net.class_ids[:3])}"
                  f"{' ...' if len(cam_net.class_ids) > 3 else ''}) than those of {classes.root}: the CAMs are of "
                  "its top-1 class, not of the true label", file=sys.stderr)
        t = time.perf_counter()
        cams = cache_cams(provider, label_map, images, labels)  # [N, S, S] uint8
        seconds["CAMs"] = _since(t, device)
        del provider, cam_net

    prompt = _build_prompt(clip, classes.classnames, cfg, cfg.precision, compile_layers=cfg.compile)
    params = [p for p in prompt.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, cfg))
    data_gen = torch.Generator().manual_seed(cfg.seed)  # order and thresholds, drawn on the CPU
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed)  # crops, flips, noise, on the device
    if saved is not None:
        _restore(saved, prompt, optimizer, scheduler, data_gen, aug_gen, ckpt_path)
    if not cfg.dry_run:  # (once all that a resume reads has been checked)
        if not own_split:  # (the same text otherwise: nothing to replace)
            atomic_write_text(text, out / "split.txt")
        write_json(config, out / "config.json")
        _truncate_log(out / "log.jsonl", start_epoch)  # epochs after the checkpoint are run again
    elif cfg.cuda_graph:  # a graph draws --perturb noise from torch's CUDA generator: seeded, so --seed fixes it
        torch.cuda.manual_seed(cfg.seed)
    step = make_fit_step(clip, prompt, optimizer, loss=cfg.loss, lam=cfg.lam, T=cfg.T, alpha=cfg.alpha,
                         beta=cfg.beta, perturbation=cfg.perturb, sigma=cfg.sigma, precision=cfg.precision,
                         generator=data_gen, cuda_graph=cfg.cuda_graph, compile_image=cfg.compile,
                         overlap=cfg.overlap_encoders,
                         noise_generator=None if cfg.cuda_graph else aug_gen)  # a graph draws from torch's CUDA RNG
    N = len(split)
    B = min(cfg.batch_size, N)
    steps = N // B  # drop the last partial batch, as CoOp does
    # plain CoOp has no CAMs; a captured graph still wants a tensor in their place
    no_cams = torch.zeros(B, clip.image_size, clip.image_size, dtype=torch.uint8, device=device) if cams is None else None
    later = "; the first epoch also compiles and captures (the speed options)" if compiled or cfg.cuda_graph else ""
    print(f"fit: set-up {_since(t_setup, device):.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())})"
          f"{later}", file=sys.stderr)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        perm = torch.randperm(N, generator=data_gen).to(device)  # [N]
        loss_sum = torch.zeros((), device=device)
        lr = optimizer.param_groups[0]["lr"]
        bar = progress_bar(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}")
        bar.set_postfix(lr=f"{lr:.3g}")
        for s in bar:
            idx = perm[s * B:(s + 1) * B]  # [B]
            # the same crop and flip for each image and its CAM, on the device
            x, cam = random_resized_crop_flip(images[idx], cams[idx] if cams is not None else None, clip.image_size,
                                              scale=(cfg.crop_scale, 1.0), generator=aug_gen)  # [B, 3, S, S], [B, S, S]
            if cam is not None:  # min-max over the view, as a CAM computed on the view would be (docs/method.md §1);
                # a view flat within one level of the uint8 cache is flat (resampling leaves ~1e-5 of noise)
                cam = normalize_cam(cam, min_span=1.0)
            try:  # thresholds from data_gen (CPU): no sync
                loss = step(x, cam if cam is not None else no_cams, labels[idx])
            except Exception as e:
                if compiled and _compiler_error(e):  # e.g. no C compiler for Triton's launcher
                    raise UserError(f"{' and '.join(compiled)}: torch.compile failed on this machine "
                                    f"({first_line(e)}); run with {' '.join(compiled.values())}") from None
                raise
            loss_sum += loss
            if cfg.dry_run:
                print(f"dry run: one batch of {B} images, loss {loss.item():.4f}, lr {lr:.3g}")
                return out
            if s % 20 == 19:  # reading the loss syncs with the device: only now and then
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.3g}")
        bar.close()
        mean_loss = (loss_sum / steps).item()
        if not math.isfinite(mean_loss) or not torch.isfinite(prompt.ctx).all():
            kept = f"the last good checkpoint {ckpt_path} (epoch {epoch}) is kept" if epoch > 0 else "no checkpoint was written"
            raise UserError(f"fit: the loss became non-finite ({mean_loss}) in epoch {epoch + 1}; {kept}; "
                            "try a lower --lr or --precision fp32")
        scheduler.step()
        record = {"epoch": epoch + 1, "loss": mean_loss, "lr": lr, "seconds": round(time.time() - t0, 3)}
        try:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # (a half-written line is dropped on --resume)
            raise UserError(f"cannot write {out / 'log.jsonl'}: {e.strerror or e}") from None
        progress_write(f"epoch {epoch + 1}/{cfg.epochs}  loss {mean_loss:.4f}  lr {lr:.3g}  ({record['seconds']:.1f} s)")
        atomic_save({
            "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "ctx": prompt.ctx.detach().cpu(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": _rng_state(data_gen, aug_gen), "config": config,
        }, ckpt_path)

    _export(prompt.ctx.detach(), clip, classes.classnames, cfg, config, out / "prompt.safetensors", "fit")
    return out


@torch.no_grad()
def _export(ctx: torch.Tensor, clip, classnames, cfg: FitConfig, config: dict, path: Path, source: str) -> None:
    """Encode the final text features in fp32 and write the prompt file atomically (``source``:
    where ``ctx`` comes from, for the error of a context that does not fit)."""
    from clip_smot.clip.prompt_file import save_prompt

    # fp32 weights (views, no copy), causal SDPA whatever the training used: the most exact layout
    # (FlexAttention's fp32 kernel is within 1e-4, not 1e-5); one pass: not compiled
    prompt = _build_prompt(clip, classnames, cfg, "fp32", attention="causal")
    _copy_ctx(prompt, ctx, source)
    text_features = F.normalize(prompt().float(), dim=-1)  # [K, e]
    if not torch.isfinite(text_features).all():  # (a context is finite here: the caller checked it)
        from clip_smot.clip.features import weights_flag

        raise UserError(f"{weights_flag(clip)}: the text encoder of {clip.name} gives non-finite text features for "
                        f"the context; its weights hold NaN or inf, or overflow; {path} not written")
    n_ctx = ctx.shape[-2]  # --ctx-init sets n_ctx to its token count
    save_prompt(path, ctx, text_features, clip.identity(), n_ctx, cfg.class_position, cfg.csc,
                list(classnames), config)


def export_prompt(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
) -> Path:
    """Re-export ``prompt.safetensors`` from a fit checkpoint (``clip-smot export``).

    Args:
        checkpoint: an ``OUT/checkpoint.pt`` of ``clip-smot fit``.
        out: the prompt file to write.
        model, pretrained: override the CLIP model named in the checkpoint (e.g. when its
            config JSON or weights file has moved); it must be the same architecture.
        device: where to encode the text features.
    """
    from clip_smot.clip.model import config_activation, load_clip

    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"--checkpoint {path}: no such file")
    inputs = [("--checkpoint file", path), ("--model file", model), ("--pretrained file", pretrained),
              *((f"run's {name}", path.parent / name) for name in _FILES if name != "prompt.safetensors")]
    check_output(out, "--out", inputs)
    saved = _load_checkpoint(path, None, "--checkpoint")
    config = saved["config"]
    cfg = FitConfig.from_dict(config)
    check_output(out, "--out", [("run's --model file", cfg.model), ("run's --pretrained file", cfg.pretrained)])
    dev = resolve_device(device)
    theirs = config["run"]["clip"]
    trained = config_activation(json.loads(theirs["model_config"]))  # (the record of an older run has no "activation")
    clip = load_clip(model or cfg.model, pretrained or cfg.pretrained, dev, trained, f"--checkpoint {path}")
    if json.loads(theirs["model_config"]) != clip.config:
        raise UserError(f"--checkpoint {path}: trained with {theirs['model']}, not the architecture of {clip.name}")
    # weights known to differ (two files of other SHA-256s, two tags): the prompt is not the trained one; a
    # tag and a file cannot be compared (a tag's weights as a local file: the usual reason to pass --pretrained)
    sha, ours = theirs["checkpoint_sha256"], clip.checkpoint_sha256
    other = sha != ours if sha and ours else not sha and not ours and theirs["pretrained"] != clip.pretrained
    if other:
        print(f"note: the context was trained with the weights {theirs['pretrained'] or 'random'}"
              f"{f' (sha256 {sha[:12]}...)' if sha else ''}, not with {clip.pretrained or 'random weights'}; "
              "the text features are encoded with the latter", file=sys.stderr)
    out = Path(out)  # (the context was checked when the checkpoint was read: a finite float tensor)
    _export(saved["ctx"], clip, config["run"]["classnames"], cfg, config, out, f"--checkpoint {path}")
    return out


