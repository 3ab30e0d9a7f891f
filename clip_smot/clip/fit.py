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

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clip_smot import __version__
from clip_smot.cam import normalize_cam
from clip_smot.clip.augment import random_resized_crop_flip
from clip_smot.clip.encoders import ATTENTION
from clip_smot.clip.prompt_file import CLASS_POSITIONS, classnames_problem
from clip_smot.clip.step import LOSSES, make_fit_step
from clip_smot.common import device as common_device
from clip_smot.common import run_folder as rf
from clip_smot.common.configs import (
    MAX_BATCH,
    MAX_SEED,
    MAX_SGD_FACTOR,
    MAX_WORKERS,
    check_field_types,
    check_ranges,
    check_smot_only,
    known_fields,
    setting,
)
from clip_smot.common.device import (
    DEVICES,
    PRECISIONS,
    raise_compile_error,
    require_compiler,
    require_cuda,
    resolve_device,
    resolve_precision,
)
from clip_smot.common.errors import UserError, first_line
from clip_smot.common.file_kinds import check_kind, check_replaced
from clip_smot.common.files import (
    atomic_write_files,
    check_output,
    is_file,
    is_folder,
    json_text,
    make_folder,
    missing_file,
    parse_json,
    read_with_hash,
    remove_stale_temporaries,
    same_file,
    text_writer,
)
from clip_smot.common.image_sets import stray_wnids
from clip_smot.common.images import name_as_text
from clip_smot.common.locks import output_lock
from clip_smot.common.progress import progress_bar, progress_write
from clip_smot.smot import PERTURBATIONS

__all__ = ["ATTENTION", "CLASS_POSITIONS", "LOSSES", "ExportConfig", "FitConfig", "export_prompt", "lr_factor",
           "method_options", "resolve_speed", "run_fit"]

CHECKPOINT_FORMAT = "clip-smot-fit-checkpoint"
_CHECKPOINT_KEYS = ("epoch", "ctx", "optimizer", "scheduler", "rng", "config")  # what fit writes
_FILES = ("split.txt", rf.CONFIG, rf.LOG, rf.CHECKPOINT, "prompt.safetensors")  # under --out


@dataclass(frozen=True)
class FitConfig:
    """Every option of a fit run; saved as ``OUT/config.json`` and inside the prompt file."""

    # data
    data: str | None = setting(None, "DATA/train/<class>/* (ImageNet wnids or any folders); default: the bundled "
                               "digits.", path="any")
    shots: int = setting(16, "Images per class.", min=1)  # drawn for the few-shot split
    split: str | None = setting(None, "Reuse a split.txt (relative/path<TAB>label) instead of drawing one.",
                                path="file")
    seed: int = setting(1, min=0, max=MAX_SEED)  # split draw, context init, order, crops, thresholds
    out: str = setting("runs/fit", path="dir")  # output folder
    workers: int = setting(4, "Image-decoding threads.", min=0, max=MAX_WORKERS)  # (once, before training)
    # model
    model: str = setting("ViT-B-16", "open_clip name or model-config JSON.")
    pretrained: str = setting("openai", "Pretrained tag or local checkpoint (.pt/.bin/.safetensors); 'none' = "
                              "random weights.")
    cam_model: str = setting("resnet18-imagenet", "CAM network: resnet18-imagenet, a torchvision ResNet state dict, "
                             "or a model.safetensors from 'clip-smot train'.")
    # prompt (CoOp)
    n_ctx: int = setting(16, "Context vectors (with --ctx-init: its token count, and no other).", min=1)
    ctx_init: str | None = setting(None, "Initialise the context from words, e.g. 'a photo of a'.")
    csc: bool = setting(False, "Class-specific contexts.")
    class_position: str = setting("end", choices=CLASS_POSITIONS)
    # loss (docs/method.md §1)
    loss: str = setting("smot", "smot, or a baseline on the originals alone: ce (plain CoOp), ls (label smoothing "
                        "0.1), logitnorm (LogitNorm, tau 0.04).", choices=LOSSES)
    alpha: float = setting(50.0, "Beta(alpha, beta) threshold draw.", min=0, min_open=True)  # t = 255 s
    beta: float = setting(20.0, min=0, min_open=True)
    lam: float = setting(0.1, "Weight of the masked term.", min=0, max=1)
    T: float = setting(200.0, "eps(t) temperature.", min=0, min_open=True)  # ImageNet-1k CLIP track, method.md §1
    perturb: str = setting("zero", choices=PERTURBATIONS)  # zero (black), one (white) or noise
    sigma: float = setting(0.1, "Std of --perturb noise.", min=0)
    # optimisation (CoOp's ImageNet recipe, docs/method.md §2)
    epochs: int = setting(50, min=1)
    batch_size: int = setting(32, min=1, max=MAX_BATCH)  # original images per step (SMOT adds as many masked copies)
    lr: float = setting(0.002, min=0, min_open=True, max=MAX_SGD_FACTOR)  # SGD, cosine over the epochs after warm-up
    momentum: float = setting(0.9, min=0, max=1)
    weight_decay: float = setting(5e-4, min=0, max=MAX_SGD_FACTOR)
    warmup_epochs: int = setting(1, min=0)  # epochs at the constant warm-up lr
    warmup_lr: float = setting(1e-5, min=0, min_open=True, max=MAX_SGD_FACTOR)
    crop_scale: float = setting(0.08, flag=False, min=0, max=1, min_open=True)  # smallest area of the random crop
    precision: str = setting("bf16", choices=PRECISIONS)  # autocast around the encoders; the context stays fp32
    text_residual: str = setting("fp32", "Text tower's residual stream: fp32, or in --precision (the whole tower in "
                                 "bf16 or fp16; faster).", choices=("fp32", "precision"))
    # exact speed options; "auto" / None: the fastest measured on the device (see resolve_speed)
    text_attention: str = setting(
        "auto", "Text attention layout (exact either way; square: one is_causal SDPA over prefix + suffix; flex: the "
        "flat token list with a block-sparse mask, FlexAttention on CUDA); auto: flex with CUDA (square before "
        "Ampere or where Triton cannot start), else causal (square with --compile).", choices=("auto", *ATTENTION))
    compile: bool | None = setting(None, "torch.compile the text layers (needs --text-attention square or flex) and "
                                   "the image encoder's blocks (compiled once, at the first step).  [default: on with "
                                   "CUDA of compute capability 7.0 or newer where Triton starts, and square or flex "
                                   "attention]")
    cuda_graph: bool | None = setting(None, "Replay each step's forward+backward as a CUDA graph (CUDA only).  "
                                      "[default: on with CUDA]")
    overlap_encoders: bool | None = setting(None, "Encode the images on a second CUDA stream while the text encoder "
                                            "runs (exact; CUDA only).  [default: on with CUDA]")
    device: str = setting("auto", choices=DEVICES, check_choices=False)  # (cuda:N from Python)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        """Build from a dict, ignoring unknown keys (such as ``run`` in config.json)."""
        return cls(**known_fields(cls, d))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> FitConfig:
        return cls.from_dict(parse_json(Path(path).read_text()))


