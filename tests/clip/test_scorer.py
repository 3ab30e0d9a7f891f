"""clip-smot score and the scoring API: formulas by hand, CLIP paths against open_clip, bad input."""

import copy
import csv
import dataclasses
import json
import math
import os
import re
import shutil

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import CLASSES, _cache_in_tmp, make_folders, make_prompt, read_csv, tiny  # noqa: F401 (fixtures)
from helpers import guarded_safe_open, write_sparse_safetensors
from PIL import Image

from clip_smot.cli import cli
from clip_smot.clip import model as cm
from clip_smot.clip.model import encode_image_tokens, image_preprocess, load_clip, preprocess_settings
from clip_smot.clip.scorer import PromptScorer, fit_id_train, scores_from_features
from clip_smot.common.errors import UserError
from clip_smot.scores import gl_mcm, local_mcm

# --- formulas, by hand ---------------------------------------------------------------------------


def test_scores_from_features_by_hand():
    # two classes; image at 60 degrees from class 0, 90 from class 1 -> cosines 0.5, 0
    image = torch.tensor([[0.5, math.sqrt(3) / 2]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # cos = [0.5, 0.866]
    out = scores_from_features(image, text, 10.0, ["mcm", "msp", "energy", "maxlogit"])
    c0, c1 = 0.5, math.sqrt(3) / 2
    assert out["mcm"].item() == pytest.approx(math.exp(c1) / (math.exp(c0) + math.exp(c1)), abs=1e-6)
    assert out["msp"].item() == pytest.approx(math.exp(10 * c1) / (math.exp(10 * c0) + math.exp(10 * c1)), abs=1e-6)
    assert out["energy"].item() == pytest.approx(math.log(math.exp(10 * c0) + math.exp(10 * c1)), abs=1e-5)
    assert out["maxlogit"].item() == pytest.approx(10 * c1, abs=1e-5)
    assert out["pred_index"].item() == 1


def test_scores_from_features_reads_a_string_of_score_names_as_scores_does():
    """scores="mcm" was read as its letters (KeyError 'm'): a str is split at commas, as --scores reads it; an
    unknown name is named. Same image and text as above: cos = [0.5, 0.866]."""
    image, text = torch.tensor([[0.5, math.sqrt(3) / 2]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c0, c1 = 0.5, math.sqrt(3) / 2
    out = scores_from_features(image, text, 10.0, "mcm,maxlogit")
    assert list(out) == ["mcm", "maxlogit", "pred_index"]
    assert out["mcm"].item() == pytest.approx(math.exp(c1) / (math.exp(c0) + math.exp(c1)), abs=1e-6)
    assert out["maxlogit"].item() == pytest.approx(10 * c1, abs=1e-5)
    assert list(scores_from_features(image, text, 10.0, "energy")) == ["energy", "pred_index"]
    with pytest.raises(UserError, match=r"^scores: unknown score 'mcn' \(known: mcm, "):
        scores_from_features(image, text, 10.0, "mcn")


def test_features_of_another_width_than_the_text_features_are_refused_naming_both_shapes(tiny):
    """Image (or patch, or ID-train) features of width 16 against text features of width 32 stopped in the
    product ("mat1 and mat2 shapes cannot be multiplied (2x16 and 32x3)"); PromptScorer took text features of
    width 16 for the tiny model's 32-wide image features and stopped at the first image. Each is a ValueError
    naming the shapes."""
    text = F.normalize(torch.randn(3, 32), dim=-1)
    narrow = F.normalize(torch.randn(2, 16), dim=-1)
    with pytest.raises(ValueError, match=r"^image_features \[2, 16\] and text_features \[3, 32\] must be of the "
                                         r"same width e \(their last axis\)$"):
        scores_from_features(narrow, text, 10.0, ["mcm"])
    with pytest.raises(ValueError, match=r"^local_features \[2, 4, 16\] and text_features \[3, 32\] must be "):
        scores_from_features(F.normalize(torch.randn(2, 32), dim=-1), text, 10.0, ["gl-mcm"],
                             F.normalize(torch.randn(2, 4, 16), dim=-1))
    with pytest.raises(ValueError, match=r"^train_features \[60, 16\] and text_features \[3, 32\] must be "):
        fit_id_train(torch.randn(60, 16), text, 10.0, ["react", "knn", "vim"])
    with pytest.raises(ValueError, match=r"^text_features \[3, 16\] must be of clip-smot-tiny's width 32, as its "
                                         r"image features \[B, 32\]$"):
        PromptScorer(tiny, F.normalize(torch.randn(3, 16), dim=-1), CLASSES, precision="fp32")
    scorer = PromptScorer(tiny, text, CLASSES, precision="fp32")
    with pytest.raises(ValueError, match=r"^train_features \[60, 16\] and text_features \[3, 32\] must be "):
        scorer.fit_id_train(torch.randn(60, 16), ["knn"])


def test_gl_mcm_by_hand():
    cosine = torch.tensor([[0.2, 0.6]])  # [B=1, K=2]
    local = torch.tensor([[[0.1, 0.3], [0.9, -0.1]]])  # [B=1, N=2 patches, K=2]
    glob = math.exp(0.6) / (math.exp(0.2) + math.exp(0.6))
    patch0 = math.exp(0.3) / (math.exp(0.1) + math.exp(0.3))
    patch1 = math.exp(0.9) / (math.exp(0.9) + math.exp(-0.1))
    assert local_mcm(local).item() == pytest.approx(max(patch0, patch1), abs=1e-6)
    assert gl_mcm(cosine, local).item() == pytest.approx(glob + max(patch0, patch1), abs=1e-6)
    assert gl_mcm(cosine, local, local_weight=0.5).item() == pytest.approx(glob + 0.5 * patch1, abs=1e-6)
    # through the feature path: features are normalised, text = identity -> cosines are the
    # normalised coordinates: global (0.2, 0.6)/|.|, patches (0.1, 0.3)/|.| and (0.9, -0.1)/|.|
    def unit(a, b):
        r = math.hypot(a, b)
        return a / r, b / r

    def soft_max(a, b):
        return max(math.exp(a), math.exp(b)) / (math.exp(a) + math.exp(b))

    expected = soft_max(*unit(0.2, 0.6)) + max(soft_max(*unit(0.1, 0.3)), soft_max(*unit(0.9, -0.1)))
    out = scores_from_features(F.normalize(cosine, dim=-1), torch.eye(2), 1.0, ["gl-mcm"],
                               local_features=F.normalize(local, dim=-1))
    assert out["gl-mcm"].item() == pytest.approx(expected, abs=1e-6)


# --- CLIP paths against open_clip ------------------------------------------------------------------


def test_encode_image_tokens_match_open_clip(tiny):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    _check_image_tokens_match_open_clip(tiny, x)


def test_encode_image_tokens_match_open_clip_with_random_biases_and_norms(tiny):
    """open_clip initialises the attention biases to 0 and the LayerNorms to weight 1, bias 0: the
    tiny CLIP cannot tell a bias left out, or one LayerNorm's parameters for another's. Random
    ones here, in every block and in ln_pre and ln_post."""
    clip = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in clip.model.visual.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.MultiheadAttention, torch.nn.Linear)):
                for name, p in m.named_parameters(recurse=False):
                    if name == "weight" and isinstance(m, torch.nn.LayerNorm):
                        p.copy_(0.5 + torch.rand(p.shape, generator=g))
                    elif "bias" in name:
                        p.copy_(0.5 * torch.randn(p.shape, generator=g))
    assert clip.model.visual.transformer.resblocks[-1].attn.in_proj_bias.abs().min() > 0
    _check_image_tokens_match_open_clip(clip, torch.randn(3, 3, 32, 32, generator=g))


def _check_image_tokens_match_open_clip(tiny, x):
    g, l = encode_image_tokens(tiny, x)
    torch.testing.assert_close(g, tiny.model.encode_image(x))
    # GL-MCM's local features: open_clip's own last block with each token attending to itself only
    visual = tiny.model.visual
    tokens = visual._embeds(x)  # [B, 1 + N, w]
    for blk in visual.transformer.resblocks[:-1]:
        tokens = blk(tokens)
    n = tokens.shape[1]
    self_only = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
    value_path = visual.transformer.resblocks[-1](tokens, attn_mask=self_only)  # [B, 1 + N, w]
    assert l.shape == (3, (32 // 8) ** 2, 32)
    torch.testing.assert_close(l, visual.ln_post(value_path[:, 1:]) @ visual.proj)
    # not the final patch tokens (open_clip's output_tokens), which attend to every token
    visual.output_tokens = True
    try:
        _, final_tokens = visual(x)
    finally:
        visual.output_tokens = False
    assert (l - final_tokens @ visual.proj).abs().max() > 1e-3


def test_image_preprocess_matches_open_clip(tiny, tiny_clip_config, tiny_clip_checkpoint):
    _, _, val = open_clip.create_model_and_transforms("clip-smot-tiny", pretrained=tiny_clip_checkpoint)
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3)).astype(np.uint8))
    torch.testing.assert_close(image_preprocess(tiny)(im), val(im))


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")  # PIL's, on open_clip's own conversion
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "1", "CMYK", "EXIF"])
def test_score_preprocessing_of_a_file_matches_open_clip(tmp_path, tiny, tiny_clip_checkpoint, mode):
    """The CLIP path reads a file as open_clip's own transform does: resized in the file's mode,
    converted to RGB after (RGBA, palette and 1-bit images differ if converted first); a JPEG's
    EXIF orientation is not applied (neither PIL's open nor open_clip applies it)."""
    from reference_clip import openai_preprocess

    from clip_smot.clip.decoding import ImageFiles as _ImageFiles

    _, _, val = open_clip.create_model_and_transforms("clip-smot-tiny", pretrained=tiny_clip_checkpoint)
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (50, 70, 4)).astype(np.uint8)
    rgba[:, :30, 3] = 0  # a transparent part, whose hidden colour open_clip's resize drops
    im = Image.fromarray(rgba, "RGBA")
    im = im if mode in ("RGBA", "EXIF") else im.convert("RGB").convert(mode) if mode != "P" else im.convert("P")
    path = tmp_path / f"x.{'jpg' if mode in ('CMYK', 'EXIF') else 'png'}"
    if mode == "EXIF":
        exif = Image.Exif()
        exif[0x0112] = 6  # (turn 90 degrees to display: the 70 x 50 image would be 50 x 70)
        im.convert("RGB").save(path, exif=exif)
    else:
        im.save(path)
    x, error = _ImageFiles([str(path)], image_preprocess(tiny), preprocess_settings(tiny))[0]
    assert error == ""
    torch.testing.assert_close(x, val(Image.open(path)))
    # and as OpenAI's clip._transform (tests/reference_clip.py: torchvision written out, not open_clip's
    # transform, which image_preprocess and val above both are): bicubic, centre crop, RGB, OpenAI's mean/std
    torch.testing.assert_close(x, openai_preprocess(32)(Image.open(path)), rtol=0, atol=1e-6)
    # PIL images given to PromptScorer.score are read the same way
    scorer = PromptScorer(tiny, F.normalize(torch.randn(3, 32), dim=-1), CLASSES)
    from_pil = scorer.score([Image.open(path)], ["mcm"])["mcm"]
    torch.testing.assert_close(from_pil, scorer.score(x[None], ["mcm"])["mcm"])


def test_score_reads_a_16_bit_grey_image_as_its_8_bit_scaling(tiny):
    """A 16-bit grey PIL image is scored as the 8-bit grey image round(value / 257), as files are
    read: PIL's own conversion to RGB clips it (a mid-grey 32768 would be white)."""
    a = np.random.default_rng(2).integers(0, 65536, (40, 48)).astype(np.uint16)
    im16 = Image.fromarray(a)
    assert im16.mode == "I;16"
    im8 = Image.fromarray(np.round(a / 257).astype(np.uint8))  # (257 is odd: no ties)
    scorer = PromptScorer(tiny, F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(3)), dim=-1),
                          CLASSES, precision="fp32")
    got, want = scorer.score([im16], ["mcm", "energy"]), scorer.score([im8], ["mcm", "energy"])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_gl_mcm_needs_a_vit(tmp_path):
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path / "clip-smot-tiny-rn.json"
    path.write_text(json.dumps(cfg))
    rn = load_clip(str(path), None)
    assert not cm.is_vit(rn)
    scorer = PromptScorer(rn, F.normalize(torch.randn(3, 32), dim=-1), CLASSES)
    with pytest.raises(UserError, match="gl-mcm: needs a ViT"):
        scorer.score(torch.zeros(1, 3, 32, 32), ["mcm", "gl-mcm"])
    assert set(scorer.score(torch.zeros(2, 3, 32, 32), ["mcm"])) == {"mcm", "pred_index"}


def test_gl_mcm_needs_the_class_token_pooled_after_ln_post(tiny):
    """GL-MCM's local features are ln_post of each patch token: a ViT that pools before ln_post
    (final_ln_after_pool, or average pooling) never puts its tokens through it, and one that pools
    with an attentional pooler gives no class token: each is refused."""
    for change in ({"final_ln_after_pool": True}, {"pool_type": "avg"}, {"attn_pool": torch.nn.Identity()}):
        clip = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model))
        for name, value in change.items():
            setattr(clip.model.visual, name, value)
        assert not cm.is_vit(clip)
        with pytest.raises(UserError, match="gl-mcm: needs a ViT image encoder with class-token pooling"):
            cm.check_local_features(clip)
    assert cm.is_vit(tiny)


def test_gl_mcm_with_a_custom_last_attention_fails_before_encoding(tiny_clip_config, monkeypatch):
    """A ViT whose last block's attention is not open_clip's: check_scores refuses gl-mcm at once,
    with the message encode_image_tokens would give only after the images were decoded."""
    clip = load_clip(tiny_clip_config, None)
    last = clip.model.visual.transformer.resblocks[-1]
    monkeypatch.setattr(last, "attn", torch.nn.Identity())
    scorer = PromptScorer(clip, F.normalize(torch.randn(3, 32), dim=-1), CLASSES)
    with pytest.raises(UserError, match="last block of .* has a custom attention") as checked:
        scorer.check_scores(["mcm", "gl-mcm"])
    with pytest.raises(UserError) as encoded:
        encode_image_tokens(clip, torch.zeros(1, 3, 32, 32))
    assert str(checked.value) == str(encoded.value)
    scorer.check_scores(["mcm"])


def test_gl_mcm_reads_the_last_blocks_attention_alone(tmp_path):
    """Of a ViT of three blocks, only the last one's attention is read for the local features:
    custom attentions in the first two pass the check, one in the last does not."""
    from conftest import TINY_CLIP_CONFIG

    path = tmp_path / "clip-smot-tiny-3.json"
    path.write_text(json.dumps({**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "layers": 3}}))
    clip = load_clip(str(path), None)
    blocks = clip.model.visual.transformer.resblocks
    blocks[0].attn, blocks[1].attn = torch.nn.Identity(), torch.nn.Identity()
    cm.check_local_features(clip)
    blocks[2].attn = torch.nn.Identity()
    with pytest.raises(UserError, match="last block of clip-smot-tiny-3's image tower has a custom attention"):
        cm.check_local_features(clip)


# --- the score command -----------------------------------------------------------------------------


def test_a_prompt_of_an_unfinished_run_is_said_to_be_one(tmp_path, tiny, tiny_clip_checkpoint):
    """export of an unfinished run's checkpoint records the epoch its context reached: score and
    eval say so, where the prompt looked like any finished one."""
    from clip_smot.clip.prompt_file import save_prompt

    id_dir, _ = make_folders(tmp_path)
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(len(CLASSES), 32, generator=g), dim=-1)
    for epoch, said in ((2, True), (5, False)):
        prompt = tmp_path / f"p{epoch}.safetensors"
        save_prompt(prompt, torch.randn(4, 32, generator=g), text, tiny.identity(), 4, "end", False, list(CLASSES),
                    {"epochs": 5, "run": {"epoch": epoch}})
        res = CliRunner().invoke(cli, ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint,
                                       "--workers", "0", "--out", str(tmp_path / f"s{epoch}.csv"), str(id_dir)])
        assert res.exit_code == 0, res.output
        note = f"note: {prompt} holds the context of epoch 2 of its run's 5 (exported from an unfinished run)"
        assert (note in res.stderr) == said, res.stderr
        res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint,
                                       "--id", str(id_dir), "--ood", f"x={tmp_path / 'ood'}", "--workers", "0",
                                       "--out", str(tmp_path / f"e{epoch}")])
        assert res.exit_code == 0 and (note in res.stderr) == said, res.output


def test_a_prompts_notes_are_said_by_the_writing_process_alone(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch,
                                                               capsys):
    """Under torchrun every process reads the prompt and scores, but only the one that writes the
    outputs says that the prompt is of an unfinished run, or of one class: one note, not one a
    process."""
    import clip_smot.clip.score as score_module
    from clip_smot.clip.prompt_file import save_prompt

    id_dir, _ = make_folders(tmp_path, n_per_class=1, n_ood=0)
    text = torch.nn.functional.normalize(torch.randn(1, 32), dim=-1)
    prompt = tmp_path / "p.safetensors"
    save_prompt(prompt, torch.randn(4, 32), text, tiny.identity(), 4, "end", False, ["red"],
                {"epochs": 5, "run": {"epoch": 2}})
    notes = (f"note: {prompt} holds the context of epoch 2 of its run's 5 (exported from an unfinished run)\n"
             "note: the prompt has one class (red): mcm is the same for every image (a softmax over one class is 1); "
             "energy and maxlogit still tell images apart\n")
    for writes, said in ((False, ""), (True, notes)):
        monkeypatch.setattr(score_module, "writes_outputs", lambda: writes)
        score_module.run_score(score_module.ScoreConfig(prompt=str(prompt), paths=(str(id_dir),), workers=0,
                                                        out=str(tmp_path / "s.csv"), pretrained=tiny_clip_checkpoint))
        assert capsys.readouterr().err == said and (tmp_path / "s.csv").exists() == writes


