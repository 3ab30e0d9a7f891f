"""`clip-smot fit` / `export` end to end on CPU: tiny CLIP, tiny ResNet CAMs, ImageNet-layout folders."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import WNIDS, _write_imagenet, cam_resnet, save_as_if_from_cuda  # noqa: F401 (fixture)
from PIL import Image
from safetensors.torch import safe_open

import clip_smot.common.run_folder as run_folder
from clip_smot.cli import cli
from clip_smot.clip.cam_network import build_cam_provider, cache_cams, load_cam_network
from clip_smot.clip.fewshot import (
    FewShotClasses,
    decode_images,
    draw_split,
    imagenet_classnames,
    imagenet_wnids,
    read_split,
    resolve_classes,
)
from clip_smot.clip.fit import FitConfig, lr_factor, run_fit
from clip_smot.clip.model import load_clip
from clip_smot.clip.prompt import PromptLearner
from clip_smot.clip.prompt_file import load_prompt
from clip_smot.clip.scorer import PromptScorer
from clip_smot.common.digits import DIGIT_NAMES
from clip_smot.common.errors import UserError


@pytest.fixture(scope="session")
def imagenet_dir(tmp_path_factory):
    return _write_imagenet(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture
def fit_args(imagenet_dir, cam_resnet, tiny_clip_config, tiny_clip_checkpoint):
    def make(out, *extra):
        return ["fit", "--data", str(imagenet_dir), "--shots", "2", "--model", tiny_clip_config,
                "--pretrained", tiny_clip_checkpoint, "--cam-model", cam_resnet, "--n-ctx", "4",
                "--batch-size", "4", "--epochs", "1", "--precision", "fp32", "--device", "cpu",
                "--workers", "0", "--out", str(out), *extra]
    return make


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, imagenet_dir, cam_resnet, tiny_clip_config, tiny_clip_checkpoint):
    """One epoch of `clip-smot fit` through the CLI (shared by the tests that read its files)."""
    out = tmp_path_factory.mktemp("fit") / "run"
    args = ["fit", "--data", str(imagenet_dir), "--shots", "2", "--model", tiny_clip_config,
            "--pretrained", tiny_clip_checkpoint, "--cam-model", cam_resnet, "--n-ctx", "4",
            "--batch-size", "4", "--epochs", "1", "--precision", "fp32", "--device", "cpu",
            "--workers", "0", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    # stdout: the epoch's line, then the prompt written (the progress bar draws on stderr only)
    epoch = r"epoch 1/1  loss \d+\.\d{4}  lr \S+  \(\d+\.\d s\)"
    assert re.fullmatch(rf"{epoch}\nprompt: {re.escape(str(out / 'prompt.safetensors'))}\n", res.stdout), res.stdout
    return out


@pytest.mark.parametrize("stdout", ["closed pipe", "full disk"])
def test_a_stdout_that_fails_keeps_the_prompt_or_says_resume(tmp_path, fit_args, stdout):
    """fit's stdout read by a reader gone (`fit ... | head -1` once head has its line: EPIPE) or
    on a full disk (/dev/full: ENOSPC): the write of the epoch line fails after the epoch's
    checkpoint. The run either ends its work (the prompt written) or says in its one line on stderr
    that --resume writes it; not exit 1 with nothing said (the pipe), nor a traceback (the disk)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "clip_smot", *fit_args(out)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if stdout == "full disk":
        with open("/dev/full", "w") as full:
            res = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
        code, err = res.returncode, res.stderr
    else:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        p.stdout.close()  # (the reader is gone before the first line)
        err = p.stderr.read()
        code = p.wait(timeout=120)
    assert (out / "checkpoint.pt").is_file(), err  # (the epoch ran)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert (out / "prompt.safetensors").is_file() or (
        code != 0 and lines and lines[-1].startswith("Error:") and "--resume" in lines[-1]), (code, err)


def test_the_class_folders_fit_records_are_the_same_under_an_ascii_locale(tmp_path, tiny_clip_config,
                                                                          tiny_clip_checkpoint):
    """Under a C locale without Python's coercion to UTF-8 (file system encoding ASCII), the class
    folders 'caf\u00e9' and '\u732b' (UTF-8 on disk) are recorded in config.json's run.class_folders as
    those names, as a UTF-8 locale records them (eval labels an ID folder by them), not as
    'caf\udcc3\udca9' and three surrogates."""
    import subprocess
    import sys

    for name in ("caf\u00e9", "\u732b"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "data" / "train" / name / "0.png")
    code = ("import sys, torch\n"
            "from clip_smot.clip.fit import FitConfig, _load_inputs\n"
            "assert sys.getfilesystemencoding() == 'ascii', sys.getfilesystemencoding()\n"
            "cfg = FitConfig(data=sys.argv[1], model=sys.argv[2], pretrained=sys.argv[3], loss='ce', shots=1, "
            "workers=0)\n"
            "print(ascii(_load_inputs(cfg, torch.device('cpu')).config['run']['class_folders']))\n")
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    res = subprocess.run([sys.executable, "-c", code, os.fsencode(tmp_path / "data"), tiny_clip_config,
                          tiny_clip_checkpoint], env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.splitlines() == [ascii(["caf\u00e9", "\u732b"])], res.stdout + res.stderr


def test_one_epoch_writes_prompt_split_config_log(one_epoch, tiny_clip_checkpoint):
    out = one_epoch
    for name in ("prompt.safetensors", "split.txt", "config.json", "log.jsonl", "checkpoint.pt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    split = (out / "split.txt").read_text()
    assert config["run"]["split_sha256"] == hashlib.sha256((out / "split.txt").read_bytes()).hexdigest()
    lines = split.splitlines()
    assert len(lines) == 6 and all(line.count("\t") == 1 for line in lines)
    assert config["run"]["n_images"] == 6 and config["run"]["image_size"] == 32  # (2 shots of 3 classes)
    assert [int(line.split("\t")[1]) for line in lines] == [0, 0, 1, 1, 2, 2]
    assert all(line.split("/")[0] == WNIDS[int(line.split("\t")[1])] for line in lines)
    assert config["lam"] == 0.1 and config["alpha"] == 50 and config["T"] == 200 and config["device"] == "cpu"
    assert [config[k] for k in ("text_attention", "compile", "cuda_graph", "overlap_encoders")] == [
        "causal", False, False, False]  # the speed options as resolved for the CPU, not "auto"
    names = [imagenet_classnames()[imagenet_wnids().index(w)] for w in WNIDS]
    assert names == ["tench", "goldfish", "great white shark"]
    assert config["run"]["classnames"] == names
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1] and np.isfinite(log[0]["loss"])
    assert log[0]["lr"] == pytest.approx(1e-5)  # epoch 1 is the warm-up epoch
    with safe_open(str(out / "prompt.safetensors"), framework="pt") as f:
        meta = f.metadata()
        ctx, tf = f.get_tensor("ctx"), f.get_tensor("text_features")
    assert ctx.shape == (4, 32) and tf.shape == (3, 32)
    torch.testing.assert_close(tf.norm(dim=-1), torch.ones(3))
    assert meta["format_version"] == "1" and meta["model"] == "clip-smot-tiny"
    assert meta["pretrained"] == "tiny.safetensors"
    assert meta["checkpoint_sha256"] == hashlib.sha256(open(tiny_clip_checkpoint, "rb").read()).hexdigest()
    assert meta["n_ctx"] == "4" and meta["class_position"] == "end" and meta["csc"] == "false"
    assert json.loads(meta["classnames"]) == names
    assert json.loads(meta["config"])["run"]["split_sha256"] == config["run"]["split_sha256"]
    prompt_config = json.loads(meta["config"])  # (the epochs it holds; not where the run ran)
    assert prompt_config["run"]["epoch"] == 1 and not {"workers", "out"} & set(prompt_config), prompt_config
    assert json.loads(meta["model_config"])["embed_dim"] == 32
    assert FitConfig.from_json(out / "config.json").lam == 0.1


def test_prompt_features_and_logits_match_open_clip(one_epoch, tiny_clip_config, tiny_clip_checkpoint):
    """The exported text features are the context's encoding; logits are scale * cos, by hand."""
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint)
    pf = load_prompt(one_epoch / "prompt.safetensors")
    learner = PromptLearner(clip, pf.classnames, n_ctx=4)
    with torch.no_grad():
        learner.ctx.copy_(pf.ctx)
        expected = F.normalize(learner(), dim=-1)
    torch.testing.assert_close(pf.text_features, expected, atol=1e-6, rtol=0)
    clf = PromptScorer.from_file(one_epoch / "prompt.safetensors", model=tiny_clip_config,
                                pretrained=tiny_clip_checkpoint, device="cpu")
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(clip.mean).view(1, 3, 1, 1), torch.tensor(clip.std).view(1, 3, 1, 1)
    with torch.no_grad():
        img = F.normalize(clip.model.encode_image((images - mean) / std), dim=-1)
    torch.testing.assert_close(clf.logits(images), clip.model.logit_scale.exp() * img @ expected.t())


@pytest.mark.parametrize("record", ["today", "no activation"])
def test_export_reproduces_the_prompt(one_epoch, tmp_path, record):
    """The run's prompt again, byte for byte (README: the same prompt gives the same bytes); also
    from a checkpoint written before a run's CLIP record named its activation (before 2026-12-03:
    the model config's is the run's)."""
    run = one_epoch
    if record == "no activation":
        run = shutil.copytree(one_epoch, tmp_path / "run")
        _edit_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt",
                         lambda saved: saved["config"]["run"]["clip"].pop("activation"))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(run / "checkpoint.pt"),
                                   "--out", str(tmp_path / "again.safetensors"), "--device", "cpu"])
    assert res.exit_code == 0 and res.stdout == f"prompt written to {tmp_path / 'again.safetensors'}\n", res.output
    assert "note:" not in res.output  # epoch 1 of the run's 1: no unfinished run's note
    a, b = load_prompt(one_epoch / "prompt.safetensors"), load_prompt(tmp_path / "again.safetensors")
    assert torch.equal(a.ctx, b.ctx) and torch.equal(a.text_features, b.text_features)
    if record == "today":  # (every metadata field too: the weights' name, the model, the checksums)
        assert (tmp_path / "again.safetensors").read_bytes() == (one_epoch / "prompt.safetensors").read_bytes()
    if record == "no activation":  # (the prompt keeps the run's record as it is)
        a.config["run"]["clip"].pop("activation")
    assert a.classnames == b.classnames and a.config == b.config


def test_export_into_the_folder_of_a_fit_at_work_is_refused_in_one_line(one_epoch, tmp_path):
    """export --checkpoint RUN/checkpoint.pt --out RUN/prompt.safetensors while the fit of RUN ran
    (a race of the two, 400 epochs): the export read the checkpoint of epoch 355, and its prompt was
    renamed after the fit's final one, which it replaced; the fit said it was done, and a --resume
    found nothing to do. The export holds the lock the fit holds on its folder: refused while the
    fit runs; an export elsewhere reads the checkpoint as before."""
    from clip_smot.common.locks import output_lock

    run = shutil.copytree(one_epoch, tmp_path / "run")
    before = (run / "prompt.safetensors").read_bytes()
    export = ["export", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu", "--out"]
    with output_lock(run, folder=True):  # (as the fit holds it)
        res = CliRunner().invoke(cli, [*export, str(run / "prompt.safetensors")])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert res.output == (f"Error: --out {run}: another clip-smot command is writing it now; wait for it to end, "
                              "or choose another --out\n")
        assert (run / "prompt.safetensors").read_bytes() == before
        res = CliRunner().invoke(cli, [*export, str(tmp_path / "elsewhere.safetensors")])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*export, str(run / "prompt.safetensors")])
    assert res.exit_code == 0, res.output
    assert (run / "prompt.safetensors").read_bytes() == (tmp_path / "elsewhere.safetensors").read_bytes()


def test_export_removes_what_a_killed_export_left_beside_its_out(one_epoch, tmp_path):
    """An export killed while writing (SIGKILL, the OOM killer) leaves its temporary file and the
    folder of its safetensors write beside --out, hidden, each as large as the prompt: the next
    export to that --out removes those over an hour old (a younger one may be another export's at
    work), and nothing of another file's or a user's."""
    old_file, old_folder = tmp_path / ".again.safetensors.k1ll3d_x.tmp", tmp_path / ".again.safetensors.k1ll3d_y.tmp"
    young, other = tmp_path / ".again.safetensors.y0ung_zz.tmp", tmp_path / ".other.safetensors.k1ll3d_x.tmp"
    users = tmp_path / ".again.safetensors.mine_abc.tmp"  # (a folder of a user's under such a name: kept)
    for f in (old_file, young, other):
        f.write_bytes(b"half")
    old_folder.mkdir()
    (old_folder / "tensors").write_bytes(b"half")
    (old_folder / ".tmpAb12Cd").write_bytes(b"half")  # (safetensors 0.8's own temporary)
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    hour_ago = time.time() - 3700
    for f in (old_file, old_folder, old_folder / "tensors", old_folder / ".tmpAb12Cd", other, users, users / "notes.txt"):
        os.utime(f, (hour_ago, hour_ago))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(one_epoch / "checkpoint.pt"),
                                   "--out", str(tmp_path / "again.safetensors"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert not old_file.exists() and not old_folder.exists()
    assert young.exists() and other.exists() and (users / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".again.safetensors.mine_abc.tmp", ".again.safetensors.y0ung_zz.tmp", ".other.safetensors.k1ll3d_x.tmp",
         "again.safetensors"])


def test_export_into_its_run_folder_removes_a_killed_exports_temporaries_at_once(one_epoch, tmp_path):
    """Into the run's own folder an export holds that folder's lock, so no other export (nor the
    fit) writes there: what a killed export left beside RUN/prompt.safetensors is removed by the
    next one at once, not kept for an hour as another export's possible work in progress."""
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    young = run / ".prompt.safetensors.k1ll3d_x.tmp"
    young.write_bytes(b"half")
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(run / "checkpoint.pt"),
                                   "--out", str(run / "prompt.safetensors"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert not young.exists() and sorted(p.name for p in run.iterdir()) == sorted(p.name for p in one_epoch.iterdir())


def test_a_bf16_run_exports_float32_text_features(fit_args, tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    """Training in bf16 (the default, here with the whole text tower in bf16) still exports the
    fp32 encoding of the learned context (docs/method.md §2): scoring uses the stored features."""
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, fit_args(out, "--precision", "bf16", "--text-residual", "precision"))
    assert res.exit_code == 0, res.output
    pf = load_prompt(out / "prompt.safetensors")
    assert pf.text_features.dtype == torch.float32
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint)
    encoded = {}
    for precision in ("fp32", "bf16"):
        learner = PromptLearner(clip, pf.classnames, n_ctx=4, precision=precision, residual="precision")
        with torch.no_grad():
            learner.ctx.copy_(pf.ctx)
            encoded[precision] = F.normalize(learner().float(), dim=-1)
    assert (encoded["bf16"] - encoded["fp32"]).abs().max() > 1e-4  # (the check below can tell them apart)
    torch.testing.assert_close(pf.text_features, encoded["fp32"], atol=1e-6, rtol=0)


def test_fp16_on_the_cpu_is_the_bf16_it_runs(fit_args, tmp_path):
    """CPU autocast has no fp16: ``--precision fp16`` on the CPU is the bf16 run, recorded as bf16
    in config.json (as score and train record it), and resuming with the same flags is no change."""
    contexts = {}
    for precision in ("fp16", "bf16"):
        out = tmp_path / precision
        res = CliRunner().invoke(cli, fit_args(out, "--precision", precision))
        assert res.exit_code == 0, res.output
        assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
        contexts[precision] = load_prompt(out / "prompt.safetensors").ctx
    assert torch.equal(contexts["fp16"], contexts["bf16"])
    res = CliRunner().invoke(cli, fit_args(tmp_path / "fp16", "--precision", "fp16", "--epochs", "1", "--resume"))
    assert res.exit_code == 0, res.output
    # a run recorded as fp16 on the CPU (before this was resolved) resumes with the same flags too
    path = tmp_path / "fp16" / "checkpoint.pt"
    saved = torch.load(path, weights_only=True)
    saved["config"]["precision"] = "fp16"
    torch.save(saved, path)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "fp16", "--precision", "fp16", "--epochs", "1", "--resume"))
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, fit_args(tmp_path / "fp16", "--precision", "fp32", "--epochs", "1", "--resume"))
    assert res.exit_code == 1 and "--precision differs from the run saved" in res.output, res.output


def test_export_of_a_checkpoint_name_too_long_is_one_line_naming_the_flag(tmp_path):
    """--checkpoint of a name longer than the file system allows: OSError's traceback (pathlib's
    is_file raises ENAMETOOLONG), now one line naming the flag, as score's --prompt is."""
    name = "a" * 300
    res = CliRunner().invoke(cli, ["export", "--checkpoint", name, "--out", str(tmp_path / "p.safetensors")])
    assert res.exit_code == 1 and res.output == f"Error: --checkpoint {name}: File name too long\n", res.output
    assert list(tmp_path.iterdir()) == []


def test_export_with_other_weights_says_so(one_epoch, tiny_clip_checkpoint, tmp_path):
    """export --pretrained with another checkpoint of the architecture wrote a prompt whose text
    features are not the trained prompt's, without a word; a copy of the run's own file is fine."""
    import shutil

    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(7)
    save_file({k: v.contiguous() for k, v in open_clip.create_model("clip-smot-tiny").state_dict().items()},
              str(tmp_path / "other.safetensors"))
    shutil.copy(tiny_clip_checkpoint, tmp_path / "copy.safetensors")

    def export(weights):
        res = CliRunner().invoke(cli, ["export", "--checkpoint", str(one_epoch / "checkpoint.pt"), "--out",
                                       str(tmp_path / f"{weights}.out.safetensors"), "--pretrained",
                                       str(tmp_path / weights), "--device", "cpu"])
        assert res.exit_code == 0, res.output
        return res.stderr

    sha = hashlib.sha256(open(tiny_clip_checkpoint, "rb").read()).hexdigest()
    assert export("other.safetensors").startswith(f"note: the context was trained with the weights tiny.safetensors "
                                                  f"(sha256 {sha[:12]}...), not with other.safetensors; ")
    assert "note" not in export("copy.safetensors")
    assert torch.equal(load_prompt(tmp_path / "copy.safetensors.out.safetensors").text_features,
                       load_prompt(one_epoch / "prompt.safetensors").text_features)
    # a run of a pretrained tag (no file, so no SHA-256) exported with random weights: the tag alone is named
    tagged = _edit_checkpoint(one_epoch / "checkpoint.pt", tmp_path / "checkpoint.pt", lambda saved: saved["config"][
        "run"]["clip"].update(pretrained="openai", checkpoint_sha256=""))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(tagged), "--out", str(tmp_path / "none.safetensors"),
                                   "--pretrained", "none", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.stderr.startswith("note: the context was trained with the weights openai, not with random weights; "
                                 "the text features are encoded with the latter"), res.stderr
    # a run of a checkpoint file exported with random weights: said nothing (a file and no file were not compared)
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(one_epoch / "checkpoint.pt"), "--out",
                                   str(tmp_path / "none2.safetensors"), "--pretrained", "none", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.stderr.startswith(f"note: the context was trained with the weights tiny.safetensors (sha256 "
                                 f"{sha[:12]}...), not with random weights; the text features are encoded with the "
                                 "latter"), res.stderr



