from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clip_smot.cli import cli


def test_help_lists_the_six_commands():
    out = CliRunner().invoke(cli, ["--help"])
    assert out.exit_code == 0
    for name in ("fit", "score", "eval", "train", "export", "reproduce"):
        assert f"  {name} " in out.output
    assert sorted(cli.commands) == ["eval", "export", "fit", "reproduce", "score", "train"]


def test_dash_h_is_help_as_well():
    """-h answers as --help does, for the group and for each command (docs: `clip-smot fit -h`)."""
    for argv in ([], ["fit"], ["score"], ["eval"], ["train"], ["export"], ["reproduce"]):
        short, long = CliRunner().invoke(cli, [*argv, "-h"]), CliRunner().invoke(cli, [*argv, "--help"])
        assert short.exit_code == 0 and short.output == long.output and "Usage:" in short.output, argv


def test_each_command_takes_dash_h_when_parsed_alone():
    """A command parsed without the group (``cli.commands["train"].make_context(...)``, as tests do)
    had only --help, and click kept that help option: `clip-smot train -h` then failed in the same
    process ("No such option '-h'"), in every test after such a parse."""
    for name, command in cli.commands.items():
        ctx = click.Context(command, info_name=name, **command.context_settings)
        assert set(command.get_help_option_names(ctx)) == {"-h", "--help"}, name  # (click < 8.5: in any order)


@pytest.mark.parametrize("command", ["score", "eval", "train"])
def test_device_help_names_cuda_n_where_the_command_takes_it(command):
    """score, eval and train take --device cuda:N (README, "Commands"; a wrong one is answered with
    "choose auto, cpu, cuda or cuda:N"), but their --help said only "auto, cpu or cuda"."""
    import re

    out = CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output
    device = re.search(r"--device TEXT\s+(.*)", out).group(1)
    assert "cuda:N" in device, device


def test_the_cli_starts_without_open_clip_or_dynamo():
    """open_clip (about 2 s), torch._dynamo (about 1 s), scikit-learn (about 2 s) and matplotlib are
    imported only by the commands that use them."""
    import subprocess
    import sys

    code = ("import sys, clip_smot.cli; print(sorted(m for m in ('open_clip', 'torch._dynamo', 'sklearn', "
            "'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


BAD_FLAGS = [
    # (argv, the flag the line must name)
    (["fit", "--beta", "inf", "--dry-run"], "--beta"),  # inf passed click's range and hung the Beta draw
    # a whole batch is decoded and held at once: 10**9 images of 224 pixels would fill any memory
    (["score", "--prompt", "p", "--batch-size", "1000000000", "--out", "o.csv", "x.png"], "--batch-size"),
    (["eval", "--zero-shot", "--id", "x", "--batch-size", "4097", "--out", "o"], "--batch-size"),
    (["train", "--dataset", "digits", "--batch-size", "100000", "--out", "o"], "--batch-size"),
    (["fit", "--batch-size", "5000", "--dry-run"], "--batch-size"),
    (["fit", "--alpha", "nan", "--dry-run"], "--alpha"),
    (["fit", "--lr", "inf", "--dry-run"], "--lr"),
    (["fit", "--momentum", "nan", "--dry-run"], "--momentum"),
    (["fit", "--weight-decay", "inf", "--dry-run"], "--weight-decay"),
    (["train", "--dataset", "digits", "--beta", "inf", "--out", "o"], "--beta"),
    (["train", "--dataset", "digits", "--sigma", "nan", "--out", "o"], "--sigma"),
    (["train", "--dataset", "digits", "--epochs", "-1", "--out", "o"], "--epochs"),
    (["train", "--out", "o"], "--dataset"),
    (["score", "--prompt", "p.safetensors", "--batch-size", "0", "--out", "s.csv", "x"], "--batch-size"),
    (["score", "--out", "s.csv", "x"], "--prompt"),
    (["eval", "--zero-shot", "--id", "x", "--ood", "=foo", "--out", "e"], "--ood"),
    (["eval", "--zero-shot", "--id", "x", "--ood", "a=b", "--ood", "a=c", "--out", "e"], "--ood"),
    (["eval", "--id", "x", "--ood", "a=b", "--out", "e"], "--zero-shot"),
    (["export", "--checkpoint", "c.pt"], "--out"),
    # seeds beyond what torch (64 bits) and numpy (no negatives) take were tracebacks; so were sizes that
    # were allocated before anything said no (--input-size 100000: killed for memory), and devices
    (["fit", "--seed", "-1", "--dry-run"], "--seed"),
    (["fit", "--seed", str(2**64), "--dry-run"], "--seed"),
    (["fit", "--seed", str(2**63), "--dry-run"], "--seed"),
    (["train", "--dataset", "digits", "--seed", "-1", "--out", "o"], "--seed"),
    (["train", "--dataset", "digits", "--seed", str(2**64 + 5), "--out", "o"], "--seed"),
    (["train", "--dataset", "digits", "--input-size", "100000", "--out", "o"], "--input-size"),
    (["train", "--dataset", "digits", "--device", "meta", "--out", "o"], "--device meta: not supported"),
    (["train", "--dataset", "digits", "--device", "mps", "--out", "o"], "--device mps: not supported"),
    (["train", "--dataset", "digits", "--device", "gpu7", "--out", "o"], "--device gpu7: not a device"),
    (["fit", "--device", "meta", "--dry-run"], "--device"),
    (["fit", "--workers", "1000000", "--dry-run"], "--workers"),  # a thread per image, then "can't start new thread"
    (["score", "--prompt", "p.safetensors", "--workers", "100000", "--out", "s.csv", "x"], "--workers"),
    (["train", "--dataset", "digits", "--workers", "257", "--out", "o"], "--workers"),
    # an empty path (an unset "$OUT") was the working directory: the run's files were written there
    (["train", "--data", "d", "--out", ""], "Invalid value for '--out': an empty path"),
    (["eval", "--checkpoint", "m.safetensors", "--id", "x", "--ood", "a=b", "--out", ""],
     "Invalid value for '--out': an empty path"),
    (["train", "--data", "", "--out", "o"], "Invalid value for '--data': an empty path"),
    # a NUL byte (from a Python caller: no shell passes one) was a ValueError's traceback at the first file call
    *[(argv, f"Invalid value for '{flag}': a path holding a NUL byte, which no file name can")
      for flag, argv in (("--out", ["fit", "--out", "r\0", "--dry-run"]), ("--split", ["fit", "--split", "s\0.txt"]),
                         ("--checkpoint", ["export", "--checkpoint", "c\0.pt", "--out", "p"]),
                         ("--ood-root", ["reproduce", "table1", "--out", "o", "--ood-root", "\0", "--dry-run"]))],
    # --id "" read the working directory as the ID set; --id-train "" took the model's own data
    (["eval", "--checkpoint", "m.safetensors", "--id", "", "--ood", "a=b", "--out", "e"],
     "Invalid value for '--id': an empty path"),
    (["eval", "--zero-shot", "--id", "x", "--id-train", "", "--ood", "a=b", "--out", "e"],
     "Invalid value for '--id-train': an empty path"),
    # an empty text flag (an unset "$WEIGHTS") was random weights, an empty --ctx-init a random context
    *[(argv, f"Invalid value for '{flag}': an empty value (an unset shell variable?){hint}")
      for flag, hint in (("--pretrained", "; 'none' is random weights"), ("--model", ""), ("--cam-model", ""))
      for argv in (["fit", flag, "", "--dry-run"], ["reproduce", "table8", flag, " ", "--dry-run"])],
    *[(argv, f"Invalid value for '{flag}': an empty value (an unset shell variable?)")
      for flag in ("--pretrained", "--model")
      for argv in (["score", "--prompt", "p.safetensors", flag, "", "--out", "s.csv", "x"],
                   ["eval", "--zero-shot", flag, "", "--id", "x", "--ood", "a=b", "--out", "e"],
                   ["export", "--checkpoint", "c.pt", flag, "", "--out", "p"])],
    *[(["fit", "--ctx-init", words, "--dry-run"],
       "Invalid value for '--ctx-init': an empty value (an unset shell variable?); leave the flag out for a "
       "random context") for words in ("", "  ", "\t")],
    (["score", "--prompt", "p.safetensors", "--scores", "", "--out", "s.csv", "x"], "'--scores': an empty value"),
    (["train", "--dataset", "digits", "--device", "", "--out", "o"], "'--device': an empty value"),
    (["export", "--checkpoint", "c.pt", "--out", "p", "--device", "mps"], "--device"),
    (["score", "--prompt", "p.safetensors", "--precision", "fp8", "--out", "s.csv", "x"], "--precision"),
    (["eval", "--checkpoint", "m.safetensors", "--precision", "bf16", "--id", "x", "--ood", "a=b", "--out", "e"],
     "--precision is for the CLIP track"),
    (["eval", "--checkpoint", "m.safetensors", "--precision", "fp32", "--id", "x", "--ood", "a=b", "--out", "e"],
     "--precision is for the CLIP track"),  # (any value but auto, as --model or --decode: a ResNet's is fixed)
    # the CLIP track's other options were ignored with --checkpoint (--decode gpu even on a machine without CUDA)
    *[(["eval", "--checkpoint", "m.safetensors", *extra, "--id", "x", "--ood", "a=b", "--out", "e"],
       f"{extra[0]} is for the CLIP track") for extra in (["--model", "ViT-B-16"], ["--pretrained", "openai"],
                                                          ["--no-cache"], ["--decode", "gpu"], ["--decode", "cpu"])],
    (["reproduce", "table8", "--workers", "257", "--dry-run"], "--workers"),  # (every command: [0, 256])
    # an int flag takes no fraction (through a float range, 1.5 epochs would reach the library: a traceback)
    (["fit", "--epochs", "2.5", "--dry-run"], "Invalid value for '--epochs': '2.5' is not a valid integer range."),
    (["train", "--dataset", "digits", "--epochs", "1.5", "--out", "o"], "--epochs"),
    # inf is refused by the flag's own type, before any library code runs
    (["fit", "--beta", "inf", "--dry-run"], "Invalid value for '--beta': inf is not a finite number"),
    (["eval", "--zero-shot", "--id", "x", "--ood", "a=", "--out", "e"], "--ood: 'a=': expected NAME=DIR"),
    *[(["eval", *given, "--id", "x", "--ood", "a=b", "--out", "e"],
       "give exactly one of --prompt, --zero-shot or --checkpoint")
      for given in (["--zero-shot", "--checkpoint", "m.safetensors"], ["--prompt", "p.safetensors", "--zero-shot"],
                    [])],  # (none of them: the same line, not an error of whatever ran without one)
    (["eval", "--checkpoint", "m.safetensors", "--split", "s.txt", "--id", "x", "--ood", "a=b", "--out", "e"],
     "--split is for the CLIP track"),
    # an --id-train or --split that no requested score reads was ignored, a mistyped folder too
    *[(["eval", *track, *given, "--id", "x", "--ood", "a=b", "--out", "e"], f"{given[0]} {given[1]}: only react, knn")
      for track in (["--zero-shot"], ["--prompt", "p.safetensors", "--scores", "mcm,energy"],
                    ["--checkpoint", "m.safetensors"])
      for given in (["--id-train", "trian"], ["--split", "s.txt"])
      if not (track[0] == "--checkpoint" and given[0] == "--split")],
]


def test_bad_flags_give_one_line_in_every_command(tmp_path, monkeypatch):
    """docs/method.md §6: one line naming the flag, non-zero exit, no usage block, nothing written."""
    monkeypatch.chdir(tmp_path)
    for argv, flag in BAD_FLAGS:
        res = CliRunner().invoke(cli, argv)
        lines = res.output.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1 and flag in lines[0], (argv, res.output)
        assert "Usage:" not in res.output and "Traceback" not in res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
    assert list(tmp_path.iterdir()) == []


def test_under_torchrun_only_train_score_and_clip_eval_run(tmp_path, monkeypatch):
    """fit, export and the ResNet track's eval do not share their work between processes: under
    torchrun each process would do all of it (on the same GPU, into the same files). One line,
    nothing written. (score and eval --prompt/--zero-shot share it: tests/common/test_distributed.py.)"""
    monkeypatch.chdir(tmp_path)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500")):  # (what torchrun sets)
        monkeypatch.setenv(name, value)
    for argv, what in ((["fit", "--out", "f"], "fit"),
                       (["eval", "--checkpoint", "m.safetensors", "--id", "x", "--ood", "a=b", "--out", "e"],
                        "eval --checkpoint"),
                       (["export", "--checkpoint", "c.pt", "--out", "p.safetensors"], "export")):
        r = CliRunner().invoke(cli, argv)
        assert r.exit_code == 1 and r.output == (f"Error: {what} runs in one process; under torchrun (2 processes) "
                                                 "only train, score and eval --prompt/--zero-shot share the work: "
                                                 "run it without torchrun\n"), r.output
    assert list(tmp_path.iterdir()) == []
    for name in ("fit", "export", "reproduce", "train"):  # (--help was refused too)
        r = CliRunner().invoke(cli, [name, "--help"])
        assert r.exit_code == 0 and r.output.startswith(f"Usage: cli {name} [OPTIONS]"), r.output
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert "runs in one process" not in CliRunner().invoke(cli, ["export", "--checkpoint", "c.pt", "--out", "p"]).output


@pytest.mark.parametrize("command", ["fit", "train"])
def test_a_real_ctrl_c_still_says_how_to_resume(command, monkeypatch, tmp_path):
    """A SIGINT (not only a KeyboardInterrupt raised in Python) during fit or train: the line says
    which checkpoint to --resume from. The group's 'an error after a SIGINT is an interruption'
    fallback replaced that line with the bare 'interrupted'."""
    import os
    import signal

    import clip_smot.cli as cli_module

    def run(cfg, **kwargs):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "checkpoint.pt").write_bytes(b"saved")
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli_module, f"run_{command}", run)
    args = ["--data", str(tmp_path), "--out", str(tmp_path / "run")]
    res = CliRunner().invoke(cli, [command, *args])
    assert res.exit_code == 130, res.output
    assert res.output.strip() == (f"Error: interrupted; {tmp_path / 'run' / 'checkpoint.pt'} holds the last "
                                  "finished epoch: continue with the same command and --resume"), res.output


