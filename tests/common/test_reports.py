"""clip_smot.common.reports: the shared metric files."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from clip_smot.common.errors import UserError
from clip_smot.common.reports import write_reports


def test_reports_hold_percentages_and_the_average(tmp_path):
    id_s = {"msp": np.array([0.9, 0.8, 0.7, 0.6])}
    ood = {"a": {"msp": np.array([0.1, 0.65])}, "b": {"msp": np.array([0.75, 0.2, 0.3])}}
    report = write_reports(tmp_path, id_s, ood)
    for name in ("metrics.csv", "metrics.json", "metrics.md", "scores_hist.png"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "scores_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = report["metrics"]["msp"]
    for name, scores in ood.items():
        labels = np.r_[np.ones(4), np.zeros(len(scores["msp"]))]
        want = 100 * roc_auc_score(labels, np.r_[id_s["msp"], scores["msp"]])
        assert rows[name]["auroc"] == pytest.approx(want)
    assert rows["average"]["auroc"] == pytest.approx((rows["a"]["auroc"] + rows["b"]["auroc"]) / 2)
    # by hand (ID positive). FPR95: 95% of 4 ID is 3.8, so all 4 pass: threshold 0.6.
    # a: OOD >= 0.6: 0.65 -> 50%. AUROC: 0.1 loses to 4 ID, 0.65 to 3 -> 7/8. Ranked scores
    #    I I I O I O: AUPR-In (1 + 1 + 1 + 4/5) / 4 = 95%; AUPR-Out (O first, then at rank 3: 2/3) / 2 = 83.33%.
    # b: OOD >= 0.6: 0.75 -> 33.33%. AUROC (2 + 4 + 4) / 12 = 83.33%. I I O I I O O: AUPR-In
    #    (1 + 1 + 3/4 + 4/5) / 4 = 88.75%; AUPR-Out (1 + 1 + 3/5) / 3 = 86.67%.
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[:3] == ["score,ood_set,fpr95,auroc,aupr_in,aupr_out", "msp,a,50.00,87.50,95.00,83.33",
                         "msp,b,33.33,83.33,88.75,86.67"]
    assert [rows["average"][k] for k in ("fpr95", "auroc", "aupr_in", "aupr_out")] == pytest.approx(
        [125 / 3, 85 + 5 / 12, 91.875, 85.0])  # the means of the two rows
    assert "| msp | 50.00 | 87.50 | 33.33 | 83.33 | 41.67 | 85.42 |" in (tmp_path / "metrics.md").read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == report["metrics"]


def test_non_finite_scores_are_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="--scores vim: no metrics for ID vs a .*non-finite"):
        write_reports(tmp_path, {"vim": np.array([1.0, np.nan])}, {"a": {"vim": np.array([0.0, 0.5])}})


def test_an_ood_set_named_average_is_refused(tmp_path):
    with pytest.raises(UserError, match="'average' names the mean"):
        write_reports(tmp_path, {"msp": np.array([0.9, 0.8])}, {"average": {"msp": np.array([0.1, 0.2])},
                                                                 "b": {"msp": np.array([0.9, 0.95])}})


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_evaluation_that_fails_while_writing_leaves_the_folder_all_old(tmp_path, monkeypatch):
    """`eval` into an earlier evaluation's folder that failed midway (a full disk) left new metrics
    beside the old histogram and config. A write that fails now leaves every file as it was and no
    temporary file; one that succeeds leaves no old file of an evaluation beside the new ones; a
    file the user put there is never touched."""
    import errno
    from pathlib import Path

    out = tmp_path / "eval"
    old = {"msp": np.array([0.9, 0.8, 0.7])}, {"a": {"msp": np.array([0.1, 0.75])}}
    new = {"msp": np.array([0.9, 0.8, 0.7])}, {"a": {"msp": np.array([0.85, 0.2])}}
    write_reports(out, *old, files={"config.json": '{"run": "old"}\n'})
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    real, calls = Path.write_text, []

    def full_disk_on_the_third(self, *a, **k):
        calls.append(self.name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_disk_on_the_third)
    with pytest.raises(UserError, match=r"^cannot write .*/eval/metrics.md: No space left on device; the file "
                                        r"there before is unchanged$"):
        write_reports(out, *new, files={"config.json": '{"run": "new"}\n'})
    assert len(calls) == 3 and _files(out) == before  # nothing replaced, no temporary file left
    calls.clear()
    with pytest.raises(UserError, match="No space left"):  # a folder made for the evaluation is removed again
        write_reports(tmp_path / "fresh", *new)
    assert not (tmp_path / "fresh").exists()
    monkeypatch.undo()
    write_reports(out, *new)  # (the ResNet track: no config.json)
    after = _files(out)
    assert sorted(after) == ["metrics.csv", "metrics.json", "metrics.md", "notes.txt", "scores_hist.png"]
    assert after["notes.txt"] == b"mine" and after["metrics.csv"] != before["metrics.csv"]
    assert after["scores_hist.png"] != before["scores_hist.png"]
    # the new scores, by hand: FPR95 at threshold 0.7 accepts 0.85 (50%); AUROC: ID above 0.85 once, above 0.2 thrice: 4/6
    assert "msp,a,50.00,66.67," in after["metrics.csv"].decode()


def test_set_names_that_are_not_utf8_are_written_escaped(tmp_path):
    """An --ood name or prompt file name that is not UTF-8 (a lone surrogate, as Python spells the
    byte) failed every metric file after the whole evaluation; it is written as its escape."""
    write_reports(tmp_path, {"msp": np.array([0.9, 0.8])}, {"caf\udce9": {"msp": np.array([0.1, 0.95])},
                                                             "$\\foo{$": {"msp": np.array([0.5])}},
                  title="Prompt p\udcff.safetensors")  # (and a set name that is broken matplotlib math)
    assert (tmp_path / "metrics.csv").read_bytes().decode("utf-8").splitlines()[1].startswith("msp,caf\\udce9,")
    assert (tmp_path / "metrics.md").read_text(encoding="utf-8").startswith("# Prompt p\\udcff.safetensors\n")
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["msp"]["caf\udce9"]["auroc"] == 50.0


def _three_sets():
    """4 ID scores and three OOD sets; "neg" is msp negated (a score that ranks the other way)."""
    id_msp = np.array([0.9, 0.8, 0.7, 0.6])
    sets = {"a": np.array([0.1, 0.65]), "b": np.array([0.75, 0.2, 0.3]), "c": np.array([0.95])}
    return {"msp": id_msp, "neg": -id_msp}, {n: {"msp": s, "neg": -s} for n, s in sets.items()}


@pytest.mark.parametrize("convention", ["id", "openood"])
def test_each_score_the_convention_and_the_mean_of_three_sets(tmp_path, convention):
    """The average is the mean over all OOD sets (not their median, which two sets cannot tell
    apart), each score's row is of its own scores, and the FPR95 convention reaches the metrics."""
    id_s, ood = _three_sets()
    report = write_reports(tmp_path, id_s, ood, convention=convention, id_accuracy=0.0)
    msp, neg = report["metrics"]["msp"], report["metrics"]["neg"]
    # AUROC by hand: a 7/8, b 10/12, c: 0.95 above every ID score, 0/4
    assert [msp[s]["auroc"] for s in "abc"] == pytest.approx([87.5, 250 / 3, 0.0])
    assert msp["average"]["auroc"] == pytest.approx((87.5 + 250 / 3 + 0.0) / 3)  # 56.94; the median: 83.33
    # neg ranks every pair the other way
    assert [neg[s]["auroc"] for s in "abc"] == pytest.approx([12.5, 50 / 3, 100.0])
    if convention == "id":  # OOD accepted at the threshold that keeps all 4 ID (>= 0.6): a 1/2, b 1/3, c 1/1
        fpr = [50.0, 100 / 3, 100.0]
    else:  # ID flagged at the threshold that flags every OOD score (<= its max): a 0.6 (1/4), b 0.7, 0.6, c all
        fpr = [25.0, 50.0, 100.0]
    assert [msp[s]["fpr95"] for s in "abc"] == pytest.approx(fpr)
    assert msp["average"]["fpr95"] == pytest.approx(sum(fpr) / 3)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["fpr_convention"] == convention and saved["id_accuracy"] == 0.0
    # an accuracy of 0 is an accuracy: written, not left out as if the ID data had no labels
    assert (tmp_path / "metrics.md").read_text().endswith("\nID accuracy: 0.00%\n")