@pytest.mark.parametrize("scale, said", [
    (100.0, "the non-finite temperature exp(logit_scale) = inf"),
    (-200.0, "the temperature exp(logit_scale) = 0, under which every logit is 0"),
    (-95.0, "the subnormal temperature exp(logit_scale) = 5.52112e-42, under which every logit is about 0"),
])
def test_weights_whose_temperature_is_inf_or_0_are_refused_before_training(fit_args, tiny_clip_checkpoint, tmp_path,
                                                                            scale, said):
    """CLIP's logits are exp(logit_scale) * cosine, in float32: logit_scale 100 (exp: inf) made the
    loss NaN, which fit blamed on its --lr; -200 (exp: 0, float32's smallest is e^-103.3) made every
    logit 0, so the loss was log 3 = 1.0986 each epoch and the context never moved, exit 0; -95
    (exp: 5.5e-42, below float32's smallest normal 1.2e-38, and 0 where subnormals are flushed to
    zero) did the same. Each is one line naming the weights, before anything is trained or written."""
    from safetensors.torch import load_file, save_file

    weights = load_file(tiny_clip_checkpoint)
    weights["logit_scale"] = torch.tensor(scale)
    save_file(weights, str(tmp_path / "bad.safetensors"))
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--pretrained", str(tmp_path / "bad.safetensors")))
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --pretrained bad.safetensors: logit_scale {scale:g} gives {said} (CLIP's is at most ln 100 = "
        "4.605)"), res.output
    assert not (tmp_path / "run").exists()

@pytest.mark.parametrize("loss", ["ls", "logitnorm"])
def test_the_baseline_losses_fit_without_cams_and_are_recorded(loss, fit_args, tmp_path, monkeypatch):
    """--loss ls / logitnorm (the paper's training baselines, as train --method has them) fit
    a prompt from the originals alone: no CAM network is loaded, and the prompt and config.json
    record the loss; a --resume checks it as any option."""
    import clip_smot.clip.cam_network as cam_network

    def no_cams(*a, **k):
        raise AssertionError("a CAM network was loaded")

    monkeypatch.setattr(cam_network, "load_cam_network", no_cams)
    out = tmp_path / loss
    res = CliRunner().invoke(cli, fit_args(out, "--loss", loss))
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["loss"] == loss
    assert load_prompt(out / "prompt.safetensors").config["loss"] == loss
    res = CliRunner().invoke(cli, fit_args(out, "--loss", "ce", "--resume"))
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == (
        f"Error: --resume: --loss differs from the run saved in {out}; resume with the same flags"), res.output


@pytest.mark.parametrize("extra, line", [
    (["--loss", "ce", "--lam", "0.5"], "--lam 0.5: only the smot loss uses it (this run's --loss is ce)"),
    (["--loss", "ce", "--lam", "0.1"], "--lam 0.1: only the smot loss uses it (this run's --loss is ce)"),
    (["--loss", "logitnorm", "--T", "77"], "--T 77.0: only the smot loss uses it (this run's --loss is logitnorm)"),
    (["--loss", "ls", "--perturb", "noise"], "--perturb noise: only the smot loss uses it (this run's --loss is ls)"),
    (["--loss", "ce", "--sigma", "0.5"], "--sigma 0.5: only the smot loss uses it (this run's --loss is ce)"),
])
def test_an_option_the_runs_loss_does_not_read_is_refused(extra, line, fit_args, tmp_path):
    """The threshold draw, the masked term and its perturbation are the SMOT loss's: given to a
    run of another loss (``--loss ce --lam 0.5``), the run went on without them, not a word
    said. Refused, as train refuses them."""
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", *extra))
    assert res.exit_code == 1 and res.output.strip().splitlines() == [f"Error: {line}"], res.output
    assert not (tmp_path / "run").exists()


def test_config_records_the_device_the_run_ran_on(fit_args, tmp_path, monkeypatch):
    """--device auto on a machine without a GPU runs on the CPU: config.json and the prompt's
    config record "cpu", the device resolved, not "auto"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = fit_args(tmp_path / "run", "--loss", "ce")
    args[args.index("--device") + 1] = "auto"
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["device"] == "cpu"
    assert load_prompt(tmp_path / "run" / "prompt.safetensors").config["device"] == "cpu"


def test_split_reuse_gives_the_same_files(one_epoch, fit_args, tmp_path):
    out = tmp_path / "again"
    res = CliRunner().invoke(cli, fit_args(out, "--split", str(one_epoch / "split.txt"), "--seed", "7", "--loss", "ce"))
    assert res.exit_code == 0, res.output
    assert (out / "split.txt").read_bytes() == (one_epoch / "split.txt").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["split_sha256"] == hashlib.sha256((out / "split.txt").read_bytes()).hexdigest()
    assert config["run"]["split_sha256"] == json.loads((one_epoch / "config.json").read_text())["run"]["split_sha256"]
    assert config["run"]["cam_model"] is None  # plain CoOp needs no CAM network


def test_the_decoding_threads_do_not_change_the_run(one_epoch, fit_args, tmp_path):
    """--workers says how many threads decode the split (docs/fit.md), not what is learned
    (reproduce lets it change between runs): 3 threads give one_epoch's context and text features
    bit for bit, its split and a config.json that differs in --out and --workers alone."""
    out = tmp_path / "threads"
    res = CliRunner().invoke(cli, fit_args(out, "--workers", "3"))
    assert res.exit_code == 0, res.output
    assert (out / "split.txt").read_bytes() == (one_epoch / "split.txt").read_bytes()
    ours, theirs = load_prompt(out / "prompt.safetensors"), load_prompt(one_epoch / "prompt.safetensors")
    assert torch.equal(ours.ctx, theirs.ctx) and torch.equal(ours.text_features, theirs.text_features)
    config, first = (json.loads((o / "config.json").read_text()) for o in (out, one_epoch))
    assert (config.pop("workers"), first.pop("workers")) == (3, 0)
    assert (config.pop("out"), first.pop("out")) == (str(out), str(one_epoch))
    assert config == first  # (the images' SHA-256 among them: the files in the split's order)


def test_a_fit_redone_with_other_decoding_threads_writes_the_same_prompt_bytes(fit_args, tmp_path):
    """docs/reproduce.md: --workers says where a stage runs, not what it computes, and may change
    between runs; a fit redone (its folder removed) that gives the same bytes keeps the
    evaluations of its prompt. Its tensors are the same bit for bit with 0 or 3 decoding threads
    (test_the_decoding_threads_do_not_change_the_run), or into another --out; so is the file: its
    config records neither (the run's config.json does)."""
    made = []
    for workers, out in (("0", tmp_path / "run"), ("3", tmp_path / "run"), ("0", tmp_path / "elsewhere")):
        shutil.rmtree(out, ignore_errors=True)
        res = CliRunner().invoke(cli, fit_args(out, "--workers", workers))
        assert res.exit_code == 0, res.output
        made.append((out / "prompt.safetensors").read_bytes())
        assert json.loads((out / "config.json").read_text())["workers"] == int(workers)
    assert made[1] == made[0] and made[2] == made[0]


def test_a_split_without_some_classes_of_the_data_is_a_note(one_epoch, fit_args, tmp_path):
    """A --split made on other data (a subset of these classes, in the same order) was taken
    silently: the prompt then holds classes that nothing was trained on."""
    split = tmp_path / "split.txt"
    split.write_text("".join(line + "\n" for line in (one_epoch / "split.txt").read_text().splitlines()
                             if not line.endswith("\t2")))
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--split", str(split), "--loss", "ce"))
    assert res.exit_code == 0, res.output
    assert f"note: --split {split} has no image of 1 of the 3 classes of " in res.stderr
    assert f"({WNIDS[2]}): the prompt holds them, but nothing trains on them" in res.stderr
    assert "note: --split" not in CliRunner().invoke(cli, fit_args(tmp_path / "full", "--loss", "ce")).stderr
    # where the set-up time went, before the first epoch (plain CoOp: no CAMs; on the CPU nothing compiled)
    assert re.search(r"^fit: set-up [\d.]+ s \(CLIP model [\d.]+ s, 4 images decoded [\d.]+ s\)$", res.stderr,
                     re.M), res.stderr


def test_a_stray_folder_among_imagenet_wnids_is_a_note(fit_args, imagenet_dir, tmp_path):
    """ImageNet-layout --data with one class folder that is not a wnid became a plain folder
    dataset without a word: the prompts read "a photo of a n01440764." instead of "tench"."""
    data = tmp_path / "data"
    shutil.copytree(imagenet_dir, data)
    shutil.copytree(data / "train" / WNIDS[0], data / "train" / "misc")
    args = fit_args(tmp_path / "dry", "--dry-run", "--loss", "ce")
    args[args.index("--data") + 1] = str(data)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert (f"note: {data / 'train'}: 3 of its 4 class folders are ImageNet wnids, but misc not: the folder names "
            "are the class names, so the prompts name wnids") in res.stderr
    assert "wnids" not in CliRunner().invoke(cli, fit_args(tmp_path / "dry2", "--dry-run", "--loss", "ce")).stderr


def test_another_seed_draws_another_split(imagenet_dir):
    classes = resolve_classes(imagenet_dir / "train")
    a, b = draw_split(classes, 2, seed=1), draw_split(classes, 2, seed=2)
    assert a == draw_split(classes, 2, seed=1) and a != b
    assert sorted({y for _, y in a}) == [0, 1, 2]


def test_resume_gives_the_same_context(fit_args, tmp_path, monkeypatch):
    extra = ["--epochs", "2", "--warmup-epochs", "0", "--lr", "0.05"]
    res = CliRunner().invoke(cli, fit_args(tmp_path / "straight", *extra))
    assert res.exit_code == 0, res.output

    real_save = run_folder.atomic_save

    def save_then_die(obj, path):  # the run is killed right after its first checkpoint
        real_save(obj, path)
        raise RuntimeError("killed")

    monkeypatch.setattr(run_folder, "atomic_save", save_then_die)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "broken", *extra))
    assert isinstance(res.exception, RuntimeError)
    after_one = torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=True)
    assert after_one["epoch"] == 1
    # (saved as a run on a GPU machine saves it, its tensors at "cuda:0": exported and resumed here on the CPU)
    save_as_if_from_cuda(after_one, tmp_path / "broken" / "checkpoint.pt")
    assert not (tmp_path / "broken" / "prompt.safetensors").exists()
    monkeypatch.setattr(run_folder, "atomic_save", real_save)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "broken", *extra))
    assert res.exit_code != 0 and "--resume" in res.output  # no silent restart over a checkpoint
    with open(tmp_path / "broken" / "log.jsonl", "a") as f:  # as if killed between the log line and the checkpoint
        f.write(json.dumps({"epoch": 2, "loss": 9.0, "lr": 0.0, "seconds": 0.0}) + "\n")
    # the unfinished run's context exported as the run's prompt (docs/fit.md allows it): it says so and records
    # it, and reproduce takes the fit for unfinished (it skipped it, then evaluated the epoch-1 prompt)
    from clip_smot.clip.prompt_file import recorded_epochs
    from clip_smot.reproduce import Stage

    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(tmp_path / "broken" / "checkpoint.pt"), "--out",
                                   str(tmp_path / "broken" / "prompt.safetensors"), "--device", "cpu"])
    assert res.exit_code == 0 and (f"note: {tmp_path / 'broken' / 'checkpoint.pt'} holds the context of epoch 1 of "
                                   "the run's 2: the prompt is that of an unfinished run") in res.output, res.output
    assert recorded_epochs(tmp_path / "broken" / "prompt.safetensors") == (1, 2)
    stage = Stage("broken", ("fit", "--out", str(tmp_path / "broken")))
    assert not stage.finished(tmp_path) and stage.resumable(tmp_path)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "broken", *extra, "--resume"))
    assert res.exit_code == 0, res.output
    assert recorded_epochs(tmp_path / "broken" / "prompt.safetensors") == (2, 2) and stage.finished(tmp_path)

    straight = load_prompt(tmp_path / "straight" / "prompt.safetensors")
    resumed = load_prompt(tmp_path / "broken" / "prompt.safetensors")
    assert torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert (straight.ctx - after_one["ctx"]).abs().max() > 1e-4  # epoch 2 really moved the context
    torch.testing.assert_close(resumed.ctx, straight.ctx, atol=1e-6, rtol=0)
    torch.testing.assert_close(resumed.text_features, straight.text_features, atol=1e-6, rtol=0)
    logs = [json.loads(line) for line in (tmp_path / "broken" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logs] == [1, 2]
    assert logs == [json.loads(line) | {"seconds": r["seconds"]} for line, r in
                    zip((tmp_path / "straight" / "log.jsonl").read_text().splitlines(), logs)]
    # resuming the finished run does nothing and rewrites nothing
    files = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in (tmp_path / "broken").iterdir()}
    res = CliRunner().invoke(cli, fit_args(tmp_path / "broken", *extra, "--resume"))
    assert res.exit_code == 0 and "has finished its 2 epochs; nothing to do" in res.output, res.output
    assert {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in (tmp_path / "broken").iterdir()} == files


def test_a_cam_model_replaced_while_it_loads_is_refused(fit_args, cam_resnet, tmp_path, monkeypatch):
    """fit read --cam-model, then hashed it for the run's config: a state dict written to that path
    in between gave CAMs of the old file under the new file's hash, which a --resume with the new
    file then passed. A file replaced while it is read is refused, before anything is written."""
    import clip_smot.clip.cam_network as cam_network

    cam = tmp_path / "cam.pth"
    shutil.copy(cam_resnet, cam)
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in torch.load(cam_resnet, weights_only=True).items()}
    torch.save(other, tmp_path / "new.pth")
    real = cam_network.load_cam_network

    def written_meanwhile(*args, **kwargs):
        net = real(*args, **kwargs)
        os.replace(tmp_path / "new.pth", cam)  # (an atomic write of other weights)
        return net

    monkeypatch.setattr(cam_network, "load_cam_network", written_meanwhile)
    args = fit_args(tmp_path / "run")
    args[args.index("--cam-model") + 1] = str(cam)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == (
        f"Error: --cam-model {cam}: was replaced while it was read (another command writing it now?); run again once "
        "it is written"), res.output
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_run_killed_within_its_first_renames_is_started_over(fit_args, tmp_path, monkeypatch):
    """A fit killed (SIGKILL) between renaming split.txt and config.json into place at its start
    left split.txt alone (config.json was renamed last): no checkpoint to --resume, and a new run
    refused the folder ("its split.txt is not of a clip-smot fit run stopped before its first
    checkpoint"), the run's own split: neither could go on without a file removed by hand.
    config.json, which says the folder is a stopped fit run's, is renamed first now: a kill
    there leaves it, which a new run starts over."""
    import clip_smot.common.files as files_module

    out = tmp_path / "run"
    real_fsync = files_module.fsync_folder

    def killed_within_the_renames(folder):  # (atomic_write_files' flush before its last rename)
        if any(f.name.startswith((".config.json.", ".split.txt.")) for f in Path(folder).iterdir()):
            raise RuntimeError("killed")
        real_fsync(folder)

    monkeypatch.setattr(files_module, "fsync_folder", killed_within_the_renames)
    res = CliRunner().invoke(cli, fit_args(out))
    assert isinstance(res.exception, RuntimeError), res.output
    assert not (out / "checkpoint.pt").exists() and len(list(out.iterdir())) == 1
    monkeypatch.setattr(files_module, "fsync_folder", real_fsync)
    res = CliRunner().invoke(cli, fit_args(out, "--resume"))
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == (
        f"Error: --resume: no checkpoint at {out / 'checkpoint.pt'}; run without --resume to start the run"), res.output
    res = CliRunner().invoke(cli, fit_args(out))
    assert res.exit_code == 0, res.output
    assert sorted(f.name for f in out.iterdir()) == ["checkpoint.pt", "config.json", "log.jsonl", "prompt.safetensors",
                                                      "split.txt"]


def test_a_run_killed_before_its_first_checkpoint_is_started_over_with_a_log_of_its_own(fit_args, tmp_path,
                                                                                         monkeypatch):
    """Killed after epoch 1's log line but before its checkpoint: the folder is a stopped run's
    (config.json, split.txt, log.jsonl), which a new run starts over; its log is the new run's
    one line, not the dead run's line of epoch 1 kept before it (a log of epochs [1, 1])."""
    out = tmp_path / "run"
    real_save = run_folder.atomic_save

    def killed_before_the_checkpoint(obj, path):
        raise RuntimeError("killed")

    monkeypatch.setattr(run_folder, "atomic_save", killed_before_the_checkpoint)
    res = CliRunner().invoke(cli, fit_args(out))
    assert isinstance(res.exception, RuntimeError), res.output
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "log.jsonl", "split.txt"]
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1]
    monkeypatch.setattr(run_folder, "atomic_save", real_save)
    res = CliRunner().invoke(cli, fit_args(out))
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1]


def test_an_epoch_is_the_mean_of_its_step_losses_and_its_bar_shows_every_20th(monkeypatch):
    """One epoch of 20 images in batches of 1 (20 steps) whose step losses are 0, 1/8, ..., 19/8:
    the epoch's loss is their mean, 190/8/20 = 1.1875; on a terminal its bar shows the loss of
    every 20th step, here the last, loss=2.3750, beside the learning rate."""
    import io
    import sys

    from clip_smot.clip import fit

    class Terminal(io.StringIO):  # (the bar draws only on a terminal)
        def isatty(self):
            return True

    ctx = torch.nn.Parameter(torch.zeros(3))
    training = fit._Training(ctx, torch.optim.SGD([ctx], lr=0.002), None,
                             {"data_gen": torch.Generator().manual_seed(0), "aug_gen": torch.Generator().manual_seed(0)})
    losses = iter(torch.arange(20, dtype=torch.float32) / 8)
    training.step = lambda x, cams, y: next(losses)
    monkeypatch.setattr(sys, "stderr", Terminal())
    mean = fit._epoch(FitConfig(), 0, training, torch.zeros(20, 3, 8, 8, dtype=torch.uint8),
                      torch.zeros(20, dtype=torch.long), None, torch.zeros(1), 8, 1, {}, False)
    assert mean == 1.1875
    assert "loss=2.3750, lr=0.002" in sys.stderr.getvalue(), sys.stderr.getvalue()
    assert "loss=0.0000" not in sys.stderr.getvalue()


def test_a_resumed_run_goes_on_with_the_schedule_of_its_epochs(fit_args, tmp_path, monkeypatch):
    """Killed after epoch 1 of 3 (1 warm-up epoch, --lr 0.05): the epochs after the resume run at
    CoOp's cosine lr of their own epoch, written out by hand (not restarted from epoch 1's)."""
    extra = ["--epochs", "3", "--warmup-epochs", "1", "--warmup-lr", "0.001", "--lr", "0.05", "--shots", "1",
             "--batch-size", "3"]
    real_save = run_folder.atomic_save

    def save_then_die(obj, path):
        real_save(obj, path)
        raise RuntimeError("killed")

    monkeypatch.setattr(run_folder, "atomic_save", save_then_die)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", *extra))
    assert isinstance(res.exception, RuntimeError)
    monkeypatch.setattr(run_folder, "atomic_save", real_save)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", *extra, "--resume"))
    assert res.exit_code == 0, res.output
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    # epoch 1: warm-up; epoch e >= 2: 0.05 * (1 + cos(pi * (e - 2) / 3)) / 2
    assert [r["epoch"] for r in logs] == [1, 2, 3]
    assert [r["lr"] for r in logs] == pytest.approx([0.001, 0.05, 0.05 * 0.75], rel=1e-12)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["scheduler"]["last_epoch"] == 3
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.25, rel=1e-12)


