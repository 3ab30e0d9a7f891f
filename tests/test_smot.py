import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_smot.smot import (
    PERTURBATIONS,
    cam_mask,
    label_smoothing_ce,
    logitnorm_loss,
    perturb,
    sample_thresholds,
    smoothing_eps,
    smot_loss,
    soft_cross_entropy,
    soft_targets,
)


def test_eps_hand_values():
    eps = smoothing_eps(torch.tensor([255.0, 200.0, 0.0]), T=10)
    assert eps[0].item() == 0.0
    assert eps[1].item() == pytest.approx(1 - math.exp(-5.5), abs=1e-7)
    assert eps[2].item() == pytest.approx(1 - math.exp(-25.5), abs=1e-7)
    # a larger T softens less at the same threshold (eps 0.31 at T = 150, 0.996 at T = 10)
    assert smoothing_eps(torch.tensor([200.0]), T=150).item() == pytest.approx(1 - math.exp(-55 / 150))
    # any T > 0 is a temperature, below 1 too: eps(254.5) = 1 - exp(-0.5 / 0.5)
    assert smoothing_eps(torch.tensor([254.5]), T=0.5).item() == pytest.approx(1 - math.exp(-1), abs=1e-7)


def test_eps_of_a_threshold_outside_0_255_is_that_of_the_nearest_end():
    """t = 300 masks nothing, as t = 255 does: eps 0, not 1 - exp(4.5) = -89 (soft targets of -30
    for the other classes, a loss falling without bound); t = -10 masks all, as t = 0 does."""
    eps = smoothing_eps(torch.tensor([300.0, -10.0]), T=10)
    assert eps[0].item() == 0.0
    assert eps[1].item() == pytest.approx(1 - math.exp(-25.5), abs=1e-7)
    # read at 0 exactly: at T = 200, 1 - exp(-255 / 200) = 0.7205 (clamped at 1 it would be 0.7192)
    assert smoothing_eps(torch.tensor([-10.0]), T=200).item() == pytest.approx(1 - math.exp(-255 / 200), abs=1e-6)


def test_eps_rejects_bad_T():
    with pytest.raises(ValueError):
        smoothing_eps(torch.tensor([1.0]), T=0)