def test_score_csv_uses_stored_text_features_without_a_text_pass(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    text = make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, ood_dir = make_folders(tmp_path)

    def no_text_pass(*a, **k):
        raise AssertionError("encode_text must not run when the prompt's weights are in use")

    monkeypatch.setattr(open_clip.model.CLIP, "encode_text", no_text_pass)
    out = tmp_path / "s.csv"
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--scores", "MCM,msp,energy,maxlogit,gl-mcm",
                                   "--workers", "0", "--out", str(out), str(id_dir), str(ood_dir / "x" / "y" / "0.jpg")])
    assert res.exit_code == 0, res.output
    rows = read_csv(out)
    assert list(rows[0]) == ["path", "pred", "pred_index", "mcm", "msp", "energy", "maxlogit", "gl-mcm"]
    assert len(rows) == 3 * 4 + 1 and rows[-1]["path"].endswith("0.jpg")
    # recompute from open_clip's own encode_image and preprocess
    _, _, val = open_clip.create_model_and_transforms("clip-smot-tiny", pretrained=tiny_clip_checkpoint)
    x = torch.stack([val(Image.open(r["path"]).convert("RGB")) for r in rows])
    with torch.no_grad():
        cos = F.normalize(tiny.model.encode_image(x), dim=-1) @ text.T
    logits = tiny.model.logit_scale.exp() * cos
    torch.testing.assert_close(torch.tensor([float(r["mcm"]) for r in rows]), cos.softmax(-1).amax(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor([float(r["msp"]) for r in rows]), logits.softmax(-1).amax(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor([float(r["energy"]) for r in rows]), logits.logsumexp(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor([float(r["maxlogit"]) for r in rows]), logits.amax(-1), atol=1e-4, rtol=0)
    assert [int(r["pred_index"]) for r in rows] == cos.argmax(-1).tolist()
    assert [r["pred"] for r in rows] == [CLASSES[i] for i in cos.argmax(-1).tolist()]


def test_default_model_comes_from_the_prompt(tmp_path, tiny, tiny_clip_checkpoint):
    # the prompt names the checkpoint file; next to the prompt it is found without --pretrained
    import shutil

    shutil.copy(tiny_clip_checkpoint, tmp_path / "tiny.safetensors")
    text = make_prompt(tmp_path / "p.safetensors", tiny)
    scorer = PromptScorer.from_file(tmp_path / "p.safetensors", device="cpu")
    assert scorer.clip.name == "clip-smot-tiny" and scorer.source == "stored text features"
    torch.testing.assert_close(scorer.text_features, text)
    (tmp_path / "tiny.safetensors").unlink()
    with pytest.raises(UserError, match="pass --pretrained path/to/tiny.safetensors"):
        PromptScorer.from_file(tmp_path / "p.safetensors", device="cpu")


def test_a_checkpoint_found_by_its_name_must_be_the_prompts_own(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """Without --pretrained, the prompt's checkpoint is looked up by its file name next to the
    prompt and in the current folder; another file of that name (hub downloads are all called
    open_clip_pytorch_model.bin) was taken silently, and the context re-encoded with its weights."""
    import shutil

    from safetensors.torch import save_file

    make_prompt(tmp_path / "p.safetensors", tiny)
    torch.manual_seed(7)
    other = open_clip.create_model("clip-smot-tiny").state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "tiny.safetensors"))
    with pytest.raises(UserError, match=r"^--pretrained: .*p.safetensors was made with the checkpoint file "
                                        r"tiny.safetensors \(sha256 [0-9a-f]{12}...\); .*tiny.safetensors is another "
                                        r"file of that name; pass --pretrained path/to/tiny.safetensors"):
        PromptScorer.from_file(tmp_path / "p.safetensors", device="cpu")
    (tmp_path / "cwd").mkdir()  # the prompt's own file, in the current folder: that one is taken
    shutil.copy(tiny_clip_checkpoint, tmp_path / "cwd" / "tiny.safetensors")
    monkeypatch.chdir(tmp_path / "cwd")
    assert PromptScorer.from_file(tmp_path / "p.safetensors", device="cpu").source == "stored text features"


def test_another_model_for_the_weights_found_by_name_blames_the_model_given(tmp_path, tiny, tiny_clip_checkpoint):
    """`score --model OTHER` without --pretrained: the prompt's own weights, found by name, do not
    load into OTHER. The line named "--model OTHER --pretrained PATH", a --pretrained the user
    never typed; it names the --model given, the prompt's model, and what to do instead."""
    import json
    import shutil

    from conftest import TINY_CLIP_CONFIG

    shutil.copy(tiny_clip_checkpoint, tmp_path / "tiny.safetensors")  # (the prompt's own, found by its name)
    make_prompt(tmp_path / "p.safetensors", tiny)
    wider = tmp_path / "clip-smot-wider.json"
    wider.write_text(json.dumps({**TINY_CLIP_CONFIG, "text_cfg": {**TINY_CLIP_CONFIG["text_cfg"], "width": 48}}))
    with pytest.raises(UserError) as e:
        PromptScorer.from_file(tmp_path / "p.safetensors", model=str(wider), device="cpu")
    line = str(e.value)
    assert line.startswith(f"--model {wider}: {tmp_path / 'p.safetensors'} was made for clip-smot-tiny, whose weights "
                           f"(its {tmp_path / 'tiny.safetensors'}, found by name) do not load into {wider} ("), line
    assert line.endswith(f"); leave --model out to use the prompt's model, or give --pretrained weights of {wider}")
    with pytest.raises(UserError, match=r"^--model clip-smot-wider --pretrained .*tiny\.safetensors: could not load the "
                                        r"weights \(") as given:
        PromptScorer.from_file(tmp_path / "p.safetensors", model=str(wider), device="cpu",
                               pretrained=str(tmp_path / "tiny.safetensors"))  # (--pretrained given: named as given)
    # (the same reason, in one pair of parentheses)
    why = str(given.value).partition(": could not load the weights (")[2]
    assert why.endswith(")") and line.endswith(f" do not load into {wider} ({why}; leave --model out to use the "
                                               f"prompt's model, or give --pretrained weights of {wider}"), line
    with pytest.raises(UserError) as e:  # (a --model failing otherwise than in its weights is told as before)
        PromptScorer.from_file(tmp_path / "p.safetensors", model="no-such-model", device="cpu")
    assert str(e.value).startswith("--model no-such-model") and "was made for" not in str(e.value), str(e.value)


def test_other_weights_reencode_the_context(tmp_path, tiny, tiny_clip_config):
    from clip_smot.clip.prompt import text_features_from_prompt
    from clip_smot.clip.prompt_file import load_prompt

    stored = make_prompt(tmp_path / "p.safetensors", tiny)
    # same architecture, other (random) weights: the stored features no longer apply
    scorer = PromptScorer.from_file(tmp_path / "p.safetensors", model=tiny_clip_config, pretrained="none", device="cpu")
    assert scorer.source.startswith("text features re-encoded")
    expected = text_features_from_prompt(scorer.clip, load_prompt(tmp_path / "p.safetensors"))
    torch.testing.assert_close(scorer.text_features, expected)
    assert not torch.allclose(scorer.text_features, stored, atol=1e-3)


def test_api_score_matches_score_paths(tmp_path, tiny):
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path)
    scorer = PromptScorer(tiny, make_prompt(tmp_path / "q.safetensors", tiny), CLASSES)
    res = scorer.score_paths([id_dir], ["mcm", "energy", "gl-mcm"], workers=0, use_cache=False)
    ims = [Image.open(p) for p in res.paths]
    direct = scorer.score(ims, ["mcm", "energy", "gl-mcm"])
    torch.testing.assert_close(direct["mcm"], res.scores["mcm"], atol=1e-5, rtol=0)
    torch.testing.assert_close(direct["energy"], res.scores["energy"], atol=1e-4, rtol=0)
    torch.testing.assert_close(direct["gl-mcm"], res.scores["gl-mcm"], atol=1e-3, rtol=0)  # local stored as fp16
    assert torch.equal(direct["pred_index"], res.scores["pred_index"])


def test_score_paths_decode_choices_on_the_cpu(tmp_path, tiny):
    """``decode``: auto on a CPU model is PIL (the same scores, bit for bit); gpu is refused in one
    line; a name that is no choice too."""
    id_dir, ood_dir = make_folders(tmp_path)
    scorer = PromptScorer(tiny, make_prompt(tmp_path / "q.safetensors", tiny), CLASSES)
    pil = scorer.score_paths([id_dir, ood_dir], ["mcm"], workers=0, use_cache=False, decode="cpu")
    auto = scorer.score_paths([id_dir, ood_dir], ["mcm"], workers=0, use_cache=False, decode="auto")
    assert pil.paths == auto.paths and torch.equal(pil.scores["mcm"], auto.scores["mcm"])
    with pytest.raises(UserError, match=r"^--decode gpu: decodes on a CUDA device, and the model is on cpu"):
        scorer.score_paths([id_dir], ["mcm"], workers=0, use_cache=False, decode="gpu")
    with pytest.raises(UserError, match=r"^--decode nvjpeg: not one of auto, cpu, gpu$"):
        scorer.score_paths([id_dir], ["mcm"], workers=0, use_cache=False, decode="nvjpeg")


@pytest.mark.parametrize("case", ["other-model", "not-safetensors"])
def test_bad_prompt_gives_one_clear_line(tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint, case):
    path = tmp_path / "p.safetensors"
    if case == "other-model":
        cfg = json.loads(open(tiny_clip_config).read())
        cfg["vision_cfg"] = dict(cfg["vision_cfg"], layers=3)
        ident = dict(tiny.identity(), model="other-tiny", model_config=json.dumps(cfg, sort_keys=True))
        make_prompt(path, tiny, identity=ident)
        expected = "made for model other-tiny"
    else:
        path.write_bytes(b"definitely not a safetensors file")
        expected = "not a safetensors file"
    id_dir, _ = make_folders(tmp_path)
    res = CliRunner().invoke(cli, ["score", "--prompt", str(path), "--model", tiny_clip_config, "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--out", str(tmp_path / "s.csv"), str(id_dir)])
    assert res.exit_code != 0
    assert expected in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.csv").exists()


def test_a_folder_of_paths_that_cannot_be_listed_is_one_line(tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint,
                                                             monkeypatch):
    """A sub-folder of PATHS that cannot be listed (simulated: tests run as root) stops the score
    with one line naming it, before anything is written; its images were left out without a word."""
    import os

    import clip_smot.common.images as images

    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path)
    locked = sorted(p for p in id_dir.iterdir() if p.is_dir())[0]
    real = os.scandir
    monkeypatch.setattr(images.os, "scandir", lambda path: (_ for _ in ()).throw(PermissionError(
        13, "Permission denied", path)) if os.fspath(path) == os.fspath(locked) else real(path))
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--model", tiny_clip_config,
                                   "--pretrained", tiny_clip_checkpoint, "--workers", "0", "--out",
                                   str(tmp_path / "s.csv"), str(id_dir)])
    assert res.exit_code == 1 and res.output == f"Error: {locked}: a folder that cannot be listed (Permission denied)\n"
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "s.csv.partial").exists()


def test_a_prompt_of_one_class_says_which_scores_are_the_same_for_every_image(tmp_path, tiny, tiny_clip_checkpoint):
    """A softmax over one class is 1: with a one-class prompt mcm and msp are 1 for every image
    (AUROC 50, FPR95 100) and nothing said so; score and eval now say it in a note, naming the
    scores that still tell images apart. Two classes: no note."""
    id_dir, ood_dir = make_folders(tmp_path)
    for classes, note in ((["cat"], "note: the prompt has one class (cat): mcm, msp are the same for every image (a "
                                    "softmax over one class is 1); energy and maxlogit still tell images apart"),
                          (["cat", "dog"], None)):
        make_prompt(tmp_path / "p.safetensors", tiny, classnames=classes)
        out = tmp_path / f"s{len(classes)}.csv"
        res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                       tiny_clip_checkpoint, "--workers", "0", "--scores", "mcm,msp,energy",
                                       "--out", str(out), str(ood_dir)])
        assert res.exit_code == 0, res.output
        assert [line for line in res.output.splitlines() if line.startswith("note:")] == ([note] if note else [])
        rows = read_csv(out)
        assert ({float(r["mcm"]) for r in rows} == {1.0}) == (note is not None)  # (what the note says)
        assert len({r["energy"] for r in rows}) > 1
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--scores", "gradnorm", "--id", str(id_dir),
                                   "--ood", f"x={ood_dir}", "--out", str(tmp_path / "e")])
    assert "note: the prompt has one class" not in res.output
    make_prompt(tmp_path / "p.safetensors", tiny, classnames=["cat"])
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--scores", "gradnorm,energy", "--id",
                                   str(ood_dir), "--ood", f"x={id_dir}", "--out", str(tmp_path / "e1")])
    assert res.exit_code == 0, res.output
    assert ("note: the prompt has one class (cat): gradnorm is the same for every image (a softmax over one class is "
            "1); energy and maxlogit still tell images apart") in res.output.splitlines(), res.output


def test_unreadable_image_is_named_or_skipped(tmp_path, tiny, tiny_clip_checkpoint):
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path)
    bad = id_dir / "val" / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint,
            "--workers", "2", "--batch-size", "5", "--out", str(tmp_path / "s.csv"), str(id_dir)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and "broken.png" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "s.csv").exists()
    res = CliRunner().invoke(cli, args + ["--skip-unreadable"])
    assert res.exit_code == 0, res.output
    assert "Skipped 1 unreadable image(s)" in res.output and "broken.png" in res.output
    rows = read_csv(tmp_path / "s.csv")
    assert len(rows) == 12 and not any(r["path"].endswith("broken.png") for r in rows)
    # the cache remembers the skipped file: without the flag it still fails, naming it
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and "broken.png" in res.output


def test_cache_second_run_does_not_encode(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    make_prompt(tmp_path / "p.safetensors", tiny)
    make_prompt(tmp_path / "p2.safetensors", tiny, seed=1)
    id_dir, _ = make_folders(tmp_path)
    calls = {"global": 0, "tokens": 0}
    real_g, real_t = cm.encode_images, cm.encode_image_tokens

    def spy_g(*a, **k):
        calls["global"] += 1
        return real_g(*a, **k)

    def spy_t(*a, **k):
        calls["tokens"] += 1
        return real_t(*a, **k)

    monkeypatch.setattr(cm, "encode_images", spy_g)
    monkeypatch.setattr(cm, "encode_image_tokens", spy_t)

    def run(prompt, out, scores="mcm,energy", *extra):
        res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / prompt), "--pretrained", tiny_clip_checkpoint,
                                       "--scores", scores, "--workers", "0", "--out", str(tmp_path / out), *extra,
                                       str(id_dir)])
        assert res.exit_code == 0, res.output
        return (tmp_path / out).read_text()

    first = run("p.safetensors", "a.csv")
    assert calls == {"global": 1, "tokens": 0}
    assert run("p.safetensors", "b.csv") == first and calls == {"global": 1, "tokens": 0}
    run("p2.safetensors", "c.csv", "msp")  # another prompt, another score: same image features
    assert calls == {"global": 1, "tokens": 0}
    run("p.safetensors", "d.csv", "gl-mcm")  # local features were not stored: encoded once now
    run("p.safetensors", "e.csv", "gl-mcm,mcm")
    assert calls == {"global": 1, "tokens": 1}
    assert run("p.safetensors", "f.csv", "mcm,energy", "--no-cache") == first and calls["global"] == 2
    (id_dir / "val" / "red" / "0.png").touch()  # a changed file makes a new key
    import os

    os.utime(id_dir / "val" / "red" / "0.png", ns=(1, 1))
    run("p.safetensors", "g.csv")
    assert calls["global"] == 3


def test_an_image_rewritten_with_its_size_and_modification_time_is_encoded_again(tmp_path, tiny):
    """cp -p, rsync -a, tar and unzip keep a file's modification time: an image replaced by
    another of the same size (any BMP or PPM of the same dimensions) kept its old features."""
    import os

    from clip_smot.clip.features import encode_files

    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (32, 32, 3)).astype(np.uint8) for _ in range(2))
    path = tmp_path / "x.bmp"
    Image.fromarray(a).save(path)
    Image.fromarray(b).save(tmp_path / "y.bmp")
    before = encode_files(tiny, [path], workers=0).global_
    st = os.stat(path)
    os.replace(tmp_path / "y.bmp", path)  # as rsync and cp -p do: the other image, then its old times
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
    after = encode_files(tiny, [path], workers=0).global_
    fresh = encode_files(tiny, [path], workers=0, use_cache=False).global_
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)
    with open(path, "r+b") as f:  # rewritten in place (same file), then its old times again
        f.write(_bmp_bytes(a))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    torch.testing.assert_close(encode_files(tiny, [path], workers=0).global_, before, rtol=0, atol=0)


def _bmp_bytes(array):
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="BMP")
    return buf.getvalue()


def test_a_cache_that_cannot_be_written_is_a_note_not_a_failure(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch,
                                                                capsys):
    """A full disk or quota where the cache lives failed the whole run after all the encoding."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--out", str(tmp_path / "s.csv"), str(id_dir)])
    assert res.exit_code == 0, res.output
    assert len(read_csv(tmp_path / "s.csv")) == 12
    assert res.stderr.startswith("note: the feature cache was not written (cannot write ") and "--no-cache" in res.stderr
    # score writes one entry a chunk: the note was printed for each (about 150 for ImageNet's val); now once
    from clip_smot.clip.score import ScoreConfig, run_score

    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "cache2"))
    (tmp_path / "cache2").write_text("a file where the cache folder should be")
    run_score(ScoreConfig(prompt=str(tmp_path / "p.safetensors"), paths=(str(id_dir),), out=str(tmp_path / "c.csv"),
                          pretrained=tiny_clip_checkpoint, workers=0, device="cpu"), chunk=4)
    notes = [line for line in capsys.readouterr().err.splitlines() if "feature cache was not written" in line]
    assert len(notes) == 1 and notes[0].endswith("--no-cache skips it (said once)"), notes
    chunked, whole = read_csv(tmp_path / "c.csv"), read_csv(tmp_path / "s.csv")  # (other batches: last digits)
    assert [r["path"] for r in chunked] == [r["path"] for r in whole]
    assert [float(r["mcm"]) for r in chunked] == pytest.approx([float(r["mcm"]) for r in whole], abs=1e-6)


def _with_header(entry: bytes, edit) -> bytes:
    """A safetensors file's bytes with its JSON header changed by ``edit`` (the data kept)."""
    n = int.from_bytes(entry[:8], "little")
    header = json.loads(entry[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + entry[8 + n:]


def _meta(**kw):
    return lambda h: h["__metadata__"].update(kw)


def _rows_doubled(h):
    rows, e = h["global"]["shape"]
    h["global"]["shape"] = [2 * rows, e // 2]


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2], lambda b: b"", lambda b: bytes(len(b)),  # cut short, empty, zeroed
    lambda b: _with_header(b, _meta(paths='{"a": 1}')), lambda b: _with_header(b, _meta(skipped="[1, 2]")),
    lambda b: _with_header(b, _rows_doubled),
], ids=["truncated", "empty", "zeroed", "paths-not-a-list", "skipped-not-pairs", "wrong-shape"])
def test_a_damaged_cache_entry_is_encoded_again(tmp_path, tiny, damage):
    """A damaged entry is a miss, never a traceback nor features of the wrong shape (entries whose
    metadata or shapes were not the writer's went through to a TypeError or a [2N, e/2] matrix)."""
    from clip_smot.clip.features import cache_dir, encode_files

    id_dir, _ = make_folders(tmp_path, n_per_class=2)
    paths = sorted((id_dir / "val").rglob("*.png"))
    fresh = encode_files(tiny, paths, local=True, workers=0)
    (entry,) = cache_dir().glob("*.safetensors")
    entry.write_bytes(damage(entry.read_bytes()))
    again = encode_files(tiny, paths, local=True, workers=0)
    assert again.paths == fresh.paths and again.skipped == []
    torch.testing.assert_close(again.global_, fresh.global_, rtol=0, atol=0)
    torch.testing.assert_close(again.local, fresh.local, rtol=0, atol=0)
    reread = encode_files(tiny, paths, local=True, workers=0)  # the entry was written anew
    torch.testing.assert_close(reread.global_, fresh.global_, rtol=0, atol=0)


def test_score_files_caches_the_features_unless_told_not_to(tmp_path, tiny):
    """PromptScorer.score_files, as a library user calls it: one feature-cache entry by default,
    none with use_cache=False, and the same scores either way."""
    from clip_smot.clip.features import cache_dir

    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    paths = sorted((id_dir / "val").rglob("*.png"))
    scorer = PromptScorer(tiny, F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(1)), dim=-1),
                          CLASSES)
    uncached = scorer.score_files(paths, ["mcm"], workers=0, use_cache=False)
    assert not cache_dir().exists() or not list(cache_dir().glob("*.safetensors"))
    cached = scorer.score_files(paths, ["mcm"], workers=0)
    assert len(list(cache_dir().glob("*.safetensors"))) == 1
    assert cached.paths == uncached.paths
    torch.testing.assert_close(cached.scores["mcm"], uncached.scores["mcm"], rtol=0, atol=0)


@pytest.mark.parametrize("tensor,shape", [("global", [10_000_000, 32]), ("global", [3, 10_000_000]),
                                          ("local", [4, 10_000_000, 32]), ("local", [4, 17, 32])])
def test_a_cache_entry_declaring_other_shapes_is_encoded_again_before_loading(tmp_path, tiny, monkeypatch, capsys,
                                                                              tensor, shape):
    """A planted sparse entry declaring a huge tensor was loaded (3.3 GB; 5 GB: a MemoryError
    traceback) before its shape was found wrong. The header is checked first: nothing is loaded."""
    import clip_smot.clip.features as features

    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    paths = sorted((id_dir / "val").rglob("*.png"))[:4]
    fresh = features.encode_files(tiny, paths, local=True, workers=0)
    (entry,) = features.cache_dir().glob("*.safetensors")
    n = int.from_bytes(entry.read_bytes()[:8], "little")
    header = json.loads(entry.read_bytes()[8:8 + n])
    header[tensor]["shape"] = shape
    write_sparse_safetensors(entry, {"__metadata__": header["__metadata__"], "global": header["global"],
                                     "local": header["local"]})  # (data in the names' order, as safetensors writes it)
    monkeypatch.setattr(features, "safe_open", guarded_safe_open(features.safe_open, lambda s: math.prod(s) > 10**6))
    capsys.readouterr()
    again = features.encode_files(tiny, paths, local=True, workers=0)
    assert "cannot be used (its features have the wrong shape); its images are encoded again" in capsys.readouterr().err
    torch.testing.assert_close(again.global_, fresh.global_, rtol=0, atol=0)
    torch.testing.assert_close(again.local, fresh.local, rtol=0, atol=0)


def test_a_cache_write_removes_the_old_temporaries_of_killed_writes(tmp_path, tiny):
    """A process killed while writing an entry (the OOM killer, as an ImageNet-val entry with patch
    features is 10 GB) left its hidden temporary file in the cache for good. The next write
    removes those older than an hour; a younger one may be another process's write in progress."""
    import os
    import time

    from clip_smot.clip.features import cache_dir, encode_files

    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    cache_dir().mkdir(parents=True)
    old, young = cache_dir() / ".abc.safetensors.x1y2.tmp", cache_dir() / ".def.safetensors.z3w4.tmp"
    recent = cache_dir() / ".ghi.safetensors.v5u6.tmp"  # 50 minutes old: a long write may still be going on
    for f in (old, young, recent):
        f.write_bytes(b"half an entry")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    os.utime(recent, (time.time() - 3000, time.time() - 3000))
    encode_files(tiny, sorted((id_dir / "val").rglob("*.png")), workers=0)
    assert not old.exists() and young.exists() and recent.exists()
    assert len(list(cache_dir().glob("*.safetensors"))) == 1


