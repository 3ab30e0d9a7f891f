"""clip_smot.common.files: a failed write (full disk, unwritable folder) is one line and keeps the old file."""

import errno
import json
import os
import re
import stat
import warnings
from collections import namedtuple

import pytest

import clip_smot.common.file_kinds as file_kinds
import clip_smot.common.files as files
import clip_smot.common.locks as locks
from clip_smot.common.errors import UserError
from clip_smot.common.files import (
    atomic_save,
    atomic_write_text,
    check_output_folder,
    make_folder,
)

_Usage = namedtuple("_Usage", "total used free")


def _open_fds() -> list[str]:
    """This process's open file descriptors (Linux's /proc/self/fd, macOS's /dev/fd)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(folder):
            return sorted(os.listdir(folder))
    pytest.skip("no /proc/self/fd or /dev/fd to list open descriptors (not Linux or macOS)")


def _plenty_of_space(monkeypatch):  # (this machine's disk may be nearly full itself)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: _Usage(1 << 40, 0, 1 << 40))


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_file_stays(tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError('... unexpected pos ...') after writing part
    of the file (measured on a 64 KiB tmpfs); it came out as a traceback."""
    path = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1}, path)
    before = path.read_bytes()

    def half_then_fail(obj, f):
        open(f, "wb").write(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(files.torch, "save", half_then_fail)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: _Usage(1 << 16, 1 << 16, 0))
    with pytest.raises(UserError) as e:
        atomic_save({"epoch": 2}, path)
    assert str(e.value) == f"cannot write {path}: no space left on the device; the file there before is unchanged"
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left


def test_a_system_error_keeps_its_reason_where_the_disk_reports_no_free_space(tmp_path, monkeypatch):
    """/proc, /sys and read-only mounts report 0 bytes free: a permission error there was named
    'no space left on the device'. An OSError's own reason stands; only the writers' other
    errors (torch.save's RuntimeError) are read as a full disk."""
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: _Usage(0, 0, 0))

    def denied(obj, f):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.torch, "save", denied)
    with pytest.raises(UserError) as e:
        atomic_save({"epoch": 2}, tmp_path / "x.pt")
    assert str(e.value) == f"cannot write {tmp_path / 'x.pt'}: Permission denied"


@pytest.mark.parametrize("error,reason", [
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
    (ValueError("not serialisable"), "ValueError: not serialisable"),  # (the writer's own error, as one line)
])
def test_other_write_errors_name_the_file_and_the_reason(tmp_path, monkeypatch, error, reason):
    _plenty_of_space(monkeypatch)

    def fail(tmp):
        raise error

    with pytest.raises(UserError) as e:
        files.atomic_write(tmp_path / "new.txt", fail)
    assert str(e.value) == f"cannot write {tmp_path / 'new.txt'}: {reason}"
    assert os.listdir(tmp_path) == []


def test_a_file_in_place_of_a_folder(tmp_path, monkeypatch):
    _plenty_of_space(monkeypatch)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"cannot write .*blocker/run/metrics.csv: Not a directory"):
        atomic_write_text("a,b\n", blocker / "run" / "metrics.csv")
    with pytest.raises(UserError, match=r"^--out .*blocker: is a file, not a folder$"):
        make_folder(blocker)
    with pytest.raises(UserError, match=r"^--out .*blocker/run: cannot create the folder \(Not a directory\)$"):
        make_folder(blocker / "run")
    with pytest.raises(UserError, match=r"^--out .*blocker: is a file, not a folder$"):
        check_output_folder(blocker)  # eval checks its --out before the slow work
    assert blocker.read_text() == "x"


def test_keyboard_interrupt_is_not_turned_into_a_write_error(tmp_path):
    def ctrl_c(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(tmp_path / "f.txt", ctrl_c)
    assert os.listdir(tmp_path) == []


def test_a_file_is_on_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """A checkpoint was renamed over the last one without an fsync: after a power loss the new
    name could hold an empty file (delayed allocation) where the whole old one was. Each file's
    temporary is flushed before any rename; a flush that fails leaves the old file and no temporary."""
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), fsync(fd))[1])
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append(("replace", os.stat(a).st_ino)),
                                                           replace(a, b))[1])
    files.atomic_write_files(tmp_path, {"a.pt": lambda t: open(t, "wb").write(b"a"),
                                        "b.txt": lambda t: open(t, "wb").write(b"b")})
    a, b = (tmp_path / "a.pt").stat().st_ino, (tmp_path / "b.txt").stat().st_ino
    assert events == [("fsync", a), ("fsync", b), ("replace", a), ("replace", b), ("fsync", tmp_path.stat().st_ino)]

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", failing)
    with pytest.raises(UserError) as e:
        atomic_save({"epoch": 2}, tmp_path / "a.pt")
    assert str(e.value) == f"cannot write {tmp_path / 'a.pt'}: Input/output error; the file there before is unchanged"
    assert (tmp_path / "a.pt").read_bytes() == b"a" and sorted(os.listdir(tmp_path)) == ["a.pt", "b.txt"]


def _record_syncs(monkeypatch, events):
    """os.fsync and os.replace patched to append ("fsync", "folder" or a file's name) and
    ("replace", the name renamed to) to ``events``."""
    fsync, replace = os.fsync, os.replace

    def synced(fd):
        st = os.fstat(fd)
        events.append(("fsync", "folder" if stat.S_ISDIR(st.st_mode) else st.st_ino))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))), replace(a, b))[1])


def test_a_rename_is_on_the_disk_once_written(tmp_path, monkeypatch):
    """A file's bytes were flushed before its rename, but not the rename (its folder's entry):
    after a power loss the name could hold the old file again (the checkpoint of an epoch
    before, a log line it does not vouch for), or none. The folder is flushed after the renames,
    and with ``last`` before its rename too (the others first: the folder holds metrics.json
    only with every file of it); an earlier run's leftover removed is flushed as gone."""
    events = []
    _record_syncs(monkeypatch, events)
    files.atomic_write(tmp_path / "a.pt", lambda t: open(t, "wb").write(b"a"))
    assert [e for e in events if e[0] == "replace" or e[1] == "folder"] == [("replace", "a.pt"), ("fsync", "folder")]
    (tmp_path / "old.json").write_text("{}")
    events.clear()
    files.atomic_write_files(tmp_path, {"b.txt": files.text_writer("b"), "metrics.json": files.text_writer("{}"),
                                        "c.txt": files.text_writer("c")}, leftovers=("old.json",), last="metrics.json")
    assert [e for e in events if e[0] == "replace" or e[1] == "folder"] == [
        ("replace", "b.txt"), ("replace", "c.txt"), ("fsync", "folder"), ("replace", "metrics.json"),
        ("fsync", "folder"), ("fsync", "folder")]
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.txt", "c.txt", "metrics.json"]
    # written again over that set: the earlier metrics.json is moved aside (a temporary name) and
    # that flushed before the first rename; a set of one file (nothing to mix) is renamed over it
    events.clear()
    files.atomic_write_files(tmp_path, {"b.txt": files.text_writer("b2"), "metrics.json": files.text_writer("[]"),
                                        "c.txt": files.text_writer("c2")}, last="metrics.json")
    named = [(e[0], "aside" if re.fullmatch(r"\.metrics\.json\..+\.tmp", e[1]) else e[1]) for e in events
             if e[0] == "replace" or e[1] == "folder"]
    assert named == [("replace", "aside"), ("fsync", "folder"), ("replace", "b.txt"), ("replace", "c.txt"),
                     ("fsync", "folder"), ("replace", "metrics.json"), ("fsync", "folder")]
    events.clear()
    files.atomic_write_files(tmp_path, {"metrics.json": files.text_writer("{}")}, last="metrics.json")
    assert [e for e in events if e[0] == "replace" or e[1] == "folder"] == [("replace", "metrics.json"),
                                                                           ("fsync", "folder")]
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.txt", "c.txt", "metrics.json"]


def test_a_folder_made_for_an_output_is_on_the_disk_with_it(tmp_path, monkeypatch):
    """A file written into folders made for it (--out runs/new/s.csv, a new run folder) was
    flushed, its rename too, but not the new folders' entries: after a power loss the folder
    could be gone, and the file with it. Each folder made is flushed into its parent."""
    folders, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (folders.append(os.fstat(fd).st_ino)
                                                 if stat.S_ISDIR(os.fstat(fd).st_mode) else None, fsync(fd))[1])
    files.atomic_write_text("a", tmp_path / "runs" / "new" / "s.csv")
    files.make_folder(tmp_path / "fit" / "run")
    ino = {name: (tmp_path / name).stat().st_ino for name in (".", "runs", "runs/new", "fit", "fit/run")}
    assert sorted(folders) == sorted([ino["."], ino["runs"], ino["runs/new"], ino["."], ino["fit"]])
    folders.clear()
    files.make_folder(tmp_path / "fit" / "run")  # (made already: nothing to flush)
    assert folders == []


def test_a_folder_that_cannot_be_opened_or_flushed_is_skipped_quietly(tmp_path, monkeypatch):
    """Windows opens no folder (PermissionError), and some file systems flush none (EINVAL) or fail
    its close: the files are written and renamed as before, with no error."""
    real_open = os.open

    def no_folders(path, flags, *a):
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", no_folders)
    files.atomic_write_text("a", tmp_path / "a.txt")
    monkeypatch.setattr(os, "open", real_open)
    fsync = os.fsync

    def no_folder_sync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", no_folder_sync)
    files.atomic_write_text("b", tmp_path / "b.txt")
    monkeypatch.setattr(os, "fsync", fsync)
    close = os.close

    def folder_close_fails(fd):  # (the faults helper's injected EIO: it was a traceback after the rename)
        is_folder = stat.S_ISDIR(os.fstat(fd).st_mode)
        close(fd)
        if is_folder:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "close", folder_close_fails)
    files.atomic_write_text("c", tmp_path / "c.txt")
    monkeypatch.setattr(os, "close", close)
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt", "c.txt")] == ["a", "b", "c"]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt", "c.txt"]


