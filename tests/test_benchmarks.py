"""The GPU check's helpers that run on the CPU: the choice of the e2e options, the e2e data preparation."""

from __future__ import annotations

import inspect
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import choose_fast  # noqa: E402

from clip_smot.clip.fit import FitConfig, resolve_speed


def _run_script(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python benchmarks/SCRIPT ARGS`` offline, with this checkout first on the path."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": ""})


def _write(path: Path, *lines: str) -> None:
    path.write_text("\n".join(lines) + "\n")


def _step(**ms) -> str:
    return json.dumps({"device": "cuda", **{f"ms_per_step{k}": v for k, v in ms.items()}})


def test_choose_fast_takes_the_fewest_ms_of_every_timed_variant(tmp_path):
    _write(tmp_path / "fit_step_square.log", "noise", _step(**{"": 30.0, "_overlap": 29.0, "_cuda_graph": 24.0,
                                                                "_overlap_cuda_graph": 25.0}))
    _write(tmp_path / "fit_step_fast.log", '{"partial": 1}', _step(**{"": 22.0, "_overlap": 21.5,
                                                                       "_cuda_graph": 18.0,
                                                                       "_overlap_cuda_graph": 17.0}))
    _write(tmp_path / "pytest_flex.log", "....", "4 passed, 20 deselected in 61.2s")
    assert choose_fast.choose(tmp_path) == "--text-attention flex --compile --cuda-graph --overlap-encoders"


def test_choose_fast_ignores_flex_timings_when_its_gpu_tests_failed_or_did_not_run(tmp_path):
    _write(tmp_path / "fit_step_square.log", _step(**{"": 30.0, "_cuda_graph": 24.0, "_overlap": None}))
    _write(tmp_path / "fit_step_fast.log", _step(**{"": 10.0}))
    square_graph = "--text-attention square --no-compile --cuda-graph --no-overlap-encoders"
    assert choose_fast.choose(tmp_path) == square_graph  # no pytest log
    _write(tmp_path / "pytest_flex.log", "F...", "1 failed, 3 passed in 50.0s")
    assert choose_fast.choose(tmp_path) == square_graph
    _write(tmp_path / "pytest_flex.log", "....", "4 passed in 50.0s")
    assert choose_fast.choose(tmp_path) == "--text-attention flex --compile --no-cuda-graph --no-overlap-encoders"


def test_choose_fast_falls_back_without_cuda_timings(tmp_path):
    assert choose_fast.choose(tmp_path) == choose_fast.FALLBACK
    _write(tmp_path / "fit_step_square.log", json.dumps({"device": "cpu", "ms_per_step": 1.0}))
    assert choose_fast.choose(tmp_path) == choose_fast.FALLBACK
    _write(tmp_path / "fit_step_square.log", "Traceback (most recent call last):", "{not json")
    assert choose_fast.choose(tmp_path) == choose_fast.FALLBACK


def _timed_by_gpu_check(step: str, monkeypatch) -> tuple[str, bool]:
    """(attention, compiled layers) of gpu_check.sh's fit_step.py step ``step`` on a GPU."""
    import fit_step

    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text().replace("\\\n", " ")
    words = shlex.split(re.search(rf"^ *{step}\) run_step {step} \d+ (.*?);;", text, re.M).group(1))
    seen, signature = {}, inspect.signature(fit_step.run)
    with monkeypatch.context() as m:
        m.setattr(fit_step, "run", lambda *a: seen.update(signature.bind(*a).arguments) or {})
        m.setenv("HF_HUB_OFFLINE", "1")  # (main sets it)
        fit_step.main(words[words.index("benchmarks/fit_step.py") + 1:])
    fit = resolve_speed(FitConfig(text_attention=seen["attention"], compile=seen["compile_layers"]), torch.device("cuda"))
    return fit.text_attention, fit.compile


