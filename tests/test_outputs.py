"""Outputs never replace inputs, and nothing read from a file chooses where the toolkit writes.

Every command's --out is compared with every file it reads (images found in folders, checkpoints
found by name, config files, the run's own files), by device and inode, so symlinks, hard links
and other spellings of a path count; an output folder inside a folder of inputs is refused. Each
refusal is one line, exit code 1, with every file as it was.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import CLASSES, _cache_in_tmp, tiny  # noqa: F401 (fixtures)
from PIL import Image

from clip_smot.cli import cli
from clip_smot.clip.model import load_clip_for_prompt
from clip_smot.clip.prompt_file import save_prompt
from clip_smot.common.errors import UserError
from clip_smot.common.files import check_output, plain_name


def _prompt(path, clip, **identity):
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(len(CLASSES), 32, generator=g), dim=-1)
    save_prompt(path, torch.randn(4, 32, generator=g), text, {**clip.identity(), **identity}, 4, "end", False,
                CLASSES, {})
    return path


def _images(folder, n=3, ext="png"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{k}.{ext}")
    return folder


def _snapshot(*roots):
    """Every file under ``roots`` with its bytes (what a refused command must leave as it was)."""
    files = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                files[os.path.join(folder, name)] = open(os.path.join(folder, name), "rb").read()
    return files


def _refused(args, expected, *roots):
    """Run the command; assert one error line containing ``expected`` and nothing changed under ``roots``."""
    before = _snapshot(*roots)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and isinstance(res.exception, (SystemExit, type(None))), repr(res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in res.output, res.output
    assert _snapshot(*roots) == before
    return lines[0]


# --- names read from files --------------------------------------------------------------------


def test_plain_names():
    for ok in ("ViT-B-16", "clip-smot-tiny", "open_clip_pytorch_model.bin", "my weights.safetensors", "RN50x4",
               ".hidden.pt", "...", "x" * 200):
        assert plain_name(ok, "x") == ok
    for bad in ("../../etc/passwd", "/etc/passwd", "a/b", "a\\b", "..", ".", "", "hf-hub:org/repo", "hf-hub:repo",
                "local-dir:/tmp", "C:x", "a\x00b", "a\nb", "x" * 201, None, 3):
        with pytest.raises(UserError, match=r"^metadata 'model': .* is not a plain name .*; pass --model$"):
            plain_name(bad, "metadata 'model'", "pass --model")


@pytest.mark.parametrize("name", ["../../victim", "ABSOLUTE", "hf-hub:org/repo", "..", "sub/victim"])
def test_a_prompts_model_name_chooses_no_path(tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint, name):
    """score without --model wrote <tmp>/<model>.json: a prompt whose model was ../../etc/passwd
    created /etc/passwd.json, an absolute path overwrote that JSON file with the prompt's config."""
    victim = tmp_path / "victim.json"
    victim.write_text('{"keep": true}')
    if name == "ABSOLUTE":
        name = str(tmp_path / "victim")
    prompt = _prompt(tmp_path / "p.safetensors", tiny, model=name)
    images = _images(tmp_path / "photos")
    line = _refused(["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0",
                     "--out", str(tmp_path / "s.csv"), str(images)], "metadata 'model'", tmp_path)
    assert line.startswith(f"Error: --prompt {prompt}: metadata 'model'") and line.endswith("; pass --model")
    assert sorted(os.listdir(tmp_path)) == ["p.safetensors", "photos", "victim.json"]  # no s.csv, no new JSON
    # the name is checked where it is used: with --model it is not, and the prompt scores
    res = CliRunner().invoke(cli, ["score", "--prompt", str(prompt), "--model", tiny_clip_config, "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--out", str(tmp_path / "s.csv"), str(images)])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 1 + 3 and victim.read_text() == '{"keep": true}'


def test_load_clip_for_prompt_refuses_a_path_and_loads_a_plain_name(tmp_path, tiny, tiny_clip_checkpoint):
    """The Python API checks the name too; a plain name that open_clip does not know (a space, a
    dot in it) is registered from the stored config, as a prompt of a custom model needs."""
    for name in ("../../victim", str(tmp_path / "victim")):
        with pytest.raises(UserError, match="is not a plain name"):
            load_clip_for_prompt(name, tiny.config, tiny_clip_checkpoint)
    assert not (tmp_path / "victim.json").exists() and not (tmp_path.parent.parent / "victim.json").exists()
    clip = load_clip_for_prompt("my tiny v1.json", tiny.config, tiny_clip_checkpoint)
    assert clip.name == "my tiny v1.json" and clip.config == tiny.config
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(clip.model.encode_image(x), tiny.model.encode_image(x))


@pytest.mark.parametrize("pretrained", ["../tiny.safetensors", "ABSOLUTE", "ABSOLUTE-TAG"])
def test_a_prompts_checkpoint_name_is_not_a_path(tmp_path, tiny, tiny_clip_checkpoint, pretrained):
    """Without --pretrained, the prompt's checkpoint is looked up by its file name next to the
    prompt: a name with a folder in it would read (and hash) any file the prompt names; a path
    stored as a tag (no SHA-256) would be loaded as weights."""
    (tmp_path / "in").mkdir()
    shutil.copy(tiny_clip_checkpoint, tmp_path / "tiny.safetensors")
    identity = {"checkpoint_sha256": ""} if pretrained == "ABSOLUTE-TAG" else {}
    if pretrained.startswith("ABSOLUTE"):
        pretrained = str(tmp_path / "tiny.safetensors")
    prompt = _prompt(tmp_path / "in" / "p.safetensors", tiny, pretrained=pretrained, **identity)
    line = _refused(["score", "--prompt", str(prompt), "--workers", "0", "--out", str(tmp_path / "s.csv"),
                     str(_images(tmp_path / "photos"))], "metadata 'pretrained'", tmp_path)
    assert line.endswith("is not a plain name (one path component: no '/', '\\' or ':', not '.' or '..'); "
                         "pass --pretrained")


def test_a_data_root_read_from_a_file_gets_no_download(tmp_path, monkeypatch):
    """eval --checkpoint takes a CIFAR root from the model file's config and train --resume from
    the checkpoint: a set missing there was downloaded into that folder (a lock file first)."""
    from clip_smot.resnet import data as resnet_data

    monkeypatch.setattr(resnet_data, "_reachable", lambda host: True)  # online: a download would start
    root = tmp_path / "named-by-a-file"
    with pytest.raises(UserError, match=r"^cifar10: not found under .*named-by-a-file, a folder named by a file"):
        resnet_data.load_id_split("cifar10", str(root), "val", download=False)
    with pytest.raises(UserError, match=r"^svhn: not found under .*named-by-a-file, a folder named by a file"):
        resnet_data.load_ood_set("svhn", None, 32, data=str(root), download=False)
    assert not root.exists()


