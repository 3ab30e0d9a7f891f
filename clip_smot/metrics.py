"""OOD detection metrics from scores: FPR95, AUROC, AUPR-In, AUPR-Out (docs/method.md §5).

Scores follow one convention everywhere: higher means more in-distribution. numpy and
scikit-learn only; nothing else of the package is imported.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["CONVENTIONS", "fpr_at_tpr", "ood_metrics"]

CONVENTIONS = ("id", "openood")


# numpy's kinds of what is no real number: the conversion to float64 read strings as numbers
# ("0.5" -> 0.5, the string "123" -> one score 123), dates as day counts, and dropped the
# imaginary part of complex numbers with a warning
_NOT_NUMBERS = {"U": "strings", "S": "bytes", "M": "dates", "m": "time spans", "c": "complex numbers",
                "V": "records"}


def _kind(arr: np.ndarray) -> str:
    """numpy's kind of ``arr``'s values; of an object array (Python numbers, None, or strings among
    numbers), that of the first string, bytes or complex number it holds, else "O"."""
    if arr.dtype.kind != "O":
        return arr.dtype.kind
    for v in arr.flat:
        for kind, types in (("U", str), ("S", bytes), ("c", (complex, np.complexfloating))):
            if isinstance(v, types):
                return kind
    return "O"


def _as_scores(name: str, values) -> np.ndarray:
    """``values`` as a flat float64 array of finite scores; a ValueError naming ``name`` for
    anything else than real numbers (bool, integer or float, or Python objects of them)."""
    def not_numbers(why: str) -> ValueError:
        return ValueError(f"{name} must be numbers (an array, a tensor or a list of numbers): {why}")

    def masked(count: int) -> ValueError:
        return ValueError(f"{name} has {count} masked value(s): pass the others (its .compressed())")

    if values is None:  # (np.asarray(None) is one NaN: "1 non-finite value")
        raise not_numbers("got None")
    if hasattr(values, "detach"):  # a tensor: numpy reads no bfloat16, so widen it in torch first
        if values.is_complex():  # (.double() would drop the imaginary part, with a warning)
            raise not_numbers(f"not complex numbers ({values.dtype})")
        if values.is_meta:  # (.cpu() was a NotImplementedError: "Cannot copy out of meta tensor")
            raise not_numbers("a meta tensor holds no values")
        values = values.detach().cpu().double()
    elif isinstance(values, (list, tuple)) and any(hasattr(v, "detach") for v in values):
        # per-batch tensors: each widened as one tensor is (numpy 1.24 warned on a list of them, then
        # took those with grad for no numbers)
        if any(hasattr(v, "detach") and v.is_complex() for v in values):
            raise not_numbers("not complex numbers (a complex tensor)")
        if any(hasattr(v, "detach") and v.is_meta for v in values):
            raise not_numbers("a meta tensor holds no values")
        values = [v.detach().cpu().double().numpy() if hasattr(v, "detach") else v for v in values]
        if any(np.ma.is_masked(v) for v in values):  # (joining the batches would drop the mask too)
            raise masked(sum(int(np.ma.count_masked(v)) for v in values if np.ma.is_masked(v)))
        try:  # joined, each flattened: the last batch is often smaller (a ragged list stopped in numpy)
            values = np.concatenate([np.ravel(v) for v in values])
        except (TypeError, ValueError) as e:  # (an element that is itself a ragged list)
            raise not_numbers(str(e)) from None
    if np.ma.is_masked(values):  # (np.asarray drops the mask: the masked entries were scored)
        raise masked(int(np.ma.count_masked(values)))
    try:  # (numpy >= 1.24: a ragged list is a ValueError, not a warning and an object array)
        raw = np.asarray(values)  # (converted once: a list of a million scores is no small copy)
        kind = _kind(raw)
        arr = None if kind in _NOT_NUMBERS else raw.astype(np.float64, copy=False)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        # a ragged list of batches, a tensor with grad, an integer past float64 (was an OverflowError)
        raise not_numbers(str(e)) from None
    if arr is None:
        raise not_numbers(f"not {_NOT_NUMBERS[kind]}")
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: at least one score is needed")
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf)")
    return arr


def fpr_at_tpr(pos_scores: np.ndarray, neg_scores: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the first ROC point whose TPR reaches ``tpr``.

    Positives are accepted when their score is >= the threshold; this is the FPR of the
    negatives at the threshold where ``tpr`` of the positives are accepted. Both sets need at
    least one finite score (array-like or tensor), as in :func:`ood_metrics`.
    """
    # (past 1, or NaN, the search ran off the curve: an IndexError; True is an int to Python, read as 1, and
    # None or a string stopped in the comparison naming no argument)
    if not isinstance(tpr, numbers.Real) or isinstance(tpr, bool) or not 0.0 <= tpr <= 1.0:
        raise ValueError(f"tpr must be in [0, 1], got {tpr!r}")
    # (no positives gave 0.0, scikit-learn's TPRs all NaN; no negatives NaN: both with a warning only)
    pos_scores = _as_scores("pos_scores", pos_scores)
    neg_scores = _as_scores("neg_scores", neg_scores)
    labels = np.r_[np.ones(len(pos_scores)), np.zeros(len(neg_scores))]
    from sklearn.metrics import roc_curve  # (here: scikit-learn takes ~2 s to import, the CLI starts without it)

    fpr, tprs, _ = roc_curve(labels, np.r_[pos_scores, neg_scores], drop_intermediate=False)
    return float(fpr[np.searchsorted(tprs, tpr, side="left")])


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike,
                convention: str = "id") -> dict[str, float]:
    """FPR95, AUROC, AUPR-In and AUPR-Out of ID against OOD scores, as fractions in [0, 1].

    Args:
        id_scores: scores of in-distribution samples (array-like or tensor, or a list of
            per-batch tensors, which may differ in length), higher = more ID.
            Read as float64, as scikit-learn reads them: integers past 2**53 that float64 does
            not tell apart (2**53 and 2**53 + 1) are tied scores.
        ood_scores: scores of OOD samples.
        convention: "id" (docs/method.md §5, the paper's): ID is the positive class and FPR95 is the
            fraction of OOD accepted at 95% TPR of ID. "openood": OOD is the positive class
            (scores negated) and FPR95 is the fraction of ID flagged at 95% TPR of OOD, as
            OpenOOD reports it. AUROC is the same under both; the AUPRs keep their names
            (AUPR-In always has ID as positive).

    Returns:
        dict with keys ``fpr95``, ``auroc``, ``aupr_in``, ``aupr_out``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    id_s = _as_scores("id_scores", id_scores)
    ood_s = _as_scores("ood_scores", ood_scores)
    labels = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]  # ID = 1
    scores = np.r_[id_s, ood_s]
    if convention == "id":
        fpr95 = fpr_at_tpr(id_s, ood_s)
    else:
        fpr95 = fpr_at_tpr(-ood_s, -id_s)
    return {
        "fpr95": fpr95,
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr_in": float(average_precision_score(labels, scores)),
        "aupr_out": float(average_precision_score(1 - labels, -scores)),
    }
