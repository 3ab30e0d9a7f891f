"""decode_jpeg + tensor resize/crop against PIL + torchvision's transforms on PIL images (the
pixels open_clip's evaluation transform makes), on the CPU decoder."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from clip_smot.common import tensor_images as ti


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _pil_pixels(data: bytes, size: int) -> np.ndarray:
    """open_clip's evaluation transform without ToTensor/Normalize: resize, crop, RGB; [S, S, 3] ints."""
    crop = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
    return np.asarray(crop(Image.open(io.BytesIO(data))).convert("RGB")).astype(int)


def _tensor_pixels(data: bytes, size: int) -> np.ndarray:
    image = ti.decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], "cpu")[0]
    hw = ti.shorter_side_size(image.shape[-2], image.shape[-1], size)
    return ti.center_crop(ti.resize_uint8(image, hw), size).permute(1, 2, 0).numpy().astype(int)


@pytest.mark.parametrize("h,w,size,mode", [
    (375, 500, 224, "RGB"),   # ImageNet's commonest shape: a downscale
    (500, 333, 224, "L"),     # grey, portrait, odd width
    (37, 53, 32, "RGB"),      # odd sizes
    (101, 77, 224, "RGB"),    # an upscale (bicubic overshoot clipped between passes, as PIL does)
    (224, 225, 224, "CMYK"),  # CMYK: libjpeg-turbo converts it as PIL does
])
def test_tensor_path_matches_pil_within_one_level(h, w, size, mode):
    im = Image.fromarray(np.random.default_rng(h).integers(0, 256, (h, w, 3)).astype(np.uint8)).convert(mode)
    data = _jpeg(im)
    ours, theirs = _tensor_pixels(data, size), _pil_pixels(data, size)
    assert ours.shape == theirs.shape == (size, size, 3)
    assert np.abs(ours - theirs).max() <= 1  # the documented tolerance (docs/score.md)
    assert (ours != theirs).mean() < 0.01


def test_a_bilinear_model_is_resized_bilinearly():
    """A model whose preprocessing config says bilinear (open_clip's ``interpolation``) gets
    torchvision's bilinear Resize on PIL images, within the documented level; bicubic differs."""
    im = Image.fromarray(np.random.default_rng(5).integers(0, 256, (90, 120, 3)).astype(np.uint8))
    image = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    want = np.asarray(T.Resize(32, interpolation=T.InterpolationMode.BILINEAR)(im)).astype(int)
    got = ti.resize_uint8(image, ti.shorter_side_size(90, 120, 32), "bilinear").permute(1, 2, 0).numpy().astype(int)
    assert got.shape == want.shape == (32, 42, 3) and np.abs(got - want).max() <= 1
    bicubic = ti.resize_uint8(image, (32, 42)).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(bicubic - want).max() > 1


