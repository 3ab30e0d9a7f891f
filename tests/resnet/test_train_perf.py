"""The eager training step against a hand-written one; the fast variants (fused SGD, torch.compile,
CUDA graphs) give the eager step's result; the epoch's seeded thresholds and noise."""

import copy
import time

import pytest
import torch
from click.testing import CliRunner

from clip_smot.cam import CAMProvider
from clip_smot.cli import cli
from clip_smot.common.device import autocast
from clip_smot.resnet.data import CIFAR10_MEAN, CIFAR10_STD, TensorBatches, mix_seed
from clip_smot.resnet.networks import build_network
from clip_smot.resnet.train import (
    StepParts,
    compile_for_training,
    make_optimizer,
    train_epoch,
    train_step,
)
from clip_smot.smot import sample_thresholds

B, K, S = 8, 10, 32


def _setup(device="cpu", cuda_graph=False):
    torch.manual_seed(0)
    model = build_network("resnet_tiny", K, S).to(device)
    torch.manual_seed(1)
    base = build_network("resnet_tiny", K, S).to(device)
    cam = CAMProvider(base, CIFAR10_MEAN, CIFAR10_STD, labels_match=True)
    cam.mean, cam.std = cam.mean.to(device), cam.std.to(device)
    parts = StepParts(method="smot", mean=torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1),
                      std=torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1), cam=cam, T=10.0, lam=0.1,
                      cuda_graph=cuda_graph)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, K, (B,), generator=g).to(device)
    t = sample_thresholds(B, 50.0, 20.0, generator=g).to(device)
    return model, parts, x, y, t


def _steps(model, parts, x, y, t, n, fused, step_model=None, amp=None):
    opt = make_optimizer(model, 0.1, 0.9, 5e-4, x.device, fused=fused)
    amp = amp or autocast(x.device, "fp32")
    losses = []
    for _ in range(n):
        loss, correct = train_step(model if step_model is None else step_model, opt, x, y, t, parts, amp)
        losses.append(float(loss))
    return losses, int(correct)


def _assert_same(m1, m2, rtol, atol):
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


# (method, masked region, T, lam): T and lam away from the defaults (10, 0.1) too, so that a step
# which ignored --T or --lam would differ; eps of Eq. 9 at t ~ 180 is ~1 at T = 10, ~0.4 at T = 150.
STEP_CASES = [("smot", "zero", 10.0, 0.1), ("smot", "zero", 150.0, 0.3), ("smot", "one", 10.0, 0.1),
              ("smot", "noise", 150.0, 0.3), ("ls", None, None, None), ("logitnorm", None, None, None),
              ("ce", None, None, None)]


