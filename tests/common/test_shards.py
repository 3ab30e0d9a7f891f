"""Tar shards in the webdataset layout, read as untrusted input with tarfile."""

import glob
import io
import os
import shutil
import signal
import subprocess
import tarfile

import pytest

from clip_smot.common import shards
from clip_smot.common.errors import UserError
from clip_smot.common.image_sets import image_files


def _add(tar, name, data=b"", kind=tarfile.REGTYPE, **kw):
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    for k, v in kw.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _hostile(path):
    with tarfile.open(path, "w") as tar:
        _add(tar, "a/000.jpg", b"first")
        _add(tar, "a/000.cls", b"3")  # webdataset's other fields: not images
        _add(tar, "../../etc/evil.png", b"dots")  # a name that would escape, were it ever a path
        _add(tar, "/abs.png", b"absolute")
        _add(tar, "dir.jpg", kind=tarfile.DIRTYPE)
        _add(tar, "link.jpg", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "hard.jpg", kind=tarfile.LNKTYPE, linkname="a/000.jpg")
        _add(tar, "fifo.jpg", kind=tarfile.FIFOTYPE)
        _add(tar, "a/._000.jpg", b"macos")  # hidden
        _add(tar, ".thumbs/001.jpg", b"thumb")  # in a hidden folder (a folder walk skips it too)
        _add(tar, "./b/.cache/002.jpg", b"cached")
        _add(tar, "new\nline.JPG", b"nl")
        _add(tar, "./c.png", b"dot")  # ("tar cf s.tar ." names its members so)


def test_listing_keeps_regular_image_members_and_reads_them_by_offset(tmp_path):
    shard = tmp_path / "s.tar"
    _hostile(shard)
    names = shards.list_members(shard)
    assert names == [f"{shard}::{m}" for m in ("a/000.jpg", "../../etc/evil.png", "/abs.png", "new\nline.JPG",
                                                 "./c.png")]
    assert image_files(shard, "PATH") == names
    assert [shards.read_image_bytes(n) for n in names] == [b"first", b"dots", b"absolute", b"nl", b"dot"]
    assert shards.split_member(names[1]) == (str(shard), "../../etc/evil.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tar"]  # nothing extracted
    with pytest.raises(UserError, match=r"s.tar::a/001.jpg: no such image in the shard"):
        shards.read_image_bytes(f"{shard}::a/001.jpg")


def test_a_member_named_like_a_file_that_exists_is_that_file(tmp_path):
    real = tmp_path / "x.tar::y.jpg"
    real.write_bytes(b"plain file")
    assert shards.split_member(real) is None and shards.read_image_bytes(real) == b"plain file"


def test_a_shard_beside_a_file_named_as_its_member_is_refused(tmp_path):
    """A file ``x.tar::y.jpg`` beside the shard ``x.tar`` holding ``y.jpg``: that name reads the
    file, and the member's row held the file's scores without a word."""
    for folder, planted in (("kept", "x.tar::notes"), ("planted", "x.tar::y.jpg")):  # (notes: no member's name)
        (tmp_path / folder).mkdir()
        with tarfile.open(tmp_path / folder / "x.tar", "w") as tar:
            _add(tar, "y.jpg", b"member")
            _add(tar, "z.jpg", b"other")
        (tmp_path / folder / planted).write_bytes(b"planted")
    shard = tmp_path / "kept" / "x.tar"
    assert shards.list_members(shard) == [f"{shard}::{m}" for m in ("y.jpg", "z.jpg")]
    shard = tmp_path / "planted" / "x.tar"
    with pytest.raises(UserError, match=rf"^--x {shard}: {shard}::y.jpg is a file beside the shard with the name "
                                        "of one of its images"):
        shards.list_members(shard, "--x")



def test_a_shard_given_by_its_bare_name_is_checked_beside_it_too(tmp_path, monkeypatch):
    """A shard named relative to the working folder ('x.tar', no folder part) has the same check:
    its folder is '.', not '' (which cannot be looked at, and let the planted file be read)."""
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        _add(tar, "y.jpg", b"member")
    (tmp_path / "x.tar::y.jpg").write_bytes(b"planted")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^--x x.tar: x.tar::y.jpg is a file beside the shard with the name of one of "
                                        "its images"):
        shards.list_members("x.tar", "--x")


def test_a_shard_whose_own_path_holds_the_separator_is_refused(tmp_path):
    """The shard ``w.tar::b/s.tar`` (in a folder of that name) names its image ``m.jpg``
    ``w.tar::b/s.tar::m.jpg``, which :func:`split_member` splits at its first ``.tar::``: score read
    the member ``b/s.tar::m.jpg`` of the shard ``w.tar`` beside it instead, and wrote that image's
    scores in the row of ``m.jpg``, exit 0. A shard named ``a.tar::b.tar`` itself was told to
    rename "that folder": it is told to rename the shard."""
    (tmp_path / "w.tar::b").mkdir()
    shard = tmp_path / "w.tar::b" / "s.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "m.jpg", b"the shard's own")
    with tarfile.open(tmp_path / "w.tar", "w") as tar:
        _add(tar, "b/s.tar::m.jpg", b"another shard's")
    with pytest.raises(UserError, match=rf"^PATH {shard}: its path holds '.tar::', which its images' names "
                                        r"\(SHARD.tar::MEMBER\) would be split at, naming another shard; rename that "
                                        "folder$"):
        image_files(shard, "PATH")
    # the shard's own name holding it ("rename that folder" named no folder that holds it): the shard
    own = tmp_path / "a.tar::b.tar"
    own.write_bytes(shard.read_bytes())
    with pytest.raises(UserError, match=r"naming another shard; rename the shard$"):
        image_files(own, "PATH")


def test_bad_shards_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UserError, match="junk.tar: not a readable uncompressed tar shard"):
        image_files(tmp_path / "junk.tar", "PATH")
    with tarfile.open(tmp_path / "none.tar", "w") as tar:
        _add(tar, "k.txt", b"text")
    with pytest.raises(UserError, match="none.tar: no image members found"):
        image_files(tmp_path / "none.tar", "PATH")
    big = tmp_path / "big.tar"
    with tarfile.open(big, "w") as tar:
        _add(tar, "k.jpg", b"x" * 100)
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 99)
    with pytest.raises(UserError, match=r"big.tar::k.jpg: too large \(100 bytes, at most 99\)"):
        shards.read_image_bytes(shards.list_members(big)[0])
    monkeypatch.undo()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(big.read_bytes()[:560])  # the header and part of the data
    with pytest.raises(UserError, match=r"cut.tar::k.jpg: the shard ends inside this image \(truncated\)"):
        shards.read_image_bytes(f"{cut}::k.jpg")
    # cut inside its last member (a copy stopped short): the shard was refused whole, with
    # --skip-unreadable too; its other members read, the last one is the unreadable image
    with tarfile.open(tmp_path / "two.tar", "w") as tar:
        _add(tar, "a.jpg", b"a" * 100)
        _add(tar, "b.jpg", b"b" * 100)
    (tmp_path / "two-cut.tar").write_bytes((tmp_path / "two.tar").read_bytes()[:1024 + 512 + 50])
    a, b = shards.list_members(tmp_path / "two-cut.tar")
    assert shards.read_image_bytes(a) == b"a" * 100
    with pytest.raises(UserError, match=r"two-cut.tar::b.jpg: the shard ends inside this image"):
        shards.read_image_bytes(b)


