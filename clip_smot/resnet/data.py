"""ResNet-track data: CIFAR-10/100, SVHN, ImageNet-200, digits and image folders, and their batches.

Two paths, chosen by the input size:

* **small images** (input size <= 64, ``SMALL_INPUT``: CIFAR, SVHN, digits, small folders) are
  decoded once into one uint8 tensor [N, 3, S, S] that lives on the training device; random
  crop (zero padding 4) and horizontal flip are done there, a whole batch at a time, with a
  device generator: no worker processes and no host synchronisation per step
  (:class:`TensorBatches`);
* **large images** (ImageNet-200, large folders; 224) are decoded by DataLoader workers into
  uint8 tensors (random resized crop + flip for training, resize + centre crop for testing)
  (:class:`FileBatches`).

Either way a batch reaches the training step as uint8 [B, 3, S, S] on the device; it becomes
a float image in [0, 1] there, is masked (SMOT), then normalised with the set's mean/std.

Built-in sets download through torchvision into ``--data ROOT`` or ``$CLIP_SMOT_DATA`` (default
``~/.cache/clip_smot/datasets``). Offline, a missing set is a UserError within seconds: the
files are checked first, then the download host is probed with a 3 s socket timeout
(none at all under ``HF_HUB_OFFLINE=1``, the project's offline switch).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clip_smot.common.bundled import IMAGENET_MEAN, IMAGENET_STD, imagenet200_wnids
from clip_smot.common.device import physical_memory, seeded_cpu_rng
from clip_smot.common.distributed import writes_outputs
from clip_smot.common.errors import UserError
from clip_smot.common.files import is_folder
from clip_smot.common.image_sets import bare_ood_note, image_set
from clip_smot.common.images import class_folders, list_images, load_image, refuse_loose_images
from clip_smot.common.locks import file_lock
from clip_smot.common.network import host_reachable as _reachable
from clip_smot.common.network import no_download
from clip_smot.common.workers import started

__all__ = [
    "BUILTIN_ID",
    "BUILTIN_OOD",
    "CIFAR_PAD",
    "SMALL_INPUT",
    "FileBatches",
    "SizedImageSet",
    "TensorBatches",
    "default_input_size",
    "eval_batches",
    "load_class_folders",
    "load_id_split",
    "load_ood_set",
    "mix_seed",
    "random_crop_flip",
    "resize_set",
    "torchvision_unavailable",
]

BUILTIN_ID = ("cifar10", "cifar100", "imagenet200", "digits")
BUILTIN_OOD = ("svhn", "cifar10", "cifar100", "photos", "textures")
CIFAR_PAD = 4  # zero padding of the random crop, pixels (the standard CIFAR augmentation)
SMALL_INPUT = 64  # input sizes up to this (pixels) are small images: decoded once into one uint8 tensor

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
_HOSTS = {"cifar10": ("www.cs.toronto.edu", 443), "cifar100": ("www.cs.toronto.edu", 443),
          "svhn": ("ufldl.stanford.edu", 80)}


@dataclass
class SizedImageSet:
    """A labelled (or, for OOD, unlabelled: labels -1) image set at one input size.

    ``files``: the image files it was read from (None for torchvision's sets); ``images``: small
    images, decoded (uint8 [N, 3, S, S]). The batches come from ``images`` where it is set, else
    from ``files``, decoded as they go.
    """

    name: str
    classnames: list[str]
    labels: torch.Tensor  # int64 [N]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    images: torch.Tensor | None = None  # uint8 [N, 3, S, S]
    files: list[Path] | None = None
    flip: bool = True  # horizontal flips are a valid augmentation (not for digits)
    pad: int = CIFAR_PAD  # zero padding of the random crop (small images only)

    def __len__(self) -> int:
        return int(self.labels.numel())


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where torchvision sets are kept: ``root``, ``$CLIP_SMOT_DATA`` or ~/.cache/clip_smot/datasets."""
    if root:
        return Path(root)
    base = os.environ.get("CLIP_SMOT_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "clip_smot", "datasets")
    return Path(base)


def _torchvision(name: str, root: Path, download: bool = True, **kwargs):
    """A torchvision dataset, downloaded only when missing, ``download`` allows it (not into a
    folder a file named) and the host answers within 3 s."""
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "svhn": tvd.SVHN}[name]
    try:
        return cls(str(root), download=False, **kwargs)
    except RuntimeError:
        pass  # not there (or corrupted): download below
    if not download:
        raise UserError(f"{name}: {_absent(name, root)}, a folder named by a file (a model's or run's config), "
                        "where nothing is downloaded")
    host = _HOSTS[name]
    if not _reachable(host):
        raise UserError(f"{name}: {_absent(name, root)} and {no_download(host)}; "
                        f"download it on a machine with internet, or point $CLIP_SMOT_DATA (train: --data) "
                        f"to the folder that holds it")
    # torchvision downloads and extracts in place: the ranks of a torchrun take turns, and those
    # after the first find the set there
    try:
        with file_lock(root / f".{name}.lock"):
            try:
                return cls(str(root), download=False, **kwargs)
            except RuntimeError:
                return cls(str(root), download=True, **kwargs)
    except (OSError, RuntimeError) as e:
        raise UserError(f"{name}: download into {root} failed ({e})") from None


def _damaged(name: str, root: Path) -> str | None:
    """How the torchvision set ``name`` that did not load is damaged under ``root`` (its folder or
    file is there: torchvision checks each file's MD5 before it unpickles it), or None: not there."""
    # (torchvision's CIFAR10.base_folder and CIFAR100.base_folder, and SVHN's test file)
    there = root / {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": "test_32x32.mat"}[name]
    try:
        present = there.exists()
    except OSError:  # (a root of a name longer than the system takes, as torchvision's own look-up found: none)
        present = False
    if present:
        return f"incomplete or damaged under {root} ({there.name} is there, but fails torchvision's MD5 checks)"
    return None


def _absent(name: str, root: Path) -> str:
    """How the torchvision set ``name`` that did not load is absent from ``root``: not there, or
    there but damaged (:func:`_damaged`)."""
    return _damaged(name, root) or f"not found under {root}"


def torchvision_unavailable(name: str, root: str | os.PathLike) -> str | None:
    """Why the torchvision set ``name`` (cifar10, cifar100, svhn) cannot be had under ``root``
    now: not there, and its host does not answer (as :func:`_torchvision` would find, minus the
    download); None when it is there or can be downloaded. Its test split is read to tell."""
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "svhn": tvd.SVHN}[name]
    try:
        cls(str(root), download=False, **({"split": "test"} if name == "svhn" else {"train": False}))
        return None
    except RuntimeError:
        pass
    host = _HOSTS[name]
    if _reachable(host):
        return None
    # (a set there but damaged was "not under" it too: the folder a user sees there)
    return f"{name} is {_damaged(name, Path(root)) or f'not under {root}'} and {no_download(host)}"


def _cifar(name: str, train: bool, root: Path, download: bool = True) -> SizedImageSet:
    ds = _torchvision(name, root, download, train=train)
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # [N, 3, 32, 32]
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return SizedImageSet(name, list(ds.classes), torch.as_tensor(ds.targets, dtype=torch.long), 32, mean, std, images=images)


def _svhn(root: Path, download: bool = True) -> SizedImageSet:
    ds = _torchvision("svhn", root, download, split="test")
    images = torch.from_numpy(np.ascontiguousarray(ds.data))  # [N, 3, 32, 32] already
    return SizedImageSet("svhn", [], torch.full((len(images),), -1, dtype=torch.long), 32, CIFAR10_MEAN, CIFAR10_STD,
                    images=images)


def _decode_all(files: Sequence[Path], size: int, crop: bool = False) -> torch.Tensor:
    """Decode and resize images to uint8 [N, 3, size, size] (bilinear): each image squashed to
    size x size, or, with ``crop``, its shorter side resized to ``size`` and the centre square
    kept (the CIFAR OOD benchmark's ``Resize(32), CenterCrop(32)``; the same for a square image)."""
    from PIL import Image

    fit = _ResizeCenterCrop(size, resize=size) if crop else None
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        im = load_image(f)
        if fit is not None:
            im = fit(im)
        elif im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(im)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # [N, 3, size, size]


def _mean_std(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div_(255)  # [N, 3, S, S]
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


def _folder_split(root: Path, flag: str, classnames: Sequence[str] | None = None) -> tuple[list[str], list[Path], torch.Tensor]:
    names = class_folders(root, flag)
    refuse_loose_images(root, flag)
    if classnames is not None and list(names) != list(classnames):
        extra = sorted(set(names) - set(classnames))
        lacking = sorted(set(classnames) - set(names))
        if extra or lacking:
            why = f"unknown: {extra[:5] or 'none'}, missing: {lacking[:5] or 'none'}"
        elif len(set(classnames)) < len(classnames):
            why = "the class list names a class twice"
        else:  # (the model's label k is its k-th name; folders are taken in sorted order)
            why = "the same classes, but the class list is not in the folders' sorted order"
        raise UserError(f"{flag} {root}: class folders do not match the class list ({why})")
    files, labels = _class_files(root, names, flag)
    return list(names), files, labels


def _class_files(root: Path, names: Sequence[str], flag: str) -> tuple[list[Path], torch.Tensor]:
    """The images of ``root/<name>`` for each class name, labelled by the name's index."""
    files, labels = [], []
    for k, name in enumerate(names):
        found = list_images(root / name, flag)
        files += found
        labels += [k] * len(found)
    return files, torch.tensor(labels, dtype=torch.long)


def default_input_size(dataset: str | None, data: str | None) -> int:
    """32 for CIFAR and digits, 224 for ImageNet-200; a folder: 32 if its first training image
    is at most 64 pixels on its longer side, else 224."""
    if dataset in ("cifar10", "cifar100", "digits"):
        return 32
    if dataset == "imagenet200":
        return 224
    root = _train_dir(Path(data), "--data")
    first = list_images(root / class_folders(root, "--data")[0], "--data")[0]  # (not the whole listing)
    return 32 if max(load_image(first).size) <= SMALL_INPUT else 224


def _train_dir(root: Path, flag: str) -> Path:
    if not is_folder(root, flag):
        raise UserError(f"{flag} {root}: no such folder")
    if not (root / "train").is_dir():
        raise UserError(f"{flag} {root}: no train/ folder inside (expected {root}/train/<class>/<image>)")
    return root / "train"


def load_id_split(dataset: str | None, data: str | None, split: str, input_size: int | None = None,
                  classnames: Sequence[str] | None = None, flag: str = "--data", download: bool = True) -> SizedImageSet:
    """The train or test split of an ID set.

    Args:
        dataset: "cifar10", "cifar100", "imagenet200", "digits", or None for a folder.
        data: a folder: ``DIR/train/<class>``, ``DIR/val/<class>`` for ``dataset=None``; the
            torchvision root for CIFAR (optional); the ImageNet folder (train/, val/ of wnid
            folders) for imagenet200 (required).
        split: "train" or "val" (the test split).
        input_size: square size the images are used at (default :func:`default_input_size`); the
            32-pixel built-in sets (CIFAR, digits) are resampled to it (bilinear).
        classnames: if given, the folder's classes must be exactly these (docs/method.md §6).
        flag: the flag named in errors.
        download: whether a torchvision set missing from ``data`` may be downloaded there (False
            when ``data`` was read from a file: a file never chooses where anything is written).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val, got {split!r}")
    if dataset in ("cifar10", "cifar100"):
        return resize_set(_cifar(dataset, split == "train", data_root(data), download), input_size or 32)
    if dataset == "digits":
        from clip_smot.common.digits import ensure_digits

        root = ensure_digits(size=32)
        names, files, labels = _folder_split(root / split, flag, classnames)
        images = _decode_all(files, 32)
        # Statistics of the training split, so train and test are normalised alike.
        stats = images if split == "train" else _decode_all(_folder_split(root / "train", flag)[1], 32)
        mean, std = _mean_std(stats)
        # (files too: eval checks that no OOD set holds one of them)
        return resize_set(SizedImageSet("digits", names, labels, 32, mean, std, images=images, files=files, flip=False,
                                        pad=2), input_size or 32)
    if dataset == "imagenet200":
        if not data:
            raise UserError("--dataset imagenet200 needs --data IMAGENET_DIR (with train/<wnid> and val/<wnid>)")
        wnids = imagenet200_wnids()
        root = Path(data) / split
        if not is_folder(root, flag):
            raise UserError(f"{flag} {data}: no {split}/ folder inside (expected {data}/{split}/<wnid>/*.JPEG)")
        missing = [w for w in wnids if not (root / w).is_dir()]
        if missing:
            raise UserError(f"{flag} {root}: class folder {missing[0]} of ImageNet-200 is missing")
        # (a val/ half sorted into wnid folders, the rest of ImageNet's flat files beside them: the
        # sorted half alone was read, its classes short of images, without a word)
        refuse_loose_images(root, flag)
        files, labels = _class_files(root, wnids, flag)
        return SizedImageSet("imagenet200", wnids, labels, input_size or 224, IMAGENET_MEAN, IMAGENET_STD, files=files)
    if dataset is not None:
        raise UserError(f"--dataset {dataset}: unknown (choose from {', '.join(BUILTIN_ID)}, or --data DIR)")
    if not data:
        raise UserError("give --dataset NAME or --data DIR")
    base = Path(data)
    _train_dir(base, flag)
    root = base / split
    if not root.is_dir():
        raise UserError(f"{flag} {base}: no {split}/ folder inside (expected {base}/{split}/<class>/<image>)")
    names, files, labels = _folder_split(root, flag, classnames)
    size = input_size or default_input_size(None, data)
    name = base.name or str(base)
    if size <= SMALL_INPUT:
        images = _decode_all(files, size)
        stats = images if split == "train" else _decode_all(_folder_split(base / "train", flag)[1], size)
        mean, std = _mean_std(stats)
        return SizedImageSet(name, names, labels, size, mean, std, images=images, files=files)
    return SizedImageSet(name, names, labels, size, IMAGENET_MEAN, IMAGENET_STD, files=files)


def load_class_folders(root: str | os.PathLike, classnames: Sequence[str], input_size: int, flag: str) -> SizedImageSet:
    """A labelled folder ``root/<class>/<image>`` whose classes must be exactly ``classnames``."""
    root = Path(root)
    names, files, labels = _folder_split(root, flag, classnames)
    return _imagenet_normalised(root.name or str(root), names, labels, input_size, files)


def _imagenet_normalised(name: str, classnames: list[str], labels: torch.Tensor, size: int,
                         files: list[Path], crop: bool = False) -> SizedImageSet:
    """An evaluation set of ``files`` with ImageNet's mean/std: small images decoded now (``crop``:
    see :func:`_decode_all`), larger ones by the workers of :func:`eval_batches` (resize + centre crop)."""
    if size <= SMALL_INPUT:
        return SizedImageSet(name, classnames, labels, size, IMAGENET_MEAN, IMAGENET_STD,
                             images=_decode_all(files, size, crop), files=files)
    return SizedImageSet(name, classnames, labels, size, IMAGENET_MEAN, IMAGENET_STD, files=files)


def resize_set(s: SizedImageSet, size: int, chunk: int = 1024) -> SizedImageSet:
    """``s`` at input size ``size``, in place: decoded images resampled (bilinear, rounded back
    to uint8, ``chunk`` images at a time); a set of files is decoded at ``s.input_size`` by its
    batches anyway.

    Raises:
        UserError: the resampled set would fill more than half of this machine's memory (checked
            before any of it is allocated).
    """
    if s.images is not None and s.images.shape[-1] != size:
        need, memory = len(s.images) * 3 * size * size, physical_memory()
        if memory is not None and need > memory // 2:
            raise UserError(f"input size {size}: the {len(s.images)} images of {s.name} would take {need / 2**30:.1f} "
                            f"GiB at that size, more than half of this machine's {memory / 2**30:.1f} GiB; choose a "
                            "smaller --input-size")
        s.images = torch.cat([F.interpolate(part.float(), size=(size, size), mode="bilinear", align_corners=False)
                              .round().clamp(0, 255).to(torch.uint8)
                              for part in s.images.split(chunk)])  # [N, 3, size, size]
    s.input_size = size
    return s


def load_ood_set(name: str, where: str | None, input_size: int, data: str | None = None,
                 download: bool = True) -> SizedImageSet:
    """An OOD set: ``where`` is a folder (searched recursively), an image list (``LIST.txt`` or
    ``ROOT::LIST.txt``, as :func:`clip_smot.common.image_sets.image_set` reads it), or None for the built-in set
    ``name`` (svhn, cifar10, cifar100: their test splits; photos, textures: the digits OOD sets;
    a bare ``--ood NAME`` on the command line). The images of a folder or list are resized and
    centre-cropped to ``input_size``: up to 64 pixels, the shorter side to ``input_size`` (the
    CIFAR OOD benchmark's ``Resize(32), CenterCrop(32)``), above, to ``input_size * 256 / 224``.
    ``data`` and ``download``: as for :func:`load_id_split`.
    """
    if where is None:
        key = name.lower()
        said = bare_ood_note(name, BUILTIN_OOD)
        if said is not None and key not in BUILTIN_OOD:
            raise UserError(said)
        if said is not None and writes_outputs():
            print(said, file=sys.stderr)
        if key not in BUILTIN_OOD:
            raise UserError(f"--ood {name}: not a built-in OOD set ({', '.join(BUILTIN_OOD)}); give {name}=DIR "
                            "for a folder")
        if key == "svhn":
            s = _svhn(data_root(data), download)
        elif key in ("cifar10", "cifar100"):
            s = _cifar(key, False, data_root(data), download)
        else:
            from clip_smot.common.digits import ensure_digits

            files = list_images(ensure_digits(size=32) / "ood" / key, "--ood")
            s = SizedImageSet(key, [], torch.full((len(files),), -1), 32, IMAGENET_MEAN, IMAGENET_STD,
                              images=_decode_all(files, 32), files=files)
        s.name = name
        resize_set(s, input_size)
        s.labels = torch.full((len(s.labels),), -1, dtype=torch.long)
        return s
    files = image_set(name, where).paths  # a folder or an image list, as in the CLIP track
    # centre-cropped, not squashed: a non-square image (Textures) is seen as the CIFAR OOD benchmark sees it
    return _imagenet_normalised(name, [], torch.full((len(files),), -1, dtype=torch.long), input_size, files,
                                crop=True)


# ---------------------------------------------------------------------------------------------
# Batches.


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, for a whole batch on its device.

    Args:
        x: uint8 (or float) images [B, C, H, W].
        pad: zero padding on each side; the crop offset is uniform in [0, 2 * pad].
        flip: flip each image horizontally with probability 1/2.
        generator: a generator on ``x``'s device.

    Returns:
        [B, C, H, W] images (channels-last strides), same dtype.
    """
    B, C, H, W = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x  # [B, C, H + 2p, W + 2p]
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=dev)
    rows = oy[:, None] + torch.arange(H, device=dev)  # [B, H]
    cols = ox[:, None] + torch.arange(W, device=dev)  # [B, W]
    if flip:
        flipped = torch.rand(B, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    b = torch.arange(B, device=dev)[:, None, None]
    out = xp[b, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]: advanced indices first
    return out.permute(0, 3, 1, 2)  # [B, C, H, W]


def mix_seed(*ints: int) -> int:
    """A distinct, stable seed for ``(seed, epoch[, rank[, stream]])``, without Python's salted hash.

    What each seeds: ``(seed, epoch)``, the order of :class:`TensorBatches` (the same on every
    rank); ``(seed, epoch, rank)``, the order of :class:`FileBatches`; stream 1, the augmentation
    (TensorBatches' generator; ``(seed, epoch, image, 1)``, FileBatches' crops of an image); streams 2
    and 3, the SMOT thresholds and noise of :func:`clip_smot.resnet.train.train_epoch`.
    """
    h = 0
    for v in ints:
        h = (h * 1_000_003 + int(v) + 0x9E3779B9) % (2**63 - 1)
    return h


class TensorBatches:
    """Training batches from a uint8 image tensor kept on the device.

    Each epoch draws one permutation (the same on every rank, seeded by ``(seed, epoch)``),
    takes this rank's share (``perm[rank::world]``, cut to equal length so every rank takes
    the same number of steps), and augments each batch on the device with a generator seeded
    by ``(seed, epoch, rank)``: an epoch's batches depend only on these numbers, so a resumed
    run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device,
                 seed: int, pad: int = CIFAR_PAD, flip: bool = True, rank: int = 0, world: int = 1) -> None:
        self.images = images.to(device)  # uint8 [N, 3, S, S]
        self.labels = labels.to(device)  # int64 [N]
        self.batch_size, self.device, self.seed = batch_size, device, seed
        self.pad, self.flip, self.rank, self.world = pad, flip, rank, world
        self.per_rank = len(labels) // world

    def __len__(self) -> int:
        return -(-self.per_rank // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x uint8 [B, 3, S, S], y [B])`` on the device for one epoch."""
        g = torch.Generator(device=self.device)
        g.manual_seed(mix_seed(self.seed, epoch))
        perm = torch.randperm(len(self.labels), generator=g, device=self.device)
        mine = perm[self.rank::self.world][: self.per_rank]
        g.manual_seed(mix_seed(self.seed, epoch, self.rank, 1))
        for i in range(0, self.per_rank, self.batch_size):
            idx = mine[i:i + self.batch_size]
            yield random_crop_flip(self.images[idx], self.pad, self.flip, g), self.labels[idx]


class _FileDataset(torch.utils.data.Dataset):
    """Decoded, transformed images ``(uint8 [3, S, S], label, error)``: an unreadable file yields
    its error message rather than an exception, which a DataLoader worker would re-raise with a
    multi-line traceback; :func:`_loaded` raises it in the main process as one line.

    With a ``seed``, a random transform draws image ``i``'s crop and flip from ``(seed, epoch, i)``
    alone (set :attr:`epoch` before each epoch): not from the process that decodes it, so the
    number of DataLoader workers and of torchrun processes does not change them, and a resumed
    run may take another ``--workers``.
    """

    def __init__(self, files: Sequence[Path], labels: torch.Tensor, transform, size: int,
                 seed: int | None = None) -> None:
        self.files, self.labels, self.transform, self.size = list(files), labels, transform, size
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import torchvision.transforms.functional as TF

        try:
            img = load_image(self.files[i])
        except UserError as e:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), self.labels[i], str(e)
        if self.seed is None:
            img = self.transform(img)
        else:
            with seeded_cpu_rng(mix_seed(self.seed, self.epoch, i, 1)):  # (torchvision draws from the CPU one)
                img = self.transform(img)
        return TF.pil_to_tensor(img), self.labels[i], ""  # uint8 [3, S, S]


