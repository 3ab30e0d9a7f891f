"""Evaluation image sets: ID folders with class labels, OOD folders, OpenOOD image lists.

* ID folder, ImageNet layout: ``DIR/val/<wnid>/*.JPEG`` or the ``val`` folder itself. A
  sub-folder's label is the index of its class in the prompt's class list: a wnid is mapped to
  its name through ``data_lists/imagenet1k_wnids.txt`` + ``prompts/imagenet1k_classnames.txt``
  (or taken by position when the class list is ImageNet-1k's own); any other folder name must
  equal a class name (``_`` read as a space). When a folder matches no class, the set has no
  labels (and no ID accuracy is reported).
* OOD folder: any layout, searched recursively (the MOS sets as people store them:
  ``iNaturalist/images/``, ``SUN/images/``, ``Places/images/``, ``dtd/images/<class>/``).
* Image list (OpenOOD's ``benchmark_imglist`` files): one ``relative/path label`` per line.
  ``ROOT::LIST.txt`` resolves the paths against ROOT; a bare ``LIST.txt`` against the list's
  own folder. For an ID list the labels are class indices in the prompt's class order.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

from clip_smot.common.bundled import imagenet_classnames, imagenet_wnids
from clip_smot.common.errors import UserError
from clip_smot.common.files import exists, file_key, given_path, is_file, is_folder, leaves_root, path_stat
from clip_smot.common.images import (
    IMAGE_EXTENSIONS,
    NoImages,
    class_folders,
    holds_images,
    iter_images,
    label_number,
    list_images,
    name_as_text,
    path_from_text,
    split_folder,
    text_lines,
    walk_files,
)
from clip_smot.common.shards import is_shard, list_members

__all__ = ["ImageSet", "bare_ood_note", "check_apart", "check_train_apart", "stray_wnids", "id_class_folders", "id_set", "imagenet_wnid_names", "folder_classnames", "folder_names", "image_files", "image_set",
           "image_list_file", "iter_image_files", "iter_image_list", "read_image_list"]


@dataclass
class ImageSet:
    """A named set of image files, with class labels when known.

    Attributes:
        name: the set's name (``id`` or the OOD name given on the command line).
        paths: image files, sorted.
        labels: class index per file (in the prompt's class order), or None.
        note: why there are no labels, when there are none (for the report).
    """

    name: str
    paths: list[Path]
    labels: list[int] | None = None
    note: str = ""


@lru_cache(maxsize=1)
def imagenet_wnid_names() -> dict[str, str]:
    """wnid -> CLIP class name for the 1000 ImageNet-1k classes."""
    return dict(zip(imagenet_wnids(), imagenet_classnames()))


def _imagenet_order() -> list[str]:
    return list(imagenet_wnid_names())


def _split_list_arg(where: str, flag: str, shards: bool = True) -> tuple[Path, Path] | None:
    """(list file, root) when ``where`` names an image list, else None. A file or folder that
    exists under the very name ``where`` is that file or folder, ``::`` in its name or not.
    ``shards``: whether the command reads tar shards (score), which a shard's image is sent to."""
    root, sep, lst = where.partition("::")
    if sep and not os.path.lexists(where):
        if not root or not lst:  # (Path("") is ".": "$ROOT::val.txt", ROOT unset, read the current folder)
            fix = "write '.::LIST.txt' for the current folder" if not root else \
                "name the list file after '::', or give ROOT alone for the images of its folder"
            raise UserError(f"{flag} {where}: ROOT::LIST.txt with an empty {'ROOT' if not root else 'LIST.txt'} (an "
                            f"unset shell variable?); {fix}")
        if is_shard(root):  # (a name score's CSV gives an image of a shard: it was looked for as a list)
            give = "the shard itself (or a folder or an image list)" if shards else \
                "a folder or an image list (eval reads no shards)"
            raise UserError(f"{flag} {where}: names an image inside the tar shard {root}, as score's rows do; give "
                            f"{give}")
        return Path(lst), Path(root)
    if where.lower().endswith(".txt") and is_file(where, flag):  # (in any case, as image extensions are)
        return Path(where), Path(where).parent
    return None


def image_list_file(where: str | os.PathLike, flag: str = "PATH", shards: bool = True) -> Path | None:
    """The list file when ``where`` names an image list (``ROOT::LIST.txt`` or ``LIST.txt``), else
    None (``shards``: whether the command reads tar shards, as score does and eval does not)."""
    as_list = _split_list_arg(str(where), flag, shards)
    return None if as_list is None else as_list[0]


def iter_image_list(list_file: str | os.PathLike, root: str | os.PathLike, flag: str,
                    labels: bool = True) -> Iterator[tuple[Path, int]]:
    """``(path, label)`` of each image of an OpenOOD-style list (``path label`` per line; label
    optional, -1 without), read one line at a time: memory does not grow with the list. With
    ``labels`` False the label field is ignored, whatever it holds (every label -1).

    Raises:
        UserError: a missing or binary list, a missing root, a malformed line, a path that leaves
            the root (absolute, or with ``..``), a listed file that does not exist (when the reading
            reaches it; where the path names a file of the current folder, the line says how to read
            it from there); a list naming no images (at its end).
    """
    list_file, root = Path(list_file), Path(root)
    lines = text_lines(list_file, flag, "'relative/path label'", what="image-list file")
    if not is_folder(root, flag):
        raise UserError(f"{flag} {root}: no such image root folder")
    found = False
    for n, line in enumerate(lines, 1):
        # (a byte-order mark also starts a later line where `cat` joined lists saved by Notepad: the
        # first's is dropped by the reading; str.split keeps it, and the line named an invisible path)
        parts = line.lstrip("\ufeff").split()
        if not parts or parts[0].startswith("#"):
            continue
        label = label_number(parts[1]) if len(parts) == 2 and labels else -1
        if len(parts) > 2 or label is None:
            raise UserError(f"{flag} {list_file}:{n}: expected 'relative/path label', got {line.strip()!r}")
        if len(parts) == 2 and os.path.splitext(parts[1])[1].lower() in IMAGE_EXTENSIONS:  # ('a.jpg b.jpg')
            raise UserError(f"{flag} {list_file}:{n}: {parts[1]} after the path is an image's name, not a label: a "
                            "list holds one path a line (and a path holds no white space)")
        if leaves_root(parts[0]):  # (a list names files in its root only)
            if os.path.isabs(parts[0]):  # (not "leaves the image root /": under the root / it would be; no list may)
                raise UserError(f"{flag} {list_file}:{n}: {parts[0]} is an absolute path; a list names its images "
                                f"relative to its image root ({root}): write them so, and give their folder as "
                                "ROOT::LIST.txt")
            raise UserError(f"{flag} {list_file}:{n}: {parts[0]} leaves the image root {root} (with '..')")
        path = root / path_from_text(parts[0])
        st = path_stat(path, f"{flag} {list_file}:{n}:")
        if st is None or not stat.S_ISREG(st.st_mode):
            what = "does not exist" if st is None else "is not a regular file (a folder, FIFO or device)"
            if st is None and len(parts) == 2 and label_number(parts[1]) is None:  # ('IMG 001.jpg', labels ignored)
                what += " (a line's path and label are split at white space: a listed path holds none)"
            elif st is None and "\\" in parts[0]:  # (a list written on Windows: imgs\a.png)
                what += f" (a backslash is no folder separator here: write {parts[0].replace(chr(92), '/')})"
            elif st is None and os.path.lexists(path_from_text(parts[0])) and root.resolve() != Path.cwd().resolve():
                what += (f" (the list's paths are read from its image root {root}; they name files of the current "
                         f"folder: give that root before the list, .::{list_file})")
            raise UserError(f"{flag} {list_file}:{n}: {path} {what}")
        if is_shard(path):  # (read as one image: "unreadable", or with --skip-unreadable its images skipped)
            raise UserError(f"{flag} {list_file}:{n}: {path} is a tar shard; a list names image files (score takes a "
                            "shard as a PATH of its own)")
        found = True
        yield path, label
    if not found:
        raise UserError(f"{flag} {list_file}: the list names no images")


def read_image_list(list_file: str | os.PathLike, root: str | os.PathLike, flag: str,
                    labels: bool = True) -> tuple[list[Path], list[int]]:
    """Paths and integer labels of an OpenOOD-style list (see :func:`iter_image_list`).

    Raises:
        UserError: a missing list or root, a malformed line, a listed file that does not exist, an
            image listed twice (it would weigh twice in every metric; ``a/x``, ``a/./x`` and
            ``a//x`` are one image).
    """
    pairs = list(iter_image_list(list_file, root, flag, labels))
    first: dict[Path, int] = {}
    for i, (path, _) in enumerate(pairs):
        if first.setdefault(path, i) != i:
            raise UserError(f"{flag} {list_file}: lists {path} twice (entries {first[path] + 1} and {i + 1}); an "
                            "image listed twice would weigh twice in the metrics")
    return [p for p, _ in pairs], [y for _, y in pairs]


def _id_root(where: str | os.PathLike, flag: str) -> Path:
    """``DIR/val`` when it is a folder of class folders, else ``DIR`` (whose classes may include ``val``).

    Raises:
        UserError: ``where`` is empty (``Path("")`` is ``.``: an unset ``"$IMAGENET"`` read the
            current folder as the ID set, or its sub-folders as zero-shot's classes); or ``DIR``
            holds ``train/<class>/`` and no ``val/`` of class folders (:func:`split_folder`).
    """
    return split_folder(given_path(where, flag), "val", flag)


def id_class_folders(where: str | os.PathLike, flag: str = "--id") -> list[str]:
    """The sorted class sub-folders of an ID folder (``DIR/val/<class>/`` or ``DIR/<class>/``).

    Zero-shot takes every one as a class: its name is the prompts' class name, its images are the
    class's test images. A folder without images is no class: an archiver's ``__MACOSX/`` beside
    1,000 wnid folders was one more class, and the prompts of the other 1,000 named their wnids
    ("a photo of a n01440764.") instead of their classes, with a note and an exit code 0.

    Raises:
        UserError: not a folder, no class sub-folders, or a class sub-folder without images.
    """
    root = _id_root(where, flag)
    if not is_folder(root, flag):
        raise UserError(f"{flag} {where}: no such folder (zero-shot needs an ID folder of class folders)")
    folders = class_folders(root, flag)
    empty = [f for f in folders if not holds_images(root / f)]
    if empty:
        hold = "holds" if len(empty) == 1 else "hold"
        raise UserError(f"{flag} {root}: {len(empty)} of its {len(folders)} class folders {hold} no images, e.g. "
                        f"{empty[0]}: zero-shot takes each class folder as a class; remove it (an archiver's "
                        "__MACOSX, a class not yet copied) or fill it")
    return folders


def folder_classnames(where: str | os.PathLike, flag: str = "--id") -> list[str]:
    """Class names of an ID folder's class sub-folders (ImageNet wnids -> CLIP names).

    Used by zero-shot evaluation, where the class list comes from the data.

    Raises:
        UserError: not a folder, or no class sub-folders.
    """
    return folder_names(id_class_folders(where, flag))


def folder_names(folders: Sequence[str]) -> list[str]:
    """The class names of class folders (of :func:`id_class_folders`): ImageNet's names when every
    folder is a wnid, else the folder names with ``_`` read as a space."""
    names = imagenet_wnid_names()
    if all(f in names for f in folders):
        return [names[f] for f in folders]
    return [name_as_text(f).replace("_", " ") for f in folders]


def _folder_labels(root: Path, paths: Sequence[Path], classnames: Sequence[str],
                   prompt_folders: Sequence[str] | None = None) -> tuple[list[int] | None, str]:
    folders = sorted({p.relative_to(root).parts[0] for p in paths if len(p.relative_to(root).parts) > 1})
    if not folders or any(len(p.relative_to(root).parts) < 2 for p in paths):
        return None, f"{root} holds images outside class folders"
    wnid_names = imagenet_wnid_names()
    text = {f: name_as_text(f) for f in folders}  # (as a prompt records them, in any locale)
    index: dict[str, int] = {}
    if prompt_folders is not None and set(text.values()) <= set(prompt_folders):
        # the prompt's own class folders: exact where names repeat ("missile" twice; sea_lion, "sea lion")
        first: dict[str, int] = {}
        for i, f in enumerate(prompt_folders):  # (one pass: a search of the list for each folder was K * K)
            first.setdefault(f, i)
        index = {f: first[text[f]] for f in folders}
    elif list(classnames) == [wnid_names[w] for w in _imagenet_order()]:
        # the full ImageNet-1k list (its names repeat: take wnids by position)
        order = {w: i for i, w in enumerate(_imagenet_order())}
        index = {f: order[f] for f in folders if f in order}
    else:
        by_name: dict[str, int] = {}
        for i, c in enumerate(classnames):
            by_name.setdefault(c, i)
        repeated = {c for c, n in Counter(classnames).items() if n > 1}
        ambiguous = []
        for f in folders:
            name = wnid_names.get(f, text[f].replace("_", " "))
            name = name if name in by_name else text[f] if text[f] in by_name else None
            if name in repeated:  # ("missile" twice, in a prompt that records no class folders)
                ambiguous.append(f"{f} ({name})")
            elif name is not None:
                index[f] = by_name[name]
        if ambiguous:  # one index for both would mislabel one of them without a word
            return None, (f"class folder(s) {', '.join(ambiguous[:3])}{' ...' if len(ambiguous) > 3 else ''} match a "
                          "class name the prompt holds more than once, and it records no class folders to tell "
                          "which is which")
    unmatched = [f for f in folders if f not in index]
    if unmatched:
        return None, f"class folder(s) {', '.join(unmatched[:3])}{' ...' if len(unmatched) > 3 else ''} match no class of the prompt"
    return [index[p.relative_to(root).parts[0]] for p in paths], ""


def _no_shard(where: str, given: str) -> None:
    """A tar shard given (as ``given``, the flag and its value) for a set of eval: refused by name (it
    would be read as one unreadable image)."""
    if is_shard(where):
        raise UserError(f"{given}: a tar shard; eval reads folders and image lists (score reads shards)")


def id_set(where: str | os.PathLike, classnames: Sequence[str], flag: str = "--id",
           prompt_folders: Sequence[str] | None = None) -> ImageSet:
    """The ID test set, with labels in the order of ``classnames`` when they can be matched.

    Args:
        where: a folder (``DIR/val/<class>/`` or ``val/<class>/``), or an image list
            (``ROOT::LIST.txt`` or ``LIST.txt``).
        classnames: the prompt's class names.
        flag: the flag named in errors.
        prompt_folders: the folder of each class (a fit prompt's ``run.class_folders``), matched
            first by exact name; otherwise folders are matched through ``classnames``.
    """
    where = str(where)
    _no_shard(where, f"{flag} {where}")
    as_list = _split_list_arg(where, flag, shards=False)
    if as_list is not None:
        paths, labels = read_image_list(*as_list, flag=flag)
        if all(y == -1 for y in labels):  # no labels (or OpenOOD's -1): OOD metrics only, no accuracy
            return ImageSet("id", paths, None, f"{as_list[0]}: the list gives no class labels")
        for path, y in zip(paths, labels):  # a wrong label would make the ID accuracy wrong
            if y == -1:  # (read_image_list's "no label")
                raise UserError(f"{flag} {as_list[0]}: {path} has no label (or OpenOOD's -1), while others have one; "
                                f"every line needs a class index of the prompt (0 .. {len(classnames) - 1}), or none does")
            if not 0 <= y < len(classnames):
                raise UserError(f"{flag} {as_list[0]}: {path} has label {y}, not a class index of the prompt "
                                f"(0 .. {len(classnames) - 1}; every line needs one, or none does)")
        return ImageSet("id", paths, labels)
    root = _id_root(where, flag)
    paths = list_images(root, flag=flag)
    if is_file(root, flag):
        return ImageSet("id", paths, None, "a single image has no class folder")
    linked = _linked_class_folder(root, paths)
    if linked:
        raise UserError(f"{flag} {root}: {linked}")
    labels, note = _folder_labels(root, paths, classnames, prompt_folders)
    return ImageSet("id", paths, labels, note)


def _linked_class_folder(root: Path, paths: Sequence[Path]) -> str | None:
    """Why the class of some of ``paths`` cannot be told: a folder listed under one class folder
    that is another class folder, or inside one, reached through a symbolic link (the walk reads
    each real folder once, through the first path that reaches it: a link to red from blue/, or a
    class crimson linked to red, took red's images for blue's or crimson's, and red had none)."""
    by_real: dict[Path, list[str]] = {}  # each class folder's real path -> its name(s)
    for d in sorted(Path(root).iterdir()):
        if not d.name.startswith(".") and d.is_dir():
            by_real.setdefault(Path(os.path.realpath(d)), []).append(d.name)
    for parent in sorted({p.parent for p in paths if p.parent != Path(root)}):
        own, real = parent.relative_to(root).parts[0], Path(os.path.realpath(parent))
        other = next((c for r in (real, *real.parents) for c in by_real.get(r, ()) if c != own), None)
        if other is not None:
            return (f"{parent.relative_to(root)} (in class folder {own}) is the class folder {other}, or inside it, "
                    "reached through a symbolic link; its images cannot be told to one class: remove the link")
    return None


def iter_image_files(where: str | os.PathLike, flag: str) -> Iterator[Path | str]:
    """The image files of a folder (searched recursively), of one image file, of an image list
    (``ROOT::LIST.txt``, or a ``LIST.txt`` file: paths relative to its folder; labels ignored),
    or of a tar shard (``SHARD.tar``: its images as ``SHARD.tar::MEMBER`` names, see
    :mod:`clip_smot.common.shards`), one at a time: a list is read line by line, a folder
    listed as the walk reaches it, a shard through its index, so memory is bounded by the
    largest folder or shard, not by the number of images.

    Raises:
        UserError: a missing path or list, a list naming a missing file, no images, a tar that
            cannot be read (when the iteration reaches it).
    """
    if is_shard(where):
        yield from list_members(where, flag=flag)
        return
    as_list = _split_list_arg(str(where), flag)
    if as_list is None:
        try:
            yield from iter_images(where, flag=flag)
        except NoImages as e:  # a folder of shards (img2dataset's output): say where the images are
            shard = next((os.path.join(folder, n) for folder, names in walk_files(where) for n in names
                          if is_shard(os.path.join(folder, n))), None)
            if shard is None:
                raise
            # (the example is a glob of the shard's own folder: the search went into sub-folders)
            raise UserError(f"{e}, but tar shards, e.g. {shard}: a folder is not searched for shards; give each "
                            f"shard as a PATH (e.g. {os.path.join(os.path.dirname(shard), '*.tar')})") from None
    else:
        yield from (path for path, _ in iter_image_list(*as_list, flag=flag, labels=False))


def image_files(where: str | os.PathLike, flag: str) -> list[Path] | list[str]:
    """The files of :func:`iter_image_files`, as one list.

    Raises:
        UserError: a missing path or list, a list naming a missing file, no images, a tar that
            cannot be read.
    """
    return list(iter_image_files(where, flag))


def check_apart(id_files: Sequence, ood: Sequence[tuple[str, Sequence]]) -> None:
    """Raise a UserError when an OOD set holds an image of the ID set (the same file, however it
    is spelled or linked): such an image is counted on both sides and pulls AUROC towards 50
    with no sign in the table; the same folder given as ``--id`` and ``--ood`` made it exactly 50.

    Args:
        id_files: the ID set's image files.
        ood: (name, image files) of each OOD set.
    """
    keys = {key for f in id_files if (key := file_key(f)) is not None}
    for name, files in ood:
        shared = [f for f in files if file_key(f) in keys] if keys else []
        if shared:
            raise UserError(f"--ood {name}: {len(shared)} of its {len(files)} images are images of the ID set (--id) "
                            f"too, e.g. {shared[0]}; an image cannot be in- and out-of-distribution at once")


def check_train_apart(train_files: Sequence, id_files: Sequence, ood: Sequence[tuple[str, Sequence]]) -> None:
    """Raise a UserError when an ID training image of the fitted scores (react, knn, vim) is an
    image of a test set (the same file, however it is spelled or linked): KNN finds a test image
    at distance 0 from itself, and ReAct and ViM are fitted on what they score, with no sign in
    the table. ``--id-train IMAGENET`` (searched whole) took IMAGENET/val, the ID set, along.

    Args:
        train_files: the ID training images.
        id_files, ood: the ID set's image files and (name, image files) of each OOD set, as for
            :func:`check_apart`.
    """
    keys = {key for f in train_files if (key := file_key(f)) is not None}
    sets = [("the ID set (--id)", id_files), *((f"the OOD set {name} (--ood)", files) for name, files in ood)]
    for what, files in sets if keys else ():
        shared = [f for f in files if file_key(f) in keys]
        if shared:
            raise UserError(f"--id-train: {len(shared)} of the {len(files)} images of {what} are ID training images "
                            f"too, e.g. {shared[0]}; the fitted scores would be fitted on images they score (a folder "
                            "is searched whole: give the training images' own folder)")


def stray_wnids(folders: Sequence[str]) -> str | None:
    """What a note says of class folders of which some, not all, are ImageNet wnids (None: all
    or none are): the folder names are then the class names, and the prompts name the wnids."""
    wnids = set(imagenet_wnids())
    stray = [f for f in folders if f not in wnids]
    if not 0 < len(stray) < len(folders):
        return None
    return (f"{len(folders) - len(stray)} of its {len(folders)} class folders are ImageNet wnids, but "
            f"{', '.join(stray[:3])}{' ...' if len(stray) > 3 else ''} not: the folder names are the class names, so "
            "the prompts name wnids")


def image_set(name: str, where: str | os.PathLike, flag: str = "--ood") -> ImageSet:
    """An OOD set: a folder in any layout (recursive) or an image list; no labels needed.

    Raises:
        UserError: a missing folder or list, or one without images.
    """
    where = str(where)
    # (--ood gives a set as NAME=WHERE; another flag, --id-train, gives WHERE alone: its errors say so)
    given, named = (f"{flag} {name}={where}", f"{flag} {name}") if flag == "--ood" else (f"{flag} {where}", flag)
    _no_shard(where, given)
    as_list = _split_list_arg(where, named, shards=False)
    if as_list is not None:
        paths, _ = read_image_list(*as_list, flag=named, labels=False)
        return ImageSet(name, paths)
    if not exists(where, named):  # (a bare --ood NAME is a built-in set, answered by the callers)
        raise UserError(f"{given}: no such folder or image list")
    return ImageSet(name, list_images(where, flag=named))




def bare_ood_note(name: str, builtins: Sequence[str]) -> str | None:
    """What to say of a bare ``--ood NAME`` (a built-in set's name, or a mistake), or None. A bare
    name is always the built-in set: where a file or folder of that name is here too (a user's
    ./Textures: the MOS set's name), the note says so, as taking the digits' textures silently
    gave the metrics of another set. A name of no built-in set that is a path (``--ood sets/ood``)
    is an OOD folder given without its ``NAME=``: the line (an error) makes a name from it.
    Otherwise (a built-in set, or no path) None: the track names its own sets."""
    if name.lower() in builtins:
        return (f"note: --ood {name} is the built-in set {name.lower()}, not ./{name}; give --ood {name}={name} for "
                "the folder of that name here") if os.path.lexists(name) else None
    if os.sep in name or os.path.lexists(name):
        label = Path(name).name or "ood"
        return (f"--ood {name}: an OOD folder or image list is given as NAME=DIR, e.g. --ood {label}={name} (a bare "
                f"name is a built-in set: {', '.join(builtins)})")
    return None