@pytest.mark.parametrize("cut", [1536 + 50, 2560 + 300, 512 + 100 + 10, 512 + 100],
                         ids=["inside 000.cls", "inside the header of 001.jpg", "in the padding after 000.jpg",
                              "right after 000.jpg's last byte"])
def test_a_shard_cut_elsewhere_than_inside_an_image_is_unreadable(tmp_path, cut):
    """webdataset's KEY.jpg, KEY.cls, ...: a copy stopped inside a KEY.cls, inside a header, or in
    the padding after an image's bytes listed the images before the cut, and the ones after it
    were gone without a word (exit 0); only a cut inside an image names that image."""
    with tarfile.open(tmp_path / "whole.tar", "w") as tar:
        _add(tar, "000.jpg", b"j" * 100)  # (header at 0, data 512..612, padded to 1024)
        _add(tar, "000.cls", b"3" * 600)  # (header at 1024, data 1536..2136, padded to 2560)
        _add(tar, "001.jpg", b"k" * 100)  # (header at 2560)
    (tmp_path / "cut.tar").write_bytes((tmp_path / "whole.tar").read_bytes()[:cut])
    with pytest.raises(UserError, match=r"cut.tar: not a readable uncompressed tar shard \(unexpected end of data\)$"):
        shards.list_members(tmp_path / "cut.tar")


def test_a_shard_cut_between_two_members_or_followed_by_another_is_unreadable(tmp_path):
    """A copy stopped exactly between two members, or a shard that is two tars one after the other
    (cat a.tar b.tar), listed the images up to that point and lost the others without a word
    (tarfile, as GNU tar without -i, stops there): both are one line naming the byte."""
    with tarfile.open(tmp_path / "whole.tar", "w") as tar:
        _add(tar, "000.jpg", b"j" * 100)  # (header at 0, data 512..612, padded to 1024)
        _add(tar, "001.jpg", b"k" * 100)  # (header at 1024, data to 2048; the end-of-archive blocks from 2048)
    whole = (tmp_path / "whole.tar").read_bytes()
    assert len(whole) == 10240 and not whole[2048:].strip(b"\0")  # (padded with zeros to tar's record size)
    (tmp_path / "cut.tar").write_bytes(whole[:1024])
    with pytest.raises(UserError, match=r"cut.tar: not a readable uncompressed tar shard \(it ends at byte 1024 "
                                        r"without tar's end-of-archive blocks: cut short\?\)$"):
        shards.list_members(tmp_path / "cut.tar")
    (tmp_path / "two.tar").write_bytes(whole + whole)
    with pytest.raises(UserError, match=r"two.tar: not a readable uncompressed tar shard \(data follows its "
                                        r"end-of-archive blocks at byte 10240: two tars one after the other\? give "
                                        r"each as its own shard\)$"):
        shards.list_members(tmp_path / "two.tar")
    (tmp_path / "late.tar").write_bytes(whole + bytes(3 << 20) + b"x")  # (found past the first MiB read too)
    with pytest.raises(UserError, match=rf"at byte {10240 + (3 << 20)}: two tars"):
        shards.list_members(tmp_path / "late.tar")
    # cut inside the end-of-archive blocks or the padding after them, every member is whole: read
    for n, cut in enumerate((2048 + 100, 2048 + 600, 4096)):
        (tmp_path / f"end{n}.tar").write_bytes(whole[:cut])
        names = shards.list_members(tmp_path / f"end{n}.tar")
        assert [shards.read_image_bytes(m) for m in names] == [b"j" * 100, b"k" * 100]
    # more padding than a record (tar -b 64: 32 KiB records) is the end too
    (tmp_path / "b64.tar").write_bytes(whole + bytes(32768 - 10240))
    assert len(shards.list_members(tmp_path / "b64.tar")) == 2


def test_a_shard_with_a_damaged_header_is_unreadable(tmp_path):
    """A flipped bit in the second header (its checksum wrong): tarfile ended the listing there,
    and the images after it were gone without a word (GNU tar says 'Skipping to next header')."""
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for k in range(3):
            _add(tar, f"{k}.jpg", b"j" * 100)
    raw = bytearray((tmp_path / "s.tar").read_bytes())
    raw[1024 + 1] ^= 0xFF  # (1.jpg's name)
    (tmp_path / "s.tar").write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"s.tar: not a readable uncompressed tar shard \(a damaged header at byte "
                                        r"1024\)$"):
        shards.list_members(tmp_path / "s.tar")


def test_a_rewritten_shard_is_indexed_again_and_stamped_anew(tmp_path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "k.png", b"old")
    before = shards.image_stamp(f"{shard}::k.png")
    assert shards.read_image_bytes(f"{shard}::k.png") == b"old"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "pad.png", b"p" * 3000)
        _add(tar, "k.png", b"new!")
    assert shards.read_image_bytes(f"{shard}::k.png") == b"new!"
    after = shards.image_stamp(f"{shard}::k.png")
    assert before[0] == after[0] == f"{shard.resolve()}::k.png" and before[1:] != after[1:]


def test_a_shard_is_scanned_once_for_listing_and_reading_until_it_changes(tmp_path, monkeypatch):
    """Listing fills the index the reads use (DataLoader workers forked after inherit it): one
    scan of the headers for the listing and every image; a shard rewritten is scanned again."""
    shard = tmp_path / "once.tar"
    _hostile(shard)
    scans, real = [], shards._scan
    monkeypatch.setattr(shards, "_scan", lambda path, flag: scans.append(path) or real(path, flag))
    names = shards.list_members(shard)
    assert [shards.read_image_bytes(n) for n in names] == [b"first", b"dots", b"absolute", b"nl", b"dot"]
    assert scans == [str(shard)]
    with tarfile.open(shard, "w") as tar:  # other bytes under the same name
        _add(tar, "a/000.jpg", b"rewritten")
    assert shards.read_image_bytes(f"{shard}::a/000.jpg") == b"rewritten" and scans == [str(shard)] * 2


def test_a_shard_given_to_eval_is_named_as_such(tmp_path):
    """eval reads folders and lists: a shard given as --ood or --id was one 'unreadable or truncated
    image' (any regular file is an image there)."""
    from clip_smot.common.image_sets import id_set, image_set

    tarfile.open(tmp_path / "s.tar", "w").close()
    for make, expected in ((lambda: image_set("x", tmp_path / "s.tar"), f"--ood x={tmp_path / 's.tar'}: a tar shard"),
                           (lambda: id_set(tmp_path / "s.tar", ["a"]), f"--id {tmp_path / 's.tar'}: a tar shard")):
        with pytest.raises(UserError) as e:
            make()
        assert str(e.value).startswith(expected) and "score reads shards" in str(e.value)


