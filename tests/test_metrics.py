import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from clip_smot.metrics import fpr_at_tpr, ood_metrics
from clip_smot.scores import SCORES, energy, maxlogit, mcm, msp


def _sk_fpr95(pos, neg):
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, _ = roc_curve(y, np.r_[pos, neg], drop_intermediate=False)  # (every threshold: none skipped)
    return fpr[np.argmax(tpr >= 0.95)]


def _sk_metrics(id_s, ood_s) -> dict[str, float]:
    """scikit-learn's AUROC and AUPR-In/Out (average precision), and FPR95 from its ROC curve."""
    y, s = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))], np.r_[id_s, ood_s]
    return {"fpr95": _sk_fpr95(id_s, ood_s), "auroc": roc_auc_score(y, s),
            "aupr_in": average_precision_score(y, s), "aupr_out": average_precision_score(1 - y, -s)}


def test_against_sklearn_random():
    rng = np.random.default_rng(0)
    id_s = rng.normal(1.0, 1.0, 500)
    ood_s = rng.normal(0.0, 1.0, 700)
    m = ood_metrics(id_s, ood_s)
    assert m == pytest.approx(_sk_metrics(id_s, ood_s))
    # FPR95 by definition: the OOD share at or above the score that keeps 95% of ID
    thr = np.sort(id_s)[::-1][int(np.ceil(0.95 * 500)) - 1]
    assert m["fpr95"] == pytest.approx((ood_s >= thr).mean())


def test_aupr_and_the_trapezoid_rule_differ_as_the_docs_say():
    """docs/method.md §5 and the README: our AUPRs (scikit-learn's average precision, as MCM's code)
    and the trapezoid rule over the same precision-recall curve (OpenOOD's ``auc(recall,
    precision)``) differ on every set: by about 0.1 points at most with 1,000 ID and 1,000 OOD scores
    (these seeded draws: under 0.1), by several points on small, unbalanced or tied sets."""
    from sklearn.metrics import auc, precision_recall_curve

    rng = np.random.default_rng(0)

    def gap(n_id: int, n_ood: int, shift: float = 1.0, step: float = 0.0) -> float:
        """|AUPR-In - trapezoid AUPR-In| in points, Gaussian scores (rounded to ``step``: ties)."""
        id_s, ood_s = rng.normal(shift, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)
        if step:
            id_s, ood_s = np.round(id_s / step) * step, np.round(ood_s / step) * step
        precision, recall, _ = precision_recall_curve(np.r_[np.ones(n_id), np.zeros(n_ood)], np.r_[id_s, ood_s])
        return abs(ood_metrics(id_s, ood_s)["aupr_in"] - auc(recall, precision)) * 100

    large = [gap(1000, 1000, shift) for shift in (0.5, 1.0, 2.0) for _ in range(5)]
    assert 0 < min(large) and max(large) < 0.1
    assert max(gap(10, 1000) for _ in range(10)) > 2  # small and unbalanced
    assert min(gap(1000, 1000, step=1.0) for _ in range(5)) > 2  # tied


def test_auroc_and_auprs_by_hand_without_and_with_ties():
    """AUROC as the share of ID-OOD pairs ordered (a tie counts one half) and AUPR-In/Out as average
    precision, sum_n (R_n - R_{n-1}) P_n over the distinct thresholds (MCM's; docs/method.md §5),
    worked out here, not by scikit-learn, which the metrics call: a change of its average precision
    (to the interpolated or trapezoid rule, say) would pass a comparison with it."""
    # ID 3, 2, 1; OOD 2.5, 0.5. Ranked: 3 I, 2.5 O, 2 I, 1 I, 0.5 O. Pairs ordered: 3 > both, 2 and 1 > 0.5: 4 / 6.
    # AUPR-In: the precision at each ID found, 1/1, 2/3, 3/4, each a third of the recall: 29 / 36
    # (interpolated: (1 + 3/4 + 3/4) / 3; trapezoid: 0.764). AUPR-Out ranks by -score: 0.5 O, 1 I, 2 I,
    # 2.5 O, 3 I: 1/1 and 2/4, each half the recall: 3 / 4
    m = ood_metrics([3.0, 2.0, 1.0], [2.5, 0.5])
    assert m["auroc"] == pytest.approx(4 / 6, abs=1e-12)
    assert m["aupr_in"] == pytest.approx(29 / 36, abs=1e-12) and m["aupr_out"] == pytest.approx(3 / 4, abs=1e-12)
    # ID 2, 1; OOD 2, 0. Pairs: (2, 2) a tie (1/2), (2, 0) and (1, 0) ordered, (1, 2) not: 2.5 / 4.
    # AUPR-In: at 2, the tie is one threshold: precision 1/2, recall 1/2; at 1: 2/3, recall 1: 1/4 + 1/3.
    # AUPR-Out (-score): at 0: 1/1, recall 1/2; at -1: no OOD; at -2 (tied): 2/4, recall 1: 1/2 + 1/4
    m = ood_metrics([2.0, 1.0], [2.0, 0.0])
    assert m["auroc"] == pytest.approx(5 / 8, abs=1e-12)
    assert m["aupr_in"] == pytest.approx(7 / 12, abs=1e-12) and m["aupr_out"] == pytest.approx(3 / 4, abs=1e-12)


