"""The few-shot split as data_lists/README.md describes it, against expectations built by hand.

"For each class, its image files (searched recursively, sorted by path) are permuted with
``numpy.random.default_rng(seed)`` (one generator for all classes, in class order) and the
first ``--shots`` are kept"; a drawn split's lines sorted by label, then path.
"""

from pathlib import Path

import numpy as np
import pytest

from clip_smot.clip.fewshot import draw_split, resolve_classes, resolve_train_root, split_text
from clip_smot.common.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by draw_split")


def _folder_dataset(root: Path) -> dict[str, list[str]]:
    """Three classes with 5, 7 and 6 images (one in a sub-folder, which sorts first), made out of sorted order;
    returns each class's sorted relative paths, as the README says they are listed."""
    listing = {
        "zebra_fish": ["zebra_fish/e.jpg", "zebra_fish/a.png", "zebra_fish/c.JPEG", "zebra_fish/b.jpg",
                       "zebra_fish/d.jpg"],
        "ant": ["ant/g.jpg", "ant/f.jpg", "ant/aa/z.jpg", "ant/e.jpg", "ant/d.jpg", "ant/c.jpg", "ant/b.jpg"],
        "mole_rat": ["mole_rat/q.jpg", "mole_rat/p.jpg", "mole_rat/r.jpg", "mole_rat/m.jpg", "mole_rat/n.jpg",
                     "mole_rat/o.jpg"],
    }
    for files in listing.values():
        for f in files:
            _touch(root / f)
    (root / "ant" / "notes.txt").write_text("not an image")
    return {k: sorted(v) for k, v in listing.items()}


def _coop_draw(sorted_listings: list[list[str]], shots: int, seed: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)  # one generator, classes in label order
    out = []
    for label, files in enumerate(sorted_listings):
        order = rng.permutation(len(files))
        out += sorted((files[i], label) for i in order[:shots])
    return out


def test_folder_classes_are_sorted_with_underscores_read_as_spaces(tmp_path):
    _folder_dataset(tmp_path)
    classes = resolve_classes(tmp_path)
    assert classes.folders == ("ant", "mole_rat", "zebra_fish")
    assert classes.classnames == ("ant", "mole rat", "zebra fish")
    assert classes.imagenet_index is None


def test_class_names_are_the_same_under_an_ascii_locale(tmp_path):
    """Under a C locale without Python's coercion to UTF-8 (LC_ALL=C, PYTHONUTF8=0,
    PYTHONCOERCECLOCALE=0) Python's file system encoding is ASCII. Class folders 'caf\u00e9' and
    '\u732b' (UTF-8 on disk) are still those names in the prompts: they were 'caf\\udcc3\\udca9'
    and three surrogates, which the tokenizer encoded as other text (fit's text features differed
    by 0.24 from a UTF-8 locale's run on the same data, and its prompt's classes did not match the
    folders in eval, which dropped the ID accuracy: the labels of a UTF-8 locale's prompt now match)."""
    import os
    import subprocess
    import sys

    for name in ("caf\u00e9", "\u732b"):
        _touch(tmp_path / "data" / name / "a.jpg")
    for name in ("caf\u00e9_noir", "th\u00e9_vert", "\u732b"):  # (labelled by name: no prompt folders)
        _touch(tmp_path / "named" / name / "a.jpg")
    code = ("import os, sys\n"
            "from clip_smot.clip.fewshot import resolve_classes\n"
            "assert sys.getfilesystemencoding() == 'ascii', sys.getfilesystemencoding()\n"
            "print(ascii(resolve_classes(sys.argv[1]).classnames))\n"
            "from pathlib import Path\n"
            "from clip_smot.common.image_sets import _folder_labels\n"
            "root = Path(sys.argv[1])\n"
            "paths = sorted(root.glob('*/a.jpg'))\n"
            "print(_folder_labels(root, paths, ['x', 'y'], prompt_folders=['\\u732b', 'caf\\u00e9']))\n"
            "root = Path(sys.argv[2])\n"
            "paths = sorted(root.glob('*/a.jpg'))\n"
            "print(_folder_labels(root, paths, ['\\u732b', 'caf\\u00e9 noir', 'th\\u00e9_vert']))\n"
            "from clip_smot.common.image_sets import folder_names\n"
            "print(ascii(folder_names(sorted(os.listdir(root)))))\n")
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0", PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data"), str(tmp_path / "named")], env=env,
                         capture_output=True, text=True, timeout=60)
    # (and the class folders a prompt made in a UTF-8 locale records label them: eval's ID accuracy)
    # (and folders matched to the class names by name: 'caf\u00e9_noir' read as 'caf\u00e9 noir', 'th\u00e9_vert' as
    # itself; under ASCII the names sort as their bytes do, c < t < \u732b's first byte 0xe7)
    assert res.stdout.splitlines() == [ascii(("caf\u00e9", "\u732b")), "([1, 0], '')", "([1, 2, 0], '')",
                                       ascii(["caf\u00e9 noir", "th\u00e9 vert", "\u732b"])], res.stdout + res.stderr


