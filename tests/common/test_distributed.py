"""score and eval under torchrun: the images shared among processes, rank 0 writing the one
output, identical to one process's (CPU, gloo)."""

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import _torchrun, _train_folder, make_folders, make_prompt, read_csv

import clip_smot.common.distributed as distributed
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
    try:  # both fail: the first in rank order (the items' order) is raised on both
        share_work(lambda share: (_ for _ in ()).throw(UserError(f"bad {share[0]}")), list(range(7)), 2)
        first = ""
    except UserError as e:
        first = str(e)
    ran = []  # two items, one batch of 2: rank 0's share is empty, and fn does not run there
    one_batch = share_work(lambda share: ran.append(share) or share, [0, 1], 2)
    agreed = distributed.same_on_every_rank({"sha": "a"}, "--x f")
    try:  # what each process made of a file it read itself: the same error on both
        distributed.same_on_every_rank({"sha": str(rank)}, "--x f")
        disagreed = ""
    except UserError as e:
        disagreed = str(e)
    try:  # each process lists the files itself: a folder changed in between gives them other lists
        share_work(lambda share: share, [f"{rank}.png", "b.png"], 1)
        other = ""
    except UserError as e:
        other = str(e)
    Path(out, f"{rank}.json").write_text(json.dumps({"got": got, "error": error, "first": first, "ran": ran,
                                                     "one_batch": one_batch, "other": other, "agreed": agreed,
                                                     "disagreed": disagreed}))
    torch.distributed.destroy_process_group()


