"""clip_smot.common.device: the devices the commands accept."""

import os

import pytest
import torch

from clip_smot.common.errors import UserError


def test_devices_other_than_cpu_and_an_existing_cuda_are_one_line(monkeypatch):
    """--device meta ran on tensors without data and failed deep inside, mps likewise; cuda:N is
    checked against the GPUs there are."""
    import torch

    from clip_smot.common.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    for name, expected in (("meta", "not supported"), ("mps", "not supported"), ("xla", "not supported"),
                           ("gpu", "not a device; choose auto, cpu, cuda or cuda:N$"),
                           ("cuda:-1", "not a device; choose auto, cpu, cuda or cuda:N$")):
        with pytest.raises(UserError, match=rf"^--device {name}: {expected}"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="^--device cuda:0: no CUDA device is available on this machine$"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UserError, match=r"^--device cuda:2: this machine has 2 CUDA devices \(cuda:0 to cuda:1\)$"):
        resolve_device("cuda:2")


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_the_cpu():
    import torch

    from clip_smot.common.device import resolve_precision

    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cuda", 1)) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert [resolve_precision(p, torch.device("cuda")) for p in ("fp32", "fp16", "bf16")] == ["fp32", "fp16", "bf16"]
    # the CPU's autocast runs fp16 as bf16: the resolved precision says so
    assert [resolve_precision(p, torch.device("cpu")) for p in ("fp32", "fp16", "bf16")] == ["fp32", "bf16", "bf16"]
    with pytest.raises(UserError, match="--precision must be auto or one of"):
        resolve_precision("fp8", torch.device("cpu"))


def test_auto_is_cuda_where_there_is_one_and_under_torchrun_the_local_ranks_gpu(monkeypatch):
    """'auto' picks CUDA when it is available; under torchrun 'auto' and 'cuda' are this process's
    GPU, cuda:LOCAL_RANK (not cuda:RANK: rank 3 of two machines of two GPUs runs on its cuda:1)."""
    import torch

    from clip_smot.common.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    for name, value in (("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500")):  # (what torchrun sets)
        monkeypatch.setenv(name, value)
    assert [resolve_device(n) for n in ("auto", "cuda", "cuda:0", "cpu")] == [
        torch.device("cuda", 1), torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cpu")]


def test_torchrun_of_more_processes_than_gpus_is_refused_in_one_line(monkeypatch):
    """torchrun --nproc_per_node 2 on a machine of one GPU: local rank 1 was given cuda:1, and
    died on CUDA's "invalid device ordinal" traceback. Now one line in the process with no GPU;
    local rank 0 still gets cuda:0, and a run without torchrun is not affected."""
    import torch

    from clip_smot.common.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    for name in ("auto", "cuda"):
        with pytest.raises(UserError, match=rf"^--device {name}: under torchrun local rank 1 runs on cuda:1, and this "
                                            r"machine has 1 CUDA device \(cuda:0 to cuda:0\); start at most 1 process "
                                            r"a machine \(--nproc_per_node\)$"):
            resolve_device(name)
    from clip_smot.resnet.train import TrainConfig, _device

    set_device = []
    monkeypatch.setattr(torch.cuda, "set_device", set_device.append)
    with pytest.raises(UserError, match=r"^--device cuda: under torchrun local rank 1 runs on cuda:1"):
        _device(TrainConfig(out="o", data="d", device="cuda:0"), 2)  # (train puts each process on its GPU)
    assert set_device == []
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("cuda") == torch.device("cuda", 0)


def test_one_gpu_is_named_in_the_singular_and_torchrun_without_cuda_runs_on_the_cpu(monkeypatch):
    """A machine of one GPU: "1 CUDA device (cuda:0 to cuda:0)". Under torchrun on a machine
    without CUDA (gloo on CPUs), auto is the CPU, not cuda:LOCAL_RANK of a GPU there is not."""
    import torch

    from clip_smot.common.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"^--device cuda:1: this machine has 1 CUDA device \(cuda:0 to cuda:0\)$"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="^--device cuda: no CUDA device is available on this machine$"):
        resolve_device("cuda")


def test_cuda_that_is_not_available_is_refused_whatever_the_device_count(monkeypatch):
    """torch.cuda.device_count() can count GPUs that CUDA cannot use (a driver too old for torch's CUDA)."""
    import torch

    from clip_smot.common.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match=f"^--device {name}: no CUDA device is available on this machine$"):
            resolve_device(name)


