"""Per-set OOD metric tables: metrics.csv, metrics.json, metrics.md and the score histogram.

Both tracks hand their scores to :func:`write_reports`, so the CLIP prompt and the ResNets
produce the same files; both tracks' eval configs extend :class:`EvalConfig`, the options they share.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from clip_smot.common.configs import MAX_BATCH, MAX_WORKERS, JsonConfig, setting
from clip_smot.common.digits import written_folders
from clip_smot.common.errors import UserError, cut
from clip_smot.common.files import (
    atomic_write_files,
    make_folder,
    remove_stale_temporaries,
    text_writer,
)
from clip_smot.common.image_sets import image_list_file
from clip_smot.metrics import CONVENTIONS, ood_metrics

__all__ = ["METRIC_COLUMNS", "REPORT_FILES", "EvalConfig", "check_id_train_used", "check_ood_names", "metric_table", "write_reports"]

METRIC_COLUMNS = ("fpr95", "auroc", "aupr_in", "aupr_out")
# what an evaluation writes into its folder (config.json: the CLIP track's arguments)
REPORT_FILES = ("metrics.csv", "metrics.json", "metrics.md", "scores_hist.png", "config.json")
# OOD sets drawn in scores_hist.png (its columns): 210 sets drew a 67,200-pixel-wide figure in 85 s, and
# 1,000 sets of 11 scores would take about 3.6 GB; the tables keep every set
MAX_HIST_SETS = 8


@dataclass(frozen=True, kw_only=True)
class EvalConfig(JsonConfig):
    """The options of ``clip-smot eval`` that both tracks take (each track's config adds its own)."""

    id_data: str = setting(help="ID test data: a folder (val/<class>/...), a built-in set (ResNet: cifar10, cifar100, "
                           "imagenet200, digits; CLIP: digits) or, for CLIP, an image list (LIST.txt or "
                           "ROOT::LIST.txt).", flag="--id", path="any")
    id_train: str | None = setting(None, "ID training data for the KNN/ViM/ReAct statistics (default: ResNet, from "
                                   "the checkpoint; CLIP, the prompt's own few-shot images).", path="any")
    ood: dict[str, str | None] = setting(help="OOD set as NAME=DIR (or NAME=LIST.txt), or a bare built-in set name "
                                         "(ResNet: svhn, cifar10, cifar100, photos, textures; CLIP: photos, "
                                         "textures); repeatable.")  # name -> folder or image list, None: the built-in set
    scores: str | None = setting(None, "Comma-separated scores (default: mcm for CLIP, msp for ResNets).")
    convention: str = setting("id", "FPR95 with ID positive (the paper) or OOD positive (OpenOOD).",
                              flag="--fpr-convention", choices=CONVENTIONS)
    batch_size: int = setting(256, min=1, max=MAX_BATCH)
    workers: int = setting(4, "Image-decoding worker processes (none for a ResNet of 64 pixels or less: its sets "
                           "are decoded at once).", min=0, max=MAX_WORKERS)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    out: str = setting(help="Output folder for the metric files.", path="dir")

    def builtin_sets(self) -> tuple[str, ...]:
        """The flags (``--id``, ``--id-train``) whose value is the name of one of the track's built-in
        sets, read as that set even beside a folder of that name; none here (each track says)."""
        return ()

    def read_sets(self) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
        """``(files, folders)`` that the sets' arguments name, as ``check_output`` takes them: the
        image list of each ``--id``, ``--id-train`` and ``--ood`` given as a list (a ``ROOT::LIST``
        argument is no file: its list file is), and each of them as a folder whose images are read;
        and the bundled digits folders (``digits``, ``photos``, ``textures`` are read from there:
        an evaluation written inside became a class, or an OOD image, of every later run)."""
        given = {"--id": self.id_data, "--id-train": self.id_train,
                 **{f"--ood {n}": w for n, w in self.ood.items() if w is not None}}
        # (a built-in set's name is no folder here, even beside one of that name: --out digits/eval was
        # refused as inside the --id folder digits, which is not read)
        given = {flag: w for flag, w in given.items() if w is not None and flag not in self.builtin_sets()}
        return ([(f"{flag} image list", image_list_file(w, flag, shards=False) or w) for flag, w in given.items()],
                [(f"the {flag} folder", w) for flag, w in given.items()] + written_folders())


def check_id_train_used(given: dict[str, str | None], names: list[str], fitted: tuple[str, ...]) -> None:
    """Raise a UserError for an ``--id-train`` (or ``--split``) given while none of the ``names``
    of scores is fitted on ID training images: it was never read, so a mistyped folder, or a
    belief that it changed msp or mcm, went unnoticed. ``given``: flag -> value, None when absent."""
    used = [n for n in names if n in fitted]
    for flag, value in given.items():
        if value is not None and not used:
            raise UserError(f"{flag} {value}: only {', '.join(fitted[:-1])} and {fitted[-1]} are fitted on ID "
                            f"training images, and --scores {','.join(names)} names none of them")


def check_ood_names(names: Iterable[str]) -> None:
    """Raise a UserError for an OOD set named ``average``, the name of the mean row, which would
    overwrite it; an evaluation checks its ``--ood`` names with it before any image is scored."""
    if "average" in names:
        raise UserError("--ood average=...: 'average' names the mean over the OOD sets; give the set another name")


def metric_table(
    id_scores: dict[str, np.ndarray],
    ood_scores: dict[str, dict[str, np.ndarray]],
    convention: str = "id",
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics in percent: ``table[score][ood_set] = {fpr95, auroc, aupr_in, aupr_out}``.

    Args:
        id_scores: score name -> ID scores.
        ood_scores: OOD set name -> (score name -> OOD scores).
        convention: passed to :func:`clip_smot.metrics.ood_metrics`.

    Each score also gets an ``average`` row: the mean over the OOD sets, as the paper reports.
    """
    check_ood_names(ood_scores)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for score, id_s in id_scores.items():
        rows = {}
        for ood_set, by_score in ood_scores.items():
            try:
                m = ood_metrics(id_s, by_score[score], convention=convention)
            except ValueError as e:  # NaN/inf or empty scores (e.g. a diverged model): one line, no traceback
                raise UserError(f"--scores {score}: no metrics for ID vs {ood_set} ({e})") from None
            rows[ood_set] = {k: 100.0 * m[k] for k in METRIC_COLUMNS}
        rows["average"] = {k: float(np.mean([r[k] for r in rows.values()])) for k in METRIC_COLUMNS}
        table[score] = rows
    return table


def _csv(table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    # (csv quotes a set name holding a newline, but not one holding a carriage return alone, which a
    # reader then splits the row at: such a row is written with every field quoted)
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    w.writerow(["score", "ood_set", *METRIC_COLUMNS])
    for score, rows in table.items():
        for ood_set, m in rows.items():
            (quoted if "\r" in ood_set else w).writerow([score, ood_set, *(f"{m[k]:.2f}" for k in METRIC_COLUMNS)])
    return buf.getvalue()


def _cell(text: str) -> str:
    """``text`` (an --ood name) as one Markdown table cell: a ``|`` would end the cell, a line break the row."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")


def _markdown(table, id_accuracy: float | None, title: str) -> str:
    sets = [s for s in next(iter(table.values()))]
    head = "| score | " + " | ".join(f"{_cell(s)} FPR95↓ | {_cell(s)} AUROC↑" for s in sets) + " |"
    sep = "|---|" + "---|---|" * len(sets)
    lines = [f"# {title}", "", "Values are percentages.", "", head, sep]
    for score, rows in table.items():
        cells = " | ".join(f"{rows[s]['fpr95']:.2f} | {rows[s]['auroc']:.2f}" for s in sets)
        lines.append(f"| {score} | {cells} |")
    if id_accuracy is not None:
        lines += ["", f"ID accuracy: {id_accuracy:.2f}%"]
    return "\n".join(lines) + "\n"


def _label(text: str) -> str:
    """``text`` as matplotlib draws it literally: a lone surrogate (a byte of a name that is not
    UTF-8) as its escape, which its font code refuses, ``$`` escaped, which starts math, and a
    control character but the newline (a carriage return, a tab) as ``\\uNNNN``: the font has no
    glyph for it, and matplotlib warned of it in two lines on stderr."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("$", r"\$")
    return re.sub(r"[\x00-\x09\x0b-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", text)


def _short(name: str, limit: int = 40) -> str:
    """An --ood name cut for a panel's title and legend: a long one collapsed its panel to nothing
    (with matplotlib's warning); the tables keep it whole."""
    return cut(name, limit)


def _bins(lo: float, hi: float, n: int = 40) -> np.ndarray:
    """``n + 1`` increasing bin edges from ``lo`` to ``hi``; at least a millionth of ``lo``'s size
    (or of 1) wide, so that scores all alike (a one-class prompt's MCM) get one visible bar: a fixed
    1e-6 is no step at all beside 1e12, and NumPy's histogram then divided by zero-width bins."""
    floor = 1e-6 * max(1.0, abs(lo))
    if hi < lo + floor:
        hi = lo + floor
    t = np.linspace(0.0, 1.0, n + 1)
    return lo * (1 - t) + hi * t  # (not lo + (hi - lo) * t: hi - lo overflows for scores near float's limits)


def _histogram(id_scores, ood_scores, title: str) -> bytes:
    """The PNG of the score histograms: ID against each OOD set, one panel per score and set (the
    first :data:`MAX_HIST_SETS` sets, the title saying so when there are more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = list(id_scores)
    sets = list(ood_scores)[:MAX_HIST_SETS]
    if len(ood_scores) > len(sets):
        title = f"{title} (the first {len(sets)} of {len(ood_scores)} OOD sets; the metrics files hold all)"
    fig, axes = plt.subplots(  # constrained layout leaves room for the suptitle above the panels' titles
        len(scores), len(sets), figsize=(3.2 * len(sets), 2.6 * len(scores)), squeeze=False, layout="constrained"
    )
    for i, score in enumerate(scores):
        for j, ood_set in enumerate(sets):
            ax = axes[i][j]
            a, b = np.asarray(id_scores[score]), np.asarray(ood_scores[ood_set][score])
            bins = _bins(float(min(a.min(), b.min())), float(max(a.max(), b.max())))
            ax.hist(a, bins=bins, alpha=0.6, density=True, label="ID", histtype="stepfilled")
            ax.hist(b, bins=bins, alpha=0.6, density=True, label=_label(_short(ood_set)), histtype="stepfilled")
            ax.set_title(_label(f"{score}: ID vs {_short(ood_set)}"), fontsize=9, wrap=True)
            ax.legend(fontsize=7)
    fig.suptitle(_label(title), wrap=True)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=100, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_reports(
    out_dir: str | os.PathLike,
    id_scores: dict[str, np.ndarray],
    ood_scores: dict[str, dict[str, np.ndarray]],
    id_accuracy: float | None = None,
    convention: str = "id",
    title: str = "OOD detection",
    extra: dict | None = None,
    files: dict[str, str] | None = None,
    stale_after_s: float = 3600.0,
) -> dict:
    """Compute the metric table and write metrics.csv/.json/.md and scores_hist.png, all or none.

    Every file is written to a temporary file first and renamed into place only when all are
    written (:func:`~clip_smot.common.files.atomic_write_files`): a failure (a full disk, scores that
    give no metrics) leaves ``out_dir`` as it was, and a folder created for them is removed. Of
    an earlier evaluation's files (:data:`REPORT_FILES`) none is left beside the new ones; other
    files in the folder are not touched.

    Args:
        out_dir: output folder (created).
        id_scores: score name -> ID scores (higher = more ID).
        ood_scores: OOD set name -> (score name -> scores).
        id_accuracy: top-1 accuracy in percent on ID data, when the ID data has labels.
        convention: FPR95 convention, "id" or "openood".
        title: heading of the markdown table and the plot.
        extra: more top-level entries for metrics.json (e.g. the model and prompt used).
        files: more text files to write with them, name -> text (e.g. config.json).
        stale_after_s: the age from which a temporary file of these names in ``out_dir`` is taken
            for one an evaluation killed while writing left, and removed (a younger one may be
            another evaluation's write in progress); 0 where the caller holds the folder's lock.

    Returns:
        The metrics.json content.
    """
    out = Path(out_dir)
    table = metric_table(id_scores, ood_scores, convention)
    report = {"fpr_convention": convention, "metrics": table, **(extra or {})}
    if id_accuracy is not None:
        report["id_accuracy"] = id_accuracy
    texts = {"metrics.csv": _csv(table), "metrics.json": json.dumps(report, indent=2) + "\n",
             "metrics.md": _markdown(table, id_accuracy, title), **(files or {})}
    png = _histogram(id_scores, ood_scores, title)
    writers = {name: text_writer(text) for name, text in texts.items()}
    writers["scores_hist.png"] = lambda tmp: Path(tmp).write_bytes(png)
    created = not out.exists()
    make_folder(out)
    remove_stale_temporaries(out, REPORT_FILES, older_than_s=stale_after_s)  # of an evaluation killed while writing
    try:
        # metrics.json renamed last: a folder holding one holds every file of it, even after a kill within
        # the renames (reproduce takes an evaluation whose metrics.json is there for finished, docs/reproduce.md)
        atomic_write_files(out, writers, REPORT_FILES, last="metrics.json")
    except BaseException:
        if created:  # (left as it was: absent)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return report
