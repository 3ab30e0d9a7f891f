"""Files: atomic writes, outputs checked against inputs, names from files, locks and hashes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from clip_smot.common.errors import UserError, first_line

__all__ = ["RUN_FILES", "cache_root", "path_stat", "exists", "is_file", "missing_file", "is_folder", "file_lock", "output_lock", "plain_name", "given_path", "file_key", "leaves_root", "same_file", "check_output", "check_output_folder", "make_folder", "atomic_write", "atomic_write_files", "fsync_file", "fsync_folder", "temporary_pattern", "remove_stale_temporaries", "atomic_save", "atomic_save_safetensors", "text_writer", "atomic_write_text", "parse_json", "read_json", "json_text", "write_json", "file_stamp", "stamp_if_file", "read_with_hash", "sha256_file", "tensor_checksums", "checksum_mismatch", "mapped_read_error", "safetensors_error", "archive_refusal", "FILE_KINDS", "file_kind", "check_kind"]

RUN_FILES = ("checkpoint.pt", "prompt.safetensors", "model.safetensors")  # what fit and train write (run_folder)
# every file of a fit or train run folder (one with a checkpoint.pt or a log.jsonl: a folder of
# prompts or models alone is none): a file --out of another command may not be one of them
_RUN_FOLDER_FILES = (*RUN_FILES, "config.json", "log.jsonl", "split.txt", "summary.json")


def cache_root() -> Path:
    """The package's cache folder: ``$CLIP_SMOT_CACHE`` (a leading ``~`` is the home folder, as
    torch's and Hugging Face's cache variables read it; a quoted ``'~/x'`` made a folder ``./~``),
    else ``~/.cache/clip_smot``.

    Raises:
        UserError: naming it, when it cannot be looked at (a name longer than the file system
            takes was a traceback at the first look-up in it, in eval and score).
    """
    given = os.environ.get("CLIP_SMOT_CACHE")
    root = Path(os.path.expanduser(given) if given else os.path.join(os.path.expanduser("~"), ".cache", "clip_smot"))
    path_stat(root, "$CLIP_SMOT_CACHE" if given else "the cache folder")  # (one not there yet: None)
    return root


def path_stat(path: str | os.PathLike, flag: str) -> os.stat_result | None:
    """``os.stat(path)``, symlinks followed; None where pathlib's ``exists()`` answers False (nothing
    there, a file where a folder should be, a symlink loop, a name holding a NUL byte).

    Raises:
        UserError: naming ``flag`` and ``path`` for any other failure, which pathlib raises as an
            OSError: a name longer than the file system allows, a folder that may not be searched.
    """
    try:
        return os.stat(path)
    except ValueError:  # (an embedded NUL byte: no file can have that name)
        return None
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF):
            return None
        raise UserError(f"{flag} {path}: {e.strerror or first_line(e)}") from None


def exists(path: str | os.PathLike, flag: str) -> bool:
    """``Path(path).exists()``, with a UserError naming ``flag`` where it would raise (:func:`path_stat`)."""
    return path_stat(path, flag) is not None


def is_file(path: str | os.PathLike, flag: str) -> bool:
    """``Path(path).is_file()``, with a UserError naming ``flag`` where it would raise (:func:`path_stat`)."""
    st = path_stat(path, flag)
    return st is not None and stat.S_ISREG(st.st_mode)


def missing_file(path: str | os.PathLike, flag: str, what: str = "file") -> str:
    """Why ``path``, no regular file, cannot be read as a ``what`` (for ``"{flag} {path}: {why}"``):
    nothing there, a folder, or a FIFO or device (which a read would wait on or never end; "no such
    file" sent the user looking for a path that is there)."""
    st = path_stat(path, flag)
    if st is None:
        return f"no such {what}"
    return f"a folder, not a {what}" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, a device)"


def is_folder(path: str | os.PathLike, flag: str) -> bool:
    """``Path(path).is_dir()``, with a UserError naming ``flag`` where it would raise (:func:`path_stat`)."""
    st = path_stat(path, flag)
    return st is not None and stat.S_ISDIR(st.st_mode)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created, with its folder) while inside: processes
    that would write one shared thing at once (the ranks of a torchrun downloading a data set)
    take turns. No lock where ``fcntl`` is missing (not POSIX), nor where the file system takes
    none (ENOLCK on an NFS mount without its lock daemon, ENOSYS): the work goes on unlocked, as
    :func:`output_lock`'s does."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)  # (released when the file is closed)
        except OSError:  # (as _flock: no lock to be had there)
            pass
        yield


class _Busy(UserError):
    """Another process holds the lock of an output."""


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, flag: str = "--out", folder: bool = False) -> Iterator[None]:
    """Hold the lock of the output ``out`` while inside, or refuse at once: a second command
    writing the same output (a score appending to the CSV another renames, a fit writing its
    epochs into another's log) would leave one output mixed of two runs, both saying they
    succeeded.

    The lock is an exclusive ``flock``: of the run folder itself for a folder ``out`` (made for
    it, and removed again when the command leaves it empty), of the empty file ``.NAME.lock``
    beside a file ``out`` (removed on the way out; one left by a killed command is taken over:
    the kernel drops a dead process's lock). Where no lock can be had (no ``fcntl``, a file
    system without ``flock``, a lock file that cannot be made), the command goes on unlocked, as
    it did before it locked.

    Raises:
        UserError: naming ``flag`` and ``out``: another process holds the lock, a folder that
            cannot be made, or something that is no lock of ours (a FIFO, a folder, a file
            with contents) under the lock file's name.
    """
    try:
        import fcntl  # noqa: F401 (used by the helpers)
    except ImportError:  # pragma: no cover
        yield
        return
    out = Path(out)
    where = out if folder else out.parent  # (named as given: the error of a folder that cannot be made)
    made = [f for f in (where, *where.parents) if not os.path.lexists(f)]  # (deepest first)
    make_folder(where, flag)
    busy = False
    try:
        yield from (_folder_held(out, flag, made) if folder else _file_held(out.parent / f".{out.name}.lock", flag, out))
    except _Busy:
        busy = True  # (the folders are the holder's now)
        raise
    finally:  # the folders made for the lock alone go with it (a refused command leaves no empty folder)
        for f in made if not busy else ():
            try:
                os.rmdir(f)
            except OSError:  # (not empty: the command wrote there)
                break


