"""``clip-smot reproduce TABLE``: every run behind one of the paper's tables, then the table itself.

A table is a list of stages (fits or trainings, then evaluations), each one ``clip-smot`` command
writing into ``OUT/<stage>/``, and a map from the paper's rows to the (stage, score) that
measures them. A stage is finished when its final file is there (``prompt.safetensors`` for a
fit, ``summary.json`` for a training, ``metrics.json`` for an evaluation): a rerun skips it, once
the files of earlier stages that it read (a prompt, a model) are seen to be those it was made
from (their SHA-256, in its ``reproduce.json``); a stage made from files since replaced, or a
zero-shot evaluation made with other prompts than this clip-smot's, is refused, not skipped. A
fit or training that was interrupted is continued with ``--resume`` from its ``checkpoint.pt``;
an interrupted evaluation is run again (its files are written whole, nothing is half-old).

The stages are argument lists of the ``clip-smot`` command line, run by a callable the caller
gives (the CLI runs them in its own process): what ``--dry-run`` prints is exactly what runs.
The paper's numbers come from ``data_lists/paper_tables.csv``; the result is ``OUT/table.md`` and
``OUT/table.csv`` with the paper's number, ours and the difference for each cell.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
import os
import shlex
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Collection, Sequence

from clip_smot.common import run_folder as rf
from clip_smot.common.bundled import bundled_file, bundled_text, imagenet200_wnids
from clip_smot.common.configs import MAX_BATCH, MAX_WORKERS, check_ranges, field_kind, flag_of, setting
from clip_smot.common.device import DEVICES, PRECISIONS
from clip_smot.common.errors import UserError, first_line
from clip_smot.common.files import (
    atomic_write_files,
    atomic_write_text,
    check_output,
    is_file,
    is_folder,
    json_text,
    make_folder,
    read_json,
    remove_stale_temporaries,
    sha256_file,
    temporary_pattern,
    text_writer,
)
from clip_smot.common.images import class_folders, iter_images, split_folder
from clip_smot.common.locks import output_lock
from clip_smot.common.run_folder import OtherFlags

__all__ = ["TABLES", "Plan", "ReproduceOptions", "Stage", "paper_table", "plan", "run_reproduce", "write_table"]

IMAGENET_OOD = ("iNaturalist", "SUN", "Places", "Textures")  # Tables 4 and 8, in the paper's column order
CIFAR_OOD = ("Textures", "SVHN", "iSUN", "Places", "LSUN")  # Tables 1-3, 5-7, 9 (SVHN: torchvision's test split)
# folder names looked for under --ood-root, first match wins (data_lists/ood_sets.md: the layouts people keep)
OOD_FOLDERS = {"iNaturalist": ("iNaturalist",), "SUN": ("SUN",), "Places": ("Places", "Places365", "places365"),
               "Textures": ("Textures", "dtd/images", "dtd"), "iSUN": ("iSUN",), "LSUN": ("LSUN",)}
# the CIFAR tables' Places is another set than the ImageNet tables' (the CIFAR benchmark's Places365
# subset, not MOS's 50 categories), both 10,000 images: where the root holds both, each table its own
CIFAR_OOD_FOLDERS = {**OOD_FOLDERS, "Places": ("Places365", "places365", "Places")}
CLIP_POSTHOC = "mcm,msp,odin,energy,gradnorm,vim,knn"  # Table 8's post-hoc rows, on the CoOp prompt
FINAL_FILE = {"fit": "prompt.safetensors", "train": "summary.json", "eval": "metrics.json"}
# the file of a finished training that later stages read (SMOT's CAMs, the evaluations): its record vouches for it too
MODEL = "model.safetensors"
RECORD = "reproduce.json"  # in each stage's folder: the command line that made it
_RUN_CONTROL = ("--device", "--workers", "--out")  # where a stage runs, not what it computes
_PATH_FLAGS = ("--data", "--id", "--ood", "--model", "--pretrained", "--cam-model", "--split", "--prompt",
               "--checkpoint")  # flags whose value may be a file or folder (--ood: NAME=DIR)
_DATA_FLAGS = ("--data", "--id", "--ood")  # (their value may be a folder; the others' a file, or a name)


@dataclass(frozen=True)
class ReproduceOptions:
    """Data roots and the options passed through to every stage (None: the command's default);
    each declares its ``clip-smot reproduce`` option."""

    out: str = setting(help="Output folder: one sub-folder per stage, then table.md and table.csv.", path="dir")
    imagenet: str | None = setting(None, "IMAGENET with train/<wnid>/ and val/<wnid>/ (table8, table4).", path="dir")
    ood_root: str | None = setting(None, "Folder of the OOD sets: iNaturalist, SUN, Places (or Places365, places365; "
                                   "the CIFAR tables look for Places365 and places365 first), Textures (or "
                                   "dtd/images, dtd), iSUN, LSUN.", path="dir")
    cifar_root: str | None = setting(None, "torchvision's CIFAR-10/100 (and SVHN) files (tables 1-3, 5-7, 9).",
                                     path="dir")
    model: str | None = setting(None, "CLIP: open_clip name or config JSON (default: fit's, ViT-B-16).")
    pretrained: str | None = setting(None, "CLIP: pretrained tag or checkpoint file (default: fit's, openai).")
    cam_model: str | None = setting(None, "CLIP fit: CAM network (default: fit's, resnet18-imagenet).")
    shots: int | None = setting(None, "CLIP fit: images per class (default 16).", min=1)
    epochs: int | None = setting(None, "Every fit and training (default: theirs).", min=1)
    batch_size: int | None = setting(None, "Every fit and training: images per step (default: theirs).", min=1,
                                     max=MAX_BATCH)
    precision: str | None = setting(None, "Every fit and training.", choices=PRECISIONS)
    device: str | None = setting(None, "Every stage (default auto).", choices=DEVICES)
    workers: int | None = setting(None, "Every stage (default 4).", min=0, max=MAX_WORKERS)


def _differs(saved, planned) -> bool:
    """Whether an option read from a checkpoint differs from the stage's; one that cannot be
    compared (a tensor of two values: torch's "Boolean value of Tensor with more than one value is
    ambiguous") is not the stage's."""
    try:
        return bool(saved != planned)
    except Exception:  # noqa: BLE001 (whatever a hostile file's object raises)
        return True


def _shown(saved) -> str:
    """An option read from a checkpoint as an error names it: a number, text or None as it is,
    anything else by its type (a tensor of a thousand values is no option)."""
    return str(saved) if saved is None or isinstance(saved, (bool, int, float, str)) else f"a {type(saved).__name__}"


@dataclass(frozen=True)
class Stage:
    """One ``clip-smot`` command writing into ``OUT/<name>``."""

    name: str
    argv: tuple[str, ...]  # the command line after ``clip-smot``, --out included
    earlier: tuple[str, ...] | None = None  # the names of the table's stages before it (None: any other folder)

    @property
    def command(self) -> str:
        return self.argv[0]

    def folder(self, out: str | Path) -> Path:
        return Path(out) / self.name

    def finished(self, out: str | Path) -> bool:
        """Whether the stage's final file is there; for a fit, one of all its epochs (a prompt
        exported from the checkpoint of an unfinished run records fewer: the fit is resumed)."""
        final = self.folder(out) / FINAL_FILE[self.command]
        # (a symbolic link is no file the stage wrote: eval-coop/metrics.json linked to eval-smot's
        # put the SMOT prompt's numbers in the CoOp rows, the stage skipped as finished)
        if not final.is_file() or final.is_symlink():
            return False
        if self._unmade(out):
            return False
        if self.command != "fit":
            return True
        from clip_smot.clip.prompt_file import recorded_epochs

        epochs = recorded_epochs(final)  # (None: a prompt of an older clip-smot, which records no epoch)
        return epochs is None or epochs[0] >= epochs[1]

    def _unmade(self, out: str | Path) -> bool:
        """Whether the stage's record says its command was started but not seen to end well (``made``
        null): a final file there is no work of the stage (another command's, run into its folder
        meanwhile, whose lock refused the stage), or of a run killed as the stage ended; the stage
        runs again. A record of an older clip-smot, with no ``made``, or one that cannot be read
        (:meth:`check_record` names it), leaves the stage finished by its final file alone."""
        try:
            record = read_json(self.folder(out) / RECORD)
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and "made" in record and record["made"] is None

    def resumable(self, out: str | Path) -> bool:
        return self.command in ("fit", "train") and (self.folder(out) / rf.CHECKPOINT).is_file()

    def identity(self, out: str | Path) -> list[str]:
        """The command line as two runs of reproduce compare it: without the run-control flags; each
        path under OUT written from OUT (``OUT/fit-coop/prompt.safetensors``), so that OUT may be
        given another way (relative or absolute) or moved between runs; and each other file or
        folder a flag names written absolute with its symbolic links followed, so that ``data/``,
        ``./data``, ``$PWD/data`` and a link to it are one folder, and a link pointed at another
        folder is another (a name that is no path, ``openai``, stays as it is)."""
        root = Path(out)

        def same(word: str, files_only: bool = False) -> str:
            if root in Path(word).parents:
                return (PurePosixPath("OUT") / Path(word).relative_to(root)).as_posix()
            # (--model ViT-B-16 and --pretrained openai are names beside a folder ./ViT-B-16 or ./openai,
            # which the commands never read: written absolute, such a folder made since refused the
            # finished stages as "the work of another command")
            path = os.path.isfile(word) if files_only else os.path.exists(word)
            return os.path.realpath(word) if path else word

        from clip_smot.resnet.data import BUILTIN_ID

        words = self._without_run_control()
        resnet_eval = words[0] == "eval" and "--checkpoint" in words
        for i in range(1, len(words)):
            if words[i - 1] == "--ood" and "=" in words[i]:  # (NAME=DIR; NAME is one of ours, with no "=")
                name, _, path = words[i].partition("=")
                words[i] = f"{name}={same(path)}"
            elif words[i - 1] == "--ood" or (resnet_eval and words[i - 1] == "--id" and words[i].lower() in BUILTIN_ID):
                # a built-in set (--ood SVHN, --id cifar10), even beside a folder of its name: no path (a
                # ./cifar10 made since made the finished evaluations "the work of another command")
                continue
            elif words[i - 1] in _PATH_FLAGS:
                words[i] = same(words[i], files_only=words[i - 1] not in _DATA_FLAGS)
        return words

    def _without_run_control(self) -> list[str]:
        """The command line without the run-control flags: what an older reproduce recorded."""
        kept, skip = [], False
        for word in self.argv:
            if skip:  # (the value of a run-control flag)
                skip = False
            elif word in _RUN_CONTROL:
                skip = True
            else:
                kept.append(word)
        return kept

    def inputs(self, out: str | Path) -> list[Path]:
        """The files of earlier stages that this stage reads (a prompt, a model, a CAM model):
        its arguments that lie in an earlier stage's folder (data kept in OUT is no stage's)."""
        root, own = Path(out), self.folder(out)
        paths = [Path(word) for word in self.argv]
        return [p for p in paths if root in p.parents and p.parent != root and own not in (p, *p.parents)
                and (self.earlier is None or p.relative_to(root).parts[0] in self.earlier)]

    def files(self, out: str | Path) -> dict[str, str]:
        """The SHA-256 of each file that a flag of the stage names, other than an earlier stage's
        (``--model``'s config, ``--pretrained``'s checkpoint, ``--cam-model``), by its path with
        symbolic links followed: a checkpoint replaced at the same path is other weights under the
        same command line. Folders (the data) are not hashed; a file that cannot be read is the
        stage's to name. (Not "outside OUT": with ``--out .`` every relative path is in OUT.)"""
        staged, hashes = set(self.inputs(out)), {}  # (an earlier stage's files: hashed under "inputs")
        for flag, word in zip(self.argv, self.argv[1:]):
            if flag in _PATH_FLAGS and Path(word) not in staged and is_file(word, flag):
                try:
                    hashes[os.path.realpath(word)] = sha256_file(word)
                except OSError:
                    continue
        return hashes

    def input_stages(self, out: str | Path) -> set[str]:
        """The names of the earlier stages whose files this stage reads (:meth:`inputs`)."""
        return {p.relative_to(out).parts[0] for p in self.inputs(out)}

    def check_record(self, out: str | Path, finished: Collection[str] | None = None) -> None:
        """Raise a UserError when the stage's folder holds work of another command or of other
        inputs. Another command: its record (:data:`RECORD`) names another command line (another
        table's stage of the same name, other options) and the folder holds more than that
        record (a command that stopped at once, e.g. on a path given wrong, left no work to
        keep), or, with no record, a finished or resumable run is there. Other inputs: the stage is finished, and a file of an earlier
        stage that it read (its SHA-256 recorded) is no longer as it was (a fit redone after its
        evaluation); only the files of the stages in ``finished`` (None: of every stage, once
        the earlier stages have run). Skipping it as finished would put numbers of other work
        in this table."""
        folder, planned = self.folder(out), self.identity(out)
        record = folder / RECORD
        # a file or a link to nothing there: the stage failed to make its folder, after the stages before it
        if os.path.lexists(folder) and not is_folder(folder, "--out"):
            raise UserError(f"reproduce: {folder} is no folder (a file, or a link to none); remove it to run the stage")
        if is_file(record, "--out"):
            try:
                saved = read_json(record)
                if not isinstance(saved, dict):
                    raise ValueError("not a JSON object")
                if "argv" not in saved:
                    raise ValueError("no argv")
                recorded, hashes = saved["argv"], saved.get("inputs", {})  # (a record of an older reproduce has none)
                if not (isinstance(recorded, list) and all(isinstance(w, str) for w in recorded)):
                    raise ValueError("argv is not a list of strings")
                if not isinstance(hashes, dict):
                    raise ValueError("inputs is not an object")
                # (a null hash was taken for an older record's missing one: the stage skipped unchecked)
                if not all(isinstance(sha, str) for sha in hashes.values()):
                    raise ValueError("inputs holds a SHA-256 that is no string")
                if not isinstance(saved.get("files", {}), dict):  # (an older record has none: not checked)
                    raise ValueError("files is not an object")
                # (made 0, [] or true: the stage finished, its metrics.json never compared, as under an older
                # record with none: an eval's by hand since went into the table)
                if saved.get("made") is not None and not isinstance(saved["made"], str):
                    raise ValueError("made is no SHA-256 string")
                if saved.get("model") is not None and not isinstance(saved["model"], str):
                    raise ValueError("model is no SHA-256 string")
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"reproduce: {record} cannot be read ({first_line(e)}); remove {folder} to run the "
                                "stage again") from None
            if recorded not in (planned, self._without_run_control()):  # (the second: an older record's OUT paths)
                # (its command stopped at once: nothing to keep; beside the record at most the temporary of a
                # run killed while it wrote the record, which start_record removes)
                kept = [f.name for f in folder.iterdir() if not fnmatch.fnmatchcase(f.name, temporary_pattern(RECORD))]
                if kept == [RECORD]:
                    return
                raise UserError(f"reproduce: {folder} holds the work of another command (clip-smot "
                                f"{shlex.join(recorded)}), not this stage's (clip-smot {shlex.join(planned)}): another "
                                f"table's or other options; give another --out, or remove {folder}")
            if self.finished(out):
                self._check_inputs(out, hashes, finished)
                self._check_made(out, saved.get("made"), saved.get("model"))
            elif self.resumable(out):
                self._check_checkpoint(out)
        elif self.finished(out) or self.resumable(out):
            if os.path.lexists(record):  # ("with no reproduce.json" sent the user looking at the one there)
                raise UserError(f"reproduce: {record} is no file (a folder, a FIFO or a link to none), so nothing says "
                                f"which command made the {self.command} run in {folder}; remove {folder} to run the "
                                "stage again")
            raise UserError(f"reproduce: {folder} holds {'an' if self.command == 'eval' else 'a'} {self.command} run "
                            f"with no {RECORD} saying which command made it; give another --out, or remove {folder} to "
                            "run the stage again")

    def _check_made(self, out: str | Path, made, model=None) -> None:
        """:meth:`check_record`'s check that a finished evaluation's metrics.json, or a finished
        training's summary.json and model.safetensors, are the files its command wrote (``made``
        and ``model``, their SHA-256 in the record; None or absent: not checked): an eval run by
        hand into the stage's folder since replaced its metrics.json, and its numbers (another
        prompt's, other sets) went into the table as the stage's; a ``train --resume --epochs 3``
        run by hand into a finished training (or a model copied over its own) left the stage
        skipped as finished, and the stages after it trained and evaluated on that other model,
        exit 0. (A fit's prompt exported again is judged by the stages that read it.)"""
        if self.command == "fit" or made is None:  # (check_record let only a string or None through)
            return
        folder = self.folder(out)
        wrote = [(folder / MODEL, model)] if self.command == "train" and model is not None else []
        for final, sha in [*wrote, (folder / FINAL_FILE[self.command], made)]:
            try:
                if sha256_file(final) == sha:
                    continue
            except OSError:  # (unreadable: named by the table or the stage that reads it)
                continue
            what = "its numbers would not be the stage's" if self.command == "eval" else \
                "the stages after it would read another model than the stage's"
            raise UserError(f"reproduce: {final} is no longer the file its stage wrote (another command wrote it "
                            f"since, or it was edited): {what}; remove {folder} to run the stage again")

    def _check_checkpoint(self, out: str | Path) -> None:
        """:meth:`check_record`'s check that the checkpoint an unfinished fit or training is resumed
        from is of a run of the stage's options (:meth:`_options`), its epochs included: a ``train
        --resume --epochs 3`` run by hand into the folder of a stage of 2 saved a run of 3, which the
        stage's ``--resume`` then refused in train's words ("resume with as many or more"), and, the
        stage taking the command's default (no ``--epochs``), went on to that run's count, exit 0; a
        ``train --lr 0.05`` (or ``fit --lr 0.05``) run by hand into the folder of a stage killed as it
        started was resumed by the stage (an option it does not give is the checkpoint's), its model
        in the table. A checkpoint that cannot be read is the command's to name."""
        path = self.folder(out) / rf.CHECKPOINT
        saved = (rf.peek_checkpoint(path) or {}).get("config")
        if not isinstance(saved, dict):  # (damaged, or not one of ours: its --resume says so in one line)
            return
        planned = self._options()
        differ = [k for k in planned if k in saved and _differs(saved[k], planned[k])]
        if differ:
            what = "; ".join(f"--{k.replace('_', '-')} {_shown(saved[k])} there, {planned[k]} the stage's"
                             for k in differ)
            raise UserError(f"reproduce: {path} is not of the stage's run ({what}; a {self.command} run by hand "
                            f"into its folder?); remove {self.folder(out)} to run the stage again")

    def _options(self) -> dict:
        """The options of the stage's fit or training as its command resolves them (a training's
        defaults for its dataset and stage), those a resume takes from its checkpoint where not
        given: all but the run control and the inputs (compared by their SHA-256), and the epochs."""
        if self.command == "fit":
            from clip_smot.clip.fit import FitConfig, method_options

            cfg = _stage_config(self.argv, FitConfig)
            return {**method_options(cfg), "epochs": cfg.epochs}
        from clip_smot.resnet.data import default_input_size
        from clip_smot.resnet.train import TrainConfig, method_options, resolve_config

        cfg = _stage_config(self.argv, TrainConfig)
        cfg = resolve_config(cfg, 0, cfg.input_size or default_input_size(cfg.dataset, cfg.data))
        return {**method_options(cfg), "epochs": cfg.epochs}  # (a resume may grow --epochs: a stage's may not)

    def _check_inputs(self, out: str | Path, hashes: dict, finished: Collection[str] | None) -> None:
        """:meth:`check_record`'s check of the earlier stages' files this finished stage read."""
        root = Path(out)
        for path in self.inputs(out):
            rel = path.relative_to(root)
            sha = hashes.get(rel.as_posix())
            if sha is None or (finished is not None and rel.parts[0] not in finished):
                continue  # (an older record; a stage yet to run, after which the file is compared)
            if not is_file(path, "--out"):
                why = "which is gone"
            elif _sha256(path) != sha:
                why = "which has changed since"
            else:
                continue
            raise UserError(f"reproduce: {self.folder(out)} was made from {path} as it was then, {why}: its numbers "
                            f"would not be of it; remove {self.folder(out)} too, to run the stage again")

    def changed_file(self, out: str | Path) -> str | None:
        """A file that a flag of this stage names, other than an earlier stage's (:meth:`files`; it
        may lie in OUT), that the stage's record says it was made with and that has changed since,
        with why (``"PATH, which has changed since"``); None when all are as they were or gone (the
        numbers are still of the file as it was: a finished table8 whose weights were deleted writes
        its table again), or the record holds none (an older clip-smot's)."""
        try:
            recorded = read_json(self.folder(out) / RECORD).get("files")
        except (OSError, ValueError, AttributeError):  # (no record, or one check_record has refused)
            return None
        now = self.files(out) if isinstance(recorded, dict) and recorded else {}
        for path, sha in (recorded.items() if isinstance(recorded, dict) else ()):
            if path in now and now[path] != sha:
                return f"{path}, which has changed since"
        return None

    def outdated(self, out: str | Path) -> str | None:
        """Why this finished stage's numbers are not what this clip-smot computes from the same
        command line, or None: an ``eval --zero-shot`` whose metrics.json names other prompts
        than those it fills now (a run from before it took MCM's "a photo of a {c}", with no
        period). A metrics.json that names none (an older or another writer's) is not judged."""
        if self.command != "eval" or "--zero-shot" not in self.argv:
            return None
        from clip_smot.clip.scorer import zero_shot_source, zero_shot_template

        try:
            made = read_json(self.folder(out) / FINAL_FILE["eval"]).get("text_features")
        except (OSError, ValueError, AttributeError):  # (a metrics.json that is no object: the table names it)
            return None
        now = zero_shot_source(zero_shot_template())
        if isinstance(made, str) and made.startswith("zero-shot prompts ") and made != now:
            return f"its text features are {made}; this clip-smot's are {now}"
        return None

    def unchecked_note(self, out: str | Path) -> str:
        """For a finished stage that reads earlier stages' files and whose record has no hash of one
        of them (an older clip-smot's record: no ``inputs``; or one lacking that file's hash, which
        went unchecked as silently as if equal): what the user must check by hand; else ''."""
        try:
            recorded = read_json(self.folder(out) / RECORD).get("inputs")
        except (OSError, ValueError, TypeError, AttributeError):  # (no record, or one check_record has refused)
            return ""
        root = Path(out)
        stages = sorted({p.relative_to(root).parts[0] for p in self.inputs(out)
                         if not isinstance(recorded, dict) or p.relative_to(root).as_posix() not in recorded})
        if not stages:
            return ""
        older = ", from an older clip-smot," if recorded is None else ""
        return (f"  (its {RECORD}{older} has no hashes of {', '.join(stages)}'s files: remove "
                f"{self.folder(out)} if {' or '.join(stages)} was redone since)")

    def start_record(self, out: str | Path) -> list[str]:
        """Write the stage's :data:`RECORD` before its command runs: its command line
        (:meth:`identity`, returned), the SHA-256 of each earlier stage's file it reads (kept from
        before it ran: those it read) and of each other file it names, and ``made`` null."""
        record, now = self.folder(out) / RECORD, self.identity(out)
        if self.resumable(out):  # (a run begun in its folder since the check before any stage: another command's?)
            self.check_record(out)
        root = Path(out)
        hashes = {p.relative_to(root).as_posix(): _sha256(p) for p in self.inputs(out) if is_file(p, "--out")}
        make_folder(self.folder(out))
        remove_stale_temporaries(self.folder(out), (RECORD,))  # (of a run killed while writing it)
        atomic_write_text(json_text({"argv": now, "inputs": hashes, "files": self.files(out), "made": None}), record)
        return now

    def vouch_record(self, out: str | Path, started: list[str]) -> None:
        """Once the command has ended well, add to the record the SHA-256 of the final file it
        wrote (``made``) and, for a training, of its model.safetensors (``model``); ``started``:
        what :meth:`start_record` returned. Nothing is vouched for where no final file is."""
        record, now = self.folder(out) / RECORD, self.identity(out)
        try:
            vouched = {"made": sha256_file(self.folder(out) / FINAL_FILE[self.command])}
            if self.command == "train" and is_file(self.folder(out) / MODEL, "--out"):
                vouched["model"] = sha256_file(self.folder(out) / MODEL)
        except OSError:  # (no final file to vouch for: the stage is unfinished)
            return
        try:
            saved = read_json(record)
        except (OSError, ValueError) as e:  # (said at once, not at the table after the stages still to run)
            why = "was removed" if not os.path.lexists(record) else f"became unreadable ({first_line(e)})"
            raise UserError(f"reproduce: {record} {why} while the stage ran, so nothing says which command made "
                            f"the {self.command} run in {self.folder(out)}; remove {self.folder(out)} to run the "
                            "stage again") from None
        # (another reproduce into this --out, of another table or options, wrote its record while the stage
        # ran, where --out could not be locked: vouched for, its command line was taken for the one that
        # made the stage's files)
        if not isinstance(saved, dict) or saved.get("argv") != started:
            raise UserError(f"reproduce: {record} was replaced while the stage ran (another reproduce into this "
                            f"--out, of another table or options?); remove {self.folder(out)} to run the stage "
                            "again")
        if now != started:  # (a path the stage was given that leads elsewhere now: which files did it read?)
            given, i = self._without_run_control(), next(i for i, (a, b) in enumerate(zip(started, now)) if a != b)
            raise UserError(f"reproduce: {given[i - 1]} {given[i]} leads to {now[i]} now, not to {started[i]} as when "
                            f"the stage {self.name} started (a symbolic link repointed while it ran?); remove "
                            f"{self.folder(out)} to run the stage again")
        atomic_write_text(json_text({**saved, **vouched}), record)


def _sha256(path: Path) -> str:
    """:func:`sha256_file` of an earlier stage's file; a read that fails (EIO of a failing disk) is
    a UserError naming it."""
    try:
        return sha256_file(path)
    except OSError as e:
        raise UserError(f"reproduce: {path} cannot be read ({e.strerror or e})") from None


def _stage_config(argv: Sequence[str], config: type):
    """The ``config`` (TrainConfig, FitConfig) of a stage's command line, which reproduce wrote: each
    word a flag of one of its fields (``--no-X`` of a boolean one), with its value after it unless
    the field is a boolean; the values typed as the fields declare them, as the command reads them."""
    by_flag = {flag_of(f): f for f in fields(config) if flag_of(f)}
    values, words = {}, list(argv[1:])  # (argv[0]: the command)
    while words:
        word = words.pop(0)
        f = by_flag.get(word) or by_flag["--" + word.removeprefix("--no-")]
        kind = field_kind(f)
        if kind == "bool":
            values[f.name] = word in by_flag
        else:
            values[f.name] = {"int": int, "float": float}.get(kind, str)(words.pop(0))
    return config(**values)


@dataclass
class Plan:
    """The stages of a table and where each paper row is measured: row -> (stage, score) or None."""

    stages: list[Stage]
    rows: dict[str, tuple[str, str] | None]
    ood_sets: tuple[str, ...]
    title: str
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (flag, path) that must exist to run


def _torchvision_sets(p: Plan) -> list[str]:
    """The torchvision sets the stages of ``p`` read from --cifar-root: the CIFAR sets they train
    on, and SVHN where an evaluation names the built-in set."""
    names: list[str] = []
    for stage in p.stages:
        argv = list(stage.argv)
        given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--dataset", "--ood")]
        names += [n.lower() for n in given if n.lower() in ("cifar10", "cifar100", "svhn")]
    return list(dict.fromkeys(names))


def _opt(flag: str, value) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _require(value: str | None, flag: str, table: str) -> str:
    if not value:
        raise UserError(f"{flag}: {table} needs it (see clip-smot reproduce --help)")
    return value


def _ood_args(o: ReproduceOptions, sets: Sequence[str], table: str, inputs: list) -> list[str]:
    """``--ood NAME=DIR`` for each set (SVHN: the built-in set), folders found under --ood-root."""
    root = Path(_require(o.ood_root, "--ood-root", table))
    args = []
    for name in sets:
        if name == "SVHN":
            args += ["--ood", name]
            continue
        candidates = [root / c for c in (CIFAR_OOD_FOLDERS if sets == CIFAR_OOD else OOD_FOLDERS)[name]]
        found = next((c for c in candidates if is_folder(c, "--ood-root")), candidates[0])
        inputs.append((f"--ood-root ({name})", str(found)))
        args += ["--ood", f"{name}={found}"]
    return args


def _common(o: ReproduceOptions) -> list[str]:
    return _opt("--device", o.device) + _opt("--workers", o.workers)


def _fit(o: ReproduceOptions, name: str, *extra: str) -> Stage:
    argv = ["fit", "--data", str(o.imagenet), *_opt("--shots", o.shots), *_opt("--model", o.model),
            *_opt("--pretrained", o.pretrained), *_opt("--cam-model", o.cam_model), *_opt("--epochs", o.epochs),
            *_opt("--batch-size", o.batch_size), *_opt("--precision", o.precision), *_common(o), *extra]
    return Stage(name, (*argv, "--out", str(Path(o.out) / name)))


def _clip_eval(o: ReproduceOptions, name: str, source: list[str], ood: list[str], scores: str) -> Stage:
    argv = ["eval", *source, *_opt("--model", o.model), *_opt("--pretrained", o.pretrained), "--id",
            str(Path(str(o.imagenet)) / "val"), *ood, "--scores", scores, *_common(o)]
    return Stage(name, (*argv, "--out", str(Path(o.out) / name)))


def _table8(o: ReproduceOptions) -> Plan:
    """ImageNet-1k, CLIP: SMOT and CoOp prompts on one few-shot split, the zero-shot MCM baseline, and
    the post-hoc rows on the CoOp prompt (the paper copies them from NPOS, which fine-tuned CLIP)."""
    _require(o.imagenet, "--imagenet", "table8")
    inputs = [("--imagenet", str(Path(str(o.imagenet)) / "train")), ("--imagenet", str(Path(str(o.imagenet)) / "val"))]
    ood = _ood_args(o, IMAGENET_OOD, "table8", inputs)
    out = Path(o.out)
    smot = _fit(o, "fit-smot")
    coop = _fit(o, "fit-coop", "--split", str(out / "fit-smot" / "split.txt"), "--loss", "ce")
    zero = ["--zero-shot"] + ([] if o.model else ["--model", "ViT-B-16"]) + ([] if o.pretrained else ["--pretrained", "openai"])
    stages = [smot, coop,
              _clip_eval(o, "eval-mcm", zero, ood, "mcm"),
              _clip_eval(o, "eval-coop", ["--prompt", str(out / "fit-coop" / "prompt.safetensors")], ood, CLIP_POSTHOC),
              _clip_eval(o, "eval-smot", ["--prompt", str(out / "fit-smot" / "prompt.safetensors")], ood, "mcm")]
    rows = {"MCM": ("eval-mcm", "mcm"), "MSP": ("eval-coop", "msp"), "ODIN": ("eval-coop", "odin"),
            "Energy": ("eval-coop", "energy"), "GradNorm": ("eval-coop", "gradnorm"), "Vim": ("eval-coop", "vim"),
            "KNN": ("eval-coop", "knn"), "VOS": None, "VOS+": None, "NPOS": None, "CoOp": ("eval-coop", "mcm"),
            "SMOT": ("eval-smot", "mcm")}
    # the paper's model and shots, or what this run was given in their place
    model = os.path.basename(str(o.model)) if o.model else "ViT-B/16"
    title = f"Table 8: ImageNet-1k (ID), CLIP {model}, {o.shots or 16} shots"
    return Plan(stages, rows, IMAGENET_OOD, title, inputs)


# --- the ResNet tables ------------------------------------------------------------------------------


def _train(o: ReproduceOptions, name: str, dataset: str, *extra: str) -> Stage:
    data = o.imagenet if dataset == "imagenet200" else o.cifar_root
    argv = ["train", "--dataset", dataset, *_opt("--data", data), *_opt("--epochs", o.epochs),
            *_opt("--batch-size", o.batch_size), *_opt("--precision", o.precision), *_common(o), *extra]
    return Stage(name, (*argv, "--out", str(Path(o.out) / name)))


def _resnet_eval(o: ReproduceOptions, name: str, dataset: str, ood: list[str], scores: str) -> Stage:
    model = str(Path(o.out) / name.replace("eval-", "train-", 1) / "model.safetensors")
    argv = ["eval", "--checkpoint", model, "--id", dataset, *ood, "--scores", scores, *_common(o)]
    return Stage(name, (*argv, "--out", str(Path(o.out) / name)))


def _base_and_smot(o: ReproduceOptions, dataset: str, ood: list[str], base_scores: str, suffix: str = "",
                   arch: Sequence[str] = ()) -> list[Stage]:
    """A base (CE) model, the SMOT model with its CAMs, and the evaluation of both."""
    base = f"train-base{suffix}"
    cam = ["--cam-model", str(Path(o.out) / base / "model.safetensors")]
    return [_train(o, base, dataset, "--stage", "base", *arch),
            _train(o, f"train-smot{suffix}", dataset, "--stage", "smot", *cam, *arch),
            _resnet_eval(o, f"eval-base{suffix}", dataset, ood, base_scores),
            _resnet_eval(o, f"eval-smot{suffix}", dataset, ood, "msp")]


def _resnet_data(o: ReproduceOptions, table: str, dataset: str) -> tuple[list, list[str], tuple[str, ...]]:
    inputs: list = []
    if dataset == "imagenet200":
        root = Path(_require(o.imagenet, "--imagenet", table))
        # the trainings read IMAGENET/train, the evaluations IMAGENET/val, hours later: both are
        # checked before anything runs (a missing IMAGENET is named once, as itself)
        inputs += [("--imagenet", str(root / split)) for split in ("train", "val")] if root.is_dir() else \
            [("--imagenet", str(root))]
        sets = IMAGENET_OOD
    else:
        inputs.append(("--cifar-root", _require(o.cifar_root, "--cifar-root", table)))
        sets = CIFAR_OOD
    return inputs, _ood_args(o, sets, table, inputs), sets


def _baselines(dataset: str, title: str) -> Callable[[ReproduceOptions], Plan]:
    """Tables 2-4: the post-hoc scores on the base model, LogitNorm, and SMOT with MSP."""

    def build(o: ReproduceOptions) -> Plan:
        table = {"cifar10": "table2", "cifar100": "table3", "imagenet200": "table4"}[dataset]
        inputs, ood, sets = _resnet_data(o, table, dataset)
        stages = _base_and_smot(o, dataset, ood, "msp,odin,energy,react")
        stages += [_train(o, "train-logitnorm", dataset, "--stage", "base", "--method", "logitnorm"),
                   _resnet_eval(o, "eval-logitnorm", dataset, ood, "msp")]
        rows = {"MSP": ("eval-base", "msp"), "ODIN": ("eval-base", "odin"), "ReAct": ("eval-base", "react"),
                "Energy": ("eval-base", "energy"), "RegMixup": None, "VOS": None,
                "LogitNorm": ("eval-logitnorm", "msp"), "NPOS": None, "SMOT": ("eval-smot", "msp")}
        return Plan(stages, rows, sets, title, inputs)

    return build


def _table1(o: ReproduceOptions) -> Plan:
    """CE against SMOT (MSP) on CIFAR-10 and CIFAR-100."""
    inputs, ood, sets = _resnet_data(o, "table1", "cifar10")
    stages, rows = [], {}
    for dataset, label in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
        stages += _base_and_smot(o, dataset, ood, "msp", suffix=f"-{dataset}")
        rows |= {f"{label} CE": (f"eval-base-{dataset}", "msp"), f"{label} SMOT": (f"eval-smot-{dataset}", "msp")}
    return Plan(stages, rows, sets, "Table 1: cross-entropy against SMOT, MSP, ResNet-18", inputs)


def _table5(o: ReproduceOptions) -> Plan:
    inputs, ood, sets = _resnet_data(o, "table5", "cifar10")
    stages = _base_and_smot(o, "cifar10", ood, "msp,odin,energy,react")
    stages[-1] = _resnet_eval(o, "eval-smot", "cifar10", ood, "msp,odin,energy,react")
    rows = {f"{m} {s}": (f"eval-{m.lower()}" if m == "SMOT" else "eval-base", s.lower())
            for s in ("MSP", "ODIN", "Energy", "ReAct") for m in ("CE", "SMOT")}  # the paper's: "CE / SMOT" per score
    return Plan(stages, rows, sets, "Table 5: SMOT with different scoring functions, CIFAR-10", inputs)


ARCHS = {"ResNet18": "resnet18", "WRN-40-2": "wrn40_2", "DenseNet": "densenet_bc"}


def _table6(o: ReproduceOptions) -> Plan:
    inputs, ood, sets = _resnet_data(o, "table6", "cifar10")
    stages, rows = [], {}
    for label, arch in ARCHS.items():
        stages += _base_and_smot(o, "cifar10", ood, "msp", suffix=f"-{arch}", arch=("--arch", arch))
        rows |= {f"{label} CE": (f"eval-base-{arch}", "msp"), f"{label} SMOT": (f"eval-smot-{arch}", "msp")}
    return Plan(stages, rows, sets, "Table 6: SMOT with different network architectures, CIFAR-10", inputs)


def _variants(o: ReproduceOptions, table: str, variants: dict[str, list[str]], rows: dict, title: str) -> Plan:
    """One base model and SMOT runs with its CAMs, one per variant's extra train flags (Tables 7, 9)."""
    inputs, ood, sets = _resnet_data(o, table, "cifar10")
    cam = ["--cam-model", str(Path(o.out) / "train-base" / "model.safetensors")]
    trains = [_train(o, "train-base", "cifar10", "--stage", "base")]
    evals = [_resnet_eval(o, "eval-base", "cifar10", ood, "msp")]
    for name, flags in variants.items():
        trains.append(_train(o, f"train-{name}", "cifar10", "--stage", "smot", *flags, *cam))
        evals.append(_resnet_eval(o, f"eval-{name}", "cifar10", ood, "msp"))
    return Plan(trains + evals, rows, sets, title, inputs)


BETAS = ("1,1", "0.67,0.67", "2,2", "5,2", "20,12", "30,18", "18,30", "50,20", "100,50")


def _table7(o: ReproduceOptions) -> Plan:
    pairs = [ab.split(",") for ab in BETAS]  # (alpha, beta) of each row
    variants = {f"smot-a{a}-b{b}": ["--alpha", a, "--beta", b] for a, b in pairs}
    rows = {"w/o SMOT": ("eval-base", "msp")}
    rows |= {f"({ab})": (f"eval-{name}", "msp") for ab, name in zip(BETAS, variants)}
    return _variants(o, "table7", variants, rows, "Table 7: the effect of the sampling function Beta(alpha, beta), "
                     "CIFAR-10")


def _table9(o: ReproduceOptions) -> Plan:
    variants = {"smot": [], "smot-one": ["--perturb", "one"], "smot-noise": ["--perturb", "noise"]}
    rows = {"MSP": ("eval-base", "msp"), "SMOT (masked as 0)": ("eval-smot", "msp"),
            "SMOT (masked as 1)": ("eval-smot-one", "msp"), "SMOT (noise)": ("eval-smot-noise", "msp")}
    return _variants(o, "table9", variants, rows, "Table 9: SMOT with different perturbation functions, CIFAR-10")


# table name -> (the paper's table number in paper_tables.csv, plan builder)
TABLES: dict[str, tuple[str, Callable[[ReproduceOptions], Plan]]] = {
    "table8": ("8", _table8),
    "table1": ("1", _table1),
    "table2": ("2", _baselines("cifar10", "Table 2: CIFAR-10 (ID), ResNet-18")),
    "table3": ("3", _baselines("cifar100", "Table 3: CIFAR-100 (ID), ResNet-18")),
    "table4": ("4", _baselines("imagenet200", "Table 4: ImageNet-200 (ID), ResNet-18")),
    "table5": ("5", _table5),
    "table6": ("6", _table6),
    "table7": ("7", _table7),
    "table9": ("9", _table9),
}


def plan(table: str, options: ReproduceOptions) -> Plan:
    """The stages and the row map of ``table`` (a key of :data:`TABLES`)."""
    if table not in TABLES:
        raise UserError(f"TABLE {table}: not a table this command reproduces (choose from {', '.join(TABLES)})")
    p = TABLES[table][1](options)
    p.stages = [replace(stage, earlier=tuple(s.name for s in p.stages[:i])) for i, stage in enumerate(p.stages)]
    return p


_PAPER_COLUMNS = ("table", "row", "ood_set", "metric", "value")  # (of data_lists/paper_tables.csv)


def paper_table(number: str) -> list[dict[str, str]]:
    """The paper's numbers of one table: rows of ``data_lists/paper_tables.csv`` (table, row,
    ood_set, metric, value; metric fpr95, auroc or id_acc; percent)."""
    text = bundled_text("data_lists", "paper_tables.csv")  # (a byte-order mark dropped; not UTF-8: one line)
    rows = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in _PAPER_COLUMNS if c not in (rows.fieldnames or ())]
    if missing:
        raise UserError(f"{bundled_file('data_lists', 'paper_tables.csv')}: its header lacks "
                        f"{', '.join(missing)} (the columns are {', '.join(_PAPER_COLUMNS)})")
    return [r for r in rows if r["table"] == number]


