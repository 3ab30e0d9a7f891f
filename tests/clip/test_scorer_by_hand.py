"""CLIP-side scores by hand: MCM's and GL-MCM's temperature and local weight as passed, and the
scorer's own cosines and logits against open_clip's model run directly."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny  # noqa: F401 (fixture)

from clip_smot.clip.scorer import PromptScorer, scores_from_features


def _softmax_max(values, tau):
    e = [math.exp(v / tau) for v in values]
    return max(e) / sum(e)


def test_tau_and_local_weight_reach_mcm_and_gl_mcm():
    g = torch.tensor([[0.6, 0.8]])  # unit: cosines with the identity text are its coordinates
    local = torch.tensor([[[1.0, 0.0], [0.28, 0.96]]])  # two unit patches
    tau, w = 0.5, 0.25
    out = scores_from_features(g, torch.eye(2), 100.0, ["mcm", "gl-mcm", "msp"], local_features=local, tau=tau,
                               local_weight=w)
    mcm = _softmax_max([0.6, 0.8], tau)
    local_mcm = max(_softmax_max([1.0, 0.0], tau), _softmax_max([0.28, 0.96], tau))
    assert out["mcm"].item() == pytest.approx(mcm, abs=1e-6)
    assert out["gl-mcm"].item() == pytest.approx(mcm + w * local_mcm, abs=1e-6)
    assert out["msp"].item() == pytest.approx(_softmax_max([60.0, 80.0], 1.0), abs=1e-6)  # tau is MCM's alone


def test_gl_mcm_takes_each_patchs_cosine_with_each_class():
    """Three classes in four dimensions (the tests above use the identity as the text features, which
    is its own transpose): patch p's cosine with class k is local[p] . text[k], written out."""
    text = F.normalize(torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 1.0, 3.0, 0.0], [2.0, 0.0, 0.0, 1.0]]), dim=-1)
    g = F.normalize(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), dim=-1)
    local = F.normalize(torch.tensor([[[0.0, 0.0, 1.0, 0.0], [3.0, 1.0, 0.0, 2.0]]]), dim=-1)  # [1, 2, 4]

    def cosines(v):
        return [sum(a * b for a, b in zip(v.tolist(), t.tolist())) for t in text]

    out = scores_from_features(g, text, 100.0, ["gl-mcm"], local_features=local.half())  # (fp16, as cached)
    patches = [_softmax_max(cosines(local[0, p].half().float()), 1.0) for p in range(2)]
    assert out["gl-mcm"].item() == pytest.approx(_softmax_max(cosines(g[0]), 1.0) + max(patches), abs=1e-5)


def test_scorer_cosines_and_logits_are_open_clips(tiny):  # noqa: F811
    g = torch.Generator().manual_seed(0)
    text = torch.randn(3, tiny.config["embed_dim"], generator=g)
    scorer = PromptScorer(tiny, 4.0 * text, ["a", "b", "c"], precision="fp32")  # (not normalised on purpose)
    images = torch.rand(2, 3, 32, 32, generator=g)  # in [0, 1]
    size = tiny.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(tiny.mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny.std).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = F.normalize(tiny.model.encode_image((images - mean) / std).float(), dim=-1)
        scale = tiny.model.logit_scale.exp().item()
    want = feats @ F.normalize(text, dim=-1).T
    torch.testing.assert_close(scorer.cosine(images), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scorer.logits(images), scale * want, atol=1e-4, rtol=1e-5)
    assert abs(scale - 1.0) > 1e-3  # (the check above would not tell exp(logit_scale) from 1)