def test_share_work_runs_each_share_once_and_fails_on_every_rank(tmp_path):
    """7 items in batches of 2 (4 batches): rank 0 runs items 0-3, rank 1 items 4-6, and both get
    both results in rank order; a UserError of rank 1 is raised on rank 0 too (nobody waits), and
    of two, rank 0's; a rank whose share is empty runs nothing and adds no result."""
    torch.multiprocessing.spawn(_share_in_process, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result["got"] == [[0, [0, 1, 2, 3]], [1, [4, 5, 6]]]
        assert result["error"] == "bad 4" and result["first"] == "bad 0"
        assert result["ran"] == ([] if rank == 0 else [[0, 1]]) and result["one_batch"] == [[0, 1]]
        assert result["other"].startswith("the 2 processes were given other lists of 2 images to share")
        assert result["agreed"] is None and result["disagreed"] == (
            "--x f: the 2 processes do not agree on it (a file replaced while they started? nodes with other "
            "versions?); run again once they do")


def _chunks_in_process(rank: int, store: str, out: str) -> None:
    """One of two processes: rank 0 lists one chunk of images, rank 1 two (a file added to a folder
    between their listings); both must stop at the second, neither wait for the other."""
    from clip_smot.clip.score import _next_chunk

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    chunks = iter([["a.png"]] if rank == 0 else [["a.png"], ["b.png"]])
    seen = [_next_chunk(chunks)]
    try:
        seen.append(_next_chunk(chunks))
        error = ""
    except UserError as e:
        error = str(e)
    Path(out, f"{rank}.json").write_text(json.dumps({"seen": seen, "error": error}))
    torch.distributed.destroy_process_group()


def test_processes_that_list_other_numbers_of_chunks_all_stop(tmp_path):
    """A folder that gained a file between two processes' listings left one with a chunk more:
    rank 0 finished and waited at the end, rank 1 waited for its chunk's partners, both for gloo's
    30 minutes. They now agree before each chunk: both stop at once, in one line."""
    torch.multiprocessing.spawn(_chunks_in_process, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result["seen"] == [["a.png"]] and result["error"].startswith("PATHS: the processes found other numbers")


def _lock_in_process(rank: int, store: str, out: str, held: str) -> None:
    """One of two processes: the writer_lock of a free folder, then of one another process holds."""
    import datetime

    from clip_smot.common.distributed import writer_lock, writes_outputs

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=30))
    result = {"writes": writes_outputs()}
    try:
        with writer_lock(Path(out) / "free", folder=True):
            result["free"] = ""
    except UserError as e:
        result["free"] = str(e)
    try:
        with writer_lock(held, folder=True):
            result["held"] = ""
    except UserError as e:
        result["held"] = str(e)

    def failing_lock(*args, **kwargs):
        raise OSError()  # (an error whose text is empty)

    real_lock, distributed.output_lock = distributed.output_lock, failing_lock
    try:
        with writer_lock(Path(out) / "other", folder=True):
            result["silent"] = ""
    except Exception as e:
        result["silent"] = f"{type(e).__name__}: {e}"
    finally:
        distributed.output_lock = real_lock
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def test_rank_0_alone_takes_the_lock_and_every_rank_hears_its_refusal(tmp_path):
    """Rank 1 never locks (it would be refused by rank 0's lock of the same folder); a folder
    another command holds is refused on rank 0, and rank 1 raises the same line instead of going
    on to wait for a rank 0 that has stopped."""
    from clip_smot.common.locks import output_lock

    (tmp_path / "res").mkdir()
    with output_lock(tmp_path / "held", folder=True):
        torch.multiprocessing.spawn(_lock_in_process, args=(str(tmp_path / "store"), str(tmp_path / "res"),
                                                            str(tmp_path / "held")), nprocs=2)
    results = [json.loads((tmp_path / "res" / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["writes"] for r in results] == [True, False]
    assert [r["free"] for r in results] == ["", ""]
    assert results[0]["held"] != "" and str(tmp_path / "held") in results[0]["held"]
    assert results[1]["held"] == results[0]["held"]
    # an error with no text: rank 0 raises it as it was, rank 1 its name (not nothing, going on alone)
    assert [r["silent"] for r in results] == ["OSError: ", "UserError: OSError"]


def _stops_alone_in_process(rank: int, ports: list, out: str) -> None:
    """One of two processes, as under torchrun: rank 1 raises alone, once before the first
    collective and once inside the group as rank 0 leaves it; rank 0 reports what it then met."""
    from clip_smot.common.distributed import every_rank, process_group

    errors = []
    for port, where in zip(ports, ("every_rank", "barrier")):
        for name, value in (("WORLD_SIZE", "2"), ("RANK", str(rank)), ("LOCAL_RANK", str(rank)),
                            ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
            os.environ[name] = value
        try:
            with process_group("cpu"):
                if rank == 1:
                    raise UserError("a folder only rank 1 cannot list")
                if where == "every_rank":
                    every_rank(True)
            errors.append("")
        except UserError as e:
            errors.append(str(e))
    Path(out, f"{rank}.json").write_text(json.dumps(errors))


def test_a_process_that_meets_another_that_stopped_stops_in_one_line(tmp_path):
    """Rank 1 stopped on an error of its own (a folder only it cannot list, a write only rank 0
    makes) while rank 0 went on to a collective: rank 0 printed gloo's "Connection closed by
    peer" RuntimeError as a 48-line traceback after rank 1's line. Now its own one line."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    torch.multiprocessing.spawn(_stops_alone_in_process, args=(ports, str(tmp_path)), nprocs=2)
    stopped = ("another of the 2 processes stopped (its own error line says why) or no longer answers; this one "
               "stops too")
    assert json.loads((tmp_path / "0.json").read_text()) == [stopped, stopped]
    assert json.loads((tmp_path / "1.json").read_text()) == ["a folder only rank 1 cannot list"] * 2


@pytest.mark.parametrize("env, expected", [
    ({"WORLD_SIZE": "two"}, "$WORLD_SIZE 'two': not a whole number"),
    ({"WORLD_SIZE": "0"}, "$WORLD_SIZE 0: must be 1 or more"),
    ({"WORLD_SIZE": "2"}, "$WORLD_SIZE 2: $RANK is not set; run under torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "$WORLD_SIZE 2: $MASTER_ADDR is not set"),
    ({"WORLD_SIZE": "2", "RANK": "5", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"},
     "$RANK 5, $LOCAL_RANK 0: not in [0, WORLD_SIZE 2)"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"},
     "$RANK 2, $LOCAL_RANK 0: not in [0, WORLD_SIZE 2)"),  # (ranks are 0 and 1)
    ({"RANK": "1"}, None),  # (one process: the RANK left in its environment is not read; it writes)
    ({"WORLD_SIZE": "1", "RANK": "3", "LOCAL_RANK": "3"}, None),
    ({"WORLD_SIZE": ""}, None),  # (set but empty: as unset)
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "x"}, "$WORLD_SIZE 2: $MASTER_PORT is not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"},
     "$RANK 0, $LOCAL_RANK 2: not in [0, WORLD_SIZE 2)"),
    ({"WORLD_SIZE": "2", "RANK": "-1", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"},
     "$RANK -1, $LOCAL_RANK 0: not in [0, WORLD_SIZE 2)"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "abc"},
     "$MASTER_PORT 'abc': not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "99999"},
     "$MASTER_PORT 99999: not a port (1 to 65535)"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "0"},
     "$MASTER_PORT 0: not a port (1 to 65535)"),  # (rank 0 would listen on a free port no other rank knows)
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "65536"},
     "$MASTER_PORT 65536: not a port (1 to 65535)"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "x", "MASTER_PORT": "65535"}, (1, 1, 2)),
    ({"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, (2, 0, 3)),
])
def test_torchrun_variables_are_checked_in_one_line(monkeypatch, env, expected):
    """WORLD_SIZE=2 alone was torch.distributed's traceback (RANK expected), WORLD_SIZE=abc int()'s,
    RANK=5 of 2 waited for ever; RANK=1 in one process dropped the list of skipped images."""
    from clip_smot.common.distributed import torchrun_env

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if expected is None:
        assert torchrun_env() == (0, 0, 1)
        return
    if isinstance(expected, tuple):  # (rank, local rank, world size) of a process of a torchrun group
        assert torchrun_env() == expected
        return
    with pytest.raises(UserError) as e:
        torchrun_env()
    assert str(e.value).startswith(expected)


def test_the_paths_of_a_process_group_in_a_group_of_one_process(tmp_path):
    """What only a torchrun takes, in a gloo group of this one process (no spawn): every_rank
    gathers through gloo, rank 0 writes, share_work gives its one share, and gloo's "closed by
    peer" inside the group is the one line, any other error (or one outside a group) as it is."""
    from clip_smot.common import distributed as d
    from clip_smot.common.run_folder import OtherFlags

    peer = "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500"
    with pytest.raises(RuntimeError, match="closed by peer"):  # (outside a group: not ours to rename)
        with d.peer_stopped_in_one_line():
            raise RuntimeError(peer)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert d.every_rank({"a": [1, 2]}) == [{"a": [1, 2]}]
        assert d.writes_outputs()
        d.same_on_every_rank("x", "what")
        assert d.share_work(lambda xs: [2 * x for x in xs], [1, 2, 3], 2) == [[2, 4, 6]]
        # one process's share is every item, run as outside a group: fn runs on no items too, and
        # its error is raised as it is (OtherFlags keeps its type and the flags it names)
        assert d.share_work(len, [], 2) == [0]
        with pytest.raises(OtherFlags) as raised:
            d.share_work(lambda xs: (_ for _ in ()).throw(OtherFlags("--x: other", ["--x"])), [1], 2)
        assert raised.value.flags == ["--x"]
        with d.writer_lock(tmp_path / "o.csv"):
            pass
        with pytest.raises(UserError, match=r"^another of the 1 processes stopped \(its own error line says why\)"):
            with d.peer_stopped_in_one_line():
                raise RuntimeError(peer)
        with pytest.raises(RuntimeError, match="^CUDA out of memory$"):
            with d.peer_stopped_in_one_line():
                raise RuntimeError("CUDA out of memory")
    finally:
        torch.distributed.destroy_process_group()
    assert not torch.distributed.is_initialized()


def _variables_of_rank_0(monkeypatch, address: str, port: int) -> None:
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", address),
                        ("MASTER_PORT", str(port))):
        monkeypatch.setenv(name, value)


def test_a_port_another_program_holds_is_one_line(monkeypatch):
    """Variables set by hand, MASTER_PORT a port in use: torch.distributed's DistNetworkError
    traceback (EADDRINUSE); now one line naming the port."""
    import socket

    from clip_smot.common.distributed import process_group

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        _variables_of_rank_0(monkeypatch, "127.0.0.1", port)
        with pytest.raises(UserError) as e:
            with process_group("cpu"):
                pass
    assert str(e.value).startswith(f"$MASTER_ADDR 127.0.0.1, $MASTER_PORT {port}: the process group cannot start (")
    assert "address already in use" in str(e.value) and not torch.distributed.is_initialized()


def test_a_master_address_that_does_not_resolve_is_one_line(monkeypatch):
    """MASTER_ADDR a name no resolver knows: rank 0 retried connecting to its own store for the
    group's 30 minutes (a warning every few seconds); now one line before any store is made."""
    import socket

    def unknown(host, *args, **kwargs):
        assert host == "nosuch.invalid"
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def waits(*args, **kwargs):
        pytest.fail("init_process_group would retry the address for 30 minutes")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    monkeypatch.setattr(torch.distributed, "init_process_group", waits)
    _variables_of_rank_0(monkeypatch, "nosuch.invalid", 29500)
    with pytest.raises(UserError, match=r"^\$MASTER_ADDR nosuch\.invalid, \$MASTER_PORT 29500: the address cannot be "
                                        r"found \(.*Name or service not known\)"):
        with distributed.process_group("cpu"):
            pass


def test_a_torchrun_killed_while_its_processes_start_is_one_line(monkeypatch):
    """torchrun SIGKILLed (the OOM killer, a scheduler's kill -9) after starting its processes but
    before they reached the store it serves: each orphan retried connecting to it for the
    group's 30 minutes (seen: both still waiting 150 s after the kill). Now each stops in one
    line; while torchrun listens there, the group starts as before."""
    import socket

    started = []
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: started.append(a))
    monkeypatch.setattr(torch.distributed, "barrier", lambda: None)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")  # (what torchrun sets: its agent serves the store)
    with socket.socket() as gone:
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    _variables_of_rank_0(monkeypatch, "127.0.0.1", port)
    with pytest.raises(UserError) as e:
        with distributed.process_group("cpu"):
            pass
    assert str(e.value) == (f"$MASTER_ADDR 127.0.0.1, $MASTER_PORT {port}: nothing listens there: the torchrun "
                            "that started this process has stopped") and not started
    with socket.socket() as agent:  # (torchrun alive: its store listens)
        agent.bind(("127.0.0.1", 0))
        agent.listen()
        _variables_of_rank_0(monkeypatch, "127.0.0.1", agent.getsockname()[1])
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
        with distributed.process_group("cpu"):
            pass
    assert started == [("gloo",)]


def _torchrun_in(cache, monkeypatch, args) -> str:
    """``torchrun --nproc_per_node 2 -m clip_smot ARGS`` with the feature cache in ``cache``."""
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(cache))
    code, _, stderr = _torchrun("-m", "clip_smot", *args)
    assert code == 0, stderr[-3000:]
    return stderr


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    with _threads(1):  # (as torchrun's processes: a feature's last digits can depend on the thread count)
        res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "one.csv"), *paths])
    assert res.exit_code == 0, res.output
    one = (tmp_path / "one.csv").read_bytes()
    assert one.count(b"\n") == 1 + 19 and (tmp_path / "two.csv").read_bytes() == one
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".csv") == ["one.csv", "two.csv"]


