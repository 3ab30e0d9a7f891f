"""The CLIP track's post-hoc baselines of Table 8 (odin, gradnorm, react, knn, vim): each against an
independent computation (autograd, numpy), and `clip-smot eval` writing a row for every score."""

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import (  # noqa: F401 (fixtures)
    CLASSES,
    _cache_in_tmp,
    _train_folder,
    make_folders,
    make_prompt,
    tiny,
)

from clip_smot.cli import cli
from clip_smot.clip.evaluate import id_train_paths
from clip_smot.clip.fewshot import draw_split, resolve_classes, split_text
from clip_smot.clip.scorer import PromptScorer, fit_id_train, scores_from_features
from clip_smot.common.errors import UserError


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_gradnorm_is_the_l1_norm_of_the_kl_gradient_wrt_the_text_head():
    """GradNorm (Huang et al., 2021) with the text features as the head: autograd of
    KL(uniform || softmax(scale * x T^T)) with respect to T, one image at a time."""
    x, text, scale = _unit(5, 8, seed=1), _unit(4, 8, seed=2), 30.0
    got = scores_from_features(x, text, scale, ["gradnorm"])["gradnorm"]
    for i in range(5):
        T = text.clone().double().requires_grad_(True)
        p = (scale * x[i].double() @ T.T).softmax(-1)
        u = torch.full_like(p, 1 / 4)
        kl = (u * (u.log() - p.log())).sum()
        (g,) = torch.autograd.grad(kl, T)
        assert got[i].item() == pytest.approx(g.abs().sum().item(), rel=1e-5)


def test_react_knn_vim_by_numpy():
    train, x, text, scale = _unit(60, 6, seed=3), _unit(7, 6, seed=4), _unit(3, 6, seed=5), 20.0
    fitted = fit_id_train(train, text, scale, ["react", "knn", "vim"])
    got = scores_from_features(x, text, scale, ["react", "knn", "vim"], fitted=fitted)
    X, Q, W = train.double().numpy(), x.double().numpy(), scale * text.double().numpy()
    lse = lambda z: np.log(np.exp(z).sum(-1))  # noqa: E731
    # ReAct: clip at the 90th percentile of the ID-train activations, then energy
    c = np.percentile(X.ravel(), 90)
    np.testing.assert_allclose(got["react"].numpy(), lse(np.minimum(Q, c) @ W.T), rtol=1e-5)
    # KNN: minus the Euclidean distance to the 50th nearest (unit) training feature
    d = np.sort(np.linalg.norm(Q[:, None] - X[None], axis=-1), axis=1)[:, 49]
    np.testing.assert_allclose(got["knn"].numpy(), -d, rtol=1e-5)
    # ViM (Wang et al., 2022), OpenOOD's recipe: no bias -> origin 0; principal space of C // 2 = 3 dims
    evals, evecs = np.linalg.eigh(X.T @ X / len(X))
    NS = evecs[:, np.argsort(evals)[::-1][3:]]
    alpha = (X @ W.T).max(-1).mean() / np.linalg.norm(X @ NS, axis=-1).mean()
    np.testing.assert_allclose(got["vim"].numpy(), lse(Q @ W.T) - alpha * np.linalg.norm(Q @ NS, axis=-1), rtol=1e-4)


def test_odin_through_the_frozen_image_encoder_by_hand(tiny):
    """ODIN (Liang et al., 2018): the gradient of CE(logits / T, argmax) through open_clip's own
    encode_image, a step of eps against its sign in pixel units, then max softmax(logits / T)."""
    text = _unit(3, 32, seed=6)
    scorer = PromptScorer(tiny, text, CLASSES)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    std = torch.tensor(tiny.std).view(1, 3, 1, 1)
    scale = tiny.model.logit_scale.exp().item()

    def logits(v):
        f = tiny.model.encode_image(v)
        return scale * (f / f.norm(dim=-1, keepdim=True)) @ text.T

    want = []
    for i in range(4):
        v = x[i:i + 1].clone().requires_grad_(True)
        z = logits(v) / 1000.0
        loss = -z.log_softmax(-1)[0, z.argmax()]
        loss.backward()
        step = torch.where(v.grad >= 0, 1.0, -1.0) / std
        with torch.no_grad():
            want.append((logits(v - 0.0014 * step) / 1000.0).softmax(-1).max().item())
    np.testing.assert_allclose(scorer.odin(x).numpy(), want, rtol=1e-5)
    assert not any(p.grad is not None for p in tiny.model.parameters())  # frozen: no gradient kept


