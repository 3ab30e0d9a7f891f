"""clip_smot.common.bundled: the class lists and prompt files that ship with the package."""

import hashlib
import re

import pytest

from clip_smot.common import bundled
from clip_smot.common.errors import UserError


def test_bundled_lists():
    wnids, names = bundled.imagenet_wnids(), bundled.imagenet_classnames()
    assert len(wnids) == len(names) == 1000 and wnids == sorted(wnids)
    assert names[wnids.index("n02123045")] == "tabby cat"
    w200 = bundled.imagenet200_wnids()
    assert len(set(w200)) == 200 and set(w200) <= set(wnids)


def test_imagenet200_is_the_papers_list():
    """The 200 wnids of the paper's appendix B.1, which are OpenOOD's ImageNet-200 classes (the
    200 classes of ImageNet-R): compared by hand with both; the hash pins that list, in the
    sorted order whose line number is the class index."""
    w200 = bundled.imagenet200_wnids()
    assert w200 == sorted(w200)
    assert w200[:3] == ["n01443537", "n01484850", "n01494475"] and w200[-3:] == ["n09835506", "n10565667", "n12267677"]
    assert hashlib.sha256(" ".join(w200).encode()).hexdigest() == \
        "354baa0a46566aa68cee6a8093d8de471b7d45a1004b81a95c6210f757ad3740"


def test_the_class_lists_are_timms_and_open_clips():
    """Against lists this project did not write, installed with open_clip (timm is one of its
    dependencies): the 1000 wnids in timm's ImageNet-1k class order (its ImageNetInfo, the order of
    torchvision's and timm's ImageNet weights, which the CAM network's labels index), the 200 of
    ImageNet-200 as timm's list of ImageNet-R's classes (its imagenet_r_synsets.txt), and the
    class names as open_clip's IMAGENET_CLASSNAMES, line for line."""
    import pkgutil

    import open_clip
    from timm.data import ImageNetInfo

    assert bundled.imagenet_wnids() == list(ImageNetInfo("imagenet-1k").label_names())
    imagenet_r = pkgutil.get_data("timm", "data/_info/imagenet_r_synsets.txt").decode().split()
    assert bundled.imagenet200_wnids() == sorted(imagenet_r) and len(imagenet_r) == 200
    assert bundled.imagenet_classnames() == list(open_clip.IMAGENET_CLASSNAMES)


def test_bundled_file_in_a_wheel_layout(tmp_path, monkeypatch):
    """Installed from a wheel, the lists sit in clip_smot/_data/ (see pyproject.toml)."""
    pkg = tmp_path / "site" / "clip_smot"
    (pkg / "_data" / "prompts").mkdir(parents=True)
    (pkg / "_data" / "prompts" / "zero_shot_template.txt").write_text("a photo of a {c}.\n")
    monkeypatch.setattr(bundled, "_PACKAGE", pkg)
    assert bundled.bundled_file("prompts", "zero_shot_template.txt") == pkg / "_data" / "prompts" / "zero_shot_template.txt"
    with pytest.raises(UserError, match="data_lists/imagenet1k_wnids.txt: missing"):
        bundled.imagenet_wnids()


@pytest.mark.parametrize("layout", ["checkout", "wheel"])
def test_a_folder_of_the_files_name_is_not_the_file(tmp_path, monkeypatch, layout):
    """A folder named imagenet1k_wnids.txt where the list belongs (beside the package in a
    checkout, in clip_smot/_data/ installed) is no list: the list is missing, not a folder that
    "cannot be read (Is a directory)"."""
    pkg = tmp_path / "site" / "clip_smot"
    root = pkg / "_data" if layout == "wheel" else pkg.parent
    (root / "data_lists" / "imagenet1k_wnids.txt").mkdir(parents=True)
    monkeypatch.setattr(bundled, "_PACKAGE", pkg)
    with pytest.raises(UserError, match=r"^data_lists/imagenet1k_wnids.txt: missing from this installation"):
        bundled.imagenet_wnids()