def test_a_folder_only_rank_1_cannot_list_is_its_line_and_no_traceback(tmp_path, setup, tiny_clip_checkpoint):
    """A folder that one process cannot list (a mount missing on its node): rank 1 stopped with
    its line while rank 0 waited for it in the first collective, and printed gloo's "Connection
    closed by peer" traceback (48 lines). Now rank 0 stops in one line, or torchrun stops it
    first; nothing is written."""
    prompt, id_dir, ood_dir = setup
    script = tmp_path / "rank1_cannot_list.py"
    script.write_text(
        "import os, sys\n"
        "if os.environ['RANK'] == '1':\n"
        "    real = os.scandir\n"
        "    def scandir(path='.'):\n"
        f"        if str(path) == {str(ood_dir)!r}:\n"
        "            raise PermissionError(13, 'Permission denied', str(path))\n"
        "        return real(path)\n"
        "    os.scandir = scandir\n"
        "from clip_smot.cli import main\n"
        "sys.exit(main())\n")
    out = tmp_path / "s.csv"
    code, _, stderr = _torchrun(str(script), "score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint,
                                "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(out),
                                str(id_dir), str(ood_dir))
    assert code != 0 and f"Error: {ood_dir}: a folder that cannot be listed (Permission denied)" in stderr, stderr
    assert "[rank0]:" not in stderr, stderr[-3000:]  # (torchrun's own report follows; no rank's traceback)
    assert not [p.name for p in tmp_path.iterdir() if "s.csv" in p.name]


