"""The device augmentation: the same random resized crop and flip for an image and its CAM."""

import math

import torch
import torch.nn.functional as F

from clip_smot.clip.augment import crop_flip, random_resized_crop_flip, sample_crops


def test_integer_box_at_its_own_size_is_an_exact_crop():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    boxes = torch.tensor([[2.0, 1.0, 4.0, 4.0], [0.0, 4.0, 4.0, 4.0]])  # (top, left, h, w)
    out = crop_flip(x, boxes, torch.tensor([False, True]), 4)
    torch.testing.assert_close(out[0], x[0, :, 2:6, 1:5], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], x[1, :, 0:4, 4:8].flip(-1), atol=1e-4, rtol=0)


def test_downscaling_a_box_equals_interpolating_the_crop():
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    top, left, h, w = 5, 7, 30, 24
    out = crop_flip(x, torch.tensor([[top, left, h, w]], dtype=torch.float32), torch.tensor([False]), 12)
    ref = F.interpolate(x[:, :, top:top + h, left:left + w], size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_crops_follow_the_random_resized_crop_rule():
    g = torch.Generator().manual_seed(0)
    boxes, flips = sample_crops(2000, 64, 48, scale=(0.08, 1.0), generator=g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 48).all()
    area = h * w / (64 * 48)
    assert area.min() >= 0.06 and area.max() <= 1.0  # 0.08 up to rounding of the sides
    ratio = w / h
    assert ratio.min() >= 3 / 4 * 0.85 and ratio.max() <= 4 / 3 * 1.15
    assert 0.45 < flips.float().mean() < 0.55
    assert torch.equal(boxes, sample_crops(2000, 64, 48, generator=torch.Generator().manual_seed(0))[0])


def test_image_and_cam_get_the_same_crop_and_flip():
    # A crafted pair: the CAM is the image's red channel, an asymmetric ramp, so any
    # difference in crop or flip between the two would show.
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    red = (xx * 6 + yy * 2).clamp(max=255)  # [32, 32]
    images = torch.stack([red, 255 - red, torch.full_like(red, 9)])[None].repeat(16, 1, 1, 1).to(torch.uint8)
    cams = red[None].repeat(16, 1, 1).to(torch.uint8)  # [16, 32, 32]
    g = torch.Generator().manual_seed(3)
    x, cam = random_resized_crop_flip(images, cams, 24, generator=g)
    assert x.shape == (16, 3, 24, 24) and cam.shape == (16, 24, 24)
    assert 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(cam, x[:, 0] * 255, atol=1e-3, rtol=0)
    # the views differ (random boxes), and some are mirrored: the ramp then falls left to right
    slope = cam[:, :, -1].mean(1) - cam[:, :, 0].mean(1)  # [16]
    assert (slope > 0).any() and (slope < 0).any()
    # the same generator state gives the same views (resume)
    x2, cam2 = random_resized_crop_flip(images, cams, 24, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(cam, cam2)


def test_no_candidate_fits_falls_back_to_the_centre():
    g = torch.Generator().manual_seed(0)
    # a 1x100 strip: no box with ratio in [3/4, 4/3] and area >= 8% fits; torchvision's fallback
    boxes, _ = sample_crops(4, 1, 100, generator=g)
    expected_w = round(1 * 4 / 3)
    assert torch.equal(boxes[:, 2], torch.ones(4)) and torch.equal(boxes[:, 3], torch.full((4,), float(expected_w)))
    assert torch.equal(boxes[:, 1], torch.full((4,), float((100 - expected_w) // 2)))
    assert not math.isnan(boxes.sum().item())
