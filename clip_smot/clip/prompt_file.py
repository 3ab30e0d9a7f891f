"""The learned-prompt file: one ``.safetensors`` with the context, the text features and metadata.

Format (version 1, docs/method.md §2):

* tensors
    - ``ctx``: the learned context, [n_ctx, d] (unified) or [K, n_ctx, d] (class-specific),
      float32 (float16, bfloat16 and float64 are read too);
    - ``text_features``: the final normalised class text features [K, e] (each row's L2 norm
      1 within 1e-2, checked at load), float32, so that scoring needs no text-encoder pass.
* metadata (all strings)
    - ``format``: "clip-smot-prompt", ``format_version``: "1", ``library_version``;
    - ``model``: open_clip architecture name, ``model_config``: its config as JSON;
    - ``pretrained``: pretrained tag or checkpoint file name ("" for random weights);
      ``checkpoint_sha256``: SHA-256 of that checkpoint file ("" for a tag);
    - ``activation``: the MLP activation the model was built with, "quick_gelu" (OpenAI's
      weights) or "gelu"; a file without it (written before the key existed) was built as its
      ``model_config`` says;
    - ``n_ctx``, ``class_position`` (end, middle, front), ``csc`` ("true"/"false");
    - ``classnames``: JSON list of the K class names, in the order of ``text_features``;
    - ``config``: the training configuration as JSON (fit's ``config.json``), its ``run.epoch``
      the epochs the context was trained (fewer than ``epochs``: exported from an unfinished
      run's checkpoint; absent in a prompt of an older clip-smot);
    - ``sha256``: JSON object of a SHA-256 per tensor over its name, dtype, shape and bytes and the
      other metadata (:func:`~clip_smot.common.files.tensor_checksums`), checked at load after
      everything else: safetensors keeps no checksum, and a flipped bit of ``ctx`` or of a class
      name was read as another prompt. A file without it (an older clip-smot's, one converted or
      written by another tool) is read unchecked.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open

from clip_smot import __version__
from clip_smot.clip.config_checks import check_config_file
from clip_smot.clip.model import ACTIVATIONS, builtin_model, config_activation, count_tokens
from clip_smot.common.device import physical_memory
from clip_smot.common.errors import UserError
from clip_smot.common.file_kinds import check_kind, unsupported_version
from clip_smot.common.files import (
    atomic_save_safetensors,
    checksum_mismatch,
    mapped_read_error,
    missing_file,
    parse_json,
    safetensors_error,
    tensor_checksums,
)

__all__ = ["CLASS_POSITIONS", "FORMAT", "FORMAT_VERSION", "PromptFile", "classnames_problem", "load_prompt", "prompt_tokens", "tokens",
           "recorded_epochs", "save_prompt", "unfinished_note"]

FORMAT = "clip-smot-prompt"
FORMAT_VERSION = "1"
CLASS_POSITIONS = ("end", "middle", "front")


def tokens(n: int) -> str:
    """``"1 token"``, ``"2 tokens"``: a count of tokens as messages write it."""
    return f"{n} token{'s' * (n != 1)}"


def prompt_tokens(n_ctx: int, n_name: int) -> int:
    """The tokens of a class's prompt as :class:`~clip_smot.clip.prompt.PromptLearner` lays it
    out: the start token, ``n_ctx`` context tokens, the name's ``n_name`` tokens, "." and the end
    token (in any class position)."""
    return 1 + n_ctx + n_name + 2

_TENSORS = ("ctx", "text_features")
# characters in a class name: far above any dataset's names (each is written into every CSV row it
# predicts, so a name of millions of characters made a CSV of gigabytes)
_MAX_CLASSNAME = 1000
# all class names together, and one word (a run of letters) of one: counting a name's tokens costs
# time quadratic in its words' lengths (73 ms for one word of 1000 letters), and a file may hold
# 100,000 names; ImageNet-21k's names hold about 550,000 characters, no English word 64 letters
_MAX_CLASSNAMES_TOTAL = 1 << 20
_MAX_WORD = 64
_REQUIRED_META = ("format", "format_version", "model", "model_config", "pretrained", "n_ctx", "class_position", "csc", "classnames")
# what ctx and text_features may hold (written as float32; a converted file may hold another width)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class PromptFile:
    """A loaded prompt file."""

    ctx: torch.Tensor  # [n_ctx, d] or [K, n_ctx, d]
    text_features: torch.Tensor  # [K, e], normalised
    model: str
    model_config: dict
    pretrained: str
    checkpoint_sha256: str
    activation: str  # "quick_gelu" or "gelu"
    n_ctx: int
    class_position: str
    csc: bool
    classnames: list[str]
    config: dict
    path: str = ""

    def check_model(self, identity: dict[str, str]) -> bool:
        """Check that a model (``ClipModel.identity()``) is the one this prompt was made for.

        Returns:
            True when the weights are the same as at training time (the stored text features
            can be used as they are), False when the architecture is the same but the weights
            may differ (the text features must be encoded again from ``ctx``).

        Raises:
            UserError: the activation or the architecture differs.
        """
        theirs = parse_json(identity["model_config"])
        if config_activation(theirs) != self.activation:
            quick = f"{self.model.removesuffix('-quickgelu')}-quickgelu"
            # (open_clip's -quickgelu name exists for its own architectures only: a prompt of a
            # model-config JSON, whose name is the file's stem, needs that config file again)
            if self.activation != "quick_gelu":
                hint = "a context learned through GELU does not fit QuickGELU weights: fit it again with them"
            elif builtin_model(quick):
                hint = f"for OpenAI's weights in a state-dict file, --model {quick}"
            else:
                hint = f"give the --model config the prompt was made with ({self.model}'s, which sets quick_gelu)"
            raise UserError(
                f"{self.path or 'prompt'}: made with {ACTIVATIONS[self.activation]} ({self.model}, "
                f"{self.pretrained or 'random weights'}), but the model in use ({identity['model']}, "
                f"{identity['pretrained'] or 'random weights'}) is built with "
                f"{ACTIVATIONS[config_activation(theirs)]}; {hint}"
            )
        if theirs != self.model_config:
            raise UserError(
                f"{self.path or 'prompt'}: made for model {self.model} ({self.pretrained or 'random weights'}), "
                f"which is not the model in use, {identity['model']}; pass --model/--pretrained for {self.model}"
            )
        # (a file's identity holds its base name: a file named as the prompt's tag is not the tag's weights)
        same_tag = self.pretrained == identity["pretrained"] and not self.checkpoint_sha256 \
            and not identity["checkpoint_sha256"]
        same_file = bool(self.checkpoint_sha256) and self.checkpoint_sha256 == identity["checkpoint_sha256"]
        return (same_tag or same_file) and bool(self.pretrained)


def save_prompt(
    path: str | os.PathLike,
    ctx: torch.Tensor,
    text_features: torch.Tensor,
    identity: dict[str, str],
    n_ctx: int,
    class_position: str,
    csc: bool,
    classnames: list[str],
    config: dict,
) -> None:
    """Write a prompt file atomically (temporary file, then rename)."""
    path = Path(path)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "model": identity["model"],
        "model_config": identity["model_config"],
        "pretrained": identity["pretrained"],
        "checkpoint_sha256": identity["checkpoint_sha256"],
        "activation": identity.get("activation") or config_activation(parse_json(identity["model_config"])),
        "n_ctx": str(n_ctx),
        "class_position": class_position,
        "csc": "true" if csc else "false",
        "classnames": json.dumps(list(classnames)),
        "config": json.dumps(config, sort_keys=True),
    }
    tensors = {
        "ctx": ctx.detach().float().cpu().contiguous(),
        "text_features": text_features.detach().float().cpu().contiguous(),
    }
    atomic_save_safetensors(tensors, path, {**meta, "sha256": json.dumps(tensor_checksums(tensors, meta), sort_keys=True)})


def load_prompt(path: str | os.PathLike) -> PromptFile:
    """Read a prompt file; anything that is not a valid prompt file is a UserError naming it."""
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"--prompt {path}: {missing_file(path, '--prompt')}")
    check_kind(path, "--prompt", "prompt")  # (a run's checkpoint.pt, a model file: named as such)
    try:
        f = safe_open(path, framework="pt")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise safetensors_error(f"--prompt {path}", e) from None
    with f:  # (one reading: the header's shapes are checked before the tensors of that very file load)
        return _read(path, f)


def _read(path: str, f) -> PromptFile:
    """:func:`load_prompt` of the open file ``f``."""
    meta, shapes = _read_header(path, f)
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise UserError(f"--prompt {path}: not a clip-smot prompt (missing metadata {', '.join(missing)})")
    if meta["format"] != FORMAT:
        raise UserError(f"--prompt {path}: not a clip-smot prompt (format {meta['format']!r})")
    if meta["format_version"] != FORMAT_VERSION:
        raise UserError(f"--prompt {path}: " + unsupported_version("prompt", meta["format_version"], FORMAT_VERSION,
                                                                  meta.get("library_version")))
    try:  # hand-edited or foreign metadata: one line naming the file, not a traceback
        classnames = parse_json(meta["classnames"])
        model_config = parse_json(meta["model_config"])
        n_ctx = int(meta["n_ctx"])
        config = parse_json(meta.get("config", "{}"))
    except ValueError as e:
        raise UserError(f"--prompt {path}: malformed metadata ({e})") from None
    if not isinstance(classnames, list) or not isinstance(model_config, dict):
        raise UserError(f"--prompt {path}: malformed metadata (classnames must be a JSON list, model_config an object)")
    check_config_file(model_config, f"--prompt {path}", "model_config.")
    activation = meta.get("activation", config_activation(model_config))  # without it: as its config built
    if activation not in ACTIVATIONS or activation != config_activation(model_config):
        raise UserError(f"--prompt {path}: malformed metadata (activation {activation!r} is not the one of its "
                        f"model_config, {config_activation(model_config)!r})")
    _check_metadata(path, classnames, meta["class_position"], meta["csc"])
    _check_n_ctx(path, n_ctx, classnames, model_config)
    _check_shapes(path, shapes, len(classnames), model_config, n_ctx, meta["csc"])
    ctx, text_features = _read_tensors(path, f)  # (as large as the checked shapes now)
    _check_values(path, ctx, text_features, classnames)
    mismatch = checksum_mismatch({"ctx": ctx, "text_features": text_features}, meta)  # (last: an edited file is
    if mismatch:  # named for what is wrong in it, where something is)
        raise UserError(f"--prompt {path}: {mismatch} not match its sha256 (changed after it was written: a damaged "
                        "copy?); fit or export it again, or remove the key sha256 from a file edited on purpose")
    return PromptFile(
        ctx=ctx,
        text_features=text_features,
        model=meta["model"],
        model_config=model_config,
        pretrained=meta["pretrained"],
        checkpoint_sha256=meta.get("checkpoint_sha256", ""),
        activation=activation,
        n_ctx=n_ctx,
        class_position=meta["class_position"],
        csc=meta["csc"] == "true",  # (checked: "true" or "false")
        classnames=classnames,
        config=config,
        path=path,
    )


def recorded_epochs(path: str | os.PathLike) -> tuple[int, int] | None:
    """(the epochs its context was trained, the epochs of its run) as a prompt file of ``fit`` or
    ``export`` records them: fewer for a prompt exported from an unfinished run's checkpoint. None
    where the file does not say (a prompt of an older clip-smot, not a prompt file): nothing
    but the header's metadata is read."""
    try:
        with safe_open(str(path), "pt") as f:
            return _epochs(parse_json((f.metadata() or {}).get("config", "{}")))
    except (SafetensorError, OSError, ValueError):
        return None
    except RuntimeError as e:  # (torch could not map it: the loader names the read)
        if mapped_read_error(e) is None:
            raise
        return None