def test_a_run_started_with_a_split_resumes_on_it_without_the_flag(one_epoch, fit_args, tmp_path, monkeypatch):
    """``fit --out OUT --resume`` continues a run as it was started. For a run started with
    --split, it drew a split instead (with the default --shots), and stopped on that split."""
    first = {}
    for line in (one_epoch / "split.txt").read_text().splitlines():  # one image a class: not what --shots 2 draws
        first.setdefault(line.split("\t")[1], line)
    (tmp_path / "one.txt").write_text("".join(f"{line}\n" for line in first.values()))
    real_save = run_folder.atomic_save

    def save_then_die(obj, path):
        real_save(obj, path)
        raise RuntimeError("killed")

    monkeypatch.setattr(run_folder, "atomic_save", save_then_die)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--epochs", "2", "--split", str(tmp_path / "one.txt")))
    assert isinstance(res.exception, RuntimeError)
    monkeypatch.setattr(run_folder, "atomic_save", real_save)
    given = (tmp_path / "one.txt").read_text()
    (tmp_path / "one.txt").unlink()  # the run's own copy, OUT/split.txt, is what it goes on with
    res = CliRunner().invoke(cli, ["fit", "--out", str(tmp_path / "run"), "--resume", "--device", "cpu",
                                   "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "split.txt").read_text() == given


def test_resume_with_other_options_is_refused(fit_args, tmp_path, one_epoch):
    import shutil

    shutil.copytree(one_epoch, tmp_path / "run")
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--lam", "0.5", "--resume"))
    assert res.exit_code == 1 and "lam" in res.output.strip().splitlines()[-1]


@pytest.mark.parametrize("extra, refused", [
    (["--workers", "2"], None),  # run control: free on --resume
    (["--seed", "2"], "--seed"),  # the split, the context init and every draw
    (["--shots", "3"], "--shots"),
    (["--warmup-epochs", "0"], "--warmup-epochs"),
])
def test_resume_refuses_the_options_of_the_training_and_not_the_run_control(fit_args, tmp_path, one_epoch, extra,
                                                                            refused):
    shutil.copytree(one_epoch, tmp_path / "run")
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", *extra, "--resume"))
    if refused is None:
        assert res.exit_code == 0 and "has finished its 1 epochs; nothing to do" in res.output, res.output
    else:
        assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == (
            f"Error: --resume: {refused} differs from the run saved in {tmp_path / 'run'}; resume with the same "
            "flags"), res.output


def test_resume_with_the_same_files_under_other_paths(fit_args, tmp_path, one_epoch, tiny_clip_config,
                                                     tiny_clip_checkpoint, cam_resnet, monkeypatch):
    """The files of --model, --pretrained and --cam-model are compared by their contents: a
    resume that spells them relative to another folder (or as copies elsewhere) continues."""
    import os
    import shutil

    shutil.copytree(one_epoch, tmp_path / "run")
    shutil.copy(tiny_clip_checkpoint, tmp_path / "weights.safetensors")  # the same bytes, another path
    monkeypatch.chdir(os.path.dirname(tiny_clip_config))
    swap = {tiny_clip_config: os.path.relpath(tiny_clip_config), cam_resnet: os.path.relpath(cam_resnet),
            tiny_clip_checkpoint: str(tmp_path / "weights.safetensors")}
    args = [swap.get(a, a) for a in fit_args(tmp_path / "run", "--resume")]
    assert args != fit_args(tmp_path / "run", "--resume")
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and "has finished its 1 epochs" in res.output, res.output
    res = CliRunner().invoke(cli, [swap.get(a, a) for a in fit_args(tmp_path / "run", "--resume", "--lam", "0.5")])
    assert res.exit_code == 1 and "lam" in res.output.strip().splitlines()[-1]  # other options still refused


def test_a_checkpoint_of_another_run_copied_in_is_refused_naming_the_options(fit_args, tmp_path, one_epoch):
    """A --resume takes each option not given from the checkpoint: the checkpoint of a --loss ce
    run copied into a SMOT run's folder (its prompt gone, as reproduce table8 resumes fit-smot with
    no --loss) went on as a CoOp run there, exit 0, and reproduce put it in the SMOT row. The
    options of config.json, which the run wrote at its start, are those of its checkpoints: one
    line names those that differ and both files; nothing is written."""
    res = CliRunner().invoke(cli, fit_args(tmp_path / "coop", "--loss", "ce"))
    assert res.exit_code == 0, res.output
    run = shutil.copytree(one_epoch, tmp_path / "smot")
    (run / "prompt.safetensors").unlink()
    shutil.copy(tmp_path / "coop" / "checkpoint.pt", run / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for args in (fit_args(run, "--resume"), ["fit", "--out", str(run), "--resume"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 1 and _last_error_line(res) == (
            f"Error: --resume {run / 'checkpoint.pt'}: not a checkpoint of the run that {run / 'config.json'} records "
            "(--loss: ce in the checkpoint, smot in config.json); was it copied from another run? put the run's own "
            "back, or start a new run in another --out"), res.output
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # several options, each named with both values; the run control, the precision and the input
    # files (compared by their contents) are not compared, nor a key that config.json lacks
    config = json.loads((run / "config.json").read_text())
    config |= {"lam": 0.5, "epochs": 3, "workers": 7, "device": "cuda", "precision": "bf16", "model": "elsewhere.json"}
    del config["seed"]
    (run / "config.json").write_text(json.dumps(config))
    res = CliRunner().invoke(cli, fit_args(run, "--resume"))
    assert res.exit_code == 1 and "(--loss: ce in the checkpoint, smot in config.json; --lam: 0.1 in the checkpoint, " \
        "0.5 in config.json; --epochs: 1 in the checkpoint, 3 in config.json)" in _last_error_line(res), res.output
    # the run's own checkpoint under such a config.json (a resume with other run control stopped
    # before its first epoch rewrote it) resumes; a config.json that cannot be read is not compared
    shutil.copy(one_epoch / "checkpoint.pt", run / "checkpoint.pt")
    config |= {"lam": 0.1, "epochs": 1}
    (run / "config.json").write_text(json.dumps(config))
    res = CliRunner().invoke(cli, fit_args(run, "--resume"))
    assert res.exit_code == 0, res.output
    (run / "prompt.safetensors").unlink()
    shutil.copy(tmp_path / "coop" / "checkpoint.pt", run / "checkpoint.pt")
    (run / "config.json").write_text("{")
    res = CliRunner().invoke(cli, fit_args(run, "--resume"))
    assert res.exit_code == 0, res.output


def test_a_checkpoint_whose_context_is_a_meta_tensor_is_one_line(tmp_path, one_epoch):
    """A fit checkpoint whose ctx is a tensor on the "meta" device (no data; torch.load with
    weights_only reads it so, map_location or not: a seeded fuzz of fit --resume): fit --resume
    and export ended in "RuntimeError: Tensor.item() cannot be called on meta tensors", a
    traceback. Each is refused in one line naming the checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    saved["ctx"] = torch.empty(saved["ctx"].shape, device="meta")
    torch.save(saved, run / "checkpoint.pt")
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    for args in (["fit", "--out", str(run), "--resume", "--device", "cpu", "--workers", "0"],
                 ["export", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path / "p.safetensors"),
                  "--device", "cpu"]):
        res = CliRunner().invoke(cli, args)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit) and len(lines) == 1, res.output
        assert str(run / "checkpoint.pt") in lines[0]
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before and not (tmp_path / "p.safetensors").exists()


def test_an_option_the_checkpoint_lacks_is_compared_as_its_default(tmp_path, one_epoch):
    """A key gone from a checkpoint's config resumes at its default: the checkpoint of a run of
    --batch-size 4 without "batch_size" went on with 32, and rewrote config.json so, exit 0. It is
    compared with config.json as that default; a key whose default config.json holds (a
    checkpoint of an older clip-smot, its config.json rewritten by a later start) resumes."""
    run = shutil.copytree(one_epoch, tmp_path / "run")
    (run / "prompt.safetensors").unlink()
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    del saved["config"]["batch_size"]
    torch.save(saved, run / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    res = CliRunner().invoke(cli, ["fit", "--out", str(run), "--resume"])
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --resume {run / 'checkpoint.pt'}: not a checkpoint of the run that {run / 'config.json'} records "
        "(--batch-size: none in the checkpoint (the default 32), 4 in config.json); was it copied from another run? "
        "put the run's own back, or start a new run in another --out"), res.output
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    saved = torch.load(one_epoch / "checkpoint.pt", weights_only=True)
    assert saved["config"]["lam"] == FitConfig.lam
    del saved["config"]["lam"]
    torch.save(saved, run / "checkpoint.pt")
    res = CliRunner().invoke(cli, ["fit", "--out", str(run), "--resume", "--device", "cpu", "--workers", "0"])
    assert res.exit_code == 0, res.output


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(fit_args, tmp_path, monkeypatch):
    import clip_smot.clip.step as step_module

    calls = {"n": 0}
    real_loss = step_module.smot_loss

    def loss_goes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 1 else loss  # epoch 1 has one step

    monkeypatch.setattr(step_module, "smot_loss", loss_goes_nan)
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, fit_args(out, "--epochs", "3"))
    assert res.exit_code == 1
    line = _last_error_line(res)
    assert "non-finite" in line and "epoch 2" in line and "checkpoint" in line
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and torch.isfinite(saved["ctx"]).all()
    assert not (out / "prompt.safetensors").exists()


def test_a_context_gone_non_finite_stops_the_run_though_the_loss_was_finite(fit_args, tmp_path, monkeypatch):
    """A step that leaves the context inf (the update overflowed) after a finite loss: the epoch
    is not saved, the last good checkpoint (epoch 1) is kept, and no prompt is written."""
    import clip_smot.clip.fit as fit_mod

    real = fit_mod.make_fit_step
    calls = {"n": 0}

    def make(clip, learner, optimizer, **kw):
        step = real(clip, learner, optimizer, **kw)

        def overflowing(*args):
            loss = step(*args)
            calls["n"] += 1
            if calls["n"] > 1:  # epoch 1 has one step
                learner.ctx.data.fill_(float("inf"))
            return loss
        return overflowing

    monkeypatch.setattr(fit_mod, "make_fit_step", make)
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, fit_args(out, "--epochs", "3"))
    assert res.exit_code == 1
    line = _last_error_line(res)
    assert "non-finite" in line and "epoch 2" in line and "(epoch 1) is kept" in line, line
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and torch.isfinite(saved["ctx"]).all()
    assert not (out / "prompt.safetensors").exists()


def test_embedded_digits_by_default(tmp_path, monkeypatch, tiny_clip_config, tiny_clip_checkpoint):
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["fit", "--shots", "1", "--model", tiny_clip_config, "--pretrained",
                                   tiny_clip_checkpoint, "--loss", "ce", "--epochs", "1", "--batch-size", "5",
                                   "--n-ctx", "2", "--precision", "fp32", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert load_prompt(out / "prompt.safetensors").classnames == sorted(DIGIT_NAMES)  # sorted folder names
    assert len((out / "split.txt").read_text().splitlines()) == 10
    # an --out inside the digits it reads became an eleventh class, with no image: every later
    # fit without --data failed ('--shots 1: class zzz ... has only 0 images'); train's too
    train = next((tmp_path / "cache").glob("digits-*")) / "train"
    for command in (["fit", "--shots", "1", "--model", tiny_clip_config, "--pretrained", tiny_clip_checkpoint],
                    ["train", "--dataset", "digits"]):
        res = CliRunner().invoke(cli, [*command, "--epochs", "1", "--device", "cpu", "--out", str(train / "zzz")])
        assert res.exit_code == 1 and res.output.strip() == (f"Error: --out {train / 'zzz'}: is inside the bundled "
                                                             f"digits folder {train.parent}, whose files are read as "
                                                             "input; write to a place outside it"), res.output
        assert not (train / "zzz").exists()
    # eval's too: a histogram (an image) written into the photos became an OOD image of later runs
    (tmp_path / "file").write_text("x")  # (the commands stop before they read it)
    photos = next((tmp_path / "cache").glob("digits-*")) / "ood" / "photos"
    for command in (["eval", "--checkpoint", str(tmp_path / "file")], ["eval", "--prompt", str(tmp_path / "file")]):
        res = CliRunner().invoke(cli, [*command, "--id", "digits", "--ood", "photos", "--device", "cpu", "--out",
                                       str(photos / "x")])
        assert res.exit_code == 1 and res.output.strip() == (f"Error: --out {photos / 'x'}: is inside the bundled "
                                                             f"digits folder {photos.parents[1]}, whose files are "
                                                             "read as input; write to a place outside it"), res.output
        assert not (photos / "x").exists()


def test_dry_run_writes_nothing(fit_args, tmp_path):
    res = CliRunner().invoke(cli, fit_args(tmp_path / "dry", "--dry-run"))
    assert res.exit_code == 0, res.output
    assert "dry run: one batch of 4 images, loss " in res.output and not (tmp_path / "dry").exists()  # (of 6)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "dry", "--dry-run", "--batch-size", "1"))
    assert res.exit_code == 0 and "dry run: one batch of 1 image, loss " in res.output, res.output


def _dry_run_of_config(fit_args, tmp_path, **vision):
    """fit --dry-run, random weights, of the tiny config with ``vision`` set in its vision_cfg."""
    from conftest import TINY_CLIP_CONFIG

    path = tmp_path / "odd-vision.json"
    path.write_text(json.dumps({**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], **vision}}))
    args = fit_args(tmp_path / "dry", "--dry-run")
    args[args.index("--model") + 1], args[args.index("--pretrained") + 1] = str(path), "none"
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("size", [[32, 40], [40, 32]])
def test_a_non_square_image_size_is_one_line(fit_args, tmp_path, size):
    """The config checks take image_size per side; ClipModel.image_size is its first, the few-shot
    images are resized to that square, and the ViT's positions (4 x 5 patches and a CLS token: 21)
    did not fit its 17 or 26 tokens: a RuntimeError traceback at the first batch."""
    res = _dry_run_of_config(fit_args, tmp_path, image_size=size)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and res.output.strip().splitlines()[-1] == (
        f"Error: --model {tmp_path / 'odd-vision.json'}: its vision_cfg.image_size {size} is not square; fit prepares "
        "its few-shot images as squares (score and eval take [height, width])")
    assert not (tmp_path / "dry").exists()


def test_a_vision_tower_of_scaled_cosine_attention_is_one_line(fit_args, tmp_path):
    """vision_cfg.scaled_cosine_attn builds open_clip's CustomResidualAttentionBlock, whose
    encode_image fails in the installed open_clip ("batch1 must be a 3D tensor"); the text tower's
    custom blocks are refused by name, the vision tower's reached the first batch: a traceback."""
    res = _dry_run_of_config(fit_args, tmp_path, scaled_cosine_attn=True)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and res.output.strip().splitlines()[-1].startswith("Error: --model ")
    assert not (tmp_path / "dry").exists()


def test_a_one_class_run_says_its_loss_is_zero(tmp_path, cam_resnet, tiny_clip_config, tiny_clip_checkpoint):
    """A softmax over one class is 1, so its cross-entropy against any label is -log 1 = 0: the
    dry run's loss of a one-class --data is 0 and a note says so before the work; two classes
    learn, with no note."""
    rng = np.random.default_rng(0)
    for classes in (["cat"], ["cat", "dog"]):
        data = tmp_path / str(len(classes))
        for c in classes:
            (data / "train" / c).mkdir(parents=True)
            for k in range(2):
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(data / "train" / c / f"{k}.png")
        res = CliRunner().invoke(cli, ["fit", "--data", str(data), "--shots", "2", "--model", tiny_clip_config,
                                       "--pretrained", tiny_clip_checkpoint, "--cam-model", cam_resnet, "--n-ctx", "4",
                                       "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--workers", "0",
                                       "--dry-run", "--out", str(tmp_path / "run")])
        assert res.exit_code == 0, res.output
        note = (f"note: {data / 'train'} has one class: a softmax over one class is 1, so the loss is 0 and only "
                "weight decay moves the context")
        assert (note in res.stderr) == (len(classes) == 1), res.stderr
        loss = float(re.search(r"dry run: one batch of \d+ images, loss (\S+),", res.stdout).group(1))
        assert (loss == 0) == (len(classes) == 1), res.stdout


def test_an_image_beside_the_class_folders_is_refused_as_train_refuses_it(tmp_path, cam_resnet, tiny_clip_config,
                                                                          tiny_clip_checkpoint):
    """An image lying beside the class folders of DATA/train has no class: fit left it out of
    the few-shot draw without a word (train refuses the same folder). It is one line now, before
    anything is written; a file that is no image, and a hidden one, are let be."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for c in ("cat", "dog"):
        (data / "train" / c).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(data / "train" / c / f"{k}.png")
    (data / "train" / "notes.txt").write_text("not an image")
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(data / "train" / ".hidden.png")
    argv = ["fit", "--data", str(data), "--shots", "2", "--model", tiny_clip_config, "--pretrained",
            tiny_clip_checkpoint, "--cam-model", cam_resnet, "--n-ctx", "4", "--batch-size", "4", "--device", "cpu",
            "--workers", "0", "--dry-run", "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(cli, argv).exit_code == 0
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(data / "train" / "stray.jpg")
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 1 and _one_error_line(res) == (
        f"Error: --data {data / 'train'}: 1 image(s) beside the class folders, e.g. stray.jpg: an image has no "
        "class there; move each into its class folder, or out of this folder")
    assert not (tmp_path / "run").exists()


def test_imagenets_training_archive_unpacked_once_is_refused_by_name(tmp_path, cam_resnet, tiny_clip_config,
                                                                      tiny_clip_checkpoint):
    """ImageNet's training archive unpacks into one tar a class. `fit --data IMAGENET` with such a
    train/ (and no val/ yet) read IMAGENET's own folders as the classes and said "--shots 2: class
    'train' (IMAGENET/train) has only 0 images"; with val/<wnid>/ beside it, that train/ "holds no
    class folders". Either way the line now says what train/ holds and what to do."""
    data = tmp_path / "imagenet"
    (data / "train").mkdir(parents=True)
    for wnid in ("n01440764", "n01443537"):
        tarfile.open(data / "train" / f"{wnid}.tar", "w").close()
    argv = ["fit", "--data", str(data), "--shots", "2", "--model", tiny_clip_config, "--pretrained",
            tiny_clip_checkpoint, "--cam-model", cam_resnet, "--n-ctx", "4", "--device", "cpu", "--workers", "0",
            "--dry-run", "--out", str(tmp_path / "run")]
    for val in (False, True):
        if val:
            (data / "val" / "n01440764").mkdir(parents=True)
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 1 and _one_error_line(res) == (
            f"Error: --data {data}: {data / 'train'} holds 2 tar archive(s) and no class folders (ImageNet's training "
            f"archive unpacks into one tar a class); unpack each into a folder of its name, e.g. n01440764.tar into "
            f"{data / 'train' / 'n01440764'}/")
    assert not (tmp_path / "run").exists()


def test_without_internet_the_clip_weights_error_comes_first(tmp_path):
    res = CliRunner().invoke(cli, ["fit", "--shots", "16", "--out", str(tmp_path / "run")])
    assert res.exit_code == 1
    line = _one_error_line(res)
    assert "ViT-B-16" in line and "--pretrained" in line and "local checkpoint" in line


def test_resnet18_imagenet_offline_says_how_to_pass_a_file():
    import time

    t0 = time.time()
    with pytest.raises(UserError, match="--cam-model path/to/resnet18-f37072fd.pth"):
        load_cam_network("resnet18-imagenet")
    assert time.time() - t0 < 5


def _last_error_line(res) -> str:
    """The error line of a run that printed progress first: the last line, the only error."""
    assert "Traceback" not in res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and sum(line.startswith("Error") for line in lines) == 1
    return lines[-1]


def _one_error_line(res) -> str:
    assert "Traceback" not in res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    _write_imagenet(root / "truncated", n_per_class=2)
    victim = sorted((root / "truncated" / "train" / WNIDS[1]).iterdir())[1]
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])
    return root


@pytest.mark.parametrize("case, extra, expected", [
    ("missing data", ["--data", "{bad}/nowhere"], "nowhere: no such folder"),
    # (a name over the file system's 255 characters: pathlib's is_dir raised OSError, a traceback)
    ("data name too long", ["--data", "{bad}/" + "x" * 300], "x" * 300 + ": File name too long"),
    ("empty data", ["--data", "{bad}/empty"], "no class folders"),
    ("few shots", ["--shots", "5"], "class 'n01440764'"),
    ("truncated", ["--data", "{bad}/truncated"], "n01443537_1.JPEG: unreadable or truncated"),
    ("missing cam", ["--cam-model", "{bad}/missing.pth"], "missing.pth: no such checkpoint file"),
    ("lam", ["--lam", "1.5"], "--lam"),
    ("lam<0", ["--lam", "-0.1"], "--lam"),
    ("alpha", ["--alpha", "0"], "--alpha"),
    ("beta", ["--beta", "-1"], "--beta"),
    ("T", ["--T", "0"], "--T"),
    ("cuda graph on cpu", ["--cuda-graph"], "--cuda-graph"),
    ("overlap on cpu", ["--overlap-encoders"], "--overlap-encoders"),
])
def test_bad_inputs_exit_with_one_line(case, extra, expected, fit_args, bad_data, tmp_path):
    extra = [e.replace("{bad}", str(bad_data)) for e in extra]
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", *extra))
    assert res.exit_code != 0
    assert expected in _one_error_line(res)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_export_refuses_a_model_built_with_the_other_activation(one_epoch, tiny_clip_config, tmp_path):
    """export --model CONFIG whose quick_gelu is false wrote a prompt (exit 0) that named that
    model but recorded the run's QuickGELU config: the --model was built with the run's
    activation whatever it said. score and eval refuse such a model; export now does too."""
    config = json.loads(Path(tiny_clip_config).read_text())
    (tmp_path / "tiny-gelu.json").write_text(json.dumps({**config, "quick_gelu": False}))
    (tmp_path / "tiny-same.json").write_text(json.dumps(config))
    base = ["export", "--checkpoint", str(one_epoch / "checkpoint.pt"), "--device", "cpu"]
    res = CliRunner().invoke(cli, [*base, "--model", str(tmp_path / "tiny-gelu.json"), "--out", str(tmp_path / "g.st")])
    assert res.exit_code == 1 and res.output == (
        f"Error: --model {tmp_path / 'tiny-gelu.json'}: builds the model with GELU, but the context in "
        f"{one_epoch / 'checkpoint.pt'} was trained through QuickGELU; give a --model built with QuickGELU\n")
    assert not (tmp_path / "g.st").exists()
    # a config that says nothing (ViT-B-16's own, with a state-dict file of OpenAI's weights, as the
    # README's export example): built as the run was, QuickGELU
    (tmp_path / "tiny-silent.json").write_text(json.dumps({k: v for k, v in config.items() if k != "quick_gelu"}))
    for name in ("tiny-same.json", "tiny-silent.json"):
        res = CliRunner().invoke(cli, [*base, "--model", str(tmp_path / name), "--out", str(tmp_path / f"{name}.st")])
        assert res.exit_code == 0, res.output
        assert torch.equal(load_prompt(tmp_path / f"{name}.st").text_features,
                           load_prompt(one_epoch / "prompt.safetensors").text_features)


def test_export_refuses_a_model_of_another_architecture(one_epoch, tiny_clip_config, tmp_path):
    """A --model of the run's widths but one more text layer: the context's shape fits, its text
    features would be another model's; refused, nothing written."""
    config = json.loads(Path(tiny_clip_config).read_text())
    deeper = tmp_path / "tiny-deeper.json"
    deeper.write_text(json.dumps({**config, "text_cfg": {**config["text_cfg"], "layers": 3}}))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(one_epoch / "checkpoint.pt"), "--model", str(deeper),
                                   "--pretrained", "none", "--device", "cpu", "--out", str(tmp_path / "p.st")])
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --checkpoint {one_epoch / 'checkpoint.pt'}: trained with clip-smot-tiny, not the architecture of "
        "tiny-deeper"), res.output
    assert not (tmp_path / "p.st").exists()