def test_safetensors_files_are_the_same_bytes_for_the_same_contents(tmp_path):
    """safetensors writes its metadata in a hash map's order, which changed from one save to the
    next: an exported prompt or model differed byte for byte from its twin (checksums disagreed)."""
    import json

    import torch
    from safetensors.torch import load_file, safe_open

    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2), "idx": torch.arange(3)}
    meta = {k: k * 3 for k in "qwertyuiop"} | {"classnames": json.dumps(["café", "naïve \"x\""], ensure_ascii=False)}
    blobs = []
    for i in range(6):
        files.atomic_save_safetensors(tensors, tmp_path / f"{i}.safetensors", meta)
        blobs.append((tmp_path / f"{i}.safetensors").read_bytes())
    assert all(b == blobs[0] for b in blobs)
    n = int.from_bytes(blobs[0][:8], "little")
    assert list(json.loads(blobs[0][8 : 8 + n])["__metadata__"]) == sorted(meta)
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == meta
    loaded = load_file(str(tmp_path / "0.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_text_files_are_utf8_whatever_the_locale(tmp_path):
    """split.txt, the score CSV and metrics are UTF-8, and list files are read as UTF-8, also under
    an ASCII locale (there a class folder '猫' or 'café' was an encode error)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from pathlib import Path; from clip_smot.common.files import atomic_write_text; "
            "from clip_smot.common.images import text_lines; p = Path(sys.argv[1]); "
            "atomic_write_text('\\u732b/0.png\\t0\\ncaf\\u00e9/1.png\\t1\\n', p); "  # (argv is ASCII there too)
            "print(ascii(''.join(line + '\\n' for line in text_lines(p, '--split', 'x'))))")
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "split.txt")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ascii("猫/0.png\t0\ncafé/1.png\t1\n")
    assert (tmp_path / "split.txt").read_bytes() == "猫/0.png\t0\ncafé/1.png\t1\n".encode("utf-8")


def test_looking_at_a_name_too_long_is_a_user_error_naming_the_flag(tmp_path):
    """pathlib's exists()/is_file()/is_dir() raise OSError for a name over the file system's limit
    (Python 3.11): the helpers answer as pathlib does otherwise, and name the flag for that."""
    from clip_smot.clip.fewshot import resolve_train_root
    from clip_smot.common.files import exists, is_file, is_folder

    (tmp_path / "f.txt").write_text("x")
    assert exists(tmp_path, "--x") and is_folder(tmp_path, "--x") and not is_file(tmp_path, "--x")
    assert is_file(tmp_path / "f.txt", "--x") and not is_folder(tmp_path / "f.txt", "--x")
    for nothing in (tmp_path / "missing", tmp_path / "f.txt" / "below", tmp_path / "a\0b"):
        assert not exists(nothing, "--x") and not is_file(nothing, "--x") and not is_folder(nothing, "--x")
    long = tmp_path / ("a" * 300)
    for check in (exists, is_file, is_folder):
        with pytest.raises(UserError, match=rf"^--x {long}: File name too long$"):
            check(long, "--x")
    with pytest.raises(UserError, match=rf"^--data {long}: File name too long$"):  # fit --data
        resolve_train_root(long)


def test_parse_json_reads_json_and_calls_too_deep_nesting_a_decode_error():
    import json

    from clip_smot.common.files import parse_json

    assert parse_json('{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]} and parse_json(b"[[1]]") == [[1]]
    for text in ("[" * 100_000 + "]" * 100_000, b"{" + b'"a":{' * 100_000):
        with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
            parse_json(text)


def test_a_json_file_is_read_up_to_its_limit_only(tmp_path):
    """A --model config, a stage record, a report: read whole with read_text, a sparse file of
    5 GB (made in no time, holding nothing) was a MemoryError traceback or gigabytes of memory.
    read_json reads one byte past its limit and stops."""
    from clip_smot.common.files import read_json

    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
    with open(tmp_path / "huge.json", "wb") as f:
        f.write(b'{"a": "')
        f.truncate(5 << 30)  # (sparse: no disk, no memory)
    with pytest.raises(ValueError, match=r"^larger than 1048576 bytes, more than such a file holds$"):
        read_json(tmp_path / "huge.json")
    (tmp_path / "latin.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(UnicodeDecodeError):
        read_json(tmp_path / "latin.json")


def test_a_json_file_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    """A FIFO at a JSON file's name (the bundled digits' digits.json in the cache, a run's
    summary.json) blocked its reader for ever: train --dataset digits hung at its start."""
    import threading

    from clip_smot.common.files import read_json

    fifo = tmp_path / "digits.json"
    os.mkfifo(fifo)
    raised = []

    def read():
        try:
            read_json(fifo)
        except ValueError as e:
            raised.append(str(e))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # (waiting on the FIFO: a writer that opens and closes it ends the wait)
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("read_json waited on a FIFO")
    assert raised == ["not a regular file (a FIFO or a device)"]


def test_a_huge_model_config_is_one_line(tmp_path):
    """score/eval/fit --model CONFIG.json of 5 GB (sparse): a MemoryError traceback."""
    from clip_smot.clip.model import load_clip

    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(5 << 30)
    with pytest.raises(UserError, match=rf"^--model {path}: not a valid JSON model config \(larger than 1048576 bytes"):
        load_clip(str(path), None)


def test_an_output_lock_refuses_a_second_writer_and_is_gone_after_the_first(tmp_path):
    """Two commands writing one --out both ran to the end (a CSV without its header, a run
    folder holding two runs' epochs); the second is now refused while the first writes."""
    import subprocess
    import sys

    out = tmp_path / "deep" / "er" / "s.csv"
    lock = tmp_path / "deep" / "er" / ".s.csv.lock"
    lock.parent.mkdir(parents=True)
    busy = rf"^--out {out}: another clip-smot command is writing it now; wait for it to end, or choose another --out$"
    with locks.output_lock(out):
        assert lock.is_file() and lock.stat().st_size == 0
        with pytest.raises(UserError, match=busy):
            with locks.output_lock(out):
                pass
        # another process too (flock locks are the open file's: the kernel drops a dead process's)
        code = "import sys; from clip_smot.common.locks import output_lock\nwith output_lock(sys.argv[1]): pass"
        p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
        assert p.returncode == 1 and "another clip-smot command is writing it now" in p.stderr
        with locks.output_lock(tmp_path / "deep" / "er" / "other.csv"):  # (another output's lock is its own)
            pass
    assert not lock.exists()
    lock.write_bytes(b"")  # left by a command that was killed: taken over, then removed
    with locks.output_lock(out):
        pass
    assert not lock.exists() and sorted(os.listdir(lock.parent)) == []


def test_a_run_folder_is_locked_itself_and_nothing_is_written_beside_it(tmp_path, monkeypatch):
    """The lock of a run folder was a file beside it: a writable --out under a read-only folder
    (a cluster's /scratch/$USER, a volume mounted for another user) could not be run at all.
    The folder itself is locked now, through a link to it too; a refused command leaves the
    folder it did not make to its holder."""
    run, link = tmp_path / "parent" / "run", tmp_path / "link"
    with locks.output_lock(run, folder=True):
        assert run.is_dir() and os.listdir(tmp_path / "parent") == ["run"] and os.listdir(run) == []
        link.symlink_to(run)
        for spelling in (run, link, tmp_path / "parent" / "." / "run"):
            with pytest.raises(UserError, match="another clip-smot command is writing it now"):
                with locks.output_lock(spelling, folder=True):
                    pass
        assert run.is_dir()  # (not removed by the refused commands: it is the holder's)
        (run / "log.jsonl").write_text("")
    assert sorted(os.listdir(tmp_path)) == ["link", "parent"] and os.listdir(run) == ["log.jsonl"]
    with locks.output_lock(tmp_path / "empty", folder=True):  # (made for the lock, left empty: removed)
        pass
    assert not (tmp_path / "empty").exists()
    monkeypatch.chdir(tmp_path)  # a folder that cannot be made is named as given, relative too
    (tmp_path / "f").write_text("a file")
    with pytest.raises(UserError, match=r"^--out f/x: cannot create the folder \(Not a directory\)$"):
        with locks.output_lock("f/x", folder=True):
            pass


def test_an_output_lock_never_removes_what_is_not_its_own(tmp_path):
    out = tmp_path / "run.csv"
    lock = tmp_path / ".run.csv.lock"
    lock.write_bytes(b"a user's file")  # (or an input named so)
    with pytest.raises(UserError, match=rf"^--out {out}: {lock}, the name of its lock file, holds something else"):
        with locks.output_lock(out):
            pass
    assert lock.read_bytes() == b"a user's file"
    lock.write_bytes(b"x")  # (one byte is no lock file of ours either)
    with pytest.raises(UserError, match="the name of its lock file, holds something else"):
        with locks.output_lock(out):
            pass
    assert lock.read_bytes() == b"x"
    lock.unlink()
    (tmp_path / "victim").write_bytes(b"")
    lock.symlink_to(tmp_path / "victim")  # (a link is not followed: the command goes on unlocked, the victim as it was)
    with locks.output_lock(out):
        pass
    assert (tmp_path / "victim").exists() and lock.is_symlink()


def test_the_folders_made_for_a_lock_go_when_nothing_was_written_there(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError):
        with locks.output_lock(out):
            assert (tmp_path / "a" / "b").is_dir()
            raise RuntimeError("refused after the lock was taken")
    assert not (tmp_path / "a").exists()
    with locks.output_lock(out):
        out.mkdir()  # (the command wrote its run folder: kept, with the folders above it)
    assert out.is_dir() and sorted(os.listdir(out.parent)) == ["run"]


def test_a_file_system_without_locks_leaves_the_output_unlocked(tmp_path, monkeypatch):
    """flock fails with ENOLCK on some NFS mounts, ENOSYS on Lustre without flock: that is no
    other command writing, so the command goes on, and leaves no lock file (it was refused as
    'another clip-smot command is writing it now', its lock file left behind)."""
    import fcntl

    for code in (errno.ENOLCK, errno.ENOSYS):
        def no_locks(fd, op, code=code):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(fcntl, "flock", no_locks)
        with locks.output_lock(tmp_path / "s.csv"):
            assert not (tmp_path / ".s.csv.lock").exists()  # (no lock file while it runs unlocked either)
            (tmp_path / "s.csv").write_text("rows")
        with locks.output_lock(tmp_path / "run", folder=True):
            (tmp_path / "run" / "log.jsonl").write_text("")
        assert sorted(os.listdir(tmp_path)) == ["run", "s.csv"]
    # a run folder that cannot be opened to be locked (EACCES: root reads any, so it is faked)
    real_open, shut = os.open, tmp_path / "shut"

    def refused(path, *args, **kwargs):
        if os.fspath(path) == os.fspath(shut):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with locks.output_lock(shut, folder=True):
        (shut / "log.jsonl").write_text("")
    assert sorted(os.listdir(tmp_path)) == ["run", "s.csv", "shut"]


def test_files_written_as_one_leave_no_temporary_file_and_only_the_old_leftovers_go(tmp_path):
    """atomic_write_files: a writer that fails leaves the folder as it was (the files already
    filled are not renamed, their temporaries are removed); a success deletes the leftovers it
    did not write now, and no other file."""
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    (tmp_path / "mine.txt").write_text("mine")

    def fails(tmp):
        raise ValueError("the second writer fails")

    with pytest.raises(UserError, match=r"b.txt: ValueError: the second writer fails; the file there before is unchanged$"):
        files.atomic_write_files(tmp_path, {"a.txt": files.text_writer("new a"), "b.txt": fails})
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "old a", "b.txt": "old b",
                                                                   "mine.txt": "mine"}
    files.atomic_write_files(tmp_path, {"a.txt": files.text_writer("new a")}, leftovers=("a.txt", "b.txt"))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "new a", "mine.txt": "mine"}


def test_a_rename_that_fails_is_one_line_naming_the_file_and_the_old_file_stays(tmp_path, monkeypatch):
    """The final rename refused (EACCES, EXDEV): an error naming the file, not a return as if it
    were written; the old file stays and no temporary file is left."""
    path = tmp_path / "a.txt"
    path.write_text("old")

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(UserError) as e:
        atomic_write_text("new", path)
    assert str(e.value) == f"cannot write {path}: Permission denied; the file there before is unchanged"
    assert os.listdir(tmp_path) == ["a.txt"] and path.read_text() == "old"


def test_files_written_as_one_where_one_name_is_a_folder_rename_none(tmp_path):
    """A folder where one of the files goes (an evaluation's scores_hist.png): its rename failed
    after the renames before it, so metrics.csv and the rest were new beside an error saying the
    file there before was unchanged. It is found before any rename; a link there is replaced."""
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").mkdir()
    writers = {"a.txt": files.text_writer("new a"), "b.txt": files.text_writer("new b")}
    with pytest.raises(UserError, match=r"^cannot write .*b.txt: Is a directory"):
        files.atomic_write_files(tmp_path, writers)
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]  # (no temporary file either)
    assert (tmp_path / "a.txt").read_text() == "old a" and (tmp_path / "b.txt").is_dir()
    (tmp_path / "b.txt").rmdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "b.txt").symlink_to("d")
    files.atomic_write_files(tmp_path, writers)
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"
    assert not (tmp_path / "b.txt").is_symlink() and os.listdir(tmp_path / "d") == []