def test_resume_and_eval_never_download_into_a_root_a_file_names(tmp_path, monkeypatch):
    """The same through the commands: train --resume of a run whose checkpoint names a CIFAR root,
    and eval --checkpoint of a model file whose config names one (eval then uses the default root)."""
    import dataclasses

    from clip_smot.resnet import data as resnet_data
    from clip_smot.resnet.networks import build_network, save_model
    from clip_smot.resnet.train import TrainConfig, resolve_config

    monkeypatch.setattr(resnet_data, "_reachable", lambda host: True)  # online: a download would start
    monkeypatch.setenv("CLIP_SMOT_DATA", str(tmp_path / "default"))
    root = tmp_path / "named-by-a-file"
    (tmp_path / "run").mkdir()
    cfg = resolve_config(TrainConfig(out=str(tmp_path / "run"), dataset="cifar10", data=str(root), arch="resnet_tiny",
                                     device="cpu", epochs=1), 10, 32)  # (a run records its options resolved)
    torch.save({"config": dataclasses.asdict(cfg), "model": {}, "optimizer": {}, "epoch": 0, "log": [], "rng": {}},
               tmp_path / "run" / "checkpoint.pt")
    _refused(["train", "--resume", "--out", str(tmp_path / "run")],
             f"cifar10: not found under {root}, a folder named by a file", tmp_path)
    assert not root.exists()

    model = tmp_path / "model.safetensors"
    save_model(model, build_network("resnet_tiny", 10, 32), arch="resnet_tiny", classnames=[str(i) for i in range(10)],
               input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, dataset="cifar10", config={"dataset": "cifar10",
                                                                                             "data": str(root)})
    monkeypatch.setattr(resnet_data, "_reachable", lambda host: False)  # (the default root's download: offline)
    _refused(["eval", "--checkpoint", str(model), "--id", "cifar10", "--ood", "svhn", "--device", "cpu",
              "--out", str(tmp_path / "e")], f"cifar10: not found under {tmp_path / 'default'} and", tmp_path)
    assert not root.exists()


def test_eval_falls_back_to_the_default_root_when_the_files_root_lacks_the_set(tmp_path):
    from clip_smot.resnet.evaluate import _read_only_root

    calls = []

    def load(root, download):
        calls.append((root, download))
        if root is not None:
            raise UserError("cifar10: not found")
        return "default"

    assert _read_only_root(load, str(tmp_path)) == "default"
    assert calls == [(str(tmp_path), False), (None, True)]


def test_the_fitted_scores_training_set_falls_back_to_the_default_root_too(tmp_path, monkeypatch, capsys):
    """eval --checkpoint read a CIFAR root named in the model file, and else the default root, for
    --id cifar10 (docs/resnet.md), but for the training images of react, knn and vim it stopped:
    "the model's training data is not available", for a model moved to another machine. Those
    images now come from where --id's would, with no note naming a root that was not read."""
    from types import SimpleNamespace

    from clip_smot.resnet import data as resnet_data
    from clip_smot.resnet.evaluate import _train_set

    recorded, calls = tmp_path / "gone", []

    def fake(name, root, download=True, **kwargs):
        calls.append((str(root), download))
        if not download:  # (the root the file names: the set is not there)
            raise UserError(f"{name}: not found under {root}, a folder named by a file")
        images = np.zeros((3, 32, 32, 3), dtype=np.uint8)
        return SimpleNamespace(data=images, classes=["a", "b"], targets=[0, 1, 0])

    monkeypatch.setattr(resnet_data, "_torchvision", fake)
    monkeypatch.setenv("CLIP_SMOT_DATA", str(tmp_path / "default"))
    meta = {"config": {"dataset": "cifar10", "data": str(recorded)}, "classnames": ["a", "b"], "num_classes": 2,
            "input_size": 16, "path": "m.safetensors"}
    s = _train_set(None, meta)
    assert len(s) == 3 and s.input_size == 16 and s.labels.tolist() == [0, 1, 0]
    assert calls == [(str(recorded), False), (str(tmp_path / "default"), True)]
    assert capsys.readouterr().err == ""


# --- score --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "new-image", "new-image-upper-case", "other-spelling"])
def test_score_out_never_replaces_an_image_it_scores(tmp_path, tiny, tiny_clip_checkpoint, how):
    """score --out FOLDER/3.png FOLDER replaced an image with the CSV (only file arguments were compared);
    a new NEW.PNG there would be scored by the next run (image extensions match in any case)."""
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    photos = _images(tmp_path / "photos" / "deep")
    out = {"same": photos / "1.png", "new-image": photos / "new.png", "new-image-upper-case": photos / "NEW.PNG",
           "other-spelling": tmp_path / "photos" / "deep" / ".." / "deep" / "2.png"}.get(how, tmp_path / "s.csv")
    if how == "symlink":
        out.symlink_to(photos / "0.png")
    if how == "hardlink":
        os.link(photos / "0.png", out)
    expected = "is inside the PATH folder" if how.startswith("new-image") else "is the PATH image itself"
    _refused(["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0",
              "--out", str(out), str(tmp_path / "photos")], expected, tmp_path)
    assert not (photos / "new.png").exists() and not (photos / "NEW.PNG").exists()


@pytest.mark.parametrize("target", ["found-checkpoint", "model-json", "pretrained", "prompt-symlink", "folder"])
def test_score_out_never_replaces_the_model_files(tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint, target):
    """score --out onto the CLIP checkpoint found next to the prompt, or onto --model's JSON, overwrote them."""
    shutil.copy(tiny_clip_checkpoint, tmp_path / "tiny.safetensors")  # next to the prompt: found by its name
    model = shutil.copy(tiny_clip_config, tmp_path / "clip-smot-tiny.json")
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    args = ["score", "--prompt", str(prompt), "--workers", "0"]
    if target == "model-json":
        args += ["--model", model]
    if target == "pretrained":
        args += ["--pretrained", str(tmp_path / "tiny.safetensors")]
    out = {"found-checkpoint": tmp_path / "tiny.safetensors", "model-json": tmp_path / "clip-smot-tiny.json",
           "pretrained": tmp_path / "." / "tiny.safetensors", "prompt-symlink": tmp_path / "link.csv",
           "folder": tmp_path / "photos"}[target]
    if target == "prompt-symlink":
        out.symlink_to(prompt)
    expected = {"found-checkpoint": "is the checkpoint file found by name itself", "model-json": "is the --model file",
                "pretrained": "is the --pretrained file itself", "prompt-symlink": "is the --prompt file itself",
                "folder": "is a folder; score writes one CSV file"}[target]
    _refused([*args, "--out", str(out), str(_images(tmp_path / "photos"))], expected, tmp_path)



