"""OOD scores from logits or cosine similarities -> [B], higher = more in-distribution.

These functions only look at the tensors they are given; scores that need the network
itself (ODIN, GradNorm) or fitted statistics live with the evaluation code. torch only.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["SCORES", "energy", "gl_mcm", "local_mcm", "maxlogit", "mcm", "msp"]


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


def local_mcm(local_cosine: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Local MCM (Miyai et al., 2023): max over patches and classes of the per-patch MCM.

    Args:
        local_cosine: cos(patch feature, text feature), [B, N, K] (N patches, K classes).
        tau: softmax temperature over the classes.
    """
    return (local_cosine.float() / tau).softmax(dim=-1).amax(dim=(-2, -1))


def gl_mcm(cosine: torch.Tensor, local_cosine: torch.Tensor, tau: float = 1.0, local_weight: float = 1.0) -> torch.Tensor:
    """GL-MCM (Miyai et al., 2023): ``mcm(global) + local_weight * local_mcm(patches)``.

    Args:
        cosine: global cos(image, text), [B, K].
        local_cosine: per-patch cos(patch, text), [B, N, K].
        tau: softmax temperature of both terms.
        local_weight: weight of the local term (1 in the GL-MCM paper).
    """
    return mcm(cosine, tau) + local_weight * local_mcm(local_cosine, tau)
