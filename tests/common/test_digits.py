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