# Options that may change between a run and its --resume.
_RUN_CONTROL = ("workers", "device", "out", "split", "cuda_graph", "text_residual",
                "text_attention", "compile", "overlap_encoders")  # (the split is compared by SHA-256)
# Options a checkpoint and the config.json beside it may hold apart (run_folder.check_config_beside):
# the run control, the inputs a resume may find at another path (their contents are compared:
# _check_resumed_files) and the precision (recorded as it ran: fp16 on the CPU is bf16).
_BESIDE_FREE = frozenset({*_RUN_CONTROL, "data", "model", "pretrained", "cam_model", "precision"})


def method_options(cfg: FitConfig) -> dict:
    """The options of ``cfg`` that make its method, those a resume takes from its checkpoint where
    they are not given: all but the run control and the inputs (whose contents are compared), and
    ``n_ctx`` beside a ``ctx_init`` (its token count)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in _BESIDE_FREE and not (k == "n_ctx" and cfg.ctx_init)}


def check_config(cfg: FitConfig) -> None:
    """Range checks of every option (:func:`~clip_smot.common.configs.check_ranges`) and the
    options that need one another, as UserErrors naming the flag (the CLI checks the ranges too)."""
    check_ranges(cfg)
    if cfg.compile and cfg.text_attention not in ("auto", "square", "flex"):
        raise UserError("--compile: needs --text-attention square or flex")  # (the switch: not "--compile True")
    if cfg.device == "cpu":  # (auto and cuda: once the device is resolved, _resolve)
        _require_cuda_options(cfg, torch.device("cpu"))


def _require_cuda_options(cfg: FitConfig, device: torch.device) -> None:
    """Refuse --cuda-graph and --overlap-encoders, where on, off CUDA (:func:`require_cuda`)."""
    for flag, on in (("--cuda-graph", cfg.cuda_graph), ("--overlap-encoders", cfg.overlap_encoders)):
        if on:
            require_cuda(flag, device)


def resolve_speed(cfg: FitConfig, device: torch.device) -> FitConfig:
    """``cfg`` with its speed options decided for ``device`` (what was given stays as given).

    On CUDA the defaults are the fastest exact step measured (benchmarks/fit_step.py, results in
    benchmarks/RESULTS.md): FlexAttention
    (``square`` where this torch or GPU has no FlexAttention kernel: before Ampere), compiled
    layers (where Triton can build kernels: compute capability 7.0 or newer), a CUDA graph and
    the image encoder on a second stream. Where Triton cannot start (e.g. no C compiler) the
    first two are off, as below Volta. Elsewhere they are off and the attention is
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
    from clip_smot.common.images import refuse_loose_images

    root = resolve_train_root(cfg.data) if cfg.data else ensure_digits(size=image_size) / "train"
    classes = resolve_classes(root)
    refuse_loose_images(root)  # (as train refuses it: it was left out of the draw without a word)
    split = read_split(cfg.split, classes) if cfg.split else draw_split(classes, cfg.shots, cfg.seed)
    return classes, split


def _restore(saved: dict, prompt, optimizer, scheduler, generators: dict, path: Path, cfg: FitConfig) -> None:
    """Put a checkpoint's context, optimizer, schedule and RNG states into the run's, each checked
    to fit first (a hand-edited checkpoint is one line, not a traceback at the first step)."""
    where = f"--resume {path}"
    _copy_ctx(prompt, saved["ctx"], where)
    rf.load_optimizer_state(optimizer, saved["optimizer"], where)
    sched = saved["scheduler"]
    if not (isinstance(sched, dict) and isinstance(sched.get("last_epoch"), int)
            and isinstance(sched.get("base_lrs"), list) and len(sched["base_lrs"]) == len(optimizer.param_groups)
            and all(isinstance(v, float) and math.isfinite(v) for v in sched["base_lrs"])):  # (an int may be past any float)
        raise UserError(f"{where}: its learning-rate schedule is damaged")
    # the schedule is the config's (--lr, --epochs, the warm-up): a state that says otherwise was edited
    epoch, ours = saved["epoch"], scheduler.base_lrs
    lrs = [g["lr"] for g in optimizer.param_groups]
    if sched["base_lrs"] != ours or sched["last_epoch"] != epoch or lrs != [lr * lr_factor(epoch, cfg) for lr in ours]:
        raise UserError(f"{where}: its learning-rate schedule (base lr {sched['base_lrs']}, epoch "
                        f"{sched['last_epoch']}, lr {lrs}) is not the run's")
    # the rest is the scheduler's bookkeeping, set as its attributes: only the keys ours holds, of
    # their types (an "optimizer" or a string "_step_count" failed at the end of the next epoch)
    fresh = scheduler.state_dict()
    state = {**fresh, **{k: v for k, v in sched.items() if k in fresh}}
    if any(type(state[k]) is not type(v) for k, v in fresh.items()) or state["lr_lambdas"] != fresh["lr_lambdas"]:
        raise UserError(f"{where}: its learning-rate schedule is damaged")
    scheduler.load_state_dict(state)
    try:
        rf.restore_rng(saved["rng"], generators, where)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, OverflowError) as e:  # (a hand-edited state)
        raise UserError(f"{where}: its random-number state is damaged ({type(e).__name__}: {first_line(e)})") from None


def _copy_ctx(prompt, ctx: torch.Tensor, where: str) -> None:
    """Copy a saved context into ``prompt``'s, once its shape is seen to be the one the options
    and the CLIP model give."""
    if tuple(ctx.shape) != tuple(prompt.ctx.shape):
        raise UserError(f"{where}: its context has shape {list(ctx.shape)}, not the {list(prompt.ctx.shape)} of its "
                        "options and CLIP model")
    with torch.no_grad():
        prompt.ctx.copy_(ctx.to(prompt.ctx.device))