def _negative_size(path, size):
    """A shard whose second header says ``size`` < 0 (base-256, with its checksum redone)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, "a.png", b"x" * 600)
        _add(tar, "b.png", b"y" * 600)
    raw = bytearray(path.read_bytes())
    h = 512 + 1024  # (a.png's header, then its data in two blocks)
    assert raw[h:h + 5] == b"b.png"
    raw[h + 124:h + 136] = b"\xff" + ((1 << 88) + size).to_bytes(11, "big")
    raw[h + 148:h + 156] = b" " * 8
    raw[h + 148:h + 156] = b"%06o\0 " % sum(raw[h:h + 512])
    path.write_bytes(bytes(raw))


def _refused_as_overlapping_within(path, member, seconds):
    """``list_members(path)`` refuses ``member`` as overlapping within ``seconds``: listings of such
    shards once never ended, so an alarm fails the test rather than hanging the suite."""
    import signal

    def endless(*_):
        raise TimeoutError("the listing did not end")

    before = signal.signal(signal.SIGALRM, endless)
    signal.alarm(seconds)
    try:
        with pytest.raises(UserError, match=rf"{path.name}: not a readable uncompressed tar shard \(member "
                                            rf"'{member}' has a negative size or overlaps the one before\)$"):
            shards.list_members(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


@pytest.mark.parametrize("size", [-1, -100, -512, -1024, -1536])
def test_a_member_with_a_negative_size_is_one_line(tmp_path, size):
    """-1 and -100 move no header (tarfile rounds them up to 0 blocks): b.png would be listed,
    and read with a negative length; -512 sent tarfile's next header back onto the same one: the
    listing never ended (score hung); -1024 and -1536 listed b.png and then read it with a
    negative length (a traceback, --skip-unreadable or not). The shard is refused as unreadable, naming the member."""
    _negative_size(tmp_path / "s.tar", size)
    _refused_as_overlapping_within(tmp_path / "s.tar", "b.png", seconds=20)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_a_long_name_header_declaring_more_than_the_shard_holds_is_one_line(tmp_path, fmt):
    """A member's name of 150 characters goes in a header of its own (pax 'x', GNU 'L'), which
    tarfile reads in one read of the size that header declares: 2^62 bytes in a 3 KB shard was
    a MemoryError (a traceback) before anything was scored."""
    with tarfile.open(tmp_path / "s.tar", "w", format=fmt) as tar:
        _add(tar, "n" * 150 + ".png", b"x" * 600)
    raw = bytearray((tmp_path / "s.tar").read_bytes())
    assert raw[156:157] in (b"x", b"L")  # (the long name's header comes first)
    raw[124:136] = b"\x80" + (1 << 62).to_bytes(11, "big")
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    (tmp_path / "s.tar").write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"s.tar: not a readable uncompressed tar shard \("):
        shards.list_members(tmp_path / "s.tar")


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write sparse members")
@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix"])
def test_a_shard_with_a_sparse_member_lists_its_images(tmp_path, fmt):
    """A sparse member's size is its whole length, holes included, more than the shard stores:
    reading the next header's position from it refused GNU tar's sparse shards as overlapping.
    The member itself is skipped (not an image); the images around it are listed and read."""
    from PIL import Image

    Image.new("RGB", (4, 4), "red").save(tmp_path / "a.png")
    Image.new("RGB", (4, 4), "blue").save(tmp_path / "b.bmp")
    with open(tmp_path / "holes.bin", "wb") as f:  # (10 bytes, a hole of a MiB, 10 bytes)
        f.write(b"x" * 10)
        f.seek(1 << 20)
        f.write(b"y" * 10)
    subprocess.run(["tar", f"--format={fmt}", "-S", "-cf", str(tmp_path / "s.tar"), "-C", str(tmp_path),
                    "a.png", "holes.bin", "b.bmp"], check=True)
    with tarfile.open(tmp_path / "s.tar") as tar:
        assert tar.getmember("holes.bin").issparse()
    names = shards.list_members(tmp_path / "s.tar")
    assert names == [f"{tmp_path / 's.tar'}::a.png", f"{tmp_path / 's.tar'}::b.bmp"]
    assert shards.read_image_bytes(names[1]) == (tmp_path / "b.bmp").read_bytes()


def test_the_size_limit_admits_an_image_of_exactly_that_size(tmp_path, monkeypatch):
    """MAX_MEMBER_BYTES is the largest size read, for a shard's member and for an image file."""
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 100)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        _add(tar, "ok.jpg", b"x" * 100)
        _add(tar, "big.jpg", b"y" * 101)
    assert shards.read_image_bytes(f"{tmp_path / 's.tar'}::ok.jpg") == b"x" * 100
    with pytest.raises(UserError, match=r"s.tar::big.jpg: too large \(101 bytes, at most 100\)$"):
        shards.read_image_bytes(f"{tmp_path / 's.tar'}::big.jpg")
    (tmp_path / "ok.png").write_bytes(b"p" * 100)
    (tmp_path / "big.png").write_bytes(b"q" * 101)
    assert shards.read_image_bytes(tmp_path / "ok.png") == b"p" * 100
    with pytest.raises(UserError, match=r"big.png: too large for an image file \(101 bytes, at most 100\)$"):
        shards.read_image_bytes(tmp_path / "big.png")


def test_a_shard_named_in_capitals_and_relative_paths_are_one_image(tmp_path, monkeypatch):
    """SHARD.TAR::MEMBER is a member as SHARD.tar::MEMBER is (is_shard takes either case); a
    member's identity is the shard's absolute path, however the shard was spelled."""
    with tarfile.open(tmp_path / "UP.TAR", "w") as tar:
        _add(tar, "k.png", b"upper")
    assert shards.list_members(tmp_path / "UP.TAR") == [f"{tmp_path / 'UP.TAR'}::k.png"]
    assert shards.split_member(f"{tmp_path / 'UP.TAR'}::k.png") == (str(tmp_path / "UP.TAR"), "k.png")
    assert shards.read_image_bytes(f"{tmp_path / 'UP.TAR'}::k.png") == b"upper"
    monkeypatch.chdir(tmp_path)
    assert shards.image_identity("UP.TAR::k.png") == f"{tmp_path}/UP.TAR::k.png"
    assert shards.image_identity("./UP.TAR::k.png") == shards.image_identity(f"{tmp_path}/UP.TAR::k.png")


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write sparse members")
def test_a_sparse_member_with_an_image_name_is_not_listed(tmp_path):
    """Its size counts the holes, which the shard does not store: read at its offset, it would be
    its stored bytes and then whatever follows in the shard (the next headers), as one image."""
    with open(tmp_path / "holes.jpg", "wb") as f:  # (10 bytes, a hole of a MiB, 10 bytes)
        f.write(b"x" * 10)
        f.seek(1 << 20)
        f.write(b"y" * 10)
    (tmp_path / "a.png").write_bytes(b"a")
    subprocess.run(["tar", "--format=gnu", "-S", "-cf", str(tmp_path / "s.tar"), "-C", str(tmp_path),
                    "holes.jpg", "a.png"], check=True)
    with tarfile.open(tmp_path / "s.tar") as tar:
        assert tar.getmember("holes.jpg").issparse() and tar.getmember("holes.jpg").isreg()
    assert shards.list_members(tmp_path / "s.tar") == [f"{tmp_path / 's.tar'}::a.png"]


def test_a_folder_whose_name_ends_in_tar_is_a_folder(tmp_path):
    """is_shard: a regular file named *.tar; a folder named so (a shard's extracted copy) is
    listed as the folder of images it is."""
    (tmp_path / "s.tar").mkdir()
    (tmp_path / "s.tar" / "a.png").write_bytes(b"a")
    assert not shards.is_shard(tmp_path / "s.tar")
    assert image_files(tmp_path / "s.tar", "PATH") == [tmp_path / "s.tar" / "a.png"]
    # a regular file is a shard by its name alone: an image file given as PATH is that image
    assert not shards.is_shard(tmp_path / "s.tar" / "a.png")
    assert image_files(tmp_path / "s.tar" / "a.png", "PATH") == [tmp_path / "s.tar" / "a.png"]


