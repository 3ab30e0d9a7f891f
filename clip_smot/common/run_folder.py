"""The run folder of ``fit`` and ``train``: one mechanism for what it holds and how a run resumes.

``OUT/config.json``
    every resolved option, written (atomically) at each start;
``OUT/log.jsonl``
    one JSON line per finished epoch, appended: ``epoch``, ``loss``, ``lr``, ``seconds`` on every
    line (:func:`log_record`), then what a track adds; a ``--resume`` keeps the lines of the
    epochs its checkpoint holds (:func:`truncate_log`) and appends from there;
``OUT/checkpoint.pt``
    written atomically after each epoch's log line, with a ``format`` key naming whose it is
    (:data:`CHECKPOINT_FORMATS`) and the RNG states (:func:`capture_rng`).

A resume follows one policy (:func:`resume_options`): an option given again must equal the
saved one, an option not given takes the saved value, and the run-control options (device,
workers, ...) are the current ones. The checkpoint must be the run's own: its options must be
those of the config.json beside it (:func:`check_config_beside`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clip_smot.common.device import file_over_memory
from clip_smot.common.errors import UserError, cut, first_line, load_error
from clip_smot.common.file_kinds import archive_refusal, file_kind
from clip_smot.common.files import (
    atomic_save,
    atomic_write_text,
    exists,
    parse_json,
    read_json,
    write_json,
)

__all__ = ["CHECKPOINT", "CHECKPOINT_FORMATS", "CONFIG", "CONFIG_KEYS", "LOG", "WHERE_IT_RAN", "CheckpointError", "OtherFlags",
           "append_log", "capture_rng", "check_config_beside", "check_new_run", "check_start", "explicit_fields",
           "finished", "holds_its_values", "product_config", "load_optimizer_state", "log_record", "non_finite_loss", "peek_checkpoint", "read_checkpoint",
           "refuse_other_flags", "restore_rng", "resume_options", "save_checkpoint", "truncate_log", "write_config"]

CHECKPOINT, CONFIG, LOG = "checkpoint.pt", "config.json", "log.jsonl"
# The value of a checkpoint's "format" key -> what a message calls such a checkpoint.
CHECKPOINT_FORMATS = {"clip-smot-fit-checkpoint": "clip-smot fit", "clip-smot-train-checkpoint": "clip-smot train"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (``unreadable``: the load error, as "Type: message"),
    or one of another format (``unreadable`` None); the message says which."""

    def __init__(self, message: str, unreadable: str | None = None):
        super().__init__(message)
        self.unreadable = unreadable


# --- config.json and log.jsonl ------------------------------------------------------------------


def write_config(out: str | Path, config: dict) -> None:
    """Write ``OUT/config.json`` (pretty JSON, sorted keys) atomically."""
    write_json(config, Path(out) / CONFIG)


def log_record(epoch: int, loss: float, lr: float, seconds: float, **extra: Any) -> dict:
    """One line of log.jsonl: the epoch (1-based), its mean loss, its lr, its wall time in seconds
    (three decimals), then ``extra`` (what a track adds)."""
    return {"epoch": epoch, "loss": loss, "lr": lr, "seconds": round(seconds, 3), **extra}


def append_log(out: str | Path, record: dict) -> None:
    """Append ``record`` as one JSON line to ``OUT/log.jsonl``, all or none: a write that fails (a
    full disk writes the part of the line that fits first; Ctrl-C) is cut back to the lines
    before it (a line half written by a kill is dropped by the :func:`truncate_log` of the
    ``--resume``). The line is on the disk before the call returns: the epoch's checkpoint,
    written next, vouches for it, and a fit's --resume keeps the log's own lines (a power loss
    lost a line the checkpoint's epoch had, for good)."""
    path = Path(out) / LOG
    size = None
    try:
        with open(path, "a") as f:
            size = os.fstat(f.fileno()).st_size
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        if size is not None:  # (once the file is closed: its buffer's rest is written or dropped by then)
            with contextlib.suppress(OSError):
                os.truncate(path, size)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        raise


MAX_LOG_BYTES = 64 << 20  # what truncate_log reads of a log: a sparse file of gigabytes costs its maker nothing


