"""``clip-smot eval`` for the CLIP track: a learned prompt (or zero-shot prompts) on ID and OOD sets.

Text features are computed once; image features come from the feature cache when the same
files were encoded by the same weights before (:mod:`clip_smot.clip.features`), the ID
training images of the fitted scores (react, knn, vim) too. ODIN encodes every image again
with a backward pass through the image encoder: it has no cache. The metric files are written
by :func:`clip_smot.common.reports.write_reports`, shared with the ResNet track.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clip_smot.clip.decoding import kept_workers
from clip_smot.clip.features import cache_setting, decode_setting, encode_files, precision_setting
from clip_smot.clip.prompt_file import load_prompt, unfinished_note
from clip_smot.clip.scorer import (
    FITTED_SCORES,
    PromptScorer,
    parse_scores,
    resolve_pretrained,
    zero_shot_template,
)
from clip_smot.common.configs import MAX_SEED, check_ranges, setting
from clip_smot.common.digits import DIGIT_NAMES
from clip_smot.common.distributed import same_on_every_rank, same_options_on_every_rank, writer_lock, writes_outputs
from clip_smot.common.errors import UserError
from clip_smot.common.files import check_output_folder, json_text, read_with_hash
from clip_smot.common.image_sets import (
    bare_ood_note,
    check_apart,
    check_train_apart,
    folder_names,
    id_class_folders,
    id_set,
    image_set,
    stray_wnids,
)
from clip_smot.common.reports import REPORT_FILES, EvalConfig, check_id_train_used, check_ood_names, write_reports

__all__ = ["ClipEvalConfig", "id_train_paths", "run_clip_eval"]

DEFAULT_ZERO_SHOT_MODEL = ("ViT-B-16", "openai")
_WRITES = REPORT_FILES  # under --out (config.json included)


@dataclass(frozen=True, kw_only=True)
class ClipEvalConfig(EvalConfig):
    """Every option of ``clip-smot eval --prompt`` / ``--zero-shot``; saved as OUT/config.json
    (without ``out``, with the score names as a list)."""

    prompt: str | None = setting(None, "Learned prompt (.safetensors) to evaluate (CLIP track).", path="file")
    zero_shot: bool = setting(False, "CLIP track: plain 'a photo of a {c}' prompts (the MCM baseline).")
    model: str | None = setting(None, "CLIP: open_clip name or config JSON (default: from the prompt; --zero-shot: "
                                f"{DEFAULT_ZERO_SHOT_MODEL[0]}).")
    pretrained: str | None = setting(None, "CLIP: pretrained tag or checkpoint file (default: from the prompt; "
                                     f"--zero-shot: {DEFAULT_ZERO_SHOT_MODEL[1]}).")
    split: str | None = setting(None, "CLIP: a split.txt choosing those images (its paths relative to --id-train, or "
                                "to the prompt's data).", path="file")
    use_cache: bool = cache_setting("CLIP: ")
    decode: str = decode_setting("CLIP: ")
    precision: str = precision_setting("CLIP: ")

    def builtin_sets(self) -> tuple[str, ...]:
        """``--id`` where it names the built-in digits (any case); ``--id-train`` is always a folder or list."""
        return ("--id",) if (self.id_data or "").lower() in BUILTIN_ID else ()


# Built-in sets (the bundled digits, clip_smot.common.digits): a bare name is always the set,
# even beside a folder of that name (./digits names the folder).
BUILTIN_ID = ("digits",)
BUILTIN_OOD = ("photos", "textures")


def _builtin_id(where: str, size: int) -> str:
    """The bundled digits' val folder for ``--id digits``, or ``where`` itself when it is a path."""
    if where.lower() not in BUILTIN_ID:  # (in any case, as a bare --ood NAME)
        return where
    if Path(where).exists() and writes_outputs():  # (as a bare --ood NAME: said, not done silently)
        print(f"note: --id {where} is the built-in set; ./{where} names the folder of that name here", file=sys.stderr)
    from clip_smot.common.digits import ensure_digits

    return str(ensure_digits(size) / "val")