def test_the_cache_folder_is_swept_at_most_every_ten_minutes(tmp_path, tiny, monkeypatch):
    """The sweep for killed writes' temporaries reads the whole cache folder: done at a process's
    first entry written there, then not again until 600 s (time.monotonic) have passed since: at
    599.9 s not, at 600 s again, then counted from there."""
    import types

    from clip_smot.clip import features
    from clip_smot.clip.features import encode_files

    id_dir, _ = make_folders(tmp_path, n_per_class=3)
    images = sorted((id_dir / "val").rglob("*.png"))
    assert len(images) >= 6
    clock, swept = [1000.0], []
    monkeypatch.setattr(features, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(features, "_SWEPT", {})
    monkeypatch.setattr(features, "remove_stale_temporaries", lambda folder, *a, **k: swept.append(clock[0]))
    for when, image in zip((1000.0, 1599.9, 1600.0, 1600.5, 2199.9, 2200.0), images):
        clock[0] = when
        encode_files(tiny, [image], workers=0)  # (an entry written for each)
    assert swept == [1000.0, 1600.0, 2200.0]


def test_a_list_naming_an_image_twice_scores_the_same_from_the_cache(tmp_path, tiny, tiny_clip_checkpoint,
                                                                     monkeypatch):
    """score of a list naming 0.png twice, in batches of 2: first beside 1.png, then alone. A
    matrix product's last digits depend on the batch's other images (seen: an energy of 3.9718356
    here and 3.9718361 there); the encoder below moves each feature by 1e-3 times its batch's size
    so that the two occurrences differ for certain. The same command again, served from the cache
    entry the first run wrote, must give that run's CSV byte for byte (docs/score.md: a second
    score does not encode the images again; a --resume re-scores a chunk cut short through the
    cache too, and promises the uninterrupted run's CSV). It gave both rows of 0.png the features
    of its last occurrence."""
    import clip_smot.clip.features as features

    real = features.normalized_features

    def batch_dependent(clip, images, *a, **k):
        g, l = real(clip, images, *a, **k)
        return F.normalize(g + 1e-3 * len(images), dim=-1), l

    monkeypatch.setattr(features, "normalized_features", batch_dependent)
    make_prompt(tmp_path / "p.safetensors", tiny)
    make_folders(tmp_path, n_per_class=2, n_ood=1)
    (tmp_path / "list.txt").write_text("id/val/red/0.png\nid/val/red/1.png\nid/val/red/0.png\n")
    _score_run(tmp_path, tiny_clip_checkpoint, [tmp_path / "list.txt"], tmp_path / "cold.csv")
    rows = read_csv(tmp_path / "cold.csv")
    assert rows[0]["path"] == rows[2]["path"] and rows[0]["energy"] != rows[2]["energy"]  # (two batches)
    assert list((tmp_path / "cache").rglob("*.safetensors"))  # (the entry the second run reads)
    _score_run(tmp_path, tiny_clip_checkpoint, [tmp_path / "list.txt"], tmp_path / "warm.csv")
    assert (tmp_path / "warm.csv").read_bytes() == (tmp_path / "cold.csv").read_bytes()


def test_score_features_in_chunks_equals_one_pass(tmp_path, tiny):
    from clip_smot.clip.features import ImageFeatures

    g = F.normalize(torch.randn(10, 32), dim=-1)
    l = F.normalize(torch.randn(10, 16, 32), dim=-1).half()
    scorer = PromptScorer(tiny, F.normalize(torch.randn(3, 32), dim=-1), CLASSES)
    feats = ImageFeatures([str(i) for i in range(10)], g, l, [])
    whole = scorer.score_features(feats, ["mcm", "gl-mcm", "energy"], chunk=100)
    chunked = scorer.score_features(feats, ["mcm", "gl-mcm", "energy"], chunk=3)
    for k in whole:
        torch.testing.assert_close(whole[k], chunked[k])


def test_precision_bf16_encodes_under_autocast_with_cache_entries_of_its_own(tmp_path, tiny, tiny_clip_checkpoint):
    """--precision bf16 (autocast; on the CPU here) gives scores near fp32's, not equal to them,
    and feature-cache entries of its own: a bf16 run never reads fp32 features, nor the reverse.
    auto on the CPU is fp32, bit for bit, and fp16 there is bf16 (docs/score.md, --precision); ODIN
    runs under it too."""
    from clip_smot.clip.features import cache_dir

    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=2, n_ood=3)

    def run(out, *more):
        res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                       tiny_clip_checkpoint, "--scores", "mcm,energy,gl-mcm", "--workers", "0",
                                       "--out", str(tmp_path / out), *more, str(id_dir), str(ood_dir)])
        assert res.exit_code == 0, res.output
        return (tmp_path / out).read_bytes()

    fp32 = run("auto.csv")
    assert len(list(cache_dir().glob("*.safetensors"))) == 2  # (one entry per PATH argument)
    bf16 = run("bf16.csv", "--precision", "bf16")
    assert len(list(cache_dir().glob("*.safetensors"))) == 4 and bf16 != fp32
    assert run("fp32.csv", "--precision", "fp32") == fp32 and run("bf16-again.csv", "--precision", "bf16") == bf16
    # fp16 on the CPU runs, and is cached, as bf16: its CSV byte for byte, from bf16's entries
    assert run("fp16.csv", "--precision", "fp16") == bf16 and len(list(cache_dir().glob("*.safetensors"))) == 4
    a, b = read_csv(tmp_path / "auto.csv"), read_csv(tmp_path / "bf16.csv")
    for name in ("mcm", "energy", "gl-mcm"):
        torch.testing.assert_close(torch.tensor([float(r[name]) for r in b]), torch.tensor([float(r[name]) for r in a]),
                                   atol=5e-2, rtol=5e-2)
    scorer = PromptScorer.from_file(tmp_path / "p.safetensors", pretrained=tiny_clip_checkpoint, precision="bf16")
    odin = scorer.score_paths([ood_dir], ["odin"], workers=0).scores["odin"]
    assert scorer.precision == "bf16" and odin.shape == (3,) and torch.isfinite(odin).all()


@pytest.mark.gpu
def test_score_on_cuda_matches_cpu(tmp_path, tiny, tiny_clip_checkpoint):
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, ood_dir = make_folders(tmp_path)

    def run(device, out, *more):
        res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                       tiny_clip_checkpoint, "--scores", "mcm,msp,energy,maxlogit,gl-mcm",
                                       "--device", device, "--workers", "2", "--no-cache", "--out", str(tmp_path / out),
                                       *more, str(id_dir), str(ood_dir)])
        assert res.exit_code == 0, res.output
        return read_csv(tmp_path / out)

    cpu, gpu = run("cpu", "cpu.csv"), run("cuda", "gpu.csv", "--precision", "fp32")
    half = run("cuda", "bf16.csv")  # (auto on CUDA: bf16 autocast)
    assert [r["path"] for r in cpu] == [r["path"] for r in gpu] == [r["path"] for r in half]
    for name in ("mcm", "msp", "energy", "maxlogit", "gl-mcm"):
        a = torch.tensor([float(r[name]) for r in cpu])
        b = torch.tensor([float(r[name]) for r in gpu])
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3)  # cuDNN may use TF32 convolutions
        torch.testing.assert_close(a, torch.tensor([float(r[name]) for r in half]), atol=3e-2, rtol=3e-2)


def _fitted_scores_and_odin(tmp_path, checkpoint, device: str) -> dict[str, torch.Tensor]:
    """ODIN, GradNorm and the fitted scores (ReAct, KNN and ViM, fitted on the 51 images of
    tmp_path/train) of tmp_path/id and tmp_path/ood, by the scorer on ``device`` in fp32, every
    image decoded by PIL (the arithmetic alone differs between devices)."""
    from clip_smot.clip.features import encode_files

    scorer = PromptScorer.from_file(tmp_path / "p.safetensors", pretrained=checkpoint, device=device, precision="fp32")
    train = sorted(str(p) for p in (tmp_path / "train").rglob("*.png"))
    scorer.fit_id_train(encode_files(scorer.clip, train, workers=0, use_cache=False).global_, ["react", "knn", "vim"])
    names = ["mcm", "odin", "gradnorm", "react", "knn", "vim"]
    return scorer.score_paths([tmp_path / "id", tmp_path / "ood"], names, workers=0, use_cache=False).scores


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_odin_gradnorm_and_the_fitted_scores_on_cuda_match_the_cpu(tmp_path, tiny, tiny_clip_checkpoint,
                                                                      monkeypatch):
    """eval's ODIN (a gradient through the image encoder), GradNorm and the fitted scores on CUDA,
    which no GPU test ran (test_score_on_cuda_matches_cpu scores mcm, msp, energy, maxlogit and
    gl-mcm): ViM fitted in float64 on the CPU from the device's features and scored in float64 on
    the device, KNN's bank and ReAct's clipping on the device. The CUDA scorer's scores are the CPU
    scorer's (fp32 both, TF32 convolutions off: the patch embedding is one)."""
    from helpers import _train_folder

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)

    make_prompt(tmp_path / "p.safetensors", tiny)
    make_folders(tmp_path)
    _train_folder(tmp_path / "train")  # 3 classes x 17: KNN's k = 50 needs 50
    cpu = _fitted_scores_and_odin(tmp_path, tiny_clip_checkpoint, "cpu")
    gpu = _fitted_scores_and_odin(tmp_path, tiny_clip_checkpoint, "cuda")
    assert torch.equal(gpu["pred_index"], cpu["pred_index"])
    for name in ("mcm", "odin", "gradnorm", "react", "knn", "vim"):
        assert gpu[name].device.type == "cpu" and torch.isfinite(gpu[name]).all(), name
        torch.testing.assert_close(gpu[name], cpu[name], atol=5e-3, rtol=5e-3, msg=name)


# --- hostile files: verified cache entries, non-finite numbers, names, unreadable files ----------


def _data_offset(entry: bytes) -> int:
    return 8 + int.from_bytes(entry[:8], "little")  # [8-byte header length][header][tensor bytes]


@pytest.mark.parametrize("damage", ["flipped-bytes", "nan"])
def test_a_cache_entry_whose_features_changed_is_encoded_again_with_a_note(tmp_path, tiny, tiny_clip_checkpoint,
                                                                           damage):
    """An entry with bytes flipped in its features (same size) gave `score` energy -7.8e+26 and
    another class, exit 0; NaN written into one gave nan scores. Both are now a checksum mismatch:
    a note, the images encoded again, the CSV equal to one written without the cache."""
    from clip_smot.clip.features import cache_dir

    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=2)
    args = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint,
            "--scores", "mcm,energy", "--workers", "0", str(id_dir), "--out"]
    assert CliRunner().invoke(cli, [*args, str(tmp_path / "fresh.csv"), "--no-cache"]).exit_code == 0
    assert CliRunner().invoke(cli, [*args, str(tmp_path / "first.csv")]).exit_code == 0
    (entry,) = cache_dir().glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    start = _data_offset(bytes(data))
    if damage == "nan":
        data[start:start + 4] = np.array([np.nan], dtype="<f4").tobytes()  # the first feature of the first image
    else:
        for i in range(start, start + 128):  # the first image's 32 float32 features
            data[i] ^= 0x5A
    entry.write_bytes(bytes(data))
    res = CliRunner().invoke(cli, [*args, str(tmp_path / "again.csv")])
    assert res.exit_code == 0, res.output
    assert res.stderr == f"note: the feature-cache entry {entry} cannot be used (its checksum does not match its " \
                         "contents); its images are encoded again\n"
    fresh = (tmp_path / "fresh.csv").read_text()
    assert (tmp_path / "first.csv").read_text() == fresh and (tmp_path / "again.csv").read_text() == fresh
    res = CliRunner().invoke(cli, [*args, str(tmp_path / "third.csv")])  # the entry was written anew
    assert res.exit_code == 0 and res.stderr == "" and (tmp_path / "third.csv").read_text() == fresh


def test_a_cache_entry_without_a_checksum_is_encoded_again(tmp_path, tiny, monkeypatch, capsys):
    """An entry written before entries carried a checksum (or with the checksum removed) is not trusted."""
    from clip_smot.clip.features import cache_dir, encode_files

    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    paths = sorted((id_dir / "val").rglob("*.png"))
    fresh = encode_files(tiny, paths, workers=0)
    (entry,) = cache_dir().glob("*.safetensors")
    entry.write_bytes(_with_header(entry.read_bytes(), lambda h: h["__metadata__"].pop("sha256")))
    calls, real = [], cm.encode_images
    monkeypatch.setattr(cm, "encode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = encode_files(tiny, paths, workers=0)
    assert calls == [1] and torch.equal(again.global_, fresh.global_)
    assert "(it has no checksum (written by an older clip-smot)); its images are encoded again" in capsys.readouterr().err


def test_a_cache_entry_of_a_scalar_is_encoded_again(tmp_path, tiny, capsys):
    """A well-formed safetensors entry whose features are one 0-d number: its checksum cannot even
    be computed (no byte view of a 0-d float); a note, not a traceback (its shape, in the header,
    is refused first)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from clip_smot.clip.features import cache_dir, encode_files

    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    paths = sorted((id_dir / "val").rglob("*.png"))
    fresh = encode_files(tiny, paths, workers=0)
    (entry,) = cache_dir().glob("*.safetensors")
    with safe_open(str(entry), framework="pt") as f:
        meta = f.metadata()
    save_file({"global": torch.tensor(1.0)}, str(entry), metadata=meta)
    again = encode_files(tiny, paths, workers=0)
    assert torch.equal(again.global_, fresh.global_)
    assert "cannot be used (its features have the wrong shape); its images are encoded again" in capsys.readouterr().err


def _three_images(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(paths[-1])
    return [str(p) for p in paths]


def _files_swapped(h):
    paths = json.loads(h["__metadata__"]["paths"])
    h["__metadata__"]["paths"] = json.dumps([paths[1], paths[0], *paths[2:]])


def _global_as_int32(h):
    h["global"]["dtype"] = "I32"  # (the same bytes and shape, read as other numbers)


def _local_bytes_flipped(entry: bytes) -> bytes:
    n = int.from_bytes(entry[:8], "little")
    start = 8 + n + json.loads(entry[8:8 + n])["local"]["data_offsets"][0]
    data = bytearray(entry)
    for i in range(start, start + 64):  # the first patch of the first image (float16)
        data[i] ^= 0x5A
    return bytes(data)


@pytest.mark.parametrize("damage", [
    lambda b: _with_header(b, _files_swapped), lambda b: _with_header(b, _global_as_int32), _local_bytes_flipped,
], ids=["files-swapped", "global-as-int32", "local-bytes"])
def test_a_cache_entry_changed_anywhere_the_checksum_covers_is_encoded_again(tmp_path, tiny, capsys, damage):
    """The checksum covers the metadata (the files' order: swapped, each image would get the
    other's features), each tensor's dtype, and every tensor read: the local features' bytes too
    when only they changed."""
    from clip_smot.clip.features import cache_dir, encode_files

    paths = _three_images(tmp_path)
    fresh = encode_files(tiny, paths, local=True, workers=0)
    (entry,) = cache_dir().glob("*.safetensors")
    entry.write_bytes(damage(entry.read_bytes()))
    capsys.readouterr()
    again = encode_files(tiny, paths, local=True, workers=0)
    assert capsys.readouterr().err == (f"note: the feature-cache entry {entry} cannot be used (its checksum does not match "
                                       "its contents); its images are encoded again\n")
    assert again.paths == paths and again.global_.dtype == torch.float32
    torch.testing.assert_close(again.global_, fresh.global_, rtol=0, atol=0)
    torch.testing.assert_close(again.local, fresh.local, rtol=0, atol=0)


def test_only_the_process_that_writes_outputs_writes_an_entry(tmp_path, tiny, monkeypatch):
    """Under torchrun every process encodes a missing entry, but rank 0 alone writes it (one
    write, not one per process racing on the same file)."""
    from clip_smot.clip import features as cf

    paths = _three_images(tmp_path)
    monkeypatch.setattr(cf, "writes_outputs", lambda: False)  # (a rank other than 0)
    assert cf.encode_files(tiny, paths, workers=0).paths == paths
    assert not cf.cache_dir().exists() or not list(cf.cache_dir().iterdir())
    monkeypatch.setattr(cf, "writes_outputs", lambda: True)
    cf.encode_files(tiny, paths, workers=0)
    assert len(list(cf.cache_dir().glob("*.safetensors"))) == 1


def test_a_cache_entry_of_non_finite_features_is_encoded_again_even_with_its_checksum(tmp_path, tiny, capsys):
    """An entry holding NaN with a checksum that matches (as the writer would have made it) is
    still not used: non-finite features are never used."""
    from clip_smot.clip import features as cf

    paths = _three_images(tmp_path)
    fresh = cf.encode_files(tiny, paths, workers=0)
    (entry,) = cf.cache_dir().glob("*.safetensors")
    bad = fresh.global_.clone()
    bad[1, 0] = float("nan")
    cf._write_cache(entry, cf.ImageFeatures(fresh.paths, bad, None, []))
    capsys.readouterr()
    again = cf.encode_files(tiny, paths, workers=0)
    assert "cannot be used (its features are not finite); its images are encoded again" in capsys.readouterr().err
    torch.testing.assert_close(again.global_, fresh.global_, rtol=0, atol=0)


@pytest.mark.parametrize("edit, why", [
    (lambda g: (g * 100).round().long(), "its features are not float32 (global) and float16 (local)"),
    (lambda g: g > 0, "its features are not float32 (global) and float16 (local)"),
    (lambda g: g * 1000, "its features are not normalised"),
    (lambda g: g * 0.5, "its features are not normalised"),  # (short of norm 1 too)
], ids=["int64", "bool", "unnormalised", "half-norm"])
def test_a_cache_entry_of_features_the_writer_never_stores_is_encoded_again(tmp_path, tiny, capsys, edit, why):
    """Integer, boolean or unnormalised features with a matching checksum (the checksum is no
    seal) were used: every MCM of unnormalised ones near 1, the bool ones' classes wrong."""
    from clip_smot.clip import features as cf

    paths = _three_images(tmp_path)
    fresh = cf.encode_files(tiny, paths, workers=0)
    (entry,) = cf.cache_dir().glob("*.safetensors")
    cf._write_cache(entry, cf.ImageFeatures(fresh.paths, edit(fresh.global_), None, []))
    capsys.readouterr()
    again = cf.encode_files(tiny, paths, workers=0)
    assert f"cannot be used ({why}); its images are encoded again" in capsys.readouterr().err
    assert again.global_.dtype == torch.float32
    torch.testing.assert_close(again.global_, fresh.global_, rtol=0, atol=0)


def test_entries_without_local_features_or_readable_files_are_read_without_a_note(tmp_path, tiny, capsys, monkeypatch):
    """Local features asked of an entry of global ones alone are encoded, with no note of damage;
    an entry of files none of which is readable (local features [0, 0, e]) is read as it is."""
    from clip_smot.clip import features as cf

    paths = _three_images(tmp_path)
    cf.encode_files(tiny, paths, workers=0)
    with_local = cf.encode_files(tiny, paths, local=True, workers=0)
    assert with_local.local.shape[:2] == (3, math.prod(tiny.model.visual.grid_size))
    # local features are float16, encoded or read (the module docstring's 2 bytes a value); an
    # entry read for global features alone gives no local ones
    assert with_local.local.dtype == torch.float16
    assert cf.encode_files(tiny, paths, local=True, workers=0).local.dtype == torch.float16
    assert cf.encode_files(tiny, paths, workers=0).local is None
    bad = [tmp_path / "a.png", tmp_path / "b.png"]
    for f in bad:
        f.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    none = cf.encode_files(tiny, bad, local=True, workers=0, skip_unreadable=True)
    assert none.paths == [] and none.local.shape == (0, 0, 32)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cf, "_encode", lambda *a, **k: pytest.fail("encoded again"))
    again = cf.encode_files(tiny, bad, local=True, workers=0, skip_unreadable=True)
    assert again.paths == [] and again.skipped == none.skipped and capsys.readouterr().err == ""


def test_an_entry_with_skipped_files_is_read_and_names_them_as_asked(tmp_path, tiny, capsys, monkeypatch):
    """Unreadable files in the first and second batches: each file keeps its own features and name;
    the entry then serves the same files (the skipped ones included) without encoding, naming them
    as spelt now."""
    from clip_smot.clip import features as cf

    good = _three_images(tmp_path)
    broken = [tmp_path / "broken1.png", tmp_path / "broken2.png"]
    for f in broken:
        f.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = [good[0], str(broken[0]), good[1], str(broken[1]), good[2]]  # batches of 2: one broken in each of two
    first = cf.encode_files(tiny, paths, batch_size=2, workers=0, skip_unreadable=True)
    assert first.paths == good and [s[0] for s in first.skipped] == [str(f) for f in broken]
    assert all(str(f) in why for f, (_, why) in zip(broken, first.skipped))
    # (each good file was left alone in its batch: one at a time gives the same GEMM shapes, so the
    # same bits on any CPU; a batch of 3 may round otherwise where the kernel depends on the batch)
    alone = cf.encode_files(tiny, good, batch_size=1, workers=0, use_cache=False)
    torch.testing.assert_close(first.global_, alone.global_, rtol=0, atol=0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cf, "_encode", lambda *a, **k: pytest.fail("encoded again"))
    capsys.readouterr()
    relative = [os.path.basename(p) for p in paths]
    again = cf.encode_files(tiny, relative, batch_size=2, workers=0, skip_unreadable=True)
    assert capsys.readouterr().err == ""
    assert again.paths == ["0.png", "1.png", "2.png"]
    assert again.skipped == [("broken1.png", first.skipped[0][1]), ("broken2.png", first.skipped[1][1])]
    torch.testing.assert_close(again.global_, first.global_, rtol=0, atol=0)
    # without skip_unreadable the entry's first unreadable file is the error, as encoding names it
    with pytest.raises(UserError, match=r"broken1\.png"):
        cf.encode_files(tiny, relative, batch_size=2, workers=0)


def test_the_shares_of_a_torchrun_join_in_order_with_every_skipped_file():
    """Each process's share as one: a share with no readable file (local features [0, 0, e]) adds
    its skipped files and nothing else."""
    from clip_smot.clip.features import ImageFeatures, _join

    g = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    l = F.normalize(torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(1)), dim=-1).half()
    parts = [ImageFeatures(["a", "b"], g[:2], l[:2], [("x", "x: unreadable")]),
             ImageFeatures([], torch.zeros(0, 32), torch.zeros(0, 0, 32, dtype=torch.float16), [("y", "y: unreadable")]),
             ImageFeatures(["c"], g[2:], l[2:], [])]
    whole = _join(parts)
    assert whole.paths == ["a", "b", "c"] and whole.skipped == [("x", "x: unreadable"), ("y", "y: unreadable")]
    assert torch.equal(whole.global_, g) and torch.equal(whole.local, l)