def _unit(rows, seed):
    return F.normalize(torch.randn(rows, 32, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_the_scorers_precision_reaches_its_cosines_and_odin(tiny, monkeypatch):  # noqa: F811
    """precision bf16: the image encoder runs under bfloat16 autocast for cosine (and logits) and
    for ODIN's two passes, not only for files' features."""
    from clip_smot.clip import features

    g = torch.Generator().manual_seed(1)
    text = torch.randn(3, tiny.config["embed_dim"], generator=g)
    images = torch.rand(2, 3, 32, 32, generator=g)  # in [0, 1], the tiny model's size
    mean, std = torch.tensor(tiny.mean).view(1, 3, 1, 1), torch.tensor(tiny.std).view(1, 3, 1, 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        f = tiny.model.encode_image((images - mean) / std)
    want = F.normalize(f.float(), dim=-1) @ F.normalize(text, dim=-1).T
    bf16 = PromptScorer(tiny, text, ["a", "b", "c"], precision="bf16").cosine(images)
    fp32 = PromptScorer(tiny, text, ["a", "b", "c"], precision="fp32").cosine(images)
    err, gap = (bf16 - want).abs().max().item(), (fp32 - want).abs().max().item()
    assert err < gap / 10, (err, gap)
    seen, real = [], features.autocast
    monkeypatch.setattr(features, "autocast", lambda device, precision, *a, **k: seen.append(precision)
                        or real(device, precision, *a, **k))
    PromptScorer(tiny, text, ["a", "b", "c"], precision="bf16").odin((images - mean) / std)
    assert seen == ["bf16", "bf16"]  # the pass for the gradient, the pass on the perturbed images


def test_parse_scores_lowers_strips_and_drops_repeats_and_empty_names():
    from clip_smot.clip.scorer import parse_scores
    from clip_smot.common.errors import UserError

    assert parse_scores(None) == ["mcm"]
    assert parse_scores(" MCM, energy,,mcm ,Energy") == ["mcm", "energy"]
    assert parse_scores(["GL-MCM", "odin", ""]) == ["gl-mcm", "odin"]
    with pytest.raises(UserError, match=r"^--scores: no score given \(known: mcm, msp, energy, "):
        parse_scores(" , ")
    with pytest.raises(UserError, match=r"^--x: unknown score 'auroc' \(known: mcm, "):
        parse_scores("mcm,auroc", flag="--x")
    for bad in (123, [None], ["mcm", 1], {"mcm"}):  # (stopped on "'int' object is not iterable" or .strip())
        with pytest.raises(TypeError, match=r"^--scores: score names must be a comma-separated string or a list "):
            parse_scores(bad)


def test_fit_id_train_needs_k_images_for_knn_and_a_residual_for_vim():
    from clip_smot import scores as S
    from clip_smot.clip.scorer import fit_id_train
    from clip_smot.common.errors import UserError

    x, text = _unit(S.KNN_K, 1), _unit(3, 2)
    torch.testing.assert_close(fit_id_train(x, text, 50.0, ["knn"])["knn_bank"], x)  # exactly k images: enough
    with pytest.raises(UserError, match=rf"^--id-train: knn needs at least {S.KNN_K} ID training images, "
                                        rf"found {S.KNN_K - 1}$"):
        fit_id_train(x[1:], text, 50.0, ["knn"])
    with pytest.raises(UserError, match=r"^--id-train: vim needs more \(and more varied\) training images"):
        fit_id_train(x[:3], text, 50.0, ["vim"])  # 3 images, principal dimension 16 of 32: no residual
    with pytest.raises(ValueError, match=r"^knn needs statistics of ID training features"):
        scores_from_features(x[:2], text, 50.0, ["mcm", "knn"], fitted={"react_threshold": 1.0})


def test_fitting_one_score_after_another_keeps_each_fit(tiny):  # noqa: F811
    """fit_id_train adds the statistics of the scores it is given to those fitted before: ReAct's
    threshold (the 90th percentile of the ID-train activations) stays when KNN's bank is fitted."""
    import numpy as np

    scorer = PromptScorer(tiny, _unit(3, 7), ["a", "b", "c"], precision="fp32")
    train = _unit(60, 8)
    scorer.fit_id_train(train, ["react"])
    scorer.fit_id_train(train, ["knn"])
    assert set(scorer.fitted) == {"react_threshold", "knn_bank"}
    assert float(scorer.fitted["react_threshold"]) == pytest.approx(np.percentile(train.numpy(), 90), rel=1e-5)
    torch.testing.assert_close(scorer.fitted["knn_bank"], train)
    scorer.check_scores(["react", "knn"])  # both fitted: nothing refused


def test_score_defaults_to_four_scores_and_refuses_unfitted_and_non_finite_ones(tiny):  # noqa: F811
    from clip_smot.clip.scorer import _check_finite_scores
    from clip_smot.common.errors import UserError

    scorer = PromptScorer(tiny, _unit(3, 3), ["a", "b", "c"], precision="fp32")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))  # preprocessed
    assert list(scorer.score(x)) == ["mcm", "msp", "energy", "maxlogit", "pred_index"]
    with pytest.raises(UserError, match=r"^--scores knn,vim: needs features of ID training images"):
        scorer.score(x, ["mcm", "knn", "vim"])
    scorer.text_features = scorer.text_features * 1e38  # (cosines up to 1e38: logits past float32, MCM's finite)
    scorer.logit_scale = torch.tensor(torch.finfo(torch.float32).max)  # (the largest it takes)
    with pytest.raises(UserError, match=r"^--scores energy: non-finite scores \(2 of 2 images, first image 0: -?inf\)$"):
        scorer.score(x, ["mcm", "energy"])
    out = {"mcm": torch.tensor([0.5, 0.7, 0.2]), "energy": torch.tensor([1.0, float("nan"), -float("inf")])}
    with pytest.raises(UserError, match=r"^--scores energy: non-finite scores \(2 of 3 images, first b\.png: nan\)$"):
        _check_finite_scores(out, ["mcm", "energy"], ["a.png", "b.png", "c.png"])


def test_text_features_must_be_one_finite_row_per_class(tiny):  # noqa: F811
    import re

    from clip_smot.common.errors import UserError

    text = _unit(3, 5)
    with pytest.raises(ValueError, match=r"text_features \(3, 32\) do not match 2 class names"):
        PromptScorer(tiny, text, ["a", "b"])
    text[1, 4] = float("nan")
    head = rf"^--pretrained {re.escape(tiny.pretrained)}: the text features are not finite, or of no length "
    with pytest.raises(UserError, match=head + r"\(1 of 3 classes, first 'b'\); the text encoder's weights"):
        PromptScorer(tiny, text, ["a", "b", "c"])
    text = _unit(3, 5)
    text[2] = 0.0  # (a row of norm 0, which F.normalize leaves zeros: every image would score alike on it)
    with pytest.raises(UserError, match=head + r"\(1 of 3 classes, first 'c'\)"):
        PromptScorer(tiny, text, ["a", "b", "c"])


def test_odin_of_files_names_an_unreadable_one(tiny, tmp_path):  # noqa: F811
    from PIL import Image

    from clip_smot.common.errors import UserError

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (40, 36), (200, 30, 30)).save(good)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    scorer = PromptScorer(tiny, _unit(3, 6), ["a", "b", "c"], precision="fp32")
    assert scorer.odin_files([str(good)], workers=0).shape == (1,)
    with pytest.raises(UserError, match="bad.png"):
        scorer.odin_files([str(good), str(bad)], workers=0)


