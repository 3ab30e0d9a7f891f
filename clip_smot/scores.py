"""OOD scores from logits or cosine similarities -> [B], higher = more in-distribution.

These functions only look at the tensors they are given; scores that need the network
itself (ODIN, GradNorm) or fitted statistics live with the evaluation code. torch only.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["SCORES", "energy", "maxlogit", "mcm", "msp"]


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017)."""
    return logits.float().softmax(dim=-1).amax(dim=-1)


def maxlogit(logits: torch.Tensor) -> torch.Tensor:
    """Largest logit (Hendrycks et al., 2022)."""
    return logits.float().amax(dim=-1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(logits / T)`` (Liu et al., 2020)."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=-1)


def mcm(cosine: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Maximum concept matching (Ming et al., 2022): max softmax of ``cos(image, text) / tau``.

    Takes cosine similarities in [-1, 1], not logits scaled by CLIP's ``logit_scale``.
    """
    return (cosine.float() / tau).softmax(dim=-1).amax(dim=-1)


# name -> (function, what it takes: "logits" or "cosine")
SCORES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "msp": (msp, "logits"),
    "maxlogit": (maxlogit, "logits"),
    "energy": (energy, "logits"),
    "mcm": (mcm, "cosine"),
}
