"""Tar shards in the webdataset layout (``KEY.jpg``, ``KEY.png``, ... inside an uncompressed
``.tar``), read with the standard library's ``tarfile``: no extra package, nothing extracted.

An image inside a shard is named ``SHARD.tar::MEMBER`` (the shard's path as given, two colons, the
member's name as stored), in the CSV and everywhere a file path would be. A shard is treated as
hostile: member names are never joined to a path; only regular members with an image extension are
listed (directories, links, devices, sparse files and hidden ``.*`` names, names in a hidden
``.*/`` folder, and names in a top ``__NAME__/`` folder, which webdataset's reader skips as
metadata, are skipped); a member over :data:`MAX_MEMBER_BYTES` is an unreadable image, not a read;
a shard is refused where an image's name is stored twice, or where webdataset's reader would stop
at a field met twice in a sample (``a.jpg`` beside ``a.JPG``: it compares suffixes in lower case);
a shard cut short anywhere but inside an image or its end-of-archive blocks, with a damaged header,
or followed by another tar, is unreadable; so is one whose headers for a member (pax records, GNU
long names, a sparse map, with the global pax records in force) take more than
:data:`MAX_HEADER_BYTES`, which tarfile would hold in memory whole, or that extend one another more
deeply than tarfile can follow. Listing reads the headers alone (seeking over the data); reading
one image seeks to its bytes through an index of the shard, built once per process and kept for the
:data:`_INDEXED` shards used last, so memory does not grow with the number of images, nor with the
sizes a shard's headers declare. A compressed tar (``.tar.gz``, ``.tgz``, ``.tar.bz2``,
``.tar.xz``, ``.tar.zst``, ``.tar.lz4``, ..., or such a stream named ``.tar``), which webdataset
writes and streams (gzip, bzip2, xz), is refused in one line: it has no offset to seek to.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
import tarfile
from typing import Iterator

from clip_smot.common.errors import UserError, cut
from clip_smot.common.files import file_stamp

__all__ = ["MAX_MEMBER_BYTES", "MAX_HEADER_BYTES", "SEPARATOR", "is_shard", "split_member", "list_members",
           "read_image_bytes", "image_identity", "image_stamp"]

SEPARATOR = "::"
MAX_MEMBER_BYTES = 1 << 28  # 256 MiB: far above any photograph, far below a machine's memory
# 1 MiB of headers for one member: tarfile reads a pax or GNU long-name header whole and parses
# copies of it, and builds a sparse map as a list of tuples, several times its bytes. A real
# member's take a few KB: paths and link targets (PATH_MAX: 4 KiB), times, owner names, extended
# attributes (Linux: 64 KiB a value at most); 1 MiB also holds a sparse map of 43,000 fragments.
MAX_HEADER_BYTES = 1 << 20
_INDEXED = 4  # shards whose index a process keeps (DataLoader workers read a few at a time)
# Compressed tars, as webdataset's TarWriter writes them for a name ending in "gz", "bz2" or "xz" and
# its reader streams them, and as `tar --zstd` and `tar -I lz4` write them: refused in one line (an
# image is read at its offset, which a compressed stream has not) rather than read as one image file
# that does not decode. Told by name, or, named .tar, by their magic numbers (zstd: its frame's
# 0xFD2FB528, little-endian; lz4: its frame's 0x184D2204 and its legacy format's 0x184C2102)
_COMPRESSED = {".tar.gz": "gzip", ".tgz": "gzip", ".tar.bz2": "bzip2", ".tbz2": "bzip2", ".tar.xz": "xz",
               ".txz": "xz", ".tar.zst": "zstd", ".tzst": "zstd", ".tar.lz4": "lz4"}
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
          b"\x04\x22\x4d\x18": "lz4", b"\x02\x21\x4c\x18": "lz4"}
# webdataset's reader (webdataset.tariterators: base_plus_ext, group_by_keys, with their defaults):
# a regular member is the field SUFFIX, lower-cased, of the sample KEY, its name split at the first
# dot of its last part; members in a row with one KEY are one sample, whose "__key__" and "__url__"
# the reader sets itself; a field met twice in a sample stops its reading (ValueError: duplicate
# file name in tar file). The pattern is webdataset's own, as it is: no dot, no sample.
_SAMPLE_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# what that reader skips as metadata, no sample's: a name that starts with a __NAME__ part
# (``__meta__/x.jpg``, ``__index__``; webdataset.tariterators.tar_file_iterator's skip_meta)
_METADATA = re.compile(r"__[^/]*__($|/)")
_SAMPLE_OWN = ("__key__", "__url__")


def is_shard(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a tar shard: a regular file whose name ends in ``.tar``, or in a
    compressed tar's suffix (``.tar.gz``, ``.tgz``, ...: a shard that :func:`list_members`
    refuses by name, not an image file to decode)."""
    return str(path).lower().endswith((".tar", *_COMPRESSED)) and os.path.isfile(path)