def test_two_shares_join_when_one_or_both_have_no_readable_file():
    """Two processes' shares (the smallest torchrun): a readable share and an unreadable one are
    the readable one's features with both skipped lists; two unreadable shares are no features
    at all, [0, e] and [0, 0, e], with every skipped file."""
    from clip_smot.clip.features import ImageFeatures, _join

    g = F.normalize(torch.randn(2, 32, generator=torch.Generator().manual_seed(2)), dim=-1)
    l = F.normalize(torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(3)), dim=-1).half()

    def unreadable(name):
        return ImageFeatures([], torch.zeros(0, 32), torch.zeros(0, 0, 32, dtype=torch.float16),
                             [(name, f"{name}: unreadable")])

    whole = _join([ImageFeatures(["a", "b"], g, l, []), unreadable("y")])
    assert whole.paths == ["a", "b"] and whole.skipped == [("y", "y: unreadable")]
    assert torch.equal(whole.global_, g) and torch.equal(whole.local, l)
    none = _join([unreadable("x"), unreadable("y")])
    assert none.paths == [] and none.skipped == [("x", "x: unreadable"), ("y", "y: unreadable")]
    assert none.global_.shape == (0, 32) and none.local.shape == (0, 0, 32)


def test_non_finite_features_name_the_weights_the_count_and_the_first_bad_image(tiny, tiny_clip_config):
    import re

    from clip_smot.clip import features as cf

    g, l = torch.full((3, 4), 0.5), torch.full((3, 2, 4), 0.5)  # (normalised: rows of norm 1)
    cf._check_finite(tiny, g, l, ["a.png", "b.png", "c.png"])  # finite: nothing to say
    l[2, 1, 3] = float("inf")  # (the global features finite)
    head = (rf"^--pretrained {re.escape(tiny.pretrained)}: the image encoder of {tiny.name} gives non-finite features, "
            r"or features of no length ")
    with pytest.raises(UserError, match=head + r"\(1 of 3 images, first c\.png\); its weights hold NaN or inf"):
        cf._check_finite(tiny, g, l, ["a.png", "b.png", "c.png"])
    g[1, 0] = float("nan")
    with pytest.raises(UserError, match=head + r"\(2 of 3 images, first b\.png\)"):
        cf._check_finite(tiny, g, l, ["a.png", "b.png", "c.png"])
    # a row of zeros: what F.normalize makes of a feature of norm 0, or of one whose norm overflows float32
    g, l = torch.full((3, 4), 0.5), None
    g[0] = 0.0
    with pytest.raises(UserError, match=head + r"\(1 of 3 images, first a\.png\)"):
        cf._check_finite(tiny, g, l, ["a.png", "b.png", "c.png"])
    assert cm.weights_flag(load_clip(tiny_clip_config, None)) == "--pretrained (none: random weights)"
    with pytest.raises(UserError, match=r"^no image files to encode$"):
        cf.encode_files(tiny, [], workers=0)


def test_non_finite_features_of_a_later_batch_name_that_batchs_image(tmp_path, tiny, monkeypatch):
    """With batches of two, a NaN in the features of the third file (the second batch's only one)
    is '1 of 1 images, first <the third file>': the count and the name are the batch's."""
    import re

    from clip_smot.clip import features as cf

    paths = _three_images(tmp_path)
    real, calls = cf.normalized_features, []

    def nan_in_second_batch(*args, **kwargs):
        g, l = real(*args, **kwargs)
        calls.append(len(g))
        if len(calls) == 2:
            g = g.clone()
            g[0, 0] = float("nan")
        return g, l

    monkeypatch.setattr(cf, "normalized_features", nan_in_second_batch)
    with pytest.raises(UserError, match=rf"of no length \(1 of 1 images, first {re.escape(paths[2])}\); "):
        cf.encode_files(tiny, paths, batch_size=2, workers=0, use_cache=False)
    assert calls == [2, 1]


def _weights_with(tmp_path, checkpoint, key, value):
    """A copy of the tiny checkpoint with ``key`` set to ``value`` (every element)."""
    from safetensors.torch import load_file, save_file

    sd = load_file(checkpoint)
    sd[key] = torch.full_like(sd[key], value)
    path = tmp_path / f"bad-{key}.safetensors"
    save_file(sd, str(path))
    return path


@pytest.mark.parametrize("key, value, scores, expected", [
    ("logit_scale", 100.0, "mcm,energy", "logit_scale 100 gives the non-finite temperature exp(logit_scale) = inf"),
    # exp(-200) is 0 in float32: every logit 0, so energy was log K for every image, exit 0
    ("logit_scale", -200.0, "mcm,energy", "logit_scale -200 gives the temperature exp(logit_scale) = 0, under which "
                                          "every logit is 0"),
    # exp(-95) is subnormal in float32 (and 0 where subnormals are flushed): the same
    ("logit_scale", -95.0, "mcm,energy", "logit_scale -95 gives the subnormal temperature exp(logit_scale) = "
                                         "5.52112e-42, under which every logit is about 0"),
    ("visual.proj", float("nan"), "mcm", "the image encoder of clip-smot-tiny gives non-finite features, or features "
                                         "of no length (6 of 6"),
    ("text_projection", float("nan"), "mcm", "the text features re-encoded from the stored context are not finite"),
    # found by fuzzing: a zero text_projection gives text features of norm 0, finite: every logit was 0 and
    # every image got the same scores (mcm 1/3, pred the first class), exit 0
    ("text_projection", 0.0, "mcm", "the text features re-encoded from the stored context are not finite, or of no "
                                    "length (3 of 3 classes"),
])
def test_non_finite_weights_are_refused_naming_them(tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint,
                                                    key, value, scores, expected):
    """A checkpoint with logit_scale 100 (exp: inf in float32) gave nan / -inf scores with exit 0;
    NaN weights give NaN features. Each is one line naming the weights file, and no CSV."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=2)
    bad = _weights_with(tmp_path, tiny_clip_checkpoint, key, value)
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--model", tiny_clip_config,
                                   "--pretrained", str(bad), "--scores", scores, "--workers", "0",
                                   "--out", str(tmp_path / "s.csv"), str(id_dir)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert res.output.startswith(f"Error: --pretrained {bad.name}: ") and expected in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "s.csv").exists()
    from clip_smot.clip.features import cache_dir

    assert not list(cache_dir().glob("*.safetensors"))  # nothing non-finite was cached


def test_image_features_whose_norm_overflows_are_refused_naming_the_weights(tmp_path, tiny, tiny_clip_config,
                                                                             tiny_clip_checkpoint):
    """Found by fuzzing: one visual.proj entry of 3e38 (finite) gives image features near 1e38, finite,
    whose L2 norm is inf in float32; F.normalize made each of them 0, so every logit was 0 and every
    image got the same scores (mcm 1/3 for all), exit 0."""
    from safetensors.torch import load_file, save_file

    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=2)
    sd = load_file(tiny_clip_checkpoint)
    sd["visual.proj"][0, 0] = 3e38
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--model", tiny_clip_config,
                                   "--pretrained", str(bad), "--workers", "0", "--out", str(tmp_path / "s.csv"),
                                   str(id_dir)])
    assert res.exit_code == 1 and res.output.startswith(f"Error: --pretrained {bad.name}: "), res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "s.csv").exists()


def test_a_non_finite_score_is_refused_naming_the_score_and_image(tmp_path, tiny):
    """The last guard: scores computed from finite inputs that still overflow name the score."""
    from clip_smot.clip.features import ImageFeatures

    make_prompt(tmp_path / "p.safetensors", tiny)
    scorer = PromptScorer.from_file(tmp_path / "p.safetensors", pretrained="", device="cpu")
    feats = ImageFeatures(["a.png", "b.png"], F.normalize(torch.randn(2, 32), dim=-1), None, [])
    scorer.text_features = scorer.text_features * 1e38  # (cosines up to 1e38: logits past float32, MCM's finite)
    scorer.logit_scale = torch.tensor(torch.finfo(torch.float32).max)  # (the largest it takes)
    with pytest.raises(UserError, match=r"^--scores energy: non-finite scores \(2 of 2 images, first a.png: "):
        scorer.score_features(feats, ["mcm", "energy"])
    assert scorer.score_features(feats, ["mcm"])["mcm"].isfinite().all()  # MCM takes the cosines alone


def test_skip_unreadable_judges_each_file_not_each_argument(tmp_path, tiny, tiny_clip_checkpoint):
    """One unreadable file given by name failed the whole run although the folder beside it held
    readable images: each PATH argument was judged alone."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path)
    bad, bad2 = tmp_path / "broken.png", tmp_path / "broken2.jpg"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad2.write_bytes(b"\xff\xd8 cut")
    args = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint,
            "--workers", "0", "--skip-unreadable", "--out", str(tmp_path / "s.csv")]
    res = CliRunner().invoke(cli, [*args, str(bad), str(id_dir)])
    assert res.exit_code == 0, res.output
    assert "Skipped 1 unreadable image(s)" in res.stderr and "broken.png" in res.stderr
    rows = read_csv(tmp_path / "s.csv")
    assert len(rows) == 12 and all(r["path"].startswith(str(id_dir)) for r in rows)
    res = CliRunner().invoke(cli, [*args, str(bad), str(bad2), "--out", str(tmp_path / "none.csv")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert res.output.startswith("Error: none of the 2 image(s) could be read; the first: ") and "broken.png" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "none.csv").exists()
    assert not (tmp_path / "none.csv.partial").exists() and not (tmp_path / "none.csv.partial.json").exists()


def _fp32_scorer_and_one_image_a_class(tmp_path, tiny):
    """A scorer of a prompt of CLASSES in fp32, and an ID folder (make_folders) of one image a class."""
    scorer = PromptScorer(tiny, make_prompt(tmp_path / "q.safetensors", tiny), CLASSES, precision="fp32")
    return scorer, make_folders(tmp_path, n_per_class=1)[0]


def test_score_paths_leaves_out_an_argument_with_no_readable_file_and_refuses_when_none_has_one(tmp_path, tiny):
    scorer, id_dir = _fp32_scorer_and_one_image_a_class(tmp_path, tiny)
    bad, bad2 = tmp_path / "broken.png", tmp_path / "broken2.png"
    for f in (bad, bad2):
        f.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    alone = scorer.score_paths([id_dir], ["mcm"], workers=0, use_cache=False)
    both = scorer.score_paths([bad, id_dir], ["mcm"], workers=0, use_cache=False, skip_unreadable=True)
    assert both.paths == alone.paths and [s[0] for s in both.skipped] == [str(bad)]
    assert both.scores["pred_index"].dtype == torch.int64 and torch.equal(both.scores["pred_index"],
                                                                          alone.scores["pred_index"])
    torch.testing.assert_close(both.scores["mcm"], alone.scores["mcm"], rtol=0, atol=0)
    with pytest.raises(UserError, match=r"^none of the 2 image\(s\) could be read; the first: .*broken\.png"):
        scorer.score_paths([bad, bad2], ["mcm"], workers=0, use_cache=False, skip_unreadable=True)


def test_score_paths_refuses_a_missing_path_and_an_unfitted_score_before_encoding(tmp_path, tiny, monkeypatch):
    """Every PATH argument is checked, and the scores asked for, before any image is encoded (a
    missing last argument, or knn without ID-train features, after an hour of encoding)."""
    import re

    from clip_smot.clip import scorer as sc

    scorer, id_dir = _fp32_scorer_and_one_image_a_class(tmp_path, tiny)
    monkeypatch.setattr(sc, "encode_files", lambda *a, **k: pytest.fail("encoded before the check"))
    with pytest.raises(UserError, match=rf"^PATH {re.escape(str(tmp_path / 'gone.png'))}: "):
        scorer.score_paths([id_dir, tmp_path / "gone.png"], ["mcm"], workers=0)
    with pytest.raises(UserError, match=r"^--scores knn: needs features of ID training images"):
        scorer.score_paths([id_dir], ["mcm", "knn"], workers=0)


def test_score_paths_and_score_files_refuse_one_path_or_none_for_a_list(tmp_path, tiny):
    """One path given for the list was read as its letters ("PATH p: no such file or folder" for "p.png",
    a PathLike "'PosixPath' object is not iterable"), an empty list stopped on an IndexError: a TypeError
    naming the argument, a ValueError for none."""
    scorer, id_dir = _fp32_scorer_and_one_image_a_class(tmp_path, tiny)
    for one in (str(id_dir), id_dir):
        with pytest.raises(TypeError, match=rf"^paths must be a list of paths, got one {type(one).__name__} "
                                            rf"'{re.escape(str(id_dir))}' \(pass \['"):
            scorer.score_paths(one, ["mcm"], workers=0)
        with pytest.raises(TypeError, match=rf"^files must be a list of paths, got one {type(one).__name__} "):
            scorer.score_files(one, ["mcm"], workers=0)
    for none in ([], ()):
        with pytest.raises(ValueError, match="^paths must name at least one image file, folder, list or shard, got "
                                             "none$"):
            scorer.score_paths(none, ["mcm"], workers=0)


def test_odin_of_score_paths_scores_the_readable_files_alone(tmp_path, tiny):
    """With skip_unreadable, ODIN (which reads the images again) runs on the files that were
    read: an unreadable one inside a folder, and an argument that is one, are left out."""
    scorer, id_dir = _fp32_scorer_and_one_image_a_class(tmp_path, tiny)
    good = sorted(str(p) for p in (id_dir / "val").rglob("*.png"))
    bad, inside = tmp_path / "broken.png", id_dir / "val" / "red" / "broken2.png"
    for f in (bad, inside):
        f.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    res = scorer.score_paths([bad, id_dir], ["mcm", "odin"], workers=0, use_cache=False, skip_unreadable=True)
    assert sorted(res.paths) == good and sorted(s[0] for s in res.skipped) == sorted([str(bad), str(inside)])
    torch.testing.assert_close(res.scores["odin"], scorer.odin_files(res.paths, workers=0), rtol=0, atol=0)
    # skipping is asked for: by default an unreadable file is the error, naming it
    with pytest.raises(UserError, match=re.escape(str(bad))):
        scorer.score_paths([bad, id_dir], ["mcm"], workers=0, use_cache=False)


def test_every_file_name_gets_a_row_that_reads_back(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """A file name that is not valid UTF-8 made `score` fail after encoding every image and write
    no CSV. Names of every kind get their row, in UTF-8, one line each, escaped as
    docs/score.md says: the escaped path gives back the file's name, compared as bytes."""
    import os

    from clip_smot.common.images import unescape_path

    make_prompt(tmp_path / "p.safetensors", tiny)
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = [b"\xff\xfe latin.png", b"new\nline.png", b"back\\slash.png", "caf\u00e9 \u2028.png".encode(), b"plain.png",
             b"tab\there,comma\".png"]
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(os.path.join(os.fsencode(folder), n),
                                                                                format="PNG")
    with open(os.path.join(os.fsencode(folder), b"\xe9broken.png"), "wb") as f:
        f.write(b"not an image")
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--skip-unreadable",
                                   "--out", str(tmp_path / "s.csv"), str(folder)])
    assert res.exit_code == 0, res.output
    assert "Skipped 1 unreadable image(s)" in res.stderr and "broken.png" in res.stderr
    raw = (tmp_path / "s.csv").read_bytes()
    text = raw.decode("utf-8")  # strict: the file is UTF-8
    assert len(text.splitlines()) == 1 + len(names)  # one line per row
    written = [os.fsencode(unescape_path(r["path"])) for r in read_csv(tmp_path / "s.csv")]
    assert sorted(os.path.basename(p) for p in written) == sorted(names)
    assert all(os.path.isfile(p) for p in written)
    assert f"{folder}/\\xff\\xfe latin.png" in text and f"{folder}/new\\u000aline.png" in text
    assert f"{folder}/back\\\\slash.png" in text and f"{folder}/caf\u00e9 \\u2028.png" in text
    # --resume reads such rows back: stopped after two chunks of 2 images, resumed to the CSV of a whole run
    import dataclasses

    from clip_smot.clip.score import ScoreConfig, run_score

    cfg = ScoreConfig(prompt=str(tmp_path / "p.safetensors"), paths=(str(folder),), out=str(tmp_path / "w.csv"),
                      pretrained=tiny_clip_checkpoint, workers=0, skip_unreadable=True, device="cpu")
    run_score(cfg, chunk=2)
    cfg = dataclasses.replace(cfg, out=str(tmp_path / "r.csv"))
    _, real = _stop_after_chunks(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_score(cfg, chunk=2)
    assert (tmp_path / "r.csv.partial").read_text(encoding="utf-8").count("\n") == 5  # (the header, 4 rows)
    monkeypatch.setattr(PromptScorer, "score_files", real)
    run_score(dataclasses.replace(cfg, resume=True), chunk=2)
    assert (tmp_path / "r.csv").read_bytes() == (tmp_path / "w.csv").read_bytes()


def test_csv_rows_hold_every_score_exactly_in_the_images_order():
    """A row per image in the order given: its path, class name, index and each score asked for,
    written so that it reads back to the very float32 value (7 digits would not)."""
    import io

    from clip_smot.clip.score import _csv_rows
    from clip_smot.clip.scorer import PathScores

    mcm = torch.tensor([0.1234567890123, -1e-30, 12345.678, 1 / 3])  # float32
    energy = torch.tensor([2.5, 1e10, -7.000001, 0.0])
    result = PathScores([f"/d/{k}.png" for k in (3, 1, 2, 0)], {"pred_index": torch.tensor([2, 0, 1, 0]),
                                                                  "mcm": mcm, "energy": energy}, [])
    rows = list(csv.reader(io.StringIO(_csv_rows(result, ["energy", "mcm"], ["cat", "dog", "ship"]))))
    assert [r[:3] for r in rows] == [["/d/3.png", "ship", "2"], ["/d/1.png", "cat", "0"], ["/d/2.png", "dog", "1"],
                                     ["/d/0.png", "cat", "0"]]
    assert [float(r[3]) for r in rows] == energy.tolist() and [float(r[4]) for r in rows] == mcm.tolist()
    # fields are quoted only where csv must (a comma, a quote, a newline) or a carriage return is
    one = PathScores(["/d/a.png", "/d/b.png", "/d/c.png"], {"pred_index": torch.tensor([0, 1, 2]),
                                                            "mcm": torch.tensor([0.5, 0.25, 1.0])}, [])
    assert _csv_rows(one, ["mcm"], ["cat", "a,b", "x\ry"]) == ('/d/a.png,cat,0,0.5\n/d/b.png,"a,b",1,0.25\n'
                                                              '"/d/c.png","x\ry","2","1.0"\n')


def test_class_names_that_are_not_utf8_do_not_lose_the_csv(tmp_path, tiny, tiny_clip_checkpoint):
    """A prompt fitted on class folders whose names are not UTF-8 holds such names (as Python
    spells them: lone surrogates). Writing one into the CSV failed after every image was encoded;
    it is written as its escape instead."""
    names = ["r\udce9d", "gr\udce9en", "bl\udce9e"]
    make_prompt(tmp_path / "p.safetensors", tiny, classnames=names)
    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--out", str(tmp_path / "s.csv"), str(id_dir)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "s.csv").read_bytes().decode("utf-8").splitlines()))
    assert len(rows) == 3 and all(r["pred"] == names[int(r["pred_index"])].replace("\udce9", "\\udce9") for r in rows)


def test_an_error_naming_a_file_with_a_newline_is_one_line(tmp_path, tiny, tiny_clip_checkpoint):
    """An unreadable image whose name holds a newline made the error two lines."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    bad = tmp_path / "new\nline.png"
    bad.write_bytes(b"not an image")
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--out", str(tmp_path / "s.csv"), str(bad)])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and "new\\u000aline.png" in res.output


# --- image lists, streaming, --resume ---------------------------------------------------------------


def test_image_lists_as_paths_score_their_files_in_list_order(tmp_path, tiny, tiny_clip_checkpoint):
    """A LIST.txt (paths relative to its folder; a label, a comment and a blank line) and a
    ROOT::LIST.txt give the rows of the files named directly, in the list's order."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=2, n_ood=2)
    names = ["val/red/1.png 0", "# a comment", "", "val/blue/0.png", "val/red/0.png 2"]
    (id_dir / "list.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "ood.txt").write_text("x/y/1.jpg\nx/y/0.jpg\n")
    base = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint,
            "--scores", "mcm,energy", "--workers", "0"]
    files = [id_dir / "val/red/1.png", id_dir / "val/blue/0.png", id_dir / "val/red/0.png",
             ood_dir / "x/y/1.jpg", ood_dir / "x/y/0.jpg"]
    for out, paths in (("lists.csv", [str(id_dir / "list.txt"), f"{ood_dir}::{tmp_path / 'ood.txt'}"]),
                       ("files.csv", [str(f) for f in files])):
        res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / out), *paths])
        assert res.exit_code == 0, res.output
    lists, direct = read_csv(tmp_path / "lists.csv"), read_csv(tmp_path / "files.csv")
    assert [r["path"] for r in lists] == [str(f) for f in files] == [r["path"] for r in direct]
    # (one batch per list against one per file: the same scores up to float rounding)
    assert [float(r["mcm"]) for r in lists] == pytest.approx([float(r["mcm"]) for r in direct], abs=1e-6)
    assert [r["pred"] for r in lists] == [r["pred"] for r in direct]
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "bad.csv"), f"{id_dir}::{tmp_path / 'ood.txt'}"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "x/y/1.jpg does not exist" in res.output