def test_eps_at_a_temperature_below_the_dtype_s_range():
    """T = 1e-50 is 0 in float32: eps(255) was 1 - exp(0 / 0), NaN; it is 0 at any T (nothing masked), and
    1 below 255 (T -> 0 makes every masked image uniform)."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for T in (1e-50, 5e-324):
            eps = smoothing_eps(torch.tensor([255.0, 254.0, 300.0], dtype=dtype), T)
            assert eps.dtype == dtype and eps.tolist() == [0.0, 1.0, 0.0]


def test_soft_targets_eq5():
    y = torch.tensor([2, 0])
    eps = torch.tensor([0.5, 0.0])
    st = soft_targets(y, eps, 4)
    expected = torch.tensor([[0.125, 0.125, 0.625, 0.125], [1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(st, expected)
    torch.testing.assert_close(st.sum(1), torch.ones(2))
    # a scalar eps applies to the whole batch
    torch.testing.assert_close(soft_targets(y, 0.1, 4)[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))


def test_soft_targets_refuse_eps_or_labels_of_another_shape():
    """eps [1, B] broadcast over the classes when B = K (each class smoothed by another image's eps,
    rows not summing to 1); y [B, 1] gave [B, 1, K] targets."""
    y = torch.tensor([2, 0, 1])
    for eps in (torch.full((1, 3), 0.3), torch.full((2,), 0.3), torch.full((3, 2), 0.3)):
        with pytest.raises(ValueError, match=r"eps must be one float or one per image \(\[3\]\)"):
            soft_targets(y, eps, 3)
    with pytest.raises(ValueError, match="y must be"):
        soft_targets(y[:, None], 0.3, 3)
    # [B, 1] is one eps per image too
    torch.testing.assert_close(soft_targets(y, torch.tensor([[0.3], [0.0], [0.0]]), 3)[0],
                               torch.tensor([0.1, 0.1, 0.8]))


def test_soft_targets_and_the_smot_loss_refuse_eps_outside_0_1():
    """A tensor eps was not checked (smot_loss takes smoothing_eps's tensor), nor was a float in
    smot_loss: eps = 1.5 gave the true class a target of 1 - 1.5 + 1.5 / 3 = 0 and the others 0.5, eps = 2
    a negative one (a loss with no lower bound), NaN a NaN loss. A CPU tensor is checked at once."""
    logits, y = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 1])
    for bad in (1.5, -0.1, math.nan, torch.tensor([0.2, 2.0]), torch.tensor([math.nan, 0.1]),
                torch.tensor(-1e-3, dtype=torch.float64), np.array([-0.5, 0.5]), [0.1, 2.0]):
        with pytest.raises(ValueError, match="eps must be in"):
            soft_targets(y, bad, 3)
        with pytest.raises(ValueError, match="eps must be in"):
            smot_loss(logits, logits, y, bad, 0.5)
    # the ends are fine: eps 1 is the uniform label, 0 the one-hot one (float16 and integer tensors too)
    for eps in (torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0], dtype=torch.float16), torch.tensor([1, 0])):
        assert soft_targets(y, eps, 4).tolist() == [[0.25] * 4, [0.0, 1.0, 0.0, 0.0]]


def test_soft_targets_refuse_a_number_of_classes_below_one_and_labels_outside_it():
    """num_classes=-1 was one_hot's "infer it": two classes for label 1, and eps / -1 = -0.1 on the other
    one; labels outside [0, K) stopped in one_hot with a RuntimeError."""
    for K in (-1, 0, 2.0, True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
            soft_targets(torch.tensor([1]), 0.1, K)
    for y in (torch.tensor([3]), torch.tensor([0, -1])):
        with pytest.raises(ValueError, match=r"y must be class indices in \[0, 3\)"):
            soft_targets(y, 0.1, 3)
        with pytest.raises(ValueError, match=r"y must be class indices in \[0, 3\)"):
            label_smoothing_ce(torch.zeros(len(y), 3), y)
    torch.testing.assert_close(soft_targets(torch.tensor([0]), 0.5, np.int64(1)), torch.ones(1, 1))


def test_label_smoothing_and_soft_targets_refuse_float_labels():
    """soft_targets read y with .long(): label_smoothing_ce(logits, [0.7, 1.9]) was the loss of classes 0 and 1,
    without a word (smot_loss and logitnorm_loss refuse them)."""
    logits = torch.zeros(2, 3)
    for y in (torch.tensor([0.7, 1.9]), torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([True, False])):
        with pytest.raises(ValueError, match="y must be integer class indices, got torch.(float|bool)"):
            label_smoothing_ce(logits, y)
        with pytest.raises(ValueError, match="y must be integer class indices, got torch.(float|bool)"):
            soft_targets(y, 0.1, 3)
    # integer labels of any dtype: log 3 for all-zero logits
    assert label_smoothing_ce(logits, torch.tensor([0, 1], dtype=torch.uint8)).item() == pytest.approx(math.log(3))


def test_losses_name_labels_outside_the_classes_of_another_shape_or_not_integers():
    """smot_loss and logitnorm_loss passed y to cross_entropy: y = 3 of 3 classes was an IndexError
    ("Target 3 is out of bounds"), y [B, 1] a RuntimeError ("multi-target not supported"), and float
    labels were truncated (1.7 -> class 1) without a word."""
    logits = torch.zeros(2, 3)
    losses = (lambda y: smot_loss(logits, logits, y, torch.zeros(2), 0.1), lambda y: logitnorm_loss(logits, y))
    for loss in losses:
        for y, said in ((torch.tensor([0, 3]), r"y must be class indices in \[0, 3\)"),
                        (torch.tensor([-1, 0]), r"y must be class indices in \[0, 3\)"),
                        (torch.tensor([[0], [1]]), "y must hold one class index per row of the logits"),
                        (torch.tensor([0]), "y must hold one class index per row of the logits"),
                        (torch.tensor([1.7, 0.0]), "y must be integer class indices, got torch.float32"),
                        (torch.tensor([True, False]), "y must be integer class indices, got torch.bool")):
            with pytest.raises(ValueError, match=said):
                loss(y)
    # one image without its batch axis is still cross_entropy's
    assert logitnorm_loss(torch.tensor([0.0, 5.0, 0.0]), torch.tensor(1)).item() == pytest.approx(
        logitnorm_loss(torch.tensor([[0.0, 5.0, 0.0]]), torch.tensor([1])).item())


def test_label_smoothing_refuses_labels_of_another_batch():
    """label_smoothing_ce(logits [4, 5], y [1]) is the loss of all four images against y[0]'s soft label,
    without a word (soft_targets gives [1, K], which soft_cross_entropy takes as one row for all), and
    y [3] stops in torch's broadcast ("Attempting to broadcast a dimension of length 4"). smot_loss and
    logitnorm_loss refuse both (above), as torch's own label smoothing does."""
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    for y in (torch.tensor([1]), torch.tensor([0, 1, 2])):
        with pytest.raises(ValueError, match="batch_size"):  # the reference: torch's cross_entropy
            F.cross_entropy(logits, y, label_smoothing=0.1)
        with pytest.raises(ValueError, match="y must hold one class index per row of the logits"):
            label_smoothing_ce(logits, y)
    # y of as many labels in another shape, or one label a row of [B, N, K] logits: no row of its own each
    for logits, y in ((logits, torch.zeros(2, 2, dtype=torch.long)), (logits.reshape(2, 2, 5), torch.tensor([0, 1]))):
        with pytest.raises(ValueError, match=r"^y must hold one class index per row of the logits"):
            label_smoothing_ce(logits, y)


def test_logitnorm_of_logits_with_more_axes_takes_the_last_as_the_classes():
    """logitnorm_loss normalises each row of the last axis; _hard_ce's check (y = logits.shape[:-1]) lets
    [B, N, K] logits with y [B, N] through, but F.cross_entropy reads [B, C, d] input: for N == K it
    silently took the N axis as the classes (13.11 here where the rows give 13.65), for N != K it
    stopped in torch ("Expected target size [2, 5], got [2, 3]"). Refused, naming the logits, or the
    mean over the rows, as soft_cross_entropy already takes such logits."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(2, 3, 3, generator=g), torch.tensor([[0, 1, 2], [2, 2, 0]])
    unit = logits / (logits.norm(dim=-1, keepdim=True) + 1e-7) / 0.04  # LogitNorm of each row, by hand
    try:
        loss = logitnorm_loss(logits, y)
    except ValueError as e:
        assert "logits" in str(e)
    else:
        assert loss.item() == pytest.approx(F.cross_entropy(unit.reshape(-1, 3), y.reshape(-1)).item(), rel=1e-5)


def test_cam_mask_masks_at_and_above_threshold():
    cam = torch.tensor([[[0.0, 99.0], [100.0, 255.0]]])  # [1, 2, 2]
    keep = cam_mask(cam, torch.tensor([100.0]))
    assert keep.shape == (1, 1, 2, 2)
    assert keep.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]
    # per-image thresholds
    cams = cam.repeat(2, 1, 1)
    keep2 = cam_mask(cams, torch.tensor([0.0, 256.0]))
    assert keep2[0].sum() == 0 and keep2[1].sum() == 4


def test_cam_mask_refuses_thresholds_for_another_batch():
    """One CAM with three thresholds made three masks of it (then three images of one); a CAM
    without its batch axis [H, W] became a batch of H."""
    cam = torch.zeros(1, 2, 2)
    for c, t in ((cam, torch.tensor([10.0, 100.0, 200.0])), (cam[0], torch.tensor([10.0, 100.0])),
                 (torch.zeros(2, 3, 2, 2), torch.tensor([10.0, 100.0])), (torch.zeros(1, 1, 2, 2, 1), torch.tensor([1.0]))):
        with pytest.raises(ValueError, match=r"cam_mask needs cam \[B, H, W\] or \[B, 1, H, W\] and t \[B\]"):
            cam_mask(c, t)
    assert cam_mask(torch.zeros(2, 2, 2), torch.tensor(1.0)).shape == (2, 1, 2, 2)  # one t for all


def test_perturb_modes():
    x = torch.full((1, 3, 2, 2), 0.5)
    keep = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    z = perturb(x, keep, "zero")
    assert z[0, :, 0, 1].tolist() == [0.0] * 3 and z[0, :, 0, 0].tolist() == [0.5] * 3
    o = perturb(x, keep, "one")
    assert o[0, :, 0, 1].tolist() == [1.0] * 3 and o[0, :, 1, 1].tolist() == [0.5] * 3
    n = perturb(x, keep, "noise", sigma=0.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(n[0, :, 0, 0], x[0, :, 0, 0])  # kept pixels untouched
    assert not torch.equal(n[0, :, 0, 1], x[0, :, 0, 1])  # noise added where the mask was
    assert n.min() >= 0 and n.max() <= 1
    with pytest.raises(ValueError):
        perturb(x, keep, "blur")
    # noise of std sigma: grey 0.5 images, all masked, sigma 0.1 (clipping at 5 sigma is negligible)
    grey = torch.full((2, 3, 64, 64), 0.5)
    n = perturb(grey, torch.zeros(2, 1, 64, 64), "noise", sigma=0.1, generator=torch.Generator().manual_seed(0))
    assert (n - 0.5).std().item() == pytest.approx(0.1, rel=0.02) and abs((n - 0.5).mean().item()) < 0.002
    assert not torch.equal(n[0], n[1])  # a fresh draw per image
    # pixels stay images: noise of std 1 on bright pixels is clipped at 1 (and at 0)
    bright = perturb(torch.full((1, 3, 32, 32), 0.9), torch.zeros(1, 1, 32, 32), "noise", sigma=1.0,
                     generator=torch.Generator().manual_seed(0))
    assert bright.min() == 0 and bright.max() == 1 and (bright == 1).float().mean() > 0.3


def test_perturb_refuses_integer_images():
    """uint8 images masked to "one" got 1 of 255, nearly black; "noise" stopped on a kernel error."""
    x = torch.full((1, 3, 2, 2), 200, dtype=torch.uint8)
    for mode in PERTURBATIONS:
        with pytest.raises(TypeError, match="float images x in \\[0, 1\\], got torch.uint8"):
            perturb(x, torch.zeros(1, 1, 2, 2), mode)


def test_perturb_refuses_a_mask_without_its_channel_axis():
    """A [B, H, W] mask lines its B up with the images' 3 channels: for B = 3 image 0's mask
    would have masked every image's red channel. Only masks that broadcast as [B, 1, H, W] do."""
    x = torch.rand(3, 3, 2, 2)
    for keep in (torch.ones(3, 2, 2), torch.ones(2, 1, 2, 2), torch.ones(3, 1, 2, 3), torch.ones(1, 1, 2)):
        with pytest.raises(ValueError, match=r"keep must be a \[B, 1, H, W\] mask"):
            perturb(x, keep)
    with pytest.raises(ValueError, match=r"keep must be a \[B, 1, H, W\] mask"):  # one image without its batch axis
        perturb(x[0], torch.ones(1, 1, 2, 2))
    assert torch.equal(perturb(x, torch.ones(3, 3, 2, 2), "one"), x)  # a mask per channel is a mask
    assert torch.equal(perturb(x, torch.ones(1, 1, 2, 2)), x)  # one mask for the batch


def test_perturb_moves_a_mask_on_another_device_to_the_images():
    """A mask left on the CPU for images on an accelerator stopped in the product ("Tensor on device cpu
    is not on the expected device meta!"); it is moved, as cam_mask moves its thresholds. (The meta
    device stands in for an accelerator: its tensors hold no values, so only where and what shape.)"""
    x, keep = torch.rand(2, 3, 4, 4, device="meta"), torch.ones(2, 1, 4, 4)
    for mode in PERTURBATIONS:
        out = perturb(x, keep, mode)
        assert out.device.type == "meta" and out.shape == (2, 3, 4, 4) and out.dtype == torch.float32


def test_perturb_noise_beyond_the_float_range_saturates_the_masked_pixels_only():
    """sigma * noise past float32's range is +-inf: the masked pixels become 0 or 1, the kept ones
    stay as they were (inf * 0 made them NaN: train --sigma 1e38 stopped on a NaN loss blamed on --lr)."""
    x = torch.full((1, 3, 2, 2), 0.5)
    keep = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    n = perturb(x, keep, "noise", sigma=3e38, generator=torch.Generator().manual_seed(0))
    assert n[0, :, 0, 0].tolist() == n[0, :, 1, 1].tolist() == [0.5] * 3
    assert set(n[0, :, 0, 1].tolist() + n[0, :, 1, 0].tolist()) <= {0.0, 1.0}


def test_perturb_noise_refuses_a_negative_or_nan_sigma():
    """fit and train check --sigma >= 0; a library caller's NaN sigma made the masked pixels NaN."""
    x, keep = torch.full((1, 3, 1, 2), 0.5), torch.tensor([[[[1.0, 0.0]]]])
    for sigma in (float("nan"), -0.1):
        with pytest.raises(ValueError, match="sigma must be >= 0"):
            perturb(x, keep, "noise", sigma=sigma)
    assert torch.equal(perturb(x, keep, "noise", sigma=0.0), x)


def test_perturb_noise_of_a_soft_mask_is_weighed_by_what_is_masked():
    """keep 0.5 adds half the noise, as "zero" keeps half the pixel: x + (1 - keep) * sigma * noise."""
    x = torch.full((1, 3, 1, 2), 0.5)
    keep = torch.tensor([[[[0.5, 0.75]]]])
    n = perturb(x, keep, "noise", sigma=0.2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))  # the same draw
    assert torch.allclose(n[..., 0], (0.5 + 0.5 * 0.2 * noise[..., 0]).clamp(0, 1))
    assert torch.allclose(n[..., 1], (0.5 + 0.25 * 0.2 * noise[..., 1]).clamp(0, 1))
    assert perturb(x, keep, "zero").flatten().tolist() == [0.25, 0.375] * 3