@pytest.mark.parametrize("method, mask, T, lam", STEP_CASES)
def test_eager_step_is_the_hand_written_step(method, mask, T, lam):
    """One plain-SGD step of train_step: its loss and its weights against docs/method.md §1 written out."""
    model, parts, x, y, t = _setup()
    parts.method = method
    parts.perturb = mask or "zero"
    if method == "smot":
        parts.T, parts.lam = T, lam
    parts.sigma = 0.3  # the noise's std (default 0.1): used by mask "noise" only
    noise_gen = torch.Generator().manual_seed(4) if mask == "noise" else None
    ref = copy.deepcopy(model)
    loss, correct = train_step(model, make_optimizer(model, 0.1, 0.9, 5e-4, x.device, fused=False), x, y, t, parts,
                               autocast(x.device, "fp32"), noise_gen)

    xf = x.float() / 255  # [B, 3, S, S] in [0, 1], before normalisation
    if method == "smot":
        cams = parts.cam(xf, y)  # [B, S, S] in [0, 255], the true label (CAMProvider: tests/test_cam.py)
        keep = (cams < t.view(B, 1, 1)).float()[:, None]  # Eq. 7: masked where cam >= t
        # originals, then their masked copies: black (zero), white (one), or Gaussian noise of std
        # sigma = 0.3 added where masked, clipped to [0, 1] (Table 9), drawn from a twin of noise_gen
        if mask == "noise":
            noise = torch.randn(xf.shape, generator=torch.Generator().manual_seed(4))  # [B, 3, S, S]
            copies = (xf + 0.3 * noise * (1 - keep)).clamp(0, 1)
        else:
            copies = xf * keep + (1 - keep) * (mask == "one")
        xf = torch.cat([xf, copies])
    logits = ref((xf - parts.mean) / parts.std)
    logp = logits.log_softmax(dim=-1)
    onehot = torch.nn.functional.one_hot(y, K).float()
    if method == "smot":
        eps = 1 - torch.exp((t - 255) / T)  # Eq. 9
        target = (1 - eps[:, None]) * onehot + eps[:, None] / K  # Eq. 5
        want = (1 - lam) * -(onehot * logp[:B]).sum(-1).mean() + lam * -(target * logp[B:]).sum(-1).mean()  # Eq. 8
    elif method == "ls":
        want = -((0.9 * onehot + 0.1 / K) * logp).sum(-1).mean()
    elif method == "logitnorm":
        z = logits / (0.04 * logits.norm(dim=-1, keepdim=True))
        want = -(onehot * z.log_softmax(dim=-1)).sum(-1).mean()
    else:
        want = -(onehot * logp).sum(-1).mean()
    want.backward()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-5, atol=1e-6)
    assert int(correct) == int((logits[:B].argmax(-1) == y).sum())
    # first SGD step (empty momentum buffer): w - lr * (grad + wd * w)
    for (name, w), w0 in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(w.detach(), w0.detach() - 0.1 * (w0.grad + 5e-4 * w0.detach()), rtol=1e-5,
                                   atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_two_steps_are_sgd_with_momentum_on_fresh_gradients():
    """Two train_step calls against SGD written out (docs/method.md §3: momentum 0.9, weight decay
    5e-4): v1 = g(w0) + wd w0, w1 = w0 - lr v1; v2 = 0.9 v1 + g(w1) + wd w1, w2 = w1 - lr v2, with
    g(w1) the second batch's gradient alone. (The first step of
    test_eager_step_is_the_hand_written_step has no momentum yet, nor an earlier gradient that a
    step which did not zero it would add.)"""
    import contextlib

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, K))
    w0 = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(3)
    xs = [torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=g) for _ in range(2)]
    ys = [torch.randint(0, K, (6,), generator=g) for _ in range(2)]
    parts = StepParts("ce", mean=torch.full((1, 3, 1, 1), 0.5), std=torch.full((1, 3, 1, 1), 0.25))
    opt = make_optimizer(model, 0.1, 0.9, 5e-4, torch.device("cpu"), fused=False)
    for x, y in zip(xs, ys):
        train_step(model, opt, x, y, None, parts, contextlib.nullcontext())

    def grads(w, x, y):  # mean cross-entropy of the batch at weights w = [weight, bias], written out
        w = [t.clone().requires_grad_() for t in w]
        logits = ((x.float() / 255 - 0.5) / 0.25).flatten(1) @ w[0].T + w[1]
        (-logits.log_softmax(-1)[torch.arange(len(y)), y].mean()).backward()
        return [t.grad for t in w]

    v1 = [gr + 5e-4 * w for gr, w in zip(grads(w0, xs[0], ys[0]), w0)]
    w1 = [w - 0.1 * v for w, v in zip(w0, v1)]
    v2 = [0.9 * v + gr + 5e-4 * w for v, gr, w in zip(v1, grads(w1, xs[1], ys[1]), w1)]
    w2 = [w - 0.1 * v for w, v in zip(w1, v2)]
    for p, want in zip(model.parameters(), w2):
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)