def _score_stopped_before_its_rename(tmp_path, setup, tiny_clip_checkpoint, monkeypatch) -> tuple[list[str], Path]:
    """One process's score of the setup's 19 images into ``tmp_path/s.csv``, stopped between its
    last append and the rename of OUT.partial (as a kill there leaves it); its arguments and OUT."""
    import clip_smot.clip.score as score_module

    prompt, id_dir, ood_dir = setup
    out = tmp_path / "s.csv"
    args = ["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--scores", "mcm,energy",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(out), str(id_dir), str(ood_dir)]
    real_replace = os.replace

    def stopped(src, dst):  # (the final rename of OUT.partial to OUT; the others as they are)
        if str(dst) == str(out):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "c1"))
    with monkeypatch.context() as m, _threads(1):  # (one thread, as each of torchrun's processes)
        m.setattr(score_module.os, "replace", stopped)
        CliRunner().invoke(cli, args)
    return args, out


def test_resume_under_torchrun_of_a_partial_that_holds_every_row(tmp_path, setup, tiny_clip_checkpoint, monkeypatch):
    """A run stopped between its last append and the rename leaves an OUT.partial of every row.
    Resumed under torchrun, rank 0 had nothing left to score, renamed it and removed the run file
    while rank 1 still read them: exit 1 ("is missing or damaged", or a gloo traceback) in 3 runs
    of 4, the CSV written. Every process now reads them before rank 0 changes anything."""
    args, out = _score_stopped_before_its_rename(tmp_path, setup, tiny_clip_checkpoint, monkeypatch)
    whole = (tmp_path / "s.csv.partial").read_bytes()
    assert whole.count(b"\n") == 1 + 19 and (tmp_path / "s.csv.partial.json").exists() and not out.exists()
    _torchrun_in(tmp_path / "c2", monkeypatch, [*args, "--resume"])
    assert out.read_bytes() == whole and not (tmp_path / "s.csv.partial").exists()