def test_a_source_checkout_reads_the_folders_beside_the_package_and_lines_are_trimmed(tmp_path, monkeypatch):
    """A checkout (the editable install) has no clip_smot/_data/: its lists are the folders beside
    the package; blank lines and the spaces or carriage returns around a name are not part of the
    list."""
    pkg = tmp_path / "checkout" / "clip_smot"
    (pkg.parent / "data_lists").mkdir(parents=True)
    (pkg.parent / "data_lists" / "imagenet200_wnids.txt").write_bytes(b" n01443537 \r\n\n\t\nn01484850\r\n\n")
    monkeypatch.setattr(bundled, "_PACKAGE", pkg)
    assert bundled.imagenet200_wnids() == ["n01443537", "n01484850"]
    pkg.mkdir()
    (pkg / "_data").write_text("")  # (a file of that name is no wheel's folder: the checkout's lists still)
    assert bundled.imagenet200_wnids() == ["n01443537", "n01484850"]


def test_an_installed_package_reads_its_own_files_not_a_folder_beside_it(tmp_path, monkeypatch):
    """Installed from a wheel, the folder beside the package is site-packages/ (or the folder of a
    pip install --target, or a project the package was copied into, which may well have prompts/
    of its own): its prompts/zero_shot_template.txt was what eval --zero-shot filled, not the
    wheel's clip_smot/_data/prompts/ (seen with the built wheel installed in a fresh venv)."""
    site = tmp_path / "site-packages"
    pkg = site / "clip_smot"
    (pkg / "_data" / "prompts").mkdir(parents=True)
    (pkg / "_data" / "prompts" / "zero_shot_template.txt").write_text("a photo of a {c}.\n")
    (site / "prompts").mkdir()
    (site / "prompts" / "zero_shot_template.txt").write_text("a sketch of a {c}.\n")
    monkeypatch.setattr(bundled, "_PACKAGE", pkg)
    assert bundled.bundled_file("prompts", "zero_shot_template.txt") == pkg / "_data" / "prompts" / "zero_shot_template.txt"
    (site / "data_lists").mkdir()  # (a file the installation lacks is not taken from beside it either)
    (site / "data_lists" / "imagenet200_wnids.txt").write_text("n01443537\n")
    with pytest.raises(UserError, match=r"^data_lists/imagenet200_wnids.txt: missing from this installation"):
        bundled.bundled_file("data_lists", "imagenet200_wnids.txt")


def test_imagenet_mean_and_std_are_torchvisions():
    """The normalisation of torchvision's ImageNet ResNet weights (the CAM networks', the ResNet
    track's default): ResNet18_Weights.IMAGENET1K_V1.transforms() has mean [0.485, 0.456, 0.406]
    and std [0.229, 0.224, 0.225] (written out: importing torchvision here takes seconds)."""
    assert bundled.IMAGENET_MEAN == (0.485, 0.456, 0.406) and bundled.IMAGENET_STD == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("names, expected", [
    (b"\xef\xbb\xbftench\r\ngoldfish\r\n", ["tench", "goldfish"]),  # (Notepad's byte-order mark: no part of "tench")
    (b"extra\ntench\ngoldfish\n", "3 class names, not one a line for each of the 2 wnids"),  # (every name shifted)
    (b"tench\n", "1 class names, not one a line for each of the 2 wnids"),  # (the last class had none: IndexError)
    (b"tench\ngold\xe9fish\n", "not UTF-8 text (byte 10)"),  # (Latin-1: a UnicodeDecodeError traceback)
])
def test_an_edited_class_name_list_is_read_as_utf8_and_must_name_every_wnid(tmp_path, monkeypatch, names, expected):
    """prompts/imagenet1k_classnames.txt, which a user may edit, is matched to the wnids line by
    line: a line more or less named every later class by its neighbour's name (or raised an
    IndexError), a byte-order mark started the first name, and it was read in the locale's
    encoding (a byte that is not UTF-8: a traceback)."""
    pkg = tmp_path / "checkout" / "clip_smot"
    for folder in ("data_lists", "prompts"):
        (pkg.parent / folder).mkdir(parents=True)
    (pkg.parent / "data_lists" / "imagenet1k_wnids.txt").write_bytes(b"\xef\xbb\xbfn01440764\nn01443537\n")
    (pkg.parent / "prompts" / "imagenet1k_classnames.txt").write_bytes(names)
    monkeypatch.setattr(bundled, "_PACKAGE", pkg)
    assert bundled.imagenet_wnids() == ["n01440764", "n01443537"]
    if isinstance(expected, list):
        assert bundled.imagenet_classnames() == expected
    else:
        where = pkg.parent / "prompts" / "imagenet1k_classnames.txt"
        with pytest.raises(UserError, match=f"^{re.escape(f'{where}: {expected}')}"):
            bundled.imagenet_classnames()


