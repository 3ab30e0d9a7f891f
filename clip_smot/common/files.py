"""Files: atomic writes, outputs checked against inputs, names from files, JSON and hashes (an output's
lock: :mod:`clip_smot.common.locks`; what a file holds: :mod:`clip_smot.common.file_kinds`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from clip_smot.common.errors import UserError, first_line

__all__ = ["RUN_FILES", "cache_root", "path_stat", "exists", "is_file", "missing_file", "is_folder", "plain_name", "given_path", "file_key", "leaves_root", "same_file", "check_output", "check_output_folder", "make_folder", "atomic_write", "atomic_write_files", "fsync_file", "fsync_folder", "temporary_pattern", "remove_stale_temporaries", "atomic_save", "atomic_save_safetensors", "text_writer", "atomic_write_text", "parse_json", "read_json", "json_text", "write_json", "file_stamp", "stamp_if_file", "read_with_hash", "sha256_file", "tensor_checksums", "checksum_mismatch", "mapped_read_error", "safetensors_error"]

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
