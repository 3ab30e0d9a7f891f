"""ResNet-track data against hand-written expectations: the CIFAR and ImageNet constants, the
pad-4 crop and flip, the seeded batch order, the per-channel statistics of a folder set."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from clip_smot.common.errors import UserError
from clip_smot.resnet import data as rd


def test_cifar_mean_std_are_the_standard_constants(monkeypatch):
    fake = SimpleNamespace(data=np.zeros((2, 32, 32, 3), np.uint8), classes=["a", "b"], targets=[1, 0])
    monkeypatch.setattr(rd, "_torchvision", lambda name, root, download=True, **kw: fake)
    c10 = rd._cifar("cifar10", True, None)
    c100 = rd._cifar("cifar100", True, None)
    assert c10.mean == pytest.approx((0.4914, 0.4822, 0.4465)) and c10.std == pytest.approx((0.2470, 0.2435, 0.2616))
    assert c100.mean == pytest.approx((0.5071, 0.4865, 0.4409))
    assert c100.std == pytest.approx((0.2673, 0.2564, 0.2762))
    assert c10.labels.tolist() == [1, 0] and c10.input_size == 32 and tuple(c10.images.shape) == (2, 3, 32, 32)
    # the standard CIFAR augmentation: zero padding 4, flips
    assert rd.CIFAR_PAD == 4 and c10.pad == 4 and c10.flip


def test_random_crop_offsets_cover_0_to_2pad_and_half_are_flipped():
    n, size, pad = 4000, 16, 4
    coords = torch.arange(1, size + 1, dtype=torch.uint8)  # 1-based: the zero padding reads 0
    x = torch.stack([coords[:, None].expand(size, size), coords[None, :].expand(size, size)])  # [2, H, W]: row, col
    out = rd.random_crop_flip(x.expand(n, 2, size, size).contiguous(), pad, True, torch.Generator().manual_seed(3))
    row, col, nxt = out[:, 0, 8, 8].long(), out[:, 1, 8, 8].long(), out[:, 1, 8, 9].long()
    flipped = nxt < col
    oy = row - 1 - (8 - pad)  # output row 8 is padded row oy + 8, image row oy + 8 - pad
    ox = torch.where(flipped, col - 1 - (size - 1 - 8 - pad), col - 1 - (8 - pad))
    assert sorted(set(oy.tolist())) == list(range(2 * pad + 1))
    assert sorted(set(ox.tolist())) == list(range(2 * pad + 1))
    for o in (oy, ox):  # uniform: each of the 9 offsets about n / 9 times
        counts = torch.bincount(o, minlength=2 * pad + 1).float() / n
        assert (counts - 1 / (2 * pad + 1)).abs().max() < 0.03
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_mix_seed_gives_each_stream_its_own_seed():
    for seed, epoch, rank in ((0, 0, 0), (1, 0, 0), (0, 1, 0), (5, 3, 1)):
        streams = [(seed, epoch), (seed, epoch, rank), *[(seed, epoch, rank, s) for s in (1, 2, 3)]]
        assert len({rd.mix_seed(*s) for s in streams}) == len(streams), (seed, epoch, rank)
    assert rd.mix_seed(1, 2) != rd.mix_seed(2, 1)  # (seed, epoch) is not (epoch, seed)
    assert rd.mix_seed(7, 4) == rd.mix_seed(7, 4)


def test_tensor_batches_order_and_crops_come_from_their_documented_seeds():
    n, seed, epoch = 13, 11, 2
    labels = torch.arange(n)
    images = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = list(rd.TensorBatches(images, labels, 4, torch.device("cpu"), seed, pad=2, flip=True).epoch(epoch))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(rd.mix_seed(seed, epoch)))
    assert torch.cat([y for _, y in got]).tolist() == perm.tolist()
    g = torch.Generator().manual_seed(rd.mix_seed(seed, epoch, 0, 1))  # one augmentation stream for the epoch
    for i, (x, y) in enumerate(got):
        assert torch.equal(x, rd.random_crop_flip(images[perm[4 * i:4 * i + 4]], 2, True, g))


def test_imagenet200_uses_imagenet_mean_std(tmp_path):
    from clip_smot.common.bundled import imagenet200_wnids

    for w in imagenet200_wnids():
        (tmp_path / "train" / w).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / w / "a.JPEG")
    s = rd.load_id_split("imagenet200", str(tmp_path), "train")
    assert s.mean == pytest.approx((0.485, 0.456, 0.406)) and s.std == pytest.approx((0.229, 0.224, 0.225))
    assert s.input_size == 224 and rd.load_id_split("imagenet200", str(tmp_path), "train", input_size=96).input_size == 96


def test_resize_set_is_bilinear_without_corner_alignment():
    s = rd.SizedImageSet("x", [], torch.zeros(1, dtype=torch.long), 2, (0, 0, 0), (1, 1, 1),
                         images=torch.tensor([[0, 100], [0, 100]], dtype=torch.uint8).expand(1, 3, 2, 2).contiguous())
    out = rd.resize_set(s, 4).images  # samples at -0.25, 0.25, 0.75, 1.25 (edges clamped)
    assert out[0, 0].tolist() == [[0, 25, 75, 100]] * 4 and s.input_size == 4


def test_a_small_folder_is_normalised_per_channel_by_its_train_split(tmp_path):
    colours = {"train": [(255, 0, 51), (0, 0, 51)], "val": [(10, 20, 30)]}
    for split, cs in colours.items():
        for i, c in enumerate(cs):
            (tmp_path / split / f"k{i}").mkdir(parents=True)
            Image.new("RGB", (8, 8), c).save(tmp_path / split / f"k{i}" / "a.png")
    (tmp_path / "val" / "k1").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "val" / "k1" / "a.png")
    for split in ("train", "val"):
        s = rd.load_id_split(None, str(tmp_path), split, input_size=8)
        assert s.mean == pytest.approx((0.5, 0.0, 0.2), abs=1e-6)
        # red: 64 pixels at 1 and 64 at 0 (unbiased std); green and blue constant: the 1e-3 floor
        assert s.std == pytest.approx((math.sqrt(32 / 127), 1e-3, 1e-3), abs=1e-6)


def _noise_files(tmp_path, n):
    files = []
    for i in range(n):
        f = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(f)  # all alike
        files.append(f)
    return files


def test_file_batches_are_shuffled_and_each_image_has_its_own_crop(tmp_path):
    n = 12
    fb = rd.FileBatches(_noise_files(tmp_path, n), torch.arange(n), 16, 4, torch.device("cpu"), seed=0, workers=0)
    orders = [torch.cat([y for _, y in fb.epoch(e)]).tolist() for e in (0, 1)]
    assert all(sorted(o) == list(range(n)) for o in orders)
    assert orders[0] != list(range(n)) and orders[0] != orders[1]
    fb.dataset.epoch = 0
    crops = [fb.dataset[i][0] for i in range(4)]  # the same image: only the random crops differ
    assert not any(torch.equal(crops[0], c) for c in crops[1:])


def test_digits_train_unflipped_with_a_2_pixel_pad(tmp_path, monkeypatch):
    """docs/resnet.md: the digits get no horizontal flip (a mirrored digit is another shape) and a
    random crop with 2 pixels of padding; CIFAR's defaults (flip, pad 4) would pass every other
    test of the digits."""
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path))
    s = rd.load_id_split("digits", None, "train")
    assert s.flip is False and s.pad == 2 and s.input_size == 32
    # the test split is normalised with the training split's statistics, and takes a class list
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "digits-32" / "train").rglob("*.png"))])
    val = rd.load_id_split("digits", None, "val")
    assert val.mean == pytest.approx(tuple((pixels / 255).mean(axis=(0, 1, 2))), abs=1e-5)
    assert (val.mean, val.std) == (s.mean, s.std) and len(val) == 1797 - len(s)
    with pytest.raises(UserError, match="class folders do not match the class list"):
        rd.load_id_split("digits", None, "val", classnames=["zero", "one"])


def test_the_imagenet200_train_transform_is_the_documented_one():
    """docs/resnet.md: random resized crop to 224 with scale 0.08-1 (torchvision's default ratio
    3/4-4/3), and a horizontal flip of probability 1/2, left out for sets that must not flip."""
    import torchvision.transforms as T

    crop, flip = rd._train_transform(224, True).transforms
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (224, 224)
    assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    assert [type(t) for t in rd._train_transform(224, False).transforms] == [T.RandomResizedCrop]


def test_resize_set_leaves_a_set_already_at_its_size_and_a_file_set_as_they_are(monkeypatch):
    monkeypatch.setattr(rd, "physical_memory", lambda: 1)  # any resampling would be refused
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(2, 3, 8, 8)
    s = rd.SizedImageSet("x", [], torch.zeros(2, dtype=torch.long), 8, (0.5,) * 3, (0.5,) * 3, images=images)
    assert rd.resize_set(s, 8).images is images  # nothing resampled, no memory check
    files = rd.SizedImageSet("y", [], torch.zeros(2, dtype=torch.long), 8, (0.5,) * 3, (0.5,) * 3, files=[])
    out = rd.resize_set(files, 24)  # decoded at 24 by its batches
    assert out is files and out.images is None and out.input_size == 24


def test_mix_seed_is_the_documented_polynomial_hash_modulo_2_63_minus_1():
    # h <- (h * 1_000_003 + v + 0x9E3779B9) mod (2**63 - 1) for each v, from h = 0; 0x9E3779B9 = 2654435769
    assert rd.mix_seed(1) == 1 + 2654435769 == 2654435770
    assert rd.mix_seed(1, 2) == 2654435770 * 1_000_003 + 2 + 2654435769 == 2654446387743081
    # past 2**63: 2**63 = 1 (mod 2**63 - 1), so (2**62 + c) * 1_000_003 = 2**62 + 500_001 + 1_000_003 c and
    # mix_seed(2**62, 5) = 2**62 + 500_001 + 5 + 1_000_004 c = 4611686018427387904 + 500006 + 2654446386743076
    assert rd.mix_seed(2**62, 5) == 4614340464814630986


def test_tensor_batches_default_to_cifars_pad_4_crop_with_flips_on_one_rank():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = list(rd.TensorBatches(images, torch.arange(6), 6, torch.device("cpu"), 3).epoch(1))
    g = torch.Generator().manual_seed(rd.mix_seed(3, 1, 0, 1))
    (x, y), = got
    assert torch.equal(x, rd.random_crop_flip(images[y], 4, True, g))