def _prompt_folders(config, n_classes: int) -> list[str] | None:
    """The class folders a fit prompt was trained on (``run.class_folders``), if it records them."""
    run = config.get("run") if isinstance(config, dict) else None
    folders = run.get("class_folders") if isinstance(run, dict) else None
    ok = isinstance(folders, list) and len(folders) == n_classes and all(isinstance(f, str) for f in folders)
    return folders if ok else None


def _builtin_ood(name: str, size: int) -> str:
    """The folder of the built-in OOD set ``name`` (a bare ``--ood NAME``)."""
    said = bare_ood_note(name, BUILTIN_OOD)
    if said is not None and name.lower() not in BUILTIN_OOD:
        raise UserError(said)
    if said is not None and writes_outputs():
        print(said, file=sys.stderr)
    if name.lower() not in BUILTIN_OOD:
        raise UserError(f"--ood {name}: not a built-in OOD set (the CLIP track has only the digits' "
                        f"{' and '.join(BUILTIN_OOD)}); give {name}=DIR for a folder or image list")
    from clip_smot.common.digits import ensure_digits

    return str(ensure_digits(size) / "ood" / name.lower())


def _prompt_split(prompt: str, config: dict, root: Path, split: str | None) -> list[tuple[str, int]]:
    """The few-shot images a fit prompt was trained on: ``split``, else the split.txt next to
    the prompt, else the split drawn again from the prompt's data, shots and seed; the last two
    checked against the SHA-256 the prompt records."""
    from clip_smot.clip.fewshot import (
        draw_split,
        read_split,
        resolve_classes,
        split_text,
    )

    classes = resolve_classes(root, "--id-train")
    if split:
        return read_split(split, classes, "--split")
    run = config.get("run") if isinstance(config.get("run"), dict) else {}
    want = run.get("split_sha256")
    beside = Path(prompt).parent / "split.txt"
    if beside.is_file():
        chosen, where = read_split(beside, classes, "--split"), str(beside)
    elif not config.get("split"):
        shots, seed = _recorded_draw(prompt, config)
        try:
            chosen, where = draw_split(classes, shots, seed), f"a draw from {root}"
        except UserError as e:  # (its words name fit's --shots: here the number is the file's)
            raise UserError(f"--prompt {prompt}: its recorded shots {str(e).removeprefix('--shots ')}; pass "
                            "--id-train DIR") from None
    else:
        raise UserError(f"--split: {prompt} was fitted on a split file that is not next to it; pass --split SPLIT.txt")
    if want and hashlib.sha256(split_text(chosen).encode()).hexdigest() != want:
        raise UserError(f"--split: {where} is not the split {prompt} was fitted on; pass --split SPLIT.txt or "
                        "--id-train DIR")
    return chosen


def _recorded_draw(prompt: str, config: dict) -> tuple[int, int]:
    """The ``shots`` and ``seed`` a prompt records, as ``clip-smot fit`` takes them: shots at
    least 1, a seed in [0, MAX_SEED]. The file may hold anything: shots -3 kept all but 3 images
    of each class, and seed -1 failed in numpy."""
    shots, seed = config.get("shots"), config.get("seed")
    if not (isinstance(shots, int) and not isinstance(shots, bool) and shots >= 1):
        raise UserError(f"--prompt {prompt}: its recorded shots must be a positive integer, not {shots!r:.40}")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        raise UserError(f"--prompt {prompt}: its recorded seed must be an integer in [0, {MAX_SEED}], not {seed!r:.40}")
    return shots, seed