def _ours(out: Path, where: tuple[str, str] | None, ood_set: str, metric: str) -> float | None:
    """Our number for a paper cell, from the stage's metrics.json (None: not measured)."""
    if where is None:
        return None
    path = out / where[0] / "metrics.json"
    if not path.is_file():
        return None
    try:
        report = read_json(path)
        value = report.get("id_accuracy") if metric == "id_acc" else \
            report.get("metrics", {}).get(where[1], {}).get(ood_set, {}).get(metric)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{metric} is {value!r}")
            if not 0 <= value <= 100:  # every metric is a percent: 1e308 is no FPR, AUROC or accuracy
                raise ValueError(f"{metric} is {value!r}, not a percent")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, OverflowError) as e:  # (JSONDecodeError is a ValueError)
        raise UserError(f"{path}: not a readable metrics.json of clip-smot eval ({type(e).__name__}: "
                        f"{first_line(e)}); remove it to run its stage again") from None
    return value


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def write_table(table: str, p: Plan, out: str | Path) -> list[dict]:
    """Write ``OUT/table.csv`` (one line per paper cell: paper, ours, ours - paper) and ``OUT/table.md``
    (the paper's layout: a row per method, FPR95 and AUROC per OOD set; each cell "paper / ours")."""
    out = Path(out)
    cells = []
    for r in paper_table(TABLES[table][0]):
        if r["row"] not in p.rows:
            continue
        paper = float(r["value"])
        ours = _ours(out, p.rows[r["row"]], r["ood_set"], r["metric"])
        cells.append({**r, "paper": paper, "ours": ours, "difference": None if ours is None else ours - paper})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "row", "ood_set", "metric", "paper", "ours", "difference", "stage", "score"])
    for c in cells:
        where = p.rows[c["row"]] or ("", "")
        w.writerow([c["table"], c["row"], c["ood_set"], c["metric"], _fmt(c["paper"]), _fmt(c["ours"]),
                    _fmt(c["difference"]), *where])
    # both or neither: a failure writing table.md (a full disk) left a new table.csv beside the old table.md
    remove_stale_temporaries(out, ("table.csv", "table.md"))  # (of a run killed while writing them)
    atomic_write_files(out, {"table.csv": text_writer(buf.getvalue()), "table.md": text_writer(_markdown(p, cells))})
    return cells