def test_fpr95_by_hand_with_ties():
    # ID 1..20: accepting 95% = 19 of 20 puts the threshold at 2; OOD >= 2: 2, 2 and 5 -> 3 / 5
    assert ood_metrics(np.arange(1.0, 21.0), [2.0, 2.0, 1.0, 5.0, 0.0])["fpr95"] == pytest.approx(0.6)
    # ten ID at 4, ten at 3: 19 of 20 cannot be accepted without all 20, so the threshold is 3;
    # OOD >= 3: 3, 3.5 and 4 -> 3 / 4 (a strict '>' would give 2 / 4)
    assert ood_metrics([4.0] * 10 + [3.0] * 10, [3.0, 3.5, 2.0, 4.0])["fpr95"] == pytest.approx(0.75)
    # 5 ID: 95% is 4.75 images, so all 5 must pass: threshold 1, the lowest; OOD >= 1: 1 and 1.5 -> 2 / 3
    assert ood_metrics([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.5, 0.5])["fpr95"] == pytest.approx(2 / 3)
    # 17 ID: 16 of 17 is a TPR of 94.1%, nearer 95% than 17 of 17 but below it: all 17 must pass
    # (threshold 1); OOD >= 1: 1.5, 1.2 and 5 -> 3 / 4 (MCM's nearest-recall rule: threshold 2, 1 / 4)
    assert ood_metrics(np.arange(1.0, 18.0), [1.5, 0.5, 1.2, 5.0])["fpr95"] == pytest.approx(0.75)
    # 19 of 20 ID at >= 2 (18 at 3, one at 2): threshold 2; OOD >= 2: one of 20. A ROC curve with its
    # collinear points dropped (scikit-learn's default) has no point at TPR 19/20: it reads 2 / 20
    assert ood_metrics([3.0] * 18 + [2.0, 1.0], [2.0, 1.0] + [0.0] * 18)["fpr95"] == pytest.approx(0.05)
    # (and so OpenOOD v1.5's fpr_recall, roc_curve's default then its first TPR >= 0.95: docs/method.md §5)
    fpr, tpr, _ = roc_curve([1] * 20 + [0] * 20, [3.0] * 18 + [2.0, 1.0] + [2.0, 1.0] + [0.0] * 18)
    assert fpr[np.argmax(tpr >= 0.95)] == pytest.approx(0.10)


def test_fpr_at_tpr_reads_any_rate_and_refuses_one_outside_0_1():
    pos, neg = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 2.5])
    assert fpr_at_tpr(pos, neg, tpr=0.5) == 0.0  # threshold 3 accepts 2 of 4 ID and no OOD
    assert fpr_at_tpr(pos, neg, tpr=0.75) == 0.5  # threshold 2: 3 of 4 ID, and 2.5 of the OOD
    assert fpr_at_tpr(pos, neg, tpr=1.0) == 0.5  # threshold 1: 2.5 only
    assert fpr_at_tpr(pos, neg, tpr=0.0) == 0.0  # (the ends are rates too) above every score: none accepted
    for bad in (1.5, float("nan"), -0.1):
        with pytest.raises(ValueError, match="tpr must be in"):
            fpr_at_tpr(pos, neg, tpr=bad)


def test_fpr_at_tpr_refuses_an_empty_or_non_finite_set_of_scores():
    """No positives gave an FPR of 0.0 and no negatives NaN, each with a warning of scikit-learn's
    only; a NaN score stopped in scikit-learn with a message that named neither set."""
    pos, neg = np.array([1.0, 2.0]), np.array([0.5])
    for p, n, name in ((np.array([]), neg, "pos_scores is empty"), (pos, np.array([]), "neg_scores is empty"),
                       (np.array([1.0, np.nan]), neg, "pos_scores has 1 non-finite")):
        with pytest.raises(ValueError, match=name):
            fpr_at_tpr(p, n)
    assert fpr_at_tpr(torch.tensor([1.0, 2.0], dtype=torch.bfloat16), [0.5, 1.5], tpr=1.0) == 0.5


