"""Device, precision, seeding and atomic file writes: decided once at the edge of a run."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .errors import UserError, first_line

__all__ = [
    "PRECISIONS",
    "DTYPES",
    "MAX_SEED",
    "MAX_BATCH",
    "MAX_WORKERS",
    "RUN_FILES",
    "atomic_save",
    "atomic_save_safetensors",
    "atomic_write",
    "atomic_write_files",
    "atomic_write_text",
    "autocast",
    "batch_share",
    "cache_root",
    "check_field_types",
    "check_output",
    "check_output_folder",
    "every_rank",
    "file_lock",
    "file_stamp",
    "holds_its_values",
    "host_reachable",
    "json_text",
    "load_optimizer_state",
    "make_folder",
    "physical_memory",
    "plain_name",
    "process_group",
    "progress_bar",
    "progress_write",
    "remove_stale_temporaries",
    "resolve_device",
    "same_file",
    "seed_everything",
    "share_work",
    "sha256_file",
    "text_writer",
    "torchrun_env",
    "write_json",
    "writes_outputs",
]

PRECISIONS = ("bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu', 'cuda' and 'cuda:N' of a GPU this machine has.

    Every other device torch knows ('meta', 'mps', ...) is a user error: the commands run on
    the CPU and on CUDA only ('meta' holds no data; MPS lacks kernels they use).

    Under torchrun, ``auto`` and ``cuda`` without an index mean this process's GPU,
    ``cuda:LOCAL_RANK``.
    """
    if name in ("auto", "cuda") and torchrun_env()[2] > 1 and torch.cuda.is_available():
        return torch.device("cuda", torchrun_env()[1])
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


def torchrun_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("LOCAL_RANK", "0") or 0), world


