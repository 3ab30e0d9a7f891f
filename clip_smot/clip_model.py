"""Load and freeze an open_clip model; the only module of the package that imports open_clip.

A model is named either by an open_clip architecture name with a pretrained tag (downloaded on
a machine with internet, e.g. ``ViT-B-16`` + ``openai``), or by an open_clip model-config JSON
file with a local checkpoint (``.pt``, ``.bin`` or ``.safetensors``). Without internet and
without a cached copy, loading a tag fails within seconds, naming the model and saying how to
pass a local file.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn as nn
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

from .errors import UserError
from .runtime import sha256_file

__all__ = ["ClipModel", "IMAGENET_CLASSNAMES", "encode_images", "load_clip"]

IMAGENET_CLASSNAMES: tuple[str, ...] = tuple(open_clip.IMAGENET_CLASSNAMES)

# Hosts open_clip downloads from: the Hugging Face hub (preferred) and OpenAI's CDN.
_HUB_HOST = ("huggingface.co", 443)


@dataclass
class ClipModel:
    """A frozen open_clip model and what is needed to feed it and to name it in metadata.

    Attributes:
        model: the open_clip CLIP module, in eval mode, with requires_grad False everywhere.
        name: open_clip architecture name (for a config JSON: the file's stem).
        pretrained: the pretrained tag, the checkpoint file's name, or "" for random weights.
        checkpoint_sha256: SHA-256 of a local checkpoint file ("" for a tag or random weights).
        config: the model config dict (the JSON's content), stored in prompt metadata.
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

    def identity(self) -> dict[str, str]:
        """Strings that name these weights, as stored in prompt metadata."""
        return {
            "model": self.name,
            "model_config": json.dumps(self.config, sort_keys=True),
            "pretrained": self.pretrained,
            "checkpoint_sha256": self.checkpoint_sha256,
        }


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _resolve_name(model: str) -> tuple[str, dict]:
    """Architecture name and config for an open_clip name or a model-config JSON path."""
    if model.endswith(".json") or os.path.sep in model:
        path = Path(model)
        if not path.is_file():
            raise UserError(f"--model {model}: no such model-config JSON file")
        try:
            cfg = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"--model {model}: not a valid JSON model config ({e})") from None
        cfg = cfg.get("model_cfg", cfg)
        if not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
            raise UserError(f"--model {model}: an open_clip model config needs embed_dim, vision_cfg and text_cfg")
        open_clip.add_model_config(path)
        return path.stem, open_clip.get_model_config(path.stem)
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise UserError(
            f"--model {model}: unknown open_clip model; give an architecture name such as ViT-B-16 "
            "or the path of an open_clip model-config JSON"
        )
    return model, cfg


def load_clip(
    model: str = "ViT-B-16",
    pretrained: str | None = "openai",
    device: torch.device | str = "cpu",
) -> ClipModel:
    """Create an open_clip model, load its weights, freeze it and put it in eval mode.

    Args:
        model: open_clip architecture name, or the path of a model-config JSON file.
        pretrained: a pretrained tag of that architecture (downloaded with internet), the path
            of a local checkpoint (.pt, .bin, .safetensors), or None / "" / "none" for random
            weights (tests and benchmarks).
        device: where the model lives.

    Raises:
        UserError: unknown model or tag, missing file, or a tag that cannot be downloaded.
    """
    name, cfg = _resolve_name(model)
    if pretrained in (None, "", "none"):
        pretrained, checkpoint_sha = "", ""
    elif os.path.isfile(pretrained):
        checkpoint_sha = sha256_file(pretrained)
    elif get_pretrained_cfg(name, pretrained):
        checkpoint_sha = ""
        if not _tag_is_cached(name, pretrained) and not _hub_reachable():
            raise UserError(
                f"--pretrained {pretrained}: the weights of {name} ({pretrained}) are not cached and there is "
                "no internet to download them; pass a local checkpoint instead, e.g. "
                f"--model {name} --pretrained path/to/{name}.safetensors"
            )
    elif any(pretrained.endswith(s) for s in (".pt", ".pth", ".bin", ".safetensors")) or os.path.sep in pretrained:
        raise UserError(f"--pretrained {pretrained}: no such checkpoint file")
    else:
        tags = list_pretrained_tags_by_model(name)
        raise UserError(
            f"--pretrained {pretrained}: not a pretrained tag of {name} (known tags: {', '.join(tags) or 'none'}) "
            "nor an existing checkpoint file"
        )
    try:
        clip = open_clip.create_model(name, pretrained=pretrained or None, device=device)
    except RuntimeError as e:
        raise UserError(f"--model {name} --pretrained {pretrained}: could not load the weights ({e})".split("\n")[0]) from None
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    pp = open_clip.get_model_preprocess_cfg(clip)
    size = pp.get("size", cfg["vision_cfg"].get("image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size
    return ClipModel(
        model=clip,
        name=name,
        pretrained=os.path.basename(pretrained) if os.path.isfile(pretrained) else pretrained,
        checkpoint_sha256=checkpoint_sha,
        config=cfg,
        mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        image_size=int(size),
        tokenizer=open_clip.get_tokenizer(name),
    )


def _tag_is_cached(name: str, tag: str) -> bool:
    """Whether the weights of a pretrained tag are already in the local hub cache."""
    cfg = get_pretrained_cfg(name, tag)
    if "file" in cfg:
        return os.path.isfile(cfg["file"])
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            return False
        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        for fname in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
            if isinstance(try_to_load_from_cache(repo, fname), str):
                return True
    return False


def encode_images(clip: ClipModel, images: torch.Tensor) -> torch.Tensor:
    """Image features [B, d] (not normalised) of normalised images [B, 3, S, S]."""
    return clip.model.encode_image(images)
