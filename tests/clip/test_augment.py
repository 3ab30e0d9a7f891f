"""The device augmentation: the same random resized crop and flip for an image and its CAM."""

import math

import pytest
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


def test_upscaling_the_whole_image_equals_interpolate_at_the_edges():
    # Upscaled, the outermost output pixel centres fall outside the outermost input pixel
    # centres; F.interpolate (align_corners=False) clamps there to the edge pixel, and so must
    # grid_sample's border padding (zero padding would blend the edge with black).
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5  # no pixel near 0
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).repeat(2, 1)
    out = crop_flip(x, boxes, torch.tensor([False, False]), 40)
    ref = F.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_aspect_ratio_is_log_uniform():
    # Log-uniform over (3/4, 4/3) is symmetric about 1 (log(4/3) = -log(3/4)): half the boxes are
    # taller than wide. Uniform over (3/4, 4/3) would give P(r < 1) = (1 - 3/4) / (4/3 - 3/4) = 3/7.
    # On 1000 x 1000 with scale <= 0.2 every first candidate fits (w <= sqrt(0.2e6 * 4/3) < 520).
    boxes, _ = sample_crops(4000, 1000, 1000, scale=(0.08, 0.2), generator=torch.Generator().manual_seed(0))
    h, w = boxes[:, 2], boxes[:, 3]
    taller, wider = (w < h).float().mean().item(), (w > h).float().mean().item()
    assert abs(taller - 0.5) < 0.03 and abs(wider - 0.5) < 0.03  # std ~0.008; 3/7 is 9 std away
    # and log(w / h) spreads uniformly over (log 3/4, log 4/3): a quarter in each quarter of it
    edges = torch.linspace(math.log(3 / 4), math.log(4 / 3), 5)
    counts = torch.histc(torch.log(w / h), bins=4, min=edges[0].item(), max=edges[-1].item())
    assert ((counts / 4000 - 0.25).abs() < 0.03).all()


def test_area_fraction_is_uniform_in_scale():
    # scale=(0.25, 0.5) on 200 x 200: every candidate fits (w <= sqrt(0.5 * 40000 * 4/3) < 164),
    # so the first one is kept and the area fraction is uniform on (0.25, 0.5): mean 0.375, and
    # no box outside the range beyond the rounding of its sides (< 0.5 px on sides >= 86 px).
    boxes, _ = sample_crops(4000, 200, 200, scale=(0.25, 0.5), generator=torch.Generator().manual_seed(0))
    area = boxes[:, 2] * boxes[:, 3] / (200 * 200)
    assert area.min() >= 0.25 * 0.988 and area.max() <= 0.5 * 1.012
    assert abs(area.mean().item() - 0.375) < 0.005  # std of the mean ~0.0011
    assert area.min() < 0.26 and area.max() > 0.49  # the whole range is used