def test_the_csv_does_not_depend_on_the_decoding_workers(tmp_path, tiny, tiny_clip_checkpoint):
    """--workers says where images are decoded, not what is scored: 0 (in the main process) and 2
    (DataLoader processes, kept from chunk to chunk) give the same CSV byte for byte, rows in the
    list's order (not sorted: the list is written out of order), each image in the same batch."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=2, n_ood=3)
    names = ["val/red/1.png", "val/blue/0.png", "val/green/1.png", "val/red/0.png", "val/blue/1.png",
             "val/green/0.png"]
    (id_dir / "list.txt").write_text("\n".join(names) + "\n")
    csvs = []
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}.csv"
        res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                       tiny_clip_checkpoint, "--scores", "mcm,energy,gl-mcm", "--batch-size", "2",
                                       "--workers", workers, "--no-cache", "--out", str(out),
                                       str(id_dir / "list.txt"), str(ood_dir)])
        assert res.exit_code == 0, res.output
        csvs.append(out.read_bytes())
    assert [r["path"] for r in read_csv(tmp_path / "w0.csv")] == (
        [str(id_dir / n) for n in names] + [str(ood_dir / "x" / "y" / f"{k}.jpg") for k in range(3)])
    assert csvs[1] == csvs[0]


def _score_run(tmp_path, ckpt, ids, out, **kw):
    from clip_smot.clip.score import ScoreConfig, run_score

    kw = {"workers": 0, **kw}
    cfg = ScoreConfig(prompt=str(tmp_path / "p.safetensors"), paths=tuple(str(i) for i in ids), out=str(out),
                      pretrained=ckpt, scores="mcm,msp,energy", batch_size=2, device="cpu", **kw)
    return run_score(cfg, chunk=5)


def _stop_after_chunks(monkeypatch, n: int):
    """PromptScorer.score_files patched to raise KeyboardInterrupt (as Ctrl-C does) when called
    after ``n`` chunks; returns the list of the chunks' sizes it saw and the real method."""
    seen, real = [], PromptScorer.score_files

    def stop(self, files, *a, **k):
        if len(seen) == n:
            raise KeyboardInterrupt
        seen.append(len(files))
        return real(self, files, *a, **k)

    monkeypatch.setattr(PromptScorer, "score_files", stop)
    return seen, real


def test_image_files_given_one_by_one_are_chunked_together(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """Image files given one by one as PATHS (a shell's `photos/*.jpg`) were a chunk each: an
    encoder batch of one image, a feature-cache entry and a flushed CSV append each (15 to 34 ms
    an image, against 0.15 ms through an image list). A run of them is now chunked as one argument
    is; a folder or an image list between them keeps its own chunks. Stopped after the first chunk,
    --resume ends in the uninterrupted run's CSV, byte for byte; cut inside the first chunk's rows
    (a crash within an append), the chunk of the run of files is scored whole again."""
    from clip_smot.clip.score import ScoreConfig, run_score

    make_prompt(tmp_path / "p.safetensors", tiny)
    files = []
    for i in range(7):
        files.append(tmp_path / "img" / f"{i}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (30 * i, 100, 0)).save(files[-1])
    folder = tmp_path / "folder"
    for i in range(3):
        (folder / f"{i}.png").parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (0, 30 * i, 200)).save(folder / f"{i}.png")
    (folder / "list.txt").write_text("0.png\n1.png\n2.png\n")  # (an image list of the folder's images)
    paths = (*map(str, files[:3]), str(folder), *map(str, files[3:5]), str(folder / "list.txt"), *map(str, files[5:]))

    def run(out, **kw):
        return run_score(ScoreConfig(prompt=str(tmp_path / "p.safetensors"), paths=paths, out=str(out),
                                     pretrained=tiny_clip_checkpoint, scores="mcm,energy", workers=0, device="cpu",
                                     use_cache=False, **kw), chunk=2)

    seen, real = _stop_after_chunks(monkeypatch, 100)
    run(tmp_path / "whole.csv")
    assert seen == [2, 1, 2, 1, 2, 2, 1, 2]  # (0 1 | 2; the folder's 0 1 | 2; 3 4; the list's 0 1 | 2; 5 6)
    rows = read_csv(tmp_path / "whole.csv")
    in_folder = [str(folder / f"{i}.png") for i in range(3)]
    assert [r["path"] for r in rows] == [*map(str, files[:3]), *in_folder, *map(str, files[3:5]), *in_folder,
                                         *map(str, files[5:])]
    seen, _ = _stop_after_chunks(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "s.csv")
    record = (tmp_path / "s.csv.partial.json").read_bytes()
    monkeypatch.setattr(PromptScorer, "score_files", lambda self, files, *a, **k: seen.append(len(files))
                        or real(self, files, *a, **k))
    seen.clear()
    run(tmp_path / "s.csv", resume=True)
    assert seen == [1, 2, 1, 2, 2, 1, 2]  # (the rest of the first run of files, 2, then as before)
    whole = (tmp_path / "whole.csv").read_bytes()
    assert (tmp_path / "s.csv").read_bytes() == whole
    lines = whole.splitlines(True)
    (tmp_path / "s.csv.partial").write_bytes(lines[0] + lines[1] + lines[2][:20])  # (one row of the first chunk)
    (tmp_path / "s.csv.partial.json").write_bytes(record)
    seen.clear()
    run(tmp_path / "s.csv", resume=True)
    assert seen == [2, 1, 2, 1, 2, 2, 1, 2] and (tmp_path / "s.csv").read_bytes() == whole


def test_an_interrupted_score_resumes_to_the_csv_of_an_uninterrupted_run(tmp_path, tiny, tiny_clip_checkpoint,
                                                                         monkeypatch):
    """19 images in chunks of 5 (per argument: 12 = 5 + 5 + 2, then 7 = 5 + 2): stopped after two
    chunks, OUT is absent and OUT.partial holds the header and their 10 rows, flushed; --resume
    scores the other 9 images only, and the CSV is the uninterrupted run's byte for byte. Cut
    inside a row of the second chunk (a crash within an append), the rest of that chunk was
    scored alone, in other batches (2 of 2 images from the cut on, where the uninterrupted run
    encoded 2, 2, 1 from the chunk's start), and the finished CSV differed from the
    uninterrupted run's in the last digits of its scores: the rows of a chunk cut short are now
    dropped and the chunk scored whole, and the CSV is the uninterrupted run's byte for byte."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    ids = make_folders(tmp_path, n_per_class=4, n_ood=7)
    _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "whole.csv")
    whole = (tmp_path / "whole.csv").read_bytes()
    assert whole.count(b"\n") == 20 and not (tmp_path / "whole.csv.partial").exists()

    out, partial = tmp_path / "s.csv", tmp_path / "s.csv.partial"
    seen, real = _stop_after_chunks(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _score_run(tmp_path, tiny_clip_checkpoint, ids, out)
    assert not out.exists() and partial.read_bytes() == b"".join(whole.splitlines(True)[:11])
    run = (tmp_path / "s.csv.partial.json").read_bytes()  # (what the rows were scored with)
    assert run == (json.dumps(json.loads(run), sort_keys=True) + "\n").encode()  # (one line, keys sorted)
    monkeypatch.setattr(PromptScorer, "score_files", lambda self, files, *a, **k: seen.append(len(files))
                        or real(self, files, *a, **k))
    _score_run(tmp_path, tiny_clip_checkpoint, ids, out, resume=True)
    assert seen == [5, 5, 2, 5, 2] and out.read_bytes() == whole and not partial.exists()
    assert not (tmp_path / "s.csv.partial.json").exists()

    lines = whole.splitlines(True)
    for rows in (6, 8, 14):  # the second chunk's first row, a later one; the second argument's second row
        partial.write_bytes(b"".join(lines[: rows + 1]) + lines[rows + 1][:40])  # its rows, part of the next
        (tmp_path / "s.csv.partial.json").write_bytes(run)
        seen.clear()
        _score_run(tmp_path, tiny_clip_checkpoint, ids, out, resume=True)
        assert out.read_bytes() == whole, rows
        assert seen == ([5, 2, 5, 2] if rows < 12 else [5, 2]), rows  # (the cut chunk whole, then the rest)


def test_the_progress_bar_counts_every_image_of_paths_once(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """The bar's total is the number of images of PATHS (3 classes x 2 + 3 OOD = 9, counted by
    hand), whatever the chunks."""
    from tqdm import tqdm

    import clip_smot.clip.score as score_module

    bars = []

    def bar(**kw):
        bars.append(kw)
        return tqdm(disable=True, **kw)

    monkeypatch.setattr(score_module, "progress_bar", bar)
    make_prompt(tmp_path / "p.safetensors", tiny)
    ids = make_folders(tmp_path, n_per_class=2, n_ood=3)
    _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "s.csv")  # (in chunks of 5)
    assert [(b["total"], b["initial"]) for b in bars] == [(9, 0)] and len(read_csv(tmp_path / "s.csv")) == 9


def test_a_resume_lists_paths_three_times(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """docs/score.md: PATHS are read twice (checked and counted, then scored), once more with
    --resume. The check that no output is an image listed PATHS once more for each output that
    existed (OUT.partial and OUT.partial.json on a resume: five listings of a folder of millions)."""
    from clip_smot.clip import score as score_command

    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, ood_dir = map(str, make_folders(tmp_path, n_per_class=2, n_ood=1))  # (chunks of 5: 5 + 1, then 1)
    seen, real = _stop_after_chunks(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):  # (OUT.partial, with 5 rows, and OUT.partial.json are left)
        _score_run(tmp_path, tiny_clip_checkpoint, (id_dir, ood_dir), tmp_path / "s.csv")
    listed, walk = [], score_command.iter_image_files
    monkeypatch.setattr(score_command, "iter_image_files", lambda p, flag: listed.append(p) or walk(p, flag))
    monkeypatch.setattr(PromptScorer, "score_files", real)
    _score_run(tmp_path, tiny_clip_checkpoint, (id_dir, ood_dir), tmp_path / "s.csv", resume=True)
    # counted, then the rows checked (up to the last, in the first folder), then scored
    assert listed == [id_dir, ood_dir, id_dir, id_dir, ood_dir] and len(read_csv(tmp_path / "s.csv")) == 7


def test_a_run_stopped_by_an_unreadable_image_resumes_past_it_with_skip_unreadable(tmp_path, tiny,
                                                                                    tiny_clip_checkpoint):
    """docs/score.md: an unreadable image stops a run without --skip-unreadable and leaves
    OUT.partial (its earlier chunks' rows); --resume may add --skip-unreadable to go on past it,
    and the CSV is that of a whole run with --skip-unreadable, the image listed as skipped."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    ids = make_folders(tmp_path, n_per_class=4, n_ood=7)
    bad = ids[1] / "x" / "y" / "3.jpg"  # (chunks of 5 per argument: the ID folder's 12 rows come first)
    bad.write_bytes(b"not an image")
    skipped = _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "whole.csv", skip_unreadable=True)
    assert [p for p, _ in skipped] == [str(bad)]
    out = tmp_path / "s.csv"
    with pytest.raises(UserError, match=re.escape(str(bad))):
        _score_run(tmp_path, tiny_clip_checkpoint, ids, out)
    assert not out.exists() and len((tmp_path / "s.csv.partial").read_text().splitlines()) == 1 + 12
    skipped = _score_run(tmp_path, tiny_clip_checkpoint, ids, out, skip_unreadable=True, resume=True)
    assert [p for p, _ in skipped] == [str(bad)]
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_a_prompt_replaced_while_a_score_starts_never_vouches_for_the_rows_of_the_other(tmp_path, tiny,
                                                                                        tiny_clip_checkpoint,
                                                                                        monkeypatch):
    """score read --prompt, then hashed it for OUT.partial.json seconds later (after the CLIP model
    had loaded): an export writing that prompt meanwhile left rows of the old prompt vouched for by
    the new one's SHA-256, and a --resume after a Ctrl-C kept them: a CSV of two prompts, exit 0.
    The hash is now of the file read, and a prompt replaced while it is read is refused."""
    from clip_smot.clip import score as score_command

    prompt = tmp_path / "p.safetensors"
    make_prompt(tmp_path / "new.safetensors", tiny, seed=1)
    ids = make_folders(tmp_path, n_per_class=2, n_ood=3)
    shutil.copy(tmp_path / "new.safetensors", prompt)
    _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "whole.csv")  # (the new prompt's scores)
    make_prompt(prompt, tiny, seed=0)  # (the old prompt, in place when the score starts)
    real_load = score_command.load_prompt

    def export_meanwhile(path):  # (another command writes the prompt just after score read it)
        read = real_load(path)
        shutil.copy(tmp_path / "new.safetensors", tmp_path / "tmp.safetensors")
        os.replace(tmp_path / "tmp.safetensors", path)
        return read

    monkeypatch.setattr(score_command, "load_prompt", export_meanwhile)
    _stop_after_chunks(monkeypatch, 1)
    out = tmp_path / "s.csv"
    try:
        _score_run(tmp_path, tiny_clip_checkpoint, ids, out)
    except KeyboardInterrupt:  # (Ctrl-C after the first chunk: the old prompt's rows were in OUT.partial)
        pass
    except UserError as e:
        assert str(e).startswith(f"--prompt {prompt}: was replaced while it was read") and not out.exists()
    monkeypatch.undo()
    _score_run(tmp_path, tiny_clip_checkpoint, ids, out, resume=os.path.exists(f"{out}.partial"))  # (run again)
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_ctrl_c_names_the_partial_to_resume_from(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """score's Ctrl-C said 'interrupted' only, where fit and train name what to resume from: the
    rows scored so far are kept in OUT.partial, and the line says so and how to go on."""
    from clip_smot.clip import score as score_command

    make_prompt(tmp_path / "p.safetensors", tiny)
    ids = make_folders(tmp_path, n_per_class=4, n_ood=7)
    monkeypatch.setattr(score_command.run_score, "__defaults__", (5,))  # (chunks of 5 images)
    _, real = _stop_after_chunks(monkeypatch, 1)
    out = tmp_path / "s.csv"
    args = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint, "--device",
            "cpu", "--workers", "0", "--out", str(out), *map(str, ids)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 130 and res.output == (f"Error: interrupted; {out}.partial holds the rows written so far: "
                                                   "continue with the same command and --resume\n")
    assert len(read_csv(f"{out}.partial")) == 5 and not out.exists()
    monkeypatch.setattr(PromptScorer, "score_files", real)
    res = CliRunner().invoke(cli, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert len(read_csv(out)) == 19 and not os.path.exists(f"{out}.partial")


def test_the_rename_of_the_partial_to_out_is_flushed_to_the_disk(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """OUT.partial's rows were flushed, but not its rename to OUT: after a power loss the folder
    could hold OUT.partial again (and OUT.partial.json removed), or neither. OUT's folder is
    flushed after the rename (once a run, not once a chunk)."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    ids = make_folders(tmp_path, n_per_class=4, n_ood=7)
    (tmp_path / "out").mkdir()
    out_folder = (tmp_path / "out").stat().st_ino
    events, fsync, replace = [], os.fsync, os.replace

    def synced(fd):
        if os.fstat(fd).st_ino == out_folder:
            events.append("fsync out/")
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {os.path.basename(b)}"), replace(a, b))[1])
    _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "out" / "s.csv")
    assert len(read_csv(tmp_path / "out" / "s.csv")) == 19
    assert events[-2:] == ["replace s.csv", "fsync out/"]
    # s.csv.partial and its .json renamed in, then s.csv: none for each of the 4 chunks appended
    assert events.count("fsync out/") == 3


def test_an_out_that_cannot_be_renamed_to_is_one_line_and_keeps_the_rows(tmp_path, tiny, tiny_clip_checkpoint,
                                                                       monkeypatch):
    """The final rename of OUT.partial to OUT (a folder made at OUT meanwhile) was an
    IsADirectoryError traceback; it is one line saying where the rows are, and --resume finishes."""
    from clip_smot.clip import score as score_command

    make_prompt(tmp_path / "p.safetensors", tiny)
    ids = make_folders(tmp_path, n_per_class=2, n_ood=2)
    out = tmp_path / "s.csv"
    append = score_command._append

    def append_then_block(partial, text):
        append(partial, text)
        out.mkdir(exist_ok=True)

    monkeypatch.setattr(score_command, "_append", append_then_block)
    args = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint, "--device",
            "cpu", "--workers", "0", "--out", str(out), *map(str, ids)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, repr(res.exception)
    assert res.output == (f"Error: --out {out}: cannot be written (Is a directory); the rows are kept in {out}.partial: "
                          "once that is put right, the same command with --resume finishes it\n")
    assert len(read_csv(f"{out}.partial")) == 8
    monkeypatch.setattr(score_command, "_append", append)
    out.rmdir()
    res = CliRunner().invoke(cli, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert len(read_csv(out)) == 8 and not os.path.exists(f"{out}.partial")


def test_resume_without_a_partial_or_with_other_scores_is_one_line(tmp_path, tiny, tiny_clip_checkpoint):
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    base = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint,
            "--workers", "0", "--out", str(tmp_path / "s.csv"), "--resume", str(id_dir)]
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        f"Error: --resume: there is no {tmp_path / 's.csv.partial'} to continue (run without --resume to start it)"]
    (tmp_path / "s.csv").write_text("path,pred,pred_index,mcm\n")  # (a finished run's)
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        f"Error: --resume: there is no {tmp_path / 's.csv.partial'} to continue (the run finished: {tmp_path / 's.csv'} "
        "is there)"]
    (tmp_path / "s.csv").unlink()
    (tmp_path / "s.csv.partial").write_text("path,pred,pred_index,msp\n")
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 1 and "holds other columns than path,pred,pred_index,mcm" in res.output
    assert (tmp_path / "s.csv.partial").read_text() == "path,pred,pred_index,msp\n" and not (tmp_path / "s.csv").exists()
    for text in ("path,pred,pred_index,msp", "path,pred,pred_index,mcm,msp"):  # no complete line: not this header
        (tmp_path / "s.csv.partial").write_text(text)
        res = CliRunner().invoke(cli, base)
        assert res.exit_code == 1 and "holds other columns than path,pred,pred_index,mcm" in res.output
        assert (tmp_path / "s.csv.partial").read_text() == text and not (tmp_path / "s.csv").exists()
    # no score CSV at all (notes, a gzip file saved over it): "give the same --scores" is no answer
    for data in (b"notes: not a CSV at all\n", b"notes: not a CSV at all", b"\x1f\x8b\x08\x00" + bytes(20)):
        (tmp_path / "s.csv.partial").write_bytes(data)
        res = CliRunner().invoke(cli, base)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1, res.output
        assert lines[0].startswith(f"Error: --resume: {tmp_path / 's.csv.partial'} is no CSV that score wrote (its "
                                   f"first line: {'notes' if data.startswith(b'notes') else chr(92) + 'x1f'}")
        assert lines[0].endswith("); run without --resume"), lines[0]
        assert (tmp_path / "s.csv.partial").read_bytes() == data and not (tmp_path / "s.csv").exists()
    # saved by an editor with a byte-order mark: the same columns, and "give the same --scores" no answer
    (tmp_path / "s.csv.partial").write_text("\ufeffpath,pred,pred_index,mcm\n")
    res = CliRunner().invoke(cli, base)
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        f"Error: --resume: {tmp_path / 's.csv.partial'} starts with a byte-order mark, which score never writes (a "
        "file saved by an editor); run without --resume"]
    (tmp_path / "s.csv.partial").write_text("x" * 500 + "\n")
    res = CliRunner().invoke(cli, base)
    assert f"(its first line: {'x' * 117}...)" in res.output


def test_temporaries_of_a_score_killed_while_starting_its_partial_are_removed(tmp_path, tiny, tiny_clip_checkpoint):
    """A score killed (SIGKILL) while it wrote OUT.partial's header or OUT.partial.json left a hidden
    temporary beside the CSV that no later run removed. The next score to that --out removes them
    (it holds the --out lock: no other run writes them); other hidden files are let be."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    out = tmp_path / "o"
    out.mkdir()
    left = [out / ".s.csv.partial.k3j_x1.tmp", out / ".s.csv.partial.json.9q2z0w.tmp"]
    others = [out / ".t.csv.partial.k3j_x1.tmp", out / ".s.csv.notes"]
    for f in left + others:
        f.write_text("path,pred,pred_index,mcm\n")
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--out", str(out / "s.csv"), str(id_dir)])
    assert res.exit_code == 0, res.output
    assert not any(f.exists() for f in left) and all(f.exists() for f in others)
    assert sorted(f.name for f in out.iterdir()) == sorted([".s.csv.notes", ".t.csv.partial.k3j_x1.tmp", "s.csv"])


def test_a_resume_after_a_kill_within_the_final_rename_removes_the_left_record(tmp_path, tiny, tiny_clip_checkpoint,
                                                                              monkeypatch):
    """A score killed (SIGKILL) after renaming OUT.partial to OUT but before removing OUT.partial.json
    left that record beside the finished CSV (docs/score.md: it is removed with the finished CSV);
    --resume then said there was no partial to continue and left it there for good, and so did
    every later --resume. It is removed now (the --out lock is held: no run of that --out is at
    work), the message says the run finished, and the CSV is not touched."""
    from clip_smot.clip import score as score_module

    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    out, record = tmp_path / "s.csv", tmp_path / "s.csv.partial.json"
    args = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint, "--workers",
            "0", "--out", str(out), str(id_dir)]

    def killed(folder):  # the kill: after the rename, before the record is removed
        raise RuntimeError("killed")

    monkeypatch.setattr(score_module, "fsync_folder", killed)
    res = CliRunner().invoke(cli, args)
    assert isinstance(res.exception, RuntimeError)
    assert out.is_file() and record.is_file() and not (tmp_path / "s.csv.partial").exists()
    monkeypatch.undo()
    scores = out.read_bytes()
    for _ in range(2):
        res = CliRunner().invoke(cli, [*args, "--resume"])
        assert res.exit_code == 1 and res.output.strip().splitlines() == [
            f"Error: --resume: there is no {tmp_path / 's.csv.partial'} to continue (the run finished: {out} is "
            "there)"], res.output
        assert not record.exists() and out.read_bytes() == scores
    assert sorted(f.name for f in tmp_path.iterdir() if f.name.startswith("s.")) == ["s.csv"]


def test_every_score_a_run_writes_is_a_row_resume_keeps(tmp_path, tiny, tiny_clip_checkpoint):
    """--resume keeps a row whose scores are float32 values (their repr): every score of every row
    score writes is one, so that no row of a run is refused."""
    from clip_smot.clip import score as score_module

    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    names = "mcm,msp,energy,maxlogit,gl-mcm,odin,gradnorm"
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--scores", names, "--out",
                                   str(tmp_path / "s.csv"), str(id_dir)])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "s.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    classes = {c: {str(i)} for i, c in enumerate(CLASSES)}
    assert len(rows) == 3 and all(score_module._row_fits(r, len(header), classes) for r in rows)
    edited = [*rows[0][:3], repr(float(np.float32(0.25)) + 2.0 ** -40), *rows[0][4:]]  # (a float64 between two float32s)
    assert not score_module._row_fits(edited, len(header), classes)


