"""What a run folder holds: its files, and checks on a checkpoint's contents."""

from __future__ import annotations

import math
from typing import Any

import torch

from clip_smot.common.errors import UserError, first_line

__all__ = ["RUN_FILES", "holds_its_values", "load_optimizer_state"]


def holds_its_values(t: torch.Tensor) -> bool:
    """Whether the tensor ``t`` (read from a file) has storage for each of its values: a tensor
    that repeats one value through zero strides declares a shape far larger than its file, and
    whatever is computed from it at that shape would be allocated in full."""
    return t.untyped_storage().nbytes() >= t.numel() * t.element_size()


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, where: str) -> None:
    """``optimizer.load_state_dict(state)`` once ``state`` is seen to fit: one group per group, as
    many parameters, finite numbers for its hyperparameters and, per parameter, tensors of that
    parameter's shape (torch checks none of these; the first step would fail, or train wrongly).

    Raises:
        UserError: naming ``where``, when the state does not fit.
    """
    try:
        groups, per_param = state["param_groups"], state["state"]
        if len(groups) != len(optimizer.param_groups):
            raise ValueError(f"{len(groups)} parameter groups, not {len(optimizer.param_groups)}")
        for ours, theirs in zip(optimizer.param_groups, groups):
            if len(theirs["params"]) != len(ours["params"]):
                raise ValueError(f"{len(theirs['params'])} parameters in a group, not {len(ours['params'])}")
            for key, value in ours.items():
                number = theirs[key]
                if isinstance(value, float) and not (isinstance(number, (int, float)) and math.isfinite(number)):
                    raise ValueError(f"{key} is {number!r}")
            for i, p in zip(theirs["params"], ours["params"]):
                for name, v in per_param.get(i, {}).items():
                    if isinstance(v, torch.Tensor) and v.ndim and v.shape != p.shape:
                        raise ValueError(f"{name} has shape {list(v.shape)}, not {list(p.shape)}")
        optimizer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        raise UserError(f"{where}: its optimizer state does not fit ({type(e).__name__}: {first_line(e)})") from None


RUN_FILES = ("checkpoint.pt", "prompt.safetensors", "model.safetensors")  # what fit and train write
