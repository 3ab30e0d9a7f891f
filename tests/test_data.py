"""clip_smot.data: image loading errors are one line naming the file."""

import pytest
from PIL import Image

from clip_smot.data import load_image
from clip_smot.errors import UserError


def test_truncated_and_oversized_images_are_user_errors(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(good)
    assert load_image(good).size == (64, 64)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:40])
    with pytest.raises(UserError, match="broken.png: unreadable or truncated"):
        load_image(broken)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is over twice this: a decompression bomb
    with pytest.raises(UserError, match="good.png: image too large"):
        load_image(good)


def test_binary_split_and_image_list_files_are_user_errors(tmp_path):
    from clip_smot.fewshot import FewShotClasses, read_split
    from clip_smot.ood_data import read_image_list

    binary = tmp_path / "list.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 not utf-8 \x9f")
    classes = FewShotClasses(tmp_path, ("a",), ("a",), None)
    with pytest.raises(UserError, match="--split .*list.txt: not a text file"):
        read_split(binary, classes)
    with pytest.raises(UserError, match="--ood .*list.txt: not a text file"):
        read_image_list(binary, tmp_path, "--ood")