def test_a_ctrl_c_as_click_tears_the_command_down_is_the_one_line(monkeypatch, tmp_path):
    """A SIGINT whose KeyboardInterrupt is raised after the group's invoke has returned, as click's
    main leaves the root context (ctx.exit(), Context.close): click catches it itself and prints
    'Aborted!', exit code 1. Raising the interrupt at each traced line after fit's last line of
    output gave 'Aborted!' at every point from click/core.py's main (ctx.exit) through the root
    context's close (about 40 lines, tens of microseconds: a kill-fuzzer hit it once near the end of
    a fit). The signal is sent from a close callback of the root context, one of those points."""
    import os
    import signal

    import clip_smot.cli as cli_module

    def run(cfg, **kwargs):
        click.get_current_context().find_root().call_on_close(lambda: os.kill(os.getpid(), signal.SIGINT))
        return tmp_path / "run"

    monkeypatch.setattr(cli_module, "run_fit", run)
    res = CliRunner().invoke(cli, ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert "Aborted!" not in res.output
    assert res.exit_code == 130 and res.stderr.strip().startswith("Error: interrupted"), res.output


def test_a_ctrl_c_as_click_tears_a_failed_command_down_keeps_its_error(monkeypatch, tmp_path):
    """The same SIGINT after a command that failed: its own line and exit code 1 stand, no 'interrupted'."""
    import os
    import signal

    import clip_smot.cli as cli_module
    from clip_smot.common.errors import UserError

    def run(cfg, **kwargs):
        click.get_current_context().find_root().call_on_close(lambda: os.kill(os.getpid(), signal.SIGINT))
        raise UserError("the data is wrong")

    monkeypatch.setattr(cli_module, "run_fit", run)
    res = CliRunner().invoke(cli, ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and res.output.strip() == "Error: the data is wrong", res.output


def test_a_ctrl_c_a_library_swallowed_still_ends_the_command_as_interrupted(monkeypatch):
    """A SIGINT that lands while a pybind11 extension module initialises (triton._C.libtriton, which
    torch imports lazily under 'try: import triton / except ImportError'): pybind11 turns the
    KeyboardInterrupt into ImportError('initialization failed'), torch takes it for 'no triton', and
    the command ran on to the end, exit code 0, nothing on stderr (a kill-fuzzer: score, SIGINT at
    6.8 s, the run finished at 21 s). The SIGINT was seen (the group records it), so the command
    should end as interrupted all the same."""
    import os
    import signal

    import clip_smot.cli as cli_module

    def run_score(cfg):
        try:
            try:
                os.kill(os.getpid(), signal.SIGINT)  # (lands in the extension module's initialisation)
            except KeyboardInterrupt as e:
                raise ImportError("initialization failed") from e  # (what pybind11's module init makes of it)
        except ImportError:
            pass  # (torch: triton = None)
        return []

    monkeypatch.setattr(cli_module, "run_score", run_score)
    res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "x"])
    assert res.exit_code == 130 and res.stderr == "Error: interrupted\n", res.output


def test_a_ctrl_c_lost_at_a_worker_start_is_still_an_interruption(monkeypatch):
    """Ctrl-C while DataLoader workers start can be swallowed by a fork hook; the worker it killed then
    surfaces as RuntimeError('DataLoader worker ... exited unexpectedly'): a traceback, exit code 1. A
    SIGINT seen during the command makes that error the one 'interrupted' line, exit code 130; without
    one, the error is not hidden."""
    import os
    import signal

    import clip_smot.cli as cli_module

    def run_score(cfg):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # (lost, as in a fork hook)
        raise RuntimeError("DataLoader worker (pid 123) exited unexpectedly")

    monkeypatch.setattr(cli_module, "run_score", run_score)
    res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "x"])
    assert res.exit_code == 130 and res.output.strip() == "Error: interrupted", res.output
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (restored)

    def failing(cfg):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli_module, "run_score", failing)
    res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "x"])
    assert res.exit_code == 1 and isinstance(res.exception, RuntimeError)


def test_a_command_runs_from_a_thread_other_than_the_main_one(monkeypatch):
    """Only the main thread may set a signal handler: from another thread (a library caller's
    worker thread) the group installs none, and the command runs as it does in the main one."""
    import signal
    import threading

    import clip_smot.cli as cli_module

    monkeypatch.setattr(cli_module, "run_score", lambda cfg: [])
    got = []
    thread = threading.Thread(target=lambda: got.append(
        CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "x"])))
    thread.start()
    thread.join(timeout=60)
    assert got[0].exit_code == 0 and got[0].exception is None and got[0].output == "", got[0].output
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the console script's main too: the handler for a Ctrl-C after the command is the main thread's to set
    import sys

    monkeypatch.setattr(sys, "argv", ["clip-smot", "--version"])
    ended = []

    def run_main():
        try:
            cli_module.main()
        except BaseException as e:  # noqa: BLE001 (click's SystemExit; anything else fails below)
            ended.append(e)

    thread = threading.Thread(target=run_main)
    thread.start()
    thread.join(timeout=60)
    assert len(ended) == 1 and isinstance(ended[0], SystemExit) and ended[0].code == 0, ended
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_in_a_reproduce_stage_says_to_rerun_reproduce(monkeypatch, tmp_path):
    """A stage's own line said 'continue with the same command and --resume', which reproduce has
    not: reproduce resumes by itself when run again."""
    import os
    import signal

    import clip_smot.cli as cli_module

    def run_fit(cfg, **kwargs):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "checkpoint.pt").write_bytes(b"saved")
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli_module, "run_fit", run_fit)
    with pytest.raises(cli_module._Interrupted) as e:
        cli_module._run_stage(["fit", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert e.value.format_message() == (f"interrupted in the stage {tmp_path / 'run'}; run the same reproduce command "
                                        "again: finished stages are skipped, and an interrupted fit or training "
                                        "resumes")


def test_a_usage_error_quoting_a_control_character_is_one_line():
    """click quotes an unexpected argument as given: a newline or an escape sequence in it would
    break the one line (or act on the terminal); each is written as its escape."""
    res = CliRunner().invoke(cli, ["export", "--checkpoint", "c.pt", "--out", "p", "ex\ntra\x1b[31m"])
    assert res.exit_code == 1 and res.output == "Error: Got unexpected extra argument (ex\\u000atra\\u001b[31m)\n"


def test_score_lists_every_skipped_image_on_stderr(monkeypatch):
    """--skip-unreadable: the count, then one line per skipped image, on stderr (stdout stays clean)."""
    import clip_smot.cli as cli_module

    monkeypatch.setattr(cli_module, "run_score", lambda cfg: [("a.png", "a.png: not an image"),
                                                              ("b.png", "b.png: truncated")])
    res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "x"])
    assert res.exit_code == 0 and res.stdout == ""
    assert res.stderr == "Skipped 2 unreadable image(s):\n  a.png: not an image\n  b.png: truncated\n"


def test_score_lists_a_skipped_image_named_with_a_newline_on_one_line(monkeypatch):
    """A file named "a\nError: x.png" printed a line of its own, which read as an error of another file."""
    import clip_smot.cli as cli_module

    monkeypatch.setattr(cli_module, "run_score", lambda cfg: [("a\nError: x.png", "a\nError: x.png: not an image")])
    res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "x"])
    assert res.exit_code == 0 and res.stderr == "Skipped 1 unreadable image(s):\n  a\\u000aError: x.png: not an image\n"


def test_a_ctrl_c_in_score_names_the_partial_only_where_there_is_one(monkeypatch, tmp_path):
    """docs/score.md: Ctrl-C's line names OUT.partial, to continue with --resume; before its first
    row there is none to name, and nothing to resume: the bare line (score has no checkpoint)."""
    import clip_smot.cli as cli_module

    def run_score(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "run_score", run_score)
    out = tmp_path / "s.csv"
    argv = ["score", "--prompt", "p.safetensors", "--out", str(out), "x"]
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 130 and res.output == "Error: interrupted\n", res.output
    (tmp_path / "s.csv.partial").write_text("path,pred\n")
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 130 and res.output == (f"Error: interrupted; {tmp_path / 's.csv.partial'} holds the rows "
                                                   "written so far: continue with the same command and --resume\n")


