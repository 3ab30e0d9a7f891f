"""The wheel and the sdist, as a user who does not clone the repository gets them: built by the
installed setuptools from a copy of the project (no network, no build isolation), then read as
archives and run from the unpacked wheel, outside the repository."""

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import clip_smot

pytestmark = pytest.mark.slow  # (two builds and a clip-smot --version: 5 to 10 s on 2 cores)

ROOT = Path(__file__).resolve().parents[1]
DATA_FOLDERS = ("prompts", "data_lists")  # shipped as clip_smot/_data/<folder>/ (pyproject.toml)
_BUILD = "import sys\nfrom setuptools import build_meta\nprint('built', getattr(build_meta, sys.argv[1])(sys.argv[2]))\n"


def _copy_project(dst: Path) -> None:
    """What a clean checkout holds: the top-level files (pyproject.toml, README.md, a MANIFEST.in or
    LICENSE if one comes) and the project's folders, not dot-files, build output or data a user
    keeps in the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")
    for p in ROOT.iterdir():
        if p.is_file() and not p.name.startswith("."):
            shutil.copy2(p, dst / p.name)
    for name in ("clip_smot", "prompts", "data_lists", "tests", "docs", "benchmarks"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore, symlinks=True)


def _build(src: Path, out: Path, what: str = "wheel") -> tuple[Path, str]:
    """Build the wheel or the sdist of ``src`` into ``out``: its path, and what the build wrote to stderr."""
    res = subprocess.run([sys.executable, "-c", _BUILD, f"build_{what}", str(out)], cwd=src, capture_output=True,
                         text=True, timeout=300)  # (one process a build: in one, the sdist went to src/bdist_wheel/)
    assert res.returncode == 0, res.stderr[-3000:]
    (name,) = (line.split()[1] for line in res.stdout.splitlines() if line.startswith("built "))
    return out / name, res.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    src, out = tmp_path_factory.mktemp("checkout"), tmp_path_factory.mktemp("dist")
    _copy_project(src)
    (wheel, wheel_log), (sdist, sdist_log) = _build(src, out, "wheel"), _build(src, out, "sdist")
    return wheel, sdist, wheel_log + sdist_log


def _wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if ".dist-info/" not in n}


def test_the_wheel_holds_every_module_and_bundled_file_and_nothing_else(built):
    """Every module of clip_smot/ and every file of prompts/ and data_lists/ (as clip_smot/_data/),
    and no tests, caches or anything else of the repository."""
    expected = {"/".join(p.relative_to(ROOT).parts) for p in (ROOT / "clip_smot").rglob("*.py")
                if "__pycache__" not in p.parts}
    expected |= {f"clip_smot/_data/{folder}/{p.name}" for folder in DATA_FOLDERS for p in (ROOT / folder).iterdir()}
    assert _wheel_files(built[0]) == expected


def test_the_wheel_metadata_is_pyprojects(built):
    """Name, version (clip_smot.__version__, which every prompt and model file records), Python
    floor, dependencies with their extras, the README as the description, and the clip-smot
    command."""
    try:
        import tomllib
    except ImportError:  # (Python 3.10: tomli, which pytest needs there)
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    info = f"clip_smot-{clip_smot.__version__}.dist-info"
    with zipfile.ZipFile(built[0]) as z:
        meta = email.message_from_string(z.read(f"{info}/METADATA").decode())
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert (meta["Name"], meta["Version"]) == ("clip-smot", clip_smot.__version__)
    assert meta["Requires-Python"] == project["requires-python"]
    extras = [f'{req}; extra == "{extra}"' for extra, reqs in project["optional-dependencies"].items() for req in reqs]
    assert sorted(meta.get_all("Requires-Dist")) == sorted(project["dependencies"] + extras)
    assert meta.get_payload().strip() == (ROOT / "README.md").read_text().strip()
    assert "[console_scripts]\nclip-smot = clip_smot.__main__:main" in entry_points


def test_the_unpacked_wheel_runs_and_reads_its_own_lists(built, tmp_path):
    """From a folder outside the repository, with only the unpacked wheel on the path: the
    command's version is the metadata's, and each bundled file is found in clip_smot/_data/."""
    site = tmp_path / "site"
    with zipfile.ZipFile(built[0]) as z:
        z.extractall(site)
    user = tmp_path / "user"
    user.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "clip_smot", "--version"], cwd=user, env=env, capture_output=True,
                         text=True, timeout=120)
    assert (res.returncode, res.stdout) == (0, f"clip-smot, version {clip_smot.__version__}\n"), res.stderr
    files = [(folder, p.name) for folder in DATA_FOLDERS for p in sorted((ROOT / folder).iterdir())]
    code = ("import sys, clip_smot.common.bundled as b\nprint(b.__file__)\n"
            "for folder, name in eval(sys.argv[1]): print(b.bundled_file(folder, name))\n"
            "print(len(b.imagenet_classnames()))\n")
    res = subprocess.run([sys.executable, "-c", code, repr(files)], cwd=user, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == str(site / "clip_smot" / "common" / "bundled.py")
    assert lines[1:-1] == [str(site / "clip_smot" / "_data" / folder / name) for folder, name in files]
    assert lines[-1] == "1000"


def test_the_sdist_builds_the_same_wheel(built, tmp_path):
    """pip install of the sdist (what a user without a matching wheel gets) builds from it: it
    must hold everything the wheel is made of."""
    with tarfile.open(built[1]) as t:
        t.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = tmp_path.iterdir()
    out = tmp_path / "dist"
    out.mkdir()
    wheel, _ = _build(unpacked, out)
    assert _wheel_files(wheel) == _wheel_files(built[0])


def test_the_build_uses_nothing_setuptools_deprecates(built):
    """setuptools 77 deprecated ``license = { text = ... }`` for an SPDX string and stops building
    projects that use it on 2027-02-18: a deprecation today is a failed pip install then."""
    assert "DeprecationWarning" not in built[2], built[2][:3000]


def test_the_sdist_holds_the_whole_test_suite_and_what_it_reads(built):
    """By default setuptools adds tests/test*.py to an sdist (12 files), not conftest.py, helpers.py
    or tests/clip/, tests/common/, tests/resnet/: pytest in the unpacked sdist (what distributions
    that package from sdists run) failed on every import of helpers and every fixture. MANIFEST.in
    adds the suite, the docs and benchmarks it reads, and the LICENSE; no byte code."""
    with tarfile.open(built[1]) as t:
        shipped = {m.name.split("/", 1)[1] for m in t.getmembers() if m.isfile()}
    for folder in ("tests", "docs", "benchmarks"):
        tree = {"/".join(p.relative_to(ROOT).parts) for p in (ROOT / folder).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
        assert {n for n in shipped if n.startswith(f"{folder}/")} == tree, folder
    assert {"LICENSE", "MANIFEST.in", "pyproject.toml", "README.md"} <= shipped
    assert not [n for n in shipped if "__pycache__" in n or n.endswith(".pyc")]