def test_resume_checks_every_row_against_the_files_it_scored(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """Only the last row was checked, against the first file of its name at or after the row count:
    with an unreadable image skipped and an image named twice, the resumed CSV scored it three
    times; a partial of other PATHS, of another prompt or with edited rows was continued, and an
    image added to a folder was never scored. Each row is now the next file's, a file between two
    rows one that still does not read."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    make_prompt(tmp_path / "other.safetensors", tiny, classnames=["cat", "dog", "ship"])
    id_dir, _ = make_folders(tmp_path, n_per_class=2)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    x, y = sorted(str(p) for p in id_dir.rglob("*.png"))[:2]
    out, partial = tmp_path / "s.csv", tmp_path / "s.csv.partial"

    def score(*paths, prompt="p.safetensors", resume=True):
        return CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / prompt), "--pretrained",
                                        tiny_clip_checkpoint, "--workers", "0", "--skip-unreadable", "--out", str(out),
                                        *(["--resume"] if resume else []), *paths])

    def resumed(rows, *paths, **kw):
        partial.write_text("".join(whole[: rows + 1]))
        (tmp_path / "s.csv.partial.json").write_text(run)
        return score(*paths, **kw)

    args = (str(tmp_path / "bad.png"), x, x, y)
    _, real = _stop_after_chunks(monkeypatch, 0)
    assert score(*args, resume=False).exit_code == 130  # (stopped: what the rows are scored with is left)
    run = (tmp_path / "s.csv.partial.json").read_text()
    monkeypatch.setattr(PromptScorer, "score_files", real)
    assert score(*args, resume=False).exit_code == 0
    whole = out.read_text().splitlines(True)
    assert [r.split(",")[0] for r in whole[1:]] == [x, x, y]
    for rows in (0, 1, 2, 3):  # (a partial of 2 rows ends with the second x: the third file)
        res = resumed(rows, *args)
        assert res.exit_code == 0 and out.read_text() == "".join(whole), (rows, res.output)
    res = resumed(2, str(tmp_path / "bad.png"), x)  # other PATHS: the second row is no later file
    assert res.exit_code == 1 and f"row 2 of {partial} ({x}) is no later image of PATHS" in res.output
    res = resumed(2, *args, prompt="other.safetensors")  # another prompt's classes
    assert res.exit_code == 1 and f"row 1 of {partial} is not a row of this prompt's scores" in res.output
    partial.write_text("".join(whole[:3]))  # resumed without the --skip-unreadable that skipped bad.png
    (tmp_path / "s.csv.partial.json").write_text(run)
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--out", str(out), "--resume", *args])
    assert res.exit_code == 1 and f"row 1 of {partial} is not the row of {tmp_path / 'bad.png'}" in res.output
    res = resumed(2, *args, "--precision", "bf16")  # (the rows were scored in fp32, the CPU's auto)
    assert res.exit_code == 1 and f"{partial} was scored with another --precision; give the same" in res.output
    make_prompt(tmp_path / "same-classes.safetensors", tiny, seed=1)  # the same classes, another context
    res = resumed(2, *args, prompt="same-classes.safetensors")
    assert res.exit_code == 1 and f"{partial} was scored with another --prompt; give the same" in res.output
    res = resumed(2, *args, prompt="p.safetensors")
    assert res.exit_code == 0 and out.read_text() == "".join(whole)
    stored = json.loads(run)
    assert stored["decoder"] is None  # (PIL's, on the CPU): rows of nvJPEG's pixels are not continued with PIL's
    for decoder, code in (("jpeg-cuda torchvision 0.29.1", 1), ("(no key: a run file of before the key)", 0)):
        edited_run = {k: v for k, v in stored.items() if k != "decoder"} | ({} if code == 0 else {"decoder": decoder})
        partial.write_text("".join(whole[:3]))
        (tmp_path / "s.csv.partial.json").write_text(json.dumps(edited_run))
        res = score(*args)
        assert res.exit_code == code, res.output
        assert code == 0 or f"{partial} was scored with another decoder (--decode); give the same" in res.output
    # a run file of before the key, and rows of another decoder than PIL's (nvJPEG's, here made up by
    # patching the identity): not "another decoder", which may be untrue, but "an earlier clip-smot"
    from clip_smot.clip import score as score_module

    real_identity = score_module.decoder_identity
    monkeypatch.setattr(score_module, "decoder_identity", lambda decode, device: "jpeg-cuda torchvision 0.29.1")
    partial.write_text("".join(whole[:3]))
    (tmp_path / "s.csv.partial.json").write_text(json.dumps({k: v for k, v in stored.items() if k != "decoder"}))
    res = score(*args)
    assert res.exit_code == 1 and "was written by an earlier clip-smot, which did not record the decoder" in res.output
    monkeypatch.setattr(score_module, "decoder_identity", real_identity)
    (tmp_path / "s.csv.partial.json").unlink()
    partial.write_text("".join(whole[:3]))  # (no file saying what it was scored with)
    res = score(*args)
    assert res.exit_code == 1 and "s.csv.partial.json, which says what" in res.output
    (tmp_path / "run.json").write_text(run)  # a symbolic link there (to another run's file?): as if missing
    (tmp_path / "s.csv.partial.json").symlink_to(tmp_path / "run.json")
    res = score(*args)
    assert res.exit_code == 1 and "s.csv.partial.json, which says what" in res.output
    (tmp_path / "s.csv.partial.json").unlink()
    head, last = whole[2].rstrip("\n").rsplit(",", 1)
    # not finite; a float, but not as the run writes it; a float64 next to the score, which no float32
    # score is (a digit dropped or changed: the row was kept and its value ended in the CSV)
    for value in ("nan", f" {last}", f"{last}0", repr(math.nextafter(float(last), math.inf))):
        edited = f"{head},{value}\n"
        partial.write_text("".join([*whole[:2], edited]))
        res = score(*args)
        assert res.exit_code == 1 and f"row 2 of {partial} is not a row of this prompt's scores" in res.output
        assert partial.read_text() == "".join([*whole[:2], edited]) and out.read_text() == "".join(whole)  # (as they were)
    partial.write_text("".join([*whole[:2], whole[2].rstrip("\n") + ",0.5\n"]))  # a column more than the header's
    res = score(*args)
    assert res.exit_code == 1 and f"row 2 of {partial} is not a row of this prompt's scores" in res.output
    shutil.copy(x, tmp_path / "new.png")  # a readable image where the run skipped none
    res = resumed(2, str(tmp_path / "new.png"), *args)
    assert res.exit_code == 1 and f"{tmp_path / 'new.png'} of PATHS reads, but has no row before row 1" in res.output
    partial.write_text("path,pred,pred_ind")  # stopped inside the header: nothing was scored
    assert score(*args).exit_code == 0 and out.read_text() == "".join(whole)


@pytest.mark.parametrize("how", ["symlink", "hardlink", "fifo"])
def test_a_link_or_fifo_at_out_partial_is_never_written_through(tmp_path, tiny, tiny_clip_checkpoint, how):
    """OUT.partial was opened for writing as found: a symlink or hard link to another file had that
    file replaced by the CSV, a FIFO hung the run. A new run now replaces a link, --resume refuses
    it; a FIFO or a device there or at --out (a rename would replace it) is refused."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out, partial = tmp_path / "o" / "s.csv", tmp_path / "o" / "s.csv.partial"
    out.parent.mkdir()
    {"symlink": lambda: partial.symlink_to(victim), "hardlink": lambda: os.link(victim, partial),
     "fifo": lambda: os.mkfifo(partial)}[how]()
    base = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint,
            "--workers", "0", str(id_dir)]
    fifo = f"Error: --out {partial}: is a device, FIFO or socket, not a file"
    res = CliRunner().invoke(cli, [*base, "--out", str(out), "--resume"])
    refused = {"symlink": "a symbolic link", "hardlink": "a hard link of another file"}.get(how)
    assert res.exit_code == 1 and res.output.startswith(fifo if how == "fifo" else f"Error: --resume: {partial} is "
                                                        f"{refused}; remove it and run without --resume")
    res = CliRunner().invoke(cli, [*base, "--out", str(out)])
    if how == "fifo":
        assert res.exit_code == 1 and res.output.startswith(fifo) and partial.is_fifo()
        res = CliRunner().invoke(cli, [*base, "--out", str(partial)])  # (the FIFO as --out itself)
        assert res.exit_code == 1 and "is a device, FIFO or socket, not a file" in res.output
    else:
        assert res.exit_code == 0, res.output
        assert victim.read_text() == "precious\n" and out.read_text().startswith("path,pred,pred_index,mcm\n")


def _two_shards(tmp_path, tiny, names, labels=False):
    """A prompt and two webdataset shards ``names`` holding the folders' 6 + 5 images as
    KEY.png / KEY.jpg (``labels``: each with an empty KEY.cls beside it); returns the images."""
    import tarfile

    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=2, n_ood=5)
    files = sorted(id_dir.rglob("*.png")) + sorted(ood_dir.rglob("*.jpg"))
    for shard, part in zip(names, (files[:6], files[6:])):
        with tarfile.open(shard, "w") as tar:
            for i, f in enumerate(part):
                tar.add(f, arcname=f"{i:06d}{f.suffix}")
                if labels:
                    tar.addfile(tarfile.TarInfo(f"{i:06d}.cls"), None)  # an empty label field, ignored
    return files


def test_tar_shards_score_as_their_files_do_and_resume(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """Two webdataset shards holding the folders' images: the same scores as the files, rows named
    SHARD.tar::KEY; stopped after a chunk, --resume gives the uninterrupted CSV byte for byte."""
    shard_paths = [tmp_path / "s0.tar", tmp_path / "s1.tar"]
    files = _two_shards(tmp_path, tiny, shard_paths, labels=True)
    _score_run(tmp_path, tiny_clip_checkpoint, files, tmp_path / "files.csv")
    _score_run(tmp_path, tiny_clip_checkpoint, shard_paths, tmp_path / "whole.csv")
    by_file, by_shard = read_csv(tmp_path / "files.csv"), read_csv(tmp_path / "whole.csv")
    assert [r["path"] for r in by_shard] == [f"{s}::{i:06d}{f.suffix}" for s, part in zip(shard_paths, (files[:6], files[6:]))
                                             for i, f in enumerate(part)]
    for a, b in zip(by_file, by_shard):
        assert a["pred"] == b["pred"] and all(float(a[k]) == pytest.approx(float(b[k]), abs=1e-6) for k in ("mcm", "msp"))

    out, partial = tmp_path / "s.csv", tmp_path / "s.csv.partial"
    _, real = _stop_after_chunks(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        _score_run(tmp_path, tiny_clip_checkpoint, shard_paths, out)
    assert partial.read_bytes().count(b"\n") == 6  # the header and the first chunk's 5 rows
    monkeypatch.setattr(PromptScorer, "score_files", real)
    _score_run(tmp_path, tiny_clip_checkpoint, shard_paths, out, resume=True)
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_skip_unreadable_skips_a_shard_that_cannot_be_listed_whole(tmp_path, tiny, tiny_clip_checkpoint,
                                                                      monkeypatch):
    """One damaged shard among many (a header damaged in a copy) stopped `score --skip-unreadable` of the
    whole collection, though the flag is there to get past unreadable inputs. The shard is now
    skipped whole (none of its images can be named) and listed with its reason; the other shards'
    rows are those of a run without it, and a run stopped after a chunk resumes to them byte for
    byte. Without the flag it is still the one-line error, before anything is encoded."""
    import tarfile

    from clip_smot.clip.score import ScoreConfig, run_score

    good = [tmp_path / "s0.tar", tmp_path / "s2.tar"]
    _two_shards(tmp_path, tiny, good)
    cut = tmp_path / "s1.tar"  # a copy of a shard with its second header damaged (a flipped byte of its name)
    with tarfile.open(good[0]) as tar:
        at = tar.getmembers()[1].offset
    raw = bytearray(good[0].read_bytes())
    raw[at + 1] ^= 0xFF
    cut.write_bytes(bytes(raw))
    shards = [good[0], cut, good[1]]
    _score_run(tmp_path, tiny_clip_checkpoint, good, tmp_path / "good.csv")
    with pytest.raises(UserError, match=rf"^PATH {cut}: not a readable uncompressed tar shard"):
        _score_run(tmp_path, tiny_clip_checkpoint, shards, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv.partial").exists()
    skipped = _score_run(tmp_path, tiny_clip_checkpoint, shards, tmp_path / "all.csv", skip_unreadable=True)
    assert (tmp_path / "all.csv").read_bytes() == (tmp_path / "good.csv").read_bytes()
    assert [p for p, _ in skipped] == [str(cut)] and "not a readable uncompressed tar shard" in skipped[0][1]
    out = tmp_path / "s.csv"
    _, real = _stop_after_chunks(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        _score_run(tmp_path, tiny_clip_checkpoint, shards, out, skip_unreadable=True)
    monkeypatch.setattr(PromptScorer, "score_files", real)
    skipped = _score_run(tmp_path, tiny_clip_checkpoint, shards, out, skip_unreadable=True, resume=True)
    assert out.read_bytes() == (tmp_path / "good.csv").read_bytes() and [p for p, _ in skipped] == [str(cut)]
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--device", "cpu", "--workers", "0", "--skip-unreadable",
                                   "--out", str(tmp_path / "cli.csv"), *map(str, shards)])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines()[-2:] == ["Skipped 1 unreadable image(s) or shard(s):",
                                            f"  PATH {cut}: not a readable uncompressed tar shard (a damaged header "
                                            f"at byte {at})"], res.stderr
    with pytest.raises(UserError, match=r"^none of the 1 image\(s\) or shard\(s\) could be read; the first: PATH "):
        run_score(ScoreConfig(prompt=str(tmp_path / "p.safetensors"), paths=(str(cut),), out=str(tmp_path / "n.csv"),
                              pretrained=tiny_clip_checkpoint, device="cpu", workers=0, skip_unreadable=True))


def test_class_names_with_newlines_and_quotes_resume_to_the_same_csv(tmp_path, tiny, tiny_clip_checkpoint,
                                                                    monkeypatch):
    """A prompt's class names are the prompt file's to choose: one with a newline (csv quotes it,
    the row then spans two lines), quotes or U+0085 (a line end for str.splitlines, none for csv).
    Resuming counted lines, not rows, and refused the partial (or picked the wrong image); rows
    are now read as csv reads them: stopped after a chunk, --resume gives the uninterrupted CSV."""
    names = [f'{c}\n{tmp_path}/id/val/red/0.png,"q"\x85' for c in CLASSES]  # (a line that names an image)
    make_prompt(tmp_path / "p.safetensors", tiny, classnames=names)
    ids = make_folders(tmp_path, n_per_class=4, n_ood=3)
    _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "whole.csv")
    whole = (tmp_path / "whole.csv").read_bytes()
    assert whole.count(b"\n") == 31 and whole.count(b'""q""\xc2\x85"') == 15
    out, partial = tmp_path / "s.csv", tmp_path / "s.csv.partial"
    _, real = _stop_after_chunks(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _score_run(tmp_path, tiny_clip_checkpoint, ids, out)
    monkeypatch.setattr(PromptScorer, "score_files", real)
    cut = partial.read_bytes()
    partial.write_bytes(cut + b'some/path.png,"red\n')  # and a row cut inside its quoted class name
    _score_run(tmp_path, tiny_clip_checkpoint, ids, out, resume=True)
    assert out.read_bytes() == whole and len(read_csv(out)) == 15


def test_repeated_class_names_and_a_carriage_return_resume_to_the_same_csv(tmp_path, tiny, tiny_clip_checkpoint,
                                                                            monkeypatch):
    """ImageNet-1k's names repeat ("missile" is classes 657 and 744): --resume kept one index per
    name and refused a row of the other as "not a row of this prompt's scores". A carriage return
    in a class name was written unquoted (csv quotes it only when it is the line end), and a
    reader split the row there. Both now read back: the rows, then a resume, give the uninterrupted
    CSV byte for byte."""
    import csv

    names = ["red", "miss\rile", "miss\rile"]
    text = make_prompt(tmp_path / "p.safetensors", tiny, classnames=names)
    ids = make_folders(tmp_path, n_per_class=4, n_ood=3)
    _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "whole.csv")
    whole = (tmp_path / "whole.csv").read_bytes()
    with open(tmp_path / "whole.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 and all(names[int(r["pred_index"])] == r["pred"] for r in rows)
    assert {r["pred_index"] for r in rows[:10]} >= {"1", "2"}, (text, rows)  # both before the cut
    out, partial = tmp_path / "s.csv", tmp_path / "s.csv.partial"
    _, real = _stop_after_chunks(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _score_run(tmp_path, tiny_clip_checkpoint, ids, out)
    assert partial.read_bytes().count(b"\n") == 11 and not out.exists()  # (the header and two chunks' rows)
    monkeypatch.setattr(PromptScorer, "score_files", real)
    _score_run(tmp_path, tiny_clip_checkpoint, ids, out, resume=True)
    assert out.read_bytes() == whole


def test_score_in_chunks_keeps_its_decoding_workers_and_ends_them(tmp_path, tiny, tiny_clip_checkpoint,
                                                                  monkeypatch):
    """With 2 decoding workers, the four chunks of 19 images are decoded by the same two worker
    processes (one DataLoader iterator), the CSV is that of decoding in the main process, and no
    worker is left once score ends, stopped by Ctrl-C too."""
    import multiprocessing

    make_prompt(tmp_path / "p.safetensors", tiny)
    ids = make_folders(tmp_path, n_per_class=4, n_ood=7)
    _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "main.csv", use_cache=False)  # (workers=0)
    started, real = [], torch.utils.data.DataLoader._get_iterator
    monkeypatch.setattr(torch.utils.data.DataLoader, "_get_iterator", lambda self: started.append(1) or real(self))
    _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "workers.csv", workers=2, use_cache=False)
    assert started == [1] and not multiprocessing.active_children()
    assert (tmp_path / "workers.csv").read_bytes() == (tmp_path / "main.csv").read_bytes()
    _stop_after_chunks(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "stopped.csv", workers=2, use_cache=False)
    assert not multiprocessing.active_children()


def test_many_cache_entries_written_read_the_cache_folder_linearly(tmp_path, tiny, tiny_clip_checkpoint,
                                                                   monkeypatch):
    """Chunks of one image (image files given one by one as PATHS were so, a shell's `photos/*.jpg`,
    before they were chunked together) write a feature-cache entry each, and each write
    (clip_smot/clip/features.py, _write_cache) swept the whole cache folder for a killed write's
    temporaries, which held an entry more at each write: about N * N / 2 entries read, quadratic in
    the images (0.8 us an entry measured: 16 minutes for 50,000 entries, 40 s for 10,000). Counted
    without a clock, the folder's entries that os.scandir and os.listdir give (pathlib's glob lists
    through os.scandir): 6 entries read 21, 12 read 78; at most three times as many for twice the
    entries (linear: twice) is asked here."""
    from clip_smot.clip.score import ScoreConfig, run_score
    from clip_smot.clip.features import cache_dir

    make_prompt(tmp_path / "p.safetensors", tiny)
    files = []
    for i in range(12):
        files.append(tmp_path / "img" / f"{i:02d}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(files[-1])
    real_scandir, real_listdir, read = os.scandir, os.listdir, [0]

    def in_cache(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.realpath(path) == os.path.realpath(cache_dir())

    def scandir(path="."):
        if in_cache(path):
            read[0] += len(real_listdir(path))
        return real_scandir(path)

    def listdir(path="."):
        names = real_listdir(path)
        read[0] += len(names) if in_cache(path) else 0
        return names

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", listdir)
    counts = {}
    for n in (6, 12):
        monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / f"cache{n}"))
        read[0] = 0
        run_score(ScoreConfig(prompt=str(tmp_path / "p.safetensors"), paths=tuple(map(str, files[:n])),
                              out=str(tmp_path / f"s{n}.csv"), pretrained=tiny_clip_checkpoint, workers=0,
                              device="cpu"), chunk=1)
        assert len(read_csv(tmp_path / f"s{n}.csv")) == n and len(os.listdir(cache_dir())) == n  # (an entry a file)
        counts[n] = read[0]
    assert counts[12] <= 3 * counts[6], counts



def test_listing_chunking_and_resuming_hold_a_chunk_not_the_list(tmp_path):
    """Memory flat in the number of images: counting the images of a 12,000-line list, going
    through them in chunks of 500 and finding where a 12,000-row OUT.partial stopped each peak
    (tracemalloc) at under a fifth of what the list of the paths alone takes."""
    import tracemalloc

    from clip_smot.clip import score as sc
    from clip_smot.common.image_sets import image_files, iter_image_files

    n, header = 12000, ["path", "pred", "pred_index", "mcm"]
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "list.txt").write_text("a.png\n" * n)
    paths, partial = [str(tmp_path / "list.txt")], tmp_path / "s.csv.partial"
    partial.write_text(",".join(header) + "\n" + f"{tmp_path / 'a.png'},red,0,0.5\n" * (n - 10))

    def peak(work):
        tracemalloc.start()
        try:
            return work(), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    listed, whole = peak(lambda: len(image_files(paths[0], "PATH")))
    counted, count_peak = peak(lambda: sum(1 for _ in iter_image_files(paths[0], "PATH")))
    chunks, chunk_peak = peak(lambda: [len(c) for c in sc._chunks(sc._groups(paths), 500, 0)])
    resumed, resume_peak = peak(lambda: sc._resume_point(partial, header, sc._files(paths), ["red"], False))
    assert listed == counted == sum(chunks) == n and chunks == [500] * 24
    assert resumed == (n - 10, partial.stat().st_size)
    assert max(count_peak, chunk_peak, resume_peak) < whole / 5, (whole, count_peak, chunk_peak, resume_peak)


