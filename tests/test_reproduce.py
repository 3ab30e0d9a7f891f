"""`clip-smot reproduce TABLE`: Table 8 end to end on tiny ImageNet-like folders and a tiny CLIP,
killed mid-stage and rerun; the ResNet tables' command lines; the paper's numbers file."""

import csv
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import (
    _cache_in_tmp,  # noqa: F401 (fixture)
    cam_resnet,  # noqa: F401 (fixture)
    save_as_if_from_cuda,
)
from PIL import Image

from clip_smot.cli import cli
from clip_smot.common.errors import UserError
from clip_smot.reproduce import TABLES, ReproduceOptions, paper_table, plan

WNIDS = ["n01440764", "n01443537", "n01484850"]
ROOT = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int, rng, tint: int | None = None):
    folder.mkdir(parents=True)
    for k in range(n):
        a = rng.integers(0, 90, (36, 40, 3))
        if tint is not None:
            a[..., tint] += 150
        Image.fromarray(a.astype(np.uint8)).save(folder / f"{folder.name}_{k}.JPEG", quality=90)


def _image_folder(folder: Path) -> Path:
    """A data folder for stand-in stages: made, with one (empty) image file, as reproduce looks
    for one in each folder of images before any stage runs (an empty OOD set stopped the run at its
    first evaluation, hours of fitting later)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x.jpg").touch()
    return folder


@pytest.fixture
def data(tmp_path):
    """IMAGENET/{train,val}/<wnid>/ (17 and 3 images a class) and OOD/{iNaturalist,SUN,Places,dtd/images}."""
    rng = np.random.default_rng(0)
    for i, w in enumerate(WNIDS):
        _images(tmp_path / "imagenet" / "train" / w, 17, rng, i)
        _images(tmp_path / "imagenet" / "val" / w, 3, rng, i)
    for name in ("iNaturalist", "SUN", "Places", "dtd/images/banded"):
        _images(tmp_path / "ood" / name, 3, rng)
    return tmp_path


def _args(data, out, cam, cfg, ckpt, epochs=2):
    return ["reproduce", "table8", "--imagenet", str(data / "imagenet"), "--ood-root", str(data / "ood"),
            "--model", cfg, "--pretrained", ckpt, "--cam-model", cam, "--shots", "17", "--epochs", str(epochs),
            "--batch-size", "32", "--precision", "fp32", "--device", "cpu", "--workers", "0", "--out", str(out)]


def _kill_when(proc, path: Path, timeout=600):
    """SIGKILL ``proc`` as soon as ``path`` exists (a stage mid-way); False if it ended first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if path.exists():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"{path} did not appear")


