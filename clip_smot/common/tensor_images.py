"""JPEG decoding with ``torchvision.io.decode_jpeg`` and resizing on tensors: the decoding path that
keeps a GPU fed (nvJPEG on CUDA, libjpeg-turbo on the CPU).

Files that are no JPEG, and JPEGs that ``decode_jpeg`` cannot read (nvJPEG refuses some CMYK and
progressive files), go to PIL instead: :func:`decode_jpegs` says which, per file.

Resizing follows torchvision's ``Resize`` on PIL images (what open_clip's evaluation transform
runs): the same output size, antialiased bicubic, rounded to 8 bits; the pixels differ from PIL's
by the rounding of the two passes (docs/score.md gives the tolerance the tests hold).
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

__all__ = ["STRIP", "is_strip", "is_jpeg", "has_decode_jpeg", "decode_jpegs", "ends_its_scans", "by_size", "shorter_side_size", "resize_uint8", "center_crop", "normalize"]


STRIP = 16  # an image with a side over 16 times the other is a strip


def is_strip(w: int, h: int) -> bool:
    """Whether a w x h image is a strip: a side over :data:`STRIP` times the other. Resized whole
    by its shorter side, it would hold over 16 output squares (a 3,000,000 x 1 PNG: GBs)."""
    return max(w, h) > STRIP * min(w, h)


def is_jpeg(data: bytes | memoryview) -> bool:
    """Whether ``data`` is a JPEG for :func:`decode_jpegs`: it starts as a JPEG file does (SOI marker
    then a marker), whatever its name, and its frame header gives a pixel count within PIL's
    decompression-bomb limit. ``decode_jpeg`` checks none: a 2 MB file can declare 180
    megapixels. A larger one, or one whose frame header is not found, goes to PIL, which names
    it in one line. So does a strip (a side over :data:`STRIP` times the other), which the
    tensor path would resize whole (a 65,000 x 1 JPEG to 14.6 million x 224 pixels) and the PIL
    paths resample only the centre of."""
    if bytes(data[:3]) != b"\xff\xd8\xff":
        return False
    from PIL import Image

    size = _frame_size(data)
    return (size is not None and not is_strip(*size)
            and (Image.MAX_IMAGE_PIXELS is None or size[0] * size[1] <= 2 * Image.MAX_IMAGE_PIXELS))


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # frame headers (not DHT, JPG, DAC)


def _frame_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header (see :func:`_frame_at`), or None."""
    at = _frame_at(data)
    if at is None:
        return None
    return data[at + 7] << 8 | data[at + 8], data[at + 5] << 8 | data[at + 6]


def _frame_at(data: bytes | memoryview) -> int | None:
    """Where a JPEG's frame header starts (its marker), found by walking the marker segments from
    the start (a few hops: the header precedes the image data; an EXIF thumbnail, a JPEG of its
    own inside an APP1 segment, is stepped over whole), or None."""
    at, n = 2, len(data)
    while at + 4 <= n:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # (a fill byte)
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # (no length)
            at += 2
            continue
        length = data[at + 2] << 8 | data[at + 3]
        if marker in _SOF:
            return at if length >= 7 and at + 9 <= n else None
        if marker in (0xD9, 0xDA) or length < 2:  # (end of image, or the data before any frame header)
            return None
        at += 2 + length
    return None


