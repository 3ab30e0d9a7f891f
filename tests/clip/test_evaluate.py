"""clip-smot eval (CLIP track): metric files against scikit-learn on the score CSVs; eval data layouts."""

import csv
import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import CLASSES, _cache_in_tmp, make_folders, make_prompt, read_csv, tiny  # noqa: F401 (fixtures)
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from clip_smot.cli import cli
from clip_smot.common.errors import UserError
from clip_smot.common.image_sets import (
    folder_classnames,
    id_set,
    image_set,
    imagenet_wnid_names,
)

ALL = ["mcm", "msp", "energy", "maxlogit", "gl-mcm"]


def fpr95_by_hand(pos, neg):
    """Fraction of negatives scored >= the score that accepts 95% of the positives."""
    k = math.ceil(0.95 * len(pos))
    t = np.sort(pos)[::-1][k - 1]
    return float(np.mean(neg >= t))


def score_csv(tmp_path, prompt, ckpt, path, name):
    out = tmp_path / f"{name}.csv"
    res = CliRunner().invoke(cli, ["score", "--prompt", str(prompt), "--pretrained", ckpt, "--scores", ",".join(ALL),
                                   "--workers", "0", "--no-cache", "--out", str(out), str(path)])
    assert res.exit_code == 0, res.output
    return read_csv(out)


@pytest.mark.parametrize("convention", ["id", "openood"])
def test_eval_agrees_with_sklearn_on_the_score_csvs(tmp_path, tiny, tiny_clip_checkpoint, convention):
    prompt = tmp_path / "p.safetensors"
    make_prompt(prompt, tiny)
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=7, n_ood=9)
    (tmp_path / "ood2").mkdir()
    rng = np.random.default_rng(5)
    for k in range(5):  # a second OOD set: flat grey-ish images
        Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8) + rng.integers(0, 9, (32, 32, 3)).astype(np.uint8)).save(
            tmp_path / "ood2" / f"{k}.png")
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id", str(id_dir),
                                   "--ood", f"noise={ood_dir}", "--ood", f"flat={tmp_path / 'ood2'}", "--scores",
                                   ",".join(ALL), "--fpr-convention", convention, "--workers", "2", "--batch-size", "8",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output

    id_rows = score_csv(tmp_path, prompt, tiny_clip_checkpoint, id_dir, "id")
    ood_rows = {"noise": score_csv(tmp_path, prompt, tiny_clip_checkpoint, ood_dir, "noise"),
                "flat": score_csv(tmp_path, prompt, tiny_clip_checkpoint, tmp_path / "ood2", "flat")}
    with open(out / "metrics.csv") as f:
        table = {(r["score"], r["ood_set"]): r for r in csv.DictReader(f)}
    assert len(table) == len(ALL) * 3
    for score in ALL:
        a = np.array([float(r[score]) for r in id_rows])
        avg = []
        for name, rows in ood_rows.items():
            b = np.array([float(r[score]) for r in rows])
            y = np.r_[np.ones(len(a)), np.zeros(len(b))]
            s = np.r_[a, b]
            fpr = fpr95_by_hand(a, b) if convention == "id" else fpr95_by_hand(-b, -a)
            expected = {"fpr95": fpr, "auroc": roc_auc_score(y, s), "aupr_in": average_precision_score(y, s),
                        "aupr_out": average_precision_score(1 - y, -s)}
            avg.append(expected)
            for k, v in expected.items():
                assert float(table[(score, name)][k]) == pytest.approx(100 * v, abs=0.01), (score, name, k)
        for k in avg[0]:
            assert float(table[(score, "average")][k]) == pytest.approx(100 * np.mean([m[k] for m in avg]), abs=0.01)

    report = json.loads((out / "metrics.json").read_text())
    # ID accuracy: the class folder of each image against the predicted class, from the score CSV
    acc = 100 * np.mean([r["pred"] == r["path"].split("/")[-2] for r in id_rows])
    assert report["id_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert report["fpr_convention"] == convention and report["n_images"] == {"id": 21, "noise": 9, "flat": 5}
    assert report["metrics"]["mcm"]["noise"]["auroc"] == pytest.approx(float(table[("mcm", "noise")]["auroc"]), abs=0.005)
    md = (out / "metrics.md").read_text()
    assert "| gl-mcm |" in md and "noise FPR95" in md and "ID accuracy" in md
    # (the title names the prompt, the model and its weights; "random weights" only for none)
    assert md.startswith(f"# Prompt p.safetensors (clip-smot-tiny, {Path(tiny_clip_checkpoint).name})\n")
    png = (out / "scores_hist.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "scores_hist.png") as im:
        im.verify()
    with Image.open(out / "scores_hist.png") as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    assert json.loads((out / "config.json").read_text())["scores"] == ALL


def test_eval_starts_its_decoding_workers_once_for_every_set(tmp_path, tiny_clip_config, tiny_clip_checkpoint,
                                                              monkeypatch):
    """The ID set and two OOD sets are decoded by the same 2 worker processes (one DataLoader
    iterator), with the metrics of decoding in the main process."""
    id_dir, ood_dir = make_folders(tmp_path)
    started, real = [], torch.utils.data.DataLoader._get_iterator
    monkeypatch.setattr(torch.utils.data.DataLoader, "_get_iterator", lambda self: started.append(1) or real(self))
    for workers in ("0", "2"):
        started.clear()
        res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained",
                                       tiny_clip_checkpoint, "--id", str(id_dir), "--ood", f"a={ood_dir}", "--ood",
                                       f"b={ood_dir / 'x'}", "--no-cache", "--workers", workers, "--out",
                                       str(tmp_path / f"w{workers}")])
        assert res.exit_code == 0, res.output
    assert started == [1]  # (with workers=0, an iterator a set: 3)
    assert (tmp_path / "w2" / "metrics.csv").read_bytes() == (tmp_path / "w0" / "metrics.csv").read_bytes()


def test_eval_zero_shot_uses_template_prompts(tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint):
    from clip_smot.clip.prompt import zero_shot_text_features
    from clip_smot.clip.scorer import PromptScorer, zero_shot_source, zero_shot_template

    id_dir, ood_dir = make_folders(tmp_path)
    out = tmp_path / "zs"
    res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", tiny_clip_checkpoint,
                                   "--id", str(id_dir), "--ood", f"noise={ood_dir}", "--workers", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "metrics.json").read_text())
    assert "id_accuracy" in report
    # (what reproduce compares a finished zero-shot stage with: written by hand, MCM's template)
    assert report["text_features"] == "zero-shot prompts 'a photo of a {c}'" == zero_shot_source(zero_shot_template())
    assert report["precision"] == "fp32"  # (auto on the CPU)
    # the same MCM numbers from the template text features, scored through the API
    scorer = PromptScorer(tiny, zero_shot_text_features(tiny, CLASSES, "a photo of a {c}"), CLASSES)  # (MCM's, no period)
    ids = scorer.score_paths([id_dir], ["mcm"], workers=0, use_cache=False).scores["mcm"]
    ood = scorer.score_paths([ood_dir], ["mcm"], workers=0, use_cache=False).scores["mcm"]
    y = np.r_[np.ones(len(ids)), np.zeros(len(ood))]
    assert report["metrics"]["mcm"]["noise"]["auroc"] == pytest.approx(100 * roc_auc_score(y, np.r_[ids, ood]), abs=1e-6)