def _flock(fd: int, flag: str, out: Path) -> bool:
    """Whether ``flock`` took the lock of ``fd``; False where the file system has no locks (ENOLCK
    on some NFS mounts, ENOSYS on Lustre without flock). Raises _Busy when another holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:  # (EWOULDBLOCK: another open file holds it)
        raise _Busy(f"{flag} {out}: another clip-smot command is writing it now; wait for it to end, or choose "
                    f"another {flag}") from None
    except OSError:
        return False


def _folder_held(folder: Path, flag: str, made: list[Path]):
    """The lock of the run folder ``folder`` itself, held while the generator is suspended. The
    folder locked is checked to be the one at its name: a command that made it and stopped
    between our open and our flock removed it (left empty), and a lock of a folder no longer
    there held no one off the one made anew. ``made``: the folders made for the lock, deepest
    first; one made again here goes in front."""
    for _ in range(3):
        try:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            if e.errno == errno.ENOENT:  # (removed, as above, before our open)
                made[:0] = [f for f in (folder, *folder.parents) if not os.path.lexists(f) and f not in made]
                make_folder(folder, flag)
                continue
            yield  # (unlocked: the command reports the folder's own trouble when it writes)
            return
        try:
            st = os.fstat(fd)
            if not _flock(fd, flag, folder) or file_key(folder) == (st.st_dev, st.st_ino):
                yield
                return
        finally:
            os.close(fd)  # (releases the lock)
        if not os.path.lexists(folder):  # (removed: made again, by us or by the next command)
            made[:0] = [f for f in (folder, *folder.parents) if not os.path.lexists(f) and f not in made]
            make_folder(folder, flag)
    raise UserError(f"{flag} {folder}: the folder keeps being replaced; is another command starting there?")


def _file_held(lock: Path, flag: str, out: Path):
    """The lock file ``lock`` of the file ``out``, flocked while the generator is suspended."""
    held = _lock_file(lock, flag, out)
    if held is None:
        yield
        return
    fd, key = held
    try:
        yield
    finally:
        _release(lock, fd, key)


def _release(lock: Path, fd: int, key: tuple[int, int]) -> None:
    """Remove the lock file ``lock`` if it is still the file ``key`` of ``fd``, then close ``fd``
    (removed before it is released: no one can take a lock on a name that is gone)."""
    try:
        if file_key(lock) == key:
            os.unlink(lock)
    except OSError:  # (a failing disk, a read-only remount: the lock file stays, empty, and is reused)
        pass
    finally:
        os.close(fd)


def _lock_file(lock: Path, flag: str, out: Path) -> tuple[int, tuple[int, int]] | None:
    """A descriptor of the lock file ``lock``, flocked, and its (device, inode); None where no lock
    can be had (a link at its name, a name too long, a folder that may not be written, a file
    system without locks: the command goes on unlocked)."""
    for _ in range(3):  # (a holder ending between our open and flock removed the name we opened)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                         0o666)
        except OSError as e:
            if e.errno == errno.ENOENT:  # (its folder, made by a command that has just stopped, was removed)
                make_folder(lock.parent, flag)
                continue
            if e.errno == errno.EISDIR and not os.path.islink(lock):  # (a folder: no lock of ours, as a FIFO is)
                raise UserError(f"{flag} {out}: {lock}, the name of its lock file, holds something else; move it "
                                "away") from None
            return None
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISREG(st.st_mode) or st.st_size:
            os.close(fd)
            raise UserError(f"{flag} {out}: {lock}, the name of its lock file, holds something else; move it away")
        try:
            locked = _flock(fd, flag, out)
        except _Busy:
            os.close(fd)
            raise
        if not locked:
            _release(lock, fd, key)
            return None
        if file_key(lock) == key:
            return fd, key
        os.close(fd)
    raise UserError(f"{flag} {out}: its lock file {lock} keeps being replaced; is another command starting there?")


def plain_name(value: str, what: str, advice: str = "") -> str:
    """``value`` when it is a plain name, one path component: 1 to 200 characters, no ``/``,
    ``\\``, ``:`` nor control character, not ``.`` or ``..``; else a UserError naming ``what``
    (and ending in ``advice``). Names read from files (a prompt's model, its checkpoint file's
    name) are checked with it where they join a path: no folder, no ``..``, no absolute path and
    no ``hf-hub:``/``local-dir:`` schema of open_clip can come in with them."""
    if not isinstance(value, str) or not re.fullmatch(r"(?!\.\.?$)[^/\\:\x00-\x1f]{1,200}", value):
        raise UserError(f"{what}: {str(value)[:80]!r} is not a plain name (one path component: no '/', '\\' or ':', not '.' or '..')"
                        + (f"; {advice}" if advice else ""))
    return value


def given_path(path: str | os.PathLike, flag: str, what: str = "a file or folder") -> Path:
    """``path`` as a Path, or a UserError naming ``flag`` when it is empty: ``Path("")`` is ``.``,
    so an unset ``"$PHOTOS"`` would read the current folder (``.`` names it when that is meant)."""
    if os.fspath(path) == "":
        raise UserError(f"{flag} '': an empty path; give {what} ('.' for the current folder)")
    return Path(path)


def leaves_root(rel: str) -> bool:
    """Whether the relative path ``rel``, as a list or split file writes it, leaves the folder it
    is relative to: absolute, or with a ``..`` component."""
    return rel.startswith("/") or ".." in rel.split("/")


def file_key(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` leads to, symlinks followed; None when there is none.
    Two paths with the same key are one file: a symlink, a hard link, another spelling."""
    if not isinstance(path, (str, os.PathLike)):  # (os.stat of an int would stat a file descriptor)
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def same_file(a: Any, b: Any) -> bool:
    """Whether the paths ``a`` and ``b`` both exist and are one file (see :func:`file_key`)."""
    key = file_key(a)
    return key is not None and key == file_key(b)