def test_export_of_a_checkpoint_naming_another_model_builds_nothing(one_epoch, tmp_path, monkeypatch):
    """A checkpoint whose configuration names open_clip's ViT-L-14 (its recorded model config the
    tiny one) built ViT-L-14 (1.7 GB of weights; ViT-bigG-14: 10 GB) before saying that the run was
    trained with another architecture: the configs are compared before anything is built."""
    import clip_smot.clip.model as cm

    ckpt = _edit_checkpoint(one_epoch / "checkpoint.pt", tmp_path / "checkpoint.pt", _set("config", "model", "ViT-L-14"))
    monkeypatch.setattr(cm, "load_clip", lambda *a, **k: pytest.fail("the model was built"))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--pretrained", "none", "--device", "cpu",
                                   "--out", str(tmp_path / "p.st")])
    assert res.exit_code == 1 and _one_error_line(res) == (
        f"Error: --checkpoint {ckpt}: trained with clip-smot-tiny, not the architecture of ViT-L-14"), res.output
    assert not (tmp_path / "p.st").exists()


def test_a_run_file_moved_away_names_the_flag_to_pass(one_epoch, tiny_clip_config, tiny_clip_checkpoint, tmp_path):
    """The run's --model JSON and --pretrained file moved: export (given neither flag) said
    "--model ...: no such model-config JSON file", and --resume the same; now each names the run's
    file and the flag that takes its new path, one at a time, and with both given export works."""
    shutil.copytree(one_epoch, tmp_path / "run")
    gone = tmp_path / "gone"
    ckpt = tmp_path / "run" / "checkpoint.pt"

    def moved(saved):
        saved["config"].update(model=str(gone / "clip-smot-tiny.json"), pretrained=str(gone / "tiny.safetensors"))
    _edit_checkpoint(ckpt, ckpt, moved)
    export = ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.safetensors"), "--device", "cpu"]
    res = CliRunner().invoke(cli, export)
    assert res.exit_code == 1 and _one_error_line(res) == (
        f"Error: --checkpoint {ckpt}: the run's --model file {gone / 'clip-smot-tiny.json'} is not there (moved?); "
        "pass --model with its path now")
    res = CliRunner().invoke(cli, [*export, "--model", tiny_clip_config])
    assert res.exit_code == 1 and _one_error_line(res) == (
        f"Error: --checkpoint {ckpt}: the run's --pretrained file {gone / 'tiny.safetensors'} is not there (moved?); "
        "pass --pretrained with its path now")
    res = CliRunner().invoke(cli, [*export, "--model", tiny_clip_config, "--pretrained", tiny_clip_checkpoint])
    assert res.exit_code == 0 and (tmp_path / "p.safetensors").is_file(), res.output
    res = CliRunner().invoke(cli, ["fit", "--out", str(tmp_path / "run"), "--resume"])
    assert res.exit_code == 1 and _one_error_line(res) == (
        f"Error: --resume {ckpt}: the run's --model file {gone / 'clip-smot-tiny.json'} is not there (moved?); "
        "pass --model with its path now")


@pytest.mark.parametrize("loss, cam_model", [("ce", "gone/cam.pth"), ("smot", "resnet18-imagenet")])
def test_resume_asks_for_no_cam_model_file_the_run_does_not_read(one_epoch, tmp_path, monkeypatch, loss, cam_model):
    """Only a --loss smot run reads its --cam-model, and only a path names a file: a --loss ce run
    whose (unused) --cam-model file has gone, and a smot run of torchvision's named weights (from
    torch's hub cache here), resume without being asked where the file is now."""
    import torchvision

    from clip_smot.clip import cam_network

    run = shutil.copytree(one_epoch, tmp_path / "run")
    cam = str(tmp_path / cam_model) if "/" in cam_model else cam_model

    def edit(saved):
        saved["config"].update(loss=loss, cam_model=cam)
        saved["config"]["run"].update(cam_model=cam if loss == "smot" else None, cam_model_sha256=None)
    _edit_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt", edit)
    config = json.loads((run / "config.json").read_text())  # (such a run wrote it so: a --resume compares them)
    edit({"config": config})
    (run / "config.json").write_text(json.dumps(config))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"cached")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    tiny = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    monkeypatch.setattr(cam_network, "host_reachable", lambda host: pytest.fail("probed the internet"))
    monkeypatch.setattr(torchvision.models, "resnet18", lambda weights: tiny)
    res = CliRunner().invoke(cli, ["fit", "--out", str(run), "--resume"])
    assert res.exit_code == 0 and "has finished its 1 epochs; nothing to do" in res.output, res.output


def test_a_checkpoint_recorded_before_cam_networks_were_hashed_resumes(one_epoch, tmp_path):
    """A run recorded without config.run.cam_model_sha256 (before CAM network files were hashed)
    has nothing to compare its --cam-model file with: it resumes."""
    run = shutil.copytree(one_epoch, tmp_path / "run")
    _edit_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt",
                     lambda saved: saved["config"]["run"].pop("cam_model_sha256"))
    res = CliRunner().invoke(cli, ["fit", "--out", str(run), "--resume"])
    assert res.exit_code == 0 and "has finished its 1 epochs; nothing to do" in res.output, res.output


def test_resume_of_a_run_recorded_with_a_tag_on_random_weights_is_refused(one_epoch, tmp_path):
    """A record naming pretrained weights of a tag (no file, so no SHA-256) is not random weights:
    a resume building the model with random ones (--pretrained none) is refused, not continued."""
    run = shutil.copytree(one_epoch, tmp_path / "run")

    def edit(saved):
        saved["config"]["pretrained"] = "none"
        saved["config"]["run"]["clip"].update(pretrained="openai", checkpoint_sha256="")
    _edit_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt", edit)
    res = CliRunner().invoke(cli, ["fit", "--out", str(run), "--resume"])
    assert res.exit_code == 1 and _last_error_line(res).startswith(
        f"Error: --resume {run / 'checkpoint.pt'}: --model "), res.output
    assert _last_error_line(res).endswith("--pretrained none is not the model the run was trained with (the file "
                                          "changed since); resume with the run's own files")


def test_export_compares_two_tags_and_two_files_but_not_a_tag_with_a_file(one_epoch, tiny_clip_checkpoint, tmp_path,
                                                                          monkeypatch):
    """docs/fit.md: weights known to be others than the run's give a note; a tag's weights and a
    file's cannot be compared (a tag's weights as a local file: the usual reason to pass
    --pretrained), so they give none either way. A tag is built here by open_clip's random
    weights named so (a tag cannot be downloaded offline)."""
    import dataclasses

    import clip_smot.clip.model as cm

    real = cm.load_clip

    def load(name, pretrained, *args):
        if pretrained.endswith(".safetensors"):
            return real(name, pretrained, *args)
        return dataclasses.replace(real(name, "none", *args), pretrained=pretrained, checkpoint_sha256="")
    monkeypatch.setattr(cm, "load_clip", load)
    tagged = _edit_checkpoint(one_epoch / "checkpoint.pt", tmp_path / "tagged.pt", lambda saved: saved["config"][
        "run"]["clip"].update(pretrained="openai", checkpoint_sha256=""))
    filed = one_epoch / "checkpoint.pt"

    def note(ckpt, weights):
        out = tmp_path / f"{ckpt.stem}-{Path(weights).name}.safetensors"
        res = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--pretrained", weights,
                                       "--device", "cpu"])
        assert res.exit_code == 0 and out.is_file(), res.output
        return res.stderr

    assert note(tagged, tiny_clip_checkpoint) == ""  # a tag's run, a file now
    assert note(filed, "openai") == ""  # a file's run, a tag now
    assert note(tagged, "openai") == ""
    assert note(tagged, "laion2b_s34b_b88k").startswith(
        "note: the context was trained with the weights openai, not with laion2b_s34b_b88k; the text features are "
        "encoded with the latter")


def test_bad_export_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for path in (tmp_path / "none.pt", tmp_path / "junk.pt"):
        res = CliRunner().invoke(cli, ["export", "--checkpoint", str(path), "--out", str(tmp_path / "p.safetensors")])
        assert res.exit_code == 1 and str(path) in _one_error_line(res)
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(tmp_path / "none.pt"), "--out",
                                   str(tmp_path / "p.safetensors")])
    assert _one_error_line(res) == f"Error: --checkpoint {tmp_path / 'none.pt'}: no such file"


def test_export_of_a_prompt_given_as_its_checkpoint_names_what_it_is(one_epoch, tmp_path):
    """--checkpoint RUN/prompt.safetensors (the prompt, not the checkpoint beside it) is named as
    a prompt file, with the flag that takes one, in one line; nothing is written."""
    prompt = one_epoch / "prompt.safetensors"
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(prompt), "--out", str(tmp_path / "p.safetensors")])
    assert res.exit_code == 1 and _one_error_line(res) == (
        f"Error: --checkpoint {prompt}: a prompt file (fit's or export's .safetensors), not a fit checkpoint; it is "
        "exported already: give it to --prompt")
    assert not (tmp_path / "p.safetensors").exists()


def test_config_round_trips_through_json():
    cfg = FitConfig(data="d", shots=4, ctx_init="a photo of a", csc=True, lam=0.3, T=150.0)
    assert FitConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_lr_schedule_is_coops():
    cfg = FitConfig(epochs=50)
    assert lr_factor(0, cfg) * cfg.lr == pytest.approx(1e-5)
    assert lr_factor(1, cfg) == pytest.approx(1.0)
    assert lr_factor(26, cfg) == pytest.approx(0.5)  # (1 + cos(pi * 25 / 50)) / 2
    assert lr_factor(49, cfg) == pytest.approx((1 + np.cos(np.pi * 48 / 50)) / 2)


@pytest.mark.parametrize("epochs,warmup", [(50, 1), (10, 3), (5, 0)])
def test_lr_schedule_is_dassls_cosine_after_a_constant_warm_up(epochs, warmup):
    """CoOp's schedule as Dassl steps it: warm-up epochs at warmup_lr (ConstantWarmupScheduler),
    then torch's CosineAnnealingLR(T_max=epochs), which Dassl steps once after each epoch from
    the first epoch past the warm-up (that epoch runs at the full lr)."""
    cfg = FitConfig(epochs=epochs, warmup_epochs=warmup, lr=0.002, warmup_lr=1e-5)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=float(cfg.epochs))
    dassl = []
    for epoch in range(cfg.epochs):
        if epoch < cfg.warmup_epochs:
            dassl.append(cfg.warmup_lr)
            continue
        dassl.append(opt.param_groups[0]["lr"])
        opt.step()  # (no gradient: the order torch expects before a scheduler step)
        cosine.step()
    assert [cfg.lr * lr_factor(e, cfg) for e in range(cfg.epochs)] == pytest.approx(dassl, rel=1e-9, abs=1e-15)


def test_cams_are_for_the_true_imagenet_label(imagenet_dir, cam_resnet):
    classes = resolve_classes(imagenet_dir / "train")
    assert classes.imagenet_index == (0, 1, 2)
    net = load_cam_network(cam_resnet)
    provider, label_map = build_cam_provider(net, classes)
    assert label_map == [0, 1, 2] and provider.labels_match
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([2, 0, 1])
    cams = cache_cams(provider, label_map, images, labels, batch_size=2)
    assert cams.dtype == torch.uint8 and cams.shape == (3, 32, 32)
    direct = provider(images.float() / 255, labels)
    assert (cams.float() - direct).abs().max() <= 0.5 + 1e-4
    # another folder dataset: the CAM is for the network's top-1 class
    folders = FewShotClasses(imagenet_dir, ("cats", "dogs"), ("cats", "dogs"), None)
    provider, label_map = build_cam_provider(net, folders)
    assert label_map is None and not provider.labels_match


def test_imagenet_subsets_map_each_label_to_its_1000_way_class(tmp_path, cam_resnet):
    """Wnids away from the start of ImageNet, in folder order balloon, ostrich, tabby: labels follow the
    ImageNet-1k order (ostrich 9, tabby cat 281, balloon 417) and each CAM is for that 1000-way class."""
    root = _write_imagenet(tmp_path / "in", n_per_class=1, wnids=["n02782093", "n01518878", "n02123045"])
    classes = resolve_classes(root / "train")
    assert classes.folders == ("n01518878", "n02123045", "n02782093")
    assert classes.classnames == ("ostrich", "tabby cat", "balloon") and classes.imagenet_index == (9, 281, 417)
    provider, label_map = build_cam_provider(load_cam_network(cam_resnet), classes)
    assert label_map == [9, 281, 417] and provider.labels_match
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cams = cache_cams(provider, label_map, images, torch.tensor([2, 0, 1]))
    direct = provider(images.float() / 255, torch.tensor([417, 9, 281]))  # balloon, ostrich, tabby cat
    assert (cams.float() - direct).abs().max() <= 0.5 + 1e-4
    assert (cams.float() - provider(images.float() / 255, torch.tensor([2, 0, 1]))).abs().max() > 1  # not the labels


def test_decode_keeps_the_central_square(tmp_path):
    a = np.zeros((32, 64, 3), dtype=np.uint8)
    a[:, 32:] = 255  # left half black, right half white
    Image.fromarray(a).save(tmp_path / "wide.png")
    x = decode_images(tmp_path, ["wide.png"], 16, workers=2)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.uint8
    assert (x[0, :, :, :7] == 0).all() and (x[0, :, :, 9:] == 255).all()


def test_decode_resamples_only_the_square_of_a_long_strip(tmp_path, monkeypatch):
    """A 2 x 20000 strip is not resized whole (224 x 2.24 M pixels, 1.5 GB at 224): never more than
    16 squares are resampled, and the square is the central one of the whole resize."""
    rng = np.random.default_rng(0)
    a = np.repeat(np.linspace(0, 255, 20000)[:, None, None], 3, axis=2).repeat(2, axis=1)  # a vertical ramp
    a = (a + rng.integers(-3, 4, a.shape)).clip(0, 255).astype(np.uint8)  # [20000, 2, 3]
    Image.fromarray(a).save(tmp_path / "strip.png")
    Image.fromarray(a[10000 - 12:10000 + 12]).save(tmp_path / "short.png")  # a 2 x 24 strip: resized whole
    sizes = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda im, size, *a, **k: sizes.append(size) or resize(im, size, *a, **k))
    x = decode_images(tmp_path, ["strip.png", "short.png"], 32, workers=0)  # [2, 3, 32, 32]
    assert sizes == [(32, 32), (32, 384)]
    # both show the central rows of the ramp, around row 10000
    expected = torch.from_numpy(a[10000 - 10:10000 + 10].astype(np.float32)).mean()
    assert abs(x[0].float().mean() - expected) < 2 and abs(x[1].float().mean() - expected) < 2