def test_table8_end_to_end_killed_mid_stage_and_rerun(data, cam_resnet, tiny_clip_config,  # noqa: F811
                                                      tiny_clip_checkpoint):
    out = data / "repro"
    # 4 epochs: the kill lands between the first checkpoint and the prompt even when this process
    # is descheduled for a few of the tiny fit's epochs (with 2, a loaded CI machine saw the prompt)
    args = _args(data, out, cam_resnet, tiny_clip_config, tiny_clip_checkpoint, epochs=4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clip_smot", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    # the second fit (CoOp) has written a checkpoint of an early epoch, not yet its prompt
    killed = _kill_when(proc, out / "fit-coop" / "checkpoint.pt")
    assert killed, proc.stderr.read().decode()
    assert (out / "fit-smot" / "prompt.safetensors").is_file()
    assert not (out / "fit-coop" / "prompt.safetensors").exists()
    smot_prompt = (out / "fit-smot" / "prompt.safetensors").stat().st_mtime_ns
    saved = torch.load(out / "fit-coop" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert 1 <= saved["epoch"] < 4

    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "fit-smot is finished; skipped" in res.output
    coop_line = next(line for line in res.output.splitlines() if line.startswith("reproduce: fit-coop:"))
    assert coop_line.endswith("--resume")
    assert (out / "fit-smot" / "prompt.safetensors").stat().st_mtime_ns == smot_prompt  # not redone
    log = [json.loads(line) for line in (out / "fit-coop" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]

    # the table: every paper cell of Table 8, ours from the stages' metrics.json, ours - paper
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 * 5 * 2
    by = {(r["row"], r["ood_set"], r["metric"]): r for r in rows}
    assert by[("SMOT", "iNaturalist", "fpr95")]["paper"] == "20.45"
    assert by[("MCM", "average", "auroc")]["paper"] == "90.62"
    for method in ("VOS", "VOS+", "NPOS"):
        assert by[(method, "SUN", "auroc")]["ours"] == ""
    for method, (stage, score) in {"SMOT": ("eval-smot", "mcm"), "KNN": ("eval-coop", "knn"),
                                   "ODIN": ("eval-coop", "odin"), "MCM": ("eval-mcm", "mcm")}.items():
        metrics = json.loads((out / stage / "metrics.json").read_text())["metrics"][score]
        for ood_set in ("iNaturalist", "SUN", "Places", "Textures", "average"):
            r = by[(method, ood_set, "auroc")]
            assert float(r["ours"]) == pytest.approx(metrics[ood_set]["auroc"], abs=0.005)
            assert float(r["difference"]) == pytest.approx(float(r["ours"]) - float(r["paper"]), abs=0.011)
    md = (out / "table.md").read_text()
    # the title names the model and shots that ran (it said ViT-B/16, 16 shots whatever they were)
    assert md.startswith(f"# Table 8: ImageNet-1k (ID), CLIP {os.path.basename(tiny_clip_config)}, 17 shots"), md[:200]
    assert "| Method | iNaturalist FPR95↓ | iNaturalist AUROC↑ |" in md and "Average FPR95↓" in md
    assert "| VOS | 31.65 / not run |" in md
    smot = by[("SMOT", "Places", "fpr95")]
    assert f"35.72 / {float(smot['ours']):.2f} ({float(smot['difference']):+.2f})" in md

    # a third run redoes nothing; its dry run lists every stage as done
    res = CliRunner().invoke(cli, args + ["--dry-run"])
    assert res.exit_code == 0 and res.output.count("# done: clip-smot ") == 5, res.output
    stamp = (out / "eval-coop" / "metrics.json").stat().st_mtime_ns
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and res.output.count("is finished; skipped") == 5, res.output
    assert (out / "eval-coop" / "metrics.json").stat().st_mtime_ns == stamp

    # a damaged metrics.json (its stage counts as done) was a JSONDecodeError or AttributeError
    # traceback while the table was written; it is one line, and removing it runs its stage again:
    # no longer the file the stage wrote (its record's "made"), or, under an older clip-smot's record
    # (no "made"), not a readable one
    good = (out / "eval-mcm" / "metrics.json").read_text()
    (out / "eval-mcm" / "metrics.json").write_text("{")
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and res.output.splitlines()[-1] == (
        f"Error: reproduce: {out / 'eval-mcm' / 'metrics.json'} is no longer the file its stage wrote (another command "
        f"wrote it since, or it was edited): its numbers would not be the stage's; remove {out / 'eval-mcm'} to run "
        "the stage again"), res.output
    record = json.loads((out / "eval-mcm" / "reproduce.json").read_text())
    del record["made"]
    (out / "eval-mcm" / "reproduce.json").write_text(json.dumps(record))
    for damaged, error in (("{", "JSONDecodeError"), ("[]", "AttributeError"),
                           (good.replace('"auroc": ', '"auroc": "x", "was": ', 1), "ValueError: auroc is 'x'"),
                           (good.replace('"auroc": ', f'"auroc": {10**400}, "was": ', 1), "OverflowError")):
        (out / "eval-mcm" / "metrics.json").write_text(damaged)
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert res.output.splitlines()[-1].startswith(f"Error: {out / 'eval-mcm' / 'metrics.json'}: not a readable "
                                                      f"metrics.json of clip-smot eval ({error}"), res.output
    (out / "eval-mcm" / "metrics.json").unlink()
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and res.output.count("is finished; skipped") == 4, res.output


@pytest.mark.parametrize("table", list(TABLES))
def test_dry_run_prints_valid_commands_for_every_table(tmp_path, table):
    """Each printed line parses as a clip-smot command (flags and choices), writes into OUT/<stage>, and
    every row of the paper's table is either measured by a printed stage or marked as not run."""
    out = tmp_path / "o"
    res = CliRunner().invoke(cli, ["reproduce", table, "--imagenet", "IN", "--ood-root", "OOD", "--cifar-root", "C",
                                   "--device", "cuda", "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines and all(line.startswith("clip-smot ") for line in lines)
    stages = set()
    for line in lines:
        words = shlex.split(line)[1:]
        command = cli.commands[words[0]]
        command.make_context(words[0], words[1:])  # raises on an unknown flag or a bad choice
        assert words[words.index("--device") + 1] == "cuda"
        stage = Path(words[words.index("--out") + 1])
        assert stage.parent == out
        stages.add(stage.name)
    assert not out.exists()  # a dry run writes nothing
    p = plan(table, ReproduceOptions(out=str(out), imagenet="IN", ood_root="OOD", cifar_root="C"))
    # every row of the paper, in the paper's order (paper_tables.csv's): table.md lists them as the plan does
    paper_rows = list(dict.fromkeys(r["row"] for r in paper_table(TABLES[table][0])))
    assert list(p.rows) == paper_rows
    assert {w[0] for w in p.rows.values() if w} <= stages


@pytest.mark.parametrize("table", list(TABLES))
def test_a_stages_options_are_read_as_its_command_reads_them(tmp_path, table):
    """reproduce reads a fit's or training's command line itself (it may not import the CLI) to
    compare a checkpoint it would resume with the stage's options: each such stage of each table,
    with and without the options reproduce passes on, gives the config its command's options give."""
    from clip_smot.clip.fit import FitConfig
    from clip_smot.reproduce import _stage_config
    from clip_smot.resnet.train import TrainConfig

    for extra in ({}, {"epochs": 3, "batch_size": 16, "precision": "fp32", "workers": 0, "shots": 4, "model": "m.json",
                       "pretrained": "none", "cam_model": "c.safetensors"}):
        o = ReproduceOptions(out=str(tmp_path / "o"), imagenet="IN", ood_root="OOD", cifar_root="C", **extra)
        stages = [s for s in plan(table, o).stages if s.command in ("fit", "train")]
        assert stages
        # (and the boolean flags, their --no- forms included, which no table's stage gives today)
        flags = {"fit": ["--csc", "--no-cuda-graph", "--compile", "--no-overlap-encoders"],
                 "train": ["--compile", "--cuda-graph"]}
        for stage in stages:
            for argv in (list(stage.argv), [*stage.argv, *flags[stage.command]]):
                params = cli.commands[stage.command].make_context(stage.command, argv[1:]).params
                params["compile"] = params.pop("compile_", params.get("compile"))
                params["split"] = params.pop("split_file", params.get("split"))
                config = FitConfig if stage.command == "fit" else TrainConfig
                want = config(**{f.name: params[f.name] for f in dataclasses.fields(config) if f.name in params})
                assert _stage_config(argv, config) == want, argv


def test_missing_data_root_is_one_line_and_runs_nothing(tmp_path, data):
    out = tmp_path / "o"
    res = CliRunner().invoke(cli, ["reproduce", "table8", "--imagenet", str(data / "imagenet"), "--ood-root",
                                   str(tmp_path / "nope"), "--out", str(out)])
    assert res.exit_code == 1 and "--ood-root (iNaturalist): no such folder" in res.output
    assert "Traceback" not in res.output and not out.exists()
    res = CliRunner().invoke(cli, ["reproduce", "table2", "--ood-root", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 1 and "--cifar-root: table2 needs it" in res.output


def test_every_missing_input_is_named_before_any_stage_runs(tmp_path, monkeypatch):
    """Only the first missing OOD folder was named (SUN, Places and Textures were missing too);
    and a --cifar-root without CIFAR-10 or SVHN passed the folder check offline: the trainings
    ran, and the first evaluation failed on SVHN hours later. Offline, torchvision's sets are
    looked for under --cifar-root first, and every missing input is named in one line."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # (the probe is monkeypatched: the message of no switch)
    from clip_smot.resnet import data
    from clip_smot.reproduce import run_reproduce

    ran = []
    out, empty = tmp_path / "o", tmp_path / "cifar"
    for folder in (empty, tmp_path / "imagenet" / "train", tmp_path / "imagenet" / "val"):
        _image_folder(folder)
    with pytest.raises(UserError) as e:
        run_reproduce("table8", ReproduceOptions(out=str(out), imagenet=str(tmp_path / "imagenet"),
                                                 ood_root=str(tmp_path / "none")),
                      ran.append, echo=lambda line: None)
    assert str(e.value) == "; ".join(f"--ood-root ({name}): no such folder: {tmp_path / 'none' / folder}" for name, folder
                                     in (("iNaturalist", "iNaturalist"), ("SUN", "SUN"), ("Places", "Places"),
                                         ("Textures", "Textures")))
    for name in ("Textures", "Places", "LSUN", "iSUN", "LSUN_resize"):
        _image_folder(tmp_path / name)
    monkeypatch.setattr(data, "_reachable", lambda host: False)
    with pytest.raises(UserError) as e:
        run_reproduce("table2", ReproduceOptions(out=str(out), cifar_root=str(empty), ood_root=str(tmp_path)),
                      ran.append, echo=lambda line: None)
    assert str(e.value) == (f"--cifar-root: cifar10 is not under {empty} and www.cs.toronto.edu cannot be reached "
                            f"(offline?); --cifar-root: svhn is not under {empty} and ufldl.stanford.edu cannot be "
                            "reached (offline?)")
    with pytest.raises(UserError) as e:  # (a missing folder and a missing set: both named at once)
        run_reproduce("table2", ReproduceOptions(out=str(out), cifar_root=str(empty), ood_root=str(tmp_path / "none")),
                      ran.append, echo=lambda line: None)
    assert str(e.value).startswith(f"--ood-root (Textures): no such folder: {tmp_path / 'none' / 'Textures'}; ")
    assert str(e.value).endswith(f"; --cifar-root: svhn is not under {empty} and ufldl.stanford.edu cannot be "
                                 "reached (offline?)")
    assert ran == [] and not out.exists()


def test_an_out_inside_a_folder_of_images_the_stages_read_is_refused_before_any_stage(tmp_path):
    """An OUT inside IMAGENET/val or an OOD folder ran the fits and was refused by the first
    evaluation; inside IMAGENET/train, by the first fit, after OUT/fit-smot/reproduce.json was
    written there: a class folder 'r' of no images that every later fit on that data refused."""
    from clip_smot.reproduce import run_reproduce

    imagenet, ood, ran = tmp_path / "imagenet", tmp_path / "ood", []
    for folder in ("train", "val"):
        _image_folder(imagenet / folder)
    for folder in ("iNaturalist", "SUN", "Places", "Textures"):
        _image_folder(ood / folder)
    for table, out, what in (("table8", imagenet / "train" / "r", "--imagenet train/"),
                             ("table8", imagenet / "val" / "r", "--imagenet val/"),
                             ("table8", ood / "SUN" / "x" / "r", "--ood-root (SUN)"),
                             ("table4", ood / "Textures" / "r", "--ood-root (Textures)")):
        with pytest.raises(UserError) as e:
            run_reproduce(table, ReproduceOptions(out=str(out), imagenet=str(imagenet), ood_root=str(ood)),
                          ran.append, echo=lambda line: None)
        folder = out.parent.parent if what == "--ood-root (SUN)" else out.parent
        assert str(e.value) == (f"--out {out}: is inside the {what} folder {folder}, whose files are read as input; "
                                "write to a place outside it")
        assert not out.exists()
    assert ran == []


def test_each_tables_missing_data_is_named_by_its_own_table_and_flag(tmp_path, monkeypatch):
    """The error names the table asked for and the flag whose data is missing: table3 trains on
    CIFAR-100 (offline, looked for under --cifar-root as CIFAR-10 and SVHN are), table4 reads
    --imagenet, not --cifar-root; table8 given no --imagenet, or an empty one (an unset shell
    variable), says it needs it rather than naming a folder "train"; and an OOD "folder" that is a
    file is no folder."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # (the probe is monkeypatched: the message of no switch)
    from clip_smot.reproduce import run_reproduce
    from clip_smot.resnet import data

    monkeypatch.setattr(data, "_reachable", lambda host: False)
    ood, empty, ran = tmp_path / "ood", tmp_path / "cifar", []
    for folder in ("Textures", "Places", "LSUN", "iSUN", "iNaturalist"):
        _image_folder(ood / folder)
    (ood / "SUN").write_text("not a folder")
    for folder in (empty, tmp_path / "imagenet" / "train", tmp_path / "imagenet" / "val"):
        _image_folder(folder)

    def refusal(table, **kw):
        with pytest.raises(UserError) as e:
            run_reproduce(table, ReproduceOptions(out=str(tmp_path / "o"), ood_root=str(ood), **kw), ran.append,
                          echo=lambda line: None)
        return str(e.value)

    assert refusal("table3") == "--cifar-root: table3 needs it (see clip-smot reproduce --help)"
    assert refusal("table3", cifar_root=str(empty)) == (
        f"--cifar-root: cifar100 is not under {empty} and www.cs.toronto.edu cannot be reached (offline?); "
        f"--cifar-root: svhn is not under {empty} and ufldl.stanford.edu cannot be reached (offline?)")
    assert refusal("table4", imagenet=str(tmp_path / "nope")) == (
        f"--imagenet: no such folder: {tmp_path / 'nope'}; --ood-root (SUN): no such folder: {ood / 'SUN'}")
    for imagenet in (None, ""):
        assert refusal("table8", imagenet=imagenet) == "--imagenet: table8 needs it (see clip-smot reproduce --help)"
    assert refusal("table8", imagenet=str(tmp_path / "imagenet")) == f"--ood-root (SUN): no such folder: {ood / 'SUN'}"
    assert ran == [] and not (tmp_path / "o").exists()


def test_paper_numbers_file_has_every_table_and_their_averages():
    """Spot checks against the paper's text (each number read twice) and the tables' own averages."""
    t8 = {(r["row"], r["ood_set"], r["metric"]): float(r["value"]) for r in paper_table("8")}
    assert t8[("SMOT", "average", "fpr95")] == 32.48 and t8[("CoOp", "average", "auroc")] == 91.30
    assert t8[("MCM", "average", "fpr95")] == 43.55
    # the paper's averages are the means of its cells, to the rounding (0.005 on the cells' mean, 0.005 on
    # the average), but for six of them (its own inconsistencies, every cell checked against the text:
    # a typo in a transcribed cell would add to this set)
    off = set()
    for table, sets in (("2", 5), ("3", 5), ("4", 4), ("7", 5), ("8", 4), ("9", 5)):
        cells = {(r["row"], r["ood_set"], r["metric"]): float(r["value"]) for r in paper_table(table)}
        for row in {k[0] for k in cells}:
            for metric in ("fpr95", "auroc"):
                values = [v for (r, s, m), v in cells.items() if r == row and m == metric and s != "average"]
                assert len(values) == sets
                if abs(np.mean(values) - cells[(row, "average", metric)]) > 0.01 + 1e-9:
                    off.add((table, row, metric))
    assert off == {("3", "Energy", "auroc"), ("3", "VOS", "auroc"), ("4", "Energy", "fpr95"), ("4", "SMOT", "fpr95"),
                   ("4", "SMOT", "auroc"), ("9", "SMOT (noise)", "fpr95")}
    t1 = {(r["row"], r["ood_set"], r["metric"]): float(r["value"]) for r in paper_table("1")}
    t2 = {(r["row"], r["ood_set"], r["metric"]): float(r["value"]) for r in paper_table("2")}
    for (row, s, m), v in t2.items():  # Table 1's CIFAR-10 columns are Table 2's MSP and SMOT rows
        if row in ("MSP", "SMOT"):
            assert t1[(f"CIFAR-10 {'CE' if row == 'MSP' else 'SMOT'}", s, m)] == v
    t6 = {(r["row"], r["metric"]): float(r["value"]) for r in paper_table("6")}
    assert t6[("ResNet18 SMOT", "id_acc")] == 94.54 and t6[("DenseNet CE", "auroc")] == 89.28


def test_a_finished_stage_of_another_table_or_options_is_refused_not_used(tmp_path, monkeypatch):
    """Tables 2 and 3 name their stages alike (train-base, eval-base, ...): `reproduce table3` into
    the --out of a table2 run skipped every stage as finished and wrote CIFAR-10's numbers as
    Table 3's; a smoke run's 1-epoch models were used by a later full run the same way. Each stage
    folder now records its command line (reproduce.json, run-control flags left out): a folder of
    another command, or a finished run with no record, is one line; the same table and options,
    --workers and --device apart, find their stages finished."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out = tmp_path / "o"
    table2, fake = _table2_fakes(tmp_path, set())  # (every stage finishes at once)

    def options(**kw):
        return dataclasses.replace(table2, **kw)

    monkeypatch.setattr("clip_smot.resnet.data.torchvision_unavailable", lambda name, root: None)  # (as if there)
    run_reproduce("table2", options(epochs=1), fake, echo=lambda line: None)  # (their "{}" metrics: empty cells)
    assert json.loads((out / "train-base" / RECORD).read_text())["argv"][:3] == ["train", "--dataset", "cifar10"]
    lines = []
    run_reproduce("table2", options(epochs=1, workers=0, device="cpu"), fake, dry_run=True, echo=lines.append)
    assert lines and all(line.startswith("# done: ") for line in lines)  # (--workers, --device: run control)
    for table, kw in (("table3", {"epochs": 1}), ("table2", {"epochs": 2})):
        with pytest.raises(UserError, match=rf"reproduce: {out / 'train-base'} holds the work of another command"):
            run_reproduce(table, options(**kw), fake, dry_run=True, echo=lambda line: None)
    (out / "train-base" / RECORD).unlink()
    with pytest.raises(UserError, match=rf"reproduce: {out / 'train-base'} holds a train run with no {RECORD}"):
        run_reproduce("table2", options(epochs=1), fake, dry_run=True, echo=lambda line: None)


@pytest.mark.parametrize("killed_write", [False, True])
def test_a_stage_whose_command_stopped_at_once_runs_again_with_other_options(tmp_path, killed_write):
    """A stage whose command stopped before it wrote anything (a path given wrong, an option out of
    range) left only its record: a run with the options put right was refused as "the work of
    another command" until the user removed the folder. Its record is now replaced, also beside the
    hidden temporary of a run SIGKILLed while it wrote that record (gone after); a folder with more
    than the record (a run's files) is still refused."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out, ran = tmp_path / "o", []
    options, fake = _table8_fakes(tmp_path, ran, {})

    def stops_at_once(argv):
        raise UserError("--shots 3: a class has fewer images")

    with pytest.raises(UserError, match="--shots 3"):
        run_reproduce("table8", dataclasses.replace(options, shots=3), stops_at_once, echo=lambda line: None)
    assert [f.name for f in (out / "fit-smot").iterdir()] == [RECORD]
    if killed_write:
        (out / "fit-smot" / f".{RECORD}.k1ll3d.tmp").write_text('{"argv": [')  # (the killed run's, half written)
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran[0] == "fit-smot" and "--shots" not in json.loads((out / "fit-smot" / RECORD).read_text())["argv"]
    assert sorted(f.name for f in (out / "fit-smot").iterdir()) == sorted([RECORD, "prompt.safetensors", "split.txt"])
    with pytest.raises(UserError, match=rf"reproduce: {out / 'fit-smot'} holds the work of another command"):
        run_reproduce("table8", dataclasses.replace(options, shots=4), fake, dry_run=True, echo=lambda line: None)


def test_a_stage_whose_command_wrote_no_final_file_is_not_vouched_for_and_runs_again(tmp_path):
    """A stage whose command ended well but left no final file (an eval's metrics.json: a run
    callable of the API's caller that skipped it) has nothing to vouch for: its record keeps
    "made" null, not a traceback from hashing a file that is not there, and the next reproduce
    runs that stage again, not the fits that wrote theirs."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out, ran = tmp_path / "o", []
    options, fake = _table8_fakes(tmp_path, ran, {})

    def evals_write_nothing(argv):
        if argv[0] == "eval":
            ran.append(Path(argv[argv.index("--out") + 1]).name)
            return
        fake(argv)

    run_reproduce("table8", options, evals_write_nothing, echo=lambda line: None)
    evals = ["eval-mcm", "eval-coop", "eval-smot"]
    assert ran == ["fit-smot", "fit-coop", *evals]
    assert [json.loads((out / name / RECORD).read_text())["made"] for name in evals] == [None, None, None]
    assert json.loads((out / "fit-smot" / RECORD).read_text())["made"] == hashlib.sha256(b"0").hexdigest()
    ran.clear()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == evals


def test_a_refused_stage_folder_names_the_command_it_holds_and_the_folder_to_remove(tmp_path):
    """The line shows the command line the folder's record holds beside this stage's (the
    user tells from them which option differs), and names the stage's folder to remove, not OUT
    with every other stage's work."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out = tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, [], {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    imagenet = os.path.realpath(tmp_path / "imagenet")  # (records follow links, a TMPDIR's too)
    with pytest.raises(UserError) as e:
        run_reproduce("table8", dataclasses.replace(options, shots=4), fake, dry_run=True, echo=lambda line: None)
    assert str(e.value) == (f"reproduce: {out / 'fit-smot'} holds the work of another command (clip-smot fit --data "
                            f"{imagenet}), not this stage's (clip-smot fit --data {imagenet} --shots 4): another "
                            f"table's or other options; give another --out, or remove {out / 'fit-smot'}")
    (out / "fit-smot" / RECORD).unlink()
    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, fake, dry_run=True, echo=lambda line: None)
    assert str(e.value) == (f"reproduce: {out / 'fit-smot'} holds a fit run with no {RECORD} saying which command "
                            f"made it; give another --out, or remove {out / 'fit-smot'} to run the stage again")


def _table8_fakes(tmp_path, ran: list, version: dict):
    """Table 8's data folders under ``tmp_path`` (one empty image file each), its options with
    ``--out tmp_path/o``, and a stand-in for its stages: each fit writes a split and a prompt of the
    bytes ``version`` gives its folder (b"0" by default), each eval an empty metrics.json; ``ran``
    gets each folder's name."""
    for folder in ("imagenet/train", "imagenet/val", "ood/iNaturalist", "ood/SUN", "ood/Places", "ood/Textures"):
        _image_folder(tmp_path / folder)

    def write(path: Path, data: bytes):  # (by rename, as the commands write: a link there is replaced)
        path.with_name(path.name + ".tmp").write_bytes(data)
        os.replace(path.with_name(path.name + ".tmp"), path)

    def fake(argv):
        folder = Path(argv[argv.index("--out") + 1])
        ran.append(folder.name)
        folder.mkdir(parents=True, exist_ok=True)
        if argv[0] == "fit":
            write(folder / "split.txt", b"n01440764/a.JPEG\t0\n")
            write(folder / "prompt.safetensors", version.get(folder.name, b"0"))
        else:
            write(folder / "metrics.json", b"{}")

    options = ReproduceOptions(out=str(tmp_path / "o"), imagenet=str(tmp_path / "imagenet"),
                               ood_root=str(tmp_path / "ood"))
    return options, fake


def _refused_at_once(options, fake, message: str) -> None:
    """Table 8's run refused with exactly ``message``, a dry run too."""
    from clip_smot.reproduce import run_reproduce

    for dry_run in (True, False):
        with pytest.raises(UserError) as e:
            run_reproduce("table8", options, fake, dry_run=dry_run, echo=lambda line: None)
        assert str(e.value) == message


def test_a_finished_stage_whose_record_has_no_hashes_is_skipped_with_a_note(tmp_path):
    """A reproduce.json written before records held input hashes cannot be checked: the stage is
    skipped as before, and its line says what to check by hand (a stage that reads no earlier
    stage's file, or whose record has hashes, gets no note)."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out = tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, [], {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    for name in ("eval-coop", "eval-mcm"):  # as an older clip-smot wrote them: the command line only
        record = json.loads((out / name / RECORD).read_text())
        (out / name / RECORD).write_text(json.dumps({"argv": record["argv"]}))
    lines = []
    run_reproduce("table8", options, fake, echo=lines.append)
    note = (f"  (its {RECORD}, from an older clip-smot, has no hashes of fit-coop's files: remove {out / 'eval-coop'} "
            "if fit-coop was redone since)")
    assert lines[:5] == ["reproduce: fit-smot is finished; skipped", "reproduce: fit-coop is finished; skipped",
                         "reproduce: eval-mcm is finished; skipped",  # (zero-shot: reads no stage's file)
                         f"reproduce: eval-coop is finished; skipped{note}",
                         "reproduce: eval-smot is finished; skipped"], lines
    lines.clear()
    run_reproduce("table8", options, fake, dry_run=True, echo=lines.append)
    assert [line.endswith(note) for line in lines[:5]] == [False, False, False, True, False], lines


def test_a_zero_shot_stage_made_with_other_prompts_is_refused_not_skipped(tmp_path):
    """eval-mcm finished by a clip-smot that still wrote CoOp's "a photo of a {c}." (with a
    period) has the command line of today's, which fills MCM's "a photo of a {c}": reproduce
    skipped it and put the old prompts' numbers in the MCM row. Its metrics.json names the
    prompts (``text_features``): other prompts are refused before any stage runs; the same, none
    named (an older metrics.json), or a name that is no zero-shot prompts' (another writer's
    string, or no string), are skipped as before."""
    from clip_smot.reproduce import run_reproduce

    out, ran = tmp_path / "o", []
    options, fake = _table8_fakes(tmp_path, ran, {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    metrics = out / "eval-mcm" / "metrics.json"
    record = json.loads((out / "eval-mcm" / "reproduce.json").read_text())
    del record["made"]  # (an older clip-smot's record, beside its metrics.json)
    (out / "eval-mcm" / "reproduce.json").write_text(json.dumps(record))
    for named in ({}, {"text_features": "zero-shot prompts 'a photo of a {c}'"},  # (none named; today's)
                  {"text_features": "a prompt of another tool"}, {"text_features": 3}):  # (not judged)
        metrics.write_text(json.dumps(named))
        ran.clear()
        run_reproduce("table8", options, fake, echo=lambda line: None)
        assert ran == []
    metrics.write_text(json.dumps({"text_features": "zero-shot prompts 'a photo of a {c}.'", "metrics": {}}))
    for dry_run in (False, True):
        with pytest.raises(UserError) as e:
            run_reproduce("table8", options, fake, dry_run=dry_run, echo=lambda line: None)
        assert str(e.value) == (f"reproduce: made by an older clip-smot, which computed it otherwise: {out / 'eval-mcm'} "
                                "(its text features are zero-shot prompts 'a photo of a {c}.'; this clip-smot's are "
                                "zero-shot prompts 'a photo of a {c}'); remove that folder to run it again")
    assert ran == [] and metrics.is_file()  # (nothing ran, nothing removed)


def test_a_folder_named_as_a_model_or_tag_made_since_leaves_the_stages_finished(tmp_path, monkeypatch):
    """eval-mcm's --model ViT-B-16 --pretrained openai are names. A folder ./openai (or ./ViT-B-16)
    made in the working folder since the first run had the rerun write them absolute, and the
    finished evaluation was refused as "the work of another command"; the commands never read such
    a folder (a model or weights are a file or a name). A file of that name is still a path."""
    from clip_smot.reproduce import run_reproduce

    monkeypatch.chdir(tmp_path)
    ran = []
    options, fake = _table8_fakes(tmp_path, ran, {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    (tmp_path / "ViT-B-16").mkdir()
    (tmp_path / "openai").mkdir()
    ran.clear()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == []
    eval_mcm = next(s for s in plan("table8", options).stages if s.name == "eval-mcm")
    assert eval_mcm.identity(options.out)[eval_mcm.identity(options.out).index("--pretrained") + 1] == "openai"
    (tmp_path / "openai").rmdir()
    (tmp_path / "openai").write_bytes(b"weights")  # (a file of that name is what --pretrained reads)
    assert eval_mcm.identity(options.out)[eval_mcm.identity(options.out).index("--pretrained") + 1] == \
        os.path.realpath(tmp_path / "openai")


def test_a_file_named_as_the_value_of_a_flag_that_takes_no_path_is_not_hashed(tmp_path, monkeypatch):
    """Only the flags that name a file or folder are hashed in a record: files ./mcm and ./ce in
    the working folder (the values of --scores and --loss) are no stage's input, and changing them
    leaves the finished stages skipped, not refused as made with a file since changed."""
    from clip_smot.reproduce import RECORD, run_reproduce

    monkeypatch.chdir(tmp_path)
    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})
    for name in ("mcm", "ce"):
        (tmp_path / name).write_bytes(b"before")
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert all(json.loads((out / name / RECORD).read_text())["files"] == {} for name in ran)
    for name in ("mcm", "ce"):
        (tmp_path / name).write_bytes(b"after")
    ran.clear()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == []


def test_a_stage_made_from_an_earlier_stages_file_since_replaced_is_refused_not_skipped(tmp_path):
    """A fit redone (its folder removed, as reproduce's own error advises for other options) left
    the evaluations of the old prompt finished: reproduce skipped them and wrote their numbers as
    the new prompt's (an audit: 84.26 in the table, 100.0 from a fresh eval). Each stage records
    the SHA-256 of the earlier stages' files it reads; a replaced one is refused, before any stage
    runs where it can be (the earlier stage is finished), else once that stage has run."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out, ran, version = tmp_path / "o", [], {"fit-coop": b"1"}
    options, fake = _table8_fakes(tmp_path, ran, version)
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["fit-smot", "fit-coop", "eval-mcm", "eval-coop", "eval-smot"]
    record = json.loads((out / "eval-coop" / RECORD).read_text())
    assert record["inputs"] == {"fit-coop/prompt.safetensors": hashlib.sha256(b"1").hexdigest()}
    assert set(json.loads((out / "fit-coop" / RECORD).read_text())["inputs"]) == {"fit-smot/split.txt"}

    # the same fit redone to the same bytes (a deterministic run): its evaluation still counts; a dry run
    # cannot know which bytes the fit will give, and says so
    shutil.rmtree(out / "fit-coop")
    lines = []
    run_reproduce("table8", options, fake, dry_run=True, echo=lines.append)
    assert lines[3].startswith("# done: clip-smot eval ") and lines[3].endswith(
        "  (if fit-coop gives the files it was made from)"), lines
    ran.clear()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["fit-coop"]
    # redone to other bytes: refused once the fit has run, and the fit's work is kept
    shutil.rmtree(out / "fit-coop")
    version["fit-coop"] = b"2"
    ran.clear()
    with pytest.raises(UserError, match=rf"^reproduce: {out / 'eval-coop'} was made from "
                                        rf"{out / 'fit-coop' / 'prompt.safetensors'} as it was then, which has changed "
                                        rf"since: its numbers would not be of it; remove {out / 'eval-coop'} too"):
        run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["fit-coop"] and (out / "fit-coop" / "prompt.safetensors").read_bytes() == b"2"
    shutil.rmtree(out / "eval-coop")
    ran.clear()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["eval-coop"]
    # a finished stage's file replaced by hand (an export over it): refused before anything runs, dry run too
    (out / "fit-smot" / "prompt.safetensors").write_bytes(b"exported")
    ran.clear()
    for dry_run in (True, False):
        with pytest.raises(UserError, match=rf"^reproduce: {out / 'eval-smot'} was made from .* which has changed"):
            run_reproduce("table8", options, fake, dry_run=dry_run, echo=lambda line: None)
    assert ran == []


def _plans():
    o = ReproduceOptions(out="/o", imagenet="/in", ood_root="/ood", cifar_root="/c")
    return {name: plan(name, o) for name in TABLES}


def _measured_by(p, row):
    """(the eval stage's argv, the argv of the run it evaluates, the score) of a paper row."""
    stage_name, score = p.rows[row]
    stages = {s.name: list(s.argv) for s in p.stages}
    ev = stages[stage_name]
    assert ev[0] == "eval" and score in ev[ev.index("--scores") + 1].split(","), (row, ev)
    model = ev[ev.index("--checkpoint") + 1] if "--checkpoint" in ev else ev[ev.index("--prompt") + 1] \
        if "--prompt" in ev else None
    run = stages[Path(model).parent.name] if model else None
    return ev, run, score


def _flag(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


def _ood_dirs(argv) -> dict[str, str]:
    """The --ood NAME=DIR values of a command line, as {NAME: DIR} (a built-in set, --ood SVHN, left out)."""
    return dict(argv[i + 1].split("=", 1) for i, w in enumerate(argv) if w == "--ood" and "=" in argv[i + 1])


def test_each_resnet_row_is_measured_by_the_run_and_score_it_names():
    """The paper's rows name a method (a training) and a score; the stage and score each maps to
    are checked against the training's own flags, not against the row map."""
    plans = _plans()
    for table, dataset in (("table2", "cifar10"), ("table3", "cifar100"), ("table4", "imagenet200")):
        p = plans[table]
        for row, score in (("MSP", "msp"), ("ODIN", "odin"), ("Energy", "energy"), ("ReAct", "react"),
                           ("LogitNorm", "msp"), ("SMOT", "msp")):
            _, run, got = _measured_by(p, row)
            assert got == score and _flag(run, "--dataset") == dataset, (table, row)
            assert _flag(run, "--stage") == ("smot" if row == "SMOT" else "base"), (table, row)
            assert _flag(run, "--method") == ("logitnorm" if row == "LogitNorm" else None), (table, row)
    for row in ("CIFAR-10 CE", "CIFAR-10 SMOT", "CIFAR-100 CE", "CIFAR-100 SMOT"):
        _, run, score = _measured_by(plans["table1"], row)
        assert score == "msp" and _flag(run, "--dataset") == row.split()[0].lower().replace("-", "")
        assert _flag(run, "--stage") == ("smot" if row.endswith("SMOT") else "base"), row
    for method in ("CE", "SMOT"):
        for s in ("MSP", "ODIN", "Energy", "ReAct"):
            _, run, score = _measured_by(plans["table5"], f"{method} {s}")
            assert score == s.lower() and _flag(run, "--stage") == ("smot" if method == "SMOT" else "base")
    for label, arch in (("ResNet18", "resnet18"), ("WRN-40-2", "wrn40_2"), ("DenseNet", "densenet_bc")):
        for method in ("CE", "SMOT"):
            _, run, _ = _measured_by(plans["table6"], f"{label} {method}")
            assert _flag(run, "--arch") == arch and _flag(run, "--stage") == ("smot" if method == "SMOT" else "base")
    _, run, _ = _measured_by(plans["table7"], "w/o SMOT")
    assert _flag(run, "--stage") == "base"
    for a, b in (("1", "1"), ("0.67", "0.67"), ("2", "2"), ("5", "2"), ("20", "12"), ("30", "18"), ("18", "30"),
                 ("50", "20"), ("100", "50")):
        _, run, _ = _measured_by(plans["table7"], f"({a},{b})")
        assert (_flag(run, "--stage"), _flag(run, "--alpha"), _flag(run, "--beta")) == ("smot", a, b)
    for row, perturb in (("SMOT (masked as 0)", None), ("SMOT (masked as 1)", "one"), ("SMOT (noise)", "noise")):
        _, run, _ = _measured_by(plans["table9"], row)
        assert _flag(run, "--stage") == "smot" and _flag(run, "--perturb") == perturb, row
    _, run, _ = _measured_by(plans["table9"], "MSP")
    assert _flag(run, "--stage") == "base"


def test_each_clip_row_is_measured_by_the_prompt_and_score_it_names():
    p = _plans()["table8"]
    ev, run, score = _measured_by(p, "MCM")
    assert "--zero-shot" in ev and run is None and score == "mcm"
    ev, run, score = _measured_by(p, "SMOT")
    assert score == "mcm" and _flag(run, "--loss") is None and _flag(run, "--split") is None  # (SMOT: fit's default)
    for row in ("CoOp", "MSP", "ODIN", "Energy", "GradNorm", "Vim", "KNN"):
        ev, run, score = _measured_by(p, row)
        assert _flag(run, "--loss") == "ce" and score == ("mcm" if row == "CoOp" else row.lower()), row


def test_write_table_cells_csv_and_markdown_by_hand(tmp_path):
    """Table 6's cells (averages and ID accuracy) from hand-made metrics.json files: a measured row,
    a row not implemented (not run) and one whose stage has no metrics yet (-), in the plan's row order."""
    from clip_smot.reproduce import Plan, write_table

    for stage, report in (("eval-d", {"metrics": {"msp": {"average": {"fpr95": 20.0, "auroc": 95.5}},
                                                  "energy": {"average": {"fpr95": 99.0, "auroc": 1.0}}},
                                      "id_accuracy": 93.0}),
                          ("eval-r", {"metrics": {"msp": {"average": {"fpr95": 51.13, "auroc": 90.0}}},
                                      "id_accuracy": 96.5})):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.json").write_text(json.dumps(report))
    rows = {"ResNet18 CE": ("eval-r", "msp"), "DenseNet SMOT": ("eval-d", "msp"),  # (not in the paper's order)
            "WRN-40-2 SMOT": ("eval-missing", "msp"), "WRN-40-2 CE": None}
    cells = write_table("table6", Plan([], rows, ("average",), "T"), tmp_path)
    # the paper (data_lists/paper_tables.csv, Table 6): ResNet18 CE 51.13 / 91.27 / 95.12, WRN-40-2 CE 49.50 /
    # 91.30 / 95.08, WRN-40-2 SMOT 27.38 / 94.98 / 94.62, DenseNet SMOT 29.53 / 94.76 / 93.79
    assert (tmp_path / "table.csv").read_text().splitlines() == [
        "table,row,ood_set,metric,paper,ours,difference,stage,score",
        "6,ResNet18 CE,average,fpr95,51.13,51.13,0.00,eval-r,msp",
        "6,ResNet18 CE,average,auroc,91.27,90.00,-1.27,eval-r,msp",
        "6,ResNet18 CE,id,id_acc,95.12,96.50,1.38,eval-r,msp",
        "6,WRN-40-2 CE,average,fpr95,49.50,,,,",
        "6,WRN-40-2 CE,average,auroc,91.30,,,,",
        "6,WRN-40-2 CE,id,id_acc,95.08,,,,",
        "6,WRN-40-2 SMOT,average,fpr95,27.38,,,eval-missing,msp",
        "6,WRN-40-2 SMOT,average,auroc,94.98,,,eval-missing,msp",
        "6,WRN-40-2 SMOT,id,id_acc,94.62,,,eval-missing,msp",
        "6,DenseNet SMOT,average,fpr95,29.53,20.00,-9.53,eval-d,msp",
        "6,DenseNet SMOT,average,auroc,94.76,95.50,0.74,eval-d,msp",
        "6,DenseNet SMOT,id,id_acc,93.79,93.00,-0.79,eval-d,msp"]
    assert [c["ours"] for c in cells] == [51.13, 90.0, 96.5, None, None, None, None, None, None, 20.0, 95.5, 93.0]
    assert cells[2]["difference"] == pytest.approx(1.38) and cells[9]["difference"] == pytest.approx(-9.53)
    assert (tmp_path / "table.md").read_text().splitlines()[4:] == [
        "| Method | Average FPR95↓ | Average AUROC↑ | ID ACC↑ |",
        "|---|---|---|---|",
        "| ResNet18 CE | 51.13 / 51.13 (+0.00) | 91.27 / 90.00 (-1.27) | 95.12 / 96.50 (+1.38) |",
        "| DenseNet SMOT | 29.53 / 20.00 (-9.53) | 94.76 / 95.50 (+0.74) | 93.79 / 93.00 (-0.79) |",
        "| WRN-40-2 SMOT | 27.38 / - | 94.98 / - | 94.62 / - |",
        "| WRN-40-2 CE | 49.50 / not run | 91.30 / not run | 95.08 / not run |",
        "",
        "Measured by: `eval-d/`, `eval-missing/`, `eval-r/` (each folder's metrics.json)."]


def test_a_metrics_json_without_the_rows_score_or_set_leaves_its_cell_empty(tmp_path):
    """An evaluation of other scores, or of other sets, has no number for the cell: it is empty
    (-), not a KeyError traceback; an integer (100, as a hand-made or another tool's file holds it)
    is a number. Table 6, the paper: ResNet18 CE 51.13 / 91.27 / 95.12, DenseNet SMOT 29.53 / 94.76 / 93.79."""
    from clip_smot.reproduce import Plan, write_table

    for stage, report in (("eval-r", {"metrics": {"energy": {"average": {"fpr95": 1.0, "auroc": 2.0}}},
                                      "id_accuracy": 100}),
                          ("eval-d", {"metrics": {"msp": {"SVHN": {"fpr95": 3.0, "auroc": 4.0}}}, "id_accuracy": 95})):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.json").write_text(json.dumps(report))
    rows = {"ResNet18 CE": ("eval-r", "msp"), "DenseNet SMOT": ("eval-d", "msp")}
    cells = write_table("table6", Plan([], rows, ("average",), "T"), tmp_path)
    assert [c["ours"] for c in cells] == [None, None, 100.0, None, None, 95.0]
    assert (tmp_path / "table.md").read_text().splitlines()[6:8] == [
        "| ResNet18 CE | 51.13 / - | 91.27 / - | 95.12 / 100.00 (+4.88) |",
        "| DenseNet SMOT | 29.53 / - | 94.76 / - | 93.79 / 95.00 (+1.21) |"]


def test_a_row_the_paper_has_no_number_for_keeps_the_tables_columns(tmp_path):
    """A method of a caller's plan that the paper's table lacks gets an empty cell in each
    column, not fewer cells (Markdown would shift them under other heads)."""
    from clip_smot.reproduce import Plan, write_table

    write_table("table6", Plan([], {"ResNet18 CE": None, "Ours only": ("eval-x", "msp")}, ("average",), "T"), tmp_path)
    assert (tmp_path / "table.md").read_text().splitlines()[4:8] == [
        "| Method | Average FPR95↓ | Average AUROC↑ | ID ACC↑ |", "|---|---|---|---|",
        "| ResNet18 CE | 51.13 / not run | 91.27 / not run | 95.12 / not run |", "| Ours only |  |  |  |"]


def test_table_csv_and_md_are_written_both_or_neither(tmp_path):
    """table.csv was renamed into place before table.md was written: a failure writing table.md
    (a full disk; here a folder at its name) left the new table.csv beside the old table.md."""
    from clip_smot.reproduce import Plan, write_table

    (tmp_path / "table.csv").write_text("the earlier table\n")
    (tmp_path / "table.md").mkdir()
    with pytest.raises(UserError, match=r"^cannot write .*table.md: Is a directory"):
        write_table("table6", Plan([], {"ResNet18 CE": None}, ("average",), "T"), tmp_path)
    assert (tmp_path / "table.csv").read_text() == "the earlier table\n"
    assert sorted(os.listdir(tmp_path)) == ["table.csv", "table.md"]


def test_every_stage_gets_the_options_and_data_roots_it_is_given():
    """Each option reaches every stage it is documented for, once, and each stage reads the data
    root of its own dataset: ImageNet's val for the CLIP evaluations, --cifar-root for CIFAR
    trainings, --imagenet for ImageNet-200's."""
    o = ReproduceOptions(out="/o", imagenet="/in", ood_root="/ood", cifar_root="/c", model="/m/tiny.json",
                         pretrained="/w.safetensors", cam_model="/cam.safetensors", shots=4, epochs=3, batch_size=8,
                         precision="fp32", device="cpu", workers=2)
    run_flags = {"--epochs": "3", "--batch-size": "8", "--precision": "fp32", "--device": "cpu", "--workers": "2"}
    p = plan("table8", o)
    for stage in p.stages:
        argv = list(stage.argv)
        for flag in ("--model", "--pretrained", "--device", "--workers"):
            assert argv.count(flag) == 1, (stage.name, flag, argv)
        assert (_flag(argv, "--model"), _flag(argv, "--pretrained")) == ("/m/tiny.json", "/w.safetensors"), argv
        assert (_flag(argv, "--device"), _flag(argv, "--workers")) == ("cpu", "2"), argv
        if stage.command == "fit":
            assert _flag(argv, "--data") == "/in" and _flag(argv, "--shots") == "4", argv
            assert _flag(argv, "--cam-model") == "/cam.safetensors", argv
            assert {f: _flag(argv, f) for f in run_flags} == run_flags, argv
        else:
            assert _flag(argv, "--id") == "/in/val", argv
    assert p.title == "Table 8: ImageNet-1k (ID), CLIP tiny.json, 4 shots"
    # (the paper's model, when none is given: the zero-shot evaluation names it; the fits take fit's default)
    p = plan("table8", ReproduceOptions(out="/o", imagenet="/in", ood_root="/ood"))
    stages = {s.name: list(s.argv) for s in p.stages}
    assert (_flag(stages["eval-mcm"], "--model"), _flag(stages["eval-mcm"], "--pretrained")) == ("ViT-B-16", "openai")
    assert "--model" not in stages["fit-smot"] and "--shots" not in stages["fit-smot"]
    assert p.title == "Table 8: ImageNet-1k (ID), CLIP ViT-B/16, 16 shots"

    for table in ("table1", "table2", "table3", "table4", "table5", "table6", "table7", "table9"):
        for stage in plan(table, o).stages:
            argv = list(stage.argv)
            assert (_flag(argv, "--device"), _flag(argv, "--workers")) == ("cpu", "2"), argv
            if stage.command == "train":
                dataset = _flag(argv, "--dataset")
                assert _flag(argv, "--data") == ("/in" if dataset == "imagenet200" else "/c"), argv
                assert {f: _flag(argv, f) for f in run_flags} == run_flags, argv
            else:  # (the ID set of the model it evaluates)
                trained = Path(_flag(argv, "--checkpoint")).parent.name
                assert trained == stage.name.replace("eval-", "train-")
                train = next(list(s.argv) for s in plan(table, o).stages if s.name == trained)
                assert _flag(argv, "--id") == _flag(train, "--dataset"), argv


def test_each_smot_training_takes_its_cams_from_the_base_model_it_is_compared_with():
    """SMOT masks with the CAMs of a trained cross-entropy model (train --stage smot --cam-model):
    each SMOT training names the model.safetensors of the base training of its dataset and
    architecture, in the same OUT."""
    for table, p in _plans().items():
        stages = {s.name: list(s.argv) for s in p.stages}
        smot = [argv for argv in stages.values() if argv[0] == "train" and _flag(argv, "--stage") == "smot"]
        assert smot or table == "table8", table
        for argv in smot:
            cam = Path(_flag(argv, "--cam-model"))
            assert cam.name == "model.safetensors" and cam.parent.parent == Path("/o"), argv
            base = stages[cam.parent.name]
            assert _flag(base, "--stage") == "base", (table, argv)
            assert (_flag(base, "--dataset"), _flag(base, "--arch")) == (_flag(argv, "--dataset"), _flag(argv, "--arch"))


def test_each_evaluation_scores_the_ood_sets_of_its_tables_columns():
    """The --ood names are the table's column names (paper_tables.csv's ood_set): a set passed
    under another name (svhn for SVHN) would leave its column without numbers. ImageNet tables:
    the four ImageNet OOD sets; CIFAR tables: the five CIFAR ones, SVHN the built-in set."""
    imagenet, cifar = ["iNaturalist", "SUN", "Places", "Textures"], ["Textures", "SVHN", "iSUN", "Places", "LSUN"]
    for table, p in _plans().items():
        want = imagenet if table in ("table4", "table8") else cifar
        assert list(p.ood_sets) == want, table
        paper = {r["ood_set"] for r in paper_table(TABLES[table][0])} - {"average", "id"}
        assert paper <= set(want), table
        for stage in p.stages:
            if stage.command != "eval":
                continue
            argv = list(stage.argv)
            given = [argv[i + 1] for i, w in enumerate(argv) if w == "--ood"]
            assert [g.split("=", 1)[0] for g in given] == want, (table, argv)
            assert [g for g in given if "=" not in g] == (["SVHN"] if want == cifar else [])
            for g in given:
                if "=" in g:
                    assert Path(g.split("=", 1)[1]).parent == Path("/ood"), g


def test_the_first_ood_folder_found_under_ood_root_is_used(tmp_path):
    """docs/reproduce.md: Places (or Places365), Textures (or dtd/images, dtd); the first name
    found is used: dtd/images (the images of the DTD archive) before dtd itself."""
    root = tmp_path / "ood"
    for name in ("iNaturalist", "SUN", "Places365", "dtd/images"):
        _image_folder(root / name)

    def ood_of(p):
        return _ood_dirs(p.stages[-1].argv)

    o = ReproduceOptions(out=str(tmp_path / "o"), imagenet=str(tmp_path), ood_root=str(root))
    assert ood_of(plan("table8", o)) == {"iNaturalist": str(root / "iNaturalist"), "SUN": str(root / "SUN"),
                                         "Places": str(root / "Places365"), "Textures": str(root / "dtd" / "images")}
    (root / "Textures").mkdir()
    (root / "Places").mkdir()
    assert ood_of(plan("table8", o))["Textures"] == str(root / "Textures")
    assert ood_of(plan("table8", o))["Places"] == str(root / "Places")


def test_lower_case_places365_and_a_bare_dtd_folder_are_found(tmp_path):
    """docs/reproduce.md's other names: places365 (as some archives spell it) and dtd itself (the
    DTD archive unpacked without its images/ level)."""
    root = tmp_path / "ood"
    for name in ("iNaturalist", "SUN", "places365", "dtd/banded"):
        _image_folder(root / name)
    given = _ood_dirs(plan("table8", ReproduceOptions(out=str(tmp_path / "o"), imagenet=str(tmp_path),
                                                     ood_root=str(root))).stages[-1].argv)
    assert (given["Places"], given["Textures"]) == (str(root / "places365"), str(root / "dtd"))


@pytest.mark.parametrize("table", ["table2", "table4", "table8"])
def test_each_table_takes_its_own_places_from_a_root_holding_both(tmp_path, table):
    """The ImageNet tables' Places (MOS's 50 categories) and the CIFAR tables' (the CIFAR benchmark's
    Places365 subset) are other sets. With both under --ood-root (Places and places365), every
    table took Places, the first name looked for: the CIFAR tables scored the ImageNet set without
    a word. Each kind of table now looks for its own first; either alone is still found."""
    root = tmp_path / "ood"
    for name in ("iNaturalist", "SUN", "Places", "places365", "Textures", "iSUN", "LSUN"):
        _image_folder(root / name)
    o = ReproduceOptions(out=str(tmp_path / "o"), imagenet=str(tmp_path), ood_root=str(root),
                         cifar_root=str(tmp_path))
    own = "Places" if table in ("table4", "table8") else "places365"
    assert _ood_dirs(plan(table, o).stages[-1].argv)["Places"] == str(root / own)
    shutil.rmtree(root / own)
    other = "places365" if own == "Places" else "Places"
    assert _ood_dirs(plan(table, o).stages[-1].argv)["Places"] == str(root / other)


def test_a_missing_cifar_root_is_named_once(tmp_path, monkeypatch):
    """A --cifar-root that is no folder is one error, not also each torchvision set looked for in it."""
    from clip_smot.reproduce import run_reproduce
    from clip_smot.resnet import data

    monkeypatch.setattr(data, "_reachable", lambda host: False)
    for name in ("Textures", "Places", "LSUN", "iSUN"):
        _image_folder(tmp_path / name)
    missing, ran = tmp_path / "nope", []
    with pytest.raises(UserError) as e:
        run_reproduce("table2", ReproduceOptions(out=str(tmp_path / "o"), cifar_root=str(missing),
                                                 ood_root=str(tmp_path)), ran.append, echo=lambda line: None)
    assert str(e.value) == f"--cifar-root: no such folder: {missing}"
    assert ran == [] and not (tmp_path / "o").exists()


def _table2_fakes(tmp_path, interrupt: set):
    """Table 2's data folders under ``tmp_path``, its options, and a stand-in for its
    stages: a stage named in ``interrupt`` writes its checkpoint.pt and is interrupted (Ctrl-C,
    the name taken out of ``interrupt``); the others write their final file."""
    from clip_smot.reproduce import FINAL_FILE

    (tmp_path / "cifar-10-batches-py").mkdir(exist_ok=True)
    for name in ("Textures", "Places", "LSUN", "iSUN"):
        _image_folder(tmp_path / name)

    def fake(argv):
        folder = Path(argv[argv.index("--out") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        if folder.name in interrupt:
            interrupt.discard(folder.name)
            (folder / "checkpoint.pt").write_bytes(b"epoch 1")
            raise KeyboardInterrupt
        (folder / FINAL_FILE[argv[0]]).write_text("{}")

    return ReproduceOptions(out=str(tmp_path / "o"), cifar_root=str(tmp_path), ood_root=str(tmp_path)), fake


def _table2_counted(tmp_path, monkeypatch):
    """:func:`_table2_fakes` run from ``tmp_path`` (the working folder), its CIFAR taken as there:
    the options, a runner of the fake stages, and the list of the stage folders it ran."""
    monkeypatch.setattr("clip_smot.resnet.data.torchvision_unavailable", lambda name, root: None)  # (as if there)
    options, fake = _table2_fakes(tmp_path, set())
    ran = []

    def run(argv):
        ran.append(Path(_flag(argv, "--out")).name)
        fake(argv)

    monkeypatch.chdir(tmp_path)
    return options, run, ran


def test_an_interrupted_training_is_resumed_and_one_without_a_record_refused(tmp_path, monkeypatch):
    """A training interrupted mid-way (its checkpoint.pt there, no summary.json) is continued
    with --resume by the next run, and its dry run says so; the record is written before the
    stage runs, so an interrupted stage has one. A checkpoint with no record is another command's."""
    from clip_smot.reproduce import RECORD, run_reproduce

    monkeypatch.setattr("clip_smot.resnet.data.torchvision_unavailable", lambda name, root: None)  # (as if there)
    out, calls = tmp_path / "o", []
    options, fake = _table2_fakes(tmp_path, {"train-smot"})

    def run(argv):
        calls.append(list(argv))
        fake(argv)

    with pytest.raises(KeyboardInterrupt):
        run_reproduce("table2", options, run, echo=lambda line: None)
    assert [Path(_flag(c, "--out")).name for c in calls] == ["train-base", "train-smot"]
    assert (out / "train-smot" / RECORD).is_file() and not (out / "train-smot" / "summary.json").exists()
    planned = {s.name: list(s.argv) for s in plan("table2", options).stages}
    lines = []
    run_reproduce("table2", options, run, dry_run=True, echo=lines.append)
    assert lines[1] == f"clip-smot {shlex.join(planned['train-smot'] + ['--resume'])}", lines
    calls.clear()
    run_reproduce("table2", options, run, echo=lambda line: None)
    assert calls[0] == planned["train-smot"] + ["--resume"]
    assert [c[-1] == "--resume" for c in calls] == [True, False, False, False, False]

    shutil.rmtree(out)  # a checkpoint with no record: not resumed as this stage's
    options, fake = _table2_fakes(tmp_path, {"train-base"})
    with pytest.raises(KeyboardInterrupt):
        run_reproduce("table2", options, fake, echo=lambda line: None)
    (out / "train-base" / RECORD).unlink()
    with pytest.raises(UserError, match=rf"^reproduce: {out / 'train-base'} holds a train run with no {RECORD}"):
        run_reproduce("table2", options, fake, dry_run=True, echo=lambda line: None)


@pytest.mark.parametrize("record, why", [
    ({"argv": ["fit"], "inputs": []}, "inputs is not an object"),
    ({"argv": ["fit"], "files": []}, "files is not an object"),
    ({"argv": ["fit"], "model": 1}, "model is no SHA-256 string"),  # (a training's model.safetensors, never compared)
    ({"argv": ["fit", 1]}, "argv is not a list of strings"),
    ({"argv": "fit --data d"}, "argv is not a list of strings"),  # (a string: each of its characters is one)
    ({"inputs": {}}, "no argv"),
    (["fit"], "not a JSON object"),
    ("fit --data d", "not a JSON object"),
])
def test_a_damaged_record_is_one_line_naming_the_folder_to_remove(tmp_path, record, why):
    from clip_smot.reproduce import RECORD, run_reproduce

    out = tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, [], {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    (out / "fit-coop" / RECORD).write_text(json.dumps(record))
    _refused_at_once(options, fake, f"reproduce: {out / 'fit-coop' / RECORD} cannot be read ({why}); remove "
                                    f"{out / 'fit-coop'} to run the stage again")


def test_an_evaluation_with_no_record_is_named_so_in_one_line(tmp_path):
    """A finished evaluation whose reproduce.json is gone: refused, the line naming the folder
    (it said "holds a eval run")."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out = tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, [], {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    (out / "eval-coop" / RECORD).unlink()
    _refused_at_once(options, fake, f"reproduce: {out / 'eval-coop'} holds an eval run with no {RECORD} saying which "
                                    f"command made it; give another --out, or remove {out / 'eval-coop'} to run the "
                                    "stage again")


@pytest.mark.parametrize("sha", [None, 1, ["0" * 64]])
def test_a_record_whose_input_hash_is_no_string_is_refused_not_skipped(tmp_path, sha):
    """eval-coop's record with the hash of fit-coop's prompt null (or another non-string): the stage
    was skipped as finished, the prompt never compared (a null read as an older record's missing
    hash), though fit-coop was redone since."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out = tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, [], {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    record = json.loads((out / "eval-coop" / RECORD).read_text())
    record["inputs"]["fit-coop/prompt.safetensors"] = sha
    (out / "eval-coop" / RECORD).write_text(json.dumps(record))
    (out / "fit-coop" / "prompt.safetensors").write_bytes(b"1")  # (redone since)
    _refused_at_once(options, fake, f"reproduce: {out / 'eval-coop' / RECORD} cannot be read (inputs holds a "
                                    f"SHA-256 that is no string); remove {out / 'eval-coop'} to run the stage again")


@pytest.mark.parametrize("made", [0, True, [], {}, 1.5])
def test_a_record_whose_made_is_no_string_is_refused_not_skipped(tmp_path, made):
    """eval-coop's record with "made" 0 (or another non-string, neither null nor a SHA-256): the
    stage was skipped as finished and its metrics.json, since replaced by an eval run by hand, never
    compared (only a string was): the table held that eval's numbers in the CoOp rows, exit 0."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out = tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, [], {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    record = json.loads((out / "eval-coop" / RECORD).read_text())
    (out / "eval-coop" / RECORD).write_text(json.dumps({**record, "made": made}))
    (out / "eval-coop" / "metrics.json").write_text('{"id_accuracy": 12.5}')  # (the eval by hand's)
    _refused_at_once(options, fake, f"reproduce: {out / 'eval-coop' / RECORD} cannot be read (made is no SHA-256 "
                                    f"string); remove {out / 'eval-coop'} to run the stage again")


@pytest.mark.parametrize("kind", ["folder", "fifo", "dangling link"])
def test_a_record_that_is_no_file_is_named_as_such(tmp_path, kind):
    """eval-coop's reproduce.json a folder, a FIFO or a link to nothing beside its finished work: the
    line said the folder held a run "with no reproduce.json", which the user saw there; it names the
    record and what it is."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out = tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, [], {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    record = out / "eval-coop" / RECORD
    record.unlink()
    {"folder": record.mkdir, "fifo": lambda: os.mkfifo(record),
     "dangling link": lambda: record.symlink_to(tmp_path / "none")}[kind]()
    _refused_at_once(options, fake, f"reproduce: {record} is no file (a folder, a FIFO or a link to none), so nothing "
                                    f"says which command made the eval run in {out / 'eval-coop'}; remove "
                                    f"{out / 'eval-coop'} to run the stage again")


def test_a_record_lacking_an_input_hash_is_skipped_with_the_note(tmp_path):
    """eval-coop's record with "inputs": {} (no hash of fit-coop's prompt): the stage was skipped as
    finished with no note, the prompt unchecked, as silently as if it were the one it was made from."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out = tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, [], {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    record = json.loads((out / "eval-coop" / RECORD).read_text())
    (out / "eval-coop" / RECORD).write_text(json.dumps({**record, "inputs": {}}))
    note = (f"  (its {RECORD} has no hashes of fit-coop's files: remove {out / 'eval-coop'} if fit-coop was redone "
            "since)")
    lines = []
    run_reproduce("table8", options, fake, echo=lines.append)
    assert f"reproduce: eval-coop is finished; skipped{note}" in lines, lines
    lines.clear()
    run_reproduce("table8", options, fake, dry_run=True, echo=lines.append)
    assert [line.endswith(note) for line in lines[:5]] == [False, False, False, True, False], lines


def test_a_record_lacking_one_input_hash_still_compares_the_others(tmp_path):
    """A finished stage reading two earlier stages' files, its record holding the hash of the
    second only (the first's unchecked, as an older record's): the second, changed since, is
    refused; the first's missing hash ends no check of the files after it."""
    from clip_smot.reproduce import RECORD, Stage

    out = tmp_path / "o"
    first, second = out / "fit-a" / "prompt.safetensors", out / "fit-b" / "prompt.safetensors"
    stage = Stage("eval-x", ("eval", "--prompt", str(first), "--pretrained", str(second), "--out",
                             str(out / "eval-x")), earlier=("fit-a", "fit-b"))
    for path in (first, second, out / "eval-x" / "metrics.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"now")
    (out / "eval-x" / RECORD).write_text(json.dumps({"argv": stage.identity(out), "inputs": {
        "fit-b/prompt.safetensors": hashlib.sha256(b"then").hexdigest()}}))
    assert stage.inputs(out) == [first, second]
    with pytest.raises(UserError) as e:
        stage.check_record(out)
    assert str(e.value) == (f"reproduce: {out / 'eval-x'} was made from {second} as it was then, which has changed "
                            f"since: its numbers would not be of it; remove {out / 'eval-x'} too, to run the stage "
                            "again")


@pytest.mark.parametrize("how", ["file", "dangling link"])
def test_a_stage_folder_that_is_no_folder_is_refused_before_any_stage_runs(tmp_path, how):
    """OUT/eval-smot a file (or a link to nothing), fit-smot to run: fit-smot and fit-coop ran, then
    eval-smot's folder could not be made ("--out ...: File exists"), hours later."""
    from clip_smot.reproduce import run_reproduce

    out, ran = tmp_path / "o", []
    options, fake = _table8_fakes(tmp_path, ran, {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    (out / "fit-smot" / "prompt.safetensors").unlink()
    shutil.rmtree(out / "eval-smot")
    if how == "file":
        (out / "eval-smot").write_text("{}")
    else:
        (out / "eval-smot").symlink_to(tmp_path / "nowhere")
    ran.clear()
    _refused_at_once(options, fake, f"reproduce: {out / 'eval-smot'} is no folder (a file, or a link to none); "
                                    "remove it to run the stage")
    assert ran == []


def test_two_stages_in_one_folder_are_refused_before_any_stage_runs(tmp_path):
    """OUT/eval-smot a link to OUT/eval-mcm, whose metrics.json is gone: eval-mcm ran, writing there,
    and eval-smot was skipped as finished, the SMOT row given MCM's numbers."""
    from clip_smot.reproduce import run_reproduce

    out, ran = tmp_path / "o", []
    options, fake = _table8_fakes(tmp_path, ran, {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    (out / "eval-mcm" / "metrics.json").unlink()
    shutil.rmtree(out / "eval-smot")
    (out / "eval-smot").symlink_to(out / "eval-mcm")
    ran.clear()
    _refused_at_once(options, fake, f"reproduce: {out / 'eval-smot'} and {out / 'eval-mcm'} are one folder (symbolic "
                                    "links followed); each stage needs its own: remove the link")
    assert ran == []


def test_a_finished_stage_whose_earlier_stages_file_is_gone_is_refused(tmp_path):
    """fit-coop read fit-smot's split.txt; with it deleted (fit-smot's prompt still there) the
    CoOp prompt can no longer be told to be of that split: refused, before anything runs."""
    from clip_smot.reproduce import run_reproduce

    out, ran = tmp_path / "o", []
    options, fake = _table8_fakes(tmp_path, ran, {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    (out / "fit-smot" / "split.txt").unlink()
    ran.clear()
    _refused_at_once(options, fake, f"reproduce: {out / 'fit-coop'} was made from {out / 'fit-smot' / 'split.txt'} "
                                    "as it was then, which is gone: its numbers would not be of it; remove "
                                    f"{out / 'fit-coop'} too, to run the stage again")
    assert ran == []


def test_a_run_ends_naming_both_table_files_and_returns_their_cells(tmp_path):
    """run_reproduce's last line names table.md and table.csv; it returns the cells table.csv
    holds (Table 8: 12 methods, 4 sets and their average, FPR95 and AUROC), a dry run None."""
    from clip_smot.reproduce import run_reproduce

    out = tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, [], {})
    lines = []
    cells = run_reproduce("table8", options, fake, echo=lines.append)
    assert lines[-1] == f"reproduce: {out / 'table.md'} and {out / 'table.csv'}"
    with open(out / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(cells) == len(rows) == 12 * 5 * 2
    assert [(c["row"], c["ood_set"], c["metric"]) for c in cells] == [(r["row"], r["ood_set"], r["metric"])
                                                                       for r in rows]
    assert all(c["ours"] is None for c in cells)  # (the stand-in's metrics.json hold no numbers)
    assert run_reproduce("table8", options, fake, dry_run=True, echo=lambda line: None) is None


def test_a_finished_tables_dry_run_lists_each_command_as_done_with_no_caveat(tmp_path):
    """Every stage finished at the start, its inputs compared then: no "(if ... gives the files)"."""
    from clip_smot.reproduce import run_reproduce

    options, fake = _table8_fakes(tmp_path, [], {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    lines = []
    run_reproduce("table8", options, fake, dry_run=True, echo=lines.append)
    assert lines == [f"# done: clip-smot {shlex.join(s.argv)}" for s in plan("table8", options).stages]


def test_an_interrupted_evaluation_of_a_replaced_prompt_runs_again(tmp_path):
    """An evaluation not finished (its metrics.json never written) holds no numbers to protect:
    the prompt it will read is compared only once it has finished, so it runs again, of the
    prompt there now, and its record gets that prompt's hash."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out, ran = tmp_path / "o", []
    options, fake = _table8_fakes(tmp_path, ran, {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    (out / "fit-coop" / "prompt.safetensors").write_bytes(b"exported")
    (out / "eval-coop" / "metrics.json").unlink()
    ran.clear()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["eval-coop"]
    assert json.loads((out / "eval-coop" / RECORD).read_text())["inputs"] == {
        "fit-coop/prompt.safetensors": hashlib.sha256(b"exported").hexdigest()}


@pytest.mark.parametrize("value, shown", [("true", "True"), ("NaN", "nan"), ("-Infinity", "-inf"),
                                          ("1e308", "1e+308, not a percent"), ("-0.5", "-0.5, not a percent"),
                                          ("100.5", "100.5, not a percent")])
def test_a_metric_that_is_no_finite_number_is_refused_in_the_table(tmp_path, value, shown):
    """metrics.json's true (a bool is an int in Python), NaN and Infinity (Python's json reads both),
    and a number outside 0..100 (every metric is a percent)."""
    from clip_smot.reproduce import Plan, write_table

    (tmp_path / "eval-r").mkdir()
    path = tmp_path / "eval-r" / "metrics.json"
    path.write_text('{"metrics": {"msp": {"average": {"fpr95": %s, "auroc": 90.0}}}, "id_accuracy": 96.5}' % value)
    with pytest.raises(UserError) as e:
        write_table("table6", Plan([], {"ResNet18 CE": ("eval-r", "msp")}, ("average",), "T"), tmp_path)
    assert str(e.value) == (f"{path}: not a readable metrics.json of clip-smot eval (ValueError: fpr95 is {shown}); "
                            "remove it to run its stage again")


def test_a_fit_is_finished_when_its_prompt_records_all_its_epochs(tmp_path):
    """prompt.safetensors records the epochs its context was trained and the run's (export of an
    unfinished run's checkpoint: fewer); a prompt that records none (an older clip-smot) is taken
    as finished; a training or an evaluation is finished when its final file is there."""
    from safetensors.torch import save_file

    from clip_smot.reproduce import Stage

    fit = Stage("fit-x", ("fit", "--out", str(tmp_path / "fit-x")))
    assert not fit.finished(tmp_path) and not fit.resumable(tmp_path)
    (tmp_path / "fit-x").mkdir()
    prompt = tmp_path / "fit-x" / "prompt.safetensors"
    for epochs, finished in (((3, 4), False), ((4, 4), True), ((1, 1), True), ((0, 1), False), (None, True)):
        config = {} if epochs is None else {"run": {"epoch": epochs[0]}, "epochs": epochs[1]}
        save_file({"ctx": torch.zeros(1)}, str(prompt), metadata={"config": json.dumps(config)})
        assert fit.finished(tmp_path) == finished, epochs
    for command, final in (("train", "summary.json"), ("eval", "metrics.json")):
        stage = Stage(f"{command}-x", (command, "--out", str(tmp_path / f"{command}-x")))
        (tmp_path / f"{command}-x").mkdir()
        assert not stage.finished(tmp_path)
        (tmp_path / f"{command}-x" / final).write_text("{}")
        assert stage.finished(tmp_path)


def test_a_stages_inputs_are_the_files_of_other_stages_folders(tmp_path):
    """A path in another stage's folder (OUT/<stage>/...) is an input; OUT itself, a folder or
    file directly in OUT (data kept there) and the stage's own --out are not."""
    from clip_smot.reproduce import Stage

    out = tmp_path / "o"
    fit = Stage("fit-coop", ("fit", "--data", str(out / "imagenet"), "--split", str(out / "fit-smot" / "split.txt"),
                             "--cam-model", str(out / "cam.safetensors"), "--out", str(out / "fit-coop")))
    assert fit.inputs(out) == [out / "fit-smot" / "split.txt"] and fit.input_stages(out) == {"fit-smot"}
    assert fit.unchecked_note(out) == ""  # (no record to note: check_record names that)
    own = Stage("eval-x", ("eval", "--prompt", str(out / "eval-x" / "p.safetensors"), "--id", str(out),
                           "--out", str(out / "eval-x")))
    assert own.inputs(out) == [] and own.input_stages(out) == set()


def test_data_kept_in_out_is_no_stages_input(tmp_path):
    """`--imagenet OUT/imagenet`: the evaluations' `--id OUT/imagenet/val` lies in a folder of OUT
    that no stage of the table writes, so it is no earlier stage's file: a dry run of the finished
    table names no "imagenet" stage to wait for, and a record of an older clip-smot (no hashes)
    gets no note asking to check whether "imagenet" was redone."""
    from clip_smot.reproduce import RECORD, run_reproduce

    options, fake = _table8_fakes(tmp_path / "o", [], {})
    options = dataclasses.replace(options, out=str(tmp_path / "o"))
    run_reproduce("table8", options, fake, echo=lambda line: None)
    record = tmp_path / "o" / "eval-mcm" / RECORD  # (zero-shot: reads no stage's file, only the data)
    record.write_text(json.dumps({"argv": json.loads(record.read_text())["argv"]}))
    lines = []
    run_reproduce("table8", options, fake, dry_run=True, echo=lines.append)
    done = [line for line in lines if line.startswith("# done: clip-smot eval")]
    assert len(done) == 3 and all(f"--id {tmp_path / 'o' / 'imagenet' / 'val'}" in line for line in done)
    assert not any("imagenet gives" in line or "hashes of" in line for line in lines), lines
    stages = plan("table8", options).stages
    assert [s.earlier for s in stages[:2]] == [(), (stages[0].name,)]


def test_an_imagenet_root_without_val_is_refused_before_the_fits(tmp_path):
    """The fits read IMAGENET/train, the evaluations IMAGENET/val: a root with no val/ is one
    line before hours of fitting, not the first evaluation's failure."""
    from clip_smot.reproduce import run_reproduce

    for folder in ("imagenet/train", "ood/iNaturalist", "ood/SUN", "ood/Places", "ood/Textures"):
        _image_folder(tmp_path / folder)
    ran = []
    with pytest.raises(UserError) as e:
        run_reproduce("table8", ReproduceOptions(out=str(tmp_path / "o"), imagenet=str(tmp_path / "imagenet"),
                                                 ood_root=str(tmp_path / "ood")), ran.append, echo=lambda line: None)
    assert str(e.value) == f"--imagenet: no such folder: {tmp_path / 'imagenet' / 'val'}"
    assert ran == [] and not (tmp_path / "o").exists()
    (tmp_path / "imagenet" / "train").rename(tmp_path / "imagenet" / "val")  # (and one with val/, no train/)
    with pytest.raises(UserError) as e:
        run_reproduce("table8", ReproduceOptions(out=str(tmp_path / "o"), imagenet=str(tmp_path / "imagenet"),
                                                 ood_root=str(tmp_path / "ood")), ran.append, echo=lambda line: None)
    assert str(e.value) == f"--imagenet: no such folder: {tmp_path / 'imagenet' / 'train'}"
    assert ran == [] and not (tmp_path / "o").exists()


def test_table4_refuses_an_imagenet_root_without_val_or_train_before_the_trainings(tmp_path):
    """Table 4 checked IMAGENET itself only: without val/ its three trainings ran (hours on a GPU)
    and the first evaluation, which reads IMAGENET/val, failed; without train/ the first training
    failed after OUT was made."""
    from clip_smot.reproduce import run_reproduce

    for folder in ("ood/iNaturalist", "ood/SUN", "ood/Places", "ood/Textures"):
        _image_folder(tmp_path / folder)
    ran = []
    for split, other in (("train", "val"), ("val", "train")):
        imagenet = tmp_path / f"imagenet-{split}"
        (imagenet / split).mkdir(parents=True)
        with pytest.raises(UserError) as e:
            run_reproduce("table4", ReproduceOptions(out=str(tmp_path / "o"), imagenet=str(imagenet),
                                                     ood_root=str(tmp_path / "ood")), ran.append,
                          echo=lambda line: None)
        assert str(e.value) == f"--imagenet: no such folder: {imagenet / other}"
    assert ran == [] and not (tmp_path / "o").exists()


def test_a_folder_of_images_holding_none_is_named_before_any_stage_runs(tmp_path):
    """An OOD set's folder that is there but holds no image (a download that failed, an archive
    unpacked elsewhere) passed the check of the data roots: the fits or trainings ran (hours on a
    GPU) and the first evaluation stopped on it. Each such folder is named in one line before
    anything runs; a file that is no image, or a hidden one, is none."""
    from clip_smot.reproduce import run_reproduce

    ran = []
    options, fake = _table8_fakes(tmp_path, ran, {})
    for name in ("SUN", "Textures"):
        (tmp_path / "ood" / name / "x.jpg").unlink()
    (tmp_path / "ood" / "SUN" / "README.txt").write_text("the images are in SUN397.tar.gz")
    (tmp_path / "ood" / "Textures" / "banded").mkdir()
    (tmp_path / "ood" / "Textures" / "banded" / "._banded_0002.jpg").write_bytes(b"")
    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, fake, echo=lambda line: None)
    looked = "looked for .jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp, .ppm, .pgm"
    assert str(e.value) == (f"--ood-root (SUN) {tmp_path / 'ood' / 'SUN'}: no image files found ({looked}); "
                            f"--ood-root (Textures) {tmp_path / 'ood' / 'Textures'}: no image files found ({looked})")
    assert ran == [] and not (tmp_path / "o").exists()
    (tmp_path / "ood" / "SUN" / "sun_a.jpg").touch()
    (tmp_path / "ood" / "Textures" / "banded" / "banded_0002.jpg").touch()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["fit-smot", "fit-coop", "eval-mcm", "eval-coop", "eval-smot"]


def test_table8_refuses_val_class_folders_other_than_trains_before_the_fits(tmp_path):
    """The prompts learn the classes of IMAGENET/train, the zero-shot MCM row those of
    IMAGENET/val: a val/ with a class folder more (or fewer) ran every stage and wrote a table whose
    MCM row was measured on 4 classes and its CoOp and SMOT rows on 3, exit 0. It is one line
    before anything runs; hidden folders and files beside the class folders are no classes."""
    from clip_smot.reproduce import run_reproduce

    ran = []
    options, fake = _table8_fakes(tmp_path, ran, {})
    imagenet = tmp_path / "imagenet"
    for w in WNIDS:
        (imagenet / "train" / w).mkdir()
        (imagenet / "val" / w).mkdir()
    (imagenet / "val" / ".cache").mkdir()
    (imagenet / "val" / "LOC_val_solution.csv").write_text("x")
    (imagenet / "val" / "n01491361").mkdir()  # (one more)
    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, fake, echo=lambda line: None)
    assert str(e.value) == (f"--imagenet: the class folders of {imagenet / 'val'} are not those of "
                            f"{imagenet / 'train'} (val/ has n01491361 more, none fewer); the prompts learn train/'s "
                            "classes and the zero-shot evaluation takes val/'s")
    (imagenet / "val" / "n01491361").rmdir()
    (imagenet / "val" / WNIDS[2]).rmdir()  # (one fewer)
    with pytest.raises(UserError, match=f"val/ has none more, {WNIDS[2]} fewer"):
        run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == [] and not (tmp_path / "o").exists()
    (imagenet / "val" / WNIDS[2]).mkdir()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["fit-smot", "fit-coop", "eval-mcm", "eval-coop", "eval-smot"]


@pytest.mark.parametrize("table", ["table8", "table4"])
def test_imagenet_as_its_archives_unpack_is_named_before_any_stage(tmp_path, table):
    """ImageNet's validation archive unpacks flat, its training archive into one tar a class. With
    such a val/ beside train/<wnid>/, table8 said its class folders were not train/'s ("val/ has
    none more, n01440764, ... fewer") and table4 that 200 wnid folders were missing; with such a
    train/, that train/ held no images. The line now says what the folder holds and what to do,
    as fit and eval say it, before anything runs."""
    import tarfile

    from clip_smot.reproduce import run_reproduce

    ran = []
    options, fake = _table8_fakes(tmp_path, ran, {})
    imagenet = tmp_path / "imagenet"
    (imagenet / "train" / WNIDS[0]).mkdir()
    with pytest.raises(UserError) as e:
        run_reproduce(table, options, fake, echo=lambda line: None)
    assert str(e.value) == (f"--imagenet {imagenet}: {imagenet / 'val'} holds 1 image(s) but no class folders "
                            f"(ImageNet's validation archive unpacks so); sort them into {imagenet / 'val'}/<class>/")
    shutil.rmtree(imagenet / "train")
    (imagenet / "train").mkdir()
    tarfile.open(imagenet / "train" / f"{WNIDS[0]}.tar", "w").close()
    with pytest.raises(UserError) as e:
        run_reproduce(table, options, fake, echo=lambda line: None)
    assert str(e.value).endswith(f"--imagenet {imagenet}: {imagenet / 'train'} holds 1 tar archive(s) and no class "
                                 "folders (ImageNet's training archive unpacks into one tar a class); unpack each into "
                                 f"a folder of its name, e.g. {WNIDS[0]}.tar into {imagenet / 'train' / WNIDS[0]}/")
    assert ran == [] and not (tmp_path / "o").exists()


def test_table8_refuses_a_val_class_folder_that_is_a_train_one_before_the_fits(tmp_path):
    """A class folder of IMAGENET/val that is one of IMAGENET/train (a symbolic link to it; val/
    a link to train/; a link to train/ itself, which holds them all) makes its images training
    images: the evaluation of the CoOp prompt refuses ID test images its scores are fitted on,
    after both fits had run. It is one line before anything runs; a val folder with its own
    images, though it links to train/'s image files one by one, is the evaluation's to find."""
    from clip_smot.reproduce import run_reproduce

    ran = []
    options, fake = _table8_fakes(tmp_path, ran, {})
    imagenet = tmp_path / "imagenet"
    for w in WNIDS:
        _image_folder(imagenet / "train" / w)
        _image_folder(imagenet / "val" / w)
    shutil.rmtree(imagenet / "val" / WNIDS[1])
    (imagenet / "val" / WNIDS[1]).symlink_to(imagenet / "train" / WNIDS[1])
    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, fake, echo=lambda line: None)
    assert str(e.value) == (f"--imagenet: {imagenet / 'val' / WNIDS[1]} is {imagenet / 'train' / WNIDS[1]} (symbolic "
                            "links followed): its images are training images, which the evaluation refuses as ID test "
                            "images; give val/ its own images")
    (imagenet / "val" / WNIDS[1]).unlink()
    (imagenet / "val" / WNIDS[1]).symlink_to(imagenet / "train")  # (a folder above the class folders)
    with pytest.raises(UserError, match=f"^--imagenet: {imagenet / 'val' / WNIDS[1]} holds {imagenet / 'train'}/"):
        run_reproduce("table8", options, fake, echo=lambda line: None)
    (imagenet / "val" / WNIDS[1]).unlink()
    shutil.move(imagenet / "val", imagenet / "val-own")
    (imagenet / "val").symlink_to("train")
    with pytest.raises(UserError, match=f"^--imagenet: {imagenet / 'val' / WNIDS[0]} is "):
        run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == [] and not (tmp_path / "o").exists()
    (imagenet / "val").unlink()
    shutil.move(imagenet / "val-own", imagenet / "val")
    (imagenet / "val" / WNIDS[1]).mkdir()
    (imagenet / "val" / WNIDS[1] / "x.jpg").symlink_to(imagenet / "train" / WNIDS[1] / "x.jpg")
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["fit-smot", "fit-coop", "eval-mcm", "eval-coop", "eval-smot"]


def _imagenet200(tmp_path, imagenet, val):
    """The MOS OOD sets under tmp_path/ood, ImageNet-200's 200 wnids in IMAGENET/train and the
    wnids ``val`` in IMAGENET/val, each a folder of images."""
    from clip_smot.common.bundled import imagenet200_wnids

    for folder in ("ood/iNaturalist", "ood/SUN", "ood/Places", "ood/Textures"):
        _image_folder(tmp_path / folder)
    for w in imagenet200_wnids():
        _image_folder(imagenet / "train" / w)
    for w in val:
        _image_folder(imagenet / "val" / w)


def test_table4_refuses_a_split_lacking_imagenet200_wnids_before_the_trainings(tmp_path):
    """The trainings read the 200 wnids of ImageNet-200 in IMAGENET/train, the evaluations in
    IMAGENET/val: a val/ lacking one ran the three trainings (hours on a GPU) before the first
    evaluation stopped on it. Both splits are checked before anything runs."""
    from clip_smot.common.bundled import imagenet200_wnids
    from clip_smot.reproduce import run_reproduce

    imagenet, ran, wnids = tmp_path / "imagenet", [], imagenet200_wnids()
    _imagenet200(tmp_path, imagenet, val=wnids[:-2])  # (val/ lacks the last two)
    with pytest.raises(UserError) as e:
        run_reproduce("table4", ReproduceOptions(out=str(tmp_path / "o"), imagenet=str(imagenet),
                                                 ood_root=str(tmp_path / "ood")), ran.append, echo=lambda line: None)
    assert str(e.value) == (f"--imagenet: 2 class folder(s) of ImageNet-200 missing from {imagenet / 'val'}, "
                            f"e.g. {wnids[-2]}")
    assert ran == [] and not (tmp_path / "o").exists()


def test_table4_refuses_a_val_wnid_folder_that_is_a_train_one_before_the_trainings(tmp_path):
    """ImageNet-200's val/<wnid> linked to train/<wnid>: the base model's evaluation, whose react
    is fitted on every training image, refused its ID test images after the three trainings. It is
    one line before anything runs, as for table8."""
    from clip_smot.common.bundled import imagenet200_wnids
    from clip_smot.reproduce import run_reproduce

    imagenet, ran, wnids = tmp_path / "imagenet", [], imagenet200_wnids()
    _imagenet200(tmp_path, imagenet, val=[w for w in wnids if w != wnids[7]])
    (imagenet / "val" / wnids[7]).symlink_to(imagenet / "train" / wnids[7])
    with pytest.raises(UserError) as e:
        run_reproduce("table4", ReproduceOptions(out=str(tmp_path / "o"), imagenet=str(imagenet),
                                                 ood_root=str(tmp_path / "ood")), ran.append, echo=lambda line: None)
    assert str(e.value) == (f"--imagenet: {imagenet / 'val' / wnids[7]} is {imagenet / 'train' / wnids[7]} (symbolic "
                            "links followed): its images are training images, which the evaluation refuses as ID test "
                            "images; give val/ its own images")
    assert ran == [] and not (tmp_path / "o").exists()


def test_every_ood_folder_name_looked_for_is_in_the_help_and_the_docs():
    """reproduce looks for each OOD set under several names (OOD_FOLDERS): --help and
    docs/reproduce.md name each, or a user with ``places365/`` cannot learn that it is read."""
    from clip_smot.reproduce import OOD_FOLDERS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reproduce.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `--ood-root` |"))
    help_text = " ".join(CliRunner().invoke(cli, ["reproduce", "--help"], terminal_width=400).output.split())
    for name in (n for names in OOD_FOLDERS.values() for n in names):
        assert f"`{name}`" in row, name
        assert re.search(rf"[ (]{re.escape(name)}[ ,).]", help_text), name


def test_an_ood_root_of_a_name_too_long_is_one_line_naming_the_flag(tmp_path):
    """--ood-root of a name longer than the file system allows: OSError's traceback where the OOD
    folders were looked for under it (pathlib's is_dir raises ENAMETOOLONG), now one line."""
    root = "b" * 300
    res = CliRunner().invoke(cli, ["reproduce", "table1", "--out", str(tmp_path / "r"), "--cifar-root", str(tmp_path),
                                   "--ood-root", root, "--dry-run"])
    assert res.exit_code == 1 and res.output == f"Error: --ood-root {root}/Textures: File name too long\n", res.output
    assert list(tmp_path.iterdir()) == []


def test_a_dry_run_prints_the_commands_where_the_data_roots_are_not(tmp_path):
    """docs/reproduce.md: --dry-run checks no data root (its commands print on a machine without
    the data); the same command without it names every missing root in one line. Neither writes."""
    argv = ["reproduce", "table2", "--out", str(tmp_path / "r"), "--cifar-root", str(tmp_path / "c"), "--ood-root",
            str(tmp_path / "ood")]
    res = CliRunner().invoke(cli, [*argv, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert f"--ood iSUN={tmp_path / 'ood' / 'iSUN'}" in res.output
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1, res.output
    assert res.output.startswith(f"Error: --cifar-root: no such folder: {tmp_path / 'c'}; --ood-root"), res.output
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_table_is_one_line_naming_the_tables():
    with pytest.raises(UserError) as e:
        plan("table10", ReproduceOptions(out="/o"))
    assert str(e.value) == ("TABLE table10: not a table this command reproduces (choose from table8, table1, table2, "
                            "table3, table4, table5, table6, table7, table9)")


def test_out_given_another_way_or_moved_finds_its_stages_finished(tmp_path, monkeypatch):
    """A stage's record wrote the paths under OUT as given: eval-coop's `--prompt o/fit-coop/...`
    made a rerun with OUT absolute (or the folder moved) refuse it as "the work of another command".
    Records now write them from OUT; a record of an older clip-smot (OUT's paths as given) still
    matches a rerun that gives OUT as it did."""
    from clip_smot.reproduce import RECORD, run_reproduce

    ran = []
    options, fake = _table8_fakes(tmp_path, ran, {})
    monkeypatch.chdir(tmp_path)
    relative = dataclasses.replace(options, out="o")
    run_reproduce("table8", relative, fake, echo=lambda line: None)
    record = json.loads((tmp_path / "o" / "eval-coop" / RECORD).read_text())["argv"]
    assert _flag(record, "--prompt") == "OUT/fit-coop/prompt.safetensors"
    ran.clear()
    lines = []
    run_reproduce("table8", dataclasses.replace(options, out=str(tmp_path / "o")), fake, echo=lines.append)
    (tmp_path / "o").rename(tmp_path / "moved")
    run_reproduce("table8", dataclasses.replace(options, out="moved"), fake, echo=lines.append)
    assert ran == [] and sum(line.endswith("is finished; skipped") for line in lines) == 10, lines
    for name in ("fit-coop", "eval-coop"):  # as an older clip-smot wrote them: OUT's paths as given
        path = tmp_path / "moved" / name / RECORD
        old = json.loads(path.read_text())
        old["argv"] = [w.replace("OUT/", "moved/") for w in old["argv"]]
        path.write_text(json.dumps(old))
    lines.clear()
    run_reproduce("table8", dataclasses.replace(options, out="moved"), fake, echo=lines.append)
    assert ran == [] and sum(line.endswith("is finished; skipped") for line in lines) == 5, lines
    with pytest.raises(UserError, match="holds the work of another command"):  # (that record names moved/)
        run_reproduce("table8", dataclasses.replace(options, out=str(tmp_path / "moved")), fake, echo=lines.append)


def test_data_folders_given_another_way_find_their_stages_finished(tmp_path, monkeypatch):
    """`--imagenet data/` (a shell's completion), `./data` and the absolute path are one folder: the
    records write each file or folder a stage's flags name absolute (a tag such as `openai` stays as
    it is). A record of an older clip-smot (the data's paths as typed) still matches a rerun that
    types them as it did; another folder is another command."""
    from clip_smot.reproduce import RECORD, run_reproduce

    ran = []
    options, fake = _table8_fakes(tmp_path / "d", ran, {})
    monkeypatch.chdir(tmp_path)
    tmp_path = Path(os.path.realpath(tmp_path))  # (the records follow links, a TMPDIR's too)
    typed = dataclasses.replace(options, imagenet="d/imagenet/", ood_root="./d/ood", out="o", pretrained="openai")
    run_reproduce("table8", typed, fake, echo=lambda line: None)
    record = json.loads((tmp_path / "o" / "eval-coop" / RECORD).read_text())["argv"]
    assert _flag(record, "--id") == str(tmp_path / "d" / "imagenet" / "val")
    assert f"SUN={tmp_path / 'd' / 'ood' / 'SUN'}" in record and _flag(record, "--pretrained") == "openai"
    fit = json.loads((tmp_path / "o" / "fit-smot" / RECORD).read_text())["argv"]
    assert _flag(fit, "--data") == str(tmp_path / "d" / "imagenet")
    ran.clear()
    for imagenet, ood_root in ((str(tmp_path / "d" / "imagenet"), str(tmp_path / "d" / "ood") + "/"),
                               ("d/ood/../imagenet", "d/ood")):
        run_reproduce("table8", dataclasses.replace(typed, imagenet=imagenet, ood_root=ood_root), fake,
                      echo=lambda line: None)
    assert ran == []
    path = tmp_path / "o" / "fit-smot" / RECORD  # as an older clip-smot wrote it: --data as typed
    path.write_text(json.dumps({**json.loads(path.read_text()), "argv": [w.replace(str(tmp_path / "d"), "d") + (
        "/" if w == str(tmp_path / "d" / "imagenet") else "") for w in fit]}))
    assert json.loads(path.read_text())["argv"][fit.index("--data") + 1] == "d/imagenet/"
    run_reproduce("table8", typed, fake, echo=lambda line: None)
    assert ran == []
    (tmp_path / "d2").mkdir()
    shutil.copytree(tmp_path / "d" / "imagenet", tmp_path / "d2" / "imagenet")
    with pytest.raises(UserError, match=r"o/fit-smot holds the work of another command"):
        run_reproduce("table8", dataclasses.replace(typed, imagenet="d2/imagenet"), fake, echo=lambda line: None)


def test_a_data_folder_reached_through_a_link_is_the_folder_it_points_at(tmp_path, monkeypatch):
    """The records follow symbolic links: `--imagenet link/imagenet` with `link -> d` finds the
    stages of `--imagenet d/imagenet` finished; the same link pointed at a copy elsewhere is
    another folder, whose numbers these are not."""
    from clip_smot.reproduce import run_reproduce

    ran = []
    options, fake = _table8_fakes(tmp_path / "d", ran, {})
    monkeypatch.chdir(tmp_path)
    direct = dataclasses.replace(options, imagenet="d/imagenet", ood_root="d/ood", out="o")
    run_reproduce("table8", direct, fake, echo=lambda line: None)
    assert ran
    (tmp_path / "link").symlink_to(tmp_path / "d", target_is_directory=True)
    linked = dataclasses.replace(direct, imagenet="link/imagenet", ood_root="link/ood")
    ran.clear()
    run_reproduce("table8", linked, fake, echo=lambda line: None)
    assert ran == []
    shutil.copytree(tmp_path / "d", tmp_path / "d2")
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to(tmp_path / "d2", target_is_directory=True)
    with pytest.raises(UserError, match=r"o/fit-\w+ holds the work of another command"):
        run_reproduce("table8", linked, fake, echo=lambda line: None)


def test_a_resnet_table_with_out_given_another_way_finds_its_stages_finished(tmp_path, monkeypatch):
    """The ResNet stages read files of OUT by --cam-model (SMOT's CAMs) and --checkpoint (the
    evaluated model): the records write them from OUT, so a rerun of table2 with OUT absolute,
    not relative as before, finds every stage finished."""
    from clip_smot.reproduce import RECORD, run_reproduce

    options, run, ran = _table2_counted(tmp_path, monkeypatch)
    run_reproduce("table2", dataclasses.replace(options, out="o"), run, echo=lambda line: None)
    assert len(ran) == 6
    smot = json.loads((tmp_path / "o" / "train-smot" / RECORD).read_text())["argv"]
    assert _flag(smot, "--cam-model") == "OUT/train-base/model.safetensors"
    ev = json.loads((tmp_path / "o" / "eval-smot" / RECORD).read_text())["argv"]
    assert _flag(ev, "--checkpoint") == "OUT/train-smot/model.safetensors"
    ran.clear()
    run_reproduce("table2", dataclasses.replace(options, out=str(tmp_path / "o")), run, echo=lambda line: None)
    assert ran == []


def test_model_and_weight_files_given_another_way_find_their_stages_finished(tmp_path, monkeypatch):
    """--model (a config JSON) and --pretrained (a weights file) are files too: typed relative,
    then absolute, they are one file, and table8's stages are finished."""
    from clip_smot.reproduce import RECORD, run_reproduce

    ran = []
    options, fake = _table8_fakes(tmp_path, ran, {})
    (tmp_path / "m").mkdir()
    for name in ("tiny.json", "w.safetensors"):
        (tmp_path / "m" / name).write_text("{}")
    monkeypatch.chdir(tmp_path)
    run_reproduce("table8", dataclasses.replace(options, model="m/tiny.json", pretrained="m/w.safetensors"), fake,
                  echo=lambda line: None)
    fit = json.loads((tmp_path / "o" / "fit-smot" / RECORD).read_text())["argv"]
    m = Path(os.path.realpath(tmp_path)) / "m"
    assert (_flag(fit, "--model"), _flag(fit, "--pretrained")) == (str(m / "tiny.json"), str(m / "w.safetensors"))
    ran.clear()
    run_reproduce("table8", dataclasses.replace(options, model=str(tmp_path / "m" / "tiny.json"),
                                                pretrained=str(tmp_path / "m" / "w.safetensors")), fake,
                  echo=lambda line: None)
    assert ran == []


def test_a_final_file_that_is_a_link_is_no_finished_stage(tmp_path):
    """A stage is finished when its final file is there: eval-coop/metrics.json made a symbolic
    link to eval-smot's was taken as eval-coop's, skipped, and the table's CoOp rows read the SMOT
    prompt's numbers, exit 0. A link is no file the stage wrote: the stage runs again (its files
    replace the link; the file it pointed at is untouched)."""
    from clip_smot.reproduce import run_reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    smot = out / "eval-smot" / "metrics.json"
    before = (smot.stat().st_ino, smot.stat().st_mtime_ns, smot.read_bytes())
    (out / "eval-coop" / "metrics.json").unlink()
    (out / "eval-coop" / "metrics.json").symlink_to(out / "eval-smot" / "metrics.json")
    ran.clear()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["eval-coop"]
    assert not (out / "eval-coop" / "metrics.json").is_symlink()
    assert (smot.stat().st_ino, smot.stat().st_mtime_ns, smot.read_bytes()) == before


def test_a_finished_stage_made_with_weights_since_replaced_at_the_same_path_is_refused(tmp_path):
    """--pretrained (or --model, --cam-model) names a file: replaced at the same path by other
    weights, the command lines were the same, so the fits and the finished evaluations were
    skipped and an unfinished evaluation ran with the new weights on the old prompts: a table of
    two models, exit 0. Each finished stage made with it is named in one line; what is
    unfinished is not; a file since removed changes nothing; and a record written before records
    held the files is not checked."""
    from clip_smot.reproduce import RECORD, run_reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"old weights")
    options = dataclasses.replace(options, pretrained=str(weights))
    run_reproduce("table8", options, fake, echo=lambda line: None)
    shutil.rmtree(out / "eval-smot")  # (interrupted before its last stage)
    weights.write_bytes(b"new weights")
    ran.clear()
    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, fake, echo=lambda line: None)
    changed = f"{os.path.realpath(weights)}, which has changed since"
    assert str(e.value) == ("reproduce: finished stages were made with a file that is no longer as it was then, so "
                            "their numbers would not be of it: "
                            + "; ".join(f"{out / name} ({changed})" for name in ("fit-smot", "fit-coop", "eval-mcm",
                                                                                  "eval-coop"))
                            + "; remove those folders to run their stages again")
    assert ran == [] and not (out / "eval-smot").exists()
    weights.write_bytes(b"old weights")  # (the same bytes again: the same weights)
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["eval-smot"]
    weights.unlink()  # (removed once the table is written: the numbers are still of it)
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["eval-smot"]
    weights.write_bytes(b"new weights")
    for name in ("fit-smot", "fit-coop", "eval-mcm", "eval-coop", "eval-smot"):  # as a record of an older clip-smot
        record = json.loads((out / name / RECORD).read_text())
        (out / name / RECORD).write_text(json.dumps({"argv": record["argv"], "inputs": record["inputs"]}))
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["eval-smot"]


def test_a_weights_file_that_cannot_be_read_is_left_to_the_stages_to_name(tmp_path, monkeypatch):
    """--pretrained names a file that is there but cannot be read (no permission; root reads any, so
    its hash is made to fail here): the record holds no hash of it, and the stages run, whose
    commands name the file in their own one line, not reproduce in an OSError traceback."""
    import clip_smot.reproduce as reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    cam = tmp_path / "cam.safetensors"  # (readable, after it on the fits' command lines: still hashed)
    cam.write_bytes(b"cam")
    options = dataclasses.replace(options, pretrained=str(weights), cam_model=str(cam))
    hashed = reproduce.sha256_file

    def unreadable(path):
        if os.path.realpath(path) == os.path.realpath(weights):
            raise PermissionError(13, "Permission denied", str(path))
        return hashed(path)

    monkeypatch.setattr(reproduce, "sha256_file", unreadable)
    reproduce.run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["fit-smot", "fit-coop", "eval-mcm", "eval-coop", "eval-smot"]
    cam_hash = {os.path.realpath(cam): hashlib.sha256(b"cam").hexdigest()}
    assert [json.loads((out / name / reproduce.RECORD).read_text())["files"] for name in ran] == [
        cam_hash, cam_hash, {}, {}, {}]


def test_an_evaluation_run_by_hand_into_a_stage_folder_is_not_taken_for_the_stage(tmp_path):
    """An eval run by hand into OUT/eval-smot while reproduce ran held the folder's lock, so the
    stage was refused; the rerun found that eval's metrics.json under the stage's record and skipped
    the stage as finished: its numbers (another prompt's) in the SMOT row, exit 0. The record says
    whether the stage's command ended well (``made``); one that did not runs again. A record of an
    older clip-smot (no ``made``) leaves the stage finished as before."""
    from clip_smot.reproduce import RECORD, run_reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})

    def locked_out(argv):
        folder = Path(argv[argv.index("--out") + 1])
        if folder.name == "eval-smot":  # (the eval by hand, holding the lock, writes its own numbers)
            (folder / "metrics.json").write_text('{"by": "hand"}')
            raise UserError(f"--out {folder}: another clip-smot command is writing it now")
        fake(argv)

    with pytest.raises(UserError, match="another clip-smot command is writing it now"):
        run_reproduce("table8", options, locked_out, echo=lambda line: None)
    lines = []
    run_reproduce("table8", options, fake, dry_run=True, echo=lines.append)
    assert lines[4].startswith("clip-smot eval --prompt "), lines
    assert json.loads((out / "eval-smot" / RECORD).read_text())["made"] is None
    assert json.loads((out / "eval-coop" / RECORD).read_text())["made"] == hashlib.sha256(b"{}").hexdigest()
    ran.clear()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["eval-smot"] and (out / "eval-smot" / "metrics.json").read_text() == "{}"
    assert json.loads((out / "eval-smot" / RECORD).read_text())["made"] == hashlib.sha256(b"{}").hexdigest()
    record = json.loads((out / "eval-smot" / RECORD).read_text())
    del record["made"]  # (as an older clip-smot wrote it)
    (out / "eval-smot" / RECORD).write_text(json.dumps(record))
    ran.clear()
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == []


@pytest.mark.parametrize("when", ["record", "check"])
def test_an_earlier_stages_file_that_cannot_be_read_is_one_line(tmp_path, monkeypatch, when):
    """fit-a's prompt, which eval-x reads, fails its read (EIO of a bad sector): a real
    `clip-smot reproduce table8` ended in an OSError traceback from start_record, which hashes
    the earlier stages' files before the stage runs (found by a fault sweep); check_record of a
    finished stage hashes them too. One line naming the file, as the stage itself would give."""
    import errno

    import clip_smot.common.files as files
    from clip_smot.reproduce import RECORD, Stage

    out = tmp_path / "o"
    prompt = out / "fit-a" / "prompt.safetensors"
    stage = Stage("eval-x", ("eval", "--prompt", str(prompt), "--out", str(out / "eval-x")), earlier=("fit-a",))
    for path in (prompt, out / "eval-x" / "metrics.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"now")
    (out / "eval-x" / RECORD).write_text(json.dumps({"argv": stage.identity(out), "inputs": {
        "fit-a/prompt.safetensors": hashlib.sha256(b"now").hexdigest()}}))
    real_open = open

    def failing(path, *args, **kwargs):
        if os.fspath(path) == str(prompt):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", failing, raising=False)
    with pytest.raises(UserError) as e:
        stage.start_record(out) if when == "record" else stage.check_record(out)
    assert str(e.value) == f"reproduce: {prompt} cannot be read (Input/output error)"


def test_a_record_replaced_while_its_stage_ran_is_not_vouched_for(tmp_path):
    """Two reproduces into one --out at once, of tables naming a stage alike (tables 2 and 3:
    train-base) or of other options: the second wrote its record over the first's while the
    first's stage ran, refused by the lock; the first then wrote "made" into the second's record,
    and a rerun of the second would skip the stage, made by the first's command line. The stage's
    end refuses a record no longer its own, which stays unvouched for ("made" null)."""
    from clip_smot.reproduce import RECORD, run_reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})

    def other_record_meanwhile(argv):
        fake(argv)
        if Path(argv[argv.index("--out") + 1]).name == "eval-mcm":  # (the other reproduce's, --shots 4)
            record = json.loads((out / "eval-mcm" / RECORD).read_text())
            (out / "eval-mcm" / RECORD).write_text(json.dumps({**record, "argv": record["argv"] + ["--shots", "4"]}))

    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, other_record_meanwhile, echo=lambda line: None)
    assert json.loads((out / "eval-mcm" / RECORD).read_text())["made"] is None
    assert str(e.value) == (f"reproduce: {out / 'eval-mcm' / RECORD} was replaced while the stage ran (another "
                            f"reproduce into this --out, of another table or options?); remove {out / 'eval-mcm'} to "
                            "run the stage again")
    assert ran == ["fit-smot", "fit-coop", "eval-mcm"]


def test_a_second_reproduce_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    """Two reproduces into one --out at once, of other tables or options (--shots 4), wrote their
    records over each other's and the second resumed the first's fit under its own options. The
    first holds --out's lock while its stages run: the second is refused at once, writes nothing,
    and the first ends with its table."""
    from clip_smot.reproduce import RECORD, run_reproduce

    ran, inner, out = [], [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})

    def another_reproduce_meanwhile(argv):
        fake(argv)
        if not inner:
            records = sorted(p.read_bytes() for p in out.glob(f"*/{RECORD}"))
            with pytest.raises(UserError) as e:
                run_reproduce("table8", dataclasses.replace(options, shots=4), inner.append, echo=lambda line: None)
            inner.append(str(e.value))
            assert sorted(p.read_bytes() for p in out.glob(f"*/{RECORD}")) == records

    run_reproduce("table8", options, another_reproduce_meanwhile, echo=lambda line: None)
    assert inner == [f"--out {out}: another clip-smot command is writing it now; wait for it to end, or choose "
                     "another --out"]
    assert ran == ["fit-smot", "fit-coop", "eval-mcm", "eval-coop", "eval-smot"]
    assert (out / "table.csv").is_file()
    # the lock is the run's alone: once it has ended, the other options' run says what holds the folder
    with pytest.raises(UserError, match=r"holds the work of another command .*give another --out, or remove"):
        run_reproduce("table8", dataclasses.replace(options, shots=4), fake, echo=lambda line: None)


def test_a_stage_resumed_over_a_run_of_other_options_says_to_remove_its_folder(tmp_path):
    """A fit started by hand (or by a reproduce of other options where --out could not be locked)
    into a stage's folder after reproduce wrote its record: the rerun resumed it, and the fit's own
    line said "--resume: --epochs differs ...; resume with the same flags", though the user gave no
    --resume. The stage's line says what holds the folder and what to do."""
    from clip_smot.common.run_folder import refuse_other_flags
    from clip_smot.reproduce import run_reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})

    def killed_in_the_first_fit(argv):
        (out / "fit-smot").mkdir(parents=True, exist_ok=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_reproduce("table8", options, killed_in_the_first_fit, echo=lambda line: None)
    (out / "fit-smot" / "checkpoint.pt").write_bytes(b"a fit of --epochs 3, by hand")

    def fit_of_other_options(argv):
        ran.append(argv)
        refuse_other_flags(["epochs", "batch_size"], argv[argv.index("--out") + 1])

    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, fit_of_other_options, echo=lambda line: None)
    assert ran[-1][-1] == "--resume"
    assert str(e.value) == (f"reproduce: {out / 'fit-smot'} holds a fit run of other options than this stage's "
                            "(--epochs, --batch-size), started by another command (by hand, or another reproduce's); "
                            f"remove {out / 'fit-smot'} to run the stage again")


def test_the_stage_runner_lets_a_resume_of_other_options_through(tmp_path, monkeypatch):
    """reproduce's stage runner prefixes a stage's error with its command, as a plain one-line
    error; a resume of other options goes through as it was raised, so that reproduce can say it."""
    import clip_smot.cli as cli_module
    from clip_smot.common.run_folder import OtherFlags, refuse_other_flags

    def refused(cfg, **kwargs):
        refuse_other_flags(["epochs"], cfg.out)

    monkeypatch.setattr(cli_module, "run_train", refused)
    argv = ["train", "--data", str(tmp_path), "--resume", "--out", str(tmp_path / "t")]
    with pytest.raises(OtherFlags) as e:
        cli_module._run_stage(argv)
    assert e.value.flags == ["--epochs"]
    assert str(e.value) == (f"clip-smot train --out {tmp_path / 't'}: --resume: --epochs differs from the run saved in "
                            f"{tmp_path / 't'}; resume with the same flags")
    res = CliRunner().invoke(cli, argv)  # (run by hand: its one line)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert res.output == (f"Error: --resume: --epochs differs from the run saved in {tmp_path / 't'}; resume with the "
                          "same flags\n")


def test_a_path_that_leads_elsewhere_after_its_stage_ran_is_named(tmp_path):
    """--imagenet a symbolic link repointed at another folder while the first fit ran: which images
    did it read? The stage is not vouched for, and the line names the flag, the path and both
    folders (it said "record was replaced ... (another reproduce?)")."""
    from clip_smot.reproduce import RECORD, run_reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})
    shutil.copytree(tmp_path / "imagenet", tmp_path / "imagenet2")
    (tmp_path / "in").symlink_to(tmp_path / "imagenet", target_is_directory=True)
    options = dataclasses.replace(options, imagenet=str(tmp_path / "in"))

    def repointed_meanwhile(argv):
        fake(argv)
        (tmp_path / "in").unlink()
        (tmp_path / "in").symlink_to(tmp_path / "imagenet2", target_is_directory=True)

    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, repointed_meanwhile, echo=lambda line: None)
    assert str(e.value) == (f"reproduce: --data {tmp_path / 'in'} leads to {tmp_path / 'imagenet2'} now, not to "
                            f"{tmp_path / 'imagenet'} as when the stage fit-smot started (a symbolic link repointed "
                            f"while it ran?); remove {out / 'fit-smot'} to run the stage again")
    assert json.loads((out / "fit-smot" / RECORD).read_text())["made"] is None
    assert ran == ["fit-smot"]


@pytest.mark.parametrize("how", ["removed", "damaged", "a list"])
def test_a_record_removed_while_its_stage_ran_stops_the_run_at_once(tmp_path, how):
    """reproduce.json removed (or made unreadable) while its fit ran: the stages after it ran for
    hours, and the run stopped only at the check before the table ("holds a fit run with no
    reproduce.json"). It stops once the stage has ended, in one line naming the record."""
    from clip_smot.reproduce import RECORD, run_reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})
    record = out / "fit-smot" / RECORD

    def record_gone_meanwhile(argv):
        fake(argv)
        {"removed": record.unlink, "damaged": lambda: record.write_text("{"),
         "a list": lambda: record.write_text("[]")}[how]()

    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, record_gone_meanwhile, echo=lambda line: None)
    assert ran == ["fit-smot"]
    if how == "a list":
        assert str(e.value).startswith(f"reproduce: {record} was replaced while the stage ran")
        return
    why = "was removed" if how == "removed" else "became unreadable (Expecting property name"
    assert str(e.value).startswith(f"reproduce: {record} {why}"), str(e.value)
    assert str(e.value).endswith(f"while the stage ran, so nothing says which command made the fit run in "
                                 f"{out / 'fit-smot'}; remove {out / 'fit-smot'} to run the stage again")


