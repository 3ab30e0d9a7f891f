"""What a file holds, told without loading it: a torch archive's size and CRC checks before
torch unpacks it (``archive_refusal``), a file's kind (``file_kind``), and a flag's refusal of a
file of another kind, with what to give instead (``check_kind``)."""

from __future__ import annotations

import os
import re
import stat
import zipfile
from pathlib import Path

from clip_smot.common.errors import UserError, first_line
from clip_smot.common.files import is_file, parse_json, same_file

__all__ = ["ARCHIVE_SLACK", "archive_refusal", "FILE_KINDS", "file_kind", "check_kind", "check_replaced", "unsupported_version"]


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


def check_replaced(out: str | os.PathLike, flag: str, command: str, ours: str, starts: bytes | None = None) -> None:
    """Refuse, in one line naming ``flag`` and ``out``, an existing file at an output that the
    command would replace although it is none of the command's own outputs: ``score --out a.png
    b.png`` (``--out`` read as a flag without a value) wrote the CSV of b.png over the photo a.png,
    and ``export --out`` a prompt over whatever was there. An empty file holds nothing to lose.

    Args:
        out: the output file given.
        flag: its flag (``--out``).
        command: the command, as the message names it (``score``).
        ours: what the command writes, as the message names it, or a key of :data:`FILE_KINDS`
            (``prompt``): an existing file of that kind is the command's own, written again.
        starts: the bytes the command's files begin with (a CSV's header), where ``ours`` is no kind.
    """
    theirs = FILE_KINDS.get(ours, ours)
    try:
        if not is_file(out, flag) or os.path.getsize(out) == 0:
            return
        # (read, not only statted: a file it cannot read cannot be told to be its own, and the rename
        # that replaces it needs the folder's permission alone)
        with open(out, "rb") as f:
            head = f.read(len(starts) if starts is not None else 1)
    except OSError as e:
        if not os.path.lexists(out):  # (gone meanwhile: nothing to lose)
            return
        raise UserError(f"{flag} {out}: cannot be read ({e.strerror or first_line(e)}): {command} replaces only "
                        f"{theirs}, and cannot tell whether it is one; choose another {flag}, or remove that file "
                        "first") from None
    if starts is not None and head == starts:
        return
    kind = file_kind(out)
    if starts is None and kind == ours:
        return
    what = FILE_KINDS[kind] if kind is not None else "a file of something else"
    raise UserError(f"{flag} {out}: holds {what}, not {theirs}, and {command} would replace it; "
                    f"choose another {flag}, or remove that file first")


def unsupported_version(what: str, found: str, reads: str, written_by: object) -> str:
    """The reason a file's ``format_version`` ``found`` is refused where this clip-smot reads
    ``reads``: a higher number was written by a newer clip-smot (``written_by``: the file's
    ``library_version``, if it says one), which the user can upgrade to; any other is no
    version that clip-smot writes."""
    from clip_smot import __version__

    try:
        newer = int(found) > int(reads)
    except (TypeError, ValueError):
        newer = False
    if not newer:
        return (f"{what} format version {found!r:.40} is not one clip-smot writes (this clip-smot {__version__} reads "
                f"{reads})")
    by = f" ({written_by})" if isinstance(written_by, str) and 0 < len(written_by) <= 40 else ""
    return (f"{what} format version {found} is a newer clip-smot's{by}; this clip-smot {__version__} reads version "
            f"{reads}: upgrade clip-smot to read it")
