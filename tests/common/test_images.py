"""clip_smot.common.images: image loading errors as one line naming the file; listing and path escapes."""

import re
import tarfile
import warnings
from pathlib import Path

import pytest
from PIL import Image

from clip_smot.common import images
from clip_smot.common.errors import UserError
from clip_smot.common.images import load_image


def test_truncated_and_oversized_images_are_user_errors(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(good)
    assert load_image(good).size == (64, 64)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:40])
    with pytest.raises(UserError, match="broken.png: unreadable or truncated"):
        load_image(broken)
    for data in (None, b"no image"):  # (read by PIL from the file, or from bytes read before: a shard's member)
        (tmp_path / "text.jpg").write_bytes(b"no image")
        with pytest.raises(UserError) as e:
            load_image(tmp_path / "text.jpg", data=data)
        assert str(e.value) == (f"{tmp_path / 'text.jpg'}: unreadable or truncated image "
                                "(not a JPEG, PNG, BMP, GIF, TIFF, WebP or PPM/PGM image)")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is over twice this: a decompression bomb
    with pytest.raises(UserError, match="good.png: image too large"):
        load_image(good)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between the limit and twice it: it reads
    with warnings.catch_warnings(record=True):
        assert load_image(good).size == (64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)

    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr(Image.Image, "load", no_memory)
    with pytest.raises(UserError, match="good.png: image too large to decode \\(out of memory\\)"):
        load_image(good)


def test_the_command_line_silences_pils_warning_below_its_refusal(monkeypatch):
    """An image between PIL's pixel limit and twice it decodes, with a DecompressionBombWarning
    over two lines of stderr beside the run's own lines (beyond twice, it is refused in one
    line): the console entry point ignores that warning, for every thread and worker."""
    from helpers import warnings_main_lets_through

    def bomb():
        warnings.warn("Image size (90000000 pixels) exceeds limit", Image.DecompressionBombWarning)

    assert warnings_main_lets_through(monkeypatch, bomb) == ["another"]


@pytest.mark.parametrize("fmt", ["EPS", "DDS", "SPIDER", "ICO", "PCX"])
def test_only_the_listed_formats_are_decoded_whatever_the_name(tmp_path, fmt):
    """A .jpg holding PostScript reached PIL's EPS reader, which runs Ghostscript on it; DDS and
    SPIDER files raised NotImplementedError / AttributeError as tracebacks. PIL now reads only the
    formats of IMAGE_EXTENSIONS: any other is one line naming the file. A PNG named .jpg still reads."""
    im = Image.new("RGB", (8, 8), (200, 10, 10))
    path = tmp_path / "x.jpg"
    # written under the format's own extension, then renamed: PIL's SPIDER writer registers the
    # extension it writes to as SPIDER's, and every later .jpg saved would be a SPIDER file
    written = tmp_path / f"x.{fmt.lower()}"
    (im.convert("F") if fmt == "SPIDER" else im).save(written, fmt)
    written.rename(path)
    assert Image.open(path).format == fmt  # (what PIL would have read it as)
    with pytest.raises(UserError) as e:
        load_image(path)
    assert str(e.value) == f"{path}: unreadable or truncated image (not a JPEG, PNG, BMP, GIF, TIFF, WebP or PPM/PGM image)"
    im.save(tmp_path / "png.jpg", "PNG")
    assert load_image(tmp_path / "png.jpg").getpixel((0, 0)) == (200, 10, 10)


def test_any_error_of_a_readers_decoding_is_one_line(tmp_path, monkeypatch):
    """A damaged TIFF made PIL raise TypeError ("'bytes' object cannot be interpreted as an
    integer"), past --skip-unreadable as a traceback: every error of decoding is now a UserError."""
    Image.new("RGB", (8, 8)).save(tmp_path / "x.tif")

    def broken(self):
        raise TypeError("'bytes' object cannot be interpreted as an integer")

    monkeypatch.setattr(Image.Image, "load", broken)
    with pytest.raises(UserError) as e:
        load_image(tmp_path / "x.tif")
    assert str(e.value) == (f"{tmp_path / 'x.tif'}: unreadable or truncated image ('bytes' object cannot be "
                            "interpreted as an integer)")


def test_binary_split_and_image_list_files_are_user_errors(tmp_path):
    from clip_smot.clip.fewshot import FewShotClasses, read_split
    from clip_smot.common.image_sets import read_image_list

    binary = tmp_path / "list.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 not utf-8 \x9f")
    classes = FewShotClasses(tmp_path, ("a",), ("a",), None)
    with pytest.raises(UserError, match="--split .*list.txt: not a text file"):
        read_split(binary, classes)
    with pytest.raises(UserError, match="--ood .*list.txt: not a text file"):
        read_image_list(binary, tmp_path, "--ood")


def test_sixteen_bit_and_float_grey_images_are_scaled_not_clipped(tmp_path):
    import numpy as np

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")  # a 16-bit grey PNG
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "f32.tif")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = np.asarray(load_image(tmp_path / "g16.png"))  # [64, 64, 3]
    expected = np.round(ramp / 257.0).astype(np.uint8)  # by hand: 0..65535 -> 0..255
    assert (got == expected[..., None]).all() and (got < 255).mean() > 0.99  # PIL's convert: 255 from 255 on
    assert (np.asarray(load_image(tmp_path / "f32.tif")) == 128).all()  # 0.5 * 255, not 0
    dark = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 4)  # 16 bits, 0 .. 252: still scaled by 257
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert Image.open(tmp_path / "dark16.png").mode.startswith("I")
    assert np.asarray(load_image(tmp_path / "dark16.png", mode="L")).tolist() == np.round(dark / 257.0).tolist()