def test_fit_names_the_prompt_it_wrote_and_a_dry_run_names_none(monkeypatch, tmp_path):
    """The last line of fit is the prompt's path (docs/fit.md); a dry run writes nothing, so names nothing."""
    import clip_smot.cli as cli_module

    monkeypatch.setattr(cli_module, "run_fit", lambda cfg, **kwargs: tmp_path / "run")
    res = CliRunner().invoke(cli, ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0 and res.output == f"prompt: {tmp_path / 'run' / 'prompt.safetensors'}\n", res.output
    res = CliRunner().invoke(cli, ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--dry-run"])
    assert res.exit_code == 0 and res.output == "", res.output


@pytest.mark.parametrize("command", ["fit", "train"])
def test_a_ctrl_c_in_a_dry_run_names_no_checkpoint(command, monkeypatch, tmp_path):
    """A dry run writes nothing: its Ctrl-C is the bare line, even where --out holds a run's checkpoint."""
    import clip_smot.cli as cli_module

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"saved")

    def run(cfg, **kwargs):
        assert kwargs["dry_run"] is True
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, f"run_{command}", run)
    res = CliRunner().invoke(cli, [command, "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--dry-run"])
    assert res.exit_code == 130 and res.output == "Error: interrupted\n", res.output


def test_a_failing_reproduce_stage_is_named_by_its_command_and_out(tmp_path):
    """reproduce runs many commands: the line of one that fails says which, by its command and --out."""
    import click

    import clip_smot.cli as cli_module

    out = str(tmp_path / "p.safetensors")
    with pytest.raises(click.ClickException) as e:
        cli_module._run_stage(["export", "--checkpoint", "c.pt", "--out", out, "extra"])
    assert e.value.format_message() == f"clip-smot export --out {out}: Got unexpected extra argument (extra)"
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_silences_torchs_advice_on_the_worker_count(monkeypatch):
    """--workers beyond the CPU count makes torch warn over several lines before the run's
    one-line result or error: the console entry point ignores that warning (its other warnings stay)."""
    import os

    import torch
    from helpers import warnings_main_lets_through

    def too_many_workers():
        loader = torch.utils.data.DataLoader(range(2), num_workers=(os.cpu_count() or 1) + 1)
        loader.check_worker_number_rationality()  # (torch's own warning, as iter(loader) gives it)

    assert warnings_main_lets_through(monkeypatch, too_many_workers) == ["another"]


def test_the_command_line_silences_pils_warning_on_an_image_between_its_pixel_limit_and_twice_it(monkeypatch,
                                                                                                   tmp_path):
    """PIL warns in two lines on an image of more pixels than its limit (up to twice it, which it
    refuses): such an image decodes, and the console entry point ignores that warning."""
    from helpers import warnings_main_lets_through
    from PIL import Image

    Image.new("RGB", (10, 10)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # (100 pixels: over the limit, under twice it)

    def open_big():
        with Image.open(tmp_path / "big.png") as im:
            im.load()

    assert warnings_main_lets_through(monkeypatch, open_big) == ["another"]


def test_the_command_line_silences_torchs_remark_on_a_plain_pickle(monkeypatch, tmp_path):
    """A plain pickle (protocol 4) given as export's --checkpoint, fit's --cam-model or a
    --pretrained file made torch.load warn over two lines before the one line refusing it."""
    import contextlib
    import pickle

    import torch
    from helpers import warnings_main_lets_through

    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"ctx": [1.0]}, protocol=4))

    def load_plain_pickle():
        with contextlib.suppress(pickle.UnpicklingError):
            torch.load(path, weights_only=True)

    assert warnings_main_lets_through(monkeypatch, load_plain_pickle) == ["another"]


def test_the_command_line_silences_torchs_remark_on_a_sparse_tensor(monkeypatch, tmp_path):
    """A sparse tensor in a --cam-model, --pretrained or checkpoint file made torch.load warn
    (once per tensor, 'Validating sparse tensor invariants ...') before the one line refusing it."""
    import torch
    from helpers import warnings_main_lets_through

    path = tmp_path / "sparse.pt"
    torch.save({"bn1.weight": torch.ones(4).to_sparse()}, path)
    assert warnings_main_lets_through(monkeypatch, lambda: torch.load(path, weights_only=True)) == ["another"]


def test_the_command_line_silences_torchs_remark_on_a_torchscript_archive(monkeypatch, tmp_path):
    """A TorchScript archive given as --cam-model or a checkpoint made torch.load warn over two lines
    ("'torch.load' received a zip file that looks like a TorchScript archive ...") before the line
    refusing it."""
    import contextlib
    import warnings

    import torch
    from helpers import warnings_main_lets_through

    path = tmp_path / "ts.pt"
    with warnings.catch_warnings():  # (torch.jit's deprecation)
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))

    def load_archive():
        with contextlib.suppress(RuntimeError):
            torch.load(path, weights_only=True)

    assert warnings_main_lets_through(monkeypatch, load_archive) == ["another"]