ALL = ["mcm", "msp", "odin", "energy", "gradnorm", "vim", "knn", "gl-mcm", "react", "maxlogit"]


def _eval_with_id_train(tmp_path, tiny, checkpoint, scores, *extra):
    """Run `eval --id-train` of a tiny prompt on 3 images a class against 5 noise images (OOD set
    "noise"), ID-train from :func:`_train_folder`; (prompt, id, ood, train folders, out)."""
    prompt = tmp_path / "p.safetensors"
    make_prompt(prompt, tiny)
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=3, n_ood=5)
    train = _train_folder(tmp_path / "train")
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", checkpoint, "--id", str(id_dir),
                                   "--ood", f"noise={ood_dir}", "--id-train", str(train), "--scores", scores,
                                   "--workers", "0", "--batch-size", "4", *extra, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return prompt, id_dir, ood_dir, train, out


def test_eval_writes_every_score_and_score_agrees(tmp_path, tiny, tiny_clip_checkpoint):
    """`eval --scores mcm,msp,odin,energy,gradnorm,vim,knn,gl-mcm,...` writes a metrics row per score
    and OOD set; its odin/gradnorm equal those of `clip-smot score` (AUROC recomputed from them)."""
    from sklearn.metrics import roc_auc_score

    prompt, id_dir, ood_dir, train, out = _eval_with_id_train(tmp_path, tiny, tiny_clip_checkpoint, ",".join(ALL))
    with open(out / "metrics.csv") as f:
        rows = {(r["score"], r["ood_set"]): r for r in csv.DictReader(f)}
    assert {s for s, _ in rows} == set(ALL)
    report = json.loads((out / "metrics.json").read_text())
    assert report["id_train"]["n_images"] == 51 and report["id_train"]["vim"]["dim"] == 16

    cols = {}
    for name, path in (("id", id_dir), ("ood", ood_dir)):
        csv_out = tmp_path / f"{name}.csv"
        res = CliRunner().invoke(cli, ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint,
                                       "--scores", "odin,gradnorm", "--workers", "0", "--out", str(csv_out), str(path)])
        assert res.exit_code == 0, res.output
        with open(csv_out) as f:
            cols[name] = list(csv.DictReader(f))
    for score in ("odin", "gradnorm"):
        a = [float(r[score]) for r in cols["id"]]
        b = [float(r[score]) for r in cols["ood"]]
        auroc = roc_auc_score([1] * len(a) + [0] * len(b), a + b)
        assert float(rows[(score, "noise")]["auroc"]) == pytest.approx(100 * auroc, abs=0.01)


def test_score_refuses_the_fitted_scores_in_one_line(tmp_path, tiny, tiny_clip_checkpoint):
    prompt = tmp_path / "p.safetensors"
    make_prompt(prompt, tiny)
    id_dir, _ = make_folders(tmp_path, n_per_class=1, n_ood=1)
    res = CliRunner().invoke(cli, ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint,
                                   "--scores", "knn", "--workers", "0", "--out", str(tmp_path / "s.csv"), str(id_dir)])
    assert res.exit_code == 1 and "--scores knn" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "s.csv").exists()


def test_eval_zero_shot_fitted_scores_need_id_train(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=1, n_ood=1)
    res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained",
                                   tiny_clip_checkpoint, "--id", str(id_dir), "--ood", f"x={ood_dir}", "--scores",
                                   "knn", "--workers", "0", "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and "--id-train" in res.output and "Traceback" not in res.output


