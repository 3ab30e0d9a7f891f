"""Batches of preprocessed images for the CLIP image encoder, by one of two decoders.

- ``pil``: DataLoader workers decode every file with PIL and run open_clip's evaluation transform.
- ``jpeg``: workers read the files' bytes; the main process decodes the JPEGs of a batch with one
  ``torchvision.io.decode_jpeg`` call on the model's device (nvJPEG on CUDA), then resizes,
  crops and normalises them there (:mod:`clip_smot.common.tensor_images`). Files that are no
  JPEG are decoded by PIL in the workers; JPEGs ``decode_jpeg`` cannot read by PIL in the main
  process. The pixels match the ``pil`` decoder's within a level or two of 255 for most images,
  not for every size (docs/score.md, "Tolerance").

``--decode auto`` is ``jpeg`` when the model is on a CUDA device, else ``pil``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from clip_smot.clip import model as cm
from clip_smot.clip.model import ClipModel
from clip_smot.common import tensor_images as ti
from clip_smot.common.errors import UserError
from clip_smot.common.images import load_image
from clip_smot.common.shards import read_image_bytes, split_member
from clip_smot.common.workers import started

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["DECODE_CHOICES", "DECODERS", "strip_square", "resolve_decode", "tensor_preprocess", "decoder_identity",
           "image_batches", "kept_workers"]

DECODE_CHOICES = ("auto", "cpu", "gpu")  # the --decode flag: cpu = pil, gpu = jpeg on CUDA
DECODERS = ("pil", "jpeg")  # what resolve_decode returns and the decoding functions take


def _hw(settings: dict) -> tuple[int, int]:
    """(height, width) of the preprocessing's output images: ``size`` is one side (a square) or
    [h, w] (open_clip's vision ``image_size`` may be either)."""
    size = settings["size"]
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def _shortest_square(settings: dict) -> int | None:
    """The side, when the preprocessing resizes the shorter side (bicubic or bilinear) to a square
    crop, the geometry that :func:`strip_square` and the tensor path reproduce; else None."""
    side = _hw(settings)[0]
    if (settings["resize_mode"] != "shortest" or settings["size"] not in (side, [side, side])
            or settings["interpolation"] not in ("bicubic", "bilinear")):
        return None
    return side


def strip_square(im: Image.Image, settings: dict) -> Image.Image:
    """``im``, or for a strip its centre square as open_clip's evaluation transform makes it, from
    the part of the image that square needs: the transform resizes the whole image before it
    crops, and a 3 KB PNG of 3,000,000 x 1 pixels would become 672 million x 224 (GBs).

    PIL resizes in two passes, the width first; here each pass is one PIL resize of one axis
    (a pass along the strip takes a box: only the crop's part of the output), with the whole
    image's sampling grid and filter, so the pixels are the whole image's within a few levels
    (PIL may take the axes in the other order; with alpha, a palette or 1 bit, single pixels can
    differ fully: docs/score.md). Only for the shortest-side resize to a square (open_clip's
    default); the transform then leaves the square as it is.

    Args:
        im: a decoded PIL image.
        settings: :func:`~clip_smot.clip.model.preprocess_settings` of the model.
    """
    import math

    from PIL import Image

    w, h = im.size
    size = _shortest_square(settings)
    if not ti.is_strip(w, h) or size is None:
        return im
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[settings["interpolation"]]
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(im.mode)
    if premultiplied:  # (PIL resizes these with their colours premultiplied by alpha, both passes in one call)
        return strip_square(im.convert(premultiplied), settings).convert(im.mode)
    nh, nw = ti.shorter_side_size(h, w, size)  # torchvision's Resize(size), then CenterCrop(size)
    if w > h:  # the width pass along the strip, only the crop's columns; then the height pass
        sx, left = w / nw, int(round((nw - size) / 2.0))
        return im.resize((size, h), resample, box=(left * sx, 0, (left + size) * sx, h)).resize((size, size), resample)
    # the width pass over the rows the height pass reads (its filter's reach: 2 pixels of the
    # output's spacing for bicubic, 1 for bilinear, in source rows), then the height pass
    sy, top = h / nh, int(round((nh - size) / 2.0))
    reach = math.ceil(2 * max(sy, 1.0)) + 2
    r0, r1 = max(0, math.floor(top * sy) - reach), min(h, math.ceil((top + size) * sy) + reach)
    rows = im.crop((0, r0, w, r1)).resize((size, r1 - r0), resample)
    return rows.resize((size, size), resample, box=(0, top * sy - r0, size, (top + size) * sy - r0))


class ImageFiles(torch.utils.data.Dataset):
    """Decoded, preprocessed images; an unreadable file yields its error message, not an exception.

    Raising inside a worker would surface as a multi-line traceback; the message travels to
    the main process instead, which reports it as one line (or skips the file). With
    ``jpeg_bytes``, a JPEG file yields its bytes (uint8 [n]) for the main process to decode.

    Items: ``(image [3, H, W] float, error)`` (H = W = S but for a model of a non-square input
    size), or with ``jpeg_bytes`` ``(bytes or None, image, error)``.
    """

    def __init__(self, paths: Sequence[str], transform, settings: dict, jpeg_bytes: bool = False):
        self.paths, self.transform, self.settings, self.jpeg_bytes = list(paths), transform, settings, jpeg_bytes
        self.hw = _hw(settings)  # (what an unreadable file's zeros take: a non-square size is [h, w])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.load(self.paths[i])

    def load(self, path: str):
        raw = None
        try:
            data = read_image_bytes(path) if self.jpeg_bytes or split_member(path) else None
            if self.jpeg_bytes and ti.is_jpeg(data):
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # [n]
                image, error = None, ""
            else:  # open_clip converts to RGB after resizing
                image, error = self.transform(strip_square(load_image(path, mode=None, data=data), self.settings)), ""
        except UserError as e:
            image, error = torch.zeros(3, *self.hw), str(e)
        return (raw, image, error) if self.jpeg_bytes else (image, error)


class _NamedFiles(ImageFiles):
    """:class:`ImageFiles` whose items are named by their paths, which a :class:`_Paths` sampler
    hands to the workers: one DataLoader, and its worker processes, serves call after call."""

    def __getitem__(self, path: str):
        return self.load(path)


class _Paths(torch.utils.data.Sampler):
    """The paths of the current call (set before each iteration)."""

    def __init__(self):
        self.paths: list[str] = []

    def __iter__(self):
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class _Kept:
    loader: torch.utils.data.DataLoader  # (its sampler a _Paths)
    busy: bool = False  # (an iteration of it not finished yet)


_KEPT: dict[tuple, _Kept] | None = None  # what the workers make (preprocessing, batch, workers) -> loader


@contextlib.contextmanager
def kept_workers() -> Iterator[None]:
    """Within it, :func:`image_batches` keeps its DataLoader worker processes from one call to the
    next that makes the same batches (preprocessing, batch size, workers, decoder): a run in chunks
    (``score``) starts them once, not once a chunk (benchmarks/score_streaming.py times both).
    They are shut down when it ends, by an error or Ctrl-C too."""
    global _KEPT
    if _KEPT is not None:  # (nested: the outer one keeps them)
        yield
        return
    _KEPT = {}
    try:
        yield
    finally:
        kept, _KEPT = _KEPT, None
        for entry in kept.values():
            iterator = getattr(entry.loader, "_iterator", None)  # (persistent workers live in its iterator)
            if iterator is not None:
                iterator._shutdown_workers()


def _loader(dataset: ImageFiles, batch_size: int, workers: int, key: tuple, **kw):
    """``(DataLoader over dataset.paths, a function to call when its iteration ends)``: the one
    :func:`kept_workers` keeps for ``key``, its workers already started, when one is open and
    that loader is not being read; else a new one."""
    entry = None
    if _KEPT is not None and workers > 0:
        entry = _KEPT.get(key)
        if entry is None:
            named = _NamedFiles([], dataset.transform, dataset.settings, dataset.jpeg_bytes)
            entry = _KEPT[key] = _Kept(torch.utils.data.DataLoader(
                named, batch_size=batch_size, sampler=_Paths(), num_workers=workers, persistent_workers=True, **kw))
    if entry is None or entry.busy:
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                           persistent_workers=False, **kw), lambda: None
    entry.loader.sampler.paths, entry.busy = dataset.paths, True
    return entry.loader, lambda: setattr(entry, "busy", False)


