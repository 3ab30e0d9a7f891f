"""`clip-smot score` on shards written by the webdataset library itself, as users and img2dataset
write them: the same scores as the images' files, non-image fields no rows, --resume."""

import io

import numpy as np
import pytest
import webdataset
from click.testing import CliRunner
from helpers import _cache_in_tmp, make_prompt, read_csv, tiny  # noqa: F401 (fixtures)
from PIL import Image

from clip_smot.cli import cli
from clip_smot.clip.score import ScoreConfig, run_score
from clip_smot.clip.scorer import PromptScorer

N_SAMPLES, PER_SHARD = 8, 3  # three shards: 3 + 3 + 2 samples
# each sample's image field, in turn: bytes as img2dataset stores them, or a PIL image that
# webdataset's own encoder writes (JPEG at quality 100, PNG)
FIELDS = ("jpg", "png", "webp", "jpeg")


def _encoded(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _image(i: int) -> Image.Image:
    """A tiny image a colour dominates (red, green or blue, in turn), over noise."""
    a = np.random.default_rng(i).integers(0, 60, (36 + i, 44, 3))
    a[..., i % 3] += 150
    return Image.fromarray(a.astype(np.uint8))


def _write_shards(folder) -> list[str]:
    """``shards-%06d.tar`` from webdataset.ShardWriter, as img2dataset lays them out: keys
    000000000, 000000001, ...; each sample one image field and its cls, json and txt; returns the
    shards' paths."""
    folder.mkdir()
    pattern = str(folder / "shards-%06d.tar")
    with webdataset.ShardWriter(pattern, maxcount=PER_SHARD) as sink:
        for i in range(N_SAMPLES):
            field = FIELDS[i % len(FIELDS)]
            im = _image(i)
            sink.write({"__key__": f"{i:09d}", "cls": i % 3, "txt": f"a photo number {i}",
                        "json": {"caption": f"a photo number {i}", "width": im.width, "height": im.height},
                        field: im if field in ("png", "jpeg") else _encoded(im, "JPEG" if field == "jpg" else "WEBP")})
    shards = sorted(str(p) for p in folder.iterdir())
    assert [p.rsplit("/", 1)[1] for p in shards] == ["shards-000000.tar", "shards-000001.tar", "shards-000002.tar"]
    return shards


def _as_files(shards, folder):
    """The shards' image fields as files, read back with webdataset's own reader: one folder a
    shard, each image ``KEY.EXT`` (a folder lists them in the shard's order: one image a key)."""
    names = []
    for shard in shards:
        out = folder / shard.rsplit("/", 1)[1][:-len(".tar")]
        out.mkdir(parents=True)
        for sample in webdataset.WebDataset([shard], shardshuffle=False):
            (field,) = [k for k in sample if k in FIELDS]
            (out / f"{sample['__key__']}.{field}").write_bytes(sample[field])
            names.append(f"{sample['__key__']}.{field}")
    return names


@pytest.fixture
def shards_and_files(tmp_path, tiny):
    make_prompt(tmp_path / "p.safetensors", tiny)
    shards = _write_shards(tmp_path / "shards")
    names = _as_files(shards, tmp_path / "files")
    return shards, [str(tmp_path / "files" / s.rsplit("/", 1)[1][:-len(".tar")]) for s in shards], names


def _score_cli(tmp_path, ckpt, paths, out):
    res = CliRunner().invoke(cli, ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", ckpt,
                                   "--scores", "mcm,msp,energy", "--device", "cpu", "--workers", "0",
                                   "--batch-size", "2", "--out", str(out), *paths])
    assert res.exit_code == 0, res.output
    return read_csv(out)


def test_score_of_webdataset_shards_is_the_score_of_their_images_as_files(tmp_path, shards_and_files,
                                                                         tiny_clip_checkpoint):
    """Three shards of ShardWriter (images as bytes and as PIL images it encodes, beside cls, json
    and txt fields): one row per image, in the shards' order, named SHARD.tar::KEY.EXT; the cls,
    json and txt fields are no rows; each row's prediction and scores are those of the same
    image's bytes as a file, digit for digit."""
    shards, folders, names = shards_and_files
    by_shard = _score_cli(tmp_path, tiny_clip_checkpoint, shards, tmp_path / "shards.csv")
    by_file = _score_cli(tmp_path, tiny_clip_checkpoint, folders, tmp_path / "files.csv")
    assert len(names) == N_SAMPLES and [n.split(".")[1] for n in names] == [FIELDS[i % 4] for i in range(N_SAMPLES)]
    expected = [f"{shards[i // PER_SHARD]}::{name}" for i, name in enumerate(names)]
    assert [r["path"] for r in by_shard] == expected
    assert [r["path"] for r in by_file] == [f"{folders[i // PER_SHARD]}/{name}" for i, name in enumerate(names)]
    assert [{k: v for k, v in r.items() if k != "path"} for r in by_shard] == \
           [{k: v for k, v in r.items() if k != "path"} for r in by_file]
    assert len({r["pred"] for r in by_shard}) > 1  # (the images are told apart: not one row repeated)