def test_an_evaluation_removes_the_temporaries_a_killed_one_left(tmp_path, tiny, tiny_clip_checkpoint):
    """An evaluation killed (SIGKILL) while writing its files left their hidden temporaries
    (``.metrics.json.*.tmp``, the histogram's, ...) in --out; the rerun (reproduce's of the
    unfinished stage) finished and left them there, as large as the files, for an hour: they were
    kept as another evaluation's writes in progress, but each evaluation holds its folder's lock.
    They are removed now; the temporaries of other names stay."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=1, n_ood=2)
    out = tmp_path / "ev"
    out.mkdir()
    left = [out / f".{name}.k3j_x1w2.tmp" for name in ("metrics.json", "metrics.csv", "metrics.md", "scores_hist.png",
                                                      "config.json")]
    other = out / ".notes.txt.k3j_x1w2.tmp"
    for f in [*left, other]:
        f.write_text("half")
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--id", str(id_dir), "--ood", f"noise={ood_dir}", "--workers",
                                   "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert not any(f.exists() for f in left) and other.exists()
    assert (out / "metrics.json").is_file()


def test_a_prompt_replaced_while_eval_reads_it_is_refused(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """eval hashed --prompt after the CLIP model had loaded, for torchrun's processes to compare:
    one process that read the old prompt and hashed the new one (an export meanwhile) agreed with
    one that read the new, and the table mixed two prompts' scores. The hash is now of the file
    read, and a prompt replaced while it is read is refused in one line, --out not made."""
    from clip_smot.clip import evaluate

    prompt = tmp_path / "p.safetensors"
    make_prompt(prompt, tiny, seed=0)
    make_prompt(tmp_path / "new.safetensors", tiny, seed=1)
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=1, n_ood=2)
    real_load = evaluate.load_prompt

    def export_meanwhile(path):  # (another command writes the prompt just after eval read it)
        read = real_load(path)
        os.replace(tmp_path / "new.safetensors", path)
        return read

    monkeypatch.setattr(evaluate, "load_prompt", export_meanwhile)
    out = tmp_path / "ev"
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id",
                                   str(id_dir), "--ood", f"noise={ood_dir}", "--workers", "0", "--out", str(out)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert res.output == (f"Error: --prompt {prompt}: was replaced while it was read (another command writing it "
                          "now?); run again once it is written\n")
    assert not out.exists()


def test_eval_bad_input_is_one_line(tmp_path, tiny, tiny_clip_checkpoint):
    prompt = tmp_path / "p.safetensors"
    make_prompt(prompt, tiny)
    id_dir, ood_dir = make_folders(tmp_path)
    base = ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id", str(id_dir), "--workers", "0",
            "--out", str(tmp_path / "e")]
    for ood, expected in [(f"gone={tmp_path / 'missing'}", "--ood gone="), ("svhn", "--ood svhn: not a built-in OOD set"),
                          (f"id={ood_dir}", "--ood id=...: 'id' names the ID set; give the OOD set another name"),
                          (f"x={ood_dir}", None)]:
        res = CliRunner().invoke(cli, base + ["--ood", ood, "--scores", "mcm,nope" if expected is None else "mcm"])
        assert res.exit_code != 0 and "Traceback" not in res.output
        assert (expected or "unknown score 'nope'") in res.output
        assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_an_ood_set_holding_id_images_is_refused(tmp_path, tiny, tiny_clip_checkpoint):
    """The ID folder given as an OOD set too scored AUROC 50.0 and exited 0; an OOD folder holding
    one ID image (here a hard link to it) counted it on both sides. Both stop before encoding."""
    prompt = tmp_path / "p.safetensors"
    make_prompt(prompt, tiny)
    id_dir, ood_dir = make_folders(tmp_path)
    one = next((id_dir / "val").rglob("*.png"))
    os.link(one, ood_dir / "x" / "linked.png")
    base = ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id", str(id_dir), "--workers", "0",
            "--out", str(tmp_path / "e")]
    n_id = sum(1 for _ in (id_dir / "val").rglob("*.png"))
    for ood, expected in [(f"same={id_dir}", f"--ood same: {n_id} of its {n_id} images are images of the ID set"),
                          (f"mixed={ood_dir}", f"--ood mixed: 1 of its 7 images are images of the ID set (--id) too, "
                                               f"e.g. {ood_dir / 'x' / 'linked.png'}")]:
        res = CliRunner().invoke(cli, base + ["--ood", ood])
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert res.output.startswith(f"Error: {expected}") and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_outputs_never_overwrite_inputs_or_runs(tmp_path, tiny, tiny_clip_checkpoint):
    """score --out = --prompt, and eval --out = a fit run's folder, are refused (docs/method.md §6)."""
    run = tmp_path / "run"
    run.mkdir()
    prompt = run / "prompt.safetensors"
    make_prompt(prompt, tiny)
    (run / "config.json").write_text('{"the": "fit run"}')
    before = prompt.read_bytes()
    id_dir, ood_dir = make_folders(tmp_path)
    res = CliRunner().invoke(cli, ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers",
                                   "0", "--out", str(prompt), str(id_dir)])
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        f"Error: --out {prompt}: is the --prompt file itself; writing there would destroy it"]
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id",
                                   str(id_dir), "--ood", f"x={ood_dir}", "--workers", "0", "--out", str(run)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert f"--out {run}: holds a training run (prompt.safetensors)" in res.output
    assert prompt.read_bytes() == before and (run / "config.json").read_text() == '{"the": "fit run"}'
    assert sorted(f.name for f in run.iterdir()) == ["config.json", "prompt.safetensors"]


# --- eval data layouts ------------------------------------------------------------------------------


