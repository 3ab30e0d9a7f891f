"""Device, precision, seeding and atomic file writes: decided once at the edge of a run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import UserError, first_line

__all__ = [
    "PRECISIONS",
    "DTYPES",
    "MAX_SEED",
    "MAX_WORKERS",
    "RUN_FILES",
    "atomic_save",
    "atomic_save_safetensors",
    "atomic_write",
    "atomic_write_text",
    "autocast",
    "cache_root",
    "check_field_types",
    "check_output_file",
    "check_output_folder",
    "file_lock",
    "file_stamp",
    "holds_its_values",
    "host_reachable",
    "load_optimizer_state",
    "make_folder",
    "remove_stale_temporaries",
    "resolve_device",
    "seed_everything",
    "sha256_file",
    "write_json",
]

PRECISIONS = ("bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu', 'cuda' and 'cuda:N' of a GPU this machine has.

    Every other device torch knows ('meta', 'mps', ...) is a user error: the commands run on
    the CPU and on CUDA only ('meta' holds no data; MPS lacks kernels they use).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"--device {name}: not a device ({first_line(e)}); choose auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: not supported; choose auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"--device {name}: no CUDA device is available on this machine")
        if device.index is not None and device.index >= n:
            raise UserError(f"--device {name}: this machine has {n} CUDA device{'s' * (n > 1)} "
                            f"(cuda:0 to cuda:{n - 1})")
    return device


def autocast(device: torch.device, precision: str, cache: bool = True) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` on ``device`` (fp32 = no autocast).

    fp16 on the CPU is not supported by CPU autocast kernels for every op; it falls back
    to bf16 there, which has the same memory size and a wider range. ``cache=False`` turns
    off autocast's weight-cast cache, as torch advises while a CUDA graph is captured.
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = DTYPES[precision]
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def cache_root() -> Path:
    """The package's cache folder: ``$CLIP_SMOT_CACHE``, else ``~/.cache/clip_smot``."""
    return Path(os.environ.get("CLIP_SMOT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "clip_smot"))


def host_reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` (name, port) opens within ``timeout`` seconds.

    False at once when ``HF_HUB_OFFLINE`` is set: the project's offline switch, for every
    download (CLIP weights, the CAM network, torchvision data sets), so offline errors come
    within seconds.
    """
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """Hold an exclusive lock on the file ``path`` (created, with its folder) while inside: processes
    that would write one shared thing at once (the ranks of a torchrun downloading a data set)
    take turns. No lock where ``fcntl`` is missing (not POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # (released when the file is closed)
        yield


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


MAX_SEED = 2**63 - 1  # torch seeds take 64 bits; numpy's default_rng no negatives: [0, 2**63 - 1] suits both
MAX_WORKERS = 256  # --workers: decoding threads or processes; each process holds a copy of the loader's state


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


def check_field_types(obj: Any, where: str) -> None:
    """Raise a UserError naming ``where`` when a field of the dataclass ``obj`` holds a value of
    another type than its annotation says (``int``, ``float``, ``str``, ``bool`` and their unions
    with ``None``; a bool is no int): a configuration read back from a file edited by hand."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        allowed = tuple(t for name in str(f.type).split("|") for t in _TYPES[name.strip()])
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise UserError(f"{where}: its configuration's {f.name} is {value!r}, not {f.type}")


def holds_its_values(t: torch.Tensor) -> bool:
    """Whether the tensor ``t`` (read from a file) has storage for each of its values: a tensor
    that repeats one value through zero strides declares a shape far larger than its file, and
    whatever is computed from it at that shape would be allocated in full."""
    return t.untyped_storage().nbytes() >= t.numel() * t.element_size()


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, where: str) -> None:
    """``optimizer.load_state_dict(state)`` once ``state`` is seen to fit: one group per group, as
    many parameters, finite numbers for its hyperparameters and, per parameter, tensors of that
    parameter's shape (torch checks none of these; the first step would fail, or train wrongly).

    Raises:
        UserError: naming ``where``, when the state does not fit.
    """
    try:
        groups, per_param = state["param_groups"], state["state"]
        if len(groups) != len(optimizer.param_groups):
            raise ValueError(f"{len(groups)} parameter groups, not {len(optimizer.param_groups)}")
        for ours, theirs in zip(optimizer.param_groups, groups):
            if len(theirs["params"]) != len(ours["params"]):
                raise ValueError(f"{len(theirs['params'])} parameters in a group, not {len(ours['params'])}")
            for key, value in ours.items():
                number = theirs[key]
                if isinstance(value, float) and not (isinstance(number, (int, float)) and math.isfinite(number)):
                    raise ValueError(f"{key} is {number!r}")
            for i, p in zip(theirs["params"], ours["params"]):
                for name, v in per_param.get(i, {}).items():
                    if isinstance(v, torch.Tensor) and v.ndim and v.shape != p.shape:
                        raise ValueError(f"{name} has shape {list(v.shape)}, not {list(p.shape)}")
        optimizer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        raise UserError(f"{where}: its optimizer state does not fit ({type(e).__name__}: {first_line(e)})") from None


RUN_FILES = ("checkpoint.pt", "prompt.safetensors", "model.safetensors")  # what fit and train write


def check_output_file(out: str | os.PathLike, flag: str, inputs: list[tuple[str, Any]]) -> None:
    """Raise a UserError when the output file ``out`` is one of the command's ``inputs``
    ((what, path) pairs; paths that are not files are ignored): writing it would destroy that
    input (e.g. ``export --out`` = ``--checkpoint``, ``score --out`` = ``--prompt``)."""
    if not os.path.exists(out):
        return
    for name, path in inputs:
        if path is not None and os.path.isfile(path) and os.path.samefile(out, path):
            raise UserError(f"{flag} {out}: is the {name} file itself; writing there would destroy it")


def check_output_folder(out: str | os.PathLike, flag: str = "--out") -> None:
    """Raise a UserError when the output folder ``out`` holds a fit or train run, whose
    ``config.json`` and resumable state an evaluation's files would overwrite or mix with, or
    when it is a file (checked before the slow work, as every check of an output is)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"{flag} {out}: is a file, not a folder")
    held = [f for f in RUN_FILES if (Path(out) / f).is_file()]
    if held:
        raise UserError(f"{flag} {out}: holds a training run ({held[0]}); write the evaluation to another folder "
                        f"(e.g. {Path(out) / 'eval'})")


def _umask() -> int:
    mask = os.umask(0)  # (reading the umask means setting it)
    os.umask(mask)
    return mask


def make_folder(path: str | os.PathLike, flag: str = "--out") -> None:
    """Create the output folder ``path`` (and its parents); a UserError naming ``flag`` if it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "is a file, not a folder" if path.exists() else f"cannot create the folder ({e.strerror or e})"
        raise UserError(f"{flag} {path}: {reason}") from None


def _write_error(path: Path, e: Exception) -> UserError:
    """One line for a failed write of ``path``. A full disk is named as such: torch.save reports
    it as a RuntimeError ('unexpected pos ...'), safetensors as a SafetensorError."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {first_line(e)}"
    with contextlib.suppress(OSError):
        if shutil.disk_usage(path.parent).free < 1 << 20:
            reason = "no space left on the device"
    kept = "; the file there before is unchanged" if path.exists() else ""
    return UserError(f"cannot write {path}: {reason}{kept}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    A crash or an exception never leaves half a file at ``path`` (the old file stays) nor a
    temporary file behind. The temporary name ends in ``.tmp``: writers that infer the format
    from the name (matplotlib) need it given explicitly.

    Raises:
        UserError: the file cannot be written (a full disk, a read-only or missing folder),
            naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the result gets an ordinary file's mode
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except Exception as e:  # (measured while the temporary file still fills the disk)
        raise _write_error(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(folder: str | os.PathLike, names: tuple[str, ...] | None,
                             older_than_s: float = 0.0) -> None:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` for ``names``
    (None: for any file) when its process was killed mid-write (SIGKILL, OOM killer, power loss):
    hidden, and each as large as the file it was to become (a checkpoint). With ``older_than_s``,
    only those untouched for that long: in a folder that other processes write to, a younger one
    may be a write in progress."""
    import glob
    import time

    patterns = ["*"] if names is None else [glob.escape(name) for name in names]
    for pattern in patterns:
        for tmp in Path(folder).glob(f".{pattern}.*.tmp"):
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime >= older_than_s:
                    tmp.unlink()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` to a temporary file, then rename, with the metadata in
    sorted key order: the same tensors and metadata give the same bytes (safetensors writes its
    metadata in a hash map's order, which changes from one call to the next)."""
    from safetensors.torch import save_file

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=metadata)
        _sort_safetensors_metadata(tmp)

    atomic_write(path, write)


def _sort_safetensors_metadata(path: str) -> None:
    """Rewrite the header of the safetensors file ``path`` in place with ``__metadata__``'s keys
    sorted. The header is the same JSON in another order, so it keeps its length (checked: a
    header that would not is left as it is); the tensor data is not touched."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")  # [8-byte length][header JSON, space-padded][data]
        header = json.loads(f.read(n))
        if "__metadata__" not in header:
            return
        header = {"__metadata__": dict(sorted(header["__metadata__"].items())),
                  **{k: v for k, v in header.items() if k != "__metadata__"}}
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= n:
            f.seek(8)
            f.write(text + b" " * (n - len(text)))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write text atomically (temporary file + rename), as UTF-8 whatever the locale says."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write pretty JSON atomically."""
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def file_stamp(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """(size, modification time, change time, inode) of a file: what changes when its bytes may have.

    The change time and inode too: cp -p, rsync -a, tar and unzip set the old modification time on
    other bytes, but every write or replacement sets the change time (which nothing can set back).
    """
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


_SHA256: dict[tuple, str] = {}  # (path, file_stamp) -> digest: one read per file and process


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes; a file unchanged since (the same :func:`file_stamp`) is not
    read again in this process (``score`` checks a checkpoint found by name, then loads it)."""
    import hashlib

    key = (os.path.realpath(path), *file_stamp(path))
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]