def id_train_paths(prompt: str | None, config: dict | None, id_train: str | None, split: str | None) -> list[str]:
    """The ID training images of the fitted scores (react, knn, vim).

    ``id_train`` (a folder, searched recursively, or an image list ``ROOT::LIST.txt``) with all
    its images, or with those a ``split`` file lists; without ``id_train``, the prompt's own
    few-shot images, found from its metadata (its data folder, and its split.txt or seed).

    Raises:
        UserError: no ID training data named and none recorded in the prompt (zero-shot, or a
            prompt not made by ``clip-smot fit``), a split that is not the prompt's, or recorded
            shots or seed that ``clip-smot fit`` would not take.
    """
    from clip_smot.clip.fewshot import read_split, resolve_classes, resolve_train_root

    if id_train and not split:
        return [str(p) for p in image_set("id-train", id_train, flag="--id-train").paths]
    if id_train:
        root = resolve_train_root(id_train, "--id-train")
        return [str(root / rel) for rel, _ in read_split(split, resolve_classes(root, "--id-train"), "--split")]
    data = config.get("data") if isinstance(config, dict) else None
    if not prompt or not isinstance(data, str) or not data:  # ("": the working folder, no folder of the file's)
        what = "--zero-shot has no training images" if not prompt else f"{prompt} does not record its training data"
        raise UserError(f"--id-train: react, knn and vim are fitted on ID training images, and {what}; "
                        "pass --id-train DIR")
    root = Path(data)
    if not os.path.isdir(root):  # (False, not an OSError, for a name too long)
        # (--id-train DIR alone takes every image of DIR: the few-shot images need their split too)
        split_file = Path(prompt).parent / "split.txt"
        raise UserError(f"--id-train: {prompt} was fitted on {root}, which is not there; pass --id-train DIR, where "
                        f"its images are now, with --split {split_file if split_file.is_file() else 'SPLIT.txt'} for "
                        "the prompt's few-shot images (DIR alone gives all of DIR's)")
    paths = [str(root / rel) for rel, _ in _prompt_split(prompt, config, root, split)]
    if writes_outputs():  # (the prompt file names the folder read: said, not done silently)
        print(f"note: the fitted scores use the {len(paths)} training images of {root}, the folder {prompt} records; "
              "--id-train DIR names another", file=sys.stderr)
    return paths


def run_clip_eval(cfg: ClipEvalConfig) -> dict:
    """Score the ID set and every OOD set, then write the metric files into ``cfg.out``.

    ``cfg`` (:class:`ClipEvalConfig`): ``prompt``, the learned prompt file (None with
    ``zero_shot``: plain CLIP prompts, the class names from the ID folder); ``model`` and
    ``pretrained`` override the prompt's model (zero-shot default: ViT-B-16 / openai);
    ``id_data``, an ID folder (``val/<wnid>/`` layout, or the val folder) or image list, or
    ``digits``, the bundled digits' val folder; ``ood``, OOD set name -> folder (any layout) or
    image list (``ROOT::LIST.txt``), or None for the built-in set of that name (the digits'
    ``photos`` and ``textures``); ``scores``, comma-separated names (default: mcm); ``id_train``
    and ``split``, the ID training images of react, knn and vim (see :func:`id_train_paths`);
    ``decode``, ``auto``, ``cpu`` or ``gpu`` (:func:`~clip_smot.clip.decoding.resolve_decode`);
    ``out``: metrics.csv, metrics.json, metrics.md, scores_hist.png, config.json.

    Returns:
        The metrics.json content (under torchrun, on rank 0; an empty dict on the others).
    """
    check_ranges(cfg)
    same_options_on_every_rank(cfg)  # (under torchrun: a batch size of its own cut another share)
    check_ood_names(cfg.ood)
    names = parse_scores(cfg.scores or None)  # (an empty --scores: the default)
    check_id_train_used({"--id-train": cfg.id_train, "--split": cfg.split}, names, FITTED_SCORES)
    lists, read_folders = cfg.read_sets()
    inputs = [("--prompt file", cfg.prompt), ("--model file", cfg.model), ("--pretrained file", cfg.pretrained),
              ("--split file", cfg.split), *lists]
    check_output_folder(cfg.out, "--out", inputs, read_folders, writes=_WRITES)
    if "id" in cfg.ood:
        raise UserError("--ood id=...: 'id' names the ID set; give the OOD set another name")
    with writer_lock(cfg.out, folder=True):  # (two evaluations into one folder would mix their files)
        return _evaluate(cfg, names, inputs, read_folders)