def test_a_shard_in_a_folder_whose_name_holds_tar_is_split_at_its_own_name(tmp_path, monkeypatch):
    """SHARD.tar::MEMBER is split at '.tar::', not at the first '.tar' of the path (a folder
    'x.tar.d', 'old.tars'); a shard named '.tar' itself, given relative, is split at its start."""
    (tmp_path / "x.tar.d").mkdir()
    for shard in (tmp_path / "x.tar.d" / "s.tar", tmp_path / ".tar"):
        with tarfile.open(shard, "w") as tar:
            _add(tar, "a.jpg", b"image a")
    names = shards.list_members(tmp_path / "x.tar.d" / "s.tar")
    assert names == [f"{tmp_path / 'x.tar.d' / 's.tar'}::a.jpg"]
    assert shards.split_member(names[0]) == (str(tmp_path / "x.tar.d" / "s.tar"), "a.jpg")
    assert shards.read_image_bytes(names[0]) == b"image a"
    monkeypatch.chdir(tmp_path)
    assert shards.list_members(".tar") == [".tar::a.jpg"]
    assert shards.split_member(".tar::a.jpg") == (".tar", "a.jpg")
    assert shards.read_image_bytes(".tar::a.jpg") == b"image a"


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write sparse members")
def test_a_sparse_member_storing_a_negative_size_is_one_line_not_a_loop(tmp_path):
    """An old GNU sparse header keeps the member's length (holes included) apart from the bytes it
    stores: a stored size of -512 with a whole length that is not negative sent tarfile's next
    header back onto the same one (a listing that never ends)."""
    (tmp_path / "a.png").write_bytes(b"a" * 10)
    with open(tmp_path / "holes.bin", "wb") as f:
        f.write(b"x" * 10)
        f.seek(1 << 20)
        f.write(b"y" * 10)
    subprocess.run(["tar", "--format=gnu", "-S", "-cf", str(tmp_path / "s.tar"), "-C", str(tmp_path), "a.png",
                    "holes.bin"], check=True)
    raw = bytearray((tmp_path / "s.tar").read_bytes())
    h = 1024  # (a.png's header and its one block of data, then the sparse member's header)
    assert raw[h:h + 9] == b"holes.bin" and raw[h + 156:h + 157] == b"S"
    raw[h + 124:h + 136] = b"\xff" + ((1 << 88) - 512).to_bytes(11, "big")  # (stored: -512, base-256)
    raw[h + 148:h + 156] = b" " * 8
    raw[h + 148:h + 156] = b"%06o\0 " % sum(raw[h:h + 512])
    (tmp_path / "s.tar").write_bytes(bytes(raw))
    _refused_as_overlapping_within(tmp_path / "s.tar", "holes.bin", seconds=10)


def test_a_shard_cut_before_its_first_image_is_unreadable_not_imageless(tmp_path):
    """Cut inside a member that is no image (a copy stopped short): the images it held may be in
    the part that is gone, so the shard is named unreadable, not 'no image members found'."""
    with tarfile.open(tmp_path / "whole.tar", "w") as tar:
        _add(tar, "k.cls", b"3" * 100)
        _add(tar, "k.jpg", b"j" * 100)
    (tmp_path / "cut.tar").write_bytes((tmp_path / "whole.tar").read_bytes()[:512 + 50])
    with pytest.raises(UserError, match=r"^--x .*cut.tar: not a readable uncompressed tar shard \(unexpected end of "
                                        r"data\)$"):
        shards.list_members(tmp_path / "cut.tar", "--x")


def test_a_missing_shard_or_image_file_is_named_missing(tmp_path):
    with pytest.raises(UserError, match=rf"^--x {tmp_path / 'gone.tar'}: no such file$"):
        shards.list_members(tmp_path / "gone.tar", "--x")
    # an image of a shard gone since it was listed: no flag named it, the shard is named
    with pytest.raises(UserError, match=rf"^{tmp_path / 'gone.tar'}: cannot read the shard \(No such file or "
                                        r"directory\)$"):
        shards.read_image_bytes(f"{tmp_path / 'gone.tar'}::a.jpg")
    # a path that cannot be looked at (a file taken for a folder) is not said to be missing
    (tmp_path / "f.png").write_bytes(b"f")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'f.png' / 's.tar'}: cannot read the shard \(Not a "
                                        r"directory\)$"):
        shards.list_members(tmp_path / "f.png" / "s.tar", "--x")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'gone.png'}: no such image file$"):
        shards.read_image_bytes(tmp_path / "gone.png")


def test_a_shard_gone_or_failing_between_its_stat_and_its_read_is_one_line(tmp_path, monkeypatch):
    """A shard removed between its stat and the open of its scan is still "no such file" (not a
    shard of no images); one listed whose read then fails (EIO) is one line naming the shard."""
    import errno
    import os

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "a.jpg", b"image")
    assert shards.list_members(shard) == [f"{shard}::a.jpg"]  # (indexed: the read opens it alone)

    def failing(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(shards, "open", failing, raising=False)
    with pytest.raises(UserError) as e:
        shards.read_image_bytes(f"{shard}::a.jpg")
    assert str(e.value) == f"{shard}: cannot read the shard (Input/output error)"
    monkeypatch.undo()
    monkeypatch.setattr(shards, "file_stamp", lambda path: (0, 0, 0, 0))  # (as if stat saw it, then it went)
    with pytest.raises(UserError) as e:
        shards.list_members(tmp_path / "gone.tar", "--x")
    assert str(e.value) == f"--x {tmp_path / 'gone.tar'}: no such file"


def test_an_image_files_identity_is_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shards.image_identity("a.png") == shards.image_identity("./a.png") == f"{tmp_path}/a.png"


def _header(name, kind, size):
    """A ustar header block of type ``kind`` (b"x", b"g", b"L", b"K", ...) declaring ``size``."""
    info = tarfile.TarInfo(name)
    info.size = size
    raw = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    raw[156:157] = kind
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw)
    return bytes(raw)


def _padded(data):
    return data + bytes(-len(data) % tarfile.BLOCKSIZE)


def _record(key, value):
    """A pax record: its length (itself included), the key, the value."""
    body = b" %s=%s\n" % (key, value)
    n = len(body) + len(str(len(body)))
    return b"%d%s" % (n + (len(str(n)) > len(str(len(body)))), body)


def _member(name, data=b""):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + _padded(data)


def _extended(kind, body):
    return _header("ext", kind, len(body)) + _padded(body)


def _negative_extended(kind, body):
    """An extended header declaring a size of -512 (base-256), then ``body``: tarfile reads its
    records with read(-512), which a file object takes as 'read to the end'."""
    raw = bytearray(_header("ext", kind, 0))
    raw[124:136] = b"\xff" + ((1 << 88) - 512).to_bytes(11, "big")
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw)
    return bytes(raw) + _padded(body)


