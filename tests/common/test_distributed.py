"""score and eval under torchrun: the images shared among processes, rank 0 writing the one
output, identical to one process's (CPU, gloo)."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import _torchrun, _train_folder, make_folders, make_prompt

from clip_smot.cli import cli
from clip_smot.clip.model import load_clip
from clip_smot.common.distributed import batch_share, share_work
from clip_smot.common.errors import UserError


def test_batch_shares_are_whole_batches_in_order():
    """10 items in batches of 3 (batches 0-2, 3-5, 6-8, 9) among 3 processes: 1, 1 and 2 batches."""
    assert [batch_share(10, 3, r, 3) for r in range(3)] == [range(0, 3), range(3, 6), range(6, 10)]
    assert [batch_share(4, 4, r, 2) for r in range(2)] == [range(0, 0), range(0, 4)]  # one batch: one share
    assert [batch_share(0, 4, r, 2) for r in range(2)] == [range(0, 0), range(0, 0)]


def _share_in_process(rank: int, store: str, out: str) -> None:
    """One of two processes of a gloo group: each reports the items it got; rank 1 then fails."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    got = share_work(lambda share: (torch.distributed.get_rank(), share), list(range(7)), 2)
    try:
        share_work(lambda share: (_ for _ in ()).throw(UserError(f"bad {share[0]}")) if rank else share,
                   list(range(7)), 2)
        error = ""
    except UserError as e:
        error = str(e)
    try:  # each process lists the files itself: a folder changed in between gives them other lists
        share_work(lambda share: share, [f"{rank}.png", "b.png"], 1)
        other = ""
    except UserError as e:
        other = str(e)
    Path(out, f"{rank}.json").write_text(json.dumps({"got": got, "error": error, "other": other}))
    torch.distributed.destroy_process_group()


def test_share_work_runs_each_share_once_and_fails_on_every_rank(tmp_path):
    """7 items in batches of 2 (4 batches): rank 0 runs items 0-3, rank 1 items 4-6, and both get
    both results in rank order; a UserError of rank 1 is raised on rank 0 too (nobody waits)."""
    torch.multiprocessing.spawn(_share_in_process, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result["got"] == [[0, [0, 1, 2, 3]], [1, [4, 5, 6]]]
        assert result["error"] == "bad 4"
        assert result["other"].startswith("the 2 processes were given other lists of 2 images to share")


def _torchrun_in(cache, monkeypatch, args) -> str:
    """``torchrun --nproc_per_node 2 -m clip_smot ARGS`` with the feature cache in ``cache``."""
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(cache))
    code, _, stderr = _torchrun("-m", "clip_smot", *args)
    assert code == 0, stderr[-3000:]
    return stderr


@pytest.fixture()
def setup(tmp_path, tiny_clip_config, tiny_clip_checkpoint):
    prompt = tmp_path / "p.safetensors"
    make_prompt(prompt, load_clip(tiny_clip_config, tiny_clip_checkpoint))
    id_dir, ood_dir = make_folders(tmp_path, n_per_class=4, n_ood=7)  # 12 + 7 images: uneven shares
    return prompt, id_dir, ood_dir


def test_score_under_torchrun_writes_the_csv_of_one_process(tmp_path, setup, tiny_clip_checkpoint, monkeypatch):
    """Two processes (gloo, --batch-size 4: 19 images in 5 batches, 2 and 3 per process): the CSV,
    row order included, is byte for byte that of one process, each with a fresh feature cache; an
    unreadable image skipped is listed once (by rank 0), not once a process."""
    prompt, id_dir, ood_dir = setup
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not an image")
    args = ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--scores",
            "mcm,energy,gl-mcm,odin", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--skip-unreadable"]
    paths = [str(id_dir), str(tmp_path / "bad"), str(ood_dir)]
    stderr = _torchrun_in(tmp_path / "c2", monkeypatch, [*args, "--out", str(tmp_path / "two.csv"), *paths])
    assert stderr.count("Skipped 1 unreadable image(s):") == 1 and stderr.count("broken.png") == 1, stderr
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "c1"))
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "one.csv"), *paths])
    assert res.exit_code == 0, res.output
    one = (tmp_path / "one.csv").read_bytes()
    assert one.count(b"\n") == 1 + 19 and (tmp_path / "two.csv").read_bytes() == one
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".csv") == ["one.csv", "two.csv"]


def test_eval_under_torchrun_gives_the_metrics_of_one_process(tmp_path, setup, tiny_clip_checkpoint, monkeypatch):
    """Two processes with the fitted scores (knn, vim, react: ID-train features gathered before
    fitting) and odin: metrics.json's metrics are those of one process."""
    prompt, id_dir, ood_dir = setup
    train = _train_folder(tmp_path / "train")
    args = ["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id", str(id_dir), "--ood",
            f"noise={ood_dir}", "--id-train", str(train), "--scores", "mcm,knn,vim,react,odin", "--batch-size", "4",
            "--workers", "0", "--device", "cpu"]
    _torchrun_in(tmp_path / "c2", monkeypatch, [*args, "--out", str(tmp_path / "two")])
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "c1"))
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert one["id_train"]["n_images"] == two["id_train"]["n_images"] == 51
    assert two["metrics"] == one["metrics"] and two["id_train"] == one["id_train"]
    assert (tmp_path / "two" / "metrics.csv").read_bytes() == (tmp_path / "one" / "metrics.csv").read_bytes()
