"""What keys a feature-cache entry (clip_smot/clip/features.py's docstring): the model's
weights, not only its name; the library versions; the preprocessing; the precision; the entry
format. Random weights are never cached."""

import json

import numpy as np
import pytest
import torch
from helpers import _cache_in_tmp, tiny  # noqa: F401 (fixtures)
from PIL import Image
from safetensors.torch import load_file, save_file

from clip_smot.clip import features as cf
from clip_smot.clip import model as cm
from clip_smot.clip.model import load_clip
from clip_smot.common.errors import UserError
from clip_smot.common.files import tensor_checksums


def _images(tmp_path, n=2):
    paths = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_other_weights_of_the_same_model_name_are_encoded_not_read_from_the_cache(
        tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint):  # noqa: F811
    weights = load_file(tiny_clip_checkpoint)
    other = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) if v.is_floating_point()
             and k.startswith("visual.") else v for k, v in weights.items()}
    path = tmp_path / "ckpt" / "tiny.safetensors"  # the same file name, other weights
    path.parent.mkdir()
    save_file(other, str(path))
    clip_b = load_clip(tiny_clip_config, str(path))
    assert clip_b.name == tiny.name
    files = _images(tmp_path)
    a = cf.encode_files(tiny, files, workers=0).global_
    b = cf.encode_files(clip_b, files, workers=0).global_  # (the entry of tiny's features is there)
    fresh = cf.encode_files(clip_b, files, workers=0, use_cache=False).global_
    torch.testing.assert_close(b, fresh, rtol=0, atol=0)
    assert not torch.allclose(a, b)


def test_the_key_changes_with_versions_preprocessing_and_precision(tmp_path, tiny, monkeypatch):  # noqa: F811
    files = [str(p) for p in _images(tmp_path)]
    base = cf._cache_key(tiny, files)
    assert cf._cache_key(tiny, files) == base and cf._cache_key(tiny, files[::-1]) == base  # (files sorted)
    assert cf._cache_key(tiny, files, precision="bf16") != base
    assert cf._cache_key(tiny, files, precision="fp16") not in (base, cf._cache_key(tiny, files, precision="bf16"))
    assert cf._cache_key(tiny, files[:1]) != base
    real = cm.library_versions()
    monkeypatch.setattr(cm, "library_versions", lambda: {**real, "open_clip": real["open_clip"] + ".post1"})
    assert cf._cache_key(tiny, files) != base
    monkeypatch.setattr(cm, "library_versions", lambda: real)
    real_pre = cm.preprocess_identity(tiny)
    monkeypatch.setattr(cm, "preprocess_identity", lambda clip: {**real_pre, "interpolation": "nearest"})
    assert cf._cache_key(tiny, files) != base
    monkeypatch.setattr(cm, "preprocess_identity", lambda clip: real_pre)
    monkeypatch.setattr(cf, "_CACHE_VERSION", "4")  # a new entry format is never read from an old entry
    assert cf._cache_key(tiny, files) != base


def test_random_weights_are_never_cached(tmp_path, tiny_clip_config):
    clip = load_clip(tiny_clip_config, None)
    assert not clip.pretrained
    cf.encode_files(clip, _images(tmp_path), workers=0)
    assert not cf.cache_dir().exists() or not any(cf.cache_dir().iterdir())


def test_an_entry_written_in_another_order_is_read_in_the_order_asked(tmp_path, tiny):  # noqa: F811
    a, b, c = (str(p) for p in _images(tmp_path, 3))
    first = cf.encode_files(tiny, [a, b, c], workers=0)
    again = cf.encode_files(tiny, [c, a, b], workers=0)  # the same entry (the key sorts the files)
    assert len(list(cf.cache_dir().iterdir())) == 1
    assert again.paths == [c, a, b]
    torch.testing.assert_close(again.global_, first.global_[[2, 0, 1]], rtol=0, atol=0)


def test_local_features_are_unit_vectors(tiny):  # noqa: F811
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # (the tiny model's size)
    g, l = cf.normalized_features(tiny, x, local=True)  # [2, e], [2, P, e]
    assert cf.normalized_features(tiny, x)[1] is None  # (no local features unless asked for)
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(2))
    assert l.ndim == 3 and l.shape[0] == 2
    torch.testing.assert_close(l.norm(dim=-1), torch.ones(l.shape[:2]))


