"""``clip-smot eval`` for the CLIP track: a learned prompt (or zero-shot prompts) on ID and OOD sets.

Text features are computed once; image features come from the feature cache when the same
files were encoded by the same weights before (:mod:`clip_smot.image_features`). The metric
files are written by :func:`clip_smot.evaluate.write_reports`, shared with the ResNet track.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .data import bundled_file
from .digits import DIGIT_NAMES
from .errors import UserError
from .evaluate import REPORT_FILES, write_reports
from .image_features import encode_files
from .ood_data import folder_classnames, id_class_folders, id_set, image_set
from .prompt_file import load_prompt
from .runtime import check_output_folder, json_text
from .scoring import PromptScorer, parse_scores, resolve_pretrained

__all__ = ["ClipEvalConfig", "run_clip_eval"]

DEFAULT_ZERO_SHOT_MODEL = ("ViT-B-16", "openai")
_WRITES = REPORT_FILES  # under --out (config.json included)


@dataclass(frozen=True)
class ClipEvalConfig:
    """What one CLIP evaluation ran with; saved as OUT/config.json."""

    prompt: str | None  # prompt file, None for zero-shot
    zero_shot: bool  # plain "a photo of a {c}." prompts (the MCM baseline)
    model: str | None  # open_clip name or config JSON (None: from the prompt)
    pretrained: str | None  # tag or checkpoint file (None: from the prompt)
    id_data: str  # ID folder or image list
    ood: dict  # OOD set name -> folder or image list (None: the built-in set of that name)
    scores: tuple  # score names
    convention: str  # FPR95 convention: "id" (paper) or "openood"
    batch_size: int  # images per forward pass
    workers: int  # DataLoader decoding processes
    device: str  # as given: auto, cpu, cuda
    use_cache: bool  # read/write the image-feature cache


# Built-in sets (the bundled digits, clip_smot.digits), used when no such path exists.
BUILTIN_ID = ("digits",)
BUILTIN_OOD = ("photos", "textures")


def _builtin_id(where: str, size: int) -> str:
    """The bundled digits' val folder for ``--id digits``, or ``where`` itself when it is a path."""
    if where not in BUILTIN_ID or Path(where).exists():
        return where
    from .digits import ensure_digits

    return str(ensure_digits(size) / "val")


def _prompt_folders(config, n_classes: int) -> list[str] | None:
    """The class folders a fit prompt was trained on (``run.class_folders``), if it records them."""
    run = config.get("run") if isinstance(config, dict) else None
    folders = run.get("class_folders") if isinstance(run, dict) else None
    ok = isinstance(folders, list) and len(folders) == n_classes and all(isinstance(f, str) for f in folders)
    return folders if ok else None


def _builtin_ood(name: str, size: int) -> str:
    """The folder of the built-in OOD set ``name`` (a bare ``--ood NAME``)."""
    if name.lower() not in BUILTIN_OOD:
        raise UserError(f"--ood {name}: not a built-in OOD set (the CLIP track has only the digits' "
                        f"{' and '.join(BUILTIN_OOD)}); give {name}=DIR for a folder or image list")
    from .digits import ensure_digits

    return str(ensure_digits(size) / "ood" / name.lower())


def _zero_shot_template() -> str:
    return bundled_file("prompts", "zero_shot_template.txt").read_text().strip()


