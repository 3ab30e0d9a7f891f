"""Datasets and image files: listing, decoding with clear errors, class folders.

Shared by both tracks. Everything that reads a user's image goes through :func:`load_image`,
so an unreadable or truncated file is always reported as one line naming the file."""

from __future__ import annotations

import codecs
import os
import re
import sys
from pathlib import Path
from typing import IO, Iterator

from PIL import Image, UnidentifiedImageError

from clip_smot.common.errors import UserError, first_line
from clip_smot.common.files import exists, given_path, is_file, is_folder, missing_file

__all__ = ["IMAGE_EXTENSIONS", "NoImages", "PIL_FORMATS", "walk_files", "image_names", "iter_images", "list_images", "text_lines", "label_number", "eight_bit", "load_image", "holds_folders", "holds_images", "split_folder", "class_folders", "refuse_loose_images", "escape_path", "unescape_path", "path_from_text", "name_as_text"]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# PIL's readers of those formats: a file's bytes choose among these, whatever its name, and never
# another of PIL's ~40 readers (the PostScript one runs Ghostscript on the file)
PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def _listing(folder: str, seen: set[str]) -> tuple[list[str], list[str]] | None:
    """``(sorted sub-folder names, sorted file names)`` of ``folder``, hidden ones left out (a
    dot-file such as macOS's ``._x.jpg``, a dot-folder such as ``.thumbs/``: never data), told
    apart as ``os.walk`` tells them (a symlinked folder is a folder; no stat per file); None for a
    folder already walked (a symlink loop, a second link to it).

    Raises:
        UserError: ``folder`` cannot be listed (no permission, an I/O error): left out without a
            word, its images would be missing from the set.
    """
    real = os.path.realpath(folder)
    if real in seen:
        return None
    seen.add(real)
    folders, files = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                (folders if is_dir else files).append(entry.name)
    except OSError as e:
        raise UserError(f"{folder}: a folder that cannot be listed ({e.strerror or e})") from None
    return sorted(folders), sorted(files)


def walk_files(root: str | os.PathLike) -> Iterator[tuple[str, list[str]]]:
    """``(folder, sorted file names)`` under ``root``, folder by folder as ``os.walk`` goes (a
    folder, then its sub-folders by name, each with everything under it), leaving out hidden
    files and folders and following symlinked folders, each real folder once (a symlink loop
    ends); see :func:`_listing`. No stat per file: listing ImageNet's 1.28M training images stays
    fast on network file systems.
    """
    seen: set[str] = set()
    stack = [os.fspath(root)]
    while stack:  # (a stack, not recursion: no depth limit)
        folder = stack.pop()
        listing = _listing(folder, seen)
        if listing is not None:
            yield folder, listing[1]
            stack.extend(os.path.join(folder, d) for d in reversed(listing[0]))


def image_names(folder: str | os.PathLike, names: list[str]) -> list[str]:
    """The ``names`` in ``folder`` that are image files: an image extension, and a regular file
    once symlinks are followed (a FIFO named ``x.jpg`` would block its reader forever, a broken
    symlink has no bytes)."""
    return [f for f in names
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(os.path.join(folder, f))]


def _folder_entries(folder: str, seen: set[str]) -> Iterator[tuple[str, bool]]:
    """``(path, is a folder)`` of the sub-folders and image files of ``folder`` (:func:`_listing`,
    :func:`image_names`), sorted by name together."""
    listing = _listing(folder, seen)
    if listing is None:
        return iter(())
    found = [(n, True) for n in listing[0]] + [(n, False) for n in image_names(folder, listing[1])]
    return iter([(os.path.join(folder, n), is_dir) for n, is_dir in sorted(found)])


class NoImages(UserError):
    """A folder walked whole without finding an image file (:func:`iter_images`)."""


def iter_images(root: str | os.PathLike, flag: str = "PATH") -> Iterator[Path]:
    """The files of :func:`list_images`, in its order, one at a time: a folder is listed when the
    walk reaches it, so memory is bounded by the largest folder, not by the number of images.

    The order is that of sorting all the paths (``pathlib`` compares them name by name, from the
    first): within each folder, its image files and sub-folders by name, a sub-folder's files at
    its place.

    Raises:
        UserError: ``root`` is empty, does not exist, or holds no image file (when the walk ends).
    """
    root = given_path(root, flag)
    if not exists(root, flag):
        raise UserError(f"{flag} {root}: no such file or folder")
    if is_file(root, flag):
        yield root
        return
    if not is_folder(root, flag):  # (scandir's "Not a directory" called it a folder that cannot be listed)
        raise UserError(f"{flag} {root}: not a regular file nor a folder (a FIFO, a device)")
    seen: set[str] = set()
    stack, found = [_folder_entries(os.fspath(root), seen)], False
    while stack:  # (a stack, not recursion: no depth limit)
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry[1]:
            stack.append(_folder_entries(entry[0], seen))
        else:
            found = True
            yield Path(entry[0])
    if not found:
        raise NoImages(f"{flag} {root}: no image files found (looked for {', '.join(IMAGE_EXTENSIONS)})")


