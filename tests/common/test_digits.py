import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from clip_smot.common.digits import DIGIT_NAMES, ensure_digits


def test_digits_folders(tmp_path):
    root = ensure_digits(size=16, root=tmp_path / "d16")
    train = sorted((root / "train").rglob("*.png"))
    val = sorted((root / "val").rglob("*.png"))
    assert len(train) + len(val) == 1797
    assert abs(len(val) - 0.25 * 1797) < 2
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(DIGIT_NAMES)
    # an image is its digit, upsampled: back at 8x8 it matches the source
    p = train[0]
    i = int(p.stem)
    digits = load_digits()
    assert DIGIT_NAMES[digits.target[i]] == p.parent.name
    small = np.asarray(Image.open(p).convert("L").resize((8, 8), Image.BOX), dtype=float)
    assert np.corrcoef(small.ravel(), digits.images[i].ravel())[0, 1] > 0.9
    # the split is stratified: each digit 25% in val, to within one image
    for k, name in enumerate(DIGIT_NAMES):
        n_val, n_all = len(list((root / "val" / name).iterdir())), int((digits.target == k).sum())
        assert abs(n_val - 0.25 * n_all) <= 1, name
    # pixels: the 0..16 values scaled to 0..255, upsampled bicubically (PIL's), as grey RGB
    for p in (train[0], val[-1]):
        i = int(p.stem)
        want = Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8)).resize((16, 16), Image.BICUBIC)
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(want.convert("RGB"))), p
    # the photos are crops of all the sources: grey ones (camera, moon, ...) and colour ones
    grey = [bool((lambda a: (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())(
        np.asarray(Image.open(f)))) for f in sorted((root / "ood" / "photos").glob("*.png"))]
    assert 0 < sum(grey) < len(grey)
    for name in ("photos", "textures"):
        files = list((root / "ood" / name).glob("*.png"))
        assert len(files) == 300 and Image.open(files[0]).size == (16, 16)
    # reused, not rewritten
    mtime = (root / "digits.json").stat().st_mtime_ns
    assert ensure_digits(size=16, root=root) == root
    assert (root / "digits.json").stat().st_mtime_ns == mtime


def test_digits_and_the_feature_cache_share_one_cache_root(tmp_path, monkeypatch):
    from clip_smot.clip.features import cache_dir
    from clip_smot.common.digits import default_root

    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path))
    assert default_root(32) == tmp_path / "digits-32" and cache_dir() == tmp_path / "features"
    monkeypatch.delenv("CLIP_SMOT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root(32) == tmp_path / "home" / ".cache" / "clip_smot" / "digits-32"
    assert cache_dir() == tmp_path / "home" / ".cache" / "clip_smot" / "features"


def test_first_uses_at_once_each_get_the_whole_set(tmp_path):
    """The ranks of a torchrun on --dataset digits (or a fit and an eval started together) wrote
    the set at once on first use: they shared one temporary folder and all but one died with a
    FileExistsError or FileNotFoundError traceback."""
    import os
    import subprocess
    import sys

    root, go = tmp_path / "d8", tmp_path / "go"
    code = ("import sys, time, pathlib\n"
            "from clip_smot.common.digits import ensure_digits\n"
            "print('ready', flush=True)\n"
            "go = pathlib.Path(sys.argv[2])\n"
            "while not go.exists(): time.sleep(0.01)\n"  # all imported: start together
            "root = ensure_digits(size=8, root=sys.argv[1])\n"
            "print(len(list((root / 'train').rglob('*.png'))) + len(list((root / 'val').rglob('*.png'))))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(go)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 2
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [(p.returncode, out.strip()) for p, (out, _) in zip(procs, results)] == [(0, "1797")] * 2, results
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary folder left
    (root / "digits.json").write_text('{"version": ')  # a damaged marker: written again, not a traceback
    assert ensure_digits(size=8, root=root) == root and json.loads((root / "digits.json").read_text())["size"] == 8


def test_a_cache_that_cannot_be_written_is_one_line_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    """$CLIP_SMOT_CACHE a file, a full disk, a read-only folder: each was a traceback, and the
    full disk left digits-8.tmp behind (as large as what fitted). (Read-only is simulated: these
    tests may run as root, for whom chmod does not make a folder read-only.)"""
    import errno

    import pytest
    from click.testing import CliRunner

    from clip_smot.cli import cli
    from clip_smot.common.errors import UserError

    (tmp_path / "cache").write_text("a file where the cache folder goes")
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--dry-run", "--device", "cpu", "--out",
                                   str(tmp_path / "run")])
    assert res.exit_code == 1 and res.output == (
        f"Error: $CLIP_SMOT_CACHE {tmp_path / 'cache'}: cannot write the bundled digits to "
        f"{tmp_path / 'cache' / 'digits-32'} ({tmp_path / 'cache'} is a file, not a folder); free space there or set CLIP_SMOT_CACHE to a "
        "writable folder\n")

    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "full"))
    saves = []

    def full_disk(self, fp, *args, **kwargs):
        saves.append(fp)
        if len(saves) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(UserError, match=rf"^\$CLIP_SMOT_CACHE {tmp_path / 'full'}: cannot write the bundled digits to "
                                        rf"{tmp_path / 'full' / 'digits-8'} \(no space left on the device\)"):
        ensure_digits(size=8)
    assert len(saves) == 101 and sorted(p.name for p in (tmp_path / "full").iterdir()) == [".digits-8.lock"]
    monkeypatch.setattr(Image.Image, "save", real_save)

    monkeypatch.delenv("CLIP_SMOT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(UserError, match=rf"^the cache folder {tmp_path / 'home' / '.cache' / 'clip_smot'}: cannot "
                                        r"write the bundled digits to .*digits-8 \(Permission denied\)"):
        ensure_digits(size=8)
    assert not (tmp_path / "home").exists()