def test_id_train_images_that_are_test_images_are_refused_before_encoding(tmp_path, tiny, tiny_clip_checkpoint,
                                                                          monkeypatch):
    """--id-train DATA, searched whole, took DATA/id/val (the ID set) and the OOD images into the
    fitted scores' training images: KNN found each of them at distance 0 from itself, and the
    metrics came out without a word. Any test image among them stops the run, naming its set."""
    from clip_smot.clip import scorer as scorer_module

    prompt = tmp_path / "p.safetensors"
    make_prompt(prompt, tiny)
    id_dir, ood_dir = make_folders(tmp_path / "data", n_per_class=1, n_ood=2)
    train = _train_folder(tmp_path / "train")
    (train / "red" / "link.png").symlink_to(ood_dir / "x" / "y" / "1.jpg")  # (one OOD image, through a link)
    monkeypatch.setattr(scorer_module.PromptScorer, "score_files", lambda *a, **k: pytest.fail("encoded"))
    base = ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id", str(id_dir), "--ood",
            f"noise={ood_dir}", "--scores", "mcm,react", "--workers", "0"]
    for id_train, what, n in ((tmp_path / "data", "the ID set (--id)", 3), (train, "the OOD set noise (--ood)", 1)):
        res = CliRunner().invoke(cli, [*base, "--id-train", str(id_train), "--out", str(tmp_path / "e")])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert res.output.startswith(f"Error: --id-train: {n} of the {2 if n == 1 else 3} images of {what} are ID "
                                     "training images too, e.g. "), res.output
    assert not (tmp_path / "e").exists()


def test_id_train_defaults_to_the_prompts_few_shot_images(tmp_path, capsys):
    """The prompt's data and split.txt (next to it), or the split drawn again from its shots and
    seed, checked against the SHA-256 the prompt records; --split and --id-train choose others.
    The folder a prompt names is read, so a note says which (a prompt file may name any)."""
    root = _train_folder(tmp_path / "data" / "train", n_per_class=5)
    classes = resolve_classes(root)
    split = draw_split(classes, 2, 3)
    sha = hashlib.sha256(split_text(split).encode()).hexdigest()
    config = {"data": str(root), "shots": 2, "seed": 3, "split": None, "run": {"split_sha256": sha}}
    prompt = tmp_path / "run" / "prompt.safetensors"
    prompt.parent.mkdir()
    want = [str(root / rel) for rel, _ in split]
    assert id_train_paths(str(prompt), config, None, None) == want  # drawn again
    assert capsys.readouterr().err == (f"note: the fitted scores use the 6 training images of {root}, the folder "
                                       f"{prompt} records; --id-train DIR names another\n")
    (prompt.parent / "split.txt").write_text(split_text(split))
    assert id_train_paths(str(prompt), config, None, None) == want  # read from beside the prompt
    other = draw_split(classes, 2, 4)
    (prompt.parent / "split.txt").write_text(split_text(other))
    with pytest.raises(UserError, match="not the split"):
        id_train_paths(str(prompt), config, None, None)
    (tmp_path / "other.txt").write_text(split_text(other))
    assert id_train_paths(str(prompt), config, None, str(tmp_path / "other.txt")) == \
        [str(root / rel) for rel, _ in other]
    assert len(id_train_paths(str(prompt), config, str(root), None)) == 15  # a folder: all its images
    for p, c in ((str(prompt), config), (None, None)):  # a folder and a split: the split's images of it
        assert id_train_paths(p, c, str(root), str(tmp_path / "other.txt")) == [str(root / rel) for rel, _ in other]
    with pytest.raises(UserError, match="does not record"):
        id_train_paths(str(prompt), {"test": True}, None, None)