def test_a_score_and_its_resume_hold_a_chunk_not_the_list(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """The same as the test above, for the whole command: run_score's own peak (tracemalloc; the
    model built before, and a stand-in for the encoder giving each chunk's rows) grows by under a
    third of what the list of 1,000 paths takes when the list grows from 1,000 to 2,000 lines,
    scored whole and resumed before its last chunk of 500. Measured: under 5 KB, where a run that
    kept every path it listed (while counting them, or in the resume's listing) grew by over 300 KB."""
    import tracemalloc

    from clip_smot.clip import score as sc
    from clip_smot.clip.prompt_file import load_prompt
    from clip_smot.clip.scorer import PathScores
    from clip_smot.common.image_sets import image_files

    make_prompt(tmp_path / "p.safetensors", tiny)
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    scorer = PromptScorer.from_file(load_prompt(tmp_path / "p.safetensors"), pretrained=tiny_clip_checkpoint,
                                    device="cpu")
    monkeypatch.setattr(PromptScorer, "from_file", classmethod(lambda cls, *a, **k: scorer))

    def rows(self, files, names, *a, **k):
        n = len(files)
        return PathScores(list(files), {"pred_index": torch.zeros(n, dtype=torch.long),
                                        **{m: torch.full((n,), 0.5) for m in names}}, [])

    def peak(work) -> int:
        tracemalloc.start()
        try:
            work()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def peaks(n: int, chunk: int) -> tuple[int, int]:
        (tmp_path / f"l{n}.txt").write_text("a.png\n" * n)
        cfg = dict(prompt=str(tmp_path / "p.safetensors"), paths=(str(tmp_path / f"l{n}.txt"),), device="cpu",
                   pretrained=tiny_clip_checkpoint, workers=0)
        monkeypatch.setattr(PromptScorer, "score_files", rows)
        whole = peak(lambda: sc.run_score(sc.ScoreConfig(**cfg, out=str(tmp_path / f"whole{n}.csv")), chunk=chunk))
        _stop_after_chunks(monkeypatch, n // chunk - 1)  # (the rows checked on resuming: all but a chunk's)
        with pytest.raises(KeyboardInterrupt):
            sc.run_score(sc.ScoreConfig(**cfg, out=str(tmp_path / f"cut{n}.csv")), chunk=chunk)
        monkeypatch.setattr(PromptScorer, "score_files", rows)
        resumed = peak(lambda: sc.run_score(sc.ScoreConfig(**cfg, out=str(tmp_path / f"cut{n}.csv"), resume=True),
                                            chunk=chunk))
        assert (tmp_path / f"cut{n}.csv").read_bytes() == (tmp_path / f"whole{n}.csv").read_bytes()
        assert len(read_csv(tmp_path / f"whole{n}.csv")) == n
        return whole, resumed

    peaks(6, 2)  # (what a first run allocates once)
    small, large = peaks(1000, 500), peaks(2000, 500)
    paths = peak(lambda: image_files(str(tmp_path / "l1000.txt"), "PATH"))
    assert max(large[0] - small[0], large[1] - small[1]) < paths / 3, (small, large, paths)


def test_a_quote_left_open_in_a_partial_is_refused_not_read_to_the_end(tmp_path, monkeypatch):
    """An edited OUT.partial with one stray quote made every later line part of one record: the
    quotes of the whole record were counted again at each line (20,000 rows: 2.3 s, quadratic),
    and at the end the record counted as cut off, so --resume cut the file to its header and
    scored everything again, saying nothing. A record may now stay open only over as many lines
    as a class name has newlines, and hold at most MAX_RECORD bytes (a line too): else one line
    names the file and where the row starts. A row cut inside a quoted class name at the end of
    the file is still a cut-off row."""
    from clip_smot.clip import score as sc

    head = "path,pred,pred_index,mcm\n"
    rows = "".join(f"a/{i}.png,red,0,0.5\n" for i in range(3000))
    partial = tmp_path / "s.csv.partial"
    error = (f"--resume: {partial}: the row from byte {len(head)} on is damaged (a quote left open, or over "
             f"{sc.MAX_RECORD} bytes: an edited file); run without --resume")
    partial.write_text(head + 'a/x.png,"red,0,0.5\n' + rows)
    for open_lines in (0, 1, 3):
        with pytest.raises(UserError) as e:
            list(sc._records(partial, open_lines))
        assert str(e.value) == error
    partial.write_text(head + "a/" + "x" * sc.MAX_RECORD + ".png,red,0,0.5\n" + rows)  # (one line too long)
    with pytest.raises(UserError) as e:
        list(sc._records(partial, 0))
    assert str(e.value) == error
    partial.write_text(head + rows + 'a/y.png,"re\nd')  # cut inside a quoted name holding a newline
    records = list(sc._records(partial, 1))
    assert len(records) == 3001 and records[-1][0] == ["a/2999.png", "red", "0", "0.5"]


def test_a_partial_row_that_is_not_utf8_is_refused(tmp_path):
    """score writes its CSV in UTF-8 alone, but --resume read a partial's rows with errors="replace":
    a row edited to hold the byte 0xFF where the image's name has U+FFFD (its UTF-8 bytes EF BF BD)
    read as that name, was kept, and the finished CSV held a byte that is not UTF-8 (exit 0). Such a
    row is an edited file now, named by where it starts."""
    from clip_smot.clip import score as sc

    header = ["path", "pred", "pred_index", "mcm"]
    partial = tmp_path / "s.csv.partial"
    head = "path,pred,pred_index,mcm\n"
    partial.write_bytes(head.encode() + b"a/\xff.png,red,0,0.5\n")
    with pytest.raises(UserError) as e:
        sc._resume_point(partial, header, ["a/\ufffd.png", "a/1.png"], ["red"], False)
    assert str(e.value) == (f"--resume: {partial}: the row from byte {len(head)} on is not UTF-8 (an edited file); "
                            "run without --resume")
    partial.write_bytes(head.encode() + "a/\ufffd.png,red,0,0.5\n".encode())  # (as score writes that name)
    assert sc._resume_point(partial, header, ["a/\ufffd.png", "a/1.png"], ["red"], False) == (1, partial.stat().st_size)


def test_a_partial_saved_with_crlf_or_other_quotes_is_refused(tmp_path):
    """csv reads "\r\n" line ends and quotes around any field, so a partial opened and saved on
    Windows (CRLF) or by a spreadsheet (every field quoted) was resumed: its rows were kept as
    they were and the new ones appended as score writes them, and the finished CSV mixed CRLF
    and LF lines (exit 0), unlike an uninterrupted run's. A record must now be the very line
    score writes for its fields; one that is not is refused in one line naming the file and
    where the row starts, and the partial is left as it is. Rows as score writes them, a path
    with a comma or a quote and a class name with a carriage return among them, still resume."""
    from clip_smot.clip import score as sc

    header, classes = ["path", "pred", "pred_index", "mcm"], ["red", "gr\ren"]
    files = ["a/0.png", 'a/"1",x.png', "a/2.png", "a/3.png"]
    head = "path,pred,pred_index,mcm\n"
    rows = ['a/0.png,red,0,0.5\n', '"a/""1"",x.png",red,0,0.25\n', '"a/2.png","gr\ren","1","0.125"\n']
    partial = tmp_path / "s.csv.partial"
    partial.write_bytes((head + "".join(rows)).encode())
    assert sc._resume_point(partial, header, files, classes, False) == (3, partial.stat().st_size)
    for text, at in (((head + "".join(rows)).replace("\n", "\r\n"), 0),  # (the class name's "\r" is quoted)
                     (head + rows[0] + rows[1].replace("\n", "\r\n") + rows[2], len(head + rows[0])),
                     (head + '"a/0.png","red","0","0.5"\n' + rows[1], len(head)),
                     (head + rows[0] + 'a/"1",x.png,red,0,0.25\n', len(head + rows[0]))):  # (a quote csv reads)
        partial.write_bytes(text.encode())
        with pytest.raises(UserError) as e:
            sc._resume_point(partial, header, files, classes, False)
        assert str(e.value).startswith(f"--resume: {partial}: the row from byte {at} on is not written as score "
                                       "writes it (") and str(e.value).endswith("; run without --resume")
        assert "\n" not in str(e.value) and partial.read_bytes() == text.encode()


def test_a_partial_with_a_byte_order_mark_is_refused_as_edited_not_as_other_scores(tmp_path):
    """A partial saved by an editor that adds a UTF-8 byte-order mark (Notepad, PowerShell 5) was
    refused as holding other columns, with "give the same --scores": the very --scores were
    given. It is named as what it is now, whole header or cut."""
    from clip_smot.clip import score as sc

    header = ["path", "pred", "pred_index", "mcm"]
    partial = tmp_path / "s.csv.partial"
    for text in ("\ufeffpath,pred,pred_index,mcm\na/0.png,red,0,0.5\n", "\ufeffpath,pr"):
        partial.write_bytes(text.encode())
        with pytest.raises(UserError) as e:
            sc._resume_point(partial, header, ["a/0.png"], ["red"], False)
        assert str(e.value) == (f"--resume: {partial} starts with a byte-order mark, which score never writes (a "
                                "file saved by an editor); run without --resume")
        assert partial.read_bytes() == text.encode()


def test_a_row_cut_at_the_record_limit_is_cut_off_not_damaged(tmp_path):
    """A record holds at most MAX_RECORD bytes: a last line of exactly that many, cut by the end of
    the file, is a row cut off (scored again), not an edited file."""
    from clip_smot.clip import score as sc

    head = "path,pred,pred_index,mcm\n"
    partial = tmp_path / "s.csv.partial"
    partial.write_text(head + "a/0.png,red,0,0.5\n" + "a/" + "x" * (sc.MAX_RECORD - 2))
    assert [fields for fields, _ in sc._records(partial, 0)] == [["path", "pred", "pred_index", "mcm"],
                                                                  ["a/0.png", "red", "0", "0.5"]]


def test_a_row_whose_class_name_has_more_newlines_than_the_others_resumes(tmp_path):
    """A record may stay open over as many lines as the class name with the most newlines has
    (not the fewest): the rows of a prompt naming "red" and "gr\neen" read back whole."""
    from clip_smot.clip import score as sc

    header = ["path", "pred", "pred_index", "mcm"]
    partial = tmp_path / "s.csv.partial"
    text = "path,pred,pred_index,mcm\na/0.png,red,0,0.5\na/1.png,\"gr\neen\",1,0.25\n"
    partial.write_bytes(text.encode())
    done, keep = sc._resume_point(partial, header, ["a/0.png", "a/1.png", "a/2.png"], ["red", "gr\neen"], False)
    assert (done, keep) == (2, len(text))
    # a quoted name on one line (a comma in it: two quotes) closes its record there
    text += 'a/2.png,"a,b",2,0.125\n'
    partial.write_bytes(text.encode())
    assert sc._resume_point(partial, header, ["a/0.png", "a/1.png", "a/2.png", "a/3.png"], ["red", "gr\neen", "a,b"],
                            False) == (3, len(text))
    # a score that is no number, not finite, or not as the run writes it is no row of a run
    for edit in ("abc", "nan", "0.1250", " 0.125"):
        partial.write_bytes(text.replace("0.125", edit).encode())
        with pytest.raises(UserError, match=r"row 3 of .* is not a row of this prompt's scores"):
            sc._resume_point(partial, header, ["a/0.png", "a/1.png", "a/2.png"], ["red", "gr\neen", "a,b"], False)
    # no whole header: a header of other scores, cut before its line end, is no partial of this run
    partial.write_bytes(b"path,pred,pred_index,mcm,msp")
    with pytest.raises(UserError, match=r"holds other columns than path,pred,pred_index,mcm \(its first line: "
                                        r"path,pred,pred_index,mcm,"):
        sc._resume_point(partial, header, ["a/0.png"], ["red"], False)
    partial.write_bytes(b"path,pred,pred_in")  # (stopped while its own header was written: nothing scored)
    assert sc._resume_point(partial, header, ["a/0.png"], ["red"], False) == (0, 0)
    partial.unlink()
    partial.mkdir()  # (a folder made there: named as what it is, not as no partial)
    with pytest.raises(UserError, match=r"s.csv.partial is not a regular file; remove it"):
        sc._resume_point(partial, header, ["a/0.png"], ["red"], False)


def test_a_record_left_open_over_more_than_the_record_limit_is_damaged(tmp_path):
    """The bytes of an open record add up over its lines: two lines of 600,000 bytes with a quote
    left open are over MAX_RECORD (1 MiB) though each line is not, and the row is refused."""
    from clip_smot.clip import score as sc

    head = "path,pred,pred_index,mcm\n"
    partial = tmp_path / "s.csv.partial"
    partial.write_text(head + 'a/x.png,"' + "y" * 600_000 + "\n" + "z" * 600_000 + '\nw",0,0.5\n')
    with pytest.raises(UserError, match=rf"the row from byte {len(head)} on is damaged"):
        list(sc._records(partial, 3))
    # cut by the end of the file in its second line: still over the limit, not a row cut off
    partial.write_text(head + 'a/x.png,"' + "y" * 600_000 + "\n" + "z" * 600_000)
    with pytest.raises(UserError, match=rf"the row from byte {len(head)} on is damaged"):
        list(sc._records(partial, 3))


def test_a_run_file_of_the_size_limit_is_read_and_a_linked_one_is_not(tmp_path):
    """OUT.partial.json is read up to 1 MiB (a run file of exactly that size is read); one that is
    a symbolic link, even to the right record, is refused."""
    from clip_smot.clip import score as sc

    run = {"prompt_sha256": "ab", "model": "m", "precision": "fp32", "decoder": None}
    text = json.dumps(run)
    run_file, partial = tmp_path / "s.csv.partial.json", tmp_path / "s.csv.partial"
    run_file.write_text(text + " " * ((1 << 20) - len(text)))
    assert run_file.stat().st_size == 1 << 20
    sc._check_run_file(run_file, run, partial)
    run_file.write_text(text + " " * ((1 << 20) - len(text) + 1))
    with pytest.raises(UserError, match="is missing or damaged"):
        sc._check_run_file(run_file, run, partial)
    (tmp_path / "real.json").write_text(text)
    run_file.unlink()
    run_file.symlink_to(tmp_path / "real.json")
    with pytest.raises(UserError, match="is missing or damaged"):
        sc._check_run_file(run_file, run, partial)


def test_a_run_file_that_holds_no_json_object_is_one_line(tmp_path):
    """OUT.partial.json edited to a list, a string, a number or null records none of the run's keys:
    --resume names each as another, in one line (an AttributeError traceback, were it read as a dict)."""
    from clip_smot.clip import score as sc

    run = {"prompt_sha256": "ab", "model": "m", "precision": "fp32", "decoder": None}
    run_file, partial = tmp_path / "s.csv.partial.json", tmp_path / "s.csv.partial"
    for text in ("[1, 2]", '"prompt_sha256"', "3", "null"):
        run_file.write_text(text)
        with pytest.raises(UserError) as e:
            sc._check_run_file(run_file, run, partial)
        assert str(e.value) == (f"--resume: {partial} was scored with another --prompt, model (--model, --pretrained), "
                                "--precision, decoder (--decode); give the same, or run without --resume")


@pytest.mark.parametrize("flags, error", [
    (["--decode", "gpu"],
     "--decode gpu: decodes on a CUDA device, and the model is on cpu; give --device cuda or --decode cpu"),
    (["--scores", "mcm,knn"], "--scores knn: needs features of ID training images; clip-smot eval fits them "
                              "(--id-train, or the prompt's own few-shot images)"),
])
def test_score_refuses_a_decoder_or_score_it_cannot_give_before_starting_the_partial(tmp_path, tiny,
                                                                                     tiny_clip_checkpoint, flags, error):
    """Refused once the model is loaded, before OUT.partial or its record is written: no file is left
    for a --resume to find (knn, react and vim need the ID training images of clip-smot eval)."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--device", "cpu", *flags, "--workers", "0",
                                   "--out", str(tmp_path / "s.csv"), str(id_dir)])
    assert res.exit_code == 1 and res.output.strip().splitlines() == [f"Error: {error}"]
    assert not any(p.name.startswith("s.csv") for p in tmp_path.iterdir())


def test_score_out_in_a_new_folder_is_made_and_a_file_there_is_one_line(tmp_path, tiny, tiny_clip_checkpoint,
                                                                        monkeypatch):
    """--out new/dir/s.csv failed after the model was loaded ("cannot be written"), while eval makes its
    folder: score makes the CSV's folder too, and says at once, before any model, that a file is there."""
    from clip_smot.clip import scorer

    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    base = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint,
            "--workers", "0", str(id_dir)]
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "new" / "dir" / "s.csv")])
    assert res.exit_code == 0 and read_csv(tmp_path / "new" / "dir" / "s.csv"), res.output
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(scorer.PromptScorer, "from_file", lambda *a, **k: pytest.fail("the model was loaded"))
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "file" / "s.csv")])
    assert res.exit_code == 1 and res.output.strip() == f"Error: --out {tmp_path / 'file'}: is a file, not a folder"


