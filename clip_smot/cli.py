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


@cli.command("eval")
def eval_() -> None:
    """Evaluate OOD detection on ID and OOD sets: metric tables and histograms."""
    _not_implemented("eval")


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
