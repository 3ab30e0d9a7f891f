"""The ``jpeg`` decoder (decode_jpeg on the model's device; here the CPU) against the ``pil`` one:
the same batches within the documented tolerance, the same errors, its own cache entries; and
fit's one-time decoding by the same path, its hash unchanged."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import _cache_in_tmp, tiny  # noqa: F401 (fixtures)
from PIL import Image

from clip_smot.clip import decoding
from clip_smot.clip.features import cache_dir, encode_files, image_batches
from clip_smot.clip.fewshot import decode_and_hash
from clip_smot.clip.model import preprocess_settings
from clip_smot.common.errors import UserError


def _images(root, n=5):
    """JPEGs of odd sizes (a grey one, a CMYK one, an upscaled small one), a PNG, all noise."""
    rng = np.random.default_rng(3)
    paths = []
    for k, (h, w, mode) in enumerate([(41, 57, "RGB"), (60, 33, "L"), (20, 25, "RGB"), (33, 33, "CMYK"), (90, 64, "RGB")][:n]):
        p = root / f"{k}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).convert(mode).save(p, quality=90)
        paths.append(str(p))
    Image.fromarray(rng.integers(0, 256, (30, 40, 4)).astype(np.uint8), "RGBA").save(root / "x.png")
    return paths + [str(root / "x.png")]


def test_jpeg_batches_match_pil_batches_within_one_level(tmp_path, tiny):
    paths = _images(tmp_path)
    (ours, e1), = image_batches(tiny, paths, 16, 0, "jpeg")
    (theirs, e2), = image_batches(tiny, paths, 16, 0, "pil")
    assert list(e1) == list(e2) == [""] * len(paths)
    std = min(preprocess_settings(tiny)["std"])
    # one level of 255 after Normalize: 1 / 255 / std (the PNG goes through PIL in both)
    assert (ours - theirs).abs().max() <= 1 / 255 / std + 1e-6
    torch.testing.assert_close(ours[-1], theirs[-1], rtol=0, atol=0)
    f1 = encode_files(tiny, paths, workers=0, use_cache=False, decode="jpeg").global_
    f2 = encode_files(tiny, paths, workers=0, use_cache=False, decode="pil").global_
    assert (f1 - f2).abs().max() < 0.05 and (f1 * f2).sum(-1).min() > 0.99


def test_unreadable_jpeg_named_as_pil_names_it(tmp_path, tiny):
    paths = _images(tmp_path, 2)
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(open(paths[0], "rb").read()[:300])
    with pytest.raises(UserError) as pil:
        encode_files(tiny, [*paths, str(bad)], workers=0, use_cache=False)
    with pytest.raises(UserError) as jpeg:
        encode_files(tiny, [*paths, str(bad)], workers=0, use_cache=False, decode="jpeg")
    assert str(jpeg.value) == str(pil.value) and str(bad) in str(pil.value)
    feats = encode_files(tiny, [*paths, str(bad)], workers=2, use_cache=False, skip_unreadable=True, decode="jpeg")
    assert feats.paths == paths and [s[0] for s in feats.skipped] == [str(bad)]
    # in a later batch, where the paths of the batch start further on, it is named as well
    errors = [e for _, batch in image_batches(tiny, [*paths, str(bad)], 1, 0, "jpeg") for e in batch]
    assert errors == [""] * len(paths) + [str(pil.value)]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # (PIL's, for the file between its limit and 2x)
def test_a_jpeg_over_pils_pixel_limit_is_refused_by_name_on_the_jpeg_path(tmp_path, tiny, monkeypatch):
    """decode_jpeg checks no size: a 2 MB JPEG declaring 180 megapixels was decoded (3.9 GB) where PIL
    refuses it. With PIL's limit lowered, a 57 x 41 JPEG is such a file: both decoders (and fit's
    one-time decoding) name it in the same line; the size of a plain file read whole is bounded too."""
    from clip_smot.common import shards
    from clip_smot.common.tensor_images import _frame_size, is_jpeg

    (tmp_path / "sizes").mkdir()
    for p in _images(tmp_path / "sizes")[:-1]:  # (the frame header's size is PIL's: grey and CMYK too)
        with Image.open(p) as im:
            assert _frame_size(open(p, "rb").read()) == im.size
    assert _frame_size(b"\xff\xd8\xff\xd9") is None and not is_jpeg(b"\xff\xd8\xff\xe0\x00")
    paths = _images(tmp_path, 1)
    data = open(paths[0], "rb").read()
    assert is_jpeg(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 57 * 41 // 2 - 1)
    assert not is_jpeg(data)
    errors = [str(pytest.raises(UserError, encode_files, tiny, paths, workers=0, use_cache=False, decode=d).value)
              for d in ("pil", "jpeg")]
    assert errors[0] == errors[1] and errors[0].startswith(f"{paths[0]}: image too large to decode"), errors
    with pytest.raises(UserError, match="image too large to decode"):
        decode_and_hash(tmp_path, ["0.jpg"], 32, 0, torch.device("cpu"))
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", len(data) - 1)
    with pytest.raises(UserError, match=rf"^{paths[0]}: too large for an image file \({len(data)} bytes"):
        shards.read_image_bytes(paths[0])


def test_decoders_have_their_own_cache_entries(tmp_path, tiny, tiny_clip_checkpoint, monkeypatch):
    import torchvision

    from clip_smot.clip.model import load_clip

    clip = load_clip(tiny.name, tiny_clip_checkpoint)  # with a checkpoint: cached
    paths = _images(tmp_path, 2)
    encode_files(clip, paths, workers=0)
    assert len(list(cache_dir().glob("*.safetensors"))) == 1
    encode_files(clip, paths, workers=0, decode="jpeg")
    assert len(list(cache_dir().glob("*.safetensors"))) == 2
    # another torchvision decodes and resizes: its jpeg pixels are cached apart, PIL's are not
    monkeypatch.setattr(torchvision, "__version__", "0.0.0-other")
    encode_files(clip, paths, workers=0, decode="jpeg")
    encode_files(clip, paths, workers=0)
    assert len(list(cache_dir().glob("*.safetensors"))) == 3


def test_resolve_decode():
    assert decoding.resolve_decode("auto", "cpu") == "pil"
    assert decoding.resolve_decode("cpu", "cpu") == "pil"
    assert decoding.resolve_decode("auto", "cuda:0") == "jpeg"
    assert decoding.resolve_decode("gpu", "cuda") == "jpeg"  # (no preprocessing given: none to check)
    assert decoding.resolve_decode("cpu", "cuda") == "pil"
    with pytest.raises(UserError, match="--decode gpu: .*give --device cuda or --decode cpu"):
        decoding.resolve_decode("gpu", "cpu")
    square = {"size": [224, 224], "resize_mode": "shortest", "interpolation": "bicubic", "mode": "RGB"}
    assert decoding.resolve_decode("gpu", "cuda", square) == decoding.resolve_decode("auto", "cuda", square) == "jpeg"
    assert decoding.tensor_preprocess(square)["size"] == 224
    for other in ({"resize_mode": "squash"}, {"size": [224, 256]}, {"interpolation": "lanczos"}, {"mode": "L"}):
        assert decoding.resolve_decode("auto", "cuda", {**square, **other}) == "pil"  # auto: what the model needs
        with pytest.raises(UserError, match="--decode gpu: the model preprocesses with .*; give --decode cpu"):
            decoding.resolve_decode("gpu", "cuda", {**square, **other})
        # the CPU decoder, or auto on the CPU, takes any preprocessing: PIL runs the model's own transform
        assert decoding.resolve_decode("cpu", "cuda", {**square, **other}) == "pil"
        assert decoding.resolve_decode("auto", "cpu", {**square, **other}) == "pil"
    for wrong in ("pil", "jpeg", "GPU", ""):  # (a library caller's: not a --decode choice)
        with pytest.raises(UserError, match=rf"^--decode {wrong}: not one of auto, cpu, gpu$"):
            decoding.resolve_decode(wrong, "cpu")


def test_a_torchvision_without_decode_jpeg_decodes_by_pil(tmp_path, tiny, monkeypatch):
    """torchvision deprecates decode_jpeg (0.29, for TorchCodec): once it is gone, auto is pil
    on CUDA too, gpu one line, and a batch on the jpeg path (fit's decoding alike) is PIL's to
    the last level, not an ImportError."""
    import torchvision.io

    paths = _images(tmp_path)
    files = [p.rsplit("/", 1)[1] for p in paths]
    pil = list(image_batches(tiny, paths, 16, 0, "pil"))
    pil_squares, digest = decode_and_hash(tmp_path, files, 24, workers=0)
    monkeypatch.delattr(torchvision.io, "decode_jpeg")
    assert decoding.resolve_decode("auto", "cuda") == "pil" and decoding.resolve_decode("cpu", "cuda") == "pil"
    with pytest.raises(UserError, match=r"^--decode gpu: torchvision \S+ has no torchvision.io.decode_jpeg .*; "
                                        "give --decode cpu$"):
        decoding.resolve_decode("gpu", "cuda")
    assert decoding.resolve_decode("auto", "cpu") == "pil"  # (the CPU's answer as before)
    with pytest.raises(UserError, match="give --device cuda or --decode cpu"):
        decoding.resolve_decode("gpu", "cpu")
    (jpeg, errors), = image_batches(tiny, paths, 16, 0, "jpeg")
    assert list(errors) == list(pil[0][1]) and torch.equal(jpeg, pil[0][0])  # every file by PIL: exactly its pixels
    squares, digest2 = decode_and_hash(tmp_path, files, 24, workers=0, device="cpu")
    assert digest2 == digest and torch.equal(squares, pil_squares)


def test_fit_decoding_on_the_tensor_path_keeps_pixels_and_hash(tmp_path):
    paths = _images(tmp_path)
    files = [p.rsplit("/", 1)[1] for p in paths]
    strip = tmp_path / "strip.jpg"  # a long strip: PIL's box resize in both
    Image.fromarray(np.full((4, 300, 3), 90, np.uint8)).save(strip)
    files.append("strip.jpg")
    pil, h1 = decode_and_hash(tmp_path, files, 24, workers=2)
    jpeg, h2 = decode_and_hash(tmp_path, files, 24, workers=2, device="cpu")
    assert h1 == h2
    listing = "".join(f"{hashlib.sha256((tmp_path / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    assert h1 == hashlib.sha256(listing.encode()).hexdigest()  # sha256sum's listing
    assert pil.shape == jpeg.shape == (len(files), 3, 24, 24) and jpeg.dtype == torch.uint8
    assert (pil.int() - jpeg.int()).abs().max() <= 1


def test_fit_decoding_on_the_tensor_path_names_a_truncated_jpeg_as_pil_does(tmp_path):
    """A JPEG that decode_jpeg cannot read (cut in half) goes to PIL, which names it: the same one
    line on the tensor path as on PIL's, not a traceback."""
    files = [p.rsplit("/", 1)[1] for p in _images(tmp_path, n=2)]
    data = (tmp_path / files[0]).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    errors = []
    for device in (None, "cpu"):
        with pytest.raises(UserError, match=r"cut\.jpg") as e:
            decode_and_hash(tmp_path, [*files, "cut.jpg"], 24, workers=0, device=device)
        errors.append(str(e.value))
    assert errors[0] == errors[1]


def test_fit_decoding_in_several_device_batches_hashes_every_file(tmp_path, monkeypatch):
    """The tensor path reads and decodes a batch of files at a time: the hash is still sha256sum's
    listing of every file, and the squares those of one batch."""
    from clip_smot.clip import fewshot

    files = [p.rsplit("/", 1)[1] for p in _images(tmp_path)]
    whole, h1 = decode_and_hash(tmp_path, files, 24, workers=0, device="cpu")
    monkeypatch.setattr(fewshot, "_JPEG_BATCH", 2)  # six files: three batches
    squares, h2 = decode_and_hash(tmp_path, files, 24, workers=0, device="cpu")
    listing = "".join(f"{hashlib.sha256((tmp_path / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    assert h1 == h2 == hashlib.sha256(listing.encode()).hexdigest()
    assert torch.equal(squares, whole)


def test_fit_decoding_with_a_device_decodes_its_jpegs_by_decode_jpeg_in_one_call(tmp_path, monkeypatch):
    """With a device (and a torchvision that has decode_jpeg) the JPEGs go to decode_jpeg, one call
    for the batch, the PNG to PIL; without one, every file to PIL. Both give pixels within a
    level, so only the calls tell that the device path ran."""
    from clip_smot.common import tensor_images as ti

    files = [p.rsplit("/", 1)[1] for p in _images(tmp_path)]  # five JPEGs and a PNG
    calls, decode = [], ti.decode_jpegs
    monkeypatch.setattr(ti, "decode_jpegs", lambda datas, device: calls.append(len(datas)) or decode(datas, device))
    decode_and_hash(tmp_path, files, 24, workers=0)
    assert calls == []
    decode_and_hash(tmp_path, files, 24, workers=0, device="cpu")
    assert calls == [5]


def test_a_decode_choice_where_a_decoder_is_meant_is_refused(tiny, tmp_path):
    """encode_files and image_batches take what resolve_decode gives (pil, jpeg): a --decode
    choice passed there is a ValueError, not PIL pixels cached under a jpeg key."""
    Image.new("RGB", (20, 16), (10, 200, 30)).save(tmp_path / "a.jpg")
    for wrong in ("gpu", "cpu", "auto"):
        with pytest.raises(ValueError, match=rf"decode='{wrong}': not one of pil, jpeg"):
            encode_files(tiny, [str(tmp_path / "a.jpg")], workers=0, use_cache=True, decode=wrong)
        with pytest.raises(ValueError, match=rf"decode='{wrong}'"):
            next(image_batches(tiny, [str(tmp_path / "a.jpg")], 4, 0, wrong))
    assert decoding.DECODERS == ("pil", "jpeg")


def test_the_decoders_identity_names_the_device_whose_decoder_made_the_pixels():
    """The feature-cache key tells nvJPEG's pixels (CUDA) from libjpeg-turbo's (CPU) apart, with
    the torchvision version; PIL's entries keep the key they had (None)."""
    import torchvision

    version = torchvision.__version__
    assert decoding.decoder_identity("pil", torch.device("cuda")) is None
    assert decoding.decoder_identity("jpeg", torch.device("cpu")) == f"jpeg-cpu torchvision {version}"
    assert decoding.decoder_identity("jpeg", torch.device("cuda", 1)) == f"jpeg-cuda torchvision {version}"
    for wrong in ("gpu", "cpu", "auto"):  # (a --decode choice, not a decoder: no key is made for it)
        with pytest.raises(ValueError, match=rf"decode='{wrong}': not one of pil, jpeg"):
            decoding.decoder_identity(wrong, torch.device("cpu"))


def test_cli_choices_are_the_decoders():
    from clip_smot.cli import cli

    for command in ("score", "eval"):
        (option,) = [p for p in cli.commands[command].params if p.name == "decode"]
        assert tuple(option.type.choices) == decoding.DECODE_CHOICES


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_batches_on_cuda_match_the_pil_path(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    """On CUDA, ``--decode gpu`` (nvJPEG): every file read, the PNG as PIL reads it, the features
    close to PIL's (nvJPEG's pixels are not libjpeg-turbo's: no per-pixel bound is claimed)."""
    from clip_smot.clip.model import load_clip

    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint, device="cuda")
    paths = _images(tmp_path)
    (ours, e1), = image_batches(clip, paths, 16, 2, decoding.resolve_decode("gpu", "cuda"))
    (theirs, e2), = image_batches(clip, paths, 16, 2, "pil")
    assert list(e1) == list(e2) == [""] * len(paths) and ours.device.type == "cuda"
    torch.testing.assert_close(ours[-1].cpu(), theirs[-1], rtol=0, atol=1e-6)
    f1 = encode_files(clip, paths, workers=0, use_cache=False, decode="jpeg").global_
    f2 = encode_files(clip, paths, workers=0, use_cache=False, decode="pil").global_
    assert (f1 * f2).sum(-1).min() > 0.98


def _fit_and_score_decoding_on(device: str, tmp_path, clip):
    """decode_and_hash (fit) and encode_files with ``decode="jpeg"`` (score, eval) on ``device``
    against the PIL paths: the hash, the squares, and a truncated JPEG's one line. (On the CPU the
    tests above check each; with ``device="cpu"`` this passes too.)"""
    paths = _images(tmp_path)
    files = [p.rsplit("/", 1)[1] for p in paths]
    pil, h1 = decode_and_hash(tmp_path, files, 24, workers=2)
    ours, h2 = decode_and_hash(tmp_path, files, 24, workers=2, device=device)
    assert h1 == h2 and ours.device.type == device and ours.dtype == torch.uint8 and ours.shape == pil.shape
    # per image, the mean difference in levels of 255: a few at most between two JPEG decoders; a file
    # decoded in other colours (CMYK's inverted inks, a grey file's channels) is tens off
    mean_diff = (pil.int() - ours.cpu().int()).abs().float().flatten(1).mean(1)
    assert mean_diff.max() < 3, mean_diff
    assert torch.equal(ours[-1].cpu(), pil[-1])  # the PNG: PIL's on both paths
    data = (tmp_path / files[0]).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    errors = []
    for where in (None, device):
        with pytest.raises(UserError, match=r"cut\.jpg") as e:
            decode_and_hash(tmp_path, [*files, "cut.jpg"], 24, workers=0, device=where)
        errors.append(str(e.value))
    for decode in ("pil", "jpeg"):
        with pytest.raises(UserError, match=r"cut\.jpg") as e:
            encode_files(clip, [*paths, str(tmp_path / "cut.jpg")], workers=0, use_cache=False, decode=decode)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and errors[2] == errors[3], errors


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_and_score_decoding_on_cuda_keep_the_hash_and_name_a_truncated_jpeg(tmp_path, tiny_clip_config,
                                                                               tiny_clip_checkpoint):
    """fit decodes its split with nvJPEG on its CUDA device since 2026-12-04 (after the last GPU
    run): the same listing hash as PIL's, squares within a few levels of PIL's for the grey and the
    CMYK file too, and a truncated JPEG named as PIL names it, in fit's decoding and in score's
    ``--decode gpu`` batches (libjpeg-turbo refuses it; nvJPEG may decode it, grey-filled)."""
    from clip_smot.clip.model import load_clip

    _fit_and_score_decoding_on("cuda", tmp_path, load_clip(tiny_clip_config, tiny_clip_checkpoint, device="cuda"))


def test_kept_workers_start_the_decoders_once_for_call_after_call(tmp_path, tiny, monkeypatch):
    """Within kept_workers, image_batches starts its worker processes at the first call and uses
    them for the next ones (one DataLoader iterator, reset), with the batches of new loaders bit
    for bit, for both decoders; a call left unfinished is followed by a whole one (its leftovers
    discarded), a call made while another is read gets loaders of its own, and the workers are
    gone when the context ends."""
    paths = _images(tmp_path) * 3  # 18 files: batches of 4, and an unreadable one at the end
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    paths.append(str(tmp_path / "bad.jpg"))
    started, real = [], torch.utils.data.DataLoader._get_iterator
    monkeypatch.setattr(torch.utils.data.DataLoader, "_get_iterator", lambda self: started.append(1) or real(self))
    for decode in ("pil", "jpeg"):
        fresh = [list(image_batches(tiny, paths[k:], 4, 2, decode)) for k in (0, 5, 11)]
        started.clear()
        with decoding.kept_workers():
            half = image_batches(tiny, paths, 4, 2, decode)
            next(half)
            half.close()  # (stopped after one batch: its workers hold the batches they made since)
            kept = [list(image_batches(tiny, paths[k:], 4, 2, decode)) for k in (0, 5, 11)]
            inner = image_batches(tiny, paths, 4, 2, decode)
            next(inner)  # (being read: the next call cannot take its loader)
            beside = list(image_batches(tiny, paths[5:], 4, 2, decode))
            inner.close()
            loader = next(iter(decoding._KEPT.values())).loader
            workers = list(loader._iterator._workers)
        assert len(started) == 2 and len(workers) == 2 and not any(w.is_alive() for w in workers)
        assert decoding._KEPT is None
        for a, b in zip(fresh + [fresh[1]], kept + [beside]):
            assert len(a) == len(b)
            for (xa, ea), (xb, eb) in zip(a, b):
                assert list(ea) == list(eb) and torch.equal(xa, xb)
        assert "bad.jpg" in fresh[0][-1][1][-1]


def test_kept_workers_with_no_worker_processes_read_in_the_main_process(tmp_path, tiny):
    """Within kept_workers, ``workers=0`` (``--workers 0``) keeps nothing (there is no worker to keep;
    DataLoader refuses persistent_workers without one): the batches of a call outside it."""
    paths = _images(tmp_path)
    for decode in ("pil", "jpeg"):
        fresh = list(image_batches(tiny, paths, 4, 0, decode))
        with decoding.kept_workers():
            kept = [list(image_batches(tiny, paths, 4, 0, decode)) for _ in range(2)]
            assert decoding._KEPT == {}
        for batches in kept:
            assert [len(x) for x, _ in batches] == [4, 2]
            for (xa, ea), (xb, eb) in zip(fresh, batches):
                assert list(ea) == list(eb) and torch.equal(xa, xb)


def test_the_batches_of_a_model_on_the_cpu_are_not_pinned(tmp_path, tiny, monkeypatch):
    """Pinned memory only speeds the copy to a CUDA device: for a model on the CPU the DataLoader
    pins nothing, by either decoder (where no CUDA device is, torch warns of each loader asked
    to pin: a line on stderr per call of score)."""
    real, pinned = torch.utils.data.DataLoader.__init__, []

    def spy(self, *args, **kwargs):
        pinned.append(kwargs.get("pin_memory", False))
        real(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", spy)
    paths = _images(tmp_path, 2)
    for decode in ("pil", "jpeg"):
        assert [len(x) for x, _ in image_batches(tiny, paths, 4, 0, decode)] == [3]
    assert pinned == [False, False]


def test_kept_workers_keep_the_loaders_of_other_batch_sizes_apart(tmp_path, tiny):
    """Within kept_workers, a call with another batch size gets batches of its own size (its own
    loader), not the kept loader's."""
    paths = _images(tmp_path)  # 6 files
    with decoding.kept_workers():
        sizes = [[len(x) for x, _ in image_batches(tiny, paths, b, 1, "pil")] for b in (4, 3, 4)]
    assert sizes == [[4, 2], [3, 3], [4, 2]]


def test_a_nested_kept_workers_leaves_the_outer_ones_workers_running(tmp_path, tiny, monkeypatch):
    """kept_workers inside kept_workers (a library caller's run_score within its own) keeps the
    outer one's workers: one start for calls before, inside and after the inner block."""
    paths = _images(tmp_path, n=2)
    started, real = [], torch.utils.data.DataLoader._get_iterator
    monkeypatch.setattr(torch.utils.data.DataLoader, "_get_iterator", lambda self: started.append(1) or real(self))
    with decoding.kept_workers():
        before = list(image_batches(tiny, paths, 4, 1, "pil"))
        with decoding.kept_workers():
            inside = list(image_batches(tiny, paths, 4, 1, "pil"))
        after = list(image_batches(tiny, paths, 4, 1, "pil"))
    assert len(started) == 1
    assert [len(x) for x, _ in before] == [len(x) for x, _ in inside] == [len(x) for x, _ in after] == [3]
    assert decoding._KEPT is None


@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")  # (the reference's call)
def test_jpegs_of_one_size_are_resized_together_to_the_pixels_of_one_at_a_time(tmp_path, tiny):
    """A batch's decoded JPEGs are grouped by size and each group resized and cropped in one call:
    the batch equals, bit for bit, each image decoded, resized, cropped and normalised alone."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from clip_smot.common import tensor_images as ti

    rng = np.random.default_rng(5)
    paths = []
    for k, (h, w) in enumerate([(41, 57), (60, 33), (41, 57), (90, 64), (41, 57), (60, 33), (20, 25)]):
        paths.append(str(tmp_path / f"{k}.jpg"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(paths[-1], quality=90)
    (batch, errors), = image_batches(tiny, paths, 16, 0, "jpeg")
    cfg = decoding.tensor_preprocess(preprocess_settings(tiny))
    alone = []
    for path in paths:
        image = decode_jpeg(torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8),
                            mode=ImageReadMode.RGB)
        hw = ti.shorter_side_size(image.shape[-2], image.shape[-1], cfg["size"])
        alone.append(ti.center_crop(ti.resize_uint8(image, hw, cfg["interpolation"]), cfg["size"]))
    assert list(errors) == [""] * len(paths)
    assert torch.equal(batch, ti.normalize(torch.stack(alone), cfg["mean"], cfg["std"]))


def test_fit_decoding_resizes_jpegs_of_one_size_together_to_the_pixels_of_one_at_a_time(tmp_path):
    from clip_smot.clip.fewshot import _jpeg_squares

    rng = np.random.default_rng(6)
    paths = []
    for k, (h, w) in enumerate([(41, 57), (60, 33), (41, 57), (41, 57), (60, 33), (90, 64)]):
        paths.append(tmp_path / f"{k}.jpg")
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(paths[-1], quality=90)
    datas = [p.read_bytes() for p in paths]
    together = _jpeg_squares(paths, datas, 24, torch.device("cpu"))
    alone = [_jpeg_squares([p], [d], 24, torch.device("cpu"))[0] for p, d in zip(paths, datas)]
    assert all(torch.equal(a, b) and a.shape == (3, 24, 24) for a, b in zip(together, alone))


def _smooth(w, h, seed=0):
    """A w x h RGB image of smooth colour (noise enlarged 8 times), as photos are."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)).resize((w, h))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_a_strips_square_is_the_whole_images_within_a_few_levels(interpolation):
    """open_clip's transform resizes the whole image, then crops its centre: a 3 KB PNG of
    3,000,000 x 1 pixels became 672 million x 224 (GBs). strip_square resamples the centre square
    from the part of the strip it needs, on the whole image's grid: against the transform on the
    whole image (open_clip's own, ViT-B-16's 224 pixels), at most 3 levels of 255 in a pixel and
    under 0.2 on average (PIL may take the two axes in the other order); a non-strip is left as it is."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(size=224, interpolation=interpolation)
    transform = image_transform_v2(cfg, is_train=False)
    settings = {"size": 224, "interpolation": interpolation, "resize_mode": "shortest"}
    std = torch.tensor(cfg.std)[:, None, None]
    # (4004 x 250: resized to 3587 x 224, the crop's offset 1681.5 rounds to 1682, as torchvision's
    # CenterCrop rounds it; a floor, 1681, moves the square a pixel)
    for w, h in [(5000, 40), (40, 5000), (3001, 17), (17, 3001), (300, 5100), (4100, 250), (250, 4100),
                 (4004, 250), (250, 4004)]:
        im = _smooth(w, h)
        square = decoding.strip_square(im, settings)
        assert square.size == (224, 224)
        levels = (transform(im) - transform(square)).abs() * std * 255
        assert levels.max() <= 3 + 1e-3 and levels.mean() < 0.2, (w, h, levels.max(), levels.mean())
    # other modes: grey, CMYK and 16-bit grey (scaled to 8 bits first) as RGB; with alpha, palette or
    # 1 bit, pixels can differ fully (a colour under near-zero alpha is unstable under rounding, and
    # PIL samples those nearest-neighbour), but on average by under one level
    for mode in ("L", "CMYK", "RGBA", "LA", "P", "1"):
        for w, h in [(5000, 40), (250, 4100)]:
            im = _smooth(w, h, seed=1).convert(mode)
            levels = (transform(im) - transform(decoding.strip_square(im, settings))).abs() * std * 255
            assert levels.mean() < 1 and (mode not in ("L", "CMYK") or levels.max() <= 3 + 1e-3), (mode, w, h)
    # a wide strip with a varying alpha (its passes in PIL's own order): within 3 levels and under
    # 0.05 on average, its colours premultiplied by alpha through both passes as in PIL's one resize
    # of the whole image (each pass premultiplying alone rounds the colours between them: 0.2)
    alpha = Image.fromarray(np.random.default_rng(2).integers(0, 256, (7, 627)).astype(np.uint8)).resize((5000, 40))
    for mode in ("RGBA", "LA"):
        im = _smooth(5000, 40, seed=1).convert(mode)
        im.putalpha(alpha)
        levels = (transform(im) - transform(decoding.strip_square(im, settings))).abs() * std * 255
        assert levels.max() <= 3 + 1e-3 and levels.mean() < 0.05, (mode, levels.max(), levels.mean())
    for w, h in [(224 * 16, 224), (100, 1600), (640, 480)]:  # at most 16 times as long: not strips
        im = _smooth(w, h)
        assert decoding.strip_square(im, settings) is im
    assert decoding.strip_square(_smooth(5000, 40), {**settings, "resize_mode": "squash"}).size == (5000, 40)


def test_an_unreadable_file_under_a_non_square_input_size_is_named_not_a_traceback(tmp_path, monkeypatch):
    """open_clip takes a vision ``image_size`` of [h, w]: its evaluation transform makes [3, h, w]
    images. The zeros standing for an unreadable file were [3, h, h]: torch.stack's RuntimeError, a
    traceback, where the file should be named (or skipped)."""
    import json

    import open_clip
    from conftest import TINY_CLIP_CONFIG
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from safetensors.torch import save_file

    from clip_smot.clip.model import load_clip

    config = tmp_path / "clip-smot-tiny-wide.json"
    config.write_text(json.dumps({**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"],
                                                                     "image_size": [32, 48]}}))
    # (registered for this test alone: later tests list open_clip's configs)
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIGS", dict(open_clip.factory._MODEL_CONFIGS))
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIG_PATHS", list(open_clip.factory._MODEL_CONFIG_PATHS))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("clip-smot-tiny-wide", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "wide.safetensors"))
    clip = load_clip(str(config), str(tmp_path / "wide.safetensors"))
    good, bad = tmp_path / "a.png", tmp_path / "bad.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3)).astype(np.uint8)).save(good)
    bad.write_bytes(b"no image")
    want = image_transform_v2(PreprocessCfg(size=(32, 48)), is_train=False)(Image.open(good))  # open_clip's own
    assert want.shape == (3, 32, 48)
    (x, errors), = image_batches(clip, [str(good), str(bad)], 4, 0, "pil")
    assert x.shape == (2, 3, 32, 48) and errors[0] == "" and errors[1].startswith(f"{bad}: unreadable")
    torch.testing.assert_close(x[0], want)
    assert not x[1].any()
    feats = encode_files(clip, [str(good), str(bad)], workers=0, use_cache=False, skip_unreadable=True)
    assert feats.paths == [str(good)] and [s[0] for s in feats.skipped] == [str(bad)]


def test_a_tall_strips_square_reads_the_rows_it_needs_and_only_those(monkeypatch):
    """A 256 x 4200 strip to a 32-pixel square: torchvision's Resize(32) makes it 32 x 525 (4200 / 525
    = 8 source rows an output row), CenterCrop(32) starts at row round(493 / 2) = 246, so the square
    is rows 246 * 8 = 1968 to 278 * 8 = 2224 of the strip. Bicubic reads 2 output rows (16 source rows)
    beyond each edge: the square is, bit for bit, PIL's width pass over the whole strip then its height
    pass over that box; the width pass reads a few hundred rows, not the strip's 4200."""
    rng = np.random.default_rng(4)
    im = Image.fromarray(rng.integers(0, 256, (4200, 256, 3)).astype(np.uint8))  # noise: every row counts
    want = im.resize((32, 4200), Image.BICUBIC).resize((32, 32), Image.BICUBIC, box=(0, 1968, 32, 2224))
    rows, real = [], Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: rows.append(self.size[1]) or real(self, *a, **k))
    square = decoding.strip_square(im, {"size": 32, "interpolation": "bicubic", "resize_mode": "shortest"})
    assert np.array_equal(np.asarray(square), np.asarray(want))
    assert rows and max(rows) < 400, rows


def test_a_strip_is_scored_from_its_square_and_never_goes_to_the_tensor_path(tmp_path, tiny):
    """A 3,000,000 x 1 PNG (3 KB) reaches the model's transform as its S x S square; a strip JPEG
    is no JPEG for the tensor path (decode_jpeg would resize it whole on the device), and goes
    through PIL's path instead: the same pixels from either decoder."""
    from clip_smot.clip.model import image_preprocess
    from clip_smot.common.tensor_images import is_jpeg

    Image.new("L", (3_000_000, 1), 90).save(tmp_path / "strip.png")
    assert (tmp_path / "strip.png").stat().st_size < 10_000
    seen, transform = [], image_preprocess(tiny)

    def recording(im):
        seen.append(im.size)
        return transform(im)

    settings = preprocess_settings(tiny)
    x, error = decoding.ImageFiles([str(tmp_path / "strip.png")], recording, settings)[0]
    size = settings["size"] if isinstance(settings["size"], int) else settings["size"][0]
    assert error == "" and seen == [(size, size)] and x.shape == (3, size, size)
    from clip_smot.clip.scorer import PromptScorer  # (PIL images given to score: as the file is read)

    scorer = PromptScorer(tiny, torch.nn.functional.normalize(torch.randn(2, 32), dim=-1), ["a", "b"])
    torch.testing.assert_close(scorer.score([Image.open(tmp_path / "strip.png")], ["mcm"])["mcm"],
                               scorer.score(x[None], ["mcm"])["mcm"])
    _smooth(17 * 60, 60).save(tmp_path / "strip.jpg", quality=95)
    _smooth(16 * 60, 60).save(tmp_path / "wide.jpg", quality=95)
    data = (tmp_path / "strip.jpg").read_bytes()
    assert not is_jpeg(data) and is_jpeg((tmp_path / "wide.jpg").read_bytes())
    paths = [str(tmp_path / "strip.jpg"), str(tmp_path / "wide.jpg")]
    (ours, e1), = image_batches(tiny, paths, 4, 0, "jpeg")
    (theirs, e2), = image_batches(tiny, paths, 4, 0, "pil")
    assert list(e1) == list(e2) == ["", ""]
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)  # (the strip: PIL's path in both)