def test_openood_convention():
    rng = np.random.default_rng(1)
    id_s, ood_s = rng.normal(1, 1, 300), rng.normal(0, 1, 400)
    m = ood_metrics(id_s, ood_s, convention="openood")
    thr = np.sort(-ood_s)[::-1][int(np.ceil(0.95 * 400)) - 1]
    assert m["fpr95"] == pytest.approx((-id_s >= thr).mean())
    assert m["auroc"] == pytest.approx(ood_metrics(id_s, ood_s)["auroc"])


def test_perfect_and_reversed_separation():
    perfect = ood_metrics([2.0, 3.0, 4.0], [0.0, 1.0])
    assert perfect["auroc"] == 1.0 and perfect["fpr95"] == 0.0
    assert perfect["aupr_in"] == 1.0 and perfect["aupr_out"] == 1.0
    reversed_ = ood_metrics(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0, 4.0]))
    assert reversed_["auroc"] == 0.0 and reversed_["fpr95"] == 1.0


@pytest.mark.parametrize("convention", ["id", "openood"])
def test_all_equal_scores_tell_nothing_apart(convention):
    """One score for every image (msp or mcm of a one-class prompt, a constant model): every threshold
    accepts all or nothing, so FPR95 is 1 under both conventions, AUROC 0.5, and each AUPR the share of
    its positives (4 ID, 6 OOD: 0.4 and 0.6), as scikit-learn gives them; a one-image set likewise."""
    m = ood_metrics(torch.full((4,), 0.25), np.full(6, 0.25), convention=convention)
    assert m == {"fpr95": 1.0, "auroc": 0.5, "aupr_in": pytest.approx(0.4), "aupr_out": pytest.approx(0.6)}
    assert m == pytest.approx(_sk_metrics(np.full(4, 0.25), np.full(6, 0.25)))
    assert ood_metrics([7.0], [7.0], convention=convention) == {"fpr95": 1.0, "auroc": 0.5, "aupr_in": 0.5,
                                                                "aupr_out": 0.5}


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_bad_input_is_clear(bad):
    with pytest.raises(ValueError, match="id_scores"):
        ood_metrics(bad, [0.0])
    with pytest.raises(ValueError, match="convention"):
        ood_metrics([1.0], [0.0], convention="x")


def test_scores_that_are_not_numbers_are_named():
    """Per-batch tensors beside a ragged list, or strings, stopped in numpy or torch, naming neither
    argument (numpy 1.24 warned on a list of tensors first: a FutureWarning)."""
    import warnings

    with pytest.raises(ValueError, match=r"^id_scores must be numbers \(an array, a tensor or a list of numbers\): "
                                         "got None$"):  # (was "1 non-finite value": np.asarray(None) is NaN)
        ood_metrics(None, [0.0])
    for bad in ([torch.rand(3), [1.0, [2.0]]], ["a"], [torch.rand(2), torch.tensor([1j])], [torch.rand(2), "a"]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match="id_scores must be numbers"):
                ood_metrics(bad, [0.0])
            with pytest.raises(ValueError, match="ood_scores must be numbers"):
                ood_metrics([0.0], bad)