def test_autocast_runs_the_precision_asked_and_fp16_as_bf16_on_the_cpu():
    import torch

    from clip_smot.common.device import autocast

    cpu, a = torch.device("cpu"), torch.ones(2, 2)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.bfloat16)):
        with autocast(cpu, precision):
            assert (a @ a).dtype == dtype, precision
            assert torch.is_autocast_enabled("cpu") is (precision != "fp32")
    with autocast(cpu, "bf16", cache=False):  # (torch's advice while a CUDA graph is captured)
        assert not torch.is_autocast_cache_enabled()
    with autocast(cpu, "bf16"):
        assert torch.is_autocast_cache_enabled()
    with pytest.raises(UserError, match=r"^--precision must be one of \('bf16', 'fp16', 'fp32'\), got 'fp8'$"):
        autocast(cpu, "fp8")


def test_autocast_on_cuda_runs_fp16_as_fp16(monkeypatch):
    """Only the CPU turns fp16 into bf16: on CUDA, fp16 is what --precision fp16 asks (docs/resnet.md:
    with loss scaling), bf16 is bf16."""
    import torch

    from clip_smot.common.device import autocast

    monkeypatch.setattr(torch, "autocast", lambda **kwargs: kwargs)  # (what autocast is asked for; no GPU needed)
    cuda = torch.device("cuda", 0)
    assert autocast(cuda, "fp16") == {"device_type": "cuda", "dtype": torch.float16, "cache_enabled": True}
    assert autocast(cuda, "bf16", cache=False) == {"device_type": "cuda", "dtype": torch.bfloat16,
                                                   "cache_enabled": False}


def test_seeding_repeats_every_generator_and_a_seeded_block_leaves_the_callers_alone():
    import random

    import numpy as np
    import torch

    from clip_smot.common.device import seed_everything, seeded_cpu_rng

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        draws = []
        for _ in range(2):
            seed_everything(2**40 + 7)  # (numpy takes seeds below 2**32 only)
            draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
        assert draws[0] == draws[1]
        before = torch.get_rng_state()
        with seeded_cpu_rng(123):
            inside = torch.rand(5)
        assert torch.equal(torch.get_rng_state(), before)  # the caller's generator: as it was
        assert torch.equal(inside, torch.rand(5, generator=torch.Generator().manual_seed(123)))
    finally:
        random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])


def test_physical_memory_is_the_kernels_total():
    from clip_smot.common.device import physical_memory

    with open("/proc/meminfo") as f:  # (Linux: MemTotal in KiB)
        total = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert physical_memory() == total * 1024


def test_missing_cpp_compiler_asks_inductors_own_lookup(tmp_path, monkeypatch):
    """torch.compile on the CPU builds C++ kernels with the first of inductor's config.cpp.cxx
    ($CXX, else g++) that answers --version; a slim image has none. The check runs that lookup:
    a program that answers is a compiler, a path that is not there is none."""
    from torch._inductor import config

    from clip_smot.common.device import missing_cpp_compiler, require_cpp_compiler

    fake = tmp_path / "c++"
    fake.write_text("#!/bin/sh\necho 'fake c++ 1.0'\n")
    fake.chmod(0o755)
    with config.patch({"cpp.cxx": (None, str(fake))}):  # (None: conda's g++, only with TORCH_INDUCTOR_INSTALL_GXX)
        assert missing_cpp_compiler() is None
        require_cpp_compiler("--compile", "without --compile")
    gone = str(tmp_path / "nowhere" / "g++")
    with config.patch({"cpp.cxx": (None, gone)}):
        assert missing_cpp_compiler() == f"tried {gone}"
        monkeypatch.setenv("CXX", gone)
        assert missing_cpp_compiler() == f"tried $CXX={gone}"
        with pytest.raises(UserError) as e:
            require_cpp_compiler("--compile", "without --compile")
    assert str(e.value) == (f"--compile: torch.compile on the CPU needs a C++ compiler and none was found (tried "
                            f"$CXX={gone}); install one (g++) or point CXX at one, or run without --compile")