def test_an_evaluation_run_by_hand_over_a_finished_stage_is_refused_not_put_in_the_table(tmp_path):
    """An eval run by hand into OUT/eval-coop once its stage had finished (in a race with
    reproduce, the eval ran after the stage) replaced its metrics.json: the rerun skipped the stage
    and wrote the table with that eval's numbers in the CoOp rows, exit 0. Its record holds the
    SHA-256 of the metrics.json it wrote (``made``): another is refused in one line, before any
    stage runs and before the table; removing the folder runs the stage again."""
    from clip_smot.reproduce import run_reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})
    run_reproduce("table8", options, fake, echo=lambda line: None)
    table = (out / "table.csv").read_bytes()
    (out / "eval-coop" / "metrics.json").write_text('{"id_accuracy": 12.5}')  # (the eval by hand's)
    ran.clear()
    for dry_run in (False, True):
        with pytest.raises(UserError) as e:
            run_reproduce("table8", options, fake, dry_run=dry_run, echo=lambda line: None)
        assert str(e.value) == (f"reproduce: {out / 'eval-coop' / 'metrics.json'} is no longer the file its stage wrote "
                                "(another command wrote it since, or it was edited): its numbers would not be the "
                                f"stage's; remove {out / 'eval-coop'} to run the stage again")
    assert ran == [] and (out / "table.csv").read_bytes() == table
    shutil.rmtree(out / "eval-coop")
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert ran == ["eval-coop"]