@pytest.mark.parametrize("failing_rename", [1, 2, 3])
def test_files_written_as_one_where_a_later_rename_fails_are_not_a_mixed_set(tmp_path, monkeypatch, failing_rename):
    """The second rename of an evaluation's files failed (EIO of a failing disk): metrics.csv was
    the new run's, metrics.md and the rest the old run's, and the old metrics.json, the file
    whose presence says the set is whole, was still there, under an error saying the file there
    before was unchanged. Now a failing first rename leaves the old set whole (its metrics.json,
    moved aside, is put back); a later one leaves no metrics.json, and the line says so."""
    old = {"metrics.csv": "old csv", "metrics.md": "old md", "metrics.json": "{}"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    replace, renames = os.replace, []

    def failing(src, dst):
        if os.path.basename(dst).startswith(".") or len(renames) == failing_rename:  # (moved aside; put back)
            return replace(src, dst)
        renames.append(os.path.basename(dst))
        if len(renames) == failing_rename:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing)
    writers = {name: files.text_writer(f"new {name}") for name in old}
    with pytest.raises(UserError, match=r"^cannot write .*/metrics\.(csv|md|json): Input/output error") as e:
        files.atomic_write_files(tmp_path, writers, last="metrics.json")
    assert renames == ["metrics.csv", "metrics.md", "metrics.json"][:failing_rename]
    kept = {p.name: p.read_text() for p in tmp_path.iterdir()}  # (no temporary file left either)
    if failing_rename == 1:
        assert kept == old and "whole" not in str(e.value)
    else:
        assert kept == {"metrics.csv": "new metrics.csv", "metrics.md": "new metrics.md" if failing_rename == 3
                        else "old md"}
        assert str(e.value).endswith("written already: the folder holds no whole set of its files now "
                                     "(and no metrics.json)"), str(e.value)


@pytest.mark.parametrize("fails", ["mkstemp", "replace"])
def test_files_written_as_one_whose_last_cannot_be_moved_aside_leave_the_old_set(tmp_path, monkeypatch, fails):
    """The earlier metrics.json is moved aside (a new temporary name, then a rename) before the
    first rename of a set: where that fails (EIO), before any file is renamed, the old set is
    left whole, no temporary file with it, and the line names metrics.json."""
    old = {"metrics.csv": "old csv", "metrics.json": "{}"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    mkstemp, replace, made = files.tempfile.mkstemp, os.replace, []

    def failing_mkstemp(*args, **kwargs):
        made.append(kwargs.get("prefix"))
        if fails == "mkstemp" and len(made) == 3:  # (after the two temporaries written)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return mkstemp(*args, **kwargs)

    def failing_replace(src, dst):
        if fails == "replace" and os.path.basename(dst).startswith(".metrics.json."):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return replace(src, dst)

    monkeypatch.setattr(files.tempfile, "mkstemp", failing_mkstemp)
    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(UserError) as e:
        files.atomic_write_files(tmp_path, {name: files.text_writer(f"new {name}") for name in old},
                                 last="metrics.json")
    assert made == [".metrics.csv.", ".metrics.json.", ".metrics.json."]
    assert str(e.value) == (f"cannot write {tmp_path / 'metrics.json'}: Input/output error; "
                            "the file there before is unchanged")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == old


@pytest.mark.parametrize("when", ["first rename", "flush of the move aside"])
def test_files_written_as_one_interrupted_before_the_first_rename_leave_the_old_set(tmp_path, monkeypatch, when):
    """Ctrl-C (KeyboardInterrupt) as the earlier metrics.json has just been moved aside, before any
    new file is renamed: at the first rename, or while the move aside is flushed (fsync of the
    folder, milliseconds on a real disk). Nothing new is in the folder yet, so the old set is
    whole again, metrics.json with it, as where that rename fails with an OSError; it was left
    without metrics.json (removed with the temporaries, or left under a temporary name)."""
    old = {"metrics.csv": "old csv", "metrics.json": "{}"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    replace, fsync_folder = os.replace, files.fsync_folder

    def interrupted_replace(src, dst):
        if when == "first rename" and os.path.basename(dst) == "metrics.csv":
            raise KeyboardInterrupt
        return replace(src, dst)

    def interrupted_flush(folder):
        if when == "flush of the move aside" and any(p.name.startswith(".metrics.json.") and
                                                     not (tmp_path / "metrics.json").exists()
                                                     for p in tmp_path.iterdir()):
            raise KeyboardInterrupt
        return fsync_folder(folder)

    monkeypatch.setattr(files.os, "replace", interrupted_replace)
    monkeypatch.setattr(files, "fsync_folder", interrupted_flush)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_files(tmp_path, {name: files.text_writer(f"new {name}") for name in old},
                                 last="metrics.json")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == old


def test_a_folder_of_a_leftovers_name_is_left_after_the_files_are_written(tmp_path):
    """A folder config.json in the folder of a ResNet evaluation (which writes none, and removes
    an earlier one) was an IsADirectoryError traceback once every file had been written."""
    (tmp_path / "b.txt").mkdir()
    files.atomic_write_files(tmp_path, {"a.txt": files.text_writer("new a")}, leftovers=("a.txt", "b.txt", "c.txt"))
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]  # (c.txt, never written, is no failure either)


def test_a_leftover_that_cannot_be_removed_is_one_line_naming_it(tmp_path, monkeypatch):
    """An earlier run's config.json that cannot be removed once a ResNet evaluation's files are all
    written (unlink(2) failing EIO, injected in a real eval --checkpoint; EPERM of an immutable
    file; EROFS, which Linux returns before it looks the name up) was an OSError traceback, exit 1.
    A UserError naming it, the new files in place: the folder is no whole set of one run. With
    two kept (b.txt, c.txt), the first is named, and those after them (d.txt) are removed still."""
    real_unlink = os.unlink
    for code in (errno.EIO, errno.EPERM, errno.EROFS):
        for name in ("b.txt", "c.txt", "d.txt"):
            (tmp_path / name).write_text("an earlier run's")

        def fails(path, *args, code=code, **kwargs):
            if os.fspath(path) in (os.fspath(tmp_path / "b.txt"), os.fspath(tmp_path / "c.txt")):
                raise OSError(code, os.strerror(code), os.fspath(path))
            return real_unlink(path, *args, **kwargs)

        monkeypatch.setattr(os, "unlink", fails)
        with pytest.raises(UserError) as e:
            files.atomic_write_files(tmp_path, {"a.txt": files.text_writer("new a")},
                                     leftovers=("a.txt", "b.txt", "c.txt", "d.txt"))
        assert str(e.value) == (f"cannot remove {tmp_path / 'b.txt'}, an earlier run's file ({os.strerror(code)}); "
                                f"the other files of {tmp_path} are this run's")
        assert (tmp_path / "a.txt").read_text() == "new a"
        assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt", "c.txt"]  # (no temporary file left)


def test_a_write_keeps_the_umask_and_no_descriptor_open(tmp_path):
    """Reading the umask sets it: a write leaves it as it was (umask 027: the next file is 0640,
    not 0666), and the descriptors it opened (mkstemp's, the flush's) are closed."""
    old = os.umask(0o027)
    try:
        before = _open_fds()
        atomic_write_text("x", tmp_path / "a.txt")
        atomic_write_text("y", tmp_path / "b.txt")
        assert _open_fds() == before
    finally:
        assert os.umask(old) == 0o027
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("a.txt", "b.txt")] == [0o640, 0o640]