def test_smot_loss_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(3, 5)
    logits_m = torch.randn(3, 5)
    y = torch.tensor([1, 4, 0])
    eps = torch.tensor([0.2, 0.9, 0.0])
    lam = 0.3
    # hand-computed: CE by explicit log-softmax sums
    logp = logits - logits.exp().sum(1, keepdim=True).log()
    ce = -logp[torch.arange(3), y].mean()
    logpm = logits_m - logits_m.exp().sum(1, keepdim=True).log()
    soft = 0.0
    for i in range(3):
        for k in range(5):
            target = (1 - eps[i]) * (k == y[i]) + eps[i] / 5
            soft = soft - target * logpm[i, k]
    soft = soft / 3
    expected = (1 - lam) * ce + lam * soft
    assert smot_loss(logits, logits_m, y, eps, lam).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError):
        smot_loss(logits, logits_m, y, eps, 1.5)


def test_smot_loss_reduces_to_ce_when_lam_zero():
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    out = smot_loss(logits, torch.randn(4, 3), y, torch.rand(4), 0.0)
    assert out.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_smot_loss_refuses_masked_logits_of_another_shape():
    """[1, K] masked logits were broadcast against the [B, K] soft targets, and [B, K'] ones made
    targets over K' classes: a loss either way, with no word."""
    logits, y, eps = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.rand(4)
    for masked in (torch.randn(1, 3), torch.randn(4, 5), torch.randn(3)):
        with pytest.raises(ValueError, match=r"logits and logits_masked must both be \[B, K\]"):
            smot_loss(logits, masked, y, eps, 0.1)
    with pytest.raises(ValueError, match=r"logits and logits_masked must both be \[B, K\]"):  # one image, [K]
        smot_loss(logits[0], logits[0], y[:1], eps[:1], 0.1)