@pytest.mark.parametrize("scores", [
    "mcm,react",
    "mcm",
    "mcm,react --id-train",
])
@pytest.mark.parametrize("where", ["red/eval", "eval"])
def test_an_out_inside_the_training_folder_the_prompt_records_is_refused(tmp_path, tiny, tiny_clip_checkpoint,
                                                                        monkeypatch, where, scores):
    """Without --id-train the fitted scores read the prompt's own data folder, but an --out inside
    it was not refused (an --id-train folder given is): the report went into a class folder of
    the training images, where the next fit would train on scores_hist.png. An --out beside the
    class folders ("eval") was made (the lock on it) before the training folder was read: it was
    read as a class of no images, and the run stopped on that, not on --out. With no fitted
    score (the default, mcm) the folder is not read by eval, but the report left there is read
    by the next fit of that data: `fit --shots 1` trained a prompt with a fourth class "eval" whose
    one image was scores_hist.png (at --shots 2 it stopped: "class 'eval' has only 1 image")."""
    from clip_smot.clip import scorer as scorer_module
    from clip_smot.clip.prompt_file import save_prompt

    root = _train_folder(tmp_path / "data" / "train", n_per_class=2)
    prompt = tmp_path / "run" / "prompt.safetensors"
    prompt.parent.mkdir()
    g = torch.Generator().manual_seed(0)
    save_prompt(prompt, torch.randn(4, 32, generator=g), _unit(3, 32), tiny.identity(), 4, "end", False,
                list(CLASSES), {"data": str(root), "shots": 1, "seed": 3, "split": None})
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=1, n_ood=1)
    monkeypatch.setattr(scorer_module.PromptScorer, "score_files", lambda *a, **k: pytest.fail("encoded"))
    out = root / where
    scores, *id_train = scores.split(" ")  # (an --id-train given: the recorded folder is not eval's ID-train)
    extra = ["--id-train", str(_train_folder(tmp_path / "other", n_per_class=2))] if id_train else []
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id",
                                   str(id_dir), "--ood", f"x={ood_dir}", "--scores", scores, "--workers", "0",
                                   *extra, "--out", str(out)])
    what = ("the ID-train folder the prompt records" if "react" in scores and not id_train else
            "the training folder the prompt records")
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == (
        f"Error: --out {out}: is inside {what} {root}, whose files are read as input; write to a place outside it")
    assert not out.exists()


@pytest.mark.parametrize("data", [1.5, ["train"], 2**64, "FD", ""])
def test_a_recorded_data_folder_that_is_no_string_is_one_line(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch,
                                                              data):
    """Found by fuzzing: the fitted scores without --id-train read the prompt's config "data", which
    the file may make any JSON value; the number of an open directory's file descriptor passed
    os.path.isdir, then os.path.realpath raised TypeError; "" read the working folder."""
    import os

    from clip_smot.clip import scorer as scorer_module
    from clip_smot.clip.prompt_file import save_prompt

    if data == "FD":
        data = os.open(tmp_path, os.O_RDONLY)  # (an open directory: os.path.isdir(fd) is True)
    prompt = tmp_path / "run" / "prompt.safetensors"
    prompt.parent.mkdir()
    save_prompt(prompt, torch.randn(4, 32), _unit(3, 32), tiny.identity(), 4, "end", False, list(CLASSES),
                {"data": data, "shots": 1, "seed": 3, "split": None})
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=1, n_ood=1)
    monkeypatch.setattr(scorer_module.PromptScorer, "score_files", lambda *a, **k: pytest.fail("encoded"))
    try:
        res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id",
                                       str(id_dir), "--ood", f"x={ood_dir}", "--scores", "mcm,react", "--workers", "0",
                                       "--out", str(tmp_path / "eval")])
    finally:
        if isinstance(data, int) and data < 2**31:
            os.close(data)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), repr(res.exception)
    assert len(lines) == 1 and lines[0] == (f"Error: --id-train: react, knn and vim are fitted on ID training images, "
                                            f"and {prompt} does not record its training data; pass --id-train DIR")