@pytest.mark.parametrize("text, expected", [
    (b"\xef\xbb\xbfa drawing of a {c}\r\n", "a drawing of a {c}"),  # (the byte-order mark no part of the prompt)
    (b"\n", "is empty"),  # (eval took the built-in template instead, without a word)
    (b"a photo of a {c}\na drawing of a {c}\n", "holds more than one line"),  # (one prompt of both lines)
    (b"a photo\n", "holds no {c}"),  # (named a flag --template that eval has not)
    (b"a photo of a \xe9 {c}\n", "not UTF-8 text (byte 13)"),  # (Latin-1: a UnicodeDecodeError traceback)
])
def test_an_edited_zero_shot_template_is_one_utf8_line_with_a_class(tmp_path, monkeypatch, text, expected):
    """prompts/zero_shot_template.txt, which a user may edit, is read as UTF-8 and holds one
    template, one line with {c}; anything else is one line naming the file."""
    from clip_smot.clip.scorer import zero_shot_template

    pkg = tmp_path / "checkout" / "clip_smot"
    (pkg.parent / "prompts").mkdir(parents=True)
    (pkg.parent / "prompts" / "zero_shot_template.txt").write_bytes(text)
    monkeypatch.setattr(bundled, "_PACKAGE", pkg)
    if "{c}" in expected and expected != "holds no {c}":
        assert zero_shot_template() == expected
    else:
        where = pkg.parent / "prompts" / "zero_shot_template.txt"
        with pytest.raises(UserError, match=f"^{re.escape(f'{where}: {expected}')}"):
            zero_shot_template()


@pytest.mark.parametrize("text, expected", [
    (b"\xef\xbb\xbftable,row,ood_set,metric,value\r\n8,MCM,iNaturalist,fpr95,32.08\r\n",  # (Excel's "CSV UTF-8")
     [{"table": "8", "row": "MCM", "ood_set": "iNaturalist", "metric": "fpr95", "value": "32.08"}]),
    (b"table,row,ood_set,metric,value\n8,MCM \xe9,iNaturalist,fpr95,32.08\n", "not UTF-8 text (byte 37)"),  # (Latin-1)
    (b"tabel,row,ood_set,metric,value\n8,MCM,iNaturalist,fpr95,32.08\n", "its header lacks table (the columns are "
     "table, row, ood_set, metric, value)"),  # (a column renamed by hand: a KeyError before)
    (b"tabel,row,ood_set,metrik,value\n8,MCM,iNaturalist,fpr95,32.08\n", "its header lacks table, metric (the "
     "columns are table, row, ood_set, metric, value)"),  # (every column it lacks, not the first alone)
    (b"", "its header lacks table, row, ood_set, metric, value (the columns are table, row, ood_set, metric, "
     "value)"),  # (emptied: no header at all)
])
def test_an_edited_paper_tables_csv_is_read_as_the_other_bundled_files_are(tmp_path, monkeypatch, text, expected):
    """data_lists/paper_tables.csv, the paper's numbers that reproduce writes beside ours, is a
    bundled file a user may edit as the class lists (bundled_text): saved with a byte-order mark
    (what Excel writes for "CSV UTF-8") its first column was named "\\ufefftable" and reproduce's
    last step, writing table.md after every stage had run, ended in a KeyError traceback; a byte
    that is not UTF-8 in a UnicodeDecodeError one. The mark is no part of the header, and a file
    that is not UTF-8 is one line naming it."""
    from clip_smot.reproduce import paper_table

    pkg = tmp_path / "checkout" / "clip_smot"
    (pkg.parent / "data_lists").mkdir(parents=True)
    (pkg.parent / "data_lists" / "paper_tables.csv").write_bytes(text)
    monkeypatch.setattr(bundled, "_PACKAGE", pkg)
    if isinstance(expected, list):
        assert paper_table("8") == expected
    else:
        where = pkg.parent / "data_lists" / "paper_tables.csv"
        with pytest.raises(UserError, match=f"^{re.escape(f'{where}: {expected}')}"):
            paper_table("8")


def test_a_bundled_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, monkeypatch):
    """A list found but unreadable (an I/O error, a file of another user's with mode 600) is one
    line naming it and the reason, not a traceback."""
    monkeypatch.setattr(bundled, "bundled_file", lambda *parts: tmp_path)  # (reading a folder: EISDIR)
    with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path))}: cannot be read \(Is a directory\)$"):
        bundled.imagenet_wnids()