def _within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, both with symlinks resolved."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def check_output(out: str | os.PathLike, flag: str, inputs: Iterable[tuple[str, Any]] = (),
                 folders: Iterable[tuple[str, Any]] = (), writes: Iterable[str] | None = None,
                 own: bool = False, run: str | os.PathLike | None = None) -> None:
    """Raise a UserError when writing ``out`` would replace or mix with something the command reads,
    or a symbolic link the user gave (the file is written beside it and renamed over the link).

    Args:
        out: an output file, or with ``writes`` an output folder.
        flag: the flag named in the error (``--out``).
        inputs: (what, path) of every file the command reads, e.g. ``("--prompt file", p)``;
            None or missing paths are skipped. An output that is the same file (symlinks
            followed, hard links and other spellings included) is refused.
        folders: (what, path) of folders whose files the command (or the run it exports) reads:
            an output inside one is refused, as a later run would read it as input.
        writes: the names of the files written into the output folder ``out``.
        own: ``out`` is a name the command makes up beside its output (``OUT.partial``): a link
            found there is replaced, not refused.
        run: the run folder whose ``prompt.safetensors`` the command writes again (export's);
            any other file of a fit or train run folder is refused as a file ``out``.
    """
    # (Path drops a final "/": "results/" would be written as the file results, and score's
    # OUT.partial became results/.partial, which the final rename onto "results/" refused)
    if writes is None and os.path.basename(os.fspath(out)) in ("", ".", ".."):
        raise UserError(f"{flag} {os.fspath(out) or repr('')}: names a folder, not a file; give the file's name")
    out = Path(out)
    st = path_stat(out, flag)
    if st is not None and writes is None and stat.S_ISDIR(st.st_mode):
        raise UserError(f"{flag} {out}: is a folder, not a file")
    if st is not None and writes is None and not stat.S_ISREG(st.st_mode):  # (a rename onto /dev/null would replace it)
        raise UserError(f"{flag} {out}: is a device, FIFO or socket, not a file")
    if st is not None and writes is not None and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{flag} {out}: is a file, not a folder")
    targets = [out] if writes is None else [out / name for name in writes]
    keys = {key: target for target in targets if (key := file_key(target)) is not None}
    for what, path in inputs if keys else ():
        target = keys.get(file_key(path)) if path is not None else None
        if target is None:
            continue
        if writes is None:
            raise UserError(f"{flag} {out}: is the {what} itself; writing there would destroy it")
        raise UserError(f"{flag} {out}: its {target.name} would be the {what} itself ({path}); writing it "
                        "would destroy that file")
    for what, folder in folders:  # (after the files: "is the image itself" says more than "is inside")
        if folder is not None and os.path.isdir(folder) and _within(out, folder):
            raise UserError(f"{flag} {out}: is inside {what} {folder}, whose files are read as input; "
                            "write to a place outside it")
    if writes is None and not own and out.name in _RUN_FOLDER_FILES:  # (a score CSV named checkpoint.pt)
        # (out itself too: a lone checkpoint.pt is a run's state; another file is named first)
        held = sorted((f for f in ("checkpoint.pt", "log.jsonl") if is_file(out.parent / f, flag)),
                      key=lambda f: f == out.name)
        if held and not (run is not None and out.name == "prompt.safetensors" and same_file(out.parent, run)):
            raise UserError(f"{flag} {out}: is the {out.name} of the run in {out.parent} (it holds {held[0]}); "
                            "writing there would mix with that run's files; write to another place")
    # (/dev/stdout is a link: the finished file, written beside it, would be renamed over the link)
    if writes is None and not own and os.path.islink(out):
        raise UserError(f"{flag} {out}: is a symbolic link, which the written file would replace (not the file it "
                        "points to); give a path that is not a link")


def check_output_folder(out: str | os.PathLike, flag: str = "--out", inputs: Iterable[tuple[str, Any]] = (),
                        folders: Iterable[tuple[str, Any]] = (), writes: Iterable[str] = ()) -> None:
    """Raise a UserError when the output folder ``out`` holds a fit or train run, whose
    ``config.json`` and resumable state an evaluation's files would overwrite or mix with, or a
    ``config.json`` of no evaluation (no ``metrics.json`` beside it, and not an evaluation's
    record), or when it is a file, lies inside one of ``folders`` or would replace one of
    ``inputs`` with a file of ``writes`` (see :func:`check_output`; checked before the slow work, as every check
    of an output is)."""
    check_output(out, flag, inputs, folders, writes=tuple(writes))
    held = [f for f in RUN_FILES if is_file(Path(out) / f, flag)]
    if held:
        raise UserError(f"{flag} {out}: holds a training run ({held[0]}); write the evaluation to another folder "
                        f"(e.g. {Path(out) / 'eval'})")
    # an evaluation writes its files all or none: a config.json without metrics.json beside it is
    # someone else's (a user's, a run's stopped before its checkpoint), which eval would replace or
    # remove, unless it is an evaluation's record whose metrics.json was removed (reproduce's advice
    # to run a stage again)
    config = Path(out) / "config.json"
    if is_file(config, flag) and not exists(Path(out) / "metrics.json", flag) and not _an_eval_record(config):
        raise UserError(f"{flag} {out}: holds a config.json that is not an evaluation's (no metrics.json beside "
                        f"it), which the evaluation would replace; write the evaluation to another folder "
                        f"(e.g. {Path(out) / 'eval'})")


_EVAL_RECORD_KEYS = ("id_data", "ood", "scores", "convention")  # (of every eval's config.json)


def _an_eval_record(path: Path) -> bool:
    """Whether ``path`` reads as the config.json an evaluation writes: a JSON object with the keys
    every such record holds."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(k in record for k in _EVAL_RECORD_KEYS)


def _umask() -> int:
    mask = os.umask(0)  # (reading the umask means setting it)
    os.umask(mask)
    return mask


def _mkdir(path: Path) -> None:
    """``path.mkdir(parents=True, exist_ok=True)``, each folder it makes flushed into its parent
    (:func:`fsync_folder`): a file flushed into a new folder is lost with it after a power loss
    where the folder's own entry was not."""
    made = [f for f in (path, *path.parents) if not os.path.lexists(f)]
    path.mkdir(parents=True, exist_ok=True)
    for f in reversed(made):  # (the outermost first)
        fsync_folder(f.parent)


def make_folder(path: str | os.PathLike, flag: str = "--out") -> None:
    """Create the output folder ``path`` (and its parents); a UserError naming ``flag`` if it cannot be."""
    path = Path(path)
    try:
        _mkdir(path)
    except OSError as e:
        reason = "is a file, not a folder" if os.path.exists(path) else f"cannot create the folder ({e.strerror or e})"
        raise UserError(f"{flag} {path}: {reason}") from None