def _collate(items: list) -> tuple[list, list, list[str]]:
    """Lists as they are: the JPEG bytes differ in length (no stacking in the workers)."""
    raws, images, errors = zip(*items)
    return list(raws), list(images), list(errors)


def resolve_decode(decode: str, device: torch.device | str, settings: dict | None = None) -> str:
    """``pil`` or ``jpeg`` for a ``--decode`` choice, the model's device and, when given, its
    preprocessing ``settings`` (:func:`~clip_smot.clip.model.preprocess_settings`): ``auto`` is
    ``pil`` for a preprocessing the tensor path does not do (see :func:`tensor_preprocess`).

    ``auto`` is ``pil`` too where torchvision has no ``decode_jpeg`` (it is deprecated since 0.29).

    Raises:
        UserError: ``gpu`` when the model is not on a CUDA device, or preprocesses otherwise, or
            torchvision has no ``decode_jpeg``.
    """
    device = torch.device(device)
    if decode not in DECODE_CHOICES:
        raise UserError(f"--decode {decode}: not one of {', '.join(DECODE_CHOICES)}")
    if decode == "gpu" and device.type != "cuda":
        raise UserError(f"--decode gpu: decodes on a CUDA device, and the model is on {device}; "
                        "give --device cuda or --decode cpu")
    if decode != "cpu" and device.type == "cuda" and not ti.has_decode_jpeg():
        if decode == "gpu":
            import torchvision

            raise UserError(f"--decode gpu: torchvision {torchvision.__version__} has no torchvision.io.decode_jpeg "
                            "(removed in favour of TorchCodec); give --decode cpu")
        return "pil"
    if decode == "auto" and settings is not None and device.type == "cuda":
        try:
            tensor_preprocess(settings)
        except UserError:
            return "pil"
    elif decode == "gpu" and settings is not None:
        tensor_preprocess(settings)
    return "jpeg" if decode == "gpu" or (decode == "auto" and device.type == "cuda") else "pil"