def test_grey_integer_images_scale_as_round_a_over_257_in_little_memory():
    """eight_bit worked in float64 (about 33 bytes a pixel: a 13,000 x 13,000 16-bit PNG of 360 KB
    held 4.8 GB); it now works in int32 in place. The values: round(a / 257) clipped to [0, 255],
    computed here in float64 by hand, for 16-bit and 32-bit ('I', negative and over 65535) images."""
    import tracemalloc

    import numpy as np

    from clip_smot.common.images import eight_bit

    a = np.array([[-5, 0, 128, 129, 300, 385, 386, 65535, 70000, 2**31 - 1]], dtype=np.int32)
    got = np.asarray(eight_bit(Image.fromarray(a, "I")))
    assert got.tolist() == np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8).tolist()
    assert np.asarray(eight_bit(Image.fromarray(np.array([[0, 7, 255]], np.int32), "I"))).tolist() == [[0, 7, 255]]
    # one value over 255 makes an 'I' image 16-bit: 256 -> round(256 / 257) = 1, 255 -> 1
    assert np.asarray(eight_bit(Image.fromarray(np.array([[0, 255, 256]], np.int32), "I"))).tolist() == [[0, 1, 1]]
    big = Image.fromarray(np.random.default_rng(0).integers(0, 65536, (1000, 1000)).astype(np.uint16))
    assert big.mode.startswith("I;16")
    tracemalloc.start()
    try:
        small = eight_bit(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = np.round(np.asarray(big, dtype=np.float64) / 257.0).astype(np.uint8)
    assert (np.asarray(small) == expected).all() and small.mode == "L"
    assert peak < 10 * 1000 * 1000, peak  # bytes: under 10 a pixel (numpy's arrays are traced)


def test_hidden_files_and_folders_are_not_data(tmp_path):
    from clip_smot.clip.fewshot import _class_images

    for rel in ("cat/a.png", "cat/sub/b.png", "cat/._a.png", "cat/.thumbs/t.png", ".hidden/x.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel, format="PNG")
    assert [p.relative_to(tmp_path).as_posix() for p in images.list_images(tmp_path)] == ["cat/a.png", "cat/sub/b.png"]
    assert _class_images(tmp_path, "cat") == ["cat/a.png", "cat/sub/b.png"]
    assert images.class_folders(tmp_path) == ["cat"]


def test_symlinked_folders_are_followed_once(tmp_path):
    """A symlinked folder inside a class folder is read (rglob and os.walk skip it by default);
    a symlink loop ends."""
    from clip_smot.clip.fewshot import _class_images

    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "elsewhere" / "e.png")
    (tmp_path / "data" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "data" / "cat" / "a.png")
    (tmp_path / "data" / "cat" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "data" / "cat" / "loop").symlink_to(tmp_path / "data" / "cat", target_is_directory=True)
    names = [p.relative_to(tmp_path / "data").as_posix() for p in images.list_images(tmp_path / "data")]
    assert names == ["cat/a.png", "cat/more/e.png"]
    assert _class_images(tmp_path / "data", "cat") == ["cat/a.png", "cat/more/e.png"]


@pytest.mark.parametrize("link", ["blue/sub", "crimson"])
def test_a_class_folder_linked_from_another_class_keeps_its_own_images(tmp_path, link):
    """A link to the class folder red, inside the class blue or as a class crimson of its own
    (both sorted before red), was walked first: red/a.png was labelled blue (crimson) and the class
    red had no test image, with exit 0 and no word. red's own images are red's, or the set is
    refused in one line naming the folders."""
    from clip_smot.common.image_sets import id_class_folders, id_set

    for c in ("blue", "red"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / c / "a.png")
    (tmp_path / link).symlink_to(tmp_path / "red", target_is_directory=True)
    folders = id_class_folders(tmp_path)
    try:
        s = id_set(tmp_path, folders, prompt_folders=folders)
    except UserError as e:
        assert len(str(e).splitlines()) == 1 and "red" in str(e).replace(str(tmp_path), ""), str(e)
        return
    labels = {p.relative_to(tmp_path).as_posix(): folders[y] for p, y in zip(s.paths, s.labels)}
    assert labels.get("red/a.png") == "red", labels


def test_escape_path_by_hand_and_back_to_the_same_bytes():
    """Escaped names are one line of UTF-8 whose escapes are the documented ones, and read back
    to the same bytes (os.fsencode), for hand-picked and for random byte names."""
    import os
    import random

    from clip_smot.common.images import escape_path, unescape_path

    cases = {b"plain caf\xc3\xa9.png": "plain caf\u00e9.png", b"caf\xe9.jpg": "caf\\xe9.jpg",
             b"a\nb\tc\rd": "a\\u000ab\\u0009c\\u000dd", b"x\\y": "x\\\\y", b"\\xff": "\\\\xff",
             "p\u2028q\u0085".encode(): "p\\u2028q\\u0085", b"\xe2\x80": "\\xe2\\x80",
             b"\x80": "\\x80", b"\xff": "\\xff"}  # (the ends of os.fsdecode's surrogates, U+DC80..U+DCFF)
    for raw, text in cases.items():
        assert escape_path(os.fsdecode(raw)) == text
        assert os.fsencode(unescape_path(text)) == raw
    assert unescape_path("a\\b\\x4") == "a\\b\\x4"  # a backslash that starts no escape is itself
    # \\xNN under 0x80 is that character (ASCII is never a stray byte); from 0x80 on, the byte
    assert unescape_path("\\x41\\x7f") == "A\x7f" and unescape_path("\\x80") == "\udc80"
    # surrogates just outside os.fsdecode's byte range are other surrogates: \\uNNNN, not a byte
    for other in ("\udc7f", "\udd00", "\ud800"):
        assert escape_path(other) == f"\\u{ord(other):04x}" and unescape_path(escape_path(other)) == other
    rng = random.Random(0)
    alphabet = [92, 10, 13, 9, 120, 117, 0xC3, 0xA9, 0xE2, 0x80, 0xA8, 0xFF, 48, 97]
    for _ in range(3000):
        raw = bytes(rng.choice(alphabet) if rng.random() < 0.7 else rng.randrange(1, 256) for _ in range(rng.randrange(1, 10)))
        text = escape_path(os.fsdecode(raw))
        assert len(text.encode("utf-8").splitlines()) == 1 and len(text.splitlines()) == 1
        assert os.fsencode(unescape_path(text)) == raw


def test_escaped_names_are_the_same_under_an_ascii_locale(tmp_path):
    """Under a C locale without Python's coercion to UTF-8 (LC_ALL=C, PYTHONUTF8=0,
    PYTHONCOERCECLOCALE=0), Python's file system encoding is ASCII: a name's UTF-8 characters
    still are characters in the CSV and split.txt ('caf\u00e9', not 'caf\\xc3\\xa9', which a
    UTF-8 locale writes for the Latin-1 bytes of another name), and a name escaped under a UTF-8
    locale reads back to its bytes there (os.fsencode of 'caf\u00e9' is an encode error). An
    image list (UTF-8 text) naming 'caf\u00e9.png' finds the file of those UTF-8 bytes there too
    (it was an encode error, out of path_stat as a traceback)."""
    import os
    import subprocess
    import sys

    (tmp_path / os.fsdecode(b"caf\xc3\xa9.png")).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("caf\u00e9.png 1\n", encoding="utf-8")
    code = ("import os, sys\n"
            "from clip_smot.common.images import escape_path, unescape_path\n"
            "from clip_smot.common.image_sets import iter_image_list\n"
            "assert sys.getfilesystemencoding() == 'ascii', sys.getfilesystemencoding()\n"
            "raw = b'caf\\xc3\\xa9 \\xe7\\x8c\\xab\\xff.png'\n"
            "print(ascii(escape_path(os.fsdecode(raw))))\n"
            "print(os.fsencode(unescape_path('caf\\u00e9 \\u732b\\\\xff.png')) == raw)\n"
            "[(path, label)] = iter_image_list(sys.argv[1] + '/list.txt', sys.argv[1], '--id')\n"
            "print(os.fsencode(path.name) == b'caf\\xc3\\xa9.png', label)\n"
            "print(ascii(escape_path('\\ud800x')), ascii(unescape_path('\\\\ud800x')))\n")
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    res = subprocess.run([sys.executable, "-c", code, os.fsencode(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=60)
    # (a lone surrogate other than a byte's has no bytes in any encoding: escaped, and read back, as it is)
    assert res.stdout.splitlines() == [ascii("caf\u00e9 \u732b\\xff.png"), "True", "True 1",
                                       f"{ascii(chr(92) + 'ud800x')} {ascii(chr(0xD800) + 'x')}"], res.stdout + res.stderr


def test_fifos_and_broken_symlinks_are_not_images(tmp_path):
    """A FIFO named x.jpg would block fit's decoder forever (score, eval and train skipped it); a
    broken symlink has no bytes; a symlink to an image is an image. All listings agree."""
    import os

    from clip_smot.clip.fewshot import _class_images

    (tmp_path / "cat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "a.png")
    os.mkfifo(tmp_path / "cat" / "fifo.jpg")
    (tmp_path / "cat" / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "cat" / "link.png").symlink_to(tmp_path / "cat" / "a.png")
    assert _class_images(tmp_path, "cat") == ["cat/a.png", "cat/link.png"]
    assert [p.name for p in images.list_images(tmp_path)] == ["a.png", "link.png"]
    # a symlink to itself cannot be told a file or a folder (ELOOP): no image, and no folder to list
    (tmp_path / "cat" / "loop").symlink_to(tmp_path / "cat" / "loop")
    (tmp_path / "cat" / "loop.jpg").symlink_to(tmp_path / "cat" / "loop.jpg")
    assert [p.name for p in images.list_images(tmp_path)] == ["a.png", "link.png"]


def test_a_list_file_that_is_a_fifo_or_a_folder_is_named_as_such(tmp_path):
    """--split or an image list given as a FIFO or a folder was "no such file", for a path that
    is there; each now says what it is (a FIFO is not opened: it would wait for a writer)."""
    import os

    os.mkfifo(tmp_path / "split.txt")
    (tmp_path / "lists").mkdir()
    for name, why in (("split.txt", "not a regular file (a FIFO, a device)"), ("lists", "a folder, not a file"),
                      ("gone.txt", "no such file")):
        with pytest.raises(UserError) as e:
            images.text_lines(tmp_path / name, "--split", "'relative/path<TAB>label'")
        assert str(e.value) == f"--split {tmp_path / name}: {why}"


def test_a_list_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, monkeypatch):
    """A list file that is there but cannot be opened (another user's, mode 600) is one line with
    the reason, once the reading reaches it."""
    (tmp_path / "split.txt").write_text("a.png\t0\n")

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", refused, raising=False)  # (the module's open: root reads any file)
    lines = images.text_lines(tmp_path / "split.txt", "--split", "'relative/path<TAB>label'")
    with pytest.raises(UserError) as e:
        list(lines)
    assert str(e.value) == f"--split {tmp_path / 'split.txt'}: cannot be read (Permission denied)"


def test_a_fifo_given_as_a_path_is_named_as_such(tmp_path):
    """A FIFO given itself (score PATH, eval --ood x=FIFO) stopped with "FIFO: a folder that
    cannot be listed (Not a directory)": it is neither, and is not opened (no writer would come)."""
    import os

    from clip_smot.common.image_sets import image_files, image_set

    os.mkfifo(tmp_path / "x.png")
    with pytest.raises(UserError, match=rf"^PATH {re.escape(str(tmp_path / 'x.png'))}: not a regular file nor a "
                                        r"folder \(a FIFO, a device\)$"):
        image_files(tmp_path / "x.png", "PATH")
    with pytest.raises(UserError, match=r"^--ood o .*x.png: not a regular file nor a folder \(a FIFO, a device\)$"):
        image_set("o", tmp_path / "x.png")


@pytest.mark.parametrize("second", ["a/x.png", "a/./x.png", "a//x.png"])
def test_an_eval_list_naming_an_image_twice_is_refused(tmp_path, second):
    """An --id or --ood list naming one image twice (in any spelling, with one label or two)
    counted it twice in every metric, exit 0; it is refused, naming the list and the image."""
    from clip_smot.common.image_sets import id_set, image_set

    (tmp_path / "a").mkdir()
    for name in ("x.png", "y.png"):
        (tmp_path / "a" / name).write_bytes(b"not read")
    listing = tmp_path / "l.txt"
    listing.write_text(f"a/x.png 0\na/y.png 1\n# a comment\n{second} 1\n")
    expected = f": lists {tmp_path / 'a' / 'x.png'} twice (entries 1 and 3); an image listed twice would weigh twice"
    with pytest.raises(UserError, match="^" + re.escape(f"--ood o {listing}{expected}")):
        image_set("o", listing)
    with pytest.raises(UserError, match="^" + re.escape(f"--id {listing}{expected}")):
        id_set(listing, ["c0", "c1"])
    listing.write_text("a/x.png 0\na/y.png 1\n")
    assert [p.name for p in image_set("o", listing).paths] == ["x.png", "y.png"]


def test_an_id_train_set_is_named_by_its_flag_alone(tmp_path):
    """eval's --id-train DIR has no NAME=: its errors said "--id-train id-train=DIR" and
    "--id-train id-train DIR"; they name the flag and the path as given, as --ood's name NAME=DIR."""
    import tarfile

    from clip_smot.common.image_sets import image_set

    (tmp_path / "empty").mkdir()
    (tmp_path / "up.txt").write_text("../a.png\n")
    tarfile.open(tmp_path / "s.tar", "w").close()
    cases = [(tmp_path / "gone", f"--id-train {tmp_path / 'gone'}: no such folder or image list"),
             (tmp_path / "empty", f"--id-train {tmp_path / 'empty'}: no image files found"),
             (tmp_path / "s.tar", f"--id-train {tmp_path / 's.tar'}: a tar shard"),
             (tmp_path / "up.txt", f"--id-train {tmp_path / 'up.txt'}:1: ../a.png leaves the image root {tmp_path} (with '..')")]
    for where, expected in cases:
        with pytest.raises(UserError, match="^" + re.escape(expected)):
            image_set("id-train", where, flag="--id-train")
    with pytest.raises(UserError, match="^" + re.escape(f"--ood far={tmp_path / 'gone'}: no such folder")):
        image_set("far", tmp_path / "gone")


def test_a_folder_that_cannot_be_listed_is_one_line_not_left_out(tmp_path, monkeypatch):
    """A sub-folder that cannot be listed (no permission, an I/O error) was left out without a
    word: an OOD set, a score's PATHS or a class folder lost its images and the numbers said
    nothing of it. Every walk now stops with one line naming it (simulated: tests run as root,
    whom permissions do not stop)."""
    import os

    from clip_smot.clip.fewshot import _class_images

    for rel in ("cat/a.png", "cat/locked/b.png", "cat/z.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel)
    locked, real = os.path.join(tmp_path, "cat", "locked"), os.scandir

    def scandir(path):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(images.os, "scandir", scandir)
    line = f"{locked}: a folder that cannot be listed (Permission denied)"
    for listing in (lambda: images.list_images(tmp_path), lambda: list(images.walk_files(tmp_path)),
                    lambda: _class_images(tmp_path, "cat")):
        with pytest.raises(UserError) as e:
            listing()
        assert str(e.value) == line


def test_a_folder_walk_gives_the_sorted_order_one_folder_at_a_time(tmp_path, monkeypatch):
    """iter_images gives the order of sorting every path (pathlib compares them name by name),
    which is not os.walk's order (a folder's files before its sub-folders): `a/b.jpg` comes before
    `a.jpg` and `a-b/x.jpg` after it. It lists a folder only when the walk reaches it."""
    import os
    from pathlib import Path

    for rel in ("a.jpg", "a/b.jpg", "a/c/d.png", "a-b/x.jpg", "a b.png", "B.png", "z/deep/er/q.png",
                "z/.hidden/h.png", "._z.png", "notes.txt", "a/zz.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel, format="PNG")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "m-link").symlink_to(tmp_path / "z" / "deep", target_is_directory=True)
    found = [p.relative_to(tmp_path).as_posix() for p in images.iter_images(tmp_path)]
    old = sorted(Path(f) / n for f, names in images.walk_files(tmp_path) for n in images.image_names(f, names))
    assert found == [p.relative_to(tmp_path).as_posix() for p in old] == [
        "B.png", "a/b.jpg", "a/c/d.png", "a/zz.png", "a b.png", "a-b/x.jpg", "a.jpg", "m-link/er/q.png"]
    walk_order = [os.path.relpath(os.path.join(f, n), tmp_path) for f, names in images.walk_files(tmp_path)
                  for n in images.image_names(f, names)]
    assert walk_order != found  # (the tree tells the two orders apart)
    assert images.list_images(tmp_path) == [tmp_path / p for p in found]

    listed, real = [], os.scandir
    monkeypatch.setattr(images.os, "scandir", lambda p: listed.append(os.path.relpath(p, tmp_path)) or real(p))
    first = next(images.iter_images(tmp_path))
    assert first == tmp_path / "B.png" and listed == ["."]  # (one folder listed for the first image)
    walk = images.iter_images(tmp_path)
    assert [next(walk) for _ in range(3)][-1] == tmp_path / "a/c/d.png" and listed[1:] == [".", "a", "a/c"]


def test_an_image_list_is_read_a_line_at_a_time(tmp_path):
    """Lines end where str.splitlines ends them (as when the list was read whole), so error line
    numbers are unchanged; a bad line is an error when the reading reaches it, not before."""
    from clip_smot.common.image_sets import iter_image_list, read_image_list

    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    text = "a.png 0\r\nb.png\x85# note\x0ca.png 1\rb.png\n\nmissing.png\n"
    (tmp_path / "list.txt").write_bytes(text.encode("utf-8"))
    bad = 1 + next(i for i, line in enumerate(text.splitlines()) if line.startswith("missing"))
    lines = iter_image_list(tmp_path / "list.txt", tmp_path, "PATH")
    assert [next(lines) for _ in range(4)] == [(tmp_path / "a.png", 0), (tmp_path / "b.png", -1),
                                              (tmp_path / "a.png", 1), (tmp_path / "b.png", -1)]
    missing = f"^PATH {tmp_path / 'list.txt'}:{bad}: {tmp_path / 'missing.png'} does not exist$"
    with pytest.raises(UserError, match=missing):
        next(lines)
    assert bad == 7
    (tmp_path / "list.txt").write_text("# only a comment\n")
    with pytest.raises(UserError, match="the list names no images"):
        read_image_list(tmp_path / "list.txt", tmp_path, "PATH")
    (tmp_path / "list.txt").write_text("a.png\n" + "x" * 70000 + ".png\n")  # (held whole, then in the error)
    lines = iter_image_list(tmp_path / "list.txt", tmp_path, "PATH")
    assert next(lines) == (tmp_path / "a.png", -1)
    with pytest.raises(UserError, match=r"list.txt: a line longer than 65536 characters \(expected"):
        next(lines)
    (tmp_path / "folder.png").mkdir()  # (was "does not exist")
    (tmp_path / "list.txt").write_text("folder.png\n")
    with pytest.raises(UserError, match=r"folder.png is not a regular file \(a folder, FIFO or device\)$"):
        read_image_list(tmp_path / "list.txt", tmp_path, "PATH")


def test_an_image_list_starting_with_a_byte_order_mark_reads_its_first_path(tmp_path):
    """PowerShell 5's ``Set-Content -Encoding UTF8`` starts a file with EF BB BF: the first path
    was "\ufeffa.png", which 'does not exist' (the message showing the name that does)."""
    from clip_smot.common.image_sets import read_image_list

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfa.png 0\nb.png 1\n")
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    assert read_image_list(tmp_path / "list.txt", tmp_path, "PATH") == (paths, [0, 1])


def test_image_lists_joined_with_cat_read_the_second_ones_first_path(tmp_path):
    """Two lists saved by Notepad or PowerShell 5 and joined with ``cat a.txt b.txt`` hold a
    byte-order mark at the start of b's first line: that path was "\ufeffb.png", which 'does not
    exist' (the message showing, the mark being invisible, the name of a file that does). A mark
    at a line's start is dropped as the file's first one is."""
    from clip_smot.common.image_sets import iter_image_files

    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfa.png\r\n\xef\xbb\xbfb.png\r\n")
    assert list(iter_image_files(tmp_path / "list.txt", "PATH")) == [tmp_path / "a.png", tmp_path / "b.png"]


def test_an_image_whose_name_starts_with_a_hash_is_listed_as_dot_slash(tmp_path):
    """A list line starting with ``#`` is a comment, also "#1.png": docs/score.md says to list
    such an image as ``./#1.png``, which names it (the same file as the folder gives)."""
    from clip_smot.common.image_sets import iter_image_files, read_image_list

    for name in ("#1.png", "a.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "list.txt").write_text("#1.png 0\n./#1.png 1\na.png 2\n")
    assert read_image_list(tmp_path / "list.txt", tmp_path, "PATH") == ([tmp_path / "#1.png", tmp_path / "a.png"], [1, 2])
    assert list(iter_image_files(tmp_path / "list.txt", "PATH")) == [tmp_path / "#1.png", tmp_path / "a.png"]


@pytest.mark.parametrize("line", ["/etc/x.png", "../outside.png", "sub/../../outside.png"])
def test_an_image_list_names_files_under_its_root_only(tmp_path, line):
    """A list is a file someone else wrote: an absolute path or a ``..`` that climbs out of the
    root stops the reading at its line (as a split file does), before the file is looked at."""
    from clip_smot.common.image_sets import read_image_list

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    (root / "list.txt").write_text(f"# header\n{line} 3\n")
    what = (f"is an absolute path; a list names its images relative to its image root ({root}): write them so, and "
            "give their folder as ROOT::LIST.txt" if line.startswith("/") else f"leaves the image root {root} (with '..')")
    with pytest.raises(UserError, match=rf"^PATH {root / 'list.txt'}:2: {re.escape(line)} {re.escape(what)}$"):
        read_image_list(root / "list.txt", root, "PATH")


def test_a_list_of_paths_from_the_current_folder_says_to_give_that_root(tmp_path, monkeypatch):
    """lists/rel.txt naming sets/a.png, a path from the current folder: its paths are read from the
    list's own folder (lists/), and the line said only that lists/sets/a.png does not exist; it says
    how to read them from the current folder. A path missing from both is the plain line."""
    from clip_smot.common.image_sets import read_image_list

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sets").mkdir()
    (tmp_path / "lists").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "sets" / "a.png")
    Path("lists/rel.txt").write_text("sets/a.png\n")
    with pytest.raises(UserError) as e:
        read_image_list(Path("lists/rel.txt"), Path("lists"), "PATH")
    assert str(e.value) == ("PATH lists/rel.txt:1: lists/sets/a.png does not exist (the list's paths are read from its "
                            "image root lists; they name files of the current folder: give that root before the list, "
                            ".::lists/rel.txt)")
    assert read_image_list(Path("lists/rel.txt"), Path("."), "PATH") == ([Path("sets/a.png")], [-1])
    Path("lists/rel.txt").write_text("sets/b.png\n")
    with pytest.raises(UserError, match=r"^PATH lists/rel.txt:1: lists/sets/b.png does not exist$"):
        read_image_list(Path("lists/rel.txt"), Path("lists"), "PATH")
    # read from the current folder already (a dangling link there), or there but no file: no such advice
    (tmp_path / "sets" / "gone.png").symlink_to("nowhere.png")
    Path("lists/rel.txt").write_text("sets/gone.png\n")
    with pytest.raises(UserError, match=r"^PATH lists/rel.txt:1: sets/gone.png does not exist$"):
        read_image_list(Path("lists/rel.txt"), Path("."), "PATH")
    (tmp_path / "lists" / "sets" / "a.png").mkdir(parents=True)
    Path("lists/rel.txt").write_text("sets/a.png\n")
    with pytest.raises(UserError, match=r"^PATH lists/rel.txt:1: lists/sets/a.png is not a regular file \(a folder, "
                                        r"FIFO or device\)$"):
        read_image_list(Path("lists/rel.txt"), Path("lists"), "PATH")


def test_an_empty_path_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    """``clip-smot score --out s.csv "$PHOTOS"`` with PHOTOS unset: Path("") is ".", and every image
    under the current folder was scored."""
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^PATH '': an empty path; give a file or folder"):
        images.list_images("", "PATH")
    assert [p.name for p in images.list_images(".", "PATH")] == ["a.png"]


def test_a_missing_path_or_a_folder_without_images_is_refused_by_name(tmp_path):
    """A path that is not there is named as missing (not as a folder that cannot be listed); a
    folder holding no image file (only other files, empty sub-folders) is refused, not an empty
    set of images."""
    with pytest.raises(UserError, match=rf"^PATH {re.escape(str(tmp_path / 'gone'))}: no such file or folder$"):
        images.list_images(tmp_path / "gone", "PATH")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no image")
    with pytest.raises(UserError, match=rf"^--data {re.escape(str(tmp_path / 'empty'))}: no image files found "
                                        r"\(looked for \.jpg, \.jpeg, "):
        list(images.iter_images(tmp_path / "empty", "--data"))


def test_image_extensions_match_in_any_case(tmp_path):
    """ImageNet's files are .JPEG: an extension is an image's whatever its case; others are not."""
    for name in ("n01440764_10026.JPEG", "b.PNG", "c.Jpg", "d.webp", "e.txt", "f.JPEG.txt", "g"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    assert [p.name for p in images.list_images(tmp_path)] == ["b.PNG", "c.Jpg", "d.webp", "n01440764_10026.JPEG"]


def test_class_folders_are_in_sorted_order_whatever_the_order_made(tmp_path):
    """A class's index is its folder's place in sorted order (as torchvision's ImageFolder), not the
    order the file system lists them in."""
    import random

    names = [f"c{k:02d}" for k in range(30)] + ["B", "a_b", "a", "Z"]
    random.Random(0).shuffle(names)
    for name in names:
        (tmp_path / name).mkdir()
    (tmp_path / "file.png").write_bytes(b"")  # (a file: no class)
    assert images.class_folders(tmp_path) == sorted(names)
    assert images.class_folders(tmp_path)[:4] == ["B", "Z", "a", "a_b"]  # (code-point order: capitals first)
    # refused by name: a folder that is not there (or a file), one without class folders (hidden ones are none)
    for gone in (tmp_path / "gone", tmp_path / "file.png"):
        with pytest.raises(UserError, match=rf"^--data {re.escape(str(gone))}: no such folder$"):
            images.class_folders(gone)
    (tmp_path / "B" / ".hidden").mkdir()
    (tmp_path / "B" / "x.png").write_bytes(b"")
    with pytest.raises(UserError, match=rf"^--id {re.escape(str(tmp_path / 'B'))}: no class folders inside"):
        images.class_folders(tmp_path / "B", "--id")


def test_label_number_reads_ascii_integers_only():
    """An image list's label: an optional minus and 1 to 18 ASCII digits (OpenOOD writes -1 for
    'no label'); anything else is None."""
    cases = {"0": 0, "7": 7, " 12 ": 12, "-1": -1, "-30": -30, "0042": 42, "9" * 18: int("9" * 18),
             "9" * 19: None, "\u00b3": None, "\u0662": None, "+1": None, "1.0": None, "1e3": None, "": None, "-": None}
    assert {text: images.label_number(text) for text in cases} == cases


def test_id_folders_match_class_names_with_underscores_as_spaces(tmp_path):
    """An ID folder that is no wnid is the class of its name, an underscore read as a space; the
    labels are the classes' indices in the prompt's order, not the folders'."""
    from clip_smot.common.image_sets import id_set

    for rel in ("val/sea_lion/1.png", "val/sea_lion/2.png", "val/cat/1.png", "val/great_white_shark/1.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel)
    s = id_set(tmp_path, ["great white shark", "sea lion", "cat"])
    assert [p.relative_to(tmp_path / "val").as_posix() for p in s.paths] == [
        "cat/1.png", "great_white_shark/1.png", "sea_lion/1.png", "sea_lion/2.png"]
    assert s.labels == [2, 0, 1, 1] and s.note == ""


def test_zero_shot_class_names_of_id_folders(tmp_path):
    """Zero-shot's class names come from the ID folder's class folders, sorted: ImageNet wnids as
    their CLIP names (the bundled lists' first lines: n01440764 tench, n01443537 goldfish), any
    other folder as its name with underscores read as spaces."""
    from clip_smot.common.image_sets import folder_classnames

    for rel in ("named/val/sea_lion", "named/val/cat", "wnids/n01443537", "wnids/n01440764"):
        (tmp_path / rel).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel / "0.png")  # (a folder without images is no class)
    assert folder_classnames(tmp_path / "named") == ["cat", "sea lion"]
    assert folder_classnames(tmp_path / "wnids") == ["tench", "goldfish"]


def test_a_list_line_of_the_longest_length_is_read_whole(tmp_path):
    """A line of MAX_LINE characters (65536) is read, the next length is refused: a line is
    held whole up to that bound, then named as too long, never split in two."""
    assert images.MAX_LINE == 65536
    (tmp_path / "list.txt").write_text("a" * 65536 + "\nb\n")
    assert [len(line) for line in images.text_lines(tmp_path / "list.txt", "PATH", "x")] == [65536, 1]
    (tmp_path / "last.txt").write_text("b\n" + "a" * 65536)  # (the last line, no line break after it)
    assert [len(line) for line in images.text_lines(tmp_path / "last.txt", "PATH", "x")] == [1, 65536]
    (tmp_path / "list.txt").write_text("a" * 65537 + "\nb\n")
    with pytest.raises(UserError, match="list.txt: a line longer than 65536 characters"):
        list(images.text_lines(tmp_path / "list.txt", "PATH", "x"))


def test_a_float_image_up_to_one_is_scaled_to_255(tmp_path):
    """A float ('F') image whose values lie in [0, 1], 1.0 included, is scaled by 255; one with
    larger values is taken as 0..255 and clipped."""
    import numpy as np

    Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)).save(tmp_path / "unit.tif")
    assert np.asarray(load_image(tmp_path / "unit.tif", mode="L")).tolist() == [[0, 64, 128, 255]]  # 63.75, 127.5
    Image.fromarray(np.array([[0.0, 1.0, 100.4, 300.0]], np.float32)).save(tmp_path / "wide.tif")
    assert np.asarray(load_image(tmp_path / "wide.tif", mode="L")).tolist() == [[0, 1, 100, 255]]


def test_a_float_image_with_nan_or_infinite_pixels_keeps_the_range_of_the_others(tmp_path):
    """A NaN pixel made the image's maximum NaN, so a [0, 1] image was not scaled (read almost
    black), an infinite one likewise; NumPy's cast of NaN to uint8 warned on stderr (two lines per
    image) and gave whatever the platform gives. NaN is black, infinities the ends."""
    import warnings

    import numpy as np

    Image.fromarray(np.array([[np.nan, 0.25, 0.5, 1.0]], np.float32)).save(tmp_path / "nan.tif")
    Image.fromarray(np.array([[np.inf, -np.inf, 0.5, 1.0]], np.float32)).save(tmp_path / "inf.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.asarray(load_image(tmp_path / "nan.tif", mode="L")).tolist() == [[0, 64, 128, 255]]
        assert np.asarray(load_image(tmp_path / "inf.tif", mode="L")).tolist() == [[255, 0, 128, 255]]


def test_a_palette_image_with_transparency_is_read_as_its_colours_without_a_warning(tmp_path):
    """PIL warns ("Palette images with Transparency expressed in bytes should be converted to RGBA
    images", two lines on stderr) for each palette PNG with a transparency table converted to RGB:
    an eval over a folder of them printed it again and again. The pixels are the palette's colours."""
    import warnings

    import numpy as np

    rgb = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "p.png", transparency=bytes(range(0, 256, 4)))
    expected = np.asarray(pal.convert("RGB"))  # (before the save: the palette's colours, no transparency)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(np.asarray(load_image(tmp_path / "p.png")), expected)
    # with mode=None (the CLIP path: open_clip resizes the palette image before it converts) it stays
    # as PIL opens it, palette and transparency table
    kept = load_image(tmp_path / "p.png", mode=None)
    with Image.open(tmp_path / "p.png") as opened:
        assert kept.mode == opened.mode == "P" and kept.info["transparency"] == opened.info["transparency"]
        assert np.array_equal(np.asarray(kept), np.asarray(opened))


def test_a_missing_image_file_is_named_as_missing(tmp_path):
    with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path / 'gone.png'))}: no such image file$"):
        load_image(tmp_path / "gone.png")


def test_a_hidden_folder_does_not_make_a_folder_of_class_folders(tmp_path):
    """DIR/val holding images and a .thumbs folder is the class val, not a split of classes."""
    from clip_smot.common.image_sets import id_set

    for rel in ("val/1.png", "val/.thumbs/1.png", "cat/1.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel)
    assert not images.holds_folders(tmp_path / "val") and images.holds_folders(tmp_path)
    s = id_set(tmp_path, ["cat", "val"])
    assert [p.relative_to(tmp_path).as_posix() for p in s.paths] == ["cat/1.png", "val/1.png"] and s.labels == [0, 1]


def test_image_list_arguments_that_do_not_fit_are_named(tmp_path):
    """An OOD NAME=LIST.txt that is not there is no folder or list; a line of three fields is not
    'relative/path label'; a ROOT::LIST.txt whose root is missing names the root."""
    from clip_smot.common.image_sets import image_set, read_image_list

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match=rf"^--ood x={re.escape(str(tmp_path / 'gone.txt'))}: no such folder or image "
                                        "list$"):
        image_set("x", tmp_path / "gone.txt")
    (tmp_path / "list.txt").write_text("a.png 0\na.png 1 2\n")
    with pytest.raises(UserError, match=r"list.txt:2: expected 'relative/path label', got 'a.png 1 2'$"):
        read_image_list(tmp_path / "list.txt", tmp_path, "PATH")
    with pytest.raises(UserError, match=rf"^--ood x {re.escape(str(tmp_path / 'none'))}: no such image root folder$"):
        image_set("x", f"{tmp_path / 'none'}::{tmp_path / 'list.txt'}")


def test_an_image_list_argument_with_an_empty_root_or_list_is_refused(tmp_path, monkeypatch):
    """``"$ROOT::val.txt"`` with ROOT unset is ``::val.txt``: its images were read from the current
    folder (Path("") is "."), scored without a word; ``ROOT::`` stopped as 'PATH .: a folder'."""
    from clip_smot.common.image_sets import image_files, image_set

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.txt").write_text("a.png\n")
    monkeypatch.chdir(tmp_path)  # (the current folder holds the image the list names)
    with pytest.raises(UserError, match=r"^PATH ::lists/val.txt: ROOT::LIST.txt with an empty ROOT \(an unset shell "
                                        r"variable\?\); write '.::LIST.txt' for the current folder$"):
        image_files("::lists/val.txt", "PATH")
    with pytest.raises(UserError, match=r"^--ood x ::lists/val.txt: ROOT::LIST.txt with an empty ROOT "):
        image_set("x", "::lists/val.txt")
    # an empty LIST.txt was told "write '.::LIST.txt' for the current folder", advice for an empty ROOT
    with pytest.raises(UserError, match=rf"^PATH {re.escape(str(tmp_path))}::: ROOT::LIST.txt with an empty LIST.txt "
                                        r"\(an unset shell variable\?\); name the list file after '::', or give ROOT "
                                        r"alone for the images of its folder$"):
        image_files(f"{tmp_path}::", "PATH")
    assert image_files(str(tmp_path), "PATH") == [tmp_path / "a.png"]  # (ROOT alone, as advised)
    assert image_files(".::lists/val.txt", "PATH") == [Path("a.png")]  # (the current folder, said so)


def test_an_image_of_a_shard_given_by_its_row_name_is_one_clear_line(tmp_path):
    """score names an image of a shard SHARD.tar::MEMBER in its rows; that name given back as a
    PATH (or an --ood set) was looked for as ROOT::LIST.txt: "no such image-list file"."""
    import io
    import tarfile

    from clip_smot.common.image_sets import id_set, image_files, image_set

    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("k1.png")
        info.size = len(png.getvalue())
        tar.addfile(info, io.BytesIO(png.getvalue()))
    expected = f"{shard}::k1.png: names an image inside the tar shard {shard}, as score's rows do; give "
    with pytest.raises(UserError, match="^" + re.escape(f"PATH {expected}the shard itself")):
        image_files(f"{shard}::k1.png", "PATH")
    # eval's sets: the shard itself, as advised, was then refused ("a tar shard; eval reads folders
    # and image lists"): eval is sent to a folder or an image list
    eval_advice = "a folder or an image list (eval reads no shards)"
    with pytest.raises(UserError, match="^" + re.escape(f"--ood x {expected}{eval_advice}") + "$"):
        image_set("x", f"{shard}::k1.png")
    with pytest.raises(UserError, match="^" + re.escape(f"--id {expected}{eval_advice}") + "$"):
        id_set(f"{shard}::k1.png", ["a"])
    with pytest.raises(UserError, match=": a tar shard; eval reads folders and image lists"):
        image_set("x", str(shard))
    assert image_files(shard, "PATH") == [f"{shard}::k1.png"]  # (the shard itself: its images)


def test_a_tar_shard_named_in_an_image_list_is_refused_not_read_as_one_image(tmp_path):
    """A list line naming a tar shard (a list of shards, as webdataset's users keep them) was read as
    one image file: "s.tar: unreadable or truncated image", and with --skip-unreadable the shard's
    images were skipped, exit 0, the rows of the list's other images alone."""
    import tarfile

    from clip_smot.common.image_sets import image_files, image_set

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        tar.add(tmp_path / "a.png", "k1.png")
    (tmp_path / "l.txt").write_text("a.png\ns.tar\n")
    with pytest.raises(UserError, match="^" + re.escape(f"PATH {tmp_path / 'l.txt'}:2: {tmp_path / 's.tar'} is a tar "
                                                        "shard; a list names image files (score takes a shard as a "
                                                        "PATH of its own)") + "$"):
        image_files(tmp_path / "l.txt", "PATH")
    with pytest.raises(UserError, match=f"^--ood x {re.escape(str(tmp_path / 'l.txt'))}:2: .* is a tar shard"):
        image_set("x", f"{tmp_path}::{tmp_path / 'l.txt'}")


def test_a_list_label_that_is_no_integer_is_ignored_where_labels_are(tmp_path):
    """score's PATH lists and --ood lists ignore a label (docs/score.md), but 'a.png cat' or
    'a.png 1.5' stopped them as 'expected relative/path label'; an --id list's labels are read."""
    from clip_smot.common.image_sets import id_set, image_files, image_set

    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "list.txt").write_text("a.png cat\nb.png 1.5\n")
    assert image_files(tmp_path / "list.txt", "PATH") == [tmp_path / "a.png", tmp_path / "b.png"]
    assert image_set("x", tmp_path / "list.txt").paths == [tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.raises(UserError, match=r"list.txt:1: expected 'relative/path label', got 'a.png cat'$"):
        id_set(tmp_path / "list.txt", ["cat", "dog"])
    # a path with a space was 'expected relative/path label' here too: now its first word is the path
    Image.new("RGB", (4, 4)).save(tmp_path / "IMG 001.png")
    (tmp_path / "list.txt").write_text("IMG 001.png\n")
    with pytest.raises(UserError, match=r"list.txt:1: 001.png after the path is an image's name, not a label: a list "
                                        r"holds one path a line \(and a path holds no white space\)$"):
        image_files(tmp_path / "list.txt", "PATH")
    (tmp_path / "list.txt").write_text("IMG draft\n")  # (a second word that is no image's name: a label)
    with pytest.raises(UserError, match=r"list.txt:1: .*IMG does not exist \(a line's path and label are split at "
                                        r"white space: a listed path holds none\)$"):
        image_files(tmp_path / "list.txt", "PATH")
    (tmp_path / "list.txt").write_text("imgs\\IMG draft\n")  # (one hint a line: the white space's, the first)
    with pytest.raises(UserError, match=r"list.txt:1: .*imgs\\IMG does not exist \(a line's path and label are split "
                                        r"at white space: a listed path holds none\)$"):
        image_files(tmp_path / "list.txt", "PATH")


def test_two_image_paths_on_one_list_line_are_refused_not_one_taken_for_a_label(tmp_path):
    """'a.png b.png' on one line (echo a.png b.png > list.txt) scored a.png alone: b.png was read as
    an OpenOOD label, which score and --ood lists ignore. A second field with an image extension is
    no label: the line is refused, naming it; a label ('cat', '3') is still ignored."""
    from clip_smot.common.image_sets import image_files, image_set

    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "list.txt").write_text("a.png 3\na.png b.PNG\n")
    for read in (lambda: image_files(tmp_path / "list.txt", "PATH"), lambda: image_set("x", tmp_path / "list.txt")):
        with pytest.raises(UserError, match=r"list.txt:2: b.PNG after the path is an image's name, not a label: a "
                                            r"list holds one path a line \(and a path holds no white space\)$"):
            read()
    (tmp_path / "list.txt").write_text("a.png cat\nb.png\n")
    assert image_files(tmp_path / "list.txt", "PATH") == [tmp_path / "a.png", tmp_path / "b.png"]


