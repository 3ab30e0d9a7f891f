"""Load and freeze an open_clip model; with config_checks.py, the only modules that import open_clip.

A model is named either by an open_clip architecture name with a pretrained tag (downloaded on
a machine with internet, e.g. ``ViT-B-16`` + ``openai``), or by an open_clip model-config JSON
file with a local checkpoint (``.pt``, ``.bin`` or ``.safetensors``). Without internet and
without a cached copy, loading a tag fails within seconds, naming the model and saying how to
pass a local file.

The MLP activation follows the weights, not only the architecture name: open_clip 3.x builds
``ViT-B-16`` with GELU, but OpenAI trained its weights with QuickGELU. A pretrained tag that
says ``quick_gelu`` (open_clip's pretrained config: the ``openai`` tags, and others) and
OpenAI's own files (TorchScript archives, and state dicts holding their extra entries) are
built with QuickGELU; any other local file is built as its model config says (open_clip's
``-quickgelu`` names, e.g. ``ViT-B-16-quickgelu``, say QuickGELU).

A model config that a user hands in (a ``--model`` JSON file, a prompt's stored config) is
checked by :mod:`clip_smot.clip.config_checks` before open_clip registers or builds it; that
module imports open_clip too, lazily, only to read what the installed version declares (its
config dataclasses, kinds of layer, default preprocessing). It imports nothing of this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from clip_smot.clip.config_checks import check_config_file, check_model_config, check_preprocess_cfg, estimated_size
from clip_smot.common.device import file_over_memory, physical_memory, seeded_cpu_rng
from clip_smot.common.errors import UserError, first_line
from clip_smot.common.file_kinds import archive_refusal, check_kind
from clip_smot.common.files import (
    missing_file,
    plain_name,
    read_json,
    sha256_file,
    stamp_if_file,
)
from clip_smot.common.network import host_reachable, no_download

__all__ = [
    "ACTIVATIONS",
    "ClipModel",
    "IMAGENET_CLASSNAMES",
    "builtin_model",
    "check_local_features",
    "config_activation",
    "config_path",
    "count_tokens",
    "encode_image_tokens",
    "encode_images",
    "image_preprocess",
    "is_pretrained_tag",
    "is_vit",
    "load_clip",
    "load_clip_for_prompt",
    "library_versions",
    "model_config",
    "logit_scale",
    "preprocess_identity",
    "preprocess_settings",
    "same_architecture",
    "weights_flag",
]


def __getattr__(name: str):
    """``IMAGENET_CLASSNAMES``: open_clip's 1000 ImageNet class names (a tuple), read on first use.

    open_clip is imported inside the functions that need it (about 2 s), so that commands that
    never load a CLIP model (``--help``, a bad flag, ``clip-smot train``) start without it.
    """
    if name == "IMAGENET_CLASSNAMES":
        import open_clip

        return tuple(open_clip.IMAGENET_CLASSNAMES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Hosts open_clip downloads from: the Hugging Face hub (preferred) and OpenAI's CDN.
_HUB_HOST = ("huggingface.co", 443)

# The MLP activations of open_clip's transformers, as recorded -> as shown: nn.GELU, or OpenAI's
# QuickGELU (x * sigmoid(1.702 x)).
ACTIVATIONS = {"gelu": "GELU", "quick_gelu": "QuickGELU"}
# Entries of OpenAI's TorchScript archives that are not weights (OpenAI's clip.build_model drops them).
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")
RANDOM_WEIGHTS_SEED = 0  # --pretrained none: the seed of the random weights, the same in every run


def config_activation(config: dict) -> str:
    """The activation an open_clip model config builds: "quick_gelu" or "gelu"."""
    return "quick_gelu" if config.get("quick_gelu") else "gelu"


@dataclass
class ClipModel:
    """A frozen open_clip model and what is needed to feed it and to name it in metadata.

    Attributes:
        model: the open_clip CLIP module, in eval mode, with requires_grad False everywhere.
        name: open_clip architecture name (for a config JSON: the file's stem).
        pretrained: the pretrained tag, the checkpoint file's name, or "" for random weights.
        checkpoint_sha256: SHA-256 of a local checkpoint file ("" for a tag or random weights).
        config: the model config dict as built (the JSON's content, with ``quick_gelu`` set
            where the weights decided it), stored in prompt metadata.
        mean, std: image normalisation of the pretrained weights.
        image_size: input side length.
        tokenizer: the open_clip tokenizer for this model.
    """

    model: nn.Module
    name: str
    pretrained: str
    checkpoint_sha256: str
    config: dict
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    tokenizer: object = field(repr=False)

    @property
    def activation(self) -> str:
        """The MLP activation the model was built with: "quick_gelu" or "gelu"."""
        return config_activation(self.config)

    def identity(self) -> dict[str, str]:
        """Strings that name these weights, as stored in prompt metadata."""
        return {
            "model": self.name,
            "model_config": json.dumps(self.config, sort_keys=True),
            "pretrained": self.pretrained,
            "checkpoint_sha256": self.checkpoint_sha256,
            "activation": self.activation,
        }


def library_versions() -> dict[str, str]:
    """The versions of clip-smot and open_clip (they decide what features a model gives)."""
    import open_clip

    from clip_smot import __version__

    return {"clip_smot": __version__, "open_clip": open_clip.__version__}


def _hub_reachable(timeout: float = 3.0) -> bool:
    return host_reachable(_HUB_HOST, timeout)


def config_path(model: str) -> bool:
    """Whether ``--model`` ``model`` is read as a model-config JSON path (else an open_clip name);
    such a model is named by the file's stem."""
    return model.endswith(".json") or os.path.sep in model


def same_architecture(a: dict, b: dict) -> bool:
    """Whether two model configs build the same network, ``quick_gelu`` aside (the weights may
    set it; the activation is compared on its own)."""
    return {k: v for k, v in a.items() if k != "quick_gelu"} == {k: v for k, v in b.items() if k != "quick_gelu"}


def _resolve_name(model: str, source: tuple[str, str]) -> tuple[str, dict]:
    """Architecture name and config for an open_clip name or a model-config JSON path (its
    errors name ``source``, see :func:`check_model_config`)."""
    import open_clip

    if model.startswith(("hf-hub:", "local-dir:")) and not os.path.isfile(model):
        # (open_clip would read the config of a Hugging Face hub repository or of a folder; its
        # empty forms are a ValueError, a bare "hf-hub:x" a download)
        raise UserError(f"--model {model}: open_clip's hf-hub: and local-dir: names are not supported; give an "
                        "architecture name such as ViT-B-16 (its weights with --pretrained) or the path of an "
                        "open_clip model-config JSON")
    if config_path(model):
        path = Path(model)
        if not os.path.isfile(path):
            raise UserError(f"--model {model}: {missing_file(path, '--model', 'model-config JSON file')}")
        check_kind(path, "--model", "model-config")  # (CLIP weights, a prompt: named as such)
        try:
            cfg = read_json(path)
        except (OSError, ValueError) as e:  # (JSONDecodeError, UnicodeDecodeError, a file too large)
            raise UserError(f"{source[0]}: not a valid JSON model config ({e})") from None
        builtin = _builtin_config(path.stem)
        registered = _register_config(path.stem, cfg, source)
        if builtin is not None and not same_architecture(registered, builtin):
            # (registered by its stem, it would replace open_clip's config of that name in this process,
            # and every record of the run would name an architecture it is not)
            open_clip.add_model_config(_builtin_config_file(path.stem))  # (open_clip's own again)
            raise UserError(f"--model {model}: named as open_clip's {path.stem} but holds another architecture; "
                            "rename the file (its name is the model's name in the run's records)")
        return path.stem, registered
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise UserError(
            f"--model {model}: unknown open_clip model; give an architecture name such as ViT-B-16 "
            "or the path of an open_clip model-config JSON"
        )
    return model, cfg


def _builtin_config_file(name: str) -> Path:
    """The JSON file of open_clip's own config of the architecture ``name`` (it may not exist)."""
    import open_clip

    return Path(open_clip.__file__).parent / "model_configs" / f"{name}.json"


def builtin_model(name: str) -> bool:
    """Whether ``name`` is an architecture open_clip ships a config of (e.g. ViT-B-16-quickgelu)."""
    return _builtin_config_file(name).is_file()


def _builtin_config(name: str) -> dict | None:
    """open_clip's own config of the architecture ``name`` as its package ships it (not as a
    config registered in this process under that name may have replaced it), or None."""
    path = _builtin_config_file(name)
    return read_json(path) if path.is_file() else None


def _register_config(name: str, cfg: object, source: tuple[str, str]) -> dict:
    """Check ``cfg`` (read from a file: errors name ``source``, see :func:`check_config_file`) and
    register it with open_clip as ``name``; returns the config open_clip will build.

    open_clip registers a .json file that holds the config itself, by its stem: a private copy of
    the config checked here, so that a pretrained config's layout, a file named without .json, or a
    prompt's stored config is registered too. ``name`` must be a plain name (a file's stem, or
    :func:`~clip_smot.common.files.plain_name`): the copy lands in a private temporary folder and
    nowhere else."""
    import open_clip

    if isinstance(cfg, dict) and "model_cfg" in cfg:  # (open_clip's layout of a pretrained config)
        check_preprocess_cfg(cfg.get("preprocess_cfg"), source[0])
        cfg = cfg["model_cfg"]
    check_config_file(cfg, *source)
    try:
        # (a copy that cannot be removed again, EROFS or EIO, stops nothing: it was read as written)
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
            copy = Path(tmp) / f"{name}.json"
            copy.write_text(json.dumps(cfg))
            open_clip.add_model_config(copy)
    except OSError as e:  # (a full $TMPDIR: ENOSPC, or EFBIG under ulimit -f; the folder is removed again)
        raise UserError(f"{source[0]}: cannot write a temporary copy of its model config in {tempfile.gettempdir()}: "
                        f"{e.strerror or first_line(e)}; free space there or set TMPDIR to another folder") from None
    return open_clip.get_model_config(name)


def model_config(model: str) -> dict:
    """The open_clip config of ``model`` (an architecture name or a model-config JSON file), read
    and checked as :func:`load_clip` reads it, without building anything.

    Raises:
        UserError: an unknown name, a missing or malformed file.
    """
    return _resolve_name(model, (f"--model {model}", ""))[1]


def load_clip(
    model: str = "ViT-B-16",
    pretrained: str | None = "openai",
    device: torch.device | str = "cpu",
    activation: str | None = None,
    activation_source: str = "",
) -> ClipModel:
    """Create an open_clip model, load its weights, freeze it and put it in eval mode.

    The activation is the weights' where they say it (a tag's ``quick_gelu``, OpenAI's own
    files: QuickGELU), else the model config's (see the module docstring).

    Args:
        model: open_clip architecture name, or the path of a model-config JSON file.
        pretrained: a pretrained tag of that architecture (downloaded with internet), the path
            of a local checkpoint (.pt, .bin, .safetensors, or OpenAI's TorchScript archive),
            or None / "" / "none" for random weights (tests and benchmarks).
        device: where the model lives.
        activation: build with this activation ("gelu" or "quick_gelu", e.g. a prompt's
            record) instead of the model config's; weights that say otherwise are refused.
        activation_source: what asked for ``activation`` (named in that error, e.g. "--prompt p").

    Raises:
        UserError: unknown model or tag, missing or unreadable file, a tag that cannot be
            downloaded, or weights trained with another activation than ``activation``.
    """
    source = (f"--model {model}", "")
    name, cfg = _resolve_name(model, source)
    return _load(name, cfg, source, pretrained, device, activation, activation_source)


def _load(name: str, cfg: dict, source: tuple[str, str], pretrained: str | None, device: torch.device | str,
          activation: str | None, activation_source: str) -> ClipModel:
    """:func:`load_clip` of the registered model ``name`` with config ``cfg`` (its errors name
    ``source``, as for :func:`check_model_config`)."""
    import open_clip

    stamp = stamp_if_file(pretrained)  # (of a file: the hash names the weights loaded, not those written there since)
    pretrained, checkpoint_sha, implied, why = _resolve_weights(name, pretrained)
    want = implied or config_activation(cfg)
    if activation is not None and activation != want:
        if implied:
            raise UserError(
                f"{activation_source or '--pretrained'}: made with {ACTIVATIONS[activation]}, but {why} were trained "
                f"with {ACTIVATIONS[implied]}: a context learned through one network does not fit the other; fit it "
                "again with these weights"
            )
        want = activation
    if want != config_activation(cfg):
        cfg = {**cfg, "quick_gelu": want == "quick_gelu"}
    openai_file = bool(checkpoint_sha) and implied is not None  # (of local files, only OpenAI's imply one)
    tokenizer = _tokenizer(name, cfg)  # (before the model is built: a Hugging Face one may not load)
    _check_size(name, *source)
    try:
        clip = _create(name, cfg, pretrained, openai_file, device)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign checkpoint fails in safetensors, pickle or load_state_dict
        # (open_clip reads an empty state dict's first key with next(): a bare "StopIteration")
        why = "the file holds no tensors" if isinstance(e, StopIteration) else first_line(e)
        raise UserError(f"--model {name} --pretrained {pretrained}: could not load the weights ({why})") from None
    if checkpoint_sha and (stamp is None or stamp_if_file(pretrained) != stamp):  # (its hash keys the feature cache)
        raise UserError(f"--pretrained {pretrained}: was replaced while it was read (another process writing it "
                        "now?); run again once it is written")
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    pp = open_clip.get_model_preprocess_cfg(clip)
    size = pp.get("size", cfg["vision_cfg"].get("image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size
    loaded = ClipModel(
        model=clip,
        name=name,
        pretrained=os.path.basename(pretrained) if checkpoint_sha else pretrained,
        checkpoint_sha256=checkpoint_sha,
        config=cfg,
        mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        image_size=int(size),
        tokenizer=tokenizer,
    )
    _check_temperature(loaded)
    return loaded


def weights_flag(clip: ClipModel) -> str:
    """``--pretrained TAG|FILE``: where a model's weights came from, for messages blaming them."""
    return f"--pretrained {clip.pretrained or '(none: random weights)'}"


def _check_temperature(clip: ClipModel) -> None:
    """A UserError naming the weights when CLIP's temperature ``logit_scale.exp()`` (in float32,
    as the logits take it) is not a normal positive finite number: inf made every logit and loss
    NaN (fit blamed its --lr), 0 made every logit 0, so the loss was log K and the context never
    moved; a subnormal one (below float32's smallest normal 1.2e-38, e.g. logit_scale -95) did the
    same, and is 0 outright where subnormals are flushed to zero."""
    temperature = logit_scale(clip).float()  # (as the scorer and the fit step take it)
    finite = bool(torch.isfinite(temperature))
    if not (finite and temperature >= torch.finfo(torch.float32).tiny):
        what, then = (("non-finite temperature", "") if not finite else
                      ("temperature", ", under which every logit is 0") if temperature <= 0 else
                      ("subnormal temperature", ", under which every logit is about 0"))
        raise UserError(f"{weights_flag(clip)}: logit_scale {float(clip.model.logit_scale):g} gives the {what} "
                        f"exp(logit_scale) = {float(temperature):g}{then} (CLIP's is at most ln 100 = 4.605)")


def _tokenizer(name: str, cfg: dict):
    """The tokenizer of model ``name``: open_clip's, named by the config's text tower (a Hugging
    Face tokenizer), else its SimpleTokenizer, built here, not looked up by name: open_clip gives
    any name holding 'siglip' a SigLIP tokenizer downloaded from the Hugging Face hub, and the
    name of a config file or of a prompt's stored model is anyone's."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    text = cfg.get("text_cfg", {})
    if text.get("hf_tokenizer_name"):
        try:
            return open_clip.get_tokenizer(name)
        except Exception as e:  # noqa: BLE001 - no transformers package, offline without a cached copy, ...
            raise UserError(f"--model {name}: could not load its Hugging Face tokenizer {text['hf_tokenizer_name']} "
                            f"({first_line(e)})") from None
    return SimpleTokenizer(context_length=text.get("context_length", 77), **text.get("tokenizer_kwargs", {}))


def count_tokens(texts: list[str]) -> list[int]:
    """The tokens of each text under open_clip's ``SimpleTokenizer`` (the tokenizer of the text
    towers a config file may name: :func:`check_config_file` refuses a Hugging Face one), without
    the start and end tokens and without cutting at a context length."""
    if not texts:  # (building the tokenizer takes 70 ms: not for nothing)
        return []
    from open_clip.tokenizer import SimpleTokenizer

    encode = SimpleTokenizer().encode
    return [len(encode(text)) for text in texts]


def _check_size(name: str, source: str, prefix: str = "") -> None:
    """Refuse, before any weight is allocated, an architecture whose config is malformed
    (:func:`check_model_config`) or whose fp32 weights would fill more than half of this
    machine's memory (a config JSON, or one stored in a prompt, may declare any width or depth):
    first as estimated from the config's numbers (:func:`estimated_size`, instantly), then
    exactly: it is built on torch's meta device, which allocates nothing, and its parameters are
    counted. The errors name ``source`` (``--model FILE``; a prompt's stored config, ``--prompt
    FILE`` with ``prefix`` ``model_config.``)."""
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    check_model_config(cfg, source, prefix)
    memory = physical_memory()
    need = estimated_size(cfg) * 4
    if memory is not None and need > memory // 2:
        raise UserError(f"{source}: its weights would take at least {need / 2**30:.1f} GiB in fp32, more than half "
                        f"of this machine's {memory / 2**30:.1f} GiB")
    try:
        with warnings.catch_warnings(), torch.device("meta"), _no_random_weights_note():
            warnings.simplefilter("ignore")
            shape = open_clip.create_model(name, pretrained=None, device="meta")  # (nothing is initialised here)
    except Exception as e:  # noqa: BLE001 - a config open_clip cannot build at all
        raise UserError(f"{source}: open_clip cannot build this architecture ({first_line(e)})") from None
    need = sum(p.numel() * 4 for p in shape.parameters())
    if memory is not None and need > memory // 2:
        raise UserError(f"{source}: its weights would take {need / 2**30:.1f} GiB in fp32, more than half "
                        f"of this machine's {memory / 2**30:.1f} GiB")


def _resolve_weights(name: str, pretrained: str | None) -> tuple[str, str, str | None, str]:
    """``(pretrained, checkpoint SHA-256, activation the weights imply or None, what implies it)``.

    A tag implies its pretrained config's ``quick_gelu`` where it sets one; a local file implies
    QuickGELU when it is one of OpenAI's own files (:func:`_is_openai_file`), else nothing.

    Raises:
        UserError: a missing file, an unknown tag, or a tag that is neither cached nor downloadable.
    """
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    if pretrained in (None, "", "none"):
        return "", "", None, ""
    # a tag is a tag: a file that happens to bear its name in the current folder is given as ./openai
    tag_cfg = {} if os.path.sep in pretrained else get_pretrained_cfg(name, pretrained)
    if os.path.isfile(pretrained) and not tag_cfg:
        check_kind(pretrained, "--pretrained", "clip-weights")  # (a model config, a prompt: named as such)
        refused = archive_refusal(pretrained) or file_over_memory(pretrained) or _odd_weight(pretrained, name)
        if refused:
            raise UserError(f"--pretrained {pretrained}: {refused}")
        openai_file = _is_openai_file(pretrained)
        try:  # (a file that stat calls regular but no read can go through: /proc/self/mem, a failing disk)
            sha = sha256_file(pretrained)
        except OSError as e:
            raise UserError(f"--pretrained {pretrained}: cannot be read ({type(e).__name__}: "
                            f"{first_line(e)})") from None
        return (pretrained, sha, "quick_gelu" if openai_file else None,
                f"the weights {os.path.basename(pretrained)} (OpenAI's own file)")
    if tag_cfg:
        implied = None if "quick_gelu" not in tag_cfg else "quick_gelu" if tag_cfg["quick_gelu"] else "gelu"
        if not _tag_is_cached(name, pretrained) and not _hub_reachable():
            # a state dict of these weights says nothing of their activation: the -quickgelu name does
            import open_clip

            quick = implied == "quick_gelu" and open_clip.get_model_config(f"{name}-quickgelu") is not None
            example = f"--model {name}-quickgelu" if quick else f"--model {name}"
            kept = _openai_package_file(tag_cfg)
            raise UserError(
                f"--pretrained {pretrained}: the weights of {name} ({pretrained}) are not cached and "
                f"{no_download()}; pass a local checkpoint instead, e.g. {example} "
                f"--pretrained path/to/{name}.safetensors" + (f" (or OpenAI's own {name}.pt with --model {name})"
                                                              if pretrained == "openai" else "")
                + (f"; OpenAI's clip package keeps them in {kept}: --model {name} --pretrained {kept}" if kept else "")
                + (f"; a file of that name is given as ./{pretrained}" if os.path.isfile(pretrained) else "")
            )
        return pretrained, "", implied, f"the {pretrained} weights of {name}"
    if any(pretrained.endswith(s) for s in (".pt", ".pth", ".bin", ".safetensors")) or os.path.sep in pretrained:
        raise UserError(f"--pretrained {pretrained}: {missing_file(pretrained, '--pretrained', 'checkpoint file')}")
    tags = list_pretrained_tags_by_model(name)
    raise UserError(
        f"--pretrained {pretrained}: not a pretrained tag of {name} (known tags: {', '.join(tags) or 'none'}) "
        "nor an existing checkpoint file"
    )


def _odd_weight(path: str, name: str | None = None) -> str | None:
    """What makes the checkpoint file ``path`` hold tensors no weights are, or None: a complex
    one, which loading casts to its real part (with a warning from torch's C++ on stderr), or a
    sparse one. Read from a safetensors header, or from a torch.save archive mapped, not read (as
    :func:`_is_openai_file` does); torch's legacy format and TorchScript are left as they load.
    Integer and boolean tensors are cast to the weights' float as they are where the model
    ``name`` keeps integers (some towers keep integer buffers, such as BatchNorm's step count),
    not where it keeps floats (:func:`_integer_weight`)."""
    if path.endswith(".safetensors"):  # (as open_clip tells the formats apart)
        try:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n)) if n <= 100_000_000 else {}  # (safetensors' own limit)
            dtypes = {k: t["dtype"] for k, t in header.items() if k != "__metadata__"}
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return None  # (open_clip's load names what is wrong)
        key = next((k for k, d in dtypes.items() if str(d).startswith("C")), None)  # (C64: complex64)
        if key is not None:
            return f"{key} is of dtype {dtypes[key]}, not a real-valued tensor; not loaded"
        return _integer_weight(name, {k: str(d).startswith(("F", "BF")) for k, d in dtypes.items()}, dtypes)
    if not zipfile.is_zipfile(path) or _is_torchscript(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - open_clip's load names the problem
        return None
    state = state.get("state_dict", state) if isinstance(state, dict) else state  # (as open_clip unwraps it)
    tensors = state.items() if isinstance(state, dict) else ()
    key, t = next(((k, v) for k, v in tensors if isinstance(v, torch.Tensor)
                   and (v.layout != torch.strided or v.is_complex())), (None, None))
    if key is None:
        tensors = {k: v for k, v in tensors if isinstance(v, torch.Tensor)}
        return _integer_weight(name, {k: v.is_floating_point() for k, v in tensors.items()},
                               {k: v.dtype for k, v in tensors.items()})
    what = f"a {t.layout} tensor" if t.layout != torch.strided else f"of dtype {t.dtype}"
    return f"{key} is {what}, not a dense real-valued tensor; not loaded"


def _integer_weight(name: str | None, floating: dict[str, bool], dtypes: dict) -> str | None:
    """What makes a checkpoint whose tensors are floating-point as ``floating`` says (by key;
    ``dtypes``: as the file names them) hold integers or booleans where the model ``name`` keeps
    floating-point weights, or None: loading casts them to floats as they are (a float32 bias
    whose safetensors header said U32 was read as integers near 1e9, and scored, exit 0). The
    model's own dtypes come from a build on the meta device (nothing allocated); keys open_clip
    would convert first (another tower's names) are not compared."""
    if name is None or all(floating.values()):
        return None
    import open_clip

    try:
        with torch.device("meta"), _no_random_weights_note():
            ours = open_clip.create_model(name, pretrained=None, device="meta").state_dict()
    except Exception:  # noqa: BLE001 - a model that does not build is named when it is built
        return None
    for key, is_float in floating.items():
        theirs = ours.get(key.removeprefix("module."))  # (open_clip strips DataParallel's prefix)
        if not is_float and theirs is not None and theirs.is_floating_point():
            return f"{key} is of dtype {dtypes[key]}, not floating-point numbers as the model's weight; not loaded"
    return None


def _is_torchscript(path: str) -> bool:
    """Whether a file is a TorchScript archive (as ``torch.jit.save`` writes: a zip with constants.pkl)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 1)[-1] == "constants.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _is_openai_file(path: str) -> bool:
    """Whether a checkpoint is one of OpenAI's own CLIP files: a TorchScript archive (its CDN and
    the ``clip`` package's cache hold these), or a state dict that still holds the archive's
    non-weight entries (``input_resolution``, ...). An ordinary state dict cannot be told from
    open_clip's (the same keys): its model config decides."""
    if _is_torchscript(path):
        return True
    if not zipfile.is_zipfile(path):  # safetensors, or torch's legacy format: not read twice
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # (mapped: cheap)
    except Exception:  # noqa: BLE001 - open_clip's load names the problem
        return False
    return isinstance(state, dict) and "input_resolution" in state


def _openai_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The weights of one of OpenAI's own files, as OpenAI's ``clip.build_model`` reads them."""
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; OpenAI's files are TorchScript
            state = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k not in _OPENAI_EXTRAS}


def _activation(cfg: dict) -> dict:
    """open_clip's ``create_model`` arguments that build the MLP activation ``cfg`` names."""
    if cfg.get("quick_gelu"):
        return {"force_quick_gelu": True}
    # (a config whose quick_gelu was turned off: passed as a constructor argument, the last word)
    return {"quick_gelu": False} if "quick_gelu" in cfg else {}


@contextlib.contextmanager
def _no_random_weights_note():
    """Without open_clip's "No pretrained weights loaded ... Model initialized randomly." (a
    WARNING of the root logger, on stderr) for the models built within."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _create(name: str, cfg: dict, pretrained: str, openai_file: bool, device: torch.device | str) -> nn.Module:
    """open_clip's model ``name`` with the MLP activation of ``cfg`` and the weights ``pretrained``
    (a tag, a file, or "" for random weights; ``openai_file``: one of OpenAI's own files).

    Random weights are drawn from :data:`RANDOM_WEIGHTS_SEED`, not from the caller's RNG: the same
    weights each time they are built (open_clip builds on the CPU, then moves), so that a fit with
    them resumes, exports and scores with the weights it was trained with."""
    import open_clip

    if not pretrained:  # (random weights are what --pretrained none asks for: open_clip's note on them is noise)
        with seeded_cpu_rng(RANDOM_WEIGHTS_SEED), _no_random_weights_note():
            return open_clip.create_model(name, pretrained=None, device=device, **_activation(cfg))
    quick = _activation(cfg)
    with warnings.catch_warnings():
        # open_clip warns when the config's activation is not the tag's; it was chosen above, on purpose
        warnings.filterwarnings("ignore", message="QuickGELU mismatch")
        if not openai_file:
            return open_clip.create_model(name, pretrained=pretrained, device=device, **quick)
        state = _openai_state_dict(pretrained)  # open_clip 3.x reads neither of OpenAI's formats
        with _no_random_weights_note():  # (the weights come next)
            clip = open_clip.create_model(name, pretrained=None, device=device, **quick)
    clip.load_state_dict(state)
    return clip


def is_pretrained_tag(name: str, tag: str) -> bool:
    """Whether ``tag`` is one of open_clip's pretrained tags of the model ``name``."""
    from open_clip.pretrained import get_pretrained_cfg

    return bool(get_pretrained_cfg(name, tag))


def _openai_package_file(tag_cfg: dict) -> str | None:
    """Where OpenAI's clip package (``clip.load``, which MCM's and CoOp's code use) keeps the
    weights of an OpenAI tag, when they are there: ``~/.cache/clip/`` and the URL's file name,
    OpenAI's own TorchScript file (open_clip 3 downloads a tag from the Hugging Face hub instead,
    and does not look there). None for another tag, or where no such file is."""
    url = tag_cfg.get("url", "")
    path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return path if "openaipublic" in url and os.path.isfile(path) else None


def _tag_is_cached(name: str, tag: str) -> bool:
    """Whether the weights of a pretrained tag are already in the local hub cache."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    if "file" in cfg:
        return os.path.isfile(cfg["file"])
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            return False
        # the files open_clip's download_pretrained_from_hf asks the hub for: "org/model/" is its
        # default file, "org/model/NAME" that file, each after its safetensors alternative (which
        # open_clip downloads first, so that it may be the only one in the cache)
        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        stem, ext = os.path.splitext(filename)
        safe = ["open_clip_model.safetensors"] if filename == "open_clip_pytorch_model.bin" else \
            [stem + ".safetensors"] if ext in (".bin", ".pth") else []
        return any(isinstance(try_to_load_from_cache(repo, name), str) for name in [*safe, filename])
    return False


def encode_images(clip: ClipModel, images: torch.Tensor) -> torch.Tensor:
    """Image features [B, d] (not normalised) of normalised images [B, 3, S, S]."""
    return clip.model.encode_image(images)


def image_preprocess(clip: ClipModel) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's evaluation transform for this model: PIL image -> normalised [3, S, S].

    Resize (shortest side, bicubic unless the weights say otherwise), centre crop, to tensor,
    mean/std normalisation: exactly what ``open_clip.create_model_and_transforms`` returns as
    its validation preprocess. The returned object is picklable (DataLoader workers).
    """
    from open_clip.transform import image_transform_v2

    return image_transform_v2(_preprocess_cfg(clip), is_train=False)


def _preprocess_cfg(clip: ClipModel):
    """open_clip's ``PreprocessCfg`` of the model: its defaults with what the weights set."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    return PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), open_clip.get_model_preprocess_cfg(clip.model)))


def preprocess_settings(clip: ClipModel) -> dict:
    """The settings of :func:`image_preprocess`'s transform as plain data: ``size``, ``mode``,
    ``mean``, ``std``, ``interpolation``, ``resize_mode``, ``fill_color`` (tuples as lists)."""
    import dataclasses

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(_preprocess_cfg(clip)).items()}


def preprocess_identity(clip: ClipModel) -> dict:
    """The preprocessing settings as plain data (part of the image-feature cache key)."""
    import open_clip

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in open_clip.get_model_preprocess_cfg(clip.model).items()}


def logit_scale(clip: ClipModel) -> torch.Tensor:
    """CLIP's learned temperature, ``logit_scale.exp()`` (a 0-d tensor on the model's device)."""
    return clip.model.logit_scale.detach().exp()


def is_vit(clip: ClipModel) -> bool:
    """Whether the image tower is open_clip's VisionTransformer pooled at the class token."""
    from open_clip.transformer import VisionTransformer

    visual = clip.model.visual
    return (
        isinstance(visual, VisionTransformer)
        and visual.attn_pool is None
        and visual.pool_type == "tok"
        and not visual.final_ln_after_pool
    )


def check_local_features(clip: ClipModel) -> None:
    """Raise a UserError naming the model unless :func:`encode_image_tokens` can give its local
    features (``--scores gl-mcm``): a class-token ViT (:func:`is_vit`) whose last block is
    open_clip's standard one."""
    if not is_vit(clip):
        raise UserError(
            f"--scores gl-mcm: needs a ViT image encoder with class-token pooling; {clip.name} has "
            f"{type(clip.model.visual).__name__}"
        )
    if not isinstance(getattr(clip.model.visual.transformer.resblocks[-1], "attn", None), nn.MultiheadAttention):
        raise UserError(f"--scores gl-mcm: the last block of {clip.name}'s image tower has a custom attention; "
                        "GL-MCM's local features need open_clip's standard block")


def encode_image_tokens(clip: ClipModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global and per-patch image features of a ViT, both projected into the joint space.

    The global feature follows ``VisionTransformer.forward`` step by step (embeddings,
    transformer, ``ln_post``, class-token pooling, ``@ proj``): it equals ``encode_image``.
    The local features are GL-MCM's (Miyai et al., 2023, as in the authors' code, after
    MaskCLIP): the last block is run again with its attention replaced by each token's own
    value (``x + out_proj(v_proj(ln_1 x))``, then the block's MLP), then ``ln_post`` and
    ``@ proj`` for every patch token. This is the last block with each token attending only
    to itself.

    Args:
        clip: a ViT model (:func:`is_vit`).
        images: normalised images [B, 3, S, S].

    Returns:
        ``(global [B, e], local [B, N, e])``, not normalised; N = number of patches.

    Raises:
        UserError: the model has no such local features (:func:`check_local_features`; e.g. a
            ResNet CLIP).
    """
    check_local_features(clip)
    visual = clip.model.visual
    *blocks, last = visual.transformer.resblocks
    x = visual._embeds(images)  # [B, 1 + N, width]
    seq_first = not visual.transformer.batch_first
    if seq_first:
        x = x.transpose(0, 1)  # [1 + N, B, width]
    for blk in blocks:
        x = blk(x)
    out = last(x)  # the last block as open_clip runs it
    # the value path: attention of every token to itself alone
    width = x.shape[-1]
    attn = last.attn
    bias = None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width:]
    v = F.linear(last.ln_1(x), attn.in_proj_weight[2 * width:], bias)  # the values, [.., width]
    v = x + last.ls_1(attn.out_proj(v))
    v = v + last.ls_2(last.mlp(last.ln_2(v)))
    if seq_first:
        out, v = out.transpose(0, 1), v.transpose(0, 1)  # [B, 1 + N, width]
    pooled, _ = visual._pool(out)  # [B, width] (ln_post applied)
    local = visual.ln_post(v[:, 1:])  # [B, N, width]
    return pooled @ visual.proj, local @ visual.proj  # [B, e], [B, N, e]


def load_clip_for_prompt(
    name: str, config: dict, pretrained: str | None, device: torch.device | str = "cpu",
    activation: str | None = None, activation_source: str = "",
) -> ClipModel:
    """Load the model a prompt names: a built-in open_clip name, else its stored config.

    A prompt made with a model-config JSON (e.g. a custom or tiny architecture) stores the
    config itself; it is registered under the stored name so that no JSON file is needed. The
    name comes from a file that may have been downloaded: it must be a plain name
    (:func:`~clip_smot.common.files.plain_name`), so the config's temporary copy, ``NAME.json``,
    lands in a private temporary folder and nowhere else.

    Args:
        name: open_clip architecture name from the prompt's metadata.
        config: the model config stored in the prompt.
        pretrained: as for :func:`load_clip`.
        device: where the model lives.
        activation, activation_source: the prompt's activation and its file, as for
            :func:`load_clip` (e.g. OpenAI weights in a plain state dict, named ``ViT-B-16``:
            built with QuickGELU when the prompt was made with it).

    Raises:
        UserError: the name is not a plain name, or as :func:`load_clip`.
    """
    import open_clip

    plain_name(name, "prompt metadata 'model'")
    # (load_clip reads a name ending in .json as a path: such a name is registered from the config)
    registered = None if name.endswith(".json") else open_clip.get_model_config(name)
    if registered is not None:
        # built by its name: the stored config (checked for its size) must be that one, or the name alone
        # would pick what is built (a file naming ViT-bigG-14 built 10 GB before its config was compared)
        if not same_architecture(config, registered):
            raise UserError(f"{activation_source or 'prompt'}: made for a model named {name} whose stored model_config is "
                            f"not open_clip's {name}; pass --model (that config as a JSON file) and --pretrained")
        return load_clip(name, pretrained, device, activation, activation_source)
    source = (activation_source or f"prompt model {name}", "model_config.")
    return _load(name, _register_config(name, config, source), source, pretrained, device, activation,
                 activation_source)