def _loaded(loader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of a DataLoader over a :class:`_FileDataset`, on ``device``; the first
    unreadable image of a batch stops the run as a UserError naming it."""
    for x, y, errors in started(loader):
        bad = [e for e in errors if e]
        if bad:
            raise UserError(bad[0])
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _train_transform(size: int, flip: bool):
    import torchvision.transforms as T

    ops = [T.RandomResizedCrop(size)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops)


class _ResizeCenterCrop:
    """``Resize(resize)`` (default ``size * 256 / 224``) then ``CenterCrop(size)`` (torchvision's,
    bilinear), with the crop's region resampled straight from the image for images more than twice as long as wide:
    the same sampling grid and filter, so the same pixels (up to one level of 255 of rounding),
    without first enlarging a thin strip (a 1 x 5000 image would become 256 x 1,280,000 pixels,
    1 GB, before the crop)."""

    def __init__(self, size: int, resize: int | None = None) -> None:
        import torchvision.transforms as T

        self.size, self.resize = size, resize or round(size * 256 / 224)
        self.plain = T.Compose([T.Resize(self.resize), T.CenterCrop(size)])

    def __call__(self, img):
        from PIL import Image

        w, h = img.size
        if max(w, h) <= 2 * min(w, h):
            return self.plain(img)
        # torchvision: the shorter side to `resize`, the longer to int(resize * long / short), then
        # a centre crop at round((side - size) / 2); here the crop's box in the image's coordinates
        nw, nh = (self.resize, self.resize * h // w) if w <= h else (self.resize * w // h, self.resize)
        left, top = int(round((nw - self.size) / 2.0)), int(round((nh - self.size) / 2.0))
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy)
        return img.resize((self.size, self.size), Image.BILINEAR, box=box)


def _eval_transform(size: int):
    import torchvision.transforms as T

    if size <= SMALL_INPUT:
        return T.Resize((size, size))
    return _ResizeCenterCrop(size)


class FileBatches:
    """Training batches decoded by DataLoader workers (random resized crop + flip), uint8.

    Under DDP a DistributedSampler (``set_epoch`` each epoch) gives each rank its share.
    """

    def __init__(self, files: Sequence[Path], labels: torch.Tensor, input_size: int, batch_size: int,
                 device: torch.device, seed: int, workers: int, flip: bool = True, rank: int = 0, world: int = 1) -> None:
        self.dataset = _FileDataset(files, labels, _train_transform(input_size, flip), input_size, seed)
        self.batch_size, self.device, self.seed, self.workers = batch_size, device, seed, workers
        self.rank, self.world = rank, world
        self.sampler = None
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

            self.sampler = DistributedSampler(self.dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                              drop_last=True)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, epoch, self.rank))  # seeds the shuffle (the crops: _FileDataset)
        self.dataset.epoch = epoch  # (the workers are started each epoch, with this copy of the data set)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.sampler is None, sampler=self.sampler,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", generator=g,
            persistent_workers=False, prefetch_factor=4 if self.workers else None)
        yield from _loaded(loader, self.device)


def eval_batches(s: SizedImageSet, batch_size: int, device: torch.device, workers: int = 0
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Test-time batches ``(x uint8 [B, 3, S, S], y [B])`` on ``device``, in the set's order."""
    if s.images is not None:
        for i in range(0, len(s), batch_size):
            yield s.images[i:i + batch_size].to(device), s.labels[i:i + batch_size].to(device)
        return
    ds = _FileDataset(s.files, s.labels, _eval_transform(s.input_size), s.input_size)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    yield from _loaded(loader, device)