def _epochs(config) -> tuple[int, int] | None:
    """:func:`recorded_epochs` of a prompt's parsed ``config``."""
    try:
        epoch, epochs = config["run"]["epoch"], config["epochs"]
    except (KeyError, TypeError):
        return None
    ok = all(isinstance(n, int) and not isinstance(n, bool) for n in (epoch, epochs))
    return (epoch, epochs) if ok else None


def unfinished_note(prompt: PromptFile) -> str | None:
    """The note that ``prompt`` holds the context of an unfinished run (exported from its
    checkpoint before its last epoch), or None."""
    epochs = _epochs(prompt.config)
    if epochs is None or epochs[0] >= epochs[1]:
        return None
    return (f"note: {prompt.path} holds the context of epoch {epochs[0]} of its run's {epochs[1]} (exported from an "
            "unfinished run)")


def _read_header(path: str, f) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The metadata and the shapes of ``ctx`` and ``text_features``, from the header: no tensor
    is loaded (a file may declare any shape, and a sparse one costs its writer nothing)."""
    try:
        meta = f.metadata() or {}
        missing = [k for k in _TENSORS if k not in set(f.keys())]
        if missing:
            raise UserError(f"--prompt {path}: not a clip-smot prompt (missing tensor {', '.join(missing)})")
        return meta, {k: tuple(f.get_slice(k).get_shape()) for k in _TENSORS}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"--prompt {path}: not a safetensors file ({e})") from None


def _read_tensors(path: str, f) -> tuple[torch.Tensor, torch.Tensor]:
    """``ctx`` and ``text_features`` of the open file ``f``."""
    try:
        return f.get_tensor("ctx"), f.get_tensor("text_features")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"--prompt {path}: not a safetensors file ({e})") from None


def classnames_problem(classnames: list[str]) -> str | None:
    """What puts ``classnames`` past what a prompt file may hold (None: nothing): a name of more
    than ``_MAX_CLASSNAME`` characters, a word of more than ``_MAX_WORD`` letters, or more than
    ``_MAX_CLASSNAMES_TOTAL`` characters in all. ``fit`` checks its classes with it before
    training: a prompt that ``score`` then refuses is no result."""
    if not classnames:  # (max() of nothing: "max() iterable argument is empty")
        return "it names no class"
    k, name = max(enumerate(classnames), key=lambda kc: len(kc[1]))
    if len(name) > _MAX_CLASSNAME:
        return f"class {k}'s name has {len(name)} characters, more than {_MAX_CLASSNAME}"
    total = sum(map(len, classnames))
    if total > _MAX_CLASSNAMES_TOTAL:
        return f"its {len(classnames)} class names hold {total} characters, more than {_MAX_CLASSNAMES_TOTAL}"
    for k, name in enumerate(classnames):
        word = max(re.findall(r"[^\W\d_]+", name), key=len, default="")
        if len(word) > _MAX_WORD:
            return f"class {k}'s name holds a word of {len(word)} letters ({word[:20]}...), more than {_MAX_WORD}"
    return None


def _check_metadata(path: str, classnames: list, class_position: str, csc: str) -> None:
    """A UserError naming the file unless its class names (at most ``_MAX_CLASSNAME`` characters
    each) and layout are well-formed."""
    if not all(isinstance(c, str) for c in classnames) or not classnames:
        raise UserError(f"--prompt {path}: malformed metadata (classnames must be a non-empty JSON list of strings)")
    problem = classnames_problem(classnames)
    if problem:
        raise UserError(f"--prompt {path}: {problem}")
    if class_position not in CLASS_POSITIONS or csc not in ("true", "false"):
        raise UserError(f"--prompt {path}: malformed metadata (class_position {class_position!r}, csc {csc!r}; "
                        f"expected one of {CLASS_POSITIONS}, and 'true' or 'false')")


def _check_n_ctx(path: str, n_ctx: int, classnames: list[str], model_config: dict) -> None:
    """A UserError naming the file unless ``n_ctx`` is at least 1 and each class's prompt (start
    token, n_ctx context tokens, the name's tokens, ".", end token) fits the context length of
    the model config (as :class:`~clip_smot.clip.prompt.PromptLearner` lays it out). Checked
    here, where the file is read: the learner's own check names ``--n-ctx``, a flag of fit."""
    L = model_config["text_cfg"].get("context_length") or 77  # (open_clip's default)
    if not 1 <= n_ctx <= L - prompt_tokens(0, 0):
        raise UserError(f"--prompt {path}: n_ctx {n_ctx} is not in [1, {L - prompt_tokens(0, 0)}] (a prompt of the model's {L} "
                        "tokens holds a start and an end token, a '.' and the class name beside its context)")
    # a name takes at most as many tokens as its UTF-8 bytes (lowercased, as the tokenizer reads it):
    # only the names that could overflow are tokenized (none of ImageNet's with n_ctx 16)
    budget = L - prompt_tokens(n_ctx, 0)
    long = [k for k, name in enumerate(classnames) if len(name.lower().encode("utf-8", "surrogatepass")) > budget]
    n_name, k = max(zip(count_tokens([classnames[k] for k in long]), long), default=(0, 0))
    if prompt_tokens(n_ctx, n_name) > L:
        raise UserError(f"--prompt {path}: the prompt of class {k} ({classnames[k][:40]!r}, a name of {tokens(n_name)}) "
                        f"needs {prompt_tokens(n_ctx, n_name)} of the model's {L} tokens with n_ctx {n_ctx}")