def test_a_file_lock_makes_its_folder_and_excludes_another_open_file(tmp_path):
    """file_lock creates the lock file's folders, and holds an exclusive flock: another open file
    of the same lock cannot take it until the holder leaves."""
    import fcntl

    lock = tmp_path / "new" / "sub" / ".data.lock"
    with locks.file_lock(lock):
        fd = os.open(lock, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (released: taken at once)
    finally:
        os.close(fd)


def test_an_output_lock_closes_its_descriptors(tmp_path):
    """A command takes a lock per output (score's chunks, eval's folders): each lock's descriptor is
    closed when it is left, for a file and for a run folder."""
    before = _open_fds()
    for _ in range(3):
        with locks.output_lock(tmp_path / "s.csv"):
            pass
        with locks.output_lock(tmp_path / "run", folder=True):
            pass
    assert _open_fds() == before


def test_a_lock_file_that_cannot_be_removed_fails_no_command(tmp_path, monkeypatch):
    """The lock file is removed on the way out. Its unlink failing (EIO of a failing disk, EROFS of
    a file system remounted read-only, EACCES: injected into unlink(2) in a real score run) was
    an OSError traceback and exit 1 after score had renamed its whole CSV into place, the lock's
    descriptor left open. A lock file left behind is taken over by the next command (as one of
    a killed command is): the command succeeds, its descriptor closed."""
    real_unlink, lock = os.unlink, tmp_path / ".s.csv.lock"
    for code in (errno.EIO, errno.EROFS, errno.EACCES):
        def fails(path, *args, code=code, **kwargs):
            if os.fspath(path) == os.fspath(lock):
                raise OSError(code, os.strerror(code), os.fspath(path))
            return real_unlink(path, *args, **kwargs)

        monkeypatch.setattr(os, "unlink", fails)
        before = _open_fds()
        with locks.output_lock(tmp_path / "s.csv"):
            (tmp_path / "s.csv").write_text("rows")
        assert _open_fds() == before, code
        monkeypatch.setattr(os, "unlink", real_unlink)
        with locks.output_lock(tmp_path / "s.csv"):  # (the file left is taken over)
            pass
        assert sorted(os.listdir(tmp_path)) == ["s.csv"]


def test_a_lock_file_replaced_while_it_was_locked_is_opened_again(tmp_path, monkeypatch):
    """A holder that ends between our open and our flock removes the name we opened (a new command
    makes a new file there): the lock is taken again on the file now at the name, the stale
    descriptor closed; a name replaced three times running is one line."""
    out, lock = tmp_path / "s.csv", tmp_path / ".s.csv.lock"
    real, replaced = locks._flock, []

    def flock_after_a_replacement(fd, flag, path, times):
        if len(replaced) < times:
            replaced.append(os.fstat(fd).st_ino)
            os.unlink(lock)
            lock.write_bytes(b"")  # (another command's new lock file; the inode we hold stays ours)
        return real(fd, flag, path)

    before = _open_fds()
    monkeypatch.setattr(locks, "_flock", lambda fd, flag, path: flock_after_a_replacement(fd, flag, path, 1))
    with locks.output_lock(out):
        assert lock.is_file() and lock.stat().st_ino != replaced[0]
        assert len(_open_fds()) == len(before) + 1  # (the lock's descriptor alone)
    assert not lock.exists() and _open_fds() == before
    replaced.clear()
    monkeypatch.setattr(locks, "_flock", lambda fd, flag, path: flock_after_a_replacement(fd, flag, path, 3))
    with pytest.raises(UserError, match=rf"^--out {out}: its lock file {lock} keeps being replaced; is another "
                                        r"command starting there\?$"):
        with locks.output_lock(out):
            pass
    assert len(replaced) == 3 and _open_fds() == before


def test_a_run_folder_replaced_while_it_was_locked_is_opened_again(tmp_path, monkeypatch):
    """A run folder renamed away between our open and our flock, another made at its name: the
    lock is taken again on the folder now at the name (a second command is refused there); a
    folder replaced three times running is one line, every descriptor closed."""
    run = tmp_path / "run"
    run.mkdir()
    real, replaced = locks._flock, []

    def flock_after_a_replacement(fd, flag, path, times):
        if len(replaced) < times:
            replaced.append(os.fstat(fd).st_ino)
            os.rename(run, tmp_path / f"old{len(replaced)}")
            run.mkdir()  # (another command's folder; the one we opened is elsewhere now)
        return real(fd, flag, path)

    before = _open_fds()
    monkeypatch.setattr(locks, "_flock", lambda fd, flag, path: flock_after_a_replacement(fd, flag, path, 2))
    with locks.output_lock(run, folder=True):
        assert len(replaced) == 2 and run.stat().st_ino not in replaced
        monkeypatch.setattr(locks, "_flock", real)
        with pytest.raises(UserError, match="another clip-smot command is writing it now"):
            with locks.output_lock(run, folder=True):
                pass
    assert _open_fds() == before
    replaced.clear()
    monkeypatch.setattr(locks, "_flock", lambda fd, flag, path: flock_after_a_replacement(fd, flag, path, 3))
    with pytest.raises(UserError, match=rf"^--out {run}: the folder keeps being replaced; is another command "
                                        r"starting there\?$"):
        with locks.output_lock(run, folder=True):
            pass
    assert len(replaced) == 3 and _open_fds() == before


def test_the_folders_made_again_for_a_lock_go_in_front_of_those_made_before(tmp_path, monkeypatch):
    """A run folder gone before its open, or before its flock, is made again with any parent gone
    with it; those folders go in front of the ones already made for the lock, deepest first and
    once each (they are removed in that order when left empty, and the first one that cannot be
    stops the removal)."""
    run, before = tmp_path / "p" / "run", tmp_path / "made-before"
    made = [before]
    held = locks._folder_held(run, "--out", made)
    next(held)
    try:
        assert run.is_dir() and made == [run, tmp_path / "p", before]
    finally:
        held.close()
    real = locks._flock

    def removed_before_the_flock(fd, flag, path):
        monkeypatch.setattr(locks, "_flock", real)
        os.rmdir(run)  # (its parent stays)
        return real(fd, flag, path)

    monkeypatch.setattr(locks, "_flock", removed_before_the_flock)
    made = [before]
    held = locks._folder_held(run, "--out", made)
    next(held)
    try:
        assert run.is_dir() and made == [run, before]
    finally:
        held.close()
    # a folder made for the lock already, removed and made again: listed once (twice, its second
    # removal failed and stopped the removal before the parent made for the lock with it)
    monkeypatch.setattr(locks, "_flock", removed_before_the_flock)
    made = [run, tmp_path / "p"]
    held = locks._folder_held(run, "--out", made)
    next(held)
    try:
        assert run.is_dir() and made == [run, tmp_path / "p"]
    finally:
        held.close()


def test_an_atomic_write_makes_its_folder(tmp_path):
    """A write into a folder not made yet makes it (with its parents)."""
    atomic_write_text("x", tmp_path / "new" / "sub" / "a.txt")
    assert (tmp_path / "new" / "sub" / "a.txt").read_text() == "x"


def test_a_file_of_its_own_name_may_be_written_into_a_run_folder(tmp_path):
    """Only the names of a run's own files are refused in a run folder (one holding checkpoint.pt):
    a score CSV of another name, or a command's own partial file, is written beside them."""
    (tmp_path / "checkpoint.pt").write_bytes(b"state")
    files.check_output(tmp_path / "scores.csv", "--out")
    files.check_output(tmp_path / "config.json.partial", "--out", own=True)
    with pytest.raises(UserError, match=rf"^--out {tmp_path / 'config.json'}: is the config.json of the run in "):
        files.check_output(tmp_path / "config.json", "--out")


@pytest.mark.parametrize("name", ["checkpoint.pt", "log.jsonl"])
def test_a_runs_lone_checkpoint_or_log_is_not_replaced(tmp_path, name):
    """A folder holding a run's checkpoint.pt (or log.jsonl) alone is a run: a file --out naming
    that very file (score --out RUN/checkpoint.pt) is refused, not written over the run's state."""
    (tmp_path / name).write_bytes(b"the run's state")
    with pytest.raises(UserError, match=rf"^--out {tmp_path / name}: is the {name} of the run in {tmp_path} "
                                        rf"\(it holds {name}\); writing there would mix"):
        files.check_output(tmp_path / name, "--out")
    assert (tmp_path / name).read_bytes() == b"the run's state"
    files.check_output(tmp_path / "scores.csv", "--out")  # (another name beside it is written)


def test_check_output_accepts_what_it_may_replace_and_refuses_the_rest(tmp_path):
    """An existing regular file may be replaced, a new or existing folder (with a final '/' too)
    written into, an output beside an input that is another file written; the input itself, a
    symbolic link, or another run's prompt.safetensors (export writes its own run's alone) not."""
    old, prompt = tmp_path / "old.csv", tmp_path / "p.safetensors"
    old.write_text("rows")
    prompt.write_bytes(b"prompt")
    files.check_output(old, "--out", inputs=[("--prompt file", prompt)])
    files.check_output_folder(tmp_path / "new")
    files.check_output_folder(f"{tmp_path / 'eval'}/")
    with pytest.raises(UserError, match=rf"^--out {prompt}: is the --prompt file itself; writing there would destroy it$"):
        files.check_output(prompt, "--out", inputs=[("--prompt file", prompt)])
    (tmp_path / "link.csv").symlink_to(old)
    with pytest.raises(UserError, match=rf"^--out {tmp_path / 'link.csv'}: is a symbolic link"):
        files.check_output(tmp_path / "link.csv", "--out")
    (tmp_path / "real").mkdir()
    (tmp_path / "folder_link").symlink_to(tmp_path / "real", target_is_directory=True)
    files.check_output_folder(tmp_path / "folder_link")  # (a folder --out may be a link: nothing renames onto it)
    (tmp_path / "s.csv.partial").symlink_to(old)
    files.check_output(tmp_path / "s.csv.partial", "--out", own=True)  # (a command's own name: replaced)
    # (an input folder not given, or not there: nothing of it is read)
    files.check_output(tmp_path / "gone" / "o.csv", "--out", folders=[("--data", None), ("--ood", tmp_path / "gone")])
    run, other = tmp_path / "run", tmp_path / "other"
    for folder in (run, other):
        folder.mkdir()
        (folder / "checkpoint.pt").write_bytes(b"state")
    files.check_output(run / "prompt.safetensors", "--out", run=run)
    with pytest.raises(UserError, match=r"is the prompt.safetensors of the run in "):
        files.check_output(other / "prompt.safetensors", "--out", run=run)
    (run / "log.jsonl").write_text("")
    with pytest.raises(UserError, match=r"is the checkpoint.pt of the run in .* \(it holds log.jsonl\)"):
        files.check_output(run / "checkpoint.pt", "--out", run=run)  # (export writes its run's prompt alone)


def test_a_file_descriptor_number_is_no_path(tmp_path):
    """file_key of an int is None: os.stat(1) would stat standard output, and two ints would be
    'the same file'."""
    assert files.file_key(1) is None and not files.same_file(1, 1)


def test_an_out_that_is_a_fifo_or_a_device_is_refused(tmp_path):
    """The finished file is renamed onto --out: a FIFO or /dev/null there would be replaced."""
    os.mkfifo(tmp_path / "pipe")
    for out in (tmp_path / "pipe", "/dev/null"):
        with pytest.raises(UserError, match=rf"^--out {out}: is a device, FIFO or socket, not a file$"):
            files.check_output(out, "--out")


def test_a_written_file_has_an_ordinary_files_mode(tmp_path):
    """mkstemp makes the temporary file 0600: the result is 0666 less the umask, as open() makes."""
    old = os.umask(0o022)
    try:
        atomic_write_text("x", tmp_path / "out.txt")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644


def test_an_output_beside_an_input_folder_or_inside_it_through_a_link(tmp_path):
    """'data2' is not inside 'data' (a prefix of its name); 'link/x.csv', with link -> data, is."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data2").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)
    files.check_output(tmp_path / "data2" / "x.csv", "--out", folders=[("--data", tmp_path / "data")])
    with pytest.raises(UserError, match=r"link/x.csv: is inside --data .*data, whose files are read as input"):
        files.check_output(tmp_path / "link" / "x.csv", "--out", folders=[("--data", tmp_path / "data")])


@pytest.mark.parametrize("rel, leaves", [("a/b.png", False), ("a..b/c..png", False), ("/etc/x.png", True),
                                         ("../x.png", True), ("a/../../x.png", True), ("a/..", True)])
def test_leaves_root(rel, leaves):
    assert files.leaves_root(rel) is leaves


def test_a_files_digest_is_read_again_once_the_file_changed(tmp_path):
    """The SHA-256s are kept per (path, stamp): the same path with other bytes is hashed again,
    other bytes of the same size under the old modification time too (cp -p, rsync -a)."""
    import hashlib

    path = tmp_path / "m.bin"
    path.write_bytes(b"first")
    assert files.sha256_file(path) == hashlib.sha256(b"first").hexdigest()
    st = path.stat()
    before = files.file_stamp(path)
    with open(path, "r+b") as f:  # the same inode and size, the old times set back
        f.write(b"other")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files.file_stamp(path) != before
    assert files.sha256_file(path) == hashlib.sha256(b"other").hexdigest()


def test_an_output_lock_leaves_the_lock_file_of_the_command_that_holds_it_now(tmp_path):
    """A lock file removed while its command ran (by hand, a cleaner of /tmp) lets a second
    command make its own and hold it; the first, ending, must not remove the second's: a third
    would then lock a new file and write with the second."""
    import contextlib

    out, lock = tmp_path / "s.csv", tmp_path / ".s.csv.lock"
    with contextlib.ExitStack() as second:
        with locks.output_lock(out):
            lock.unlink()
            second.enter_context(locks.output_lock(out))
            held = os.stat(lock).st_ino
        assert lock.is_file() and os.stat(lock).st_ino == held
        with pytest.raises(UserError, match="another clip-smot command is writing it now"):
            with locks.output_lock(out):
                pass
    assert not lock.exists()


def test_safetensors_metadata_is_sorted_whatever_the_headers_padding(tmp_path):
    """safetensors pads its header with spaces to a multiple of 8 bytes; a header with no padding
    at all (the sorted JSON exactly as long) is sorted too. One value's length goes through all 8
    remainders."""
    import json

    import torch
    from safetensors.torch import load_file

    keys = ["f", "b", "e", "a", "d", "c"]
    for k in range(8):
        path = tmp_path / f"m{k}.safetensors"
        files.atomic_save_safetensors({"t": torch.arange(3.0)}, path, {key: "v" * (1 + k * (key == "a")) for key in keys})
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n], object_pairs_hook=lambda pairs: pairs)
        metadata = dict(header)["__metadata__"]
        assert [key for key, _ in metadata] == sorted(keys), k
        assert torch.equal(load_file(str(path))["t"], torch.arange(3.0))


def test_a_json_file_of_exactly_its_limit_is_read(tmp_path):
    from clip_smot.common.files import read_json

    (tmp_path / "a.json").write_text('{"a": [1, 2]}')  # 13 bytes
    assert read_json(tmp_path / "a.json", limit=13) == {"a": [1, 2]}
    with pytest.raises(ValueError, match=r"^larger than 12 bytes"):
        read_json(tmp_path / "a.json", limit=12)


def test_a_refused_command_leaves_the_folder_another_made_and_locked_meanwhile(tmp_path, monkeypatch):
    """Two commands starting at once on a new --out: the one refused must not remove the folder,
    which it saw missing, that the other has made and locked since (its run would go on in a
    folder that is gone)."""
    import contextlib

    run = tmp_path / "run"
    real, holder = locks.make_folder, contextlib.ExitStack()

    def made_and_locked_by_another(path, flag="--out"):
        real(path, flag)
        monkeypatch.setattr(locks, "make_folder", real)
        holder.enter_context(locks.output_lock(run, folder=True))  # (the other command, first to flock)

    monkeypatch.setattr(locks, "make_folder", made_and_locked_by_another)
    with holder:
        with pytest.raises(UserError, match="another clip-smot command is writing it now"):
            with locks.output_lock(run, folder=True):
                pass
        assert run.is_dir()


@pytest.mark.parametrize("before", ["open", "flock"])
def test_a_run_folder_removed_before_its_lock_was_taken_is_not_held(tmp_path, monkeypatch, before):
    """Command A makes a new --out and locks it; B finds the folder there; A stops (refused after
    the lock, an error) and removes the folder it made, left empty. Before B opened it: B's open
    fails and B goes on unlocked; before B's flock: B takes the lock of a folder no longer there.
    C, making the folder anew, then locks that one: B and C both write their run into the one
    --out (two fits' epochs in one log, two evaluations' files mixed). B must lock the folder
    that is at --out, or be refused (the lock file of a file --out is opened again when it was
    replaced)."""
    import contextlib

    run = tmp_path / "run"
    first = locks.output_lock(run, folder=True)  # A: makes the folder and holds its lock
    first.__enter__()
    hooked = "make_folder" if before == "open" else "_flock"
    real = getattr(locks, hooked)

    def a_stops_meanwhile(*args):
        monkeypatch.setattr(locks, hooked, real)
        if before == "open":
            real(*args)  # (B finds the folder made)
        assert first.__exit__(RuntimeError, RuntimeError("A's error"), None) is False  # (A's error goes on)
        assert not run.exists()  # (A made it, and removed it empty)
        return None if before == "open" else real(*args)

    monkeypatch.setattr(locks, hooked, a_stops_meanwhile)
    with contextlib.ExitStack() as b:
        try:  # (B may lock the folder it makes anew, or be refused: not go on with no lock)
            b.enter_context(locks.output_lock(run, folder=True))
        except UserError:
            return
        with pytest.raises(UserError, match="another clip-smot command is writing it now"):
            with locks.output_lock(run, folder=True):  # C
                pass
        assert run.is_dir()
    assert not run.exists()  # (B made it anew and left it empty: a folder made for the lock goes with it)


def test_a_write_error_without_a_system_reason_names_its_type(tmp_path, monkeypatch):
    """An OSError raised with a message alone (a writer's own, no errno) has no strerror: the line
    gives its type and message, as for any other error of a writer, not 'None'."""
    _plenty_of_space(monkeypatch)

    def fail(tmp):
        raise OSError("the device went away")

    with pytest.raises(UserError) as e:
        files.atomic_write(tmp_path / "new.txt", fail)
    assert str(e.value) == f"cannot write {tmp_path / 'new.txt'}: OSError: the device went away"


def test_a_disk_with_a_few_hundred_kib_free_is_named_full(tmp_path, monkeypatch):
    """torch.save's 'unexpected pos' on a disk with 100 KiB left (less than a checkpoint of the
    tiny ResNet) is a full disk too, not only at 0 bytes free."""
    from pathlib import Path

    def half_then_fail(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(files.torch, "save", half_then_fail)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: _Usage(1 << 30, (1 << 30) - 100 * 1024, 100 * 1024))
    with pytest.raises(UserError) as e:
        atomic_save({"epoch": 2}, tmp_path / "checkpoint.pt")
    assert str(e.value) == f"cannot write {tmp_path / 'checkpoint.pt'}: no space left on the device"


def test_a_short_torch_save_with_space_free_names_the_likely_causes(tmp_path, monkeypatch):
    """Under ``ulimit -f`` or a disk quota torch.save stops with the same 'unexpected pos' as on a
    full disk, though the disk has room: the line read "RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos 128 vs 0" (found filling the disk at random)."""
    from pathlib import Path

    def half_then_fail(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    monkeypatch.setattr(files.torch, "save", half_then_fail)
    _plenty_of_space(monkeypatch)
    with pytest.raises(UserError) as e:
        atomic_save({"epoch": 2}, tmp_path / "checkpoint.pt")
    assert str(e.value) == (f"cannot write {tmp_path / 'checkpoint.pt'}: the write stopped short (a file size limit, "
                            "a disk quota or a full disk)")
    assert os.listdir(tmp_path) == []


def test_read_with_hash_hashes_the_file_read_and_refuses_one_replaced_meanwhile(tmp_path):
    """The hash a run records is of the very file it read: one written to that path during the
    read (another command's atomic write: a new file renamed over it) is refused."""
    import hashlib

    path = tmp_path / "p.bin"
    path.write_bytes(b"old")
    value, sha = files.read_with_hash(path, "--prompt", lambda: path.read_bytes())
    assert (value, sha) == (b"old", hashlib.sha256(b"old").hexdigest())

    def read_then_replaced():
        value = path.read_bytes()
        (tmp_path / "new.bin").write_bytes(b"new")
        os.replace(tmp_path / "new.bin", path)
        return value

    with pytest.raises(UserError, match=rf"^--prompt {path}: was replaced while it was read \(another command "
                                        r"writing it now\?\); run again once it is written$"):
        files.read_with_hash(path, "--prompt", read_then_replaced)


def test_read_with_hash_of_a_file_removed_once_read_is_one_line(tmp_path):
    """A file removed between its read and its hash (another command's clean-up) cannot be hashed:
    one line naming the flag, the file and the reason, not a traceback."""
    path = tmp_path / "p.bin"
    path.write_bytes(b"old")

    def read_then_removed():
        value = path.read_bytes()
        path.unlink()
        return value

    with pytest.raises(UserError) as e:
        files.read_with_hash(path, "--prompt", read_then_removed)
    assert str(e.value) == f"--prompt {path}: cannot be read (No such file or directory)"


def test_the_temporary_file_of_a_write_is_one_a_later_run_removes(tmp_path):
    """A write killed mid-way (SIGKILL) leaves its temporary file; the next run's
    remove_stale_temporaries(folder, names) must find it under the name of the file it was to
    become, and no other file's."""
    from pathlib import Path

    found = []

    def write(tmp):  # (the state a kill here leaves: then what the next run does)
        Path(tmp).write_text("half")
        files.remove_stale_temporaries(tmp_path, ("other.pt",))
        kept = os.path.exists(tmp)
        files.remove_stale_temporaries(tmp_path, ("x.pt",))
        found.append((kept, os.path.exists(tmp)))
        Path(tmp).write_text("whole")

    files.atomic_write(tmp_path / "x.pt", write)
    assert found == [(True, False)]
    assert os.listdir(tmp_path) == ["x.pt"] and (tmp_path / "x.pt").read_text() == "whole"


def test_json_text_is_indented_with_sorted_keys_and_a_final_newline():
    """config.json and summary.json: the same record gives the same bytes, whatever its key order."""
    text = '{\n  "a": [\n    1,\n    2\n  ],\n  "b": {\n    "c": null,\n    "d": true\n  }\n}\n'
    assert files.json_text({"b": {"d": True, "c": None}, "a": [1, 2]}) == text


def test_an_archive_that_unpacks_to_exactly_its_size_and_slack_is_loaded(tmp_path, monkeypatch):
    """ARCHIVE_SLACK is what an archive may unpack to beyond its size: at exactly that it is
    loaded, one byte more is refused."""
    import zipfile

    path = tmp_path / "a.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/data/0", b"\0" * 100_000)
    size = path.stat().st_size  # (100,000 zeros deflate to a few hundred bytes)
    monkeypatch.setattr(file_kinds, "ARCHIVE_SLACK", 100_000 - size)
    assert file_kinds.archive_refusal(path) is None
    monkeypatch.setattr(file_kinds, "ARCHIVE_SLACK", 100_000 - size - 1)
    assert file_kinds.archive_refusal(path).startswith(f"its entries unpack to 100000 bytes, {100_000 / size:.0f} times "
                                                   f"the file's {size} ")


def test_an_archive_may_unpack_to_64_mib_beyond_its_size(tmp_path):
    """The slack is 64 MiB: an archive of S bytes whose entries unpack to S + 64 MiB is loaded, to
    one byte more refused. Its size is set by the zip comment (counted in S, not unpacked)."""
    import zipfile

    path, unpacked = tmp_path / "a.pt", (64 << 20) + 100_000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/data/0", bytes(unpacked))  # (zeros: deflated to about 64 KB)
    excess = unpacked - (64 << 20) - path.stat().st_size  # (the comment that makes S + 64 MiB = unpacked)
    assert 0 < excess < 1 << 16
    for comment, overflow in ((excess - 1, True), (excess, False)):
        with zipfile.ZipFile(path, "a") as z:
            z.comment = b"c" * comment
        assert path.stat().st_size == unpacked - (64 << 20) - excess + comment
        assert (file_kinds.archive_refusal(path) is not None) is overflow


def test_the_cache_root_is_the_environments_or_the_homes(tmp_path, monkeypatch):
    """$CLIP_SMOT_CACHE where it is set (and not empty; a leading ~ is the home folder, as a
    quoted '~/c' in a shell leaves it), else ~/.cache/clip_smot."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "c"))
    assert files.cache_root() == tmp_path / "c"
    monkeypatch.setenv("CLIP_SMOT_CACHE", "~/c")
    assert files.cache_root() == tmp_path / "home" / "c"
    for value in ("", None):
        if value is None:
            monkeypatch.delenv("CLIP_SMOT_CACHE")
        else:
            monkeypatch.setenv("CLIP_SMOT_CACHE", value)
        assert files.cache_root() == tmp_path / "home" / ".cache" / "clip_smot"


def test_two_paths_where_nothing_is_are_not_one_file(tmp_path):
    """same_file answers for files that exist: two missing paths (a --data folder removed since a
    run and another given now) are not the same, however alike their nothing is."""
    (tmp_path / "a").write_text("x")
    assert files.same_file(tmp_path / "a", tmp_path / "." / "a")
    assert not files.same_file(tmp_path / "gone", tmp_path / "missing")
    assert not files.same_file(tmp_path / "gone", tmp_path / "gone")


def test_a_fifo_at_the_lock_files_name_is_refused_and_left(tmp_path):
    """A FIFO (or a device) where the lock file goes is no lock of ours: locking it would go on,
    and the command's end would remove a user's FIFO."""
    import stat

    out, lock = tmp_path / "s.csv", tmp_path / ".s.csv.lock"
    os.mkfifo(lock)
    refused = rf"^--out {out}: {lock}, the name of its lock file, holds something else; move it away$"
    before = _open_fds()
    with pytest.raises(UserError, match=refused), locks.output_lock(out):
        pass
    assert stat.S_ISFIFO(os.lstat(lock).st_mode)
    assert _open_fds() == before  # (the refused lock file's descriptor is closed)


def test_a_folder_at_the_lock_files_name_is_refused_and_left(tmp_path):
    """A folder where the lock file goes (a user's, or an input named so): the lock's open failed
    (EISDIR) and the command went on unlocked, a second one beside it too, both writing the same
    --out. It is no lock of ours, as a FIFO is not: refused in one line, the folder left as it was."""
    out, lock = tmp_path / "s.csv", tmp_path / ".s.csv.lock"
    lock.mkdir()
    (lock / "mine.txt").write_text("a user's file")
    with pytest.raises(UserError, match=rf"^--out {out}: {lock}, the name of its lock file, holds something else; "
                                        "move it away$"):
        with locks.output_lock(out):
            pass
    assert os.listdir(lock) == ["mine.txt"] and not out.exists()


def test_an_eval_out_holding_a_run_names_its_checkpoint_first(tmp_path):
    """A fit run folder (checkpoint.pt and prompt.safetensors) given as eval's --out: the line
    names the file that makes it a resumable run."""
    (tmp_path / "checkpoint.pt").write_bytes(b"state")
    (tmp_path / "prompt.safetensors").write_bytes(b"prompt")
    with pytest.raises(UserError, match=rf"^--out {tmp_path}: holds a training run \(checkpoint.pt\); write the "
                                        rf"evaluation to another folder \(e.g. {tmp_path / 'eval'}\)$"):
        check_output_folder(tmp_path)


def test_an_eval_out_holding_a_config_json_of_no_evaluation_is_refused(tmp_path):
    """`eval --checkpoint` removed, and `eval --prompt` replaced, any config.json in --out as an
    earlier evaluation's: a user's own settings file went without a word. An evaluation's
    config.json has its metrics.json beside it (written all or none); another is refused."""
    (tmp_path / "config.json").write_text('{"my": "settings"}')
    with pytest.raises(UserError, match=rf"^--out {tmp_path}: holds a config.json that is not an evaluation's \(no "
                                        rf"metrics.json beside it\), which the evaluation would replace; write the "
                                        rf"evaluation to another folder \(e.g. {tmp_path / 'eval'}\)$"):
        check_output_folder(tmp_path)
    assert (tmp_path / "config.json").read_text() == '{"my": "settings"}'
    (tmp_path / "metrics.json").write_text("{}")  # an earlier evaluation's folder: replaced as a whole
    check_output_folder(tmp_path)
    # an evaluation's own record whose metrics.json was removed (reproduce says so to run a stage
    # again): evaluated again; a record lacking one of an evaluation's keys is someone else's
    (tmp_path / "metrics.json").unlink()
    record = {"id_data": "val", "ood": {"o": "ood"}, "scores": ["mcm"], "convention": "id", "device": "cpu"}
    (tmp_path / "config.json").write_text(json.dumps(record))
    check_output_folder(tmp_path)
    for key in ("id_data", "ood", "scores", "convention"):
        (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in record.items() if k != key}))
        with pytest.raises(UserError, match="holds a config.json that is not an evaluation's"):
            check_output_folder(tmp_path)
    (tmp_path / "config.json").write_text("[")
    with pytest.raises(UserError, match="holds a config.json that is not an evaluation's"):
        check_output_folder(tmp_path)


def test_a_files_stamp_is_its_size_times_and_inode(tmp_path):
    """A feature cache keys image files by their stamp: each of size, modification time, change
    time and inode tells another file's bytes (a file rewritten within one tick of a file
    system's coarse clock keeps its times; a file renamed over another keeps its own inode)."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")
    st = os.stat(path)
    assert files.file_stamp(path) == (3, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def test_an_output_lock_refused_as_busy_closes_its_descriptor(tmp_path):
    """A lock refused because another holds it closes the descriptor it opened on the lock file:
    a process that goes on after the refusal (a library caller) keeps none."""
    out = tmp_path / "s.csv"
    with locks.output_lock(out):
        held = _open_fds()
        for _ in range(3):
            with pytest.raises(UserError, match="another clip-smot command is writing it now"):
                with locks.output_lock(out):
                    pass
        assert _open_fds() == held


def test_a_lock_files_folder_removed_before_it_was_opened_is_made_again(tmp_path, monkeypatch):
    """Another command that has just stopped removes the folders it made for its lock, maybe the
    one this command made (or found) a moment before: the lock file's folder is made again, and
    the lock taken, not refused as a lock file that keeps being replaced."""
    out = tmp_path / "new" / "s.csv"
    real = locks.make_folder

    def made_then_removed(path, flag="--out"):
        real(path, flag)
        (tmp_path / "new").rmdir()  # (the other command's cleanup)
        monkeypatch.setattr(locks, "make_folder", real)

    monkeypatch.setattr(locks, "make_folder", made_then_removed)
    with locks.output_lock(out):
        assert (tmp_path / "new" / ".s.csv.lock").is_file()
    assert os.listdir(tmp_path) == []

def test_a_lock_file_has_an_ordinary_files_mode(tmp_path):
    """A lock file left by a killed command is taken over by the next one, of another user of the
    group too where the umask lets the group write (002): it is made 0666 less the umask."""
    for umask, mode in ((0o022, 0o644), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            with locks.output_lock(tmp_path / "s.csv"):
                assert (tmp_path / ".s.csv.lock").stat().st_mode & 0o777 == mode
        finally:
            os.umask(old)


def test_a_disk_with_less_than_a_mib_free_is_named_full_and_one_with_a_mib_is_not(tmp_path, monkeypatch):
    """A writer's own error (torch.save's RuntimeError) is read as a full disk where less than
    1 MiB (1,048,576 bytes) is free; with 1 MiB free it is a short write, its likely causes named."""
    def fail(tmp):
        raise RuntimeError("unexpected pos 576 vs 534")

    for free, reason in (((1 << 20) - 1, "no space left on the device"),
                         (1 << 20, "the write stopped short (a file size limit, a disk quota or a full disk)")):
        monkeypatch.setattr(files.shutil, "disk_usage", lambda p, free=free: _Usage(1 << 30, (1 << 30) - free, free))
        with pytest.raises(UserError) as e:
            files.atomic_write(tmp_path / "x.pt", fail)
        assert str(e.value) == f"cannot write {tmp_path / 'x.pt'}: {reason}"


def test_only_temporaries_untouched_for_the_given_time_are_removed(tmp_path, monkeypatch):
    """The feature cache and an evaluation's folder remove temporaries older than an hour: a
    younger one may be another process's write in progress, whose rename would then fail.
    One untouched for exactly that long is removed."""
    import time

    now = 1_700_000_000
    monkeypatch.setattr(time, "time", lambda: float(now))
    ages = {"old": 3601, "exact": 3600, "young": 3599, "new": 0}
    for name, age in ages.items():
        tmp = tmp_path / f".{name}.pt.abc123.tmp"
        tmp.write_bytes(b"half")
        os.utime(tmp, ns=((now - age) * 10**9, (now - age) * 10**9))
    for name, age in {"exact": 3600, "young": 3599}.items():  # (a safetensors write's folder: its newest file's age)
        folder = tmp_path / f".{name}.safetensors.abc123.tmp"
        folder.mkdir()
        (folder / "tensors").write_bytes(b"half")
        for path in (folder / "tensors", folder):
            os.utime(path, ns=((now - age) * 10**9, (now - age) * 10**9))
    files.remove_stale_temporaries(tmp_path, None, older_than_s=3600.0)
    assert sorted(os.listdir(tmp_path)) == [".new.pt.abc123.tmp", ".young.pt.abc123.tmp",
                                            ".young.safetensors.abc123.tmp"]


def test_a_safetensors_save_killed_mid_write_leaves_nothing_the_next_run_does_not_remove(tmp_path):
    """safetensors 0.8 writes a file through a temporary of its own beside it (``.tmpXXXXXX``),
    renamed to it once written. A process killed while it wrote a prompt.safetensors or
    model.safetensors (SIGKILL, the OOM killer) left that file, as large as the model, under a name
    that no run's remove_stale_temporaries knew: it stayed for ever. Killed here while a file of
    the save is in the write's folder (safetensors' temporary; with safetensors 0.7 and before,
    which write the file itself, that file), with a 64 MB tensor saved again and again, the next
    run removes all the save left."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    code = ("import sys, torch; from clip_smot.common.files import atomic_save_safetensors as save\n"
            "t = {'t': torch.zeros(16, 1024, 1024)}\n"
            "while True: save(t, sys.argv[1], {'format': 'x'})")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "model.safetensors")], env=env,
                         stderr=subprocess.PIPE)
    caught, deadline = None, time.monotonic() + 120
    try:
        while caught is None and p.poll() is None and time.monotonic() < deadline:
            caught = next((os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path)
                           for f in fs if d != str(tmp_path)), None)  # (a file in the write's folder)
    finally:
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate()
    assert caught is not None, err.decode()[-2000:]  # (killed while safetensors' temporary was there)
    left = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
    assert any(re.fullmatch(r"\.model\.safetensors\.\w+\.tmp/(\.tmp[A-Za-z0-9]{6}|tensors)", f) for f in left), left
    files.remove_stale_temporaries(tmp_path, ("model.safetensors",))
    assert sorted(os.listdir(tmp_path)) in ([], ["model.safetensors"])


def test_a_folder_of_a_user_under_a_safetensors_writes_name_is_left_as_it_is(tmp_path, monkeypatch):
    """remove_stale_temporaries removes the folder of a safetensors write killed mid-way with what
    safetensors left in it, and no folder under such a name holding anything else, nor one it
    cannot list (another user's, unreadable: what it holds is not known; root reads any folder,
    so the listing's refusal is made here)."""
    ours, theirs = tmp_path / ".model.safetensors.abc123.tmp", tmp_path / ".model.safetensors.def456.tmp"
    unlisted = tmp_path / ".model.safetensors.0aa000.tmp"
    ours.mkdir()
    (ours / ".tmpA1b2C3").write_bytes(b"half")
    theirs.mkdir()
    (theirs / ".tmpA1b2C3").write_bytes(b"half")
    (theirs / "notes.txt").write_text("a user's file")
    unlisted.mkdir()
    from pathlib import Path

    iterdir = Path.iterdir

    def refused(self):
        if self == unlisted:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refused)
    files.remove_stale_temporaries(tmp_path, ("model.safetensors",))
    assert sorted(os.listdir(tmp_path)) == sorted([theirs.name, unlisted.name])
    assert sorted(os.listdir(theirs)) == [".tmpA1b2C3", "notes.txt"]


def test_stale_temporaries_are_found_by_names_holding_glob_characters(tmp_path):
    """The names are matched as written: a file "a[1].pt" has its own temporaries removed, and not
    those of "a1.pt", which the pattern "a[1].pt" would match."""
    for name in ("a[1].pt", "a1.pt", "a*.pt"):
        (tmp_path / f".{name}.abc123.tmp").write_bytes(b"half")
    files.remove_stale_temporaries(tmp_path, ("a[1].pt",))
    assert sorted(os.listdir(tmp_path)) == [".a*.pt.abc123.tmp", ".a1.pt.abc123.tmp"]
    files.remove_stale_temporaries(tmp_path, ("a*.pt",))
    assert os.listdir(tmp_path) == [".a1.pt.abc123.tmp"]


def test_a_safetensors_header_whose_sorted_text_is_longer_is_left_as_written(tmp_path, monkeypatch):
    """The sorted header is written in place only where it fits the header's bytes: a longer one
    (here JSON made longer by indenting) would run into the tensors' bytes. Then the file is
    left as safetensors wrote it, its tensors intact; a file without metadata is left too."""
    import json

    import torch
    from safetensors.torch import load_file

    tensors = {"t": torch.arange(4.0)}
    dumps = json.dumps
    monkeypatch.setattr(json, "dumps", lambda obj, **kw: dumps(obj, indent=4))
    files.atomic_save_safetensors(tensors, tmp_path / "a.safetensors", {"b": "1", "a": "2"})
    monkeypatch.setattr(json, "dumps", dumps)
    loaded = load_file(str(tmp_path / "a.safetensors"))
    assert torch.equal(loaded["t"], torch.arange(4.0))
    files.atomic_save_safetensors(tensors, tmp_path / "none.safetensors", None)
    assert torch.equal(load_file(str(tmp_path / "none.safetensors"))["t"], torch.arange(4.0))


def test_an_archives_entries_are_summed(tmp_path, monkeypatch):
    """A bomb of many entries, each small enough alone (torch.save writes one per tensor), is
    measured by their sum; anything not a readable zip (a folder, a missing file) is left to
    the loader."""
    import zipfile

    path = tmp_path / "a.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"a/data/{i}", b"\0" * 100_000)
    size = path.stat().st_size
    monkeypatch.setattr(file_kinds, "ARCHIVE_SLACK", 150_000 - size)  # (one entry fits, three do not)
    assert file_kinds.archive_refusal(path).startswith("its entries unpack to 300000 bytes")
    assert file_kinds.archive_refusal(tmp_path) is None and file_kinds.archive_refusal(tmp_path / "missing.pt") is None


def test_a_torch_zip_whose_directory_pythons_reader_refuses_is_not_loaded(tmp_path, monkeypatch):
    """Python's zip reader raises NotImplementedError for an entry that needs a zip version above
    6.3: the measure of a --cam-model, --pretrained or checkpoint file holding one was a
    traceback. torch's own reader loads such a file, deflated entries and all (no torch.save
    writes one), and one whose directory Python's reader calls damaged: each is refused in one
    line, as a file that cannot be measured."""
    import struct
    import zipfile

    import torch

    from clip_smot.clip.cam_network import load_cam_network
    from clip_smot.common import run_folder as rf

    torch.save({"format": "clip-smot-fit-checkpoint", "x": torch.zeros(1 << 16)}, tmp_path / "p.pt")
    with zipfile.ZipFile(tmp_path / "p.pt") as z, zipfile.ZipFile(tmp_path / "v.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info.filename))
        out.writestr("p/extra", b"x")  # (its central directory record is the file's last)
    raw = bytearray((tmp_path / "v.pt").read_bytes())
    record = raw.rfind(b"PK\x01\x02")
    assert raw[record + 46:record + 53] == b"p/extra"
    raw[record + 6:record + 8] = struct.pack("<H", 97)  # version needed to extract: 9.7
    (tmp_path / "v.pt").write_bytes(bytes(raw))
    assert torch.load(tmp_path / "v.pt", weights_only=True)["x"].numel() == 1 << 16  # (torch reads it)
    why = "its zip directory cannot be measured (zip file version 9.7; torch.save writes no such archive); not loaded"
    assert file_kinds.archive_refusal(tmp_path / "v.pt") == why
    with pytest.raises(rf.CheckpointError, match=rf"^not a readable checkpoint \({re.escape(why)}\)$"):
        rf.read_checkpoint(tmp_path / "v.pt", "clip-smot-fit-checkpoint")
    with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / 'v.pt'}: {re.escape(why)}$"):
        load_cam_network(str(tmp_path / "v.pt"))
    # a record whose name is 4 bytes long, not 7 (Python's reader: "Truncated central directory"),
    # which torch reads all the same; and a name flagged UTF-8 that is not (a ValueError)
    raw[record + 6:record + 8] = struct.pack("<H", 20)
    raw[record + 28:record + 30] = struct.pack("<H", 4)
    (tmp_path / "v.pt").write_bytes(bytes(raw))
    assert torch.load(tmp_path / "v.pt", weights_only=True)["x"].numel() == 1 << 16
    assert file_kinds.archive_refusal(tmp_path / "v.pt") == ("its zip directory cannot be measured (Truncated central "
                                                         "directory; torch.save writes no such archive); not loaded")
    raw[record + 28:record + 30] = struct.pack("<H", 7)
    raw[record + 8:record + 10] = struct.pack("<H", struct.unpack("<H", raw[record + 8:record + 10])[0] | 0x800)
    raw[record + 52] = 0xFF
    (tmp_path / "v.pt").write_bytes(bytes(raw))
    assert file_kinds.archive_refusal(tmp_path / "v.pt").startswith("its zip directory cannot be measured ('utf-8' codec")
    # no zip to torch either: left to its loader (cut short before the directory, or not beginning as a zip)
    (tmp_path / "cut.pt").write_bytes(bytes(raw[:record]))
    (tmp_path / "late.pt").write_bytes(b"X" + bytes(raw))
    assert file_kinds.archive_refusal(tmp_path / "cut.pt") is None and file_kinds.archive_refusal(tmp_path / "late.pt") is None


def test_an_archive_whose_entry_fails_its_crc_is_not_loaded(tmp_path):
    """torch.load does not check the CRC-32 a zip records for each entry: one flipped bit in a
    tensor's bytes (a failing disk, a copy gone wrong) loaded as a different tensor, silently.
    Every entry is checked before a checkpoint, --cam-model or --pretrained archive is loaded;
    an entry whose local header is damaged is named as well."""
    import zipfile

    import torch
    from helpers import flip_byte_of_entry

    from clip_smot.clip.cam_network import load_cam_network
    from clip_smot.common import run_folder as rf

    path = tmp_path / "c.pt"
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"x": torch.arange(1000.0)})
    assert file_kinds.archive_refusal(path) is None
    name = flip_byte_of_entry(path, "data/0", 401)  # (a byte of x[100])
    assert torch.load(path, weights_only=True)["x"][100] != 100  # (what torch reads: another tensor)
    why = f"its entry {name!r} fails its CRC-32 check: the file was damaged after it was written; not loaded"
    assert file_kinds.archive_refusal(path) == why
    with pytest.raises(rf.CheckpointError, match=rf"^not a readable checkpoint \({re.escape(why)}\)$"):
        rf.read_checkpoint(path, "clip-smot-fit-checkpoint")
    torch.save({"fc.weight": torch.arange(1000.0)}, tmp_path / "sd.pt")  # (a state dict, as --cam-model takes)
    name = flip_byte_of_entry(tmp_path / "sd.pt", "data/0", 401)
    why = f"its entry {name!r} fails its CRC-32 check: the file was damaged after it was written; not loaded"
    with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / 'sd.pt'}: {re.escape(why)}$"):
        load_cam_network(str(tmp_path / "sd.pt"))
    # a local header whose signature is not one: Python's reader stops there
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"x": torch.arange(1000.0)})
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x03\x04", 1)  # (the second entry's local header)
    raw[at + 3] = 0x05
    path.write_bytes(bytes(raw))
    assert file_kinds.archive_refusal(path) == (f"its entry {zipfile.ZipFile(path).namelist()[1]!r} does not read "
                                           "back (BadZipFile: Bad magic number for file header): the file is damaged; "
                                           "not loaded")
    # an entry of more than the 1 MiB read at a time, damaged in its first byte: checked to its end
    torch.save({"x": torch.zeros(300_000)}, path)  # (1.2 MB of float32)
    name = flip_byte_of_entry(path, "data/0", 0)
    assert file_kinds.archive_refusal(path) == (f"its entry {name!r} fails its CRC-32 check: the file was damaged after it "
                                           "was written; not loaded")