_CTX_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # (a saved context's; fit writes float32)


def _check_saved(saved: dict, where: str) -> None:
    """The types and ranges of what a fit checkpoint holds, before any of it is used: the epoch,
    a finite float context of 2 or 3 dimensions, a configuration that passes :func:`check_config`
    and the run block's records (the names and the model's identity)."""
    config, ctx = saved["config"], saved["ctx"]
    run = config["run"]
    problems = [
        (isinstance(saved["epoch"], int) and not isinstance(saved["epoch"], bool) and saved["epoch"] >= 0
         and not (isinstance(config.get("epochs"), int) and saved["epoch"] > config["epochs"]),
         "epoch (a whole number of epochs done, at most the run's epochs)"),
        # (finite as the float32 it is copied into: 1e300 in float64 was inf there, blamed on the weights; a
        # float8 one has no isfinite)
        (isinstance(ctx, torch.Tensor) and ctx.dtype in _CTX_DTYPES and ctx.ndim in (2, 3) and rf.holds_its_values(ctx)
         and bool(torch.isfinite(ctx.float()).all()), "ctx (a finite float tensor [n_ctx, d] or [K, n_ctx, d])"),
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
    problem = classnames_problem(run["classnames"])  # (fit refuses such names: a run never records one)
    if problem:
        raise UserError(f"{where}: a damaged fit checkpoint (config.run.classnames: {problem})")
    try:
        parse_json(run["clip"]["model_config"])
        # the exported prompt records the config as JSON (save_prompt): a tensor or a key of another
        # type in it was a TypeError traceback from json.dumps, after the encoding
        json.dumps(config, sort_keys=True)
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
        csc = "--csc" if cfg.csc else "no --csc"
        raise UserError(f"{where}: its context has shape {list(ctx.shape)}, which {csc}, its "
                        f"{len(run['classnames'])} classes and --n-ctx {cfg.n_ctx} do not give")


def _load_checkpoint(path: Path, flag: str) -> dict:
    """Read a fit checkpoint, each part checked (:func:`_check_saved`) before any is used."""
    check_kind(path, flag, "fit-checkpoint")  # (a prompt, a train checkpoint: named as such)
    try:
        saved = rf.read_checkpoint(path, CHECKPOINT_FORMAT)
    except rf.CheckpointError as e:
        raise UserError(f"{flag} {path}: {e}") from None
    missing = [k for k in _CHECKPOINT_KEYS if k not in saved]
    if not missing and not (isinstance(saved["config"], dict) and isinstance(saved["config"].get("run"), dict)):
        missing = ["config.run"]
    if missing:
        raise UserError(f"{flag} {path}: an incomplete fit checkpoint (no {', '.join(missing)})")
    _check_saved(saved, f"{flag} {path}")
    return saved


def _resume_config(cfg: FitConfig, saved: dict, flags: Collection[str] | None, device: torch.device) -> FitConfig:
    """The options of a resumed run (:func:`~clip_smot.common.run_folder.resume_options`): an option
    given (``flags``; None: those not at their default) must be the saved one; the others are the
    saved ones, the run-control options the current ones. A precision is compared by what runs
    on ``device`` (``--precision fp16`` on the CPU resumes a run recorded as bf16). A checkpoint
    whose options are not those of the config.json beside it is another run's: refused."""
    from clip_smot.clip.fewshot import resolve_train_root

    old = saved["config"]
    # the checkpoint is the run's own (the options of the config.json beside it); --ctx-init's
    # n_ctx is its token count (an older run recorded the default: ctx_init is compared instead)
    method = [f.name for f in dataclasses.fields(FitConfig)
              if f.name not in _BESIDE_FREE and not (f.name == "n_ctx" and old.get("ctx_init"))]
    rf.check_config_beside(cfg.out, old, method, f"--resume {Path(cfg.out) / rf.CHECKPOINT}",
                           FitConfig.from_dict(old).to_dict())  # (a key it lacks: the default, as resumed)
    given = set(flags) if flags is not None else rf.explicit_fields(cfg)
    if old.get("precision") in PRECISIONS and \
            resolve_precision(cfg.precision, device) == resolve_precision(old["precision"], device):
        cfg = dataclasses.replace(cfg, precision=old["precision"])
    if "data" in given and cfg.data:  # config.json records the folder of class folders, resolved
        cfg = dataclasses.replace(cfg, data=str(resolve_train_root(cfg.data).resolve()))
    # a file given to --model, --pretrained or --cam-model is compared by its contents (in
    # _check_resumed_files), not by how its path is spelled (relative now, absolute then)
    by_content = {k for k, record in (("model", "clip"), ("pretrained", "clip"), ("cam_model", "cam_model_sha256"))
                  if record in old["run"] and os.path.isfile(getattr(cfg, k))}
    # a --data moved since (another disk, a renamed folder) resumes: the split is drawn again and
    # compared by SHA-256, the images by theirs (relative paths and contents: _load_inputs)
    moved = {"data"} if "data" in given and old["run"].get("images_sha256") else set()
    options = {k: v for k, v in old.items() if k != "run"}
    resumed = FitConfig.from_dict(rf.resume_options(options, cfg.to_dict(), given,
                                                    {*_RUN_CONTROL, *by_content, *moved}, cfg.out))
    if old.get("split") and not resumed.split:  # a run started on a given split goes on with it: its own copy
        resumed = dataclasses.replace(resumed, split=str(Path(cfg.out) / "split.txt"))
    _check_run_files_there(resumed, old["run"], {"model", "pretrained", "cam_model"} - given,
                           f"--resume {Path(cfg.out) / rf.CHECKPOINT}")
    return resumed


def _check_run_files_there(run: FitConfig, record: dict, fields: Collection[str], where: str) -> None:
    """Refuse, in one line naming the flag that takes its new path, a file the run read (its
    ``--model`` JSON, ``--pretrained`` or ``--cam-model`` file, of ``fields``: those not given
    again) that is no longer at its path: its own "no such file" named a flag not given."""
    from clip_smot.clip.cam_network import CAM_MODELS
    from clip_smot.clip.model import config_path

    files = {"model": config_path(run.model),
             "pretrained": bool((record.get("clip") or {}).get("checkpoint_sha256")),  # (a tag has none)
             "cam_model": run.loss == "smot" and run.cam_model not in CAM_MODELS}
    for field, names_a_file in files.items():
        path = getattr(run, field)
        if field in fields and names_a_file and not os.path.isfile(path):
            flag = "--" + field.replace("_", "-")
            raise UserError(f"{where}: the run's {flag} file {path} is not there (moved?); pass {flag} with its "
                            "path now")


def _check_resumed_files(saved: dict, config: dict, path: Path) -> None:
    """Refuse a resume whose inputs are other files than the run's under the same options: its
    split (images changed under --data), its CLIP weights' activation, its weights or CAM network
    (replaced at their paths)."""
    flag, old = f"--resume {path}", saved["config"]
    if old["run"]["split_sha256"] != config["run"]["split_sha256"]:
        split = path.parent / "split.txt"
        # the split read: the run's own copy (taken when --split is left out), edited since, which
        # no flag puts right; or a --split file that is not the run's (another, or edited since)
        if config["split"] and same_file(config["split"], split):
            raise UserError(f"{flag}: {split}, the run's copy of its few-shot split, is not the split the run "
                            "started with (edited since?); restore it, or start a new run in another --out")
        if config["split"]:
            raise UserError(f"--resume: --split {config['split']} is not the few-shot split of the run saved in "
                            f"{config['out']} (another file, or edited since); pass --split {split}, the run's own "
                            "copy")
        raise UserError(f"{flag}: the run's few-shot split ({split}) is not the one drawn now (did the images under "
                        f"--data change?); to continue on its images, add --split {split}")
    was, now = _recorded_activation(old["run"].get("clip")), config["run"]["clip"]["activation"]
    if was is not None and was != now:  # e.g. a run of ViT-B-16 + openai from before the tag's QuickGELU was honoured
        raise UserError(f"{flag}: the run was trained with {was}, but these weights are built with {now}; its "
                        "context does not fit them: fit again in another --out")
    for key, what in (("clip", f"--model {config['model']} --pretrained {config['pretrained']}"),
                      ("cam_model_sha256", f"--cam-model {config['cam_model']}")):
        if key in old["run"] and _contents(old["run"][key]) != _contents(config["run"][key], old["run"][key]):
            raise UserError(f"{flag}: {what} is not the model the run was trained with (the file changed since); "
                            "resume with the run's own files")


def _recorded_activation(record) -> str | None:
    """The activation a run's CLIP record names (a record without one: its model config's), or
    None when the record is not one."""
    from clip_smot.clip.model import config_activation

    try:
        return record.get("activation") or config_activation(parse_json(record["model_config"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _since(t0: float, device: torch.device) -> float:
    """Seconds since ``t0`` (``time.perf_counter``), the device's queued work included (set-up only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _contents(record, saved=None):
    """What a run record says of the weights' contents: a CLIP identity less the checkpoint file's
    name where its SHA-256 is known (a copy under another name holds the same weights). With
    ``saved`` (the run's own record, for today's), less the activation where that record names
    none (an older clip-smot's run): :func:`_check_resumed_files` compares it through the model config."""
    if not isinstance(record, dict):
        return record
    drop = {"pretrained"} if record.get("checkpoint_sha256") else set()
    if isinstance(saved, dict) and "activation" not in saved:
        drop.add("activation")
    return {k: v for k, v in record.items() if k not in drop}


def _own_split(cfg: FitConfig) -> bool:
    """Whether ``--split`` is the run's own ``OUT/split.txt`` (given to resume it, or to run again
    on its images): read, not rewritten, and no input the run's outputs must keep clear of."""
    return bool(cfg.split) and same_file(cfg.split, Path(cfg.out) / "split.txt")


def _check_outputs(cfg: FitConfig, new: bool) -> None:
    """Raise a UserError when ``--out`` would replace a file the run reads or lies inside the
    folder of its class folders (a later run would read the run's files as data), or, for a
    ``new`` run, a file of its names that is no stopped fit run's (:func:`run_folder.check_new_run`).
    ``--split OUT/split.txt`` is the run's own split: it is not rewritten (see :func:`run_fit`)."""
    from clip_smot.clip.fewshot import resolve_train_root

    own_split = _own_split(cfg)
    split = None if own_split else cfg.split
    inputs = [("--split file", split), ("--model file", cfg.model), ("--pretrained file", cfg.pretrained),
              ("--cam-model file", cfg.cam_model)]
    if cfg.data:
        # (is_folder: pathlib's is_dir raised OSError, a traceback, for a name too long)
        folders = [("the --data folder", resolve_train_root(cfg.data))] if is_folder(cfg.data, "--data") else []
    else:
        from clip_smot.common.digits import written_folders

        folders = written_folders()
    check_output(cfg.out, "--out", inputs, folders, writes=_FILES)
    if new:
        rf.check_new_run(cfg.out, "fit", [f for f in _FILES if not (own_split and f == "split.txt")])


@dataclass
class _Inputs:
    """What a fit run reads before it trains: the CLIP model, the data and the run's record."""

    clip: object  # clip_smot.clip.model.ClipModel
    classes: object  # clip_smot.clip.fewshot.FewShotClasses
    split: list  # [(relative path, label)]
    text: str  # split.txt's text
    config: dict  # config.json: every resolved option plus the "run" block
    cam_net: object | None  # the CAM network (--loss smot)
    seconds: dict  # set-up time per part
    t_setup: float  # time.perf_counter() at the set-up's start


@dataclass
class _Training:
    """What the epochs update: the prompt, its optimizer and schedule, the generators and the step."""

    prompt: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    generators: dict  # data_gen (order, thresholds; CPU), aug_gen (crops, flips, noise; the device)
    step: object = None


def run_fit(cfg: FitConfig, resume: bool = False, dry_run: bool = False,
            flags: Collection[str] | None = None) -> Path:
    """Fit a prompt; returns the output folder (with ``prompt.safetensors`` unless a dry run).

    Args:
        cfg: every option of the run (what config.json records).
        resume: continue the run in ``cfg.out`` from its checkpoint.
        dry_run: one batch, print its loss, then stop; writes nothing.
        flags: the options the user gave (the command line's); with ``resume`` each must be
            the saved run's, the others take the saved values (None: those not at their default).

    Raises:
        UserError: any bad input (docs/method.md §6), or a non-finite loss (the last good
            checkpoint is kept).
    """
    with output_lock(cfg.out, folder=True) if not dry_run else contextlib.nullcontext():  # (a dry run writes nothing)
        return _run_fit(cfg, resume, dry_run, flags)


def _run_fit(cfg: FitConfig, resume: bool, dry_run: bool, flags: Collection[str] | None) -> Path:
    """:func:`run_fit`, once no other command writes ``--out``."""
    n_ctx_given = "n_ctx" in (set(flags) if flags is not None else rf.explicit_fields(cfg))  # (before a resume merges)
    cfg, saved, device = _resolve(cfg, resume, dry_run, flags)
    out = Path(cfg.out)
    inputs = _load_inputs(cfg, device, n_ctx_given)
    if saved is not None:
        _check_resumed_files(saved, inputs.config, out / rf.CHECKPOINT)
        if rf.finished(out, "fit", saved["epoch"], cfg.epochs, ["prompt.safetensors"]):
            return out
    own_split = _prepare_folder(cfg, inputs.text, dry_run)
    images, labels, images_sha256 = _decode_images(cfg, device, inputs)
    _check_same_images(saved, images_sha256, out)
    inputs.config["run"]["images_sha256"] = images_sha256  # (in config.json and every checkpoint: --resume compares it)
    cams = _cache_cams(cfg, device, inputs, images, labels) if inputs.cam_net is not None else None
    inputs.cam_net = None  # (no longer needed)
    training = _build(cfg, device, inputs, saved)
    if not dry_run:  # (once all that a resume reads has been checked)
        # split.txt and config.json as one (config.json first): a split alone, left by a kill
        # between the two renames, is no stopped run's to a rerun (check_new_run), and there is no
        # checkpoint to --resume; a config.json alone is a stopped run's, which a rerun starts over
        files = {} if own_split else {"split.txt": text_writer(inputs.text)}  # (own: the same text)
        atomic_write_files(out, {rf.CONFIG: text_writer(json_text(inputs.config)), **files},
                           last=None if own_split else "split.txt")
        rf.truncate_log(out / rf.LOG, saved["epoch"] if saved else 0)  # epochs after the checkpoint are run again
    if _train(cfg, device, inputs, training, images, labels, cams, saved["epoch"] if saved else 0, dry_run):
        _export(training.prompt.ctx.detach(), inputs.clip, inputs.classes.classnames, cfg, inputs.config,
                out / "prompt.safetensors", "fit", cfg.epochs)
    return out


def _resolve(cfg: FitConfig, resume: bool, dry_run: bool,
             flags: Collection[str] | None) -> tuple[FitConfig, dict | None, torch.device]:
    """The run's options (checked; on --resume merged with the checkpoint's), the checkpoint read
    (None: a new run) and the device."""
    check_config(cfg)
    ckpt_path = rf.check_start(cfg.out, resume, dry_run, "prompt.safetensors")
    saved = _load_checkpoint(ckpt_path, "--resume") if resume else None
    device = resolve_device(cfg.device)  # (a run-control option: the current one also on --resume)
    if saved is not None:
        cfg = _resume_config(cfg, saved, flags, device)
    check_smot_only(cfg, cfg.loss, "--loss", flags or ())  # (the command line's: a library config is as it is)
    # the precision that runs on this device: fp16 is bf16 on the CPU, and recorded so
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
    if not dry_run:
        _check_outputs(cfg, saved is None)
    given, cfg = cfg, resolve_speed(cfg, device)
    _require_cuda_options(cfg, device)
    if cfg.compile:  # (before the set-up: inductor's CPU kernels are C++, Triton's driver is built from C)
        require_compiler("--compile", device, "with --no-compile")
    if lost := _lost_to_triton(given, device):
        why = common_device.missing_triton()
        fix = "; install a C compiler (gcc) or point CC at one for the fast step" if "compiler" in why.lower() else ""
        print(f"note: Triton cannot start on this machine ({why}): fit runs without {lost}, slower{fix}",
              file=sys.stderr)
    return cfg, saved, device


def _lost_to_triton(given: FitConfig, device: torch.device) -> str:
    """The default speed options (:func:`resolve_speed`) that this CUDA GPU would run but that
    Triton, not starting on this machine, turned off ("" where none was)."""
    if device.type != "cuda" or common_device.missing_triton() is None:
        return ""
    sm = torch.cuda.get_device_capability(device)
    lost = ["FlexAttention"] if given.text_attention == "auto" and sm >= (8, 0) else []
    if given.compile is None and given.text_attention in ("auto", "square", "flex") and sm >= (7, 0):
        lost.append("compiled layers")
    return " and ".join(lost)


def _load_inputs(cfg: FitConfig, device: torch.device, n_ctx_given: bool = False) -> _Inputs:
    """Load the CLIP model, the classes and split and the CAM network; resolve and record every
    option before any slow work (``n_ctx_given``: whether ``--n-ctx`` was given)."""
    from clip_smot.clip.fewshot import split_text
    from clip_smot.clip.model import load_clip
    from clip_smot.clip.prompt import ctx_init_length, quote_words

    t_setup = time.perf_counter()
    clip = load_clip(cfg.model, cfg.pretrained, device)  # fails within seconds when weights are unavailable
    size = clip.config["vision_cfg"].get("image_size")
    if isinstance(size, list) and len(set(size)) > 1:  # (a ViT of 4 x 5 patches got 4 x 4: a RuntimeError at batch 1)
        raise UserError(f"--model {cfg.model}: its vision_cfg.image_size {size} is not square; fit prepares its few-shot "
                        "images as squares (score and eval take [height, width])")
    seconds = {"CLIP model": _since(t_setup, device)}
    if cfg.ctx_init:  # the context is the words' tokens: n_ctx is their count, and recorded as such
        n_ctx = ctx_init_length(clip.tokenizer, cfg.ctx_init)
        if n_ctx_given and cfg.n_ctx != n_ctx:
            raise UserError(f"--n-ctx {cfg.n_ctx}: --ctx-init {quote_words(cfg.ctx_init)} makes a context of its {n_ctx} "
                            "tokens; leave --n-ctx out")
        cfg = dataclasses.replace(cfg, n_ctx=n_ctx)
    classes, split = _load_data(cfg, clip.image_size)
    problem = classnames_problem(list(classes.classnames))
    if problem:  # (prompt files are bounded so: its prompt.safetensors would be refused by score and eval)
        raise UserError(f"--data {classes.root}: {problem}, which a prompt file cannot hold; rename its folder")
    if len(classes.folders) == 1:  # a valid run, but one that cannot learn: say so before the slow work
        print(f"note: {classes.root} has one class: a softmax over one class is 1, so the loss is 0 and only "
              "weight decay moves the context", file=sys.stderr)
    if classes.imagenet_index is None and (stray := stray_wnids(classes.folders)):  # (its prompts name the wnids)
        print(f"note: {classes.root}: {stray}; move the others out for ImageNet's class names", file=sys.stderr)
    seen = {label for _, label in split}
    unseen = [f for y, f in enumerate(classes.folders) if y not in seen]
    if unseen:  # a --split of another data set (e.g. of a subset of these classes)
        print(f"note: --split {cfg.split} has no image of {len(unseen)} of the {len(classes.folders)} classes of "
              f"{classes.root} ({', '.join(unseen[:3])}{' ...' if len(unseen) > 3 else ''}): the prompt holds "
              "them, but nothing trains on them", file=sys.stderr)
    cam_net, cam_sha = None, None
    if cfg.loss == "smot":
        from clip_smot.clip.cam_network import CAM_MODELS, load_cam_network

        if cfg.cam_model in CAM_MODELS:
            cam_net = load_cam_network(cfg.cam_model)
        else:  # (the hash, which a resume checks, of the very file read)
            cam_net, cam_sha = read_with_hash(cfg.cam_model, "--cam-model", lambda: load_cam_network(cfg.cam_model))
    text = split_text(split)
    resolved = dataclasses.replace(cfg, data=str(classes.root.resolve()), device=str(device))
    config = resolved.to_dict() | {"run": {
        "classnames": list(classes.classnames), "class_folders": [name_as_text(f) for f in classes.folders],
        "n_images": len(split), "split_sha256": hashlib.sha256(text.encode()).hexdigest(),  # = of OUT/split.txt
        "image_size": clip.image_size, "clip": clip.identity(), "cam_model": cam_net.source if cam_net else None,
        "cam_model_sha256": cam_sha, "library_version": __version__,
    }}
    return _Inputs(clip, classes, split, text, config, cam_net, seconds, t_setup)


def _prepare_folder(cfg: FitConfig, text: str, dry_run: bool) -> bool:
    """Make ``--out`` (not for a dry run, which writes nothing) and remove the temporary files of
    a run killed while writing; returns whether ``--split`` is the run's own split.txt (read,
    and not rewritten, as resume's error advises)."""
    out = Path(cfg.out)
    own_split = _own_split(cfg)
    if dry_run:
        return own_split
    if own_split and Path(cfg.split).read_text(encoding="utf-8") != text:
        raise UserError(f"--split {cfg.split}: is {out / 'split.txt'}, which this run writes in another form; "
                        "pass a copy of it")
    make_folder(out)
    remove_stale_temporaries(out, _FILES)  # of a run killed while writing
    return own_split


def _decode_images(cfg: FitConfig, device: torch.device, inputs: _Inputs) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The split's images on the device, decoded once, their labels, and the SHA-256 of their
    bytes (a resume checks them too)."""
    from clip_smot.clip.fewshot import decode_and_hash

    classes, split = inputs.classes, inputs.split
    labels = torch.tensor([y for _, y in split], device=device)  # [N]
    t = time.perf_counter()
    images, images_sha256 = decode_and_hash(classes.root, [p for p, _ in split], inputs.clip.image_size, cfg.workers,
                                            device if device.type == "cuda" else None)
    images = images.to(device)  # [N, 3, S, S] uint8
    inputs.seconds[f"{len(split)} image{'' if len(split) == 1 else 's'} decoded"] = _since(t, device)
    return images, labels, images_sha256


def _check_same_images(saved: dict | None, images_sha256: str, out: Path) -> None:
    """Refuse a resume whose few-shot images have other bytes than when the run started."""
    if saved is not None and saved["config"]["run"].get("images_sha256") not in (None, images_sha256):
        raise UserError(f"--resume {out / rf.CHECKPOINT}: an image of the run's few-shot split "
                        f"({out / 'split.txt'}) has other bytes than when the run started (replaced under the "
                        "same name); the run cannot continue on other images: restore them, or start a new run "
                        "in another --out")


def _cache_cams(cfg: FitConfig, device: torch.device, inputs: _Inputs, images: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """The CAM of each image (--loss smot), computed once: uint8 [N, S, S]."""
    from clip_smot.clip.cam_network import build_cam_provider, cache_cams

    cam_net, classes = inputs.cam_net, inputs.classes
    provider, label_map = build_cam_provider(cam_net, classes)
    if label_map is None:  # the method's CAM is for the true label: say where it cannot be
        if cam_net.class_ids is not None:
            why = (f"was trained on other classes ({', '.join(cam_net.class_ids[:3])}"
                   f"{' ...' if len(cam_net.class_ids) > 3 else ''}) than those of {classes.root}")
        elif cam_net.imagenet:
            why = f"is an ImageNet-1k network and the classes of {classes.root} are not ImageNet wnids"
        else:
            why = f"does not name its classes ({cfg.cam_model} is a state dict of other than 1000 classes)"
        print(f"note: --cam-model {cfg.cam_model} {why}: the CAMs are of its top-1 class, not of the true label",
              file=sys.stderr)
    t = time.perf_counter()
    cams = cache_cams(provider, label_map, images, labels)  # [N, S, S] uint8
    inputs.seconds["CAMs"] = _since(t, device)
    return cams


def _build(cfg: FitConfig, device: torch.device, inputs: _Inputs, saved: dict | None) -> _Training:
    """The prompt, its SGD and schedule, the seeded generators (a checkpoint's states on --resume)
    and the fit step."""
    clip = inputs.clip
    prompt = _build_prompt(clip, inputs.classes.classnames, cfg, cfg.precision, compile_layers=cfg.compile)
    params = [p for p in prompt.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, cfg))
    generators = {"data_gen": torch.Generator().manual_seed(cfg.seed),  # order and thresholds, drawn on the CPU
                  "aug_gen": torch.Generator(device=device).manual_seed(cfg.seed)}  # crops, flips, noise
    training = _Training(prompt, optimizer, scheduler, generators)
    if saved is not None:
        _restore(saved, prompt, optimizer, scheduler, generators, Path(cfg.out) / rf.CHECKPOINT, cfg)
    elif cfg.cuda_graph:  # a graph draws --perturb noise from torch's CUDA generator: seeded, so --seed fixes it
        torch.cuda.manual_seed(cfg.seed)
    training.step = make_fit_step(
        clip, prompt, optimizer, loss=cfg.loss, lam=cfg.lam, T=cfg.T, alpha=cfg.alpha, beta=cfg.beta,
        perturbation=cfg.perturb, sigma=cfg.sigma, precision=cfg.precision, generator=generators["data_gen"],
        cuda_graph=cfg.cuda_graph, compile_image=cfg.compile, overlap=cfg.overlap_encoders,
        noise_generator=None if cfg.cuda_graph else generators["aug_gen"])  # a graph draws from torch's CUDA RNG
    return training


def _train(cfg: FitConfig, device: torch.device, inputs: _Inputs, training: _Training, images: torch.Tensor,
           labels: torch.Tensor, cams: torch.Tensor | None, start_epoch: int, dry_run: bool) -> bool:
    """The epochs from ``start_epoch``: a log line and a checkpoint after each; returns False after
    a dry run's one batch."""
    from clip_smot.clip.encoders import flex_available

    compiled = {"--compile": "--no-compile"} if cfg.compile else {}  # what torch.compile builds -> what avoids it
    if cfg.text_attention == "flex" and flex_available(device):  # FlexAttention's kernel: compiled, --compile or not
        compiled["--text-attention flex"] = "--text-attention square"
    size, out = inputs.clip.image_size, Path(cfg.out)
    N = len(inputs.split)
    B = min(cfg.batch_size, N)
    # a baseline loss (plain CoOp, ...) has no CAMs; a captured graph still wants a tensor in their place
    no_cams = torch.zeros(B, size, size, dtype=torch.uint8, device=device) if cams is None else None
    # (what it does: a CPU run compiles and captures no CUDA graph, an eager CUDA-graph run only captures)
    does = " and ".join(w for w, on in (("compiles", compiled), ("captures a CUDA graph", cfg.cuda_graph)) if on)
    later = f"; the first epoch also {does} (the speed options)" if does else ""
    print(f"fit: set-up {_since(inputs.t_setup, device):.1f} s "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in inputs.seconds.items())}){later}", file=sys.stderr)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        lr = training.optimizer.param_groups[0]["lr"]
        mean_loss = _epoch(cfg, epoch, training, images, labels, cams, no_cams, size, B, compiled, dry_run)
        if mean_loss is None:
            return False
        if not math.isfinite(mean_loss) or not torch.isfinite(training.prompt.ctx).all():
            raise rf.non_finite_loss("fit", mean_loss, epoch, out / rf.CHECKPOINT,
                                     "try a lower --lr or --precision fp32")
        training.scheduler.step()
        record = rf.log_record(epoch + 1, mean_loss, lr, time.time() - t0)
        rf.append_log(out, record)
        rf.save_checkpoint(out / rf.CHECKPOINT, CHECKPOINT_FORMAT, {
            "epoch": epoch + 1, "ctx": training.prompt.ctx.detach().cpu(),
            "optimizer": training.optimizer.state_dict(), "scheduler": training.scheduler.state_dict(),
            "rng": rf.capture_rng(training.generators), "config": inputs.config})
        # (after the checkpoint, as train's: a printed epoch is one a --resume continues after)
        progress_write(f"epoch {epoch + 1}/{cfg.epochs}  loss {mean_loss:.4f}  lr {lr:.3g}  "
                       f"({record['seconds']:.1f} s)")
    return True


def _epoch(cfg: FitConfig, epoch: int, training: _Training, images, labels, cams, no_cams, size: int, B: int,
           compiled: dict, dry_run: bool) -> float | None:
    """One epoch's steps over a permutation drawn at its start; returns the mean loss (None after a
    dry run's one batch, whose loss it prints)."""
    data_gen, aug_gen = training.generators["data_gen"], training.generators["aug_gen"]
    N = images.shape[0]
    steps = N // B  # drop the last partial batch, as CoOp does
    perm = torch.randperm(N, generator=data_gen).to(images.device)  # [N]
    loss_sum = torch.zeros((), device=images.device)
    lr = training.optimizer.param_groups[0]["lr"]
    bar = progress_bar(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}")
    bar.set_postfix(lr=f"{lr:.3g}")
    for s in bar:
        idx = perm[s * B:(s + 1) * B]  # [B]
        # the same crop and flip for each image and its CAM, on the device
        x, cam = random_resized_crop_flip(images[idx], cams[idx] if cams is not None else None, size,
                                          scale=(cfg.crop_scale, 1.0), generator=aug_gen)  # [B, 3, S, S], [B, S, S]
        if cam is not None:  # min-max over the view, as a CAM computed on the view would be (docs/method.md §1);
            # a view flat within one level of the uint8 cache is flat (resampling leaves ~1e-5 of noise)
            cam = normalize_cam(cam, min_span=1.0)
        try:  # thresholds from data_gen (CPU): no sync
            loss = training.step(x, cam if cam is not None else no_cams, labels[idx])
        except Exception as e:  # (e.g. no C compiler for Triton's launcher: one line)
            raise_compile_error(e, list(compiled), f"with {' '.join(compiled.values())}")
            raise
        loss_sum += loss
        if dry_run:
            print(f"dry run: one batch of {B} image{'' if B == 1 else 's'}, loss {loss.item():.4f}, lr {lr:.3g}")
            return None
        if s % 20 == 19:  # reading the loss syncs with the device: only now and then
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.3g}")
    bar.close()
    return (loss_sum / steps).item()


@torch.no_grad()
def _export(ctx: torch.Tensor, clip, classnames, cfg: FitConfig, config: dict, path: Path, source: str,
            epoch: int) -> None:
    """Encode the final text features in fp32 and write the prompt file atomically (``source``:
    where ``ctx`` comes from, for the error of a context that does not fit; ``epoch``: the
    epochs it was trained, recorded as the config's ``run.epoch``)."""
    from clip_smot.clip.prompt_file import save_prompt

    # fp32 weights (views, no copy), causal SDPA whatever the training used: the most exact layout
    # (FlexAttention's fp32 kernel is within 1e-4, not 1e-5); one pass: not compiled
    prompt = _build_prompt(clip, classnames, cfg, "fp32", attention="causal")
    _copy_ctx(prompt, ctx, source)
    text_features = F.normalize(prompt().float(), dim=-1)  # [K, e]
    if not torch.isfinite(text_features).all():  # (a context is finite here: the caller checked it)
        from clip_smot.clip.model import weights_flag

        raise UserError(f"{weights_flag(clip)}: the text encoder of {clip.name} gives non-finite text features for "
                        f"the context; its weights hold NaN or inf, or overflow; {path} not written")
    n_ctx = ctx.shape[-2]  # --ctx-init sets n_ctx to its token count
    save_prompt(path, ctx, text_features, clip.identity(), n_ctx, cfg.class_position, cfg.csc,
                list(classnames), rf.product_config({**config, "run": {**config["run"], "epoch": epoch}}))


@dataclass(frozen=True)
class ExportConfig:
    """Every option of ``clip-smot export``. ``model`` and ``pretrained`` override the CLIP model
    the checkpoint names (e.g. when its config JSON or weights file has moved); it must be the same
    architecture."""

    checkpoint: str = setting(help="OUT/checkpoint.pt of 'clip-smot fit'.", path="file")
    out: str = setting(help="Prompt file to write (.safetensors).", path="file")
    model: str | None = setting(None, "Override the CLIP model named in the checkpoint (same architecture).")
    pretrained: str | None = setting(None, "Override the pretrained tag or checkpoint file.")
    device: str = setting("auto", choices=DEVICES, check_choices=False)  # (cuda:N from Python)


def export_prompt(cfg: ExportConfig) -> Path:
    """Re-export ``prompt.safetensors`` from a fit checkpoint (``clip-smot export``): the text
    features of the checkpoint's context encoded on ``cfg.device``, written to ``cfg.out``.

    Into the run's own folder (``RUN/prompt.safetensors``) it holds the lock of that folder, which
    a fit writing there holds too: one of the two is refused. An export of the checkpoint of an
    epoch of a fit still running, renamed after the fit's final prompt, replaced it with that
    epoch's, the fit having said it was done (and a --resume found nothing to do)."""
    run = Path(cfg.checkpoint).parent
    own = same_file(Path(cfg.out).parent, run)  # (another run folder's prompt is refused by check_output)
    with output_lock(run, "--out", folder=True) if own else contextlib.nullcontext():
        return _export_prompt(cfg, own)


def _export_prompt(cfg: ExportConfig, locked: bool) -> Path:
    """:func:`export_prompt`, once no fit writes the run folder it exports into (``locked``: it
    exports into that folder, whose lock it holds)."""
    from clip_smot.clip.model import (
        ACTIVATIONS,
        config_activation,
        config_path,
        load_clip,
        model_config,
        same_architecture,
    )

    check_ranges(cfg)
    path, model, pretrained, device = Path(cfg.checkpoint), cfg.model, cfg.pretrained, cfg.device
    if not is_file(path, "--checkpoint"):  # (a name too long for the system: one line, not OSError's traceback)
        raise UserError(f"--checkpoint {path}: {missing_file(path, '--checkpoint')}")
    inputs = [("--checkpoint file", path), ("--model file", model), ("--pretrained file", pretrained),
              *((f"run's {name}", path.parent / name) for name in _FILES if name != "prompt.safetensors")]
    check_output(cfg.out, "--out", inputs, run=path.parent)  # (the run's own prompt.safetensors: written again)
    saved = _load_checkpoint(path, "--checkpoint")
    config = saved["config"]
    run = FitConfig.from_dict(config)
    _check_run_files_there(run, config["run"], [k for k in ("model", "pretrained") if getattr(cfg, k) is None],
                           f"--checkpoint {path}")
    # the run's other inputs too: an export over them would break its --resume
    check_output(cfg.out, "--out", [("run's --model file", run.model), ("run's --pretrained file", run.pretrained),
                                    ("run's --cam-model file", run.cam_model), ("run's --split file", run.split)],
                 [("the run's --data folder", run.data)], run=path.parent)  # (a folder gone since: skipped there)
    check_replaced(cfg.out, "--out", "export", "prompt")  # (after: "is the run's --model file" says more)
    make_folder(Path(cfg.out).parent, "--out")  # (a file in its place is one line now, not after the encoding)
    # an export killed while writing left its temporaries beside --out (hidden, as large as the
    # prompt); a younger one may be another export's at work there, unless the run folder's lock is held
    remove_stale_temporaries(Path(cfg.out).parent, (Path(cfg.out).name,), older_than_s=0.0 if locked else 3600.0)
    dev = resolve_device(device)
    theirs = config["run"]["clip"]
    trained = config_activation(parse_json(theirs["model_config"]))  # (the record of an older run has no "activation")
    # the model is built with the run's activation (weights that imply another are refused by
    # load_clip), so --model ViT-B-16 with a state-dict file of OpenAI's weights is the run's
    # model; a --model config that names the other activation itself is refused, not overridden
    said = model_config(model) if model else {}
    if "quick_gelu" in said and config_activation(said) != trained:
        built = config_activation(said)
        raise UserError(f"--model {model}: builds the model with {ACTIVATIONS[built]}, but the context in {path} was "
                        f"trained through {ACTIVATIONS[trained]}; give a --model built with {ACTIVATIONS[trained]}")
    # the architecture before anything is built (a checkpoint naming ViT-bigG-14 would build 10 GB first);
    # the activation was compared above (and is by load_clip)
    named = model or run.model
    if not same_architecture(said or model_config(named), parse_json(theirs["model_config"])):
        name = Path(named).stem if config_path(named) else named  # (as load_clip names it)
        raise UserError(f"--checkpoint {path}: trained with {theirs['model']}, not the architecture of {name}")
    clip = load_clip(named, pretrained or run.pretrained, dev, trained, f"--checkpoint {path}")
    # weights known to differ (two files of other SHA-256s, two tags): the prompt is not the trained one; a
    # tag and a file cannot be compared (a tag's weights as a local file: the usual reason to pass --pretrained)
    sha, ours = theirs["checkpoint_sha256"], clip.checkpoint_sha256
    other = sha != ours if sha and ours else not sha and not ours and theirs["pretrained"] != clip.pretrained
    other = other or bool(theirs["pretrained"]) != bool(clip.pretrained)  # random weights against any others
    if other:
        print(f"note: the context was trained with the weights {theirs['pretrained'] or 'random'}"
              f"{f' (sha256 {sha[:12]}...)' if sha else ''}, not with {clip.pretrained or 'random weights'}; "
              "the text features are encoded with the latter", file=sys.stderr)
    if saved["epoch"] < run.epochs:  # (a run still going, or stopped: reproduce takes it for unfinished)
        print(f"note: {path} holds the context of epoch {saved['epoch']} of the run's {run.epochs}: the prompt is "
              "that of an unfinished run, and records it", file=sys.stderr)
    out = Path(cfg.out)  # (the context was checked when the checkpoint was read: a finite float tensor)
    _export(saved["ctx"], clip, config["run"]["classnames"], run, config, out, f"--checkpoint {path}",
            saved["epoch"])
    return out


