"""ResNet-track training: stage base (CE, LS, LogitNorm) and stage smot, checkpoints, resume, DDP.

``run_train(cfg)`` is the whole run; the CLI builds a :class:`TrainConfig` (and refuses one with
neither --dataset nor --data, as :func:`_load_data` does). docs/method.md §3:

* stage ``base``: SGD (momentum 0.9, weight decay 5e-4), batch 128, lr 0.1 divided by 10 at
  40% and 70% of the epochs (epochs 80 and 140 of the default 200);
* stage ``smot``: the same optimizer, lr 0.1 with cosine decay over the default 300 epochs;
  the SMOT loss with CAMs of the true label from a frozen base model (``--cam-model``),
  computed per batch under no_grad on the augmented view, masked copy from the same view.

The lr is a pure function of the epoch, so the schedule's state is the epoch number. All
randomness of an epoch (order, augmentation, thresholds, noise) is seeded by
``(seed, epoch, rank)``: a run resumed from its checkpoint gives the weights of an
uninterrupted one.

Outputs (rank 0 only): ``OUT/config.json``, ``OUT/log.jsonl`` (one line per epoch),
``OUT/checkpoint.pt`` (atomically, each epoch), ``OUT/model.safetensors`` and
``OUT/summary.json`` at the end.
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
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip_smot import smot
from clip_smot.cam import CAMProvider
from clip_smot.common import run_folder as rf
from clip_smot.common.configs import (
    MAX_BATCH,
    MAX_SEED,
    MAX_SGD_FACTOR,
    MAX_WORKERS,
    JsonConfig,
    check_field_types,
    check_ranges,
    check_smot_only,
    setting,
)
from clip_smot.common.device import (
    PRECISIONS,
    autocast,
    raise_compile_error,
    require_compiler,
    require_cuda,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from clip_smot.common.distributed import (every_rank, peer_stopped_in_one_line, process_group, same_on_every_rank,
                                          same_options_on_every_rank, writer_lock)
from clip_smot.common.errors import UserError, first_line
from clip_smot.common.files import (
    check_output,
    make_folder,
    read_json,
    read_with_hash,
    remove_stale_temporaries,
    same_file,
    sha256_file,
    write_json,
)
from clip_smot.common.images import class_folders, refuse_loose_images
from clip_smot.common.progress import progress_bar
from clip_smot.resnet.data import (
    BUILTIN_ID,
    FileBatches,
    SizedImageSet,
    TensorBatches,
    default_input_size,
    load_id_split,
    mix_seed,
)
from clip_smot.resnet.networks import (
    MAX_INPUT_SIZE,
    NETWORKS,
    build_network,
    check_finite_weights,
    load_model,
    save_model,
)

__all__ = ["METHODS", "STAGES", "TrainConfig", "compile_for_training", "lr_at", "make_optimizer", "method_options",
           "resolve_config", "run_train", "train_epoch", "train_step"]

METHODS = ("ce", "ls", "logitnorm", "smot")
STAGES = ("base", "smot")

# Per-dataset defaults. T: the paper's values for CIFAR-10/100 and ImageNet-200; digits has
# 10 classes like CIFAR-10. The digits recipe is sized for the offline CPU smoke run (a tiny
# ResNet, short schedules; its accuracy: benchmarks/RESULTS.md, "Offline digits smoke run").
DATASET_T = {"cifar10": 10.0, "cifar100": 150.0, "imagenet200": 200.0, "digits": 10.0}
DIGITS_RECIPE = {"arch": "resnet_tiny", "epochs": {"base": 8, "smot": 8}, "lr": 0.05, "batch_size": 64}
PAPER_EPOCHS = {"base": 200, "smot": 300}
BASE_MILESTONES = (0.4, 0.7)  # lr / 10 at 80/200 and 140/200 of the epochs
CHECKPOINT_FORMAT = "clip-smot-train-checkpoint"
_FILES = (rf.CONFIG, rf.LOG, rf.CHECKPOINT, "model.safetensors", "summary.json")  # under --out


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """One training run. ``None`` fields take their stage/dataset default in :func:`resolve_config`."""

    out: str = setting(help="Output folder.", path="dir")
    stage: str = setting("base", "base: lr / 10 at 40%/70% of the epochs; smot: cosine decay.", choices=STAGES)
    dataset: str | None = setting(None, "Built-in ID set (digits: the offline embedded set).", choices=BUILTIN_ID)
    data: str | None = setting(None, "Folder with train/<class>/ and val/<class>/; with --dataset cifar10, cifar100 "
                               "or imagenet200: the set's root (required for imagenet200: the ImageNet folder; "
                               "digits takes none).", path="any")
    method: str | None = setting(None, "Loss (default: ce for --stage base, smot for --stage smot).", choices=METHODS)
    arch: str | None = setting(None, "Network (default resnet18; resnet_tiny for digits).", choices=tuple(NETWORKS))
    cam_model: str | None = setting(None, "The base model's model.safetensors: CAMs for the SMOT method (required "
                                    "for it).", path="file")
    epochs: int | None = setting(None, "Default 200 (base) / 300 (smot); digits 8.", min=1)
    batch_size: int | None = setting(None, "Global batch of original images, each with a masked copy under the smot "
                                     "method (default 128; digits 64).", min=1, max=MAX_BATCH)
    lr: float | None = setting(None, "Initial lr (default 0.1; digits 0.05).", min=0, min_open=True,
                               max=MAX_SGD_FACTOR)
    momentum: float = setting(0.9, flag=False, min=0, max=1)
    weight_decay: float = setting(5e-4, flag=False, min=0, max=MAX_SGD_FACTOR)
    alpha: float = setting(50.0, "Threshold s ~ Beta(alpha, beta).", min=0, min_open=True)
    beta: float = setting(20.0, min=0, min_open=True)
    lam: float = setting(0.1, "Weight of the masked term.", min=0, max=1)  # of the SMOT loss
    T: float | None = setting(None, "Smoothing temperature (default: 10 CIFAR-10/digits, 150 CIFAR-100, 200 "
                              "ImageNet-200; a folder by its classes: 10 up to 10, 150 up to 100, else 200).",
                              min=0, min_open=True)
    perturb: str = setting("zero", "Masked region: black, white, or Gaussian noise (Table 9).",
                           choices=smot.PERTURBATIONS)
    sigma: float = setting(0.1, "Noise std for --perturb noise.", min=0)
    ls_eps: float = setting(0.1, flag=False, min=0, max=1)  # label smoothing amount (method ls)
    logitnorm_tau: float = setting(0.04, flag=False, min=0, min_open=True)  # LogitNorm temperature (method logitnorm)
    input_size: int | None = setting(None, f"Square input size, 8 to {MAX_INPUT_SIZE} (default 32 for "
                                     "CIFAR/digits/small folders, 224 otherwise).", min=8, max=MAX_INPUT_SIZE)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N (torchrun: one GPU per process).")
    precision: str = setting("auto", "auto: bf16 autocast on CUDA, fp32 on CPU (where fp16 runs as bf16).", choices=("auto", *PRECISIONS))
    seed: int = setting(0, min=0, max=MAX_SEED)
    workers: int = setting(4, "DataLoader worker processes (ImageNet-200, and folders above 64 pixels; CIFAR, "
                           "digits and smaller folders are decoded once, onto the device).", min=0, max=MAX_WORKERS)
    compile: bool = setting(False, "torch.compile the trained and the CAM network (compiles once at the start).")
    cuda_graph: bool = setting(False, "torch.compile with CUDA graphs (mode reduce-overhead): fewest launches per "
                               "step; CUDA only.")



def _num_classes_T(k: int) -> float:
    # Folders: the paper's T of the smallest of its class counts (10, 100, 200) that is >= k
    # (docs/resnet.md: 10 for K <= 10, 150 for K <= 100, else 200; 101 classes get 200).
    return 10.0 if k <= 10 else 150.0 if k <= 100 else 200.0


def _method(cfg: TrainConfig) -> str:
    """The run's --method: as given, else the stage's (ce for base, smot for smot)."""
    return cfg.method or ("ce" if cfg.stage == "base" else "smot")


def resolve_config(cfg: TrainConfig, num_classes: int, input_size: int) -> TrainConfig:
    """Fill every ``None`` field with its default for the stage and dataset; check ranges."""
    check_ranges(cfg)
    digits = cfg.dataset == "digits"
    method = _method(cfg)
    if method == "smot" and not cfg.cam_model:
        raise UserError("--cam-model FILE is required for the SMOT method (the base model's model.safetensors)")
    if method != "smot" and cfg.cam_model:
        raise UserError(f"--cam-model {cfg.cam_model}: only the smot method uses CAMs (this run's method is {method})")
    arch = cfg.arch or (DIGITS_RECIPE["arch"] if digits else "resnet18")
    epochs = cfg.epochs or (DIGITS_RECIPE["epochs"][cfg.stage] if digits else PAPER_EPOCHS[cfg.stage])
    out = dataclasses.replace(
        cfg, method=method, arch=arch, epochs=epochs,
        batch_size=cfg.batch_size or (DIGITS_RECIPE["batch_size"] if digits else 128),
        lr=cfg.lr if cfg.lr is not None else (DIGITS_RECIPE["lr"] if digits else 0.1),
        T=cfg.T if cfg.T is not None else DATASET_T.get(cfg.dataset or "", _num_classes_T(num_classes)),
        input_size=input_size)
    check_ranges(out)
    return out


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``: steps at 40%/70% (base) or cosine decay (smot)."""
    if cfg.stage == "base":
        drops = sum(epoch >= max(1, round(f * cfg.epochs)) for f in BASE_MILESTONES)  # epoch 0 at lr, always
        return cfg.lr * 0.1**drops
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))