def test_markdown_accuracy_has_two_decimals(tmp_path):
    id_s, ood = _three_sets()
    write_reports(tmp_path, id_s, ood, id_accuracy=200 / 3)
    assert (tmp_path / "metrics.md").read_text().endswith("\nID accuracy: 66.67%\n")


def test_the_histogram_draws_each_score_id_against_each_set(tmp_path, monkeypatch):
    """One panel per score and OOD set: the ID scores of that score against that set's, on 40
    shared bins from the lowest to the highest of the two."""
    from matplotlib.axes import Axes

    calls, real = [], Axes.hist

    def spy(self, x, *a, **k):
        calls.append((np.asarray(x).tolist(), np.asarray(k["bins"]), k["label"]))
        return real(self, x, *a, **k)

    monkeypatch.setattr(Axes, "hist", spy)
    id_s, ood = _three_sets()
    write_reports(tmp_path, id_s, ood)
    assert len(calls) == 2 * 3 * 2
    k = 0
    for score, sign in (("msp", 1), ("neg", -1)):
        for name, values in (("a", [0.1, 0.65]), ("b", [0.75, 0.2, 0.3]), ("c", [0.95])):
            (id_x, id_bins, id_label), (ood_x, ood_bins, ood_label) = calls[k], calls[k + 1]
            k += 2
            assert (id_label, ood_label) == ("ID", name)
            assert id_x == pytest.approx([sign * v for v in (0.9, 0.8, 0.7, 0.6)])
            assert ood_x == pytest.approx([sign * v for v in values])
            both = [sign * v for v in (0.9, 0.8, 0.7, 0.6, *values)]
            assert len(id_bins) == 41 and np.array_equal(id_bins, ood_bins)
            assert (id_bins[0], id_bins[-1]) == pytest.approx((min(both), max(both)))


