"""The CLIP track against OpenAI's reference CLIP (tests/reference_clip.py), on the same random weights.

A tiny architecture (OpenAI's head widths: 64) in OpenAI's own file formats: image features,
the text features of a prompt exported by ``fit``, and ``score``'s MCM, MSP and GL-MCM (the
GL-MCM authors' local features, on OpenAI's modules) equal the reference's; the activation follows the weights; a prompt refuses weights built with the other
activation. The real ``ViT-B-16`` + ``openai`` defaults are in test_reference_vit_b16.py.
"""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import reference_clip as ref_clip
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import save_as_if_from_cuda, torchscript_as_if_from_cuda
from PIL import Image
from safetensors.torch import safe_open, save_file

from clip_smot.cli import cli
from clip_smot.clip import features as imf
from clip_smot.clip import model as cm
from clip_smot.clip.model import load_clip
from clip_smot.clip.prompt_file import load_prompt
from clip_smot.common.errors import UserError
from clip_smot.common.files import atomic_save_safetensors

# OpenAI's build_model reads heads as width // 64: the tiny towers have 2 (image) and 1 (text) heads.
OPENAI_TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
WNIDS = ["n01440764", "n01443537"]  # tench, goldfish


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def openai_tiny(tmp_path_factory):
    """The tiny weights as OpenAI's files and as plain state dicts, with OpenAI's model built from them.

    ``config``: a model config without ``quick_gelu`` (as open_clip's ``ViT-B-16``);
    ``config_quickgelu``: with it (as ``ViT-B-16-quickgelu``); ``archive``: a TorchScript
    archive (OpenAI's CDN format, with its non-weight entries); ``extras``: that archive's state
    dict saved with torch.save (``*_from_gpu``: both as a GPU machine writes them);
    ``plain``: the weights alone (.safetensors).
    """
    root = tmp_path_factory.mktemp("openai_tiny")
    state = ref_clip.random_openai_weights(OPENAI_TINY)
    reference = ref_clip.build_reference(state)
    (root / "openai-tiny.json").write_text(json.dumps(OPENAI_TINY))
    (root / "openai-tiny-qg.json").write_text(json.dumps({**OPENAI_TINY, "quick_gelu": True}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "plain.safetensors"))
    scripted = ref_clip.build_reference(state)
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        scripted.__dict__.pop(name, None)  # (a plain int attribute of OpenAI's model)
        scripted.register_buffer(name, torch.tensor(value))  # as OpenAI's archives hold them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings
        traced = torch.jit.trace_module(scripted, {"encode_image": torch.zeros(1, 3, 32, 32)})
        torch.jit.save(traced, str(root / "archive.pt"))
    torchscript_as_if_from_cuda(root / "archive.pt", root / "archive_from_gpu.pt")
    torch.save(traced.state_dict(), root / "extras.pt")
    save_as_if_from_cuda(traced.state_dict(), root / "extras_from_gpu.pt")
    return {
        "config": str(root / "openai-tiny.json"), "config_quickgelu": str(root / "openai-tiny-qg.json"),
        "archive": str(root / "archive.pt"), "extras": str(root / "extras.pt"),
        "archive_from_gpu": str(root / "archive_from_gpu.pt"), "extras_from_gpu": str(root / "extras_from_gpu.pt"),
        "plain": str(root / "plain.safetensors"), "reference": reference,
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Five small PNG photos of noise, of several sizes (the resize and crop matter)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(40, 36), (36, 52), (32, 32), (64, 40), (45, 45)]):
        paths.append(root / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("weights", ["archive", "extras", "archive_from_gpu", "extras_from_gpu"])
def test_openai_files_build_quick_gelu_and_equal_openais_image_features(openai_tiny, images, weights):
    clip = load_clip(openai_tiny["config"], openai_tiny[weights])
    assert clip.activation == "quick_gelu" and clip.config["quick_gelu"] is True
    assert type(clip.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert type(clip.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    ours = imf.encode_files(clip, images, workers=0, use_cache=False).global_
    theirs = ref_clip.image_features(openai_tiny["reference"], images, 32)
    assert _max_error(ours, theirs) < 1e-5


def test_a_plain_state_dict_is_built_as_its_config_says(openai_tiny, images):
    theirs = ref_clip.image_features(openai_tiny["reference"], images, 32)
    gelu = load_clip(openai_tiny["config"], openai_tiny["plain"])
    assert gelu.activation == "gelu"
    assert _max_error(imf.encode_files(gelu, images, workers=0, use_cache=False).global_, theirs) > 1e-3
    quick = load_clip(openai_tiny["config_quickgelu"], openai_tiny["plain"])  # the -quickgelu way to say it
    assert quick.activation == "quick_gelu"
    assert _max_error(imf.encode_files(quick, images, workers=0, use_cache=False).global_, theirs) < 1e-5


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, openai_tiny):
    """``clip-smot fit`` (plain CoOp: no CAM network needed) on OpenAI's TorchScript archive."""
    root = tmp_path_factory.mktemp("fit_openai")
    rng = np.random.default_rng(1)
    for w in WNIDS:
        (root / "data" / "train" / w).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / "data" / "train" / w / f"{i}.png")
    res = CliRunner().invoke(cli, [
        "fit", "--data", str(root / "data"), "--shots", "2", "--model", openai_tiny["config"],
        "--pretrained", openai_tiny["archive"], "--loss", "ce", "--n-ctx", "4", "--batch-size", "4",
        "--epochs", "1", "--precision", "fp32", "--device", "cpu", "--workers", "0", "--out", str(root / "run")])
    assert res.exit_code == 0, res.output
    return root / "run" / "prompt.safetensors"


def test_resuming_a_run_trained_with_the_other_activation_is_one_line(openai_tiny, fitted, tmp_path):
    """A run of an older clip-smot: its record has no activation, and its config built GELU."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fitted.parent, run)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    record = saved["config"]["run"]["clip"]
    config = {k: v for k, v in json.loads(record["model_config"]).items() if k != "quick_gelu"}
    saved["config"]["run"]["clip"] = {k: v for k, v in record.items() if k != "activation"} | {
        "model_config": json.dumps(config, sort_keys=True)}
    torch.save(saved, run / "checkpoint.pt")
    res = CliRunner().invoke(cli, [
        "fit", "--data", saved["config"]["data"], "--shots", "2", "--model", openai_tiny["config"],
        "--pretrained", openai_tiny["archive"], "--loss", "ce", "--n-ctx", "4", "--batch-size", "4",
        "--epochs", "1", "--precision", "fp32", "--device", "cpu", "--workers", "0", "--out", str(run), "--resume"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "trained with gelu" in res.output and "built with quick_gelu" in res.output


def _score(prompt, images, out, *extra) -> tuple[torch.Tensor, torch.Tensor]:
    res = CliRunner().invoke(cli, ["score", "--prompt", str(prompt), "--scores", "mcm,msp", "--workers", "0",
                                   "--device", "cpu", "--out", str(out), *extra, *map(str, images)])
    assert res.exit_code == 0, res.output
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(p) for p in images]
    return torch.tensor([float(r["mcm"]) for r in rows]), torch.tensor([float(r["msp"]) for r in rows])


def test_a_fitted_prompt_and_its_scores_equal_openais(openai_tiny, fitted, images, tmp_path):
    prompt = load_prompt(fitted)
    assert prompt.activation == "quick_gelu" and prompt.model_config["quick_gelu"] is True
    reference = openai_tiny["reference"]
    text = ref_clip.coop_text_features(reference, prompt.ctx, prompt.classnames)  # [K, e]
    assert _max_error(prompt.text_features, text) < 1e-5
    mcm, msp = ref_clip.mcm_and_msp(ref_clip.image_features(reference, images, 32), text,
                                    reference.logit_scale.exp().item())
    assert msp.min() < 0.99 and mcm.max() - mcm.min() > 1e-4  # scores that could differ
    for weights in ("archive", "plain"):  # plain: built with the metadata's QuickGELU
        ours_mcm, ours_msp = _score(fitted, images, tmp_path / "s.csv", "--pretrained", openai_tiny[weights])
        assert _max_error(ours_mcm, mcm) < 1e-5 and _max_error(ours_msp, msp) < 1e-5
    # energy (Liu et al., 2020, T = 1) and MaxLogit (Hendrycks et al., 2022) of the same logits,
    # logit_scale.exp() * cosine (docs/method.md), by hand on OpenAI's model
    logits = reference.logit_scale.exp().item() * ref_clip.image_features(reference, images, 32) @ text.T  # [N, K]
    res = CliRunner().invoke(cli, ["score", "--prompt", str(fitted), "--scores", "energy,maxlogit", "--workers", "0",
                                   "--device", "cpu", "--pretrained", openai_tiny["archive"], "--out",
                                   str(tmp_path / "e.csv"), *map(str, images)])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "e.csv") as f:
        rows = list(csv.DictReader(f))
    assert (logits.logsumexp(dim=-1) - logits.amax(dim=-1)).min() > 1e-3  # (energy is not the max here)
    for name, want in (("energy", logits.logsumexp(dim=-1)), ("maxlogit", logits.amax(dim=-1))):
        assert _max_error(torch.tensor([float(r[name]) for r in rows]), want) < 1e-4, name


def test_gl_mcm_equals_the_gl_mcm_authors_recipe_on_openais_model(openai_tiny, fitted, images, tmp_path):
    """GL-MCM (score --scores gl-mcm) against the authors' local features and score, computed on
    OpenAI's reference model (tests/reference_clip.py): open_clip's modules and our value path
    on one side, OpenAI's modules and the authors' q/k/v split on the other."""
    prompt = load_prompt(fitted)
    reference = openai_tiny["reference"]
    glob, local = ref_clip.gl_mcm_features(reference, images, 32)
    assert local.shape == (len(images), 16, 32)  # (32 / 8)^2 patches
    assert _max_error(glob, ref_clip.image_features(reference, images, 32)) < 1e-5
    expected = ref_clip.gl_mcm(glob, local, prompt.text_features)
    mcm, _ = ref_clip.mcm_and_msp(glob, prompt.text_features, 1.0)
    assert (expected - mcm).min() > 0.5 and (expected - mcm).max() - (expected - mcm).min() > 1e-4  # local parts differ
    res = CliRunner().invoke(cli, ["score", "--prompt", str(fitted), "--scores", "gl-mcm", "--workers", "0",
                                   "--device", "cpu", "--pretrained", openai_tiny["archive"], "--out",
                                   str(tmp_path / "s.csv"), *map(str, images)])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "s.csv") as f:
        ours = torch.tensor([float(r["gl-mcm"]) for r in csv.DictReader(f)])
    assert _max_error(ours, expected) < 1e-5


def test_zero_shot_mcm_equals_mcms_recipe_on_openais_model(openai_tiny, images):
    """eval --zero-shot's prompts are MCM's, as its code writes them ("a photo of a {c}", no
    period: deeplearning-wisc/MCM's get_ood_scores_clip), encoded by OpenAI's model through
    OpenAI's tokenizer; MCM is their max softmax at T = 1. The period changes the features."""
    from clip_smot.clip.prompt import ZERO_SHOT_TEMPLATE
    from clip_smot.clip.scorer import PromptScorer, zero_shot_template

    assert zero_shot_template() == ZERO_SHOT_TEMPLATE == "a photo of a {c}"
    names = ["tench", "goldfish", "great white shark"]
    reference = openai_tiny["reference"]
    with torch.no_grad():
        text = F.normalize(reference.encode_text(ref_clip.tokenize([f"a photo of a {c}" for c in names])), dim=-1)
        period = F.normalize(reference.encode_text(ref_clip.tokenize([f"a photo of a {c}." for c in names])), dim=-1)
    scorer = PromptScorer.zero_shot(names, openai_tiny["config"], openai_tiny["archive"], "cpu", zero_shot_template(),
                                    "fp32")
    assert _max_error(scorer.text_features, text) < 1e-5 and _max_error(period, text) > 1e-3
    mcm, _ = ref_clip.mcm_and_msp(ref_clip.image_features(reference, images, 32), text, 1.0)
    ours = scorer.score_files(images, ["mcm"], workers=0, use_cache=False).scores["mcm"]
    assert _max_error(ours, mcm) < 1e-5


def test_export_builds_the_runs_activation_from_a_plain_state_dict(openai_tiny, fitted, tmp_path):
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(fitted.parent / "checkpoint.pt"), "--pretrained",
                                   openai_tiny["plain"], "--device", "cpu", "--out", str(tmp_path / "p.safetensors")])
    assert res.exit_code == 0, res.output
    prompt = load_prompt(tmp_path / "p.safetensors")
    assert prompt.activation == "quick_gelu"
    text = ref_clip.coop_text_features(openai_tiny["reference"], prompt.ctx, prompt.classnames)
    assert _max_error(prompt.text_features, text) < 1e-5


