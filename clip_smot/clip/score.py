"""``clip-smot score``: one CSV row per image of PATHS, written as it goes, and ``--resume``.

PATHS (image files, folders, image lists, tar shards) are read one file at a time and go through
:class:`~clip_smot.clip.scorer.PromptScorer` in chunks of :data:`SCORE_CHUNK` images, one
feature-cache entry each. Each chunk's rows are appended to ``OUT.partial`` and flushed to disk;
``OUT.partial.json`` says what they were scored with (the prompt's SHA-256, the model, the
precision). The finished file is renamed to ``OUT``. ``--resume`` checks every row already
written against PATHS and the run file, keeps them, and scores the images after the last one.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from clip_smot.clip.decoding import decoder_identity, kept_workers
from clip_smot.clip.features import cache_setting, decode_setting, precision_setting
from clip_smot.clip.prompt_file import PromptFile, load_prompt, unfinished_note
from clip_smot.clip.scorer import SCORE_NAMES, PathScores, PromptScorer, none_readable, parse_scores, resolve_pretrained
from clip_smot.common.configs import MAX_BATCH, MAX_WORKERS, JsonConfig, check_ranges, setting
from clip_smot.common.distributed import (
    every_rank,
    same_on_every_rank,
    same_options_on_every_rank,
    writer_lock,
    writes_outputs,
)
from clip_smot.common.errors import UserError, cut
from clip_smot.common.file_kinds import check_replaced
from clip_smot.common.files import (
    atomic_write_text,
    check_output,
    file_key,
    fsync_folder,
    read_json,
    read_with_hash,
    remove_stale_temporaries,
)
from clip_smot.common.image_sets import image_list_file, iter_image_files
from clip_smot.common.images import IMAGE_EXTENSIONS, escape_path, load_image
from clip_smot.common.progress import progress_bar
from clip_smot.common.shards import is_shard, list_members, read_image_bytes, split_member

__all__ = ["SCORE_CHUNK", "ScoreConfig", "run_score"]


SCORE_CHUNK = 8192  # images per feature-cache entry and per CSV append: memory stays flat in the images


@dataclass(frozen=True)
class ScoreConfig(JsonConfig):
    """Every option of ``clip-smot score``."""

    prompt: str = setting(help="Learned prompt (.safetensors).", path="file")
    paths: tuple[str, ...]  # image files, folders and image lists (the command's PATHS argument)
    out: str = setting(help="Output CSV file.", path="file")
    model: str | None = setting(None, "open_clip name or config JSON (default: from the prompt).")
    pretrained: str | None = setting(None, "Pretrained tag or checkpoint file (default: from the prompt).")
    scores: str = setting("mcm", "Comma-separated: mcm, msp, energy, maxlogit, gl-mcm (ViT only), odin, gradnorm "
                          "(react, knn, vim: clip-smot eval).")
    batch_size: int = setting(256, min=1, max=MAX_BATCH)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    workers: int = setting(4, "Image-decoding worker processes.", min=0, max=MAX_WORKERS)
    skip_unreadable: bool = setting(False, "Skip unreadable images (listed at the end) instead of failing.")
    use_cache: bool = cache_setting()
    decode: str = decode_setting()
    precision: str = precision_setting()
    resume: bool = setting(False, "Continue after the last complete row of OUT.partial.")


def run_score(cfg: ScoreConfig, chunk: int = SCORE_CHUNK) -> list[tuple[str, str]]:
    """``clip-smot score``: score image files, folders and image lists, one CSV row per image.

    The CSV (UTF-8) has the columns ``path`` (as :func:`~clip_smot.common.images.escape_path` writes
    it: a name that is not UTF-8, or holds a backslash or a control character, is escaped so
    that it reads back), ``pred`` (class name), ``pred_index``, then one column per score in
    the order asked, named in lower case. The images go through in chunks of ``chunk`` (one
    feature-cache entry each), whose rows are appended to ``OUT.partial`` and flushed; the
    finished file is renamed to ``out``. With ``resume``, the rows of ``OUT.partial`` up to its
    last complete line are kept and the images after the last row's are scored (a chunk whose
    rows were cut short is scored again whole: :func:`_resume_point`). ``cfg.decode``:
    ``auto``, ``cpu`` or ``gpu`` (:func:`~clip_smot.clip.decoding.resolve_decode`).

    Returns:
        The skipped unreadable files, and shards that could not be listed, with their reasons
        (empty unless ``skip_unreadable``; with ``resume``, those of this call only).
    """
    check_ranges(cfg)
    same_options_on_every_rank(cfg)  # (under torchrun: a batch size of its own cut another share)
    names = parse_scores(cfg.scores)
    partial, header = Path(f"{cfg.out}.partial"), ["path", "pred", "pred_index", *names]
    run_file = Path(f"{partial}.json")  # what the partial's rows were scored with, for --resume to compare
    # every argument checked before anything is encoded; its files read one at a time, not kept,
    # but those that are an output's file (OUT.partial is written first, then renamed to OUT)
    targets = {key for target in (cfg.out, partial, run_file) if (key := file_key(target)) is not None}
    if os.fspath(cfg.out) == "-":  # (not a file named "-" in the current folder, written without a word)
        raise UserError("--out -: score writes a CSV file (first as OUT.partial, which --resume continues), not to "
                        "standard output; give a file name")
    _check_paths(cfg.paths, cfg.scores)
    groups = _groups(cfg.paths)
    counts, images = [], []  # (the files of each group of arguments: where its chunks start)
    unlisted = [] if cfg.skip_unreadable else None  # shards that cannot be listed, skipped whole
    for group in groups:
        counts.append(0)
        for f in _files(group, unlisted):
            counts[-1] += 1
            if targets and file_key(f) in targets:  # (a stat only when an output exists: a resume, a rerun)
                images.append(("PATH image", f))
    # the SHA-256 of the very file read, which OUT.partial.json records: hashed later (after the CLIP
    # model loaded), a prompt written meanwhile (an export to it) vouched for the rows of the one read
    prompt_file, prompt_sha = read_with_hash(cfg.prompt, "--prompt", lambda: load_prompt(cfg.prompt))
    if (note := unfinished_note(prompt_file)) and writes_outputs():
        print(note, file=sys.stderr)
    weights = cfg.pretrained if cfg.pretrained is not None else resolve_pretrained(prompt_file)
    found = "checkpoint file found by name" if cfg.pretrained is None else "--pretrained file"
    # a new image file inside a folder scored would be scored by the next run; a CSV there is not
    inside = [("the PATH folder", p) for p in cfg.paths] if Path(cfg.out).suffix.lower() in IMAGE_EXTENSIONS else []
    shards = [("PATH shard", p) for p in cfg.paths if is_shard(p)]  # (its images' names are no files)
    lists = [("PATH image list", f) for p in cfg.paths if (f := image_list_file(p)) is not None]
    for target in (cfg.out, partial, run_file):
        check_output(target, "--out", itertools.chain([("--prompt file", cfg.prompt), ("--model file", cfg.model),
                                                       (found, weights or None)], images, shards, lists), inside,
                     own=target != cfg.out)
    check_replaced(cfg.out, "--out", "score", "a CSV of clip-smot score", starts=",".join(header[:3]).encode() + b",")
    with writer_lock(cfg.out):  # (before OUT.partial is read: a second score there would mix its rows in)
        return _score(cfg, names, groups, counts, prompt_file, prompt_sha, weights, partial, header, run_file,
                      chunk, unlisted or [])


_LIST_LIKE = (".lst", ".list", ".csv", ".tsv")  # (names of image lists elsewhere: read as one image, "unreadable")


def _check_paths(paths: Sequence[str], scores: str | None) -> None:
    """Refuse a PATH that was plainly meant as something else, saying what: a missing one that is a
    score's name (``--scores mcm msp`` gives --scores "mcm" and a PATH "msp") or a pattern the
    shell did not expand (``'photos/*.jpg'`` quoted: score expands no wildcards), and a file named
    as an image list of another tool (``paths.lst``: an image list's name ends in ``.txt``). Other
    paths are checked where they are listed."""
    for p in paths:
        if isinstance(p, str) and os.path.splitext(p)[1].lower() in _LIST_LIKE and os.path.isfile(p):
            raise UserError(f"PATH {p}: read as one image, which it is not; an image list's name ends in .txt "
                            "(one path a line): rename it so")
        if not isinstance(p, str) or os.path.lexists(p):
            continue
        if p.strip(",").lower() in SCORE_NAMES:
            raise UserError(f"PATH {p}: no such file or folder; a score's name? --scores takes one comma-separated "
                            f"value: --scores {(scores or 'mcm').strip().rstrip(',')},{p.strip(',')}")
        if any(c in os.path.basename(p) for c in "*?["):
            raise UserError(f"PATH {p}: no such file or folder; a pattern the shell did not expand (score expands no "
                            "wildcards): give the folder, or leave the pattern unquoted")


def _score(cfg: ScoreConfig, names: list[str], groups: list[list[str]], counts: list[int], prompt_file: PromptFile,
           prompt_sha: str, weights: str | None, partial: Path, header: list[str], run_file: Path, chunk: int,
           unlisted: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """:func:`run_score` once its arguments are checked and no other command writes ``--out``
    (``groups``: PATHS as :func:`_groups` chunks them; ``counts``: the files of each group;
    ``unlisted``: the shards skipped whole, with their reasons)."""
    skip = [] if cfg.skip_unreadable else None  # (the shards skipped again: said once, from the count)
    total = sum(counts)
    if cfg.resume and writes_outputs() and not os.path.lexists(partial) and run_file.is_file() \
            and not run_file.is_symlink():
        # the record of a run killed between renaming OUT.partial to OUT and removing the record:
        # it vouches for no rows now (and no other run of this --out is at work: the lock is held)
        run_file.unlink()
    starts = _chunk_start(counts, chunk)
    listing = _Listing(_files(cfg.paths, skip), starts)
    done, keep = (_resume_point(partial, header, listing, prompt_file.classnames, cfg.skip_unreadable, starts)
                  if cfg.resume else (0, 0))
    # rows the run file must vouch for: kept ones, or the rows of a chunk cut short, dropped (with
    # another prompt, say, the user is told, not its rows replaced without a word)
    vouch = done > 0 or (keep > 0 and os.stat(partial).st_size > keep)
    writer = writes_outputs()
    scorer = PromptScorer.from_file(prompt_file, model=cfg.model, pretrained=weights, device=cfg.device,
                                    precision=cfg.precision)
    scorer.check_scores(names)  # (before OUT.partial is started)
    if (note := scorer.one_class_note(names)) and writer:
        print(note, file=sys.stderr)
    decode = scorer.decoder(cfg.decode)
    run = {"prompt_sha256": prompt_sha, "model": scorer.clip.identity(), "precision": scorer.precision,
           "decoder": decoder_identity(decode, scorer.device)}  # ("decoder": None for PIL's, as before the key was)
    if vouch:
        _check_run_file(run_file, run, partial)
    # (under torchrun: every process has read OUT.partial before rank 0 changes it; each read the
    # prompt and the weights itself: one replaced meanwhile would mix two prompts' rows in the CSV)
    same_on_every_rank(run, f"--prompt {cfg.prompt}: what it is scored with (prompt, weights, precision, decoder)")
    if writer:
        # the temporaries of a score to this --out killed while writing OUT.partial or its record (only
        # this run writes them now: it holds the --out lock); nothing else removed them
        remove_stale_temporaries(partial.parent, (partial.name, run_file.name))
        _start_partial(partial, header, keep)
        atomic_write_text(json.dumps(run, sort_keys=True) + "\n", run_file)
    bar = progress_bar(total=total, initial=done, unit="img") if writer else None
    rows, skipped = done, list(unlisted)  # (images before the resume point: the partial holds rows of them)
    # (PATHS are listed again: the files skipped must be those whose rows were checked, not as many)
    chunks = _chunks(groups, chunk, done, skip, listing.digest(done) if done else None)
    with kept_workers():  # (the decoding processes started once, not once a chunk)
        while files := _next_chunk(chunks):
            result = scorer.score_files(files, names, cfg.batch_size, cfg.workers, cfg.skip_unreadable,
                                        cfg.use_cache, decode)
            skipped += result.skipped
            rows += len(result.paths)
            if writer:
                _append(partial, _csv_rows(result, names, scorer.classnames))
                bar.update(len(files))
    if bar is not None:
        bar.close()
    if rows == 0:  # judged over all the arguments: one unreadable file among readable ones is skipped
        if writer:
            partial.unlink()
            run_file.unlink(missing_ok=True)
        raise none_readable(skipped)
    if writer:
        try:
            os.replace(partial, cfg.out)
        except OSError as e:  # (a folder made at OUT meanwhile, a folder no longer writable)
            raise UserError(f"--out {cfg.out}: cannot be written ({e.strerror or e}); the rows are kept in {partial}: "
                            "once that is put right, the same command with --resume finishes it") from None
        fsync_folder(Path(cfg.out).parent)  # (the rename too survives a power loss: OUT, not OUT.partial)
        run_file.unlink(missing_ok=True)
    return skipped


def _files(paths: Sequence[str], unlisted: list | None = None) -> Iterator[Path | str]:
    """The image files of every PATH argument (all of PATHS, or a group of :func:`_groups`), in
    order, one at a time (``unlisted``: see :func:`_argument_files`)."""
    for p in paths:
        yield from _argument_files(p, unlisted)


def _groups(paths: Sequence[str]) -> list[list[str]]:
    """PATHS as the units that :func:`_chunks` cuts: each argument on its own (a folder, a list, a
    shard: its chunks, and so its feature-cache entries, the same beside any other argument), but
    a run of image files given one by one (a shell's ``photos/*.jpg``) as one: as a chunk each,
    every image would be an encoder batch of one, a cache entry and an appended, flushed CSV row."""
    groups: list[list[str]] = []
    lone_before = False
    for p in paths:
        lone = not is_shard(p) and image_list_file(p) is None and os.path.isfile(p)
        if lone and lone_before:
            groups[-1].append(p)
        else:
            groups.append([p])
        lone_before = lone
    return groups


def _argument_files(path: str, unlisted: list | None) -> Iterator[Path | str]:
    """The image files of one PATH argument. With ``unlisted`` (a list: --skip-unreadable), a tar
    shard that cannot be listed (cut short, a damaged or oversized header) is left out whole and
    appended to it with the reason, as an unreadable image is skipped: none of its images can be
    named. A shard is indexed whole before its first image is given, so it is all or nothing."""
    if unlisted is None or not is_shard(path):
        return iter_image_files(path, "PATH")
    try:
        return iter(list_members(path, flag="PATH"))
    except UserError as e:
        unlisted.append((path, str(e)))
        return iter(())


def _chunks(groups: Sequence[Sequence[str]], chunk: int, start: int, unlisted: list | None = None,
            skipped: str | None = None) -> Iterator[list[Path | str]]:
    """The chunks of ``chunk`` files of each group's files (:func:`_groups`), from the ``start``-th
    file on (counted over all the arguments): a resumed run continues where the last ended, with the
    rest of its chunk, then the chunks an uninterrupted run has. One chunk is held at a time.
    ``skipped``: the :class:`_Listing` digest the first ``start`` files must have (those whose
    rows a resume checked); a UserError before the first chunk where they differ (an image
    added to a folder, or removed, since the check shifted the count: one row twice, one none)."""
    offset, check = 0, hashlib.sha256() if skipped is not None else None
    for group in groups:
        files, i = _files(group, unlisted), 0
        while batch := list(itertools.islice(files, chunk)):
            first = max(0, start - offset - i)
            if check is not None:
                for f in batch[:first]:
                    check.update(_listed(f))
                if first < len(batch):
                    _same_files_skipped(check, skipped)
                    check = None
            if first < len(batch):
                yield batch[first:]
            i += len(batch)
        offset += i
    if check is not None:
        _same_files_skipped(check, skipped)


def _listed(f: Path | str) -> bytes:
    """A file of PATHS as a line of a :class:`_Listing` digest."""
    return escape_path(f).encode("utf-8", "surrogatepass") + b"\n"


def _same_files_skipped(check, skipped: str) -> None:
    """Refuse a resume whose second listing skipped other files (``check``, a SHA-256 of them by
    :func:`_listed`) than those whose rows were checked (their digest ``skipped``)."""
    if check.hexdigest() != skipped:
        raise UserError("--resume: the images of PATHS changed while the run started (an image added or removed "
                        "since the rows kept were checked); run the same command again")


class _Listing:
    """The files of PATHS, one at a time, with the SHA-256 of those given so far (:func:`_listed`),
    as it was at the start of each chunk too (a resume point moved back to its chunk's start)."""

    def __init__(self, files: Iterable[Path | str], chunk_start: Callable[[int], int]):
        self._files, self._chunk_start = iter(files), chunk_start
        self.n, self._hash = 0, hashlib.sha256()
        self._mark = (0, self._hash.copy())  # (files, digest) at the last chunk start reached

    def __iter__(self) -> _Listing:
        return self

    def __next__(self) -> Path | str:
        f = next(self._files)
        if self._chunk_start(self.n) == self.n:
            self._mark = (self.n, self._hash.copy())
        self._hash.update(_listed(f))
        self.n += 1
        return f

    def digest(self, n: int) -> str:
        """The digest of the first ``n`` files: as many as were given, or the last chunk start."""
        if n == self.n:
            return self._hash.hexdigest()
        assert n == self._mark[0], (n, self.n, self._mark[0])
        return self._mark[1].hexdigest()


def _chunk_start(counts: Sequence[int], chunk: int) -> Callable[[int], int]:
    """The index (counted over all the arguments) of the first file of the chunk of :func:`_chunks`
    that holds the ``i``-th file, for groups of arguments of ``counts`` files; ``i`` past the last
    file is its own start."""
    offsets = list(itertools.accumulate(counts, initial=0))

    def start(i: int) -> int:
        first = offsets[bisect.bisect_right(offsets, i) - 1]  # (the group's first file)
        return first + (i - first) // chunk * chunk

    return start


def _next_chunk(chunks: Iterator[list[Path | str]]) -> list[Path | str]:
    """The next chunk, or [] at the end; under torchrun every process must agree on which: each
    lists PATHS itself, and a folder that changed while they did would leave one process with a
    chunk more, waiting for the others for ever (gloo's 30 minutes)."""
    files = next(chunks, [])
    going = every_rank(bool(files))
    if any(going) and not all(going):
        raise UserError("PATHS: the processes found other numbers of images (a folder changed while they listed "
                        "it); run again once PATHS stay as they are")
    return files


def _csv_rows(result: PathScores, names: Sequence[str], classnames: Sequence[str]) -> str:
    """The CSV lines of ``result``'s images. A path is escaped (no control character is left); a
    class name is the prompt's as it is: csv quotes one holding a newline or a quote, and a row
    whose class name holds a carriage return, which csv leaves unquoted with a newline as the
    line end (a reader then splits the row there), is written with every field quoted."""
    pred = result.scores["pred_index"].tolist() if result.paths else []
    columns = [result.scores[n].tolist() for n in names] if result.paths else []
    buf = io.StringIO()
    writers = _csv_writers(buf)  # (two writers a chunk, not two a row)
    for i, path in enumerate(result.paths):
        _write_row(writers, [escape_path(path), classnames[pred[i]], str(pred[i]), *(repr(float(c[i])) for c in columns)])
    return buf.getvalue()


def _csv_writers(buf: io.StringIO) -> tuple:
    """The plain and the all-quoted CSV writer of score's rows into ``buf``."""
    return csv.writer(buf, lineterminator="\n"), csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)


def _write_row(writers: tuple, fields: Sequence[str]) -> None:
    """One row (the header too): every field quoted where the class name (the second) holds a
    carriage return, else only those csv must quote."""
    (writers[1] if len(fields) > 1 and "\r" in fields[1] else writers[0]).writerow(fields)


def _csv_line(fields: Sequence[str]) -> str:
    """The CSV line score writes for ``fields``: --resume compares each kept row with it (the
    line score wrote, or an edited one)."""
    buf = io.StringIO()
    _write_row(_csv_writers(buf), fields)
    return buf.getvalue()


def _start_partial(partial: Path, header: Sequence[str], keep: int) -> None:
    """``OUT.partial`` cut to its first ``keep`` bytes (its complete rows), or, with none to
    keep, a new file holding the header. A new one replaces the name, so that a symlink, a hard
    link or a FIFO found there is not written through (:func:`_resume_point` refuses such a
    partial to keep)."""
    if keep:
        try:
            with open(partial, "r+b") as f:
                f.truncate(keep)
        except OSError as e:  # (a file system remounted read-only, a failing disk: the rows are still there)
            raise UserError(f"--resume: {partial} cannot be cut to its {keep:,} bytes of whole rows "
                            f"({e.strerror or e})") from None
    else:
        atomic_write_text(",".join(header) + "\n", partial)  # (a new file: renamed over a link, not through it)


# what OUT.partial.json records of the rows' scoring, with the flags that choose each
_RUN_KEYS = {"prompt_sha256": "--prompt", "model": "model (--model, --pretrained)", "precision": "--precision",
             "decoder": "decoder (--decode)"}


def _check_run_file(run_file: Path, run: dict, partial: Path) -> None:
    """Raise a UserError unless ``run_file`` says that the rows of ``partial`` were scored with the
    prompt (its SHA-256), the model, the precision and the decoder of ``run``."""
    try:
        if run_file.is_symlink() or not run_file.is_file() or run_file.stat().st_size > 1 << 20:
            raise ValueError("missing")
        stored = read_json(run_file)
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(f"--resume: {run_file}, which says what {partial} was scored with, is missing or damaged; "
                        "run without --resume") from None
    differ = [k for k in _RUN_KEYS if not isinstance(stored, dict) or stored.get(k) != run[k]]
    if differ == ["decoder"] and "decoder" not in stored:  # (None, PIL's, is no record of nvJPEG's rows)
        raise UserError(f"--resume: {run_file} was written by an earlier clip-smot, which did not record the "
                        f"decoder of {partial}'s rows; run without --resume")
    if differ:
        raise UserError(f"--resume: {partial} was scored with another {', '.join(_RUN_KEYS[k] for k in differ)}; "
                        "give the same, or run without --resume")


def _append(partial: Path, text: str) -> None:
    """Append a chunk's rows ``text`` to ``partial``, all or none: a failed write (a full disk,
    which writes part of them first; Ctrl-C) is cut back to the rows before it, so that a
    --resume scores that chunk whole, in the batches of an uninterrupted run (the rest of a cut
    chunk would be encoded in others: other last digits of its scores)."""
    size = None
    try:
        # (a lone surrogate, a byte of a class name that is not UTF-8, is written as its escape)
        with open(partial, "a", encoding="utf-8", errors="backslashreplace", newline="") as f:
            size = os.fstat(f.fileno()).st_size
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # a row once written survives a crash of the machine too
    except BaseException as e:
        if size is not None:  # (once the file is closed: its buffer's rest is written or dropped by then)
            with contextlib.suppress(OSError):
                os.truncate(partial, size)
        if isinstance(e, OSError):  # (the rows before are kept: without --resume a rerun would start over)
            raise UserError(f"--out {partial}: cannot be written ({e.strerror or e}); the rows before are kept: once "
                            "that is put right, the same command with --resume finishes it") from None
        raise


MAX_RECORD = 1 << 20  # bytes of one CSV record (a path, a class name and the scores) that --resume reads


def _records(partial: Path, open_lines: int) -> Iterator[tuple[list[str], int]]:
    """(fields, bytes up to its end) of each complete CSV record of ``partial``, header first, read a
    line at a time. A record ends at a newline outside quotes (csv quotes a field holding one, a
    class name's, and doubles its quotes: an even count of quotes so far); a record cut off by
    the end of the file is not complete. ``open_lines``: the most lines a record can have ended
    while a quote is open (the most newlines in a class name).

    Raises:
        UserError: a record left open over more lines, or over :data:`MAX_RECORD` bytes: a quote
            left open by an edit would otherwise make the rest of the file one record, cut off,
            and --resume would drop every row after it without a word; a record that is not UTF-8, or
            not the line score writes for its fields (CRLF line ends, fields quoted that need no
            quotes: csv reads both, and the kept rows would end the CSV otherwise than the rest).
    """
    def damaged(start: int) -> UserError:
        return UserError(f"--resume: {partial}: the row from byte {start} on is damaged (a quote left open, or over "
                         f"{MAX_RECORD} bytes: an edited file); run without --resume")

    at, lines, size, quotes = 0, [], 0, 0
    with open(partial, "rb") as f:
        while line := f.readline(MAX_RECORD + 1):
            at += len(line)
            if not line.endswith(b"\n"):  # (the end of the file, or a line over MAX_RECORD)
                if size + len(line) > MAX_RECORD:
                    raise damaged(at - size - len(line))
                return
            lines.append(line)
            size, quotes = size + len(line), quotes + line.count(b'"')
            if quotes % 2:
                if len(lines) > open_lines or size > MAX_RECORD:
                    raise damaged(at - size)
                continue
            record = b"".join(lines)
            try:  # (score writes UTF-8 alone: a byte that is not, read as U+FFFD, matched a name holding one)
                text = record.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"--resume: {partial}: the row from byte {at - len(record)} on is not UTF-8 (an "
                                "edited file); run without --resume") from None
            fields = next(csv.reader(io.StringIO(text, newline="")), [])
            if _csv_line(fields) != text:  # (csv reads "\r\n" and quotes it never writes as score's rows)
                why = "Windows line ends, CRLF" if text.endswith("\r\n") else "quotes or line ends changed"
                raise UserError(f"--resume: {partial}: the row from byte {at - len(record)} on is not written as "
                                f"score writes it ({why}: a file saved by an editor or a spreadsheet); run without "
                                "--resume")
            yield fields, at
            lines, size, quotes = [], 0, 0


def _resume_point(partial: Path, header: Sequence[str], files: Iterable[Path | str], classnames: Sequence[str],
                  skip_unreadable: bool, chunk_start: Callable[[int], int] | None = None) -> tuple[int, int]:
    """(files already scored, bytes of ``partial`` to keep): every complete row of ``partial`` is
    checked, in order, against the files of PATHS, whose rows they must be: the same path, a
    class of the prompt with its index, finite scores. A file between two rows is one the run
    skipped: with ``skip_unreadable`` it must still be unreadable (else PATHS changed since), without
    it there is none. Neither ``partial`` nor ``files`` is held in memory.

    With ``chunk_start`` (:func:`_chunk_start`), rows that end inside a chunk (an append cut by a
    crash or a kill, or an edit) are not kept: the point is moved back to that chunk's first
    file, so that the chunk is scored whole, in the batches of an uninterrupted run (the rest
    of a chunk alone would be encoded in others, with other last digits in its scores).

    Raises:
        UserError: no ``partial``, or one that is a link, other columns, a row that is not the
            next file's (other PATHS, another prompt, an edited row).
    """
    if partial.is_symlink() or (partial.exists() and not partial.is_file()):
        what = "a symbolic link" if partial.is_symlink() else "not a regular file"
        raise UserError(f"--resume: {partial} is {what}; remove it and run without --resume")
    if not partial.is_file():
        out = partial.with_name(partial.name.removesuffix(".partial"))
        state = f"the run finished: {out} is there" if os.path.lexists(out) else "run without --resume to start it"
        raise UserError(f"--resume: there is no {partial} to continue ({state})")
    if os.stat(partial).st_nlink > 1:  # (cutting it would cut the other name's file too)
        raise UserError(f"--resume: {partial} is a hard link of another file; remove it and run without --resume")
    names: dict[str, set[str]] = {}  # class name as written: its indices (ImageNet-1k has two "missile"s)
    for k, n in enumerate(classnames):
        names.setdefault(n.encode("utf-8", "backslashreplace").decode("utf-8"), set()).add(str(k))
    open_lines = max(n.encode("utf-8", "backslashreplace").count(b"\n") for n in classnames)
    records, files, done, keep = _records(partial, open_lines), iter(files), 0, 0
    mark = (0, 0)  # (files, bytes) before the first file of the last chunk reached
    try:
        for n, (fields, end) in enumerate(records):
            if n == 0:
                if fields != list(header):
                    raise _other_columns(partial, header, ",".join(fields))
                keep = end
                continue
            if not _row_fits(fields, len(header), names):
                raise UserError(f"--resume: row {n} of {partial} is not a row of this prompt's scores (another "
                                "--prompt, or an edited file); give the same --prompt, or run without --resume")
            for f in files:
                if chunk_start is not None and chunk_start(done) == done:
                    mark = (done, keep)
                done += 1
                if escape_path(f) == fields[0]:
                    break
                _skipped_before(f, partial, n, skip_unreadable)
            else:
                # (the same PATHS with an image removed since reach here too: only a new run fits those)
                raise UserError(f"--resume: row {n} of {partial} ({fields[0]}) is no later image of PATHS (other "
                                "PATHS, or images removed since the run started); give the same PATHS, in the same "
                                "order, or run without --resume")
            keep = end
        if chunk_start is not None and chunk_start(done) != done:  # (the last row's chunk has more files)
            done, keep = mark
        if keep == 0:  # no complete header: stopped while it was written (nothing scored), or another file
            line = (",".join(header) + "\n").encode()
            with open(partial, "rb") as f:
                if not line.startswith(start := f.read(len(line) + 1)):
                    raise _other_columns(partial, header, start.split(b"\n")[0].decode("utf-8", "replace"))
    except OSError as e:
        raise UserError(f"--resume: {partial} cannot be read ({e.strerror or e})") from None
    return done, keep


def _other_columns(partial: Path, header: Sequence[str], found: str) -> UserError:
    """The error of a partial CSV whose first line ``found`` is not the run's ``header``, shown with
    what is invisible escaped (a byte-order mark an editor added, a carriage return)."""
    if found.startswith("\ufeff"):  # (its columns may be the run's: --scores is no answer)
        return UserError(f"--resume: {partial} starts with a byte-order mark, which score never writes (a file "
                         "saved by an editor); run without --resume")
    shown = cut(ascii(found)[1:-1], 120)
    if not found.startswith(",".join(header[:3]) + ","):  # (no score CSV at all: --scores is no answer either)
        return UserError(f"--resume: {partial} is no CSV that score wrote (its first line: {shown}); run without "
                         "--resume")
    return UserError(f"--resume: {partial} holds other columns than {','.join(header)} (its first line: {shown}); "
                     "give the same --scores")


def _row_fits(fields: list[str], columns: int, names: dict[str, set[str]]) -> bool:
    """Whether a partial's row has the CSV's columns: a class of the prompt and its index, finite
    scores written as the run writes them (``repr`` of a float: an edited " 0.5", "0.50" or "1_0",
    which ``float`` reads too, is no row of a run), each a float32's value, as every score is (a
    digit dropped or changed, "0.4085476300964355" for "0.40854716300964355", reads as a float64
    that no score has: kept, it ended in the CSV as that image's score)."""
    if len(fields) != columns or fields[2] not in names.get(fields[1], ()):
        return False
    try:
        return all(math.isfinite(x := float(v)) and repr(x) == v and _float32(x) for v in fields[3:])
    except ValueError:
        return False


def _float32(x: float) -> bool:
    """Whether ``x`` is a float32's value (a score's: they are computed in float32)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0] == x
    except OverflowError:  # (beyond float32's range)
        return False


def _skipped_before(f: Path | str, partial: Path, n: int, skip_unreadable: bool) -> None:
    """A file of PATHS with no row before row ``n`` of ``partial``: one the run skipped as unreadable."""
    if not skip_unreadable:
        # (the same PATHS with an image added or removed since reach here too: only a new run fits those)
        raise UserError(f"--resume: row {n} of {partial} is not the row of {escape_path(f)}, the next image of "
                        "PATHS (other PATHS, or images added or removed since the run started); give the same PATHS, "
                        "in the same order (and --skip-unreadable if the run had it), or run without --resume")
    try:
        load_image(f, mode=None, data=read_image_bytes(f) if split_member(f) else None)
    except UserError:
        return
    raise UserError(f"--resume: {escape_path(f)} of PATHS reads, but has no row before row {n} of {partial}: "
                    "PATHS changed since the run started; run without --resume")
