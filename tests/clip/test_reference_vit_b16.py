"""The defaults, ``--model ViT-B-16 --pretrained openai``, against OpenAI's reference CLIP.

The weights come from a hub cache under a temporary ``HF_HOME`` (random values where open_clip
looks for the ``openai`` tag's file), so nothing is downloaded. ``clip-smot fit`` and ``score``
run as a user runs them, in their own processes, with the default model and tag: the prompt's
text features and the scores equal OpenAI's model (tests/reference_clip.py) and open_clip's
``ViT-B-16-quickgelu`` on those weights, and no QuickGELU warning is printed.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import reference_clip as ref_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from clip_smot.clip.prompt_file import load_prompt

ROOT = Path(__file__).resolve().parents[2]
WNIDS = ["n01440764", "n01443537"]  # tench, goldfish
TOLERANCE = 1e-4  # max abs error of normalised features and of scores


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """``(HF_HOME, weights file, state)``: random ViT-B-16 weights (fp16, as OpenAI's) in the hub
    cache's layout, where open_clip's ``openai`` tag of ViT-B-16 points."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    repo = get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].strip("/")
    home = tmp_path_factory.mktemp("hf_home")
    cached = home / "hub" / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text(revision)
    (cached / "snapshots" / revision).mkdir(parents=True)
    weights = cached / "snapshots" / revision / "open_clip_model.safetensors"
    state = ref_clip.random_openai_weights(open_clip.get_model_config("ViT-B-16"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    return home, weights, state


def _run(args: list[str], home: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "CLIP_SMOT_CACHE": str(cache),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    env.pop("HF_HUB_CACHE", None)
    res = subprocess.run([sys.executable, "-m", "clip_smot", *args], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr
    assert "QuickGELU" not in res.stderr + res.stdout  # open_clip's mismatch warning, among others
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory, hub):
    """A one-step ``clip-smot fit`` with the default --model and --pretrained, then ``score``."""
    home, _, _ = hub
    root = tmp_path_factory.mktemp("vit_b16_runs")
    rng = np.random.default_rng(0)
    for w in WNIDS:
        (root / "data" / "train" / w).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / "data" / "train" / w / "0.png")
    images = []
    for i, (w, h) in enumerate([(60, 44), (40, 64), (50, 50)]):
        images.append(root / "images" / f"{i}.png")
        images[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images[-1])
    _run(["fit", "--data", str(root / "data"), "--shots", "1", "--loss", "ce", "--epochs", "1", "--batch-size", "2",
          "--precision", "fp32", "--device", "cpu", "--workers", "0", "--out", str(root / "run")], home, root / "cache")
    prompt = root / "run" / "prompt.safetensors"
    _run(["score", "--prompt", str(prompt), "--scores", "mcm,msp", "--device", "cpu", "--workers", "0",
          "--out", str(root / "scores.csv"), *map(str, images)], home, root / "cache")
    with open(root / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(p) for p in images]
    scores = {k: torch.tensor([float(r[k]) for r in rows]) for k in ("mcm", "msp")}
    return load_prompt(prompt), images, scores


@torch.no_grad()
def _open_clip_prompt_features(model, ctx: torch.Tensor, classnames: list[str]) -> torch.Tensor:
    """open_clip's own modules over all 77 positions: ``"X X ... X {name}."`` with the context in
    place of the X embeddings, its transformer with its causal mask, pooled at EOT."""
    import open_clip

    tokens = open_clip.get_tokenizer("ViT-B-16-quickgelu")([" ".join(["X"] * ctx.shape[0]) + f" {c}." for c in classnames])
    x = model.token_embedding(tokens)  # [K, 77, w]
    x = torch.cat([x[:, :1], ctx.expand(len(classnames), -1, -1), x[:, 1 + ctx.shape[0]:]], dim=1)
    x = model.ln_final(model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask))
    return F.normalize(x[torch.arange(len(classnames)), tokens.argmax(dim=-1)] @ model.text_projection, dim=-1)


@pytest.mark.slow
def test_fit_and_score_with_the_defaults_equal_openais_clip(hub, runs):
    import open_clip

    _, weights, state = hub
    prompt, images, scores = runs
    assert (prompt.model, prompt.pretrained, prompt.activation) == ("ViT-B-16", "openai", "quick_gelu")
    reference = ref_clip.build_reference(state)
    text = ref_clip.coop_text_features(reference, prompt.ctx, prompt.classnames)  # [K, e]
    assert (prompt.text_features - text).abs().max() < TOLERANCE
    image = ref_clip.image_features(reference, images, 224)  # [N, e]
    mcm, msp = ref_clip.mcm_and_msp(image, text, reference.logit_scale.exp().item())
    assert (scores["mcm"] - mcm).abs().max() < TOLERANCE and (scores["msp"] - msp).abs().max() < TOLERANCE
    assert msp.max() - msp.min() > 10 * TOLERANCE  # scores that tell the images apart

    del reference
    quick = open_clip.create_model("ViT-B-16-quickgelu", pretrained=str(weights)).eval()
    assert (prompt.text_features - _open_clip_prompt_features(quick, prompt.ctx, prompt.classnames)).abs().max() \
        < TOLERANCE
    pixels = torch.stack([ref_clip.openai_preprocess(224)(Image.open(p)) for p in images])
    with torch.no_grad():
        assert (F.normalize(quick.encode_image(pixels), dim=-1) - image).abs().max() < TOLERANCE
        gelu = open_clip.create_model("ViT-B-16", pretrained=str(weights)).eval()  # what open_clip 3.x builds
        assert (F.normalize(gelu.encode_image(pixels), dim=-1) - image).abs().max() > 5 * TOLERANCE


def test_the_openai_tag_builds_quick_gelu_from_the_hub_cache(hub, monkeypatch):
    import huggingface_hub.constants

    from clip_smot.clip.model import load_clip

    home, _, _ = hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))  # (read at import: HF_HOME)
    monkeypatch.setattr("clip_smot.clip.model._hub_reachable", lambda *a: pytest.fail("looked for the hub"))
    clip = load_clip()  # ViT-B-16, openai
    assert clip.activation == "quick_gelu" and clip.config["quick_gelu"] is True
    blocks = [*clip.model.visual.transformer.resblocks, *clip.model.transformer.resblocks]
    assert {type(b.mlp.gelu).__name__ for b in blocks} == {"QuickGELU"}