def has_decode_jpeg() -> bool:
    """Whether this torchvision has ``torchvision.io.decode_jpeg``: deprecated since 0.29 in favour
    of TorchCodec, and to be removed; without it every file is decoded by PIL."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def decode_jpegs(datas: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor | None]:
    """Decode JPEG files (each a 1-D uint8 tensor of the file's bytes, on the CPU) as RGB on ``device``.

    One batched ``decode_jpeg`` call first; when it fails (one file it cannot read spoils the
    batch), each file alone. EXIF orientation is not applied (PIL's ``Image.open`` does not either).

    Returns:
        Per file, uint8 [3, H, W] on ``device``, or None when ``decode_jpeg`` cannot read it
        or this torchvision has none (the caller decodes it with PIL, which also names a
        truncated file).
    """
    if not datas or not has_decode_jpeg():
        return [None] * len(datas)
    whole = [i for i, data in enumerate(datas) if ends_its_scans(data)]
    out: list[torch.Tensor | None] = [None] * len(datas)
    for i, image in zip(whole, _decode([datas[i] for i in whole], torch.device(device))):
        out[i] = image
    return out


def ends_its_scans(data: torch.Tensor) -> bool:
    """Whether the JPEG bytes ``data`` (uint8 [n]) hold an end-of-image marker after the start of
    their last scan, as a whole file does (a 0xFF in the scans' data is followed by 0x00 or a
    restart marker's number, never 0xD9). A file cut short has none: libjpeg refuses it, but a
    decoder may not (nvJPEG is not known to), and a damaged image would be scored; such a file
    goes to PIL, which names it (or reads one whose last scan is whole, as the CPU paths do).
    The last scan is the image's, after its frame header: an EXIF thumbnail's scan and end marker
    come before it. Most files end in the marker: only the others are searched."""
    if data[-2:].numpy().tobytes() == b"\xff\xd9":
        return True
    whole = data.numpy().tobytes()
    frame, scan = _frame_at(whole), whole.rfind(b"\xff\xda")
    return frame is not None and scan > frame and whole.rfind(b"\xff\xd9") > scan


def _decode(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """``decode_jpeg`` of each file of ``datas`` (None for one it cannot read), batched where it can."""
    if not datas:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (libjpeg's "corrupt data" warnings: such a file goes to PIL)
        try:
            return list(decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        out: list[torch.Tensor | None] = []
        for data in datas:
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
    return out


def by_size(images: dict[int, torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]) -> dict[int, torch.Tensor]:
    """``fn`` of the ``images`` (key -> [3, H, W]) of each size, stacked [m, 3, H, W]; its results
    [m, ...] by key. One call a size, not one an image: a resize is a dozen small kernel launches
    and their Python dispatch, and a batch of photos comes in few sizes."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for key, image in images.items():
        groups.setdefault(tuple(image.shape[-2:]), []).append(key)
    out: dict[int, torch.Tensor] = {}
    for keys in groups.values():
        out.update(zip(keys, fn(torch.stack([images[k] for k in keys]))))
    return out


def shorter_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) of torchvision's ``Resize(size)``: the shorter side ``size``, the longer one
    scaled and truncated to an integer (as ``torchvision.transforms.functional.resize`` computes)."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (new_long, size) if w <= h else (size, new_long)


def resize_uint8(image: torch.Tensor, hw: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """``image`` uint8 [3, H, W] (or a batch [B, 3, H, W] of one size) resized to ``hw``
    (antialiased, on its device), uint8 [3, h, w] (or [B, 3, h, w]: each image as alone).

    Two passes as PIL makes them, the width first, each rounded and clipped to [0, 255]: a single
    pass keeps the overshoot of bicubic upscaling that PIL clips between its passes. The
    arithmetic is float32 on every device (CUDA has no uint8 bicubic kernel).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    mode = InterpolationMode(interpolation)
    out = image
    for step in ([image.shape[-2], hw[1]], list(hw)):  # [3, H, w], then [3, h, w]
        if list(out.shape[-2:]) != step:
            out = TF.resize(out.float(), step, interpolation=mode, antialias=True).round_().clamp_(0, 255)
    return out.to(torch.uint8)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` square of ``image`` [..., H, W] (torchvision's ``CenterCrop``:
    the offsets rounded as it rounds them). H and W are at least ``size``."""
    h, w = image.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[..., top : top + size, left : left + size]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images [B, 3, S, S] as float32 in [0, 1], normalised per channel: ``ToTensor`` then
    ``Normalize``."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s