_METRIC = {"fpr95": "FPR95↓", "auroc": "AUROC↑", "id_acc": "ID ACC↑"}


def _markdown(p: Plan, cells: list[dict]) -> str:
    columns = list(dict.fromkeys((c["ood_set"], c["metric"]) for c in cells))
    by = {(c["row"], c["ood_set"], c["metric"]): c for c in cells}
    head = [f"{'' if s in ('average', 'id') else s + ' '}{'Average ' if s == 'average' else ''}{_METRIC[m]}"
            for s, m in columns]
    lines = [f"# {p.title}", "", "Each cell: the paper's number / ours (ours - paper). Percent; "
             "\"not run\": a method this toolkit does not implement.", "",
             "| Method | " + " | ".join(head) + " |", "|---|" + "---|" * len(columns)]
    for row in p.rows:
        out = []
        for s, m in columns:
            c = by.get((row, s, m))
            if c is None:
                out.append("")
            elif p.rows[row] is None:
                out.append(f"{c['paper']:.2f} / not run")
            elif c["ours"] is None:
                out.append(f"{c['paper']:.2f} / -")
            else:
                out.append(f"{c['paper']:.2f} / {c['ours']:.2f} ({c['difference']:+.2f})")
        lines.append(f"| {row} | " + " | ".join(out) + " |")
    stages = sorted({w[0] for w in p.rows.values() if w})
    lines += ["", "Measured by: " + ", ".join(f"`{s}/`" for s in stages) + " (each folder's metrics.json)."]
    return "\n".join(lines) + "\n"