def test_score_out_never_replaces_an_image_it_was_not_given(tmp_path, tiny, tiny_clip_checkpoint):
    """`score --prompt P --out a.png b.png`, a user reading --out as a flag without a value (or two
    names swapped), wrote the CSV of b.png over the photo a.png, exit 0: only the images scored and
    an image inside a folder scored are compared with --out. An existing image is no CSV to rewrite."""
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    photos = _images(tmp_path / "photos")
    _refused(["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0",
              "--out", str(photos / "0.png"), str(photos / "1.png")], f"--out {photos / '0.png'}", tmp_path)

def test_score_and_export_never_replace_an_existing_file_of_another_kind(tmp_path, tiny, tiny_clip_config,
                                                                        tiny_clip_checkpoint):
    """score replaces only a CSV that begins with its own header's first columns
    (path,pred,pred_index,): a user's predictions.csv that begins path,pred,label is none of its
    files. export replaces only a prompt file: a photo at --out is refused. Each is one line
    naming what the file holds, and the file is left as it was."""
    photos = _images(tmp_path / "photos")
    theirs = tmp_path / "predictions.csv"
    theirs.write_text("path,pred,label\n/a.png,cat,cat\n")
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    line = _refused(["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0",
                     "--out", str(theirs), str(photos)], f"--out {theirs}", tmp_path)
    assert line == (f"Error: --out {theirs}: holds a file of something else, not a CSV of clip-smot score, and score "
                    "would replace it; choose another --out, or remove that file first")
    run = tmp_path / "run"
    run.mkdir()
    _fit_checkpoint(run / "checkpoint.pt", shutil.copy(tiny_clip_config, tmp_path / "clip-smot-tiny.json"))
    line = _refused(["export", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu", "--out",
                     str(photos / "0.png")], f"--out {photos / '0.png'}", tmp_path)
    assert line == (f"Error: --out {photos / '0.png'}: holds a file of something else, not a prompt file (fit's or "
                    "export's .safetensors), and export would replace it; choose another --out, or remove that file "
                    "first")


def test_score_never_replaces_an_out_it_cannot_read(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """An existing --out that score cannot read (mode 000, another user's, in a folder it may write)
    cannot be told to be one of its CSVs; the rename that writes the CSV needs only the folder's
    permission, so nothing else stops it. It is refused, and the file left as it was. (The tests
    run as root, whom no mode stops: the read is made to fail as it fails for anyone else.)"""
    import errno

    from clip_smot.common import file_kinds

    photos = _images(tmp_path / "photos")
    theirs = tmp_path / "theirs.csv"
    theirs.write_text("their results\n")
    real_open = open

    def unreadable(path, *args, **kwargs):
        if os.fspath(path) == str(theirs):
            raise PermissionError(errno.EACCES, "Permission denied", str(theirs))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(file_kinds, "open", unreadable, raising=False)
    res = CliRunner().invoke(cli, ["score", "--prompt", str(_prompt(tmp_path / "p.safetensors", tiny)), "--pretrained",
                                   tiny_clip_checkpoint, "--workers", "0", "--out", str(theirs), str(photos)])
    assert theirs.read_text() == "their results\n"
    assert res.exit_code == 1 and res.output == (
        f"Error: --out {theirs}: cannot be read (Permission denied): score replaces only a CSV of clip-smot score, "
        "and cannot tell whether it is one; choose another --out, or remove that file first\n"), res.output


@pytest.mark.parametrize("path, scores, expected", [
    ("msp", "mcm", "no such file or folder; a score's name? --scores takes one comma-separated value: --scores mcm,msp"),
    ("energy,", "mcm", "no such file or folder; a score's name? --scores takes one comma-separated value: --scores "
                       "mcm,energy"),
    ("msp", "mcm,", "no such file or folder; a score's name? --scores takes one comma-separated value: --scores "
                    "mcm,msp"),  # (`--scores mcm, msp`: not "mcm,,msp")
    ("MSP", "mcm,energy", "no such file or folder; a score's name? --scores takes one comma-separated value: --scores "
                          "mcm,energy,MSP"),
    ("photos/*.png", "mcm", "no such file or folder; a pattern the shell did not expand (score expands no wildcards): "
                            "give the folder, or leave the pattern unquoted"),
    ("photos/[01].png", "mcm", "no such file or folder; a pattern the shell did not expand (score expands no "
                               "wildcards): give the folder, or leave the pattern unquoted"),
    ("photos/?.png", "mcm", "no such file or folder; a pattern the shell did not expand (score expands no wildcards): "
                            "give the folder, or leave the pattern unquoted"),
])
def test_a_missing_path_meant_as_a_score_or_a_pattern_says_so(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch,
                                                              path, scores, expected):
    """`score --scores mcm msp photos/` took msp for a PATH ("PATH msp: no such file or folder"), and
    a quoted 'photos/*.png' the shell did not expand was the same line: each now says what it
    was taken for, after a PATH that is there too (the advice keeps the --scores given, in any
    case). A path that is there is read whatever its name."""
    monkeypatch.chdir(tmp_path)
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    _images(tmp_path / "photos")
    args = ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0", "--out",
            str(tmp_path / "s.csv"), "--scores", scores]
    line = _refused([*args, "photos", path], f"PATH {path}: ", tmp_path)
    assert line == f"Error: PATH {path}: {expected}", line
    if path == "msp":  # (a folder of that name is a folder to score)
        _images(tmp_path / "msp", n=1)
        res = CliRunner().invoke(cli, [*args, "msp"])
        assert res.exit_code == 0 and len((tmp_path / "s.csv").read_text().splitlines()) == 2, res.output