def truncate_log(path: str | Path, epochs: int, records: list[dict] | None = None) -> None:
    """Make the log ``path`` hold the lines of the first ``epochs`` epochs: all a checkpoint vouches
    for. With ``records`` (a checkpoint's own copy of its lines), those are written; otherwise the
    file's lines are kept, and a line that does not parse (a run killed while appending it, bytes
    that are not UTF-8, a record without a whole-number epoch) is dropped, not fatal.
    """
    path = Path(path)
    if records is not None:
        atomic_write_text("".join(json.dumps(r) + "\n" for r in records[:epochs]), path)
        return
    try:
        lines = []
        if path.is_file():
            with open(path, "rb") as f:  # (a log of 10,000 epochs is 3 MB: past the limit, nothing a run wrote)
                lines = f.read(MAX_LOG_BYTES).decode("utf-8", errors="replace").splitlines()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    kept = []
    for line in lines:
        try:
            epoch = parse_json(line)["epoch"]
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        if isinstance(epoch, int) and not isinstance(epoch, bool) and 1 <= epoch <= epochs:
            kept.append(line)
    atomic_write_text("".join(line + "\n" for line in kept), path)


# --- checkpoint.pt ------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, fmt: str, state: dict) -> None:
    """Write ``state`` with ``"format": fmt`` to ``path`` atomically (a kill leaves the previous one)."""
    assert fmt in CHECKPOINT_FORMATS, fmt
    atomic_save({"format": fmt, **state}, path)


def read_checkpoint(path: str | Path, fmt: str, *, legacy: bool = False) -> dict:
    """A checkpoint's dict, read with ``torch.load(weights_only=True)`` (tensors and plain values).

    Args:
        path: the file.
        fmt: the format it must name (a key of :data:`CHECKPOINT_FORMATS`).
        legacy: accept a dict without a ``format`` key (a track whose checkpoints had none).

    Raises:
        CheckpointError: a file that does not load, is not a dict, or names another format.
    """
    refused = archive_refusal(path) or file_over_memory(path)  # (torch.load reads it whole)
    if refused:
        raise CheckpointError(f"not a readable checkpoint ({refused})", refused)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (unpickling errors of every kind: a truncated or foreign file)
        if isinstance(e, OSError) and e.errno is not None:  # (a failing disk: the file may be whole)
            raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
        # (torch's words for an archive cut short are a paragraph on miniz and corrupted files)
        why = "cut short: its zip directory is missing" if file_kind(path) == "torch-cut" else load_error(e)
        raise CheckpointError(f"not a readable checkpoint ({why})", why) from None
    size, depth = _extent(saved, MAX_CHECKPOINT_VALUES)
    why = ("it holds a list or dict that holds itself" if size == math.inf
           # (json.dumps of its config, a comparison, would go on for hours)
           else f"it holds more than {MAX_CHECKPOINT_VALUES:,} values once its repeated parts are written out"
           if size > MAX_CHECKPOINT_VALUES
           else f"its lists and dicts nest {depth} deep, more than {MAX_CHECKPOINT_DEPTH}"
           if depth > MAX_CHECKPOINT_DEPTH else None)
    if why is not None:
        raise CheckpointError(f"not a readable checkpoint ({why})", why)
    meta = _tensor_of_no_data(saved)
    if meta is not None:  # (torch.load keeps a meta tensor there, map_location or not: .item() and copies fail)
        why = f"{meta} is a tensor of no data (on the meta device)"
        raise CheckpointError(f"not a readable checkpoint ({why})", why)
    found = saved.get("format") if isinstance(saved, dict) else None
    if found != fmt and not (legacy and isinstance(saved, dict) and "format" not in saved):
        other = f" (a {CHECKPOINT_FORMATS[found]} one)" if isinstance(found, str) and found in CHECKPOINT_FORMATS else ""
        raise CheckpointError(f"not a {CHECKPOINT_FORMATS[fmt]} checkpoint{other}")
    return saved