def list_images(root: str | os.PathLike, flag: str = "PATH") -> list[Path]:
    """Image files under ``root`` (see :func:`walk_files`), sorted; ``root`` may be one file.

    Raises:
        UserError: ``root`` does not exist, or holds no image file.
    """
    return list(iter_images(root, flag))


def label_number(text: str) -> int | None:
    """The integer a list or split file's label field writes (ASCII digits, an optional minus, at
    most 18 digits), or None for anything else: ``str.isdigit`` also takes "³" and "٢", and
    ``int`` refuses the first and a number of over 4,300 digits (tracebacks both)."""
    text = text.strip()
    return int(text) if re.fullmatch(r"-?[0-9]{1,18}", text) else None


def text_lines(path: Path, flag: str, expected: str, what: str = "file") -> Iterator[str]:
    """The lines of a user's list file (a split, an image list), read as UTF-8 (as written,
    whatever the locale says; a byte-order mark at its start is dropped) one at a time, split
    where ``str.splitlines`` splits them.

    Raises:
        UserError: naming the file and the ``expected`` line format: a missing file (at once), a
            binary or unreadable one (when the reading reaches it).
    """
    if not is_file(path, flag):  # (a FIFO would block the reading, a folder cannot be read)
        raise UserError(f"{flag} {path}: {missing_file(path, flag, what)}")
    return _lines(path, flag, expected)


MAX_LINE = 1 << 16  # characters in a line of a list file: far above any path (PATH_MAX is 4096)
_LINES_CHECKED = 4096  # lines read between two checks that the file is the one the reading began


def _changed(f: IO, began: os.stat_result) -> bool:
    """Whether the open file ``f`` was written since ``began`` (its size, modification or change
    time): a list rewritten in place (a shell's ``>``, ``cp``: the same file, truncated and
    written) was read on from the byte where the reading stood, half old and half new."""
    now = os.fstat(f.fileno())
    return (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (began.st_size, began.st_mtime_ns, began.st_ctime_ns)


def _lines(path: Path, flag: str, expected: str) -> Iterator[str]:
    try:
        # ("utf-8-sig": a byte-order mark, which PowerShell 5 and Notepad write, starts no path)
        with open(path, encoding="utf-8-sig") as f:
            began = os.fstat(f.fileno())
            n = 0
            while physical := f.readline(MAX_LINE + 1):  # (a line is held whole: its length is bounded)
                if len(physical) > MAX_LINE and not physical.endswith("\n"):
                    raise UserError(f"{flag} {path}: a line longer than {MAX_LINE} characters (expected {expected} "
                                    "lines)")
                n += 1
                if n % _LINES_CHECKED == 0 and _changed(f, began):
                    break
                yield from physical.splitlines()
            if _changed(f, began):  # (a file replaced by a rename is not: the one opened is read to its end)
                raise UserError(f"{flag} {path}: was written while it was read (another command writing it now?); "
                                "run again once it is written")
    except UnicodeDecodeError:
        raise UserError(f"{flag} {path}: not a text file (expected {expected} lines)") from None
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot be read ({e.strerror or e})") from None


def eight_bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images as 8-bit grey ('L'), scaled: PIL's ``convert`` would clip
    them (a 16-bit mid-grey becomes white, a float image in [0, 1] black)."""
    import numpy as np

    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    if im.mode == "F":
        with np.errstate(invalid="ignore"):  # (a signalling NaN's cast warns: it is a NaN, black below)
            a = np.asarray(im, dtype=np.float64)
        if a[np.isfinite(a)].max(initial=0.0) <= 1.0:  # (a NaN or infinite pixel does not decide the range)
            a = a * 255.0  # a float image in [0, 1]
        # NaN as black, infinities as the ends: NumPy's cast of NaN to uint8 is undefined, and warns
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")
    a = np.asarray(im)  # [H, W] uint16 (I;16) or int32 (I)
    if im.mode.startswith("I;16") or a.max() > 255:
        # 0..65535 -> 0..255 as round(a / 257), in integers (257 is odd: no ties), in place: about
        # 9 bytes a pixel (12 for 32-bit 'I') where float64 took 33 (a 13,000 x 13,000 PNG of
        # 360 KB held 4.8 GB)
        a = np.clip(a, 0, 65535).astype(np.int32)
        a += 128
        a //= 257
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")


def load_image(path: str | os.PathLike, mode: str | None = "RGB", data: bytes | None = None) -> Image.Image:
    """Decode an image fully; a missing, unreadable or truncated file is a UserError.

    Args:
        path: the image file.
        mode: convert to this PIL mode ("RGB"), or None to keep the image's own mode (open_clip's
            evaluation transform resizes first and converts to RGB after, which differs for
            RGBA, palette and 1-bit images; the CLIP scoring path matches it). 16-bit and
            32-bit grey images are scaled to 8-bit grey either way.
        data: the file's bytes, already read (then ``path`` only names it in errors).
    """
    import io

    try:
        with Image.open(path if data is None else io.BytesIO(data), formats=PIL_FORMATS) as im:
            im.load()  # decode now: a truncated JPEG fails here, not later in a worker
            im = eight_bit(im)
            if mode and im.mode == "P" and "transparency" in im.info:
                # the same pixels as straight to RGB, without PIL's two-line warning for each such image
                im = im.convert("RGBA")
            return im.convert(mode) if mode else im.copy()  # (a copy outlives the closed file)
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except UnidentifiedImageError:  # (PIL's message names a bytes buffer by its address: the path says more)
        raise UserError(f"{path}: unreadable or truncated image (not a JPEG, PNG, BMP, GIF, TIFF, WebP or "
                        "PPM/PGM image)") from None
    except Image.DecompressionBombError as e:  # not an OSError: PIL refuses images over ~179 MP
        raise UserError(f"{path}: image too large to decode ({e})") from None
    except MemoryError:
        raise UserError(f"{path}: image too large to decode (out of memory)") from None
    except Exception as e:  # (damaged files make PIL's readers raise TypeError, AttributeError, ... too)
        raise UserError(f"{path}: unreadable or truncated image ({first_line(e) or type(e).__name__})") from None


def holds_folders(path: Path) -> bool:
    """Whether ``path`` is a folder with a (non-hidden) sub-folder: ``DATA/train`` or ``DIR/val``
    as a folder of class folders, not a class of that name (CIFAR-100 has a class ``train``). A
    path that cannot be looked at (a name too long) or listed (no permission) is not one: the
    caller's next check names it."""
    try:
        return os.path.isdir(path) and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
    except OSError:
        return False


