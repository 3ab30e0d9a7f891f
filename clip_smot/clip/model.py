"""Load and freeze an open_clip model; the only module of the package that imports open_clip.

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
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
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

from clip_smot.common.device import file_over_memory, physical_memory, seeded_cpu_rng
from clip_smot.common.errors import UserError, cut, first_line
from clip_smot.common.files import archive_overflow, missing_file, plain_name, read_json, sha256_file
from clip_smot.common.network import host_reachable, no_download

__all__ = [
    "ACTIVATIONS",
    "ClipModel",
    "IMAGENET_CLASSNAMES",
    "builtin_model",
    "check_local_features",
    "check_config_file",
    "check_model_config",
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
        _check_preprocess(cfg.get("preprocess_cfg"), source[0])
        cfg = cfg["model_cfg"]
    check_config_file(cfg, *source)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / f"{name}.json"
        copy.write_text(json.dumps(cfg))
        open_clip.add_model_config(copy)
    return open_clip.get_model_config(name)


def _check_preprocess(preprocess: object, source: str) -> None:
    """A UserError naming ``source`` unless a pretrained config's ``preprocess_cfg`` asks for the
    preprocessing the model gets with a local checkpoint: open_clip's defaults (OpenAI's mean and
    std, bicubic, the shortest side resized), which it replaces only for a pretrained tag. Other
    values (e.g. the 0.5 mean of ViT-L-14's laion2b_s32b_b82k, DFN5B's squashed resize) would be
    dropped, and every feature computed from images prepared as these weights never saw them."""
    from open_clip.transform import PreprocessCfg

    if not preprocess:
        return
    if not isinstance(preprocess, dict):
        raise UserError(f"{source}: preprocess_cfg must be a JSON object, not {_shown(preprocess)}")
    default = {k: list(v) if isinstance(v, tuple) else v for k, v in PreprocessCfg().__dict__.items()}
    for key, value in preprocess.items():
        want = default.get(key)
        if key == "size" or want is None or value is None:  # (the size is the model's; open_clip drops None and others)
            continue
        if isinstance(want, list):
            same = isinstance(value, list) and len(value) == len(want) and all(
                _is_positive_number(v) and abs(v - w) <= 1e-6 for v, w in zip(value, want))
        else:
            same = value == want
        if not same:
            raise UserError(f"{source}: preprocess_cfg.{key} {_shown(value)} is not the preprocessing a local checkpoint "
                            f"gets ({_shown(want)}, open_clip's default, replaced only for a pretrained tag): "
                            "images would be prepared otherwise than these weights were trained with")


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


MAX_IMAGE_SIZE = 2048  # input side length: the largest open_clip architecture takes 518
# Blocks per tower (a ResNet's: all stages together): the deepest open_clip architectures have 64
# (RN50x64) and 56 (ViT-e-14). Even on the meta device each block costs time and memory: 1000 take
# about 3 s and 0.8 GB, 20000 minutes and gigabytes, however narrow.
MAX_LAYERS = 1024
# Patch tokens of a ViT tower, (image_size // patch_size)^2: open_clip's largest are ViT-H-14-378's
# 729 (27^2); ViT-bigG-14 at 448 would have 1024. 4096 (a 1024 image in 16-pixel patches) leaves
# room for larger inputs; a million (1024 in 1-pixel patches) took minutes an image, or all memory.
MAX_PATCHES = 4096
RESNET_STRIDE = 32  # a ResNet tower (open_clip's ModifiedResNet) downsamples its input 32 times
RESNET_FEATURES = 32  # per unit of width: a ResNet tower's last stage (8 width planes, expanded 4 times)
# open_clip's own tokenizer (SimpleTokenizer: 256 bytes, their 256 word ends, 48894 BPE merges,
# start and end): the ids it gives index the token embedding, which needs at least as many rows.
SIMPLE_TOKENIZER_VOCAB = 49408
RANDOM_WEIGHTS_SEED = 0  # --pretrained none: the seed of the random weights, the same in every run

_VISION_SIZES = ("width", "head_width", "patch_size")  # positive integers where given (image_size, layers: below)
_TEXT_SIZES = ("context_length", "vocab_size", "width", "heads", "layers")
_GELU_APPROXIMATE = ("none", "tanh")  # nn.GELU's approximate


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _is_positive_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")


def _shown(v: object) -> str:
    """``repr(v)``, cut to 40 characters (a value from a user's file may be long)."""
    return cut(repr(v))


def _builds_with(sub: dict, tower: str, key: str) -> bool:
    """Whether open_clip builds the tower ``sub`` with its size ``key``, so that a null given is
    what it takes, not its default (a TypeError naming no key: "unsupported operand type(s) for
    //" and the like). A timm tower or a Hugging Face text tower reads none, a ResNet no
    ``patch_size`` (open_clip's ResNet configs give it null)."""
    if tower == "text_cfg":
        return not sub.get("hf_model_name")
    return not sub.get("timm_model_name") and not (key == "patch_size" and isinstance(sub.get("layers"), list))


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
# CLIPVisionCfg declares attentional_pool a bool, but open_clip reads a string as the kind of pooler
# (CoCa's; any other non-empty string fails an assert, and "" is false)
_ATTENTIONAL_POOLS = ("parallel", "cascade")
_HF_NAMES = ("hf_model_name", "hf_tokenizer_name")  # text_cfg keys that make open_clip load from Hugging Face
# what check_config_file judges by what they name (a config file may not load anything)
_NAMING_KEYS = ("timm_model_name", "timm_model_pretrained", *_HF_NAMES)


@functools.lru_cache(maxsize=None)
def _declared_types() -> dict[str, dict[str, tuple[type, bool]]]:
    """``{tower: {key: (type, optional)}}`` for the keys that the installed open_clip's
    ``CLIPVisionCfg`` (``vision_cfg``) and ``CLIPTextCfg`` (``text_cfg``) declare as bool, int,
    float or str, or Optional of one. Read from the dataclasses, so that the check follows the
    open_clip version: a key an older one does not declare is not checked by type (open_clip
    refuses it building: an unexpected keyword argument). The others (a ResNet's ``layers``, an
    ``image_size`` pair, the kwargs objects) have their own checks."""
    import dataclasses
    import types
    import typing

    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    declared = {}
    for tower, cls in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        hints = typing.get_type_hints(cls)
        declared[tower] = {}
        for f in dataclasses.fields(cls):
            hint, optional = hints[f.name], False
            if typing.get_origin(hint) in (typing.Union, types.UnionType):
                args = [a for a in typing.get_args(hint) if a is not type(None)]
                hint, optional = (args[0] if len(args) == 1 else None), len(args) < len(typing.get_args(hint))
            if hint in _TYPE_WORDS:
                declared[tower][f.name] = (hint, optional)
    return declared


@functools.lru_cache(maxsize=None)
def _choices() -> dict[tuple[str, str], tuple[str | None, ...]]:
    """``{(tower, key): values}``: the values open_clip builds for the keys that name a kind of
    layer, read from its code (open_clip.transformer). Another one failed an assert or a bare
    ValueError ("open_clip cannot build this architecture (AssertionError)", naming no key), or
    silently built the default: ``proj_type`` builds a linear projection unless "none",
    ``block_type`` the default blocks unless "custom"."""
    import inspect

    from open_clip.transformer import text_global_pool

    text_pools = ("first", "last", "argmax")
    if "eos_token_id" in inspect.signature(text_global_pool).parameters:  # (open_clip 3: pooled at eos_id)
        text_pools += ("eos",)
    return {("vision_cfg", "pos_embed_type"): ("learnable", "sin_cos_2d"),
            ("vision_cfg", "pool_type"): ("tok", "avg", "none"),
            ("text_cfg", "pool_type"): (*text_pools, "none"),
            ("text_cfg", "proj_type"): ("linear", "none"),
            ("vision_cfg", "block_type"): (None, "default", "custom"),
            ("text_cfg", "block_type"): (None, "default", "custom")}


def _either(values: tuple) -> str:
    """``'a', 'b' or null``: the values as a JSON config writes them."""
    shown = ["null" if v is None else repr(v) for v in values]
    return ", ".join(shown[:-1]) + f" or {shown[-1]}"


def _has_type(v: object, kind: type) -> bool:
    """Whether the JSON value ``v`` is of the declared type ``kind``: a JSON true is no integer or
    number (Python's bool is an int), an integer is a number, NaN and infinities are none."""
    if isinstance(v, bool) or kind is bool:
        return isinstance(v, bool) and kind is bool
    if kind is float:
        return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v))
    return isinstance(v, kind)


