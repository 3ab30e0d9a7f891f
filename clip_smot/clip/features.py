"""CLIP image features of image files: DataLoader decoding, encoding, and an on-disk cache.

Decoding, resizing and cropping run in DataLoader worker processes, or for JPEGs on the model's
device (:mod:`clip_smot.clip.decoding`); the model runs in the main process. Features of a list
of files are cached per (files, model weights, preprocessing), so that another score or another
prompt on the same images does not encode them again:

    $CLIP_SMOT_CACHE/features/<key>.safetensors   (default ~/.cache/clip_smot/features/)

``key`` is the SHA-256 of the model identity (name, config, pretrained tag, checkpoint
SHA-256, MLP activation), the versions of clip-smot and open_clip, the preprocessing settings,
the decoder when it is not PIL (``jpeg-cuda``, ``jpeg-cpu``, with torchvision's version: their
pixels differ by a level here and there), and the sorted absolute file paths with their sizes, modification and change times
and inodes (a tar shard's member: the shard's): editing, replacing, adding or removing an image
gives a new key (even when a copy keeps the old modification time). Delete the folder to clear
the cache. Models with random weights (no tag, no checkpoint) are never cached,
since nothing names their weights.

Stored tensors: ``global`` [N, e] (normalised, float32) and, only when local features were
asked for (GL-MCM), ``local`` [N, P, e] (normalised, float16: 196 patches x 512 x 2 bytes =
200 KB per image for ViT-B-16, about 10 GB for ImageNet-1k val). The metadata holds the files
(``paths``, ``skipped``: absolute paths), the ``key`` it was written for (an entry moved to another key's name is
not served there) and ``sha256``, a checksum over the tensors and that metadata, checked
on every read: an entry whose bytes changed since it was written (a flipped bit, a hand edit)
is encoded again, with a note. Non-finite features are never stored nor used, nor are features
of another dtype or norm than the writer's (a checksum written by hand matches).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import safe_open

from clip_smot.clip import model as cm
from clip_smot.clip.decoding import DECODE_CHOICES, decoder_identity, image_batches  # (image_batches: re-exported)
from clip_smot.clip.model import ClipModel, weights_flag
from clip_smot.common.configs import setting
from clip_smot.common.device import PRECISIONS, autocast
from clip_smot.common.distributed import every_rank, share_work, writes_outputs
from clip_smot.common.errors import UserError
from clip_smot.common.files import (
    atomic_save_safetensors,
    cache_root,
    parse_json,
    remove_stale_temporaries,
    tensor_checksums,
)
from clip_smot.common.shards import image_identity, image_stamp

__all__ = ["ImageFeatures", "cache_dir", "cache_setting", "decode_setting", "encode_files", "image_batches",
           "normalized_features", "precision_setting", "unit_rows"]

# 2: GL-MCM local features from the value path; RGBA, palette and 1-bit files converted to RGB
# after resizing (as open_clip), 16-bit grey scaled to 8 bits
# 3: a float image's range from its finite pixels (one NaN pixel read it unscaled, almost black)
_CACHE_VERSION = "3"
_LOCAL_DTYPE = torch.float16  # local features are large; their cosines need no more precision


@dataclass
class ImageFeatures:
    """Normalised CLIP features of the readable files among those asked for.

    Attributes:
        paths: the encoded files, in order (unreadable ones removed when skipped).
        global_: [N, e] float32, normalised.
        local: [N, P, e] float16, normalised, or None when not asked for.
        skipped: unreadable files that were skipped, with the reason.
    """

    paths: list[str]
    global_: torch.Tensor
    local: torch.Tensor | None
    skipped: list[tuple[str, str]]


def cache_dir() -> Path:
    """``$CLIP_SMOT_CACHE/features`` or ``~/.cache/clip_smot/features``."""
    return cache_root() / "features"


def _cache_key(clip: ClipModel, paths: Sequence[str], decode: str = "pil", precision: str = "fp32") -> str:
    files = [image_stamp(p) for p in paths]  # a replaced image (or shard) gives a new key
    decoder = decoder_identity(decode, next(clip.model.parameters()).device)
    blob = json.dumps(
        {
            **({"decoder": decoder} if decoder else {}),  # (the PIL decoder's entries keep their keys)
            **({"precision": precision} if precision != "fp32" else {}),  # (and fp32's)
            "version": _CACHE_VERSION,
            "model": clip.identity(),  # (with the activation the model was built with)
            "versions": cm.library_versions(),  # another clip-smot or open_clip may encode otherwise
            "preprocess": cm.preprocess_identity(clip),
            "files": sorted(files),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class _WrongShape(Exception):
    """A cache entry's header declares tensors of other shapes than its files' features."""


def _load_entry(path: Path, local: bool, embed_dim: int, patches: int | None
                ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]] | None:
    """The tensors wanted (``global``, and ``local`` with ``local``), the metadata and the
    encoded files (its ``paths``, read once) of a cache entry, or None when it lacks the local
    features asked for. Their shapes are checked in the header before any is loaded:
    [n, embed_dim] and [n, patches, embed_dim] for the n files the entry lists (a planted or
    damaged entry may declare any size, and a sparse one costs nothing on disk); ``patches``
    None: the model has no local features, so no entry holds any.

    Raises:
        SafetensorError, OSError: not a readable entry (a missing tensor included).
        KeyError, ValueError, TypeError: metadata that is not an entry's.
        _WrongShape: tensors of other shapes.
    """
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if local and "local" not in f.keys():
            return None
        names = ("global", "local") if local else ("global",)
        encoded = [str(p) for p in parse_json(meta["paths"])]
        n = len(encoded)
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in names}
        g, l = shapes["global"], shapes.get("local")
        # (no file readable: the writer's local features are [0, 0, e])
        if g != (n, embed_dim) or (l is not None and (len(l) != 3 or l[::2] != (n, embed_dim)
                                                      or (n and l[1] != patches))):
            raise _WrongShape
        # clone: fresh, aligned memory, so that matrix products are bit-identical to those
        # of freshly encoded features (a view into the file buffer can take another SIMD path)
        tensors = {k: f.get_tensor(k).clone() for k in names}
    return tensors, meta, encoded


def _read_cache(path: Path, paths: Sequence[str], local: bool, embed_dim: int, patches: int | None = None
                ) -> tuple[ImageFeatures | None, str]:
    """The cached features of ``paths`` and "", or None and why the entry cannot be used ("" when
    there is no entry or it lacks the local features asked for; a reason when it is damaged, or
    of another meaning: another key's, another clip-smot's, other files').
    ``patches``: the model's patches per image (for ``local``; None where it has none)."""
    if not path.is_file():
        return None, ""
    try:
        entry = _load_entry(path, local, embed_dim, patches)
        if entry is None:
            return None, ""
        tensors, meta, encoded = entry
        if "sha256" not in meta:
            return None, "it has no checksum (written by an older clip-smot)"
        stored = parse_json(meta.pop("sha256"))
        if any(stored[k] != v for k, v in tensor_checksums(tensors, meta).items()):
            return None, "its checksum does not match its contents"
        # the key (model, weights, preprocessing, files) is the entry's name only: an entry moved or
        # copied to another key's name was served as that model's features (an older entry holds none)
        if meta.get("key", path.stem) != path.stem:
            return None, "it was written for another key (another model, weights, preprocessing or files)"
        global_, local_ = tensors["global"], tensors.get("local")
        skipped = [(str(p), str(why)) for p, why in parse_json(meta["skipped"])]
    except _WrongShape:  # shapes the writer did not write: a matrix product would fail on them, or worse, not
        return None, "its features have the wrong shape"
    # (RuntimeError: a tensor torch cannot view as bytes; a 0-d one the shape check refuses first)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        return None, f"not a readable entry ({type(e).__name__})"
    wanted = [image_identity(p) for p in paths]  # (the key's: a relative and an absolute spelling are one)
    held = [image_identity(p) for p in encoded]
    held_skipped = [image_identity(s[0]) for s in skipped]
    if sorted(held + held_skipped) != sorted(wanted):
        return None, "it lists other files"
    # (the checksum is no seal: an entry written by hand has a matching one; int or bool features scored
    # without an error, every score wrong, and unnormalised ones gave an MCM near 1 to every image)
    if global_.dtype != torch.float32 or (local_ is not None and local_.dtype != _LOCAL_DTYPE):
        return None, "its features are not float32 (global) and float16 (local)"
    if not all(torch.isfinite(t).all() for t in (global_, local_) if t is not None):
        return None, "its features are not finite"
    if not all(_normalised(t, tol) for t, tol in ((global_, 1e-3), (local_, 1e-2)) if t is not None):
        return None, "its features are not normalised"
    # the key sorts the files: the entry may hold them in another order (and spelling) than asked for;
    # a file asked for twice is served its occurrences in order (each was encoded in a batch of its
    # own: the last one for both differed from the first run's row in the last digits)
    row: dict[str, list[int]] = {}
    for i, w in enumerate(held):
        row.setdefault(w, []).append(i)
    order, asked_encoded = [], []
    for p, w in zip(paths, wanted):
        if row.get(w):
            order.append(row[w].pop(0))
            asked_encoded.append(p)
    if order != list(range(len(encoded))):
        global_ = global_[order]
        local_ = local_[order] if local_ is not None else None
    asked = dict(zip(wanted, paths))
    encoded = asked_encoded
    skipped = [(asked[w], why) for w, (_, why) in zip(held_skipped, skipped)]
    return ImageFeatures(encoded, global_, local_, skipped), ""


def _normalised(t: torch.Tensor, tol: float) -> bool:
    """Whether each feature vector (the last dimension) of ``t`` has norm 1 within ``tol``; in
    float32, 256 images at a time (an ImageNet-val entry's local features are 10 GB in float16)."""
    return all(((rows.float().norm(dim=-1) - 1).abs() <= tol).all() for rows in t.split(256))


# cache folder -> when this process last removed the temporaries of killed writes from it
_SWEPT: dict[str, float] = {}
_SWEEP_EVERY_S = 600.0  # (the sweep reads the whole folder: once an entry, image files given as N PATHS read N * N / 2)


def _write_cache(path: Path, feats: ImageFeatures) -> None:
    # entries of writers killed outside Python's reach (SIGKILL, the OOM killer), as large as an entry;
    # an hour old at least: a younger one may be another process's write in progress. Not at every
    # entry: at most every ten minutes a process (an hour's temporary is as stale ten minutes later)
    folder, now = os.path.realpath(path.parent), time.monotonic()
    if now - _SWEPT.get(folder, -_SWEEP_EVERY_S) >= _SWEEP_EVERY_S:
        _SWEPT[folder] = now
        remove_stale_temporaries(path.parent, None, older_than_s=3600.0)
    tensors = {"global": feats.global_.contiguous()}
    if feats.local is not None:
        tensors["local"] = feats.local.contiguous()
    # the files as the key holds them, absolute: a relative spelling would be read against the
    # reader's current folder, which another run's may not be (its files then "other files")
    meta = {"paths": json.dumps([image_identity(p) for p in feats.paths]),
            "skipped": json.dumps([[image_identity(p), why] for p, why in feats.skipped]), "key": path.stem}
    atomic_save_safetensors(tensors, path, {**meta, "sha256": json.dumps(tensor_checksums(tensors, meta), sort_keys=True)})


def normalized_features(clip: ClipModel, images: torch.Tensor, local: bool = False, precision: str = "fp32"
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised float32 global features [B, e] of preprocessed images [B, 3, S, S] and, with
    ``local``, their normalised per-patch features [B, P, e] (GL-MCM; ViT only), else None.
    ``precision``: the image encoder's arithmetic (``bf16``/``fp16``: autocast; ``fp32``: none)."""
    with autocast(images.device, precision):
        if local:
            g, l = cm.encode_image_tokens(clip, images)  # [B, e], [B, P, e]
            return F.normalize(g.float(), dim=-1), F.normalize(l.float(), dim=-1)
        return F.normalize(cm.encode_images(clip, images).float(), dim=-1), None


@torch.inference_mode()
def _encode(
    clip: ClipModel, paths: Sequence[str], local: bool, batch_size: int, workers: int, skip_unreadable: bool,
    decode: str = "pil", precision: str = "fp32",
) -> ImageFeatures:
    device = next(clip.model.parameters()).device
    globals_, locals_, kept, skipped = [], [], [], []
    start = 0
    for images, errors in image_batches(clip, paths, batch_size, workers, decode):
        ok = [i for i, e in enumerate(errors) if not e]
        for i, e in enumerate(errors):
            if e:
                if not skip_unreadable:
                    raise UserError(e)
                skipped.append((str(paths[start + i]), e))
        kept += [str(paths[start + i]) for i in ok]
        start += len(errors)
        if not ok:
            continue
        if len(ok) < len(errors):  # (indexing copies the batch: only when it must drop a file)
            images = images[ok]
        g, l = normalized_features(clip, images.to(device, non_blocking=True), local, precision)  # [b, e], [b, P, e]
        _check_finite(clip, g, l, kept[-len(ok):])
        globals_.append(g.cpu())
        if local:
            locals_.append(l.to(_LOCAL_DTYPE).cpu())
    if paths and not kept and not skip_unreadable:
        raise UserError(f"{paths[0]}: none of the {len(paths)} image(s) could be read")
    e = clip.config["embed_dim"]  # (no file readable: empty features, for the caller to judge with its other files)
    global_ = torch.cat(globals_) if kept else torch.zeros(0, e)
    local_ = (torch.cat(locals_) if kept else torch.zeros(0, 0, e, dtype=_LOCAL_DTYPE)) if local else None
    return ImageFeatures(kept, global_, local_, skipped)


def _join(parts: Sequence[ImageFeatures]) -> ImageFeatures:
    """The features of consecutive runs of files (:func:`~clip_smot.common.distributed.share_work`'s
    results), as one."""
    if len(parts) == 1:
        return parts[0]
    full = [f for f in parts if f.paths] or parts[:1]  # (a share of unreadable files has empty tensors)
    local = torch.cat([f.local for f in full]) if full[0].local is not None else None
    return ImageFeatures([p for f in parts for p in f.paths], torch.cat([f.global_ for f in full]), local,
                         [s for f in parts for s in f.skipped])


def _check_finite(clip: ClipModel, g: torch.Tensor, l: torch.Tensor | None, paths: Sequence[str]) -> None:
    """A UserError naming the model's weights when the normalised features ``g`` [b, e] (or ``l``
    [b, P, e]) of ``paths`` are not finite, or not of norm 1 (a feature of norm 0, or one whose norm
    overflows float32, normalises to zeros: every class then scored alike): decoded images are
    finite, so the weights are the source."""
    bad = ~unit_rows(g)  # [b]
    if l is not None:
        bad |= ~unit_rows(l).all(dim=-1)
    if bad.any():
        first = paths[int(bad.nonzero()[0])]
        raise UserError(f"{weights_flag(clip)}: the image encoder of {clip.name} gives non-finite features, or "
                        f"features of no length ({int(bad.sum())} of {len(paths)} images, first {first}); its weights "
                        "hold NaN or inf, or overflow")


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Whether each row (last dimension) of the normalised ``x`` is finite and of norm 1, not the
    zeros F.normalize makes of a row of norm 0 or of one whose norm overflows."""
    return torch.isfinite(x).all(dim=-1) & (x.float().norm(dim=-1) > 0.5)


# cache folders a write to which failed and was noted: once a process (later entries are still tried)
_UNWRITTEN: set[str] = set()


# The options of encode_files that score and eval give their users, declared once. Each call is a
# new field: dataclasses fill in a Field's name and type for the class that holds it, so one Field
# shared by two configs would be the second's. ``prefix``: "CLIP: " in eval, beside its ResNet options.


def _help(prefix: str, text: str) -> str:
    return prefix + text if prefix else text[:1].upper() + text[1:]


def cache_setting(prefix: str = "") -> Any:
    """The ``use_cache`` field of a config (``--no-cache``): :func:`encode_files`'s ``use_cache``."""
    return setting(True, _help(prefix, "neither read nor write the image-feature cache."), flag="--no-cache")


def decode_setting(prefix: str = "") -> Any:
    """The ``decode`` field of a config (``--decode``), which
    :func:`~clip_smot.clip.decoding.resolve_decode` makes :func:`encode_files`'s ``decode``."""
    return setting("auto", _help(prefix, "JPEG decoding, gpu (decode_jpeg on the CUDA device) or cpu (PIL in the "
                                         "workers); auto: gpu on CUDA where torchvision and the model's "
                                         "preprocessing allow it, else cpu."), choices=DECODE_CHOICES)


def precision_setting(prefix: str = "") -> Any:
    """The ``precision`` field of a config (``--precision``), which
    :func:`~clip_smot.common.device.resolve_precision` makes :func:`encode_files`'s ``precision``."""
    return setting("auto", _help(prefix, "the image encoder's arithmetic, bf16, fp16 (autocast; bf16 on the CPU) or "
                                         "fp32; auto: bf16 on CUDA, fp32 on the CPU."), choices=("auto", *PRECISIONS))


def encode_files(
    clip: ClipModel,
    paths: Sequence[str | os.PathLike],
    local: bool = False,
    batch_size: int = 256,
    workers: int = 4,
    skip_unreadable: bool = False,
    use_cache: bool = True,
    decode: str = "pil",
    precision: str = "fp32",
) -> ImageFeatures:
    """Normalised CLIP features of image files, from the cache when possible.

    Args:
        clip: the model (on its device).
        paths: image files, in the order wanted.
        local: also compute per-patch features (GL-MCM; ViT only).
        batch_size: images per forward pass.
        workers: DataLoader worker processes for decoding (0 = in the main process).
        skip_unreadable: skip unreadable images (listed in ``skipped``) instead of failing.
        use_cache: read and write the feature cache (see the module docstring).
        decode: ``pil`` or ``jpeg`` (:func:`~clip_smot.clip.decoding.resolve_decode` gives it).
        precision: ``fp32``, ``bf16`` or ``fp16``: the image encoder's arithmetic
            (:func:`~clip_smot.common.device.resolve_precision` gives it); part of the cache key.

    Returns:
        The features; with ``skip_unreadable`` none at all (empty tensors) when no file is readable.

    Raises:
        UserError: an unreadable image (naming it) unless skipped; local features of a non-ViT;
            non-finite features (naming the weights).
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise UserError("no image files to encode")
    cacheable = use_cache and bool(clip.pretrained)
    entry = cache_dir() / f"{_cache_key(clip, paths, decode, precision)}.safetensors" if cacheable else None
    grid = getattr(clip.model.visual, "grid_size", None)  # (a ViT's; local features are its patches')
    patches = math.prod(grid) if grid is not None else None
    feats, damage = (_read_cache(entry, paths, local, clip.config["embed_dim"], patches) if entry is not None
                     else (None, ""))
    writer = writes_outputs()  # (rank 0 under torchrun: one note, one cache write)
    if damage and writer:
        print(f"note: the feature-cache entry {entry} cannot be used ({damage}); its images are encoded again",
              file=sys.stderr)
    # under torchrun all processes encode unless every one found the entry (one may have looked
    # while rank 0 was writing it for an earlier argument with the same files)
    if not all(every_rank(feats is not None)):
        feats = _join(share_work(lambda share: _encode(clip, share, local, batch_size, workers, skip_unreadable,
                                                       decode, precision),
                                 paths, batch_size))
        if entry is not None and writer:
            try:
                _write_cache(entry, feats)
            except UserError as e:  # a full disk or quota where the cache lives: the features are here anyway
                if str(entry.parent) not in _UNWRITTEN:  # (score writes one entry a chunk: ~150 notes for 50,000 images)
                    _UNWRITTEN.add(str(entry.parent))
                    print(f"note: the feature cache was not written ({e}); --no-cache skips it (said once)",
                          file=sys.stderr)
    elif feats.skipped and not skip_unreadable:
        raise UserError(feats.skipped[0][1])
    return feats