def test_offsets_take_every_position_that_fits():
    # a 9 x 9 box in a 10 x 10 image (area 81, ratio 1): torchvision draws the top and left
    # offsets from randint(0, 10 - 9 + 1), i.e. 0 or 1, each half the time
    boxes, _ = sample_crops(1000, 10, 10, scale=(0.81, 0.81), ratio=(1.0, 1.0),
                            generator=torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert torch.equal(h, torch.full((1000,), 9.0)) and torch.equal(w, torch.full((1000,), 9.0))
    assert set(top.tolist()) == {0.0, 1.0} and set(left.tolist()) == {0.0, 1.0}
    assert 0.4 < (top == 1).float().mean() < 0.6 and 0.4 < (left == 1).float().mean() < 0.6
    assert 0.4 < (top != left).float().mean() < 0.6  # drawn independently


def test_area_ratio_offsets_and_flip_are_drawn_independently():
    # torchvision draws the area fraction, the log aspect ratio, the top and the left offsets and
    # the flip each from its own uniform: no two of them correlate. On 200 x 200 with scale
    # (0.1, 0.3) every first candidate fits (w <= sqrt(0.3 * 40000 * 4/3) < 127). An offset is read
    # as its place among the positions that fit, (top + 0.5) / (200 - h + 1), uniform on (0, 1).
    n = 4000
    boxes, flips = sample_crops(n, 200, 200, scale=(0.1, 0.3), generator=torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    draws = torch.stack([
        h * w / (200 * 200),  # area fraction
        torch.log(w / h),  # log aspect ratio
        (top + 0.5) / (200 - h + 1),
        (left + 0.5) / (200 - w + 1),
        flips.float(),
    ])  # [5, n]
    corr = torch.corrcoef(draws.double())
    off_diagonal = corr - torch.eye(5, dtype=torch.float64)
    # independent: each correlation ~N(0, 1 / sqrt(4000) = 0.016); one uniform shared by two: above 0.9
    assert off_diagonal.abs().max().item() < 0.08


def test_no_candidate_fits_a_tall_image_falls_back_to_the_centre():
    # 100 x 3 (height x width): a box of area >= 8% (24 px) with w/h >= 3/4 needs w >= 4 > 3.
    # torchvision's fallback: in_ratio = 3/100 < 3/4, so w = 3, h = round(3 / (3/4)) = 4,
    # top = (100 - 4) // 2 = 48, left = (3 - 3) // 2 = 0.
    boxes, _ = sample_crops(4, 100, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes, torch.tensor([[48.0, 0.0, 4.0, 3.0]]).repeat(4, 1))


def _torchvision_boxes(n, height, width, scale, ratio, seed=0):
    """torchvision's own RandomResizedCrop.get_params, n times (global RNG forked and restored)."""
    from torchvision.transforms import RandomResizedCrop

    img = torch.zeros(1, height, width)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.tensor([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)],
                            dtype=torch.float32)  # [n, 4] (top, left, h, w)


@pytest.mark.parametrize("height, width, scale", [
    (1, 100, (0.08, 1.0)), (100, 3, (0.08, 1.0)), (101, 3, (0.08, 1.0)), (3, 101, (0.08, 1.0)),
    (4, 5, (0.001, 0.002)),  # in range (5/4), every candidate rounds to 0 px: the whole image
    (3, 3, (0.01, 0.02)),
])
def test_fallback_boxes_are_torchvisions(height, width, scale):
    # no candidate fits: the box is torchvision's fallback (a deterministic one), floor-centred
    expected = _torchvision_boxes(1, height, width, scale, (3 / 4, 4 / 3))[0]
    boxes, _ = sample_crops(8, height, width, scale=scale, generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes, expected.repeat(8, 1))
    assert (boxes[:, 2:] > 0).all()


def test_ten_tries_before_the_fallback_as_torchvision():
    # 10 x 20, ratio 1: a candidate of side round(sqrt(200 u)) fits when 200 u < 10.5^2, i.e. with
    # p = (110.25 - 16) / 184 = 0.512 for scale (0.08, 1). The fallback (10 x 10 at left 5) is then
    # taken with (1 - p)^10 = 0.0008 (one try only: 0.488); a fitting 10 x 10 candidate lands at
    # left 5 with (20 / 184) / p / 11 = 0.019. Either way ~2% of the boxes, as torchvision's.
    n = 4000
    ours, _ = sample_crops(n, 10, 20, ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    theirs = _torchvision_boxes(n, 10, 20, (0.08, 1.0), (1.0, 1.0))

    def centred(b):
        return ((b[:, 2] == 10) & (b[:, 3] == 10) & (b[:, 1] == 5)).float().mean().item()

    p = (110.25 - 16) / 184
    expected = (1 - p) ** 10 + (1 - (1 - p) ** 10) * (20 / 184) / p / 11
    assert abs(centred(ours) - expected) < 0.012 and abs(centred(theirs) - expected) < 0.012  # std ~0.0022
    # and the sides are distributed as torchvision's (means within ~5 std of each other)
    assert abs(ours[:, 2].mean() - theirs[:, 2].mean()) < 0.2


def test_sides_are_rounded_as_torchvision():
    # scale 0.7396 of 10 x 10 at ratio 1: sqrt(73.96) = 8.6 -> 9 px (int(round()), not 8)
    boxes, _ = sample_crops(50, 10, 10, scale=(0.7396, 0.7396), ratio=(1.0, 1.0),
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes[:, 2:], torch.full((50, 2), 9.0))
    assert torch.equal(_torchvision_boxes(1, 10, 10, (0.7396, 0.7396), (1.0, 1.0))[0, 2:], torch.tensor([9.0, 9.0]))


def test_a_box_as_wide_as_the_image_fits():
    # 10 x 10, area 80 at ratio 1.25: w = sqrt(100) = 10 = the width (fits: w <= width), h = 8,
    # so the top offset takes 0, 1 and 2 (a fallback would always centre it at 1)
    boxes, _ = sample_crops(600, 10, 10, scale=(0.8, 0.8), ratio=(1.25, 1.25),
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes[:, 1:], torch.tensor([0.0, 8.0, 10.0]).repeat(600, 1))
    assert set(boxes[:, 0].tolist()) == {0.0, 1.0, 2.0}


def test_width_is_the_longer_side_for_ratios_above_one():
    # ratio = w / h in (1, 2): every box is at least as wide as tall, log(w / h) ~ U(0, log 2)
    boxes, _ = sample_crops(4000, 1000, 1000, scale=(0.08, 0.2), ratio=(1.0, 2.0),
                            generator=torch.Generator().manual_seed(0))
    h, w = boxes[:, 2], boxes[:, 3]
    assert (w >= h).all()
    assert abs(torch.log(w / h).mean().item() - math.log(2) / 2) < 0.01  # std of the mean ~0.003


def test_default_scale_is_torchvisions():
    # default scale (0.08, 1.0): on 1000 x 1000 at ratio 1 every candidate fits, so the area
    # fraction is uniform on (0.08, 1.0); 4000 draws come within 0.003 of both ends
    boxes, _ = sample_crops(4000, 1000, 1000, ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    area = boxes[:, 2] * boxes[:, 3] / 1e6
    assert 0.0795 < area.min() < 0.083 and area.max() > 0.997


def test_random_resized_crop_flip_default_scale_is_torchvisions(monkeypatch):
    import clip_smot.clip.augment as augment

    seen = []
    real = augment.sample_crops

    def spy(*args, **kwargs):
        seen.append(kwargs.get("scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(augment, "sample_crops", spy)
    augment.random_resized_crop_flip(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None, 4)
    assert seen == [(0.08, 1.0)]


def test_scale_one_keeps_the_whole_image_and_its_own_cam():
    # 8 x 8 with scale (1, 1): a candidate fits only as 8 x 8 (w = 7 needs sqrt(r) < 7.5 / 8, then
    # h = round(8 / sqrt(r)) = 9), so each view is the whole image or its mirror. The CAM is no
    # channel of the image: it must come back as the CAM, mirrored with its image.
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 8, 8), generator=g, dtype=torch.uint8)
    cams = torch.randint(0, 256, (12, 8, 8), generator=g, dtype=torch.uint8)
    x, cam = random_resized_crop_flip(images, cams, 8, scale=(1.0, 1.0), generator=torch.Generator().manual_seed(1))
    mirrored = []
    for i in range(12):
        flip = not torch.allclose(x[i], images[i].float() / 255, atol=1e-5)
        mirrored.append(flip)
        img, c = (images[i].flip(-1), cams[i].flip(-1)) if flip else (images[i], cams[i])
        torch.testing.assert_close(x[i], img.float() / 255, atol=1e-5, rtol=0)
        torch.testing.assert_close(cam[i], c.float(), atol=1e-3, rtol=0)
    assert any(mirrored) and not all(mirrored)


def test_the_fallback_comes_after_exactly_ten_misses():
    # 10 x 100, ratio 1, scale (0.1, 0.2): a candidate's side is round(sqrt(1000 s)), and it fits
    # the height 10 when sqrt(1000 s) < 10.5, i.e. s < 0.11025: p = 0.1025 a try. After ten misses,
    # q = (1 - p)^10 = 0.3391 of the boxes, comes torchvision's fallback, 10 x 10 at left
    # (100 - 10) // 2 = 45; a fitting 10 x 10 box lands there with 1 / 91. Nine tries would give
    # 0.3847 at left 45, eleven 0.3120: each ~10 std of 20000 draws (0.0034) away from ten's 0.3464.
    n, p = 20000, (0.11025 - 0.1) / 0.1
    boxes, _ = sample_crops(n, 10, 100, scale=(0.1, 0.2), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes[:, [0, 2, 3]], torch.tensor([0.0, 10.0, 10.0]).repeat(n, 1))
    q = (1 - p) ** 10
    assert abs((boxes[:, 1] == 45).float().mean().item() - (q + (1 - q) / 91)) < 0.015


@pytest.mark.parametrize("ratio, expected", [((0.5, 0.5), [0.0, 0.0, 2.0, 1.0]), ((2.0, 2.0), [0.0, 0.0, 1.0, 2.0])])
def test_a_candidate_with_a_side_of_zero_pixels_does_not_fit(ratio, expected):
    # 2 x 2, area fraction 0.075 (0.3 px), one ratio r: the candidate is w = round(sqrt(0.3 r)),
    # h = round(sqrt(0.3 / r)) = (0, 1) for r = 1/2 and (1, 0) for r = 2; a zero side fits no
    # image (torchvision: 0 < w <= width and 0 < h <= height), so every box is the fallback:
    # r = 1/2 < 1: the full height 2, w = round(2 * 1/2) = 1, left (2 - 1) // 2 = 0;
    # r = 2 > 1: the full width 2, h = round(2 / 2) = 1, top 0.
    boxes, _ = sample_crops(16, 2, 2, scale=(0.075, 0.075), ratio=ratio, generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes, torch.tensor(expected).repeat(16, 1))
    assert torch.equal(_torchvision_boxes(1, 2, 2, (0.075, 0.075), ratio)[0], torch.tensor(expected))


def test_a_wide_image_is_cropped_within_its_own_height_and_width():
    # 8 x 32 (height x width), scale (1, 1): a box of 256 px with w / h in [3/4, 4/3] is at least
    # 14 px tall, taller than 8, so every view is torchvision's fallback for a wide image: the full
    # height 8, w = round(8 * 4/3) = 11, left (32 - 11) // 2 = 10; scaled down to 6 x 6 as
    # F.interpolate scales that crop (mirrored where flipped). The CAM follows its image.
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 32), generator=g, dtype=torch.uint8)
    cams = torch.randint(0, 256, (6, 8, 32), generator=g, dtype=torch.uint8)
    x, cam = random_resized_crop_flip(images, cams, 6, scale=(1.0, 1.0), generator=torch.Generator().manual_seed(1))
    both = torch.cat([images.float() / 255, cams.float()[:, None]], dim=1)[:, :, 0:8, 10:21]  # [6, 4, 8, 11]
    crop = F.interpolate(both, size=(6, 6), mode="bilinear", align_corners=False)
    flipped = 0
    for i in range(6):
        got = torch.cat([x[i], cam[i][None]])
        want = crop[i] if torch.allclose(got, crop[i], atol=1e-3) else crop[i].flip(-1)
        flipped += not torch.equal(want, crop[i])
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
    assert 0 < flipped < 6


def test_a_candidate_of_one_pixel_fits():
    # 1 x 3, area fraction 1/3, ratio 1: the candidate is 1 x 1 (torchvision: 0 < 1 <= 1 and 0 < 1 <= 3),
    # placed at left 0, 1 or 2; the fallback would always be the centred 1 x 1 at left 1
    boxes, _ = sample_crops(300, 1, 3, scale=(1 / 3, 1 / 3), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes[:, [0, 2, 3]], torch.tensor([0.0, 1.0, 1.0]).repeat(300, 1))
    assert set(boxes[:, 1].tolist()) == {0.0, 1.0, 2.0}


def test_crops_are_drawn_on_the_generators_device_and_returned_on_the_one_asked_for():
    # no generator and no device: the CPU's default generator (here seeded)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        boxes, flips = sample_crops(5, 16, 16)
    assert boxes.device.type == flips.device.type == "cpu" and boxes.shape == (5, 4)
    assert torch.equal(boxes, sample_crops(5, 16, 16, generator=torch.Generator().manual_seed(0))[0])
    # a CPU generator and another device: drawn on the CPU, moved there ("meta": any device but the CPU's)
    boxes, flips = sample_crops(5, 16, 16, generator=torch.Generator().manual_seed(0), device="meta")
    assert boxes.device.type == flips.device.type == "meta" and boxes.shape == (5, 4)