def test_split_file_errors_name_the_line(imagenet_dir, tmp_path):
    classes = resolve_classes(imagenet_dir / "train")
    bad = tmp_path / "split.txt"
    bad.write_text(f"{WNIDS[0]}/{WNIDS[0]}_0.JPEG\t1\n")
    with pytest.raises(UserError, match=r"split.txt:1: .* not in class 1"):
        read_split(bad, classes)
    bad.write_text(f"{WNIDS[0]}/missing.JPEG\t0\n")
    with pytest.raises(UserError, match="no such image file"):
        read_split(bad, classes)
    image = f"{WNIDS[0]}/{WNIDS[0]}_0.JPEG"
    bad.write_text(f"{image}\t0\n\n{image}\t0\n")  # (it was trained on twice as often, with no word)
    with pytest.raises(UserError, match=rf"split.txt:3: {re.escape(image)} is listed on line 1 already$"):
        read_split(bad, classes)
    for spelling in (f"{WNIDS[0]}/./{WNIDS[0]}_0.JPEG", f"{WNIDS[0]}//{WNIDS[0]}_0.JPEG"):  # (the same file)
        bad.write_text(f"{image}\t0\n{spelling}\t0\n")
        with pytest.raises(UserError, match=rf"split.txt:2: {re.escape(spelling)} is listed on line 1 already$"):
            read_split(bad, classes)
    for label in ("\u00b3", "--1", "\u0662", "9" * 5000):  # (tracebacks from int(), or another digit: '٢' is 2)
        bad.write_text(f"{WNIDS[2]}/{WNIDS[2]}_0.JPEG\t{label}\n", encoding="utf-8")
        with pytest.raises(UserError, match=r"split.txt:1: expected 'relative/path<TAB>label'"):
            read_split(bad, classes)
    # an existing image of another class (or outside the data), reached through '..' or an absolute path
    for rel in (f"{WNIDS[0]}/../{WNIDS[1]}/{WNIDS[1]}_0.JPEG", str(imagenet_dir / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG")):
        assert (imagenet_dir / "train" / rel).is_file()
        bad.write_text(f"{rel}\t0\n")
        with pytest.raises(UserError, match=r"split.txt:1: .* leaves the class folder"):
            read_split(bad, classes)
    # escapes that name no file (os.stat raised ValueError / UnicodeEncodeError on them): the line, as written
    for rel in (f"{WNIDS[0]}/a\\u0000.JPEG", f"{WNIDS[0]}/a\\ud800.JPEG"):
        bad.write_text(f"{rel}\t0\n")
        with pytest.raises(UserError, match=rf"split.txt:1: {re.escape(rel)} is not a file name"):
            read_split(bad, classes)


def test_cam_model_from_a_train_safetensors(tmp_path):
    """A model.safetensors written like 'clip-smot train' does; its class names decide the CAM class."""
    from clip_smot.resnet.networks import build_network, save_model

    torch.manual_seed(0)
    model = build_network("resnet_tiny", 3, 32)
    path = tmp_path / "model.safetensors"
    save_model(path, model, arch="resnet_tiny", classnames=["dogs", "cats", "birds"], input_size=32,
               mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    net = load_cam_network(str(path))
    assert net.input_size == 32 and net.mean == (0.5, 0.5, 0.5) and not net.imagenet
    torch.testing.assert_close(net.model.get_classifier().weight, model.get_classifier().weight)
    classes = FewShotClasses(tmp_path, ("birds", "cats"), ("birds", "cats"), None)
    provider, label_map = build_cam_provider(net, classes)
    assert label_map == [2, 1] and provider.labels_match  # data label -> the network's class
    other = FewShotClasses(tmp_path, ("cars", "cats"), ("cars", "cats"), None)
    assert build_cam_provider(net, other)[1] is None
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="bad.safetensors: not a safetensors file"):
        load_cam_network(str(tmp_path / "bad.safetensors"))


def test_cam_model_from_timms_hub_safetensors(fit_args, tmp_path, tiny_clip_checkpoint):
    """timm's ``model.safetensors`` as the Hugging Face hub keeps it (``timm/resnet18.tv_in1k``
    holds torchvision's ImageNet ResNet-18 there) was refused as "not a clip-smot model file":
    a safetensors file without clip-smot train's metadata is a state dict. timm's ResNet keeps
    torchvision's key names; the network read from timm's own file (written by timm's
    save_for_hf) gives timm's features and logits, and fit takes it."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    theirs = timm.create_model("resnet18", pretrained=False).eval()
    with torch.no_grad():  # (random BatchNorm statistics, so that they count)
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_for_hf(theirs, str(tmp_path / "hub"), safe_serialization=True)
    path = tmp_path / "hub" / "model.safetensors"
    net = load_cam_network(str(path))
    assert net.imagenet and net.input_size == 224 and net.class_ids is None
    assert (net.mean, net.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ours = net.model.eval()
    with torch.no_grad():
        features = ours.layer4(ours.layer3(ours.layer2(ours.layer1(ours.maxpool(ours.relu(ours.bn1(ours.conv1(x))))))))
        torch.testing.assert_close(features, theirs.forward_features(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--cam-model", str(path)))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cam_model"] == str(path)
    # a safetensors file of no ResNet (CLIP weights) is one line naming what it is
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run2", "--cam-model", tiny_clip_checkpoint))
    assert res.exit_code == 1 and res.output.endswith(
        f"--cam-model {tiny_clip_checkpoint}: CLIP weights, not a ResNet state dict or a model file of clip-smot "
        "train; give it to --pretrained\n")


def test_a_trained_cam_model_of_other_classes_is_a_note(fit_args, cam_resnet, tmp_path, monkeypatch):
    """A model.safetensors of 'clip-smot train' made on other classes (another data set, or a
    class renamed since) gave top-1 CAMs instead of true-label ones, silently."""
    from clip_smot.resnet.networks import build_network, save_model

    torch.manual_seed(0)
    for name, classnames in (("other", ["dogs", "cats", "birds"]), ("same", WNIDS)):
        save_model(tmp_path / f"{name}.safetensors", build_network("resnet_tiny", 3, 32), arch="resnet_tiny",
                   classnames=classnames, input_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    args = [a if a != cam_resnet else str(tmp_path / "other.safetensors") for a in fit_args(tmp_path / "a")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert (f"note: --cam-model {tmp_path / 'other.safetensors'} was trained on other classes (dogs, cats, birds) "
            "than those of ") in res.stderr and "the CAMs are of its top-1 class, not of the true label" in res.stderr
    from clip_smot.clip import cam_network

    maps, real = [], cam_network.cache_cams  # (the CAMs of its own classes, named as the data's: the true labels')
    monkeypatch.setattr(cam_network, "cache_cams", lambda p, label_map, *a, **k: maps.append(label_map) or
                        real(p, label_map, *a, **k))
    args = [a if a != cam_resnet else str(tmp_path / "same.safetensors") for a in fit_args(tmp_path / "b")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and "note:" not in res.stderr, res.output
    assert maps == [[0, 1, 2]], maps
    assert re.search(r"^fit: set-up [\d.]+ s \(CLIP model [\d.]+ s, 6 images decoded [\d.]+ s, CAMs [\d.]+ s\)$",
                     res.stderr, re.M), res.stderr  # where the set-up time went (SMOT: the CAMs too)


def test_top1_cams_of_an_imagenet_or_unnamed_cam_model_are_a_note(fit_args, imagenet_dir, cam_resnet, tmp_path):
    """The CAMs fall back to the network's top-1 class for an ImageNet network on classes that are not
    wnids, and for a state dict whose classes have no names: said in a note, as for a trained network."""
    from torchvision.models.resnet import BasicBlock, ResNet

    plain = tmp_path / "plain"
    for i, w in enumerate(WNIDS):
        shutil.copytree(imagenet_dir / "train" / w, plain / "train" / ["cats", "dogs", "birds"][i])
    torch.manual_seed(0)
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).state_dict(), tmp_path / "ten.pth")
    for cam_model, data, why in (
            (cam_resnet, plain, f"is an ImageNet-1k network and the classes of {plain / 'train'} are not ImageNet wnids"),
            (str(tmp_path / "ten.pth"), imagenet_dir, "does not name its classes")):
        args = [cam_model if a == cam_resnet else str(data) if a == str(imagenet_dir) else a
                for a in fit_args(tmp_path / Path(cam_model).stem, "--dry-run")]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        assert f"note: --cam-model {cam_model} {why}" in res.stderr, res.stderr
        assert "the CAMs are of its top-1 class, not of the true label" in res.stderr


def test_ctx_init_csc_middle_and_noise(fit_args, tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, fit_args(out, "--ctx-init", "a photo of a", "--csc", "--class-position", "middle",
                                           "--perturb", "noise", "--sigma", "0.2"))
    assert res.exit_code == 0, res.output
    pf = load_prompt(out / "prompt.safetensors")
    assert pf.n_ctx == 4 and pf.csc and pf.class_position == "middle"  # "a photo of a" is 4 tokens
    assert pf.ctx.shape == (3, 4, 32)
    assert pf.config["perturb"] == "noise" and pf.config["sigma"] == 0.2
    # its text features are its contexts' with the class name in the middle (not at the end, the default)
    learner = PromptLearner(load_clip(tiny_clip_config, tiny_clip_checkpoint), pf.classnames, n_ctx=4,
                            ctx_init="a photo of a", csc=True, class_position="middle")
    with torch.no_grad():
        learner.ctx.copy_(pf.ctx)
        torch.testing.assert_close(pf.text_features, F.normalize(learner(), dim=-1), atol=1e-6, rtol=0)
    # its checkpoint holds one context per class: export reads it back, and refuses one of 2 rows for 3 classes
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(out / "checkpoint.pt"),
                                   "--out", str(tmp_path / "again.safetensors"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert torch.equal(load_prompt(tmp_path / "again.safetensors").ctx, pf.ctx)
    two = _edit_checkpoint(out / "checkpoint.pt", tmp_path / "two.pt", lambda saved: saved.update(ctx=saved["ctx"][:2]))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(two), "--out", str(tmp_path / "two.safetensors"),
                                   "--device", "cpu"])
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --checkpoint {two}: its context has shape [2, 4, 32], which --csc, its 3 classes and "
        "--n-ctx 4 do not give"), res.output
    res = CliRunner().invoke(cli, fit_args(tmp_path / "other", "--ctx-init", "a photo of a", "--n-ctx", "16"))
    assert res.exit_code == 1 and res.output.strip() == ("Error: --n-ctx 16: --ctx-init 'a photo of a' makes a "
                                                         "context of its 4 tokens; leave --n-ctx out")
    assert not (tmp_path / "other").exists()


def test_noise_perturbation_is_drawn_from_the_seed(fit_args, tmp_path):
    """--perturb noise draws its noise from the run's seeded generator (--seed fixes every draw):
    two runs of the same flags give the same context whatever torch's global RNG held before."""
    contexts = []
    for i in range(2):
        with torch.random.fork_rng():
            torch.manual_seed(100 + i)  # what other code left in torch's global generator
            res = CliRunner().invoke(cli, fit_args(tmp_path / str(i), "--perturb", "noise", "--sigma", "0.5",
                                                   "--warmup-epochs", "0", "--lr", "0.05"))
        assert res.exit_code == 0, res.output
        contexts.append(load_prompt(tmp_path / str(i) / "prompt.safetensors").ctx)
    assert torch.equal(contexts[0], contexts[1])


def test_ctx_init_sets_the_recorded_n_ctx_and_an_old_record_resumes(fit_args, tmp_path, monkeypatch):
    """--ctx-init 'a photo of a' makes a context of 4 vectors, but config.json and the prompt's
    config recorded --n-ctx's default, 16. They record 4 now; a run recorded with 16 before this
    resumes, its record rewritten."""
    def args(out, *extra):  # fit_args without its --n-ctx 4
        a = fit_args(out, "--ctx-init", "a photo of a", "--epochs", "2", *extra)
        i = a.index("--n-ctx")
        return a[:i] + a[i + 2 :]

    res = CliRunner().invoke(cli, args(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["n_ctx"] == 4
    assert load_prompt(tmp_path / "run" / "prompt.safetensors").config["n_ctx"] == 4
    real_save = run_folder.atomic_save

    def save_then_die(obj, path):  # killed right after its first checkpoint
        real_save(obj, path)
        raise RuntimeError("killed")

    monkeypatch.setattr(run_folder, "atomic_save", save_then_die)
    assert isinstance(CliRunner().invoke(cli, args(tmp_path / "old")).exception, RuntimeError)
    monkeypatch.setattr(run_folder, "atomic_save", real_save)
    ckpt = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=True)
    ckpt["config"]["n_ctx"] = 16  # as a run recorded before recorded it
    ckpt["config"] |= {"resume": False, "dry_run": False}  # as runs recorded before these became run_fit's arguments
    torch.save(ckpt, tmp_path / "old" / "checkpoint.pt")
    res = CliRunner().invoke(cli, args(tmp_path / "old", "--resume"))
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert config["n_ctx"] == 4 and not {"resume", "dry_run"} & set(config)  # (how it ran is not what it is)
    # through the Python API (no flags: those not at their default count as given), an old record of
    # another n_ctx resumes too: whether --n-ctx was given is read before the record is merged in
    monkeypatch.setattr(run_folder, "atomic_save", save_then_die)
    assert isinstance(CliRunner().invoke(cli, args(tmp_path / "api")).exception, RuntimeError)
    monkeypatch.setattr(run_folder, "atomic_save", real_save)
    ckpt = torch.load(tmp_path / "api" / "checkpoint.pt", weights_only=True)
    ckpt["config"]["n_ctx"] = 8
    torch.save(ckpt, tmp_path / "api" / "checkpoint.pt")
    run_fit(FitConfig(out=str(tmp_path / "api"), workers=0), resume=True)
    assert json.loads((tmp_path / "api" / "config.json").read_text())["n_ctx"] == 4


@pytest.mark.parametrize("attention", ["square", "flex"])
def test_dry_run_with_the_fast_text_knobs(fit_args, tmp_path, attention):
    """--text-residual precision --text-attention square or flex run the step (exactness:
    tests/clip/test_prompt.py); on the CPU flex is no FlexAttention kernel (a dense mask), so
    nothing is compiled and the set-up line says none is."""
    res = CliRunner().invoke(cli, fit_args(tmp_path / "dry", "--dry-run", "--text-residual", "precision",
                                           "--text-attention", attention))
    assert res.exit_code == 0, res.output
    assert "dry run: one batch" in res.output
    assert res.stderr.startswith("fit: set-up ") and "compiles" not in res.stderr, res.stderr


def test_the_prompt_is_encoded_with_causal_attention_whatever_the_training_used(fit_args, tmp_path, monkeypatch):
    """The exported text features come from the most exact layout, causal SDPA in fp32, also
    after a training with --text-attention square."""
    import clip_smot.clip.prompt as prompt_mod

    seen, real = [], prompt_mod.PromptLearner

    def spy(*args, **kw):
        seen.append((kw["attention"], kw["precision"]))
        return real(*args, **kw)

    monkeypatch.setattr(prompt_mod, "PromptLearner", spy)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--text-attention", "square", "--precision", "bf16"))
    assert res.exit_code == 0, res.output
    assert seen == [("square", "bf16"), ("causal", "fp32")]  # the training's, the export's


@pytest.mark.cpp_compiler
def test_flex_compiled_text_layers_fit_the_same_prompt(fit_args, tmp_path):
    """--text-attention flex --compile: one epoch (a large lr, no warm-up, so that the
    context moves) ends with the default run's context."""
    runs = {}
    for name, extra in {"default": (), "flex": ("--text-attention", "flex", "--compile")}.items():
        res = CliRunner().invoke(cli, fit_args(tmp_path / name, "--warmup-epochs", "0", "--lr", "5", *extra))
        assert res.exit_code == 0, res.output
        # (on the CPU nothing is captured: the remark said "compiles and captures" all the same)
        assert ("; the first epoch also compiles (the speed options)\n" in res.stderr) == (name == "flex"), res.stderr
        assert "captures" not in res.stderr
        runs[name] = load_prompt(tmp_path / name / "prompt.safetensors")
    init = torch.empty(4, 32).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(runs["default"].config["seed"]))
    moved = runs["default"].ctx - init  # what the epoch's steps did to the context
    assert moved.abs().max() > 1e-2
    torch.testing.assert_close(runs["flex"].ctx - init, moved, atol=1e-4 * moved.abs().max().item(), rtol=1e-3)
    torch.testing.assert_close(runs["flex"].text_features, runs["default"].text_features, atol=1e-5, rtol=1e-4)


def test_compile_needs_square_or_flex(fit_args, tmp_path):
    for attention in ("causal", "mask"):
        res = CliRunner().invoke(cli, fit_args(tmp_path / "bad", "--compile", "--text-attention", attention))
        assert res.exit_code != 0 and "--compile" in res.output and "Traceback" not in res.output
        assert not (tmp_path / "bad").exists()


def test_speed_options_default_to_the_fastest_measured_on_the_device(monkeypatch):
    """auto / None: flex, compiled, CUDA graph, overlapped encoders on CUDA (square without
    FlexAttention); causal and all off elsewhere (square where --compile asks for it); what was
    given stays as given."""
    import clip_smot.clip.encoders as encoders
    from clip_smot.clip.fit import FitConfig, resolve_speed
    from clip_smot.common import device as common_device

    monkeypatch.setattr(common_device, "missing_triton", lambda: None)  # (Triton starts: tested below where not)

    def speed(cfg):
        return cfg.text_attention, cfg.compile, cfg.cuda_graph, cfg.overlap_encoders

    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # (a device object needs no GPU)
    assert speed(resolve_speed(FitConfig(), cpu)) == ("causal", False, False, False)
    assert speed(resolve_speed(FitConfig(compile=True), cpu)) == ("square", True, False, False)
    assert speed(resolve_speed(FitConfig(text_attention="flex"), cpu)) == ("flex", False, False, False)
    capability = {"sm": (9, 0)}  # the GPU's compute capability (the H200 of run 3: 9.0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["sm"])
    assert speed(resolve_speed(FitConfig(), cuda)) == ("flex", True, True, True)
    assert speed(resolve_speed(FitConfig(text_attention="causal"), cuda)) == ("causal", False, True, True)
    assert speed(resolve_speed(FitConfig(compile=False, cuda_graph=False, overlap_encoders=False), cuda)) == (
        "flex", False, False, False)
    capability["sm"] = (8, 0)  # an A100: FlexAttention's Triton kernel from Ampere on
    assert speed(resolve_speed(FitConfig(), cuda)) == ("flex", True, True, True)
    capability["sm"] = (7, 5)  # a T4: no FlexAttention kernel, Triton still builds the compiled layers
    assert speed(resolve_speed(FitConfig(), cuda)) == ("square", True, True, True)
    capability["sm"] = (6, 0)  # a P100: Triton cannot build kernels for it
    assert speed(resolve_speed(FitConfig(), cuda)) == ("square", False, True, True)
    assert speed(resolve_speed(FitConfig(compile=True), cuda)) == ("square", True, True, True)  # asked: tried
    capability["sm"] = (9, 0)
    monkeypatch.setattr(common_device, "missing_triton", lambda: "Failed to find C compiler")  # a runtime image
    assert speed(resolve_speed(FitConfig(), cuda)) == ("square", False, True, True)
    assert speed(resolve_speed(FitConfig(compile=True, text_attention="flex"), cuda)) == ("flex", True, True, True)
    monkeypatch.setattr(common_device, "missing_triton", lambda: None)
    monkeypatch.setattr(encoders, "flex_available", lambda device: False)  # a torch without FlexAttention
    assert speed(resolve_speed(FitConfig(), cuda)) == ("square", True, True, True)
    # the command line leaves what is not given to that choice (a flag's default of False would turn CUDA's off)
    import clip_smot.cli as cli_mod

    seen = []
    monkeypatch.setattr(cli_mod, "run_fit", lambda cfg, **kwargs: seen.append(speed(cfg)))  # (a dry run: no folder)
    for args, given in (([], ("auto", None, None, None)), (["--no-compile", "--cuda-graph", "--text-attention", "mask"],
                                                           ("mask", False, True, None))):
        assert CliRunner().invoke(cli, ["fit", "--dry-run", *args]).exit_code == 0
        assert seen.pop() == given


@pytest.mark.parametrize("flag,compiled", [("--compile", True), ("--no-compile", False)])
def test_compile_compiles_the_text_layers_and_the_image_blocks(fit_args, tmp_path, monkeypatch, flag, compiled):
    """--compile reaches both towers: the text layers are compiled once, when the prompt is built
    (its result is exact, so only the call tells), and the step is told to compile the image
    encoder's blocks; --no-compile does neither."""
    import clip_smot.clip.fit as fit_mod
    from clip_smot.clip.encoders import TextEncoder
    from clip_smot.common import device

    calls, seen = [], {}

    def make(clip, learner, optimizer, **kw):
        seen.update(kw)
        return lambda *a: torch.tensor(1.0)

    monkeypatch.setattr(device, "missing_cpp_compiler", lambda: None)  # (nothing is compiled: any machine)
    monkeypatch.setattr(TextEncoder, "compile_layers", lambda self, **kw: calls.append(self.attention))
    monkeypatch.setattr(fit_mod, "make_fit_step", make)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "dry", "--dry-run", "--text-attention", "square", flag))
    assert res.exit_code == 0, res.output
    assert (calls, seen["compile_image"]) == ((["square"], True) if compiled else ([], False))