def _check_decoder(decode: str) -> None:
    if decode not in DECODERS:  # (a --decode choice passed where a decoder is meant: resolve_decode first)
        raise ValueError(f"decode={decode!r}: not one of {', '.join(DECODERS)} (resolve_decode gives one)")


def decoder_identity(decode: str, device: torch.device) -> str | None:
    """What tells the decoders' pixels apart in the feature-cache key: None for ``pil`` (its
    entries keep their keys), ``jpeg-cuda`` (nvJPEG) or ``jpeg-cpu`` (libjpeg-turbo), with the
    torchvision version whose decoder and resize made them (``jpeg-cuda torchvision 0.29.1``)."""
    import torchvision

    _check_decoder(decode)
    return None if decode == "pil" else f"jpeg-{torch.device(device).type} torchvision {torchvision.__version__}"


def tensor_preprocess(settings: dict) -> dict:
    """``settings`` with ``size`` as one int, when the tensor path does that preprocessing: the
    shorter side resized (bicubic or bilinear) to a square crop, RGB.

    Raises:
        UserError: another resize mode, a non-square size, another interpolation or mode.
    """
    size = _shortest_square(settings)
    if size is None or settings["mode"] != "RGB":
        shown = {k: settings[k] for k in ("resize_mode", "size", "interpolation", "mode")}
        raise UserError(f"--decode gpu: the model preprocesses with {shown}; the GPU decoder does a shortest-side "
                        "bicubic or bilinear resize to an RGB square; give --decode cpu")
    return {**settings, "size": size}