def test_the_advice_for_a_score_taken_as_a_path_is_one_comma_separated_value(tmp_path, monkeypatch):
    """The CLI strips --scores, run_score's own ScoreConfig does not: `scores=" mcm, "` with a PATH
    "msp" advises `--scores mcm,msp`, not "mcm, ,msp"; no --scores at all is mcm's advice."""
    from clip_smot.clip.score import _check_paths

    monkeypatch.chdir(tmp_path)
    for scores in (" mcm, ", None):
        with pytest.raises(UserError) as e:
            _check_paths(["msp"], scores)
        assert str(e.value) == ("PATH msp: no such file or folder; a score's name? --scores takes one comma-separated "
                                "value: --scores mcm,msp")


def test_score_refuses_out_dash_and_a_list_named_as_another_tools(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    """`--out -` wrote a file named "-" (a user wanting the CSV on standard output); a list named
    paths.lst was read as one image ("unreadable or truncated image") and left a header-only
    OUT.partial: both are one line now, nothing written."""
    monkeypatch.chdir(tmp_path)
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    _images(tmp_path / "photos")
    args = ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0"]
    line = _refused([*args, "--out", "-", "photos"], "--out -: ", tmp_path)
    assert line == ("Error: --out -: score writes a CSV file (first as OUT.partial, which --resume continues), not to "
                    "standard output; give a file name")
    for name in ("paths.lst", "paths.LIST", "paths.csv", "paths.Tsv"):  # (other tools' list names, in any case)
        (tmp_path / name).write_text("photos/0.png\n")
        line = _refused([*args, "--out", "s.csv", "photos", name], f"PATH {name}: ", tmp_path)
        assert line == (f"Error: PATH {name}: read as one image, which it is not; an image list's name ends in .txt "
                        "(one path a line): rename it so")
        (tmp_path / name).unlink()
    _images(tmp_path / "shots.csv", n=2)  # (a folder of such a name is a folder to score)
    res = CliRunner().invoke(cli, [*args, "--out", "s.csv", "shots.csv"])
    assert res.exit_code == 0 and len((tmp_path / "s.csv").read_text().splitlines()) == 3, res.output


@pytest.mark.parametrize("how", ["list", "root-list", "partial-list", "partial-image"])
def test_score_out_and_its_partial_never_replace_a_list_or_an_image(tmp_path, tiny, tiny_clip_checkpoint, how):
    """score --out LIST.txt LIST.txt replaced the list with the CSV (lists were not among the inputs compared),
    and OUT.partial, written before OUT, was compared with nothing: --out o/s.csv ROOT::o/s.csv.partial cut the
    list to the CSV's header, then failed; a scored image hard-linked as o/s.csv.partial was cut the same way."""
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    photos = _images(tmp_path / "photos")
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / "s.csv"
    if how == "partial-image":
        os.link(photos / "2.png", tmp_path / "o" / "s.csv.partial")
        arg, expected = str(photos), "s.csv.partial: is the PATH image itself"
    else:
        listed = {"list": photos / "l.txt", "root-list": tmp_path / "l.txt"}.get(how, tmp_path / "o" / "s.csv.partial")
        listed.write_text("0.png\n1.png\n")
        arg, expected = (str(listed) if how == "list" else f"{photos}::{listed}"), "is the PATH image list itself"
        out = out if how == "partial-list" else listed
    _refused(["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0",
              "--out", str(out), arg], expected, tmp_path)


# --- eval ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["ood", "ood-symlink", "id", "id-subfolder"])
def test_eval_out_inside_an_input_folder_is_refused_before_any_work(tmp_path, tiny_clip_config, where):
    """eval --out inside an OOD folder made the next run score its own scores_hist.png as an OOD image."""
    ood = _images(tmp_path / "ood")
    ids = _images(tmp_path / "id" / "val" / "red")
    out = {"ood": ood / "eval", "id": tmp_path / "id", "id-subfolder": ids / "eval",
           "ood-symlink": tmp_path / "elsewhere" / "eval"}[where]
    if where == "ood-symlink":  # a path outside that leads inside
        (tmp_path / "elsewhere").symlink_to(ood)
    folder = "--id" if where.startswith("id") else "--ood noise"
    line = _refused(["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", "none",
                     "--id", str(tmp_path / "id"), "--ood", f"noise={ood}", "--workers", "0", "--out", str(out)],
                    f"is inside the {folder} folder", tmp_path)
    assert "whose files are read as input" in line
    assert not (ood / "eval").exists()


def test_eval_out_never_replaces_an_image_a_set_lists(tmp_path, tiny, tiny_clip_checkpoint):
    """An OOD image hard-linked as OUT/scores_hist.png: the folder is elsewhere, the file is one."""
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    ood = _images(tmp_path / "ood")
    ids = tmp_path / "id" / "val"
    for c in CLASSES:
        _images(ids / c, n=2)
    (tmp_path / "eval").mkdir()
    os.link(ood / "0.png", tmp_path / "eval" / "scores_hist.png")
    _refused(["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id", str(tmp_path / "id"),
              "--ood", f"noise={ood}", "--workers", "0", "--out", str(tmp_path / "eval")],
             "its scores_hist.png would be the --ood noise image itself", tmp_path)


@pytest.mark.parametrize("how", ["ood-root-list", "split", "id-train-folder", "resnet-root-list"])
def test_eval_out_never_replaces_a_list_or_split_it_reads(tmp_path, tiny, tiny_clip_checkpoint, how):
    """eval --ood x=ROOT::OUT/metrics.csv compared --out's files with the string 'ROOT::...', no file: the
    list was replaced by the metrics (CLIP and ResNet tracks); --split and --id-train were not compared."""
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    ood = _images(tmp_path / "ood")
    ids = tmp_path / "id" / "val"
    for c in CLASSES:
        _images(ids / c, n=2)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.csv").write_text("0.png\n1.png\n")
    track = (["--checkpoint", str(tmp_path / "m.safetensors")] if how.startswith("resnet") else
             ["--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--scores", "knn"])
    ood_arg, extra = f"noise={ood}::{out / 'metrics.csv'}", []
    expected = "its metrics.csv would be the --ood noise image list itself"
    if how == "split":
        ood_arg, extra = f"noise={ood}", ["--id-train", str(tmp_path / "id"), "--split", str(out / "metrics.csv")]
        expected = "its metrics.csv would be the --split file itself"
    if how == "id-train-folder":
        shutil.copytree(tmp_path / "id", tmp_path / "train")
        ood_arg, extra, out = f"noise={ood}", ["--id-train", str(tmp_path / "train")], tmp_path / "train" / "eval"
        expected = "is inside the --id-train folder"
    _refused(["eval", *track, "--id", str(tmp_path / "id"), "--ood", ood_arg, *extra, "--workers", "0",
              "--out", str(out)], expected, tmp_path)


def test_eval_out_never_replaces_the_model_config(tmp_path, tiny_clip_config):
    (tmp_path / "eval").mkdir()
    model = shutil.copy(tiny_clip_config, tmp_path / "eval" / "config.json")
    _refused(["eval", "--zero-shot", "--model", model, "--pretrained", "none", "--id", str(_images(tmp_path / "id")),
              "--ood", f"noise={_images(tmp_path / 'ood')}", "--out", str(tmp_path / "eval")],
             "its config.json would be the --model file itself", tmp_path)


def test_resnet_eval_out_inside_an_input_folder(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not read: the output is checked first")
    ood = _images(tmp_path / "ood")
    _refused(["eval", "--checkpoint", str(ckpt), "--id", "cifar10", "--ood", f"noise={ood}", "--out",
              str(ood / "eval")], "is inside the --ood noise folder", tmp_path)
    _refused(["eval", "--checkpoint", str(ckpt), "--id", "cifar10", "--id-train", str(tmp_path), "--ood", "svhn",
              "--scores", "knn", "--out", str(tmp_path / "e")], "is inside the --id-train folder", tmp_path)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "metrics.csv").symlink_to(ckpt)
    _refused(["eval", "--checkpoint", str(ckpt), "--id", "cifar10", "--ood", "svhn", "--out", str(tmp_path / "e")],
             "its metrics.csv would be the --checkpoint file itself", tmp_path)


# --- export, fit, train -------------------------------------------------------------------------


def _fit_checkpoint(path, model_json):
    """A complete-looking fit checkpoint whose run used ``model_json`` (enough for export's checks)."""
    from clip_smot.clip.fit import CHECKPOINT_FORMAT, FitConfig

    clip = {"model": "clip-smot-tiny", "model_config": open(model_json).read(), "pretrained": "",
            "checkpoint_sha256": ""}
    config = FitConfig(model=str(model_json), pretrained="none", n_ctx=4).to_dict() | {
        "run": {"classnames": CLASSES, "split_sha256": "0" * 64, "clip": clip}}
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 1, "ctx": torch.zeros(4, 32), "optimizer": {},
                "scheduler": {}, "rng": {}, "config": config}, path)