def test_local_features_under_bf16_are_float32_unit_vectors(tiny):  # noqa: F811
    """Under bf16 autocast both features are returned as float32 (the docstring's), normalised,
    and the global ones are open_clip's encode_image of the same autocast, normalised."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g, l = cf.normalized_features(tiny, x, local=True, precision="bf16")
    assert g.dtype == torch.float32 and l.dtype == torch.float32
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(l.norm(dim=-1), torch.ones(l.shape[:2]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = tiny.model.encode_image(x).float()
    torch.testing.assert_close(g, ref / ref.norm(dim=-1, keepdim=True), rtol=0, atol=3e-2)


def test_an_entry_at_the_key_that_lists_other_files_is_encoded_again(tmp_path, tiny, capsys):  # noqa: F811
    """An entry at a key's name whose files are not those asked for (a forged or misplaced entry,
    its checksum matching) is no hit: a note, and the files are encoded again."""
    a, b, c = (str(p) for p in _images(tmp_path, 3))
    fresh = cf.encode_files(tiny, [a, b], workers=0)
    (entry,) = cf.cache_dir().glob("*.safetensors")
    cf._write_cache(entry, cf.ImageFeatures([a, c], fresh.global_, None, []))  # (c's features would be b's)
    capsys.readouterr()
    again = cf.encode_files(tiny, [a, b], workers=0)
    assert capsys.readouterr().err == (f"note: the feature-cache entry {entry} cannot be used (it lists other files); "
                                       "its images are encoded again\n")
    assert again.paths == [a, b]
    torch.testing.assert_close(again.global_, fresh.global_, rtol=0, atol=0)


def test_an_entry_moved_to_another_keys_name_is_encoded_again(
        tmp_path, tiny, tiny_clip_config, tiny_clip_checkpoint, capsys):  # noqa: F811
    """The key (model, weights, preprocessing, files) was the entry's file name alone: tiny's entry
    copied to the name of the key of other weights of the same model (same files, same width) was
    served as their features, its checksum matching. The entry records its key; elsewhere it is
    no hit, and the features are encoded again."""
    weights = load_file(tiny_clip_checkpoint)
    other = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) if v.is_floating_point()
             and k.startswith("visual.") else v for k, v in weights.items()}
    save_file(other, str(tmp_path / "other.safetensors"))
    clip_b = load_clip(tiny_clip_config, str(tmp_path / "other.safetensors"))
    files = [str(p) for p in _images(tmp_path)]
    a = cf.encode_files(tiny, files, workers=0).global_
    entry_b = cf.cache_dir() / f"{cf._cache_key(clip_b, files)}.safetensors"
    ((entry_a,),) = [list(cf.cache_dir().glob("*.safetensors"))]
    entry_b.write_bytes(entry_a.read_bytes())
    capsys.readouterr()
    b = cf.encode_files(clip_b, files, workers=0).global_
    assert capsys.readouterr().err == (f"note: the feature-cache entry {entry_b} cannot be used (it was written for "
                                       "another key (another model, weights, preprocessing or files)); its images "
                                       "are encoded again\n")
    torch.testing.assert_close(b, cf.encode_files(clip_b, files, workers=0, use_cache=False).global_, rtol=0, atol=0)
    assert not torch.allclose(a, b)
    # an entry written before entries held their key (the same bytes, no "key"): still read
    g = load_file(str(entry_a))["global"]
    meta = {"paths": json.dumps(files), "skipped": "[]"}
    save_file({"global": g}, str(entry_a), {**meta, "sha256": json.dumps(tensor_checksums({"global": g}, meta))})
    torch.testing.assert_close(cf.encode_files(tiny, files, workers=0).global_, a, rtol=0, atol=0)
    assert capsys.readouterr().err == ""


def test_an_entry_of_a_nan_float_image_read_as_before_its_fix_is_not_served(tmp_path, tiny):  # noqa: F811
    """A float image in [0, 1] with one NaN pixel was read unscaled, almost black, until its range was
    decided by its finite pixels (2026-12-05). An entry an older clip-smot wrote for it (cache version
    "2", the key then: its JSON as today's for PIL and fp32; no "key" in its metadata, as then) holds
    the features of that black image: served today, the score is not the one a fresh read gives."""
    import hashlib

    from clip_smot.common.shards import image_stamp

    a = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    a[0, 0] = np.nan
    image = tmp_path / "nan.tif"
    Image.fromarray(a).save(image)
    black = tmp_path / "black.png"  # what the older reader made of it: [0, 1] rounded, the NaN as 0
    Image.fromarray(np.nan_to_num(a, nan=0.0).round().astype(np.uint8), "L").save(black)
    old = cf.encode_files(tiny, [black], workers=0, use_cache=False).global_
    fresh = cf.encode_files(tiny, [image], workers=0, use_cache=False).global_
    assert not torch.allclose(old, fresh)
    blob = json.dumps({"version": "2", "model": tiny.identity(), "versions": cm.library_versions(),
                       "preprocess": cm.preprocess_identity(tiny), "files": [image_stamp(image)]}, sort_keys=True)
    entry = cf.cache_dir() / f"{hashlib.sha256(blob.encode()).hexdigest()}.safetensors"
    entry.parent.mkdir(parents=True)
    meta = {"paths": json.dumps([str(image)]), "skipped": "[]"}
    save_file({"global": old}, str(entry), {**meta, "sha256": json.dumps(tensor_checksums({"global": old}, meta))})
    torch.testing.assert_close(cf.encode_files(tiny, [image], workers=0).global_, fresh, rtol=0, atol=0)


def test_no_files_to_encode_is_one_line(tiny):  # noqa: F811
    with pytest.raises(UserError, match=r"^no image files to encode$"):
        cf.encode_files(tiny, [], workers=0)


def test_an_entry_of_local_features_in_another_dtype_is_encoded_again(tmp_path, tiny, capsys):  # noqa: F811
    """Local features are stored as float16: an entry holding them as float32 (normalised, its
    checksum matching) is not one the writer made; a note, and they are encoded again."""
    paths = [str(p) for p in _images(tmp_path)]
    fresh = cf.encode_files(tiny, paths, local=True, workers=0)
    (entry,) = cf.cache_dir().glob("*.safetensors")
    cf._write_cache(entry, cf.ImageFeatures(fresh.paths, fresh.global_, fresh.local.float(), []))
    capsys.readouterr()
    again = cf.encode_files(tiny, paths, local=True, workers=0)
    assert capsys.readouterr().err == (f"note: the feature-cache entry {entry} cannot be used (its features are not float32 "
                                       "(global) and float16 (local)); its images are encoded again\n")
    assert again.local.dtype == torch.float16
    torch.testing.assert_close(again.local, fresh.local, rtol=0, atol=0)


@pytest.mark.parametrize("edit", [
    lambda local: local[:, :-1],  # (one patch fewer than the model's)
    lambda local: torch.cat([local, local], dim=-1) * 2**-0.5,  # (twice the embedding width, normalised)
    lambda local: torch.ones(*local.shape, 1, dtype=local.dtype),  # [n, P, e, 1]: each last row of norm 1
], ids=["patches", "width", "rank"])
def test_an_entry_of_local_features_of_another_shape_is_encoded_again(tmp_path, tiny, capsys, edit):  # noqa: F811
    """Local features [n, P, e] of another patch count, width or rank, written with a matching
    checksum: refused from the header, encoded again."""
    paths = [str(p) for p in _images(tmp_path)]
    fresh = cf.encode_files(tiny, paths, local=True, workers=0)
    (entry,) = cf.cache_dir().glob("*.safetensors")
    cf._write_cache(entry, cf.ImageFeatures(fresh.paths, fresh.global_, edit(fresh.local), []))
    capsys.readouterr()
    again = cf.encode_files(tiny, paths, local=True, workers=0)
    assert "cannot be used (its features have the wrong shape); its images are encoded again" in capsys.readouterr().err
    torch.testing.assert_close(again.local, fresh.local, rtol=0, atol=0)


def test_an_entry_of_features_within_the_norm_tolerances_is_read(tmp_path, tiny, capsys, monkeypatch):  # noqa: F811
    """Rounding leaves norms a little off 1: global rows of norm 1.0008 (within 1e-3) and local
    rows of norm about 1.008 (within 1e-2, float16) are read from the entry, not encoded again."""
    paths = [str(p) for p in _images(tmp_path)]
    fresh = cf.encode_files(tiny, paths, local=True, workers=0)
    (entry,) = cf.cache_dir().glob("*.safetensors")
    global_, local = fresh.global_ * 1.0008, (fresh.local.float() * 1.008).half()
    cf._write_cache(entry, cf.ImageFeatures(fresh.paths, global_, local, []))
    monkeypatch.setattr(cf, "_encode", lambda *a, **k: pytest.fail("encoded again"))
    capsys.readouterr()
    again = cf.encode_files(tiny, paths, local=True, workers=0)
    assert capsys.readouterr().err == ""
    assert torch.equal(again.global_, global_) and torch.equal(again.local, local)


def test_an_entry_of_features_past_the_norm_tolerances_is_encoded_again(tmp_path, tiny, capsys):  # noqa: F811
    """Just past the tolerances: global rows of norm 1.002 (1e-3) or local rows of norm about 1.02
    (1e-2) are no writer's features, and are encoded again with a note, each on its own (local
    features scored GL-MCM's local part off by their norm, unchecked)."""
    paths = [str(p) for p in _images(tmp_path)]
    fresh = cf.encode_files(tiny, paths, local=True, workers=0)
    (entry,) = cf.cache_dir().glob("*.safetensors")
    for global_, local in [(fresh.global_ * 1.002, fresh.local), (fresh.global_, (fresh.local.float() * 1.02).half())]:
        cf._write_cache(entry, cf.ImageFeatures(fresh.paths, global_, local, []))
        capsys.readouterr()
        again = cf.encode_files(tiny, paths, local=True, workers=0)
        assert "cannot be used (its features are not normalised); its images are encoded again" in capsys.readouterr().err
        assert torch.equal(again.global_, fresh.global_) and torch.equal(again.local, fresh.local)


def test_a_damaged_entry_is_one_note_of_the_writing_process_alone(tmp_path, tiny, capsys, monkeypatch):  # noqa: F811
    """Under torchrun a damaged entry is noted by rank 0 alone (it rewrites it); another rank
    encodes the files again without a note and leaves the entry as it is."""
    a, b, c = (str(p) for p in _images(tmp_path, 3))
    fresh = cf.encode_files(tiny, [a, b], workers=0)
    (entry,) = cf.cache_dir().glob("*.safetensors")
    cf._write_cache(entry, cf.ImageFeatures([a, c], fresh.global_, None, []))  # (it lists other files)
    forged = entry.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(cf, "writes_outputs", lambda: False)  # (a rank other than 0)
    again = cf.encode_files(tiny, [a, b], workers=0)
    assert capsys.readouterr().err == ""
    assert again.paths == [a, b] and entry.read_bytes() == forged
    torch.testing.assert_close(again.global_, fresh.global_, rtol=0, atol=0)


def test_the_key_of_jpeg_decoded_features_holds_the_models_device(tmp_path, tiny):  # noqa: F811
    """nvJPEG (the model on a GPU) and libjpeg-turbo (on the CPU) decode to other pixels: the key
    of --decode jpeg features names the device the model sits on (a copy of the tiny model on the
    meta device stands in for a GPU's), while PIL's decoding is the same wherever the model is."""
    import copy
    import dataclasses

    files = [str(p) for p in _images(tmp_path)]
    elsewhere = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model).to("meta"))
    assert cf._cache_key(elsewhere, files, decode="jpeg") != cf._cache_key(tiny, files, decode="jpeg")
    assert cf._cache_key(elsewhere, files) == cf._cache_key(tiny, files)