def test_compiler_tests_are_skipped_only_where_inductor_finds_no_compiler(tmp_path, pytestconfig):
    """Tests marked cpp_compiler (torch.compile on the CPU) skip, with the lookup's reason, only
    where inductor's own lookup finds no C++ compiler; where it finds one they run."""
    from conftest import cpp_compiler_skip_reason
    from torch._inductor import config

    assert any(m.startswith("cpp_compiler:") for m in pytestconfig.getini("markers"))
    fake = tmp_path / "c++"
    fake.write_text("#!/bin/sh\necho 'fake c++ 1.0'\n")
    fake.chmod(0o755)
    with config.patch({"cpp.cxx": (None, str(fake))}):
        assert cpp_compiler_skip_reason() is None
    gone = tmp_path / "nowhere" / "g++"
    with config.patch({"cpp.cxx": (None, str(gone))}):
        assert cpp_compiler_skip_reason() == f"needs a C++ compiler for torch.compile on the CPU (none found: tried {gone})"


def _fake_triton_driver(monkeypatch, active):
    """Put a module in place of triton.runtime.driver whose ``driver.active`` runs ``active``."""
    import sys
    import types

    class Driver:
        @property
        def active(self):
            return active()

    module = types.ModuleType("triton.runtime.driver")
    module.driver = Driver()
    monkeypatch.setitem(sys.modules, "triton.runtime.driver", module)


def test_missing_triton_starts_tritons_driver_and_says_why_it_cannot(monkeypatch):
    """Triton builds its CUDA driver module from C the first time it starts (PyTorch's runtime
    images have no C compiler): the check starts it and quotes the first line of its error; the
    answer is kept for the process."""
    from clip_smot.common import device

    def no_c_compiler():
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable or set "
                           "triton.knobs.build.impl.\nmore")

    device.missing_triton.cache_clear()
    try:
        _fake_triton_driver(monkeypatch, no_c_compiler)
        assert device.missing_triton() == ("Failed to find C compiler. Please specify via CC environment variable or "
                                           "set triton.knobs.build.impl.")
        _fake_triton_driver(monkeypatch, lambda: object())
        assert device.missing_triton() is not None  # (kept: the driver is started once per process)
        device.missing_triton.cache_clear()
        assert device.missing_triton() is None
        device.missing_triton.cache_clear()
        monkeypatch.setitem(__import__("sys").modules, "triton.runtime.driver", None)  # (import fails)
        assert device.missing_triton() == "Triton is not installed"
    finally:
        device.missing_triton.cache_clear()


def test_missing_triton_gives_the_real_tritons_failure_as_its_reason():
    """The real Triton, made to fail as it does where it cannot start (here: a backend that does not
    exist, on any machine, GPU or not; a process of its own, as the answer is kept): the check
    gives Triton's first line as its reason instead of raising."""
    import os
    import subprocess
    import sys

    code = "from clip_smot.common.device import missing_triton; print(repr(missing_triton()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_DEFAULT_BACKEND": "nowhere"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("\"Unknown backend device 'nowhere'"), (out.stdout, out.stderr)
    assert len(out.stdout.splitlines()) == 1


def test_require_compiler_names_the_flag_and_what_to_do_per_device(monkeypatch):
    """On CUDA: Triton's reason, a C compiler where it found none, and the run without the flag;
    on the CPU: the C++ compiler check as before; a Triton that starts (or a CPU with a compiler)
    passes."""
    import torch

    from clip_smot.common import device

    monkeypatch.setattr(device, "missing_triton", lambda: "Failed to find C compiler. Please specify via CC")
    monkeypatch.setattr(device, "missing_cpp_compiler", lambda: None)
    device.require_compiler("--compile", torch.device("cpu"), "without --compile")
    with pytest.raises(UserError) as e:
        device.require_compiler("--compile and --cuda-graph", torch.device("cuda", 1), "without them")
    assert str(e.value) == ("--compile and --cuda-graph: torch.compile on CUDA needs Triton, which cannot start on "
                            "this machine (Failed to find C compiler. Please specify via CC); install a C compiler "
                            "(gcc) or point CC at one, or run without them")
    monkeypatch.setattr(device, "missing_triton", lambda: "libcuda.so cannot found!")  # (no compiler to install)
    with pytest.raises(UserError) as e:
        device.require_compiler("--compile", torch.device("cuda"), "without --compile")
    assert str(e.value) == ("--compile: torch.compile on CUDA needs Triton, which cannot start on this machine "
                            "(libcuda.so cannot found!); run without --compile")
    monkeypatch.setattr(device, "missing_cpp_compiler", lambda: "tried g++")
    with pytest.raises(UserError, match=r"^--compile: torch.compile on the CPU needs a C\+\+ compiler and none was "
                                        r"found \(tried g\+\+\)"):
        device.require_compiler("--compile", torch.device("cpu"), "without --compile")
    monkeypatch.setattr(device, "missing_triton", lambda: None)
    device.require_compiler("--compile", torch.device("cuda"), "without --compile")