@pytest.mark.parametrize("entry", ["module", "console-script"])
def test_a_ctrl_c_while_torch_imports_is_the_one_line(entry, tmp_path):
    """Ctrl-C in the seconds the command line takes to load (torch, open_clip) was Python's
    traceback from inside torch's import: it is the commands' 'interrupted' line and exit code 130.
    The KeyboardInterrupt is raised where the signal lands, in the import of torch, by an import
    hook (a real signal could miss that window)."""
    import subprocess
    import sys

    hook = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n")
    run = ("import runpy; runpy.run_module('clip_smot', run_name='__main__')" if entry == "module" else
           "from importlib.metadata import entry_points\n"
           "[script] = [e for e in entry_points(group='console_scripts') if e.name == 'clip-smot']\n"
           "script.load()()")
    res = subprocess.run([sys.executable, "-c", hook + run, "--help"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert (res.returncode, res.stdout, res.stderr) == (130, "", "Error: interrupted\n")
    # (and without the hook, the same entry point runs the command line)
    res = subprocess.run([sys.executable, "-c", run, "--version"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("clip-smot, version "), res.stderr


def test_a_ctrl_c_while_torch_imports_stays_ignored_where_sigint_is_ignored(tmp_path):
    """A process started with SIGINT ignored (nohup, a background job of a script) ignores it while the
    command line loads too: a real SIGINT sent to itself as torch is imported changes nothing, and
    --version prints the version, exit 0 (a held one would end it as 'interrupted', 130)."""
    import subprocess
    import sys

    run = ("import os, signal, sys\n"
           "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
           "class Interrupt:\n"
           "    def find_spec(self, name, path=None, target=None):\n"
           "        if name == 'torch':\n"
           "            os.kill(os.getpid(), signal.SIGINT)\n"
           "sys.meta_path.insert(0, Interrupt())\n"
           "import runpy; runpy.run_module('clip_smot', run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", run, "--version"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("clip-smot, version "), (res.returncode, res.stderr)


def test_python_handles_a_ctrl_c_again_once_the_command_line_has_loaded(tmp_path):
    """The Ctrl-C held while the command line loads is held no longer once it has: a SIGINT as the command
    runs (here a stand-in for cli.main that sends one to itself, then sleeps) raises KeyboardInterrupt
    there, and the command does not run on to its end."""
    import subprocess
    import sys

    run = ("import os, signal, time\n"
           "import clip_smot.cli\n"
           "def main():\n"
           "    os.kill(os.getpid(), signal.SIGINT)\n"
           "    time.sleep(2)\n"
           "    print('not interrupted')\n"
           "clip_smot.cli.main = main\n"
           "import runpy; runpy.run_module('clip_smot', run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "not interrupted" not in res.stdout and res.returncode != 0 and "KeyboardInterrupt" in res.stderr, res


def test_a_ctrl_c_as_the_interpreter_shuts_down_is_the_one_line(tmp_path):
    """A SIGINT after the command is over, while the interpreter runs its atexit callbacks (torch's
    take tens of milliseconds): a kill-fuzzer saw 'Exception ignored in atexit callback' and a
    traceback in 28 of 81 SIGINTs sent then, exit code 0. The signal is sent from an atexit callback
    registered before the entry point runs (so called after torch's)."""
    import subprocess
    import sys

    run = ("import atexit, os, signal, time\n"
           "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
           "def late():\n"
           "    os.kill(os.getpid(), signal.SIGINT)\n"
           "    time.sleep(1)\n"
           "    print('not interrupted')\n"
           "atexit.register(late)\n"
           "import clip_smot.cli\n"
           "clip_smot.cli.main()\n")
    res = subprocess.run([sys.executable, "-c", run, "--version"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.stdout.startswith("clip-smot, version ") and "not interrupted" not in res.stdout, res.stdout
    assert (res.returncode, res.stderr) == (130, "Error: interrupted\n")


def test_a_ctrl_c_as_the_interpreter_tears_down_its_modules_is_the_one_line(tmp_path):
    """A SIGINT later than the atexit callbacks: while the interpreter clears its modules (a real
    `score` run interrupted 0.2 s and 0.5 s after its CSV appeared exited 130 with nothing on
    stderr; 0 s and 0.05 s after, 'Error: interrupted'). README: Ctrl-C stops every command with
    one line, exit code 130. The signal is sent by an object of ``__main__`` as it is collected:
    the console script ends the process with the command's code once the atexit callbacks ran
    (still run: a marker they write is there), with no teardown in which it could come."""
    import subprocess
    import sys

    run = ("import atexit, os, signal\n"
           "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
           "class Late:\n"
           "    def __del__(self):\n"
           "        open('sent', 'w').close()\n"
           "        os.kill(os.getpid(), signal.SIGINT)\n"
           "late = Late()\n"
           "atexit.register(lambda: open('atexit', 'w').close())\n"
           "import clip_smot.__main__\n"
           "clip_smot.__main__.main()\n")
    res = subprocess.run([sys.executable, "-c", run, "--version"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert res.stdout.startswith("clip-smot, version "), res.stdout
    assert (tmp_path / "atexit").exists()
    if (tmp_path / "sent").exists():
        assert (res.returncode, res.stderr) == (130, "Error: interrupted\n")
    else:
        assert (res.returncode, res.stderr) == (0, "")


_ENDING = {  # what the command does -> (exit code, stdout, stderr), as the interpreter ends a program
    "sys.exit('boom')": (1, "", "boom\n"),
    "sys.exit()": (0, "", ""),
    "print('buffered')": (0, "buffered\n", ""),  # (returns: no SystemExit; stdout a pipe, block-buffered)
    "threading.Thread(target=lambda: (time.sleep(0.3), print('thread'))).start(); sys.exit(3)": (3, "thread\n", ""),
    "ctypes.CDLL(None).printf(b'from C\\n'); sys.exit(0)": (0, "from C\n", ""),  # (libc's own buffer)
    "sys.stdout = Unflushable(); sys.exit(0)": (120, "", ""),  # (Python says 'Exception ignored' too)
    "sys.stdout = Unflushable(); sys.exit(3)": (120, "", ""),  # (120 whatever the code, as Python's)
    # a standard stream closed when the process started (`>&-`, `2>&-`: Python sets it to None) is
    # not flushed: the command's own code, as Python's
    "sys.stdout = None; sys.exit(0)": (0, "", ""),
    "sys.stdout = sys.stderr = None; sys.exit(3)": (3, "", ""),
    # (stderr closed, `2>&-`: sys.exit's message is written nowhere, as by Python; not to stdout)
    "os.close(2); sys.stderr = None; sys.exit('boom')": (1, "", ""),
}


@pytest.mark.parametrize("command, world_size", [(c, "1") for c in _ENDING] +
                         [(c, "2") for c in _ENDING if "Unflushable" not in c])
def test_the_entry_point_ends_the_process_as_the_interpreter_would(tmp_path, command, world_size):
    """The console script ends the process itself once the command is over, with the exit code,
    threads, output and flushing the interpreter's own end gives (a message given to sys.exit on
    stderr and code 1; a non-daemon thread joined; a stdout that cannot be flushed: 120, as
    Python's own), without its teardown of the modules (an object of __main__ is not collected).
    A torchrun process (WORLD_SIZE 2) ends as Python ends it, teardown included. The command line
    is a stand-in module: nothing heavy is imported."""
    import os
    import subprocess
    import sys

    run = ("import ctypes, os, sys, threading, time, types\n"
           "class Torn:\n"
           "    def __del__(self, os=os):  # (the builtins may be gone by then)\n"
           "        os.close(os.open('torn', os.O_CREAT | os.O_WRONLY))\n"
           "torn = Torn()\n"
           "class Unflushable:\n"
           "    def write(self, s):\n"
           "        return len(s)\n"
           "    def flush(self):\n"
           "        raise OSError(5, 'Input/output error')\n"
           "cli = types.ModuleType('clip_smot.cli')\n"
           "def main():\n"
           f"    {command}\n"
           "cli.main = main\n"
           "sys.modules['clip_smot.cli'] = cli\n"
           "import clip_smot.__main__\n"
           "clip_smot.__main__.main()\n")
    env = dict(os.environ, WORLD_SIZE=world_size)
    env.pop("PYTHONUNBUFFERED", None)  # (output to a pipe held in buffers, Python's and libc's, as by default)
    res = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == _ENDING[command]
    assert (tmp_path / "torn").exists() == (world_size == "2")


@pytest.mark.parametrize("argv", [["--version"], ["score", "--help"]])
def test_a_full_stdout_is_one_line_not_a_traceback(tmp_path, argv):
    """stdout on a full disk (here /dev/full, whose writes fail with ENOSPC, as a redirect to a
    file on a full disk does): one line on stderr and a non-zero exit, not click's traceback
    ("OSError: [Errno 28] No space left on device" from click.echo, then Python's "Exception
    ignored"), as for eval's table once its files are written and fit's epoch line."""
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "clip_smot", *argv], stdout=full, stderr=subprocess.PIPE,
                             text=True, cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
    assert "No space left on device" in res.stderr, res.stderr


def _failing_stdout_group():
    """A group of clip-smot's class whose commands fail as a full stdout, a failing stderr and a
    missing file do."""
    import errno
    import os
    import sys

    from clip_smot.cli import _Group

    @click.group(cls=_Group)
    def group():
        pass

    @group.command()
    def rows():  # (print's own write, or a flush, of a full stdout: raised here, not in click.echo)
        sys.stdout.write("a row\n")
        sys.stdout.flush()

    @group.command()
    def missing():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "scores.csv")

    @group.command()
    def unsaid():
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    @group.command()
    def note():
        click.echo("note: a note", err=True)

    return group


def test_a_full_stdout_raised_outside_click_echo_is_the_one_line_and_other_errors_are_not(tmp_path, monkeypatch,
                                                                                          capsys):
    """The one line "Error: stdout cannot be written (...)", exit 1, is for an OSError that a
    write to stdout raised: by click.echo, or anywhere while stdout still fails (a flush of what it
    holds fails again), and its descriptor then points at the null device. An OSError naming a
    file is the line naming that file (stdout kept); one raised while stdout is closed (None) or
    writes, and a failing stderr, are raised as they are."""
    import errno
    import os
    import sys

    group = _failing_stdout_group()
    with open("/dev/full", "w", encoding="utf-8") as full:
        monkeypatch.setattr(sys, "stdout", full)
        with pytest.raises(SystemExit) as e:
            group.main(["rows"], prog_name="clip-smot")
        assert e.value.code == 1
        assert capsys.readouterr().err == "Error: stdout cannot be written (No space left on device)\n"
        assert os.path.samestat(os.fstat(full.fileno()), os.stat(os.devnull))
    with open("/dev/full", "w", encoding="utf-8") as full:
        monkeypatch.setattr(sys, "stdout", full)
        full.write("held")  # (a flush of stdout fails: still, a file's error is its own, one line naming it)
        with pytest.raises(SystemExit) as e:
            group.main(["missing"], prog_name="clip-smot")
        assert e.value.code == 1 and capsys.readouterr().err == "Error: scores.csv: No such file or directory\n"
        assert not os.path.samestat(os.fstat(full.fileno()), os.stat(os.devnull))  # (stdout not given up)
        null = os.open(os.devnull, os.O_WRONLY)  # (what it holds written there as it closes)
        os.dup2(null, full.fileno())
        os.close(null)
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(OSError) as e:
        group.main(["unsaid"], prog_name="clip-smot")
    assert e.value.errno == errno.EIO

    # stderr on a full disk, line-buffered (click.echo's write is the one that fails), stdout a file
    with open(tmp_path / "out.txt", "w", encoding="utf-8") as out, open("/dev/full", "w", buffering=1) as err:
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        with pytest.raises(OSError) as e:
            group.main(["note"], prog_name="clip-smot")
        assert e.value.errno == errno.ENOSPC and e.value.__context__ is None
        assert os.path.samestat(os.fstat(out.fileno()), os.stat(tmp_path / "out.txt"))  # (not given up)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, err.fileno())
        os.close(null)


def test_an_os_error_raised_as_a_ctrl_c_unwinds_is_the_interrupted_line(capsys):
    """A Ctrl-C that a command's clean-up turns into an OSError as it unwinds (a file closed or
    removed on the way out fails, with its name): the line is "Error: interrupted", exit 130, as
    for the Ctrl-C itself, not the OSError's line naming the file, exit 1."""
    import errno
    import os
    import signal

    from clip_smot.cli import _Group

    @click.group(cls=_Group)
    def group():
        pass

    @group.command()
    def stopped():
        try:
            signal.raise_signal(signal.SIGINT)  # (Python's handler, as the group installs it: KeyboardInterrupt)
        except KeyboardInterrupt:
            raise OSError(errno.EIO, os.strerror(errno.EIO), "scores.csv") from None

    with pytest.raises(SystemExit) as e:
        group.main(["stopped"], prog_name="clip-smot")
    assert e.value.code == 130 and capsys.readouterr().err == "Error: interrupted\n"


def test_a_memory_limit_too_low_for_torch_is_one_line(tmp_path):
    """Under a limit on the address space (`ulimit -v`, RLIMIT_AS: a batch system's memory limit)
    too low for torch's libraries to be mapped (here 512 MiB), every command, --version too, ended
    in a 20-line traceback from `import torch` ("ImportError: libtorch_cpu.so: failed to map
    segment from shared object"; at 3 GiB "MemoryError: Unable to allocate output buffer"): one
    line saying that the libraries could not be loaded, and why, and a non-zero exit."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (512 << 20, resource.getrlimit(resource.RLIMIT_AS)[1]))

    res = subprocess.run([sys.executable, "-m", "clip_smot", "--version"], capture_output=True, text=True,
                         cwd=tmp_path, preexec_fn=limit, timeout=120)
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith("Error: the libraries clip-smot runs on could not be loaded (")
    assert res.stderr.endswith("; the address space is limited to 512 MiB (ulimit -v): torch needs more\n")


def test_a_torch_cache_folder_that_cannot_be_made_is_one_line(tmp_path):
    """torchvision, imported once a command reads a model config, imports torch._dynamo, which makes
    its cache folder as it loads ($TORCHINDUCTOR_CACHE_DIR, else $TMPDIR/torchinductor_USER). A
    folder that cannot be made there (a file at its name, as here; ENOSPC or EACCES of a full or
    shared $TMPDIR, injected into mkdir(2) in a real eval) ended fit, eval, score and export in a
    40-line traceback ending "FileExistsError: [Errno 17] File exists". One line, naming it."""
    import json
    import os
    import subprocess
    import sys

    from conftest import TINY_CLIP_CONFIG

    (tmp_path / "img" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a" / "0.png")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    blocker = tmp_path / "inductor"
    blocker.write_text("")
    res = subprocess.run([sys.executable, "-m", "clip_smot", "fit", "--data", "img", "--shots", "1", "--model",
                          "tiny.json", "--pretrained", "none", "--device", "cpu", "--dry-run", "--out", "f"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(blocker)})
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith(f"Error: {blocker}: ") and "set TORCHINDUCTOR_CACHE_DIR" in res.stderr, res.stderr


def test_a_failing_stderr_drops_its_lines_and_points_at_the_null_device():
    """The entry point's stderr (clip_smot.__main__._Unfailing): a write or a flush that fails (a
    full disk, /dev/full: ENOSPC) is dropped, not raised, a write saying it took the whole text, and
    the stream's descriptor then points at the null device (what it holds is not tried again);
    its lines are written one by one."""
    import io
    import os

    from clip_smot.__main__ import _Unfailing

    def on_null(f) -> bool:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(os.devnull))

    with open("/dev/full", "w", buffering=1) as full:  # (line-buffered: the write itself fails)
        err = _Unfailing(full)
        assert err.write("epoch 1/2\n") == 10 and on_null(full) and err.fileno() == full.fileno()
        assert err.write("epoch 2/2\n") == 10
    with open("/dev/full", "w") as full:  # (block-buffered: its flush fails)
        err = _Unfailing(full)
        assert err.write("held") == 4 and not on_null(full)
        err.flush()
        assert on_null(full)
    text = io.StringIO()
    _Unfailing(text).writelines(["a\n", "b\n"])
    assert text.getvalue() == "a\nb\n"


@pytest.mark.parametrize("error, limit, line", [
    (ImportError("libtorch_cpu.so: failed to map segment from shared object\n  more"), "none",
     "(ImportError: libtorch_cpu.so: failed to map segment from shared object)"),
    (MemoryError("Unable to allocate output buffer"), 3 << 30,
     "(MemoryError: Unable to allocate output buffer); the address space is limited to 3072 MiB (ulimit -v): "
     "torch needs more"),
    (MemoryError(), "unreadable", "(MemoryError: -)"),
], ids=["import-error", "memory-limit", "limit-unreadable"])
def test_libraries_that_cannot_be_loaded_are_one_line_in_process(monkeypatch, error, limit, line):
    """The import of the command line fails (an ImportError, a MemoryError under a memory limit):
    one line, its first line of the error, with the address-space limit where one is set (none
    where the limit is unlimited or cannot be read), exit 1; stderr closed as the process started
    (None) too."""
    import io
    import resource
    import sys

    from clip_smot.__main__ import main

    class Unloadable:
        def __getattr__(self, name):
            raise error

    def getrlimit(which):
        if limit == "unreadable":
            raise ValueError("not supported")
        return (resource.RLIM_INFINITY if limit == "none" else limit, resource.RLIM_INFINITY)

    monkeypatch.setitem(sys.modules, "clip_smot.cli", Unloadable())
    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1
    assert err.getvalue() == f"Error: the libraries clip-smot runs on could not be loaded {line}\n"
    monkeypatch.setattr(sys, "stderr", None)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)  # (where print's file=None goes: the line is not written there)
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1 and out.getvalue() == ""


def test_a_ctrl_c_as_the_command_line_loads_with_stderr_closed_writes_nothing_to_stdout(monkeypatch):
    """A Ctrl-C raised by the import of the command line: 'Error: interrupted' on stderr, exit 130;
    with stderr closed as the process started (None), exit 130 and nothing on stdout (where
    print's file=None goes)."""
    import io
    import sys

    from clip_smot.__main__ import main

    class Interrupted:
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "clip_smot.cli", Interrupted())
    for err in (io.StringIO(), None):
        out = io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        monkeypatch.setattr(sys, "stdout", out)
        with pytest.raises(SystemExit) as e:
            main()
        assert (e.value.code, out.getvalue()) == (130, "")
        if err is not None:
            assert err.getvalue() == "Error: interrupted\n"


def test_a_ctrl_c_inside_torchs_cpp_initialisation_is_the_one_line(tmp_path):
    """A real SIGINT that lands while ``import torch`` runs ``torch._C._c10d_init()`` (C++ that calls
    back into Python's import machinery for the half-imported torch.distributed): the KeyboardInterrupt
    raised in that callback is thrown through C++ as python_error / pybind11::error_already_set and
    ends the process in std::terminate (rc -6, 'terminate called after throwing an instance of ...'),
    not in the entry point's 'Error: interrupted'. A kill-fuzzer saw it 3 times in 581 random SIGINTs,
    each 1.8-2.9 s into the run, while clip_smot.cli imported torch. The hook sends the signal
    from importlib's _lock_unlock_module when torch/distributed/__init__.py's _c10d_init() calls it."""
    import subprocess
    import sys

    fired = tmp_path / "fired"
    hook = ("import os, signal, sys, importlib._bootstrap as b\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)  # (whatever the test runner left)\n"
            "real = b._lock_unlock_module\n"
            "def hooked(name):\n"
            "    caller = sys._getframe(1).f_code.co_filename\n"
            "    if name == 'torch.distributed' and caller.endswith(os.path.join('torch', 'distributed', "
            "'__init__.py')):\n"
            "        b._lock_unlock_module = real\n"
            f"        open({str(fired)!r}, 'w').close()\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(name)\n"
            "b._lock_unlock_module = hooked\n"
            "import runpy; runpy.run_module('clip_smot', run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", hook, "--help"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert fired.is_file(), "torch's _c10d_init() no longer calls back into the import machinery"
    assert (res.returncode, res.stdout, res.stderr) == (130, "", "Error: interrupted\n")


def test_a_file_flag_given_a_folder_and_a_folder_flag_given_a_file_are_one_line(tmp_path, monkeypatch):
    """A file flag (--checkpoint, --prompt, score's --out) naming a folder, or a folder flag (fit's
    and eval's --out) naming a file, is refused by the flag's own type: one line, nothing written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("mine")
    for argv, line in (
            (["export", "--checkpoint", "folder", "--out", "p"], "'--checkpoint': folder is a folder, not a file"),
            (["score", "--prompt", "folder", "--out", "s.csv", "x"], "'--prompt': folder is a folder, not a file"),
            (["score", "--prompt", "p.safetensors", "--out", "folder", "x"],
             "'--out': folder is a folder; score writes one CSV file: give its name, e.g. folder/scores.csv"),
            (["export", "--checkpoint", "file", "--out", "folder"],
             "'--out': folder is a folder; export writes one prompt file: give its name, e.g. folder/prompt.safetensors"),
            (["fit", "--out", "file", "--dry-run"], "'--out': file is a file; fit writes a folder of files: give a "
                                                    "folder's name"),
            (["eval", "--zero-shot", "--id", "x", "--ood", "a=b", "--out", "file"],
             "'--out': file is a file; eval writes a folder of files: give a folder's name"),
            (["reproduce", "table8", "--imagenet", "file", "--out", "r"], "'--imagenet': file is a file, not a folder")):
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 1 and res.output == f"Error: Invalid value for {line}\n", (argv, res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    assert list((tmp_path / "folder").iterdir()) == [] and (tmp_path / "file").read_text() == "mine"


def test_a_run_folder_given_for_the_file_it_holds_is_named_with_that_file(tmp_path, monkeypatch):
    """`--prompt runs/fit1` (the run folder for its prompt) was click's "File 'runs/fit1' is a
    directory."; the line now names the file of the run that the flag takes, where the folder has
    it (a folder without it: "a folder, not a file")."""
    monkeypatch.chdir(tmp_path)
    fit, train = tmp_path / "fit1", tmp_path / "tr1"
    for folder, names in ((fit, ("prompt.safetensors", "checkpoint.pt", "split.txt")), (train, ("model.safetensors",))):
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes(b"x")
    for argv, flag, file in (
            (["score", "--prompt", "fit1", "--out", "s.csv", "x"], "--prompt", fit / "prompt.safetensors"),
            (["eval", "--prompt", "fit1", "--id", "x", "--out", "e"], "--prompt", fit / "prompt.safetensors"),
            (["eval", "--checkpoint", "tr1", "--id", "x", "--out", "e"], "--checkpoint", train / "model.safetensors"),
            (["export", "--checkpoint", "fit1", "--out", "p.safetensors"], "--checkpoint", fit / "checkpoint.pt"),
            (["fit", "--split", "fit1", "--out", "r", "--dry-run"], "--split", fit / "split.txt"),
            (["eval", "--split", "fit1", "--id", "x", "--out", "e"], "--split", fit / "split.txt"),
            (["train", "--cam-model", "tr1", "--out", "r"], "--cam-model", train / "model.safetensors")):
        res = CliRunner().invoke(cli, argv)
        given = argv[argv.index(flag) + 1]
        expected = f"Error: Invalid value for '{flag}': {given} is a folder, not a file; give the {file.name} in it: {file}\n"
        assert res.exit_code == 1 and res.output.replace(str(tmp_path) + "/", "") == expected.replace(
            str(tmp_path) + "/", ""), (argv, res.output)
    res = CliRunner().invoke(cli, ["score", "--prompt", "tr1", "--out", "s.csv", "x"])  # (no prompt in it)
    assert res.output == "Error: Invalid value for '--prompt': tr1 is a folder, not a file\n"
    (train / "prompt.safetensors").mkdir()  # (a folder of the file's name is not the file to give)
    res = CliRunner().invoke(cli, ["score", "--prompt", "tr1", "--out", "s.csv", "x"])
    assert res.output == "Error: Invalid value for '--prompt': tr1 is a folder, not a file\n"


def test_reproduce_without_a_table_names_the_tables_in_one_plain_line(tmp_path, monkeypatch):
    """click's line for a missing choice argument holds newlines and tabs, which the one-line
    error turned into \\u000a\\u0009 escapes: the tables are listed plainly now."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["reproduce", "--out", "r"])
    assert res.exit_code == 1 and res.output == ("Error: Missing argument 'TABLE': one of table1, table2, table3, "
                                                 "table4, table5, table6, table7, table8, table9\n"), res.output
    assert list(tmp_path.iterdir()) == []
    # (--help's usage names TABLE as the docs do, not click's "[{table1|table2|...}]" of an optional choice)
    usage = CliRunner().invoke(cli, ["reproduce", "--help"], prog_name="clip-smot").output.splitlines()[0]
    assert usage == "Usage: clip-smot reproduce [OPTIONS] TABLE", usage


def test_score_takes_every_path_given_and_needs_at_least_one(monkeypatch):
    """PATHS: any number, each passed on as given, in order; none at all is a usage line."""
    import clip_smot.cli as cli_module

    seen = []
    monkeypatch.setattr(cli_module, "run_score", lambda cfg: seen.append(cfg.paths) or [])
    res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "a.png", "b/", "c.txt"])
    assert res.exit_code == 0 and res.output == "" and seen == [("a.png", "b/", "c.txt")], res.output
    res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv"])
    assert res.exit_code == 1 and res.output == "Error: Missing argument 'PATHS...'.\n" and len(seen) == 1
    # a plain flag takes no value: the path after it is a path (--skip-unreadable a.png)
    monkeypatch.setattr(cli_module, "run_score", lambda cfg: seen.append((cfg.paths, cfg.skip_unreadable)) or [])
    res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "--skip-unreadable", "a.png"])
    assert res.exit_code == 0 and seen[-1] == (("a.png",), True), res.output


def test_only_the_options_without_a_default_are_required():
    """A field with a default (None included: decided later, or one of several alternatives) is an
    optional flag; --help marks '[required]' only on those without one."""
    for command, required in (("fit", []), ("score", ["--prompt", "--out"]), ("eval", ["--id", "--ood", "--out"]),
                              ("train", ["--out"]), ("export", ["--checkpoint", "--out"]), ("reproduce", ["--out"])):
        params = cli.commands[command].params
        assert [p.opts[0] for p in params if p.required and p.opts[0].startswith("--")] == required, command


def test_eval_under_torchrun_prints_its_table_on_rank_0_only(monkeypatch, tmp_path):
    """Only rank 0 writes the metric files (run_clip_eval returns their report there, {} on the
    other ranks): it alone prints the table, which it reads back from its metrics.md."""
    import contextlib

    import clip_smot.cli as cli_module

    (tmp_path / "metrics.md").write_text("# T\n\n| score |\n")
    (tmp_path / "metrics.json").write_text("{}")
    for rank in (1, 0):
        monkeypatch.setattr(cli_module, "process_group", lambda device, rank=rank: contextlib.nullcontext((rank, 0, 2)))
        monkeypatch.setattr(cli_module, "run_clip_eval", lambda cfg, rank=rank: {"metrics": {}} if rank == 0 else {})
        res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--id", "i", "--ood", "o=x", "--out", str(tmp_path)])
        assert res.exit_code == 0 and res.stderr == "", res.output
        assert res.stdout == ("" if rank else f"# T\n\n| score |\nwritten to {tmp_path}: metrics.json, metrics.md\n")


def test_score_under_torchrun_lists_skipped_images_on_rank_0_only(monkeypatch):
    """Every process knows every skipped image: only rank 0 lists them (each would print the same lines)."""
    import contextlib

    import clip_smot.cli as cli_module

    monkeypatch.setattr(cli_module, "run_score", lambda cfg: [("a.png", "a.png: not an image")])
    for rank, expected in ((1, ""), (0, "Skipped 1 unreadable image(s):\n  a.png: not an image\n")):
        monkeypatch.setattr(cli_module, "process_group", lambda device, rank=rank: contextlib.nullcontext((rank, 0, 2)))
        res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "x"])
        assert res.exit_code == 0 and res.stdout == "" and res.stderr == expected, (rank, res.output)


def test_fit_hands_its_flags_resume_and_dry_run_to_the_library(monkeypatch):
    """--resume and --dry-run are plain flags; ``flags`` is the set of fields given on the command
    line, a flag given with its default value included (--seed 1), --split by its field's name."""
    import clip_smot.cli as cli_module

    calls = []
    monkeypatch.setattr(cli_module, "run_fit", lambda cfg, **kwargs: calls.append((cfg, kwargs)) or Path("o"))
    res = CliRunner().invoke(cli, ["fit", "--data", "d", "--out", "o", "--split", "s.txt", "--seed", "1", "--resume"])
    assert res.exit_code == 0, res.output
    cfg, kwargs = calls[-1]
    assert kwargs == {"resume": True, "dry_run": False, "flags": {"data", "out", "split", "seed"}}
    assert (cfg.data, cfg.out, cfg.split, cfg.seed) == ("d", "o", "s.txt", 1)
    res = CliRunner().invoke(cli, ["fit", "--data", "d", "--dry-run"])
    assert res.exit_code == 0 and calls[-1][1] == {"resume": False, "dry_run": True, "flags": {"data"}}, res.output


def test_train_needs_a_dataset_or_data_unless_it_resumes(monkeypatch, tmp_path):
    """Without --dataset or --data a new run is refused first, in one line, nothing written (the
    library's refusal: --lam given to a ce run and the --cuda-graph of a CPU are refused after it);
    --resume takes the run's own (docs/resnet.md), and hands on the fields given (--compile by its
    field's name)."""
    import clip_smot.cli as cli_module

    for extra in ([], ["--lam", "0.5", "--device", "cpu", "--cuda-graph"]):
        res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "o"), "--epochs", "3", *extra])
        assert res.exit_code == 1 and res.output == "Error: give --dataset NAME or --data DIR\n", res.output
        assert list(tmp_path.iterdir()) == []
    calls = []
    monkeypatch.setattr(cli_module, "run_train", lambda cfg, **kwargs: calls.append((cfg, kwargs)))
    res = CliRunner().invoke(cli, ["train", "--resume", "--out", "o", "--epochs", "3", "--compile"])
    assert res.exit_code == 0 and len(calls) == 1, res.output
    cfg, kwargs = calls[0]
    assert kwargs == {"resume": True, "dry_run": False, "flags": {"out", "epochs", "compile"}}
    assert (cfg.dataset, cfg.data, cfg.epochs, cfg.compile) == (None, None, 3, True)