def test_a_prompt_refuses_weights_built_with_the_other_activation(openai_tiny, fitted, images, tmp_path):
    res = CliRunner().invoke(cli, ["score", "--prompt", str(fitted), "--model", openai_tiny["config"],
                                   "--pretrained", openai_tiny["plain"], "--out", str(tmp_path / "s.csv"),
                                   str(images[0])])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "made with QuickGELU" in res.output and "built with GELU" in res.output
    # (a model-config JSON's prompt: the config it was made with, not an "openai-tiny-quickgelu" no one ships)
    assert "give the --model config the prompt was made with (openai-tiny's, which sets quick_gelu)" in res.output
    assert not (tmp_path / "s.csv").exists()


def test_a_prompt_without_an_activation_record_is_built_as_its_config_says(openai_tiny, fitted, images, tmp_path):
    """A prompt of an older clip-smot: no ``activation`` key; its model_config built GELU."""
    with safe_open(str(fitted), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = {k: v for k, v in json.loads(meta["model_config"]).items() if k != "quick_gelu"}
    meta = {k: v for k, v in meta.items() if k not in ("activation", "sha256")} | {"model_config": json.dumps(config)}
    legacy = tmp_path / "legacy.safetensors"
    atomic_save_safetensors(tensors, legacy, meta)
    assert load_prompt(legacy).activation == "gelu"
    # with OpenAI's weights (QuickGELU): its context was learned through another network
    res = CliRunner().invoke(cli, ["score", "--prompt", str(legacy), "--pretrained", openai_tiny["archive"],
                                   "--out", str(tmp_path / "s.csv"), str(images[0])])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "made with GELU" in res.output and "QuickGELU" in res.output and "fit it again" in res.output
    # with a plain state dict it is built as its config says, GELU, as before
    _score(legacy, images, tmp_path / "g.csv", "--pretrained", openai_tiny["plain"])


def test_the_feature_cache_key_holds_the_activation_and_the_versions(openai_tiny, images, monkeypatch):
    calls = []
    real = cm.encode_images
    monkeypatch.setattr(cm, "encode_images", lambda *a: calls.append(1) or real(*a))
    quick = load_clip(openai_tiny["config_quickgelu"], openai_tiny["plain"])
    gelu = load_clip(openai_tiny["config"], openai_tiny["plain"])  # the same file
    first = imf.encode_files(quick, images, workers=0)
    assert len(calls) == 1
    torch.testing.assert_close(imf.encode_files(quick, images, workers=0).global_, first.global_, rtol=0, atol=0)
    assert len(calls) == 1  # served from the cache
    assert _max_error(imf.encode_files(gelu, images, workers=0).global_, first.global_) > 1e-3
    assert len(calls) == 2
    versions = cm.library_versions()
    monkeypatch.setattr(cm, "library_versions", lambda: versions | {"open_clip": "0.0.1"})
    imf.encode_files(quick, images, workers=0)
    assert len(calls) == 3


def test_every_tag_that_sets_quick_gelu_decides_the_activation(monkeypatch, openai_tiny):
    """Every (model, tag) of open_clip's pretrained list whose config sets ``quick_gelu`` is built
    with it, whatever the model config says (the weights are not downloaded: the tiny model stands
    in for open_clip's, which is what open_clip itself would build for the config asked for)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    built, stand_in = [], open_clip.model.CLIP(**OPENAI_TINY)

    def create(name, cfg, pretrained, openai_file, device):
        built.append(cfg)
        return stand_in

    monkeypatch.setattr(cm, "_tag_is_cached", lambda name, tag: True)
    monkeypatch.setattr(cm, "_create", create)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name: None)  # (some need the transformers package)
    checked = 0
    for name, tag in open_clip.list_pretrained():
        tag_cfg = get_pretrained_cfg(name, tag)
        if "quick_gelu" not in tag_cfg or open_clip.get_model_config(name) is None:
            continue
        clip = load_clip(name, tag)
        assert clip.activation == ("quick_gelu" if tag_cfg["quick_gelu"] else "gelu"), (name, tag)
        assert built[-1].get("quick_gelu") == bool(tag_cfg["quick_gelu"])
        checked += 1
    assert checked >= 20  # the openai tags of RN50 ... ViT-L-14-336, metaclip, dfn, laion400m ViT-B-32
    assert load_clip("ViT-B-16", "laion2b_s34b_b88k").activation == "gelu"  # a tag that does not set it


def test_torchscript_archive_of_another_architecture_is_one_line(openai_tiny, tiny_clip_config):
    with pytest.raises(UserError, match=r"--pretrained .*archive.pt: could not load the weights") as info:
        load_clip(tiny_clip_config, openai_tiny["archive"])
    assert "\n" not in str(info.value)