# ---------------------------------------------------------------------------------------------
# The step and the epoch.


@dataclass
class StepParts:
    """What the training step needs besides the batch (all on the training device)."""

    method: str
    mean: torch.Tensor  # [1, 3, 1, 1]
    std: torch.Tensor  # [1, 3, 1, 1]
    cam: CAMProvider | None = None  # for method smot
    T: float = 10.0
    lam: float = 0.1
    perturb: str = "zero"
    sigma: float = 0.1
    ls_eps: float = 0.1
    logitnorm_tau: float = 0.04
    channels_last: bool = False
    cuda_graph: bool = False  # the networks are compiled with CUDA graphs: mark each step's start
    scaler: torch.amp.GradScaler | None = None  # fp16 on CUDA: loss scaling against underflow


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float, device: torch.device,
                   fused: bool | None = None) -> torch.optim.SGD:
    """The SGD of docs/method.md §3; on CUDA the fused kernel (one launch for the whole update of all parameters).

    ``fused=None`` picks fused on CUDA and PyTorch's default elsewhere (tests pass True on CPU:
    the fused and the plain update give the same weights).
    """
    fused = device.type == "cuda" if fused is None else fused
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           **({"fused": True} if fused else {}))


def compile_for_training(model: nn.Module, cam: CAMProvider | None = None, cuda_graph: bool = False) -> nn.Module:
    """``torch.compile`` the trained network and the CAM network's feature path.

    Returns the compiled callable for the steps; ``model`` itself is unchanged (its state_dict
    keeps its keys, the optimizer holds the same parameters). The CAM network's
    ``forward_features`` (what :class:`~clip_smot.cam.CAMProvider` calls) is replaced by its
    compiled version in place. ``cuda_graph`` compiles with ``mode="reduce-overhead"``: the
    forward and backward of each batch shape are recorded once as CUDA graphs and replayed,
    which removes the per-kernel launch cost; shapes are static (the last, smaller batch of an
    epoch compiles once more).
    """
    mode = "reduce-overhead" if cuda_graph else None
    compiled = torch.compile(model, mode=mode, dynamic=False)
    if cam is not None:
        cam.model.forward_features = torch.compile(cam.model.forward_features, mode=mode, dynamic=False)
    return compiled


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x_u8: torch.Tensor, y: torch.Tensor,
               t: torch.Tensor | None, parts: StepParts, amp: contextlib.AbstractContextManager,
               noise_gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a uint8 batch [B, 3, S, S]; returns (loss, correct count) as device tensors."""
    if parts.cuda_graph:
        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be overwritten
    x = x_u8.float().div_(255)  # [B, 3, S, S] in [0, 1]
    B = x.shape[0]
    if parts.method == "smot":
        with amp:
            cams = parts.cam(x, y)  # [B, S, S] in [0, 255], true label, no_grad
        keep = smot.cam_mask(cams, t)  # [B, 1, S, S]
        x = torch.cat([x, smot.perturb(x, keep, parts.perturb, parts.sigma, noise_gen)])  # [2B, 3, S, S]
    inp = (x - parts.mean) / parts.std
    if parts.channels_last:
        inp = inp.contiguous(memory_format=torch.channels_last)
    with amp:
        logits = model(inp)  # [B or 2B, K]
    if parts.method == "smot":
        loss = smot.smot_loss(logits[:B], logits[B:], y, smot.smoothing_eps(t, parts.T), parts.lam)
    elif parts.method == "ls":
        loss = smot.label_smoothing_ce(logits, y, parts.ls_eps)
    elif parts.method == "logitnorm":
        loss = smot.logitnorm_loss(logits, y, parts.logitnorm_tau)
    else:
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    if parts.scaler is not None:  # fp16: scaled backward; a step with inf/nan gradients is skipped
        parts.scaler.scale(loss).backward()
        parts.scaler.step(optimizer)  # the fused SGD takes the scale and the inf flag: no host sync
        parts.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    correct = (logits[:B].detach().argmax(dim=-1) == y).sum()
    return loss.detach(), correct


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches: TensorBatches | FileBatches, epoch: int,
                parts: StepParts, amp: contextlib.AbstractContextManager, *, seed: int, alpha: float, beta: float,
                rank: int = 0, n_samples: int, max_steps: int | None = None, progress: bool = False,
                check_every: int = 50, stop_on_nan: bool = True) -> dict:
    """One epoch over ``batches.epoch(epoch)``.

    The SMOT thresholds of the whole epoch are drawn at once on the CPU (seeded by
    ``(seed, epoch, rank)``) and copied to the device once, so no step waits on the host.
    The running loss is read back every ``check_every`` steps only (progress, and an early stop
    on a non-finite loss when ``stop_on_nan``: under DDP every rank must take the same steps,
    so there the check waits for the epoch's end).

    Returns:
        {"loss_sum": summed loss over the images, "correct": correct count, "seen": images
        seen, "steps": steps}: device tensors (loss_sum, correct) and ints.
    """
    dev = parts.mean.device
    t_all = None
    if parts.method == "smot":
        g = torch.Generator().manual_seed(mix_seed(seed, epoch, rank, 2))
        t_all = smot.sample_thresholds(n_samples, alpha, beta, generator=g).to(dev)  # [n]
    noise_gen = None
    if parts.method == "smot" and parts.perturb == "noise":
        noise_gen = torch.Generator(device=dev)
        noise_gen.manual_seed(mix_seed(seed, epoch, rank, 3))
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    seen = steps = 0
    bar = None
    if progress:
        bar = progress_bar(total=len(batches) if max_steps is None else min(max_steps, len(batches)),
                           desc=f"epoch {epoch + 1}")
    for x, y in batches.epoch(epoch):
        n = y.shape[0]
        t = t_all[seen:seen + n] if t_all is not None else None
        loss, c = train_step(model, optimizer, x, y, t, parts, amp, noise_gen)
        loss_sum += loss * n
        correct += c
        seen += n
        steps += 1
        if bar is not None:
            bar.update(1)
        if steps % check_every == 0:
            running = (loss_sum / seen).item()  # one host sync every check_every steps
            if stop_on_nan and not math.isfinite(running):
                break
            if bar is not None:
                bar.set_postfix(loss=f"{running:.4f}")
        if max_steps is not None and steps >= max_steps:
            break
    if bar is not None:
        bar.close()
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen, "steps": steps}


# ---------------------------------------------------------------------------------------------
# The run.


_RESOLVED = ("method", "arch", "epochs", "batch_size", "lr", "T", "input_size")  # the fields resolve_config fills


def _check_saved(ckpt: dict) -> None:
    """What a train checkpoint holds, checked before any of it is used (a ValueError saying which
    part is wrong; the config's types and ranges are checked apart): the options a run records
    resolved, a whole-number epoch, a log of epoch records, dicts of tensors and states."""
    if not isinstance(ckpt["epoch"], int) or isinstance(ckpt["epoch"], bool) or ckpt["epoch"] < 0:
        raise ValueError(f"epoch is {ckpt['epoch']!r}")
    unset = next((k for k in _RESOLVED if ckpt["config"].get(k) is None), None)
    if unset is not None:  # (a run records them resolved: None would resume on a default, not on the run's value)
        raise ValueError(f"config.{unset} is None, not the run's value")
    epochs = ckpt["config"]["epochs"]
    if isinstance(epochs, int) and ckpt["epoch"] > epochs:  # (an edited epoch: the run would export as finished)
        raise ValueError(f"epoch is {ckpt['epoch']}, past the run's {epochs} epochs")
    if not isinstance(ckpt["log"], list) or not all(
            isinstance(e, dict) and all(isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str)))
                                        for k, v in e.items()) for e in ckpt["log"]):
        raise ValueError("log is not a list of epoch records")  # (of plain values: it is written to log.jsonl)
    # (and of its epochs, 1 to the last done, in order: the resume writes it over log.jsonl, whose lines
    # of the run were lost to an emptied log, or joined by epochs the run never had)
    if [e.get("epoch") for e in ckpt["log"]] != list(range(1, ckpt["epoch"] + 1)):
        raise ValueError(f"log holds the records of epochs {[e.get('epoch') for e in ckpt['log']][:5]}, not of the "
                         f"{ckpt['epoch']} epochs done")
    if not isinstance(ckpt["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise ValueError("model is not a state dict")
    if not isinstance(ckpt["optimizer"], dict) or not isinstance(ckpt["rng"], dict):
        raise ValueError("optimizer or rng is not a state")
    meta = ckpt.get("meta", {})
    if not isinstance(meta, dict) or not isinstance(meta.get("classnames", []), list) or \
            not all(isinstance(c, str) for c in meta.get("classnames", [])):  # (the resume's message joins them)
        raise ValueError("meta is not a record with a list of class names")
    for key, kind in (("world_size", int), ("data_sha256", str), ("images_sha256", str), ("cam_model_sha256", str)):
        if not isinstance(ckpt.get(key), (kind, type(None))):
            raise ValueError(f"{key} is {ckpt[key]!r}")


def _restore(ckpt: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scaler, where: str) -> tuple[int, list]:
    """Load a checkpoint's weights, optimizer, loss-scaler and RNG states (each checked to fit:
    a hand-edited file is one line naming ``where``); returns (epochs done, the log)."""
    # a weight of integers or booleans was cast to the network's floats, one of complex numbers lost its
    # imaginary parts (with a warning of torch's): the network trained on from other weights, exit 0
    ours = _inner(model).state_dict()
    other = next((k for k, v in ckpt["model"].items() if k in ours and ours[k].is_floating_point()
                  and not v.is_floating_point()), None)
    if other is not None:
        raise UserError(f"{where}: its weights do not fit the network ({other} is stored as {ckpt['model'][other].dtype}, "
                        "not as real floating-point numbers)")
    try:
        model.load_state_dict(ckpt["model"])
    # (missing, unexpected or other-shaped tensors; load_state_dict allocates nothing. A key that is
    # no name, 0 or (1, 2): torch's AttributeError "'int' object has no attribute 'startswith'")
    except (RuntimeError, AttributeError, TypeError) as e:
        raise UserError(f"{where}: its weights do not fit the network ({first_line(e)})") from None
    check_finite_weights(_inner(model), where)  # (a finished run without summary.json exports them as they are)
    rf.load_optimizer_state(optimizer, ckpt["optimizer"], where)
    try:
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        rf.restore_rng(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, OverflowError) as e:
        raise UserError(f"{where}: its loss-scaler or random-number state is damaged ({type(e).__name__}: "
                        f"{first_line(e)})") from None
    return ckpt["epoch"], list(ckpt["log"])


def _totals(stats: dict, world: int) -> list[float]:
    """[summed loss, correct, images] of :func:`train_epoch`'s ``stats``, over all processes."""
    totals = torch.stack([stats["loss_sum"].float(), stats["correct"].float(),
                          torch.tensor(float(stats["seen"]), device=stats["loss_sum"].device)])
    if world > 1:
        torch.distributed.all_reduce(totals)
    return totals.tolist()


def _inner(model):
    return getattr(model, "module", model)


_RESUME_FREE = ("device", "workers", "epochs", "precision", "out", "compile", "cuda_graph")
# Options a checkpoint and the config.json beside it may hold apart (run_folder.check_config_beside):
# those above, and the inputs a resume may find at another path (their contents are compared)
_BESIDE_FREE = frozenset({*_RESUME_FREE, "data", "cam_model"})


def method_options(cfg: TrainConfig) -> dict:
    """The options of ``cfg`` that make its method, those a resume takes from its checkpoint where
    they are not given: all but the run control and the inputs (whose contents are compared)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _BESIDE_FREE}


def run_train(cfg: TrainConfig, resume: bool = False, dry_run: bool = False, stop_after: int | None = None,
              flags: Collection[str] | None = None) -> dict:
    """Train one model as ``cfg`` says.

    Args:
        cfg: the run's configuration (``None`` fields take their defaults).
        resume: continue from ``OUT/checkpoint.pt`` with its saved configuration (device,
            workers, precision, compile, cuda_graph and a larger number of epochs may change).
        dry_run: run one training step, print its loss and write nothing.
        stop_after: stop after this many epochs of this call (tests: an interruption).
        flags: the fields of ``cfg`` the user gave (the CLI's flags): with ``resume``, each must
            equal the saved run's, the others take its values; None: those that differ from
            their default.

    Returns:
        The summary (also written to ``OUT/summary.json``): final loss, train accuracy, paths.

    Raises:
        UserError: bad data or flags, a missing/unsuitable ``--cam-model``, an existing run in
            ``--out`` without ``--resume``, or a non-finite loss (the last checkpoint is kept).
    """
    if not resume and cfg.dataset is None and cfg.data is None:  # (before anything; a resume takes the run's own)
        raise UserError("give --dataset NAME or --data DIR")
    with process_group(cfg.device) as (rank, _, world):  # (the local rank picks the GPU: resolve_device)
        # (other --epochs or batch sizes: processes that wait in collectives the others never join)
        same_options_on_every_rank(cfg, resume=resume, dry_run=dry_run)
        with writer_lock(cfg.out, folder=True) if not dry_run else contextlib.nullcontext():  # (a dry run writes nothing)
            with warnings.catch_warnings():  # (the filters the run sets are the run's: a caller's come back)
                return _run(cfg, resume, dry_run, stop_after, rank, world, flags)


def _check_outputs(cfg: TrainConfig, new: bool) -> None:
    """Raise a UserError when ``--out`` would replace the ``--cam-model`` file or lies inside a
    folder of images the run reads (``--data``'s train/ and val/; a torchvision root holds no
    such folder), where a later run would read the run's files as data, or, for a ``new`` run,
    a file of its names that is no stopped train run's (:func:`run_folder.check_new_run`)."""
    read = [] if cfg.dataset in ("cifar10", "cifar100", "digits") or not cfg.data else \
        [Path(cfg.data) / "train", Path(cfg.data) / "val"]
    folders = [(f"the --data {p.name}/ folder", p) for p in read]
    if cfg.dataset == "digits":
        from clip_smot.common.digits import written_folders

        folders += written_folders()
    check_output(cfg.out, "--out", [("--cam-model file", cfg.cam_model)], folders, writes=_FILES)
    if new:
        rf.check_new_run(cfg.out, "train", _FILES)


def _load_checkpoint(path: Path) -> tuple[dict, TrainConfig]:
    """A train checkpoint and its configuration, each part's type checked (:func:`_check_saved`)."""
    try:
        ckpt = rf.read_checkpoint(path, CHECKPOINT_FORMAT, legacy=True)  # (runs saved before the format key have none)
    except rf.CheckpointError as e:
        raise UserError(f"--resume: {path} is not a readable clip-smot checkpoint ({e.unreadable})" if e.unreadable
                        else f"--resume: {path} is {e}") from None
    try:
        saved = TrainConfig(**ckpt["config"])
        if saved.method != "smot" and saved.cam_model:  # a --cam-model of another method is ignored: none
            saved = dataclasses.replace(saved, cam_model=None)
        missing = [k for k in ("model", "optimizer", "epoch", "log", "rng") if k not in ckpt]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        _check_saved(ckpt)
    except Exception as e:  # noqa: BLE001 (a damaged or foreign file: say which part)
        raise UserError(f"--resume: {path} is not a readable clip-smot checkpoint ({type(e).__name__}: "
                        f"{first_line(e)})") from None
    check_field_types(saved, f"--resume: {path}")
    try:  # (an option out of range is a damaged checkpoint, said so before it is compared; not a flag's error)
        check_ranges(saved)
    except UserError as e:
        raise UserError(f"--resume: {path}: its configuration is out of range ({e})") from None
    return ckpt, saved


def _resume(cfg: TrainConfig, flags: Collection[str] | None, rank: int, world: int,
            dry_run: bool) -> tuple[TrainConfig, dict, bool]:
    """The options of a resumed run (:func:`~clip_smot.common.run_folder.resume_options`: a flag
    given must be the saved one; ``--epochs`` may grow), its checkpoint (the run's own: of the
    options of the config.json beside it), and whether a data set may be downloaded (not into a
    folder only the checkpoint names)."""
    out = Path(cfg.out)
    ckpt, saved = _load_checkpoint(out / rf.CHECKPOINT)
    given = {k for k in (flags if flags is not None else rf.explicit_fields(cfg)) if getattr(cfg, k) is not None}
    for k in ("data", "cam_model"):  # the run's own folder or file spelled another way (data/ then, ./data now)
        now, then = getattr(cfg, k), getattr(saved, k)
        if k in given and now and then and same_file(now, then):
            cfg = dataclasses.replace(cfg, **{k: then})
    # a --data moved since (another disk, a renamed folder) resumes where the run records its images
    # independently of where they lie: they are compared by that SHA-256 (_load_data)
    moved = ("data",) if "data" in given and ckpt.get("images_sha256") is not None else ()
    if "data" not in given and saved.data and ckpt.get("images_sha256") is not None and not os.path.isdir(saved.data):
        raise UserError(f"--resume {out / rf.CHECKPOINT}: the run's --data folder {saved.data} is not there (moved?); "
                        "pass --data with its path now")
    options = rf.resume_options(dataclasses.asdict(saved), dataclasses.asdict(cfg), given, (*_RESUME_FREE, *moved),
                                out)
    if cfg.epochs is not None and cfg.epochs < saved.epochs:
        raise rf.OtherFlags(f"--epochs {cfg.epochs}: the run saved in {out} has {saved.epochs} epochs; resume "
                            "with as many or more", ["--epochs"])
    resumed = TrainConfig(**(options | {"epochs": cfg.epochs or saved.epochs}))
    check_ranges(resumed)  # (the saved options were checked: a value out of range is a flag's, named so)
    rf.check_config_beside(out, ckpt["config"], [f.name for f in dataclasses.fields(TrainConfig)
                                                 if f.name not in _BESIDE_FREE], f"--resume {out / rf.CHECKPOINT}",
                           dataclasses.asdict(TrainConfig(**ckpt["config"])))  # (a key it lacks: the default, as resumed)
    was = ckpt.get("world_size")  # (None: a run saved before it was kept)
    if was is not None and was != world and rank == 0 and not dry_run:
        print(f"train: the run in {out} was trained by {was} process{'es' * (was > 1)} and goes on with {world}: "
              f"the same global batch, but the remaining epochs are not those of an uninterrupted run of {was} "
              "(crops, thresholds and BatchNorm statistics are per process)", file=sys.stderr)
    download = cfg.data is not None or saved.data is None
    return resumed, ckpt, download


def _run(cfg: TrainConfig, resume: bool, dry_run: bool, stop_after: int | None, rank: int, world: int,
         flags: Collection[str] | None = None) -> dict:
    """:func:`run_train` in one process: resolve (and resume), data, build, the epochs, export."""
    out = Path(cfg.out)
    rf.check_start(out, resume, dry_run, "model.safetensors")
    ckpt, download = None, True
    if resume:
        cfg, ckpt, download = _resume(cfg, flags, rank, world, dry_run)
        # (before any data, network or CAM model is loaded; the message on rank 0 only)
        done = (out, "train", ckpt["epoch"], cfg.epochs, ("summary.json", "model.safetensors"))
        if _exported(out, ckpt["epoch"]) and rf.finished(*done, quiet=True):
            try:
                summary = read_json(out / "summary.json")
            except (OSError, ValueError) as e:  # (UnicodeDecodeError, JSONDecodeError too)
                raise UserError(f"--resume: {out / 'summary.json'}, the finished run's summary, cannot be read "
                                f"({first_line(e)}); the run's model is {out / 'model.safetensors'}") from None
            rf.finished(*done, quiet=rank != 0)  # ("nothing to do" once it is so: not before the line refusing it)
            return summary
    # (the command line's flags: a library caller's config is taken as it is)
    check_smot_only(cfg, _method(cfg), "--method", flags or ())
    device, precision = _device(cfg, world)
    cfg, train_set, hashes, cam = _load_data(cfg, ckpt, download, device, world, dry_run)
    run = _build(cfg, train_set, ckpt, device, precision, cam, rank, world)
    config = {**cfg.to_dict(), "device": str(device), "precision": precision}  # (as resolved)
    if rank == 0 and not dry_run:
        make_folder(out)
        remove_stale_temporaries(out, _FILES)  # of a run killed while writing
        # a resume for more epochs says so once a checkpoint of them is saved: one stopped before (a full
        # disk, a kill) left config.json saying the new count beside the checkpoint of the old
        rf.write_config(out, config if ckpt is None else {**config, "epochs": ckpt["config"]["epochs"]})
        # the log lines of the checkpoint's epochs (a line written after it goes; the log a checkpoint
        # holds restores a line missing from the file, as one written by an older train can be)
        rf.truncate_log(out / rf.LOG, run.start_epoch, run.log)
    with peer_stopped_in_one_line():  # (a bad image only another process read: its line says so)
        if dry_run:
            return _dry_run(cfg, run, rank, world)
        for epoch in range(run.start_epoch, cfg.epochs):
            _epoch(cfg, run, epoch, rank, world, hashes)
            if rank == 0 and ckpt is not None and epoch == run.start_epoch and cfg.epochs != ckpt["config"]["epochs"]:
                rf.write_config(out, config)
            if stop_after is not None and epoch + 1 - run.start_epoch >= stop_after:
                return {"stopped_after": epoch + 1}
        return _export(cfg, run, device, rank, world)


def _exported(out: Path, epoch: int) -> bool:
    """Whether OUT's summary.json is of the checkpoint's ``epoch`` (or cannot tell: unreadable, or
    without an epoch count). A resume for more epochs killed once their last checkpoint was saved,
    before the export, left the summary.json and model.safetensors of the shorter run: the next
    --resume said the run "has finished its 3 epochs; nothing to do" and kept the model of 2."""
    try:
        done = read_json(out / "summary.json").get("epochs")
    except (OSError, ValueError, AttributeError):  # (none, or unreadable: rf.finished and its reader say so)
        return True
    return not isinstance(done, int) or isinstance(done, bool) or done == epoch


def _device(cfg: TrainConfig, world: int) -> tuple[torch.device, str]:
    """The training device (this process's GPU under torchrun) and the precision."""
    device = resolve_device(cfg.device)
    if cfg.cuda_graph:
        require_cuda("--cuda-graph", device)
    flags = [f for f, on in (("--compile", cfg.compile), ("--cuda-graph", cfg.cuda_graph)) if on]
    if flags:  # (inductor's CPU kernels are C++, Triton's driver is built from C: say so before any data is read)
        require_compiler(" and ".join(flags), device, f"without {' and '.join(flags)}")
    if device.type == "cuda" and world > 1:
        device = resolve_device("cuda")  # (cuda:LOCAL_RANK, a GPU this machine has)
        torch.cuda.set_device(device)
    return device, resolve_precision(cfg.precision, device)


def _load_data(cfg: TrainConfig, ckpt: dict | None, download: bool, device: torch.device, world: int,
               dry_run: bool):
    """The training set (checked against a resumed run's classes and images), the configuration
    resolved for it, the SHA-256s of the images and of the CAM provider's file (method smot: the
    provider too; :func:`_fingerprint`)."""
    out = Path(cfg.out)
    # a new run records them absolute (links kept, as given): eval reads the model file's --data, and
    # --resume without --data or --cam-model the run's, from whatever folder they are run in; a resumed
    # run keeps its recorded spelling where its checkpoint's data_sha256 (of images read as files: of
    # their paths as spelt) is what the images are compared by
    absolute = ("data", "cam_model") if ckpt is None else ("data",) if ckpt.get("images_sha256") is not None else ()
    cfg = dataclasses.replace(cfg, **{k: os.path.abspath(v) for k in absolute if (v := getattr(cfg, k))})
    if cfg.dataset == "digits" and cfg.data is not None:  # (it was ignored, and recorded as the run's data)
        raise UserError(f"--data {cfg.data}: --dataset digits reads no data folder (the bundled digits are written "
                        "under $CLIP_SMOT_CACHE); leave --data out")
    check_ranges(cfg)  # before any data is read: --seed, --input-size, --workers size or seed something
    if not dry_run:
        _check_outputs(cfg, ckpt is None)
    size = cfg.input_size or default_input_size(cfg.dataset, cfg.data)
    train_set = load_id_split(cfg.dataset, cfg.data, "train", size, download=download)
    if len(train_set.classnames) < 2:  # (before the images are hashed and a network is built on it)
        raise UserError(f"--data {cfg.data}: train/ holds one class folder ({train_set.classnames[0]}); a classifier "
                        "needs at least 2 classes")
    if cfg.dataset is None and (Path(cfg.data) / "val").is_dir():
        val_names = class_folders(Path(cfg.data) / "val", "--data")
        # (an image beside val/'s class folders has no class: eval --id DIR refuses it, after the training)
        refuse_loose_images(Path(cfg.data) / "val", "--data")
        if val_names != train_set.classnames:
            raise UserError(f"--data {cfg.data}: class folders of val/ ({', '.join(val_names[:5])}...) do not match "
                            f"those of train/ ({', '.join(train_set.classnames[:5])}...)")
    saved_classes = ckpt.get("meta", {}).get("classnames") if ckpt is not None else None
    if saved_classes is not None and list(saved_classes) != list(train_set.classnames):
        raise UserError(f"--resume: the classes of the data ({len(train_set.classnames)}: "
                        f"{', '.join(train_set.classnames[:5])}...) are not those of the run saved in {out} "
                        f"({len(saved_classes)}: {', '.join(saved_classes[:5])}...)")
    data_sha256, images_sha256 = _fingerprint(train_set, cfg.data)
    # each process reads the data itself: a folder changed meanwhile would have them train on other
    # images in step, or, with other counts, wait in unmatched collectives for gloo's 30 minutes
    if len(set(every_rank(data_sha256))) > 1:
        raise UserError(f"--data {cfg.data or cfg.dataset}: the {world} processes read other training images (were "
                        "files added, removed or changed while they read them?); run again once the data stays as it "
                        "is")
    hashes = {"data_sha256": data_sha256, "images_sha256": images_sha256}
    # a run saved before images_sha256 was kept compares data_sha256 (None: saved before either was)
    key = "images_sha256" if ckpt is not None and ckpt.get("images_sha256") is not None else "data_sha256"
    if ckpt is not None and ckpt.get(key) not in (None, hashes[key]):
        raise UserError(f"--resume: the training images under {cfg.data or cfg.dataset} are not those of the run "
                        f"saved in {out} (images added, removed or changed); resume on the same images")
    cfg = resolve_config(cfg, len(train_set.classnames), train_set.input_size)
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} must be divisible by the number of processes ({world})")
    if len(train_set) < world:
        raise UserError(f"--data: {len(train_set)} training images are fewer than the {world} processes")
    cam, cam_sha256 = None, None
    if cfg.method == "smot":
        cam, cam_sha256 = read_with_hash(cfg.cam_model, "--cam-model",  # (the hash of the very file read)
                                         lambda: _cam_provider(cfg.cam_model, train_set, device))
        same_on_every_rank(cam_sha256, f"--cam-model {cfg.cam_model}")  # (each process read it itself)
        if ckpt is not None and ckpt.get("cam_model_sha256") not in (None, cam_sha256):  # (None: saved before the check)
            raise UserError(f"--resume: --cam-model {cfg.cam_model} is not the base model the run saved in {out} "
                            "was trained with (the file changed since, e.g. that run was resumed for more "
                            "epochs); resume with the run's own base model")
    return cfg, train_set, hashes | {"cam_model_sha256": cam_sha256}, cam


@dataclass
class _Training:
    """What the epochs use and update."""

    model: nn.Module  # DDP-wrapped under torchrun; checkpoints and the final save take the inner module
    step_model: nn.Module  # what the steps call (compiled with --compile / --cuda-graph)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    batches: TensorBatches | FileBatches
    n_samples: int  # images per process and epoch
    parts: StepParts
    amp: contextlib.AbstractContextManager
    meta: dict  # the model file's record (arch, classes, input size, normalisation, ...)
    start_epoch: int
    log: list  # the log.jsonl records so far


def _build(cfg: TrainConfig, train_set: SizedImageSet, ckpt: dict | None, device: torch.device, precision: str,
           cam: CAMProvider | None, rank: int, world: int) -> _Training:
    """The network, its optimizer and loss scaler (a checkpoint's states on --resume), DDP and
    torch.compile as asked, the batches and the step's parts."""
    seed_everything(cfg.seed)
    model = build_network(cfg.arch, len(train_set.classnames), train_set.input_size).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = make_optimizer(model, lr_at(cfg, 0), cfg.momentum, cfg.weight_decay, device)
    # fp16 autocast on CUDA needs loss scaling (bf16 has fp32's range; CPU fp16 runs as bf16)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and precision == "fp16" else None
    start_epoch, log = 0, []
    if ckpt is not None:
        start_epoch, log = _restore(ckpt, model, optimizer, scaler, f"--resume: {Path(cfg.out) / rf.CHECKPOINT}")
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # (collectives: the parameters' shapes checked across the processes, rank 0's weights broadcast)
        with peer_stopped_in_one_line():
            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                        gradient_as_bucket_view=True)
        if device.type == "cpu":
            # The CPU's backward gives a 1x1 convolution's weight [C_out, C_in, 1, 1] a gradient of
            # strides [C_in, 1, C_in, C_in]: the same memory as the bucket's [C_in, 1, 1, 1] (the
            # strides differ only on dimensions of size 1), which DDP's reducer still reports on
            # every rank as a layout that "may impair performance"
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    step_model = compile_for_training(model, cam, cfg.cuda_graph) if cfg.compile or cfg.cuda_graph else model
    per_rank_batch = cfg.batch_size // world
    if train_set.images is not None:
        batches = TensorBatches(train_set.images, train_set.labels, per_rank_batch, device, cfg.seed,
                                pad=train_set.pad, flip=train_set.flip, rank=rank, world=world)
        n_samples = batches.per_rank
    else:
        batches = FileBatches(train_set.files, train_set.labels, train_set.input_size, per_rank_batch, device,
                              cfg.seed, cfg.workers, flip=train_set.flip, rank=rank, world=world)
        n_samples = len(batches.sampler) if batches.sampler is not None else len(train_set)
    if cfg.method != "smot" and (per_rank_batch == 1 or n_samples % per_rank_batch == 1):  # (SMOT doubles a batch)
        _check_batch_of_one(_inner(model), cfg, train_set.input_size, per_rank_batch, n_samples, world)
    parts = StepParts(method=cfg.method, mean=torch.tensor(train_set.mean, device=device).view(1, 3, 1, 1),
                      std=torch.tensor(train_set.std, device=device).view(1, 3, 1, 1), cam=cam, T=cfg.T, lam=cfg.lam,
                      perturb=cfg.perturb, sigma=cfg.sigma, ls_eps=cfg.ls_eps, logitnorm_tau=cfg.logitnorm_tau,
                      channels_last=channels_last, cuda_graph=cfg.cuda_graph, scaler=scaler)
    meta = dict(arch=cfg.arch, classnames=train_set.classnames, input_size=train_set.input_size,
                mean=train_set.mean, std=train_set.std, dataset=cfg.dataset or str(cfg.data),
                method=cfg.method, stage=cfg.stage)
    return _Training(model, step_model, optimizer, scaler, batches, n_samples, parts, autocast(device, precision),
                     meta, start_epoch, log)