def test_an_archive_whose_entry_cannot_be_read_is_left_to_the_loader(tmp_path, monkeypatch):
    """An entry whose read fails (an I/O error of the disk, not a damaged zip) is no damaged file:
    archive_refusal says nothing, and the loader names the read that fails."""
    import zipfile

    import torch

    torch.save({"x": torch.arange(10.0)}, tmp_path / "c.pt")

    def fail(self, n=-1):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(zipfile.ZipExtFile, "read", fail)
    assert file_kinds.archive_refusal(tmp_path / "c.pt") is None


def test_an_archive_whose_directory_cannot_be_read_is_not_called_cut_short(tmp_path, monkeypatch):
    """zipfile turns an OSError reading an archive's end record into BadZipFile("File is not a zip
    file"). A whole fit checkpoint on a failing disk (every read(2) after the first failing EIO,
    injected in a real fit --resume) was refused as "a torch archive cut short (its zip directory
    is missing: a copy or download that stopped?)", and with one read failing, train --resume as
    "its zip directory cannot be measured (File is not a zip file; ...)". A read that fails is
    the loader's to name, as for an entry (above): neither is a damaged file."""
    import io
    import zipfile

    from clip_smot.common import run_folder as rf

    path = tmp_path / "checkpoint.pt"
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"epoch": 1})
    assert file_kinds.file_kind(path) == "fit-checkpoint" and file_kinds.archive_refusal(path) is None
    real_open = io.open

    class Failing(io.FileIO):
        def read(self, n=-1):
            raise OSError(errno.EIO, "Input/output error")

        readall = read

        def readinto(self, b):
            raise OSError(errno.EIO, "Input/output error")

    def zip_open(file, mode="r", *args, **kwargs):  # (zipfile's reads of the archive fail; others read)
        return Failing(file, "r") if mode == "rb" else real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(zipfile.io, "open", zip_open)
    assert file_kinds.file_kind(path) != "torch-cut"
    assert file_kinds.archive_refusal(path) is None


