"""The embedded offline dataset: scikit-learn's digits as image folders, OOD sets from scikit-image.

Both tracks run on it without internet: ``clip-smot fit`` with no ``--data`` and
``clip-smot train --dataset digits``. It is written once as ordinary image folders,

    ROOT/train/<name>/<index>.png     ID training images (75% of the 1797 digits, stratified)
    ROOT/val/<name>/<index>.png       ID test images (the other 25%)
    ROOT/ood/photos/<index>.png       crops of scikit-image's bundled photographs
    ROOT/ood/textures/<index>.png     crops of scikit-image's bundled textures

with class folders named ``zero`` ... ``nine``, so every folder-based code path is exercised.
The 8x8 digits (values 0..16) are scaled to 0..255 and upsampled bicubically to ``size``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from clip_smot.common.errors import UserError
from clip_smot.common.files import cache_root, fsync_file, fsync_folder, read_json
from clip_smot.common.locks import file_lock

__all__ = ["DIGIT_NAMES", "OOD_SOURCES", "default_root", "ensure_digits", "written_folders", "write_digits"]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
OOD_SOURCES = {
    "photos": ("astronaut", "camera", "cat", "chelsea", "clock", "coffee", "coins", "hubble_deep_field",
               "immunohistochemistry", "moon", "retina", "rocket"),
    "textures": ("brick", "cell", "grass", "gravel", "page", "text"),
}
_VERSION = 1


def default_root(size: int) -> Path:
    """Where the digits folders are kept: ``$CLIP_SMOT_CACHE`` or ``~/.cache/clip_smot``."""
    return cache_root() / f"digits-{size}"


def written_folders() -> list[tuple[str, Path]]:
    """The digits folders of every size in the cache, named for
    :func:`~clip_smot.common.files.check_output`'s ``folders``: a run that reads them (fit with
    no ``--data``, train ``--dataset digits``) must not write inside them, where its files would
    become a class, and the cache, already written, would not be rebuilt."""
    root = cache_root()
    return [("the bundled digits folder", p) for p in sorted(root.glob("digits-*")) if p.is_dir()]


def _crops(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    out = []
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        side = int(rng.integers(min(48, h, w), min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(img[y:y + side, x:x + side]).convert("RGB")
        out.append(crop.resize((size, size), Image.BICUBIC))
    return out


def write_digits(root: str | os.PathLike, size: int = 32, n_ood: int = 300, seed: int = 0) -> Path:
    """Write the digits folders and the two OOD sets under ``root`` (replacing what is there).

    They are written into a sibling folder, renamed to ``root`` once whole: a write that fails
    (a full disk, a read-only folder) leaves ``root`` as it was and no partial folder beside it.

    Raises:
        UserError: the folders cannot be written, naming the cache folder and the reason.
    """
    try:
        import skimage.data  # noqa: F401 - (checked before anything is written)
    except ImportError:
        raise UserError("the digits OOD sets need scikit-image: pip install scikit-image") from None
    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # (of a writer killed before it could clean up)
        _write(tmp, size, n_ood, seed)
        _flush(tmp)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
        fsync_folder(root.parent)  # (the rename, too, survives a power loss)
    except OSError as e:
        raise _cache_error(root, e) from None
    finally:  # (gone after the rename; a failed or interrupted write's partial folder goes too)
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _flush(tmp: Path) -> None:
    """Flush every file and folder under ``tmp`` to the disk before it is renamed into place: after a
    power loss the renamed set could hold empty or missing images (delayed allocation), which the
    manifest then refuses as damaged, for the user to remove by hand. (About 0.3 ms a file on an
    ext4 disk: 2,400 files, once.)"""
    for folder, _, names in os.walk(tmp, topdown=False):
        for name in names:
            fsync_file(os.path.join(folder, name))
        fsync_folder(folder)


def _cache_error(root: Path, e: OSError) -> UserError:
    """One line for a digits folder that cannot be written, naming where the cache folder comes from."""
    where = f"$CLIP_SMOT_CACHE {os.environ['CLIP_SMOT_CACHE']}" if os.environ.get("CLIP_SMOT_CACHE") else \
        f"the cache folder {cache_root()}"
    blocker = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    reason = f"{blocker} is a file, not a folder" if blocker else \
        "no space left on the device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return UserError(f"{where}: cannot write the bundled digits to {root} ({reason}); free space there or set "
                     "CLIP_SMOT_CACHE to a writable folder")


def _write(tmp: Path, size: int, n_ood: int, seed: int) -> None:
    """The digits folders and OOD sets, written under ``tmp``."""
    import skimage.data
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(idx, test_size=0.25, stratify=digits.target, random_state=seed)
    for split, ids in (("train", train_idx), ("val", val_idx)):
        for name in DIGIT_NAMES:
            (tmp / split / name).mkdir(parents=True)
        for i in ids:
            img = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)  # [8, 8]
            im = Image.fromarray(img).resize((size, size), Image.BICUBIC).convert("RGB")
            im.save(tmp / split / DIGIT_NAMES[digits.target[i]] / f"{i:04d}.png")
    rng = np.random.default_rng(seed)
    for set_name, sources in OOD_SOURCES.items():
        arrays = []
        for src in sources:
            a = getattr(skimage.data, src)()
            arrays.append(a[..., :3] if a.ndim == 3 else a)
        (tmp / "ood" / set_name).mkdir(parents=True)
        for j, im in enumerate(_crops(arrays, n_ood, size, rng)):
            im.save(tmp / "ood" / set_name / f"{j:04d}.png")
    (tmp / "digits.json").write_text(json.dumps({"version": _VERSION, "size": size, "n_ood": n_ood, "seed": seed,
                                                  "sha256": _manifest(tmp)}))


def _manifest(root: Path) -> str:
    """SHA-256 over every folder and file of the sets under ``root`` (``train/``, ``val/``,
    ``ood/``: their relative paths, and a file's bytes), in sorted order: any image removed, added
    or changed since they were written changes it; other files beside them (a CSV written there)
    are no part of the set. Something that is no regular file (a link, a FIFO) is hashed as its
    name only, never opened."""
    h = hashlib.sha256()
    for top in ("train", "val", "ood"):
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames.sort()
            for name in sorted(filenames) + [d + "/" for d in dirnames]:
                path = os.path.join(dirpath, name.rstrip("/"))
                h.update((os.path.relpath(path, root) + ("/" if name.endswith("/") else "")).encode(
                    "utf-8", "surrogateescape") + b"\0")
                if not name.endswith("/") and stat.S_ISREG(os.lstat(path).st_mode):
                    with open(path, "rb") as f:
                        h.update(hashlib.sha256(f.read()).digest())
                else:
                    h.update(b"-")
    return h.hexdigest()


def _state(root: Path, size: int) -> str:
    """``"written"``: the digits at ``size`` are under ``root`` as they were written (or its marker,
    of an older clip-smot, holds no SHA-256 to tell: used as it is, as a read-only cache must be);
    ``"damaged"``: its marker says so, but an image was changed, added or removed since (a set
    trained and scored on without a word); ``"absent"``: no marker of this version and size."""
    try:
        meta = read_json(root / "digits.json")
    except (OSError, ValueError):
        return "absent"
    if not (isinstance(meta, dict) and meta.get("version") == _VERSION and meta.get("size") == size):
        return "absent"
    if "sha256" not in meta:
        return "written"
    try:
        return "written" if meta["sha256"] == _manifest(root) else "damaged"
    except OSError:
        return "damaged"


def _damaged(root: Path) -> UserError:
    """The one line for digits folders changed since they were written: refused, not written again
    (a rewrite replaces ``root`` whole, and what else is there with it)."""
    return UserError(f"the bundled digits under {root} are not as they were written (an image changed, added or "
                     f"removed in train/, val/ or ood/ since; digits.json holds their SHA-256): remove {root} and "
                     "they are written again on first use")


def ensure_digits(size: int = 32, root: str | os.PathLike | None = None) -> Path:
    """The digits folders at ``size``, written on first use and reused afterwards while they are
    as they were written (a marker records their SHA-256; changed since, they are refused).

    Processes that need them at once (the ranks of a torchrun, a fit and an eval started
    together) take turns: the first writes them, the others wait and reuse them.
    """
    root = Path(root) if root is not None else default_root(size)
    state = _state(root, size)
    if state != "absent":
        if state == "damaged":
            raise _damaged(root)
        return root
    try:
        with file_lock(root.with_name(f".{root.name}.lock")):
            state = _state(root, size)
            if state == "damaged":  # (another process's set, damaged while this one waited)
                raise _damaged(root)
            return root if state == "written" else write_digits(root, size=size)
    except OSError as e:  # (the lock's folder: a file in its place, read-only)
        raise _cache_error(root, e) from None