def test_the_cam_and_the_forward_run_under_the_steps_autocast():
    """train_step's ``amp`` (bf16 autocast on CUDA) covers both networks' forward passes: the CAM
    network's and the trained one's. (In fp32, the tests' precision, amp is a null context, so no
    result of the step can tell whether it was entered.)"""
    model, parts, x, y, t = _setup()

    class Amp:  # a context that records when it is open
        active = False

        def __enter__(self):
            Amp.active = True

        def __exit__(self, *exc):
            Amp.active = False

    seen = []
    cam = parts.cam
    parts.cam = lambda *a: (seen.append(("cam", Amp.active)), cam(*a))[1]
    model.register_forward_pre_hook(lambda module, args: seen.append(("model", Amp.active)))
    train_step(model, make_optimizer(model, 0.1, 0.9, 5e-4, x.device, fused=False), x, y, t, parts, Amp())
    assert seen == [("cam", True), ("model", True)] and not Amp.active


def _batches(n=20, batch=8, seed=7):
    """n random images in batches of 8 (8, 8, 4): an epoch of several steps."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (n, 3, S, S), dtype=torch.uint8, generator=g)
    y = torch.randint(0, K, (n,), generator=g)
    return TensorBatches(x, y, batch, torch.device("cpu"), seed=seed)


def _spy_train_step(monkeypatch, record) -> list:
    """Make train_epoch's train_step note ``record(t, noise_gen)`` of each step (its thresholds, its
    noise generator) in the list returned, then take the step."""
    import clip_smot.resnet.train as train_mod

    seen, real = [], train_mod.train_step

    def spy(model, optimizer, x, y, t, parts, amp, noise_gen=None):
        seen.append(record(t, noise_gen))
        return real(model, optimizer, x, y, t, parts, amp, noise_gen)

    monkeypatch.setattr(train_mod, "train_step", spy)
    return seen


def test_each_batch_of_an_epoch_gets_its_own_thresholds(monkeypatch):
    """The epoch draws its n thresholds at once from (seed, epoch, rank, stream 2) (mix_seed's
    docstring) and hands batch i its own slice: consecutive, not the first slice again."""

    model, parts, _, _, _ = _setup()
    got = _spy_train_step(monkeypatch, lambda t, noise_gen: t.clone())
    opt = make_optimizer(model, 0.1, 0.9, 5e-4, torch.device("cpu"), fused=False)
    stats = train_epoch(model, opt, _batches(), 3, parts, autocast(torch.device("cpu"), "fp32"), seed=7, alpha=50.0,
                        beta=20.0, rank=0, n_samples=20)
    assert [len(t) for t in got] == [8, 8, 4] and stats["steps"] == 3 and stats["seen"] == 20
    want = sample_thresholds(20, 50.0, 20.0, generator=torch.Generator().manual_seed(mix_seed(7, 3, 0, 2)))
    assert torch.equal(torch.cat(got), want)


def test_a_noise_epoch_is_a_function_of_the_seed_not_of_the_global_rng():
    """--perturb noise: the noise of an epoch is seeded by (seed, epoch, rank) like its other draws
    (resnet/train.py's docstring), so the same epoch from the same weights gives the same weights
    whatever torch's global RNG holds. (A resume test cannot show it: the checkpoint restores the
    global RNG too, so noise drawn from it would resume exactly as well.)"""
    model, parts, _, _, _ = _setup()
    parts.perturb, parts.sigma = "noise", 0.3
    trained = []
    for global_seed in (11, 12):
        m = copy.deepcopy(model)
        torch.manual_seed(global_seed)  # another state of the global generator each time
        train_epoch(m, make_optimizer(m, 0.1, 0.9, 5e-4, torch.device("cpu"), fused=False), _batches(), 1, parts,
                    autocast(torch.device("cpu"), "fp32"), seed=7, alpha=50.0, beta=20.0, n_samples=20)
        trained.append(m)
    _assert_same(*trained, rtol=0, atol=0)


def test_a_noise_epoch_draws_its_noise_from_its_own_seed_epoch_and_rank(monkeypatch):
    """The noise generator of an epoch is seeded with mix_seed(seed, epoch, rank, 3) (stream 3 of
    mix_seed's docstring), so that epochs and processes draw other noise. (A generator left
    unseeded, or seeded from the wrong numbers, is as deterministic, which is all
    test_a_noise_epoch_is_a_function_of_the_seed_not_of_the_global_rng can see.)"""

    model, parts, _, _, _ = _setup()
    parts.perturb = "noise"
    seeds = _spy_train_step(monkeypatch, lambda t, noise_gen: noise_gen.initial_seed())
    opt = make_optimizer(model, 0.1, 0.9, 5e-4, torch.device("cpu"), fused=False)
    train_epoch(model, opt, _batches(), 5, parts, autocast(torch.device("cpu"), "fp32"), seed=7, alpha=50.0,
                beta=20.0, rank=2, n_samples=20, max_steps=1)
    assert seeds == [mix_seed(7, 5, 2, 3)]


def test_an_epoch_stops_after_max_steps_and_at_a_non_finite_loss_only_when_asked():
    """max_steps (the dry run's 1) takes that many batches; the loss read back every check_every
    steps stops the epoch when it is not finite and stop_on_nan is set, and only then. (The
    runs of the other tests never reach a read-back: their epochs are shorter than 50 steps.)"""
    import contextlib

    def epoch(std, **kw):  # 20 images in batches of 8, 8, 4; std 0: infinite inputs, a NaN loss
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * S * S, K))
        parts = StepParts("ce", mean=torch.full((1, 3, 1, 1), 0.5), std=torch.full((1, 3, 1, 1), std))
        stats = train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), _batches(), 0, parts,
                            contextlib.nullcontext(), seed=7, alpha=50.0, beta=20.0, n_samples=20, **kw)
        return stats["steps"], stats["seen"], bool(torch.isfinite(stats["loss_sum"]))

    assert epoch(1.0, max_steps=1) == (1, 8, True)
    assert epoch(1.0, max_steps=2) == (2, 16, True)
    assert epoch(1.0, check_every=1) == (3, 20, True)  # finite: every batch
    assert epoch(0.0, check_every=1) == (1, 8, False)  # stopped at the first read-back
    assert epoch(0.0, check_every=2) == (2, 16, False)  # at the second step's
    assert epoch(0.0, check_every=1, stop_on_nan=False) == (3, 20, False)  # (DDP: every rank takes every step)


def test_an_epochs_bar_shows_the_running_loss_read_back(monkeypatch):
    """On a terminal the epoch's bar shows the running loss at each read-back: a network whose
    logits are all 0 (zero weights, lr 0) has the cross-entropy ln K at every step, ln 10 =
    2.302585..., shown as loss=2.3026."""
    import contextlib
    import io
    import sys

    class Terminal(io.StringIO):  # (the bar draws only on a terminal)
        def isatty(self):
            return True

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * S * S, K))
    torch.nn.init.zeros_(model[1].weight)
    torch.nn.init.zeros_(model[1].bias)
    parts = StepParts("ce", mean=torch.full((1, 3, 1, 1), 0.5), std=torch.full((1, 3, 1, 1), 0.25))
    monkeypatch.setattr(sys, "stderr", Terminal())
    stats = train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.0), _batches(), 0, parts,
                        contextlib.nullcontext(), seed=7, alpha=50.0, beta=20.0, n_samples=20, progress=True,
                        check_every=2)
    assert stats["steps"] == 3 and "loss=2.3026" in sys.stderr.getvalue(), sys.stderr.getvalue()


def test_fused_sgd_gives_the_plain_sgd_weights():
    model, parts, x, y, t = _setup()
    other = copy.deepcopy(model)
    losses, correct = _steps(model, parts, x, y, t, 3, fused=False)
    losses_f, correct_f = _steps(other, parts, x, y, t, 3, fused=True)
    assert losses[0] != losses[-1]  # the steps did change the weights
    torch.testing.assert_close(torch.tensor(losses_f), torch.tensor(losses), rtol=1e-5, atol=1e-6)
    assert correct == correct_f
    _assert_same(model, other, rtol=1e-5, atol=1e-6)


def test_the_sgd_is_fused_on_cuda_and_as_asked_elsewhere():
    """make_optimizer's choice of kernel (its docstring): fused for a CUDA device, PyTorch's
    default on the CPU, and what ``fused`` says when it is given. (The fused and the plain update
    give the same weights, so no weight comparison can tell which one a run got.)"""
    params = list(torch.nn.Linear(2, 2).parameters())  # (SGD takes CPU tensors with either kernel)
    model = torch.nn.ParameterList(params)

    def fused(device, **kw):
        opt = make_optimizer(model, 0.1, 0.9, 5e-4, torch.device(device), **kw)
        assert {k: opt.defaults[k] for k in ("lr", "momentum", "weight_decay")} == {
            "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
        return bool(opt.defaults.get("fused"))

    assert fused("cuda") and not fused("cpu")
    assert fused("cpu", fused=True) and not fused("cuda", fused=False)


@pytest.mark.cpp_compiler
@pytest.mark.slow  # inductor's C++ compile of the tiny ResNet's forward and backward: ~1 min on 2 cores
def test_compiled_step_gives_the_eager_step():
    model, parts, x, y, t = _setup()
    other = copy.deepcopy(model)
    losses, _ = _steps(model, parts, x, y, t, 2, fused=False)
    _, parts_c, _, _, _ = _setup()  # a fresh CAM network whose forward_features gets compiled
    t0 = time.perf_counter()
    compiled = compile_for_training(other, parts_c.cam)
    assert compiled is not other and list(other.state_dict()) == list(model.state_dict())  # keys unprefixed
    losses_c, _ = _steps(other, parts_c, x, y, t, 2, fused=False, step_model=compiled)
    print(f"compile + 2 steps on CPU: {time.perf_counter() - t0:.1f} s")
    torch.testing.assert_close(torch.tensor(losses_c), torch.tensor(losses), rtol=1e-4, atol=1e-5)
    _assert_same(model, other, rtol=1e-4, atol=1e-5)


def test_cuda_graph_needs_cuda(tmp_path):
    r = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--data", str(tmp_path / "d"), "--device", "cpu",
                                 "--cuda-graph", "--dry-run", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1, r.output
    assert r.output == "Error: --cuda-graph: needs a CUDA device (--device cuda), not cpu\n"


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_compiled_steps_match_eager(cuda_graph):
    model, parts, x, y, t = _setup("cuda")
    other = copy.deepcopy(model)
    amp = autocast(torch.device("cuda"), "bf16")
    losses, _ = _steps(model, parts, x, y, t, 3, fused=True, amp=amp)
    _, parts_c, _, _, _ = _setup("cuda", cuda_graph=cuda_graph)
    compiled = compile_for_training(other, parts_c.cam, cuda_graph=cuda_graph)
    losses_c, _ = _steps(other, parts_c, x, y, t, 3, fused=True, step_model=compiled, amp=amp)
    torch.testing.assert_close(torch.tensor(losses_c), torch.tensor(losses), rtol=3e-2, atol=3e-2)


def test_train_compile_without_a_cpp_compiler_is_one_line(tmp_path):
    """torch.compile on the CPU needs a C++ compiler: without one (here: inductor's lookup finds
    none) `train --compile` stops in one line naming the flag before any data is read (the check
    comes first), not with inductor's traceback at the first step."""
    from torch._inductor import config

    with config.patch({"cpp.cxx": (None, str(tmp_path / "nowhere" / "g++"))}):
        r = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--device", "cpu", "--workers", "0",
                                     "--epochs", "1", "--compile", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1, r.output
    assert r.output == (f"Error: --compile: torch.compile on the CPU needs a C++ compiler and none was found (tried "
                        f"{tmp_path / 'nowhere' / 'g++'}); install one (g++) or point CXX at one, or run without "
                        "--compile\n")
    assert not (tmp_path / "o").exists()


def test_train_compile_on_cuda_where_triton_cannot_start_is_one_line(tmp_path, monkeypatch):
    """On a GPU machine without a C compiler Triton cannot start: `train --compile` / `--cuda-graph`
    stop in one line naming the flags given, before any data is read (it was the first step's
    error)."""
    from clip_smot.common import device

    why = "Failed to find C compiler. Please specify via CC environment variable or set triton.knobs.build.impl."
    monkeypatch.setattr(device, "missing_triton", lambda: why)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (a CUDA machine: nothing below runs on it)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for flags in (["--compile"], ["--cuda-graph"], ["--compile", "--cuda-graph"]):
        r = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--device", "cuda", "--workers", "0",
                                     "--epochs", "1", *flags, "--out", str(tmp_path / "o")])
        named = " and ".join(flags)
        assert r.exit_code == 1, r.output
        assert r.output == (f"Error: {named}: torch.compile on CUDA needs Triton, which cannot start on this machine "
                            f"({why}); install a C compiler (gcc) or point CC at one, or run without {named}\n")
        assert not (tmp_path / "o").exists()