def test_a_list_path_with_backslashes_says_they_are_no_separators(tmp_path):
    """A list written on Windows (imgs\\a.png) named 'imgs\\a.png does not exist' beside the very
    file imgs/a.png, without a word on why; the line now says how to write it."""
    from clip_smot.common.image_sets import image_files

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "list.txt").write_text("imgs\\a.png\n")
    with pytest.raises(UserError, match=r"list.txt:1: .*imgs\\a.png does not exist \(a backslash is no folder "
                                        r"separator here: write imgs/a.png\)$"):
        image_files(tmp_path / "list.txt", "PATH")
    (tmp_path / "list.txt").write_text("imgs/a.png\n")
    assert image_files(tmp_path / "list.txt", "PATH") == [tmp_path / "imgs" / "a.png"]


def test_a_folder_or_image_named_with_two_colons_is_itself_not_a_list(tmp_path):
    """``d::x`` and ``e::f.png`` exist: they were read as ROOT::LIST, and stopped with 'PATH x: no
    such image-list file'; a ROOT::LIST.txt that is no file's name is still a list."""
    from clip_smot.common.image_sets import image_files

    (tmp_path / "d::x").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "d::x" / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "e::f.png")
    assert image_files(tmp_path / "d::x", "PATH") == [tmp_path / "d::x" / "a.png"]
    assert image_files(tmp_path / "e::f.png", "PATH") == [tmp_path / "e::f.png"]
    (tmp_path / "list.txt").write_text("d::x/a.png\n")
    assert image_files(f"{tmp_path}::{tmp_path / 'list.txt'}", "PATH") == [tmp_path / "d::x" / "a.png"]