def test_beta_thresholds_mean_and_reproducible():
    g = torch.Generator().manual_seed(0)
    t = sample_thresholds(20000, 50, 20, generator=g)
    assert t.shape == (20000,)
    assert t.min() >= 0 and t.max() <= 255
    assert t.mean().item() == pytest.approx(255 * 50 / 70, abs=0.5)
    # Beta(50, 20) variance: ab / ((a+b)^2 (a+b+1))
    var = 50 * 20 / (70**2 * 71)
    assert (t / 255).var().item() == pytest.approx(var, rel=0.05)
    # same generator seed, same draw; small parameters use the boosted branch
    t1 = sample_thresholds(5, 0.5, 0.5, generator=torch.Generator().manual_seed(3))
    t2 = sample_thresholds(5, 0.5, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2)
    s = sample_thresholds(20000, 0.5, 2.0, generator=g) / 255
    assert s.mean().item() == pytest.approx(0.2, abs=0.01)
    with pytest.raises(ValueError):
        sample_thresholds(2, 0, 1)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_label_smoothing_and_the_smot_loss_are_torchs_cross_entropy(eps):
    """Against torch's own cross_entropy: its label_smoothing (eps / K on every class, as Eq. 5's
    soft labels) for the "label smooth" baseline, and its probability targets for the SMOT loss's
    masked term, with one eps per image."""
    g = torch.Generator().manual_seed(7)
    logits, masked = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    torch.testing.assert_close(label_smoothing_ce(logits, y, eps), F.cross_entropy(logits, y, label_smoothing=eps))
    per_image = torch.tensor([eps, 0.0, 0.3, 1.0, 0.05, 0.9])
    targets = (1 - per_image[:, None]) * F.one_hot(y, 5) + per_image[:, None] / 5
    lam = 0.1
    expected = (1 - lam) * F.cross_entropy(logits, y) + lam * F.cross_entropy(masked, targets)
    torch.testing.assert_close(smot_loss(logits, masked, y, per_image, lam), expected)


def test_label_smoothing_and_logitnorm_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    logp = logits.log_softmax(-1)[0]
    expected = -(0.9 + 0.1 / 3) * logp[0] - (0.1 / 3) * (logp[1] + logp[2])
    assert label_smoothing_ce(logits, y, 0.1).item() == pytest.approx(expected.item(), rel=1e-6)
    assert label_smoothing_ce(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)  # (eps 0.1 by default)
    # LogitNorm: each row divided by its own norm times tau 0.04; labels that are not the argmax,
    # so that the loss is not ~0 (which any scaling would give too)
    rows = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, -0.5]])
    labels = [1, 0]
    scaled = rows / (np.linalg.norm(rows, axis=1, keepdims=True) * 0.04)
    logp = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
    want = -np.mean([logp[i, labels[i]] for i in range(2)])
    assert want > 1
    assert logitnorm_loss(torch.tensor(rows, dtype=torch.float32), torch.tensor(labels)).item() == pytest.approx(
        want, rel=1e-5)


def test_label_smoothing_and_logitnorm_refuse_settings_outside_their_range():
    """eps = 2 gave targets of -1/3 for the other classes (a loss that falls as their logits do);
    tau = 0 a NaN loss; tau < 0 the CE of the negated, normalised logits. train checks its own
    flags; a library caller got these silently."""
    logits, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    for eps in (2.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="eps must be in"):
            label_smoothing_ce(logits, y, eps)
    for tau in (0.0, -0.04, float("nan")):
        with pytest.raises(ValueError, match="tau must be > 0"):
            logitnorm_loss(logits, y, tau)
    assert label_smoothing_ce(logits, y, 1.0).item() == pytest.approx(-logits.log_softmax(-1).mean().item())