def test_eval_hands_each_track_its_config_with_the_ood_sets_parsed(monkeypatch):
    """--checkpoint runs the ResNet track's evaluation, --prompt or --zero-shot the CLIP track's;
    --ood NAME=DIR is a folder or list, a bare NAME the built-in set (None), in the order given."""
    import clip_smot.cli as cli_module

    calls = []
    monkeypatch.setattr(cli_module, "run_resnet_eval", lambda cfg: calls.append(("resnet", cfg)))
    monkeypatch.setattr(cli_module, "run_clip_eval", lambda cfg: calls.append(("clip", cfg)))
    shared = ["--id", "x", "--ood", "noise=n/", "--ood", "svhn", "--ood", "far=runs/lr=0.1/l.txt", "--fpr-convention", "openood",
              "--out", "e"]
    for track, argv in (("resnet", ["--checkpoint", "m.safetensors"]), ("clip", ["--zero-shot"]),
                        ("clip", ["--prompt", "p.safetensors"])):
        res = CliRunner().invoke(cli, ["eval", *argv, *shared])
        assert res.exit_code == 0 and res.output == "" and calls[-1][0] == track, (argv, res.output)
        cfg = calls[-1][1]
        assert list(cfg.ood.items()) == [("noise", "n/"), ("svhn", None), ("far", "runs/lr=0.1/l.txt")]
        assert (cfg.id_data, cfg.convention, cfg.out) == ("x", "openood", "e")
    assert (calls[0][1].checkpoint, calls[1][1].zero_shot, calls[1][1].prompt, calls[2][1].prompt) == \
        ("m.safetensors", True, None, "p.safetensors")
    assert len(calls) == 3
    # the CLIP track's own flags reach its config, none lost on the way (the defaults: None, None,
    # None, True, auto, auto)
    res = CliRunner().invoke(cli, ["eval", "--prompt", "p.safetensors", "--model", "RN50", "--pretrained", "w.pt",
                                   "--split", "s.txt", "--no-cache", "--decode", "cpu", "--precision", "bf16", *shared])
    assert res.exit_code == 0 and calls[-1][0] == "clip", res.output
    cfg = calls[-1][1]
    assert (cfg.model, cfg.pretrained, cfg.split, cfg.use_cache, cfg.decode, cfg.precision) == \
        ("RN50", "w.pt", "s.txt", False, "cpu", "bf16")