def test_a_checkpoint_whose_pickle_cannot_be_read_is_not_called_another_kind(tmp_path, monkeypatch):
    """A fit checkpoint whose data.pkl entry cannot be read (read(2) of it failing EIO, injected in
    a real export --checkpoint) was "a torch archive (torch.save's), not a fit checkpoint; `clip-smot
    fit` writes one": _zip_kind's catch-all names any entry it cannot read a torch archive, which
    check_kind refuses as the wrong kind. A read that fails is the loader's to name: no kind."""
    import zipfile

    from clip_smot.common import run_folder as rf

    path = tmp_path / "checkpoint.pt"
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"epoch": 1})
    assert file_kinds.file_kind(path) == "fit-checkpoint"

    def fail(self, n=-1):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(zipfile.ZipExtFile, "read", fail)
    assert file_kinds.file_kind(path) is None
    file_kinds.check_kind(path, "--checkpoint", "fit-checkpoint")  # (no refusal: torch.load names the read)


@pytest.mark.parametrize("raised, kind", [("cause", None), ("no errno", "torch-archive")])
def test_a_pickle_read_error_is_a_failed_read_by_its_cause_and_error_number(tmp_path, monkeypatch, raised, kind):
    """The OSError behind an error reading data.pkl is found by its __cause__ alone (`raise ...
    from` outside the handler sets no __context__): a failed read, no kind. An OSError without an
    error number (bz2's "Invalid data stream" for a damaged ZIP_BZIP2 entry) is no failed read:
    the entry zipfile cannot read, a torch archive as before."""
    import zipfile

    from clip_smot.common import run_folder as rf

    path = tmp_path / "checkpoint.pt"
    rf.save_checkpoint(path, "clip-smot-fit-checkpoint", {"epoch": 1})

    def fail(self, n=-1):
        if raised == "cause":
            raise ValueError("read failed") from OSError(errno.EIO, "Input/output error")
        raise OSError("Invalid data stream")

    monkeypatch.setattr(zipfile.ZipExtFile, "read", fail)
    assert file_kinds.file_kind(path) == kind