def _check_shapes(path: str, shapes: dict[str, tuple[int, ...]], K: int, model_config: dict, n_ctx: int,
                  csc: str) -> None:
    """A UserError naming the file unless the tensor shapes of its header fit its metadata (K
    class names, ``n_ctx``, ``csc``) and the model config it names, and the tensors fit in half
    of this machine's memory (the config's widths are the file's too): checked before any
    tensor is loaded."""
    def bad(what: str) -> UserError:
        return UserError(f"--prompt {path}: {what}")

    embed_dim, text_features = model_config.get("embed_dim"), shapes["text_features"]
    if len(text_features) != 2 or text_features[0] != K or (embed_dim and text_features[1] != embed_dim):
        raise bad(f"text_features {text_features} do not match {K} class names x the model's embed_dim {embed_dim}")
    width, ctx = model_config.get("text_cfg", {}).get("width"), shapes["ctx"]
    want = (K, n_ctx, width) if csc == "true" else (n_ctx, width)
    if len(ctx) != len(want) or any(w is not None and c != w for c, w in zip(ctx, want)):
        shape = ", ".join("d" if w is None else str(w) for w in want)
        raise bad(f"ctx {ctx} does not match [{shape}] (n_ctx {n_ctx}, csc {csc}, the model's text width)")
    need = sum(math.prod(s) for s in shapes.values()) * 8  # (float64 at most, checked once loaded)
    memory = physical_memory()
    if memory is not None and need > memory // 2:
        raise bad(f"its tensors ctx {ctx} and text_features {text_features} would take up to "
                  f"{need / 2**30:.1f} GiB, more than half of this machine's {memory / 2**30:.1f} GiB")