def test_a_list_named_in_capitals_is_a_list(tmp_path):
    """VAL.TXT (a list written on Windows) was taken for an image file: 'unreadable or truncated
    image'; the extension of a list matches in any case, as an image's and a shard's do."""
    from clip_smot.common.image_sets import image_files

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "VAL.TXT").write_text("a.png\n")
    assert image_files(tmp_path / "VAL.TXT", "PATH") == [tmp_path / "a.png"]


def test_id_folder_labels_need_every_image_in_a_class_folder_of_the_prompt(tmp_path):
    """Labels come from class folders: a loose image beside them, or a single image given as the
    set, leaves the set without labels (and says why); the folders a prompt records label the set
    only when they hold every folder found; a folder named exactly as a class (its underscore
    kept) is that class."""
    from clip_smot.common.image_sets import id_set

    for rel in ("val/cat/1.png", "val/sea_lion/1.png", "loose/cat/1.png", "loose/2.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel)
    s = id_set(tmp_path / "loose", ["cat"])
    assert s.labels is None and s.note == f"{tmp_path / 'loose'} holds images outside class folders"
    s = id_set(tmp_path / "loose" / "2.png", ["cat"])
    assert s.paths == [tmp_path / "loose" / "2.png"] and s.labels is None
    assert s.note == "a single image has no class folder"
    assert id_set(tmp_path, ["sea_lion", "cat"]).labels == [1, 0]  # (paths: cat/1.png, sea_lion/1.png)
    # the prompt records sea_lion only: its folders do not cover cat, which is matched by name
    assert id_set(tmp_path, ["cat", "sea lion"], prompt_folders=["x", "sea_lion"]).labels == [0, 1]


def test_labelling_by_the_prompts_class_folders_is_linear_in_the_classes():
    """The class folders a fit prompt records label an ID folder by position. Matching each of the
    K folders found by a search of the K recorded ones (a copy of the list, then list.index) takes
    about K * K steps: 1.3 s of CPU for 16,000 classes, four times that for twice as many (measured
    at 1,000 to 16,000 classes). Counted here without a clock: the recorded folders' elements
    read and compared stay within 20 per class for 300 classes (a dictionary from folder to
    position reads each once); the labels are checked against the reversed order by hand."""
    from clip_smot.common.image_sets import _folder_labels

    steps = [0]

    class Folder(str):
        __hash__ = str.__hash__

        def __eq__(self, other):
            steps[0] += 1
            return str.__eq__(self, other)

    class Folders(list):
        def __iter__(self):
            for f in list.__iter__(self):
                steps[0] += 1
                yield f

    k, root = 300, Path("/data/val")
    recorded = Folders(Folder(f"c{i:04d}") for i in reversed(range(k)))  # (c0299 is class 0)
    paths = [root / f"c{i:04d}" / "0.png" for i in range(k)]
    labels, note = _folder_labels(root, paths, [f"c{i:04d}" for i in reversed(range(k))], recorded)
    assert note == "" and labels == [k - 1 - i for i in range(k)]
    assert steps[0] <= 20 * k, steps[0]


def test_a_folder_the_prompt_records_twice_takes_its_first_position():
    """A prompt whose class folders name one folder twice (an edited config): the folder is the
    class of its first position, as list.index gave before the one-pass lookup."""
    from clip_smot.common.image_sets import _folder_labels

    root = Path("/data/val")
    paths = [root / "a" / "0.png", root / "b" / "0.png", root / "a" / "1.png"]
    assert _folder_labels(root, paths, ["x", "y", "z"], ["b", "a", "a"]) == ([1, 0, 1], "")


def test_zero_shot_names_wnids_only_when_every_folder_is_one(tmp_path):
    """ImageNet wnids become CLIP names only when every class folder is a wnid; among other
    folders a wnid stays a folder name (the names then follow one rule for all)."""
    from clip_smot.common.image_sets import folder_classnames

    for rel in ("mixed/n01440764", "mixed/sea_lion"):
        (tmp_path / rel).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel / "0.png")  # (a folder without images is no class)
    assert folder_classnames(tmp_path / "mixed") == ["n01440764", "sea lion"]