@pytest.mark.parametrize("conc, n", [(0.5, 20000), (1.0, 100000), (1.5, 20000), (50.0, 20000)])
def test_gamma_draws_follow_the_gamma_distribution(conc, n):
    """Mean and variance checks pass with a sampler that keeps every proposal (no acceptance
    test) or that uses another d: its whole distribution is compared (Kolmogorov-Smirnov, SciPy).
    Marsaglia and Tsang's proposal alone is close to a Gamma (Wilson-Hilferty): an acceptance test
    that keeps too much (x^2 / 2 + d + d ln v) is still within 20,000 draws' resolution (p = 0.03
    at conc 1); it is farthest at conc 1 (d = 2/3, the smallest), drawn 100,000 times here. d < 1 is
    also where c = 1 / sqrt(9 d) is needed (c = sqrt(d) / 3 is exact for d >= 1 only)."""
    from scipy import stats

    from clip_smot.smot import _log_gamma

    g = _log_gamma(torch.full((n,), conc, dtype=torch.float64), torch.Generator().manual_seed(1)).exp()
    assert stats.kstest(g.numpy(), stats.gamma(conc).cdf).pvalue > 0.01


def test_beta_thresholds_follow_the_beta_distribution():
    from scipy import stats

    t = sample_thresholds(20000, 2.0, 3.0, generator=torch.Generator().manual_seed(2)).double() / 255
    assert stats.kstest(t.numpy(), stats.beta(2.0, 3.0).cdf).pvalue > 0.01


def test_beta_thresholds_refuse_infinite_parameters():
    """Gamma(inf) never accepts a draw: refused rather than looping for ever."""
    for alpha, beta in ((float("inf"), 20.0), (50.0, float("inf")), (float("nan"), 20.0), (0.0, 20.0), (50.0, 0.0)):
        with pytest.raises(ValueError, match="finite"):
            sample_thresholds(4, alpha, beta)


def test_beta_thresholds_refuse_a_batch_size_that_is_not_a_count():
    """-1 stopped in expand ('The expanded size of the tensor (-1) isn't allowed'), 3.0 on expand's
    arguments; 0 draws nothing."""
    for bad in (-1, 3.0, None, True):  # (True is an Integral, and 1)
        with pytest.raises(ValueError, match="batch_size must be an integer >= 0"):
            sample_thresholds(bad, 50.0, 20.0)
    assert sample_thresholds(0, 50.0, 20.0).shape == (0,)


def test_beta_thresholds_refuse_a_generator_that_is_no_torch_generator():
    """A seed or a numpy generator passed as the generator stopped on "'int' object has no attribute 'device'"."""
    for generator in (0, "cpu", np.random.default_rng(0)):
        with pytest.raises(TypeError, match=f"^generator must be a torch.Generator or None, got "
                                            f"{type(generator).__name__}$"):
            sample_thresholds(3, 50, 20, generator=generator)


def test_beta_thresholds_tiny_parameters_are_finite():
    """Beta(a, b) with tiny a, b (both Gamma draws below float64's range, so g_a / (g_a + g_b) would
    be 0 / 0 = NaN in a quarter of the draws) puts its mass at the two ends: P(s < x) ~ x^a / 2
    for Beta(a, a), so 98.6% of Beta(1e-3, 1e-3) lies within 1e-6 of 0 or 1, half of it at each end;
    the mean a / (a + b) holds for unequal ones."""
    g = torch.Generator().manual_seed(0)
    s = sample_thresholds(20000, 1e-3, 1e-3, generator=g).double() / 255
    assert torch.isfinite(s).all() and s.min() >= 0 and s.max() <= 1
    assert (s < 0.5).double().mean().item() == pytest.approx(0.5, abs=0.02)
    ends = ((s < 1e-6) | (s > 1 - 1e-6)).double().mean().item()
    assert ends == pytest.approx(1e-6 ** 1e-3, abs=0.005)
    s = sample_thresholds(20000, 1e-3, 2e-3, generator=g).double() / 255
    assert torch.isfinite(s).all() and s.mean().item() == pytest.approx(1 / 3, abs=0.015)
    assert torch.isfinite(sample_thresholds(1000, 1e-9, 1e-9, generator=g)).all()
    # below ~1e-307 both log-draws overflowed to -inf, and -inf - -inf made every threshold NaN (fit then
    # stopped on a NaN loss, asking for a lower --lr): the same two ends, the same mean a / (a + b)
    s = sample_thresholds(20000, 1e-320, 1e-320, generator=g).double() / 255
    assert torch.isfinite(s).all() and ((s == 0) | (s == 1)).all()
    assert (s < 0.5).double().mean().item() == pytest.approx(0.5, abs=0.02)
    s = sample_thresholds(20000, 1e-320, 2e-320, generator=g).double() / 255
    assert torch.isfinite(s).all() and s.mean().item() == pytest.approx(1 / 3, abs=0.015)


def test_eps_of_integer_thresholds_is_float32():
    """Integer thresholds (uint8 CAM levels) give float32 eps, as documented, with Eq. 9's values."""
    for dtype in (torch.uint8, torch.int64):
        eps = smoothing_eps(torch.tensor([255, 200, 0], dtype=dtype), T=10)
        assert eps.dtype == torch.float32
        torch.testing.assert_close(eps, torch.tensor([0.0, 1 - math.exp(-5.5), 1 - math.exp(-25.5)]))