def _write_error(path: Path, e: Exception) -> UserError:
    """One line for a failed write of ``path``. A full disk is named as such: torch.save reports
    it as a RuntimeError ('unexpected pos ...'), safetensors as a SafetensorError (with the
    system's error number, given here as the system's reason: out of inodes, bytes are free)."""
    os_error = re.search(r"\(os error (\d+)\)", str(e))  # (Rust's io::Error, as safetensors reports it)
    if isinstance(e, OSError) and e.strerror:  # (the system's own reason: a full disk says so itself)
        reason = e.strerror
    elif os_error and not isinstance(e, OSError):  # (its message names safetensors' own temporary file)
        reason = os.strerror(int(os_error.group(1)))
    else:
        reason = f"{type(e).__name__}: {first_line(e)}"
        if "unexpected pos" in str(e):  # (torch.save's short write, which drops the system's error number)
            reason = "the write stopped short (a file size limit, a disk quota or a full disk)"
        with contextlib.suppress(OSError):  # (/proc, /sys and read-only mounts report 0 bytes free too)
            if shutil.disk_usage(path.parent).free < 1 << 20:
                reason = "no space left on the device"
    kept = "; the file there before is unchanged" if os.path.exists(path) else ""
    return UserError(f"cannot write {path}: {reason}{kept}")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush the file ``path``'s bytes to the disk. A file renamed over the old one before its
    bytes are on the disk can be, after a power loss or a crash of the machine, an empty or
    partly written file where the whole old one was (XFS, btrfs, ext4 without ``auto_da_alloc``):
    the checkpoint a --resume needs."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush the entries of ``folder`` (its names, not its files' bytes) to the disk: a rename into
    it is on the disk only once its folder is (fsync(2)): after a power loss the name could hold
    the old file again, or none, the new one's bytes lost with the rename. Skipped quietly where
    a folder cannot be opened (Windows) or its file system does not flush folders (EINVAL): the
    rename is made all the same, as it was before."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # (the files are in place already: an error here is no failed write of theirs)
        pass
    finally:
        with contextlib.suppress(OSError):  # (nor one closing the folder, which wrote nothing)
            os.close(fd)


def _write_temporary(path: Path, write: Callable[[str], object]) -> str:
    """``write(tmp)`` on a new temporary file beside ``path``; its name. A failure removes it and is
    a UserError naming ``path``."""
    try:
        _mkdir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the result gets an ordinary file's mode
        fsync_file(tmp)
        return tmp
    except BaseException as e:  # (Ctrl-C too: no temporary file left behind)
        error = _write_error(path, e) if isinstance(e, Exception) else e  # (while the file still fills the disk)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if error is e:
            raise
        raise error from None


def _move_aside(path: Path) -> str:
    """Rename ``path`` to a new temporary name beside it (one :func:`remove_stale_temporaries`
    removes, where a kill left it); that name."""
    try:
        fd, aside = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    try:
        os.replace(path, aside)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(aside)
        raise _write_error(path, e) from None
    return aside


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to the disk, then rename it
    to ``path``.

    A crash (of the process or of the machine) or an exception never leaves half a file at
    ``path`` (the old file stays) nor a temporary file behind. The temporary name ends in
    ``.tmp``: writers that infer the format from the name (matplotlib) need it given explicitly.

    Raises:
        UserError: the file cannot be written (a full disk, a read-only or missing folder),
            naming ``path``.
    """
    atomic_write_files(Path(path).parent, {Path(path).name: write})


def atomic_write_files(folder: str | os.PathLike, writers: dict[str, Callable[[str], object]],
                       leftovers: tuple[str, ...] = (), last: str | None = None) -> None:
    """Write several files of ``folder`` as one: ``writers[name](tmp)`` fills a temporary file for
    each; only when every one is written are they renamed into place (``last``, one of them, after
    all the others: the file whose presence says the set is complete), and then the files named in
    ``leftovers`` that were not written now are deleted (those of an earlier run that wrote more).

    A failure while writing (a full disk, an exception in a writer, Ctrl-C) leaves the folder as it
    was, with no temporary file; other files in it are never touched. The renames are flushed to
    the disk (:func:`fsync_folder`), those before ``last`` before it is renamed: after a power loss
    too, the folder holds ``last`` only with the others. An earlier ``last`` is moved aside before
    the first rename, so that a rename failing after others (EIO of a failing disk), or a kill
    within the renames (microseconds), leaves some files new and some old but no ``last`` saying
    the set is whole; where no file was renamed yet it is put back.

    Raises:
        UserError: a file cannot be written, naming it (and, where the folder holds a mixed set
            now, saying so).
    """
    folder = Path(folder)
    for name in writers:  # (a rename onto a folder fails: found before the first rename, not after some)
        if os.path.isdir(folder / name) and not os.path.islink(folder / name):  # (a link is replaced)
            raise _write_error(folder / name, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
    temps: dict[str, str] = {}
    aside, renamed = None, []  # (the earlier `last`, under a temporary name while the others are renamed)
    try:
        for name, write in writers.items():
            temps[name] = _write_temporary(folder / name, write)
        for name, tmp in sorted(temps.items(), key=lambda item: item[0] == last):  # (a stable sort)
            if name == last and len(temps) > 1:
                fsync_folder(folder)  # (the others' renames first: a rename is not ordered with another on the disk)
            elif last in temps and len(temps) > 1 and aside is None and os.path.lexists(folder / last):
                aside = _move_aside(folder / last)
                fsync_folder(folder)  # (its removal on the disk before any new file's)
            try:
                os.replace(tmp, folder / name)  # atomic on POSIX: readers see the old file or the new one
            except OSError as e:
                error = _write_error(folder / name, e)
                if renamed:
                    error = UserError(f"{error}; {', '.join(renamed)} written already: the folder holds no whole "
                                      f"set of its files now" + (f" (and no {last})" if last else ""))
                raise error from None
            renamed.append(name)
    finally:
        if aside is not None and not renamed:  # (a failure or Ctrl-C before anything new: the earlier set whole again)
            with contextlib.suppress(OSError):
                os.replace(aside, folder / last)
                aside = None
        for tmp in [*temps.values(), *([aside] if aside else [])]:
            with contextlib.suppress(OSError):
                os.remove(tmp)  # (only those not renamed: a failure, or Ctrl-C)
    fsync_folder(folder)
    removed, kept = False, None
    for name in leftovers:
        if name not in writers:
            try:
                (folder / name).unlink()
                removed = True
            except (FileNotFoundError, IsADirectoryError):  # (a folder is no earlier run's file)
                pass
            except OSError as e:  # (EIO, EROFS, EPERM of an immutable file: said once the others are gone)
                kept = kept or (folder / name, e)
    if removed:  # (an earlier run's file, back after a power loss, would be read with the new ones)
        fsync_folder(folder)
    if kept:
        raise UserError(f"cannot remove {kept[0]}, an earlier run's file ({kept[1].strerror or kept[1]}); the other "
                        f"files of {folder} are this run's")


def temporary_pattern(name: str) -> str:
    """The glob (and fnmatch) pattern of the temporary files that :func:`atomic_write` and
    :func:`atomic_save_safetensors` make beside a file ``name`` ("*": beside any file)."""
    import glob

    return f".{'*' if name == '*' else glob.escape(name)}.*.tmp"


def remove_stale_temporaries(folder: str | os.PathLike, names: tuple[str, ...] | None,
                             older_than_s: float = 0.0) -> None:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` for ``names``
    (None: for any file) when its process was killed mid-write (SIGKILL, OOM killer, power loss):
    hidden, and each as large as the file it was to become (a checkpoint); and the folders of
    :func:`atomic_save_safetensors`, with safetensors' own temporary file in them (a folder
    under such a name holding anything else is not removed). With ``older_than_s``,
    only those untouched for that long: in a folder that other processes write to, a younger one
    may be a write in progress."""
    import time

    for pattern in [temporary_pattern("*")] if names is None else [temporary_pattern(name) for name in names]:
        for tmp in Path(folder).glob(pattern):
            with contextlib.suppress(OSError):
                if tmp.is_dir() and not tmp.is_symlink():  # (a safetensors write's folder: see atomic_save_safetensors)
                    inside = _safetensors_write_files(tmp)
                    if inside is not None and time.time() - max(
                            [tmp.stat().st_mtime, *(f.stat().st_mtime for f in inside)]) >= older_than_s:
                        _remove_safetensors_write(tmp, inside)
                elif time.time() - tmp.stat().st_mtime >= older_than_s:
                    tmp.unlink()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