def test_without_scikit_image_the_digits_are_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    import sys

    import pytest

    from clip_smot.common.digits import write_digits
    from clip_smot.common.errors import UserError

    monkeypatch.setitem(sys.modules, "skimage.data", None)  # (import skimage.data raises ImportError)
    with pytest.raises(UserError, match=r"^the digits OOD sets need scikit-image: pip install scikit-image$"):
        write_digits(tmp_path / "d8", size=8)
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_the_digits_folder_goes_is_named_as_the_blocker(tmp_path, monkeypatch):
    import pytest

    from clip_smot.common import digits
    from clip_smot.common.errors import UserError

    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path))
    monkeypatch.setattr(digits, "_write", lambda tmp, size, n_ood, seed: tmp.mkdir())  # (the folders: not needed)
    (tmp_path / "digits-8").write_text("a file, not the digits folder")
    with pytest.raises(UserError) as e:
        ensure_digits(size=8)
    assert str(e.value) == (f"$CLIP_SMOT_CACHE {tmp_path}: cannot write the bundled digits to {tmp_path / 'digits-8'} "
                            f"({tmp_path / 'digits-8'} is a file, not a folder); free space there or set "
                            "CLIP_SMOT_CACHE to a writable folder")
    assert (tmp_path / "digits-8").read_text() == "a file, not the digits folder"


def test_written_folders_are_the_digits_folders_of_every_size(tmp_path, monkeypatch):
    from clip_smot.common.digits import written_folders

    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path))
    for name in ("digits-8", "digits-32", "features", "digits", "digits_old"):  # (the last two: no set's name)
        (tmp_path / name).mkdir()
    (tmp_path / "digits-16").write_text("a file, not a digits folder")
    assert written_folders() == [("the bundled digits folder", tmp_path / "digits-32"),
                                 ("the bundled digits folder", tmp_path / "digits-8")]


def test_a_marker_of_another_size_or_version_is_written_again(tmp_path, monkeypatch):
    from clip_smot.common import digits

    writes = []
    monkeypatch.setattr(digits, "write_digits", lambda root, size: writes.append(size) or root)
    root = tmp_path / "d"
    root.mkdir()
    empty = hashlib.sha256().hexdigest()  # (of a folder holding no set: no train/, val/, ood/)
    for marker, rewritten in (({"version": 1, "size": 16, "sha256": empty}, False),
                              ({"version": 1, "size": 8, "sha256": empty}, True),
                              ({"version": 0, "size": 16, "sha256": empty}, True), ({"size": 16}, True),
                              ({"version": 1, "size": 16}, False)):  # (an older marker, with no sha256: as it is)
        (root / "digits.json").write_text(json.dumps(marker))
        writes.clear()
        assert digits.ensure_digits(size=16, root=root) == root
        assert writes == ([16] if rewritten else []), marker


