"""Device, precision and seeding: decided once at the edge of a run."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
from typing import Iterator, Sequence

import numpy as np
import torch

from clip_smot.common.distributed import torchrun_env
from clip_smot.common.errors import UserError, first_line

__all__ = ["DEVICES", "PRECISIONS", "DTYPES", "file_over_memory", "resolve_device", "resolve_precision", "autocast",
           "seed_everything", "seeded_cpu_rng", "physical_memory", "missing_cpp_compiler", "require_cpp_compiler",
           "missing_triton", "require_compiler", "is_compile_error", "raise_compile_error", "require_cuda"]


DEVICES = ("auto", "cpu", "cuda")  # what --device offers (a library caller may give cuda:N too)
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
        local_rank, n = torchrun_env()[1], torch.cuda.device_count()
        if local_rank >= n:  # (CUDA's "invalid device ordinal" traceback, in that process only)
            raise UserError(f"--device {name}: under torchrun local rank {local_rank} runs on cuda:{local_rank}, and "
                            f"this machine has {n} CUDA device{'s' * (n > 1)} (cuda:0 to cuda:{n - 1}); start at most "
                            f"{n} process{'es' * (n > 1)} a machine (--nproc_per_node)")
        return torch.device("cuda", local_rank)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        # (torch's own line lists its 20-odd device types, most of which this toolkit cannot run on)
        raise UserError(f"--device {name}: not a device; choose auto, cpu, cuda or cuda:N") from None
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


def require_cuda(flag: str, device: torch.device) -> None:
    """Raise a UserError naming ``flag``, an option that runs on CUDA only, where ``device`` is
    not a CUDA device (``--device cpu``, or ``auto`` on a machine without a GPU)."""
    if device.type != "cuda":
        raise UserError(f"{flag}: needs a CUDA device (--device cuda), not {device.type}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for a precision choice: ``auto`` is ``bf16`` on CUDA (tensor
    cores: fp32 matrix products run at a fraction of their speed) and ``fp32`` elsewhere (the
    CPU's bf16 is no faster, and fp32 there gives open_clip's features exactly). ``fp16`` on the
    CPU is ``bf16``, what :func:`autocast` runs there, so that what a run records (metrics.json,
    the feature cache's key) is the arithmetic it did.

    Raises:
        UserError: not ``auto`` nor one of :data:`PRECISIONS`.
    """
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be auto or one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and torch.device(device).type == "cpu":
        return "bf16"
    return precision


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


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Within it, torch's default CPU generator is seeded with ``seed``; after, it is as it was.
    For draws that must not depend on (nor move) the caller's: random weights, per-image crops.
    torch.manual_seed would reseed the CUDA generators too, which fork_rng(devices=[]) does not
    restore."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def physical_memory() -> int | None:
    """Bytes of this machine's memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def file_over_memory(path: str | os.PathLike) -> str | None:
    """Why the weights file ``path`` must not be loaded, or None: it is larger than half of this
    machine's memory. Loaders (open_clip's, ``torch.load``) read every tensor of a file before
    any is compared with the network, and a file's size bounds what that takes (safetensors'
    offsets lie within it; a zip's entries are bounded by
    :func:`~clip_smot.common.file_kinds.archive_refusal`), but a sparse file, of holes, costs its
    writer no disk: a 16 GB one of 7 MB on disk was read into memory whole."""
    memory, size = physical_memory(), os.path.getsize(path)
    if memory is None or size <= memory // 2:
        return None
    return f"the file is {size / 2**30:.1f} GiB, more than half of this machine's {memory / 2**30:.1f} GiB; not loaded"


def missing_cpp_compiler() -> str | None:
    """None where torch.compile's CPU backend (inductor) finds a C++ compiler; else what it
    tried, for a message ("tried g++", "tried $CXX=/opt/bin/c++").

    Asks inductor's own lookup (``torch._inductor.cpp_builder.get_cpp_compiler``): the first of
    ``torch._inductor.config.cpp.cxx`` (``$CXX``, else ``g++``; with ``TORCH_INDUCTOR_INSTALL_GXX``
    a g++ it installs with conda first) that answers ``--version``. Where this torch has no such
    function: ``$CXX`` or ``g++`` on the PATH.
    """
    try:
        from torch._inductor import config
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # pragma: no cover - another torch's layout
        name = os.environ.get("CXX") or "g++"
        return None if shutil.which(name) else f"tried {name}"
    try:
        get_cpp_compiler()
        return None
    except RuntimeError:  # torch._inductor.exc.InvalidCxxCompiler (on Windows: a RuntimeError too)
        cxx = config.cpp.cxx
    names = [c for c in (cxx if isinstance(cxx, (list, tuple)) else (cxx,)) if c]  # (None: conda's g++)
    return "tried " + ", ".join(f"$CXX={n}" if n == os.environ.get("CXX") else n for n in names)


def require_cpp_compiler(flag: str, instead: str) -> None:
    """Raise a UserError naming ``flag`` where torch.compile on the CPU would find no C++
    compiler (:func:`missing_cpp_compiler`); ``instead``: how to run without one."""
    missing = missing_cpp_compiler()
    if missing is not None:
        raise UserError(f"{flag}: torch.compile on the CPU needs a C++ compiler and none was found ({missing}); "
                        f"install one (g++) or point CXX at one, or run {instead}")


@functools.lru_cache(maxsize=None)
def missing_triton() -> str | None:
    """None where Triton, torch.compile's CUDA backend (and FlexAttention's kernel), can start on
    this machine's GPU; else why not, for a message.

    Triton builds its CUDA driver module from C the first time it starts (then loads it from its
    cache, ``~/.triton/cache``): a machine without a C compiler (``$CC``, else gcc or clang), as
    PyTorch's CUDA runtime container images long were (pytorch/pytorch issue 116696) and slim
    images are, fails there, at the first compiled kernel. This starts it once per process (a
    second or two the first time on a machine, as the first kernel would) and keeps the answer.
    """
    try:
        from triton.runtime.driver import driver
    except ImportError:
        return "Triton is not installed"
    try:
        driver.active  # (builds or loads the driver module; raises where it cannot)
    except AttributeError:  # pragma: no cover - another Triton's layout: let the first kernel tell
        return None
    except Exception as e:  # no C compiler (RuntimeError), one that fails (CalledProcessError), no GPU, ...
        return first_line(e)
    return None


def require_compiler(flag: str, device: torch.device, instead: str) -> None:
    """Raise a UserError naming ``flag`` where torch.compile cannot build kernels for ``device``:
    on the CPU without a C++ compiler (:func:`missing_cpp_compiler`), on CUDA where Triton cannot
    start (:func:`missing_triton`); ``instead``: how to run without compiling."""
    if device.type == "cpu":
        require_cpp_compiler(flag, instead)
    elif device.type == "cuda" and (why := missing_triton()) is not None:
        fix = "install a C compiler (gcc) or point CC at one, or " if "compiler" in why.lower() else ""
        raise UserError(f"{flag}: torch.compile on CUDA needs Triton, which cannot start on this machine ({why}); "
                        f"{fix}run {instead}")


def is_compile_error(e: BaseException) -> bool:
    """Whether ``e`` was raised by torch.compile's machinery (dynamo, inductor) or a kernel
    compiler (Triton: e.g. no C compiler for its launcher), not by the code it compiled."""
    return any(t.__module__.startswith(("torch._dynamo", "torch._inductor", "triton")) for t in type(e).__mro__)


def raise_compile_error(e: BaseException, flags: Sequence[str], instead: str) -> None:
    """Raise one line for ``e``, an error of a step run with ``flags`` (the options that had
    torch.compile build kernels, none: nothing compiled), where torch.compile's machinery raised
    it (:func:`is_compile_error`): naming ``flags`` and ``instead``, how to run without compiling.
    Else return, for the caller to re-raise ``e``."""
    if flags and is_compile_error(e):
        raise UserError(f"{' and '.join(flags)}: torch.compile failed on this machine ({first_line(e)}); "
                        f"run {instead}") from None