def holds_images(root: str | os.PathLike) -> bool:
    """Whether the folder ``root`` holds an image file anywhere below it (hidden files and
    folders are no part of it: an archiver's ``__MACOSX/`` holds only ``._x.jpg`` files). Stops at
    the first image found.

    Raises:
        UserError: a folder below ``root`` cannot be listed (naming it).
    """
    return any(image_names(folder, names) for folder, names in walk_files(root))


def _visible_names(folder: Path) -> list[str]:
    """The names in ``folder`` but hidden ones (``.DS_Store``, macOS's ``._x.jpg``: never data)."""
    return [p.name for p in folder.iterdir() if not p.name.startswith(".")]


def split_folder(root: str | os.PathLike, split: str, flag: str) -> Path:
    """The folder of class folders for ``split`` ("train" or "val") of the folder ``root``:
    ``root/split`` when it is a folder of class folders, else ``root`` itself (a folder of class
    folders, which may include classes named ``train`` or ``val``).

    Raises:
        UserError: ``root/split`` holds tar archives and no class folders (ImageNet's training
            archive unpacks into one tar a class); or the other split of ``root`` is a folder of
            class folders but ``split`` is not (missing, or flat: ImageNet's validation archive
            unpacks its 50,000 images into one folder). ``root`` is a data set's top folder then,
            and reading it as a folder of class folders would take ``train`` and ``val`` for two
            classes and score the training images as test images.
    """
    root = Path(root)
    where = root / split
    if holds_folders(where):
        return where
    other = "val" if split == "train" else "train"
    try:
        names = _visible_names(where) if os.path.isdir(where) else []
    except OSError as e:  # (as the walk of a set names such a folder)
        raise UserError(f"{flag} {root}: {where}: a folder that cannot be listed ({e.strerror or e})") from None
    archives = sorted(n for n in names if n.lower().endswith(".tar") and os.path.isfile(where / n))
    n = len(image_names(where, names))
    if archives and not n:  # (a class folder with a stray tar beside its images is one)
        raise UserError(f"{flag} {root}: {where} holds {len(archives)} tar archive(s) and no class folders (ImageNet's "
                        f"training archive unpacks into one tar a class); unpack each into a folder of its name, "
                        f"e.g. {archives[0]} into {where / archives[0][:-4]}/")
    if not holds_folders(root / other):
        return root
    if not os.path.isdir(where):
        raise UserError(f"{flag} {root}: it holds {other}/<class>/ but no {split}/ folder (expected "
                        f"{where}/<class>/<image>)")
    if not n:
        raise UserError(f"{flag} {root}: {where} holds no class folders (expected {where}/<class>/<image>)")
    raise UserError(f"{flag} {root}: {where} holds {n} image(s) but no class folders (ImageNet's validation "
                    f"archive unpacks so); sort them into {where}/<class>/")


