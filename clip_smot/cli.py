"""The ``clip-smot`` command line: the click group, and the process around it (Ctrl-C, a stdout
that fails, the warnings of torch and PIL, libtiff's stderr).

This is the only module that imports click. The options of every command are built
from their configs' fields (:func:`_options`: each default, range or choices and help text is
declared once, in the library). Each command parses its flags, then calls one function of the
library; a :class:`~clip_smot.common.errors.UserError` from there becomes one line
on stderr and exit code 1 (docs/method.md §6).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

from clip_smot import __version__
from clip_smot.clip.evaluate import ClipEvalConfig, run_clip_eval
from clip_smot.clip.fit import ExportConfig, FitConfig, export_prompt, run_fit
from clip_smot.clip.score import ScoreConfig, run_score
from clip_smot.clip.scorer import skipped_kind
from clip_smot.common import run_folder as rf
from clip_smot.common.configs import field_kind, flag_of
from clip_smot.common.distributed import process_group, torchrun_env
from clip_smot.common.errors import UserError, one_line
from clip_smot.common.progress import give_up_stdout
from clip_smot.common.reports import REPORT_FILES, EvalConfig
from clip_smot.common.run_folder import OtherFlags
from clip_smot.reproduce import TABLES, ReproduceOptions, run_reproduce
from clip_smot.resnet.evaluate import ResnetEvalConfig, run_resnet_eval
from clip_smot.resnet.train import TrainConfig, run_train


class _Interrupted(click.ClickException):
    """Ctrl-C: one line and the shell's exit code for SIGINT (128 + 2), not click's 'Aborted!'."""

    exit_code = 130


def _interrupted(out: str | None = None) -> _Interrupted:
    """The Ctrl-C line; for a fit or train run in ``out``, what it can be continued from."""
    if out is not None and (Path(out) / rf.CHECKPOINT).is_file():
        path = Path(out) / rf.CHECKPOINT
        return _Interrupted(f"interrupted; {path} holds {_saved_epochs(path)}: continue with the same command and "
                            "--resume")
    return _Interrupted("interrupted" if out is None else "interrupted before the first checkpoint; nothing to resume")


def _saved_epochs(path: Path) -> str:
    """What a checkpoint holds, for the Ctrl-C line: "epoch N of M" as it says (fit and train print
    an epoch's line once it is saved), else "the last finished epoch"."""
    ckpt = rf.peek_checkpoint(path) or {}  # (none: a file being replaced, or not one of ours: the plain words)
    config = ckpt.get("config")
    epoch, epochs = ckpt.get("epoch"), config.get("epochs") if isinstance(config, dict) else None
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (epoch, epochs)):
        return "the last finished epoch"
    return f"epoch {epoch} of {epochs}"


class _ResumedOtherwise(click.ClickException):
    """The one line of a resume given other options than the saved run's (``flags``)."""

    def __init__(self, message: str, flags: list[str]):
        super().__init__(message)
        self.flags = flags