def test_exif_orientation_is_not_applied_as_pil_does_not():
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :40] = 255  # left half white: a 90-degree turn would put it top or bottom
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _jpeg(Image.fromarray(a), exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    ours, theirs = _tensor_pixels(data, 32), _pil_pixels(data, 32)
    assert np.abs(ours - theirs).max() <= 1
    assert ours[:, :8].mean() > 200 and ours[:, -8:].mean() < 50  # not turned


def test_sizes_and_crop_follow_torchvision():
    for h, w in [(375, 500), (500, 375), (33, 100), (224, 224), (7, 1000)]:
        resized = T.Resize(32)(Image.new("RGB", (w, h)))
        assert ti.shorter_side_size(h, w, 32) == (resized.height, resized.width)
        x = torch.arange(h * w).view(1, h, w)
        if min(h, w) >= 32:
            torch.testing.assert_close(ti.center_crop(x, 32), T.CenterCrop(32)(x))


def test_unreadable_jpegs_are_none_others_decoded():
    good = _jpeg(Image.new("RGB", (20, 10), (200, 10, 10)))
    raws = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in (good, good[: len(good) // 2], b"\xff\xd8\xffjunk")]
    out = ti.decode_jpegs(raws, "cpu")
    assert out[1] is None and out[2] is None
    assert out[0].shape == (3, 10, 20) and abs(int(out[0][0].float().mean()) - 200) <= 2
    assert ti.is_jpeg(good) and not ti.is_jpeg(b"\x89PNG\r\n")


def test_decoding_shows_no_warnings_of_the_decoder():
    """torchvision warns at every decode_jpeg call (its deprecation notice) and libjpeg about
    corrupt data: a score run over thousands of files would print them all; such a file goes to
    PIL, which names it."""
    import warnings

    good = _jpeg(Image.new("RGB", (20, 10), (200, 10, 10)))
    raws = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in (good, good[: len(good) // 2])]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = ti.decode_jpegs(raws, "cpu")
    assert out[0] is not None and out[1] is None and seen == []


def test_normalize_is_totensor_then_normalize():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
    expected = torch.stack([T.Normalize(mean, std)(T.ToTensor()(Image.fromarray(i.permute(1, 2, 0).numpy()))) for i in x])
    torch.testing.assert_close(ti.normalize(x, mean, std), expected)


def test_by_size_calls_the_function_once_a_size_and_keys_its_rows():
    from clip_smot.common.tensor_images import by_size

    images = {k: torch.full((3, h, w), k, dtype=torch.uint8) for k, (h, w) in
              {4: (5, 7), 1: (6, 6), 9: (5, 7), 2: (5, 7), 7: (6, 6), 3: (2, 9)}.items()}
    calls = []

    def fn(batch):
        calls.append(tuple(batch.shape))
        return batch.flatten(1)[:, 0] * 10  # [m]: each row's own value, times 10

    out = by_size(images, fn)
    assert sorted(calls) == [(1, 3, 2, 9), (2, 3, 6, 6), (3, 3, 5, 7)]
    assert {k: int(v) for k, v in out.items()} == {k: 10 * k for k in images}


def test_is_jpeg_allows_up_to_twice_pils_pixel_limit_as_pil_does(monkeypatch):
    """PIL refuses an image of more than 2 * MAX_IMAGE_PIXELS pixels (DecompressionBombError) and
    none when the limit is None: is_jpeg draws the line where PIL does."""
    data = _jpeg(Image.new("RGB", (40, 30)))  # 1200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    with pytest.warns(Image.DecompressionBombWarning):  # (PIL warns, but opens it: 1200 = 2 * 600)
        Image.open(io.BytesIO(data)).load()
    assert ti.is_jpeg(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 599)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    assert not ti.is_jpeg(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert ti.is_jpeg(data)


def test_frame_size_walks_fill_bytes_and_progressive_headers_and_stops_at_bad_ones():
    im = Image.new("RGB", (40, 30))
    data = _jpeg(im)
    sof = data.index(b"\xff\xc0")
    filled = data[:sof] + b"\xff" + data[sof:]  # a fill byte before a marker (JPEG B.1.1.2)
    assert Image.open(io.BytesIO(filled)).size == (40, 30) and ti._frame_size(filled) == (40, 30)
    progressive = _jpeg(im, progressive=True)
    assert b"\xff\xc2" in progressive and ti._frame_size(progressive) == (40, 30)
    frame = b"\xff\xc0\x00\x11\x08\x00\x1e\x00\x28\x03" + b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"  # 40 x 30
    assert ti._frame_size(b"\xff\xd8" + frame) == (40, 30)
    assert ti._frame_size(b"\xff\xd8\xff\xc0\x00\x02\x08\x00\x1e\x00\x28\x03") is None  # a frame header too short
    assert ti._frame_size(b"\xff\xd8\xff\xda\x00\x02" + frame) is None  # scan data before any frame header


def test_frame_size_steps_over_markers_without_a_length_and_stops_at_the_end_of_image():
    """JPEG B.1.1.4: TEM (0xFF01) and RST0-7 (0xFFD0-0xFFD7) are markers without a length field;
    EOI (0xFFD9) ends the image, so a frame header after it is none of the image's."""
    frame = b"\xff\xc0\x00\x11\x08\x00\x1e\x00\x28\x03" + b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"  # 40 x 30
    for marker in (b"\xff\x01", b"\xff\xd0", b"\xff\xd7"):
        assert ti._frame_size(b"\xff\xd8" + marker + frame) == (40, 30), marker
    assert ti._frame_size(b"\xff\xd8\xff\xd9\x00\x02" + frame) is None


def test_grey_jpegs_decode_as_rgb_alone_or_beside_a_bad_file():
    grey = _jpeg(Image.new("L", (12, 8), 90))
    raws = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in (grey, grey[:40])]
    alone = ti.decode_jpegs(raws[:1], "cpu")[0]
    out = ti.decode_jpegs(raws, "cpu")  # (the batch fails: each file alone)
    assert out[1] is None
    for x in (alone, out[0]):
        assert x.shape == (3, 8, 12) and abs(int(x.float().mean()) - 90) <= 2


def test_by_size_groups_by_height_and_width():
    images = {0: torch.zeros(3, 5, 7, dtype=torch.uint8), 1: torch.ones(3, 6, 7, dtype=torch.uint8)}
    calls = []
    out = ti.by_size(images, lambda b: calls.append(tuple(b.shape)) or b.float().mean(dim=(1, 2, 3)))
    assert sorted(calls) == [(1, 3, 5, 7), (1, 3, 6, 7)] and {k: float(v) for k, v in out.items()} == {0: 0.0, 1: 1.0}


def _segment(marker: int, payload: bytes) -> bytes:
    """A JPEG marker segment: 0xFF, the marker, the length (2 bytes, counting itself), the payload."""
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def test_frame_size_reads_every_frame_header_kind_and_skips_the_other_c_markers():
    """JPEG B.1.1.3 / table B.1: 0xFFC0-0xFFCF are frame headers (SOF0-SOF15: baseline, extended,
    progressive, lossless, hierarchical, arithmetic) except DHT (0xC4), JPG (0xC8) and DAC (0xCC),
    which are segments to step over. The first header here declares 4660 x 1383 (bytes over 255:
    both bytes of each field count), the second, after it, 40 x 30."""
    first = b"\x08\x05\x67\x12\x34\x01\x01\x11\x00"  # precision, height, width, 1 component
    second = _segment(0xC0, b"\x08\x00\x1e\x00\x28\x01\x01\x11\x00")
    for marker in range(0xC0, 0xD0):
        data = b"\xff\xd8" + _segment(marker, first) + second
        want = (40, 30) if marker in (0xC4, 0xC8, 0xCC) else (4660, 1383)
        assert ti._frame_size(data) == want, hex(marker)


def test_frame_size_steps_over_long_and_empty_segments_and_stops_at_stray_bytes():
    """A segment's length is two bytes (an EXIF or ICC segment runs over 255 bytes); an empty one
    (length 2) is a segment too. A byte other than 0xFF where a marker belongs ends the walk: no
    frame header is read out of other bytes."""
    frame = _segment(0xC0, b"\x08\x00\x1e\x00\x28\x01\x01\x11\x00")  # 40 x 30
    app = _segment(0xE1, b"\xff\xc0\x00\x11\x08\x7f\x7f\x7f\x7f" * 40)  # 362 bytes (0x016a) that look like a frame
    assert ti._frame_size(b"\xff\xd8" + app + frame) == (40, 30)
    assert ti._frame_size(b"\xff\xd8" + _segment(0xE0, b"") + frame) == (40, 30)
    assert ti._frame_size(b"\xff\xd8\x00" + frame) is None  # (a stray byte, then a frame header)
    assert ti._frame_size(b"\xff\xd8" + _segment(0xE0, b"ab")[:-1] + frame) is None  # (lands on a stray byte)


def test_frame_size_reads_the_shortest_frame_header_and_no_byte_past_the_end():
    """The width ends a frame header's 7th byte of length: a header of length 7 that ends the data
    is read; a shorter length, or data cut before the width's last byte, is none (not an IndexError)."""
    short = b"\xff\xd8\xff\xc0\x00\x07\x08\x00\x1e\x00\x28"  # 40 x 30, nothing after
    assert ti._frame_size(short) == (40, 30)
    assert ti._frame_size(short[:-1]) is None
    assert ti._frame_size(b"\xff\xd8\xff\xc0\x00\x06\x08\x00\x1e\x00\x28") is None


def test_is_jpeg_needs_the_jpeg_start_whatever_follows():
    """Data whose first bytes are not SOI then a marker (0xFF 0xD8 0xFF) is no JPEG, even when a
    frame header follows (a file of another format that happens to hold one)."""
    data = _jpeg(Image.new("RGB", (40, 30)))
    assert ti.is_jpeg(data)
    for start in (b"\x00\xd8", b"\xff\x00", b"\xd8\xff"):
        assert not ti.is_jpeg(start + data[2:]), start


def test_resizing_keeps_black_and_white_at_0_and_255():
    """Each pass is clipped to [0, 255]: a flat black or white image stays 0 or 255 (PIL's resize
    of it alike), also under bicubic upscaling's overshoot at a black-white edge."""
    for value in (0, 255):
        flat = torch.full((3, 10, 14), value, dtype=torch.uint8)
        for hw in ((20, 28), (5, 7)):
            assert (ti.resize_uint8(flat, hw) == value).all()
    edge = np.zeros((12, 12, 3), np.uint8)
    edge[:, 6:] = 255
    want = np.asarray(Image.fromarray(edge).resize((30, 30), Image.BICUBIC)).astype(int)  # [h, w, 3]
    got = ti.resize_uint8(torch.from_numpy(edge).permute(2, 0, 1), (30, 30)).permute(1, 2, 0).numpy().astype(int)
    assert want.min() == got.min() == 0 and want.max() == got.max() == 255
    assert np.abs(got - want).max() <= 1


def test_frame_size_is_none_where_the_segments_end_before_a_frame_header():
    """Data that ends after whole segments (a file cut after its APP0) holds no frame header."""
    assert ti._frame_size(b"\xff\xd8") is None
    assert ti._frame_size(b"\xff\xd8" + _segment(0xE0, b"ab")) is None
    assert not ti.is_jpeg(b"\xff\xd8" + _segment(0xE0, b"ab"))


def test_without_torchvisions_decode_jpeg_every_file_goes_to_pil(monkeypatch):
    """A torchvision without ``decode_jpeg`` (deprecated for TorchCodec): has_decode_jpeg says so,
    and decode_jpegs gives None for each file (each is then decoded by PIL), none for no files."""
    import torchvision.io

    good = torch.frombuffer(bytearray(_jpeg(Image.new("RGB", (20, 10), (200, 10, 10)))), dtype=torch.uint8)
    assert ti.has_decode_jpeg() and ti.decode_jpegs([], "cpu") == []
    monkeypatch.delattr(torchvision.io, "decode_jpeg")
    assert not ti.has_decode_jpeg()
    assert ti.decode_jpegs([good, good], "cpu") == [None, None]


def test_a_jpeg_cut_short_goes_to_pil_whatever_the_decoder_makes_of_it(monkeypatch):
    """nvJPEG (decode_jpeg on CUDA) is not known to refuse a file cut short, as libjpeg does: a
    decoder that made an image of any bytes stands in for it. A file whose last scan has no
    end-of-image marker after it (cut in its scans, or between two progressive scans) is not given
    to it (None: PIL decodes it, and names a truncated file); a whole one, trailing bytes after its
    marker included, is."""
    import torchvision.io

    made = []

    def lenient(data, mode=None, device=None):
        batch = isinstance(data, list)
        made.extend(bytes(d.numpy()) for d in (data if batch else [data]))
        image = torch.zeros(3, 2, 2, dtype=torch.uint8)
        return [image for _ in data] if batch else image

    monkeypatch.setattr(torchvision.io, "decode_jpeg", lenient)
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    plain, progressive = io.BytesIO(), io.BytesIO()
    im.save(plain, format="JPEG")
    im.save(progressive, format="JPEG", progressive=True)
    plain, progressive = plain.getvalue(), progressive.getvalue()
    assert plain.endswith(b"\xff\xd9") and progressive.count(b"\xff\xda") > 1
    second_scan = progressive.index(b"\xff\xda", progressive.index(b"\xff\xda") + 2)
    cut = [plain[: len(plain) // 2], plain[:-2], progressive[:second_scan], progressive[: second_scan + 40]]
    whole = [plain, plain + b"trailing bytes", progressive]
    raws = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in cut + whole]
    out = ti.decode_jpegs(raws, "cpu")
    assert [o is None for o in out] == [True] * len(cut) + [False] * len(whole)
    assert made == whole
    assert [ti.ends_its_scans(r) for r in raws] == [False] * len(cut) + [True] * len(whole)


_FRAME = b"\xff\xc0\x00\x0b\x08\x00\x02\x00\x03\x01\x01\x11\x00"  # a frame header: 3 x 2, one component


@pytest.mark.parametrize("parts, whole", [
    # an EXIF thumbnail (a JPEG of its own, its end marker included) before the image's last scan, cut short
    ([b"\xff\xd8", b"\xff\xdb\x00\x03q", b"\xff\xe1\x00\x08\xff\xd8\xff\xda\xff\xd9", _FRAME, b"\xff\xda\x00\x03s",
      b"scan"], False),
    # a comment holding the bytes of an end marker, the file cut before its first scan
    ([b"\xff\xd8", b"\xff\xfe\x00\x04\xff\xd9", b"\xff\xdb\x00\x03q", _FRAME], False),
    # such a thumbnail (its scan and end marker), the file cut after the image's frame header, before its scan
    ([b"\xff\xd8", b"\xff\xe1\x00\x08\xff\xd8\xff\xda\xff\xd9", _FRAME, b"\xff\xdb\x00\x03q"], False),
    # a whole file with such a thumbnail, trailing bytes after its own end marker
    ([b"\xff\xd8", b"\xff\xe1\x00\x08\xff\xd8\xff\xda\xff\xd9", _FRAME, b"\xff\xda\x00\x03s", b"scan", b"\xff\xd9",
      b"more"], True),
])
def test_an_end_marker_counts_only_after_the_start_of_the_last_scan(parts, whole):
    """ends_its_scans asks for 0xFFD9 after the last 0xFFDA (a start of scan) after the frame
    header: one inside a thumbnail or a comment, before it, is no end of the image, nor one in a
    file with no scan of its own."""
    assert ti._frame_size(b"".join(parts)) == (3, 2)  # (the image's header, the thumbnail stepped over)
    data = torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)
    assert ti.ends_its_scans(data) is whole