def _img(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_id_folder_wnids_map_to_prompt_classes(tmp_path):
    names = imagenet_wnid_names()
    assert len(names) == 1000 and names["n01440764"] == "tench"
    _img(tmp_path / "imagenet" / "val" / "n01443537" / "a.JPEG")  # goldfish
    _img(tmp_path / "imagenet" / "val" / "n01440764" / "b.JPEG")  # tench
    # the prompt's own class order decides the label
    s = id_set(tmp_path / "imagenet", ["goldfish", "tench", "cat"])
    assert [p.name for p in s.paths] == ["b.JPEG", "a.JPEG"] and s.labels == [1, 0]  # sorted by wnid
    s = id_set(tmp_path / "imagenet" / "val", ["goldfish", "tench"])  # the val folder itself
    assert s.labels == [1, 0]
    # the full ImageNet-1k list: wnids by position
    s = id_set(tmp_path / "imagenet", list(names.values()))
    assert s.labels == [0, 1]
    s = id_set(tmp_path / "imagenet", ["cat", "dog"])
    assert s.labels is None and "match no class" in s.note
    assert folder_classnames(tmp_path / "imagenet") == ["tench", "goldfish"]
    # a wnid away from the start: ostrich is class 9 of the 1000, not the 2nd folder
    _img(tmp_path / "in2" / "val" / "n01440764" / "a.JPEG")  # tench
    _img(tmp_path / "in2" / "val" / "n01518878" / "b.JPEG")  # ostrich
    assert id_set(tmp_path / "in2", list(names.values())).labels == [0, 9]
    assert id_set(tmp_path / "in2", ["ostrich", "tench"]).labels == [1, 0]


def test_a_bare_ood_name_is_the_built_in_set_even_beside_a_folder_of_that_name(tmp_path, monkeypatch, capsys):
    """A bare --ood NAME is always the built-in set; where a folder of that name is here too (a
    user's ./Textures, the MOS set's name) a note says which was read and how to give the folder,
    in both tracks (the digits' textures were read silently). A path given without its NAME= is
    refused with a NAME made from it (the advice was "give sets/ood=DIR": the path as the name)."""
    from clip_smot.clip import evaluate as clip_eval
    from clip_smot.resnet.data import load_ood_set

    monkeypatch.chdir(tmp_path)
    assert len(load_ood_set("photos", None, 32).labels) == 300 and "note:" not in capsys.readouterr().err
    _img(tmp_path / "photos" / "mine.png")  # a user's folder that happens to be called photos
    builtin = Path(clip_eval._builtin_ood("photos", 32))
    note = "note: --ood {} is the built-in set photos, not ./{}; give --ood {}={} for the folder of that name here\n"
    assert capsys.readouterr().err == note.format(*["photos"] * 4)
    assert clip_eval._builtin_ood("PHOTOS", 32) == str(builtin)  # as the ResNet track, any case
    assert builtin.resolve() != (tmp_path / "photos").resolve() and len(list(builtin.iterdir())) > 1
    assert len(load_ood_set("photos", None, 32).labels) == 300  # the ResNet track's built-in too
    assert capsys.readouterr().err == note.format(*["photos"] * 4)  # (no ./PHOTOS here: no note for it)
    _img(tmp_path / "Textures" / "mine.png")  # (the MOS set's name, as it is spelled: the built-in set still)
    assert clip_eval._builtin_ood("Textures", 32) == clip_eval._builtin_ood("textures", 32)
    assert capsys.readouterr().err == ("note: --ood Textures is the built-in set textures, not ./Textures; give --ood "
                                       "Textures=Textures for the folder of that name here\n")
    assert len(load_ood_set("photos", "photos", 32).labels) == 1  # photos=photos: the folder
    with pytest.raises(UserError, match="--ood mine: not a built-in OOD set"):
        load_ood_set("mine", None, 32)
    _img(tmp_path / "sets" / "ood" / "a.png")
    for given, label in (("sets/ood", "ood"), ("sets/ood/", "ood"), ("sets", "sets"), ("gone/ood", "ood"),
                         (".", "ood")):  # (the current folder: a path with no name of its own)
        expected = (f"--ood {given}: an OOD folder or image list is given as NAME=DIR, e.g. --ood {label}={given} "
                    "(a bare name is a built-in set: ")
        for resolve, sets in ((lambda n: clip_eval._builtin_ood(n, 32), "photos, textures"),
                              (lambda n: load_ood_set(n, None, 32), "svhn, cifar10, cifar100, photos, textures")):
            with pytest.raises(UserError) as e:
                resolve(given)
            assert str(e.value) == f"{expected}{sets})", str(e.value)
    # under torchrun only the process that writes says it (the others read the same set)
    from clip_smot.resnet import data as resnet_data

    monkeypatch.setattr(clip_eval, "writes_outputs", lambda: False)
    monkeypatch.setattr(resnet_data, "writes_outputs", lambda: False)
    assert clip_eval._builtin_ood("photos", 32) == str(builtin) and len(load_ood_set("photos", None, 32).labels) == 300
    assert capsys.readouterr().err == ""


def test_a_bare_id_name_is_the_built_in_set_even_beside_a_folder_of_that_name(tmp_path, monkeypatch, capsys):
    """--id digits is the bundled digits' val folder, as a bare --ood NAME is always the built-in
    set; a folder digits in the current folder was read instead, without a word. Now a note says
    so, and ./digits names the folder."""
    from clip_smot.clip import evaluate as clip_eval
    from clip_smot.common.digits import ensure_digits

    monkeypatch.chdir(tmp_path)
    assert Path(clip_eval._builtin_id("digits", 32)) == ensure_digits(32) / "val"
    assert "note:" not in capsys.readouterr().err
    _img(tmp_path / "digits" / "one" / "x.png")
    assert Path(clip_eval._builtin_id("digits", 32)) == ensure_digits(32) / "val"
    assert "note: --id digits is the built-in set; ./digits names the folder" in capsys.readouterr().err
    assert clip_eval._builtin_id("./digits", 32) == "./digits"
    assert Path(clip_eval._builtin_id("Digits", 32)) == ensure_digits(32) / "val"  # (any case, as --ood photos)
    assert clip_eval._builtin_id(str(tmp_path / "elsewhere"), 32) == str(tmp_path / "elsewhere")
    # nor is ./digits a folder the evaluation reads, which an --out inside it would be refused for
    cfg = clip_eval.ClipEvalConfig(id_data="digits", ood={}, out="digits/eval", zero_shot=True)
    assert ("the --id folder", "digits") not in cfg.read_sets()[1]
    cfg = dataclasses.replace(cfg, id_data="./digits")
    assert ("the --id folder", "./digits") in cfg.read_sets()[1]


def test_zero_shot_on_a_folder_named_digits_takes_its_classes_from_the_folder(tmp_path, monkeypatch, tiny_clip_config,
                                                                              tiny_clip_checkpoint):
    """--zero-shot --id ./digits reads the folder digits in the current folder (as _builtin_id
    does): the class names are its class folders', not the bundled digits' ten, so its images get
    labels and an ID accuracy."""
    monkeypatch.chdir(tmp_path)
    for k, c in enumerate(("cat", "dog")):
        _img(tmp_path / "digits" / c / "0.png", 60 * k)
        _img(tmp_path / "ood" / f"{k}.png", 200 - 10 * k)
    res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained",
                                   tiny_clip_checkpoint, "--id", "./digits", "--ood", "o=ood", "--workers", "0",
                                   "--no-cache", "--out", "e"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["n_images"]["id"] == 2 and report["id_accuracy"] in (0.0, 50.0, 100.0)


def test_zero_shot_on_wnid_folders_and_a_stray_one_is_a_note(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    """--zero-shot --id DIR with wnid folders and one that is not read every folder name as a
    class name without a word: its prompts were "a photo of a n01440764." instead of "tench"."""
    for k, c in enumerate(("n01440764", "n01443537", "misc")):
        _img(tmp_path / "id" / "val" / c / "0.png", 60 * k)
    _img(tmp_path / "ood" / "0.png", 200)
    base = ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", tiny_clip_checkpoint, "--ood",
            f"o={tmp_path / 'ood'}", "--workers", "0", "--no-cache"]
    res = CliRunner().invoke(cli, [*base, "--id", str(tmp_path / "id"), "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert (f"note: --id {tmp_path / 'id'}: 2 of its 3 class folders are ImageNet wnids, but misc not: the folder "
            "names are the class names, so the prompts name wnids") in res.stderr
    shutil.rmtree(tmp_path / "id" / "val" / "misc")
    res = CliRunner().invoke(cli, [*base, "--id", str(tmp_path / "id"), "--out", str(tmp_path / "e2")])
    assert res.exit_code == 0 and "note:" not in res.stderr, res.output


def test_eval_prints_its_table_and_where_it_wrote(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    """A finished eval said nothing: its table is on stdout as metrics.md holds it, then the
    files it wrote (the notes stay on stderr)."""
    for k, c in enumerate(("cat", "dog")):
        _img(tmp_path / "id" / c / "0.png", 60 * k)
    _img(tmp_path / "ood" / "0.png", 200)
    out = tmp_path / "e"
    res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained",
                                   tiny_clip_checkpoint, "--id", str(tmp_path / "id"), "--ood", f"o={tmp_path / 'ood'}",
                                   "--workers", "0", "--no-cache", "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = (out / "metrics.md").read_text()
    assert table.startswith("# Zero-shot MCM baseline (clip-smot-tiny, tiny.safetensors)\n") and "| mcm |" in table
    assert res.stdout == f"{table}written to {out}: metrics.csv, metrics.json, metrics.md, scores_hist.png, config.json\n"


def test_eval_whose_written_table_cannot_be_read_back_is_no_traceback(tmp_path, tiny_clip_config, tiny_clip_checkpoint,
                                                                      monkeypatch):
    """Every file of the evaluation written, the read of metrics.md to print it fails (EIO of a
    failing disk, found by a fault sweep of a real `clip-smot eval`): that was an OSError
    traceback, exit 1, the evaluation said to have failed. The table is printed from what was
    written, or one line names metrics.md; no traceback either way."""
    import errno

    for k, c in enumerate(("cat", "dog")):
        _img(tmp_path / "id" / c / "0.png", 60 * k)
    _img(tmp_path / "ood" / "0.png", 200)
    out = tmp_path / "e"
    real = Path.read_text

    def failing(self, *args, **kwargs):
        if self == out / "metrics.md":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", failing)
    res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained",
                                   tiny_clip_checkpoint, "--id", str(tmp_path / "id"), "--ood", f"o={tmp_path / 'ood'}",
                                   "--workers", "0", "--no-cache", "--out", str(out)])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 1 and res.stderr.strip().splitlines()[-1] == (
        f"Error: {out / 'metrics.md'}: written, but cannot be read back to print it (Input/output error)"), res.stderr
    assert (out / "metrics.json").is_file()


def test_zero_shot_refuses_a_class_folder_without_images(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    """A zip made on a Mac unpacks a ``__MACOSX/`` folder of ``._x`` files beside the class
    folders: zero-shot took it as a class (one more prompt, "a photo of a __MACOSX.") and, as it is
    no wnid, named the other classes' prompts by their wnids; exit code 0, a note. An empty class
    folder is refused too; a hidden one and a class whose images lie deeper are not."""
    for k, c in enumerate(("n01440764", "n01443537")):
        _img(tmp_path / "id" / "val" / c / "0.png", 60 * k)
    junk = tmp_path / "id" / "val" / "__MACOSX" / "n01440764"
    junk.mkdir(parents=True)
    (junk / "._0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")  # (AppleDouble)
    _img(tmp_path / "ood" / "0.png", 200)
    base = ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", tiny_clip_checkpoint, "--ood",
            f"o={tmp_path / 'ood'}", "--workers", "0", "--no-cache", "--id", str(tmp_path / "id")]
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and not (tmp_path / "e").exists(), res.output
    assert res.output == (f"Error: --id {tmp_path / 'id' / 'val'}: 1 of its 3 class folders holds no images, e.g. "
                          "__MACOSX: zero-shot takes each class folder as a class; remove it (an archiver's __MACOSX, "
                          "a class not yet copied) or fill it\n")
    shutil.rmtree(tmp_path / "id" / "val" / "__MACOSX")
    (tmp_path / "id" / "val" / "n01443537" / "deeper").mkdir()
    (tmp_path / "id" / "val" / "n01443537" / "0.png").rename(tmp_path / "id" / "val" / "n01443537" / "deeper" / "0.png")
    (tmp_path / "id" / "val" / ".hidden").mkdir()  # (hidden: no class)
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "e")])
    assert res.exit_code == 0 and "note:" not in res.stderr, res.output
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["n_images"]["id"] == 2 and report["id_accuracy"] in (0.0, 50.0, 100.0)
    (tmp_path / "id" / "val" / "n02085620").mkdir()  # (a class not yet copied)
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "e3")])
    assert res.exit_code == 1 and "1 of its 3 class folders holds no images, e.g. n02085620:" in res.output


