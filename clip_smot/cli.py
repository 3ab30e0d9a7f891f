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
def score() -> None:
    """Score images with a learned prompt (no training)."""
    _not_implemented("score")


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
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder for the metric files.")
def eval_(prompt, zero_shot, checkpoint, model_name, pretrained, id_data, id_train, ood, scores, fpr_convention,
          batch_size, workers, device, out) -> None:
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
                      workers=workers, device=device, out=out)


_ARCHS = ("resnet18", "wrn40_2", "densenet_bc", "resnet_tiny")  # clip_smot.networks.NETWORKS (checked in a test)


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
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Global batch of original images, each with a masked copy (default 128; digits 64).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Initial lr (default 0.1; digits 0.05).")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=50.0, show_default=True,
              help="Threshold s ~ Beta(alpha, beta).")
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True)
@click.option("--lam", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="Weight of the masked term.")
@click.option("--T", "T", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Smoothing temperature (default: 10 CIFAR-10/digits, 150 CIFAR-100, 200 ImageNet-200).")
@click.option("--perturb", type=click.Choice(["zero", "one", "noise"]), default="zero", show_default=True,
              help="Masked region: black, white, or Gaussian noise (Table 9).")
@click.option("--sigma", type=click.FloatRange(min=0), default=0.1, show_default=True, help="Noise std for --perturb noise.")
@click.option("--input-size", type=click.IntRange(min=8), default=None,
              help="Square input size (default 32 for CIFAR/digits/small folders, 224 otherwise).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda (torchrun: one GPU per process).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA, fp32 on CPU.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=4, show_default=True,
              help="DataLoader workers (224-pixel sets; small images live on the device).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--dry-run", is_flag=True, help="One training step; print its loss; write nothing.")
def train(dataset, data, stage, method, arch, cam_model, epochs, batch_size, lr, alpha, beta, lam, T, perturb, sigma,
          input_size, device, precision, seed, workers, out, resume, dry_run) -> None:
    """Train a ResNet (base CE, then SMOT) on CIFAR, ImageNet-200 or folders.

    Writes OUT/model.safetensors, config.json, log.jsonl, checkpoint.pt and summary.json.
    The same command under 'torchrun --nproc_per_node N' trains with DistributedDataParallel.
    """
    from .train import TrainConfig, run_train

    if dataset is None and data is None and not resume:
        raise click.UsageError("give --dataset NAME or --data DIR")
    cfg = TrainConfig(out=out, stage=stage, dataset=dataset, data=data, method=method, arch=arch, cam_model=cam_model,
                      epochs=epochs, batch_size=batch_size, lr=lr, alpha=alpha, beta=beta, lam=lam, T=T,
                      perturb=perturb, sigma=sigma, input_size=input_size, device=device, precision=precision,
                      seed=seed, workers=workers)
    run_train(cfg, resume=resume, dry_run=dry_run)


@cli.command()
def export() -> None:
    """Re-export a learned prompt from a fit checkpoint as safetensors."""
    _not_implemented("export")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="clip-smot")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
