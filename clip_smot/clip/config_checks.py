"""Check an open_clip model config that a user or a prompt file hands in, before open_clip builds anything.

A ``--model`` JSON file, or the ``model_config`` stored in a prompt file, is the user's and may
hold anything: open_clip reads its numbers and names as they are, so a wrong type, a size of 0
or one of millions, a layer kind it does not know or a name of something to download fails
deep inside open_clip (an assert or a TypeError naming no key, a traceback at the first image)
or builds silently another architecture than the config says. :func:`check_model_config` and
:func:`check_config_file` refuse such a config in one line naming the field;
:func:`estimated_size` sizes it from its numbers alone. :mod:`clip_smot.clip.model` runs these
checks as it registers and loads a model; this module imports nothing of it.

open_clip is imported here only inside functions, to read what the installed version declares
(its ``CLIPVisionCfg`` / ``CLIPTextCfg`` dataclasses, the pooling kinds of its text tower, its
default ``PreprocessCfg``): the checks follow the open_clip version. Nothing is built here.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from clip_smot.common.errors import UserError, cut

__all__ = [
    "check_config_file",
    "check_model_config",
    "check_preprocess_cfg",
    "estimated_size",
]


MAX_IMAGE_SIZE = 2048  # input side length: the largest open_clip architecture takes 518
MAX_ESTIMATE = 2**80  # numbers: what estimated_size says of a model past any machine's memory
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


# exp(logit_scale), the temperature, is a normal float32 between these (as model.py's _check_temperature wants it)
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
    # (open_clip's image blocks of scaled cosine attention fail at the first batch of images: "batch1
    # must be a 3D tensor", a traceback; its other custom blocks run, and the text tower's are refused
    # where a prompt is built)
    if isinstance(cfg["vision_cfg"], dict) and cfg["vision_cfg"].get("scaled_cosine_attn"):
        raise bad(f"{prefix}vision_cfg.scaled_cosine_attn is not supported: open_clip's image blocks of scaled "
                  "cosine attention fail on a batch of images")
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
        # (open_clip's MLP width is int(width * mlp_ratio): 64 x 0.001 built MLPs of width 0, with torch's
        # "Initializing zero-element tensors is a no-op" warning)
        width = sub.get("width") or (768 if tower == "vision_cfg" else 512)
        if _is_count(width) and ratio < 1 and int(width * ratio) < 1:
            raise bad(f"{prefix}{tower}.mlp_ratio {_shown(ratio)} gives MLPs of width int({width} x {_shown(ratio)}) "
                      "= 0; give at least 1 / width")
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


def estimated_size(cfg: dict) -> int:
    """About how many fp32 numbers the CLIP of ``cfg`` (checked by :func:`check_model_config`)
    holds, from its numbers alone, without building anything: each transformer block's
    (4 + 2 mlp_ratio) width^2 weights, the embeddings, the projections, or a ResNet's
    bottlenecks (about 14 planes^2 each) and attention pool, and the text tower's causal mask
    (context_length^2, a buffer, not a parameter). Biases and norms are left out: it stays under
    what the model holds, parameters and buffers (within 10% for open_clip's own ViTs and
    ResNets; with the mask it may exceed the parameters alone, which model.py's exact count
    after it, on the meta device, counts). A timm or Hugging Face tower counts nothing here (the
    exact count builds it). A model past float64's range, or past :data:`MAX_ESTIMATE`, is
    :data:`MAX_ESTIMATE` (its size in GiB is then still a number to say)."""
    try:
        return min(_estimated_size(cfg), MAX_ESTIMATE)
    except OverflowError:  # (an mlp_ratio of 1e308, a width of 10^200: past float64 on the way)
        return MAX_ESTIMATE


def _estimated_size(cfg: dict) -> int:
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


def check_preprocess_cfg(preprocess: object, source: str) -> None:
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