@pytest.mark.parametrize("field, value, error", [
    # without a recorded SHA-256, shots -3 kept all but 3 images of each class, saying nothing
    ("shots", -3, r"shots must be a positive integer, not -3$"),
    ("shots", 0, r"shots must be a positive integer, not 0$"),
    ("shots", True, r"shots must be a positive integer, not True$"),
    ("shots", "2", r"shots must be a positive integer, not '2'$"),
    # a ValueError traceback in numpy's default_rng
    ("seed", -1, r"seed must be an integer in \[0, 9223372036854775807\], not -1$"),
    ("seed", 2**64, r"seed must be an integer in \[0, 9223372036854775807\], not 18446744073709551616$"),
    ("seed", 1.5, r"seed must be an integer in .*, not 1.5$"),
    ("seed", None, r"seed must be an integer in .*, not None$"),
    # found by fuzzing: more shots than a class has images was "--shots 7: class 'blue' (...) has only 5
    # images", naming a flag eval does not have, and not the file the number came from
    ("shots", 7, r"shots 7: class 'blue' \(.*\) has only 5 images; pass --id-train DIR$"),
])
def test_the_prompts_recorded_shots_and_seed_are_checked(tmp_path, field, value, error):
    root = _train_folder(tmp_path / "data" / "train", n_per_class=5)
    config = {"data": str(root), "shots": 2, "seed": 3, "split": None, field: value}  # (no split_sha256)
    prompt = tmp_path / "run" / "prompt.safetensors"
    with pytest.raises(UserError, match=rf"^--prompt {prompt}: its recorded {error}"):
        id_train_paths(str(prompt), config, None, None)


def test_a_prompts_training_folder_or_split_file_that_is_not_there_is_named(tmp_path):
    """Without --id-train, the fitted scores read what the prompt records: a data folder that is
    gone, or a split file that is not next to the prompt, is said (a new draw from the folder
    would fit the scores on images the prompt never saw)."""
    root = _train_folder(tmp_path / "data" / "train", n_per_class=5)
    prompt = tmp_path / "run" / "prompt.safetensors"
    prompt.parent.mkdir()
    gone = tmp_path / "moved" / "train"
    # (--id-train DIR alone would take every image of DIR, not the prompt's few: its split is named too)
    for split, named in ((None, "SPLIT.txt"), (prompt.parent / "split.txt", prompt.parent / "split.txt")):
        if split:
            split.write_text("")
        with pytest.raises(UserError, match=rf"^--id-train: {prompt} was fitted on {gone}, which is not there; "
                                            rf"pass --id-train DIR, where its images are now, with --split {named} "
                                            r"for the prompt's few-shot images \(DIR alone gives all of DIR's\)$"):
            id_train_paths(str(prompt), {"data": str(gone), "shots": 2, "seed": 3, "split": None}, None, None)
    (prompt.parent / "split.txt").unlink()
    config = {"data": str(root), "shots": 2, "seed": 3, "split": str(tmp_path / "elsewhere" / "split.txt")}
    with pytest.raises(UserError, match=rf"^--split: {prompt} was fitted on a split file that is not next to it; "
                                        r"pass --split SPLIT.txt$"):
        id_train_paths(str(prompt), config, None, None)


