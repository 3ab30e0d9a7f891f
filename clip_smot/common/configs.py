"""The commands' configurations: one declaration per option, bounds and type checks.

Each option of a command is a field of a frozen dataclass, declared with :func:`setting`: its
default, its range or choices and its help text, once. :func:`check_ranges` checks a
configuration against those declarations (for a caller of the library, a checkpoint or a
hand-edited file); the command line (``cli.py``) builds its click options from the same fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Collection
from typing import Any

from clip_smot.common.errors import UserError
from clip_smot.common.files import parse_json

__all__ = ["MAX_SEED", "MAX_WORKERS", "MAX_BATCH", "MAX_SGD_FACTOR", "JsonConfig", "check_field_types", "check_ranges",
           "check_smot_only", "field_kind", "flag_of", "known_fields", "setting"]


MAX_SEED = 2**63 - 1  # torch seeds take 64 bits; numpy's default_rng no negatives: [0, 2**63 - 1] suits both


MAX_WORKERS = 256  # --workers: decoding threads or processes; each process holds a copy of the loader's state


MAX_BATCH = 4096  # --batch-size: a batch of 224-pixel images in fp32 is 2.4 GiB at this size, decoded at once


# SGD's step converts the lr and the weight decay to the float32 of the weights (its largest value
# is 3.4e38): a larger one stopped the first step with a traceback
MAX_SGD_FACTOR = 1e38


def setting(default: Any = dataclasses.MISSING, help: str | None = None, *, flag: str | bool | None = None,
            min: float | None = None, max: float | None = None, min_open: bool = False,
            choices: tuple | None = None, check_choices: bool = True, path: str | None = None) -> Any:
    """A dataclass field that declares one option of a command.

    Args:
        default: the value when the option is not given; none: the option is required.
        help: the option's help text (``--help``).
        flag: the command-line flag when it is not ``--`` + the field's name with dashes, or
            False for a field with no flag (settable from Python and files only).
        min, max, min_open: the allowed range of a number, ``[min, max]`` (``(min, max]`` with
            ``min_open``), either end open when None; a float in a range is finite too.
        choices: the allowed values.
        check_choices: False where the command line offers ``choices`` but the library takes
            more (``--device``: ``cuda:N`` too, which the device code checks).
        path: a path option: ``"file"``, ``"dir"`` or ``"any"`` (what the command line accepts).
    """
    meta = {"help": help, "flag": flag, "min": min, "max": max, "min_open": min_open, "choices": choices,
            "check_choices": check_choices, "path": path}
    return dataclasses.field(default=default, metadata=meta)


def flag_of(field: dataclasses.Field) -> str | None:
    """The command-line flag of a field declared with :func:`setting` (None: it has none, or the
    field is no option)."""
    flag = field.metadata.get("flag")
    if flag is False or not field.metadata:
        return None
    return flag or "--" + field.name.replace("_", "-")


def field_kind(field: dataclasses.Field) -> str:
    """The type of a config field as its annotation names it first: ``int``, ``bool``, ``dict``, ...
    (``"int | None"`` is ``int``): how the command line reads its value."""
    return field.type.split("[")[0].split("|")[0].strip()


def _range_text(meta) -> str:
    lo, hi = meta["min"], meta["max"]
    if lo is not None and hi is not None:
        return f"must be in {'(' if meta['min_open'] else '['}{lo}, {hi}]"
    return f"must be {'>' if meta['min_open'] else '>='} {lo}" if lo is not None else f"must be <= {hi}"


def _problem(value: Any, meta) -> str | None:
    """What is wrong with ``value`` against a field's declared choices or range (None: nothing)."""
    if value is None or not meta:
        return None
    if meta.get("choices") is not None and meta["check_choices"] and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))}"
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "must be a number"
    try:
        if not math.isfinite(value):
            return "must be a finite number"
    except OverflowError:  # an integer past any float (a flag, a hand-edited file): past any range, or,
        # of a range open above, past the float math that takes it (--epochs 10**309 said "must be >= 1")
        above = hi is None and value > 0
        return f"{_range_text(meta)} and at most {sys.float_info.max:g} (float64's largest)" if above else \
            _range_text(meta)
    if (lo is not None and (value <= lo if meta["min_open"] else value < lo)) or (hi is not None and value > hi):
        return _range_text(meta)
    return None


def check_ranges(cfg: Any) -> None:
    """Raise a UserError naming the flag (``--lam 2.0: must be in [0, 1]``) for the first field
    of the dataclass ``cfg`` whose value is outside its declared range or choices; a field with
    no flag is named ``ClassName.field``. None (a default decided later) passes."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        problem = _problem(value, f.metadata)
        if problem:
            raise UserError(f"{flag_of(f) or type(cfg).__name__ + '.' + f.name} {value}: {problem}")


# the options that only the SMOT loss reads (the threshold draw, the masked term, its perturbation)
SMOT_ONLY = ("alpha", "beta", "lam", "T", "perturb", "sigma")


def check_smot_only(cfg: Any, loss: str, loss_flag: str, given: Collection[str]) -> None:
    """A UserError naming the flag of a :data:`SMOT_ONLY` option given (``given``: field names)
    to a run of another loss (``loss``, chosen by ``loss_flag``): the run went on without it, not
    a word said (``--loss ce --lam 0.5`` trained plain cross-entropy)."""
    name = next((n for n in SMOT_ONLY if n in given), None) if loss != "smot" else None
    if name is not None:
        field = next(f for f in dataclasses.fields(cfg) if f.name == name)
        raise UserError(f"{flag_of(field)} {getattr(cfg, name)}: only the smot loss uses it (this run's "
                        f"{loss_flag} is {loss})")


def known_fields(cls: type, d: Any) -> dict:
    """The items of the dict ``d`` whose keys name a field of the dataclass ``cls`` (other keys are
    ignored: the ``run`` block of a saved config.json). A TypeError, as for a field that is
    missing, when ``d`` is no dict: a JSON list or number read back from a file was an
    AttributeError ('list' object has no attribute 'items')."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}.from_dict takes a dict (a JSON object), not {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


class JsonConfig:
    """``to_dict``/``from_dict``/``to_json``/``from_json`` for a frozen dataclass config: tuples are
    JSON lists and come back as tuples, so a config read back equals the one written."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Any:
        """Build from a dict, ignoring unknown keys."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) and str(fields[k].type).startswith("tuple") else v
                      for k, v in known_fields(cls, d).items()})

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(parse_json(text))


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