def test_an_id_set_without_labels_is_said_before_the_encoding(tmp_path, tiny, tiny_clip_checkpoint):
    """eval --prompt with an --id of images outside class folders ends well without an ID accuracy;
    only metrics.json's id_accuracy_note said why. The note is on stderr too, once, before any
    image is encoded; an --id of class folders gives none."""
    make_prompt(tmp_path / "p.safetensors", tiny)
    for k in range(3):
        _img(tmp_path / "flat" / f"{k}.png", 10 * k)
        _img(tmp_path / "ood" / f"{k}.png", 200 - 10 * k)
    base = ["eval", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint, "--ood",
            f"o={tmp_path / 'ood'}", "--workers", "0", "--no-cache"]
    res = CliRunner().invoke(cli, [*base, "--id", str(tmp_path / "flat"), "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    note = f"note: --id {tmp_path / 'flat'}: no ID accuracy ({tmp_path / 'flat'} holds images outside class folders)"
    assert res.stderr.splitlines().count(note) == 1, res.stderr
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert "id_accuracy" not in report and report["id_accuracy_note"] == note.split("(", 1)[1][:-1]
    for k, c in enumerate(CLASSES):
        _img(tmp_path / "id" / c / f"{k}.png", 30 * k)
    res = CliRunner().invoke(cli, [*base, "--id", str(tmp_path / "id"), "--out", str(tmp_path / "e2")])
    assert res.exit_code == 0 and "no ID accuracy" not in res.stderr, res.output


def test_zero_shot_with_pretrained_none_is_random_weights_not_openai(tmp_path, tiny_clip_config):
    """--zero-shot defaults --pretrained to openai only when it is not given: ``none`` is no
    weights (random, seeded), as for a prompt, and needs no download."""
    (tmp_path / "id" / "cat").mkdir(parents=True)
    (tmp_path / "ood").mkdir()
    for k in range(3):
        _img(tmp_path / "id" / "cat" / f"{k}.png", 10 * k)
        _img(tmp_path / "ood" / f"{k}.png", 200 - 10 * k)
    res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", "none",
                                   "--id", str(tmp_path / "id"), "--ood", f"o={tmp_path / 'ood'}", "--workers", "0",
                                   "--no-cache", "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["pretrained"] == ""
    assert (tmp_path / "e" / "metrics.md").read_text().startswith("# Zero-shot MCM baseline (clip-smot-tiny, random weights)")


def test_id_image_list_labels_are_class_indices_or_absent(tmp_path):
    _img(tmp_path / "v" / "a.png")
    _img(tmp_path / "v" / "b.png")
    lst = tmp_path / "id.txt"
    lst.write_text("v/a.png 1\nv/b.png 0\n")
    assert id_set(f"{tmp_path}::{lst}", ["x", "y"]).labels == [1, 0]
    lst.write_text("v/a.png\nv/b.png -1\n")  # no labels (OpenOOD writes -1): no accuracy, a note
    s = id_set(f"{tmp_path}::{lst}", ["x", "y"])
    assert s.labels is None and "no class labels" in s.note
    for text in ("v/a.png 1\nv/b.png 7\n", "v/a.png 1\nv/b.png -3\n"):
        lst.write_text(text)
        with pytest.raises(UserError, match=r"--id .*id.txt: .*b.png has label -?\d+, not a class index of the prompt"):
            id_set(f"{tmp_path}::{lst}", ["x", "y"])
    # a line without a label among labelled ones: it was "b.png has label -1", a label it did not hold
    for text in ("v/a.png 1\nv/b.png\n", "v/a.png 1\nv/b.png -1\n"):
        lst.write_text(text)
        with pytest.raises(UserError, match=r"--id .*id.txt: .*b.png has no label \(or OpenOOD's -1\), while "
                                            r"others have one; every line needs a class index of the prompt \(0 \.\. 1\), "
                                            r"or none does$"):
            id_set(f"{tmp_path}::{lst}", ["x", "y"])


def test_ood_folders_any_layout_and_image_lists(tmp_path):
    # MOS sets as people store them
    _img(tmp_path / "iNaturalist" / "images" / "1.jpg")
    _img(tmp_path / "dtd" / "images" / "banded" / "banded_0001.jpg")
    _img(tmp_path / "dtd" / "images" / "zigzag" / "z.jpg")
    assert len(image_set("inat", tmp_path / "iNaturalist").paths) == 1
    assert [p.name for p in image_set("textures", tmp_path / "dtd").paths] == ["banded_0001.jpg", "z.jpg"]
    # OpenOOD lists: ROOT::LIST, or paths relative to the list's folder
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "tex.txt").write_text("dtd/images/banded/banded_0001.jpg 0\ndtd/images/zigzag/z.jpg 0\n")
    s = image_set("textures", f"{tmp_path}::{tmp_path / 'lists' / 'tex.txt'}")
    assert [p.name for p in s.paths] == ["banded_0001.jpg", "z.jpg"]
    (tmp_path / "rel.txt").write_text("iNaturalist/images/1.jpg\n")
    assert image_set("inat", tmp_path / "rel.txt").paths == [tmp_path / "iNaturalist" / "images" / "1.jpg"]
    # an ID list: labels are class indices of the prompt
    (tmp_path / "id.txt").write_text("iNaturalist/images/1.jpg 1\ndtd/images/zigzag/z.jpg 0\n")
    assert id_set(tmp_path / "id.txt", ["a", "b"]).labels == [1, 0]
    with pytest.raises(UserError, match="has label 1, not a class index of the prompt"):
        id_set(tmp_path / "id.txt", ["a"])  # one class only: label 1 is wrong (it used to drop the accuracy quietly)
    (tmp_path / "bad.txt").write_text("dtd/images/zigzag/z.jpg 0\nmissing.jpg 0\n")
    with pytest.raises(UserError, match=r"bad.txt:2: .*missing.jpg does not exist"):
        image_set("bad", tmp_path / "bad.txt")
    (tmp_path / "worse.txt").write_text("a.jpg 0 extra\n")
    with pytest.raises(UserError, match=r"worse.txt:1: expected 'relative/path label'"):
        image_set("bad", tmp_path / "worse.txt")
    # labels that str.isdigit took and int() then raised on (a traceback), or read as another digit
    for label in ("\u00b3", "--1", "\u0662", "9" * 5000):
        (tmp_path / "worse.txt").write_text(f"dtd/images/zigzag/z.jpg {label}\n", encoding="utf-8")
        with pytest.raises(UserError, match=r"worse.txt:1: expected 'relative/path label'"):
            id_set(tmp_path / "worse.txt", ["a", "b"])
    with pytest.raises(UserError, match="no image files"):
        image_set("empty", (tmp_path / "void").mkdir() or tmp_path / "void")


def test_eval_on_the_bundled_digits(tmp_path, tiny, tiny_clip_checkpoint):
    from clip_smot.common.digits import DIGIT_NAMES

    prompt = tmp_path / "p.safetensors"
    make_prompt(prompt, tiny, classnames=DIGIT_NAMES)
    out = tmp_path / "digits"
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id", "digits",
                                   "--ood", "photos", "--ood", "textures", "--workers", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["metrics"]["mcm"]) == {"photos", "textures", "average"}
    assert 0 <= report["id_accuracy"] <= 100  # class folders zero..nine match the prompt's classes
    assert report["n_images"]["id"] == 450  # the val split: 25% of the 1797 digits, not the 1347 training images


