"""The ``clip-smot`` command line: the click group and nothing else of substance.

This is the only module that imports click. Each command parses its flags, then calls one
function of the library; a :class:`~clip_smot.common.errors.UserError` from there becomes one line
on stderr and exit code 1 (docs/method.md §6).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from pathlib import Path

import click
from click.core import ParameterSource

from clip_smot import __version__
from clip_smot.clip.fit import ATTENTION, CLASS_POSITIONS, LOSSES
from clip_smot.common.configs import MAX_BATCH, MAX_SEED, MAX_WORKERS
from clip_smot.common.device import PRECISIONS
from clip_smot.common.distributed import process_group, torchrun_env, writes_outputs
from clip_smot.common.errors import UserError, one_line
from clip_smot.reproduce import TABLES
from clip_smot.smot import PERTURBATIONS


class _Interrupted(click.ClickException):
    """Ctrl-C: one line and the shell's exit code for SIGINT (128 + 2), not click's 'Aborted!'."""

    exit_code = 130


def _interrupted(out: str | None = None) -> _Interrupted:
    """The Ctrl-C line; for a fit or train run in ``out``, what it can be continued from."""
    if out is not None and (Path(out) / "checkpoint.pt").is_file():
        return _Interrupted(f"interrupted; {Path(out) / 'checkpoint.pt'} holds the last finished epoch: "
                            "continue with the same command and --resume")
    return _Interrupted("interrupted" if out is None else "interrupted before the first checkpoint; nothing to resume")


class _Group(click.Group):
    """A click group whose commands answer bad input with one clean line (docs/method.md §6): a
    UserError from the library, and click's own usage errors (a bad or missing flag value),
    which would otherwise print a usage block; Ctrl-C is one line too."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)  # (parses the command's flags too)
        except UserError as e:
            raise click.ClickException(one_line(str(e))) from None
        except click.UsageError as e:
            raise click.ClickException(e.format_message()) from None
        except KeyboardInterrupt:  # (fit and train say what they can resume from)
            raise _interrupted() from None

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None and cmd.name not in _SHARED:
            _refuse_torchrun(cmd.name)
        return name, cmd, rest


_SHARED = ("train", "score", "eval")  # the commands that share their work among torchrun's processes


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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clip-smot")
def cli() -> None:
    """Out-of-distribution detection with smooth training (SMOT)."""


_POSITIVE = _Float(min=0, min_open=True)
_SEED = click.IntRange(0, MAX_SEED)  # what both torch's and numpy's generators take
_WORKERS = click.IntRange(0, MAX_WORKERS)
_BATCH = click.IntRange(1, MAX_BATCH)  # a whole batch is decoded and held at once
_DECODE = ("auto", "cpu", "gpu")  # clip_smot.clip.decoding.DECODE_CHOICES (checked in a test)


@cli.command()
@click.option("--data", type=click.Path(), default=None,
              help="DATA/train/<class>/* (ImageNet wnids or any folders); default: the bundled digits.")
@click.option("--shots", type=click.IntRange(min=1), default=16, show_default=True, help="Images per class.")
@click.option("--split", "split_file", type=click.Path(dir_okay=False), default=None,
              help="Reuse a split.txt (relative/path<TAB>label) instead of drawing one.")
@click.option("--seed", type=_SEED, default=1, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="runs/fit", show_default=True)
@click.option("--model", default="ViT-B-16", show_default=True, help="open_clip name or model-config JSON.")
@click.option("--pretrained", default="openai", show_default=True,
              help="Pretrained tag or local checkpoint (.pt/.bin/.safetensors); 'none' = random weights.")
@click.option("--cam-model", default="resnet18-imagenet", show_default=True,
              help="CAM network: resnet18-imagenet, a torchvision ResNet state dict, or a model.safetensors "
                   "from 'clip-smot train'.")
@click.option("--n-ctx", type=click.IntRange(min=1), default=16, show_default=True, help="Context vectors.")
@click.option("--ctx-init", default=None, help="Initialise the context from words, e.g. 'a photo of a'.")
@click.option("--csc", is_flag=True, help="Class-specific contexts.")
@click.option("--class-position", type=click.Choice(CLASS_POSITIONS), default="end", show_default=True)
@click.option("--loss", type=click.Choice(LOSSES), default="smot", show_default=True,
              help="smot, or ce (plain CoOp, the baseline).")