def _check_values(path: str, ctx: torch.Tensor, text_features: torch.Tensor, classnames: list[str]) -> None:
    """A UserError naming the file unless its tensors hold finite floating-point numbers and its
    text features are normalised (a hand-edited or foreign file fails here, not later with a
    traceback deep in a matrix product, or with every class scored alike)."""
    def bad(what: str) -> UserError:
        return UserError(f"--prompt {path}: {what}")

    for name, t in (("ctx", ctx), ("text_features", text_features)):
        # (float8 has no isfinite: checked first; finite as the float32 they are used in, where 1e300 of a
        # float64 file is inf, and NaN text features re-encoded from it were blamed on the weights)
        if t.dtype not in _FLOAT_DTYPES or not torch.isfinite(t.float()).all():
            raise bad(f"{name} must hold finite floating-point numbers within float32's range (float16, bfloat16, "
                      f"float32 or float64; this is {t.dtype})")
    norms = text_features.double().norm(dim=-1)  # normalised when written: all classes would score alike if not
    if not ((norms - 1).abs() <= 1e-2).all():
        k = int((norms - 1).abs().argmax())
        raise bad(f"text_features must be normalised (each row of L2 norm 1); row {k} ({classnames[k][:40]!r}) has "
                  f"norm {norms[k].item():.4g}")