def test_the_reason_in_torchs_error_for_a_file_it_cannot_map():
    """torch's own error for a file it cannot map (UntypedStorage.from_file of a missing file, a
    name with spaces and angle brackets) gives the system's reason; the same words in an error
    that is no RuntimeError, or a RuntimeError that is not torch's open of a file, give none."""
    with pytest.raises(RuntimeError) as e:
        files.torch.UntypedStorage.from_file("/nonexistent dir/<a> b.safetensors", False, 4)
    assert files.mapped_read_error(e.value) == os.strerror(errno.ENOENT)
    assert files.mapped_read_error(OSError(str(e.value))) is None
    assert files.mapped_read_error(RuntimeError("cannot attach a view in read-only mode: Bad address (14)")) is None


def test_a_safetensors_write_error_gives_the_systems_reason_not_its_temporary_path(tmp_path, monkeypatch):
    """safetensors writes through a temporary file of its own (``.tmpXXXXXX``) and reports a failed
    write as a SafetensorError naming it, with the system's error number. On a file system out of
    inodes (bytes free, so not read as a full disk) the line was 'SafetensorError: Error while
    serializing: I/O error: No space left on device (os error 28) at path ".../.tmpzbCBZi"': the
    system's reason, as for an OSError, and no path of a file that never was."""
    from safetensors import SafetensorError

    _plenty_of_space(monkeypatch)
    path = tmp_path / "prompt.safetensors"

    def fail(tensors, tmp, metadata=None):
        raise SafetensorError(f'Error while serializing: I/O error: No space left on device (os error 28) at path '
                              f'"{tmp_path / ".tmpzbCBZi"}"')

    monkeypatch.setattr("safetensors.torch.save_file", fail)
    with pytest.raises(UserError) as e:
        files.atomic_save_safetensors({"x": files.torch.zeros(2)}, path, {})
    assert str(e.value) == f"cannot write {path}: {os.strerror(errno.ENOSPC)}"
    assert os.listdir(tmp_path) == []