def test_a_failing_compiler_is_one_line_that_names_no_compile(fit_args, tmp_path, monkeypatch):
    """torch.compile's errors (e.g. no C compiler for Triton) end the fit with one line naming
    --no-compile (and --text-attention square where FlexAttention's kernel runs); other errors
    are not renamed."""
    import clip_smot.clip.fit as fit_mod
    from clip_smot.common import device

    class InductorError(RuntimeError):
        __module__ = "torch._inductor.exc"  # where torch's compile errors live

    def failing_step(error):
        def make(*args, **kw):
            def step(*a):
                raise error
            return step
        return make

    monkeypatch.setattr(device, "missing_cpp_compiler", lambda: None)  # (the step is faked: any machine)
    monkeypatch.setattr(fit_mod, "make_fit_step", failing_step(InductorError("cc: not found\nmore")))
    res = CliRunner().invoke(cli, fit_args(tmp_path / "c", "--compile"))
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == ("Error: --compile: torch.compile failed on this machine (cc: "
                                                   "not found); run with --no-compile")  # (above: progress bar)
    monkeypatch.setattr(fit_mod, "make_fit_step", failing_step(ValueError("a bug")))
    res = CliRunner().invoke(cli, fit_args(tmp_path / "d", "--compile"))
    assert isinstance(res.exception, ValueError)
    # FlexAttention's kernel (CUDA) is compiled whatever --compile says: --no-compile alone would not help
    import clip_smot.clip.encoders as encoders

    monkeypatch.setattr(encoders, "flex_available", lambda device: True)
    monkeypatch.setattr(fit_mod, "make_fit_step", failing_step(InductorError("cc: not found")))
    for extra, last in ((["--text-attention", "flex", "--no-compile"], "--text-attention flex: torch.compile failed "
                         "on this machine (cc: not found); run with --text-attention square"),
                        (["--compile"], "--compile and --text-attention flex: torch.compile failed on this machine "
                         "(cc: not found); run with --no-compile --text-attention square")):
        res = CliRunner().invoke(cli, fit_args(tmp_path / "e", *extra))
        assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == "Error: " + last


def test_compile_on_the_cpu_without_a_cpp_compiler_is_one_line_before_the_set_up(fit_args, tmp_path):
    """torch.compile on the CPU needs a C++ compiler: without one (here: inductor's lookup finds
    none) `fit --compile` stops in one line naming the flag and --no-compile before the model is
    loaded, not at the first step after the whole set-up."""
    from torch._inductor import config

    gone = tmp_path / "nowhere" / "g++"
    with config.patch({"cpp.cxx": (None, str(gone))}):
        res = CliRunner().invoke(cli, fit_args(tmp_path / "c", "--compile"))
    assert res.exit_code == 1, res.output
    assert res.output == (f"Error: --compile: torch.compile on the CPU needs a C++ compiler and none was found (tried "
                          f"{gone}); install one (g++) or point CXX at one, or run with --no-compile\n")
    assert not (tmp_path / "c").exists()


def test_where_triton_cannot_start_fit_says_so_before_the_set_up(fit_args, tmp_path, monkeypatch, capsys):
    """On a GPU machine without a C compiler (a slim container image) Triton cannot start: fit's
    defaults then leave out FlexAttention and the compiled layers, with a note naming both; an
    explicit --compile is one line before anything is loaded or written (it was the first step's
    error, after the whole set-up)."""
    import clip_smot.clip.fit as fit_mod
    from clip_smot.common import device

    why = "Failed to find C compiler. Please specify via CC environment variable or set triton.knobs.build.impl."
    monkeypatch.setattr(device, "missing_triton", lambda: why)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (a CUDA machine: nothing below runs on it)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    sm = {"sm": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: sm["sm"])
    args = [a if a != "cpu" else "cuda" for a in fit_args(tmp_path / "c", "--compile")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and not (tmp_path / "c").exists()
    assert _one_error_line(res) == (f"Error: --compile: torch.compile on CUDA needs Triton, which cannot start on this "
                                    f"machine ({why}); install a C compiler (gcc) or point CC at one, or run with "
                                    f"--no-compile")
    capsys.readouterr()
    cfg, _, dev = fit_mod._resolve(FitConfig(device="cuda", out=str(tmp_path / "d")), False, True, None)
    assert (dev.type, cfg.text_attention, cfg.compile, cfg.cuda_graph) == ("cuda", "square", False, True)
    assert capsys.readouterr().err == (f"note: Triton cannot start on this machine ({why}): fit runs without "
                                       "FlexAttention and compiled layers, slower; install a C compiler (gcc) or "
                                       "point CC at one for the fast step\n")
    sm["sm"] = (7, 5)  # a T4: no FlexAttention kernel to lose
    fit_mod._resolve(FitConfig(device="cuda", out=str(tmp_path / "d")), False, True, None)
    assert "fit runs without compiled layers, slower" in capsys.readouterr().err
    monkeypatch.setattr(device, "missing_triton", lambda: "libcuda.so cannot found!")  # (no compiler to install)
    fit_mod._resolve(FitConfig(device="cuda", out=str(tmp_path / "d")), False, True, None)
    assert capsys.readouterr().err == ("note: Triton cannot start on this machine (libcuda.so cannot found!): fit runs "
                                       "without compiled layers, slower\n")
    for given in ({"compile": False}, {"text_attention": "causal"}):  # nothing of the defaults' was lost
        fit_mod._resolve(FitConfig(device="cuda", out=str(tmp_path / "d"), **given), False, True, None)
        assert capsys.readouterr().err == ""
    monkeypatch.setattr(device, "missing_triton", lambda: None)
    sm["sm"] = (9, 0)
    cfg, _, _ = fit_mod._resolve(FitConfig(device="cuda", out=str(tmp_path / "d")), False, True, None)
    assert (cfg.text_attention, cfg.compile) == ("flex", True) and capsys.readouterr().err == ""


def test_compile_errors_are_told_by_the_module_of_their_class_or_its_bases():
    """What makes fit name --no-compile (and train its flags): an error of torch.compile's machinery
    (dynamo, inductor) or of Triton's kernel compiler, also through a subclass defined elsewhere;
    not any other."""
    from clip_smot.common.device import is_compile_error as _compiler_error

    def error_class(module, base=RuntimeError):
        return type("Error", (base,), {"__module__": module})

    for module in ("torch._dynamo.exc", "torch._inductor.exc", "triton.compiler.errors"):
        assert _compiler_error(error_class(module)("x")), module
        assert _compiler_error(error_class("user.code", error_class(module))("x")), module  # (a subclass)
    assert not _compiler_error(ValueError("a bug")) and not _compiler_error(error_class("torch.nn.modules")("x"))


def test_resume_drops_a_half_written_log_line(tmp_path):
    from clip_smot.common.run_folder import truncate_log as _truncate_log

    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"epoch": e, "loss": 1.0 / e}) for e in (1, 2, 3)]
    log.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:7])  # killed while writing epoch 3
    _truncate_log(log, 2)
    assert log.read_text() == lines[0] + "\n" + lines[1] + "\n"
    _truncate_log(log, 1)
    assert log.read_text() == lines[0] + "\n"


def test_check_config_refuses_non_finite_options():
    """The library checks what the CLI checks: a FitConfig built in Python with inf/nan is refused."""
    from clip_smot.clip.fit import FitConfig, check_config

    check_config(FitConfig())  # the defaults pass
    for name, flag in (("beta", "--beta"), ("alpha", "--alpha"), ("lr", "--lr"), ("momentum", "--momentum"),
                       ("weight_decay", "--weight-decay"), ("warmup_lr", "--warmup-lr"), ("sigma", "--sigma")):
        for value in (float("inf"), float("nan")):
            with pytest.raises(UserError, match=flag):
                check_config(FitConfig(**{name: value}))
    # SGD steps in the float32 of the weights (largest 3.4e38): past it the first step was a traceback
    for name, flag in (("lr", "--lr"), ("warmup_lr", "--warmup-lr"), ("weight_decay", "--weight-decay")):
        check_config(FitConfig(**{name: 1e38}))
        with pytest.raises(UserError, match=flag):
            check_config(FitConfig(**{name: 1e39}))
    # crop_scale has no command-line flag: the message names the FitConfig field, not a "--crop-scale"
    for value, what in ((float("nan"), "must be a finite number"), (0.0, r"must be in \(0, 1\]"), (1.5, "must be in")):
        with pytest.raises(UserError, match=rf"^FitConfig\.crop_scale {value}: {what}"):
            check_config(FitConfig(crop_scale=value))


# docs/fit.md's option table, written out: (field, flag, values accepted, values refused)
FIT_RANGES = [
    ("shots", "--shots", (1,), (0,)), ("seed", "--seed", (0, 2**63 - 1), (-1, 2**63)),
    ("workers", "--workers", (0, 256), (-1, 257)), ("n_ctx", "--n-ctx", (1,), (0,)),
    ("alpha", "--alpha", (0.5,), (0.0, -1.0)), ("beta", "--beta", (0.5,), (0.0, -1.0)),
    ("lam", "--lam", (0.0, 1.0), (-0.1, 1.5)), ("T", "--T", (0.5,), (0.0, -1.0)),
    ("sigma", "--sigma", (0.0,), (-0.1,)), ("epochs", "--epochs", (1,), (0,)),
    ("batch_size", "--batch-size", (1, 4096), (0, 4097)), ("lr", "--lr", (0.5,), (0.0,)),
    ("momentum", "--momentum", (0.0, 1.0), (-0.1, 1.5)), ("weight_decay", "--weight-decay", (0.0,), (-0.1,)),
    ("warmup_epochs", "--warmup-epochs", (0,), (-1,)), ("warmup_lr", "--warmup-lr", (0.5,), (0.0,)),
    ("crop_scale", "FitConfig.crop_scale", (0.5, 1.0), (0.0, 1.5)),
]


@pytest.mark.parametrize("name, flag, ok, bad", FIT_RANGES, ids=[r[0] for r in FIT_RANGES])
def test_check_config_takes_each_range_bound_and_refuses_just_past_it(name, flag, ok, bad):
    """Each option's range as docs/fit.md gives it: its bounds pass, a value just past one is one
    line naming the flag (a bound moved by one, or an open one closed, is caught here)."""
    from clip_smot.clip.fit import check_config

    for value in ok:
        check_config(FitConfig(**{name: value}))
    for value in bad:
        with pytest.raises(UserError, match=rf"^{re.escape(flag)} {re.escape(str(value))}: must be"):
            check_config(FitConfig(**{name: value}))


def test_check_config_refuses_the_cuda_options_on_the_cpu_naming_flag_and_value():
    """--cuda-graph and --overlap-encoders are CUDA only, --compile needs square or flex attention (docs/fit.md):
    a FitConfig built in Python gets the command line's one line, with the flag and its value."""
    from clip_smot.clip.fit import check_config

    for cfg, message in ((FitConfig(cuda_graph=True, device="cpu"),
                          "--cuda-graph: needs a CUDA device (--device cuda), not cpu"),
                         (FitConfig(overlap_encoders=True, device="cpu"),
                          "--overlap-encoders: needs a CUDA device (--device cuda), not cpu"),
                         (FitConfig(compile=True, text_attention="mask"),
                          "--compile: needs --text-attention square or flex")):
        with pytest.raises(UserError) as e:
            check_config(cfg)
        assert str(e.value) == message
    check_config(FitConfig(cuda_graph=True, overlap_encoders=True, device="cuda"))
    check_config(FitConfig(cuda_graph=False, overlap_encoders=False, device="cpu"))


@pytest.mark.parametrize("flag", ["cuda_graph", "overlap_encoders"])
def test_a_cuda_option_on_a_machine_without_cuda_is_one_line(tmp_path, monkeypatch, flag):
    """--device auto (the default) on a machine without a GPU is the CPU: --cuda-graph and
    --overlap-encoders are refused there, naming the device, before anything is read or written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    option = "--" + flag.replace("_", "-")
    with pytest.raises(UserError, match=rf"^{option}: needs a CUDA device \(--device cuda\), not cpu$"):
        run_fit(FitConfig(out=str(tmp_path / "run"), **{flag: True}), dry_run=True)
    assert list(tmp_path.iterdir()) == []


def test_empty_or_incomplete_checkpoint_is_one_line(tmp_path):
    """An empty file (its unpickling error has no message) and a checkpoint that lacks keys."""
    from clip_smot.clip.fit import CHECKPOINT_FORMAT, ExportConfig, export_prompt

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"--checkpoint .*empty.pt: not a readable checkpoint \(\w+"):
        export_prompt(ExportConfig(str(empty), str(tmp_path / "p.safetensors")))
    partial = tmp_path / "partial.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 1, "ctx": torch.zeros(2, 4)}, partial)
    with pytest.raises(UserError, match=r"partial.pt: an incomplete fit checkpoint \(no optimizer, scheduler, rng, config\)"):
        export_prompt(ExportConfig(str(partial), str(tmp_path / "p.safetensors")))
    assert not (tmp_path / "p.safetensors").exists()


def test_export_refuses_to_overwrite_its_checkpoint(tmp_path):
    """export --out = --checkpoint would replace the resumable state with a prompt file."""
    from clip_smot.clip.fit import CHECKPOINT_FORMAT, ExportConfig, export_prompt

    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT}, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(UserError, match=r"--out .*checkpoint.pt: is the --checkpoint file itself"):
        export_prompt(ExportConfig(str(ckpt), str(tmp_path / "." / "checkpoint.pt")))
    assert ckpt.read_bytes() == before


def test_export_refuses_to_overwrite_the_runs_other_inputs(one_epoch, cam_resnet, tiny_clip_checkpoint, tmp_path):
    """export wrote over the run's --cam-model file and its split's images, breaking its --resume;
    nor may it write over the run's --pretrained and --split files, or its own --pretrained file."""
    config = json.loads((one_epoch / "config.json").read_text())
    image = Path(config["data"]) / (one_epoch / "split.txt").read_text().split("\t", 1)[0]
    given = tmp_path / "given.txt"  # the --split file of a run started with one
    given.write_text((one_epoch / "split.txt").read_text())
    with_split = _edit_checkpoint(one_epoch / "checkpoint.pt", tmp_path / "checkpoint.pt",
                                  _set("config", "split", str(given)))
    weights = shutil.copy(tiny_clip_checkpoint, tmp_path / "weights.safetensors")
    for ckpt, extra, out, message in (
            (one_epoch / "checkpoint.pt", [], cam_resnet, "is the run's --cam-model file itself"),
            (one_epoch / "checkpoint.pt", [], image, "is inside the run's --data folder"),
            (one_epoch / "checkpoint.pt", [], tiny_clip_checkpoint, "is the run's --pretrained file itself"),
            (with_split, [], given, "is the run's --split file itself"),
            (one_epoch / "checkpoint.pt", ["--pretrained", weights], weights, "is the --pretrained file itself")):
        before = Path(out).read_bytes()
        res = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), *extra, "--out", str(out),
                                       "--device", "cpu"])
        assert res.exit_code == 1 and message in res.output, res.output
        assert Path(out).read_bytes() == before


def test_export_into_a_file_in_place_of_a_folder_is_one_line_before_the_model(one_epoch, tmp_path, monkeypatch):
    """export --out file/p.safetensors, where file is a file, loaded the model, encoded the text
    features, then said "cannot write file/p.safetensors: File exists" (as if the prompt were
    there). As score does, it says at once that a file is in the folder's place."""
    import clip_smot.clip.model as cm

    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(cm, "load_clip", lambda *a, **k: pytest.fail("the model was loaded"))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(one_epoch / "checkpoint.pt"), "--out",
                                   str(tmp_path / "file" / "p.safetensors"), "--device", "cpu"])
    assert res.exit_code == 1 and res.output.strip() == f"Error: --out {tmp_path / 'file'}: is a file, not a folder"
    assert (tmp_path / "file").read_text() == "x"


def test_each_view_cam_is_min_max_scaled_over_the_view(fit_args, tmp_path, monkeypatch):
    """The cached CAM is cropped with its image, then scaled to [0, 255] over the view (docs/method.md
    §1: the CAM of the image that is masked), so every view's CAM reaches 255 (or is all
    zero when it is flat)."""
    import clip_smot.clip.fit as fit_module

    seen = []
    real = fit_module.make_fit_step

    def spy(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(images, cams, labels):
            seen.append(cams.detach().clone())
            return step(images, cams, labels)
        return wrapped

    monkeypatch.setattr(fit_module, "make_fit_step", spy)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--batch-size", "1"))
    assert res.exit_code == 0, res.output
    cams = torch.cat(seen)  # [views, S, S]
    assert len(cams) >= 4
    for cam in cams:
        assert cam.min() == 0 and (cam.max() == 255 or cam.max() == 0), (cam.min(), cam.max())


def test_a_view_cam_flat_within_one_level_masks_nothing(fit_args, tmp_path, monkeypatch):
    """CAMs cached as two uint8 levels, 100 and 101 (a flat map and its rounding): no view spans
    more than one level, so each view's CAM is all zero, as a flat CAM is (docs/method.md §1), not
    one level of rounding stretched to 0 and 255."""
    import clip_smot.clip.cam_network as cam_network
    import clip_smot.clip.fit as fit_module

    def two_levels(provider, label_map, images, labels, batch_size=64):
        cams = torch.full(images.shape[:1] + images.shape[2:], 100, dtype=torch.uint8, device=images.device)
        cams[..., images.shape[-1] // 2:] = 101  # [N, S, S]
        return cams

    seen = []
    real = fit_module.make_fit_step

    def spy(*args, **kwargs):
        step = real(*args, **kwargs)
        return lambda images, cams, labels: seen.append(cams.detach().clone()) or step(images, cams, labels)

    monkeypatch.setattr(cam_network, "cache_cams", two_levels)
    monkeypatch.setattr(fit_module, "make_fit_step", spy)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--batch-size", "1", "--shots", "1"))
    assert res.exit_code == 0, res.output
    assert len(seen) == 3 and all((cam == 0).all() for cam in seen)


def test_plain_folder_names_become_prompt_names_with_spaces(tmp_path):
    for folder in ("red_car", "blue"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "a.png")
    classes = resolve_classes(tmp_path)
    assert classes.folders == ("blue", "red_car") and classes.classnames == ("blue", "red car")
    assert classes.imagenet_index is None


def test_a_folder_name_no_prompt_file_holds_is_refused_before_training(fit_args, tmp_path):
    """A class folder named by one word of 65 letters trained and wrote a prompt that score and
    eval refuse (prompt files hold words of at most 64 letters): now one line, nothing written."""
    data = tmp_path / "data"
    for folder in ("blue", "q" * 65):
        (data / folder).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(data / folder / f"{i}.png")
    args = fit_args(tmp_path / "run")
    args[args.index("--data") + 1] = str(data)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --data {data}: class 1's name holds a word of 65 letters (qqqqqqqqqqqqqqqqqqqq...), more than 64, "
        "which a prompt file cannot hold; rename its folder"), res.output
    assert not (tmp_path / "run").exists()
def test_the_smot_and_sgd_options_reach_the_step(fit_args, tmp_path, monkeypatch):
    """fit's flags are what the step and the optimizer get (each set away from its default)."""
    import clip_smot.clip.fit as fit_mod

    seen = {}
    real = fit_mod.make_fit_step

    def spy(clip, learner, optimizer, **kw):
        seen.update(kw, optimizer=dict(optimizer.defaults), encoder=learner.encoder)
        return real(clip, learner, optimizer, **kw)

    monkeypatch.setattr(fit_mod, "make_fit_step", spy)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "dry", "--dry-run", "--lam", "0.3", "--T", "77", "--alpha", "3",
                                           "--beta", "4", "--perturb", "one", "--sigma", "0.5", "--lr", "0.01",
                                           "--momentum", "0.5", "--weight-decay", "0.001", "--precision", "bf16",
                                           "--text-residual", "precision"))
    assert res.exit_code == 0, res.output
    # the text tower trained: bf16 with its residual stream in bf16 too (the default keeps it fp32)
    assert (seen["encoder"].precision, seen["encoder"].residual) == ("bf16", "bf16")
    assert {k: seen[k] for k in ("loss", "lam", "T", "alpha", "beta", "perturbation", "sigma")} == {
        "loss": "smot", "lam": 0.3, "T": 77.0, "alpha": 3.0, "beta": 4.0, "perturbation": "one", "sigma": 0.5}
    assert {k: seen["optimizer"][k] for k in ("lr", "momentum", "weight_decay")} == {
        "lr": 0.01, "momentum": 0.5, "weight_decay": 0.001}
    assert (seen["cuda_graph"], seen["overlap"], seen["compile_image"]) == (False, False, False)  # CPU defaults