def _compressed(shard: str, flag: str, kind: str) -> UserError:
    return UserError(f"{flag} {shard}: a tar shard compressed with {kind}, which is not read (images are read at their "
                     f"offsets in an uncompressed tar); decompress it to a .tar first ({kind} -dc SHARD > NAME.tar)")


def _unreadable(shard: str, flag: str, e: Exception) -> UserError:
    """The error of a shard that tarfile could not read: a compressed tar named ``.tar`` (its first
    bytes tell; webdataset reads one) is said to be one, anything else is not a readable tar."""
    try:
        with open(shard, "rb") as f:
            head = f.read(6)
    except OSError:
        head = b""
    if kind := next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None):
        return _compressed(shard, flag, kind)
    return UserError(f"{flag} {shard}: not a readable uncompressed tar shard ({e})")


def split_member(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(shard, member)`` of a ``SHARD.tar::MEMBER`` name, or None for any other path (a file
    that exists under that very name included)."""
    s = os.fspath(path)
    s = s if isinstance(s, str) else os.fsdecode(s)
    i = s.lower().find(".tar" + SEPARATOR)
    if i < 0 or os.path.lexists(s):
        return None
    return s[: i + 4], s[i + 4 + len(SEPARATOR):]


def _members(tar: tarfile.TarFile, reads: _BoundedReads) -> Iterator[tarfile.TarInfo]:
    """The headers of ``tar`` (opened on ``reads``) one by one, without the list of all of them
    that ``tarfile`` keeps, each member's headers read within :data:`MAX_HEADER_BYTES`.

    Raises:
        tarfile.ReadError: a header with a negative size (base-256 and pax headers can say so),
            which moved tarfile's next header back onto an earlier one: a -512 read the same
            header for ever, a -1024 listed a member whose bytes could not be read.
    """
    end = 0
    while True:
        # (the global pax records in force count against the member's headers: each global
        # header is within the limit, but they add up, and tarfile copies them into every member)
        reads.new_member(tar.offset, _pax_bytes(tar.pax_headers))
        if (info := tar.next()) is None:
            return
        tar.members = []  # (tarfile appends each header to it: a shard of millions would fill memory)
        # (tar.offset: where tarfile reads the next header, after the bytes the member stores; a
        # sparse member's size is its whole length, holes included, more than it stores)
        if info.size < 0 or info.offset < end or tar.offset < info.offset_data:
            raise tarfile.ReadError(f"member {info.name[:200]!r} has a negative size or overlaps the one before")
        end = tar.offset
        yield info


def _listable(info: tarfile.TarInfo) -> bool:
    from clip_smot.common.images import IMAGE_EXTENSIONS

    parts = info.name.split("/")
    # hidden: a name or a folder in it starting with "." (as a folder walk skips them; "./a.jpg", of
    # "tar cf s.tar .", and "../a.jpg" are not)
    hidden = any(p.startswith(".") and p not in (".", "..") for p in parts)
    return (info.isreg() and not info.issparse() and not hidden and not _METADATA.match(info.name)
            and os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS)


def _pax_bytes(records: dict[str, str]) -> int:
    return sum(len(k) + len(v) for k, v in records.items())  # (empty, or a few, in a real shard)


class _BoundedReads:
    """A binary file whose reads ask for no more than the bytes left in it, and read no more than
    :data:`MAX_HEADER_BYTES` for one member's headers (:meth:`new_member` starts a member).

    tarfile reads a pax or GNU long-name header's data in one read of the size its header
    declares, and a read allocates that size first: a 2.5 KB shard declaring a 1 TiB pax header
    was a MemoryError. With the bytes there, that read and the copies its parsing makes held
    several times the header's size, and a sparse map read block by block a list several times
    its bytes: the limit is checked before each read, so the large one is never made."""

    def __init__(self, f):
        self._f, self._size = f, os.fstat(f.fileno()).st_size
        self.new_member(0, 0)  # (tarfile.open reads the first member)

    def new_member(self, at: int, held: int) -> None:
        """Count the reads from here as the headers of the member at byte ``at``; ``held``: the
        bytes of header tarfile holds for it already (the global pax records)."""
        self.at, self._read = at, held

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._f.tell())
        n = left if n is None or n < 0 else min(n, left)
        if self._read + n > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"the headers at byte {self.at} take more than {MAX_HEADER_BYTES} bytes of "
                                    "pax records, long names or sparse map, far more than a real shard's")
        self._read += n
        return self._f.read(n)

    def __getattr__(self, name: str):  # (seek, tell, name, mode: the file's own)
        return getattr(self._f, name)


def _scan(shard: str, flag: str) -> dict[str, tuple[int, int]]:
    """member name -> (offset of its data, size), for the listable members of ``shard``, in order."""
    if kind := next((k for suffix, k in _COMPRESSED.items() if shard.lower().endswith(suffix)), None):
        raise _compressed(shard, flag, kind)
    index: dict[str, tuple[int, int]] = {}
    info = None
    key, fields = None, set()  # (the sample webdataset's reader is at, and its fields so far)
    try:
        # uncompressed only: an image is read by its offset
        with open(shard, "rb") as f, tarfile.open(fileobj=(reads := _BoundedReads(f)), mode="r:") as tar:
            for info in _members(tar, reads):
                if _listable(info):
                    if info.name in index:  # (tar extracts the last; webdataset stops at it, or reads both apart)
                        raise UserError(f"{flag} {shard}: the member {_quoted(info.name)} is stored twice, which "
                                        "leaves its image ambiguous; keep one")
                    index[info.name] = (info.offset_data, info.size)
                if info.isreg() and not _METADATA.match(info.name) and (m := _SAMPLE_NAME.match(info.name)):
                    if m[1] != key:
                        key, fields = m[1], set(_SAMPLE_OWN)
                    if (field := m[2].lower()) in fields:
                        raise _field_twice(shard, flag, info.name, key, field)
                    fields.add(field)
            _check_end(f, tar.offset)
    except tarfile.ReadError as e:
        # the shard cut inside its last member, an image listed: that image is the unreadable one.
        # Cut inside a member that is no image (a KEY.cls), or after an image's bytes, nothing
        # names the images that were after the cut: the shard is unreadable, not shorter.
        if not (str(e) == "unexpected end of data" and info is not None
                and index.get(info.name) == (info.offset_data, info.size)
                and info.offset_data + info.size > os.path.getsize(shard)):
            raise _unreadable(shard, flag, e) from None
    except FileNotFoundError:
        raise UserError(f"{flag} {shard}: no such file") from None
    except (tarfile.TarError, OSError, ValueError) as e:
        raise _unreadable(shard, flag, e) from None
    except RecursionError:  # (tarfile reads an extended header's next header by recursing into it)
        raise UserError(f"{flag} {shard}: not a readable uncompressed tar shard (the headers at byte {reads.at} "
                        "extend one another more deeply than tarfile can follow)") from None
    return index


def _quoted(name: str) -> str:
    """A member's name for a one-line message: quoted, its line breaks and control characters
    escaped, cut after 200 characters (a GNU long name may be far longer)."""
    return repr(cut(name, 200))


def _field_twice(shard: str, flag: str, name: str, key: str, field: str) -> UserError:
    """The error of a member that webdataset's reader stops at: a field its sample has already."""
    what = ("a field that webdataset's reader sets itself", "rename it") if field in _SAMPLE_OWN else (
        "a second field of that name in the sample (suffixes are compared in lower case, as webdataset's reader "
        "compares them)", "keep one")
    return UserError(f"{flag} {shard}: the member {_quoted(name)} is the field {_quoted(field)} of the sample "
                     f"{_quoted(key)}, {what[0]}: webdataset's reader stops at it (duplicate file name); {what[1]}")


def _check_end(f, offset: int) -> None:
    """Raise tarfile.ReadError unless ``offset``, where tarfile stopped, is the shard's end: its
    end-of-archive zero blocks (cut inside them, every member is whole), then zeros alone.

    tarfile ends quietly at a header cut short, damaged (a flipped bit: its checksum wrong) or
    missing (a copy stopped between two members), and at the end of the first of two tars written
    one after the other (``cat a.tar b.tar``): the images after would be gone without a word."""
    f.seek(offset)
    tail = f.read(tarfile.BLOCKSIZE)
    if not tail:
        raise tarfile.ReadError(f"it ends at byte {offset} without tar's end-of-archive blocks: cut short?")
    if tail.strip(b"\0"):
        raise tarfile.ReadError("unexpected end of data" if len(tail) < tarfile.BLOCKSIZE else
                                f"a damaged header at byte {offset}")
    at = offset + len(tail)
    # (the zeros that pad a tar to its record size, 10 KiB usually; the holes of a sparse file skipped)
    while (at := _next_data(f, at)) is not None and (chunk := f.read(1 << 20)):
        if rest := chunk.lstrip(b"\0"):
            raise tarfile.ReadError(f"data follows its end-of-archive blocks at byte {at + len(chunk) - len(rest)}: "
                                    "two tars one after the other? give each as its own shard")
        at += len(chunk)


def _next_data(f, at: int) -> int | None:
    """The offset of the first byte at or after ``at`` that is not in a hole of ``f`` (a hole reads
    as zeros), ``f`` moved there; None when only a hole is left. A shard whose tail is a hole of a
    terabyte (``truncate -s 1T``: nothing on disk) had every zero of it read: hours, for one
    listing. Where the file system tells no holes, ``at`` itself."""
    fd = f.fileno()
    kept = os.lseek(fd, 0, os.SEEK_CUR)  # (put back after: the buffered reader ``f`` counts on it)
    try:
        at = os.lseek(fd, at, getattr(os, "SEEK_DATA", os.SEEK_SET))
    except OSError as e:
        if e.errno == errno.ENXIO:  # (no data at or after ``at``)
            return None
        if e.errno != errno.EINVAL:  # (EINVAL: no SEEK_DATA on that file system: read on)
            raise
    finally:
        os.lseek(fd, kept, os.SEEK_SET)
    f.seek(at)
    return at


@functools.lru_cache(maxsize=_INDEXED)
def _index(shard: str, stamp: tuple, flag: str = "PATH") -> dict[str, tuple[int, int]]:
    return _scan(shard, flag)  # (``stamp`` in the key: a shard replaced since is scanned again)


def _shard_index(shard: str, flag: str | None) -> dict[str, tuple[int, int]]:
    """The index of ``shard``, scanned once while the file is unchanged: listing fills it, and
    the DataLoader workers that read the images (forked after) start with it. ``flag``: the
    option that named the shard (None: it is read for an image, the message names the shard)."""
    try:
        stamp = file_stamp(shard)
    except OSError as e:
        if flag is not None and isinstance(e, FileNotFoundError):
            raise UserError(f"{flag} {shard}: no such file") from None
        raise UserError(f"{shard}: cannot read the shard ({e.strerror or e})") from None
    return _index(shard, stamp, flag or "PATH")


def list_members(shard: str | os.PathLike, flag: str = "PATH") -> list[str]:
    """``SHARD::MEMBER`` names of the images in ``shard``, in the shard's order.

    Raises:
        UserError: not a readable uncompressed tar, or one without images.
    """
    shard = os.fspath(shard)
    if f".tar{SEPARATOR}" in shard.lower():  # (split_member splits a name at the first: another shard's member)
        # (in a folder's name, or in the shard's own: "a.tar::b.tar" is a file a shard can be)
        which = "that folder" if f".tar{SEPARATOR}" in os.path.dirname(shard).lower() else "the shard"
        raise UserError(f"{flag} {shard}: its path holds '.tar{SEPARATOR}', which its images' names "
                        f"(SHARD.tar{SEPARATOR}MEMBER) would be split at, naming another shard; rename {which}")
    names = [f"{shard}{SEPARATOR}{name}" for name in _shard_index(shard, flag)]
    if not names:
        raise UserError(f"{flag} {shard}: no image members found (looked for KEY.jpg, KEY.png and the like)")
    _check_no_clash(shard, names, flag)
    return names


@functools.lru_cache(maxsize=_INDEXED)
def _names_with_separator(folder: str, stamp: tuple) -> tuple[str, ...]:
    """The names in ``folder`` that hold ``::`` (``stamp``: the folder's, so a change lists it again;
    a folder of 10,000 shards is listed once, not once a shard)."""
    return tuple(n for n in os.listdir(folder) if SEPARATOR in n)


def _check_no_clash(shard: str, names: list[str], flag: str) -> None:
    """Raise a UserError when a file beside ``shard`` has a member's ``SHARD.tar::MEMBER`` name:
    that name reads the file (:func:`split_member`), and the member's row would hold its scores."""
    folder, base = os.path.split(shard)
    folder = folder or "."
    try:  # (a stat per member only when a name there starts like theirs)
        st = os.stat(folder)
        if not any(n.startswith(base + SEPARATOR) for n in _names_with_separator(folder, (st.st_mtime_ns, st.st_ino))):
            return
    except OSError:
        return
    if clash := next((n for n in names if os.path.lexists(n)), None):
        raise UserError(f"{flag} {shard}: {clash} is a file beside the shard with the name of one of its images, "
                        "whose bytes it would read instead; rename that file")


def _read_member(shard: str, member: str) -> bytes:
    entry = _shard_index(shard, None).get(member)
    if entry is None:
        raise UserError(f"{shard}{SEPARATOR}{member}: no such image in the shard")
    offset, size = entry
    if size > MAX_MEMBER_BYTES:
        raise UserError(f"{shard}{SEPARATOR}{member}: too large ({size} bytes, at most {MAX_MEMBER_BYTES})")
    try:
        with open(shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError as e:
        raise UserError(f"{shard}: cannot read the shard ({e.strerror or e})") from None
    if len(data) != size:
        raise UserError(f"{shard}{SEPARATOR}{member}: the shard ends inside this image (truncated)")
    return data


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image file or of a shard's member (``SHARD.tar::MEMBER``).

    Raises:
        UserError: naming the file or member, when it cannot be read.
    """
    member = split_member(path)
    if member is not None:
        return _read_member(*member)
    try:
        # The listings hand in regular files only, but a path can be replaced after it was listed: by a
        # FIFO, whose open and read would wait for a writer, or /dev/zero, whose read never ends.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            if not stat.S_ISREG(st.st_mode):
                raise UserError(f"{path}: cannot read the image file (not a regular file: a FIFO or a device)")
            if st.st_size > MAX_MEMBER_BYTES:  # (read whole: a size the file picks)
                raise UserError(f"{path}: too large for an image file ({st.st_size} bytes, at most {MAX_MEMBER_BYTES})")
            # its size and one byte more, which only a file grown since its stat has: then on to the limit, no
            # further (a read of the limit itself allocated 256 MiB for each image, 8x the time of a 150 kB read)
            data = f.read(st.st_size + 1)
            if len(data) > st.st_size:
                data += f.read(MAX_MEMBER_BYTES + 1 - len(data))
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the image file ({e.strerror or e})") from None
    if len(data) > MAX_MEMBER_BYTES:
        raise UserError(f"{path}: too large for an image file (more than {MAX_MEMBER_BYTES} bytes)")
    return data


def image_identity(path: str | os.PathLike) -> str:
    """The absolute path of an image file, or of a shard's member the shard's absolute path with the
    member's name: the same for every spelling of a path (relative or absolute)."""
    member = split_member(path)
    if member is None:
        return os.path.abspath(path)
    shard, name = member
    return f"{os.path.abspath(shard)}{SEPARATOR}{name}"


def image_stamp(path: str | os.PathLike) -> list:
    """``[image_identity, *file_stamp]`` of an image file or a shard's member (the shard's stamp:
    a shard rewritten gives another stamp)."""
    member = split_member(path)
    return [image_identity(path), *file_stamp(path if member is None else member[0])]
