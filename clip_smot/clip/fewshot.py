"""Few-shot data for the CLIP track: class lists, the seeded split file, images decoded once.

Two folder layouts (docs/method.md §2):

* **ImageNet**: ``DATA/train/<wnid>/*`` where every class folder is an ImageNet-1k wnid. The
  class order is the ImageNet-1k wnid order (``data_lists/imagenet1k_wnids.txt``) restricted to
  the wnids present, and the prompt names come from ``prompts/imagenet1k_classnames.txt``. With
  all 1000 folders (the paper's setting) the labels are the ImageNet-1k indices; with a subset
  they are the positions in the restricted list, and :attr:`FewShotClasses.imagenet_index` keeps
  the mapping back to the 1000-way index (used to pick the CAM class of an ImageNet ResNet).
* **Any other folder dataset**: ``DATA/train/<class>/*`` or ``DATA/<class>/*``; the sorted
  folder names are both the classes and the prompt names.

The split file (``split.txt``) has one line per chosen image, ``relative/path<TAB>label``, the
path relative to the class-folder root, the label the class index in the run's class order;
lines of a drawn split sorted by label, then path (a ``--split`` file keeps its own order, the
order of the images in training); the path escaped where it is not plain text (a backslash, a
line break or another control character, a byte that is not UTF-8). See ``data_lists/README.md``.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clip_smot.common import tensor_images as ti
from clip_smot.common.bundled import imagenet_classnames, imagenet_wnids
from clip_smot.common.errors import UserError
from clip_smot.common.files import exists, is_folder, leaves_root
from clip_smot.common.images import (
    class_folders,
    escape_path,
    image_names,
    label_number,
    load_image,
    name_as_text,
    split_folder,
    text_lines,
    unescape_path,
    walk_files,
)
from clip_smot.common.shards import read_image_bytes

__all__ = [
    "FewShotClasses",
    "decode_and_hash",
    "decode_images",
    "draw_split",
    "imagenet_classnames",
    "imagenet_wnids",
    "read_split",
    "resolve_classes",
    "resolve_train_root",
    "split_text",
]


@dataclass(frozen=True)
class FewShotClasses:
    """The classes of a folder dataset.

    Attributes:
        root: the folder holding one sub-folder per class.
        folders: class folder names, in label order (wnids for ImageNet).
        classnames: the names used in the prompts, in label order.
        imagenet_index: for ImageNet data, the ImageNet-1k index of each label; else None.
    """

    root: Path
    folders: tuple[str, ...]
    classnames: tuple[str, ...]
    imagenet_index: tuple[int, ...] | None


def resolve_train_root(data: str | os.PathLike, flag: str = "--data") -> Path:
    """``DATA/train`` when it is a folder of class folders, else ``DATA`` itself (a folder of
    class folders, which may include a class named ``train``); refused when ``DATA`` holds
    ``val/<class>/`` and no ``train/`` of class folders (:func:`split_folder`)."""
    data = Path(data)
    if not exists(data, flag):
        raise UserError(f"{flag} {data}: no such folder")
    if not is_folder(data, flag):
        raise UserError(f"{flag} {data}: not a folder (expected DATA/train/<class>/<image>)")
    return split_folder(data, "train", flag)


def resolve_classes(root: str | os.PathLike, flag: str = "--data") -> FewShotClasses:
    """Class folders, prompt names and (for ImageNet wnids) the 1000-way index of ``root``."""
    root = Path(root)
    folders = class_folders(root, flag)
    wnids = imagenet_wnids()
    index = {w: i for i, w in enumerate(wnids)}
    if all(f in index for f in folders):
        names = imagenet_classnames()
        order = sorted(folders, key=index.__getitem__)  # ImageNet-1k order, restricted
        return FewShotClasses(root, tuple(order), tuple(names[index[f]] for f in order), tuple(index[f] for f in order))
    # other folders: the folder name is the class name, "_" read as a space (as CoOp and zero-shot eval do)
    return FewShotClasses(root, tuple(folders), tuple(name_as_text(f).replace("_", " ") for f in folders), None)


def _class_images(root: Path, folder: str) -> list[str]:
    """Sorted image paths of one class, relative to ``root`` (POSIX separators; see
    :func:`~clip_smot.common.images.walk_files` for what is left out and followed)."""
    out = []
    for dirpath, filenames in walk_files(root / folder):
        rel = Path(os.path.relpath(dirpath, root)).as_posix()
        out += [f"{rel}/{f}" for f in image_names(dirpath, filenames)]
    return sorted(out)


def draw_split(classes: FewShotClasses, shots: int, seed: int) -> list[tuple[str, int]]:
    """Draw ``shots`` images per class: a seeded permutation of each class's sorted listing.

    Returns:
        ``(relative path, label)`` pairs sorted by label, then path.

    Raises:
        UserError: a class has fewer than ``shots`` images (the message names the class).
    """
    rng = np.random.default_rng(seed)
    split: list[tuple[str, int]] = []
    for label, folder in enumerate(classes.folders):
        files = _class_images(classes.root, folder)
        if len(files) < shots:
            raise UserError(
                f"--shots {shots}: class {folder!r} ({classes.root / folder}) has only {len(files)} "
                f"image{'' if len(files) == 1 else 's'}"
            )
        chosen = rng.permutation(len(files))[:shots]
        split += sorted((files[i], label) for i in chosen)
    return split


def split_text(split: list[tuple[str, int]]) -> str:
    """The split file's text: ``relative/path<TAB>label`` per line, the path as
    :func:`~clip_smot.common.images.escape_path` writes it (any file name reads back, a line break in it too)."""
    return "".join(f"{escape_path(path)}\t{label}\n" for path, label in split)


def read_split(path: str | os.PathLike, classes: FewShotClasses, flag: str = "--split") -> list[tuple[str, int]]:
    """Read a split file and check it against the dataset's classes and files.

    Raises:
        UserError: missing file, a malformed line, a label out of range or not matching the
            image's class folder, an image that is not there or is listed twice.
    """
    path = Path(path)
    split, lines = [], {}  # lines: the line of each image listed so far
    for n, line in enumerate(text_lines(path, flag, "'relative/path<TAB>label'"), 1):
        # (a byte-order mark also starts a later line where `cat` joined splits saved by Notepad, as in
        # an image list: the line named "\ufeffant/b.jpg", not in the class folder ant, an invisible refusal)
        line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        rel, sep, label = line.rpartition("\t")
        y = label_number(label) if sep else None
        if y is None:
            raise UserError(f"{flag} {path}:{n}: expected 'relative/path<TAB>label', got {line!r}")
        shown, rel = rel, unescape_path(rel)  # (messages show the path as written: one line)
        if not 0 <= y < len(classes.folders):
            raise UserError(f"{flag} {path}:{n}: label {y} is out of range for {len(classes.folders)} classes")
        if not _file_name(rel):
            raise UserError(f"{flag} {path}:{n}: {shown} is not a file name (a NUL character or a lone surrogate)")
        if leaves_root(rel):  # the image must lie in its class folder
            raise UserError(f"{flag} {path}:{n}: {shown} leaves the class folder (absolute, or with '..')")
        folder = rel.split("/", 1)[0]
        if folder != classes.folders[y]:
            raise UserError(f"{flag} {path}:{n}: {shown} is not in class {y}'s folder {escape_path(classes.folders[y])}")
        try:
            found = (classes.root / rel).is_file()
        except OSError as e:  # (pathlib raises for a name longer than the file system takes)
            raise UserError(f"{flag} {path}:{n}: {classes.root}/{shown}: {e.strerror or e}") from None
        if not found:
            raise UserError(f"{flag} {path}:{n}: {classes.root}/{shown}: no such image file")
        key = os.path.normpath(rel)  # (one file however it is spelled: a/x, a/./x, a//x)
        if key in lines:  # (it would be trained on as often as it is listed)
            raise UserError(f"{flag} {path}:{n}: {shown} is listed on line {lines[key]} already")
        lines[key] = n
        split.append((rel, y))
    if not split:
        raise UserError(f"{flag} {path}: the split file lists no images")
    return split


def _file_name(rel: str) -> bool:
    """Whether ``rel`` can name a file: no NUL, and encodable as the file system's bytes."""
    try:
        return "\0" not in rel and bool(os.fsencode(rel))
    except UnicodeEncodeError:
        return False