def test_weights_replaced_while_the_stages_run_are_refused_before_the_table(tmp_path):
    """--pretrained's file replaced by other weights while reproduce ran (during the first
    evaluation): the fits were made with the old weights, the evaluations with the new, and the
    table of two models was written, exit 0 (the rerun refused it). The finished stages are
    checked again once all have run: one line naming those whose record holds the old file's
    SHA-256 (eval-mcm's too: taken as it started), no table; the same weights throughout, a table."""
    from clip_smot.reproduce import run_reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"old weights")
    options = dataclasses.replace(options, pretrained=str(weights))

    def replaced_meanwhile(argv):
        if Path(argv[argv.index("--out") + 1]).name == "eval-mcm":  # (another job copies new weights there)
            weights.write_bytes(b"new weights")
        fake(argv)

    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, replaced_meanwhile, echo=lambda line: None)
    assert ran == ["fit-smot", "fit-coop", "eval-mcm", "eval-coop", "eval-smot"]
    changed = f"{os.path.realpath(weights)}, which has changed since"
    assert str(e.value) == ("reproduce: finished stages were made with a file that is no longer as it was then, so "
                            "their numbers would not be of it: "
                            + "; ".join(f"{out / name} ({changed})" for name in ("fit-smot", "fit-coop", "eval-mcm"))
                            + "; remove those folders to run their stages again")
    assert not (out / "table.csv").exists() and not (out / "table.md").exists()
    shutil.rmtree(out)
    run_reproduce("table8", options, fake, echo=lambda line: None)
    assert (out / "table.csv").is_file() and (out / "table.md").is_file()