def test_csv_has_the_average_line_and_markdown_heads_match_their_cells(tmp_path):
    id_s, ood = _three_sets()
    write_reports(tmp_path, id_s, ood)
    # c by hand: O I I I I; AUPR-In (1/2 + 2/3 + 3/4 + 4/5) / 4 = 67.92%; AUPR-Out: the OOD image ranked last, 1/5.
    # the means with a (50, 87.5, 95, 83.33) and b (33.33, 83.33, 88.75, 86.67), above:
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[1:5] == ["msp,a,50.00,87.50,95.00,83.33", "msp,b,33.33,83.33,88.75,86.67",
                          "msp,c,100.00,0.00,67.92,20.00", "msp,average,61.11,56.94,83.89,63.33"]
    assert len(lines) == 1 + 2 * 4 and lines[-1].startswith("neg,average,")
    md = (tmp_path / "metrics.md").read_text().splitlines()
    assert md[4] == ("| score | a FPR95↓ | a AUROC↑ | b FPR95↓ | b AUROC↑ | c FPR95↓ | c AUROC↑ | average FPR95↓ | "
                     "average AUROC↑ |")
    assert md[5] == "|---|---|---|---|---|---|---|---|---|"  # (score and 8 value columns)
    assert md[6] == "| msp | 50.00 | 87.50 | 33.33 | 83.33 | 100.00 | 0.00 | 61.11 | 56.94 |"