# safetensors (0.8 on; 0.7 and before write the file itself) writes a file through a temporary of its own beside
# it, ".tmp" and six letters or digits, renamed to the file once written
_SAFETENSORS_TEMPORARY = re.compile(r"\.tmp[A-Za-z0-9]+")
_SAFETENSORS_FILE = "tensors"  # the file a write's folder gives safetensors to write


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` to a temporary file, then rename, with the metadata in
    sorted key order: the same tensors and metadata give the same bytes (safetensors writes its
    metadata in a hash map's order, which changes from one call to the next).

    safetensors 0.8 writes through a temporary file of its own, beside the file it is given
    (``.tmpXXXXXX``): a process killed while it writes (SIGKILL, the OOM killer) left that one
    behind, under a name no run knew as its own, as large as the file. It is given a file in a
    folder of our own beside ``path``, named as our temporary files are
    (``.NAME.XXXXXXXX.tmp/``): the next run's :func:`remove_stale_temporaries` removes it and
    what safetensors left in it. The tensors are not serialised to memory instead: a feature
    cache entry can be gigabytes."""
    from safetensors.torch import save_file

    def write(tmp: str) -> None:
        where = tempfile.mkdtemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=os.path.dirname(tmp))
        try:
            save_file(tensors, os.path.join(where, _SAFETENSORS_FILE), metadata=metadata)
            os.replace(os.path.join(where, _SAFETENSORS_FILE), tmp)
        finally:  # (empty but for a failure's or Ctrl-C's file)
            _remove_safetensors_write(Path(where), _safetensors_write_files(Path(where)) or [])
        _sort_safetensors_metadata(tmp)

    atomic_write(path, write)


def _safetensors_write_files(folder: Path) -> list[Path] | None:
    """The files in ``folder``, the folder of a safetensors write (:func:`atomic_save_safetensors`),
    or None where it holds anything such a write does not leave (a folder of a user's under a
    name like ours: left as it is)."""
    try:
        found = list(folder.iterdir())
    except OSError:
        return None
    if all((f.name == _SAFETENSORS_FILE or _SAFETENSORS_TEMPORARY.fullmatch(f.name)) and f.is_file()
           and not f.is_symlink() for f in found):
        return found
    return None


def _remove_safetensors_write(folder: Path, inside: list[Path]) -> None:
    """Remove the files ``inside`` the folder of a safetensors write, then the folder (where it is
    empty by then)."""
    with contextlib.suppress(OSError):
        for f in inside:
            f.unlink()
        folder.rmdir()


def _sort_safetensors_metadata(path: str) -> None:
    """Rewrite the header of the safetensors file ``path`` in place with ``__metadata__``'s keys
    sorted. The header is the same JSON in another order, so it keeps its length (checked: a
    header that would not is left as it is); the tensor data is not touched."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")  # [8-byte length][header JSON, space-padded][data]
        header = json.loads(f.read(n))
        if "__metadata__" not in header:
            return
        header = {"__metadata__": dict(sorted(header["__metadata__"].items())),
                  **{k: v for k, v in header.items() if k != "__metadata__"}}
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= n:
            f.seek(8)
            f.write(text + b" " * (n - len(text)))


def text_writer(text: str) -> Callable[[str], object]:
    """A writer for :func:`atomic_write_files` that writes ``text`` as UTF-8 whatever the locale
    says. A character UTF-8 cannot encode (a lone surrogate: a byte of a file name that is not
    UTF-8, in a class or set name) is written as its escape, ``\\udcNN``, not failing the write."""
    return lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="backslashreplace")


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write text atomically (temporary file + rename), as :func:`text_writer` writes it."""
    atomic_write(path, text_writer(text))


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``, where JSON nested too deeply for Python's recursion limit (``[`` x
    100,000 in a file a user hands in) is a ``json.JSONDecodeError`` too, which every reader
    of a file already turns into its one line, not a RecursionError traceback."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text if isinstance(text, str) else "", 0) from None


MAX_JSON_BYTES = 1 << 20  # a JSON file read whole (a config, a record, a report): far above any written here


def read_json(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> Any:
    """:func:`parse_json` of the file ``path``, UTF-8, of at most ``limit`` bytes: no more is read
    (a sparse file of gigabytes that a user hands in costs nothing to make).

    Raises:
        OSError: the file cannot be read.
        ValueError: a larger file, text that is not UTF-8 (UnicodeDecodeError) or not JSON
            (json.JSONDecodeError), both ValueErrors, which the callers turn into their one line;
            or no regular file (a FIFO, a device), which a plain open or read would wait on for ever.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # (opening a FIFO waits for a writer)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file (a FIFO or a device)")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes, more than such a file holds")
    return parse_json(data.decode("utf-8"))


def json_text(obj: Any) -> str:
    """Pretty JSON with sorted keys and a final newline: the text of :func:`write_json`."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write pretty JSON atomically."""
    atomic_write_text(json_text(obj), path)


def file_stamp(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """(size, modification time, change time, inode) of a file: what changes when its bytes may have.

    The change time and inode too: cp -p, rsync -a, tar and unzip set the old modification time on
    other bytes, but every write or replacement sets the change time (which nothing can set back).
    """
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def stamp_if_file(path: str | os.PathLike | None) -> tuple[int, int, int, int] | None:
    """:func:`file_stamp` of ``path``; None where there is no file to stat (a tag, no path, a
    path that is gone). Compared before and after a file is read, it shows one replaced meanwhile."""
    try:
        return file_stamp(path) if path else None
    except (OSError, ValueError):  # (ValueError: a NUL in the path)
        return None


def read_with_hash(path: str | os.PathLike, flag: str, read: Callable[[], Any]) -> tuple[Any, str]:
    """``(read(), the SHA-256 of path)``, both of one and the same file.

    The hash is what a run records and a resume or a cache checks; taken before or after the
    read, a file written at that moment by another command (an export to a prompt, a train to a
    base model) would be named by the other file's hash. A file replaced while it is read is
    refused in one line naming ``flag``.
    """
    before = stamp_if_file(path)
    value = read()
    try:
        sha = sha256_file(path)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot be read ({e.strerror or e})") from None
    if before is None or stamp_if_file(path) != before:
        raise UserError(f"{flag} {path}: was replaced while it was read (another command writing it now?); "
                        "run again once it is written")
    return value, sha


_SHA256: dict[tuple, str] = {}  # (path, file_stamp) -> digest: one read per file and process


def mapped_read_error(e: BaseException) -> str | None:
    """The system's reason in torch's error for a file it could not map (safetensors opens a file
    for torch through ``UntypedStorage.from_file``): "unable to open file <PATH> in read-only mode:
    Input/output error (5)" -> "Input/output error"; None for any other error."""
    m = re.search(r"unable to open file <.*> in read-only mode: (.+?) \(\d+\)", str(e)) if isinstance(e, RuntimeError) \
        else None
    return m.group(1) if m else None


def safetensors_error(what: str, e: Exception) -> Exception:
    """The error to raise for a safetensors file that ``safe_open`` or ``load_file`` could not read
    (``what``: "FLAG PATH"): the system's reason where torch could not map it (a failing disk's
    EIO: no damaged file), else no safetensors file; any other RuntimeError as it is."""
    if (reason := mapped_read_error(e)) is not None:
        return UserError(f"{what}: cannot be read ({reason})")
    if isinstance(e, RuntimeError):
        return e
    return UserError(f"{what}: not a safetensors file ({e})")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes; a file unchanged since (the same :func:`file_stamp`) is not
    read again in this process (``score`` checks a checkpoint found by name, then loads it)."""
    import hashlib

    key = (os.path.realpath(path), *file_stamp(path))
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


def tensor_checksums(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, str]:
    """SHA-256 per tensor over its name, dtype, shape and bytes and the metadata ``meta``: one per
    tensor, so that a read of some tensors of a file (the feature cache's global features without
    its large local ones) need not read the others. What the safetensors files clip-smot writes
    keep under the metadata key ``sha256`` (a JSON object), as safetensors has no checksum of its
    own: a flipped bit was a silently different tensor or class name."""
    import hashlib

    head = json.dumps(meta, sort_keys=True).encode()
    out = {}
    for name, t in tensors.items():
        h = hashlib.sha256(head)
        h.update(f"{name} {t.dtype} {list(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())  # the bytes as stored (0-d: one value)
        out[name] = h.hexdigest()
    return out


def checksum_mismatch(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str | None:
    """What of a file read does not match the ``sha256`` of its metadata (a JSON object of
    :func:`tensor_checksums` of the other metadata), as a message's subject: "ctx does" (one
    tensor's), "its metadata or tensors do" (more: each checksum covers the metadata); None where
    all match or ``meta`` has no ``sha256`` (a file of an older clip-smot, or converted by hand)."""
    if "sha256" not in meta:
        return None
    try:
        stored = parse_json(meta["sha256"])
    except ValueError:
        stored = None
    actual = tensor_checksums(tensors, {k: v for k, v in meta.items() if k != "sha256"})
    if not isinstance(stored, dict) or set(stored) != set(actual):  # (a checksum of a tensor it does not hold)
        return "its metadata or tensors do"
    changed = [k for k, v in actual.items() if stored[k] != v]
    if not changed:
        return None
    return f"{changed[0]} does" if len(changed) == 1 else "its metadata or tensors do"


ARCHIVE_SLACK = 64 << 20  # unpacked bytes a torch archive may hold beyond its size (TorchScript's code)


def archive_refusal(path: str | os.PathLike) -> str | None:
    """Why the zip archive ``path`` (torch.save's and TorchScript's format) must not be loaded,
    or None. Two reasons. It would unpack to more than its own size plus :data:`ARCHIVE_SLACK`:
    torch.save stores tensors uncompressed, so only a crafted file gets there (a 2 MB checkpoint
    whose deflated entry unpacked to 2.7 GB of memory). Or an entry's bytes fail the CRC-32 its
    directory records: torch's reader does not check it, so a flipped bit in a tensor's data was
    a silently different tensor (630 MB are checked in about 0.13 s). Anything else, no zip or a
    damaged one, is left to the loader, which names the problem; but a zip that torch reads (it
    begins with an entry's header and ends in a directory) whose directory Python's reader
    refuses (a zip version above 6.3, a record of the wrong length: no torch.save writes one) is
    refused too, as torch's own reader unpacks its entries all the same."""
    try:
        with zipfile.ZipFile(path) as z:  # (BadZipFile for safetensors and torch's legacy format)
            infos = z.infolist()
        size = os.path.getsize(path)
    except OSError:
        return None
    except Exception as e:  # (zipfile's BadZipFile, ValueError, NotImplementedError: a traceback, for the last)
        if _read_failed(e):  # (a failing disk, which zipfile says is no zip file: the loader names the read)
            return None
        if not (_begins_as_zip(path) and zipfile.is_zipfile(path)):  # (no zip to torch either: safetensors,
            return None  # torch's legacy format, a file cut short before its directory)
        return f"its zip directory cannot be measured ({first_line(e)}; torch.save writes no such archive); not loaded"
    unpacked = sum(info.file_size for info in infos)
    if unpacked > size + ARCHIVE_SLACK:
        return (f"its entries unpack to {unpacked} bytes, {unpacked / max(size, 1):.0f} times the file's {size} "
                "(torch.save stores tensors uncompressed); not loaded")
    return _damaged_entry(path)


def _damaged_entry(path: str | os.PathLike) -> str | None:
    """Why an entry of the zip archive ``path`` does not read back as written (its CRC-32, a local
    header that is not one), or None: every entry's bytes are read and checked."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                try:
                    with z.open(info) as f:  # (its CRC-32 is checked as the last bytes are read)
                        while f.read(1 << 20):
                            pass
                except OSError:
                    raise
                except Exception as e:  # noqa: BLE001 (BadZipFile, zlib.error, EOFError, NotImplementedError)
                    if str(e).startswith("Bad CRC-32"):
                        return (f"its entry {info.filename!r} fails its CRC-32 check: the file was damaged after "
                                "it was written; not loaded")
                    return (f"its entry {info.filename!r} does not read back ({type(e).__name__}: {first_line(e)}): "
                            "the file is damaged; not loaded")
    except OSError:
        return None  # (the loader names a read that fails)
    return None


def _begins_as_zip(path: str | os.PathLike) -> bool:
    """Whether the file begins with a zip entry's header, as torch.load tells a zip archive."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


# --- what kind of file a path holds ---------------------------------------------------------------
# A file of another kind given to a flag (a fit run's checkpoint.pt where a prompt is wanted) was
# refused with the reader's own words ("header too large", torch's paragraph on weights_only), which
# say nothing of the mistake. The kind is told from a few bytes, a zip's entry names, the start of
# its pickle and a safetensors header's metadata: nothing of the file is unpickled or loaded.

# the "format" that clip-smot's own files name (prompt_file.FORMAT, networks.MODEL_FORMAT,
# run_folder.CHECKPOINT_FORMATS: a test holds them alike) -> their kind
_FORMAT_KINDS = {"clip-smot-prompt": "prompt", "clip-smot-model": "model",
                 "clip-smot-fit-checkpoint": "fit-checkpoint", "clip-smot-train-checkpoint": "train-checkpoint"}
# each kind, as a message names it
FILE_KINDS = {
    "prompt": "a prompt file (fit's or export's .safetensors)",
    "model": "a model file of clip-smot train (.safetensors)",
    "fit-checkpoint": "a fit checkpoint (a torch archive)",
    "train-checkpoint": "a train checkpoint (a torch archive)",
    "clip-weights": "CLIP weights",
    "resnet-weights": "a ResNet state dict",
    "torch-archive": "a torch archive (torch.save's)",
    "torchscript": "a TorchScript archive",
    "torch-cut": "a torch archive cut short (its zip directory is missing: a copy or download that stopped?)",
    "pickle": "a pickle (torch.save's legacy format)",
    "safetensors": "a safetensors file without clip-smot metadata",
    "model-config": "an open_clip model config (JSON)",
    "fit-config": "the config.json of a fit run",
    "train-config": "the config.json of a train run",
    "json": "a JSON file",
}
_SNIFF_BYTES = 1 << 20  # of a safetensors header, a JSON file or a torch archive's pickle


def file_kind(path: str | os.PathLike) -> str | None:
    """The kind of the file ``path`` (a key of :data:`FILE_KINDS`), or None where it is none of
    them (or cannot be read: the loader names why). Sniffed, never loaded: at most
    :data:`_SNIFF_BYTES` of it are read."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # (a FIFO's read would wait)
            return None
        with open(path, "rb") as f:
            head = f.read(9)
            if head[:4] == b"PK\x03\x04":
                return _zip_kind(path)
            n = int.from_bytes(head[:8], "little")
            if head[8:9] == b"{" and n <= os.fstat(f.fileno()).st_size - 8:  # (safetensors: the header's length,
                if n > _SNIFF_BYTES:  # then the header; one this long is left to its loader)
                    return None
                f.seek(8)
                return _safetensors_kind(parse_json(f.read(n).decode("utf-8")))
            if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # (a pickle's PROTO)
                return "pickle"
            f.seek(0)
            text = f.read(_SNIFF_BYTES + 1)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return None
    start = text.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if start not in (b"{", b"["):
        return None
    try:
        value = parse_json(text.decode("utf-8-sig"))
    except (ValueError, RecursionError):  # (cut at the limit, or damaged)
        return "json"
    if not isinstance(value, dict):
        return "json"
    if isinstance(value.get("vision_cfg"), dict) and isinstance(value.get("text_cfg"), dict):
        return "model-config"
    for kind, keys in (("fit-config", ("shots", "n_ctx")), ("train-config", ("arch", "stage"))):
        if all(k in value for k in keys):
            return kind
    return "json"


def _safetensors_kind(header) -> str | None:
    """:func:`file_kind` of a safetensors file of the parsed ``header`` (a JSON object: its text
    begins with ``{``)."""
    meta = header.get("__metadata__")
    found = meta.get("format") if isinstance(meta, dict) else None
    if isinstance(found, str) and found in _FORMAT_KINDS and _FORMAT_KINDS[found] in ("prompt", "model"):
        return _FORMAT_KINDS[found]
    if found is not None:  # (a format of another clip-smot, or of someone else's: its loader speaks)
        return None
    keys = set(header) - {"__metadata__"}
    return _weights_kind(keys) or ("safetensors" if not {"ctx", "text_features"} & keys else None)


def _weights_kind(keys) -> str | None:
    """"clip-weights" or "resnet-weights" where the names ``keys`` are those of such a state
    dict (with or without DataParallel's ``module.``), else None."""
    keys = {k.removeprefix("module.") for k in keys}
    if any(k.startswith("visual.") for k in keys) and {"text_projection", "token_embedding.weight"} & keys:
        return "clip-weights"
    if {"conv1.weight", "fc.weight"} <= keys:
        return "resnet-weights"
    return None


def _read_failed(e: BaseException | None) -> bool:
    """Whether ``e`` is, or was raised for, a read the system failed (an OSError with an error
    number: EIO of a failing disk), which zipfile raises again as BadZipFile ("File is not a zip
    file"): the file may be whole, and is not to be called cut short or of another kind."""
    while e is not None:
        if isinstance(e, OSError) and e.errno is not None:
            return True
        e = e.__cause__ or e.__context__
    return False


def _zip_kind(path: str | os.PathLike) -> str | None:
    """:func:`file_kind` of a file that begins as a zip: a torch archive, and whose checkpoint
    or state dict its pickle's first bytes tell (a checkpoint's ``format`` is its first key; a
    pickle holds each string as its UTF-8 bytes)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if any(n.split("/", 1)[-1] == "constants.pkl" for n in names):
                return "torchscript"
            pkl = next((n for n in names if n.split("/", 1)[-1] == "data.pkl"), None)
            if pkl is None:  # (a zip of something else)
                return None
            with z.open(pkl) as entry:
                pickled = entry.read(_SNIFF_BYTES)
    except zipfile.BadZipFile as e:
        return None if _read_failed(e) else "torch-cut"
    except Exception as e:  # noqa: BLE001 (an entry zipfile cannot read: the loader names it)
        return None if _read_failed(e) else "torch-archive"
    for fmt, kind in _FORMAT_KINDS.items():
        if fmt.encode() in pickled[:4096]:
            return kind
    keys = [k for k in ("conv1.weight", "fc.weight", "text_projection", "token_embedding.weight", "visual.")
            if re.search(rb"(?<![\w.])(?:module\.)?" + re.escape(k.encode()), pickled)]
    return _weights_kind(["visual.x" if k == "visual." else k for k in keys]) or "torch-archive"


# what each flag's file is (wanted), the kinds it takes besides, and how to get one
_WANTS = {
    "prompt": ("a prompt file", ("prompt",),
               "`clip-smot fit` writes one (OUT/prompt.safetensors), `clip-smot export` one from a fit checkpoint"),
    "model": ("a model file of clip-smot train", ("model",), "`clip-smot train` writes one (OUT/model.safetensors)"),
    "base-model": ("a model file of clip-smot train", ("model",),
                   "`clip-smot train --stage base` writes one (OUT/model.safetensors)"),
    "fit-checkpoint": ("a fit checkpoint", ("fit-checkpoint",),
                       "`clip-smot fit` writes one (OUT/checkpoint.pt)"),
    "cam-model": ("a ResNet state dict or a model file of clip-smot train",
                  ("model", "resnet-weights", "torch-archive", "pickle", "safetensors"),
                  "torchvision's resnet18 weights are one (resnet18-f37072fd.pth); `clip-smot train` writes the other"),
    "clip-weights": ("CLIP weights", ("clip-weights", "torch-archive", "torchscript", "pickle", "safetensors"),
                     "--pretrained takes a tag of the model (openai) or a weights file of open_clip or OpenAI"),
    "model-config": ("a model-config JSON", ("model-config", "json", "fit-config", "train-config"),
                     "--model takes an open_clip architecture name (ViT-B-16) or such a file (open_clip's "
                     "model_configs/NAME.json)"),
}


def _run_file(beside: str) -> str:
    """The advice for a train checkpoint where its run's model file is wanted (``beside``: "" where
    the run has written none yet)."""
    return f"give the model its run writes when it ends ({beside})" if beside else \
        "give the model.safetensors its run writes when it ends"


_BASE_MODEL = ("fit's --cam-model takes a torchvision state dict; train's is the model file of a `clip-smot train "
               "--stage base` run (OUT/model.safetensors)")