def test_a_marker_that_is_no_json_object_is_written_again(tmp_path, monkeypatch):
    from clip_smot.common import digits

    writes = []
    monkeypatch.setattr(digits, "write_digits", lambda root, size: writes.append(size) or root)
    root = tmp_path / "d"
    root.mkdir()
    for marker in ("[1, 16]", "16", '"version"', "null"):
        (root / "digits.json").write_text(marker)
        writes.clear()
        assert digits.ensure_digits(size=16, root=root) == root and writes == [16], marker


def test_write_digits_takes_its_seed_and_number_of_ood_images(tmp_path, monkeypatch):
    """(on the first 200 digits, for speed)"""
    from types import SimpleNamespace

    import sklearn.datasets

    from clip_smot.common.digits import write_digits

    full = load_digits()
    monkeypatch.setattr(sklearn.datasets, "load_digits",
                        lambda: SimpleNamespace(images=full.images[:200], target=full.target[:200]))
    roots = [write_digits(tmp_path / f"s{seed}", size=8, n_ood=5, seed=seed) for seed in (0, 1)]
    vals = [sorted(p.name for p in (r / "val").rglob("*.png")) for r in roots]
    assert len(vals[0]) == len(vals[1]) == 50 and vals[0] != vals[1]
    for name in ("photos", "textures"):
        assert [sorted(p.name for p in (r / "ood" / name).iterdir()) for r in roots] == [
            [f"{j:04d}.png" for j in range(5)]] * 2
    crops = [[np.asarray(Image.open(r / "ood" / "photos" / f"{j:04d}.png")) for j in range(5)] for r in roots]
    assert not all(np.array_equal(a, b) for a, b in zip(*crops))  # other crops from another seed
    marker = json.loads((roots[1] / "digits.json").read_text())
    assert {k: v for k, v in marker.items() if k != "sha256"} == {"version": 1, "size": 8, "n_ood": 5, "seed": 1}
    assert len(marker["sha256"]) == 64 and marker["sha256"] != json.loads((roots[0] / "digits.json").read_text())["sha256"]


