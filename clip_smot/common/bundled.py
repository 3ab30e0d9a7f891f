"""The class lists and prompt files bundled with the package."""

from __future__ import annotations

from pathlib import Path

from clip_smot.common.errors import UserError

__all__ = ["bundled_file", "bundled_text", "imagenet_wnids", "imagenet_classnames", "imagenet200_wnids", "IMAGENET_MEAN", "IMAGENET_STD"]


_PACKAGE = Path(__file__).resolve().parents[1]  # the clip_smot package


# torchvision's ImageNet normalisation (its ResNet weights; the ResNet track's default too)
IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


def bundled_file(*parts: str) -> Path:
    """A file of the project's ``prompts/`` or ``data_lists/`` folders.

    They sit under ``clip_smot/_data/`` in a wheel, and beside the package in a source checkout
    (the editable install of the README), which has no ``_data/``. An installed package reads its
    own folder alone: beside it is site-packages/ (or a project it was copied into), whose own
    prompts/ would shadow the wheel's files.
    """
    installed = _PACKAGE / "_data"
    path = (installed if installed.is_dir() else _PACKAGE.parent).joinpath(*parts)
    if path.is_file():
        return path
    raise UserError(f"{'/'.join(parts)}: missing from this installation of clip-smot (reinstall it)")


def bundled_text(*parts: str) -> str:
    """The text of :func:`bundled_file`, read as UTF-8 (as written, whatever the locale says; a
    byte-order mark at its start, which Notepad writes, is dropped: it would start the first
    name). A user may edit or replace these files.

    Raises:
        UserError: naming the file, when it is missing, cannot be read or is not UTF-8.
    """
    path = bundled_file(*parts)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None


def _lines(*parts: str) -> list[str]:
    return [line.strip() for line in bundled_text(*parts).splitlines() if line.strip()]


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in class-index order (``data_lists/imagenet1k_wnids.txt``)."""
    return _lines("data_lists", "imagenet1k_wnids.txt")


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet-1k prompt names, in the order of :func:`imagenet_wnids`.

    Raises:
        UserError: the file holds another number of names than the wnid list holds wnids: the
            names are matched to the wnids line by line, and a line added or removed named every
            class after it by its neighbour's name (or, short, failed on the last classes).
    """
    names, wnids = _lines("prompts", "imagenet1k_classnames.txt"), imagenet_wnids()
    if len(names) != len(wnids):
        raise UserError(f"{bundled_file('prompts', 'imagenet1k_classnames.txt')}: {len(names)} class names, not one a "
                        f"line for each of the {len(wnids)} wnids of {bundled_file('data_lists', 'imagenet1k_wnids.txt')}"
                        ", in their order")
    return names


def imagenet200_wnids() -> list[str]:
    """The 200 wnids of the ImageNet-200 benchmark (appendix B.1 of the paper)."""
    return _lines("data_lists", "imagenet200_wnids.txt")