def test_an_epoch_is_one_pass_in_whole_batches_and_logs_their_mean_loss(imagenet_dir, tiny_clip_config,
                                                                       tiny_clip_checkpoint, tmp_path, monkeypatch):
    """9 images in batches of 4: two steps of 4 other images, the ninth left out (the last partial
    batch is dropped, as CoOp's loader does); each view cropped to at least FitConfig.crop_scale of
    the image (docs/method.md §2: 0.08 by default); the log's loss is the mean of the steps' losses."""
    import clip_smot.clip.fit as fit_mod

    batches, scales, losses = [], [], []
    real_crop, real_step = fit_mod.random_resized_crop_flip, fit_mod.make_fit_step

    def crop(images, cams, size, scale, generator):
        batches.append([bytes(x.numpy().tobytes()) for x in images])
        scales.append(scale)
        return real_crop(images, cams, size, scale=scale, generator=generator)

    def make(*args, **kwargs):
        step = real_step(*args, **kwargs)
        return lambda *a: losses.append(step(*a)) or losses[-1]

    monkeypatch.setattr(fit_mod, "random_resized_crop_flip", crop)
    monkeypatch.setattr(fit_mod, "make_fit_step", make)
    out = tmp_path / "run"
    run_fit(FitConfig(data=str(imagenet_dir), shots=3, model=tiny_clip_config, pretrained=tiny_clip_checkpoint,
                      loss="ce", n_ctx=4, batch_size=4, epochs=1, precision="fp32", device="cpu",
                      workers=0, out=str(out), crop_scale=0.5))
    assert [len(b) for b in batches] == [4, 4] and len(set(batches[0] + batches[1])) == 8
    assert scales == [(0.5, 1.0)] * 2
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx((losses[0].item() + losses[1].item()) / 2, rel=1e-6)


def test_ctrl_c_is_one_line_that_says_how_to_resume(fit_args, tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) ended with click's bare 'Aborted!' and exit code 1; it says
    whether there is a checkpoint to --resume from, and exits 130 as an interrupted program does.
    Then: the temporary file of a write killed by SIGKILL is removed by the --resume."""
    import clip_smot.clip.fit as fit_module

    def error_line(res):  # stderr's last line (the progress bar clears itself with a carriage return)
        assert "Traceback" not in res.output
        return res.stderr.replace("\r", "\n").strip().splitlines()[-1]

    real_save = run_folder.atomic_save

    def save_then_ctrl_c(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "atomic_save", save_then_ctrl_c)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--epochs", "2"))
    assert res.exit_code == 130
    assert error_line(res) == (f"Error: interrupted; {tmp_path / 'run' / 'checkpoint.pt'} holds epoch 1 of 2: "
                               "continue with the same command and --resume")

    def ctrl_c(*args, **kwargs):  # in the first epoch: no checkpoint yet
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "random_resized_crop_flip", ctrl_c)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "early"))
    assert res.exit_code == 130 and error_line(res) == "Error: interrupted before the first checkpoint; nothing to resume"
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--epochs", "2", "--dry-run"))  # a dry run resumes nothing
    assert res.exit_code == 130 and error_line(res) == "Error: interrupted"

    # SIGKILL while the checkpoint was written leaves its temporary file: --resume removes it
    stale = tmp_path / "run" / ".checkpoint.pt.k1ll3d_x.tmp"
    stale.write_bytes(b"PK\x03\x04 half")
    monkeypatch.undo()
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--epochs", "2", "--resume"))
    assert res.exit_code == 0, res.output
    assert not stale.exists() and (tmp_path / "run" / "prompt.safetensors").is_file()


def test_resume_after_the_images_changed_says_so(fit_args, imagenet_dir, tmp_path):
    """An image of the split deleted under --data: the resume said 'made with other options
    (split); rerun with the options in config.json', though the options were the same."""
    import shutil

    data = shutil.copytree(imagenet_dir, tmp_path / "data")

    def args(*extra):
        return [a if a != str(imagenet_dir) else str(data) for a in fit_args(tmp_path / "run", *extra)]

    assert CliRunner().invoke(cli, args()).exit_code == 0
    split = tmp_path / "run" / "split.txt"
    gone = data / "train" / split.read_text().split("\t")[0]
    kept = gone.read_bytes()
    gone.unlink()
    res = CliRunner().invoke(cli, args("--resume"))
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --resume {tmp_path / 'run' / 'checkpoint.pt'}: the run's few-shot split ({split}) is not the one "
        f"drawn now (did the images under --data change?); to continue on its images, add --split {split}")
    gone.write_bytes(kept)
    # a --split given that is not the run's: the flag is named, not the images
    (tmp_path / "other.txt").write_text("".join(f"{line}\n" for line in split.read_text().splitlines()[1:]))
    res = CliRunner().invoke(cli, args("--resume", "--split", str(tmp_path / "other.txt")))
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --resume: --split {tmp_path / 'other.txt'} is not the few-shot split of the run saved in "
        f"{tmp_path / 'run'} (another file, or edited since); pass --split {split}, the run's own copy")
    # with the split named, the run's images are used (here: the finished run)
    (data / "train" / "n01440764" / "extra.JPEG").write_bytes(kept)
    res = CliRunner().invoke(cli, args("--resume", "--split", str(split)))
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output


def test_resume_with_its_split_file_edited_is_not_told_to_give_the_same_flags(fit_args, tmp_path):
    """A run started with --split S, resumed with the same --split S edited since, or with none
    while the run's own copy (OUT/split.txt, which a resume without --split reads) was edited:
    both were told "--split differs from the run saved in OUT; resume with the same flags", which
    the user had done. The first is now told to pass the run's own copy, the second that its copy
    changed, which no flag puts right."""
    assert CliRunner().invoke(cli, fit_args(tmp_path / "first")).exit_code == 0
    user, own = tmp_path / "s.txt", tmp_path / "run" / "split.txt"
    user.write_text((tmp_path / "first" / "split.txt").read_text())
    assert CliRunner().invoke(cli, fit_args(tmp_path / "run", "--split", str(user))).exit_code == 0
    user.write_text("".join(user.read_text().splitlines(True)[1:]))  # edited after the run started
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--resume", "--split", str(user)))
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --resume: --split {user} is not the few-shot split of the run saved in {tmp_path / 'run'} "
        f"(another file, or edited since); pass --split {own}, the run's own copy")
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--resume", "--split", str(own)))  # the advice
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output
    kept = own.read_text()
    own.write_text("".join(kept.splitlines(True)[1:]))
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--resume"))
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --resume {tmp_path / 'run' / 'checkpoint.pt'}: {own}, the run's copy of its few-shot split, is not "
        "the split the run started with (edited since?); restore it, or start a new run in another --out")
    own.write_text(kept)  # (restored: the run goes on)
    res = CliRunner().invoke(cli, fit_args(tmp_path / "run", "--resume"))
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output


def test_resume_with_a_weights_file_replaced_at_its_path_is_refused(fit_args, tiny_clip_checkpoint, cam_resnet,
                                                                     tmp_path, monkeypatch):
    """--resume compared the flags, not the files behind them: a CLIP checkpoint or CAM network
    replaced at the same path (re-downloaded, retrained) continued the run on other weights."""
    import shutil

    import open_clip
    from safetensors.torch import save_file
    from torchvision.models.resnet import BasicBlock, ResNet

    weights, cam = tmp_path / "w.safetensors", tmp_path / "cam.pth"
    shutil.copy(tiny_clip_checkpoint, weights)
    shutil.copy(cam_resnet, cam)

    def args(*extra):
        swap = {tiny_clip_checkpoint: str(weights), cam_resnet: str(cam)}
        return [swap.get(a, a) for a in fit_args(tmp_path / "run", "--epochs", "2", *extra)]

    real_save = run_folder.atomic_save

    def save_then_die(obj, path):  # killed right after the first checkpoint
        real_save(obj, path)
        raise RuntimeError("killed")

    monkeypatch.setattr(run_folder, "atomic_save", save_then_die)
    assert isinstance(CliRunner().invoke(cli, args()).exception, RuntimeError)
    monkeypatch.setattr(run_folder, "atomic_save", real_save)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["config"]["run"]["cam_model_sha256"] == hashlib.sha256(cam.read_bytes()).hexdigest()
    torch.manual_seed(7)  # other weights of the same architectures
    other_clip = {k: v.contiguous() for k, v in open_clip.create_model("clip-smot-tiny").state_dict().items()}
    other_cam = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1000).state_dict()
    for path, flag, write in ((weights, "--pretrained", lambda: save_file(other_clip, str(weights))),
                              (cam, "--cam-model", lambda: torch.save(other_cam, cam))):
        kept = path.read_bytes()
        write()
        res = CliRunner().invoke(cli, args("--resume"))
        assert res.exit_code == 1, res.output
        line = _last_error_line(res)
        assert flag in line and "is not the model the run was trained with" in line, line
        path.write_bytes(kept)
    res = CliRunner().invoke(cli, args("--resume"))  # the run's own files: it resumes
    assert res.exit_code == 0, res.output
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_resume_of_a_run_recorded_with_the_other_activation_is_refused(one_epoch, fit_args, tmp_path):
    """A run recorded before its weights' QuickGELU was honoured (a CLIP record with no
    "activation", whose model config says GELU) trained its context through GELU: resuming it on
    the QuickGELU model these weights build now is refused, naming both activations."""
    run = shutil.copytree(one_epoch, tmp_path / "run")

    def as_an_older_run(saved):
        clip = saved["config"]["run"]["clip"]
        del clip["activation"]
        clip["model_config"] = json.dumps({**json.loads(clip["model_config"]), "quick_gelu": False})

    _edit_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt", as_an_older_run)
    res = CliRunner().invoke(cli, fit_args(run, "--resume"))
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --resume {run / 'checkpoint.pt'}: the run was trained with gelu, but these weights are built with "
        "quick_gelu; its context does not fit them: fit again in another --out"), res.output


def test_one_class_of_extreme_images_fits_with_a_note(fit_args, tmp_path):
    """One class (valid; the softmax over it is 1): the loss is 0, the gradient too, so one step
    moves the context by weight decay alone; fit says so. The images are a 1 x 50 strip, a 3 x 3,
    a 16-bit grey, a palette and an all-black one, and --batch-size is larger than the split."""
    d = tmp_path / "data" / "thing"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 1, 3), dtype=np.uint8)).save(d / "strip.png")
    Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).save(d / "tiny.png")
    Image.fromarray(rng.integers(0, 65535, (20, 30)).astype(np.uint16)).save(d / "grey16.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert("P").save(d / "palette.png")
    Image.new("RGB", (30, 20)).save(d / "black.png")
    args = fit_args(tmp_path / "run", "--shots", "5", "--batch-size", "8")
    args[args.index("--data") + 1] = str(tmp_path / "data")
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "one class" in res.stderr and "loss is 0" in res.stderr
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == 0.0
    ctx0 = torch.empty(4, 32).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(1))  # the seeded init
    lr, wd = 1e-5, 5e-4  # the warm-up step: SGD's first step is ctx - lr * (grad + wd * ctx), grad = 0
    torch.testing.assert_close(load_prompt(tmp_path / "run" / "prompt.safetensors").ctx, ctx0 * (1 - lr * wd),
                               atol=1e-9, rtol=0)


def test_a_class_named_train_is_a_class(tmp_path):
    """DATA/<class>/ with a class 'train' (CIFAR-100 has one): DATA is the class-folder root, not
    DATA/train, which holds images; DATA/train/<class>/ stays the ImageNet layout."""
    from clip_smot.clip.fewshot import resolve_train_root

    for name in ("bus", "train"):
        (tmp_path / "cifar" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "cifar" / name / "0.png")
    root = resolve_train_root(tmp_path / "cifar")
    assert root == tmp_path / "cifar" and resolve_classes(root).classnames == ("bus", "train")
    (tmp_path / "imagenet" / "train" / WNIDS[0]).mkdir(parents=True)
    assert resolve_train_root(tmp_path / "imagenet") == tmp_path / "imagenet" / "train"


@pytest.mark.parametrize("what", ["ctx", "weights"])
def test_export_refuses_non_finite_numbers_naming_their_source(one_epoch, tiny_clip_config, tiny_clip_checkpoint,
                                                               tmp_path, what):
    """`export` of a checkpoint whose context is NaN wrote the prompt (exit 0). A NaN context names
    the checkpoint; weights whose text encoder gives NaN name the weights; the prompt file there
    before stays as it was."""
    from safetensors.torch import load_file, save_file

    ckpt, weights = one_epoch / "checkpoint.pt", tiny_clip_checkpoint
    if what == "ctx":
        saved = torch.load(ckpt, weights_only=True)
        saved["ctx"][1, 2] = float("nan")
        ckpt = tmp_path / "checkpoint.pt"
        torch.save(saved, ckpt)
    else:
        sd = load_file(tiny_clip_checkpoint)
        sd["text_projection"][0, 0] = float("inf")
        weights = tmp_path / "inf.safetensors"
        save_file(sd, str(weights))
    out = tmp_path / "prompt.safetensors"
    old = (one_epoch / "prompt.safetensors").read_bytes()  # (a prompt there before: export's own, written again)
    out.write_bytes(old)
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--model", tiny_clip_config,
                                   "--pretrained", str(weights), "--device", "cpu"])
    line = _one_error_line(res) if what == "ctx" else _last_error_line(res)  # (other weights: a note first)
    if what == "ctx":
        assert line.startswith(f"Error: --checkpoint {ckpt}: a damaged fit checkpoint (ctx (a finite float tensor")
    else:
        assert line.startswith("Error: --pretrained inf.safetensors: the text encoder of clip-smot-tiny gives "
                               "non-finite text features")
    assert out.read_bytes() == old


def test_a_split_of_any_file_names_reads_back(fit_args, tmp_path):
    """`fit` wrote a split.txt it could not read back when a class folder name held a newline.
    Class folders and image names with a newline, a tab, a backslash, U+2028 and a byte that is not
    UTF-8: the file is one UTF-8 line per image, `--split` reads it back to the same files, and
    the escapes are those data_lists/README.md gives."""
    import os

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    names = {"new\nline": [b"a.png", b"\xff\xfe.png"], "back\\slash": [b"b\tc.png", "x\u2028y.png".encode()]}
    for folder, files in names.items():
        (data / folder).mkdir(parents=True)
        for f in files:
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
                os.path.join(os.fsencode(data / folder), f), format="PNG")
    args = fit_args(tmp_path / "run", "--shots", "2")
    args[args.index("--data") + 1] = str(data)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    text = (tmp_path / "run" / "split.txt").read_bytes().decode("utf-8")  # strict
    assert text.splitlines() == ["back\\\\slash/b\\u0009c.png\t0", "back\\\\slash/x\\u2028y.png\t0",
                                 "new\\u000aline/a.png\t1", "new\\u000aline/\\xff\\xfe.png\t1"]
    classes = resolve_classes(data)
    split = read_split(tmp_path / "run" / "split.txt", classes)
    assert sorted((os.fsencode(p), y) for p, y in split) == sorted(
        (os.fsencode(folder) + b"/" + f, y) for y, folder in enumerate(sorted(names)) for f in names[folder])
    again = fit_args(tmp_path / "run2", "--split", str(tmp_path / "run" / "split.txt"), "--dry-run")
    again[again.index("--data") + 1] = str(data)
    res = CliRunner().invoke(cli, again)
    assert res.exit_code == 0, res.output


def test_fit_counts_no_fifo_or_broken_symlink_and_does_not_block(fit_args, imagenet_dir, tmp_path):
    """A FIFO named *.jpg in a class folder hung fit (its reader waits for a writer); a broken
    symlink counted as one of its images. Neither is an image: with 4 real images a class has 4."""
    import os
    import shutil

    data = shutil.copytree(imagenet_dir, tmp_path / "data")
    os.mkfifo(data / "train" / WNIDS[0] / "zz_fifo.jpg")
    (data / "train" / WNIDS[0] / "zz_broken.jpg").symlink_to(tmp_path / "nowhere.jpg")

    def args(*extra):
        return [a if a != str(imagenet_dir) else str(data) for a in fit_args(tmp_path / "run", *extra)]

    res = CliRunner().invoke(cli, args("--shots", "5"))
    assert res.exit_code == 1 and f"class '{WNIDS[0]}' ({data / 'train' / WNIDS[0]}) has only 4 images" in res.output
    res = CliRunner().invoke(cli, args("--shots", "4", "--dry-run"))  # every image of the class is drawn
    assert res.exit_code == 0 and "dry run: one batch" in res.output, res.output


def test_resume_after_an_image_was_replaced_under_its_name_is_refused(fit_args, imagenet_dir, tmp_path):
    """The split names the same files, but one holds other bytes: the run cannot continue (its
    SHA-256 of the images' bytes, as sha256sum lists them, differs)."""
    import shutil

    data = shutil.copytree(imagenet_dir, tmp_path / "data")
    run = tmp_path / "run"

    def args(*extra):
        return [a if a != str(imagenet_dir) else str(data) for a in fit_args(run, *extra)]

    assert CliRunner().invoke(cli, args()).exit_code == 0
    split = [line.split("\t")[0] for line in (run / "split.txt").read_text().splitlines()]
    listing = "".join(f"{hashlib.sha256((data / 'train' / f).read_bytes()).hexdigest()}  {f}\n" for f in split)
    config = json.loads((run / "config.json").read_text())
    assert config["run"]["images_sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    (run / "prompt.safetensors").unlink()  # (a finished run with its prompt has nothing to do on --resume)
    victim = data / "train" / split[0]
    Image.fromarray(np.full((36, 40, 3), 7, np.uint8)).save(victim, format="JPEG")  # same name, other bytes
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    res = CliRunner().invoke(cli, args("--resume"))
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --resume {run / 'checkpoint.pt'}: an image of the run's few-shot split ({run / 'split.txt'}) has "
        "other bytes than when the run started (replaced under the same name); the run cannot continue on other "
        "images: restore them, or start a new run in another --out")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing rewritten


def test_seed_and_n_ctx_out_of_bounds_are_refused_before_allocating(tiny_clip_config, tiny_clip_checkpoint):
    """--seed -1 was numpy's traceback (default_rng takes no negatives), 2**64 torch's; --n-ctx
    10**9 allocated a [10**9, d] context before the prompt's length was checked."""
    import time

    from clip_smot.clip.fit import check_config

    for seed in (-1, 2**63, 2**64):
        with pytest.raises(UserError, match=rf"^--seed {seed}: must be in \[0, 9223372036854775807\]$"):
            check_config(FitConfig(seed=seed))
    check_config(FitConfig(seed=2**63 - 1))
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint, torch.device("cpu"))
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"^--n-ctx 1000000000: the prompt of class 'dog' \(a name of 1 token\) needs "
                                        r"1000000004 of the text encoder's 77 tokens; use at most --n-ctx 73$"):
        PromptLearner(clip, ["cat", "dog"], n_ctx=10**9, csc=True)
    assert time.perf_counter() - t0 < 5


def _edit_checkpoint(src, dst, edit):
    """A copy of the fit checkpoint ``src`` at ``dst``, changed by ``edit(saved)`` (by hand, as it were)."""
    saved = torch.load(src, weights_only=True)
    edit(saved)
    torch.save(saved, dst)
    return dst