def check_model_config(cfg: object, source: str, prefix: str = "") -> None:
    """Raise a UserError unless ``cfg`` has the shape of an open_clip model config: a JSON object
    with a positive integer ``embed_dim`` and ``vision_cfg`` and ``text_cfg`` objects whose sizes,
    where given, are positive integers (a null only where the tower does not read it:
    :func:`_builds_with`; ``image_size`` in [8, MAX_IMAGE_SIZE], per side in a list;
    a ResNet tower's ``layers`` a list of them; at most MAX_LAYERS blocks a tower) and whose
    ``mlp_ratio`` is a positive number (where given: a 0 or a null is not the default), whose
    width the heads divide (a ViT's ``head_width``, a ResNet's into RESNET_FEATURES per unit of
    width, the text tower's ``heads``), whose ``ls_init_value`` is null or a positive float32, whose
    keys that name a kind of layer hold one open_clip builds (:func:`_choices`; the sine-cosine
    ``pos_embed_type`` on a square grid, ``eos`` pooling at the end token of its tokenizer), whose
    attentional pooler, where one is asked for, has queries and heads that divide ``embed_dim``, and whose
    ``vision_cfg.patch_dropout``, where given, is a number in [0, 1) (open_clip's PatchDropout). A
    ViT's patches fit in its image and number at most MAX_PATCHES; a ResNet's image is at least
    RESNET_STRIDE a side. The text tower embeds every token open_clip's tokenizer gives
    (``vocab_size`` at least SIMPLE_TOKENIZER_VOCAB) unless it names a Hugging Face tokenizer.
    ``norm_kwargs`` and ``act_kwargs`` hold what open_clip's own configs set (LayerNorm's ``eps``,
    GELU's ``approximate``); ``tokenizer_kwargs`` is an object, not empty only beside a Hugging
    Face tokenizer; ``quick_gelu`` is a boolean. What makes an encoder give more than one feature
    (``output_tokens``, ``pool_type`` "none", a named ``attentional_pool``, the CLIP class's
    ``embed_cls``) only beside CoCa's ``multimodal_cfg``. Every other key of a tower that open_clip's
    ``CLIPVisionCfg`` / ``CLIPTextCfg`` declares as a bool, int, float or str (or Optional of one)
    holds that type or null (:func:`_declared_types`). Checked before the numbers are used: a
    config file, or one stored in a prompt, is the user's, and may hold anything.

    Args:
        cfg: the parsed JSON.
        source: what the error names: ``"--model FILE"``, ``"--prompt FILE"``.
        prefix: written before each field's name (``"model_config."`` for a prompt's).
    """
    def bad(what: str) -> UserError:
        return UserError(f"{source}: {what}")

    whole = prefix.rstrip(".") or "the model config"
    if not isinstance(cfg, dict):
        raise bad(f"{whole} must be a JSON object (an open_clip model config), not {type(cfg).__name__}")
    if not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise bad(f"{whole}: an open_clip model config needs embed_dim, vision_cfg and text_cfg")
    if not _is_count(cfg["embed_dim"]):
        raise bad(f"{prefix}embed_dim must be a positive integer, not {_shown(cfg['embed_dim'])}")
    if cfg.get("quick_gelu") is not None and not isinstance(cfg["quick_gelu"], bool):  # ("false" would build QuickGELU)
        raise bad(f"{prefix}quick_gelu must be true or false, not {_shown(cfg['quick_gelu'])}")
    _check_logit_scale(cfg, bad, prefix)
    _check_tower_fields(cfg, bad, prefix)
    _check_single_features(cfg, bad, prefix)
    size, sides, layers = _check_geometry(cfg, bad, prefix)
    _check_declared_types(cfg, bad, prefix)
    _check_layer_kinds(cfg, bad, prefix, size, sides, layers)
    _check_widths(cfg, bad, prefix, layers)