def test_one_class_and_an_ood_set_of_one_image(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    """Valid extremes (docs/score.md): one ID class makes mcm, msp and gl-mcm constant (AUROC 50,
    FPR95 100, ID accuracy 100); an OOD set of one image has metrics like any other."""
    rng = np.random.default_rng(0)
    (tmp_path / "id" / "thing").mkdir(parents=True)
    (tmp_path / "ood").mkdir()
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "id" / "thing" / f"{k}.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "ood" / "one.png")
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", tiny_clip_checkpoint,
                                   "--id", str(tmp_path / "id"), "--ood", f"one={tmp_path / 'ood'}", "--scores",
                                   ",".join(ALL), "--workers", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["id_accuracy"] == 100.0 and report["n_images"] == {"id": 4, "one": 1}
    assert "id_accuracy_note" not in report  # (only when there is no accuracy: docs/score.md)
    config = json.loads((out / "config.json").read_text())  # every option but --out, the scores as a list
    assert "out" not in config and config["scores"] == ALL and config["id_data"] == str(tmp_path / "id")
    assert config["zero_shot"] is True and config["ood"] == {"one": str(tmp_path / "ood")}
    for name in ("mcm", "msp", "gl-mcm"):
        m = report["metrics"][name]["one"]
        assert (m["auroc"], m["fpr95"], m["aupr_in"]) == (50.0, 100.0, 80.0)  # 4 ID of 5, all tied
    assert all(math.isfinite(v) for v in report["metrics"]["energy"]["one"].values())


def test_an_id_class_named_val_is_a_class(tmp_path):
    """--id DIR/<class>/ with a class 'val': DIR is the class-folder root (DIR/val/<class>/ stays
    the ImageNet layout)."""
    for name in ("cat", "val"):
        (tmp_path / "id" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "id" / name / "0.png")
    assert folder_classnames(tmp_path / "id") == ["cat", "val"]
    s = id_set(tmp_path / "id", ["cat", "val"])
    assert sorted(zip([p.split("/")[-2] for p in map(str, s.paths)], s.labels)) == [("cat", 0), ("val", 1)]
    (tmp_path / "imagenet" / "val" / "dog").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "imagenet" / "val" / "dog" / "0.png")
    assert folder_classnames(tmp_path / "imagenet") == ["dog"]