def _image_folders(p: Plan, o: ReproduceOptions) -> list[tuple[str, str | Path]]:
    """The folders of images the stages of ``p`` read (IMAGENET's train/ and val/, the OOD sets;
    a torchvision root holds none): an OUT inside one would be refused by the evaluation (or the
    fit) that reads it, after the stages before it, and leave stage folders among the images."""
    folders: list[tuple[str, str | Path]] = [(f"the {flag} folder", path) for flag, path in p.inputs
                                             if flag.startswith("--ood-root")]
    if o.imagenet and any(flag == "--imagenet" for flag, _ in p.inputs):
        folders += [(f"the --imagenet {split}/ folder", Path(o.imagenet) / split) for split in ("train", "val")]
    return folders


def _no_images(flag: str, path: str) -> str | None:
    """Why the folder of images ``path`` (IMAGENET's train/ or val/, an OOD set) holds nothing its
    stages can read, or None: no image file under it (an OOD set whose download failed, left empty,
    stopped the run at its first evaluation, after the fits or trainings). The walk stops at the
    first image found; a torchvision root holds none and is checked apart."""
    if flag == "--cifar-root":
        return None
    try:
        next(iter_images(path, flag))
    except UserError as e:
        return str(e)
    return None


def _val_holds_train(root: Path, train: Sequence[str], val: Sequence[str]) -> str | None:
    """The error line of a class folder of ``root/val`` that is a class folder of ``root/train``
    or a folder above one, symbolic links followed (a link to it, ``val`` a link to ``train``, a
    bind mount reads as another folder and is not caught), or None. Its images are then training
    images, each of them: the evaluations that fit scores on the training images refuse ID test
    images among them (clip eval those of the prompt's few-shot split, one or more a class; resnet
    eval, for react, every image of train/), after the fits or trainings. Only folders are
    compared, no image is read: a val folder inside a train class folder, or image files linked
    one by one, are still found by the evaluation alone."""
    vals: dict[str, str] = {}
    for name in val:
        vals.setdefault(os.path.realpath(root / "val" / name), name)
    for name in train:
        path = os.path.realpath(root / "train" / name)
        above = path
        while above not in vals and os.path.dirname(above) != above:
            above = os.path.dirname(above)
        if above in vals:
            return (f"--imagenet: {root / 'val' / vals[above]} {'is' if above == path else 'holds'} "
                    f"{root / 'train' / name} (symbolic links followed): its images are training images, which the "
                    "evaluation refuses as ID test images; give val/ its own images")
    return None