def test_zero_shot_prompts_fill_the_template_given(tiny_clip_config, tiny_clip_checkpoint):
    clip_names = ["red", "green"]
    scorer = PromptScorer.zero_shot(clip_names, model=tiny_clip_config, pretrained=tiny_clip_checkpoint, device="cpu",
                                    template="a blurry photo of a {c}.")
    model = scorer.clip.model
    with torch.no_grad():
        want = F.normalize(model.encode_text(scorer.clip.tokenizer(["a blurry photo of a red.",
                                                                    "a blurry photo of a green."])).float(), dim=-1)
        plain = F.normalize(model.encode_text(scorer.clip.tokenizer(["a photo of a red", "a photo of a green"])).float(),
                            dim=-1)
    torch.testing.assert_close(scorer.text_features, want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(want, plain, atol=1e-3)
    assert scorer.source == "zero-shot prompts 'a blurry photo of a {c}.'"
    default = PromptScorer.zero_shot(clip_names, model=tiny_clip_config, pretrained=tiny_clip_checkpoint, device="cpu")
    assert default.source == "zero-shot prompts 'a photo of a {c}'"  # (the template used, as reports show it)
    torch.testing.assert_close(default.text_features, plain, atol=1e-6, rtol=1e-5)


def test_a_prompts_checkpoint_not_found_or_another_is_said_once(tmp_path, monkeypatch):
    """The checkpoint a prompt names is looked for next to it and in the current folder: none
    there is said so; another file of that name is named once, though both places are one folder
    here; the file itself is taken. A prompt of random weights (no name, no SHA-256) needs none."""
    import hashlib
    import re
    from types import SimpleNamespace

    from clip_smot.clip.scorer import resolve_pretrained
    from clip_smot.common.errors import UserError

    monkeypatch.chdir(tmp_path)
    prompt = SimpleNamespace(pretrained="model.bin", checkpoint_sha256=hashlib.sha256(b"weights").hexdigest(),
                             path=str(tmp_path / "p.safetensors"))
    head = (rf"^--pretrained: {re.escape(prompt.path)} was made with the checkpoint file model.bin "
            rf"\(sha256 {prompt.checkpoint_sha256[:12]}\.\.\.\); ")
    with pytest.raises(UserError, match=head + r"it is not next to the prompt nor in the current folder; "
                                               r"pass --pretrained path/to/model.bin$"):
        resolve_pretrained(prompt)
    (tmp_path / "model.bin").write_bytes(b"other weights")
    with pytest.raises(UserError, match=head + rf"{re.escape(str((tmp_path / 'model.bin').resolve()))} is another "
                                               r"file of that name; pass --pretrained path/to/model.bin$"):
        resolve_pretrained(prompt)
    (tmp_path / "model.bin").write_bytes(b"weights")
    assert resolve_pretrained(prompt) == str(tmp_path / "model.bin")
    assert resolve_pretrained(SimpleNamespace(pretrained="", checkpoint_sha256="", path=prompt.path)) == ""


def test_a_prompts_recorded_name_without_a_sha256_must_be_a_tag(tmp_path, monkeypatch):
    """A prompt whose 'pretrained' was a file name with no checkpoint_sha256 (a hand-edited or
    foreign file) had load_clip read whatever file of that name the current folder held, as
    weights, unchecked: score ran with them, exit 0. Only a tag of its model is read so."""
    import re
    from types import SimpleNamespace

    from clip_smot.clip.scorer import resolve_pretrained
    from clip_smot.common.errors import UserError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.safetensors").write_bytes(b"weights")
    prompt = SimpleNamespace(model="clip-smot-tiny", pretrained="tiny.safetensors", checkpoint_sha256="",
                             path=str(tmp_path / "p.safetensors"))
    with pytest.raises(UserError, match=rf"^--prompt {re.escape(prompt.path)}: metadata 'pretrained' "
                                        r"'tiny.safetensors' is no pretrained tag of clip-smot-tiny, and names no "
                                        r"checkpoint file \(no checkpoint_sha256\); pass --pretrained$"):
        resolve_pretrained(prompt)
    tag = SimpleNamespace(model="ViT-B-16", pretrained="openai", checkpoint_sha256="", path=prompt.path)
    assert resolve_pretrained(tag) == "openai"  # (a tag: loaded as one, a file named openai here or not)


@pytest.mark.parametrize("pretrained, sha", [("../weights/model.bin", "ab" * 32), ("hf-hub:someone/weights", "")])
def test_a_prompts_recorded_weights_must_be_a_plain_name(tmp_path, pretrained, sha):
    """A prompt's stored checkpoint name (or tag) joins a folder: one with a folder in it, or an
    open_clip schema, is refused, naming the prompt."""
    import re
    from types import SimpleNamespace

    from clip_smot.clip.scorer import resolve_pretrained
    from clip_smot.common.errors import UserError

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.bin").write_bytes(b"weights")
    prompt = SimpleNamespace(pretrained=pretrained, checkpoint_sha256=sha, path=str(tmp_path / "run" / "p.safetensors"))
    with pytest.raises(UserError, match=rf"^--prompt {re.escape(prompt.path)}: metadata 'pretrained': "
                                        rf"'{re.escape(pretrained)}' is not a plain name .*; pass --pretrained$"):
        resolve_pretrained(prompt)


def _tiny_images(tiny, seed):  # noqa: F811
    """Two random images [2, 3, S, S] in [0, 1] and their normalised form, of the tiny model's size."""
    size = tiny.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    mean, std = torch.tensor(tiny.mean).view(1, 3, 1, 1), torch.tensor(tiny.std).view(1, 3, 1, 1)
    return images, (images - mean) / std, std


def test_scorer_odin_is_liangs_on_open_clips_logits(tiny):  # noqa: F811
    """ODIN (Liang et al., 2018; T = 1000, eps = 0.0014, as MCM runs it) by hand on open_clip's
    model run directly: the logits logit_scale.exp() * cos(image, text), one step of eps / std
    against the sign of the gradient of the cross-entropy at T with the predicted class, then the
    max softmax at T of the stepped images' logits."""
    text = torch.randn(3, tiny.config["embed_dim"], generator=torch.Generator().manual_seed(2))
    _, x, std = _tiny_images(tiny, 3)
    T, eps = 1000.0, 0.0014
    scale = tiny.model.logit_scale.exp().item()

    def logits(v):
        return scale * F.normalize(tiny.model.encode_image(v).float(), dim=-1) @ F.normalize(text, dim=-1).T

    v = x.clone().requires_grad_(True)
    out = logits(v)
    F.cross_entropy(out / T, out.argmax(dim=-1)).backward()
    stepped = x - eps * torch.where(v.grad >= 0, 1.0, -1.0) / std
    with torch.no_grad():
        want = torch.softmax(logits(stepped) / T, dim=-1).max(dim=-1).values
    got = PromptScorer(tiny, text, ["a", "b", "c"], precision="fp32").odin(x)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=0)
    assert abs(scale - 1.0) > 1e-3  # (the check above would not tell exp(logit_scale) from 1)