@click.option("--alpha", type=_POSITIVE, default=50.0, show_default=True, help="Beta(alpha, beta) threshold draw.")
@click.option("--beta", type=_POSITIVE, default=20.0, show_default=True)
@click.option("--lam", type=_Float(0, 1), default=0.1, show_default=True, help="Weight of the masked term.")
@click.option("--T", "T", type=_POSITIVE, default=200.0, show_default=True, help="eps(t) temperature.")
@click.option("--perturb", type=click.Choice(PERTURBATIONS), default="zero", show_default=True)
@click.option("--sigma", type=_Float(min=0), default=0.1, show_default=True, help="Std of --perturb noise.")
@click.option("--epochs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--batch-size", type=_BATCH, default=32, show_default=True)
@click.option("--lr", type=_POSITIVE, default=0.002, show_default=True)
@click.option("--momentum", type=_Float(0, 1), default=0.9, show_default=True)
@click.option("--weight-decay", type=_Float(min=0), default=5e-4, show_default=True)
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--warmup-lr", type=_POSITIVE, default=1e-5, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="bf16", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--cuda-graph/--no-cuda-graph", default=None,
              help="Replay each step's forward+backward as a CUDA graph (CUDA only).  [default: on with CUDA]")
@click.option("--text-residual", type=click.Choice(["fp32", "precision"]), default="fp32", show_default=True,
              help="Text tower's residual stream: fp32, or in --precision (the whole tower in bf16; faster).")
@click.option("--text-attention", type=click.Choice(("auto", *ATTENTION)), default="auto",
              show_default=True, help="Text attention layout (exact either way; square: one is_causal SDPA over "
              "prefix + suffix; flex: the flat token list with a block-sparse mask, FlexAttention on CUDA); "
              "auto: flex with CUDA (square before Ampere), else causal (square with --compile).")
@click.option("--compile/--no-compile", "compile", default=None,
              help="torch.compile the text layers (needs --text-attention square or flex) and the image "
              "encoder's blocks (compiled once, at the first step).  [default: on with CUDA]")
@click.option("--overlap-encoders/--no-overlap-encoders", default=None,
              help="Encode the images on a second CUDA stream while the text encoder runs (exact; CUDA only).  "
              "[default: on with CUDA]")
@click.option("--workers", type=_WORKERS, default=4, show_default=True, help="Image-decoding threads.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--dry-run", is_flag=True, help="One batch, then stop (writes nothing).")
def fit(split_file, **options) -> None:
    """Learn a CoOp prompt for a frozen CLIP model with the SMOT loss.

    Writes OUT/prompt.safetensors, split.txt, config.json, log.jsonl and checkpoint.pt.
    """
    from clip_smot.clip.fit import FitConfig, run_fit

    try:
        out = run_fit(FitConfig(split=split_file, **options))
    except KeyboardInterrupt:
        raise _interrupted(None if options["dry_run"] else options["out"]) from None
    if not options["dry_run"]:
        click.echo(f"prompt: {out / 'prompt.safetensors'}")


@cli.command()
@click.option("--prompt", type=click.Path(dir_okay=False), required=True, help="Learned prompt (.safetensors).")
@click.option("--model", "model_name", default=None, help="open_clip name or config JSON (default: from the prompt).")
@click.option("--pretrained", default=None, help="Pretrained tag or checkpoint file (default: from the prompt).")
@click.option("--scores", default="mcm", show_default=True,
              help="Comma-separated: mcm, msp, energy, maxlogit, gl-mcm (ViT only), odin, gradnorm "
                   "(react, knn, vim: clip-smot eval).")