def test_reproduce_hands_its_table_options_and_dry_run_to_the_library(monkeypatch):
    import clip_smot.cli as cli_module

    calls = []
    monkeypatch.setattr(cli_module, "run_reproduce",
                        lambda table, opts, stage, dry_run, echo: calls.append((table, opts.out, opts.epochs, dry_run)))
    for extra, dry_run in (([], False), (["--dry-run"], True)):
        res = CliRunner().invoke(cli, ["reproduce", "table8", "--out", "r", "--epochs", "2", *extra])
        assert res.exit_code == 0 and res.output == "", res.output
        assert calls[-1] == ("table8", "r", 2, dry_run)
    # a table the paper has not (table10: tables 1-9 only): one line naming the flag, nothing run
    res = CliRunner().invoke(cli, ["reproduce", "table10", "--out", "r"])
    assert res.exit_code != 0 and len(calls) == 2, res.output
    assert res.output.startswith("Error: Invalid value for ")
    assert "'table10' is not one of 'table8', 'table1'" in res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output


def test_the_ctrl_c_line_reads_the_checkpoints_epochs_only_where_they_are_plain_numbers(tmp_path):
    """The epochs named are read without unpickling anything but tensors and plain data (weights_only):
    a checkpoint holding other objects, or epochs that are not integers, gives the plain words."""
    import argparse

    import torch

    from helpers import save_as_if_from_cuda

    import clip_smot.cli as cli_module

    path = tmp_path / "checkpoint.pt"
    for ckpt, expected in (
            ({"epoch": 2, "config": {"epochs": 5}}, "epoch 2 of 5"),
            ({"epoch": 2, "config": {"epochs": 5}, "args": argparse.Namespace(lr=1.0)}, "the last finished epoch"),
            ({"epoch": True, "config": {"epochs": 5}}, "the last finished epoch"),
            ({"epoch": 2, "config": {"epochs": 5.0}}, "the last finished epoch"),
            ({"epoch": "2", "config": {"epochs": "5"}}, "the last finished epoch"),
            ({"epoch": 2}, "the last finished epoch"),
            ({"epoch": 2, "config": [5]}, "the last finished epoch"),  # (a config that is no dict)
            ({"epoch": 2, "config": "epochs"}, "the last finished epoch")):
        torch.save(ckpt, path)
        assert cli_module._saved_epochs(path) == expected, ckpt
    # a run's tensors saved on a GPU machine ("cuda:0"), its epochs read on one without
    save_as_if_from_cuda({"epoch": 2, "ctx": torch.zeros(2), "config": {"epochs": 5}}, path)
    assert cli_module._saved_epochs(path) == "epoch 2 of 5"
    path.write_bytes(b"not a checkpoint")
    assert cli_module._saved_epochs(path) == "the last finished epoch"
    assert cli_module._interrupted(str(tmp_path)).format_message() == (
        f"interrupted; {path} holds the last finished epoch: continue with the same command and --resume")
    path.unlink()
    assert cli_module._interrupted(str(tmp_path)).format_message() == \
        "interrupted before the first checkpoint; nothing to resume"
    assert cli_module._interrupted().format_message() == "interrupted"


def test_a_callers_own_ctrl_c_handler_is_left_in_place(monkeypatch):
    """A program that set its own SIGINT handler and runs a command keeps it: the group records a
    Ctrl-C only where Python's default handler is installed."""
    import os
    import signal

    import clip_smot.cli as cli_module

    got = []

    def run_score(cfg):
        os.kill(os.getpid(), signal.SIGINT)
        return []

    monkeypatch.setattr(cli_module, "run_score", run_score)
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "x"])
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert res.exit_code == 0 and res.output == "" and got == [signal.SIGINT], res.output


def test_a_library_error_naming_a_file_with_a_newline_is_one_line_and_a_ctrl_c_elsewhere_is_bare(monkeypatch):
    """A UserError is one line whatever the file name it quotes holds (a newline, an escape
    sequence: written as their escapes), exit code 1; a Ctrl-C in a command that has no checkpoint
    (export, eval) is the bare 'interrupted', exit code 130."""
    import clip_smot.cli as cli_module
    from clip_smot.common.errors import UserError

    def refuse(cfg):
        raise UserError("--checkpoint a\nError: b\x1b[2J.pt: not a checkpoint")

    monkeypatch.setattr(cli_module, "export_prompt", refuse)
    res = CliRunner().invoke(cli, ["export", "--checkpoint", "c.pt", "--out", "p"])
    assert res.exit_code == 1 and res.output == "Error: --checkpoint a\\u000aError: b\\u001b[2J.pt: not a checkpoint\n"

    def ctrl_c(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "export_prompt", ctrl_c)
    monkeypatch.setattr(cli_module, "run_resnet_eval", ctrl_c)
    for argv in (["export", "--checkpoint", "c.pt", "--out", "p"],
                 ["eval", "--checkpoint", "m.safetensors", "--id", "x", "--ood", "a=b", "--out", "e"]):
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 130 and res.output == "Error: interrupted\n", (argv, res.output)