def test_an_entrys_checksum_covers_the_name_dtype_shape_bytes_and_metadata():
    """_checksums, one per tensor, over its name, dtype, shape and bytes and the entry's metadata:
    changing any one of them (the same bytes under another name, shape or dtype included) gives
    another checksum; the same tensor and metadata give the same one, whatever the metadata's
    key order."""
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    meta = {"paths": '["a.png"]', "skipped": "[]"}
    base = tensor_checksums({"global": t}, meta)["global"]
    assert tensor_checksums({"global": t.clone()}, dict(reversed(meta.items())))["global"] == base
    assert tensor_checksums({"global": t.t().contiguous().t()}, meta)["global"] == base  # (a view: the bytes as stored)
    others = [
        tensor_checksums({"local": t}, meta)["local"],  # (name)
        tensor_checksums({"global": t.reshape(3, 2)}, meta)["global"],  # (shape, the same bytes)
        tensor_checksums({"global": t.view(torch.int32)}, meta)["global"],  # (dtype, the same bytes)
        tensor_checksums({"global": t + 1}, meta)["global"],  # (bytes)
        tensor_checksums({"global": t}, {**meta, "skipped": '[["b.png", "unreadable"]]'})["global"],  # (metadata)
    ]
    assert base not in others and len(set(others)) == len(others)
    # the last value of a larger tensor changed: the checksum covers every byte
    big = torch.randn(3, 300)
    assert tensor_checksums({"global": big}, meta) != tensor_checksums({"global": torch.cat([big[:, :-1], big[:, -1:] + 1], 1)},
                                                                meta)