def _steps(cfg: TrainConfig, run: _Training, epoch: int, rank: int, **kw) -> dict:
    """:func:`train_epoch` of ``epoch`` on the run's batches (``kw``: its options); a failure of
    torch.compile's machinery (e.g. no C compiler for Triton on CUDA) is one line naming the flags."""
    try:
        return train_epoch(run.step_model, run.optimizer, run.batches, epoch, run.parts, run.amp, seed=cfg.seed,
                           alpha=cfg.alpha, beta=cfg.beta, rank=rank, n_samples=run.n_samples, **kw)
    except Exception as e:
        flags = [f for f, on in (("--compile", cfg.compile), ("--cuda-graph", cfg.cuda_graph)) if on]
        raise_compile_error(e, flags, f"without {' and '.join(flags)}")
        raise


def _dry_run(cfg: TrainConfig, run: _Training, rank: int, world: int) -> dict:
    """One training step at the next epoch's lr; prints its loss (rank 0) and writes nothing."""
    for g in run.optimizer.param_groups:
        g["lr"] = lr_at(cfg, run.start_epoch)
    run.model.train()
    stats = _steps(cfg, run, run.start_epoch, rank, max_steps=1)
    loss_sum, _, seen = _totals(stats, world)  # the global batch's loss, as one process's would be
    loss = loss_sum / seen
    if not math.isfinite(loss):  # (the loss of the first step is computed before its update: no --lr gives it)
        if run.start_epoch == 0:
            raise UserError(f"non-finite training loss ({loss}) in the dry run, on its first batch before any step "
                            "(the --lr plays no part in it)")
        raise UserError(f"non-finite training loss ({loss}) in the dry run, from the weights of "
                        f"{Path(cfg.out) / rf.CHECKPOINT} (epoch {run.start_epoch}); a --resume goes on from them: "
                        "start a new run in another --out (with a lower --lr)")
    if rank == 0:
        print(json.dumps({"dry_run": True, "loss": loss, "batch": int(seen)}))
    return {"dry_run": True, "loss": loss, "batch": int(seen), "config": dataclasses.asdict(cfg)}