def _geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(new width, new height, left, top): the shorter side resized to ``size``, the central square."""
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def _pil_square(path: Path, data: bytes, size: int) -> torch.Tensor:
    """Decode ``data`` (the bytes of ``path``) with PIL, resize the shorter side to ``size``, take
    the central square: [3, size, size] uint8."""
    from PIL import Image

    im = load_image(path, data=data)
    w, h = im.size
    nw, nh, left, top = _geometry(w, h, size)
    if ti.is_strip(w, h):  # (a 1 x 20000 one resized whole would hold 1.5 GB): the square alone
        box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)  # in source pixels
        im = im.resize((size, size), Image.BICUBIC, box=box)
    else:
        im = im.resize((nw, nh), Image.BICUBIC).crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)  # [3, S, S]


def _square_uint8(path: Path, size: int) -> tuple[torch.Tensor, str]:
    """:func:`_pil_square` of a file and the hex SHA-256 of its bytes (read once, for both)."""
    data = read_image_bytes(path)
    return _pil_square(path, data, size), hashlib.sha256(data).hexdigest()


def _jpeg_squares(paths: list[Path], datas: list[bytes], size: int, device: torch.device) -> list[torch.Tensor]:
    """The squares of :func:`_pil_square` on ``device``, JPEGs decoded there with ``decode_jpeg`` (one
    batch; the images of one size resized together, one call a size); other files, JPEGs it cannot
    read and strips (no JPEG for :func:`~clip_smot.common.tensor_images.is_jpeg`) by PIL."""
    jpegs = [i for i, d in enumerate(datas) if ti.is_jpeg(d)]
    decoded = ti.decode_jpegs([torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpegs], device)
    whole = {i: image for i, image in zip(jpegs, decoded) if image is not None}

    def squares(same: torch.Tensor) -> torch.Tensor:  # [m, 3, h, w] of one size -> [m, 3, S, S]
        nw, nh, left, top = _geometry(same.shape[-1], same.shape[-2], size)
        return ti.resize_uint8(same, (nh, nw))[..., top : top + size, left : left + size]

    done = ti.by_size(whole, squares)
    return [done[i] if i in done else _pil_square(p, d, size).to(device) for i, (p, d) in enumerate(zip(paths, datas))]


def _decoded(paths: list[Path], size: int, workers: int, device: torch.device | None
             ) -> tuple[list[torch.Tensor], list[str]]:
    """Squares and SHA-256s of ``paths``: by PIL in ``workers`` threads, or with ``device``, read
    in threads and decoded on the device, a batch at a time (the bytes of one batch in memory)."""
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    run = pool.map if pool is not None else map  # PIL decodes and hashlib hashes with the GIL released
    try:
        if device is None or not ti.has_decode_jpeg():  # (torchvision deprecates decode_jpeg since 0.29)
            decoded = list(run(lambda p: _square_uint8(p, size), paths))
            return [x for x, _ in decoded], [d for _, d in decoded]
        squares, digests = [], []
        for i in range(0, len(paths), _JPEG_BATCH):
            batch = paths[i : i + _JPEG_BATCH]
            datas = list(run(read_image_bytes, batch))
            digests += list(run(lambda d: hashlib.sha256(d).hexdigest(), datas))
            squares += _jpeg_squares(batch, datas, size, torch.device(device))
        return squares, digests
    finally:
        if pool is not None:
            pool.shutdown()


_JPEG_BATCH = 256  # files decoded by one decode_jpeg call


def decode_and_hash(root: Path, files: list[str], size: int, workers: int = 4,
                    device: torch.device | str | None = None) -> tuple[torch.Tensor, str]:
    """Decode every image once into one uint8 tensor [N, 3, size, size], and hash the files' bytes.

    Each image is resized so its shorter side is ``size``, then its central square is kept:
    the random resized crops of training are drawn from that square (kept on the device).

    Args:
        device: decode the JPEGs with ``torchvision.io.decode_jpeg`` on this device (fit passes
            its CUDA device), the images returned there; None, or a torchvision without
            ``decode_jpeg``: PIL for every file, on the CPU.

    Returns:
        ``(images, sha256)``: the SHA-256 is that of the listing ``sha256sum`` prints for
        ``files`` in their order (``<hex digest>  <relative path>`` per line, run in ``root``):
        it changes when any image's bytes do, under the same names, whichever decoder ran.

    Raises:
        UserError: an unreadable or truncated image (the message names the file).
    """
    squares, digests = _decoded([root / f for f in files], size, workers, device)
    # the names as the file system's bytes (a name that is not UTF-8 has no str encoding)
    listing = b"".join(f"{digest}  ".encode() + os.fsencode(f) + b"\n" for f, digest in zip(files, digests))
    return torch.stack(squares), hashlib.sha256(listing).hexdigest()  # [N, 3, S, S]


def decode_images(root: Path, files: list[str], size: int, workers: int = 4) -> torch.Tensor:
    """The images of :func:`decode_and_hash` alone: uint8 [N, 3, size, size]."""
    return decode_and_hash(root, files, size, workers)[0]