def test_a_failing_compiler_at_the_first_step_is_one_line(tmp_path, monkeypatch):
    """torch.compile fails at the first call of the compiled network, not when asked (e.g. on CUDA
    without a C compiler for Triton's launcher): `train --compile` ended in its traceback, where fit
    said it in one line. Now the same line, for a dry run and a run; other errors are not renamed."""
    from clip_smot.common import device

    class InductorError(RuntimeError):
        __module__ = "torch._inductor.exc"  # where torch's compile errors live

    def failing_compile(error):
        def compile(fn, mode=None, dynamic=None):
            def call(*a, **k):
                raise error
            return call
        return compile

    monkeypatch.setattr(device, "missing_cpp_compiler", lambda: None)  # (nothing is compiled: any machine)
    args = ["train", "--dataset", "digits", "--device", "cpu", "--workers", "0", "--epochs", "1", "--compile"]
    monkeypatch.setattr(torch, "compile", failing_compile(InductorError("cc: not found\nmore")))
    for extra in (["--dry-run"], []):
        r = CliRunner().invoke(cli, [*args, *extra, "--out", str(tmp_path / "o")])
        assert r.exit_code == 1, r.output
        assert r.output.strip().splitlines()[-1] == ("Error: --compile: torch.compile failed on this machine (cc: not "
                                                     "found); run without --compile")  # (above: progress bar)
    monkeypatch.setattr(torch, "compile", failing_compile(ValueError("a bug")))
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "p")])
    assert isinstance(r.exception, ValueError)