def test_every_row_of_an_entry_is_checked_for_its_norm_not_the_first_256():
    """_normalised reads 256 rows at a time: a row past the first 256 of norm 2 (or 0) is found
    too, and rows within the tolerance pass (global [N, e] and local [N, P, e] alike)."""
    rows = torch.nn.functional.normalize(torch.randn(300, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert cf._normalised(rows, 1e-3) and cf._normalised(rows.reshape(100, 3, 8).half(), 1e-2)
    for bad in (2.0, 0.0, 1.002):
        changed = rows.clone()
        changed[299] *= bad
        assert not cf._normalised(changed, 1e-3)
        assert not cf._normalised(changed.reshape(100, 3, 8), 1e-3)
    assert cf._normalised(rows * (1 - 0.9e-3), 1e-3)
    edge = torch.tensor([[1 + 2**-10, 0.0]])  # (a norm exactly 2^-10 past 1: within a tolerance of 2^-10)
    assert cf._normalised(edge, 2**-10) and not cf._normalised(edge, 2**-11)


def test_the_feature_cache_is_a_folder_of_its_own_in_the_cache(tmp_path, monkeypatch):
    """Entries live in $CLIP_SMOT_CACHE/features (a write removes old temporaries beside them:
    not among the cache's other files), else in ~/.cache/clip_smot/features."""
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "c"))
    assert cf.cache_dir() == tmp_path / "c" / "features"
    monkeypatch.delenv("CLIP_SMOT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cf.cache_dir() == tmp_path / "home" / ".cache" / "clip_smot" / "features"


def test_features_held_as_views_are_written_and_read_back(tmp_path):
    """_write_cache takes features as any tensor holds them (a transposed view is not contiguous,
    which safetensors refuses to save): the entry reads back equal, checksum and all."""
    global_ = torch.nn.functional.normalize(torch.randn(8, 2, generator=torch.Generator().manual_seed(0)), dim=0).t()
    local = torch.nn.functional.normalize(torch.randn(8, 3, 2), dim=0).permute(2, 1, 0).half()
    assert not global_.is_contiguous() and not local.is_contiguous()
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    entry = tmp_path / "entry.safetensors"
    cf._write_cache(entry, cf.ImageFeatures(paths, global_, local, []))
    read, why = cf._read_cache(entry, paths, True, 8, 3)
    assert why == "" and read.paths == paths
    assert torch.equal(read.global_, global_) and torch.equal(read.local, local)


def test_an_entry_written_from_another_folder_is_read_under_another_spelling(tmp_path, tiny, capsys,  # noqa: F811
                                                                             monkeypatch):
    """The key is of the files' absolute paths, so a run from another current folder, naming the
    same files by other relative paths, is served the entry (docs/score.md). The entry held the
    paths as its writer spelled them, read against the reader's folder: `cd data; score val/red`
    after `score data/val/red` found "other files", a damaged-entry note, and encoded them again."""
    (tmp_path / "data").mkdir()
    _images(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    first = cf.encode_files(tiny, ["data/0.png", "data/1.png"], workers=0)
    monkeypatch.chdir(tmp_path / "data")
    capsys.readouterr()
    again = cf.encode_files(tiny, ["1.png", "0.png"], workers=0)
    assert capsys.readouterr().err == ""
    assert len(list(cf.cache_dir().iterdir())) == 1 and again.paths == ["1.png", "0.png"]
    torch.testing.assert_close(again.global_, first.global_[[1, 0]], rtol=0, atol=0)


def test_score_with_a_cache_name_too_long_for_the_file_system_is_one_line(tmp_path, monkeypatch, tiny,  # noqa: F811
                                                                          tiny_clip_config, tiny_clip_checkpoint):
    """$CLIP_SMOT_CACHE whose last name is 300 characters (past NAME_MAX, 255; found by fuzzing the
    environment): score's look-up of the entry ended in a traceback. One line naming
    CLIP_SMOT_CACHE, exit 1."""
    from click.testing import CliRunner
    from helpers import make_prompt

    from clip_smot.cli import cli

    make_prompt(tmp_path / "p.safetensors", tiny)
    images = tmp_path / "images"
    images.mkdir()
    _images(images)
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / ("c" * 300)))
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--model", tiny_clip_config,
                                   "--pretrained", tiny_clip_checkpoint, "--workers", "0", "--device", "cpu",
                                   "--out", str(tmp_path / "s.csv"), str(images)])
    assert res.exit_code == 1 and isinstance(res.exception, (SystemExit, type(None))), repr(res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "CLIP_SMOT_CACHE" in lines[0] and "Traceback" not in res.output, res.output
