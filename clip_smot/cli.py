"""The ``clip-smot`` command line: the click group and nothing else of substance.

This is the only module that imports click. Each command parses its flags, then calls one
function of the library; a :class:`~clip_smot.errors.UserError` from there becomes one line
on stderr and exit code 1 (SPEC section 6).
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import UserError


class _Group(click.Group):
    """A click group that turns a UserError anywhere below it into one clean line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            raise click.ClickException(str(e)) from None


def _not_implemented(name: str) -> None:
    raise click.ClickException(f"'clip-smot {name}' is not implemented yet in this version")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clip-smot")
def cli() -> None:
    """Out-of-distribution detection with smooth training (SMOT)."""


@cli.command()
def fit() -> None:
    """Learn a CoOp prompt for a frozen CLIP model with the SMOT loss."""
    _not_implemented("fit")


@cli.command()
@click.option("--prompt", type=click.Path(dir_okay=False), required=True, help="Learned prompt (.safetensors).")
@click.option("--model", "model_name", default=None, help="open_clip name or config JSON (default: from the prompt).")
@click.option("--pretrained", default=None, help="Pretrained tag or checkpoint file (default: from the prompt).")
@click.option("--scores", default="mcm", show_default=True,
              help="Comma-separated: mcm, msp, energy, maxlogit, gl-mcm (ViT only).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--workers", type=click.IntRange(min=0), default=4, show_default=True, help="Image-decoding worker processes.")
@click.option("--skip-unreadable", is_flag=True, help="Skip unreadable images (listed at the end) instead of failing.")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the image-feature cache.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output CSV file.")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def score(prompt, model_name, pretrained, scores, batch_size, device, workers, skip_unreadable, no_cache, out,
          paths) -> None:
    """Score images with a learned prompt (no training).

    PATHS are image files or folders (searched recursively). Writes a CSV with the columns
    path, pred, pred_index and one column per score (higher = more in-distribution).
    """
    from .scoring import run_score

    skipped = run_score(prompt=prompt, paths=paths, out=out, model=model_name, pretrained=pretrained, scores=scores,
                        batch_size=batch_size, device=device, workers=workers, skip_unreadable=skip_unreadable,
                        use_cache=not no_cache)
    if skipped:
        click.echo(f"Skipped {len(skipped)} unreadable image(s):", err=True)
        for _, reason in skipped:
            click.echo(f"  {reason}", err=True)


def _parse_ood(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, where = v.partition("=")
        if not sep:
            name, where = v, v  # a bare built-in name such as "svhn"
        if not name or not where:
            raise click.BadParameter(f"{v!r}: expected NAME=DIR or a built-in set name", param_hint="--ood")
        if name in out:
            raise click.BadParameter(f"OOD set {name!r} given twice", param_hint="--ood")
        out[name] = where
    return out


@cli.command("eval")
@click.option("--prompt", type=click.Path(dir_okay=False), help="Learned prompt (.safetensors) to evaluate (CLIP track).")
@click.option("--zero-shot", is_flag=True, help="CLIP track: plain 'a photo of a {c}.' prompts (the MCM baseline).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="ResNet model.safetensors from 'clip-smot train'.")
@click.option("--model", "model_name", default=None, help="CLIP: open_clip name or config JSON (default: from the prompt).")
@click.option("--pretrained", default=None, help="CLIP: pretrained tag or checkpoint file (default: from the prompt).")
@click.option("--id", "id_data", required=True, help="ID test data: a folder (val/<class>/...), or a built-in set (cifar10, ...).")
@click.option("--id-train", default=None, help="ResNet: ID training data for KNN/ViM/ReAct statistics (default: from the checkpoint).")
@click.option("--ood", multiple=True, required=True, help="OOD set as NAME=DIR (or NAME=LIST.txt), or a built-in name; repeatable.")
@click.option("--scores", default=None, help="Comma-separated scores (default: mcm for CLIP, msp for ResNets).")
@click.option("--fpr-convention", type=click.Choice(["id", "openood"]), default="id", show_default=True,
              help="FPR95 with ID positive (the paper) or OOD positive (OpenOOD).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=4, show_default=True, help="Image-decoding worker processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--no-cache", is_flag=True, help="CLIP: neither read nor write the image-feature cache.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder for the metric files.")
def eval_(prompt, zero_shot, checkpoint, model_name, pretrained, id_data, id_train, ood, scores, fpr_convention,
          batch_size, workers, device, no_cache, out) -> None:
    """Evaluate OOD detection on ID and OOD sets: metric tables and histograms.

    Writes OUT/metrics.csv, metrics.json, metrics.md and scores_hist.png.
    """
    chosen = [name for name, v in (("--prompt", prompt), ("--zero-shot", zero_shot), ("--checkpoint", checkpoint)) if v]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --prompt, --zero-shot or --checkpoint")
    ood_sets = _parse_ood(ood)
    score_list = [s.strip().lower() for s in scores.split(",") if s.strip()] if scores else None
    if checkpoint:
        from .resnet_eval import run_resnet_eval

        run_resnet_eval(checkpoint=checkpoint, id_data=id_data, id_train=id_train, ood=ood_sets, scores=score_list,
                        convention=fpr_convention, batch_size=batch_size, workers=workers, device=device, out=out)
    else:
        from .clip_eval import run_clip_eval

        run_clip_eval(prompt=prompt, zero_shot=zero_shot, model=model_name, pretrained=pretrained, id_data=id_data,
                      ood=ood_sets, scores=score_list, convention=fpr_convention, batch_size=batch_size,
                      workers=workers, device=device, out=out, use_cache=not no_cache)


@cli.command()
def train() -> None:
    """Train a ResNet (base CE, then SMOT) on CIFAR, ImageNet-200 or folders."""
    _not_implemented("train")


@cli.command()
def export() -> None:
    """Re-export a learned prompt from a fit checkpoint as safetensors."""
    _not_implemented("export")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="clip-smot")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