def test_the_smallest_counts_each_option_allows_reach_the_stages_and_one_below_is_refused(tmp_path):
    """docs/reproduce.md: --shots, --epochs and --batch-size are counts of at least 1 (as fit's and
    train's own), --workers at least 0 (the CPU benchmark runs with 0): those reach the fits as given;
    one below is refused, naming the flag, before anything is written."""
    lines = []
    o = ReproduceOptions(out=str(tmp_path / "o"), imagenet="IN", ood_root="OOD", shots=1, epochs=1, batch_size=1,
                         workers=0)
    from clip_smot.reproduce import run_reproduce

    assert run_reproduce("table8", o, lambda argv: None, dry_run=True, echo=lines.append) is None
    fit = shlex.split(lines[0])[1:]
    assert fit[0] == "fit" and [fit[fit.index(f) + 1] for f in ("--shots", "--epochs", "--batch-size", "--workers")] \
        == ["1", "1", "1", "0"], fit
    for field, value, flag in (("shots", 0, "--shots"), ("epochs", 0, "--epochs"), ("batch_size", 0, "--batch-size"),
                               ("workers", -1, "--workers")):
        with pytest.raises(UserError, match=rf"^{flag} {value}: "):
            run_reproduce("table8", dataclasses.replace(o, **{field: value}), lambda argv: None, dry_run=True)
    assert not (tmp_path / "o").exists()