def _evaluate(cfg: ClipEvalConfig, names: list[str], inputs: list, read_folders: list) -> dict:
    """:func:`run_clip_eval` once its arguments are checked and no other command writes ``--out``."""
    scorer, config, folders, title, prompt_sha = _clip_scorer(cfg, inputs)
    # under torchrun each process read the prompt and the weights itself: one replaced meanwhile
    # would put two prompts' scores into one table
    same_on_every_rank({"prompt_sha256": prompt_sha,
                        "model": scorer.clip.identity(), "classnames": scorer.classnames,
                        "precision": scorer.precision}, f"{'--prompt ' + cfg.prompt if cfg.prompt else '--zero-shot'}: "
                       "what it is scored with (prompt, weights, class names, precision)")
    fitted = [n for n in names if n in FITTED_SCORES]
    scorer.check_scores([n for n in names if n not in fitted])
    if (note := scorer.one_class_note(names)) and writes_outputs():
        print(note, file=sys.stderr)
    decoder = scorer.decoder(cfg.decode)
    # Resolve every set before encoding anything: a typo in the last --ood fails at once.
    size = scorer.clip.image_size
    sets = [id_set(_builtin_id(cfg.id_data, size), scorer.classnames, prompt_folders=folders)]
    sets += [image_set(n, _builtin_ood(n, size) if w is None else w) for n, w in cfg.ood.items()]
    check_apart(sets[0].paths, [(s.name, s.paths) for s in sets[1:]])
    if sets[0].labels is None and writes_outputs():  # (said before the encoding, not only in metrics.json)
        print(f"note: --id {cfg.id_data}: no ID accuracy ({sets[0].note or 'the ID data has no class labels'})",
              file=sys.stderr)
    recorded = config.get("data") if isinstance(config, dict) else None
    recorded = recorded if isinstance(recorded, str) else None  # (the file's: a number is no folder, nor a descriptor)
    # before that folder is read: an --out beside its class folders, made by the lock, would be read as a class
    # (by this eval's fitted scores, and by the next fit of that data, whose prompt gained a class "eval")
    trained = ("the ID-train folder the prompt records" if fitted and not cfg.id_train else
               "the training folder the prompt records", recorded)
    check_output_folder(cfg.out, "--out", (), [trained], writes=_WRITES)
    train_paths = id_train_paths(cfg.prompt, config, cfg.id_train, cfg.split) if fitted else []
    check_train_apart(train_paths, sets[0].paths, [(s.name, s.paths) for s in sets[1:]])
    # an image listed by a set (a symlink, a hard link, a list's entry) may be a file of --out too
    check_output_folder(cfg.out, "--out", [*inputs, *((f"{'--id' if s.name == 'id' else '--ood ' + s.name} image", p)
                                                      for s in sets for p in s.paths),
                                           *(("ID-train image", p) for p in train_paths)],
                        [*read_folders, trained], writes=_WRITES)
    start = time.monotonic()
    with kept_workers():  # (the decoding processes started once for the ID-train, ID and OOD sets)
        if fitted:
            train = encode_files(scorer.clip, train_paths, False, cfg.batch_size, cfg.workers, False, cfg.use_cache,
                                 decoder, scorer.precision)
            scorer.fit_id_train(train.global_, fitted)
        results = {s.name: (s, _score_set(scorer, s, names, cfg, decoder)) for s in sets}
    extra, id_accuracy = _summary(cfg, scorer, results, fitted, len(train_paths), time.monotonic() - start)
    if not writes_outputs():  # (under torchrun every process holds every score: rank 0 writes them)
        return {}
    record = {**{k: v for k, v in asdict(cfg).items() if k != "out"}, "scores": names}
    return write_reports(
        cfg.out,
        {n: results["id"][1][n].numpy() for n in names},
        {name: {n: o[n].numpy() for n in names} for name, (_, o) in results.items() if name != "id"},
        id_accuracy=id_accuracy,
        convention=cfg.convention,
        title=title,
        extra=extra,
        files={"config.json": json_text(record)},
        stale_after_s=0.0,  # (the --out lock is held: no other evaluation writes there)
    )