def test_an_id_train_no_score_reads_is_refused(tmp_path, monkeypatch):
    """eval --id-train (and the CLIP track's --split) is read by react, knn and vim alone: with
    --scores msp (or mcm) it was ignored, a mistyped folder too, and exit 0. One line names it."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", "m.safetensors", "--id", "x", "--ood", "a=b", "--id-train",
                                 "trian", "--scores", "msp,odin", "--out", "e"])
    assert r.exit_code == 1 and r.output == ("Error: --id-train trian: only react, knn and vim are fitted on ID "
                                             "training images, and --scores msp,odin names none of them\n"), r.output
    r = CliRunner().invoke(cli, ["eval", "--zero-shot", "--id", "x", "--ood", "a=b", "--split", "s.txt", "--out", "e"])
    assert r.exit_code == 1 and r.output == ("Error: --split s.txt: only react, knn and vim are fitted on ID training "
                                             "images, and --scores mcm names none of them\n"), r.output
    assert list(tmp_path.iterdir()) == []


def test_score_help_says_what_a_lists_paths_are_relative_to():
    """score --help named image lists, "one path a line", but not what a relative path there is
    read against (docs/score.md: the list's own folder, or ROOT of ROOT::LIST.txt): a list of paths
    relative to the current folder, kept elsewhere, stopped at its first line."""
    out = CliRunner().invoke(cli, ["score", "--help"], terminal_width=200).output
    assert "relative to the list's folder or to ROOT" in " ".join(out.split()), out


def test_eval_help_names_each_tracks_built_in_sets():
    """--id said "a built-in set (cifar10, ...)", and --ood "a bare built-in set name", but the
    CLIP track has other built-ins than the ResNet track: `eval --prompt P --id cifar10` was "no
    such file or folder". Each track's names, as its evaluation takes them, are in the help."""
    import re

    from clip_smot.clip import evaluate as clip_eval
    from clip_smot.resnet import data as resnet_data

    out = CliRunner().invoke(cli, ["eval", "--help"], terminal_width=500).output
    id_help = re.search(r"--id PATH\s+(.*)", out).group(1)
    ood_help = re.search(r"--ood TEXT\s+(.*)", out).group(1)
    for text, resnet, clip in ((id_help, resnet_data.BUILTIN_ID, clip_eval.BUILTIN_ID),
                               (ood_help, resnet_data.BUILTIN_OOD, clip_eval.BUILTIN_OOD)):
        assert re.search(rf"ResNet: {', '.join(resnet)}\b", text, re.I), text
        assert re.search(rf"CLIP: {', '.join(clip)}\b", text, re.I), text
    assert "LIST.txt" in id_help  # (the CLIP track reads an image list as --id)


def test_score_and_eval_give_the_feature_options_the_same_help_eval_after_clip():
    """--no-cache, --decode and --precision are declared once for score and eval (their help texts
    had drifted apart): the same words, eval's after "CLIP:" as its other CLIP-only options, the
    same defaults and choices; each config holds a field of its own."""
    import dataclasses

    from clip_smot.clip.evaluate import ClipEvalConfig
    from clip_smot.clip.score import ScoreConfig

    texts = {"--no-cache": "neither read nor write the image-feature cache.",
             "--decode [auto|cpu|gpu]": "JPEG decoding, gpu (decode_jpeg on the CUDA device) or cpu (PIL in the "
                                        "workers); auto: gpu on CUDA where torchvision and the model's preprocessing "
                                        "allow it, else cpu. [default: auto]",
             "--precision [auto|bf16|fp16|fp32]": "the image encoder's arithmetic, bf16, fp16 (autocast; bf16 on the "
                                                  "CPU) or fp32; auto: bf16 on CUDA, fp32 on the CPU. [default: auto]"}
    for command, prefix in (("score", ""), ("eval", "CLIP: ")):
        out = " ".join(CliRunner().invoke(cli, [command, "--help"], terminal_width=500).output.split())
        for option, text in texts.items():
            said = prefix + text if prefix else text[0].upper() + text[1:]
            assert f"{option} {said}" in out, (command, option, out)
    score, clip_eval = ({f.name: f for f in dataclasses.fields(c)} for c in (ScoreConfig, ClipEvalConfig))
    for name in ("use_cache", "decode", "precision"):
        assert score[name] is not clip_eval[name] and score[name].name == clip_eval[name].name == name
    assert score["use_cache"].default is True and clip_eval["use_cache"].default is True  # (--no-cache: off)


def test_train_help_gives_the_temperature_of_a_folder():
    """--T's help gave the defaults of the built-in sets only; a --data folder gets the paper's T of
    the smallest of its class counts (10, 100, 200) that holds its classes (docs/resnet.md), which
    the help now says: checked here against what the training resolves."""
    import re

    from clip_smot.resnet.train import TrainConfig, resolve_config

    out = CliRunner().invoke(cli, ["train", "--help"], terminal_width=500).output
    text = re.search(r"--T FLOAT RANGE\s+(.*)", out).group(1)
    said = re.search(r"a folder by its classes: (\d+) up to (\d+), (\d+) up to (\d+), else (\d+)\)", text)
    assert said, text
    t_small, k_small, t_mid, k_mid, t_large = map(float, said.groups())
    for k, t in ((1, t_small), (k_small, t_small), (k_small + 1, t_mid), (k_mid, t_mid), (k_mid + 1, t_large)):
        assert resolve_config(TrainConfig(out="x", data="d"), int(k), 32).T == t, k


def test_fit_help_says_ctx_init_sets_the_context_length():
    """--n-ctx showed "[default: 16]" alone, while with --ctx-init the context is the words' tokens
    ('a photo of a': 4) and any other --n-ctx is refused (tests/clip/test_fit.py): the help says so."""
    import re

    out = CliRunner().invoke(cli, ["fit", "--help"], terminal_width=500).output
    assert "--ctx-init" in re.search(r"--n-ctx INTEGER RANGE\s+(.*)", out).group(1)


def test_fit_help_says_the_fast_defaults_need_triton():
    """--text-attention auto is square, and --compile off, on a GPU where Triton cannot start (no C
    compiler: resolve_speed, tests/clip/test_fit.py), which fit's help left out: it named only
    the compute capability."""
    import re

    out = CliRunner().invoke(cli, ["fit", "--help"], terminal_width=1000).output
    attention = re.search(r"--text-attention \[[^]]*\]\s+(.*)", out).group(1)
    compile_ = re.search(r"--compile / --no-compile\s+(.*)", out).group(1)
    assert re.search(r"square before Ampere or where Triton cannot start", attention), attention
    assert re.search(r"\[default: on with CUDA [^]]*where Triton starts", compile_), compile_


def test_train_help_says_which_sets_the_workers_decode():
    """--workers said "224-pixel sets", but the digits (and CIFAR) live on the device at any
    --input-size, while a folder is read by the workers above 64 pixels (resnet.data.SMALL_INPUT),
    ImageNet-200 at any size (resnet.data.load_id_split): the help says which."""
    import re

    from clip_smot.resnet.data import SMALL_INPUT

    out = CliRunner().invoke(cli, ["train", "--help"], terminal_width=500).output
    text = re.search(r"--workers INTEGER RANGE\s+(.*)", out).group(1)
    assert f"folders above {SMALL_INPUT} pixels" in text and "ImageNet-200" in text and "digits" in text, text


def test_eval_help_says_a_small_resnet_decodes_without_workers(monkeypatch, tmp_path):
    """eval's --workers said "Image-decoding worker processes" for both tracks, but a ResNet's
    sets at 64 pixels or less (resnet.data.SMALL_INPUT: CIFAR, digits, its folders) are decoded
    at once in the main process: the help says so, and such a set's batches start no DataLoader."""
    import re

    import torch.utils.data
    from PIL import Image

    from clip_smot.resnet.data import SMALL_INPUT, eval_batches, load_class_folders

    out = CliRunner().invoke(cli, ["eval", "--help"], terminal_width=500).output
    text = re.search(r"--workers INTEGER RANGE\s+(.*)", out).group(1)
    assert f"none for a ResNet of {SMALL_INPUT} pixels or less" in text, text
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / c / "x.png")
    s = load_class_folders(tmp_path, ["a", "b"], SMALL_INPUT, "--id")
    monkeypatch.setattr(torch.utils.data, "DataLoader", None)  # (any DataLoader would fail)
    assert [tuple(x.shape) for x, _ in eval_batches(s, 8, torch.device("cpu"), workers=4)] == [(2, 3, 64, 64)]


def test_train_help_does_not_offer_data_to_the_digits():
    """--data said "with --dataset: the set's root", but --dataset digits with --data is refused
    ("--dataset digits reads no data folder", tests/resnet/test_train.py): the help names the sets
    that take a root, and says that the digits take none."""
    import re

    out = CliRunner().invoke(cli, ["train", "--help"], terminal_width=500).output
    text = re.search(r"--data PATH\s+(.*)", out).group(1)
    assert "with --dataset cifar10, cifar100 or imagenet200: the set's root" in text, text
    assert "digits takes none" in text, text


@pytest.mark.parametrize("method", ["ce", "smot"])
def test_train_help_says_only_smot_adds_masked_copies(method):
    """--batch-size said "original images, each with a masked copy" for every method; only the
    smot method adds the copies (resnet.train.train_step): a ce step sees the batch alone."""
    import contextlib
    import re

    import torch

    from clip_smot.resnet.networks import build_network
    from clip_smot.resnet.train import StepParts, make_optimizer, train_step

    out = CliRunner().invoke(cli, ["train", "--help"], terminal_width=500).output
    assert "each with a masked copy under the smot method" in re.search(r"--batch-size INTEGER RANGE\s+(.*)", out).group(1)
    torch.manual_seed(0)
    model, seen = build_network("resnet_tiny", 3, 32), []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    cam = (lambda x, y: torch.rand(x.shape[0], 32, 32) * 255) if method == "smot" else None
    parts = StepParts(method, torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25), cam=cam)
    x, y = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 2, 0])
    train_step(model, make_optimizer(model, 0.1, 0.9, 5e-4, torch.device("cpu")), x, y,
               torch.full((4,), 128.0) if method == "smot" else None, parts, contextlib.nullcontext())
    assert seen == [8 if method == "smot" else 4]


@pytest.mark.parametrize("command", ["score", "eval"])
def test_decode_help_says_when_auto_is_not_the_gpu(command, monkeypatch):
    """--decode said "auto: gpu on CUDA", but on CUDA auto decodes with PIL where torchvision has no
    decode_jpeg, or where the model preprocesses otherwise than the GPU path does (a non-square
    size, another resize mode): resolve_decode. The help says so."""
    import re

    import torch

    from clip_smot.clip import decoding

    out = CliRunner().invoke(cli, [command, "--help"], terminal_width=500).output
    text = re.search(r"--decode \[auto\|cpu\|gpu\]\s+(.*)", out).group(1)
    assert "auto: gpu on CUDA where torchvision and the model's preprocessing allow it, else cpu" in text, text
    cuda = torch.device("cuda")  # (a device object needs no GPU)
    square = {"resize_mode": "shortest", "size": 224, "interpolation": "bicubic", "mode": "RGB"}
    monkeypatch.setattr(decoding.ti, "has_decode_jpeg", lambda: True)
    assert decoding.resolve_decode("auto", cuda, square) == "jpeg"
    assert decoding.resolve_decode("auto", cuda, {**square, "size": (224, 256)}) == "pil"
    monkeypatch.setattr(decoding.ti, "has_decode_jpeg", lambda: False)
    assert decoding.resolve_decode("auto", cuda, square) == "pil"


# --- a file of another kind given to a flag -------------------------------------------------------


def _files_of_each_kind(tmp_path: Path) -> dict[str, Path]:
    """One small file of each kind a user may hand to the wrong flag: only what tells the kinds
    apart is real (a checkpoint's format, a safetensors file's metadata and names)."""
    import json

    import torch
    from safetensors.torch import save_file

    from clip_smot.common import run_folder as rf

    fit, train = tmp_path / "runs" / "fit", tmp_path / "runs" / "train"
    fit.mkdir(parents=True)
    train.mkdir(parents=True)
    rf.save_checkpoint(fit / "checkpoint.pt", "clip-smot-fit-checkpoint", {"epoch": 1})
    rf.save_checkpoint(train / "checkpoint.pt", "clip-smot-train-checkpoint", {"epoch": 1})
    save_file({"ctx": torch.zeros(4, 8), "text_features": torch.zeros(3, 8)}, str(fit / "prompt.safetensors"),
              metadata={"format": "clip-smot-prompt", "format_version": "1"})
    save_file({"fc.weight": torch.zeros(2, 8)}, str(train / "model.safetensors"),
              metadata={"format": "clip-smot-model", "format_version": "1"})
    save_file({"visual.conv1.weight": torch.zeros(2, 3, 1, 1), "text_projection": torch.zeros(2, 2)},
              str(tmp_path / "weights.safetensors"))
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1), "fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet18.pth")
    (tmp_path / "ViT-Tiny.json").write_text(json.dumps({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}))
    (tmp_path / "cut.pt").write_bytes((fit / "checkpoint.pt").read_bytes()[:300])  # (a copy that stopped)
    from PIL import Image

    for name in ("a", "b"):  # (a folder of two classes, one image each)
        (tmp_path / "images" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), name == "a" and "red" or "blue").save(tmp_path / "images" / name / "0.png")
    return {"fit": fit / "checkpoint.pt", "train": train / "checkpoint.pt", "prompt": fit / "prompt.safetensors",
            "model": train / "model.safetensors", "weights": tmp_path / "weights.safetensors",
            "resnet": tmp_path / "resnet18.pth", "config": tmp_path / "ViT-Tiny.json", "cut": tmp_path / "cut.pt",
            "images": tmp_path / "images", "tmp": tmp_path}