@pytest.mark.parametrize("target", ["checkpoint-symlink", "config", "split", "model-flag", "runs-model", "folder"])
def test_export_out_never_replaces_what_it_reads(tmp_path, tiny_clip_config, target):
    """export --out onto the run's own checkpoint.pt (another spelling) replaced it, exit 0."""
    run = tmp_path / "run"
    run.mkdir()
    model = shutil.copy(tiny_clip_config, tmp_path / "clip-smot-tiny.json")
    _fit_checkpoint(run / "checkpoint.pt", model)
    (run / "config.json").write_text("{}")
    (run / "split.txt").write_text("a/b.jpg\t0\n")
    out = {"checkpoint-symlink": tmp_path / "p.safetensors", "config": run / "config.json",
           "split": run / "split.txt", "model-flag": tmp_path / "other.json", "runs-model": tmp_path / "clip-smot-tiny.json",
           "folder": run}[target]
    args = ["export", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu"]
    if target == "checkpoint-symlink":
        out.symlink_to(run / "checkpoint.pt")
    if target == "model-flag":
        args += ["--model", shutil.copy(tiny_clip_config, out)]
    expected = {"checkpoint-symlink": "is the --checkpoint file itself", "config": "is the run's config.json itself",
                "split": "is the run's split.txt itself", "model-flag": "is the --model file itself",
                "runs-model": "is the run's --model file itself", "folder": "is a folder; export writes one prompt file"}[target]
    _refused([*args, "--out", str(out)], expected, tmp_path)


@pytest.mark.parametrize("command", ["score", "export"])
def test_an_out_that_is_a_symbolic_link_is_refused(tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint, command):
    """score --out /dev/stdout, with stdout redirected to a file, replaced the system's /dev/stdout
    link with the CSV (exit 0): the output is written beside --out and renamed over it, and a
    rename replaces a link, not the file it points to. A link at --out is now refused, the link
    and its file left as they were."""
    victim = tmp_path / "log.txt"
    victim.write_text("kept\n")
    out = tmp_path / "out.link"
    out.symlink_to(victim)
    if command == "score":
        args = ["score", "--prompt", str(_prompt(tmp_path / "p.safetensors", tiny)), "--pretrained",
                tiny_clip_checkpoint, "--workers", "0", str(_images(tmp_path / "photos"))]
    else:
        run = tmp_path / "run"
        run.mkdir()
        _fit_checkpoint(run / "checkpoint.pt", shutil.copy(tiny_clip_config, tmp_path / "clip-smot-tiny.json"))
        args = ["export", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu"]
    _refused([*args, "--out", str(out)], f"--out {out}: is a symbolic link", tmp_path)
    assert out.is_symlink() and victim.read_text() == "kept\n"


@pytest.mark.parametrize("where", ["model-json", "run-file"])
def test_json_nested_too_deeply_is_one_line(tmp_path, tiny, tiny_clip_checkpoint, where):
    """A --model JSON, or the OUT.partial.json of a --resume, nested 100,000 deep raised
    RecursionError (not a ValueError) as a traceback; it is now the file's one line."""
    deep = "[" * 100_000 + "]" * 100_000
    args = ["score", "--prompt", str(_prompt(tmp_path / "p.safetensors", tiny)), "--pretrained", tiny_clip_checkpoint,
            "--workers", "0", "--out", str(tmp_path / "s.csv"), str(_images(tmp_path / "photos"))]
    if where == "model-json":
        (tmp_path / "deep.json").write_text(deep)
        expected = f"--model {tmp_path / 'deep.json'}"
        args += ["--model", str(tmp_path / "deep.json")]
    else:
        res = CliRunner().invoke(cli, args)  # (a whole run: its header and first row are the partial)
        assert res.exit_code == 0, res.output
        (tmp_path / "s.csv.partial").write_text("".join((tmp_path / "s.csv").read_text().splitlines(True)[:2]))
        (tmp_path / "s.csv").unlink()
        (tmp_path / "s.csv.partial.json").write_text(deep)
        expected = "s.csv.partial.json, which says what"
        args += ["--resume"]
    _refused(args, expected, tmp_path)


def _fit_args(data, model, checkpoint, out, *extra):
    return ["fit", "--data", str(data), "--shots", "1", "--model", model, "--pretrained", checkpoint,
            "--loss", "ce", "--n-ctx", "2", "--batch-size", "2", "--epochs", "1", "--precision", "fp32",
            "--device", "cpu", "--workers", "0", "--out", str(out), *extra]


def test_fit_out_never_replaces_or_lies_inside_its_inputs(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    data = tmp_path / "data"
    for c in CLASSES:
        _images(data / "train" / c, n=2)
    _refused(_fit_args(data, tiny_clip_config, tiny_clip_checkpoint, data / "train" / "runs"),
             "is inside the --data folder", tmp_path)
    _refused(_fit_args(data, tiny_clip_config, tiny_clip_checkpoint, data / "train"),
             "is inside the --data folder", tmp_path)
    (tmp_path / "run").mkdir()
    model = shutil.copy(tiny_clip_config, tmp_path / "run" / "config.json")  # a model JSON where fit writes its own
    _refused(_fit_args(data, model, tiny_clip_checkpoint, tmp_path / "run"),
             "its config.json would be the --model file itself", tmp_path)
    (tmp_path / "run" / "config.json").unlink()
    os.link(tiny_clip_checkpoint, tmp_path / "run" / "log.jsonl")  # (a hard link: the same file under two names)
    _refused(_fit_args(data, tiny_clip_config, tiny_clip_checkpoint, tmp_path / "run"),
             "its log.jsonl would be the --pretrained file itself", tmp_path, os.path.dirname(tiny_clip_checkpoint))
    (tmp_path / "run" / "log.jsonl").unlink()
    # a --cam-model file or a --split file where fit writes its config.json or log.jsonl
    cam = shutil.copy(tiny_clip_checkpoint, tmp_path / "run" / "config.json")  # (never read: refused first)
    _refused([*_fit_args(data, tiny_clip_config, tiny_clip_checkpoint, tmp_path / "run"), "--loss", "smot",
              "--cam-model", cam], "its config.json would be the --cam-model file itself", tmp_path)
    (tmp_path / "run" / "config.json").unlink()
    (tmp_path / "run" / "log.jsonl").write_text(f"{sorted(CLASSES)[0]}/0.png\t0\n")
    _refused(_fit_args(data, tiny_clip_config, tiny_clip_checkpoint, tmp_path / "run", "--split",
                       str(tmp_path / "run" / "log.jsonl")), "its log.jsonl would be the --split file itself", tmp_path)


def test_fit_keeps_its_own_split_given_back_with_split(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    """--split OUT/split.txt (what resume's error advises) is read, not rewritten; a file of the same
    split in another form (a blank line) would be replaced: refused, before anything is written."""
    data = tmp_path / "data"
    for c in CLASSES:
        _images(data / "train" / c, n=2)
    run = tmp_path / "run"
    run.mkdir()
    text = "".join(f"{c}/0.png\t{i}\n" for i, c in enumerate(sorted(CLASSES)))
    (run / "split.txt").write_text(text + "\n")
    _refused(_fit_args(data, tiny_clip_config, tiny_clip_checkpoint, run, "--split", str(run / "split.txt")),
             "which this run writes in another form; pass a copy of it", tmp_path)
    assert sorted(os.listdir(run)) == ["split.txt"]
    (run / "split.txt").write_text(text)
    inode = (run / "split.txt").stat().st_ino
    res = CliRunner().invoke(cli, _fit_args(data, tiny_clip_config, tiny_clip_checkpoint, run,
                                            "--split", str(run / "split.txt")))
    assert res.exit_code == 0, res.output
    assert (run / "split.txt").read_text() == text and (run / "split.txt").stat().st_ino == inode
    assert json.loads((run / "config.json").read_text())["run"]["n_images"] == 3


def test_train_out_never_replaces_or_lies_inside_its_inputs(tmp_path):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in CLASSES:
            _images(data / split / c, n=2)
    args = ["train", "--data", str(data), "--arch", "resnet_tiny", "--epochs", "1", "--device", "cpu",
            "--workers", "0"]
    _refused([*args, "--out", str(data / "val" / "red" / "run")], "is inside the --data val/ folder", tmp_path)
    (tmp_path / "run").mkdir()
    cam = tmp_path / "run" / "model.safetensors"  # a base model's file where the SMOT run writes its own
    cam.write_bytes(b"the base model")
    # (refused as a folder holding a run's result before the two files are compared)
    _refused([*args, "--stage", "smot", "--cam-model", str(cam), "--out", str(tmp_path / "run")],
             "already holds a run (model.safetensors); choose another --out", tmp_path)


@pytest.mark.parametrize("command", ["fit", "train"])
def test_a_new_run_never_replaces_an_evaluation_or_a_users_files(tmp_path, tiny, tiny_clip_config,
                                                                  tiny_clip_checkpoint, command):
    """fit or train --out EVAL_DIR replaced the evaluation's config.json (its record) with the run's,
    and --out of a folder holding a user's log.jsonl emptied it, exit 0: a folder with no checkpoint
    was taken for a run stopped before its first one. Refused now, before any work."""
    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in CLASSES:
            _images(data / split / c, n=2)
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    res = CliRunner().invoke(cli, ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id",
                                   str(data / "val"), "--ood", f"x={_images(tmp_path / 'photos')}", "--workers", "0",
                                   "--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "log.jsonl").write_text("my notes\n")
    for out, name in ((tmp_path / "eval", "config.json"), (tmp_path / "notes", "log.jsonl")):
        args = (_fit_args(data, tiny_clip_config, tiny_clip_checkpoint, out) if command == "fit" else
                ["train", "--data", str(data), "--arch", "resnet_tiny", "--epochs", "1", "--device", "cpu",
                 "--workers", "0", "--out", str(out)])
        _refused(args, f"--out {out}: its {name} is not of a clip-smot {command} run stopped before its first "
                 "checkpoint", tmp_path)



@pytest.mark.parametrize("command", ["fit", "train"])
def test_a_run_of_the_other_command_in_out_is_not_offered_to_resume(tmp_path, tiny_clip_config, tiny_clip_checkpoint,
                                                                    command):
    """`fit --out RUN`, RUN holding a `clip-smot train` run (or `train --out` a fit run), says
    "already holds a run (checkpoint.pt); pass --resume to continue it", which is false: that
    --resume is then refused as "a train checkpoint ..., not a fit checkpoint". The line may
    refuse the folder, not send the user to a resume that cannot be."""
    from clip_smot.common import run_folder as rf

    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in CLASSES:
            _images(data / split / c, n=2)
    run = tmp_path / "run"
    run.mkdir()
    other = "train" if command == "fit" else "fit"
    rf.save_checkpoint(run / "checkpoint.pt", f"clip-smot-{other}-checkpoint", {"epoch": 1})
    args = (_fit_args(data, tiny_clip_config, tiny_clip_checkpoint, run) if command == "fit" else
            ["train", "--data", str(data), "--arch", "resnet_tiny", "--epochs", "1", "--device", "cpu",
             "--workers", "0", "--out", str(run)])
    line = _refused(args, f"--out {run}", tmp_path)
    assert line.endswith(f"--out {run}: already holds a run of clip-smot {other} (checkpoint.pt); choose another "
                         "--out"), line

def test_a_new_fit_never_replaces_a_users_split_or_beside_its_own_split_a_log(tmp_path, tiny_clip_config,
                                                                             tiny_clip_checkpoint):
    """A new fit writes split.txt too: a user's split.txt alone in --out (no config.json of a
    stopped run beside it) is refused as the log is; with --split OUT/split.txt (the run's own
    split, read and not rewritten) the run's other files are still checked: a user's log.jsonl."""
    data = tmp_path / "data"
    for c in CLASSES:
        _images(data / "train" / c, n=2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "split.txt").write_text("my split\n")
    _refused(_fit_args(data, tiny_clip_config, tiny_clip_checkpoint, tmp_path / "mine"),
             f"--out {tmp_path / 'mine'}: its split.txt is not of a clip-smot fit run stopped before its first "
             "checkpoint (no config.json of one beside it); the run would replace it; choose another --out", tmp_path)
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "split.txt").write_text("".join(f"{c}/0.png\t{y}\n" for y, c in enumerate(sorted(CLASSES))))
    (tmp_path / "own" / "log.jsonl").write_text("my notes\n")
    _refused(_fit_args(data, tiny_clip_config, tiny_clip_checkpoint, tmp_path / "own", "--split",
                       str(tmp_path / "own" / "split.txt")),
             f"--out {tmp_path / 'own'}: its log.jsonl is not of a clip-smot fit run stopped before its first "
             "checkpoint (no config.json of one beside it); the run would replace it; choose another --out", tmp_path)


def test_a_second_command_writing_the_same_out_is_refused(tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint):
    """Two scores into one --out both exited 0, leaving a CSV without its header (one renamed
    OUT.partial while the other appended to it); two fits or trains into one folder interleaved
    their log lines and left one run's config beside the other's checkpoint (two evaluations, one
    run's metrics beside the other's). While a command holds --out, a second one is refused
    before it reads or writes anything there."""
    from clip_smot.common.locks import output_lock

    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in CLASSES:
            _images(data / split / c, n=2)
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    (tmp_path / "s.csv.partial").write_text("path,pred,pred_index,mcm\n")  # (a run under way: not resumed into)
    commands = {
        "score": ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0", "--resume",
                  "--out", str(tmp_path / "s.csv"), str(data / "val")],
        "fit": _fit_args(data, tiny_clip_config, tiny_clip_checkpoint, tmp_path / "run"),
        "train": ["train", "--data", str(data), "--arch", "resnet_tiny", "--epochs", "1", "--device", "cpu",
                  "--workers", "0", "--out", str(tmp_path / "run")],
        "eval": ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id", str(data / "val"),
                 "--ood", f"x={_images(tmp_path / 'photos')}", "--workers", "0", "--out", str(tmp_path / "run")],
        "eval --checkpoint": ["eval", "--checkpoint", str(prompt), "--id", str(data), "--ood",
                              f"x={tmp_path / 'photos'}", "--device", "cpu", "--out", str(tmp_path / "run")],
    }
    for name, args in commands.items():
        out = args[args.index("--out") + 1]
        with output_lock(out, folder=name != "score"):  # (another command, writing there now)
            _refused(args, f"--out {out}: another clip-smot command is writing it now", tmp_path)
            assert name == "score" or os.listdir(out) == []  # (the holder's folder, as it was)
        assert not (tmp_path / "run").exists()
    before = [*os.listdir(tmp_path), "run"]  # (nothing beside the run folder: no lock file left)
    res = CliRunner().invoke(cli, commands["train"])  # (and once it is done, the lock is free)
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path)) == sorted(before) and "config.json" in os.listdir(tmp_path / "run")


