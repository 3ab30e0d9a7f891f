"""Random resized crop + horizontal flip on the device, the same for an image and its CAM.

The few-shot images and their cached CAMs live on the device as uint8; each step draws one crop
box and one flip per image (torchvision's RandomResizedCrop rule, vectorised: no host
synchronisation) and resamples image and CAM together with one ``grid_sample`` over their
concatenated channels, so the CAM always describes the pixels of the augmented view.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["crop_flip", "random_resized_crop_flip", "sample_crops"]


def sample_crops(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    tries: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes and flips, drawn as torchvision's ``RandomResizedCrop`` draws them.

    For each image, up to ``tries`` candidates (area fraction uniform in ``scale``, log aspect
    ratio uniform in ``log(ratio)``) are drawn at once and the first that fits is kept; when none
    fits, the fallback is torchvision's: the largest centred box with the ratio clamped.

    Returns:
        boxes: [n, 4] float (top, left, h, w) in pixels; flips: [n] bool.
    """
    dev = generator.device if generator is not None else torch.device(device or "cpu")
    area = height * width
    u = torch.rand(n, tries, 4, generator=generator, device=dev)  # [n, tries, 4]
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    r = torch.exp(log_r)
    w = torch.sqrt(target * r).round()  # [n, tries]
    h = torch.sqrt(target / r).round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=dev))  # [n]
    pick = first.clamp_min(0)[:, None]
    h = h.gather(1, pick)[:, 0]
    w = w.gather(1, pick)[:, 0]
    top = torch.floor(u[..., 2].gather(1, pick)[:, 0] * (height - h + 1))
    left = torch.floor(u[..., 3].gather(1, pick)[:, 0] * (width - w + 1))
    # Fallback (no candidate fitted): the whole image, or the centred box of the clamped ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), float(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = float(height), float(round(height * ratio[1]))
    else:
        fw, fh = float(width), float(height)
    none = first < 0
    h = torch.where(none, torch.full_like(h, fh), h)
    w = torch.where(none, torch.full_like(w, fw), w)
    top = torch.where(none, torch.full_like(top, float((height - fh) // 2)), top)
    left = torch.where(none, torch.full_like(left, float((width - fw) // 2)), left)
    flips = torch.rand(n, generator=generator, device=dev) < 0.5
    boxes = torch.stack([top, left, h, w], dim=1)  # [n, 4]
    if device is not None:
        boxes, flips = boxes.to(device), flips.to(device)
    return boxes, flips


def crop_flip(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each image's box to ``size`` x ``size`` (bilinear), mirrored where ``flips``.

    Args:
        x: [B, C, H, W] float; any channels (image and CAM stacked are resampled together).
        boxes: [B, 4] (top, left, h, w) in pixels.
        flips: [B] bool.
        size: output side length.

    Returns:
        [B, C, size, size]. Output pixel centres map linearly onto the box, as
        ``F.interpolate(..., align_corners=False)`` of the cropped box does; the values are
        the same where the box shrinks. Where it is enlarged, a centre within half a pixel
        of the box's edge blends in the pixel just outside the box (the image's own border is
        repeated), where ``F.interpolate`` of the cut-out box repeats the box's edge pixel:
        the outermost output rows and columns differ.
    """
    B, _, H, W = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(1)  # [B] each
    # Box centre and half-size in grid_sample's normalised coordinates ([-1, 1] = outer edges).
    cx = (2 * left + w) / W - 1
    cy = (2 * top + h) / H - 1
    sx = torch.where(flips, -w / W, w / W)
    sy = h / H
    zero = torch.zeros_like(cx)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta, [B, x.shape[1], size, size], align_corners=False)  # [B, size, size, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop_flip(
    images: torch.Tensor,
    cams: torch.Tensor | None,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One augmented view per image, the same crop and flip for its CAM.

    Args:
        images: [B, 3, H, W] uint8 (or float in [0, 255]).
        cams: [B, H, W] uint8 CAMs in [0, 255], or None.
        size: output side length (the model's image size).
        scale: area fraction range of the crop.
        generator: a generator on the images' device.

    Returns:
        images [B, 3, size, size] float32 in [0, 1]; CAMs [B, size, size] float32 in [0, 255]
        (or None).
    """
    B, _, H, W = images.shape
    boxes, flips = sample_crops(B, H, W, scale=scale, generator=generator, device=images.device)
    stacked = images.float()  # [B, 3, H, W] in [0, 255]
    if cams is not None:
        stacked = torch.cat([stacked, cams.float()[:, None]], dim=1)  # [B, 4, H, W]
    out = crop_flip(stacked, boxes, flips, size)
    x = out[:, :3] / 255.0  # [B, 3, size, size]
    return x, (out[:, 3] if cams is not None else None)