class _SigintSeen:
    """Within it, SIGINT is recorded before Python's handler raises KeyboardInterrupt as usual (in
    the main thread, where Python's handler is the one installed; elsewhere it changes nothing).
    After it, until :meth:`release`, SIGINT is only recorded (``held``): click's main still leaves
    the command's context then, and turned a KeyboardInterrupt raised there into 'Aborted!' and
    exit code 1."""

    def __init__(self):
        self.seen, self.held, self._previous = False, False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.seen = True
        signal.default_int_handler(signum, frame)

    def _hold(self, signum, frame):
        self.held = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._hold)

    def release(self):
        """Python's handler again (the one there before)."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class _Group(click.Group):
    """A click group whose commands answer bad input with one clean line (docs/method.md §6): a
    UserError from the library, and click's own usage errors (a bad or missing flag value),
    which would otherwise print a usage block; Ctrl-C is one line too."""

    _sigint: _SigintSeen | None = None

    def main(self, *args, **kwargs):
        # (reproduce runs its stages through main, inside its own: the outer run's is kept aside)
        outer, self._sigint = self._sigint, None
        try:
            return super().main(*args, **kwargs)
        except OSError as e:  # (click's main ends a broken pipe's, EPIPE, itself: exit 1, nothing said)
            if e.filename is not None or not (_echoed_to_stdout(e) or _stdout_fails()):
                raise
            give_up_stdout(e, say=False)  # a full disk under `> file`, /dev/full: one line, not a traceback
            click.echo(f"Error: stdout cannot be written ({e.strerror or e})", err=True)
            sys.exit(1)
        except SystemExit as e:
            # a Ctrl-C held as click tore down the command's context, after a command that succeeded
            # (one that failed has printed its line and keeps its exit code)
            if self._sigint is not None and self._sigint.held and e.code in (0, None):
                self._sigint.release()
                click.echo("Error: interrupted", err=True)
                sys.exit(130)
            raise
        finally:
            if self._sigint is not None:
                self._sigint.release()
            self._sigint = outer

    def invoke(self, ctx: click.Context):
        sigint = self._sigint = _SigintSeen()
        try:
            with sigint:
                result = super().invoke(ctx)  # (parses the command's flags too)
            # a Ctrl-C that a library swallowed (pybind11's module initialisation turns it into an
            # ImportError, which torch takes for "no triton"): the command ran on to its end, exit 0
            if sigint.seen:
                raise _interrupted()
            return result
        except OtherFlags as e:  # (told apart: reproduce says what to do when it resumed a stage so)
            raise _ResumedOtherwise(one_line(str(e)), e.flags) from None
        except UserError as e:
            raise click.ClickException(one_line(str(e))) from None
        except click.UsageError as e:
            raise click.ClickException(one_line(e.format_message())) from None
        except KeyboardInterrupt:  # (fit and train say what they can resume from)
            raise _interrupted() from None
        except _Interrupted:  # fit's or train's line, which names the checkpoint to resume from
            raise
        except OSError as e:
            if sigint.seen:
                raise _interrupted() from None
            if e.filename is None or e.errno is None:  # (a broken pipe's EPIPE: click's main ends it)
                raise
            raise click.ClickException(one_line(_os_error_line(e))) from None
        except Exception:
            # Ctrl-C that reached a DataLoader worker as it started kills it, and the main process
            # sees "worker exited unexpectedly" where the KeyboardInterrupt was lost: an interruption
            if sigint.seen:
                raise _interrupted() from None
            raise


def _os_error_line(e: OSError) -> str:
    """One line for a system's error on a file that no check of ours named first: a folder that
    torch makes as it loads (its compiler's cache, $TORCHINDUCTOR_CACHE_DIR or
    $TMPDIR/torchinductor_USER, where a file stands or the disk is full), a file of another
    library. The file, the system's reason, and where the file is torch's, what moves it."""
    line = f"{e.filename}: {e.strerror}"
    if "torchinductor" in str(e.filename) or (
            os.environ.get("TORCHINDUCTOR_CACHE_DIR") and str(e.filename).startswith(os.environ["TORCHINDUCTOR_CACHE_DIR"])):
        line += " (torch's compiler cache, made as torch loads; set TORCHINDUCTOR_CACHE_DIR to a folder it can make)"
    return line


def _echoed_to_stdout(e: BaseException) -> bool:
    """Whether ``e`` was raised by click.echo writing to stdout (its write, or its flush)."""
    tb, frame = e.__traceback__, None
    while tb is not None:
        tb, frame = tb.tb_next, tb.tb_frame
    return (frame is not None and frame.f_code.co_name == "echo" and frame.f_globals.get("__name__") == "click.utils"
            and not frame.f_locals.get("err"))


def _stdout_fails() -> bool:
    """Whether flushing stdout fails (what it holds unwritten is tried again)."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError:
        return True
    return False