@contextlib.contextmanager
def process_group(device: str):
    """torch.distributed's default process group while inside, under torchrun (WORLD_SIZE > 1).

    The backend is gloo on the CPU and ``cpu:gloo,cuda:nccl`` on CUDA: CUDA tensors travel by
    NCCL, Python objects (:func:`share_work`'s results) by gloo, from CPU memory. Leaving
    normally waits for every process (no rank tears the group down while another still uses
    it); the group is destroyed on the way out either way. Outside torchrun it does nothing.

    Yields:
        (rank, local rank, world size).
    """
    rank, local_rank, world = torchrun_env()
    started = world > 1 and not torch.distributed.is_initialized()
    if started:
        cuda = device != "cpu" and torch.cuda.is_available()
        torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    try:
        yield rank, local_rank, world
        if started:
            torch.distributed.barrier()
    finally:
        if started and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def batch_share(n: int, batch_size: int, rank: int, world: int) -> range:
    """The indices of process ``rank``'s share of ``n`` items: a run of whole batches of
    ``batch_size``, the ranks' shares following each other in order. Every item falls in the
    same batch as in one process, so a batch's results do not depend on the number of processes."""
    batches = -(-n // batch_size)
    first, last = batches * rank // world, batches * (rank + 1) // world
    return range(min(first * batch_size, n), min(last * batch_size, n))


def every_rank(value: Any) -> list:
    """``value`` of every process of the torch.distributed process group, in rank order
    (``[value]`` outside one); the values travel pickled."""
    if not torch.distributed.is_initialized():
        return [value]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def writes_outputs() -> bool:
    """Whether this process writes a command's outputs: rank 0 of a torch.distributed process
    group, or the one process outside one."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def share_work(fn: Callable[[list], Any], items: Sequence, batch_size: int) -> list:
    """``fn`` of this process's :func:`batch_share` of ``items``, with every process's result.

    Outside a torch.distributed process group, ``[fn(items)]``. Inside one, each process runs
    ``fn`` on its share (none on an empty share) and gets every result in rank order, so
    that joining them gives one process's result in the items' order.

    Raises:
        UserError: the first (in rank order, so in the items' order) a process's ``fn``
            raised, on every process: none waits for another that has failed.
    """
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return [fn(list(items))]
    mine = batch_share(len(items), batch_size, torch.distributed.get_rank(), torch.distributed.get_world_size())
    try:
        result = (fn(list(items[mine.start:mine.stop])) if len(mine) else None, "")
    except UserError as e:
        result = (None, str(e))
    results = every_rank(result)
    error = next((e for _, e in results if e), "")
    if error:
        raise UserError(error)
    return [r for r, _ in results if r is not None]


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
MAX_BATCH = 4096  # --batch-size: a batch of 224-pixel images in fp32 is 2.4 GiB at this size, decoded at once


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


def physical_memory() -> int | None:
    """Bytes of this machine's memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """A tqdm bar on stderr that draws only on a terminal: redirected to a file or a pipe, stderr
    gets no carriage-return frames (the epoch lines of :func:`progress_write` still appear)."""
    import sys

    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True,
                **kwargs)


def progress_write(text: str) -> None:
    """A line on stdout that does not break a bar being drawn; flushed at once, so that it keeps
    its place among stderr's lines when stdout is a file or a pipe (block-buffered)."""
    import sys

    from tqdm import tqdm

    tqdm.write(text)
    sys.stdout.flush()


def plain_name(value: str, what: str, advice: str = "") -> str:
    """``value`` when it is a plain name, one path component: 1 to 200 characters, no ``/``,
    ``\\``, ``:`` nor control character, not ``.`` or ``..``; else a UserError naming ``what``
    (and ending in ``advice``). Names read from files (a prompt's model, its checkpoint file's
    name) are checked with it where they join a path: no folder, no ``..``, no absolute path and
    no ``hf-hub:``/``local-dir:`` schema of open_clip can come in with them."""
    if not isinstance(value, str) or not re.fullmatch(r"(?!\.\.?$)[^/\\:\x00-\x1f]{1,200}", value):
        raise UserError(f"{what}: {str(value)[:80]!r} is not a plain name (one path component: no '/', '\\' or ':', not '.' or '..')"
                        + (f"; {advice}" if advice else ""))
    return value


def _file_key(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` leads to, symlinks followed; None when there is none.
    Two paths with the same key are one file: a symlink, a hard link, another spelling."""
    if not isinstance(path, (str, os.PathLike)):  # (os.stat of an int would stat a file descriptor)
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def same_file(a: Any, b: Any) -> bool:
    """Whether the paths ``a`` and ``b`` both exist and are one file (see :func:`_file_key`)."""
    key = _file_key(a)
    return key is not None and key == _file_key(b)


def _within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, both with symlinks resolved."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def check_output(out: str | os.PathLike, flag: str, inputs: Iterable[tuple[str, Any]] = (),
                 folders: Iterable[tuple[str, Any]] = (), writes: Iterable[str] | None = None) -> None:
    """Raise a UserError when writing ``out`` would replace or mix with something the command reads.

    Args:
        out: an output file, or with ``writes`` an output folder.
        flag: the flag named in the error (``--out``).
        inputs: (what, path) of every file the command reads, e.g. ``("--prompt file", p)``;
            None or missing paths are skipped. An output that is the same file (symlinks
            followed, hard links and other spellings included) is refused.
        folders: (what, path) of folders whose files the command reads: an output inside one
            is refused, as a later run would read it as input.
        writes: the names of the files written into the output folder ``out``.
    """
    out = Path(out)
    if writes is None and out.is_dir():
        raise UserError(f"{flag} {out}: is a folder, not a file")
    if writes is not None and out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: is a file, not a folder")
    targets = [out] if writes is None else [out / name for name in writes]
    keys = {key: target for target in targets if (key := _file_key(target)) is not None}
    for what, path in inputs if keys else ():
        target = keys.get(_file_key(path)) if path is not None else None
        if target is None:
            continue
        if writes is None:
            raise UserError(f"{flag} {out}: is the {what} itself; writing there would destroy it")
        raise UserError(f"{flag} {out}: its {target.name} would be the {what} itself ({path}); writing it "
                        "would destroy that file")
    for what, folder in folders:  # (after the files: "is the image itself" says more than "is inside")
        if folder is not None and os.path.isdir(folder) and _within(out, folder):
            raise UserError(f"{flag} {out}: is inside {what} {folder}, whose files this command reads; "
                            "write to a place outside it")


def check_output_folder(out: str | os.PathLike, flag: str = "--out", inputs: Iterable[tuple[str, Any]] = (),
                        folders: Iterable[tuple[str, Any]] = (), writes: Iterable[str] = ()) -> None:
    """Raise a UserError when the output folder ``out`` holds a fit or train run, whose
    ``config.json`` and resumable state an evaluation's files would overwrite or mix with, or
    when it is a file, lies inside one of ``folders`` or would replace one of ``inputs`` with a
    file of ``writes`` (see :func:`check_output`; checked before the slow work, as every check
    of an output is)."""
    check_output(out, flag, inputs, folders, writes=tuple(writes))
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


def _write_temporary(path: Path, write: Callable[[str], object]) -> str:
    """``write(tmp)`` on a new temporary file beside ``path``; its name. A failure removes it and is
    a UserError naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the result gets an ordinary file's mode
        return tmp
    except BaseException as e:  # (Ctrl-C too: no temporary file left behind)
        error = _write_error(path, e) if isinstance(e, Exception) else e  # (while the file still fills the disk)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if error is e:
            raise
        raise error from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    A crash or an exception never leaves half a file at ``path`` (the old file stays) nor a
    temporary file behind. The temporary name ends in ``.tmp``: writers that infer the format
    from the name (matplotlib) need it given explicitly.

    Raises:
        UserError: the file cannot be written (a full disk, a read-only or missing folder),
            naming ``path``.
    """
    atomic_write_files(Path(path).parent, {Path(path).name: write})


def atomic_write_files(folder: str | os.PathLike, writers: dict[str, Callable[[str], object]],
                       leftovers: tuple[str, ...] = ()) -> None:
    """Write several files of ``folder`` as one: ``writers[name](tmp)`` fills a temporary file for
    each; only when every one is written are they renamed into place, and then the files named in
    ``leftovers`` that were not written now are deleted (those of an earlier run that wrote more).

    A failure while writing (a full disk, an exception in a writer, Ctrl-C) leaves the folder as it
    was, with no temporary file; other files in it are never touched. Only a kill within the final
    renames (no disk space needed, microseconds) could leave some files new and some old.

    Raises:
        UserError: a file cannot be written, naming it.
    """
    folder = Path(folder)
    temps: dict[str, str] = {}
    try:
        for name, write in writers.items():
            temps[name] = _write_temporary(folder / name, write)
        for name, tmp in temps.items():
            try:
                os.replace(tmp, folder / name)  # atomic on POSIX: readers see the old file or the new one
            except OSError as e:
                raise _write_error(folder / name, e) from None
    finally:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.remove(tmp)  # (only those not renamed: a failure, or Ctrl-C)
    for name in leftovers:
        if name not in writers:
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()


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


def text_writer(text: str) -> Callable[[str], object]:
    """A writer for :func:`atomic_write_files` that writes ``text`` as UTF-8 whatever the locale
    says. A character UTF-8 cannot encode (a lone surrogate: a byte of a file name that is not
    UTF-8, in a class or set name) is written as its escape, ``\\udcNN``, not failing the write."""
    return lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="backslashreplace")


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write text atomically (temporary file + rename), as :func:`text_writer` writes it."""
    atomic_write(path, text_writer(text))


def json_text(obj: Any) -> str:
    """Pretty JSON with sorted keys and a final newline: the text of :func:`write_json`."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write pretty JSON atomically."""
    atomic_write_text(json_text(obj), path)


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