def run_clip_eval(
    prompt: str | None,
    zero_shot: bool,
    model: str | None,
    pretrained: str | None,
    id_data: str,
    ood: dict[str, str | None],
    scores: list[str] | None,
    convention: str = "id",
    batch_size: int = 256,
    workers: int = 4,
    device: str = "auto",
    out: str = "eval",
    use_cache: bool = True,
) -> dict:
    """Score the ID set and every OOD set, then write the metric files into ``out``.

    Args:
        prompt: the learned prompt file (None with ``zero_shot``).
        zero_shot: use plain CLIP prompts; the class names come from the ID folder.
        model, pretrained: override the prompt's model (zero-shot default: ViT-B-16 / openai).
        id_data: ID folder (``val/<wnid>/`` layout, or the val folder) or image list; or
            ``digits``, the bundled digits' val folder.
        ood: OOD set name -> folder (any layout) or image list (``ROOT::LIST.txt``), or None for
            the built-in set of that name (the digits' ``photos`` and ``textures``).
        scores: score names (default: mcm).
        convention: FPR95 convention, "id" or "openood" (OOD positive).
        batch_size, workers, device: encoding settings.
        out: output folder: metrics.csv, metrics.json, metrics.md, scores_hist.png, config.json.
        use_cache: read/write the image-feature cache.

    Returns:
        The metrics.json content.
    """
    names = parse_scores(scores)
    given = {"--id": id_data, **{f"--ood {n}": w for n, w in ood.items() if w is not None}}
    inputs = [("--prompt file", prompt), ("--model file", model), ("--pretrained file", pretrained),
              *((f"{flag} image list", w) for flag, w in given.items())]
    read_folders = [(f"the {flag} folder", w) for flag, w in given.items()]
    check_output_folder(out, "--out", inputs, read_folders, writes=_WRITES)
    if "id" in ood:
        raise UserError("--ood id=...: 'id' names the ID set; give the OOD set another name")
    cfg = ClipEvalConfig(prompt, zero_shot, model, pretrained, str(id_data), dict(ood), tuple(names), convention,
                         batch_size, workers, device, use_cache)
    if zero_shot:
        template = _zero_shot_template()
        builtin = id_data == "digits" and not Path(id_data).exists()
        classnames = list(DIGIT_NAMES) if builtin else folder_classnames(id_data)
        folders = None if builtin else id_class_folders(id_data)  # the names' folders, one to one
        scorer = PromptScorer.zero_shot(
            classnames, model or DEFAULT_ZERO_SHOT_MODEL[0],
            pretrained if pretrained is not None else DEFAULT_ZERO_SHOT_MODEL[1], device, template,
        )
        title = f"Zero-shot MCM baseline ({scorer.clip.name}, {scorer.clip.pretrained or 'random weights'})"
    else:
        if not prompt:
            raise UserError("--prompt: give a prompt file, or --zero-shot")
        pf = load_prompt(prompt)
        if pretrained is None:  # the prompt's checkpoint file, found by its name, is read too
            pretrained = resolve_pretrained(pf)
            inputs.append(("checkpoint file found by name", pretrained or None))
        scorer = PromptScorer.from_file(pf, model=model, pretrained=pretrained, device=device)
        folders = _prompt_folders(pf.config, len(pf.classnames))
        title = f"Prompt {os.path.basename(prompt)} ({scorer.clip.name}, {scorer.clip.pretrained or 'random weights'})"
    scorer.check_scores(names)
    # Resolve every set before encoding anything: a typo in the last --ood fails at once.
    size = scorer.clip.image_size
    sets = [id_set(_builtin_id(id_data, size), scorer.classnames, prompt_folders=folders)]
    sets += [image_set(n, _builtin_ood(n, size) if w is None else w) for n, w in ood.items()]
    # an image listed by a set (a symlink, a hard link, a list's entry) may be a file of --out too
    check_output_folder(out, "--out", [*inputs, *((f"{'--id' if s.name == 'id' else '--ood ' + s.name} image", p)
                                                  for s in sets for p in s.paths)],
                        read_folders, writes=_WRITES)

    start = time.monotonic()
    results = {}
    for s in sets:
        feats = encode_files(scorer.clip, s.paths, "gl-mcm" in names, batch_size, workers, False, use_cache)
        results[s.name] = (s, scorer.score_features(feats, names))
    id_s, id_out = results["id"]
    id_accuracy = None
    if id_s.labels is not None:
        pred = id_out["pred_index"].numpy()
        id_accuracy = float(100.0 * np.mean(pred == np.asarray(id_s.labels)))
    extra = {
        "model": scorer.clip.name,
        "pretrained": scorer.clip.pretrained,
        "prompt": prompt,
        "text_features": scorer.source,
        "n_images": {name: len(s.paths) for name, (s, _) in results.items()},
        "seconds": round(time.monotonic() - start, 2),
    }
    if id_accuracy is None:
        extra["id_accuracy_note"] = id_s.note or "the ID data has no class labels"
    report = write_reports(
        out,
        {n: id_out[n].numpy() for n in names},
        {name: {n: o[n].numpy() for n in names} for name, (_, o) in results.items() if name != "id"},
        id_accuracy=id_accuracy,
        convention=convention,
        title=title,
        extra=extra,
        files={"config.json": json_text({**asdict(cfg), "scores": list(cfg.scores)})},
    )
    return report