def peek_checkpoint(path: str | Path) -> dict | None:
    """A checkpoint's dict with its tensors left unread (memory-mapped), for a glance at its epoch
    or config that must not fail: None where it does not load (damaged, being replaced, not one
    of ours) or is no dict. No check of :func:`read_checkpoint`: what reads it to resume uses that."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (unpickling errors of every kind: the caller's plain answer)
        return None
    return saved if isinstance(saved, dict) else None


MAX_CHECKPOINT_VALUES = 10**6  # a checkpoint's values once expanded (a DenseNet-BC run of 300 epochs: 4,249)
MAX_CHECKPOINT_DEPTH = 64  # lists and dicts in each other (a run's: 5, optimizer/state/0/momentum_buffer)


def _extent(obj: Any, limit: int) -> tuple[float, int]:
    """How many values (containers, tensors, numbers, text) ``obj`` holds once each shared
    container is counted as often as it is named (a pickle may name one list twice in the next,
    40 deep: 2^40 values in a file of 2 KB, which a json.dumps or a comparison would expand), and
    how deep its containers nest (json.dumps of 20,000 was a RecursionError). Past ``limit`` the
    count stops there; a container that holds itself is ``math.inf`` values. Walked without
    recursion, each container's extent computed once."""
    sizes: dict[int, float] = {}
    depths: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(obj, False)]
    while stack:
        v, children_done = stack.pop()
        if not isinstance(v, (dict, list, tuple)):
            continue
        children = [c for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, (dict, list, tuple))]
        if children_done:
            open_.discard(id(v))
            sizes[id(v)] = 1 + len(v) - len(children) + sum(sizes[id(c)] for c in children)
            depths[id(v)] = 1 + max((depths[id(c)] for c in children), default=0)
            if sizes[id(v)] > limit:
                return sizes[id(v)], depths[id(v)]
        elif id(v) in open_:
            return math.inf, 0  # (reached again before its own extent is known: it holds itself)
        elif id(v) not in sizes:
            open_.add(id(v))
            stack.append((v, True))
            stack.extend((c, False) for c in children)
    return (sizes[id(obj)], depths[id(obj)]) if id(obj) in sizes else (1, 0)


def _tensor_of_no_data(obj: Any) -> str | None:
    """Where (``optimizer/state/0/momentum_buffer``) a tensor on the meta device lies in what
    torch.load read, walked without recursion (a pickle may nest far deeper than Python's stack)
    and each container once (a pickle may name one list twice in the next, 40 deep: 2^40 paths
    in a file of 2 KB)."""
    stack, seen = [("", obj)], set()
    while stack:
        where, v = stack.pop()
        if isinstance(v, torch.Tensor):
            if v.is_meta:
                return where or "the file's object"
        elif isinstance(v, (dict, list, tuple)) and id(v) not in seen:
            seen.add(id(v))
            items = v.items() if isinstance(v, dict) else enumerate(v)
            stack.extend((f"{where}/{k}" if where else str(k), x) for k, x in items)
    return None


# --- RNG states ---------------------------------------------------------------------------------


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Every RNG state, as tensors and plain values (a checkpoint that loads with
    ``torch.load(weights_only=True)``): torch's CPU generator (``torch``), each CUDA device's
    (``cuda``, when CUDA is available), Python's (``python``), NumPy's (``numpy``) and each of
    ``generators`` under its name, with its device under ``devices``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for key, gen in (generators or {}).items():
        state[key] = gen.get_state()
    if generators:
        state["devices"] = {key: str(gen.device) for key, gen in generators.items()}
    return state


_MT19937_WORDS = 624  # NumPy's legacy generator state: its key's length