def test_score_paths_reads_lists_and_shards_as_score_does(tmp_path, tiny):
    """``score_paths`` takes what ``clip-smot score`` takes as PATH: a folder, an image list
    (``LIST.txt``, ``ROOT::LIST.txt``) and a tar shard, each giving the folder's own scores."""
    import tarfile

    id_dir, _ = make_folders(tmp_path)
    scorer = PromptScorer(tiny, make_prompt(tmp_path / "q.safetensors", tiny), CLASSES)
    folder = scorer.score_paths([id_dir], ["mcm"], workers=0, use_cache=False)
    names = [os.path.relpath(p, id_dir) for p in folder.paths]
    (id_dir / "list.txt").write_text("".join(f"{n}\n" for n in names))
    (tmp_path / "rooted.txt").write_text("".join(f"{n}\n" for n in names))
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for n in names:
            tar.add(id_dir / n, arcname=n)
    for arg in (id_dir / "list.txt", f"{id_dir}::{tmp_path / 'rooted.txt'}", tmp_path / "s.tar"):
        got = scorer.score_paths([arg], ["mcm"], workers=0, use_cache=False)
        assert [os.path.basename(str(p).split("::")[-1]) for p in got.paths] == [os.path.basename(p) for p in names]
        torch.testing.assert_close(got.scores["mcm"], folder.scores["mcm"], atol=1e-6, rtol=0)


def test_a_full_disk_while_appending_a_chunk_leaves_whole_chunks_and_resumes_to_the_same_csv(
        tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """The disk full while a chunk's rows were appended to OUT.partial (part of them written, as a
    full disk's short write leaves): the partial kept those rows, and --resume scored the rest of
    that chunk in other batches (last digits of the scores not those of an uninterrupted run).
    A failed append is taken back now: the partial holds whole chunks, the error line names it,
    and --resume gives the uninterrupted run's CSV byte for byte."""
    import errno

    import clip_smot.clip.score as score

    make_prompt(tmp_path / "p.safetensors", tiny)
    ids = make_folders(tmp_path, n_per_class=4, n_ood=7)
    _score_run(tmp_path, tiny_clip_checkpoint, ids, tmp_path / "whole.csv")
    whole = (tmp_path / "whole.csv").read_bytes()
    out, partial = tmp_path / "s.csv", tmp_path / "s.csv.partial"
    appends = []

    class FullDisk:  # the second chunk's append: its first 100 characters written, then ENOSPC
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, text):
            appends.append(text)
            if len(appends) == 2:
                self.f.write(text[:100])
                self.f.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(text)

    with monkeypatch.context() as m, pytest.raises(UserError) as e:
        m.setattr(score, "open", lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
        _score_run(tmp_path, tiny_clip_checkpoint, ids, out)
    assert str(e.value) == (f"--out {partial}: cannot be written (No space left on device); the rows before are kept: "
                            "once that is put right, the same command with --resume finishes it")
    assert not out.exists() and partial.read_bytes() == b"".join(whole.splitlines(True)[:6])  # (header, 1 chunk)
    seen, real = [], PromptScorer.score_files
    monkeypatch.setattr(PromptScorer, "score_files", lambda self, files, *a, **k: seen.append(len(files))
                        or real(self, files, *a, **k))
    _score_run(tmp_path, tiny_clip_checkpoint, ids, out, resume=True)  # space freed
    assert seen == [5, 2, 5, 2] and out.read_bytes() == whole and not partial.exists()


def test_resume_of_the_same_paths_with_images_added_or_removed_is_told_to_start_over(tmp_path, tiny,
                                                                                   tiny_clip_checkpoint, monkeypatch):
    """The same folder as PATHS, with an image added to it or removed from it since the run
    started: --resume was told to "give the same PATHS, in the same order", which the user had
    given; only a run without --resume fits such a folder, and the line now says so."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=1)
    out, partial = tmp_path / "s.csv", tmp_path / "s.csv.partial"

    def score(*extra):
        return CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                        tiny_clip_checkpoint, "--workers", "0", "--out", str(out), *extra, str(id_dir)])

    _, real = _stop_after_chunks(monkeypatch, 0)
    assert score().exit_code == 130
    run = (tmp_path / "s.csv.partial.json").read_text()
    monkeypatch.setattr(PromptScorer, "score_files", real)
    assert score().exit_code == 0
    whole = out.read_text().splitlines(True)

    def resumed():
        partial.write_text("".join(whole))
        (tmp_path / "s.csv.partial.json").write_text(run)
        return score("--resume")

    blue, green, red = sorted(id_dir.rglob("*.png"))
    kept = red.read_bytes()
    red.unlink()  # the last image: row 3 is of no file left
    res = resumed()
    assert res.exit_code == 1 and f"row 3 of {partial} ({red}) is no later image of PATHS" in res.output
    assert res.output.rstrip().endswith("or run without --resume"), res.output
    red.write_bytes(kept)
    (blue.parent / "0a.png").write_bytes(blue.read_bytes())  # an image added between rows 1 and 2
    res = resumed()
    assert res.exit_code == 1 and f"row 2 of {partial} is not the row of {blue.parent / '0a.png'}" in res.output
    assert res.output.rstrip().endswith("or run without --resume"), res.output
    assert score().exit_code == 0 and len(out.read_text().splitlines()) == len(whole) + 1  # (the advice)


def test_an_image_added_while_a_resume_loads_its_model_is_not_scored_twice(tmp_path, tiny, tiny_clip_checkpoint,
                                                                           monkeypatch):
    """--resume checks the partial's rows against a listing of PATHS, then loads the model (seconds,
    for ViT-B-16), then lists PATHS again and skips as many files as rows were kept. An image
    added to a folder in between (a cron job copying into it) and sorted before the resume point
    shifts that count: the 12 ID images in chunks of 5, stopped after 10 rows, and blue/0a.png
    added while the model loads, gave red/1.png (the 10th image) two rows and 0a.png none.
    The run must refuse (PATHS changed) or write each image of one listing once."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=4)
    out = tmp_path / "s.csv"
    seen, real_score = _stop_after_chunks(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _score_run(tmp_path, tiny_clip_checkpoint, [id_dir], out)
    monkeypatch.setattr(PromptScorer, "score_files", real_score)
    real_from_file = PromptScorer.from_file.__func__
    added = id_dir / "val" / "blue" / "0a.png"

    def added_while_loading(cls, *a, **k):
        shutil.copy(id_dir / "val" / "blue" / "0.png", added)
        return real_from_file(cls, *a, **k)

    monkeypatch.setattr(PromptScorer, "from_file", classmethod(added_while_loading))
    try:
        _score_run(tmp_path, tiny_clip_checkpoint, [id_dir], out, resume=True)
    except UserError as e:  # (refused: PATHS changed since the rows were checked)
        assert "PATHS" in str(e) and "\n" not in str(e)
        return
    rows = [r["path"] for r in read_csv(out)]
    assert len(rows) == len(set(rows)), "an image scored twice"
    assert rows == sorted(map(str, id_dir.rglob("*.png")))  # (each image of the one listing, 13)


def test_a_resume_past_every_file_checks_the_files_skipped_once_the_listing_ends(tmp_path):
    """A resume whose rows cover every file of PATHS (a run killed before OUT.partial was renamed)
    has no chunk left to score: the files skipped are still checked against those whose rows were
    checked (the SHA-256 of their paths, one a line), once the listing ends; a file removed since
    is refused, not passed over."""
    import hashlib

    import clip_smot.clip.score as score

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in "abc":
        Image.new("RGB", (4, 4)).save(folder / f"{name}.png")
    checked = hashlib.sha256("".join(f"{folder / name}.png\n" for name in "abc").encode()).hexdigest()
    assert list(score._chunks([[str(folder)]], 5, 3, None, checked)) == []
    (folder / "c.png").unlink()
    with pytest.raises(UserError, match=r"^--resume: the images of PATHS changed while the run started "):
        list(score._chunks([[str(folder)]], 5, 3, None, checked))

def test_an_image_list_rewritten_in_place_while_it_is_scored_gives_one_lists_rows(tmp_path, tiny, tiny_clip_checkpoint,
                                                                                  monkeypatch):
    """docs/score.md: an image list is read a line at a time, chunk by chunk, while the images are
    scored (hours for millions). A list rewritten in place meanwhile (a cron job's `find ... >
    list.txt`, a `cp`: the same inode, truncated and written) was read on from the byte where the
    reading stood: 2 lists of 48 images (lines of 188 bytes: 9 KB, more than the reader's 8 KB
    buffer), rewritten after the first chunk of 5: the CSV held 44 rows of the old list's images
    and 4 of the new one's. The CSV must be one list's rows, or the run refused in one line."""
    import io
    from pathlib import Path

    make_prompt(tmp_path / "p.safetensors", tiny)
    png = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(png, format="PNG")
    pad = "x" * 180
    for v in "ab":
        for i in range(48):
            (tmp_path / f"{v}{i:02d}{pad}.png").write_bytes(png.getvalue())
    old, new = ("".join(f"{v}{i:02d}{pad}.png\n" for i in range(48)) for v in "ab")
    assert len(old) == len(new) == 48 * 188 > 8192
    listed = tmp_path / "list.txt"
    listed.write_text(old)
    real = PromptScorer.score_files

    def rewritten_after_the_first_chunk(self, files, *a, **k):
        result = real(self, files, *a, **k)
        if listed.read_text() == old:
            with open(listed, "r+") as f:  # (in place)
                f.truncate(0)
                f.write(new)
        return result

    monkeypatch.setattr(PromptScorer, "score_files", rewritten_after_the_first_chunk)
    out = tmp_path / "s.csv"
    try:
        _score_run(tmp_path, tiny_clip_checkpoint, [listed], out)
    except UserError as e:
        assert str(listed) in str(e) and "\n" not in str(e)
        return
    rows = [Path(r["path"]).name for r in read_csv(out)]
    assert len(rows) == 48 and len({r[0] for r in rows}) == 1  # (all the old list's, or all the new one's)


def test_rows_interrupted_by_ctrl_c_are_cut_back_and_the_interrupt_goes_on(tmp_path, monkeypatch):
    """Ctrl-C while a chunk's rows are flushed to OUT.partial: the rows are taken back (the
    partial holds whole chunks for --resume) and the KeyboardInterrupt goes on as it came."""
    import clip_smot.clip.score as score

    partial = tmp_path / "s.csv.partial"
    partial.write_text("path,class,class_index,mcm\n")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        score._append(partial, "a.png,red,0,0.5\n")
    assert partial.read_text() == "path,class,class_index,mcm\n"


def test_rows_whose_partial_cannot_be_opened_are_one_line(tmp_path):
    """OUT.partial that cannot be opened to append a chunk (replaced by a folder meanwhile): the
    one line of a failed write, with nothing to cut back (no size was read), not a TypeError from
    cutting the file to a size it never had."""
    import clip_smot.clip.score as score

    partial = tmp_path / "s.csv.partial"
    partial.mkdir()
    with pytest.raises(UserError) as e:
        score._append(partial, "a.png,red,0,0.5\n")
    assert str(e.value) == (f"--out {partial}: cannot be written (Is a directory); the rows before are kept: once "
                            "that is put right, the same command with --resume finishes it")
    assert partial.is_dir() and not any(partial.iterdir())


def test_a_partial_that_cannot_be_read_on_resume_is_one_line(tmp_path, monkeypatch):
    import clip_smot.clip.score as score

    partial = tmp_path / "s.csv.partial"
    partial.write_text("path,class,class_index,mcm\n")

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(score, "open", refused, raising=False)  # (the module's open: root reads any file)
    with pytest.raises(UserError) as e:
        score._resume_point(partial, ["path", "class", "class_index", "mcm"], [], CLASSES, False)
    assert str(e.value) == f"--resume: {partial} cannot be read (Permission denied)"


@pytest.mark.parametrize("fails", ["open", "truncate"])
def test_a_partial_that_cannot_be_cut_on_resume_is_one_line(tmp_path, monkeypatch, fails):
    """--resume cuts OUT.partial to its whole rows before it appends: on a file system remounted
    read-only (EROFS at the open for writing) or a disk that fails the truncate (EIO), that is
    one line naming the partial, which is left as it was, not a traceback."""
    import errno

    import clip_smot.clip.score as score

    partial = tmp_path / "s.csv.partial"
    rows = b"path,pred,pred_index,mcm\n" + b"a.png,cat,0,0.5\n" * 100  # (25 + 100 * 16 = 1,625 bytes)
    partial.write_bytes(rows + b"half a ro")
    real_open = open

    class NoTruncate:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def truncate(self, size):
            raise OSError(errno.EIO, "Input/output error")

    def opened(path, mode="r", *args, **kwargs):
        if fails == "open":
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return NoTruncate(real_open(path, mode, *args, **kwargs))

    monkeypatch.setattr(score, "open", opened, raising=False)
    with pytest.raises(UserError) as e:
        score._start_partial(partial, ["path", "pred", "pred_index", "mcm"], len(rows))
    reason = "Read-only file system" if fails == "open" else "Input/output error"
    assert str(e.value) == f"--resume: {partial} cannot be cut to its 1,625 bytes of whole rows ({reason})"
    assert partial.read_bytes() == rows + b"half a ro"


def test_a_float32_value_is_one_a_float32_holds_exactly_and_none_beyond_its_range():
    """--resume keeps a row whose scores are float32 values: 0.25 and float32's largest are, 0.1
    (a float64 between two float32s) is not, nor is 1e39 (beyond the range: no float32 at all)."""
    import clip_smot.clip.score as score

    largest = float(np.finfo(np.float32).max)
    assert score._float32(0.25) and score._float32(largest) and score._float32(-largest)
    assert not score._float32(0.1) and not score._float32(1e39) and not score._float32(-1e39)


def test_score_gives_odin_from_the_images_and_features_alone_give_neither_odin_nor_gl_mcm(tiny):
    """PromptScorer.score with odin among the scores runs ODIN on the images themselves (its
    input step needs them): the very scores of scorer.odin. From features alone ODIN and, without
    the patch features, GL-MCM cannot be computed: a ValueError says which."""
    scorer = PromptScorer(tiny, F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(4)), dim=-1),
                          CLASSES, precision="fp32")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    got = scorer.score(x, ["mcm", "odin"])
    assert set(got) == {"mcm", "odin", "pred_index"}
    torch.testing.assert_close(got["odin"], scorer.odin(x), rtol=0, atol=0)
    g = F.normalize(torch.randn(2, 32), dim=-1)
    with pytest.raises(ValueError, match=r"^odin needs the images, not their features"):
        scores_from_features(g, scorer.text_features, 100.0, ["odin"])
    with pytest.raises(ValueError, match=r"^gl-mcm needs local \(patch\) features$"):
        scores_from_features(g, scorer.text_features, 100.0, ["gl-mcm"])


def test_cosine_refuses_integer_images_or_reads_them_as_0_255(tiny):
    """cosine takes images in [0, 1]; torchvision.io reads uint8 0 .. 255, which CAMProvider and perturb refuse.
    Here a uint8 batch was normalised as if 200 meant 200.0 in [0, 1]: other features, no error. Either a
    TypeError naming the images, or the cosines of the same pixels / 255."""
    scorer = PromptScorer(tiny, F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(6)), dim=-1),
                          CLASSES, precision="fp32")
    pixels = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(7), dtype=torch.uint8)
    try:
        got = scorer.cosine(pixels)
    except TypeError as e:
        assert "images" in str(e)
    else:
        torch.testing.assert_close(got, scorer.cosine(pixels.float() / 255))


def test_score_of_a_float64_or_float16_tensor_of_preprocessed_images(tiny):
    """A batch preprocessed in numpy is float64 (torch.from_numpy keeps it); cosine() converts any float images,
    score() stopped in the first layer naming no argument. The scores of the float32 batch are expected (of
    its float16 rounding for float16), or a TypeError naming the images."""
    scorer = PromptScorer(tiny, F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(8)), dim=-1),
                          CLASSES, precision="fp32")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    for images, same_as in ((x.double(), x), (x.half(), x.half().float())):
        try:
            got = scorer.score(images, ["mcm", "energy"])
        except TypeError as e:
            assert "images" in str(e)
        else:
            want = scorer.score(same_as, ["mcm", "energy"])
            for k in want:
                torch.testing.assert_close(got[k], want[k])


def test_score_names_images_that_are_neither_a_tensor_nor_pil_images(tiny):
    """score() of a numpy batch stopped on "'numpy.ndarray' object has no attribute 'mode'", of a list of
    image tensors on "'builtin_function_or_method' object has no attribute 'startswith'". Either a TypeError
    naming the images, as the core functions name an argument that is no tensor, or the batch's own scores."""
    scorer = PromptScorer(tiny, F.normalize(torch.randn(3, 32), dim=-1), CLASSES, precision="fp32")
    x = torch.rand(2, 3, 32, 32)
    want = scorer.score(x, ["mcm"])
    for images in (x.numpy(), list(x)):
        try:
            got = scorer.score(images, ["mcm"])
        except TypeError as e:
            assert "images" in str(e)
        else:
            torch.testing.assert_close(got["mcm"], want["mcm"])
    # a tensor of integers (uint8 pixels, as torchvision.io reads them) is no batch of normalised images
    for dtype in (torch.uint8, torch.int64):
        with pytest.raises(TypeError, match=f"^images must be a list of PIL images or a float tensor of preprocessed "
                                            f"images, got {dtype}$"):
            scorer.score(torch.zeros(2, 3, 32, 32, dtype=dtype), ["mcm"])


def test_cosine_score_and_odin_refuse_images_of_another_shape_or_none(tiny):
    """Images at another size than the model's 32 stopped in open_clip ("The size of tensor a (5) must match
    the size of tensor b (17)"), channels-last ones likewise, a batch of no image in a reshape ("cannot
    reshape tensor of 0 elements"), score([]) in torch.stack ("stack expects a non-empty TensorList"); one
    image [3, 32, 32] was scored as a batch of one. Each is a ValueError naming the images and their shape."""
    scorer = PromptScorer(tiny, F.normalize(torch.randn(3, 32), dim=-1), CLASSES, precision="fp32")
    for x in (torch.rand(2, 3, 16, 16), torch.rand(2, 32, 32, 3), torch.rand(3, 32, 32), torch.rand(2, 3, 32, 16)):
        shape = re.escape(str(list(x.shape)))
        want = rf"^images must be a batch \[B, 3, 32, 32\] for clip-smot-tiny, got shape {shape}$"
        for call in (scorer.cosine, scorer.logits, lambda im: scorer.score(im, ["mcm"]), scorer.odin):
            with pytest.raises(ValueError, match=want):
                call(x)
    for call in (scorer.cosine, lambda im: scorer.score(im, ["mcm"]), scorer.odin):
        with pytest.raises(ValueError, match=r"^images must hold at least one image, got shape \[0, 3, 32, 32\]$"):
            call(torch.rand(0, 3, 32, 32))
    for empty in ([], ()):
        with pytest.raises(ValueError, match="^images must hold at least one image, got an empty list$"):
            scorer.score(empty, ["mcm"])


def test_scores_from_features_refuses_a_logit_scale_that_is_no_number():
    """PromptScorer.score finds non-finite scores afterwards; the public function itself returned NaN for msp,
    energy and maxlogit of finite unit features at logit_scale NaN, and None stopped on "unsupported operand
    type(s) for *: 'NoneType' and 'Tensor'". A ValueError or TypeError naming logit_scale."""
    image = torch.tensor([[0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for bad in (math.nan, None):
        with pytest.raises((ValueError, TypeError), match="logit_scale"):
            scores_from_features(image, text, bad, ["msp", "energy", "maxlogit"])
    # 0 or below, past float32 (the logits are float32: inf), a bool, or a tensor of integers or of two values
    for bad in (0.0, -1.0, math.inf, 1e39, True, torch.tensor(100), torch.tensor([1.0, 2.0])):
        with pytest.raises(ValueError, match="^logit_scale must be a number > 0 and finite in float32"):
            scores_from_features(image, text, bad, ["maxlogit"])
    # the largest it takes, float32's max: maxlogit = max * cos = max * 0.8 (class 1)
    top = torch.finfo(torch.float32).max
    for scale in (top, torch.tensor(top)):
        out = scores_from_features(image, text, scale, ["maxlogit"])
        assert out["maxlogit"].item() == pytest.approx(0.8 * top, rel=1e-6) and out["pred_index"].tolist() == [1]