def _speed_on_cuda(options: str) -> tuple:
    """The speed options that `clip-smot fit OPTIONS` runs with on CUDA (FlexAttention there)."""
    from clip_smot.cli import cli

    # (under the group's context, as `clip-smot fit` parses: a context of the command alone makes
    # click cache fit's help option without the group's -h, and `clip-smot fit -h` then fails)
    with cli.make_context("clip-smot", ["fit"]) as group:
        params = cli.commands["fit"].make_context("fit", shlex.split(options), parent=group).params
    names = ("text_attention", "compile", "cuda_graph", "overlap_encoders")
    fit = resolve_speed(FitConfig(**{k: params[k] for k in names}), torch.device("cuda"))  # (no GPU needed)
    return tuple(getattr(fit, k) for k in names)


def test_choose_fast_prints_the_fit_options_of_the_variant_that_was_timed(tmp_path, monkeypatch):
    """On a GPU fit's defaults turn every speed option on: the options chosen run exactly the
    timed variant (its attention, compiled or not, CUDA graph, overlap), as fit resolves them."""
    import clip_smot.clip.encoders as encoders

    monkeypatch.setattr(encoders, "flex_available", lambda device: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # an H100 / H200
    timed = {log: _timed_by_gpu_check(log, monkeypatch) for log in ("fit_step_square", "fit_step_fast")}
    assert timed == {"fit_step_square": ("square", False), "fit_step_fast": ("flex", True)}
    _write(tmp_path / "pytest_flex.log", "4 passed in 50.0s")
    variants = {"": (False, False), "_overlap": (False, True), "_cuda_graph": (True, False),
                "_overlap_cuda_graph": (True, True)}
    for log, text_options in timed.items():
        for suffix, step_options in variants.items():
            for name in timed:  # this variant the fastest of both logs
                _write(tmp_path / f"{name}.log", _step(**{s: 5.0 if (name, s) == (log, suffix) else 50.0
                                                          for s in variants}))
            assert _speed_on_cuda(choose_fast.choose(tmp_path)) == text_options + step_options, (log, suffix)
    assert _speed_on_cuda(choose_fast.FALLBACK) == ("square", False, True, False)  # what run 2 timed


def test_fit_e2e_prepare_only_writes_the_data_and_cam_net_and_fits_nothing(tmp_path):
    out = _run_script("fit_e2e.py", "--prepare-only", "--classes", "3", "--shots", "2", "--image-size", "40",
                      "--workers", "2", "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    classes = sorted(p for p in (tmp_path / "data" / "train").iterdir())
    assert len(classes) == 3 and all(len(list(c.glob("*.JPEG"))) == 2 for c in classes)
    assert (tmp_path / "data" / "done-3-2-40").is_file() and (tmp_path / "resnet18-random.pth").is_file()
    assert not list(tmp_path.glob("run-*")) and not list(tmp_path.glob("*.tmp*"))


def test_fit_e2e_runs_a_tiny_fit_and_reports_the_options_the_fit_resolved(tmp_path, tiny_clip_config):
    out = _run_script("fit_e2e.py", "--device", "cpu", "--classes", "2", "--shots", "2", "--epochs", "2",
                      "--batch-size", "2", "--image-size", "40", "--workers", "1", "--model", tiny_clip_config,
                      "--root", str(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["images"] == 4 and result["epochs"] == 2 and result["device"] == "cpu"
    assert [result[k] for k in ("text_attention", "compile", "cuda_graph", "overlap_encoders")] == [
        "causal", False, False, False]  # fit's CPU defaults, as resolved
    assert 0 < result["seconds_per_epoch"] and result["seconds_setup"] >= 0
    run = next(tmp_path.glob("run-*"))
    assert (run / "prompt.safetensors").is_file() and len((run / "log.jsonl").read_text().splitlines()) == 2


def test_fit_step_refuses_compiled_layers_of_a_layout_that_has_none():
    out = _run_script("fit_step.py", "--device", "cpu", "--attention", "causal", "--compile-layers")
    assert out.returncode == 1 and out.stderr.strip() == "--compile-layers needs --attention square or flex, not causal"


def _gpu_check(tmp_path: Path, only: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run gpu_check.sh with ``python3`` and ``nvidia-smi`` replaced by stubs that record their
    arguments: what the script would run on a GPU, in which order, under which limits."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)  # (a second call: the same machine, still warm)
    calls = tmp_path / "calls.txt"
    (bin_ / "python3").write_text(
        "#!/bin/bash\n"
        'echo "$*" >> "$CALLS"\n'
        'case "$*" in *fit_step.py*) [ -n "${FIT_STEP_SLEEP:-}" ] && exec sleep "$FIT_STEP_SLEEP";;\n'
        '  *"clip_smot reproduce"*) [ -n "${T8_SLEEP:-}" ] && sleep "$T8_SLEEP"; [ -n "${REPRODUCE_FAIL:-}" ] && exit 1;;\n'
        '  *"import torch, open_clip"*) [ -n "${NO_OPEN_CLIP:-}" ] && exit 1;; esac\n'
        'echo \'{"ms_per_step": 1.0}\'\n')
    (bin_ / "nvidia-smi").write_text("#!/bin/bash\necho 'name, memory.total [MiB], driver_version'\necho 'Stub GPU'\n")
    for stub in bin_.iterdir():
        stub.chmod(0o755)
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, capture_output=True,
                         text=True, timeout=60,
                         env={"PATH": f"{bin_}:/usr/bin:/bin", "CALLS": str(calls), "ONLY": only,
                              "OUT": str(tmp_path / "out"), "KEEP": str(tmp_path / "keep"),
                              "E2E_ROOT": str(tmp_path / "e2e"), "SMOKE_ROOT": str(tmp_path / "smoke"), **env})
    for _ in range(50):  # prepare_e2e's stub runs in the background
        if "--prepare-only" in calls.read_text() or "prepare_e2e" not in only + out.stdout:
            break
        time.sleep(0.1)
    return out, [c for c in calls.read_text().splitlines() if not c.startswith("-c ")]


def test_gpu_check_issue_runs_the_four_targets_once_each_with_the_50_epoch_fit(tmp_path):
    out, calls = _gpu_check(tmp_path, "issue")
    assert out.returncode == 0, out.stderr
    e2e = str(tmp_path / "e2e")
    prepare = [c for c in calls if "--prepare-only" in c]
    assert prepare == [f"benchmarks/fit_e2e.py --prepare-only --classes 1000 --shots 16 --image-size 256 --root {e2e}"]
    assert [c for c in calls if c not in prepare] == [
        "benchmarks/resnet_epoch.py --device cuda --variants cuda-graph --epochs 2 --skip-reference",
        "benchmarks/fit_step.py --device cuda --classes 1000 --batch-size 32 --steps 20",
        f"benchmarks/fit_e2e.py --device cuda --classes 1000 --shots 16 --epochs 50 --image-size 256 --root {e2e}",
    ]
    limits = re.findall(r"^=== (\w+) \(limit (\d+)s", out.stdout, re.M)
    assert limits == [("resnet_epoch_graph", "100"), ("fit_step_quick", "120"), ("fit_e2e", "400")]
    for step in ("resnet_epoch_graph", "fit_step_quick", "fit_e2e"):
        assert f"=== {step} rc=0" in out.stdout and (tmp_path / "keep" / f"{step}.log").is_file()
    assert re.search(r"^fit_e2e: \{\"ms_per_step\": 1.0\}$", out.stdout, re.M)  # the summary of the JSON lines


def test_gpu_check_scale_measures_decoding_and_score_then_writes_table8_data(tmp_path):
    """ONLY=scale: the nvJPEG tests, score_throughput (20,000 JPEGs, steady rates), then Table 8's
    data in the background; ONLY=table8 then times table8_time.sh on it with random weights."""
    t8 = tmp_path / "t8"
    out, calls = _gpu_check(tmp_path, "scale", T8_ROOT=str(t8))
    assert out.returncode == 0, out.stderr
    for _ in range(50):  # prepare_t8's stub runs in the background
        if (tmp_path / "calls.txt").read_text().count("fake_imagenet.py"):
            break
        time.sleep(0.1)
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls[-3:] == [
        "-m pytest -q -m gpu -p no:cacheprovider tests/clip/test_decoding.py",
        "benchmarks/score_throughput.py --device cuda --n 20000 --workers 16 --torchrun 1 --startup-n 1000",
        f"benchmarks/fake_imagenet.py {t8}/data --jobs 16 --distinct 2000 --random-models {t8}/models",
    ]
    assert re.findall(r"^=== (\w+) \(limit (\d+)s", out.stdout, re.M) == [("smoke", "180"), ("pytest_decode", "150"),
                                                                       ("score_throughput", "330")]
    (tmp_path / "calls.txt").write_text("")
    out, _ = _gpu_check(tmp_path, "table8", T8_ROOT=str(t8))
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert f"{ROOT}/benchmarks/fake_imagenet.py {t8}/data --classes 1000 --train-per-class 16 --val-per-class 50 " \
           f"--ood-per-set 10000 --size 500x375 --jobs 16 --distinct 2000 --random-models {t8}/models" in calls
    assert any(c.startswith(f"-m clip_smot reproduce table8 --imagenet {t8}/data/imagenet") for c in calls)


def test_gpu_check_table8_goes_on_past_the_deadline_and_table8_wait_collects_it(tmp_path):
    """The Table 8 pipeline may take more than one call's 10 minutes: ONLY=table8 starts it in a
    process session of its own and returns at DEADLINE saying it still runs; ONLY=table8_wait, the
    next call, waits for its end and returns its log with the timing line."""
    t8 = tmp_path / "t8"
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "smoke.passed").touch()  # (the smoke step passed in an earlier call on this machine)
    out, calls = _gpu_check(tmp_path, "table8", T8_ROOT=str(t8), DEADLINE="1", T8_SLEEP="3")
    assert out.returncode == 0, out.stderr
    assert "=== table8 started in the background" in out.stdout
    assert "=== table8 still running: call again at once with ONLY=table8_wait" in out.stdout
    reproduce = f"-m clip_smot reproduce table8 --imagenet {t8}/data/imagenet"
    for _ in range(300):  # the pipeline goes on in the background: on a loaded machine it may reach
        if any(c.startswith(reproduce) for c in calls):  # reproduce only after the call's 1 s
            break
        time.sleep(0.1)
        calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert any(c.startswith(reproduce) for c in calls) and not any(c.startswith("- ") for c in calls)
    out, calls = _gpu_check(tmp_path, "table8_wait", T8_ROOT=str(t8))
    assert out.returncode == 0, out.stderr
    assert re.search(r"^=== table8 ended", out.stdout, re.M)
    assert calls[-1].startswith("- ")  # (table8_time.sh's timing line, after reproduce ended)
    assert re.search(r"^table8: \{", out.stdout, re.M)  # (the summary reads the log's JSON line)


def test_gpu_check_smoke_runs_the_tiny_pipeline_on_cuda_first_once_a_machine_and_a_failure_stops_the_call(tmp_path):
    """ONLY=table8 and ONLY=scale start with the smoke step: table8_time.sh with TINY=1 on CUDA at tiny
    sizes (fit's CUDA defaults and the evaluations, about a minute), so that a CUDA-only failure ends
    the call in its first minute instead of after a 50-epoch fit. Where it fails, the steps after it
    are skipped (SMOKE_GO_ON=1 runs them); where it passed, a later call on the machine skips it."""
    t8, smoke = tmp_path / "t8", tmp_path / "smoke"
    out, calls = _gpu_check(tmp_path, "table8", T8_ROOT=str(t8), REPRODUCE_FAIL="1")
    assert out.returncode == 0, out.stderr
    assert re.findall(r"^=== (\w+) \(limit (\d+)s", out.stdout, re.M) == [("smoke", "180")]
    assert "=== smoke rc=1" in out.stdout and not (tmp_path / "keep" / "smoke.passed").exists()
    assert "=== table8 skipped: the smoke step failed (its log: smoke.log; SMOKE_GO_ON=1 runs the rest anyway)" \
        in out.stdout
    assert [c for c in calls if "reproduce table8" in c] == [
        f"-m clip_smot reproduce table8 --imagenet {smoke}/data/imagenet --ood-root {smoke}/data/ood --shots 17 "
        f"--device cuda --workers 2 --out {smoke}/out --model {{\"ms_per_step\": 1.0}} --pretrained "
        f"{{\"ms_per_step\": 1.0}} --cam-model {{\"ms_per_step\": 1.0}} --epochs 1"]  # (the stub's JSON for the paths)
    assert not (t8 / "table8.pid").exists()  # the long pipeline never started
    (tmp_path / "calls.txt").write_text("")
    out, calls = _gpu_check(tmp_path, "table8", T8_ROOT=str(t8))  # a new call on the same machine: it passes
    assert "=== smoke rc=0" in out.stdout and "=== table8 started in the background" in out.stdout
    assert [c.split(" --imagenet ")[1].split("/data/")[0] for c in calls if "reproduce table8" in c] == [
        str(smoke), str(t8)]
    (tmp_path / "calls.txt").write_text("")
    out, calls = _gpu_check(tmp_path, "scale", T8_ROOT=str(t8), REPRODUCE_FAIL="1")  # passed on this machine: once
    assert "=== smoke passed earlier on this machine" in out.stdout and "skipped" not in out.stdout
    assert not any("reproduce" in c for c in calls) and any("score_throughput.py" in c for c in calls)


def test_gpu_check_runs_the_gpu_tests_past_test_modules_the_device_cannot_import(tmp_path):
    """The lent machine has torch and the wheels of .whl/ (open_clip), not the test extra's webdataset
    and pytorch-ood: tests/clip/test_score_webdataset.py, tests/test_peer_ood.py and
    tests/resnet/test_reference_networks.py import them at the top, and `pytest -m gpu tests` stopped at
    collection ("Interrupted: 3 errors during collection") with none of the GPU tests run."""
    out, calls = _gpu_check(tmp_path, "pytest_gpu")
    assert out.returncode == 0, out.stderr
    assert [c for c in calls if "pytest" in c] == [
        "-m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests"]


def test_gpu_check_runs_no_step_where_open_clip_does_not_import(tmp_path):
    """.whl/ (open_clip's wheels) is git-ignored: a device call that does not carry it has no open_clip,
    and every step failed on its own import. The script says so once, runs nothing and exits 1."""
    out, calls = _gpu_check(tmp_path, "issue", NO_OPEN_CLIP="1")
    assert out.returncode == 1
    assert "=== python3 cannot import torch and open_clip or sees no GPU (above): no step runs" in out.stdout
    assert [c for c in calls if "benchmarks/" in c] == [] and "===" not in out.stdout.split("no step runs")[1]


def test_gpu_check_deadline_shortens_the_step_that_would_pass_it_and_skips_the_rest(tmp_path):
    t0 = time.monotonic()
    out, calls = _gpu_check(tmp_path, "fit_step_quick resnet_epoch_graph", DEADLINE="4", FIT_STEP_SLEEP="30")
    assert time.monotonic() - t0 < 20  # not fit_step_quick's 120 s nor the stub's 30 s
    # (the step starts 0-2 s in, even on a loaded machine, and gets what is left of the 4 s)
    at = re.search(r"^=== fit_step_quick \(limit (\d)s, at (\d)s\)$", out.stdout, re.M)
    assert at and int(at[2]) <= 2 and int(at[1]) == 4 - int(at[2]), out.stdout
    assert "=== fit_step_quick rc=124" in out.stdout  # timeout's exit status
    assert re.search(r"^=== resnet_epoch_graph skipped: \d+s of DEADLINE=4s gone$", out.stdout, re.M)
    assert not any("resnet_epoch.py" in c for c in calls)


def _smoke_result(**over) -> dict:
    result = {"total_s": 216.3, "base_id_accuracy": 97.78, "smot_id_accuracy": 99.33}
    for i, model in enumerate(("base", "smot")):
        for j, score in enumerate(("msp", "energy", "knn")):
            result[f"{model}_{score}_avg_fpr95_auroc"] = [10.0 * i + j + 0.5, 90.0 - j]
    return {**result, **over}


def test_smoke_table_lays_out_every_number_of_the_run():
    import smoke_table

    text = smoke_table.block(_smoke_result(), "Some CPU", "torch 9")
    rows = [line for line in text.splitlines() if line.startswith("| base") or line.startswith("| SMOT")]
    assert rows == ["| base (CE) | 97.78% | 0.50 / 90.00 | 1.50 / 89.00 | 2.50 / 88.00 |",
                    "| SMOT | 99.33% | 10.50 / 90.00 | 11.50 / 89.00 | 12.50 / 88.00 |"]
    assert "Some CPU" in text and "torch 9" in text and "216.3 s" in text
    assert text.startswith(smoke_table.BEGIN) and text.endswith(smoke_table.END)


def test_smoke_table_replaces_exactly_one_block_and_the_readme_has_one():
    import smoke_table

    new = smoke_table.block(_smoke_result(), "cpu", "libs")
    doc = f"before\n{smoke_table.BEGIN}\nold numbers\n{smoke_table.END}\nafter\n"
    assert smoke_table.replace_block(doc, new) == f"before\n{new}\nafter\n"
    for bad in ("no block here", doc + doc):
        try:
            smoke_table.replace_block(bad, new)
        except ValueError:
            continue
        raise AssertionError("a text without exactly one block was accepted")
    readme = (ROOT / "README.md").read_text()
    # the README's block is one the generator wrote: its numbers' rows have the generator's shape
    block = readme.split(smoke_table.BEGIN)[1].split(smoke_table.END)[0]
    assert re.search(r"^\| SMOT \| \d+\.\d\d% \| \d+\.\d\d / \d+\.\d\d \|", block, re.M)
    assert "Made by `benchmarks/smoke_digits.sh`" in block


def test_score_throughput_runs_tiny_on_the_cpu(tmp_path, tiny_clip_config):
    """benchmarks/score_throughput.py with the tiny CLIP: the reference and one score process
    both go through all 12 synthetic JPEGs, and the figures are n / seconds."""
    res = _run_script("score_throughput.py", "--device", "cpu", "--model", tiny_clip_config, "--n", "12", "--size",
                      "64x48", "--classes", "3", "--batch-size", "4", "--workers", "0", "--torchrun", "", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for k in ("reference", "score"):
        assert out[f"{k}_images_per_s"] == pytest.approx(12 / out[f"{k}_seconds"], rel=0.02)
    assert out["score_speedup"] == pytest.approx(out["reference_seconds"] / out["score_seconds"], rel=0.02)
    assert "score_torchrun_2_seconds" not in out
    # no CUDA here: the GPU-decoding run is skipped and says so, with no figure
    assert out["score_gpu_decode"].startswith("skipped: --decode gpu needs a CUDA device")
    assert not any(k.startswith("score_gpu_decode_") for k in out)


def test_score_throughput_steady_rates_leave_the_start_up_out(tmp_path, tiny_clip_config, monkeypatch):
    """--startup-n 4 of 12 JPEGs: every run is timed on the 12 and on the first 4 (a folder of
    those 4); steady rate = 8 / (seconds - seconds on 4), the steady speedup the ratio of the
    rates, None where the 12 took no longer than the 4 (here: score_torchrun_2)."""
    import score_throughput

    timed = []

    def fake_timed(cmd, env):  # what each run would take; a score run's CSV written as score writes it
        reference = "--reference-only" in cmd
        folder = Path(cmd[cmd.index("--reference-only") + 1] if reference else cmd[-1])
        n = len(list(folder.iterdir()))
        timed.append(n)
        if not reference:
            Path(cmd[cmd.index("--out") + 1]).write_text("path,pred,pred_index,mcm\n" + "row\n" * n)
        kind = "reference" if reference else "torchrun" if "torch.distributed.run" in cmd else "score"
        return {"reference": (10.0, 2.0), "score": (5.0, 3.0), "torchrun": (4.0, 4.0)}[kind][n != 12]

    monkeypatch.setattr(score_throughput, "_timed", fake_timed)
    out = score_throughput.main(["--device", "cpu", "--model", tiny_clip_config, "--n", "12", "--size", "40x30",
                                 "--classes", "3", "--jobs", "2", "--torchrun", "2", "--startup-n", "4"])
    assert timed == [12, 12, 12, 4, 4, 4]
    assert out["reference_steady_images_per_s"] == pytest.approx(8 / (10.0 - 2.0))
    assert out["score_steady_images_per_s"] == pytest.approx(8 / (5.0 - 3.0))
    assert out["score_steady_speedup"] == pytest.approx((8 / 2.0) / (8 / 8.0))
    assert out["score_torchrun_2_steady_images_per_s"] is None and out["score_torchrun_2_steady_speedup"] is None
    assert out["score_startup_seconds"] == 3.0 and out["score_images_per_s"] == pytest.approx(12 / 5.0)


def test_jpegs_written_in_processes_are_the_ones_asked_for(tmp_path):
    """score_throughput.write_jpegs: 7 JPEGs in chunks of 3 over 2 processes, named 0 to 6, each
    its own image; a chunk starting at 0 is make_jpegs' serial output byte for byte."""
    import hashlib

    from PIL import Image
    from score_throughput import make_jpegs, write_jpegs

    write_jpegs(tmp_path / "p", 7, (40, 30), jobs=2, chunk=3)
    files = sorted((tmp_path / "p").iterdir())
    assert [f.name for f in files] == [f"{i:07d}.jpg" for i in range(7)]
    assert all(Image.open(f).format == "JPEG" and Image.open(f).size == (40, 30) for f in files)
    assert len({hashlib.sha256(f.read_bytes()).hexdigest() for f in files}) == 7
    make_jpegs(tmp_path / "s", 3, (40, 30))
    assert [f.read_bytes() for f in sorted((tmp_path / "s").iterdir())] == [f.read_bytes() for f in files[:3]]


def test_score_streaming_reports_memory_and_worker_times_at_tiny_sizes():
    out = _run_script("score_streaming.py", "--list-n", "3000", "--n", "96", "--size", "40x30", "--chunk", "32",
                      "--batch-size", "16", "--workers", "2", "--jobs", "1")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    listing, workers = result["listing"], result["workers"]
    assert listing["list_n"] == 3000 and max(listing["count_peak_mb"], listing["chunks_peak_mb"],
                                             listing["resume_peak_mb"]) < listing["list_peak_mb"]
    assert workers["chunks"] == 3 and workers["bit_identical"] is True
    assert all(workers[f"{k}_seconds"] > 0 for k in ("new_loader_a_chunk", "kept_workers", "one_chunk"))


def test_tar_pax_header_times_a_listing_of_each_crafted_shard(tmp_path):
    """Each size is one shard of a pax header of that many digits and a PNG member, which score's
    listing finds (the header is parsed, however slowly), and a time."""
    import tarfile

    from tar_pax_header import crafted_shard

    crafted_shard(tmp_path / "s.tar", 3000)
    with tarfile.open(tmp_path / "s.tar") as tar:
        assert [m.name for m in tar.getmembers()] == ["k.png"]  # (the pax header is no member of its own)
    out = _run_script("tar_pax_header.py", "--kib", "1,2")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(result["seconds_by_kib"]) == ["1", "2"] and all(t >= 0 for t in result["seconds_by_kib"].values())
    assert "::k.png']" in out.stderr


def test_fake_imagenet_distinct_links_every_image_to_one_of_n_jpegs(tmp_path):
    """--distinct 4: the same folders and file names as without it, every image a hard link to one
    of the pool's 4 JPEGs, taken in turn (so each is used), and done.json records it."""
    import os

    args = ["--classes", "2", "--train-per-class", "3", "--val-per-class", "2", "--ood-per-set", "3",
            "--size", "40x30", "--jobs", "2"]
    for root, extra in ((tmp_path / "all", []), (tmp_path / "linked", ["--distinct", "4"])):
        out = _run_script("fake_imagenet.py", str(root), *args, *extra)
        assert out.returncode == 0, out.stderr

    def images(root):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg") if p.parts[len(root.parts)] != "pool")
    linked = tmp_path / "linked"
    assert images(linked) == images(tmp_path / "all") and len(images(linked)) == 2 * (3 + 2) + 4 * 3
    pool = {os.stat(p).st_ino: p.name for p in (linked / "pool").glob("*.jpg")}
    used = [pool[os.stat(linked / name).st_ino] for name in images(linked)]
    assert len(pool) == 4 and sorted(set(used)) == sorted(pool.values())
    assert all(os.stat(p).st_nlink > 1 for p in (linked / "pool").glob("*.jpg"))
    assert json.loads((linked / "done.json").read_text())["distinct"] == 4


def test_table8_time_dry_run_writes_the_data_and_prints_the_five_stages(tmp_path):
    """benchmarks/table8_time.sh at tiny sizes with DRY_RUN=1: the synthetic ImageNet and OOD
    folders hold the images asked for, at the size asked for, and reproduce prints the five
    Table 8 commands on them with the tiny models and the sizes passed on (a real tiny run takes
    over a minute here: benchmarks/RESULTS.md)."""
    from PIL import Image

    from clip_smot.common.bundled import imagenet_wnids

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "TINY": "1", "DRY_RUN": "1",
           "DEVICE": "cpu", "WORKERS": "0", "JOBS": "2", "CLASSES": "2", "SHOTS": "3", "VAL_PER_CLASS": "2",
           "OOD_PER_SET": "1", "SIZE": "40x30", "EPOCHS": "1"}
    work = tmp_path / "t8"
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "table8_time.sh"), str(work)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    data = work / "data"
    wnids = imagenet_wnids()[:2]
    assert sorted(p.name for p in (data / "imagenet" / "train").iterdir()) == sorted(wnids)
    assert [len(list((data / "imagenet" / s / w).glob("*.jpg"))) for s in ("train", "val") for w in wnids] == [3, 3, 2, 2]
    assert sorted(p.name for p in (data / "ood").iterdir()) == ["Places", "SUN", "Textures", "iNaturalist"]
    image = next((data / "ood" / "SUN").glob("*.jpg"))
    assert Image.open(image).size == (40, 30) and Image.open(image).format == "JPEG"
    commands = [line for line in res.stdout.splitlines() if line.startswith("clip-smot ")]
    assert [shlex.split(c)[1] for c in commands] == ["fit", "fit", "eval", "eval", "eval"]
    for c in commands:
        words = shlex.split(c)
        assert words[words.index("--model") + 1] == str(work / "models" / "clip-smot-tiny.json")
        assert words[words.index("--device") + 1] == "cpu"
    assert "--epochs 1" in commands[0] and "--shots 3" in commands[0]
    assert not (work / "out").exists()  # a dry run writes no stage


def test_table8_time_cpu_smoke_command_is_one_and_gives_knn_its_images():
    """The CPU smoke run that table8_time.sh's header and benchmarks/README.md give is the same
    command, and its CLASSES x SHOTS training images are as many as KNN's neighbour rank needs (a
    header with SHOTS=2 ran for a minute, then eval-coop refused its 6 images)."""
    from clip_smot import scores

    def smoke(text: str) -> str:
        match = re.search(r"(TINY=1 DEVICE=cpu [^\\\n]*)\\\s*\n#?\s*(bash benchmarks/table8_time.sh \S+)", text)
        assert match, "no CPU smoke command"
        return " ".join(match.groups())

    header = smoke((ROOT / "benchmarks" / "table8_time.sh").read_text())
    assert header == smoke((ROOT / "benchmarks" / "README.md").read_text())
    sizes = dict(word.split("=") for word in header.split() if "=" in word)
    assert int(sizes["CLASSES"]) * int(sizes["SHOTS"]) >= scores.KNN_K