def test_a_missing_id_folder_for_zero_shot_says_what_it_needs(tmp_path):
    """Zero-shot takes its class names from the ID folder: a missing one says that it needs one
    of class folders, not only that there is none."""
    from clip_smot.common.image_sets import folder_classnames

    with pytest.raises(UserError) as e:
        folder_classnames(tmp_path / "gone")
    assert str(e.value) == f"--id {tmp_path / 'gone'}: no such folder (zero-shot needs an ID folder of class folders)"


def test_an_id_list_whose_every_label_is_class_zero_is_labelled(tmp_path):
    """Only -1 (OpenOOD's "no label") leaves an ID list unlabelled: a list of class 0 alone (a
    one-class subset) keeps its labels, and the ID accuracy is reported."""
    from clip_smot.common.image_sets import id_set

    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 0\n")
    s = id_set(tmp_path / "list.txt", ["cat", "dog"])
    assert s.paths == [tmp_path / "a.png", tmp_path / "b.png"] and s.labels == [0, 0] and s.note == ""
    (tmp_path / "list.txt").write_text("a.png -1\nb.png -1\n")
    s = id_set(tmp_path / "list.txt", ["cat", "dog"])
    assert s.name == "id" and s.paths == [tmp_path / "a.png", tmp_path / "b.png"] and s.labels is None
    assert s.note == f"{tmp_path / 'list.txt'}: the list gives no class labels"


