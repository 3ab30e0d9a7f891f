"""Shared fixtures. Tests never touch the network: hub lookups fail at once."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch_home_unused"))

import torch  # noqa: E402

# Two intra-op threads, or one where other processes keep the machine's cores busy as the tests
# start (1-minute load average >= cores): there each op's two threads wait for each other to be
# scheduled, and a 16-pixel ResNet step took 2 s, not 0.1 s (one thread: 0.1 s, busy or not). Not
# at a load just under that (CI's, after its install): one thread is ~10% slower on a quiet machine.
_torch_threads = min(2, torch.get_num_threads())
if _torch_threads > 1 and hasattr(os, "getloadavg") and os.getloadavg()[0] >= (os.cpu_count() or 1):
    _torch_threads = 1
torch.set_num_threads(_torch_threads)

import json  # noqa: E402
import signal  # noqa: E402

import pytest  # noqa: E402

# Python raises KeyboardInterrupt on SIGINT only where SIGINT was not ignored when it started: a
# background job of a non-interactive shell (`pytest &` in a script, nohup) inherits it ignored, and
# the Ctrl-C tests (test_cli.py, test_workers.py) waited for a KeyboardInterrupt that never came (9
# failed). The tests run as under a terminal; the processes they start inherit the default action.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _click_runner_with_separate_stderr() -> None:
    """Give click 8.1's CliRunner what 8.2's gives, which the tests read: ``.stdout`` and ``.stderr``
    apart and ``.output`` as the two interleaved. Under 8.1 (the floor of ``click>=8.1``) stderr
    was mixed into ``.stdout`` and ``.stderr`` raised 'stderr not separately captured'. From 8.2
    on (no ``mix_stderr`` argument any more) nothing is changed."""
    import contextlib
    import inspect
    import io
    import sys

    import click.testing

    if "mix_stderr" not in inspect.signature(click.testing.CliRunner.__init__).parameters:
        return

    class Tee(io.BufferedIOBase):  # what is written goes to its own stream and to the interleaved one
        def __init__(self, *targets):
            super().__init__()
            self.targets = targets

        def writable(self):
            return True

        def write(self, b):
            for t in self.targets:
                t.write(b)
            return len(b)

    class Result(click.testing.Result):
        @property
        def output(self) -> str:
            return self.output_bytes.decode(self.runner.charset, "replace").replace("\r\n", "\n")

    class CliRunner(click.testing.CliRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mix_stderr=False, **kwargs)

        @contextlib.contextmanager
        def isolation(self, *args, **kwargs):
            with super().isolation(*args, **kwargs) as (out, err):
                self._output = mixed = io.BytesIO()
                self._kept = sys.stdout, sys.stderr  # (held: a text stream closes its buffer when collected)
                # (write_through: each write reaches the interleaved stream in the order it was made)
                sys.stdout = click.testing._NamedTextIOWrapper(Tee(out, mixed), encoding=self.charset,
                                                               name="<stdout>", mode="w", write_through=True)
                sys.stderr = click.testing._NamedTextIOWrapper(Tee(err, mixed), encoding=self.charset,
                                                               name="<stderr>", mode="w", errors="backslashreplace",
                                                               write_through=True)
                yield out, err

        def invoke(self, *args, **kwargs):
            result = super().invoke(*args, **kwargs)
            result.__class__ = Result
            result.output_bytes = self._output.getvalue()
            return result

    click.testing.CliRunner = CliRunner


_click_runner_with_separate_stderr()

# A tiny ViT CLIP: the same architecture family as ViT-B-16, small enough for CPU tests.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory) -> str:
    """Path of a tiny open_clip model-config JSON (model name: its stem, 'clip-smot-tiny')."""
    path = tmp_path_factory.mktemp("clipcfg") / "clip-smot-tiny.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return str(path)


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tiny_clip_config, tmp_path_factory) -> str:
    """A .safetensors checkpoint of randomly initialised tiny CLIP weights (seeded)."""
    import open_clip
    from safetensors.torch import save_file

    open_clip.add_model_config(tiny_clip_config)
    torch.manual_seed(1234)
    model = open_clip.create_model("clip-smot-tiny", pretrained=None)
    path = tmp_path_factory.mktemp("clipckpt") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def cpp_compiler_skip_reason() -> str | None:
    """Why a test marked ``cpp_compiler`` cannot run here: torch.compile on the CPU builds C++
    kernels, and inductor's own lookup (:func:`clip_smot.common.device.missing_cpp_compiler`)
    finds no compiler. None where it finds one: then every such test runs."""
    from clip_smot.common.device import missing_cpp_compiler

    missing = missing_cpp_compiler()
    return None if missing is None else f"needs a C++ compiler for torch.compile on the CPU (none found: {missing})"


def pytest_runtest_setup(item):
    if item.get_closest_marker("cpp_compiler") and (reason := cpp_compiler_skip_reason()):
        pytest.skip(reason)
    # A test marked gpu (deselected by default) asks for a CUDA device: `pytest -m gpu` on a machine
    # without one skips them all with this reason (three of them failed on "cuda" instead).
    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (marked gpu)")


@pytest.fixture(autouse=True)
def _sigint_handler_kept():
    """Each test leaves the SIGINT handler as it found it: one a command left behind (reproduce's
    stages, run through the group's main inside its own, once left a handler that only records)
    made every later Ctrl-C test of the run fail, in an order of the tests pytest 7 chose."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test left the SIGINT handler {after!r} (it found {before!r})")