def test_digits_changed_since_they_were_written_are_refused_by_name(tmp_path, monkeypatch):
    """The digits folders were trusted once their marker was there: an image removed from
    train/one (or one added, or edited) was trained and scored on as the bundled set, exit 0; a
    class folder emptied stopped train with "--data .../train/zero: no image files found", a flag
    that --dataset digits refuses, and no word of the cache. The marker now holds a SHA-256 of the
    sets: changed since, they are one line saying what to remove (a rewrite would replace the
    folder whole, and what else is in it); a file beside the sets is none of theirs."""
    import os
    import shutil
    from types import SimpleNamespace

    import pytest
    import sklearn.datasets

    from clip_smot.common.errors import UserError

    full = load_digits()
    monkeypatch.setattr(sklearn.datasets, "load_digits",
                        lambda: SimpleNamespace(images=full.images[:200], target=full.target[:200]))
    root = ensure_digits(size=8, root=tmp_path / "d8")
    first = {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.png"))}
    assert len(first) == 200 + 2 * 300
    (root / "scores.csv").write_text("a file written beside the sets")  # (score --out may write there)
    assert ensure_digits(size=8, root=root) == root
    one = sorted((root / "train" / "one").iterdir())
    damage = [lambda: one[0].unlink(),  # an image removed
              lambda: (root / "train" / "one" / "extra.png").write_bytes(one[1].read_bytes()),  # one added
              lambda: one[1].write_bytes(one[1].read_bytes()[:-1]),  # one cut short
              lambda: [p.unlink() for p in (root / "train" / "zero").iterdir()],  # a class emptied
              lambda: (root / "val" / "ten").mkdir(),  # a class folder added
              lambda: os.mkfifo(root / "ood" / "photos" / "f.png")]  # a FIFO, never opened
    for i, damage_ in enumerate(damage):
        damage_()
        with pytest.raises(UserError) as e:
            ensure_digits(size=8, root=root)
        assert str(e.value) == (f"the bundled digits under {root} are not as they were written (an image changed, "
                                "added or removed in train/, val/ or ood/ since; digits.json holds their SHA-256): "
                                f"remove {root} and they are written again on first use"), i
        shutil.rmtree(root)
        assert ensure_digits(size=8, root=root) == root  # (written again: the same seeded set)
        assert {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.png"))} == first, i
        one = sorted((root / "train" / "one").iterdir())


def test_a_class_folders_sorted_listing_is_in_the_digits_order(tmp_path, monkeypatch):
    """Image files are listed sorted by name: the digits' indices are zero-padded so that a class
    folder's listing is in the order of sklearn's digits (an unpadded 10.png sorted before 7.png).
    (on the first 200 digits, for speed)"""
    from types import SimpleNamespace

    import sklearn.datasets

    from clip_smot.common.digits import write_digits

    full = load_digits()
    monkeypatch.setattr(sklearn.datasets, "load_digits",
                        lambda: SimpleNamespace(images=full.images[:200], target=full.target[:200]))
    root = write_digits(tmp_path / "d", size=8, n_ood=1)
    for split in ("train", "val"):
        for k, name in enumerate(DIGIT_NAMES):
            files = sorted(p.name for p in (root / split / name).iterdir())
            indices = [int(f.split(".")[0]) for f in files]
            assert indices == sorted(indices) and all(full.target[i] == k for i in indices), (split, name)
    assert sum(len(list((root / s).rglob("*.png"))) for s in ("train", "val")) == 200


def test_a_set_another_process_wrote_while_this_one_waited_for_the_lock_is_reused(tmp_path, monkeypatch):
    from contextlib import contextmanager

    from clip_smot.common import digits

    root, writes = tmp_path / "d", []

    @contextmanager
    def lock_got_after_another_wrote(path):
        root.mkdir()
        (root / "digits.json").write_text(json.dumps({"version": 1, "size": 16}))
        yield

    monkeypatch.setattr(digits, "file_lock", lock_got_after_another_wrote)
    monkeypatch.setattr(digits, "write_digits", lambda root, size: writes.append(size) or root)
    assert digits.ensure_digits(size=16, root=root) == root and writes == []


def _first_200_digits(monkeypatch):
    """scikit-learn's digits cut to the first 200 (for speed): the full set, for the expected values."""
    from types import SimpleNamespace

    import sklearn.datasets

    full = load_digits()
    monkeypatch.setattr(sklearn.datasets, "load_digits",
                        lambda: SimpleNamespace(images=full.images[:200], target=full.target[:200]))
    return full


def test_write_digits_defaults_are_32_px_and_seed_0(tmp_path, monkeypatch):
    """ensure_digits writes with write_digits's defaults: 32 px (docs/resnet.md: "scikit-learn's
    digits as 32x32 images") and the split of seed 0, scikit-learn's train_test_split(test_size=0.25,
    stratify=target, random_state=0); ensure_digits() itself is the 32 px set of the cache."""
    from sklearn.model_selection import train_test_split

    from clip_smot.common import digits

    full = _first_200_digits(monkeypatch)
    root = digits.write_digits(tmp_path / "d", n_ood=1)
    _, val_idx = train_test_split(np.arange(200), test_size=0.25, stratify=full.target[:200], random_state=0)
    assert sorted(int(p.stem) for p in (root / "val").rglob("*.png")) == sorted(val_idx.tolist())
    assert {Image.open(p).size for p in root.rglob("*.png")} == {(32, 32)}
    marker = json.loads((root / "digits.json").read_text())
    assert {k: v for k, v in marker.items() if k != "sha256"} == {"version": 1, "size": 32, "n_ood": 1, "seed": 0}

    writes = []
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(digits, "write_digits", lambda root, size: writes.append(size) or root)
    assert digits.ensure_digits() == tmp_path / "cache" / "digits-32" and writes == [32]


def test_the_partial_folder_of_a_writer_killed_mid_write_is_replaced(tmp_path, monkeypatch):
    """A writer killed before it could clean up (SIGKILL, a power cut) leaves ROOT.tmp behind: the
    next write starts it afresh; kept, its class folders stopped every later write with "cannot
    write the bundled digits" (FileExistsError)."""
    from clip_smot.common.digits import write_digits

    _first_200_digits(monkeypatch)
    (tmp_path / "d.tmp" / "train" / "zero").mkdir(parents=True)
    (tmp_path / "d.tmp" / "train" / "zero" / "0000.png").write_bytes(b"half an image")
    root = write_digits(tmp_path / "d", size=8, n_ood=1)
    assert sum(len(list((root / s).rglob("*.png"))) for s in ("train", "val")) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_the_temporary_folder_is_named_after_the_set_and_leaves_other_folders_alone(tmp_path, monkeypatch):
    """It is ROOT.tmp: a folder of another name beside the set (a user's .tmp where
    $CLIP_SMOT_CACHE is their home, another size's set being written) is not removed."""
    from clip_smot.common import digits

    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "keep.txt").write_text("a user's file")
    tmps = []
    monkeypatch.setattr(digits, "_write", lambda tmp, size, n_ood, seed: tmps.append(tmp) or tmp.mkdir())
    assert digits.write_digits(tmp_path / "d", size=8) == tmp_path / "d"
    assert tmps == [tmp_path / "d.tmp"] and (tmp_path / ".tmp" / "keep.txt").read_text() == "a user's file"


def test_the_rename_of_the_written_set_is_flushed_to_the_disk(tmp_path, monkeypatch):
    """ROOT.tmp was renamed to ROOT with no flush of their folder: after a power loss ROOT could
    be gone again (or ROOT.tmp back), the set written anew. The folder is flushed after it."""
    import os
    import stat

    from clip_smot.common import digits

    events, fsync, replace = [], os.fsync, os.replace
    monkeypatch.setattr(digits, "_write", lambda tmp, size, n_ood, seed: tmp.mkdir())
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), fsync(fd))[1]
                        if stat.S_ISDIR(os.fstat(fd).st_mode) else fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), replace(a, b))[1])
    digits.write_digits(tmp_path / "d", size=8)
    assert events[-2:] == [("replace", str(tmp_path / "d")), ("fsync", tmp_path.stat().st_ino)]