def _class_mismatch(p: Plan, o: ReproduceOptions) -> list[str]:
    """What is wrong with the class folders of ``--imagenet`` for the stages of ``p`` (each an
    error line; none: nothing): the CLIP fits learn the classes of ``train/`` and the zero-shot
    evaluation takes those of ``val/``, so they must be the same folders (a val/ with one class
    more or less gave the table's MCM row other classes than its CoOp and SMOT rows, exit 0);
    the ImageNet-200 trainings and evaluations read the 200 wnids in ``train/`` and ``val/``. A
    class folder of val/ must not be one of train/ (:func:`_val_holds_train`)."""
    if not o.imagenet or not any(flag == "--imagenet" for flag, _ in p.inputs):
        return []
    root, problems = Path(o.imagenet), []
    for split in ("train", "val"):  # (a train/ of per-class tars, a flat val/: said as fit and eval say it)
        try:
            split_folder(root, split, "--imagenet")
        except UserError as e:
            problems.append(str(e))
    if problems:
        return problems
    if any(stage.command == "fit" for stage in p.stages):
        def folders(split: str) -> list[str]:
            try:
                return class_folders(root / split, "--imagenet")
            except UserError:  # (none: a train/ of none is the first fit's error, at once)
                return []

        train, val = folders("train"), folders("val")
        extra, lacking = sorted(set(val) - set(train)), sorted(set(train) - set(val))
        if train and (extra or lacking):
            show = lambda names: ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")  # noqa: E731
            problems.append(f"--imagenet: the class folders of {root / 'val'} are not those of {root / 'train'} "
                            f"(val/ has {show(extra) or 'none'} more, {show(lacking) or 'none'} fewer); the prompts "
                            "learn train/'s classes and the zero-shot evaluation takes val/'s")
        if train and (shared := _val_holds_train(root, train, val)):
            problems.append(shared)
    if any("imagenet200" in stage.argv for stage in p.stages):
        for split in ("train", "val"):
            missing = [w for w in imagenet200_wnids() if not (root / split / w).is_dir()]
            if missing:
                problems.append(f"--imagenet: {len(missing)} class folder(s) of ImageNet-200 missing from "
                                f"{root / split}, e.g. {missing[0]}")
        wnids = [w for w in imagenet200_wnids() if (root / "train" / w).is_dir() and (root / "val" / w).is_dir()]
        if wnids and (shared := _val_holds_train(root, wnids, wnids)):
            problems.append(shared)
    return problems


