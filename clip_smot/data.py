"""Datasets and image files: listing, decoding with clear errors, class folders.

Shared by both tracks. Everything that reads a user's image goes through :func:`load_image`,
so an unreadable or truncated file is always reported as one line naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "class_folders", "list_images", "load_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(root: str | os.PathLike, flag: str = "PATH") -> list[Path]:
    """Image files under ``root`` (searched recursively), sorted; ``root`` may be one file.

    Raises:
        UserError: ``root`` does not exist, or holds no image file.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"{flag} {root}: no such file or folder")
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise UserError(f"{flag} {root}: no image files found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image fully into RGB; a missing, unreadable or truncated file is a UserError."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated JPEG fails here, not later in a worker
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: unreadable or truncated image ({e})") from None
    except Image.DecompressionBombError as e:  # not an OSError: PIL refuses images over ~179 MP
        raise UserError(f"{path}: image too large to decode ({e})") from None


def class_folders(root: str | os.PathLike, flag: str = "--data") -> list[str]:
    """Sorted names of the sub-folders of ``root`` (one per class).

    Raises:
        UserError: ``root`` is missing, or has no sub-folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{flag} {root}: no such folder")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise UserError(f"{flag} {root}: no class folders inside (expected {root}/<class>/<image>)")
    return names