def test_an_id_list_whose_every_label_is_another_negative_number_is_refused(tmp_path):
    """-1 is OpenOOD's "no label"; a list whose every label was -5 was taken as unlabelled too
    (exit 0, no ID accuracy, no word of the labels): -5 is no class index, and stops the run."""
    from clip_smot.common.image_sets import id_set

    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "list.txt").write_text("a.png -5\nb.png -5\n")
    with pytest.raises(UserError, match=rf"^--id {re.escape(str(tmp_path / 'list.txt'))}: "
                                        rf"{re.escape(str(tmp_path / 'a.png'))} has label -5, not a class index "):
        id_set(tmp_path / "list.txt", ["cat", "dog"])


def test_a_missing_listed_file_with_a_label_gets_no_white_space_hint(tmp_path):
    """The hint that a path was split at white space is given only for a missing file whose
    second field is no label: 'gone.png 3' names a missing file, and that alone; a listed folder
    ('dir.png cat', labels ignored) is named as no regular file, and that alone."""
    from clip_smot.common.image_sets import image_files, read_image_list

    (tmp_path / "list.txt").write_text("gone.png 3\n")
    with pytest.raises(UserError) as e:
        read_image_list(tmp_path / "list.txt", tmp_path, "PATH")
    assert str(e.value) == f"PATH {tmp_path / 'list.txt'}:1: {tmp_path / 'gone.png'} does not exist"
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "list.txt").write_text("dir.png cat\n")
    with pytest.raises(UserError) as e:
        image_files(tmp_path / "list.txt", "PATH")
    assert str(e.value) == (f"PATH {tmp_path / 'list.txt'}:1: {tmp_path / 'dir.png'} is not a regular file "
                            "(a folder, FIFO or device)")