def class_folders(root: str | os.PathLike, flag: str = "--data") -> list[str]:
    """Sorted names of the sub-folders of ``root`` (one per class).

    Raises:
        UserError: ``root`` is missing, or has no sub-folders.
    """
    root = Path(root)
    if not is_folder(root, flag):
        raise UserError(f"{flag} {root}: no such folder")
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:  # (a folder of mode 000: a PermissionError traceback before)
        raise UserError(f"{flag} {root}: a folder that cannot be listed ({e.strerror or e})") from None
    if not names:
        raise UserError(f"{flag} {root}: no class folders inside (expected {root}/<class>/<image>)")
    return names


def refuse_loose_images(root: str | os.PathLike, flag: str = "--data") -> None:
    """Refuse images lying beside the class folders of ``root``: such an image has no class, and
    was left out of the set without a word (a val/ half sorted into class folders scored and
    counted its sorted half alone). Files that are no images (notes.txt) and hidden files are
    no part of a set and are let be.

    Raises:
        UserError: naming ``root``, the count and the first such image.
    """
    root = Path(root)
    loose = sorted(image_names(root, _visible_names(root)))
    if loose:
        raise UserError(f"{flag} {root}: {len(loose)} image(s) beside the class folders, e.g. {loose[0]}: an image "
                        "has no class there; move each into its class folder, or out of this folder")


# what escape_path writes as an escape: the backslash itself, control characters (line breaks, tab),
# the Unicode line and paragraph separators (str.splitlines breaks lines there too) and surrogates
_NOT_PLAIN = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})")


def _escape(c: str) -> str:
    o = ord(c)
    if c == "\\":
        return "\\\\"
    if 0xDC80 <= o <= 0xDCFF:  # a byte that is not part of a UTF-8 character (os.fsdecode's surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    return f"\\u{o:04x}"


def escape_path(path: str | os.PathLike) -> str:
    """A file path as one line of UTF-8 text that :func:`unescape_path` reads back to the same name.

    ``\\`` is written ``\\\\``; a byte of the name that is not part of a UTF-8 character
    ``\\xNN`` (its value); a control character (newline, carriage return, tab, ...), U+2028,
    U+2029 and any other surrogate ``\\uNNNN``; every other character as it is. The bytes of the
    name are read as UTF-8 whatever the locale's file system encoding (ASCII under ``LC_ALL=C``
    with Python's UTF-8 mode off), so that a name is written alike everywhere.
    """
    return _NOT_PLAIN.sub(lambda m: _escape(m.group()), name_as_text(os.fsdecode(path)))


def unescape_path(text: str) -> str:
    """The path that :func:`escape_path` wrote as ``text`` (a ``str`` as :func:`os.fsdecode` gives:
    a byte that is not UTF-8 as a surrogate); a backslash that starts no escape is kept as it is."""
    def one(m: re.Match) -> str:
        e = m.group(1)
        if e == "\\":
            return "\\"
        n = int(e[1:], 16)
        return chr(0xDC00 + n) if e[0] == "x" and n >= 0x80 else chr(n)

    return path_from_text(_ESCAPE.sub(one, text))


# whether the file system encoding is UTF-8 (set as Python starts; ASCII under LC_ALL=C without UTF-8 mode)
_UTF8_FS = codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"


def name_as_text(name: str) -> str:
    """A file or folder name as :func:`os.fsdecode` gives it (a listing's), as a UTF-8 locale's would
    be: a class folder's name is a prompt's text the same in any locale (its bytes read as UTF-8,
    a byte that is no part of a UTF-8 character as a surrogate); as it is where it has no bytes
    there (a lone surrogate other than those)."""
    if _UTF8_FS:
        return name
    try:
        return os.fsencode(name).decode("utf-8", "surrogateescape")
    except UnicodeError:
        return name


def path_from_text(name: str) -> str:
    """A path read from UTF-8 text (a list file, split.txt) as a ``str`` that :func:`os.fsencode`
    makes its UTF-8 bytes of, whatever the locale's file system encoding (under ISO-8859-1
    ``café`` would be the bytes ``caf\\xe9``, another file's name; under ASCII, no name at all).
    The inverse of :func:`name_as_text`."""
    if _UTF8_FS:
        return name
    try:
        return os.fsdecode(name.encode("utf-8", "surrogateescape"))
    except UnicodeError:
        return name