@pytest.mark.parametrize("name", ["checkpoint.pt", "config.json", "log.jsonl", "prompt.safetensors", "summary.json"])
def test_a_file_out_is_never_a_file_of_another_run(tmp_path, tiny, tiny_clip_checkpoint, name):
    """score --out RUN/checkpoint.pt replaced a fit's checkpoint with a CSV, and export --out
    RUN/config.json another run's config with a prompt (exit 0 both). A file --out named as a
    run's file, in a folder holding a run (its checkpoint.pt or log.jsonl), is refused; export
    still writes its own run's prompt.safetensors, and a folder of prompts alone is no run."""
    run = tmp_path / "run"
    run.mkdir()
    for f in ("checkpoint.pt", "config.json", "log.jsonl"):
        (run / f).write_bytes(f"the run's {f}".encode())
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    expected = f"--out {run / name}: is the {name} of the run in {run} (it holds"
    _refused(["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0",
              "--out", str(run / name), str(_images(tmp_path / "photos"))], expected, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.pt").write_bytes(b"another run's checkpoint")
    _refused(["export", "--checkpoint", str(other / "checkpoint.pt"), "--out", str(run / name)], expected, tmp_path)
    if name == "prompt.safetensors":  # (the run's own prompt: export writes it again; refused later, as no checkpoint)
        res = CliRunner().invoke(cli, ["export", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(run / name)])
        assert res.exit_code == 1 and "not a readable" in res.output and "is the prompt.safetensors" not in res.output
    (tmp_path / "prompts").mkdir()
    res = CliRunner().invoke(cli, ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers",
                                   "0", "--out", str(tmp_path / "prompts" / name), str(tmp_path / "photos")])
    assert res.exit_code == 0, res.output