def _clip_scorer(cfg: ClipEvalConfig, inputs: list) -> tuple[PromptScorer, dict | None, list[str] | None, str,
                                                            str | None]:
    """The scorer of a zero-shot or a prompt evaluation, the prompt's metadata (None for zero-shot),
    the class folders its class names go with (None: not known), the report's title and the SHA-256
    of the prompt file read (None for zero-shot). A prompt's checkpoint file found by its name is
    appended to ``inputs`` (it is read too)."""
    if cfg.zero_shot:
        builtin = cfg.id_data.lower() in BUILTIN_ID
        folders = None if builtin else id_class_folders(cfg.id_data)  # the names' folders, one to one
        classnames = list(DIGIT_NAMES) if builtin else folder_names(folders)
        if folders and (stray := stray_wnids(folders)) and writes_outputs():
            print(f"note: --id {cfg.id_data}: {stray}", file=sys.stderr)
        scorer = PromptScorer.zero_shot(
            classnames, cfg.model or DEFAULT_ZERO_SHOT_MODEL[0],
            cfg.pretrained if cfg.pretrained is not None else DEFAULT_ZERO_SHOT_MODEL[1], cfg.device,
            zero_shot_template(), cfg.precision,
        )
        title = f"Zero-shot MCM baseline ({scorer.clip.name}, {scorer.clip.pretrained or 'random weights'})"
        return scorer, None, folders, title, None
    if not cfg.prompt:
        raise UserError("--prompt: give a prompt file, or --zero-shot")
    # the hash of the very bytes read: under torchrun the processes compare it
    pf, prompt_sha = read_with_hash(cfg.prompt, "--prompt", lambda: load_prompt(cfg.prompt))
    if (note := unfinished_note(pf)) and writes_outputs():
        print(note, file=sys.stderr)
    pretrained = cfg.pretrained
    if pretrained is None:  # the prompt's checkpoint file, found by its name, is read too
        pretrained = resolve_pretrained(pf)
        inputs.append(("checkpoint file found by name", pretrained or None))
    scorer = PromptScorer.from_file(pf, model=cfg.model, pretrained=pretrained, device=cfg.device,
                                    precision=cfg.precision)
    title = f"Prompt {os.path.basename(cfg.prompt)} ({scorer.clip.name}, {scorer.clip.pretrained or 'random weights'})"
    return scorer, pf.config, _prompt_folders(pf.config, len(pf.classnames)), title, prompt_sha


def _score_set(scorer: PromptScorer, s, names: list[str], cfg: ClipEvalConfig, decoder: str) -> dict:
    """The scores ``names`` (and ``pred_index``) of every image of the set ``s``, its images
    decoded by ``decoder`` (``pil`` or ``jpeg``)."""
    return scorer.score_files(s.paths, names, cfg.batch_size, cfg.workers, False, cfg.use_cache, decoder).scores


def _summary(cfg: ClipEvalConfig, scorer: PromptScorer, results: dict, fitted: list[str], n_train: int,
             seconds: float) -> tuple[dict, float | None]:
    """metrics.json's extra block and the ID accuracy in percent (None: the ID set has no labels)."""
    id_s, id_out = results["id"]
    id_accuracy = None
    if id_s.labels is not None:
        pred = id_out["pred_index"].numpy()
        id_accuracy = float(100.0 * np.mean(pred == np.asarray(id_s.labels)))
    extra = {
        "model": scorer.clip.name,
        "pretrained": scorer.clip.pretrained,
        "prompt": cfg.prompt,
        "text_features": scorer.source,
        "precision": scorer.precision,  # (auto resolved: bf16 on CUDA, fp32 on the CPU)
        "n_images": {name: len(s.paths) for name, (s, _) in results.items()},
        "seconds": round(seconds, 2),
    }
    if fitted:
        vim = scorer.fitted.get("vim")
        extra["id_train"] = {"n_images": n_train, "scores": fitted,
                             "react_threshold": scorer.fitted.get("react_threshold"),
                             "vim": {"dim": vim["dim"], "alpha": vim["alpha"]} if vim else None}
    if id_accuracy is None:
        extra["id_accuracy_note"] = id_s.note or "the ID data has no class labels"
    return extra, id_accuracy