def test_score_gives_a_fitted_score_of_the_id_train_features(tiny):  # noqa: F811
    """PromptScorer.score (of images) and score_features (of cached features) with knn after
    fit_id_train: minus the distance of each image's normalised open_clip feature to its 50th
    nearest ID-train feature (Sun et al., 2022), the neighbours found by scikit-learn."""
    from sklearn.neighbors import NearestNeighbors

    from clip_smot.clip.features import ImageFeatures

    text = torch.randn(3, tiny.config["embed_dim"], generator=torch.Generator().manual_seed(4))
    train = F.normalize(torch.randn(60, tiny.config["embed_dim"], generator=torch.Generator().manual_seed(5)), dim=-1)
    _, x, _ = _tiny_images(tiny, 6)
    scorer = PromptScorer(tiny, text, ["a", "b", "c"], precision="fp32")
    scorer.fit_id_train(train, ["knn"])
    got = scorer.score(x, ["knn"])
    with torch.no_grad():
        feats = F.normalize(tiny.model.encode_image(x).float(), dim=-1)
    distances, _ = NearestNeighbors(n_neighbors=50).fit(train.numpy()).kneighbors(feats.numpy())
    want = torch.from_numpy(-distances[:, -1]).float()
    torch.testing.assert_close(got["knn"], want, atol=1e-5, rtol=0)
    cached = scorer.score_features(ImageFeatures(["a.png", "b.png"], feats, None, []), ["knn"], chunk=1)
    torch.testing.assert_close(cached["knn"], want, atol=1e-5, rtol=0)