@pytest.mark.parametrize("bad, said", [
    (["0.5", "0.7"], "not strings"),  # (were read as the numbers 0.5 and 0.7)
    ("123", "not strings"),  # (was one score, 123)
    ([1.0, "0.5"], "not strings"),
    ([None, "0.5"], "not strings"),  # (an object array)
    ([b"1"], "not bytes"),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), "not dates"),  # (were day counts)
    (np.array([1, 2], dtype="timedelta64[s]"), "not time spans"),
    (np.array([1 + 2j, 3]), "not complex numbers"),  # (the imaginary part dropped with a ComplexWarning)
    ([1 + 2j], "not complex numbers"),
    (torch.tensor([1 + 2j]), r"not complex numbers \(torch.complex64\)"),  # (with a UserWarning)
    ([10**400, 1], "int too large to convert to float"),  # (an OverflowError traceback)
    ([[1.0, 2.0], [3.0]], "inhomogeneous shape"),  # ragged (numpy >= 1.24 raises, as the floor is)
    (torch.ones(3, device="meta"), "a meta tensor holds no values"),  # (a NotImplementedError from .cpu())
    ([torch.ones(2), torch.ones(3, device="meta")], "a meta tensor holds no values"),
])
def test_scores_that_are_no_real_numbers_are_one_value_error(bad, said):
    """Strings, bytes, dates, complex numbers and integers past float64 were converted (or
    overflowed) on their way to float64: each is the ValueError naming the argument, no warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"^id_scores must be numbers \(an array, a tensor or a list of "
                                             rf"numbers\): .*{said}"):
            ood_metrics(bad, [0.0])


def test_masked_scores_are_refused_and_real_numbers_of_every_kind_are_read():
    """np.asarray drops a masked array's mask (its masked entries were scored); bools, integers,
    Python objects of numbers and lists of tensors are real numbers, read as before; tensors with
    grad in a list too, as one tensor with grad is (they were "no numbers")."""
    from fractions import Fraction

    with pytest.raises(ValueError, match=r"^ood_scores has 1 masked value\(s\): pass the others"):
        ood_metrics([1.0, 2.0], np.ma.masked_array([0.0, 5.0], mask=[0, 1]))
    assert ood_metrics([1.0, 2.0], np.ma.masked_array([0.0, 0.5], mask=[0, 0]))["auroc"] == 1.0
    for good in ([True, True], np.array([3, 4], dtype=np.uint8), [2**70, Fraction(7, 2)], torch.tensor([2, 3]),
                 [torch.tensor(1.5), torch.tensor(2.5)], [[1.5], [2.5]], [torch.tensor([1.5, 2.5], requires_grad=True)],
                 (torch.tensor(1.5, requires_grad=True), 2.5)):
        assert ood_metrics(good, [0.0, 0.5])["auroc"] == 1.0, good


def test_scores_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    e = np.exp([1.0, 2.0, 3.0])
    assert msp(logits)[0].item() == pytest.approx(e[2] / e.sum())
    assert msp(logits)[1].item() == pytest.approx(1 / 3)
    assert maxlogit(logits).tolist() == [3.0, 0.0]
    assert energy(logits)[0].item() == pytest.approx(np.log(e.sum()))
    assert energy(logits, temperature=2.0)[1].item() == pytest.approx(2 * np.log(3))
    cos = torch.tensor([[0.3, 0.1]])
    assert mcm(cos)[0].item() == pytest.approx(np.exp(0.3) / (np.exp(0.3) + np.exp(0.1)))
    assert mcm(cos, tau=0.01)[0].item() == pytest.approx(1 / (1 + np.exp(-20)))
    assert set(SCORES) >= {"msp", "maxlogit", "energy", "mcm"}


def test_bad_ood_scores_are_named():
    for bad in ([], [0.0, float("nan")], [float("-inf")]):
        with pytest.raises(ValueError, match="ood_scores"):
            ood_metrics([1.0, 2.0], bad)


def test_scores_of_any_shape_are_flattened():
    """[N, 1] score columns (or any shape) count as N scores, as the flat lists would."""
    id_2d, ood_2d = torch.tensor([[3.0], [1.0], [4.0]]), np.array([[2.0, 0.5]])
    m = ood_metrics(id_2d, ood_2d)
    # 6 ID-OOD pairs; ID 3 and 4 beat both OOD, ID 1 beats 0.5 only: 5 / 6
    assert m["auroc"] == pytest.approx(5 / 6)
    assert m == ood_metrics([3.0, 1.0, 4.0], [2.0, 0.5])


def test_low_precision_tensors_are_scored_as_their_values():
    """bfloat16 scores (from autocast) are read as the numbers they hold; numpy cannot read bfloat16."""
    id_s = torch.tensor([3.0, 1.0, 4.0], dtype=torch.bfloat16)
    ood_s = torch.tensor([2.0, 0.5], dtype=torch.bfloat16, requires_grad=True)
    m = ood_metrics(id_s, ood_s)
    # as in the test above: 5 of the 6 ID-OOD pairs are ordered
    assert m["auroc"] == pytest.approx(5 / 6)
    assert m == ood_metrics([3.0, 1.0, 4.0], [2.0, 0.5])


def test_scores_closer_than_float32_resolution_are_not_ties():
    """Scores are compared in float64: 1e9 + 1 and 1e9 are one float32 (spacing 64 there)."""
    m = ood_metrics([1e9 + 1, 1e9 + 2], [1e9, 1e9 - 1])
    assert m["auroc"] == 1.0 and m["fpr95"] == 0.0 and m["aupr_in"] == 1.0


def test_one_score_may_be_a_plain_number():
    """One image's score given as a number (a Python or numpy float, a 0-d array) is one score, as
    ``[2.0]`` is: the metrics of [3, 1, 4] against [2] are scikit-learn's (AUROC 2 / 3: 3 and 4 beat 2)."""
    want = _sk_metrics([3.0, 1.0, 4.0], [2.0])
    assert want["auroc"] == pytest.approx(2 / 3)
    for one in (2.0, np.float64(2.0), np.array(2.0)):
        assert ood_metrics([3.0, 1.0, 4.0], one) == pytest.approx(want)
    # one positive at 2: accepted at threshold 2, where the negative 3 is accepted and 1 is not
    assert fpr_at_tpr(2.0, [1.0, 3.0]) == 0.5