def _old_gnu_sparse(fragments):
    """A sparse member in the old GNU layout: 4 fragments in its header, 21 a block after it."""
    info = tarfile.TarInfo("holes.bin")
    raw = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    raw[156:157], raw[482], raw[483:495] = b"S", 1, b"%011o\0" % (1 << 30)
    entries = [b"%011o\0%011o\0" % (2000 * i + 1000, 1000) for i in range(fragments)]
    raw[386:482] = b"".join(entries[:4])
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw)
    blocks = [b"".join(entries[i:i + 21]).ljust(504, b"\0") for i in range(4, fragments, 21)]
    return bytes(raw) + b"".join(b + (b"\1" if i < len(blocks) - 1 else b"\0") + bytes(7) for i, b in enumerate(blocks))


_BIG = 4 << 20  # (the headers of each hostile shard below: 128 times the limit the test sets)
_HOSTILE_HEADERS = {
    "pax": lambda: _extended(b"x", _record(b"comment", b"c" * _BIG)),
    "GNU long name": lambda: _extended(b"L", b"n" * _BIG + b".png"),
    "GNU long link": lambda: _extended(b"K", b"n" * _BIG),
    "old GNU sparse map": lambda: _old_gnu_sparse(_BIG // 512 * 21),
    "pax 0.1 sparse map": lambda: _extended(b"x", _record(b"GNU.sparse.map", b",".join(b"%d" % (1000 + i) for i in range(
        _BIG // 5))) + _record(b"GNU.sparse.realsize", b"10")) + _member("holes.bin"),
    "pax 0.0 sparse map": lambda: _extended(b"x", _record(b"GNU.sparse.size", b"10") + b"".join(
        _record(b"GNU.sparse.offset", b"%d" % i) + _record(b"GNU.sparse.numbytes", b"1") for i in range(_BIG // 50))
        ) + _member("holes.bin"),
    "pax 1.0 sparse map": lambda: _extended(b"x", _record(b"GNU.sparse.major", b"1") + _record(b"GNU.sparse.minor", b"0")
                                            ) + _member("holes.bin", b"%d\n" % (_BIG // 10) + b"1000\n" * (_BIG // 5)),
    "pax declaring a negative size": lambda: _negative_extended(b"x", _record(b"comment", b"c" * _BIG)),
    "global pax headers": lambda: b"".join(_extended(b"g", _record(b"k%d" % i, b"v" * 30000)) + _member(f"{i}.cls")
                                           for i in range(_BIG // 30000)),  # (each holds; tarfile keeps them all)
}


@pytest.mark.parametrize("kind", list(_HOSTILE_HEADERS))
def test_headers_larger_than_the_limit_are_refused_before_they_are_read(tmp_path, monkeypatch, kind):
    """tarfile reads a pax or GNU long-name header whole, parses copies of it, and builds a sparse
    map as a list several times its bytes: a 200 MB pax header in a 200 MB shard took 570 MB
    more to list, a 60 MB old GNU sparse map 340 MB, and global pax headers added up without end.
    A member's headers over MAX_HEADER_BYTES now make the shard unreadable, before they are read."""
    import tracemalloc

    import clip_smot.common.images  # noqa: F401 (imported before the measure)

    (tmp_path / "s.tar").write_bytes(_HOSTILE_HEADERS[kind]() + _member("k.png", b"png") + bytes(1024))
    monkeypatch.setattr(shards, "MAX_HEADER_BYTES", 32 << 10)
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"s.tar: not a readable uncompressed tar shard \(the headers at byte \d+ "
                                            r"take more than 32768 bytes of pax records, long names or sparse map, far "
                                            r"more than a real shard's\)$"):
            shards.list_members(tmp_path / "s.tar")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes at the peak"


def test_the_header_limit_admits_headers_of_exactly_that_size(tmp_path, monkeypatch):
    """A member's headers: its pax header block and records and its own header block, read
    before its data; a global pax header's records count for every member after it."""
    def limit(n):
        monkeypatch.setattr(shards, "MAX_HEADER_BYTES", n)
        shards._index.cache_clear()  # (the same shard, scanned again)

    with tarfile.open(tmp_path / "s.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "é" * 300 + ".png", b"x" * 10)
        _add(tar, "b.png", b"y" * 10)
    with tarfile.open(tmp_path / "s.tar") as tar:
        headers = tar.getmembers()[0].offset_data  # (the first member's, from byte 0)
    assert headers == 512 + 1024 + 512
    limit(headers)
    assert len(shards.list_members(tmp_path / "s.tar")) == 2
    limit(headers - 1)
    with pytest.raises(UserError, match=r"s.tar: not a readable uncompressed tar shard \(the headers at byte 0 take "
                                        r"more than 2047 bytes"):
        shards.list_members(tmp_path / "s.tar")
    # two global headers, of 3,000 bytes of records each: the second member's headers take its
    # 4,096 bytes (header blocks, records) and the first's 3,002 bytes still held
    (tmp_path / "g.tar").write_bytes(_extended(b"g", _record(b"k1", b"v" * 3000)) + _member("a.png", b"x")
                                     + _extended(b"g", _record(b"k2", b"v" * 3000)) + _member("b.png", b"y")
                                     + bytes(1024))
    limit(5000)
    with pytest.raises(UserError, match=r"g.tar: not a readable uncompressed tar shard \(the headers at byte 4608 "
                                        r"take more than 5000 bytes"):
        shards.list_members(tmp_path / "g.tar")
    limit(8000)
    assert len(shards.list_members(tmp_path / "g.tar")) == 2
    # the records held count their keys too ("k1" and 3,000 "v"s: 3,002 bytes), with the 4,096
    # and the byte before 4608 that tarfile reads to see that the first member's data is there
    limit(3002 + 1 + 4096)
    assert len(shards.list_members(tmp_path / "g.tar")) == 2
    limit(3002 + 4096)
    with pytest.raises(UserError, match=r"g.tar: not a readable uncompressed tar shard \(the headers at byte 4608 "
                                        r"take more than 7098 bytes"):
        shards.list_members(tmp_path / "g.tar")


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_and_unicode_member_names_are_listed_and_read(tmp_path, fmt):
    """Names over 100 characters go in a header of their own (GNU 'L', pax 'x'), as do pax's
    non-ASCII names; a git archive's global pax header (its commit) comes first."""
    names = ["d" * 200 + "/" + "n" * 96 + ".jpg", "ünïcødé/画像.png", "s.png"]
    with tarfile.open(tmp_path / "s.tar", "w", format=fmt,
                      pax_headers={"comment": "0" * 40} if fmt == tarfile.PAX_FORMAT else None) as tar:
        for k, name in enumerate(names):
            _add(tar, name, b"%d" % k * (k + 1))
            _add(tar, name[:-4] + ".cls", b"3")
    assert len(names[0]) == 301
    listed = shards.list_members(tmp_path / "s.tar")
    assert listed == [f"{tmp_path / 's.tar'}::{n}" for n in names]
    assert [shards.read_image_bytes(m) for m in listed] == [b"0", b"11", b"222"]


def test_a_chain_of_extended_headers_is_one_line(tmp_path):
    """tarfile reads the header after a pax one by recursing into it: 1,500 empty pax headers
    one after the other (768 KB, within the header limit) were a RecursionError, a traceback."""
    (tmp_path / "s.tar").write_bytes(_header("ext", b"x", 0) * 1500 + _member("k.png", b"png") + bytes(1024))
    with pytest.raises(UserError, match=r"s.tar: not a readable uncompressed tar shard \(the headers at byte 0 extend "
                                        r"one another more deeply than tarfile can follow\)$"):
        shards.list_members(tmp_path / "s.tar")


def test_the_limits_are_the_ones_docs_score_md_states():
    """The tests above monkeypatch the two limits; here their values, written out from docs/score.md."""
    from pathlib import Path

    text = " ".join((Path(__file__).parents[2] / "docs" / "score.md").read_text().split())
    assert "a member over 256 MiB is an unreadable image" in text
    assert "take more than 1 MiB: `tarfile` holds them in memory whole" in text
    assert (shards.MAX_MEMBER_BYTES, shards.MAX_HEADER_BYTES) == (256 * 1024 * 1024, 1024 * 1024)


# --- against the webdataset library's own writer and reader -------------------------------------

def _encoded(fmt, seed=0, size=(20, 24)):
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3)).astype("uint8")).save(buf, format=fmt)
    return buf.getvalue()


def test_the_images_listed_are_the_image_fields_webdatasets_reader_gives(tmp_path):
    """A shard of webdataset's TarWriter read with webdataset's own reader: each member listed is
    the field webdataset gives (the key split at the basename's first dot: ``a.seg.png`` is
    field ``seg.png`` of key ``a``, a second image of that sample; ``dir/x.y.jpg``; an
    uppercase ``.JPG``) with the same bytes, and decodes to the pixels webdataset's decoder
    gives. Fields that are no images (cls, json, txt) are not listed. webdataset decodes three
    more that are left out on purpose (docs/score.md): a gzip-compressed field ``jpg.gz``, an
    extension a folder walk does not list either (``.jfif``), an image in a hidden folder."""
    import gzip

    import numpy as np
    import webdataset
    from webdataset.tariterators import base_plus_ext

    from clip_smot.common.images import load_image

    shard = tmp_path / "s.tar"
    samples = [{"__key__": "000000000", "jpg": _encoded("JPEG", 0), "cls": b"3", "json": b'{"caption": "x"}',
                "txt": b"a caption"},
               {"__key__": "a", "jpg": _encoded("JPEG", 1), "seg.png": _encoded("PNG", 2)},
               {"__key__": "dir/x", "y.jpg": _encoded("JPEG", 3)},
               {"__key__": "B", "JPG": _encoded("JPEG", 4)},
               {"__key__": "w", "webp": _encoded("WEBP", 5)},
               {"__key__": "c", "jpg.gz": gzip.compress(_encoded("JPEG", 6))},
               {"__key__": "d", "jfif": _encoded("JPEG", 7)},
               {"__key__": ".thumbs/e", "jpg": _encoded("JPEG", 8)}]
    with webdataset.TarWriter(str(shard), encoder=False) as sink:
        for sample in samples:
            sink.write(sample)

    raw = {(s["__key__"], k): v for s in webdataset.WebDataset([str(shard)], shardshuffle=False)
           for k, v in s.items() if not k.startswith("__")}
    decoded = {(s["__key__"], k): v for s in webdataset.WebDataset([str(shard)], shardshuffle=False).decode("pil")
               for k, v in s.items() if not k.startswith("__") and not isinstance(v, (bytes, str, int, dict))}
    listed = shards.list_members(shard)
    split = [base_plus_ext(m.split("::", 1)[1]) for m in listed]
    ours = [(key, ext.lower()) for key, ext in split]  # (webdataset lowercases a field's name)
    assert ours == [("000000000", "jpg"), ("a", "jpg"), ("a", "seg.png"), ("dir/x", "y.jpg"), ("B", "jpg"),
                    ("w", "webp")]
    assert [shards.read_image_bytes(m) for m in listed] == [raw[k] for k in ours]
    for member, k in zip(listed, ours):
        if k in decoded:  # (webdataset before 1.0 decodes no WebP)
            assert np.array_equal(np.asarray(load_image(member, data=shards.read_image_bytes(member))), np.asarray(decoded[k].convert("RGB"))), member
    assert set(decoded) - set(ours) == {("c", "jpg.gz"), (".thumbs/e", "jpg")} | ({("d", "jfif")} & set(decoded))


def _webdataset_samples(shard):
    """``[(key, {field: bytes})]`` of ``shard`` as webdataset's reader gives them (its defaults:
    suffixes lower-cased, members in a row with one key grouped), or the ValueError it raises."""
    import webdataset

    try:
        return [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
                for s in webdataset.WebDataset([str(shard)], shardshuffle=False)]
    except ValueError as e:
        return e


@pytest.mark.parametrize("members, member, why", [
    (["a.jpg", "a.JPG"], "a.JPG", "is the field 'jpg' of the sample 'a', a second field of that name in the sample"),
    (["d/a.png", "d/a.cls", "d/a.CLS"], "d/a.CLS", "is the field 'cls' of the sample 'd/a', a second field"),
    (["a.jpg", "a.__KEY__"], "a.__KEY__", "is the field '__key__' of the sample 'a', a field that webdataset's reader "
                                          "sets itself"),
    (["a.jpg", "a.jpg"], "a.jpg", "is stored twice"),
    (["a.jpg", "b.jpg", "a.jpg"], "a.jpg", "is stored twice")],
    ids=["jpg and JPG", "cls and CLS", "a field named __key__", "one name twice in a row", "one name twice"])
def test_a_field_twice_in_a_sample_or_a_name_stored_twice_is_refused(tmp_path, members, member, why):
    """A sample's field met twice, as webdataset's reader sees it (``a.jpg`` beside ``a.JPG``: it
    lower-cases suffixes), stops that reader ("duplicate file name"); here ``a.JPG`` was a second
    row, and a name stored twice (as ``tar rf`` appends a new version) was read as its first copy,
    which tar does not extract (it keeps the last) and webdataset, the copies apart, reads as two
    samples. Both are now refused in one line naming the shard and the member."""
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for i, name in enumerate(members):
            _add(tar, name, _encoded("PNG", i) if name.lower().endswith((".jpg", ".png")) else b"1")
    theirs = _webdataset_samples(shard)
    if isinstance(theirs, list):  # (the copies apart: two samples with one key)
        assert [k for k, _ in theirs] == ["a", "b", "a"]
    else:
        assert f"{member}: duplicate file name in tar file" in str(theirs)
    with pytest.raises(UserError) as e:
        image_files(shard, "PATH")
    assert str(e.value).startswith(f"PATH {shard}: the member '{member}' {why}") and "\n" not in str(e.value)


def test_suffixes_apart_in_case_are_two_images_where_webdataset_reads_two_samples(tmp_path):
    """``a.jpg``, ``b.jpg``, ``a.JPG``: webdataset's reader gives two samples ``a`` (the members
    are not in a row), each with its image; here they are two rows, with the same bytes."""
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for i, name in enumerate(["a.jpg", "b.jpg", "a.JPG"]):
            _add(tar, name, _encoded("JPEG", i))
    theirs = _webdataset_samples(shard)
    assert [k for k, _ in theirs] == ["a", "b", "a"]
    listed = image_files(shard, "PATH")
    assert listed == [f"{shard}::{n}" for n in ("a.jpg", "b.jpg", "a.JPG")]
    assert [shards.read_image_bytes(m) for m in listed] == [fields["jpg"] for _, fields in theirs]


def test_webdatasets_metadata_members_are_no_images(tmp_path):
    """webdataset's reader skips a name that starts with a ``__NAME__`` part as metadata
    (``__meta__/x.jpg``; ``__a__.jpg`` and ``k/__b__/y.jpg`` are samples): such an image was a
    row here, and a shard of metadata images alone was scored where that reader finds no sample.
    Skipped, it no longer parts a sample's members either: ``a.jpg``, ``__x__/n.txt``, ``a.JPG``
    is one sample with the field jpg twice, which that reader stops at."""
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        for i, name in enumerate(["__meta__/x.jpg", "__index__", "__a__.jpg", "k/__b__/y.jpg", "z.png"]):
            _add(tar, name, _encoded("PNG", i))
    theirs = _webdataset_samples(shard)
    assert [(k, sorted(f)) for k, f in theirs] == [("__a__", ["jpg"]), ("k/__b__/y", ["jpg"]), ("z", ["png"])]
    listed = image_files(shard, "PATH")
    assert listed == [f"{shard}::{n}" for n in ("__a__.jpg", "k/__b__/y.jpg", "z.png")]
    assert [shards.read_image_bytes(m) for m in listed] == [v for _, f in theirs for v in f.values()]

    with tarfile.open(tmp_path / "meta.tar", "w") as tar:
        _add(tar, "__x__/y.jpg", _encoded("JPEG"))
    theirs = _webdataset_samples(tmp_path / "meta.tar")
    assert theirs == [] or "No samples found" in str(theirs)  # (webdataset 1.0 raises on a shard of none)
    with pytest.raises(UserError, match="meta.tar: no image members found"):
        image_files(tmp_path / "meta.tar", "PATH")

    with tarfile.open(tmp_path / "parted.tar", "w") as tar:
        for name in ["a.jpg", "__x__/n.txt", "a.JPG"]:
            _add(tar, name, _encoded("JPEG"))
    assert "a.JPG: duplicate file name in tar file" in str(_webdataset_samples(tmp_path / "parted.tar"))
    with pytest.raises(UserError, match=r"parted.tar: the member 'a.JPG' is the field 'jpg' of the sample 'a', a "):
        image_files(tmp_path / "parted.tar", "PATH")


@pytest.mark.parametrize("name, compress, kind", [("s.tar.gz", None, "gzip"), ("s.tgz", None, "gzip"),
                                                  ("s.tar", True, "gzip"), ("s.tar.bz2", "bz2", "bzip2"),
                                                  ("s.tar.xz", "xz", "xz"), ("s.tar", "xz", "xz")])
def test_a_compressed_shard_that_webdataset_reads_is_refused_in_one_line(tmp_path, name, compress, kind):
    """webdataset's TarWriter compresses a shard whose name ends in "gz" (or with compress=True),
    and its reader streams gzip, bzip2 and xz tars. Such a shard named .tar.gz or .tgz was taken
    for one image file: `score` stopped on 'unreadable or truncated image', and with
    --skip-unreadable it dropped the shard's images as one unreadable image. A compressed tar,
    by its name or (named .tar) by its first bytes, is now a shard refused in one line that says
    so (its images cannot be read at an offset)."""
    import bz2
    import lzma

    import webdataset

    shard = tmp_path / name
    if compress in (None, True):
        with webdataset.TarWriter(str(shard), compress=compress) as sink:
            sink.write({"__key__": "000000000", "jpg": _encoded("JPEG"), "cls": 1})
    else:
        with webdataset.TarWriter(str(tmp_path / "plain.tar")) as sink:
            sink.write({"__key__": "000000000", "jpg": _encoded("JPEG"), "cls": 1})
        shard.write_bytes((bz2 if compress == "bz2" else lzma).compress((tmp_path / "plain.tar").read_bytes()))
    read = [(s["__key__"], sorted(k for k in s if not k.startswith("__")))
            for s in webdataset.WebDataset([str(shard)], shardshuffle=False)]
    assert read == [("000000000", ["cls", "jpg"])]  # (webdataset reads it)
    assert shards.is_shard(shard)
    with pytest.raises(UserError, match=rf"^PATH {shard}: a tar shard compressed with {kind}, which is not read \(images "
                                        rf"are read at their offsets in an uncompressed tar\); decompress it to a \.tar "
                                        rf"first \({kind} -dc SHARD > NAME\.tar\)$"):
        image_files(shard, "PATH")


@pytest.mark.parametrize("name, magic, kind", [("s.tar.zst", b"\x28\xb5\x2f\xfd", "zstd"),
                                               ("s.tzst", b"\x28\xb5\x2f\xfd", "zstd"),
                                               ("s.tar", b"\x28\xb5\x2f\xfd", "zstd"),
                                               ("s.TAR.LZ4", b"\x04\x22\x4d\x18", "lz4"),
                                               ("s.tar", b"\x04\x22\x4d\x18", "lz4"),
                                               ("s.tar", b"\x02\x21\x4c\x18", "lz4")],
                         ids=["tar.zst", "tzst", "zstd named tar", "TAR.LZ4", "lz4 named tar", "legacy lz4 named tar"])
def test_a_zstd_or_lz4_compressed_shard_is_refused_as_compressed(tmp_path, name, magic, kind):
    """A tar compressed with zstd (`tar --zstd`) or lz4 (`tar -I lz4`): named .tar.zst, .tzst or
    .tar.lz4 it was no shard but an image file, which `score` stopped on as an unreadable image
    (and --skip-unreadable dropped as one); named .tar it was "not a readable uncompressed tar
    shard (truncated header)". Both are now refused as gzip, bzip2 and xz tars are, by the name
    or by the stream's magic number, in one line that says how to decompress it."""
    import numpy as np

    shard = tmp_path / name
    shard.write_bytes(magic + np.random.default_rng(0).integers(0, 256, 3000).astype("uint8").tobytes())
    assert shards.is_shard(shard)
    with pytest.raises(UserError) as e:
        image_files(shard, "PATH")
    assert str(e.value) == (f"PATH {shard}: a tar shard compressed with {kind}, which is not read (images are read at "
                            f"their offsets in an uncompressed tar); decompress it to a .tar first ({kind} -dc SHARD > "
                            "NAME.tar)")


def test_a_shard_with_a_compressed_name_is_refused_by_its_name_before_it_is_read(tmp_path):
    """A name ending in a compressed tar's suffix is refused by the name alone, as the module's
    docstring says, whatever its bytes: a plain tar named .tgz is not listed by its offsets."""
    shard = tmp_path / "s.tgz"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "a.jpg", b"image")
    with pytest.raises(UserError, match=rf"^PATH {shard}: a tar shard compressed with gzip, which is not read "):
        shards.list_members(shard)


def test_a_folder_of_shards_given_as_path_says_to_name_the_shards(tmp_path):
    """img2dataset writes its shards into one folder; score on that folder said only "no image
    files found": a folder is not searched for shards (as docs/score.md says), and the error now
    names one and says how to give them: a glob of the shard's own folder, not of the folder given
    (img2dataset's part1/ here), which named no shard. A folder of no images and no shards says what
    it said."""
    import webdataset

    (tmp_path / "shards" / "part1").mkdir(parents=True)
    with webdataset.TarWriter(str(tmp_path / "shards" / "part1" / "00000.tar")) as sink:
        sink.write({"__key__": "000000000", "jpg": _encoded("JPEG"), "txt": "a caption"})
    (tmp_path / "shards" / "00000.parquet").write_bytes(b"PAR1")  # (img2dataset's record of the shard)
    looked = "looked for .jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp, .ppm, .pgm"
    with pytest.raises(UserError) as e:
        image_files(tmp_path / "shards", "PATH")
    assert str(e.value) == (f"PATH {tmp_path / 'shards'}: no image files found ({looked}), but tar shards, e.g. "
                            f"{tmp_path / 'shards' / 'part1' / '00000.tar'}: a folder is not searched for shards; "
                            f"give each shard as a PATH (e.g. {tmp_path / 'shards' / 'part1' / '*.tar'})")
    # the example, as a shell expands it, names the shard (shards/*.tar, the folder given, names none)
    assert glob.glob(str(e.value).rsplit("(e.g. ", 1)[1][:-1]) == [str(tmp_path / "shards" / "part1" / "00000.tar")]
    assert len(image_files(tmp_path / "shards" / "part1" / "00000.tar", "PATH")) == 1
    (tmp_path / "shards" / "part1" / "00000.tar").unlink()
    with pytest.raises(UserError) as e:
        image_files(tmp_path / "shards", "PATH")
    assert str(e.value) == f"PATH {tmp_path / 'shards'}: no image files found ({looked})"


def test_a_shard_with_a_terabyte_hole_after_its_end_is_listed_at_once(tmp_path, monkeypatch):
    """The zeros after a shard's end-of-archive blocks were read to the end of the file to see that
    no second tar followed: a tail made a hole of a terabyte (``truncate -s 1T``, nothing on disk)
    took hours for one listing (20 GB: 4 minutes). Holes are skipped; data after one is still found."""
    import os

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "a.jpg", b"image")
    os.truncate(shard, 1 << 40)
    with open(shard, "rb") as f:
        try:
            os.lseek(f.fileno(), 1 << 30, os.SEEK_DATA)
            pytest.skip("this file system tells no holes (SEEK_DATA)")
        except OSError:  # (ENXIO: only a hole after the tar)
            pass

    class Counted(io.BufferedReader):  # (the old reading stops here at 64 MiB, not after hours)
        total = 0

        def read(self, n=-1):
            data = super().read(n)
            Counted.total += len(data)
            assert Counted.total < 64 << 20, "the hole was read"
            return data

    monkeypatch.setattr(shards, "open", lambda path, mode="rb": Counted(io.FileIO(path)), raising=False)
    assert shards.list_members(shard) == [f"{shard}::a.jpg"]
    with open(shard, "ab") as f:  # one byte after the hole: another tar's start, say
        f.write(b"x")
    with pytest.raises(UserError, match=rf"data follows its end-of-archive blocks at byte {1 << 40}: two tars"):
        shards.list_members(shard)


def test_an_io_error_looking_past_the_end_for_data_is_one_line(tmp_path, monkeypatch):
    """lseek(SEEK_DATA) failing with other than ENXIO (no data left) or EINVAL (no holes told
    there), an EIO of a failing disk, leaves the shard unread: one line naming it, no listing that
    went on without looking past the end."""
    import errno
    import os

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "a.jpg", b"image")
    lseek = os.lseek

    def failing(fd, pos, how):
        if how == os.SEEK_DATA:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return lseek(fd, pos, how)

    monkeypatch.setattr(shards.os, "lseek", failing)
    with pytest.raises(UserError) as e:
        shards.list_members(shard)
    assert str(e.value) == f"PATH {shard}: not a readable uncompressed tar shard ([Errno 5] Input/output error)"


def test_a_file_system_that_tells_no_holes_is_read_past_the_end(tmp_path, monkeypatch):
    """lseek(SEEK_DATA) failing with EINVAL (a file system that tells no holes) is no error: the
    zeros after the end-of-archive blocks are read instead, and data after them is still found."""
    import errno
    import os

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "a.jpg", b"image")
    size = shard.stat().st_size
    lseek, asked = os.lseek, []

    def no_holes(fd, pos, how):
        if how == os.SEEK_DATA:
            asked.append(pos)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return lseek(fd, pos, how)

    monkeypatch.setattr(shards.os, "lseek", no_holes)
    assert shards.list_members(shard) == [f"{shard}::a.jpg"] and asked
    with open(shard, "ab") as f:  # one byte after the zeros: another tar's start, say
        f.write(b"x")
    with pytest.raises(UserError, match=rf"data follows its end-of-archive blocks at byte {size}: two tars"):
        shards.list_members(shard)


def test_an_image_path_that_cannot_be_read_is_one_line_naming_it(tmp_path):
    """A path there but not readable as a file (a folder listed as an image) is not said to be
    missing: the line names it and the reason."""
    (tmp_path / "a.png").mkdir()
    with pytest.raises(UserError) as e:
        shards.read_image_bytes(tmp_path / "a.png")
    assert str(e.value) == f"{tmp_path / 'a.png'}: cannot read the image file (Is a directory)"


def test_a_shard_that_is_a_folder_is_one_line_when_listed_as_a_shard(tmp_path):
    """list_members called on a folder (image_files takes a folder named *.tar for a folder): the
    open fails, and so does the look at its first bytes for a compressed tar; one line."""
    (tmp_path / "d.tar").mkdir()
    with pytest.raises(UserError) as e:
        shards.list_members(tmp_path / "d.tar", "--x")
    assert str(e.value) == (f"--x {tmp_path / 'd.tar'}: not a readable uncompressed tar shard ([Errno 21] Is a "
                            f"directory: '{tmp_path / 'd.tar'}')")


def test_an_image_path_replaced_by_a_fifo_or_a_device_is_refused_unread(tmp_path):
    """The listings hand in regular files only; a path replaced after its listing by a FIFO (whose open
    waited for a writer) or by /dev/zero (whose size is 0 and whose read never ended) is one line."""
    os.mkfifo(tmp_path / "x.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the read waited"))
    signal.alarm(10)
    try:
        for name in ("x.png", "zero.png"):
            with pytest.raises(UserError) as e:
                shards.read_image_bytes(tmp_path / name)
            assert str(e.value) == (f"{tmp_path / name}: cannot read the image file "
                                    "(not a regular file: a FIFO or a device)")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_an_image_file_grown_after_its_stat_is_read_whole_up_to_the_limit(tmp_path, monkeypatch):
    """The size limit holds for the bytes read, not only for the size stat gave before: a file that
    grows past it in between is refused, not read whole; one that stays within it is read whole,
    not cut at the size stat gave."""
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 100)
    fstat = os.fstat

    def grow_after_stat(fd):  # (path and extra: those of the case being read)
        st = fstat(fd)
        with open(path, "ab") as f:
            f.write(b"b" * extra)
        return st

    monkeypatch.setattr(shards.os, "fstat", grow_after_stat)
    for size, extra in [(50, 10), (100, 1), (50, 51)]:
        path = tmp_path / f"grows{size}_{extra}.png"
        path.write_bytes(b"a" * size)
        if size + extra <= 100:
            assert shards.read_image_bytes(path) == b"a" * size + b"b" * extra
            continue
        with pytest.raises(UserError) as e:
            shards.read_image_bytes(path)
        assert str(e.value) == f"{path}: too large for an image file (more than 100 bytes)"