def test_folders_given_as_text_resolve_as_paths_do(tmp_path):
    """resolve_train_root and resolve_classes take a str as well as a Path (their signatures say so;
    fit passes --data as text): the same root, classes and draw."""
    listing = _folder_dataset(tmp_path / "data" / "train")
    root = resolve_train_root(str(tmp_path / "data"))
    assert root == tmp_path / "data" / "train"
    classes = resolve_classes(str(root))
    assert classes == resolve_classes(root) and isinstance(classes.root, Path)
    assert draw_split(classes, 2, 0) == _coop_draw([listing[f] for f in classes.folders], 2, 0)


def test_draw_split_is_one_seeded_permutation_per_class_of_its_sorted_listing(tmp_path):
    listing = _folder_dataset(tmp_path)
    classes = resolve_classes(tmp_path)
    listings = [listing[f] for f in ("ant", "mole_rat", "zebra_fish")]
    for shots, seed in ((3, 0), (4, 1), (5, 12345)):
        split = draw_split(classes, shots, seed)
        assert split == _coop_draw(listings, shots, seed), (shots, seed)
        # sorted by label, then path; shots images of each class, each from its own folder
        assert split == sorted(split, key=lambda t: (t[1], t[0]))
        assert [y for _, y in split] == [0] * shots + [1] * shots + [2] * shots
        assert all(p.split("/", 1)[0] == classes.folders[y] for p, y in split)
    # all of a class when shots is its size: the whole sorted listing of the smallest class
    assert [p for p, y in draw_split(classes, 5, 3) if y == 2] == listing["zebra_fish"]
    # the split file: one 'path<TAB>label' line per image, in that order
    split = draw_split(classes, 2, 7)
    assert split_text(split) == "".join(f"{p}\t{y}\n" for p, y in _coop_draw(listings, 2, 7))


def test_a_class_with_fewer_images_than_shots_is_named_with_its_count(tmp_path):
    _touch(tmp_path / "ant" / "a.jpg")
    for f in ("a.jpg", "b.jpg"):
        _touch(tmp_path / "bee" / f)
    classes = resolve_classes(tmp_path)
    with pytest.raises(UserError, match=rf"^--shots 2: class 'ant' \({tmp_path / 'ant'}\) has only 1 image$"):
        draw_split(classes, 2, 0)
    with pytest.raises(UserError, match=r"^--shots 3: class 'ant' .* has only 1 image$"):
        draw_split(classes, 3, 0)  # (the first class short of images is named)
    _touch(tmp_path / "ant" / "b.jpg")
    with pytest.raises(UserError, match=r"^--shots 3: class 'ant' .* has only 2 images$"):
        draw_split(resolve_classes(tmp_path), 3, 0)


def test_an_imagenet_subset_keeps_the_1k_order_names_and_indices(tmp_path):
    wnids = (REPO / "data_lists" / "imagenet1k_wnids.txt").read_text().split()
    names = (REPO / "prompts" / "imagenet1k_classnames.txt").read_text().splitlines()
    picked = [901, 7, 388, 0]  # made out of order
    for i in picked:
        for f in ("x.JPEG", "y.JPEG", "z.JPEG"):
            _touch(tmp_path / wnids[i] / f)
    classes = resolve_classes(tmp_path)
    order = sorted(picked)
    assert classes.folders == tuple(wnids[i] for i in order)
    assert classes.classnames == tuple(names[i] for i in order)
    assert classes.classnames[:2] == ("tench", names[7]) and classes.imagenet_index == (0, 7, 388, 901)
    split = draw_split(classes, 2, 5)
    assert split == _coop_draw([[f"{wnids[i]}/{f}" for f in ("x.JPEG", "y.JPEG", "z.JPEG")] for i in order], 2, 5)


def test_folders_that_are_not_all_wnids_are_plain_classes(tmp_path):
    for folder in ("n01440764", "my_cat"):  # a wnid (tench) beside another name
        _touch(tmp_path / folder / "a.jpg")
    classes = resolve_classes(tmp_path)
    assert classes.folders == ("my_cat", "n01440764")
    assert classes.classnames == ("my cat", "n01440764") and classes.imagenet_index is None