# check_model_config's maker of its errors: "SOURCE: what" (the parts below raise what it makes)
_Bad = Callable[[str], UserError]


# exp(logit_scale), the temperature, is a normal float32 between these (as _check_temperature wants it)
_LOGIT_SCALE_RANGE = (math.log(torch.finfo(torch.float32).tiny), math.log(torch.finfo(torch.float32).max))


def _check_logit_scale(cfg: dict, bad: _Bad, prefix: str) -> None:
    """The temperature's start and the logit bias, where given (open_clip's CLIP sets
    ``logit_scale`` to ``init_logit_scale``; SigLIP's configs give ln 10 and a bias of -10). Random
    weights keep it: an infinite one was refused as the weights' (--pretrained) fault, and a null
    or a string stopped open_clip's build, naming no key."""
    if "init_logit_scale" in cfg:
        scale, (low, high) = cfg["init_logit_scale"], _LOGIT_SCALE_RANGE
        if not (_has_type(scale, float) and low <= scale <= high):
            raise bad(f"{prefix}init_logit_scale must be a number from {low:.2f} to {high:.2f} (exp(init_logit_scale), "
                      f"the temperature, a normal float32; CLIP's is ln(1 / 0.07) = 2.659), not {_shown(scale)}")
    bias = cfg.get("init_logit_bias")
    if bias is not None and not _has_type(bias, float):
        raise bad(f"{prefix}init_logit_bias must be a finite number or null, not {_shown(bias)}")