def test_score_of_webdataset_shards_resumes_to_the_uninterrupted_csv(tmp_path, shards_and_files,
                                                                     tiny_clip_checkpoint, monkeypatch):
    """Stopped (as Ctrl-C stops it) after the first shard's chunk, `--resume` on the same shards
    scores the rest only, and the CSV is the uninterrupted run's byte for byte."""
    shards, _, _ = shards_and_files

    def run(out, **kw):
        return run_score(ScoreConfig(prompt=str(tmp_path / "p.safetensors"), paths=tuple(shards), out=str(out),
                                     pretrained=tiny_clip_checkpoint, scores="mcm,msp,energy", batch_size=2,
                                     device="cpu", workers=0, **kw), chunk=2)

    run(tmp_path / "whole.csv")
    seen, real = [], PromptScorer.score_files

    def stop_after_two_chunks(self, files, *a, **k):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(list(files))
        return real(self, files, *a, **k)

    out = tmp_path / "s.csv"
    monkeypatch.setattr(PromptScorer, "score_files", stop_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        run(out)
    assert seen == [[f"{shards[0]}::000000000.jpg", f"{shards[0]}::000000001.png"], [f"{shards[0]}::000000002.webp"]]
    assert (tmp_path / "s.csv.partial").read_bytes().count(b"\n") == 1 + PER_SHARD and not out.exists()
    resumed = []

    def spy(self, files, *a, **k):
        resumed.extend(files)
        return real(self, files, *a, **k)

    monkeypatch.setattr(PromptScorer, "score_files", spy)
    run(out, resume=True)
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert resumed == [r["path"] for r in read_csv(out)][PER_SHARD:]  # (the first shard's images not again)


def test_gzip_compressed_shards_of_shardwriter_are_refused_or_skipped_by_name(tmp_path, shards_and_files,
                                                                               tiny_clip_checkpoint):
    """ShardWriter("shards-%06d.tar.gz") gzips each shard (webdataset's reader streams them). Such
    a shard was taken for one image file: `score` stopped on 'unreadable or truncated image', and
    --skip-unreadable dropped its images as one unreadable image. It is now refused as a
    compressed shard in one line before anything is encoded, and --skip-unreadable skips it
    whole, as a shard it cannot list, saying why; the other shards' rows are as without it."""
    shards, _, _ = shards_and_files
    with webdataset.ShardWriter(str(tmp_path / "gz-%06d.tar.gz"), maxcount=2) as sink:
        for i in range(3):
            sink.write({"__key__": f"{i:09d}", "jpg": _encoded(_image(i), "JPEG"), "cls": i % 3})
    gz = [str(tmp_path / "gz-000000.tar.gz"), str(tmp_path / "gz-000001.tar.gz")]
    assert [s["__key__"] for s in webdataset.WebDataset(gz, shardshuffle=False)] == ["000000000", "000000001",
                                                                                     "000000002"]
    base = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint,
            "--scores", "mcm,msp,energy", "--device", "cpu", "--workers", "0", "--batch-size", "2"]
    why = ("a tar shard compressed with gzip, which is not read (images are read at their offsets in an uncompressed "
           "tar); decompress it to a .tar first (gzip -dc SHARD > NAME.tar)")
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "x.csv"), shards[0], gz[0]])
    assert res.exit_code == 1 and res.output.splitlines() == [f"Error: PATH {gz[0]}: {why}"], res.output
    assert not list(tmp_path.glob("x.csv*"))
    res = CliRunner().invoke(cli, [*base, "--skip-unreadable", "--out", str(tmp_path / "s.csv"), gz[0], *shards, gz[1]])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines()[-3:] == ["Skipped 2 unreadable image(s) or shard(s):", f"  PATH {gz[0]}: {why}",
                                            f"  PATH {gz[1]}: {why}"], res.stderr
    _score_cli(tmp_path, tiny_clip_checkpoint, shards, tmp_path / "shards.csv")
    assert (tmp_path / "s.csv").read_bytes() == (tmp_path / "shards.csv").read_bytes()


def test_a_shard_webdatasets_reader_stops_at_is_refused_or_skipped_in_one_line(tmp_path, shards_and_files,
                                                                               tiny_clip_checkpoint):
    """ShardWriter writes a sample with the fields "jpg" and "JPG" (as 000000000.JPG, .cls, .jpg)
    that webdataset's own reader stops at: it lower-cases suffixes, and calls the second "jpg" a
    duplicate file name. `score` gave such a shard's two images two rows; it now refuses the
    shard in one line naming the member, before anything is encoded, and --skip-unreadable
    skips it whole with that reason, the other shards' rows as without it."""
    shards, _, _ = shards_and_files
    bad = str(tmp_path / "bad-000000.tar")
    with webdataset.ShardWriter(str(tmp_path / "bad-%06d.tar"), maxcount=2) as sink:
        sink.write({"__key__": "000000000", "jpg": _encoded(_image(0), "JPEG"), "JPG": _encoded(_image(1), "JPEG"),
                    "cls": 0})
    with pytest.raises(ValueError, match="000000000.jpg: duplicate file name in tar file"):
        list(webdataset.WebDataset([bad], shardshuffle=False))
    base = ["score", "--prompt", str(tmp_path / "p.safetensors"), "--pretrained", tiny_clip_checkpoint,
            "--scores", "mcm,msp,energy", "--device", "cpu", "--workers", "0", "--batch-size", "2"]
    why = ("the member '000000000.jpg' is the field 'jpg' of the sample '000000000', a second field of that name in "
           "the sample (suffixes are compared in lower case, as webdataset's reader compares them): webdataset's "
           "reader stops at it (duplicate file name); keep one")
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "x.csv"), shards[0], bad])
    assert res.exit_code == 1 and res.output.splitlines() == [f"Error: PATH {bad}: {why}"], res.output
    assert not list(tmp_path.glob("x.csv*"))
    res = CliRunner().invoke(cli, [*base, "--skip-unreadable", "--out", str(tmp_path / "s.csv"), *shards, bad])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines()[-2:] == ["Skipped 1 unreadable image(s) or shard(s):", f"  PATH {bad}: {why}"]
    _score_cli(tmp_path, tiny_clip_checkpoint, shards, tmp_path / "shards.csv")
    assert (tmp_path / "s.csv").read_bytes() == (tmp_path / "shards.csv").read_bytes()