def _set(*keys_value):
    """An edit that sets saved[k1][k2]... = value."""
    *keys, value = keys_value

    def edit(saved):
        d = saved
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, expected", [
    (_set("ctx", torch.zeros(4, 7)), r"its context has shape \[4, 7\], not the \[4, 32\] of its options and CLIP model"),
    (_set("ctx", [[0.0] * 32] * 4), r"a damaged fit checkpoint \(ctx \(a finite float tensor"),
    (_set("ctx", torch.zeros(1, 1).expand(10**9, 32)), r"a damaged fit checkpoint \(ctx"),  # 128 GB if copied
    (_set("ctx", torch.full((4, 32), float("nan"))), r"a damaged fit checkpoint \(ctx"),
    # a sparse and a nested context (torch.load reads both) were tracebacks: no storage to measure, no isfinite
    (lambda saved: saved.update(ctx=saved["ctx"].to_sparse()), r"a damaged fit checkpoint \(ctx \(a finite float"),
    (lambda saved: saved.update(ctx=torch.nested.as_nested_tensor([saved["ctx"]])),
     r"a damaged fit checkpoint \(ctx \(a finite float"),
    (_set("ctx", torch.zeros(1, 1, 4, 32)), r"a damaged fit checkpoint \(ctx \(a finite float tensor \[n_ctx, d\] or "
                                          r"\[K, n_ctx, d\]\)\)"),  # (4 dimensions: no context's)
    # found by fuzzing (tracebacks, or a line blaming another file): a float8 context has no isfinite, a
    # meta-device one no values (torch.load keeps it there, map_location or not); a float64 one beyond
    # float32's range is finite until it is used as the float32 it becomes, when the NaN text features
    # were blamed on --pretrained, not on the checkpoint
    (lambda saved: saved.update(ctx=saved["ctx"].to(torch.float8_e4m3fn)),
     r"a damaged fit checkpoint \(ctx \(a finite float"),
    (lambda saved: saved.update(ctx=saved["ctx"].to("meta")),
     r"not a readable checkpoint \(ctx is a tensor of no data \(on the meta device\)\)$"),
    (lambda saved: saved.update(ctx=saved["ctx"].double().index_fill(0, torch.tensor([0]), 1e300)),
     r"a damaged fit checkpoint \(ctx \(a finite float"),
    (_set("ctx", torch.zeros(3, 4, 32)), r"its context has shape \[3, 4, 32\], which no --csc, its 3 classes and "
                                         r"--n-ctx 4 do not give"),
    (_set("config", "n_ctx", 10**9), r"its context has shape \[4, 32\], which no --csc, its 3 classes and "
                                     r"--n-ctx 1000000000 do not give"),
    (_set("epoch", "1"), r"a damaged fit checkpoint \(epoch \(a whole number of epochs done, at most the run's "
                         r"epochs\)\)"),
    (_set("epoch", 2), r"a damaged fit checkpoint \(epoch \(a whole number"),  # (of 1 epoch)
    (_set("epoch", True), r"a damaged fit checkpoint \(epoch \(a whole number"),  # (True == 1: a bool is no count)
    (_set("config", "n_ctx", "4"), r"its configuration's n_ctx is '4', not int"),
    (_set("config", "csc", 1), r"its configuration's csc is 1, not bool"),
    (_set("config", "seed", -1), r"its configuration is out of range \(--seed -1: must be in"),
    (_set("config", "run", "classnames", None), r"a damaged fit checkpoint \(config.run.classnames\)"),
    (_set("config", "run", "classnames", []), r"a damaged fit checkpoint \(config.run.classnames\)"),
    (_set("config", "run", "classnames", ["tench", 1, "great white shark"]),
     r"a damaged fit checkpoint \(config.run.classnames\)"),
    (_set("config", "run", "classnames", ["tench", "q" * 5000, "great white shark"]),  # (an --n-ctx error before)
     r"a damaged fit checkpoint \(config.run.classnames: class 1's name has 5000 characters, more than 1000\)$"),
    (_set("config", "run", "split_sha256", None), r"a damaged fit checkpoint \(config.run.split_sha256\)"),
    (_set("config", "run", "clip", "checkpoint_sha256", None), r"a damaged fit checkpoint \(config.run.clip\)"),
    (lambda saved: saved["config"].pop("run"), r"an incomplete fit checkpoint \(no config.run\)"),
    (_set("config", "run", "clip", "model_config", "{"), r"a damaged fit checkpoint \(config: "),
    # (what the exported prompt records as JSON: was a TypeError traceback of json.dumps after the encoding)
    (_set("config", "run", "image_size", torch.tensor(32)),
     r"a damaged fit checkpoint \(config: Object of type Tensor is not JSON serializable\)"),
    (_set("config", "run", "class_folders", {1: "a", "b": "c"}), r"a damaged fit checkpoint \(config: "),
    (_set("rng", None), r"a damaged fit checkpoint \(optimizer, scheduler or rng\)"),
    (_set("scheduler", None), r"a damaged fit checkpoint \(optimizer, scheduler or rng\)"),  # (export reads none)
])
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # (torch's, on loading a sparse ctx: the CLI
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")    # filters the first; the second is the edit's)
def test_export_of_a_hand_edited_checkpoint_is_one_line(one_epoch, tmp_path, edit, expected):
    """KeyError, TypeError and size-mismatch tracebacks of a checkpoint edited by hand; nothing written."""

    path = _edit_checkpoint(one_epoch / "checkpoint.pt", tmp_path / "checkpoint.pt", edit)
    t0 = __import__("time").perf_counter()
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(path), "--out", str(tmp_path / "p.safetensors"),
                                   "--device", "cpu"])
    assert res.exit_code == 1 and re.search(rf"^Error: --checkpoint {re.escape(str(path))}: {expected}",
                                            _last_error_line(res)), res.output
    assert __import__("time").perf_counter() - t0 < 30 and not (tmp_path / "p.safetensors").exists()


def test_export_takes_a_checkpoint_of_zero_epochs_done_and_refuses_a_negative_count(one_epoch, tmp_path):
    """The epoch a checkpoint records is a count of epochs done: 0 is one (the context at its
    initialisation, exported with the note of an unfinished run), -1 is not."""
    zero = _edit_checkpoint(one_epoch / "checkpoint.pt", tmp_path / "zero.pt", _set("epoch", 0))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(zero), "--out", str(tmp_path / "zero.safetensors"),
                                   "--device", "cpu"])
    assert res.exit_code == 0 and f"note: {zero} holds the context of epoch 0 of the run's 1:" in res.output, res.output
    minus = _edit_checkpoint(one_epoch / "checkpoint.pt", tmp_path / "minus.pt", _set("epoch", -1))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(minus), "--out", str(tmp_path / "m.safetensors"),
                                   "--device", "cpu"])
    assert res.exit_code == 1 and _last_error_line(res) == (
        f"Error: --checkpoint {minus}: a damaged fit checkpoint (epoch (a whole number of epochs done, at most the "
        "run's epochs))"), res.output
    assert not (tmp_path / "m.safetensors").exists()


def _momentum_edit(shape):
    def edit(saved):
        for state in saved["optimizer"]["state"].values():
            state["momentum_buffer"] = torch.zeros(shape)
    return edit


@pytest.mark.parametrize("edit, expected", [
    (_momentum_edit((4, 7)), r"its optimizer state does not fit \(ValueError: momentum_buffer has shape \[4, 7\], "
                             r"not \[4, 32\]\)"),
    (_set("optimizer", "param_groups", 0, "lr", "fast"), r"its optimizer state does not fit \(ValueError: lr is 'fast'\)"),
    (_set("optimizer", "param_groups", []), r"its optimizer state does not fit \(ValueError: 0 parameter groups"),
    (_set("scheduler", "base_lrs", ["x"]), r"its learning-rate schedule is damaged"),
    (_set("scheduler", "base_lrs", [10**400]), r"its learning-rate schedule is damaged"),  # (was an OverflowError)
    (_set("scheduler", "base_lrs", [0.002, 0.002]), r"its learning-rate schedule is damaged$"),  # (one group)
    # numbers that were taken as they were (an outside audit: lr 15 in the log of a run of --lr 0.002)
    (_set("scheduler", "base_lrs", [20.0]), r"its learning-rate schedule \(base lr \[20.0\], epoch 1, lr \[\S+\]\) "
                                            r"is not the run's$"),
    (_set("scheduler", "last_epoch", 0), r"its learning-rate schedule \(base lr \[0.002\], epoch 0, lr \[\S+\]\) "
                                         r"is not the run's$"),  # (its next step would be epoch 1's lr again)
    (_set("optimizer", "param_groups", 0, "lr", 15.0), r"its learning-rate schedule \(.*lr \[15.0\]\) is not the run's$"),
    # the scheduler's other keys become its attributes: a step count that is text, lambdas of an int
    (_set("scheduler", "_step_count", "x"), r"its learning-rate schedule is damaged$"),
    (_set("scheduler", "lr_lambdas", 5), r"its learning-rate schedule is damaged$"),
    (_set("scheduler", "lr_lambdas", [5]), r"its learning-rate schedule is damaged$"),  # (a list, as the run's)
    (_set("scheduler", "last_epoch", "1"), r"its learning-rate schedule is damaged$"),  # (text: no epoch)
    (_set("optimizer", "param_groups", 0, "weight_decay", 50.0), r"its optimizer state does not fit \(ValueError: "
                                                                 r"weight_decay is 50.0, not the run's 0.0005\)"),
    (_set("rng", "data_gen", torch.zeros(3, dtype=torch.uint8)), r"its random-number state is damaged \(RuntimeError"),
    (_set("rng", "torch_cpu", "seed"), r"its random-number state is damaged \(TypeError"),
    (lambda saved: saved["rng"].pop("numpy"), r"its random-number state is damaged \(KeyError"),  # (NumPy's gone)
    (_set("rng", "devices", ["cpu"]), r"its random-number state is damaged \(AttributeError"),
    (_set("rng", "numpy", ("MT19937", torch.zeros(3, dtype=torch.int64), 0, 0, 0.0)),
     r"its random-number state is damaged \(ValueError: NumPy's state holds 3 keys, not 624\)"),  # (an IndexError)
    (_set("rng", "python", (3, (10**30,) * 625, None)), r"its random-number state is damaged \(OverflowError"),
    # Python's state as a 0-dim tensor (a seeded fuzz): random.setstate indexes it, torch's IndexError, which
    # neither restore_rng's documented errors nor fit's except clause hold: a traceback
    (_set("rng", "python", torch.tensor(1.0)), r"its random-number state is damaged \(ValueError: Python's state "
                                               r"is a Tensor, not random.getstate\(\)'s tuple\)$"),
])
def test_resume_from_a_hand_edited_checkpoint_is_one_line(one_epoch, fit_args, tmp_path, edit, expected):
    """The optimizer, schedule and RNG states were loaded unchecked: a traceback then, or at the first step."""
    import shutil

    run = shutil.copytree(one_epoch, tmp_path / "run")
    (run / "prompt.safetensors").unlink()  # (the finished run goes on to its export)
    _edit_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt", edit)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    res = CliRunner().invoke(cli, fit_args(run, "--resume"))
    assert res.exit_code == 1 and re.search(rf"^Error: --resume {re.escape(str(run / 'checkpoint.pt'))}: {expected}",
                                            _last_error_line(res)), res.output
    assert not (run / "prompt.safetensors").exists()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing rewritten


def test_resume_over_a_damaged_log_keeps_its_good_lines(tmp_path):
    """log.jsonl with bytes that are not UTF-8, JSON that is not a record, a string epoch: a
    UnicodeDecodeError or a TypeError on --resume; the good lines stay, the others go."""
    from clip_smot.common.run_folder import truncate_log as _truncate_log

    log = tmp_path / "log.jsonl"
    good = [json.dumps({"epoch": e, "loss": 0.5}) for e in (1, 2)]
    log.write_bytes(b"\n".join([good[0].encode(), b"\xff\xfe garbage", b"[1, 2]", b'"text"', b'{"epoch": "2"}',
                                b'{"epoch": true}', good[1].encode(), b"{\"epoch\": 3}"]) + b"\n")
    _truncate_log(log, 2)
    assert log.read_text() == good[0] + "\n" + good[1] + "\n"
    log.unlink()
    log.mkdir()  # a folder where the log goes
    with pytest.raises(UserError, match=rf"^cannot write {re.escape(str(log))}: "):
        _truncate_log(log, 1)


def test_a_checkpoint_recorded_before_the_images_were_hashed_resumes(one_epoch, fit_args, tmp_path):
    """A run recorded without config.run.images_sha256 (before images were hashed) has nothing to
    compare the images with: it resumes, and its prompt is the finished run's."""
    run = shutil.copytree(one_epoch, tmp_path / "run")
    (run / "prompt.safetensors").unlink()
    _edit_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt",
                     lambda saved: saved["config"]["run"].pop("images_sha256"))
    res = CliRunner().invoke(cli, fit_args(run, "--resume"))
    assert res.exit_code == 0, res.output
    a, b = load_prompt(one_epoch / "prompt.safetensors"), load_prompt(run / "prompt.safetensors")
    assert torch.equal(a.ctx, b.ctx)


def test_a_checkpoint_recorded_before_the_activation_was_recorded_resumes(one_epoch, fit_args, tmp_path):
    """A run recorded before its CLIP record named an activation (its model config says
    QuickGELU, as these weights build: the same model) resumes, to the finished run's prompt;
    it was refused as trained on weights "changed since", though they are the same file."""
    run = shutil.copytree(one_epoch, tmp_path / "run")
    (run / "prompt.safetensors").unlink()
    _edit_checkpoint(run / "checkpoint.pt", run / "checkpoint.pt",
                     lambda saved: saved["config"]["run"]["clip"].pop("activation"))
    res = CliRunner().invoke(cli, fit_args(run, "--resume"))
    assert res.exit_code == 0, res.output
    a, b = load_prompt(one_epoch / "prompt.safetensors"), load_prompt(run / "prompt.safetensors")
    assert torch.equal(a.ctx, b.ctx)


def test_a_run_resumes_on_its_data_moved_to_another_folder(fit_args, imagenet_dir, tmp_path, monkeypatch):
    """The data set moved (another disk, a renamed folder): `--resume --data NEW` said "--data
    differs", and the run could not go on. Its images are compared by their contents (the split's
    relative paths and each image's SHA-256), so the moved folder resumes, to the context of an
    uninterrupted run; a folder with other images at those paths is still refused."""
    import shutil

    from safetensors.torch import load_file

    first, moved = tmp_path / "disk1" / "data", tmp_path / "disk2" / "data"
    shutil.copytree(imagenet_dir, first)
    extra = ["--epochs", "2", "--warmup-epochs", "0", "--lr", "0.05"]

    def args(data, out, *more):
        return [a if a != str(imagenet_dir) else str(data) for a in fit_args(out, *extra, *more)]

    assert CliRunner().invoke(cli, args(first, tmp_path / "straight")).exit_code == 0
    real_save = run_folder.atomic_save

    def save_then_die(obj, path):  # the run is killed right after its first checkpoint
        real_save(obj, path)
        raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(run_folder, "atomic_save", save_then_die)
        assert isinstance(CliRunner().invoke(cli, args(first, tmp_path / "run")).exception, RuntimeError)
    moved.parent.mkdir()
    first.rename(moved)
    # another image at one of the run's relative paths: refused by its contents
    other = shutil.copytree(moved, tmp_path / "other")
    a, b = [line.split("\t")[0] for line in (tmp_path / "run" / "split.txt").read_text().splitlines()[:2]]
    (other / "train" / a).write_bytes((other / "train" / b).read_bytes())
    res = CliRunner().invoke(cli, args(other, tmp_path / "run", "--resume"))
    assert res.exit_code == 1 and _last_error_line(res).startswith(
        f"Error: --resume {tmp_path / 'run' / 'checkpoint.pt'}: an image of the run's few-shot split"), res.output
    res = CliRunner().invoke(cli, args(moved, tmp_path / "run", "--resume"))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == str((moved / "train").resolve())
    straight, resumed = (load_file(str(tmp_path / d / "prompt.safetensors")) for d in ("straight", "run"))
    torch.testing.assert_close(resumed["ctx"], straight["ctx"], rtol=0, atol=0)


def _full_disk_at(monkeypatch, name: str) -> None:
    """Every atomic write of a file called ``name`` fails as on a full disk (ENOSPC)."""
    import errno

    import clip_smot.common.files as files

    real = files._write_temporary

    def write_temporary(path, write):
        if Path(path).name == name:
            def write(tmp):
                Path(tmp).write_bytes(b"{")  # (part of it, as a full disk leaves)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)
    monkeypatch.setattr(files, "_write_temporary", write_temporary)


def test_a_full_disk_at_config_json_leaves_no_split_that_blocks_the_rerun(tmp_path, fit_args, monkeypatch):
    """The disk full when config.json was written, after split.txt: the split alone was left, no
    stopped run's to a rerun ("its split.txt is not of a clip-smot fit run ...") and no checkpoint
    to --resume, so the user had to find and remove it. The two are written as one now."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _full_disk_at(m, "config.json")
        res = CliRunner().invoke(cli, fit_args(out))
    assert res.exit_code == 1
    assert _last_error_line(res) == f"Error: cannot write {out / 'config.json'}: No space left on device"
    assert not (out / "split.txt").exists() and not list(out.glob(".*.tmp"))
    res = CliRunner().invoke(cli, fit_args(out))  # space freed: the same command runs
    assert res.exit_code == 0, res.output
    assert (out / "prompt.safetensors").is_file() and (out / "split.txt").is_file()


def test_a_resumed_runs_activation_is_its_records_or_its_model_configs_or_unknown():
    """A checkpoint's CLIP record names its activation; an older one's has none, and its model
    config tells (quick_gelu set or not); a record that is missing or damaged tells nothing (None:
    the weights are compared by their hash next), not a KeyError out of --resume."""
    from clip_smot.clip.fit import _recorded_activation

    assert _recorded_activation({"activation": "gelu", "model_config": '{"quick_gelu": true}'}) == "gelu"
    assert _recorded_activation({"model_config": json.dumps({"quick_gelu": True})}) == "quick_gelu"
    assert _recorded_activation({"model_config": json.dumps({"embed_dim": 32})}) == "gelu"
    for record in (None, "clip", {}, {"model_config": "{not json"}, {"model_config": 5}):
        assert _recorded_activation(record) is None, record


def test_export_to_a_name_of_non_utf8_bytes_is_no_traceback(one_epoch, tmp_path):
    """--out named with bytes that are not UTF-8 (a shell passes them; Python keeps them as
    surrogates): the prompt was written, then the line naming it ended in a UnicodeEncodeError's
    traceback where stdout encodes strictly (PYTHONIOENCODING=utf-8, or a UTF-8 locale other
    than C.UTF-8: as CliRunner's). Found by fuzzing the flags; fit's 'prompt: OUT' line
    (cli.py:268) prints the same path after a real run."""
    out = tmp_path / (b"p\xff.safetensors".decode("utf-8", "surrogateescape"))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(one_epoch / "checkpoint.pt"), "--out", str(out),
                                   "--device", "cpu"])
    assert isinstance(res.exception, (SystemExit, type(None))), repr(res.exception)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert res.stdout == f"prompt written to {tmp_path}/p\\udcff.safetensors\n"  # (the byte as its escape)
    out.rename(tmp_path / "p.safetensors")  # (safetensors opens no path that is not UTF-8: one line, 'not valid')
    assert torch.equal(load_prompt(tmp_path / "p.safetensors").ctx, load_prompt(one_epoch / "prompt.safetensors").ctx)


def test_exports_line_names_an_out_holding_a_newline_as_text(one_epoch, tmp_path):
    """--out holding a newline (found by fuzzing the flags): the prompt was written, and the line
    naming it came out as two lines; every error line writes such a name through one_line (the
    character's escape, \\u000a). (An escape sequence is printed raw too, which click strips
    only where stdout is no terminal, as under CliRunner.)"""
    out = tmp_path / "a\nb.safetensors"
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(one_epoch / "checkpoint.pt"), "--out", str(out),
                                   "--device", "cpu"])
    assert res.exit_code == 0 and out.is_file(), res.output
    assert res.stdout == f"prompt written to {tmp_path}/a\\u000ab.safetensors\n", repr(res.stdout)