def _check_tower_fields(cfg: dict, bad: _Bad, prefix: str) -> None:
    """Each tower's sizes, MLP ratio, norm and activation kwargs; the patch dropout; the tokenizer kwargs."""
    for tower, sizes in (("vision_cfg", _VISION_SIZES), ("text_cfg", _TEXT_SIZES)):
        sub = cfg[tower]
        if not isinstance(sub, dict):
            raise bad(f"{prefix}{tower} must be a JSON object, not {_shown(sub)}")
        for key in sizes:
            if key in sub and not _is_count(sub[key]) and (sub[key] is not None or _builds_with(sub, tower, key)):
                raise bad(f"{prefix}{tower}.{key} must be a positive integer, not {_shown(sub[key])}")
        ratio = sub.get("mlp_ratio", 4.0)  # (a 0 or a null given is what open_clip builds with, not its default)
        if not _is_positive_number(ratio):
            raise bad(f"{prefix}{tower}.mlp_ratio must be a positive number, not {_shown(ratio)}")
        # open_clip passes these to LayerNorm and GELU as they are: a wrong key or type fails only at
        # the first image or prompt, in a traceback. Its configs set LayerNorm's eps and GELU's approximate.
        # (open_clip skips a false norm_kwargs, but applies any act_kwargs but null: [] was a TypeError)
        norm, act = sub.get("norm_kwargs") or {}, {} if sub.get("act_kwargs") is None else sub["act_kwargs"]
        if not (isinstance(norm, dict) and set(norm) <= {"eps"} and _is_positive_number(norm.get("eps", 1e-5))):
            raise bad(f"{prefix}{tower}.norm_kwargs may set only eps, a positive number, not {_shown(norm)}")
        if not (isinstance(act, dict) and set(act) <= {"approximate"}
                and act.get("approximate", "none") in _GELU_APPROXIMATE):
            raise bad(f"{prefix}{tower}.act_kwargs may set only approximate, 'none' or 'tanh' (GELU's), "
                      f"not {_shown(act)}")
        if act and cfg.get("quick_gelu"):
            raise bad(f"{prefix}{tower}.act_kwargs sets GELU's approximate, but quick_gelu builds QuickGELU, "
                      "which has none")
    # open_clip compares it with 0 and builds PatchDropout, which asserts 0 <= p < 1: a string or a null
    # was a TypeError and true, 1 or more an AssertionError, each "open_clip cannot build this
    # architecture" naming no key; a negative one (or NaN) it takes for none, a fraction it is not
    dropout = cfg["vision_cfg"].get("patch_dropout", 0.0)
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise bad(f"{prefix}vision_cfg.patch_dropout must be a number in [0, 1), not {_shown(dropout)}")
    tokenizer_kwargs = cfg["text_cfg"].get("tokenizer_kwargs")
    if "tokenizer_kwargs" in cfg["text_cfg"] and not isinstance(tokenizer_kwargs, dict):  # (passed as **: TypeError)
        raise bad(f"{prefix}text_cfg.tokenizer_kwargs must be a JSON object, not {_shown(tokenizer_kwargs)}")
    if tokenizer_kwargs and not cfg["text_cfg"].get("hf_tokenizer_name"):
        # (open_clip's own tokenizer would read a vocabulary file they name, or add tokens past vocab_size)
        raise bad(f"{prefix}text_cfg.tokenizer_kwargs {_shown(tokenizer_kwargs)}: open_clip's own tokenizer takes none "
                  "from a config (its configs give them to Hugging Face tokenizers only)")