def test_the_torchvision_sets_checked_under_cifar_root_are_those_the_stages_read(tmp_path, monkeypatch):
    """Before any training: the CIFAR sets the table trains on (Table 1: CIFAR-10 and CIFAR-100,
    Table 2: CIFAR-10) and SVHN, an OOD set of every CIFAR table, are each looked for in --cifar-root,
    in the order the stages read them (Table 1: CIFAR-10's trainings and evaluations, then
    CIFAR-100's), and every one missing is named."""
    from clip_smot.reproduce import run_reproduce

    for name in ("Textures", "Places", "LSUN", "iSUN"):
        _image_folder(tmp_path / name)
    asked = []
    monkeypatch.setattr("clip_smot.resnet.data.torchvision_unavailable",
                        lambda name, root: asked.append((name, root)) or f"no {name}")
    for table, sets in (("table1", ["cifar10", "svhn", "cifar100"]), ("table2", ["cifar10", "svhn"]),
                        ("table3", ["cifar100", "svhn"])):
        asked.clear()
        with pytest.raises(UserError) as e:
            run_reproduce(table, ReproduceOptions(out=str(tmp_path / "o"), cifar_root=str(tmp_path),
                                                  ood_root=str(tmp_path)), lambda argv: None)
        assert asked == [(s, str(tmp_path)) for s in sets], table
        assert str(e.value) == "; ".join(f"--cifar-root: no {s}" for s in sets), table
    assert not (tmp_path / "o").exists()
    # a training alone names its set by its --dataset's value; an evaluation, by an --ood's value
    from clip_smot.reproduce import Plan, Stage, _torchvision_sets

    stages = [Stage("t", ("train", "--dataset", "cifar100", "--stage", "base", "--out", "o/t")),
              Stage("e", ("eval", "--checkpoint", "m", "--id", "digits", "--ood", "SVHN", "--out", "o/e"))]
    assert _torchvision_sets(Plan(stages, {}, (), "t")) == ["cifar100", "svhn"]


