"""GPU checks of `clip-smot fit` (deselected by default; run with `pytest -m gpu tests/clip/test_fit_gpu.py`)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import _write_imagenet

from clip_smot.cli import cli
from clip_smot.clip.augment import crop_flip, random_resized_crop_flip
from clip_smot.clip.model import load_clip
from clip_smot.clip.prompt import PromptLearner
from clip_smot.clip.prompt_file import load_prompt
from clip_smot.clip.step import make_fit_step

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_fit_on_cuda_in_bf16_then_resume(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    from torchvision.models.resnet import BasicBlock, ResNet

    data = _write_imagenet(tmp_path / "data")
    cam = tmp_path / "resnet10.pth"
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1000).state_dict(), cam)
    args = ["fit", "--data", str(data), "--shots", "4", "--model", tiny_clip_config, "--pretrained",
            tiny_clip_checkpoint, "--cam-model", str(cam), "--n-ctx", "4", "--batch-size", "4", "--epochs", "3",
            "--precision", "bf16", "--device", "cuda", "--out", str(tmp_path / "run")]
    res = CliRunner().invoke(cli, args)  # with fit's CUDA defaults: flex, compiled, CUDA graph, overlapped
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [config[k] for k in ("text_attention", "compile", "cuda_graph", "overlap_encoders")] == [
        "flex", True, True, True]
    pf = load_prompt(tmp_path / "run" / "prompt.safetensors")
    assert torch.isfinite(pf.text_features).all() and pf.ctx.shape == (4, 32)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(r["loss"] == r["loss"] for r in log)
    res = CliRunner().invoke(cli, args + ["--resume"])  # finished: re-exports the same context
    assert res.exit_code == 0, res.output
    assert torch.equal(load_prompt(tmp_path / "run" / "prompt.safetensors").ctx, pf.ctx)


@pytest.mark.parametrize("fast", [False, True])
def test_a_training_step_never_waits_for_the_device(tiny_clip_config, tiny_clip_checkpoint, fast):
    """Default options, and flex attention with compiled layers (FlexAttention, inductor kernels) and
    the image encoder on a second stream."""
    dev = torch.device("cuda")
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint, dev)
    learner = PromptLearner(clip, ["tench", "goldfish", "great white shark"], n_ctx=4, precision="bf16",
                            attention="flex" if fast else "causal")
    if fast:
        learner.encoder.compile_layers()
    opt = torch.optim.SGD(learner.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
    aug = torch.Generator(device=dev).manual_seed(0)
    step = make_fit_step(clip, learner, opt, precision="bf16", generator=torch.Generator().manual_seed(0),
                         noise_generator=aug, compile_image=fast, overlap=fast)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, device=dev)
    cams = torch.randint(0, 256, (16, 32, 32), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 3, (16,), device=dev)
    perm = torch.randperm(16, device=dev)

    def one(s):
        idx = perm[s * 4:(s + 1) * 4]
        x, cam = random_resized_crop_flip(images[idx], cams[idx], 32, generator=aug)
        return step(x, cam, labels[idx])

    one(0)  # warm-up: lazy initialisation may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [one(s) for s in range(1, 4)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all()


def test_augmentation_is_the_same_on_cuda_and_cpu():
    x = torch.rand(8, 4, 48, 40, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[t, l, 20.0, 24.0] for t, l in zip(range(8), range(0, 16, 2))])
    flips = torch.arange(8) % 2 == 0
    cpu = crop_flip(x, boxes, flips, 16)
    gpu = crop_flip(x.cuda(), boxes.cuda(), flips.cuda(), 16).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=0)


def test_cuda_graph_fit_follows_the_eager_fit(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    """Same seed, same crops: the replayed graph, and fit's CUDA defaults (the graph with flex
    attention, compiled layers and overlapped encoders), train like the plain eager step."""
    data = _write_imagenet(tmp_path / "data")
    base = ["fit", "--data", str(data), "--shots", "4", "--model", tiny_clip_config, "--pretrained",
            tiny_clip_checkpoint, "--loss", "ce", "--n-ctx", "4", "--batch-size", "4", "--epochs", "2",
            "--warmup-epochs", "0", "--lr", "0.01", "--precision", "fp32", "--device", "cuda"]
    plain = ["--text-attention", "causal", "--no-compile", "--no-overlap-encoders"]
    for name, extra in (("eager", [*plain, "--no-cuda-graph"]), ("graph", [*plain, "--cuda-graph"]),
                        ("fast", [])):  # fast: fit's CUDA defaults (flex, compiled, CUDA graph, overlapped)
        res = CliRunner().invoke(cli, base + extra + ["--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    eager = load_prompt(tmp_path / "eager" / "prompt.safetensors")
    for name in ("graph", "fast"):
        torch.testing.assert_close(load_prompt(tmp_path / name / "prompt.safetensors").ctx, eager.ctx, atol=1e-4,
                                   rtol=1e-3, msg=name)


def test_a_cuda_graph_fit_with_noise_is_fixed_by_its_seed(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    """Under a CUDA graph (fit's CUDA default) --perturb noise comes from torch's CUDA generator,
    which the fit seeds with --seed: two runs from other generator states end with the same context
    (up to the order of atomic adds in a backward kernel)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    data = _write_imagenet(tmp_path / "data")
    cam = tmp_path / "resnet10.pth"
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1000).state_dict(), cam)
    base = ["fit", "--data", str(data), "--shots", "4", "--model", tiny_clip_config, "--pretrained",
            tiny_clip_checkpoint, "--cam-model", str(cam), "--n-ctx", "4", "--batch-size", "4", "--epochs", "1",
            "--warmup-epochs", "0", "--lr", "0.05", "--perturb", "noise", "--sigma", "0.5", "--device", "cuda",
            "--text-attention", "causal", "--no-compile", "--no-overlap-encoders", "--cuda-graph"]
    ctx = {}
    for name in ("a", "b"):
        torch.cuda.manual_seed(1000 + ord(name))  # whatever state the process left: the fit seeds its own
        res = CliRunner().invoke(cli, base + ["--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        ctx[name] = load_prompt(tmp_path / name / "prompt.safetensors").ctx
    torch.testing.assert_close(ctx["a"], ctx["b"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("perturbation", ["zero", "noise"])
def test_an_overlapped_smot_step_is_the_plain_step(tiny_clip_config, tiny_clip_checkpoint, perturbation):
    """overlap=True encodes the originals and their masked copies on a second stream: the same
    SMOT loss and context update as overlap=False (fp32, same thresholds, same noise). The CE
    baseline of test_cuda_graph_fit_follows_the_eager_fit draws no thresholds and makes no copies,
    so it cannot tell whether the second stream is given the CAMs and thresholds in their places."""
    dev = torch.device("cuda")
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint, dev)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=g).to(dev)
    cams = (torch.rand(4, 32, 32, generator=g) * 255).to(dev)
    labels = torch.tensor([0, 2, 1, 2], device=dev)
    out = []
    for overlap in (False, True):
        learner = PromptLearner(clip, ["tench", "goldfish", "great white shark"], n_ctx=4,
                                generator=torch.Generator().manual_seed(2))
        opt = torch.optim.SGD(learner.parameters(), lr=0.5)
        step = make_fit_step(clip, learner, opt, lam=0.3, T=50.0, perturbation=perturbation, sigma=0.3,
                             precision="fp32", generator=torch.Generator().manual_seed(3),
                             noise_generator=torch.Generator(device=dev).manual_seed(4), overlap=overlap)
        losses = [step(images, cams, labels) for _ in range(2)]
        out.append((torch.stack(losses), learner.ctx.detach().clone()))
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1][1], out[0][1], atol=1e-5, rtol=1e-4)