def test_per_batch_bfloat16_tensors_are_scored_as_their_values():
    """Scores kept as a list of per-batch bfloat16 tensors (from autocast) are read as the numbers they
    hold, as one tensor is; numpy reads no bfloat16 ("Got unsupported ScalarType BFloat16")."""
    bf = lambda v: torch.tensor(v, dtype=torch.bfloat16)  # noqa: E731
    m = ood_metrics([bf([3.0, 1.0]), bf([4.0, 1.5])], [bf([2.0, 0.5])])
    assert m == pytest.approx(_sk_metrics([3.0, 1.0, 4.0, 1.5], [2.0, 0.5]))
    assert m["auroc"] == pytest.approx(6 / 8)  # 8 ID-OOD pairs; 1 and 1.5 lose to 2


def test_per_batch_tensors_of_other_lengths_are_joined():
    """Scores kept batch by batch end in a smaller last batch: [B] tensors of other lengths (a tensor,
    a numpy array or a number among them) are the scores of all, in order, as their concatenation
    is; they stopped in numpy ("inhomogeneous shape"). Against scikit-learn on the joined scores."""
    ids = [torch.tensor([3.0, 1.0, 4.0]), torch.tensor([[1.5]]), np.array([0.25]), 5.0]
    ood = (torch.tensor([2.0, 0.5]), torch.tensor([6.0]))
    id_s, ood_s = np.r_[3.0, 1.0, 4.0, 1.5, 0.25, 5.0], np.r_[2.0, 0.5, 6.0]
    m = ood_metrics(ids, ood)
    assert m == pytest.approx(_sk_metrics(id_s, ood_s))
    # 18 ID-OOD pairs: 3 beats 2 and 0.5 (2), 1 beats 0.5 (1), 4: 2, 1.5: 1, 0.25: 0, 5: 2 -> 8 / 18
    assert m["auroc"] == pytest.approx(8 / 18)


def test_a_masked_batch_among_per_batch_tensors_is_refused():
    """A masked numpy batch beside tensors: joining the batches would drop its mask and score the
    masked entries (as np.asarray does); refused as one masked array is."""
    batches = [torch.tensor([1.0, 2.0]), np.ma.masked_array([3.0, 4.0, 5.0], mask=[0, 1, 1])]
    with pytest.raises(ValueError, match=r"^id_scores has 2 masked value\(s\): pass the others"):
        ood_metrics(batches, [0.5])


@pytest.mark.parametrize("seed", range(4))
def test_metrics_follow_the_sets_not_the_form_they_are_given_in(seed):
    """Metamorphic relations of docs/method.md §5, on integer scores full of ties: the order of the
    scores changes nothing; every OOD score twice leaves AUROC and FPR95 as they were (a share of a
    set, each pair of ID and OOD scores counted twice); ID and OOD swapped with the scores negated
    (higher = more ID again) keep AUROC, exchange AUPR-In and AUPR-Out, and give the FPR95 of the
    OpenOOD convention; swapped alone, AUROC becomes 1 - AUROC."""
    rng = np.random.default_rng(seed)
    id_s, ood_s = rng.integers(0, 12, 40).astype(float) + 3, rng.integers(0, 12, 30).astype(float)
    m = ood_metrics(id_s, ood_s)
    assert ood_metrics(rng.permutation(id_s), rng.permutation(ood_s)) == m
    twice = ood_metrics(id_s, np.r_[ood_s, ood_s])
    assert twice["auroc"] == pytest.approx(m["auroc"], abs=1e-12) and twice["fpr95"] == m["fpr95"]
    swapped = ood_metrics(-ood_s, -id_s)
    assert swapped["auroc"] == pytest.approx(m["auroc"], abs=1e-12)
    assert swapped["aupr_in"] == pytest.approx(m["aupr_out"], abs=1e-12)
    assert swapped["aupr_out"] == pytest.approx(m["aupr_in"], abs=1e-12)
    assert swapped["fpr95"] == ood_metrics(id_s, ood_s, convention="openood")["fpr95"]
    assert ood_metrics(ood_s, id_s)["auroc"] == pytest.approx(1 - m["auroc"], abs=1e-12)