def test_id_labels_follow_the_folders_where_class_names_repeat(tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint):
    """Folders 'sea_lion' and 'sea lion' (or ImageNet's two 'missile' wnids in a subset) share a
    prompt name: each keeps its own label. Zero-shot gives them the same text features, so every
    image is predicted as the first: ID accuracy 50%, not 100%."""
    rng = np.random.default_rng(0)
    for name in ("sea lion", "sea_lion"):
        (tmp_path / "id" / name).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "id" / name / f"{k}.png")
    (tmp_path / "ood").mkdir()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "ood" / "0.png")
    s = id_set(tmp_path / "id", ["sea lion", "sea lion"], prompt_folders=["sea lion", "sea_lion"])
    assert s.labels == [0, 0, 1, 1]
    s = id_set(tmp_path / "id", ["sea lion", "sea lion"], prompt_folders=["sea_lion", "sea lion"])  # the prompt's order
    assert s.labels == [1, 1, 0, 0]
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", tiny_clip_checkpoint,
                                   "--id", str(tmp_path / "id"), "--ood", f"o={tmp_path / 'ood'}",
                                   "--workers", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["id_accuracy"] == 50.0
    # a fit prompt records its class folders (run.class_folders): its labels follow them too
    import torch

    from clip_smot.clip.prompt_file import save_prompt

    text = torch.nn.functional.normalize(torch.ones(1, 32), dim=-1).expand(2, 32)  # one text feature, twice
    save_prompt(tmp_path / "p.safetensors", torch.zeros(4, 32), text, tiny.identity(), 4, "end", False,
                ["sea lion", "sea lion"], {"run": {"class_folders": ["sea lion", "sea_lion"]}})
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained",
                                   tiny_clip_checkpoint, "--id", str(tmp_path / "id"), "--ood",
                                   f"o={tmp_path / 'ood'}", "--workers", "0", "--out", str(tmp_path / "e2")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["id_accuracy"] == 50.0


def test_folders_of_a_repeated_name_without_recorded_folders_get_no_labels(tmp_path):
    """A prompt that repeats a name ("missile": n03773504 and n04008634) and records no class
    folders cannot say which folder is which class: no labels (no ID accuracy) and a note, not
    both folders labelled as the first "missile"."""
    for wnid in ("n03773504", "n04008634", "n01440764"):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / wnid / "a.png")
    s = id_set(tmp_path, ["missile", "tench", "missile"])
    assert s.labels is None
    assert s.note == ("class folder(s) n03773504 (missile), n04008634 (missile) match a class name the prompt holds "
                      "more than once, and it records no class folders to tell which is which")
    s = id_set(tmp_path, ["missile", "tench", "missile"], prompt_folders=["n03773504", "n01440764", "n04008634"])
    assert s.labels == [1, 0, 2]  # (paths sorted: n01440764, n03773504, n04008634)
    (tmp_path / "val" / "n04008634" / "a.png").unlink()
    (tmp_path / "val" / "n04008634").rmdir()
    s = id_set(tmp_path, ["missile", "tench", "missile"])  # one folder of the name: still which of the two?
    assert s.labels is None and "n03773504 (missile)" in s.note


