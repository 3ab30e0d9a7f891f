"""clip_smot.evaluate: the shared metric files."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from clip_smot.errors import UserError
from clip_smot.evaluate import write_reports


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
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == report["metrics"]


def test_non_finite_scores_are_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="--scores vim: no metrics for ID vs a .*non-finite"):
        write_reports(tmp_path, {"vim": np.array([1.0, np.nan])}, {"a": {"vim": np.array([0.0, 0.5])}})


def test_an_ood_set_named_average_is_refused(tmp_path):
    with pytest.raises(UserError, match="'average' names the mean"):
        write_reports(tmp_path, {"msp": np.array([0.9, 0.8])}, {"average": {"msp": np.array([0.1, 0.2])},
                                                                 "b": {"msp": np.array([0.9, 0.95])}})
