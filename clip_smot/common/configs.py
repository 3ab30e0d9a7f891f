"""Bounds and type checks shared by the commands' configurations."""

from __future__ import annotations

import dataclasses
from typing import Any

from clip_smot.common.errors import UserError

__all__ = ["MAX_SEED", "MAX_WORKERS", "MAX_BATCH", "check_field_types"]


MAX_SEED = 2**63 - 1  # torch seeds take 64 bits; numpy's default_rng no negatives: [0, 2**63 - 1] suits both


MAX_WORKERS = 256  # --workers: decoding threads or processes; each process holds a copy of the loader's state


MAX_BATCH = 4096  # --batch-size: a batch of 224-pixel images in fp32 is 2.4 GiB at this size, decoded at once


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}


def check_field_types(obj: Any, where: str) -> None:
    """Raise a UserError naming ``where`` when a field of the dataclass ``obj`` holds a value of
    another type than its annotation says (``int``, ``float``, ``str``, ``bool`` and their unions
    with ``None``; a bool is no int): a configuration read back from a file edited by hand."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        allowed = tuple(t for name in str(f.type).split("|") for t in _TYPES[name.strip()])
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise UserError(f"{where}: its configuration's {f.name} is {value!r}, not {f.type}")