def test_an_empty_id_path_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    """``id_set("")`` (a library caller's unset ``"$IMAGENET"``) took Path("") = "." and read the
    working directory's images as the ID set, and zero-shot took its sub-folders as the classes;
    the OOD sets and score's PATHS refused an empty path already."""
    from clip_smot.common.image_sets import folder_classnames, id_class_folders, id_set

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "cat").mkdir()
    monkeypatch.chdir(tmp_path)
    message = "--id '': an empty path; give a file or folder ('.' for the current folder)"
    for read in (lambda: id_set("", ["cat"]), lambda: folder_classnames(""), lambda: id_class_folders("")):
        with pytest.raises(UserError) as e:
            read()
        assert str(e.value) == message
    assert id_set(".", ["cat"]).paths == [Path("a.png")]  # ('.' is the current folder, as asked)


def test_split_folder_refuses_a_data_sets_top_folder_whose_split_is_flat_or_missing(tmp_path):
    """DIR/train/<class>/ beside a flat DIR/val (ImageNet's validation archive unpacks its images
    into one folder) made `eval --zero-shot --id DIR` read DIR's class folders: `train` and `val`
    as two classes, the training images scored as ID test images, exit 0. Such a DIR is refused
    in one line; a class that is merely named `val` or `train` is read as before."""
    def image(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)

    both = tmp_path / "both"
    for split in ("train", "val"):
        image(both / split / "n01440764" / "a.JPEG")
    assert images.split_folder(both, "val", "--id") == both / "val"
    assert images.split_folder(both, "train", "--data") == both / "train"
    classes = tmp_path / "classes"  # a folder of class folders, two of them named train and val
    for c in ("train", "val", "tram"):
        image(classes / c / "0.png")
    assert images.split_folder(classes, "val", "--id") == classes
    assert images.split_folder(classes, "train", "--data") == classes

    top = tmp_path / "imagenet"
    image(top / "train" / "n01440764" / "a.JPEG")
    with pytest.raises(UserError) as e:
        images.split_folder(top, "val", "--id")
    assert str(e.value) == f"--id {top}: it holds train/<class>/ but no val/ folder (expected {top / 'val'}/<class>/<image>)"
    (top / "val").mkdir()
    with pytest.raises(UserError) as e:
        images.split_folder(top, "val", "--id")
    assert str(e.value) == f"--id {top}: {top / 'val'} holds no class folders (expected {top / 'val'}/<class>/<image>)"
    for k in (1, 2):
        image(top / "val" / f"ILSVRC2012_val_{k:08d}.JPEG")
    (top / "val" / "notes.txt").write_text("no image")
    with pytest.raises(UserError) as e:
        images.split_folder(top, "val", "--id")
    assert str(e.value) == (f"--id {top}: {top / 'val'} holds 2 image(s) but no class folders (ImageNet's validation "
                            f"archive unpacks so); sort them into {top / 'val'}/<class>/")
    unpacked = tmp_path / "unpacked"  # ImageNet's training archive: one tar a class
    (unpacked / "train").mkdir(parents=True)
    for wnid in ("n01440764", "n01443537"):
        tarfile.open(unpacked / "train" / f"{wnid}.tar", "w").close()
    with pytest.raises(UserError) as e:
        images.split_folder(unpacked, "train", "--data")
    assert str(e.value) == (f"--data {unpacked}: {unpacked / 'train'} holds 2 tar archive(s) and no class folders "
                            "(ImageNet's training archive unpacks into one tar a class); unpack each into a folder of "
                            f"its name, e.g. n01440764.tar into {unpacked / 'train' / 'n01440764'}/")
    (classes / "train" / "stray.tar").write_bytes(b"")  # (a class named train, a tar beside its images: a class still)
    assert images.split_folder(classes, "train", "--data") == classes
    image(tmp_path / "only_val" / "val" / "n01440764" / "a.JPEG")
    with pytest.raises(UserError, match=rf"^--data {re.escape(str(tmp_path))}/only_val: it holds val/<class>/ but no "
                                        "train/ folder"):
        images.split_folder(tmp_path / "only_val", "train", "--data")


def test_docs_line_unpacking_imagenets_training_tars_gives_the_class_folders_fit_reads(tmp_path):
    """ImageNet's training archive unpacks into one tar a class, which --data refuses by name
    (above); docs/fit.md gives the shell line that unpacks each into a folder of its name. Run as
    written (bash, tar) on two miniature class tars: the tars are gone, and fit's class listing
    finds the two wnids in ImageNet-1k order with their images."""
    import subprocess

    from clip_smot.clip.fewshot import draw_split, resolve_classes, resolve_train_root

    line = re.search(r"`(cd IMAGENET/train && for f in \*\.tar; do .*?; done)`",
                     (Path(__file__).resolve().parents[2] / "docs" / "fit.md").read_text()).group(1)
    train = tmp_path / "IMAGENET" / "train"
    train.mkdir(parents=True)
    for wnid in ("n01443537", "n01440764"):  # goldfish (index 1), tench (index 0)
        with tarfile.open(train / f"{wnid}.tar", "w") as tar:
            for k in (1, 2):
                Image.new("RGB", (8, 8), (k, 0, 0)).save(tmp_path / "x.JPEG")
                tar.add(tmp_path / "x.JPEG", arcname=f"{wnid}_{k}.JPEG")  # flat, as the archive's tars are
    subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True, timeout=60)
    assert sorted(p.relative_to(train).as_posix() for p in train.rglob("*")) == [
        "n01440764", "n01440764/n01440764_1.JPEG", "n01440764/n01440764_2.JPEG",
        "n01443537", "n01443537/n01443537_1.JPEG", "n01443537/n01443537_2.JPEG"]
    classes = resolve_classes(resolve_train_root(tmp_path / "IMAGENET"))
    assert (classes.folders, classes.classnames, classes.imagenet_index) == (("n01440764", "n01443537"),
                                                                               ("tench", "goldfish"), (0, 1))
    assert sorted(draw_split(classes, 2, 0)) == [("n01440764/n01440764_1.JPEG", 0), ("n01440764/n01440764_2.JPEG", 0),
                                                 ("n01443537/n01443537_1.JPEG", 1), ("n01443537/n01443537_2.JPEG", 1)]