def restore_rng(state: dict, generators: dict[str, torch.Generator] | None = None, where: str = "") -> None:
    """Set every RNG state :func:`capture_rng` captured (CUDA's only where CUDA is available, and
    only of the devices this machine has).

    A fit checkpoint from before this layout (``torch_cpu``, ``torch_cuda``, ``aug_device``, no
    Python or NumPy state) is read too.

    Raises:
        UserError: naming ``where``, when a generator was on another device than now.
        KeyError, TypeError, ValueError, RuntimeError, AttributeError, OverflowError: a damaged
            state (the caller names it).
    """
    older = "devices" not in state and "aug_device" in state  # the older fit layout
    devices = {"aug_gen": state["aug_device"]} if older else state.get("devices", {})
    for key, gen in (generators or {}).items():
        was = devices.get(key, str(gen.device))
        if was != str(gen.device):
            raise UserError(f"{where}: written on {was}; resume it with --device {was}")
    for key in [k for k in ("torch_cpu", "torch") if k in state] or ["torch"]:  # (a state naming both: each checked)
        torch.set_rng_state(state[key])
    if not older:  # (the older fit layout kept no Python or NumPy state)
        name, keys, pos, has_gauss, gauss = state["numpy"]
        # (checked before a copy of its size: a stored value may be declared 2^45 times; NumPy
        # indexes past a shorter key: an IndexError)
        if not isinstance(keys, torch.Tensor) or tuple(keys.shape) != (_MT19937_WORDS,):
            raise ValueError(f"NumPy's state holds {keys.numel() if isinstance(keys, torch.Tensor) else 'no'} keys, "
                             f"not {_MT19937_WORDS}")
        # (NumPy takes any position and reads key[pos] for its next draw, unchecked: past the key,
        # memory that is not the key, or a segmentation fault)
        if not isinstance(pos, int) or isinstance(pos, bool) or not 0 <= pos <= _MT19937_WORDS:
            raise ValueError(f"NumPy's state is at position {pos!r:.40}, not in [0, {_MT19937_WORDS}]")
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        python = state["python"]  # (random.setstate indexed a 0-dim tensor there: torch's IndexError)
        if not (isinstance(python, tuple) and len(python) == 3 and isinstance(python[1], tuple)):
            raise ValueError(f"Python's state is a {type(python).__name__}, not random.getstate()'s tuple")
        random.setstate(python)
    cuda = state.get("torch_cuda" if older else "cuda")
    if cuda is not None and torch.cuda.is_available():
        # one state a device of the machine that wrote it: a run written on more GPUs than this
        # machine has gives its first devices theirs (torch's set_rng_state_all would fail on the
        # first missing device, half-way through)
        for index, device_state in enumerate(list(cuda)[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)
    for key, gen in (generators or {}).items():
        gen.set_state(state[key])


# --- the resume decision ------------------------------------------------------------------------


def check_start(out: str | Path, resume: bool, dry_run: bool, result: str) -> Path:
    """The checkpoint path of a run in ``out``, once the start is seen to fit what is there: a
    ``--resume`` needs a checkpoint, a new run (not a dry run) a folder without a checkpoint or
    the command's ``result`` file (fit's prompt, train's model: a new run would replace the old
    run's config and log and leave its result, which a later --resume would take for its own).
    A run stopped before its first checkpoint left only its config and log: a new run starts
    over them."""
    path = Path(out) / CHECKPOINT
    if resume and not path.is_file():  # (what to do: a run stopped before its first checkpoint starts over)
        done = exists(Path(out) / result, "--out")
        raise UserError(f"--resume: no checkpoint at {path}; "
                        + (f"its run finished ({result} is there)" if done else "run without --resume to start the run"))
    held = [] if resume or dry_run else [f for f in (CHECKPOINT, result) if exists(Path(out) / f, "--out")]
    if held:
        # (a --resume continues a run of its own command: fit's RESULT is a prompt, train's a model)
        other = {"prompt.safetensors": "train-checkpoint", "model.safetensors": "fit-checkpoint"}.get(result)
        if held[0] == CHECKPOINT and other is not None and file_kind(path) == other:
            raise UserError(f"--out {out}: already holds a run of clip-smot {other.split('-')[0]} ({CHECKPOINT}); "
                            "choose another --out")
        advice = "pass --resume to continue it, or choose" if held[0] == CHECKPOINT else "choose"
        raise UserError(f"--out {out}: already holds a run ({held[0]}); {advice} another --out")
    return path


# options that say where a run ran, not what it computed: the run's config.json records them, its
# product (the prompt or model file) does not, so that the same computation redone with other
# --workers or into another --out gives the same bytes (reproduce compares its stages' files by
# SHA-256, and docs/reproduce.md lets them change between runs); the device, which can change the
# numbers, is recorded as resolved (--device auto on a CPU is cpu)
WHERE_IT_RAN = ("workers", "out")


def product_config(config: dict) -> dict:
    """``config`` (a run's, as its checkpoint keeps it) as the prompt or model file records it:
    without :data:`WHERE_IT_RAN`."""
    return {k: v for k, v in config.items() if k not in WHERE_IT_RAN}


# keys that every config.json of a command's run holds (since its first version): a new run starts
# over the config and log of a run of its own command stopped before its first checkpoint, not over
# another command's (an evaluation's config.json) or a user's files of those names
CONFIG_KEYS = {"fit": ("shots", "n_ctx"), "train": ("arch", "stage")}


def check_new_run(out: str | Path, command: str, files: Collection[str]) -> None:
    """Raise a UserError when ``out``, where a new ``command`` run is to start, holds a file under a
    name of the run's ``files`` that is no stopped run's: a run stopped before its first checkpoint
    left its config and log (fit's split too), which a new run starts over, but the same names
    with no config.json of a ``command`` run (:data:`CONFIG_KEYS`) are another's (an
    evaluation's config.json, a user's log.jsonl), which the run would replace."""
    theirs = sorted((f for f in files if exists(Path(out) / f, "--out")), key=lambda f: f != CONFIG)  # (config first)
    if theirs and not _run_config(Path(out) / CONFIG, CONFIG_KEYS[command]):
        why = "" if theirs[0] == CONFIG else " (no config.json of one beside it)"
        raise UserError(f"--out {out}: its {theirs[0]} is not of a clip-smot {command} run stopped before its first "
                        f"checkpoint{why}; the run would replace it; choose another --out")


def _run_config(path: Path, keys: Collection[str]) -> bool:
    """Whether ``path`` reads as a run's config.json: a JSON object holding each of ``keys``."""
    try:
        config = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and all(k in config for k in keys)


def explicit_fields(cfg: Any) -> set[str]:
    """The fields of the dataclass ``cfg`` that differ from their defaults (a library caller's
    stand-in for the flags a command line gave) and those without a default."""
    return {f.name for f in fields(cfg) if getattr(cfg, f.name) != f.default}


class OtherFlags(UserError):
    """A resume given other options (``flags``, as ``--name``) than the saved run's."""

    def __init__(self, message: str, flags: Collection[str]):
        super().__init__(message)
        self.flags = list(flags)


def refuse_other_flags(names: Collection[str], out: str | Path) -> None:
    """Raise the one line of a resume whose options ``names`` differ from the saved run's (an
    :class:`OtherFlags`)."""
    if names:
        verb = "differ" if len(names) > 1 else "differs"
        flags = ['--' + n.replace('_', '-') for n in names]
        raise OtherFlags(f"--resume: {', '.join(flags)} {verb} from the run saved in {out}; resume with the same "
                         "flags", flags)


def resume_options(saved: dict, wanted: dict, given: Collection[str], free: Collection[str], out: str | Path) -> dict:
    """The options of a resumed run: each of ``free`` (run control: device, workers, ...) as
    ``wanted`` now, each other as ``saved``.

    Raises:
        UserError: one line naming the flags in ``given`` (those the user gave) that are not
            ``free`` and differ from the saved values.
    """
    refuse_other_flags([k for k in wanted if k in given and k not in free and wanted[k] != saved.get(k)], out)
    return {**saved, **{k: wanted[k] for k in free if k in wanted}}


def check_config_beside(out: str | Path, saved: dict, compared: Collection[str], where: str,
                        defaults: dict | None = None) -> None:
    """Refuse a checkpoint that is not of the run whose ``OUT/config.json`` lies beside it: one
    whose saved options (``saved``: its config) differ from config.json's in one of ``compared``
    (the options that make the method; not the run control, nor the inputs that may move) that
    both hold (a config.json of an older clip-smot lacks newer keys). A resume takes each option
    not given from the checkpoint: a checkpoint copied in from another run (a ``--loss ce`` run's
    into a SMOT run's folder) went on as that run, under the folder's name, exit 0. A run writes
    config.json at each start, from the options it then saves in each checkpoint, so the two agree
    in a folder only it wrote; a config.json that cannot be read is not compared (a resume
    rewrites it). An option the checkpoint lacks resumes at its value in ``defaults`` (the
    command's default), and is compared as that: a key gone from the checkpoint of a run of
    ``--batch-size 4`` resumed it with the default 32, and rewrote config.json so, exit 0.

    Raises:
        UserError: naming ``where`` (the checkpoint), config.json and each option that differs,
            with both values.
    """
    path = Path(out) / CONFIG
    try:
        beside = read_json(path)
    except (OSError, ValueError):
        return
    if not isinstance(beside, dict):
        return
    resumed = {**(defaults or {}), **saved}
    differ = [k for k in compared if k in resumed and k in beside and resumed[k] != beside[k]]
    if differ:
        parts = []
        for k in differ:
            ours, theirs = _shown(resumed[k], beside[k])
            ours = f"{ours} in the checkpoint" if k in saved else f"none in the checkpoint (the default {ours})"
            parts.append(f"--{k.replace('_', '-')}: {ours}, {theirs} in {CONFIG}")
        raise UserError(f"{where}: not a checkpoint of the run that {path} records ({'; '.join(parts)}); was it copied "
                        "from another run? put the run's own back, or start a new run in another --out")


def _shown(saved: Any, beside: Any) -> tuple[str, str]:
    """Two values of an option as :func:`check_config_beside` shows them: text as it is, at most 40
    characters, unless the two would read alike (a config.json edited to hold "0.05" for 0.05:
    "0.05 in the checkpoint, 0.05 in config.json"); then both as JSON, text in quotes."""
    def one(value: Any, plain: bool) -> str:
        return cut(value if plain and isinstance(value, str) else json.dumps(value, default=str))

    shown = one(saved, True), one(beside, True)
    return shown if shown[0] != shown[1] else (one(saved, False), one(beside, False))


def finished(out: str | Path, command: str, done: int, epochs: int, outputs: Collection[str],
             quiet: bool = False) -> bool:
    """Whether the run in ``out`` has finished (``done`` of ``epochs`` epochs, each of ``outputs``
    written); if so, unless ``quiet``, says on stderr that nothing is to be done."""
    if done < epochs or not all((Path(out) / name).is_file() for name in outputs):
        return False
    if not quiet:
        print(f"{command}: the run in {out} has finished its {done} epochs; nothing to do (nothing rewritten)",
              file=sys.stderr)
    return True


def non_finite_loss(command: str, loss: float, epoch: int, checkpoint: str | Path, advice: str) -> UserError:
    """The error of a loss that became non-finite in (0-based) ``epoch``: what is kept, and ``advice``
    (other options: with a checkpoint kept they take a new run in another --out, since a --resume
    goes on with the run's own options and a new run is refused over its checkpoint; with none,
    a new run starts over the run's config and log)."""
    if epoch == 0:
        return UserError(f"{command}: non-finite training loss ({loss}) in epoch 1; no checkpoint was written; {advice}")
    return UserError(f"{command}: non-finite training loss ({loss}) in epoch {epoch + 1}; the last good checkpoint "
                     f"{checkpoint} (epoch {epoch}) is kept; {advice} in a new run in another --out (a --resume "
                     "goes on with the run's options)")


# --- checks of what a checkpoint holds ----------------------------------------------------------


def holds_its_values(t: torch.Tensor) -> bool:
    """Whether the tensor ``t`` (read from a file) is a dense one with storage for each of its
    values: a tensor that repeats one value through zero strides declares a shape far larger than
    its file, and whatever is computed from it at that shape would be allocated in full. A sparse
    or nested tensor (which ``torch.load`` reads too) is not: most operations fail on it."""
    if t.layout != torch.strided or t.is_nested:  # (a sparse one has no storage to measure)
        return False
    return t.untyped_storage().nbytes() >= t.numel() * t.element_size()


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, where: str) -> None:
    """``optimizer.load_state_dict(state)`` once ``state`` is seen to fit: one group per group, as
    many parameters, a finite lr, the options the run's config gave ``optimizer`` (momentum,
    weight decay, nesterov, maximize, ...) and, per parameter, tensors of that parameter's shape
    (torch checks none of these; the first step would fail, or train wrongly). How the update is
    computed (``foreach``, ``fused``, ...) stays the one ``optimizer`` was built with, for this
    device.

    Raises:
        UserError: naming ``where``, when the state does not fit.
    """
    try:
        groups, per_param = state["param_groups"], state["state"]
        # (a group that is a tensor, indexed with "params" below, made torch warn before the refusal)
        if not (isinstance(groups, list) and all(isinstance(g, dict) for g in groups) and isinstance(per_param, dict)):
            raise ValueError("param_groups is not a list of dicts, or state not a dict")
        if len(groups) != len(optimizer.param_groups):
            raise ValueError(f"{len(groups)} parameter groups, not {len(optimizer.param_groups)}")
        for ours, theirs in zip(optimizer.param_groups, groups):
            if len(theirs["params"]) != len(ours["params"]):
                raise ValueError(f"{len(theirs['params'])} parameters in a group, not {len(ours['params'])}")
            for key, value in ours.items():
                if key in _SCHEDULED:
                    if not (isinstance(theirs[key], (int, float)) and math.isfinite(theirs[key])):
                        raise ValueError(f"{key} is {theirs[key]!r}")
                elif key != "params" and key not in _IMPLEMENTATION and theirs[key] != value:
                    raise ValueError(f"{key} is {theirs[key]!r}, not the run's {value!r}")
            for i, p in zip(theirs["params"], ours["params"]):
                for name, v in per_param.get(i, {}).items():
                    _check_param_state(name, v, p)
                    # (None is SGD's buffer without momentum: with it, torch takes None for no buffer and
                    # starts that parameter's momentum again from nothing)
                    if v is None and name == "momentum_buffer" and ours.get("momentum"):
                        raise ValueError(f"the momentum_buffer of parameter {i!r} is None, where the run's "
                                         f"momentum is {ours['momentum']}")
        # torch keeps the state of an id no group names aside, unused: a parameter's state filed under
        # another key ("0" for 0) would be lost, and its momentum start again from nothing
        stray = [k for k in per_param if not any(k in g["params"] for g in groups)]
        if stray:
            raise ValueError(f"a state for parameter {stray[0]!r}, which no group holds")
        # and a state that lacks a key the others hold (an empty one: torch writes none) started that
        # buffer again from nothing too (a momentum_buffer deleted from one parameter's state), exit 0
        every = set().union(*(v for v in per_param.values() if isinstance(v, dict)))
        short = next((k for k, v in per_param.items() if isinstance(v, dict) and (not v or set(v) != every)), None)
        if short is not None:
            raise ValueError(f"the state of parameter {short!r} holds {sorted(per_param[short]) or 'nothing'}, not "
                             f"{sorted(every) or 'a buffer'}")
        # and a parameter's whole state deleted the same (every parameter of a run's optimizer got a
        # gradient in its first step, so each has a state where any has: momentum 0 keeps none at all)
        lost = next((i for g in groups for i in g["params"] if i not in per_param), None) if per_param else None
        if lost is not None:
            raise ValueError(f"no state for parameter {lost!r}, where the others have one")
        kept = [{k: g[k] for k in _IMPLEMENTATION if k in g} for g in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, implementation in zip(optimizer.param_groups, kept):
            group.update(implementation)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError) as e:
        raise UserError(f"{where}: its optimizer state does not fit ({type(e).__name__}: {first_line(e)})") from None


def _check_param_state(name: str, v: Any, p: torch.Tensor) -> None:
    """A ValueError unless the optimizer state ``v`` of parameter ``p`` is None, a step count
    (``step``: a number or a 0-dim tensor), or a finite float tensor of ``p``'s shape with storage
    for each value (a 0-dim buffer broadcast wrongly; a repeated one cannot be written in place;
    a NaN one made the loss NaN, which the run blamed on the lr)."""
    if v is None:
        return
    if name == "step" and (isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.ndim == 0)):
        return
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"{name} is a {type(v).__name__}, not a tensor")
    if v.shape != p.shape:
        raise ValueError(f"{name} has shape {list(v.shape)}, not {list(p.shape)}")
    if not (v.is_floating_point() and holds_its_values(v) and bool(torch.isfinite(v).all())):
        raise ValueError(f"{name} is not a finite float tensor with a value of its own at each position")


_SCHEDULED = ("lr", "initial_lr")  # group options that change as the run goes (the lr schedule's)
_IMPLEMENTATION = ("foreach", "fused", "capturable", "differentiable")  # how the update runs, not what it is