def _check_finished(p: Plan, out: Path, finished: Collection[str] | None) -> None:
    """Raise a UserError when a stage folder holds work of another command or of other inputs
    (:meth:`Stage.check_record`), or a finished stage was made with a file since replaced at
    the same path or computed otherwise by an older clip-smot. ``finished``: the names of the
    finished stages (None: every stage, all run)."""
    for stage in p.stages:
        stage.check_record(out, finished)
    done = [stage for stage in p.stages if finished is None or stage.name in finished]
    # a finished stage made with weights since replaced at the same path (the command line is the same): every one
    stale = [f"{stage.folder(out)} ({why})" for stage in done if (why := stage.changed_file(out))]
    if stale:
        one = len(stale) == 1
        raise UserError(f"reproduce: {'a finished stage was' if one else 'finished stages were'} made with a file that "
                        f"is no longer as it was then, so {'its' if one else 'their'} numbers would not be of it: "
                        f"{'; '.join(stale)}; remove {'that folder' if one else 'those folders'} to run "
                        f"{'its stage' if one else 'their stages'} again")
    # a finished stage that this clip-smot would compute otherwise from the same command line
    if older := [f"{stage.folder(out)} ({why})" for stage in done if (why := stage.outdated(out))]:
        raise UserError(f"reproduce: made by an older clip-smot, which computed it otherwise: {'; '.join(older)}; "
                        f"remove {'that folder' if len(older) == 1 else 'those folders'} to run it again")