def _epoch(cfg: TrainConfig, run: _Training, epoch: int, rank: int, world: int, hashes: dict) -> None:
    """Train (0-based) ``epoch``; on rank 0, append its log line and write the checkpoint
    (``hashes``: the SHA-256s of its data and CAM model, which go with it)."""
    out = Path(cfg.out)
    lr = lr_at(cfg, epoch)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    run.model.train()
    t0 = time.perf_counter()
    stats = _steps(cfg, run, epoch, rank, progress=rank == 0, stop_on_nan=world == 1)
    loss_sum, correct, seen = _totals(stats, world)  # the epoch's one host sync
    loss = loss_sum / seen
    if not math.isfinite(loss):
        raise rf.non_finite_loss("train", loss, epoch, out / rf.CHECKPOINT, "lower --lr")
    seconds = time.perf_counter() - t0
    # time_s: the name this log used before log.jsonl had one vocabulary (kept for its readers)
    entry = rf.log_record(epoch + 1, loss, lr, seconds, train_acc=100.0 * correct / seen, time_s=seconds,
                       images=int(seen))
    run.log.append(entry)
    if rank != 0:
        return
    rf.append_log(out, entry)
    rf.save_checkpoint(out / rf.CHECKPOINT, CHECKPOINT_FORMAT, {
        "model": _inner(run.model).state_dict(), "optimizer": run.optimizer.state_dict(), "epoch": epoch + 1,
        "config": dataclasses.asdict(cfg), "log": run.log,
        "lr_schedule": {"stage": cfg.stage, "next_epoch": epoch + 1}, "rng": rf.capture_rng(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None, "meta": run.meta,
        "world_size": world, **hashes})
    from tqdm import tqdm

    tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  loss {loss:.4f}  train acc {entry['train_acc']:.2f}%  "
               f"lr {lr:.4g}  {seconds:.1f}s", file=sys.stderr)