def test_thresholds_are_float32_on_the_device_asked_for():
    t = sample_thresholds(6, 50, 20, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.device.type == "cpu"
    on_meta = sample_thresholds(6, 50, 20, generator=torch.Generator().manual_seed(0), device="meta")
    assert on_meta.device.type == "meta" and on_meta.shape == (6,) and on_meta.dtype == torch.float32


def test_cam_mask_of_uint8_cams_compares_with_the_fractional_threshold():
    """Thresholds are 255 * s, rarely whole: a uint8 CAM level of 100 is below t = 100.5 (kept),
    101 is above it (masked); truncating t to uint8 (100) would mask the 100 too."""
    cam = torch.tensor([[[99, 100], [101, 255]]], dtype=torch.uint8)
    keep = cam_mask(cam, torch.tensor([100.5]))
    assert keep.dtype == torch.float32 and keep.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]


def test_cam_mask_of_float64_cams_or_thresholds_compares_their_values():
    """A float64 CAM of 99.999999999 is below a threshold of 100 (kept), and a uint8 CAM of 100 below a float64
    threshold of 100.00000001: compared in float32, both rounded to 100 and were masked."""
    near = torch.tensor([[[99.999999999, 100.0]]], dtype=torch.float64)
    torch.testing.assert_close(cam_mask(near, torch.tensor([100.0])), torch.tensor([[[[1.0, 0.0]]]]))
    u8 = torch.tensor([[[100, 101]]], dtype=torch.uint8)
    torch.testing.assert_close(cam_mask(u8, torch.tensor([100.00000001], dtype=torch.float64)),
                               torch.tensor([[[[1.0, 0.0]]]]))


def test_perturb_defaults_are_black_and_sigma_one_tenth():
    """mode defaults to "zero" (the paper's black masking), sigma to 0.1 (Table 9)."""
    x = torch.full((1, 3, 2, 2), 0.5)
    keep = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert perturb(x, keep).flatten().tolist() == [0.5, 0.0, 0.0, 0.5] * 3
    grey = torch.full((2, 3, 64, 64), 0.5)
    n = perturb(grey, torch.zeros(2, 1, 64, 64), "noise", generator=torch.Generator().manual_seed(0))
    assert (n - 0.5).std().item() == pytest.approx(0.1, rel=0.02)


def test_smot_loss_lam_bounds_are_inclusive():
    """lam = 1 is allowed (only the perturbed term: soft CE against y_eps); lam < 0 is refused."""
    logits = torch.tensor([[3.0, 0.0, 0.0]])
    masked = torch.tensor([[0.0, 1.0, 2.0]])
    y, eps = torch.tensor([0]), torch.tensor([0.6])
    logp = [v - math.log(1 + math.e + math.e ** 2) for v in (0.0, 1.0, 2.0)]
    targets = [0.4 + 0.2, 0.2, 0.2]
    want = -sum(t * lp for t, lp in zip(targets, logp))
    assert smot_loss(logits, masked, y, eps, 1.0).item() == pytest.approx(want, rel=1e-6)
    for lam in (-0.1, -1.0):
        with pytest.raises(ValueError, match="lam"):
            smot_loss(logits, masked, y, eps, lam)


def test_logitnorm_of_all_zero_logits_is_uniform():
    """An all-zero row has norm 0: the 1e-7 keeps it finite, the softmax uniform, the loss log K."""
    out = logitnorm_loss(torch.zeros(2, 4), torch.tensor([0, 3]))
    assert out.item() == pytest.approx(math.log(4), rel=1e-6)


def test_soft_cross_entropy_of_low_precision_logits_is_computed_in_float32():
    """bfloat16 logits (mixed precision) are exact inputs; the loss on them is float32-exact,
    not rounded to bfloat16's 8-bit mantissa."""
    rows = [[3.0, -1.25, 0.5], [0.0, 2.5, -3.0]]
    logits = torch.tensor(rows, dtype=torch.bfloat16)
    y = torch.tensor([0, 2])
    logp = [[v - math.log(sum(math.exp(w) for w in r)) for v in r] for r in rows]
    want = -(logp[0][0] + logp[1][2]) / 2
    assert smot_loss(logits, logits, y, torch.zeros(2), 0.5).item() == pytest.approx(want, rel=1e-6)
    assert label_smoothing_ce(logits, y, 0.0).item() == pytest.approx(want, rel=1e-6)


def test_logitnorm_by_hand_for_a_row_of_tiny_norm_and_low_precision_logits():
    """The 1e-7 is added to the norm, as in the LogitNorm authors' code: a row (1e-7, 0, 0) is divided by
    (1e-7 + 1e-7) * 0.04, which gives (12.5, 0, 0). bfloat16 logits are read as the numbers they hold and
    the loss is float32-exact, as smot_loss's is."""
    tiny = torch.tensor([[1e-7, 0.0, 0.0]])
    want = math.log(math.exp(12.5) + 2)  # CE of (12.5, 0, 0) for class 1
    assert logitnorm_loss(tiny, torch.tensor([1])).item() == pytest.approx(want, rel=1e-5)
    rows = [[3.0, -1.25, 0.5], [0.0, 2.5, -3.0]]
    scaled = [[v / (math.sqrt(sum(w * w for w in r)) * 0.04) for v in r] for r in rows]
    logp = [[v - math.log(sum(math.exp(w) for w in r)) for v in r] for r in scaled]
    want = -(logp[0][1] + logp[1][0]) / 2
    got = logitnorm_loss(torch.tensor(rows, dtype=torch.bfloat16), torch.tensor([1, 0]))
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want, rel=1e-5)


def test_losses_take_labels_of_any_integer_dtype():
    """int32 labels (numpy's on some platforms) are class indices as int64 ones are: cross_entropy alone
    refuses them ('expected target dtype to be Long or Byte')."""
    logits, masked = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, -0.5]]), torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    y, eps = torch.tensor([0, 2]), torch.tensor([0.3, 0.6])
    for dtype in (torch.int32, torch.uint8):
        assert smot_loss(logits, masked, y.to(dtype), eps, 0.1).item() == pytest.approx(
            smot_loss(logits, masked, y, eps, 0.1).item(), rel=1e-6)
        assert logitnorm_loss(logits, y.to(dtype)).item() == pytest.approx(logitnorm_loss(logits, y).item(), rel=1e-6)
        assert label_smoothing_ce(logits, y.to(dtype)).item() == pytest.approx(label_smoothing_ce(logits, y).item(),
                                                                               rel=1e-6)