def test_raise_compile_error_names_the_flags_only_for_an_error_of_the_compilers_machinery():
    """fit's and train's line for a step that failed in torch.compile's machinery (the flags that
    compiled, how to run without); an error of the code itself, or a step that compiled nothing,
    is left to the caller to re-raise."""
    from clip_smot.common.device import raise_compile_error

    inductor_error = type("InductorError", (RuntimeError,), {"__module__": "torch._inductor.exc"})
    with pytest.raises(UserError) as e:
        raise_compile_error(inductor_error("cc: not found\nmore"), ["--compile", "--cuda-graph"],
                            "without --compile and --cuda-graph")
    assert str(e.value) == ("--compile and --cuda-graph: torch.compile failed on this machine (cc: not found); "
                            "run without --compile and --cuda-graph")
    assert e.value.__suppress_context__  # (one line: no "during handling" traceback above it)
    assert raise_compile_error(inductor_error("x"), [], "as it was") is None
    assert raise_compile_error(ValueError("a bug"), ["--compile"], "without --compile") is None


def test_require_cuda_refuses_a_cpu_device_naming_the_flag_and_passes_any_cuda_device():
    """fit's --cuda-graph and --overlap-encoders, train's --cuda-graph: one line, whichever command."""
    from clip_smot.common.device import require_cuda

    with pytest.raises(UserError) as e:
        require_cuda("--cuda-graph", torch.device("cpu"))
    assert str(e.value) == "--cuda-graph: needs a CUDA device (--device cuda), not cpu"
    for name in ("cuda", "cuda:0", "cuda:3"):  # (a torch.device names any index: no GPU is needed to make one)
        require_cuda("--overlap-encoders", torch.device(name))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")  # (as test_fit_gpu.py)
def test_missing_triton_on_a_gpu_machine_with_and_without_a_c_compiler(tmp_path):
    """On a GPU machine Triton starts (None); with no C compiler on the PATH, no $CC and an empty
    Triton cache it cannot, and the check says so (a process each: the answer is kept)."""
    import os
    import subprocess
    import sys

    code = "from clip_smot.common.device import missing_triton; print(repr(missing_triton()))"
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "None", out.stderr
    bare = {**env, "PATH": str(tmp_path / "bin"), "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=bare, capture_output=True, text=True, timeout=300)
    assert "C compiler" in out.stdout, (out.stdout, out.stderr)


def test_autocast_fp32_is_no_autocast_and_says_nothing():
    """fp32 enters no autocast at all: torch's CPU autocast of float32 warns that it only supports
    bfloat16 and float16 (and turns itself off), a line on stderr at every batch."""
    import warnings

    import torch

    from clip_smot.common.device import autocast

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with autocast(torch.device("cpu"), "fp32"):
            assert not torch.is_autocast_enabled("cpu")


def test_numpy_is_seeded_with_the_seed_modulo_two_to_the_32():
    """numpy's legacy seed takes [0, 2**32): a seed of the configs' range, up to 2**63 - 1, seeds it
    with its low 32 bits. 2**40 + 2**32 + 2**31 + 7 seeds numpy as 2**31 + 7 = 2147483655."""
    import random

    import numpy as np
    import torch

    from clip_smot.common.device import seed_everything

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        seed_everything(2**40 + 2**32 + 2**31 + 7)
        assert float(np.random.rand()) == float(np.random.RandomState(2147483655).rand())
        seed_everything(2**31 + 7)
        assert float(np.random.rand()) == float(np.random.RandomState(2147483655).rand())
    finally:
        random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])


def test_a_weights_file_over_half_the_memory_is_not_loaded(tmp_path, monkeypatch):
    """A file of exactly half the machine's memory loads; one byte more does not (a sparse file:
    it costs no disk); where the OS does not say its memory, every file loads."""
    from clip_smot.common import device

    monkeypatch.setattr(device, "physical_memory", lambda: 2 * 2**30 + 1)  # (an odd size: half is 2**30 + 0.5)
    path = tmp_path / "w.safetensors"
    with open(path, "wb") as f:
        f.truncate(2**30)
    assert device.file_over_memory(path) is None
    os.truncate(path, 2**30 + 1)
    assert device.file_over_memory(path) == ("the file is 1.0 GiB, more than half of this machine's 2.0 GiB; "
                                             "not loaded")
    monkeypatch.setattr(device, "physical_memory", lambda: None)
    assert device.file_over_memory(path) is None