def run_reproduce(table: str, options: ReproduceOptions, run: Callable[[list[str]], None], dry_run: bool = False,
                  echo: Callable[[str], None] = print) -> list[dict] | None:
    """Run the stages of ``table`` not yet finished, in order, then write table.md and table.csv.

    Args:
        table: a key of :data:`TABLES`.
        options: data roots, ``out`` and the options passed to every stage.
        run: runs one ``clip-smot`` command line (its arguments, the command first); raises on failure.
        dry_run: print the command lines that would run (finished stages as comments) and run nothing.
        echo: where progress lines and the dry run's commands go.

    Returns:
        The table's cells (see :func:`write_table`), or None for a dry run.

    Raises:
        UserError: an unknown table, an option out of its range, a missing data root or input
            folder (before anything runs).
    """
    check_ranges(options)
    p = plan(table, options)
    out = Path(options.out)
    is_folder(out, "--out")  # (a name longer than the system takes: one line, not OSError at a stage's look-up)
    if not dry_run:
        missing = [f"{flag}: no such folder: {path}" for flag, path in p.inputs if not is_folder(path, flag)]
        if options.cifar_root and Path(options.cifar_root).is_dir():  # (torchvision's sets: the stages download there)
            from clip_smot.resnet.data import torchvision_unavailable

            missing += [f"--cifar-root: {why}" for name in _torchvision_sets(p)
                        if (why := torchvision_unavailable(name, options.cifar_root))]
        if missing:  # every one, before hours of training, not at the evaluation that needs it
            raise UserError("; ".join(missing))
        check_output(out, "--out", folders=_image_folders(p, options), writes=())
        problems = [why for flag, path in p.inputs if (why := _no_images(flag, path))]
        if problems := problems + _class_mismatch(p, options):
            raise UserError("; ".join(problems))
        # (held by the stages' commands too, each on its own folder: two reproduces into one --out at once,
        # of other tables or options, wrote their records over each other's and resumed the other's fit)
        with output_lock(out, "--out", folder=True):
            return _run_stages(table, p, out, run, dry_run, echo)
    return _run_stages(table, p, out, run, dry_run, echo)