def test_every_file_of_the_set_is_on_the_disk_before_the_set_is_renamed_into_place(tmp_path, monkeypatch):
    """The images and digits.json were written without an fsync, then ROOT.tmp renamed to ROOT:
    after a power loss ROOT could hold empty images (delayed allocation), refused as damaged until
    removed by hand. Every file and folder of the set is flushed before the rename."""
    import os

    from clip_smot.common import digits

    _first_200_digits(monkeypatch)
    synced, renamed, fsync, replace = set(), [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.add(os.fstat(fd).st_ino), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(set(synced)), replace(a, b))[1])
    root = digits.write_digits(tmp_path / "d", size=8, n_ood=1)
    written = {p.stat().st_ino for p in [root, *root.rglob("*")]}
    assert len(written) == 1 + 3 + 20 + 200 + 2 + 2 + 1  # ROOT, train/val/ood, classes, images, OOD sets, digits.json
    assert len(renamed) == 1 and written <= renamed[0]


def test_an_image_that_cannot_be_saved_names_the_reason_of_an_error_without_errno(tmp_path, monkeypatch):
    """Pillow's encoder errors are OSErrors with a message and no errno (strerror None): the
    line quotes the message, not "(None)"."""
    import pytest

    from clip_smot.common.digits import ensure_digits
    from clip_smot.common.errors import UserError

    def encoder_error(self, fp, *args, **kwargs):
        raise OSError("encoder error -2 when writing image file")

    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path))
    monkeypatch.setattr(Image.Image, "save", encoder_error)
    with pytest.raises(UserError) as e:
        ensure_digits(size=8)
    assert str(e.value) == (f"$CLIP_SMOT_CACHE {tmp_path}: cannot write the bundled digits to {tmp_path / 'digits-8'} "
                            "(encoder error -2 when writing image file); free space there or set CLIP_SMOT_CACHE to "
                            "a writable folder")