_SCORE = ["score", "--prompt", "{given}", "--device", "cpu", "--out", "{tmp}/s.csv", "{images}"]
_EVAL = ["eval", "--id", "{images}", "--ood", "x={images}", "--device", "cpu", "--out", "{tmp}/e"]
_FIT = ["fit", "--data", "{images}", "--shots", "1", "--model", "{tiny}", "--pretrained", "none", "--device", "cpu", "--dry-run",
        "--out", "{tmp}/f"]
_EXPORT = ["export", "--checkpoint", "{given}", "--device", "cpu", "--out", "{tmp}/p.safetensors"]
_TRAIN = ["train", "--dataset", "digits", "--stage", "smot", "--device", "cpu", "--dry-run", "--out", "{tmp}/t"]


@pytest.mark.parametrize("argv, given, expected", [
    # (was "not a safetensors file (Error while deserializing header: header too large)")
    (_SCORE, "fit", "--prompt {fit}: a fit checkpoint (a torch archive), not a prompt file; export one with "
                    "`clip-smot export --checkpoint {fit} --out p.safetensors`, or give {prompt}"),
    ([*_EVAL, "--prompt", "{given}"], "fit",
     "--prompt {fit}: a fit checkpoint (a torch archive), not a prompt file; export one with "
     "`clip-smot export --checkpoint {fit} --out p.safetensors`, or give {prompt}"),
    ([*_EVAL, "--prompt", "{given}"], "train",
     "--prompt {train}: a train checkpoint (a torch archive), not a prompt file; a trained ResNet is evaluated with "
     "`clip-smot eval --checkpoint {model}`"),
    # (was "not a clip-smot prompt (missing tensor ctx, text_features)")
    (_SCORE, "model", "--prompt {model}: a model file of clip-smot train (.safetensors), not a prompt file; a trained "
                      "ResNet is evaluated with `clip-smot eval --checkpoint {model}`"),
    (_SCORE, "weights", "--prompt {weights}: CLIP weights, not a prompt file; give it to --pretrained"),
    (_SCORE, "config", "--prompt {config}: an open_clip model config (JSON), not a prompt file; give it to --model"),
    (_SCORE, "resnet", "--prompt {resnet}: a ResNet state dict, not a prompt file; give it to fit's --cam-model"),
    (_SCORE, "cut", "--prompt {cut}: a torch archive cut short (its zip directory is missing: a copy or download "
                    "that stopped?), not a prompt file; `clip-smot fit` writes one (OUT/prompt.safetensors), "
                    "`clip-smot export` one from a fit checkpoint"),
    # (was "not a safetensors file (Error while deserializing header: header too large)")
    ([*_EVAL, "--checkpoint", "{given}"], "train",
     "--checkpoint {train}: a train checkpoint (a torch archive), not a model file of clip-smot train; give the "
     "model its run writes when it ends ({model})"),
    # (was "not a clip-smot model file (format is 'clip-smot-prompt', expected 'clip-smot-model'; ...)")
    ([*_EVAL, "--checkpoint", "{given}"], "prompt",
     "--checkpoint {prompt}: a prompt file (fit's or export's .safetensors), not a model file of clip-smot train; "
     "a prompt is evaluated with `clip-smot eval --prompt {prompt}`"),
    # (was "not a clip-smot fit checkpoint")
    (_EXPORT, "prompt", "--checkpoint {prompt}: a prompt file (fit's or export's .safetensors), not a fit "
                        "checkpoint; it is exported already: give it to --prompt"),
    (_EXPORT, "train", "--checkpoint {train}: a train checkpoint (a torch archive), not a fit checkpoint; "
                       "`clip-smot fit` writes one (OUT/checkpoint.pt)"),
    # (was "not a readable checkpoint (RuntimeError: PytorchStreamReader failed reading zip archive: ...)")
    (_EXPORT, "cut", "--checkpoint {cut}: a torch archive cut short (its zip directory is missing: a copy or "
                     "download that stopped?); not loaded"),
    # (was "not a torchvision ResNet state dict (no conv1.weight / fc.weight)")
    ([*_FIT, "--cam-model", "{given}"], "prompt",
     "--cam-model {prompt}: a prompt file (fit's or export's .safetensors), not a ResNet state dict or a model file "
     "of clip-smot train; torchvision's resnet18 weights are one (resnet18-f37072fd.pth); `clip-smot train` writes "
     "the other"),
    # (was "not a safetensors file (Error while deserializing header: header too large)")
    ([*_TRAIN, "--cam-model", "{given}"], "resnet",
     "--cam-model {resnet}: a ResNet state dict, not a model file of clip-smot train; fit's --cam-model takes a "
     "torchvision state dict; train's is the model file of a `clip-smot train --stage base` run "
     "(OUT/model.safetensors)"),
    # (was torch's "Weights only load failed. In PyTorch 2.6, ..." paragraph, cut)
    ([*_EVAL, "--zero-shot", "--model", "{config}", "--pretrained", "{given}"], "config",
     "--pretrained {config}: an open_clip model config (JSON), not CLIP weights; give it to --model"),
    # (was "not a valid JSON model config (larger than 1048576 bytes, ...)" or "('utf-8' codec can't decode ...)")
    ([*_EVAL, "--zero-shot", "--model", "{given}"], "weights",
     "--model {weights}: CLIP weights, not a model-config JSON; give it to --pretrained"),
])
def test_a_file_of_another_kind_is_named_with_what_the_flag_takes(tmp_path, tiny_clip_config, argv, given, expected):
    """A file handed to the wrong flag (a fit run's checkpoint.pt as --prompt) was refused in the
    reader's own words ("header too large", torch's paragraph on weights_only): the line now says
    what the file is, what the flag takes and where one comes from."""
    files = {k: str(v) for k, v in _files_of_each_kind(tmp_path).items()} | {"tiny": tiny_clip_config}
    res = CliRunner().invoke(cli, [a.format(given=files[given], **files) for a in argv])
    assert res.exit_code == 1 and res.output == f"Error: {expected.format(**files)}\n", res.output


@pytest.mark.parametrize("command", ["fit", "train"])
def test_a_checkpoint_cut_short_is_named_so_on_resume(tmp_path, command):
    """A run's checkpoint.pt cut short (a copy of the run folder that stopped) was refused with
    torch's paragraph on miniz and corrupted files; the line says what is wrong in a few words."""
    from clip_smot.common import run_folder as rf

    path = tmp_path / "checkpoint.pt"
    rf.save_checkpoint(path, f"clip-smot-{command}-checkpoint", {"epoch": 1})
    path.write_bytes(path.read_bytes()[:300])
    res = CliRunner().invoke(cli, [command, "--out", str(tmp_path), "--resume", "--device", "cpu"])
    expected = {"fit": f"--resume {path}: a torch archive cut short (its zip directory is missing: a copy or download "
                       "that stopped?); not loaded",
                "train": f"--resume: {path} is not a readable clip-smot checkpoint (cut short: its zip directory is "
                         "missing)"}[command]
    assert res.exit_code == 1 and res.output == f"Error: {expected}\n", res.output


@pytest.mark.parametrize("command", ["fit", "train"])
def test_a_checkpoint_whose_bytes_changed_is_named_so_on_resume(tmp_path, command):
    """A run's checkpoint.pt with one byte of a tensor changed after it was written (torch.load does
    not check the zip's CRC-32: it resumed from another tensor, silently) is refused in one line."""
    import torch

    from clip_smot.common import run_folder as rf
    from helpers import flip_byte_of_entry

    path = tmp_path / "checkpoint.pt"
    rf.save_checkpoint(path, f"clip-smot-{command}-checkpoint", {"epoch": 1, "x": torch.ones(100)})
    name = flip_byte_of_entry(path, "data/0", 7)
    res = CliRunner().invoke(cli, [command, "--out", str(tmp_path), "--resume", "--device", "cpu"])
    why = f"its entry {name!r} fails its CRC-32 check: the file was damaged after it was written; not loaded"
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert str(path) in res.output and why in res.output and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("command", ["fit", "train"])
def test_a_checkpoint_whose_read_fails_on_resume_names_the_disk_not_the_file(tmp_path, monkeypatch, command):
    """A read of the checkpoint that fails (EIO of a failing disk, injected into read(2) in a real
    run: every read of it) was refused as "not a readable checkpoint (OSError: [Errno 5]
    Input/output error)", a damaged file to remove or replace; the file is whole, the disk is
    not. The line names the file and the system's reason, and no damage."""
    import errno

    import torch

    from clip_smot.common import run_folder as rf

    path = tmp_path / "checkpoint.pt"
    rf.save_checkpoint(path, f"clip-smot-{command}-checkpoint", {"epoch": 1})

    def load(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "load", load)
    res = CliRunner().invoke(cli, [command, "--out", str(tmp_path), "--resume", "--device", "cpu"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and res.output.startswith("Error: "), res.output
    assert str(path) in res.output and "Input/output error" in res.output, res.output
    assert "not a readable" not in res.output and "[Errno" not in res.output, res.output


_UNDECODABLE = b"\xff\xfe".decode("utf-8", "surrogateescape")  # (as Python hands a shell's non-UTF-8 name in argv)


@pytest.mark.parametrize("command", ["eval", "reproduce"])
def test_an_out_name_of_non_utf8_bytes_is_no_traceback_on_stdout(tmp_path, tiny_clip_config, command):
    """--out named with bytes that are not UTF-8 (a shell passes them; Python keeps them as
    surrogates): eval wrote its files, then its last line, which names --out, ended in a
    UnicodeEncodeError's traceback where stdout encodes strictly (PYTHONIOENCODING=utf-8, or a
    UTF-8 locale other than C.UTF-8: as CliRunner's); reproduce --dry-run likewise on its first
    command line (found by fuzzing the flags). The bytes are written as their escapes."""
    out = tmp_path / f"o{_UNDECODABLE}"
    if command == "eval":
        for k, folder in enumerate(("id/a", "id/b", "ood")):
            (tmp_path / folder).mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 60 * k, np.uint8)).save(tmp_path / folder / "0.png")
        argv = ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", "none", "--id",
                str(tmp_path / "id"), "--ood", f"x={tmp_path / 'ood'}", "--workers", "0", "--device", "cpu", "--out",
                str(out)]
    else:
        argv = ["reproduce", "table8", "--imagenet", "IN", "--ood-root", "OOD", "--out", str(out), "--dry-run"]
    res = CliRunner().invoke(cli, argv)
    assert isinstance(res.exception, (SystemExit, type(None))), repr(res.exception)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert f"{tmp_path}/o\\udcff\\udcfe" in res.stdout, res.stdout


def test_a_score_path_holding_a_nul_byte_is_one_line(tmp_path, monkeypatch):
    """A PATH argument holding a NUL byte (a Python caller's: no shell passes one), as the path
    flags refuse it (BAD_FLAGS above): score ended in 'ValueError: embedded null byte' while its
    flags were parsed (found by fuzzing the arguments). One line naming PATHS, nothing written."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["score", "--prompt", "p.safetensors", "--out", "s.csv", "a\0b.png"])
    assert isinstance(res.exception, (SystemExit, type(None))), repr(res.exception)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "PATHS" in lines[0] and "NUL" in lines[0], res.output
    assert list(tmp_path.iterdir()) == []