def test_check_output_compares_files_not_spellings(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("input")
    os.link(a, tmp_path / "hard.txt")
    (tmp_path / "soft.txt").symlink_to(a)
    for out in (a, tmp_path / "hard.txt", tmp_path / "soft.txt", tmp_path / "x" / ".." / "a.txt"):
        (tmp_path / "x").mkdir(exist_ok=True)
        with pytest.raises(UserError, match=r"^--out .*: is the --in file itself; writing there would destroy it$"):
            check_output(out, "--out", [("--in file", a)])
    check_output(tmp_path / "b.txt", "--out", [("--in file", a), ("--none", None), ("--int", 3)])  # other files pass
    check_output(tmp_path / "b", "--out", [("--in file", a)], [("the --data folder", tmp_path / "data")], writes=["a.txt"])
    with pytest.raises(UserError, match=r"^--out .*: its a.txt would be the --in file itself"):
        check_output(tmp_path, "--out", [("--in file", tmp_path / "hard.txt")], writes=["a.txt"])
    with pytest.raises(UserError, match=r"^--out .*: is a folder, not a file$"):  # (the Python API; click says it too)
        check_output(tmp_path, "--out", [])
    # a folder to be: "new/" was written as the file new (score wrote new/.partial, then a traceback)
    for out in (f"{tmp_path / 'new'}/", f"{tmp_path / 'new'}/.", ""):
        with pytest.raises(UserError, match=r"^--out .*: names a folder, not a file; give the file's name$"):
            check_output(out, "--out", [])
    with pytest.raises(UserError, match=r"^--out .*a.txt: is a file, not a folder$"):
        check_output(a, "--out", [], writes=["metrics.csv"])


# --- names the file system refuses --------------------------------------------------------------


@pytest.mark.parametrize("where", ["score-path", "score-list-line", "score-out", "eval-ood", "eval-ood-list",
                                   "eval-id", "eval-out"])
def test_a_name_longer_than_the_file_system_allows_is_one_line(tmp_path, tiny, tiny_clip_checkpoint, where):
    """A path component over 255 bytes made pathlib's exists()/is_dir()/is_file() raise
    'OSError: [Errno 36] File name too long' as a traceback (Python 3.11 answers False only for
    a missing file); it is one line naming the flag."""
    long = "a" * 300
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    photos = _images(tmp_path / "photos")
    (photos / "l.txt").write_text(f"0.png\n{long}.png\n")
    ids = tmp_path / "id" / "val"
    for c in CLASSES:
        _images(ids / c, n=2)
    score = ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0"]
    evaluate = ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0"]
    args, expected = {
        "score-path": ([*score, "--out", str(tmp_path / "s.csv"), str(photos / f"{long}.png")], "PATH "),
        "score-list-line": ([*score, "--out", str(tmp_path / "s.csv"), str(photos / "l.txt")],
                            f"PATH {photos / 'l.txt'}:2: {photos / long}.png"),
        "score-out": ([*score, "--out", str(tmp_path / f"{long}.csv"), str(photos)], "--out "),
        "eval-ood": ([*evaluate, "--id", str(ids), "--ood", f"x={tmp_path / long}", "--out", str(tmp_path / "e")],
                     "--ood x "),
        "eval-ood-list": ([*evaluate, "--id", str(ids), "--ood", f"x={long}.txt", "--out", str(tmp_path / "e")],
                          "--ood x "),
        "eval-id": ([*evaluate, "--id", str(tmp_path / long), "--ood", f"x={photos}", "--out", str(tmp_path / "e")],
                    "--id "),
        "eval-out": ([*evaluate, "--id", str(ids), "--ood", f"x={photos}", "--out", str(tmp_path / long)],
                     "--out "),
    }[where]
    line = _refused(args, expected, tmp_path)
    assert line.startswith(f"Error: {expected}") and line.endswith(": File name too long"), line


def test_control_characters_in_a_named_path_are_escaped_in_the_error_line(tmp_path, tiny, tiny_clip_checkpoint):
    """An error line quoting an image list's line carried its raw NUL byte (and would carry a
    terminal's escape sequence): control characters are written as escapes, as line breaks were."""
    from clip_smot.common.errors import one_line

    assert one_line("a\0b\x1b[2Jc\td\ne\x7f\x9b\u2028") == "a\\u0000b\\u001b[2Jc\\u0009d\\u000ae\\u007f\\u009b\\u2028"
    assert one_line("plain é ✓") == "plain é ✓"
    prompt = _prompt(tmp_path / "p.safetensors", tiny)
    photos = _images(tmp_path / "photos")
    (photos / "l.txt").write_text("0.png\na\0b\x1b[2J.png\n")
    line = _refused(["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0",
                     "--out", str(tmp_path / "s.csv"), str(photos / "l.txt")], "does not exist", tmp_path)
    assert line == f"Error: PATH {photos / 'l.txt'}:2: {photos}/a\\u0000b\\u001b[2J.png does not exist", line


def test_a_fifo_or_a_folder_given_as_an_input_file_is_named_as_such(tmp_path, tiny, tiny_clip_checkpoint):
    """--prompt, --model, --pretrained and export's --checkpoint given a FIFO said "no such file"
    for a path that is there (the user looked for it); a folder named as a config or weights file
    too. Each says what it is, and is not opened (a FIFO would wait for a writer)."""
    prompt, photos = _prompt(tmp_path / "p.safetensors", tiny), _images(tmp_path / "photos")
    for name in ("fifo.safetensors", "fifo.json", "fifo.pt"):
        os.mkfifo(tmp_path / name)
    for name in ("folder.json", "folder.pt"):
        (tmp_path / name).mkdir()
    fifo, score = "not a regular file (a FIFO, a device)", ["score", "--workers", "0", "--out", str(tmp_path / "s.csv")]
    cases = [
        (["--prompt", str(tmp_path / "fifo.safetensors")], f"--prompt {tmp_path / 'fifo.safetensors'}: {fifo}"),
        (["--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--model", str(tmp_path / "fifo.json")],
         f"--model {tmp_path / 'fifo.json'}: {fifo}"),
        (["--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--model", str(tmp_path / "folder.json")],
         f"--model {tmp_path / 'folder.json'}: a folder, not a model-config JSON file"),
        (["--prompt", str(prompt), "--pretrained", str(tmp_path / "fifo.pt")],
         f"--pretrained {tmp_path / 'fifo.pt'}: {fifo}"),
        (["--prompt", str(prompt), "--pretrained", str(tmp_path / "folder.pt")],
         f"--pretrained {tmp_path / 'folder.pt'}: a folder, not a checkpoint file"),
    ]
    for args, expected in cases:
        assert _refused([*score, *args, str(photos)], expected, photos) == f"Error: {expected}"
    expected = f"--checkpoint {tmp_path / 'fifo.pt'}: {fifo}"
    assert _refused(["export", "--checkpoint", str(tmp_path / "fifo.pt"), "--out", str(tmp_path / "e.safetensors")],
                    expected, photos) == f"Error: {expected}"