def _export(cfg: TrainConfig, run: _Training, device: torch.device, rank: int, world: int) -> dict:
    """The summary (each process's parameter checksum); rank 0 writes model.safetensors and summary.json."""
    out = Path(cfg.out)
    checksum = torch.tensor([sum(p.detach().double().sum().item() for p in _inner(run.model).parameters())],
                            dtype=torch.float64, device=device)
    sums = [checksum]
    if world > 1:
        sums = [torch.zeros_like(checksum) for _ in range(world)]
        torch.distributed.all_gather(sums, checksum)
    summary = {"epochs": cfg.epochs, "final": run.log[-1] if run.log else None, "world_size": world,
               "param_checksum_per_rank": [float(s.item()) for s in sums],
               "model": str(out / "model.safetensors")}
    if rank == 0:
        config = rf.product_config({**dataclasses.asdict(cfg), "device": str(device)})  # (as resolved, as config.json)
        save_model(out / "model.safetensors", run.model, config=config, **run.meta)
        write_json(summary, out / "summary.json")
    return summary


def _check_batch_of_one(model: nn.Module, cfg: TrainConfig, size: int, batch: int, n: int, world: int) -> None:
    """A run with a batch of one image (``--batch-size 1``, or a last batch of one) on a network
    whose last feature map is 1x1 (the ResNets at ``--input-size`` 8) is refused up front: its
    last BatchNorm would see one value per channel, which torch cannot train on."""
    was = model.training
    with torch.no_grad():
        h = model.eval().forward_features(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    model.train(was)
    if h.shape[-2:] != (1, 1):
        return
    which = "every batch is one image" if batch == 1 else \
        f"the last batch of each epoch is one image ({n} training images{' per process' if world > 1 else ''})"
    raise UserError(f"--batch-size {cfg.batch_size}: {cfg.arch} at --input-size {size} ends in a 1x1 feature map, "
                    f"where BatchNorm cannot train on a batch of one image, and {which}; choose another "
                    "--batch-size or a larger --input-size")


def _fingerprint(s: SizedImageSet, root: str | None) -> tuple[str, str]:
    """SHA-256s of a training set: its labels and its decoded pixels (small images), or its file
    paths and each file's SHA-256 (large ones: the bytes, read in threads), the paths as spelt
    (``data_sha256``) and relative to ``root``, the --data folder (``images_sha256``: the same
    wherever the folder lies). A resume checks them, as fit checks its split: same flags, other
    images would continue the run on data it was not trained on."""
    from concurrent.futures import ThreadPoolExecutor

    h = hashlib.sha256(s.labels.cpu().numpy().tobytes())
    if s.images is not None:
        h.update(s.images.cpu().numpy().tobytes())  # uint8 [N, 3, S, S]
        return h.hexdigest(), h.hexdigest()
    relative = h.copy()
    with ThreadPoolExecutor() as pool:  # hashlib hashes with the GIL released
        digests = list(pool.map(_image_sha256, s.files))
    h.update("".join(f"{d}  {f}\n" for f, d in zip(s.files, digests)).encode())  # sha256sum's listing
    relative.update("".join(f"{d}  {os.path.relpath(f, root or os.curdir)}\n"
                            for f, d in zip(s.files, digests)).encode())
    return h.hexdigest(), relative.hexdigest()


def _image_sha256(path: Path) -> str:
    """A training image's SHA-256; a file that cannot be read is one line naming it."""
    try:
        return sha256_file(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read the image file ({e.strerror or e})") from None


def _cam_provider(path: str, train_set: SizedImageSet, device: torch.device) -> CAMProvider:
    """The frozen base model's CAMProvider; its classes must be the data's (CAM of the true label)."""
    base, meta = load_model(path, device, flag="--cam-model")
    if meta["classnames"] != list(train_set.classnames):
        raise UserError(f"--cam-model {path}: trained on other classes ({meta['num_classes']} classes, "
                        f"{meta['classnames'][:3]}...) than this data ({len(train_set.classnames)} classes, "
                        f"{train_set.classnames[:3]}...)")
    if device.type == "cuda":
        base = base.to(memory_format=torch.channels_last)
    size = meta["input_size"] if meta["input_size"] != train_set.input_size else None
    return CAMProvider(base, meta["mean"], meta["std"], labels_match=True, input_size=size)