def test_a_missing_ood_folder_names_what_was_given(tmp_path, monkeypatch):
    """``--ood x=none`` (a relative folder that is not there): the line said 'give NAME=DIR', which
    the user had done; bare names are answered before (built-in sets), so the hint misled."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        image_set("x", "none")
    assert str(e.value) == "--ood x=none: no such folder or image list"


def test_a_cache_entry_of_the_same_files_in_another_order_keeps_the_order_asked(tmp_path, tiny, tiny_clip_checkpoint):
    """The cache key sorts the files, so a folder and a list of the same images share an entry;
    the features came back in the entry's order, and the ID list's labels were matched against
    the wrong images (a wrong ID accuracy, silently)."""
    import torch.nn.functional as F

    from clip_smot.clip.features import encode_files
    from clip_smot.clip.prompt_file import save_prompt

    id_dir, ood_dir = make_folders(tmp_path)
    s = id_set(id_dir, CLASSES)
    feats = encode_files(tiny, s.paths, workers=0, use_cache=False)
    labels = torch.tensor(s.labels)
    # a prompt whose class features are the class means: every ID image is told apart
    text = F.normalize(torch.stack([feats.global_[labels == k].mean(0) for k in range(3)]), dim=-1)
    assert ((feats.global_ @ text.T).argmax(1) == labels).all()
    prompt = tmp_path / "p.safetensors"
    save_prompt(prompt, torch.zeros(4, 32), text, tiny.identity(), 4, "end", False, CLASSES, {})
    lst = tmp_path / "id.txt"
    lst.write_text("".join(f"{p.relative_to(tmp_path)} {y}\n" for p, y in list(zip(s.paths, s.labels))[::-1]))

    def accuracy(where, out):
        res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint,
                                       "--id", where, "--ood", f"noise={ood_dir}", "--workers", "0", "--out",
                                       str(tmp_path / out)])
        assert res.exit_code == 0, res.output
        return json.loads((tmp_path / out / "metrics.json").read_text())["id_accuracy"]

    assert accuracy(str(id_dir), "folder") == 100.0  # encodes and writes the cache entry
    assert accuracy(f"{tmp_path}::{lst}", "list") == 100.0  # the same files, reversed: read from the entry
    reread = encode_files(tiny, s.paths[::-1], workers=0)
    assert reread.paths == [str(p) for p in s.paths[::-1]]
    torch.testing.assert_close(reread.global_, feats.global_.flip(0), rtol=0, atol=0)


def test_a_cache_entry_serves_the_same_files_under_another_spelling(tmp_path, tiny, monkeypatch, capsys):
    """The key is of the files' absolute paths, but the entry's paths were compared as spelt: the same
    folder given relative, then absolute, was a 'damaged' entry, encoded again and overwritten each time."""
    from clip_smot.clip import features
    from clip_smot.clip.features import encode_files

    id_dir, _ = make_folders(tmp_path)
    paths = id_set(id_dir, CLASSES).paths
    monkeypatch.chdir(tmp_path)
    relative = [str(Path(p).relative_to(tmp_path)) for p in paths]
    first = encode_files(tiny, relative, workers=0)
    calls = []
    monkeypatch.setattr(features, "_encode", lambda *a, **k: calls.append(a) or pytest.fail("encoded again"))
    again = encode_files(tiny, [str(p) for p in paths][::-1], workers=0)
    assert calls == [] and "damaged" not in capsys.readouterr().err
    assert again.paths == [str(p) for p in paths][::-1]  # (named as asked, in the order asked)
    torch.testing.assert_close(again.global_, first.global_.flip(0), rtol=0, atol=0)


def test_eval_decode_gpu_without_cuda_is_one_line_and_cpu_is_recorded(tmp_path, tiny_clip_config,
                                                                       tiny_clip_checkpoint):
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=1, n_ood=2)
    base = ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", tiny_clip_checkpoint, "--id",
            str(id_dir), "--ood", f"noise={ood_dir}", "--workers", "0", "--device", "cpu"]
    res = CliRunner().invoke(cli, [*base, "--decode", "gpu", "--out", str(tmp_path / "g")])
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        "Error: --decode gpu: decodes on a CUDA device, and the model is on cpu; give --device cuda or --decode cpu"]
    assert not (tmp_path / "g" / "metrics.json").exists()
    res = CliRunner().invoke(cli, [*base, "--decode", "cpu", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "c" / "config.json").read_text())["decode"] == "cpu"


def test_recorded_class_folders_are_used_only_one_per_class():
    """A prompt's run.class_folders label the ID folders only when they name one folder per class;
    a list of another length (an edited file) would give labels past the prompt's classes."""
    from clip_smot.clip.evaluate import _prompt_folders

    assert _prompt_folders({"run": {"class_folders": ["a", "b_c"]}}, 2) == ["a", "b_c"]
    for run in ({"class_folders": ["a", "b", "c"]}, {"class_folders": ["a"]}, {"class_folders": ["a", 2]},
                {"class_folders": "ab"}, ["a", "b"]):
        assert _prompt_folders({"run": run}, 2) is None, run


def test_id_accuracy_is_the_percent_of_id_images_whose_predicted_class_is_their_label():
    """3 of 4 predictions right: 75%, not the share of any one class (a constant prediction of
    class 0 passed the end-to-end tests, whose tiny random CLIP may predict one class throughout)."""
    from types import SimpleNamespace

    from clip_smot.clip.evaluate import _summary

    scorer = SimpleNamespace(clip=SimpleNamespace(name="m", pretrained=None), source="s", precision="fp32", fitted={})
    id_s = SimpleNamespace(labels=[2, 1, 0, 2], paths=["a", "b", "c", "d"], note=None)
    results = {"id": (id_s, {"pred_index": torch.tensor([2, 1, 1, 2])})}
    extra, accuracy = _summary(SimpleNamespace(prompt=None), scorer, results, [], 0, 0.0)
    assert accuracy == 75.0 and extra["n_images"] == {"id": 4} and "id_accuracy_note" not in extra
    id_s.labels = None
    assert _summary(SimpleNamespace(prompt=None), scorer, results, [], 0, 0.0)[1] is None


def _imagenet_archives(root: Path, ids: dict[str, int], truth: list[str]) -> None:
    """ImageNet's two validation archives in miniature, as torchvision's ImageNet reads them: the
    devkit (``data/meta.mat``: the synsets with their ILSVRC2012_ID, WNID, words, gloss and
    num_children, a parent synset among them; ``data/ILSVRC2012_validation_ground_truth.txt``: the
    ILSVRC2012_ID of each validation image, in file-name order) and the image archive (flat)."""
    import io
    import tarfile

    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children"]
    synsets = np.zeros((len(ids) + 1, 1), dtype=[(f, "O") for f in fields])
    for i, (wnid, n) in enumerate([*ids.items(), ("n00001740", 0)]):  # (the last: entity, a parent of all)
        synsets[i, 0] = (n or len(ids) + 1, wnid, wnid, "-", len(ids) if not n else 0)
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": synsets})
    text = "".join(f"{ids[w]}\n" for w in truth).encode()
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        for name, data in (("meta.mat", mat.getvalue()), ("ILSVRC2012_validation_ground_truth.txt", text)):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rng = np.random.default_rng(3)
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tar:
        for k in range(len(truth)):
            data = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(data, "JPEG")
            info = tarfile.TarInfo(f"ILSVRC2012_val_{k + 1:08d}.JPEG")
            info.size = len(data.getvalue())
            tar.addfile(info, io.BytesIO(data.getvalue()))