def _jpeg_images(clip: ClipModel, cfg: dict, raws: list, images: list, errors: list[str], paths: Sequence[str],
                 transform) -> torch.Tensor:
    """The batch [b, 3, S, S] on the model's device: the JPEG bytes in ``raws`` decoded there,
    the workers' ``images`` where there are none; ``errors`` filled in for files PIL cannot read.
    Decoded images of one size are resized and cropped together (:func:`~clip_smot.common.
    tensor_images.by_size`; the pixels of one at a time)."""
    device = next(clip.model.parameters()).device
    size, n = cfg["size"], len(raws)
    todo = [i for i, r in enumerate(raws) if r is not None]
    decoded = {}
    for i, image in zip(todo, ti.decode_jpegs([raws[i] for i in todo], device)):
        if image is None:  # decode_jpeg cannot read it: PIL, which names a truncated file
            try:
                images[i] = transform(strip_square(load_image(paths[i], mode=None, data=raws[i].numpy().tobytes()), cfg))
            except UserError as e:
                images[i], errors[i] = torch.zeros(3, size, size), str(e)
            continue
        decoded[i] = image

    def squares(same: torch.Tensor) -> torch.Tensor:  # [m, 3, h, w] of one size -> [m, 3, S, S]
        hw = ti.shorter_side_size(same.shape[-2], same.shape[-1], size)
        return ti.center_crop(ti.resize_uint8(same, hw, cfg["interpolation"]), size)

    kept = ti.by_size(decoded, squares)
    if len(kept) == n:  # every file a JPEG decoded here (the usual batch)
        return ti.normalize(torch.stack([kept[i] for i in range(n)]), cfg["mean"], cfg["std"])
    out = torch.empty(n, 3, size, size, device=device)
    if kept:
        out[sorted(kept)] = ti.normalize(torch.stack([kept[i] for i in sorted(kept)]), cfg["mean"], cfg["std"])
    rest = [i for i in range(n) if i not in kept]
    if rest:
        out[rest] = torch.stack([images[i] for i in rest]).to(device, non_blocking=True)
    return out


def image_batches(clip: ClipModel, paths: Sequence[str], batch_size: int = 256, workers: int = 4,
                  decode: str = "pil") -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Preprocessed images of ``paths`` in order, decoded in DataLoader workers (``pil``) or with
    the JPEGs decoded on the model's device (``jpeg``).

    Yields:
        ``(images, errors)``: images [b, 3, S, S] normalised as the model expects (on the CPU for
        ``pil``, on the model's device for ``jpeg``), and one string per image, empty when it was
        read, else the reason it could not be (its image is then zeros).
    """
    _check_decoder(decode)
    device = next(clip.model.parameters()).device
    transform = cm.image_preprocess(clip)
    jpeg = decode == "jpeg"
    settings = cm.preprocess_settings(clip)
    cfg = tensor_preprocess(settings) if jpeg else None
    key = (json.dumps(settings, sort_keys=True), batch_size, workers, decode, device.type)  # (what the workers make)
    loader, done = _loader(ImageFiles(paths, transform, settings, jpeg), batch_size, workers, key,
                           collate_fn=_collate if jpeg else None, pin_memory=device.type == "cuda")
    start = 0
    try:
        for batch in started(loader):
            if not jpeg:
                yield batch
                continue
            raws, images, errors = batch
            yield _jpeg_images(clip, cfg, raws, images, errors, paths[start : start + len(raws)], transform), errors
            start += len(raws)
    finally:  # (also when the caller stops early: the next iteration discards what is left)
        done()