def test_a_training_folder_that_is_missing_a_file_or_empty_is_named_by_the_callers_flag(tmp_path):
    """fit's --data and eval's --id-train take the same folders: each refusal names the flag given."""
    import re

    import pytest

    from clip_smot.clip.fewshot import resolve_train_root
    from clip_smot.common.errors import UserError

    gone, text, empty = tmp_path / "gone", tmp_path / "a.txt", tmp_path / "empty"
    text.write_text("not a folder")
    empty.mkdir()
    with pytest.raises(UserError, match=rf"^--id-train {re.escape(str(gone))}: no such folder$"):
        resolve_train_root(gone, "--id-train")
    with pytest.raises(UserError, match=rf"^--data {re.escape(str(text))}: not a folder "
                                        r"\(expected DATA/train/<class>/<image>\)$"):
        resolve_train_root(text)
    with pytest.raises(UserError, match=rf"^--id-train {re.escape(str(empty))}: no class folders inside"):
        resolve_classes(resolve_train_root(empty, "--id-train"), "--id-train")


def test_read_split_refuses_labels_out_of_range_a_line_without_a_tab_and_no_images(tmp_path):
    """Labels run from 0 to K - 1: K was an IndexError traceback, and -1 read as the last class
    (its image lies in the last class's folder); a line without a tab is malformed even when its
    text is a number; a file of blank lines lists no images."""
    import re

    import pytest

    from clip_smot.clip.fewshot import read_split
    from clip_smot.common.errors import UserError

    _folder_dataset(tmp_path / "data")
    classes = resolve_classes(tmp_path / "data")
    split = tmp_path / "split.txt"
    drawn = draw_split(classes, 2, 0)
    split.write_text(split_text(drawn))
    assert read_split(split, classes) == drawn
    for text, error in [("zebra_fish/a.png\t3\n", "split.txt:1: label 3 is out of range for 3 classes"),
                        ("zebra_fish/a.png\t-1\n", "split.txt:1: label -1 is out of range for 3 classes"),
                        ("0\n", "split.txt:1: expected 'relative/path<TAB>label', got '0'"),
                        ("\n  \n", "split.txt: the split file lists no images"),
                        # the folder the label asks for; the missing file under the data folder
                        ("zebra_fish/a.png\t0\n", "split.txt:1: zebra_fish/a.png is not in class 0's folder ant"),
                        ("ant/zz.jpg\t0\n", f"split.txt:1: {tmp_path / 'data'}/ant/zz.jpg: no such image file")]:
        split.write_text(text)
        with pytest.raises(UserError, match=rf"^--split {re.escape(str(tmp_path))}/{re.escape(error)}$"):
            read_split(split, classes)


def test_a_split_file_in_another_line_order_is_read_and_written_back_in_that_order(tmp_path):
    """data_lists/README.md: a --split file keeps its own line order (the order of the images in
    training; OUT/split.txt and its SHA-256 are of that order), a drawn one is sorted."""
    from clip_smot.clip.fewshot import read_split

    _folder_dataset(tmp_path / "data")
    classes = resolve_classes(tmp_path / "data")
    lines = ["mole_rat/p.jpg\t1\n", "ant/b.jpg\t0\n", "zebra_fish/e.jpg\t2\n", "ant/aa/z.jpg\t0\n"]
    split = tmp_path / "split.txt"
    split.write_text("".join(lines))
    got = read_split(split, classes)
    assert got == [("mole_rat/p.jpg", 1), ("ant/b.jpg", 0), ("zebra_fish/e.jpg", 2), ("ant/aa/z.jpg", 0)]
    assert split_text(got) == "".join(lines)


def test_split_files_joined_with_cat_read_the_second_ones_first_path(tmp_path):
    """Two split files saved by Notepad (each starting with a byte-order mark) and joined with
    `cat`: the second's first line started with U+FEFF, and was refused as not in its class folder
    ("\ufeffant/b.jpg is not in class 0's folder ant", the mark invisible). It is dropped, as the
    first line's is and as an image list's are."""
    from clip_smot.clip.fewshot import read_split

    _folder_dataset(tmp_path / "data")
    classes = resolve_classes(tmp_path / "data")
    split = tmp_path / "split.txt"
    split.write_bytes("\ufeffmole_rat/p.jpg\t1\n\ufeffant/b.jpg\t0\n".encode())
    assert read_split(split, classes) == [("mole_rat/p.jpg", 1), ("ant/b.jpg", 0)]