def test_eval_fits_react_knn_vim_on_the_id_train_features_and_scores_each_set(tmp_path, tiny, tiny_clip_checkpoint,
                                                                               monkeypatch):
    """`eval --id-train` fits react, knn and vim on the ID-train images' global features (every
    one of them) and applies them to each test set's features: numpy from the encoded features,
    as in test_react_knn_vim_by_numpy; metrics.json reports the threshold, ViM's fit and n."""
    from clip_smot.clip import evaluate as clip_eval
    from clip_smot.clip.features import encode_files

    seen = {}

    def spy(out, id_scores, ood_scores, **kw):
        seen.update(id=id_scores, **ood_scores)
        return real(out, id_scores, ood_scores, **kw)

    real = clip_eval.write_reports
    monkeypatch.setattr(clip_eval, "write_reports", spy)
    prompt, id_dir, ood_dir, train, out = _eval_with_id_train(tmp_path, tiny, tiny_clip_checkpoint, "react,knn,vim",
                                                              "--no-cache")
    scorer = PromptScorer.from_file(str(prompt), pretrained=tiny_clip_checkpoint, device="cpu")
    W = float(scorer.logit_scale) * scorer.text_features.double().numpy()  # [K, e]: the head, no bias

    def feats(folder):
        paths = sorted(str(p) for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))
        return encode_files(tiny, paths, workers=0, use_cache=False).global_.double().numpy()

    X = feats(train)  # [51, 32]
    lse = lambda z: np.log(np.exp(z).sum(-1))  # noqa: E731
    c = np.percentile(X.ravel(), 90)
    evals, evecs = np.linalg.eigh(X.T @ X / len(X))
    NS = evecs[:, np.argsort(evals)[::-1][16:]]  # principal space of C // 2 = 16 dims
    alpha = (X @ W.T).max(-1).mean() / np.linalg.norm(X @ NS, axis=-1).mean()
    report = json.loads((out / "metrics.json").read_text())
    assert report["id_train"]["n_images"] == 51 and report["id_train"]["scores"] == ["react", "knn", "vim"]
    assert report["id_train"]["react_threshold"] == pytest.approx(c, rel=1e-5)
    assert report["id_train"]["vim"]["dim"] == 16 and report["id_train"]["vim"]["alpha"] == pytest.approx(alpha, rel=1e-4)
    for name, folder in (("id", id_dir), ("noise", ood_dir)):
        Q = feats(folder)
        want = {"react": lse(np.minimum(Q, c) @ W.T),
                "knn": -np.sort(np.linalg.norm(Q[:, None] - X[None], axis=-1), axis=1)[:, 49],
                "vim": lse(Q @ W.T) - alpha * np.linalg.norm(Q @ NS, axis=-1)}
        for score, values in want.items():  # sorted: eval's image order is its own
            # (vim multiplies the features' residual by alpha, about 1000 for this tiny model, whose features
            # have almost none: their float32 rounding, eval's batches of 4 against 256 here, about 1e-7 of
            # these unit vectors, gave 4e-5 on an AMD EPYC's AVX512 kernels)
            atol = 1e-5 + (2e-7 * alpha if score == "vim" else 0)
            np.testing.assert_allclose(np.sort(seen[name][score]), np.sort(values), rtol=1e-4, atol=atol,
                                       err_msg=f"{score} on {name}")


def test_eval_split_chooses_the_id_train_images_of_the_fitted_scores(tmp_path, tiny, tiny_clip_checkpoint):
    """`eval --id-train DIR --split SPLIT.txt` fits react on the split's images of DIR only:
    their number, and the 90th percentile of their features (numpy), in metrics.json."""
    from clip_smot.clip.features import encode_files

    prompt = tmp_path / "p.safetensors"
    make_prompt(prompt, tiny)
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=2, n_ood=3)
    root = _train_folder(tmp_path / "train", n_per_class=5)
    split = draw_split(resolve_classes(root), 2, 3)  # 6 of the 15 images
    (tmp_path / "split.txt").write_text(split_text(split))
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id",
                                   str(id_dir), "--ood", f"noise={ood_dir}", "--id-train", str(root), "--split",
                                   str(tmp_path / "split.txt"), "--scores", "react", "--workers", "0", "--no-cache",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    X = encode_files(tiny, [str(root / rel) for rel, _ in split], workers=0, use_cache=False).global_.numpy()
    fit = json.loads((out / "metrics.json").read_text())["id_train"]
    assert fit["n_images"] == 6 and fit["react_threshold"] == pytest.approx(np.percentile(X.ravel(), 90), rel=1e-5)