# advice for a kind given where another is wanted, from (the file, its folder, the file of the
# wanted kind beside it or ""), where it says more than where such files come from
_ADVICE = {
    ("fit-checkpoint", "prompt"): lambda path, folder, beside: (
        f"export one with `clip-smot export --checkpoint {path} --out p.safetensors`"
        + (f", or give {beside}" if beside else "")),
    ("train-checkpoint", "prompt"): lambda path, folder, beside: (
        f"a trained ResNet is evaluated with `clip-smot eval --checkpoint {folder / 'model.safetensors'}`"),
    ("model", "prompt"): lambda path, folder, beside: (
        f"a trained ResNet is evaluated with `clip-smot eval --checkpoint {path}`"),
    ("prompt", "model"): lambda path, folder, beside: f"a prompt is evaluated with `clip-smot eval --prompt {path}`",
    ("fit-checkpoint", "model"): lambda path, folder, beside: (
        f"a fit run is evaluated with `clip-smot eval --prompt {folder / 'prompt.safetensors'}`"),
    ("train-checkpoint", "model"): lambda path, folder, beside: _run_file(beside),
    ("train-checkpoint", "base-model"): lambda path, folder, beside: _run_file(beside),
    ("train-checkpoint", "cam-model"): lambda path, folder, beside: _run_file(beside),
    ("resnet-weights", "base-model"): lambda path, folder, beside: _BASE_MODEL,
    ("torch-archive", "base-model"): lambda path, folder, beside: _BASE_MODEL,
    ("prompt", "fit-checkpoint"): lambda path, folder, beside: "it is exported already: give it to --prompt",
    ("prompt", "clip-weights"): lambda path, folder, beside: (
        "a prompt is given to score or eval as --prompt; --pretrained takes the CLIP weights it was made with"),
    ("prompt", "model-config"): lambda path, folder, beside: (
        "a prompt is given to score or eval as --prompt; --model takes the model config it was made with"),
}
_BESIDE = {"prompt": "prompt.safetensors", "model": "model.safetensors", "base-model": "model.safetensors",
           "cam-model": "model.safetensors"}