def test_logitnorm_of_logits_whose_squares_overflow_float32_is_scale_free():
    """A row (1e20, 0, 0) is (1, 0, 0) times 1e20: divided by its norm and tau = 0.04 it is (25, 0, 0), as
    (1, 0, 0) is. The norm's square overflowed float32: every logit was divided by inf, the loss log 3."""
    want = math.log(math.exp(25.0) + 2)  # CE of (25, 0, 0) for class 1
    for big in (1.0, 1e20, 1e30, 3e38):
        assert logitnorm_loss(torch.tensor([[big, 0.0, 0.0]]), torch.tensor([1])).item() == pytest.approx(want, rel=1e-6)
    logits = torch.tensor([[1e25, -2e25, 5e24]], requires_grad=True)
    logitnorm_loss(logits, torch.tensor([0])).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_soft_cross_entropy_refuses_targets_that_broadcast_to_another_shape():
    """targets [B, 1] were multiplied into every class (a loss of 4.3 for these logits, not a cross-entropy);
    [B, 1, K] against [B, K] logits averaged B x B pairs of images. One [K] row for the batch is fine."""
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    for targets in (torch.ones(2, 1), torch.eye(3)[[0, 1]][:, None], torch.ones(2, 4) / 4):
        with pytest.raises(ValueError, match=r"targets must be \[B, K\] as the logits"):
            soft_cross_entropy(logits, targets)
    row = torch.tensor([0.5, 0.25, 0.25])
    torch.testing.assert_close(soft_cross_entropy(logits, row), soft_cross_entropy(logits, row.expand(2, 3)))
    torch.testing.assert_close(soft_cross_entropy(logits, row[None]), soft_cross_entropy(logits, row.expand(2, 3)))


def test_losses_of_a_class_switched_off_by_a_minus_inf_logit_are_finite():
    """A -inf logit of a class whose target is 0 (eps = 0: a threshold of 255, or label smoothing 0) is
    cross-entropy's, finite: 0 * -inf made the soft term NaN."""
    logits = torch.tensor([[0.0, -math.inf, 1.0], [2.0, 0.5, -math.inf]], requires_grad=True)
    y = torch.tensor([0, 1])
    want = F.cross_entropy(logits.detach(), y).item()
    assert math.isfinite(want)
    assert label_smoothing_ce(logits, y, 0.0).item() == pytest.approx(want, rel=1e-6)
    assert soft_cross_entropy(logits, F.one_hot(y, 3).float()).item() == pytest.approx(want, rel=1e-6)
    loss = smot_loss(logits, logits, y, torch.zeros(2), 0.5)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_losses_move_labels_and_targets_on_another_device_to_the_logits():
    """Labels or soft targets left on the CPU for logits on an accelerator stopped in cross_entropy or the
    product ("Tensor on device meta is not on the expected device cpu!"); they are moved to the logits'
    device. (The meta device stands in for an accelerator: its tensors hold no values.)"""
    logits, y = torch.randn(3, 4, device="meta"), torch.tensor([0, 1, 3])
    targets = torch.full((3, 4), 0.25)
    for loss in (soft_cross_entropy(logits, targets), smot_loss(logits, logits, y, torch.zeros(3), 0.5),
                 label_smoothing_ce(logits, y), logitnorm_loss(logits, y)):
        assert loss.device.type == "meta" and loss.shape == () and loss.dtype == torch.float32


def test_losses_refuse_an_empty_batch_or_no_classes():
    """The batch mean of no images was NaN in every loss (as F.cross_entropy's), which train and fit
    report as a diverged step, and soft_cross_entropy of [B, 0] logits was 0; logitnorm_loss of no
    classes stopped in amax with no argument named."""
    y0 = torch.zeros(0, dtype=torch.long)
    for logits, y in ((torch.zeros(0, 3), y0), (torch.zeros(2, 0), torch.tensor([0, 0]))):
        with pytest.raises(ValueError, match="logits must hold at least one image and one class"):
            smot_loss(logits, logits, y, torch.zeros(len(y)), 0.5)
        with pytest.raises(ValueError, match="logits must hold at least one image and one class"):
            label_smoothing_ce(logits, y)
        with pytest.raises(ValueError, match="logits must hold at least one image and one class"):
            logitnorm_loss(logits, y)
        with pytest.raises(ValueError, match="logits must hold at least one image and one class"):
            soft_cross_entropy(logits, torch.zeros(logits.shape))
    # one image of one class is a loss: log 1 = 0
    assert smot_loss(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([0]), torch.tensor([0.5]), 0.5).item() == 0.0


def _each_setting_refuses(bad) -> None:
    """Each setting of the core (T, alpha, beta, sigma, lam, eps, tau) given ``bad``: a ValueError naming it."""
    logits, y, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), torch.tensor([200.0])
    x, keep = torch.rand(1, 3, 2, 2), torch.zeros(1, 1, 2, 2)
    calls = {"T": lambda: smoothing_eps(t, bad), "alpha and beta": lambda: sample_thresholds(2, bad, 20.0),
             "alpha and beta ": lambda: sample_thresholds(2, 50.0, bad), "sigma": lambda: perturb(x, keep, "noise", bad),
             "lam": lambda: smot_loss(logits, logits, y, torch.zeros(1), bad),
             "eps": lambda: label_smoothing_ce(logits, y, bad), "tau": lambda: logitnorm_loss(logits, y, bad)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"^{name.strip()} must be .*, got"):
            call()