@click.option("--batch-size", type=_BATCH, default=256, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--workers", type=_WORKERS, default=4, show_default=True, help="Image-decoding worker processes.")
@click.option("--skip-unreadable", is_flag=True, help="Skip unreadable images (listed at the end) instead of failing.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the image-feature cache.")
@click.option("--decode", type=click.Choice(_DECODE), default="auto", show_default=True,
              help="JPEG decoding: gpu (decode_jpeg on the CUDA device), cpu (PIL in the workers); auto: gpu on CUDA.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output CSV file.")
@click.option("--resume", is_flag=True, help="Continue after the last complete row of OUT.partial.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def score(prompt, model_name, pretrained, scores, batch_size, device, workers, skip_unreadable, no_cache, decode,
          out, resume, paths) -> None:
    """Score images with a learned prompt (no training).

    PATHS are image files, folders (searched recursively), image lists (LIST.txt or
    ROOT::LIST.txt, one path a line) or tar shards (SHARD.tar, webdataset layout). Writes a CSV
    with the columns path, pred, pred_index and one column per score (higher = more
    in-distribution).
    """
    from clip_smot.clip.scorer import run_score

    with process_group(device):
        skipped = run_score(prompt=prompt, paths=paths, out=out, model=model_name, pretrained=pretrained,
                            scores=scores, batch_size=batch_size, device=device, workers=workers,
                            skip_unreadable=skip_unreadable, use_cache=not no_cache, resume=resume, decode=decode)
    if skipped and writes_outputs():  # (under torchrun every process knows them all: rank 0 lists them)
        click.echo(f"Skipped {len(skipped)} unreadable image(s):", err=True)
        for _, reason in skipped:
            click.echo(f"  {reason}", err=True)


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


@cli.command("eval")
@click.option("--prompt", type=click.Path(dir_okay=False), help="Learned prompt (.safetensors) to evaluate (CLIP track).")
@click.option("--zero-shot", is_flag=True, help="CLIP track: plain 'a photo of a {c}.' prompts (the MCM baseline).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="ResNet model.safetensors from 'clip-smot train'.")
@click.option("--model", "model_name", default=None, help="CLIP: open_clip name or config JSON (default: from the prompt).")
@click.option("--pretrained", default=None, help="CLIP: pretrained tag or checkpoint file (default: from the prompt).")
@click.option("--id", "id_data", required=True, help="ID test data: a folder (val/<class>/...), or a built-in set (cifar10, ...).")
@click.option("--id-train", default=None,
              help="ID training data for the KNN/ViM/ReAct statistics (default: ResNet, from the checkpoint; "
                   "CLIP, the prompt's own few-shot images).")
@click.option("--split", "split_file", type=click.Path(dir_okay=False), default=None,
              help="CLIP: a split.txt choosing those images (relative to --id-train, or to the prompt's data).")
@click.option("--ood", multiple=True, required=True,
              help="OOD set as NAME=DIR (or NAME=LIST.txt), or a bare built-in set name; repeatable.")
@click.option("--scores", default=None, help="Comma-separated scores (default: mcm for CLIP, msp for ResNets).")
@click.option("--fpr-convention", type=click.Choice(["id", "openood"]), default="id", show_default=True,
              help="FPR95 with ID positive (the paper) or OOD positive (OpenOOD).")
@click.option("--batch-size", type=_BATCH, default=256, show_default=True)
@click.option("--workers", type=_WORKERS, default=4, show_default=True, help="Image-decoding worker processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--no-cache", is_flag=True, help="CLIP: neither read nor write the image-feature cache.")
@click.option("--decode", type=click.Choice(_DECODE), default="auto", show_default=True,
              help="CLIP: JPEG decoding, gpu (decode_jpeg on the CUDA device) or cpu (PIL); auto: gpu on CUDA.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder for the metric files.")
def eval_(prompt, zero_shot, checkpoint, model_name, pretrained, id_data, id_train, split_file, ood, scores,
          fpr_convention, batch_size, workers, device, no_cache, decode, out) -> None:
    """Evaluate OOD detection on ID and OOD sets: metric tables and histograms.

    Writes OUT/metrics.csv, metrics.json, metrics.md and scores_hist.png (and, for --prompt or
    --zero-shot, config.json).
    """
    chosen = [name for name, v in (("--prompt", prompt), ("--zero-shot", zero_shot), ("--checkpoint", checkpoint)) if v]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --prompt, --zero-shot or --checkpoint")
    ood_sets = _parse_ood(ood)
    score_list = [s.strip().lower() for s in scores.split(",") if s.strip()] if scores else None
    if checkpoint:
        from clip_smot.resnet.evaluate import run_resnet_eval

        _refuse_torchrun("eval --checkpoint")

        if split_file:
            raise click.UsageError("--split is for the CLIP track (--prompt); give the ResNet's --id-train a folder")
        run_resnet_eval(checkpoint=checkpoint, id_data=id_data, id_train=id_train, ood=ood_sets, scores=score_list,
                        convention=fpr_convention, batch_size=batch_size, workers=workers, device=device, out=out)
    else:
        from clip_smot.clip.evaluate import run_clip_eval

        with process_group(device):
            run_clip_eval(prompt=prompt, zero_shot=zero_shot, model=model_name, pretrained=pretrained,
                          id_data=id_data, ood=ood_sets, scores=score_list, convention=fpr_convention,
                          batch_size=batch_size, workers=workers, device=device, out=out, use_cache=not no_cache,
                          id_train=id_train, split=split_file, decode=decode)


_ARCHS = ("resnet18", "wrn40_2", "densenet_bc", "resnet_tiny")  # clip_smot.resnet.networks.NETWORKS (checked in a test)
_MAX_INPUT_SIZE = 1024  # clip_smot.resnet.networks.MAX_INPUT_SIZE (checked in a test; networks imports torch)


@cli.command()
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100", "imagenet200", "digits"]), default=None,
              help="Built-in ID set (digits: the offline embedded set).")
@click.option("--data", type=click.Path(), default=None,
              help="Folder with train/<class>/ and val/<class>/; with --dataset: the set's root "
                   "(required for imagenet200: the ImageNet folder).")
@click.option("--stage", type=click.Choice(["base", "smot"]), default="base", show_default=True,
              help="base: lr / 10 at 40%/70% of the epochs; smot: cosine decay.")
@click.option("--method", type=click.Choice(["ce", "ls", "logitnorm", "smot"]), default=None,
              help="Loss (default: ce for --stage base, smot for --stage smot).")
@click.option("--arch", type=click.Choice(_ARCHS), default=None,
              help="Network (default resnet18; resnet_tiny for digits).")
@click.option("--cam-model", type=click.Path(dir_okay=False), default=None,
              help="The base model's model.safetensors: CAMs for the SMOT method (required for it).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Default 200 (base) / 300 (smot); digits 8.")
@click.option("--batch-size", type=_BATCH, default=None,
              help="Global batch of original images, each with a masked copy (default 128; digits 64).")
@click.option("--lr", type=_POSITIVE, default=None, help="Initial lr (default 0.1; digits 0.05).")
@click.option("--alpha", type=_POSITIVE, default=50.0, show_default=True,
              help="Threshold s ~ Beta(alpha, beta).")
@click.option("--beta", type=_POSITIVE, default=20.0, show_default=True)
@click.option("--lam", type=_Float(0, 1), default=0.1, show_default=True, help="Weight of the masked term.")
@click.option("--T", "T", type=_POSITIVE, default=None,
              help="Smoothing temperature (default: 10 CIFAR-10/digits, 150 CIFAR-100, 200 ImageNet-200).")
@click.option("--perturb", type=click.Choice(PERTURBATIONS), default="zero", show_default=True,
              help="Masked region: black, white, or Gaussian noise (Table 9).")
@click.option("--sigma", type=_Float(min=0), default=0.1, show_default=True, help="Noise std for --perturb noise.")
@click.option("--input-size", type=click.IntRange(8, _MAX_INPUT_SIZE), default=None,
              help=f"Square input size, 8 to {_MAX_INPUT_SIZE} (default 32 for CIFAR/digits/small folders, 224 "
                   "otherwise).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda (torchrun: one GPU per process).")
@click.option("--precision", type=click.Choice(("auto", *PRECISIONS)), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA, fp32 on CPU.")
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option("--workers", type=_WORKERS, default=4, show_default=True,
              help="DataLoader workers (224-pixel sets; small images live on the device).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--dry-run", is_flag=True, help="One training step; print its loss; write nothing.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the trained and the CAM network (compiles once at the start).")
@click.option("--cuda-graph", is_flag=True,
              help="torch.compile with CUDA graphs (mode reduce-overhead): fewest launches per step; CUDA only.")
def train(dataset, data, stage, method, arch, cam_model, epochs, batch_size, lr, alpha, beta, lam, T, perturb, sigma,
          input_size, device, precision, seed, workers, out, resume, dry_run, compile_, cuda_graph) -> None:
    """Train a ResNet (base CE, then SMOT) on CIFAR, ImageNet-200 or folders.

    Writes OUT/model.safetensors, config.json, log.jsonl, checkpoint.pt and summary.json.
    The same command under 'torchrun --nproc_per_node N' trains with DistributedDataParallel.
    """
    from clip_smot.resnet.train import TrainConfig, run_train

    if dataset is None and data is None and not resume:
        raise click.UsageError("give --dataset NAME or --data DIR")
    cfg = TrainConfig(out=out, stage=stage, dataset=dataset, data=data, method=method, arch=arch, cam_model=cam_model,
                      epochs=epochs, batch_size=batch_size, lr=lr, alpha=alpha, beta=beta, lam=lam, T=T,
                      perturb=perturb, sigma=sigma, input_size=input_size, device=device, precision=precision,
                      seed=seed, workers=workers, compile=compile_, cuda_graph=cuda_graph)
    source = click.get_current_context().get_parameter_source  # (a flag given with its default value counts)
    flags = {f.name for f in dataclasses.fields(cfg)
             if source("compile_" if f.name == "compile" else f.name) not in (None, ParameterSource.DEFAULT)}
    try:
        run_train(cfg, resume=resume, dry_run=dry_run, flags=flags)
    except KeyboardInterrupt:
        raise _interrupted(None if dry_run else out) from None


@cli.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True, help="OUT/checkpoint.pt of 'clip-smot fit'.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Prompt file to write (.safetensors).")
@click.option("--model", default=None, help="Override the CLIP model named in the checkpoint (same architecture).")
@click.option("--pretrained", default=None, help="Override the pretrained tag or checkpoint file.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def export(checkpoint, out, model, pretrained, device) -> None:
    """Re-export a learned prompt from a fit checkpoint as safetensors."""
    from clip_smot.clip.fit import export_prompt

    click.echo(f"prompt written to {export_prompt(checkpoint, out, model=model, pretrained=pretrained, device=device)}")


def _run_stage(argv: list[str]) -> None:
    """Run one ``clip-smot`` command line in this process; its error names the stage's command."""
    try:
        cli.main(args=argv, prog_name="clip-smot", standalone_mode=False)
    except _Interrupted:
        raise
    except click.ClickException as e:
        out = argv[argv.index("--out") + 1] if "--out" in argv else ""
        raise click.ClickException(f"clip-smot {argv[0]} --out {out}: {e.format_message()}") from None


@cli.command()
@click.argument("table", type=click.Choice(list(TABLES)))
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Output folder: one sub-folder per stage, then table.md and table.csv.")
@click.option("--imagenet", type=click.Path(file_okay=False), default=None,
              help="IMAGENET with train/<wnid>/ and val/<wnid>/ (table8, table4).")
@click.option("--ood-root", type=click.Path(file_okay=False), default=None,
              help="Folder of the OOD sets: iNaturalist, SUN, Places, Textures (or dtd/images), iSUN, LSUN.")
@click.option("--cifar-root", type=click.Path(file_okay=False), default=None,
              help="torchvision's CIFAR-10/100 (and SVHN) files (tables 1-3, 5-7, 9).")
@click.option("--model", default=None, help="CLIP: open_clip name or config JSON (default: fit's, ViT-B-16).")
@click.option("--pretrained", default=None, help="CLIP: pretrained tag or checkpoint file (default: fit's, openai).")
@click.option("--cam-model", default=None, help="CLIP fit: CAM network (default: fit's, resnet18-imagenet).")
@click.option("--shots", type=click.IntRange(min=1), default=None, help="CLIP fit: images per class (default 16).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Every fit and training (default: theirs).")
@click.option("--batch-size", type=_BATCH, default=None,
              help="Every fit and training: images per step (default: theirs).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="Every fit and training.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Every stage (default auto).")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Every stage (default 4).")
@click.option("--dry-run", is_flag=True, help="Print the clip-smot commands it would run; run nothing.")
def reproduce(table, dry_run, **options) -> None:
    """Run every stage behind one of the paper's tables, then write the table.

    Fits or trainings, then evaluations, each into OUT/<stage>/; a rerun skips finished stages
    and resumes an interrupted fit or training. Writes OUT/table.md and OUT/table.csv: the
    paper's numbers, ours and the difference.
    """
    from clip_smot.reproduce import ReproduceOptions, run_reproduce

    run_reproduce(table, ReproduceOptions(**options), _run_stage, dry_run=dry_run, echo=click.echo)


def main() -> None:
    """Console-script entry point."""
    # torch's advice when --workers exceeds the CPU count is noise before a one-line result or error
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    cli(prog_name="clip-smot")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