def test_an_evaluation_folder_holding_a_checkpoint_is_not_resumed(tmp_path):
    """Only fit and train continue from a checkpoint.pt (--resume); eval has no such flag, and a
    checkpoint.pt left in its folder is not its own."""
    from clip_smot.reproduce import Stage

    for command in ("fit", "train", "eval"):
        (tmp_path / command).mkdir()
        (tmp_path / command / "checkpoint.pt").write_bytes(b"x")
        assert Stage(command, (command, "--out", str(tmp_path / command))).resumable(tmp_path) == (command != "eval")


def test_an_out_inside_an_imagenet_folder_a_cifar_table_does_not_read_is_allowed(tmp_path, monkeypatch):
    """Only the folders the table's stages read are refused as places for OUT: table2 trains and
    evaluates on CIFAR-10 (--cifar-root), so an --imagenet given along with it is no input."""
    from clip_smot.reproduce import run_reproduce

    monkeypatch.setattr("clip_smot.resnet.data.torchvision_unavailable", lambda name, root: None)  # (as if there)
    for folder in ("imagenet/train", "imagenet/val", "cifar", "ood/Textures", "ood/Places", "ood/LSUN", "ood/iSUN"):
        _image_folder(tmp_path / folder)
    out, ran = tmp_path / "imagenet" / "train" / "r", []

    def first(argv):
        ran.append(argv)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_reproduce("table2", ReproduceOptions(out=str(out), imagenet=str(tmp_path / "imagenet"),
                                                 cifar_root=str(tmp_path / "cifar"), ood_root=str(tmp_path / "ood")),
                      first, echo=lambda line: None)
    assert [argv[:5] for argv in ran] == [["train", "--dataset", "cifar10", "--data", str(tmp_path / "cifar")]]


def test_every_option_but_out_defaults_to_none_the_commands_own():
    """docs/reproduce.md: an option not given leaves each stage's command at its own default (and a
    data root not given is asked for by the table that needs it): no default of reproduce's own."""
    o = ReproduceOptions(out="o")
    assert {f.name: getattr(o, f.name) for f in dataclasses.fields(o)} == {
        "out": "o", "imagenet": None, "ood_root": None, "cifar_root": None, "model": None, "pretrained": None,
        "cam_model": None, "shots": None, "epochs": None, "batch_size": None, "precision": None, "device": None,
        "workers": None}


def test_the_builtin_svhn_set_is_recorded_as_given():
    """--ood SVHN (torchvision's set, no NAME=DIR) is a name, not a path: a stage's record keeps it
    as the command line has it."""
    from clip_smot.reproduce import Stage

    stage = Stage("eval-base", ("eval", "--checkpoint", "/o/train-base/model.safetensors", "--id", "cifar10",
                                "--ood", "SVHN", "--scores", "msp", "--out", "/o/eval-base"))
    assert stage.identity("/o") == ["eval", "--checkpoint", "OUT/train-base/model.safetensors", "--id", "cifar10",
                                    "--ood", "SVHN", "--scores", "msp"]