def test_settings_refuse_a_bool_or_what_is_no_number():
    """True is an int to Python: lam=True was read as 1 (the perturbed term alone), T=True as 1, alpha and
    beta as 1 (a uniform threshold), sigma as 1, tau as 1: each a setting no one asked for; numpy's True
    the same. None or a string stopped in the comparison ("'<=' not supported between instances of 'float'
    and 'NoneType'"), naming no argument; eps=None in torch.as_tensor ("Could not infer dtype")."""
    logits, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    for bad in (True, False, np.True_, None, "0.5"):
        _each_setting_refuses(bad)
        with pytest.raises((ValueError, TypeError), match="^eps must be"):
            soft_targets(y, bad, 3)
    with pytest.raises(TypeError, match="eps must be a number or a tensor of them, got a tensor of torch.bool"):
        smot_loss(logits, logits, y, torch.tensor([True]), 0.1)
    # numpy numbers and one-element tensors are numbers: lam 0 is the CE alone
    for lam in (np.float32(0.0), torch.tensor(0.0), np.int64(0)):
        assert smot_loss(logits, logits, y, torch.zeros(1), lam).item() == pytest.approx(-logits.log_softmax(-1)[0, 0].item())


def test_settings_refuse_a_tensor_of_several_numbers_of_bools_or_of_complex_numbers():
    """A setting may be a one-element real tensor; a tensor of two numbers stopped in the comparison ("Boolean
    value of Tensor with more than one value is ambiguous"), a bool tensor is True read as 1 and a complex one
    has no order: each is refused naming the setting, as a Python bool is."""
    for bad in (torch.tensor([0.5, 0.5]), torch.tensor(True), torch.tensor([True]), torch.tensor(0.5 + 0j)):
        _each_setting_refuses(bad)


def test_core_functions_name_an_argument_that_is_no_tensor():
    """A numpy array or a list where a tensor is read stopped on a missing attribute ("'list' object has no
    attribute 'is_floating_point'"), naming no argument."""
    a, y, t = np.zeros((2, 3), dtype=np.float32), torch.tensor([0, 1]), torch.tensor([100.0, 200.0])
    logits = torch.zeros(2, 3)
    for name, call in (("t", lambda: smoothing_eps([100.0, 200.0], 10.0)), ("y", lambda: soft_targets([0, 1], 0.1, 3)),
                       ("cam", lambda: cam_mask(a[None], t[:1])), ("t", lambda: cam_mask(torch.zeros(1, 2, 3), 100.0)),
                       ("x", lambda: perturb(np.zeros((1, 3, 2, 2)), torch.ones(1, 1, 2, 2))),
                       ("targets", lambda: soft_cross_entropy(logits, a)),
                       ("logits_masked", lambda: smot_loss(logits, a, y, torch.zeros(2), 0.1)),
                       ("y", lambda: smot_loss(logits, logits, [0, 1], torch.zeros(2), 0.1)),
                       ("y", lambda: label_smoothing_ce(logits, np.array([0, 1]))), ("logits", lambda: logitnorm_loss(a, y))):
        with pytest.raises(TypeError, match=f"^{name} must be a torch.Tensor, got (list|ndarray|float)$"):
            call()


def test_logitnorm_at_a_tau_below_float32s_range():
    """l / (tau |l|) at tau = 1e-40 or 1e-300: (1, 0) becomes (c, 0) with c huge, whose CE for class 0 is
    log(1 + e^-c) = 0; (1, 1) becomes (c, c), CE log 2 for either class. The loss was NaN."""
    logits, y = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 0])
    for tau in (1e-40, 1e-300):
        assert logitnorm_loss(logits, y, tau).item() == pytest.approx(math.log(2) / 2, rel=1e-6)


def test_soft_cross_entropy_of_float64_logits_past_float32s_range():
    """log_softmax([1e300, 0]) is [0, -1e300] and log_softmax([-1e300, 0]) [-1e300, 0]: the CE of each row for
    its larger logit's class is 0; the loss was NaN."""
    logits = torch.tensor([[1e300, 0.0], [-1e300, 0.0]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert soft_cross_entropy(logits, targets).item() == 0.0
    assert soft_cross_entropy(logits, targets).dtype == torch.float32


def test_smot_and_logitnorm_losses_of_float64_logits_past_float32s_range():
    """The logits [1e300, 0] of class 0, computed in float64 and returned as float32 (in float32 1e300 was
    inf, and the loss NaN). smot_loss with lam 1/2, eps 0 and all-zero masked logits: the hard CE is 0, the
    soft one log 2, the loss log(2) / 2. logitnorm_loss at tau 1: the logits become [1, 0] (divided by their
    norm), whose CE for class 0 is log(1 + e^-1)."""
    logits, y = torch.tensor([[1e300, 0.0]], dtype=torch.float64), torch.tensor([0])
    loss = smot_loss(logits, torch.zeros_like(logits), y, torch.zeros(1), 0.5)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    loss = logitnorm_loss(logits, y, 1.0)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)


def test_smot_functions_refuse_complex_tensors():
    """soft_targets refuses a complex eps ("a tensor of torch.complex64"), perturb and CAMProvider complex images;
    the others took the real part: smoothing_eps(100 + 1j) was eps(100), a loss of complex logits the loss of
    their real parts. A TypeError or ValueError naming the argument."""
    z, y = torch.tensor([[1 + 2j, 0j]]), torch.tensor([0])
    for name, call in (("logits", lambda: smot_loss(z, z.real, y, torch.tensor([0.1]), 0.1)),
                       ("logits_masked", lambda: smot_loss(z.real, z, y, torch.tensor([0.1]), 0.1)),
                       ("logits", lambda: soft_cross_entropy(z, torch.tensor([[1.0, 0.0]]))),
                       ("logits", lambda: label_smoothing_ce(z, y)), ("logits", lambda: logitnorm_loss(z, y)),
                       ("t", lambda: smoothing_eps(torch.tensor([100 + 1j]), 10.0)),
                       ("cam", lambda: cam_mask(torch.tensor([[[1 + 5j, 3.0]]]), torch.tensor([2.0])))):
        with pytest.raises((TypeError, ValueError), match=name):
            call()