def test_imagenet_val_unpacked_flat_is_refused_and_torchvisions_sorting_labels_it(tmp_path, tiny_clip_config,
                                                                                 tiny_clip_checkpoint, monkeypatch):
    """ImageNet's validation archive unpacks its images into one folder. `eval --id IMAGENET` with
    train/<wnid>/ beside such a val/ read IMAGENET's class folders: the ID set was the training
    images plus the validation ones, as two classes `train` and `val` (exit 0, an accuracy of
    those). It is refused in one line before anything is written. Sorted into wnid folders as
    docs/score.md says, by torchvision's ImageNet(root, split="val") from the devkit's ground truth
    (torchvision's code, not this project's), each image gets the label of its ground-truth wnid,
    although the devkit numbers the classes in another order than the wnids'."""
    import tarfile

    import torchvision.datasets.imagenet as tv_imagenet

    from helpers import WNIDS, _write_imagenet

    root = _write_imagenet(tmp_path / "imagenet")
    ids = {WNIDS[2]: 1, WNIDS[0]: 2, WNIDS[1]: 3}  # the devkit's ILSVRC2012_IDs: not the sorted wnid order
    truth = [WNIDS[k] for k in (2, 0, 1, 1, 2, 0, 2)]
    _imagenet_archives(root, ids, truth)
    with tarfile.open(root / "ILSVRC2012_img_val.tar") as tar:  # what `tar xf` gives
        tar.extractall(root / "val", filter="data")
    (tmp_path / "ood").mkdir()
    for k in range(4):
        Image.fromarray(np.full((30, 30, 3), 60 * k, np.uint8)).save(tmp_path / "ood" / f"{k}.png")
    out = tmp_path / "eval"
    args = ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", tiny_clip_checkpoint, "--id", str(root),
            "--ood", f"flat={tmp_path / 'ood'}", "--workers", "0", "--no-cache", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    assert res.output == (f"Error: --id {root}: {root / 'val'} holds 7 image(s) but no class folders (ImageNet's "
                          f"validation archive unpacks so); sort them into {root / 'val'}/<class>/\n")
    assert not out.exists()

    shutil.rmtree(root / "val")  # docs/score.md's recipe, with the archives' checksums not checked (they are the real ones')
    monkeypatch.setattr(tv_imagenet, "_verify_archive", lambda *a: None)
    tv_imagenet.ImageNet(str(root), split="val")
    assert sorted(p.name for p in (root / "val").iterdir()) == sorted(WNIDS)
    s = id_set(root, folder_classnames(root))
    assert sorted(p.name for p in s.paths) == [f"ILSVRC2012_val_{k + 1:08d}.JPEG" for k in range(len(truth))]
    assert s.labels == [WNIDS.index(truth[int(p.name[15:23]) - 1]) for p in s.paths]
    res = CliRunner().invoke(cli, args[:-1] + [str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["n_images"]["id"] == len(truth)


def test_docs_line_sorting_kaggles_imagenet_val_labels_each_image_by_its_csv_row(tmp_path):
    """Kaggle's ImageNet copy has a flat val/ and LOC_val_solution.csv (ImageId, PredictionString:
    the wnid first, then boxes, maybe several). The line docs/score.md gives, run as written,
    sorts val/ into wnid folders that eval reads with each image's label from its CSV row."""
    import re
    import shlex
    import subprocess
    import sys

    from helpers import ROOT, WNIDS

    docs = (ROOT / "docs" / "score.md").read_text()
    line = re.search(r"`(python -c \"import csv, os, sys;.*?LOC_val_solution\.csv)`", docs)
    assert line, "docs/score.md no longer gives the line"
    truth = [WNIDS[k] for k in (1, 0, 2, 1, 0)]
    (tmp_path / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for k, wnid in enumerate(truth):
        Image.new("RGB", (20, 20), (40 * k, 0, 0)).save(tmp_path / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG")
        rows.append(f"ILSVRC2012_val_{k + 1:08d},{wnid} 12 30 140 200 {wnid} 1 2 3 4 ")
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows[:1] + rows[1:][::-1]) + "\n")  # (any row order)
    argv = shlex.split(line.group(1))
    subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, check=True, timeout=60)
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == sorted(set(truth))
    s = id_set(tmp_path / "val", folder_classnames(tmp_path / "val"))
    assert s.labels == [sorted(set(truth)).index(truth[int(p.name[15:23]) - 1]) for p in s.paths]


def test_eval_finds_the_prompts_checkpoint_by_name_and_notes_an_unfinished_run(tmp_path, tiny, tiny_clip_checkpoint):
    """Without --pretrained the prompt's checkpoint file is found beside the prompt by its name
    (and SHA-256), and a prompt exported before its run's last epoch gets the note saying so."""
    from clip_smot.clip.prompt_file import save_prompt

    shutil.copy(tiny_clip_checkpoint, tmp_path / "tiny.safetensors")
    prompt = tmp_path / "p.safetensors"
    g = torch.Generator().manual_seed(0)
    save_prompt(prompt, torch.randn(4, 32, generator=g), torch.nn.functional.normalize(torch.randn(3, 32, generator=g), dim=-1),
                tiny.identity(), 4, "end", False, list(CLASSES), {"run": {"epoch": 1}, "epochs": 2})
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=2, n_ood=2)
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--id", str(id_dir), "--ood", f"noise={ood_dir}",
                                   "--workers", "0", "--no-cache", "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert (f"note: {prompt} holds the context of epoch 1 of its run's 2 (exported from an unfinished run)"
            in res.stderr.splitlines())
    assert (tmp_path / "e" / "metrics.csv").is_file()


def test_a_clip_evaluation_of_neither_a_prompt_nor_zero_shot_is_one_line(tmp_path):
    """The library's run_clip_eval called without a prompt and without zero_shot (the CLI asks
    for one of them first)."""
    from clip_smot.clip.evaluate import ClipEvalConfig, run_clip_eval

    with pytest.raises(UserError, match=r"^--prompt: give a prompt file, or --zero-shot$"):
        run_clip_eval(ClipEvalConfig(id_data="digits", ood={"photos": None}, out=str(tmp_path / "e")))
    assert not (tmp_path / "e").exists()
    # a value out of its range is refused first, as the command line refuses it
    with pytest.raises(UserError, match=r"^--batch-size 0: must be in \[1, 4096\]$"):
        run_clip_eval(ClipEvalConfig(id_data="digits", ood={"photos": None}, out=str(tmp_path / "e"), batch_size=0))
    assert not (tmp_path / "e").exists()