def test_the_kind_of_a_file_is_sniffed_from_its_first_bytes_never_loaded(tmp_path, monkeypatch):
    """file_kind names each kind of file a user may hand to the wrong flag from a few bytes, a
    zip's entry names, its pickle's first bytes or a safetensors header, and loads nothing: a
    checkpoint whose pickle would run code is named without being unpickled."""
    import pickle

    import torch
    from safetensors.torch import save_file

    from clip_smot.common import run_folder as rf

    def kind(name, data):
        (tmp_path / name).write_bytes(data) if isinstance(data, bytes) else (tmp_path / name).write_text(data)
        return file_kinds.file_kind(tmp_path / name)

    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    rf.save_checkpoint(tmp_path / "fit.pt", "clip-smot-fit-checkpoint", {"epoch": 1})
    assert file_kinds.file_kind(tmp_path / "fit.pt") == "fit-checkpoint"
    rf.save_checkpoint(tmp_path / "train.pt", "clip-smot-train-checkpoint", {"model": {"fc.weight": torch.zeros(1)}})
    assert file_kinds.file_kind(tmp_path / "train.pt") == "train-checkpoint"
    assert kind("cut.pt", (tmp_path / "fit.pt").read_bytes()[:300]) == "torch-cut"
    torch.save({"module.conv1.weight": torch.zeros(1), "module.fc.weight": torch.zeros(1)}, tmp_path / "r.pth")
    assert file_kinds.file_kind(tmp_path / "r.pth") == "resnet-weights"
    torch.save({"visual.proj": torch.zeros(1), "text_projection": torch.zeros(1)}, tmp_path / "clip.pt")
    assert file_kinds.file_kind(tmp_path / "clip.pt") == "clip-weights"
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    assert file_kinds.file_kind(tmp_path / "w.pt") == "torch-archive"
    with warnings.catch_warnings():  # (torch.jit's deprecation)
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(1, 1)), str(tmp_path / "ts.pt"))  # (a data.pkl too)
    assert file_kinds.file_kind(tmp_path / "ts.pt") == "torchscript"
    torch.save({"w": torch.zeros(1)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert file_kinds.file_kind(tmp_path / "old.pt") == "pickle"

    class Evil:
        def __reduce__(self):
            return (pytest.fail, ("unpickled",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "clip-smot-fit-checkpoint", "x": Evil()}))
    assert file_kinds.file_kind(tmp_path / "evil.pt") == "pickle"
    import zipfile

    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:  # (a torch archive whose pickle would run code)
        z.writestr("archive/data.pkl", pickle.dumps({"format": "clip-smot-fit-checkpoint", "x": Evil()}))
    assert file_kinds.file_kind(tmp_path / "evil.zip") == "fit-checkpoint"
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as z:  # (a zip of no torch archive: left to its loader)
        z.writestr("a.png", b"x")
    assert file_kinds.file_kind(tmp_path / "photos.zip") is None

    for fmt, expected in (("clip-smot-prompt", "prompt"), ("clip-smot-model", "model"), ("another", None)):
        save_file({"w": torch.zeros(1)}, str(tmp_path / "s.safetensors"), metadata={"format": fmt})
        assert file_kinds.file_kind(tmp_path / "s.safetensors") == expected, fmt
    save_file({"w": torch.zeros(1)}, str(tmp_path / "s.safetensors"))
    assert file_kinds.file_kind(tmp_path / "s.safetensors") == "safetensors"
    save_file({"ctx": torch.zeros(1)}, str(tmp_path / "s.safetensors"))  # (a prompt of no metadata: its loader says)
    assert file_kinds.file_kind(tmp_path / "s.safetensors") is None
    save_file({"visual.conv1.weight": torch.zeros(1), "token_embedding.weight": torch.zeros(1)},
              str(tmp_path / "s.safetensors"))
    assert file_kinds.file_kind(tmp_path / "s.safetensors") == "clip-weights"

    assert kind("m.json", '{"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}') == "model-config"
    assert kind("c.json", '\ufeff{"shots": 16, "n_ctx": 4}') == "fit-config"
    assert kind("t.json", '{"arch": "resnet18", "stage": "base"}') == "train-config"
    assert kind("j.json", '{"abcdef": {"g": 1}}') == "json"  # (a "{" at byte 8, as a safetensors header's)
    assert kind("cut.json", '[1, 2') == "json"
    assert kind("list.json", '[1, 2]') == "json"  # (whole JSON, but no object to look for keys in)
    assert kind("empty", b"") is None and kind("text", "hello") is None
    assert file_kinds.file_kind(tmp_path / "missing") is None and file_kinds.file_kind(tmp_path) is None
    os.mkfifo(tmp_path / "fifo")  # (its open would wait for a writer: not opened)
    monkeypatch.setattr(file_kinds, "open", lambda *a, **k: pytest.fail("a FIFO was opened"), raising=False)
    assert file_kinds.file_kind(tmp_path / "fifo") is None


def test_a_safetensors_header_is_sniffed_up_to_a_mib_and_a_longer_one_left_to_its_loader(tmp_path):
    """file_kind reads at most 1 MiB of a safetensors header: one of exactly 1 MiB (space-padded,
    as the format allows) is named; one a byte longer is not read, and left to its loader."""
    text = json.dumps({"__metadata__": {"format": "clip-smot-model"}}).encode()

    def kind(length):
        path = tmp_path / f"{length}.safetensors"
        path.write_bytes(length.to_bytes(8, "little") + text + b" " * (length - len(text)))
        return file_kinds.file_kind(path)

    assert kind(1 << 20) == "model"
    assert kind((1 << 20) + 1) is None


def test_the_formats_file_kind_knows_are_those_clip_smot_writes():
    from clip_smot.clip.prompt_file import FORMAT
    from clip_smot.common.run_folder import CHECKPOINT_FORMATS
    from clip_smot.resnet.networks import MODEL_FORMAT

    assert file_kinds._FORMAT_KINDS == {FORMAT: "prompt", MODEL_FORMAT: "model",
                                   **{f: f.split("-")[-2] + "-checkpoint" for f in CHECKPOINT_FORMATS}}


def test_tensor_checksums_by_hand():
    """Each tensor's SHA-256 is over the metadata as JSON with sorted keys, then "NAME DTYPE SHAPE", then
    its bytes as stored (little-endian): the format the files written keep, so a file of an earlier run
    still checks. A 0-d tensor's one value too (viewing it as bytes was torch's error)."""
    import hashlib
    import struct

    import torch

    head = b'{"a": "1", "b": "2"}'
    want = {"x": hashlib.sha256(head + b"x torch.float32 [1, 2]" + struct.pack("<2f", 1.0, 2.0)).hexdigest(),
            "s": hashlib.sha256(head + b"s torch.float64 []" + struct.pack("<d", 1.5)).hexdigest()}
    tensors = {"x": torch.tensor([[1.0, 2.0]]), "s": torch.tensor(1.5, dtype=torch.float64)}
    assert files.tensor_checksums(tensors, {"b": "2", "a": "1"}) == want


def test_checksum_mismatch_names_the_tensor_or_the_metadata():
    """checksum_mismatch: None without a sha256 or with the writer's; the one tensor whose
    checksum differs; its metadata or tensors where more differ, the sha256 is not a JSON object
    of one checksum per tensor held (one missing, one more), or not JSON."""
    import torch

    tensors = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    meta = {"x": "1"}
    sha = files.tensor_checksums(tensors, meta)
    assert files.checksum_mismatch(tensors, meta) is None
    assert files.checksum_mismatch(tensors, {**meta, "sha256": json.dumps(sha)}) is None
    assert files.checksum_mismatch({**tensors, "b": torch.zeros(2, 2)}, {**meta, "sha256": json.dumps(sha)}) == "b does"
    both = "its metadata or tensors do"
    assert files.checksum_mismatch(tensors, {"x": "2", "sha256": json.dumps(sha)}) == both
    for stored in (json.dumps({"a": sha["a"]}), json.dumps({**sha, "c": sha["a"]}), json.dumps(list(sha.values())),
                   "{not json", json.dumps(None)):
        assert files.checksum_mismatch(tensors, {**meta, "sha256": stored}) == both, stored


def test_check_replaced_lets_a_command_rewrite_only_its_own_files(tmp_path):
    """check_replaced: an output file that is there may be replaced where it is empty (nothing to
    lose) or the command's own, by its first bytes (score's CSV header) or by its kind (export's
    prompt); anything else, a file of one byte less of the header included, is refused in one
    line naming the flag, what the file holds and what the command writes."""
    import torch
    from safetensors.torch import save_file

    from clip_smot.clip.prompt_file import FORMAT

    check = file_kinds.check_replaced
    out = tmp_path / "out"
    check(out, "--out", "score", "a CSV", starts=b"path,pred,pred_index,")  # (nothing there)
    out.write_bytes(b"")
    check(out, "--out", "score", "a CSV", starts=b"path,pred,pred_index,")
    check(out, "--out", "export", "prompt")
    out.write_bytes(b"path,pred,pred_index,mcm\n/a.png,cat,0,0.5\n")
    check(out, "--out", "score", "a CSV", starts=b"path,pred,pred_index,")
    out.write_bytes(b"path,pred,pred_index\n")  # (the header's first bytes, but not its comma)
    with pytest.raises(UserError) as e:
        check(out, "--out", "score", "a CSV of clip-smot score", starts=b"path,pred,pred_index,")
    assert str(e.value) == (f"--out {out}: holds a file of something else, not a CSV of clip-smot score, and score "
                            "would replace it; choose another --out, or remove that file first")
    save_file({"ctx": torch.zeros(1)}, str(out), metadata={"format": FORMAT})
    check(out, "--out", "export", "prompt")
    save_file({"ctx": torch.zeros(1)}, str(out), metadata={"format": "clip-smot-model"})
    with pytest.raises(UserError) as e:
        check(out, "--out", "export", "prompt")
    assert str(e.value) == (f"--out {out}: holds a model file of clip-smot train (.safetensors), not a prompt file "
                            "(fit's or export's .safetensors), and export would replace it; choose another --out, or "
                            "remove that file first")


def test_check_replaced_refuses_a_file_it_cannot_read_and_passes_one_gone_meanwhile(tmp_path, monkeypatch):
    """An --out that cannot be read cannot be told to be the command's own: refused, naming what the
    command writes by its kind (export's prompt file); one removed between the stat and the read
    holds nothing to lose."""
    out = tmp_path / "out"
    out.write_bytes(b"their results\n")

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    monkeypatch.setattr(file_kinds, "open", denied, raising=False)
    with pytest.raises(UserError) as e:
        file_kinds.check_replaced(out, "--out", "export", "prompt")
    assert str(e.value) == (f"--out {out}: cannot be read (Permission denied): export replaces only a prompt file "
                            "(fit's or export's .safetensors), and cannot tell whether it is one; choose another "
                            "--out, or remove that file first")

    def gone(path, *args, **kwargs):
        os.remove(path)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", os.fspath(path))

    monkeypatch.setattr(file_kinds, "open", gone, raising=False)
    assert file_kinds.check_replaced(out, "--out", "export", "prompt") is None and not out.exists()