_TORCH_KINDS = ("torch-archive", "fit-checkpoint")  # (a flag taking either reads a torch archive)


def check_kind(path: str | os.PathLike, flag: str, wants: str) -> None:
    """Refuse, in one line naming ``flag`` and ``path``, a file of a kind the flag does not take
    (:func:`file_kind`): what it is, what the flag wants and how to get one; and a torch archive
    cut short where the flag takes torch archives. A file of a kind not known (None) is left to
    its loader, which names what is wrong with it.

    Args:
        path: the file given.
        flag: the flag it was given to (``--prompt``).
        wants: what the flag takes: a key of ``_WANTS`` (``prompt``, ``model``, ``base-model``,
            ``fit-checkpoint``, ``cam-model``, ``clip-weights``, ``model-config``).
    """
    wanted, takes, source = _WANTS[wants]
    kind = file_kind(path)
    if kind is None or kind in takes:
        return
    if kind == "torch-cut" and any(k in takes for k in _TORCH_KINDS):
        raise UserError(f"{flag} {path}: {FILE_KINDS[kind]}; not loaded")
    folder = Path(path).parent
    beside = folder / _BESIDE[wants] if wants in _BESIDE else None
    beside = str(beside) if beside is not None and is_file(beside, flag) and not same_file(beside, path) else ""
    if kind == "model-config":
        advice = "give it to --model"
    elif kind == "clip-weights":
        advice = "give it to --pretrained"
    elif kind == "resnet-weights" and wants in ("prompt", "model", "fit-checkpoint", "clip-weights",
                                                                "model-config"):
        advice = "give it to fit's --cam-model"
    else:
        advice = _ADVICE[kind, wants](path, folder, beside) if (kind, wants) in _ADVICE else source
    raise UserError(f"{flag} {path}: {FILE_KINDS[kind]}, not {wanted}; {advice}")
