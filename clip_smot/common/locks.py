"""Locks: one command at a time on an output (``output_lock``), processes taking turns at a
shared file (``file_lock``)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Iterator

from clip_smot.common.errors import UserError
from clip_smot.common.files import file_key, make_folder

__all__ = ["file_lock", "output_lock"]


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