def _check_single_features(cfg: dict, bad: _Bad, prefix: str) -> None:
    """What makes an encoder give more than one feature, only beside CoCa's ``multimodal_cfg``."""
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if "multimodal_cfg" not in cfg:  # (CoCa's encoders read these; open_clip's configs set them only beside one)
        # CLIP's encoders would give no one feature per image or text: a tuple with the tokens, every
        # token, or 77 tokens against 78 positions; each was a traceback at the first image or prompt
        coca = {"vision_cfg.output_tokens": bool(vision.get("output_tokens")),
                "text_cfg.output_tokens": bool(text.get("output_tokens")),
                "vision_cfg.pool_type": vision.get("pool_type") == "none",
                "text_cfg.pool_type": text.get("pool_type") == "none",
                "vision_cfg.attentional_pool": isinstance(vision.get("attentional_pool"), str)
                and bool(vision["attentional_pool"]),
                "text_cfg.embed_cls": bool(text.get("embed_cls")) and not cfg.get("custom_text")}
        key = next((k for k, v in coca.items() if v), None)
        if key is not None:
            tower, field = key.split(".")
            raise bad(f"{prefix}{key} {_shown(cfg[tower][field])}: open_clip's CLIP would not give one feature per "
                      "image and per text with it (only CoCa, beside a multimodal_cfg, reads it)")