def _run_stages(table: str, p: Plan, out: Path, run: Callable[[list[str]], None], dry_run: bool,
                echo: Callable[[str], None]) -> list[dict] | None:
    """:func:`run_reproduce` once its inputs are checked (and, unless ``dry_run``, --out locked)."""
    # two stages in one folder (OUT/eval-smot a link to OUT/eval-logitnorm): the one run first wrote its
    # record and metrics.json there, and the other was skipped as finished, with the first's numbers
    seen: dict[str, Path] = {}
    for stage in p.stages:
        if (real := os.path.realpath(stage.folder(out))) in seen:
            raise UserError(f"reproduce: {stage.folder(out)} and {seen[real]} are one folder (symbolic links "
                            "followed); each stage needs its own: remove the link")
        seen[real] = stage.folder(out)
    finished = {stage.name for stage in p.stages if stage.finished(out)}
    _check_finished(p, out, finished)  # (every folder, before any stage runs: not at the evaluation after hours)
    for stage in p.stages:
        argv = list(stage.argv)
        if stage.finished(out):
            # the earlier stages it reads that were not finished at the start (the others' files
            # were compared above): their files are compared once they have run, not in a dry run
            later = sorted(stage.input_stages(out) - finished)
            if dry_run:
                echo(f"# done: clip-smot {shlex.join(argv)}"
                     + (f"  (if {', '.join(later)} gives the files it was made from)" if later else "")
                     + stage.unchecked_note(out))
                continue
            if later:
                stage.check_record(out)
            echo(f"reproduce: {stage.name} is finished; skipped{stage.unchecked_note(out)}")
            continue
        if stage.resumable(out):
            argv.append("--resume")
        if dry_run:
            echo(f"clip-smot {shlex.join(argv)}")
            continue
        echo(f"reproduce: {stage.name}: clip-smot {shlex.join(argv)}")
        started = stage.start_record(out)
        try:
            run(argv)
        except OtherFlags as e:  # (the fit's "resume with the same flags": not the user's --resume)
            if "--resume" not in argv:
                raise
            raise UserError(f"reproduce: {stage.folder(out)} holds a {stage.command} run of other options than this "
                            f"stage's ({', '.join(e.flags)}), started by another command (by hand, or another "
                            f"reproduce's); remove {stage.folder(out)} to run the stage again") from None
        # (a stage refused by another command's lock, e.g. an eval run by hand into its folder, left that
        # command's metrics.json under its record: the rerun skipped it as finished, and the table held them)
        stage.vouch_record(out, started)
    if dry_run:
        return None
    # again once every stage has run: a file replaced while they ran (--pretrained's weights copied over
    # between the fits and the evaluations) gave a table of two models, exit 0; the rerun refused it
    _check_finished(p, out, None)
    cells = write_table(table, p, out)
    echo(f"reproduce: {out / 'table.md'} and {out / 'table.csv'}")
    return cells