def test_a_written_set_is_reused_without_taking_the_lock(tmp_path, monkeypatch):
    """A set already written is read without the lock, whose file cannot be made in a cache that
    is read-only for this user (another user's, a read-only mount): that cache still works.
    (Read-only is simulated: these tests may run as root.)"""
    import errno

    from clip_smot.common import digits

    root = tmp_path / "d"
    root.mkdir()
    (root / "digits.json").write_text(json.dumps({"version": 1, "size": 16}))

    def read_only(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(digits, "file_lock", read_only)
    assert digits.ensure_digits(size=16, root=root) == root


def test_digits_are_written_where_the_file_system_takes_no_locks(tmp_path, monkeypatch):
    """On a file system without flock (an NFS mount without its lock daemon: ENOLCK; injected into
    flock(2) in a real train --dataset digits) the set was never written: "cannot write the bundled
    digits to ... (No locks available); free space there or set CLIP_SMOT_CACHE ...", every run.
    The output locks go on unlocked there (output_lock); so does the digits' lock."""
    import errno
    import fcntl

    from clip_smot.common import digits

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    writes = []
    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(digits, "write_digits", lambda root, size: writes.append(size) or root)
    root = tmp_path / "d"
    assert digits.ensure_digits(size=16, root=root) == root
    assert writes == [16]


def test_the_ood_sets_are_the_crops_of_version_1(tmp_path, monkeypatch):
    """The README's digits numbers are made on these sets, and a cache marked version 1 is reused
    as it is: what they hold is pinned. Image j of a set is a square crop of the set's source
    j mod its number of sources (in the order below; grey ones as grey RGB), its side drawn
    uniformly from [min(48, h, w), min(h, w)], then its top and its left edge uniformly, from one
    numpy Generator of the seed (the photos first), and resized bicubically (Pillow's).
    (13 per set: the photos go round once; the first 200 digits, for speed)"""
    import skimage.data

    from clip_smot.common.digits import write_digits

    _first_200_digits(monkeypatch)
    root = write_digits(tmp_path / "d", size=8, n_ood=13, seed=3)
    rng = np.random.default_rng(3)
    for name, sources in (("photos", ("astronaut", "camera", "cat", "chelsea", "clock", "coffee", "coins",
                                      "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket")),
                          ("textures", ("brick", "cell", "grass", "gravel", "page", "text"))):
        rgb = [(lambda a: np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a)(getattr(skimage.data, s)())
               for s in sources]
        assert sorted(p.name for p in (root / "ood" / name).iterdir()) == [f"{j:04d}.png" for j in range(13)]
        for j in range(13):
            a = rgb[j % len(rgb)]
            h, w = a.shape[:2]
            side = rng.integers(min(48, h, w), min(h, w), endpoint=True)
            top, left = rng.integers(0, h - side, endpoint=True), rng.integers(0, w - side, endpoint=True)
            want = Image.fromarray(a[top:top + side, left:left + side]).resize((8, 8), Image.BICUBIC)
            got = np.asarray(Image.open(root / "ood" / name / f"{j:04d}.png"))
            assert np.array_equal(got, np.asarray(want)), (name, j)


def test_an_empty_clip_smot_cache_is_not_named_as_the_cache_folder(tmp_path, monkeypatch):
    """CLIP_SMOT_CACHE set to "" is unset for cache_root (the home folder's cache is used): the
    line names that folder, not "$CLIP_SMOT_CACHE : ..."."""
    import pytest

    from clip_smot.common.errors import UserError

    monkeypatch.setenv("CLIP_SMOT_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".cache").write_text("a file where the cache folder goes")
    with pytest.raises(UserError) as e:
        ensure_digits(size=8)
    cache = tmp_path / "home" / ".cache"
    assert str(e.value) == (f"the cache folder {cache / 'clip_smot'}: cannot write the bundled digits to "
                            f"{cache / 'clip_smot' / 'digits-8'} ({cache} is a file, not a folder); free space "
                            "there or set CLIP_SMOT_CACHE to a writable folder")


def test_a_fifo_where_the_cache_folder_goes_is_named_as_the_blocker(tmp_path, monkeypatch):
    """Not only a regular file: whatever is there and is no folder (a named pipe, a socket) is
    the blocker the line names."""
    import os

    import pytest

    from clip_smot.common.errors import UserError

    os.mkfifo(tmp_path / "cache")
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=rf"\({tmp_path / 'cache'} is a file, not a folder\)"):
        ensure_digits(size=8)


def test_digits_whose_files_cannot_be_hashed_are_damaged_not_a_traceback(tmp_path, monkeypatch):
    """An image of the sets that cannot be read while it is hashed (an I/O error, a file made
    unreadable) leaves them unverified: refused as damaged, in the one line saying what to remove."""
    from types import SimpleNamespace

    import pytest
    import sklearn.datasets

    from clip_smot.common import digits
    from clip_smot.common.errors import UserError

    full = load_digits()
    monkeypatch.setattr(sklearn.datasets, "load_digits",
                        lambda: SimpleNamespace(images=full.images[:200], target=full.target[:200]))
    root = ensure_digits(size=8, root=tmp_path / "d8")

    def unreadable(root):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(digits, "_manifest", unreadable)
    with pytest.raises(UserError, match=rf"^the bundled digits under {root} are not as they were written "):
        ensure_digits(size=8, root=root)


def test_digits_found_damaged_once_the_lock_is_had_are_refused_not_rewritten(tmp_path, monkeypatch):
    """Another process's sets, absent when this one looked and damaged by the time it holds the
    lock (changed while it waited): refused as damaged, not written over."""
    import pytest

    from clip_smot.common import digits
    from clip_smot.common.errors import UserError

    states = iter(["absent", "damaged"])
    monkeypatch.setattr(digits, "_state", lambda root, size: next(states))
    monkeypatch.setattr(digits, "write_digits", lambda *a, **k: pytest.fail("the damaged sets were written over"))
    root = tmp_path / "d8"
    with pytest.raises(UserError, match=rf"^the bundled digits under {root} are not as they were written "):
        ensure_digits(size=8, root=root)


def _tiny_set(root: Path) -> None:
    """A few small files where the digits' sets lie (train/, val/, ood/), for their SHA-256."""
    for i, rel in enumerate(("train/zero/0000.png", "train/one/0001.png", "train/two/0002.png", "val/one/0003.png",
                             "ood/photos/0000.png", "ood/textures/0000.png")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(bytes([i]) * (i + 1))


def test_the_sets_sha256_does_not_depend_on_the_order_a_file_system_lists_folders_in(tmp_path, monkeypatch):
    """digits.json's SHA-256 is checked on every use: a cache copied to another file system (or
    rebuilt by a tool that creates folders in another order) lists its folders in another order,
    and must hash the same, or the set is refused as damaged though no image changed."""
    import os

    from clip_smot.common import digits

    _tiny_set(tmp_path)
    as_listed = digits._manifest(tmp_path)
    walk = os.walk

    def listed_backwards(top, *args, **kwargs):  # (what another file system's readdir may give)
        for folder, dirnames, filenames in walk(top, *args, **kwargs):
            dirnames.reverse()
            filenames.reverse()
            yield folder, dirnames, filenames

    monkeypatch.setattr(os, "walk", listed_backwards)
    assert digits._manifest(tmp_path) == as_listed


def test_an_image_moved_to_another_class_or_an_empty_folder_added_changes_the_sets_sha256(tmp_path):
    """An image moved, unchanged, into another class folder changes its label, and an empty class
    folder added is one more class of the ImageFolder: either is a set changed since it was written,
    though no file's bytes changed."""
    from clip_smot.common import digits

    _tiny_set(tmp_path)
    written = digits._manifest(tmp_path)
    (tmp_path / "train/one/0001.png").rename(tmp_path / "train/two/0001.png")
    moved = digits._manifest(tmp_path)
    assert moved != written
    (tmp_path / "train/ten").mkdir()
    assert digits._manifest(tmp_path) not in (written, moved)


def test_a_cache_path_too_long_for_the_file_system_is_one_line_naming_it(tmp_path, monkeypatch, tiny_clip_config):
    """$CLIP_SMOT_CACHE whose last name is 300 characters (past NAME_MAX, 255): eval, which lists
    the bundled digits folders in the cache before any work, ended in a traceback (found by fuzzing
    the environment). One line naming CLIP_SMOT_CACHE, exit 1, nothing written."""
    from click.testing import CliRunner

    from clip_smot.cli import cli

    images = tmp_path / "id" / "a"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "0.png")
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / ("c" * 300)))
    res = CliRunner().invoke(cli, ["eval", "--zero-shot", "--model", tiny_clip_config, "--pretrained", "none",
                                   "--id", str(tmp_path / "id"), "--ood", f"x={images}", "--workers", "0",
                                   "--device", "cpu", "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and isinstance(res.exception, (SystemExit, type(None))), repr(res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "CLIP_SMOT_CACHE" in lines[0] and "Traceback" not in res.output, res.output
    assert not (tmp_path / "e").exists()


def test_the_digits_line_for_a_cache_path_too_long_is_one_line(tmp_path, monkeypatch):
    """train --dataset digits with $CLIP_SMOT_CACHE whose last name is 300 characters (past
    NAME_MAX; found by fuzzing the environment): the digits cannot be written there, and the
    function that words that line raised the same OSError again, a traceback. One line naming
    CLIP_SMOT_CACHE, exit 1, nothing written."""
    from click.testing import CliRunner

    from clip_smot.cli import cli

    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / ("c" * 300)))
    res = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--dry-run", "--device", "cpu", "--out",
                                   str(tmp_path / "run")])
    assert res.exit_code == 1 and isinstance(res.exception, (SystemExit, type(None))), repr(res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "CLIP_SMOT_CACHE" in lines[0] and "Traceback" not in res.output, res.output
    assert list(tmp_path.iterdir()) == []