def _check_geometry(cfg: dict, bad: _Bad, prefix: str) -> tuple[object, list, object]:
    """The image size, the blocks and patches, the vocabulary; returns ``(image_size, its sides, vision layers)``."""
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    size = vision.get("image_size", 224)  # (open_clip's default where it is not given; 0 is given)
    sides = size if isinstance(size, list) else [size]
    if not (sides and all(isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= MAX_IMAGE_SIZE for v in sides)):
        raise bad(f"{prefix}vision_cfg.image_size {_shown(size)} is not in [8, {MAX_IMAGE_SIZE}]")
    layers = vision.get("layers", 12)
    stages = layers if isinstance(layers, list) else [layers]  # (a list: a ResNet's blocks per stage)
    if not (stages and all(_is_count(n) for n in stages)):
        raise bad(f"{prefix}vision_cfg.layers must be a positive integer (a ResNet: a list of them), "
                  f"not {_shown(layers)}")
    if isinstance(layers, list):
        if min(sides) < RESNET_STRIDE:  # (its last feature map would be empty)
            raise bad(f"{prefix}vision_cfg.image_size {_shown(size)}: a ResNet tower needs at least {RESNET_STRIDE} "
                      f"pixels a side (it downsamples {RESNET_STRIDE} times)")
    elif "timm_model_name" not in vision:  # open_clip's ViT (a timm tower has its own patches)
        patch = vision.get("patch_size") or 16
        if patch > min(sides):
            raise bad(f"{prefix}vision_cfg.patch_size {patch} is larger than the image ({_shown(size)})")
        tokens = (sides[0] // patch) * (sides[-1] // patch)  # (open_clip drops the pixels past the last patch)
        if tokens > MAX_PATCHES:
            raise bad(f"{prefix}vision_cfg: image_size {_shown(size)} in patches of {patch} is {tokens} patch tokens, "
                      f"more than {MAX_PATCHES} (open_clip's largest ViT has 729)")
    vocab = text.get("vocab_size") or SIMPLE_TOKENIZER_VOCAB
    if not text.get("hf_tokenizer_name") and vocab < SIMPLE_TOKENIZER_VOCAB:  # (a Hugging Face one has its own)
        raise bad(f"{prefix}text_cfg.vocab_size {vocab} is less than the {SIMPLE_TOKENIZER_VOCAB} tokens of open_clip's "
                  "tokenizer")
    for tower, blocks in (("vision_cfg", sum(stages)), ("text_cfg", text.get("layers") or 12)):
        if blocks > MAX_LAYERS:
            raise bad(f"{prefix}{tower}.layers: {blocks} blocks, more than {MAX_LAYERS} (the deepest open_clip "
                      "architecture has 64)")
    return size, sides, layers


def _check_declared_types(cfg: dict, bad: _Bad, prefix: str) -> None:
    """Every other key of a tower by the type open_clip's dataclass declares (:func:`_declared_types`)."""
    # Every other key open_clip's dataclass declares as a bool, int, number or string, by that type:
    # open_clip reads them as they are, so a string was true ("no_ln_pre": "x" built another
    # architecture, silently) and a string number a TypeError naming no key. A null is let through:
    # open_clip's own configs give it for keys declared without Optional (its ResNets' patch_size, its
    # timm towers' timm_proj), and it reads a null bool as false (a null size: see _builds_with).
    for tower in ("vision_cfg", "text_cfg"):
        for key, value in cfg[tower].items():
            kind, optional = _declared_types()[tower].get(key, (None, False))
            if kind is None or value is None or key in _NAMING_KEYS:
                continue
            if tower == "vision_cfg" and key == "attentional_pool":
                if not (isinstance(value, bool) or value == "" or value in _ATTENTIONAL_POOLS):
                    raise bad(f"{prefix}vision_cfg.attentional_pool must be true, false or the name of CoCa's "
                              f"pooler ('parallel', 'cascade'), not {_shown(value)}")
            elif not _has_type(value, kind):
                raise bad(f"{prefix}{tower}.{key} must be {_TYPE_WORDS[kind]}{' or null' if optional else ''}, "
                          f"not {_shown(value)}")


def _check_layer_kinds(cfg: dict, bad: _Bad, prefix: str, size: object, sides: list,
                       layers: object) -> None:
    """The kinds of layer (:func:`_choices`), the sine-cosine position embedding, eos pooling and
    the attentional pooler."""
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    # The kinds of layer open_clip builds: its ViT raised a bare ValueError for another position
    # embedding, and its fixed sine-cosine one asserts a square grid of patches and a width it can split
    # into four (sines and cosines of rows and of columns): "open_clip cannot build this architecture
    # (ValueError)" or the assert's words. A text tower pooled at eos_id (open_clip 3) with open_clip's
    # own tokenizer, whose end token is SIMPLE_TOKENIZER_VOCAB - 1, pooled at the first token for any
    # other id (none matched): every text the same feature, silently.
    # (each key that names a kind of layer, where this open_clip declares it: see _choices)
    for (tower, key), values in _choices().items():
        if key in cfg[tower] and key in _declared_types()[tower] and cfg[tower][key] not in values:
            raise bad(f"{prefix}{tower}.{key} must be {_either(values)}, not {_shown(cfg[tower][key])}")
    vit = not isinstance(layers, list) and not vision.get("timm_model_name")
    if vision.get("pos_embed_type") == "sin_cos_2d" and vit:
        patch, width = vision.get("patch_size") or 16, vision.get("width", 768)
        if sides[0] // patch != sides[-1] // patch:
            raise bad(f"{prefix}vision_cfg.pos_embed_type 'sin_cos_2d' needs a square grid of patches, not "
                      f"{sides[0] // patch} x {sides[-1] // patch} (image_size {_shown(size)} in patches of {patch})")
        if width and width % 4:
            raise bad(f"{prefix}vision_cfg.pos_embed_type 'sin_cos_2d' needs a width divisible by 4 (sines and "
                      f"cosines of rows and of columns), not {width}")
    eos = text.get("eos_id", 2)  # (open_clip's default)
    if text.get("pool_type") == "eos" and not text.get("hf_tokenizer_name") and eos != SIMPLE_TOKENIZER_VOCAB - 1:
        raise bad(f"{prefix}text_cfg.pool_type 'eos' pools at {prefix}text_cfg.eos_id {_shown(eos)}, a token "
                  f"open_clip's tokenizer does not end a text with (its end token is {SIMPLE_TOKENIZER_VOCAB - 1})")
    # A ViT's attentional pooler (CLIP pools at its first query) has attn_pooler_queries queries of
    # embed_dim split among attn_pooler_heads heads: 0 queries was an IndexError at the first image, a
    # negative count or heads that do not divide embed_dim "open_clip cannot build this architecture
    # (embed_dim must be divisible by num_heads)", naming no key
    if vit and vision.get("attentional_pool"):
        for key, default in (("attn_pooler_queries", 256), ("attn_pooler_heads", 8)):  # (open_clip's defaults)
            if not _is_count(vision.get(key, default)):
                raise bad(f"{prefix}vision_cfg.{key} must be a positive integer beside an attentional_pool, "
                          f"not {_shown(vision[key])}")
        if cfg["embed_dim"] % vision.get("attn_pooler_heads", 8):
            raise bad(f"{prefix}embed_dim {cfg['embed_dim']} is not a multiple of {prefix}vision_cfg.attn_pooler_heads "
                      f"{vision['attn_pooler_heads']} (the attentional pooler's heads split it)")


def _check_widths(cfg: dict, bad: _Bad, prefix: str, layers: object) -> None:
    """LayerScale's initial values; the heads dividing each tower's width."""
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    # open_clip scales each block's output by a LayerScale of this initial value (float32): 0 or less
    # would start every block as nothing or its opposite, past float32's largest as inf (NaN features);
    # an integer past float64's was "int too big to convert", naming no key. A null builds none.
    for tower in ("vision_cfg", "text_cfg"):
        scale = cfg[tower].get("ls_init_value")
        if scale is not None and not 0 < scale <= torch.finfo(torch.float32).max:
            raise bad(f"{prefix}{tower}.ls_init_value must be a positive number or null (LayerScale's initial value, "
                      f"a float32), not {_shown(scale)}")
    # Attention splits its width among the heads. open_clip builds a ViT with width // head_width heads
    # (64 // 48: one head of 64, silently another architecture) and a ResNet's attention pool with
    # RESNET_FEATURES width // head_width; a text tower's nn.MultiheadAttention asserts the width divides
    # ("embed_dim must be divisible by num_heads", naming no key). (A null size was refused above.)
    width, head_width = vision.get("width", 768), vision.get("head_width", 64)
    if not vision.get("timm_model_name") and width and head_width:
        if isinstance(layers, list) and width * RESNET_FEATURES % head_width:
            raise bad(f"{prefix}vision_cfg.head_width {head_width} does not divide the {width * RESNET_FEATURES} "
                      f"features ({RESNET_FEATURES} x width {width}) of a ResNet tower's attention pool")
        if not isinstance(layers, list) and width % head_width:
            raise bad(f"{prefix}vision_cfg.width {width} is not a multiple of {prefix}vision_cfg.head_width "
                      f"{head_width} (open_clip builds width // head_width heads, each width / heads wide)")
    width, heads = text.get("width", 512), text.get("heads", 8)
    if not text.get("hf_model_name") and width and heads and width % heads:
        raise bad(f"{prefix}text_cfg.width {width} is not a multiple of {prefix}text_cfg.heads {heads} (each head "
                  "takes an equal part of it)")


def count_tokens(texts: list[str]) -> list[int]:
    """The tokens of each text under open_clip's ``SimpleTokenizer`` (the tokenizer of the text
    towers a config file may name: :func:`check_config_file` refuses a Hugging Face one), without
    the start and end tokens and without cutting at a context length."""
    if not texts:  # (building the tokenizer takes 70 ms: not for nothing)
        return []
    from open_clip.tokenizer import SimpleTokenizer

    encode = SimpleTokenizer().encode
    return [len(encode(text)) for text in texts]


def check_config_file(cfg: object, source: str, prefix: str = "") -> None:
    """:func:`check_model_config` for a config read from a file (a ``--model`` JSON, a prompt's
    stored config), which may not name anything to load either: a Hugging Face model or
    tokenizer (open_clip would load whatever it names, a hub repository or a local folder, and
    tokenize with it), a timm tower's pretrained weights, or a timm model by a hub or folder
    name (``hf-hub:...``, ``local-dir:...``). The models of open_clip's own registry that use
    one are given by name."""
    check_model_config(cfg, source, prefix)
    named = [k for k in _HF_NAMES if cfg["text_cfg"].get(k)]
    if named:
        raise UserError(f"{source}: {prefix}text_cfg.{named[0]} names a Hugging Face "
                        f"{named[0].split('_')[1]} ({_shown(cfg['text_cfg'][named[0]])}), which a config file may "
                        "not (open_clip would load what it names); give such a model by its open_clip name")
    vision = cfg["vision_cfg"]
    timm_name = vision.get("timm_model_name")
    if vision.get("timm_model_pretrained") or (timm_name is not None and (
            not isinstance(timm_name, str) or ":" in timm_name or "/" in timm_name or "\\" in timm_name)):
        key = "timm_model_pretrained" if vision.get("timm_model_pretrained") else "timm_model_name"
        raise UserError(f"{source}: {prefix}vision_cfg.{key} {_shown(vision[key])}: a config file may name a timm "
                        "architecture, not weights to load or a hub or folder name; give such a model by its "
                        "open_clip name")


def _estimated_size(cfg: dict) -> int:
    """About how many fp32 numbers the CLIP of ``cfg`` (checked by :func:`check_model_config`)
    holds, from its numbers alone, without building anything: each transformer block's
    (4 + 2 mlp_ratio) width^2 weights, the embeddings, the projections, or a ResNet's
    bottlenecks (about 14 planes^2 each) and attention pool, and the text tower's causal mask
    (context_length^2, a buffer, not a parameter). Biases and norms are left out: it stays under
    what the model holds, parameters and buffers (within 10% for open_clip's own ViTs and
    ResNets; with the mask it may exceed the parameters alone, which the exact check after
    counts). A timm or Hugging Face tower counts nothing here (the exact count after builds it)."""
    embed, vision, text = cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"]
    n = 0
    if "timm_model_name" not in vision:
        width, layers = vision.get("width") or 768, vision.get("layers") or 12
        if isinstance(layers, list):  # ModifiedResNet: stage i has planes width * 2^i
            n += sum(blocks * 14 * (width * 2**i) ** 2 for i, blocks in enumerate(layers))
            n += 4 * (32 * width) ** 2 + 32 * width * embed  # attention pool: q, k, v, c; projection
        else:
            size, patch = vision.get("image_size") or 224, vision.get("patch_size") or 16
            sides = size if isinstance(size, list) else [size, size]
            grid = (sides[0] // patch) * (sides[-1] // patch)
            n += 3 * patch**2 * width + (grid + 1) * width + width * embed  # patch conv, positions, projection
            n += layers * int((4 + 2 * (vision.get("mlp_ratio") or 4.0)) * width**2)
    if "hf_model_name" not in text:
        width, context = text.get("width") or 512, text.get("context_length") or 77
        # token and position embeddings, projection; the causal mask
        n += ((text.get("vocab_size") or 49408) + context + embed) * width + context**2
        n += (text.get("layers") or 12) * int((4 + 2 * (text.get("mlp_ratio") or 4.0)) * width**2)
    return n


def _check_size(name: str, source: str, prefix: str = "") -> None:
    """Refuse, before any weight is allocated, an architecture whose config is malformed
    (:func:`check_model_config`) or whose fp32 weights would fill more than half of this
    machine's memory (a config JSON, or one stored in a prompt, may declare any width or depth):
    first as estimated from the config's numbers (:func:`_estimated_size`, instantly), then
    exactly: it is built on torch's meta device, which allocates nothing, and its parameters are
    counted. The errors name ``source`` (``--model FILE``; a prompt's stored config, ``--prompt
    FILE`` with ``prefix`` ``model_config.``)."""
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    check_model_config(cfg, source, prefix)
    memory = physical_memory()
    need = _estimated_size(cfg) * 4
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
        overflow = archive_overflow(pretrained) or file_over_memory(pretrained) or _odd_weight(pretrained, name)
        if overflow:
            raise UserError(f"--pretrained {pretrained}: {overflow}")
        openai_file = _is_openai_file(pretrained)
        return (pretrained, sha256_file(pretrained), "quick_gelu" if openai_file else None,
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