class _OneProcess(click.Command):
    """A command that does not share its work among torchrun's processes (fit, export,
    reproduce): refused under torchrun once its flags are parsed, so ``--help`` still answers."""

    def invoke(self, ctx: click.Context):
        _refuse_torchrun(self.name)
        return super().invoke(ctx)


def _refuse_torchrun(what: str) -> None:
    """A UserError when run under torchrun with more than one process: each would do all the work."""
    world = torchrun_env()[2]
    if world > 1:
        raise UserError(f"{what} runs in one process; under torchrun ({world} processes) only train, score and "
                        "eval --prompt/--zero-shot share the work: run it without torchrun")


class _Float(click.FloatRange):
    """A float flag in a range, and finite: ``inf`` passes click's range checks but no option
    of a training run means anything at infinity (``--beta inf`` would never draw a threshold)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number", param, ctx)
        return number


class _Path(click.Path):
    """A path flag that is not empty: ``--out ""`` (an unset ``--out "$OUT"``) is the working
    directory to every file call, where a run wrote its files without a word. Nor does it hold a
    NUL byte (a caller in Python's, as no shell passes one): the first file call's ValueError
    ended the command in a traceback."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value:
            self.fail("an empty path (an unset shell variable?)", param, ctx)
        if isinstance(value, str) and "\0" in value:
            self.fail("a path holding a NUL byte, which no file name can", param, ctx)
        if isinstance(value, str) and not self.dir_okay and os.path.isdir(value):
            self.fail(self._a_folder(value, param, ctx), param, ctx)
        if isinstance(value, str) and not self.file_okay and os.path.exists(value) and not os.path.isdir(value):
            out = param is not None and "--out" in param.opts
            self.fail(f"{value} is a file; {_command(ctx)} writes a folder of files: give a folder's name" if out
                      else f"{value} is a file, not a folder", param, ctx)
        return super().convert(value, param, ctx)

    @staticmethod
    def _a_folder(value: str, param, ctx) -> str:
        """The line for a folder given to a file flag: the run folder itself given for the file it
        holds (``--prompt runs/fit1``), named; a folder given for score's or export's output file."""
        flag, command = param.opts[0] if param is not None and param.opts else "", _command(ctx)
        if flag == "--out":
            made = {"score": "one CSV file", "export": "one prompt file"}.get(command, "one file")
            example = {"score": "scores.csv", "export": "prompt.safetensors"}.get(command, "")
            return (f"{value} is a folder; {command} writes {made}" +
                    (f": give its name, e.g. {Path(value) / example}" if example else ""))
        held = [f for f in _IN_A_FOLDER.get((command, flag), ()) if os.path.isfile(Path(value) / f)]
        return f"{value} is a folder, not a file" + (f"; give the {held[0]} in it: {Path(value) / held[0]}"
                                                     if held else "")


# the file of a run folder that a file flag takes, by (command, flag): a folder given for the flag
# (`--prompt runs/fit1`) is named with it
_IN_A_FOLDER = {
    ("score", "--prompt"): ("prompt.safetensors",), ("eval", "--prompt"): ("prompt.safetensors",),
    ("eval", "--checkpoint"): ("model.safetensors",), ("export", "--checkpoint"): ("checkpoint.pt",),
    ("fit", "--split"): ("split.txt",), ("eval", "--split"): ("split.txt",),
    ("train", "--cam-model"): ("model.safetensors",),
}


def _command(ctx) -> str:
    """The command being parsed (``score``), or ``clip-smot``."""
    return ctx.command.name if ctx is not None and ctx.command is not None and ctx.command.name else "clip-smot"


class _Text(click.ParamType):
    """A text flag that says something: ``--pretrained ""`` (an unset ``--pretrained "$WEIGHTS"``)
    trained on random weights with no word but open_clip's warning; ``--ctx-init ""`` drew a
    random context. Either is now asked for by name (``none``; leaving the flag out)."""

    name = "text"
    _HINTS = {"pretrained": "; 'none' is random weights", "ctx_init": "; leave the flag out for a random context"}

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail(f"an empty value (an unset shell variable?){self._HINTS.get(param.name if param else '', '')}",
                      param, ctx)
        return value


# -h as well as --help, on the group and on each command: click keeps a command's help option from
# its first parse, so a command parsed without the group (make_context, as tests do) lost its -h
_HELP = {"help_option_names": ["-h", "--help"]}


@click.group(cls=_Group, context_settings=_HELP)
@click.version_option(__version__, prog_name="clip-smot")
def cli() -> None:
    """Out-of-distribution detection with smooth training (SMOT)."""


def _click_type(field: dataclasses.Field):
    """The click type of a config field: its choices, path kind or range (None: from the default)."""
    meta, kind = field.metadata, field_kind(field)
    if meta.get("choices") is not None:
        return click.Choice(meta["choices"])
    if meta.get("path"):
        return _Path(**{"any": {}, "file": {"dir_okay": False}, "dir": {"file_okay": False}}[meta["path"]])
    if meta.get("min") is None and meta.get("max") is None:
        return _Text() if kind == "str" else None
    bounds = {"min": meta["min"], "max": meta["max"], "min_open": meta["min_open"]}
    return click.IntRange(**bounds) if kind == "int" else _Float(**bounds)


def _option(field: dataclasses.Field, dest: str, required: bool):
    """The click option of a config field declared with clip_smot.common.configs.setting."""
    flag, kind = flag_of(field), field_kind(field)
    default = None if field.default is dataclasses.MISSING else field.default
    common = {"help": field.metadata.get("help"), "required": required}
    if field.default is not dataclasses.MISSING:  # (click takes an explicit None as a given default)
        common["default"] = default
    if kind == "bool" and default is None:  # on, off or decided later
        return click.option(f"{flag}/--no-{flag[2:]}", dest, **common)
    if kind == "bool":  # a flag; one that turns a setting on by default off (--no-cache) stores False
        return click.option(flag, dest, is_flag=True, flag_value=not default, **common)
    return click.option(flag, dest, type=_click_type(field), show_default=True,
                        multiple=kind == "dict", **common)  # (a dict: NAME=VALUE, repeatable)


def _options(config, *names: str, dest: dict[str, str] | None = None, optional: tuple[str, ...] = ()):
    """The click options of the fields ``names`` of the dataclass ``config``, in that order: flag,
    default, range or choices and help as each field declares them, once, in the library. A field
    without a default is a required option unless ``optional`` names it (one of several
    alternatives); ``dest`` renames the command function's parameters (where a field's name is
    a builtin's or reads ambiguously in the command)."""
    fields = {f.name: f for f in dataclasses.fields(config)}

    def decorate(command):
        for name in reversed(names):
            field = fields[name]
            required = field.default is dataclasses.MISSING and name not in optional
            command = _option(field, (dest or {}).get(name, name), required)(command)
        return command

    return decorate


def _given(options: dict, dest: dict[str, str] | None = None) -> set[str]:
    """The fields of ``options`` given on the command line (a flag given with its default value
    counts), ``dest`` the parameters renamed as in :func:`_options`: what a ``--resume`` compares
    with the saved run."""
    source = click.get_current_context().get_parameter_source
    return {name for name in options if source((dest or {}).get(name, name)) not in (None, ParameterSource.DEFAULT)}


@cli.command(cls=_OneProcess, context_settings=_HELP)
@_options(FitConfig, "data", "shots", "split", "seed", "out", "model", "pretrained", "cam_model", "n_ctx", "ctx_init",
          "csc", "class_position", "loss", "alpha", "beta", "lam", "T", "perturb", "sigma", "epochs", "batch_size",
          "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "precision", "device", "cuda_graph",
          "text_residual", "text_attention", "compile", "overlap_encoders", "workers", dest={"split": "split_file"})
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--dry-run", is_flag=True, help="One batch; print its loss; write nothing.")
def fit(split_file, resume, dry_run, **options) -> None:
    """Learn a CoOp prompt for a frozen CLIP model with the SMOT loss.

    Writes OUT/prompt.safetensors, split.txt, config.json, log.jsonl and checkpoint.pt.
    """
    options["split"] = split_file
    try:
        out = run_fit(FitConfig(**options), resume=resume, dry_run=dry_run,
                      flags=_given(options, {"split": "split_file"}))
    except KeyboardInterrupt:
        raise _interrupted(None if dry_run else options["out"]) from None
    if not dry_run:
        click.echo(one_line(f"prompt: {out / 'prompt.safetensors'}"))  # (a name of bytes not UTF-8: escaped)


@cli.command(context_settings=_HELP)
@_options(ScoreConfig, "prompt", "model", "pretrained", "scores", "batch_size", "device", "workers", "skip_unreadable",
          "use_cache", "decode", "precision", "out", "resume")
@click.argument("paths", nargs=-1, required=True, type=_Path())
def score(paths, **options) -> None:
    """Score images with a learned prompt (no training).

    PATHS are image files, folders (searched recursively), image lists (LIST.txt or
    ROOT::LIST.txt, one path a line, relative to the list's folder or to ROOT) or tar shards
    (SHARD.tar, webdataset layout). Writes a CSV
    with the columns path, pred, pred_index and one column per score (higher = more
    in-distribution).
    """
    try:
        with process_group(options["device"]) as (rank, _, _):
            skipped = run_score(ScoreConfig(paths=paths, **options))
    except KeyboardInterrupt:
        partial = Path(f"{options['out']}.partial")
        if partial.is_file():  # (fit's and train's lines name their checkpoint alike)
            raise _Interrupted(f"interrupted; {partial} holds the rows written so far: continue with the same "
                               "command and --resume") from None
        raise _interrupted() from None
    if skipped and rank == 0:  # (under torchrun every process knows them all: rank 0 lists them)
        click.echo(f"Skipped {len(skipped)} unreadable {skipped_kind(skipped)}:", err=True)
        for _, reason in skipped:  # (a file name holding a newline would start a line of its own)
            click.echo(f"  {one_line(reason)}", err=True)


def _parse_ood(values: tuple[str, ...]) -> dict[str, str | None]:
    """``NAME=DIR`` (a folder or image list) or a bare built-in set name (-> None): a bare name
    always means the built-in set, even where a folder of that name exists."""
    out: dict[str, str | None] = {}
    for v in values:
        name, sep, where = v.partition("=")
        if not name or (sep and not where):
            raise click.BadParameter(f"{v!r}: expected NAME=DIR or a built-in set name", param_hint="--ood")
        if name in out:
            raise click.BadParameter(f"OOD set {name!r} given twice", param_hint="--ood")
        out[name] = where if sep else None
    return out


@cli.command("eval", context_settings=_HELP)
@_options(ClipEvalConfig, "prompt", "zero_shot")
@_options(ResnetEvalConfig, "checkpoint", optional=("checkpoint",))
@_options(ClipEvalConfig, "model", "pretrained")
@_options(EvalConfig, "id_data", "id_train")
@_options(ClipEvalConfig, "split")
@_options(EvalConfig, "ood", "scores", "convention", "batch_size", "workers", "device",
          dest={"convention": "fpr_convention"})
@_options(ClipEvalConfig, "use_cache", "decode", "precision")
@_options(EvalConfig, "out")
def eval_(prompt, zero_shot, checkpoint, model, pretrained, split, use_cache, decode, precision, ood, fpr_convention,
          **shared) -> None:
    """Evaluate OOD detection on ID and OOD sets: metric tables and histograms.

    Writes OUT/metrics.csv, metrics.json, metrics.md and scores_hist.png (and, for --prompt or
    --zero-shot, config.json).
    """
    chosen = [name for name, v in (("--prompt", prompt), ("--zero-shot", zero_shot), ("--checkpoint", checkpoint)) if v]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --prompt, --zero-shot or --checkpoint")
    shared.update(ood=_parse_ood(ood), convention=fpr_convention)
    if checkpoint:
        _refuse_torchrun("eval --checkpoint")

        if split:
            raise click.UsageError("--split is for the CLIP track (--prompt); give the ResNet's --id-train a folder")
        if precision != "auto":
            raise click.UsageError("--precision is for the CLIP track (--prompt, --zero-shot); a ResNet is evaluated "
                                   "in fp32")
        clip_only = (("--model", model), ("--pretrained", pretrained), ("--no-cache", not use_cache),
                     ("--decode", decode != "auto"))  # (were ignored: a ResNet has its own, decodes by PIL, caches none)
        for flag in (f for f, given in clip_only if given):
            raise click.UsageError(f"{flag} is for the CLIP track (--prompt, --zero-shot), not --checkpoint")
        report = run_resnet_eval(ResnetEvalConfig(checkpoint=checkpoint, **shared))
    else:
        with process_group(shared["device"]):
            report = run_clip_eval(ClipEvalConfig(prompt=prompt, zero_shot=zero_shot, model=model,
                                                  pretrained=pretrained, split=split, use_cache=use_cache,
                                                  decode=decode, precision=precision, **shared))
    if report:  # (under torchrun: rank 0's, which wrote the files) the table, as metrics.md holds it
        out = Path(shared["out"])
        try:
            table = (out / "metrics.md").read_text(encoding="utf-8")
        except OSError as e:  # (a failing disk: every file is written, but the table it holds is not printed)
            raise UserError(f"{out / 'metrics.md'}: written, but cannot be read back to print it "
                            f"({e.strerror or e})") from None
        click.echo(table, nl=False)
        click.echo(one_line(f"written to {out}: {', '.join(n for n in REPORT_FILES if (out / n).is_file())}"))


_ARCHS = TrainConfig.__dataclass_fields__["arch"].metadata["choices"]  # --arch: the keys of resnet.networks.NETWORKS


@cli.command(context_settings=_HELP)
@_options(TrainConfig, "dataset", "data", "stage", "method", "arch", "cam_model", "epochs", "batch_size", "lr", "alpha",
          "beta", "lam", "T", "perturb", "sigma", "input_size", "device", "precision", "seed", "workers", "out")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--dry-run", is_flag=True, help="One training step; print its loss; write nothing.")
@_options(TrainConfig, "compile", "cuda_graph", dest={"compile": "compile_"})
def train(resume, dry_run, compile_, **options) -> None:
    """Train a ResNet (base CE, then SMOT) on CIFAR, ImageNet-200 or folders.

    Writes OUT/model.safetensors, config.json, log.jsonl, checkpoint.pt and summary.json.
    The same command under 'torchrun --nproc_per_node N' trains with DistributedDataParallel.
    """
    options["compile"] = compile_
    cfg = TrainConfig(**options)
    try:
        run_train(cfg, resume=resume, dry_run=dry_run, flags=_given(options, {"compile": "compile_"}))
    except KeyboardInterrupt:
        raise _interrupted(None if dry_run else cfg.out) from None


@cli.command(cls=_OneProcess, context_settings=_HELP)
@_options(ExportConfig, "checkpoint", "out", "model", "pretrained", "device")
def export(**options) -> None:
    """Re-export a learned prompt from a fit checkpoint as safetensors."""
    click.echo(one_line(f"prompt written to {export_prompt(ExportConfig(**options))}"))


def _run_stage(argv: list[str]) -> None:
    """Run one ``clip-smot`` command line in this process; its error names the stage's command."""
    out = argv[argv.index("--out") + 1] if "--out" in argv else ""
    try:
        cli.main(args=argv, prog_name="clip-smot", standalone_mode=False)
    except (_Interrupted, KeyboardInterrupt):  # (the stage's line would advise a --resume reproduce has not)
        raise _Interrupted(f"interrupted in the stage {out}; run the same reproduce command again: finished stages "
                           "are skipped, and an interrupted fit or training resumes") from None
    except _ResumedOtherwise as e:  # (reproduce resumed the stage's run, and says what to do)
        raise OtherFlags(f"clip-smot {argv[0]} --out {out}: {e.format_message()}", e.flags) from None
    except click.ClickException as e:
        raise click.ClickException(f"clip-smot {argv[0]} --out {out}: {e.format_message()}") from None


@cli.command(cls=_OneProcess, context_settings=_HELP)
# (not required to click: its own line for a missing choice is several, with tabs, made one with escapes)
@click.argument("table", type=click.Choice(list(TABLES)), required=False, metavar="TABLE")
@_options(ReproduceOptions, *(f.name for f in dataclasses.fields(ReproduceOptions)))
@click.option("--dry-run", is_flag=True, help="Print the clip-smot commands it would run; run nothing.")
def reproduce(table, dry_run, **options) -> None:
    """Run every stage behind one of the paper's tables, then write the table.

    Fits or trainings, then evaluations, each into OUT/<stage>/; a rerun skips finished stages
    and resumes an interrupted fit or training. Writes OUT/table.md and OUT/table.csv: the
    paper's numbers, ours and the difference.

    TABLE is one of table1 ... table9.
    """
    if table is None:
        raise click.UsageError(f"Missing argument 'TABLE': one of {', '.join(sorted(TABLES))}")
    run_reproduce(table, ReproduceOptions(**options), _run_stage, dry_run=dry_run,
                  echo=lambda line: click.echo(one_line(line)))


def main() -> None:
    """Console-script entry point."""
    # torch's advice when --workers exceeds the CPU count is noise before a one-line result or error
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    # torch.load's two-line remark on a plain pickle (protocol > 2) handed in as a checkpoint, a
    # --pretrained or --cam-model file, before the one line that refuses it
    warnings.filterwarnings("ignore", message="Detected pickle protocol")
    # and its remark on each sparse tensor of such a file (it checks it), before the line refusing it
    warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
    # and its remark that a TorchScript archive is one (the line refusing it says so)
    warnings.filterwarnings("ignore", message="'torch.load' received a zip file that looks like a TorchScript")
    # PIL's two-line warning for an image between its pixel limit and twice it (which decodes; one
    # beyond is refused in one line): set here, for every thread and worker, not per image
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # PIL's remarks on a damaged block it skips as an image decodes (an EXIF block cut short, a TIFF
    # tag past the file's end, an APNG of no frames): two lines an image beside the run's, or before
    # the one line refusing it; the image is read as its pixels, or refused, either way
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    _quiet_libtiff()
    try:
        cli(prog_name="clip-smot")
    finally:
        # the command is over: a Ctrl-C as the interpreter shuts down (torch's atexit callbacks) was a
        # traceback ("Exception ignored in atexit callback") and exit code 0
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, _interrupted_at_exit)


def _interrupted_at_exit(signum, frame) -> None:
    """SIGINT once the command is over: its line and exit code 130, at once (nothing is left to write)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 (a closed or broken stream: nothing more to say on it)
            pass
    try:
        os.write(2, b"Error: interrupted\n")
    except OSError:
        pass
    os._exit(130)


def _quiet_libtiff() -> None:
    """Unset the warning and error handlers of the libtiff that PIL decodes compressed TIFFs with:
    they write to the process's stderr ("LZWDecode: Not enough data at scanline 0"), out of reach of
    Python's filters, before the one line refusing the image (PIL still raises its error). Where
    the library is not found among the process's mapped files (not Linux), nothing is changed."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:  # (address, perms, offset, device, inode, path)
            paths = {parts[5].strip() for line in f if len(parts := line.split(None, 5)) == 6}
    except OSError:
        return
    for path in sorted(p for p in paths if os.path.basename(p).startswith("libtiff")):
        try:
            lib = ctypes.CDLL(path)
            for name in ("TIFFSetWarningHandler", "TIFFSetErrorHandler"):
                setter = getattr(lib, name)
                setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
                setter(None)
        except (OSError, AttributeError):  # (a file of that name that is no libtiff)
            continue


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
