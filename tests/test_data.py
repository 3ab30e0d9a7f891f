import pytest

from clip_smot import data
from clip_smot.errors import UserError


def test_bundled_lists():
    wnids, names = data.imagenet_wnids(), data.imagenet_classnames()
    assert len(wnids) == len(names) == 1000 and wnids == sorted(wnids)
    assert names[wnids.index("n02123045")] == "tabby cat"
    w200 = data.imagenet200_wnids()
    assert len(set(w200)) == 200 and set(w200) <= set(wnids)


def test_bundled_file_in_a_wheel_layout(tmp_path, monkeypatch):
    """Installed from a wheel, the lists sit in clip_smot/_data/ (see pyproject.toml)."""
    pkg = tmp_path / "site" / "clip_smot"
    (pkg / "_data" / "prompts").mkdir(parents=True)
    (pkg / "_data" / "prompts" / "zero_shot_template.txt").write_text("a photo of a {c}.\n")
    monkeypatch.setattr(data, "_PACKAGE", pkg)
    assert data.bundled_file("prompts", "zero_shot_template.txt") == pkg / "_data" / "prompts" / "zero_shot_template.txt"
    with pytest.raises(UserError, match="data_lists/imagenet1k_wnids.txt: missing"):
        data.imagenet_wnids()