def test_train_compile_flag_compiles_both_networks_and_saves_plain_keys(tmp_path, monkeypatch):
    """The CLI wiring of --compile: the trained and the CAM network go through torch.compile,
    the steps use the compiled callable, and the saved weights keep the plain module's keys."""
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    from clip_smot.common import device

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for name in ("cat", "dog"):
            (tmp_path / "d" / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(img).save(tmp_path / "d" / split / name / f"{i}.png")
    tiny = ["--data", str(tmp_path / "d"), "--arch", "resnet_tiny", "--batch-size", "8", "--input-size", "16",
            "--device", "cpu", "--workers", "0", "--epochs", "1"]
    r = CliRunner().invoke(cli, ["train", *tiny, "--out", str(tmp_path / "base")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    compiled = []

    def fake_compile(fn, mode=None, dynamic=None):
        calls = []

        def wrapped(*a, **k):
            calls.append(1)
            return fn(*a, **k)

        compiled.append((getattr(fn, "__name__", type(fn).__name__), mode, calls))
        return wrapped

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(device, "missing_cpp_compiler", lambda: None)  # (nothing is compiled: any machine)
    r = CliRunner().invoke(cli, ["train", *tiny, "--stage", "smot", "--cam-model",
                                 str(tmp_path / "base" / "model.safetensors"), "--compile",
                                 "--out", str(tmp_path / "smot")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    names = [c[0] for c in compiled]
    assert names == ["ResNet", "forward_features"] and all(c[1] is None for c in compiled)
    assert all(len(c[2]) == 2 for c in compiled)  # 16 images, batch 8: both used in both steps
    plain = load_file(str(tmp_path / "base" / "model.safetensors"))
    saved = load_file(str(tmp_path / "smot" / "model.safetensors"))
    assert list(saved) == list(plain) and not any("_orig_mod" in k for k in saved)