def test_resume_under_torchrun_of_a_partial_cut_mid_row_gives_the_csv_of_one_process(tmp_path, setup,
                                                                                     tiny_clip_checkpoint, monkeypatch):
    """A partial whose last append was cut mid-row (a crash, a kill): resumed under torchrun, the
    chunk the cut row belongs to (the second PATH's 7 images; rows 1-12 are the first PATH's) is
    scored again whole, shared by the two processes in the batches of an uninterrupted run, and
    the CSV is byte for byte one process's."""
    args, out = _score_stopped_before_its_rename(tmp_path, setup, tiny_clip_checkpoint, monkeypatch)
    partial = tmp_path / "s.csv.partial"
    whole = partial.read_bytes()
    lines = whole.splitlines(keepends=True)
    assert len(lines) == 1 + 19
    partial.write_bytes(b"".join(lines[:15]) + lines[15][:len(lines[15]) // 2])  # header, 14 rows, half a row
    _torchrun_in(tmp_path / "c2", monkeypatch, [*args, "--resume"])
    assert out.read_bytes() == whole and not partial.exists()


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
    with _threads(1):
        res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert one["id_train"]["n_images"] == two["id_train"]["n_images"] == 51
    assert two["metrics"] == one["metrics"] and two["id_train"] == one["id_train"]
    assert (tmp_path / "two" / "metrics.csv").read_bytes() == (tmp_path / "one" / "metrics.csv").read_bytes()


def _another_rank_read(monkeypatch, differs):
    """every_rank of two processes, the other of which made ``differs(value)`` of what this one made
    ``value`` of, for the values that ``differs`` returns something for (the others agree)."""
    def every_rank(value):
        other = differs(value)
        return [value, value if other is None else other]

    monkeypatch.setattr(distributed, "every_rank", every_rank)


def test_score_and_eval_stop_when_the_processes_read_other_prompts(tmp_path, setup, tiny_clip_checkpoint,
                                                                   monkeypatch):
    """Under torchrun each process reads the prompt and the weights itself: a prompt replaced while
    they started (a fit exporting into it) would have them score with two prompts into one CSV or
    table. They compare what they read first, and all stop in one line, nothing written."""
    prompt, id_dir, ood_dir = setup
    _another_rank_read(monkeypatch, lambda v: {**v, "prompt_sha256": "0" * 64} if isinstance(v, dict)
                       and "prompt_sha256" in v else None)
    common = ["--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0", "--device", "cpu"]
    res = CliRunner().invoke(cli, ["score", *common, "--out", str(tmp_path / "s.csv"), str(ood_dir)])
    assert res.exit_code == 1 and res.output == (
        f"Error: --prompt {prompt}: what it is scored with (prompt, weights, precision, decoder): the 2 processes do "
        "not agree on it (a file replaced while they started? nodes with other versions?); run again once they "
        "do\n"), res.output
    res = CliRunner().invoke(cli, ["eval", *common, "--id", str(id_dir), "--ood", f"o={ood_dir}",
                                   "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and res.output.startswith(
        f"Error: --prompt {prompt}: what it is scored with (prompt, weights, class names, precision): the 2 "
        "processes do not agree"), res.output
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("s.csv", "e"))]
    # the same processes agreeing: as one process
    _another_rank_read(monkeypatch, lambda v: None)
    res = CliRunner().invoke(cli, ["score", *common, "--out", str(tmp_path / "s.csv"), str(ood_dir)])
    assert res.exit_code == 0 and (tmp_path / "s.csv").is_file(), res.output


def _command_with_own_flags_in_process(rank: int, port: int, out: str, args: list) -> None:
    """One of two processes started by hand with the torchrun variables (as two nodes' torchruns
    start theirs), each running the command line ``args[rank]`` (its own)."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", str(rank)), ("LOCAL_RANK", str(rank)),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port)),
                        ("CLIP_SMOT_CACHE", str(Path(out, f"cache{rank}")))):
        os.environ[name] = value
    torch.set_num_threads(1)
    res = CliRunner().invoke(cli, args[rank])
    Path(out, f"{rank}.json").write_text(json.dumps({"code": res.exit_code, "output": res.output,
                                                     "exception": type(res.exception).__name__}))


@pytest.mark.parametrize("flag, values", [("--batch-size", ("4", "3")), ("--scores", ("mcm", "mcm,odin"))])
def test_processes_given_other_options_write_every_row_or_all_stop_in_one_line(tmp_path, setup, tiny_clip_checkpoint,
                                                                               flag, values):
    """Two processes whose command lines differ in one option (two nodes' torchruns given other
    flags). With --batch-size 4 and 3, 19 images: rank 0 took batches 0-1 of its 5 of 4 (images
    1-8), rank 1 batches 3-6 of its 7 of 3 (images 10-19); image 9 had no row, exit 0. With
    --scores mcm,odin on rank 1 alone, its ODIN share's gather met rank 0's check of the next
    chunk: a TypeError traceback on rank 1 ("cannot unpack non-iterable bool object"), and on
    rank 0 "PATHS: the processes found other numbers of images (a folder changed ...)" or
    "another of the 2 processes stopped". Every image must have its row once, or every process
    stop with one line naming the option."""
    import socket

    prompt, id_dir, ood_dir = setup
    out = tmp_path / "s.csv"
    options = {"--batch-size": "4", "--scores": "mcm"}
    args = [["score", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--workers", "0", "--device",
             "cpu", "--out", str(out), *(x for k, v in {**options, flag: value}.items() for x in (k, v)),
             str(id_dir), str(ood_dir)] for value in values]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_command_with_own_flags_in_process, args=(port, str(tmp_path), args), nprocs=2)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    images = sorted(str(p) for d in (id_dir, ood_dir) for p in d.rglob("*") if p.is_file())
    assert len(images) == 19
    if all(r["code"] == 0 for r in results):
        assert sorted(row["path"] for row in read_csv(out)) == images
        return
    for r in results:  # (each its own line, naming the option; no traceback)
        assert r["code"] == 1 and r["exception"] == "SystemExit", r
        assert len(r["output"].splitlines()) == 1 and r["output"].startswith("Error: ") and flag in r["output"], r


def test_eval_processes_given_other_batch_sizes_give_the_metrics_or_all_stop_in_one_line(tmp_path, setup,
                                                                                         tiny_clip_checkpoint):
    """eval under two processes whose --batch-size differ (4 on rank 0, 3 on rank 1): the ID set's
    12 images shared by each one's own batches (rank 0 batch 0 of its 3 of 4, images 1-4; rank 1
    batches 2-3 of its 4 of 3, images 7-12) gave the features of 10 images for 12 labels: both
    ended in numpy's "operands could not be broadcast together with shapes (10,) (12,)"
    traceback (evaluate.py, _summary). The metrics of all 12 + 7 images, or one line naming
    --batch-size on each."""
    import socket

    prompt, id_dir, ood_dir = setup
    args = [["eval", "--prompt", str(prompt), "--pretrained", tiny_clip_checkpoint, "--id", str(id_dir), "--ood",
             f"noise={ood_dir}", "--workers", "0", "--device", "cpu", "--batch-size", size, "--out",
             str(tmp_path / "e")] for size in ("4", "3")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_command_with_own_flags_in_process, args=(port, str(tmp_path), args), nprocs=2)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    if all(r["code"] == 0 for r in results):
        assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n_images"] == {"id": 12, "noise": 7}
        return
    for r in results:
        assert r["code"] == 1 and r["exception"] == "SystemExit", r
        assert len(r["output"].splitlines()) == 1 and r["output"].startswith("Error: ") and "--batch-size" in r[
            "output"], r


def _train_with_own_flags_in_process(rank: int, port: int, out: str, args: list) -> None:
    """One of two processes started by hand with the torchrun variables, each training with its
    own command line ``args[rank]``, in a gloo group whose collectives give up after 30 s (not
    gloo's 30 minutes: the processes' own group is the one train uses, already started)."""
    import datetime

    for name, value in (("WORLD_SIZE", "2"), ("RANK", str(rank)), ("LOCAL_RANK", str(rank)),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        os.environ[name] = value
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    try:
        res = CliRunner().invoke(cli, args[rank])
    finally:
        torch.distributed.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps({"code": res.exit_code, "output": res.output,
                                                     "exception": type(res.exception).__name__}))


def test_train_processes_given_other_epochs_stop_in_one_line(tmp_path):
    """ResNet train under two processes whose --epochs differ (1 on rank 0, 2 on rank 1; two nodes'
    torchruns given other flags): rank 0 went on to the export while rank 1 started epoch 2,
    and both waited in collectives the other never joins (both still there 150 s later, gloo's
    timeout is 30 minutes; --batch-size 64 and 32 the same). One line naming --epochs on each."""
    import socket

    from clip_smot.common.digits import ensure_digits

    ensure_digits(32)  # (written once, before the processes start: neither waits for the other's)
    args = [["train", "--dataset", "digits", "--arch", "resnet_tiny", "--device", "cpu", "--workers", "0",
             "--batch-size", "64", "--epochs", epochs, "--out", str(tmp_path / "run")] for epochs in ("1", "2")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_train_with_own_flags_in_process, args=(port, str(tmp_path), args), nprocs=2)
    for r in (json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)):
        assert r["code"] == 1 and r["exception"] == "SystemExit", r
        assert r["output"].strip().splitlines()[-1].startswith("Error: ") and "--epochs" in r["output"], r
        assert "Traceback" not in r["output"], r


@pytest.mark.parametrize("flag, other, differs", [
    ("--batch-size", 128, True), ("--scores", "mcm,odin", True), ("--precision", "fp32", True),
    ("--decode", "cpu", True), ("--skip-unreadable", True, True), ("--resume", True, True),
    # may differ (docs/score.md): how each process works, and what names files, compared by what they hold
    ("--device", "cuda:1", False), ("--workers", 0, False), ("--no-cache", False, False), ("--model", "RN50", False),
    ("--pretrained", "other.pt", False), ("--prompt", "q.safetensors", False), ("--out", "other.csv", False)])
def test_same_options_on_every_rank_compares_all_but_the_per_process_options(monkeypatch, flag, other, differs):
    """score's options as two processes hold them, the other process's one option set to ``other``:
    a UserError naming the flag and each process's value, or nothing for the options each process
    may have of its own."""
    from clip_smot.clip.score import ScoreConfig

    cfg = ScoreConfig(prompt="p.safetensors", paths=("a",), out="o.csv")
    _another_rank_read(monkeypatch, lambda v: {**v, flag: other})
    if not differs:
        distributed.same_options_on_every_rank(cfg)
        return
    mine = {"--batch-size": 256, "--scores": "'mcm'", "--precision": "'auto'", "--decode": "'auto'",
            "--skip-unreadable": False, "--resume": False}[flag]
    with pytest.raises(UserError, match=f"^{flag}: the 2 processes were given other values \\({mine} in process 0, "
                                        f"{other!r} in process 1\\)"):
        distributed.same_options_on_every_rank(cfg)


def test_same_options_on_every_rank_compares_the_extra_flags_and_lets_ood_differ(monkeypatch):
    """train's --resume and --dry-run, given as keywords, are compared as the options are; eval's --ood
    (its folders, which each process lists itself) may differ."""
    from clip_smot.clip.evaluate import ClipEvalConfig

    cfg = ClipEvalConfig(id_data="id", ood={"noise": "ood"}, out="e")
    _another_rank_read(monkeypatch, lambda v: {**v, "--ood": {"noise": "elsewhere"}})
    distributed.same_options_on_every_rank(cfg)
    _another_rank_read(monkeypatch, lambda v: {**v, "--dry-run": False})
    with pytest.raises(UserError, match="^--dry-run: the 2 processes were given other values \\(True in process 0, "
                                        "False in process 1\\)"):
        distributed.same_options_on_every_rank(cfg, dry_run=True)