def test_folders_named_as_the_builtin_sets_in_the_working_directory_change_no_record(tmp_path, monkeypatch):
    """eval --checkpoint's --id cifar10 and --ood SVHN name the built-in sets even beside folders of
    those names (docs/resnet.md), so they are no paths of a stage's record: a folder ./cifar10 or
    ./SVHN made in the working directory after a run (CIFAR unpacked there) left the finished
    evaluations refused as "the work of another command" on the rerun."""
    from clip_smot.reproduce import RECORD, run_reproduce

    options, run, ran = _table2_counted(tmp_path, monkeypatch)
    run_reproduce("table2", options, run, echo=lambda line: None)
    assert len(ran) == 6
    ev = json.loads((Path(options.out) / "eval-smot" / RECORD).read_text())["argv"]
    assert _flag(ev, "--id") == "cifar10" and "SVHN" in ev
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "SVHN").mkdir()
    ran.clear()
    run_reproduce("table2", options, run, echo=lambda line: None)
    assert ran == []


@pytest.mark.parametrize("by_hand, changed", [("train --resume --epochs 3", "model.safetensors"),
                                              ("a model copied over", "model.safetensors"),
                                              ("a summary written over", "summary.json"),
                                              ("the model removed, a summary written over", "summary.json")])
def test_a_finished_training_whose_model_was_replaced_since_is_refused_before_the_stages_after_it(tmp_path, by_hand,
                                                                                                    changed):
    """reproduce table2 stopped in train-smot, train-base finished; then a `train --resume --epochs 3`
    run by hand into OUT/train-base (a new summary.json and model.safetensors), or another model
    copied over its model.safetensors: the rerun skipped train-base as finished (its record names
    --epochs 2) and trained SMOT on that model's CAMs and evaluated it as the base model, exit 0,
    a table of another run than its record says. A training's record vouches for its summary.json
    (``made``) and its model.safetensors (``model``): another is refused before any stage runs, each
    compared, also where the other is as it was or, a model, since removed (the stage that reads it
    names it)."""
    from clip_smot.reproduce import RECORD, run_reproduce

    out, ran = tmp_path / "o", []
    options, fake = _table2_fakes(tmp_path, {"train-smot"})

    def run(argv):
        ran.append(Path(_flag(argv, "--out")).name)
        if argv[0] == "train":  # (a training writes its model, then its summary)
            Path(_flag(argv, "--out")).mkdir(parents=True, exist_ok=True)
            (Path(_flag(argv, "--out")) / "model.safetensors").write_bytes(b"2 epochs")
        fake(argv)

    with pytest.MonkeyPatch.context() as m:
        m.setattr("clip_smot.resnet.data.torchvision_unavailable", lambda name, root: None)  # (as if there)
        with pytest.raises(KeyboardInterrupt):
            run_reproduce("table2", options, run, echo=lambda line: None)
        record = json.loads((out / "train-base" / RECORD).read_text())
        assert record["model"] == hashlib.sha256(b"2 epochs").hexdigest()
        if by_hand.startswith("the model removed"):
            (out / "train-base" / "model.safetensors").unlink()
        elif by_hand != "a summary written over":
            (out / "train-base" / "model.safetensors").write_bytes(b"3 epochs")
        if by_hand != "a model copied over":
            (out / "train-base" / "summary.json").write_text('{"epochs": 3}')
        ran.clear()
        for dry_run in (True, False):
            with pytest.raises(UserError) as e:
                run_reproduce("table2", options, run, dry_run=dry_run, echo=lambda line: None)
            assert str(e.value) == (f"reproduce: {out / 'train-base' / changed} is no longer the file its "
                                    "stage wrote (another command wrote it since, or it was edited): the stages after "
                                    f"it would read another model than the stage's; remove {out / 'train-base'} to run "
                                    "the stage again")
        assert ran == []
        shutil.rmtree(out / "train-base")
        run_reproduce("table2", options, run, echo=lambda line: None)
        assert ran[:2] == ["train-base", "train-smot"] and (out / "table.csv").is_file()


def test_a_finished_trainings_record_with_no_model_hash_leaves_its_model_unchecked(tmp_path, monkeypatch):
    """A training's record vouches for its model.safetensors only where it holds ``model`` (a record
    written where the model was not there yet, or by an older clip-smot, has none): such a stage is
    skipped as finished, its model not compared with a hash it has not (not refused as replaced)."""
    from clip_smot.reproduce import RECORD, run_reproduce

    options, fake, ran = _table2_counted(tmp_path, monkeypatch)
    out = tmp_path / "o"

    def run(argv):
        if argv[0] == "train":
            Path(_flag(argv, "--out")).mkdir(parents=True, exist_ok=True)
            (Path(_flag(argv, "--out")) / "model.safetensors").write_bytes(b"2 epochs")
        fake(argv)

    run_reproduce("table2", options, run, echo=lambda line: None)
    record = json.loads((out / "train-base" / RECORD).read_text())
    assert record.pop("model") == hashlib.sha256(b"2 epochs").hexdigest() and isinstance(record["made"], str)
    (out / "train-base" / RECORD).write_text(json.dumps(record))
    ran.clear()
    lines = []
    run_reproduce("table2", options, run, echo=lines.append)
    assert ran == [] and lines[0] == "reproduce: train-base is finished; skipped", lines


def test_another_options_error_of_a_stage_not_resumed_goes_through_as_raised(tmp_path):
    """Only a stage reproduce resumed (``--resume`` added) was started by another command: an
    OtherFlags raised by a stage run without it is its runner's own error, passed on unchanged, not
    reworded as a folder holding another command's run."""
    from clip_smot.common.run_folder import OtherFlags
    from clip_smot.reproduce import run_reproduce

    options, _ = _table8_fakes(tmp_path, [], {})
    raised = OtherFlags("the runner's own line", ["--epochs"])

    def run(argv):
        assert "--resume" not in argv
        raise raised

    with pytest.raises(OtherFlags) as e:
        run_reproduce("table8", options, run, echo=lambda line: None)
    assert e.value is raised and str(e.value) == "the runner's own line"


def test_the_temporary_files_of_a_run_killed_while_writing_are_removed_by_the_next(tmp_path, monkeypatch):
    """reproduce SIGKILLed while it wrote a stage's reproduce.json or the table left its hidden
    temporary file (.reproduce.json.XXXX.tmp, .table.md.XXXX.tmp) in OUT for good: the rerun wrote
    the files anew beside it. (A stage folder holding it beside another command's record held more
    than that record, and was refused as that command's work.) The next run removes them: a stage
    killed while its record was written has not ended well, and runs again."""
    from clip_smot.reproduce import RECORD, run_reproduce

    options, run, ran = _table2_counted(tmp_path, monkeypatch)
    out = Path(options.out)
    run_reproduce("table2", options, run, echo=lambda line: None)
    record = json.loads((out / "eval-smot" / RECORD).read_text())
    (out / "eval-smot" / RECORD).write_text(json.dumps({**record, "made": None}))  # (killed as it ended)
    (out / "eval-smot" / f".{RECORD}.k1ll3d.tmp").write_text('{"argv": [')
    (out / ".table.md.k1ll3d.tmp").write_text("# Table")
    (out / ".table.csv.k1ll3d.tmp").write_text("table,row")
    ran.clear()
    run_reproduce("table2", options, run, echo=lambda line: None)
    assert ran == ["eval-smot"]
    left = [f.name for d in (out, out / "eval-smot") for f in d.iterdir() if f.name.endswith(".k1ll3d.tmp")]
    assert left == []


@pytest.mark.parametrize("epochs, saved, differ", [
    (2, {"epochs": 3}, "--epochs 3 there, 2 the stage's"),
    (None, {"epochs": 3}, "--epochs 3 there, 200 the stage's"),  # (train's default)
    (2, {"epochs": 2, "lr": 0.05, "T": 10.0}, "--lr 0.05 there, 0.1 the stage's"),
])
def test_a_checkpoint_of_other_options_than_the_stages_is_refused_not_resumed(tmp_path, monkeypatch, epochs, saved,
                                                                                differ):
    """reproduce table2 interrupted in train-base; then `train --resume --epochs 3` run by hand into
    OUT/train-base, stopped too: its checkpoint is of a run of 3 epochs. The stage's --resume was
    refused in train's words ("--epochs 2: ... resume with as many or more", where reproduce takes
    no other --epochs), or, the stage taking train's default (no --epochs), went on to 3 epochs,
    exit 0. Or a `train --lr 0.05` run by hand into the folder (the stage killed as it started):
    the stage resumed it, taking its --lr (a flag the stage does not give is the checkpoint's), and
    its model went into the table, exit 0. Refused before any stage runs; a checkpoint of the
    stage's options is resumed."""
    from clip_smot.reproduce import run_reproduce

    monkeypatch.setattr("clip_smot.resnet.data.torchvision_unavailable", lambda name, root: None)  # (as if there)
    options, fake = _table2_fakes(tmp_path, {"train-base"})
    options, out, calls = dataclasses.replace(options, epochs=epochs), tmp_path / "o", []

    def run(argv):
        calls.append(argv)
        fake(argv)

    with pytest.raises(KeyboardInterrupt):
        run_reproduce("table2", options, run, echo=lambda line: None)
    torch.save({"epoch": 2, "config": saved}, out / "train-base" / "checkpoint.pt")  # (the run by hand's)
    calls.clear()
    with pytest.raises(UserError) as e:
        run_reproduce("table2", options, run, echo=lambda line: None)
    assert str(e.value) == (f"reproduce: {out / 'train-base' / 'checkpoint.pt'} is not of the stage's run ({differ}; a "
                            f"train run by hand into its folder?); remove {out / 'train-base'} to run the stage again")
    assert calls == []
    torch.save({"epoch": 1, "config": {"epochs": epochs or 200, "lr": 0.1, "T": 10.0, "arch": "resnet18",
                                       "batch_size": 128, "method": "ce", "input_size": 32, "alpha": 50.0}},
               out / "train-base" / "checkpoint.pt")
    run_reproduce("table2", options, run, echo=lambda line: None)
    assert calls[0][-1] == "--resume" and len(calls) == 6


class _MakesAFolder:
    """Pickled, a call of os.mkdir(path): what a hostile checkpoint.pt runs where it is unpickled
    as anything but weights."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_hostile_checkpoint_is_not_unpickled_when_its_options_are_compared(tmp_path, monkeypatch):
    """Before an interrupted training is resumed, reproduce reads its checkpoint's options: a
    checkpoint.pt put in the folder that pickles a call (here os.mkdir) must be read as weights
    only, so the call never runs; the stage is resumed, and train names the file."""
    from clip_smot.reproduce import run_reproduce

    monkeypatch.setattr("clip_smot.resnet.data.torchvision_unavailable", lambda name, root: None)  # (as if there)
    options, fake = _table2_fakes(tmp_path, {"train-base"})
    out, calls, ran_code = tmp_path / "o", [], tmp_path / "the checkpoint ran code"

    def run(argv):
        calls.append(argv)
        fake(argv)

    with pytest.raises(KeyboardInterrupt):
        run_reproduce("table2", options, run, echo=lambda line: None)
    torch.save({"epoch": 1, "config": _MakesAFolder(ran_code)}, out / "train-base" / "checkpoint.pt")
    calls.clear()
    run_reproduce("table2", options, run, echo=lambda line: None)
    assert not ran_code.exists()
    assert calls[0][-1] == "--resume" and len(calls) == 6


def _table8_killed_as_the_fit_started(tmp_path):
    """Table 8 with faked stages, killed as fit-smot started (its record written, its folder made):
    (options, the fake stage runner, the stages it ran, OUT)."""
    from clip_smot.reproduce import run_reproduce

    ran, out = [], tmp_path / "o"
    options, fake = _table8_fakes(tmp_path, ran, {})

    def killed_as_the_fit_started(argv):
        Path(argv[argv.index("--out") + 1]).mkdir(parents=True, exist_ok=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_reproduce("table8", options, killed_as_the_fit_started, echo=lambda line: None)
    return options, fake, ran, out


def test_a_fit_checkpoint_of_other_options_than_the_stages_is_refused_not_resumed(tmp_path):
    """Table 8 killed as fit-smot started (its record written), then the user's own `fit --lr 0.05
    --out OUT/fit-smot` there, stopped at a checkpoint: the stage's --resume took --lr from the
    checkpoint (the stage gives none), and the SMOT row came from the user's fit, exit 0. Refused
    before any stage runs, naming the option with both values (also where the user's fit ran on a
    GPU machine); a checkpoint of the stage's options is resumed."""
    from clip_smot.clip.fit import FitConfig
    from clip_smot.reproduce import run_reproduce

    options, fake, ran, out = _table8_killed_as_the_fit_started(tmp_path)
    stages = FitConfig().to_dict()
    # (the user's fit on a GPU machine: its tensors at "cuda:0", read here on the CPU to compare)
    save_as_if_from_cuda({"epoch": 1, "ctx": torch.zeros(4, 8), "config": {**stages, "lr": 0.05}},
                         out / "fit-smot" / "checkpoint.pt")
    with pytest.raises(UserError) as e:
        run_reproduce("table8", options, fake, echo=lambda line: None)
    assert str(e.value) == (f"reproduce: {out / 'fit-smot' / 'checkpoint.pt'} is not of the stage's run (--lr 0.05 "
                            f"there, 0.002 the stage's; a fit run by hand into its folder?); remove {out / 'fit-smot'} "
                            "to run the stage again")
    assert ran == []
    torch.save({"epoch": 1, "config": stages}, out / "fit-smot" / "checkpoint.pt")
    calls = []
    run_reproduce("table8", options, lambda argv: (calls.append(argv), fake(argv)), echo=lambda line: None)
    assert calls[0][-1] == "--resume" and len(calls) == 5


@pytest.mark.parametrize("value", [torch.zeros(2), torch.zeros(0)])
def test_a_fit_checkpoint_holding_a_tensor_for_an_option_is_no_traceback(tmp_path, value):
    """A fit-smot checkpoint.pt whose config holds a tensor of two values (or none) for --lr: the
    comparison with the stage's options raised "Boolean value of Tensor with more than one value
    is ambiguous" out of reproduce, a traceback. It is refused in one line naming the checkpoint
    and the option's value by its type, before any stage runs."""
    from clip_smot.clip.fit import FitConfig
    from clip_smot.reproduce import run_reproduce

    options, fake, ran, out = _table8_killed_as_the_fit_started(tmp_path)
    torch.save({"epoch": 1, "config": {**FitConfig().to_dict(), "lr": value}}, out / "fit-smot" / "checkpoint.pt")
    for dry_run in (True, False):
        with pytest.raises(UserError) as e:
            run_reproduce("table8", options, fake, dry_run=dry_run, echo=lambda line: None)
        assert str(e.value) == (f"reproduce: {out / 'fit-smot' / 'checkpoint.pt'} is not of the stage's run (--lr a "
                                f"Tensor there, 0.002 the stage's; a fit run by hand into its folder?); remove "
                                f"{out / 'fit-smot'} to run the stage again")
    assert ran == []


@pytest.mark.parametrize("config", ["lr", ["lr"], None])
def test_a_fit_checkpoint_whose_config_is_no_object_is_left_to_the_fits_resume(tmp_path, config):
    """A fit-smot checkpoint.pt whose "config" is no object (a string, a list, null: not one of
    fit's) is not compared with the stage's options, no traceback from indexing it by an
    option's name: the stage is resumed from it, and fit's own --resume names what is wrong."""
    from clip_smot.reproduce import run_reproduce

    options, fake, ran, out = _table8_killed_as_the_fit_started(tmp_path)
    torch.save({"epoch": 1, "config": config}, out / "fit-smot" / "checkpoint.pt")
    calls = []
    run_reproduce("table8", options, lambda argv: (calls.append(argv), fake(argv)), echo=lambda line: None)
    assert calls[0][:2] == ["fit", "--data"] and calls[0][-1] == "--resume" and len(calls) == 5


def test_a_training_begun_by_hand_in_a_stages_folder_while_reproduce_runs_is_not_resumed(tmp_path, monkeypatch):
    """A user's own `train --lr 0.05 --out OUT/train-logitnorm`, begun while reproduce ran the
    stages before it and stopped (its checkpoint there, no record: the folders were checked before
    any stage ran): the stage resumed it, taking its --lr, and its model went into the LogitNorm
    row, exit 0. A stage about to resume a checkpoint checks its folder again first."""
    from clip_smot.reproduce import RECORD, run_reproduce

    options, run, ran = _table2_counted(tmp_path, monkeypatch)
    out = Path(options.out)

    def meanwhile(argv):
        run(argv)
        if ran[-1] == "train-base":  # (the user's own train, stopped at its first checkpoint)
            (out / "train-logitnorm").mkdir()
            torch.save({"epoch": 1, "config": {"epochs": 200, "lr": 0.05}}, out / "train-logitnorm" / "checkpoint.pt")

    with pytest.raises(UserError, match=rf"^reproduce: {out / 'train-logitnorm'} holds a train run with no {RECORD}"):
        run_reproduce("table2", options, meanwhile, echo=lambda line: None)
    assert "train-logitnorm" not in ran and not (out / "train-logitnorm" / RECORD).exists()


def test_an_out_name_too_long_for_the_file_system_is_one_line(tmp_path):
    """--out whose last name is 300 characters (past NAME_MAX, 255; found by fuzzing the flags):
    the look-up of each stage's finished file ended in 'OSError: [Errno 36] File name too long',
    even for --dry-run. One line naming --out, exit 1, nothing written."""
    res = CliRunner().invoke(cli, ["reproduce", "table8", "--imagenet", "IN", "--ood-root", "OOD",
                                   "--out", str(tmp_path / ("o" * 300)), "--dry-run"])
    assert isinstance(res.exception, (SystemExit, type(None))), repr(res.exception)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "--out" in lines[0], res.output
    assert list(tmp_path.iterdir()) == []
    # and a data root of such a name, looked for before anything runs (Path.is_dir raised it too)
    res = CliRunner().invoke(cli, ["reproduce", "table8", "--imagenet", str(tmp_path / ("i" * 300)), "--ood-root",
                                   "OOD", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and res.output == (f"Error: --imagenet {tmp_path / ('i' * 300) / 'train'}: File name too "
                                                 "long\n"), res.output
    assert list(tmp_path.iterdir()) == []