def _unlistable(monkeypatch, folder: Path) -> None:
    """Path.iterdir of ``folder`` refused as a folder without read permission is (root, which the
    tests run as, reads any folder: the refusal is stood in for)."""
    real = Path.iterdir

    def iterdir(self):
        if self == folder:
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)


def test_a_split_folder_that_cannot_be_listed_is_one_line(tmp_path, monkeypatch):
    """A val/ without read permission (for its owner's group, say) made holds_folders' listing an
    OSError: eval --id DIR and fit --data DIR stopped with a PermissionError traceback. It is one
    line naming the folder. (Root reads any folder: the refusal is stood in for.)"""
    def image(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)

    image(tmp_path / "train" / "n01440764" / "a.JPEG")
    image(tmp_path / "val" / "n01440764" / "a.JPEG")
    _unlistable(monkeypatch, tmp_path / "val")
    assert not images.holds_folders(tmp_path / "val")
    with pytest.raises(UserError) as e:
        images.split_folder(tmp_path, "val", "--id")
    assert str(e.value) == f"--id {tmp_path}: {tmp_path / 'val'}: a folder that cannot be listed (Permission denied)"


def test_a_folder_of_class_folders_that_cannot_be_listed_is_one_line(tmp_path, monkeypatch):
    """train --data DIR with DIR/train mode 000 (run as a user) stopped with a PermissionError
    traceback from class_folders; it is one line naming the folder, as a class folder that cannot
    be listed is. (Root reads any folder: the refusal is stood in for.)"""
    from clip_smot.resnet.data import load_id_split

    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / "a.png")
    _unlistable(monkeypatch, tmp_path / "train")
    for listing in (lambda: images.class_folders(tmp_path / "train"),
                    lambda: load_id_split(None, str(tmp_path), "train", input_size=32)):
        with pytest.raises(UserError) as e:
            listing()
        line = str(e.value)  # (one line naming the flag and the folder, with the reason)
        assert len(line.splitlines()) == 1 and line.startswith("--data "), line
        assert f"{tmp_path / 'train'}: a folder that cannot be listed (Permission denied)" in line, line


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("case", ["apng-of-no-frames", "exif-cut-short"])
def test_a_damaged_header_that_pil_warns_about_reads_and_the_command_line_prints_no_warning(tmp_path, monkeypatch,
                                                                                          case):
    """A PNG with an acTL chunk of 0 frames, a JPEG whose EXIF block is cut short: PIL decodes the
    image and warns (a UserWarning, two lines on stderr for each image, beside the run's own
    lines, or before the one line of a refusal; found by fuzzing). The pixels are those of the
    file without the damaged block, and the console entry point ignores PIL's remark."""
    import io
    import struct

    import numpy as np
    from helpers import warnings_main_lets_through

    buf = io.BytesIO()
    fmt = "PNG" if case == "apng-of-no-frames" else "JPEG"
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, fmt)
    plain = buf.getvalue()
    if fmt == "PNG":  # (after the signature and IHDR: 8 + 25 bytes)
        data = plain[:33] + _png_chunk(b"acTL", struct.pack(">II", 0, 0)) + plain[33:]
    else:  # an APP1 EXIF block whose one IFD entry is cut off
        exif = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\0\0\x10\0"
        data = plain[:2] + b"\xff\xe1" + struct.pack(">H", 2 + len(exif)) + exif + plain[2:]
    path = tmp_path / f"damaged.{fmt.lower()}"
    path.write_bytes(data)
    with pytest.warns(UserWarning, match="Invalid APNG" if fmt == "PNG" else "Corrupt EXIF data"):
        im = load_image(path)
    assert np.array_equal(np.asarray(im), np.asarray(Image.open(io.BytesIO(plain)).convert("RGB")))
    assert warnings_main_lets_through(monkeypatch, lambda: load_image(path)) == ["another"]


def test_a_float_image_with_a_signalling_nan_pixel_reads_without_a_warning(tmp_path):
    """A float TIFF whose pixel is a signalling NaN (bits 0x7f800001: a TIFF whose strip offset
    points elsewhere reads such bits, found by fuzzing) is black like a quiet NaN; its cast from
    float32 to float64 raised NumPy's RuntimeWarning, two lines on stderr for each image."""
    import numpy as np

    a = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    a.view(np.uint32)[0, 0] = 0x7F800001  # (a NaN whose quiet bit is clear)
    Image.fromarray(a, "F").save(tmp_path / "snan.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.asarray(load_image(tmp_path / "snan.tif", mode="L")).tolist() == [[0, 64, 128, 255]]


def test_a_damaged_lzw_tiff_is_one_line_without_libtiffs_own_message(tmp_path, monkeypatch, capfd):
    """A TIFF whose LZW strip is damaged (two bytes flipped, found by fuzzing) is refused in one
    line naming it; libtiff, which PIL decodes compressed TIFFs with, printed its own line
    ('tempfile.tif: Using code not yet in table.', naming no file of the user's) straight to the
    process's stderr, out of reach of Python's warning filters, before it (seen here in a process
    of its own). The console entry point unsets libtiff's handlers."""
    import io
    import subprocess
    import sys

    import numpy as np
    from helpers import warnings_main_lets_through

    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(buf, "TIFF", compression="tiff_lzw")
    data = buf.getvalue()
    assert data[:4] == b"II*\0" and data[4:8] != b"\x08\0\0\0"  # (PIL writes the strip first, at byte 8)
    (tmp_path / "lzw.tif").write_bytes(data[:8] + bytes([data[8] ^ 0xFF, data[9] ^ 0xFF]) + data[10:])
    alone = subprocess.run([sys.executable, "-c", "import sys; from PIL import Image\ntry:\n    "
                            "Image.open(sys.argv[1]).load()\nexcept OSError:\n    pass", str(tmp_path / "lzw.tif")],
                           capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0 and "Using code not yet in table" in alone.stderr, alone

    def refused():
        with pytest.raises(UserError, match=r"lzw.tif: unreadable or truncated image"):
            load_image(tmp_path / "lzw.tif")

    capfd.readouterr()
    assert warnings_main_lets_through(monkeypatch, refused) == ["another"]
    assert capfd.readouterr().err == ""


def test_a_list_file_is_checked_for_writes_every_4096_lines_and_read_whole_when_unchanged(tmp_path):
    """A list rewritten in place as it is read is refused at the next check, every 4096 lines, not
    read on to its end: the 4096th line is not given. One left alone is read to its last line
    (12288 lines: three checks passed)."""
    import os

    assert images._LINES_CHECKED == 4096
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{i:05d}.png\n" for i in range(12288)))
    assert list(images.text_lines(listed, "PATH", "x")) == [f"{i:05d}.png" for i in range(12288)]
    given = []
    with pytest.raises(UserError) as e:
        for line in images.text_lines(listed, "PATH", "x"):
            if not given:
                with open(listed, "r+") as f:  # (in place, longer: the reading goes on in the new lines)
                    f.truncate(0)
                    f.write("".join(f"{i:05d}.new\n" for i in range(24576)))
                    f.flush()
                    os.fsync(f.fileno())
            given.append(line)
    assert str(e.value) == (f"PATH {listed}: was written while it was read (another command writing it now?); run "
                            "again once it is written")
    assert len(given) == 4095


@pytest.mark.parametrize("field", ["st_size", "st_mtime_ns", "st_ctime_ns"])
def test_a_list_file_whose_size_or_times_differ_from_the_start_is_changed(tmp_path, field):
    """Each of the size, the modification time and the change time tells a write apart (a write
    keeping the size, then `touch -d` putting the modification time back, changes the ctime alone)."""
    import os
    from types import SimpleNamespace

    (tmp_path / "list.txt").write_text("a.png\n")
    with open(tmp_path / "list.txt") as f:
        st = os.fstat(f.fileno())
        began = {k: getattr(st, k) for k in ("st_size", "st_mtime_ns", "st_ctime_ns")}
        assert not images._changed(f, SimpleNamespace(**began))
        assert images._changed(f, SimpleNamespace(**{**began, field: began[field] + 1}))