def test_decoded_squares_are_pils_bicubic_resize_rounded_and_cropped_from_the_floor_of_half_the_margin(tmp_path):
    """The shorter side resized to ``size`` (the other side rounded: 37 x 20 to 30 x 16, not 29, wide
    or tall), by PIL's bicubic filter, then the square at floor(margin / 2) from the left or top (a
    margin of 15 pixels leaves 7 on the left, 8 on the right)."""
    from PIL import Image

    from clip_smot.clip.fewshot import decode_images

    rng = np.random.default_rng(0)
    cases = {"wide.png": ((20, 37), (30, 16), (7, 0)), "odd.png": ((20, 39), (31, 16), (7, 0)),
             "tall.png": ((39, 20), (16, 31), (0, 7)),
             "tall_up.png": ((37, 20), (16, 30), (0, 7))}  # (37 * 16 / 20 = 29.6 rows: 30, margin 14)
    expected = []
    for name, ((h, w), new, (left, top)) in cases.items():
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        image.save(tmp_path / name)
        square = np.asarray(image.resize(new, Image.BICUBIC))[top:top + 16, left:left + 16]
        expected.append(square.transpose(2, 0, 1))
    got = decode_images(tmp_path, list(cases), 16, workers=0)
    assert got.shape == (4, 3, 16, 16)
    np.testing.assert_array_equal(got.numpy(), np.stack(expected))


def test_a_long_strips_square_is_its_centre_wide_or_tall(tmp_path):
    """A strip over 16 times as long as wide has only its central square resampled (the box in source
    pixels): a ramp of 0..255 along 20000 pixels, 2 across, must give the values near its middle
    (127.5) as a wide strip and as a tall one, not those of an end."""
    from PIL import Image

    from clip_smot.clip.fewshot import decode_images

    ramp = np.repeat(np.linspace(0, 255, 20000)[None, :, None], 3, axis=2).repeat(2, axis=0)  # [2, 20000, 3]
    Image.fromarray(ramp.round().astype(np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(ramp.transpose(1, 0, 2).round().astype(np.uint8)).save(tmp_path / "tall.png")
    x = decode_images(tmp_path, ["wide.png", "tall.png"], 32, workers=0).float()  # [2, 3, 32, 32]
    assert abs(x[0].mean().item() - 127.5) < 1 and abs(x[1].mean().item() - 127.5) < 1


def test_a_split_line_whose_file_name_is_too_long_is_named(tmp_path):
    """A split line naming a file of 300 characters (over the 255 a Linux file system takes) was a
    traceback: pathlib's is_file raises OSError (ENAMETOOLONG) where it answers False for a missing
    file. It is the line's one error now, as a missing file is."""
    import errno
    import os
    import re

    import pytest

    from clip_smot.clip.fewshot import read_split
    from clip_smot.common.errors import UserError

    _folder_dataset(tmp_path / "data")
    classes = resolve_classes(tmp_path / "data")
    split = tmp_path / "split.txt"
    name = "ant/" + "a" * 300 + ".jpg"
    split.write_text(f"ant/b.jpg\t0\n{name}\t0\n")
    error = f"{tmp_path / 'data'}/{name}: {os.strerror(errno.ENAMETOOLONG)}"
    with pytest.raises(UserError, match=rf"^--split {re.escape(str(split))}:2: {re.escape(error)}$"):
        read_split(split, classes)


def test_a_split_rewritten_in_place_while_it_is_read_is_one_split_or_refused(tmp_path, monkeypatch):
    """A split of 2 x 60 images (lines of 109 bytes: 13 KB) rewritten in place (`cp new.txt split.txt`,
    `... > split.txt`: the same inode, truncated and written) as fit reads it: the lines of the
    first 8 KB buffer were the old split's and the rest the new one's, 120 images of which 76
    were the old split's, trained on as one split and recorded as one (its SHA-256 is of the lines
    read). Each line is valid, so none is refused: the read must be one split, or a one-line
    refusal naming --split (a prompt's read is checked so: read_with_hash)."""
    from clip_smot.clip import fewshot

    pad = "x" * 96
    for c in ("c0", "c1"):
        for i in range(60):
            for v in "ab":
                _touch(tmp_path / "data" / c / f"{v}{i:02d}{pad}.jpg")
    classes = resolve_classes(tmp_path / "data")
    old, new = ("".join(f"{c}/{v}{i:02d}{pad}.jpg\t{k}\n" for k, c in enumerate(("c0", "c1")) for i in range(60))
                for v in "ab")
    assert len(old) == len(new) == 120 * 109
    split = tmp_path / "split.txt"
    split.write_text(old)
    real, calls = fewshot.label_number, []

    def rewritten_after_the_first_line(text):
        calls.append(text)
        if len(calls) == 1:
            with open(split, "r+") as f:  # (in place: what cp and a shell's > do)
                f.truncate(0)
                f.write(new)
        return real(text)

    monkeypatch.setattr(fewshot, "label_number", rewritten_after_the_first_line)
    try:
        read = fewshot.read_split(split, classes)
    except UserError as e:
        assert str(e).startswith(f"--split {split}: ") and "\n" not in str(e)
        return
    assert len(calls) == 120 and len({Path(rel).name[0] for rel, _ in read}) == 1  # (all old, or all new)
