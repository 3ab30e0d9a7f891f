"""clip_smot.common.reports: the shared metric files."""

import json
import warnings

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


def test_both_evaluations_refuse_an_ood_set_named_average_before_loading_anything(tmp_path, monkeypatch):
    """The name was refused by write_reports only, once every image had gone through the network
    (an hour of ODIN on ImageNet); it is known from the command line."""
    from clip_smot.clip import evaluate as clip_eval
    from clip_smot.clip.evaluate import ClipEvalConfig, run_clip_eval
    from clip_smot.resnet import evaluate as resnet_eval
    from clip_smot.resnet.evaluate import ResnetEvalConfig, run_resnet_eval

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(resnet_eval, "load_model", loaded)
    monkeypatch.setattr(clip_eval, "load_prompt", loaded)
    (tmp_path / "m.safetensors").write_bytes(b"")
    (tmp_path / "ood").mkdir()
    ood = {"average": str(tmp_path / "ood"), "b": str(tmp_path / "ood")}
    for run in (lambda: run_resnet_eval(ResnetEvalConfig(checkpoint=str(tmp_path / "m.safetensors"), id_data="digits",
                                                         ood=ood, device="cpu", out=str(tmp_path / "e"))),
                lambda: run_clip_eval(ClipEvalConfig(prompt=str(tmp_path / "m.safetensors"), id_data="digits", ood=ood,
                                                     device="cpu", out=str(tmp_path / "e")))):
        with pytest.raises(UserError, match=r"^--ood average=\.\.\.: 'average' names the mean over the OOD sets"):
            run()
    assert not (tmp_path / "e").exists()


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


def test_without_a_convention_fpr95_is_the_papers_id_positive_one(tmp_path):
    """metric_table and write_reports, called with no convention, count FPR95 as the paper does:
    the OOD share accepted at the threshold that keeps 95% of the ID images (here all 4, >= 0.6);
    OpenOOD's would give a 25%, b 50%."""
    from clip_smot.common.reports import metric_table

    id_s, ood = _three_sets()
    assert [metric_table(id_s, ood)["msp"][s]["fpr95"] for s in "abc"] == pytest.approx([50.0, 100 / 3, 100.0])
    report = write_reports(tmp_path, id_s, ood)
    assert report["fpr_convention"] == "id"
    assert [report["metrics"]["msp"][s]["fpr95"] for s in "abc"] == pytest.approx([50.0, 100 / 3, 100.0])


def test_markdown_accuracy_has_two_decimals(tmp_path):
    id_s, ood = _three_sets()
    write_reports(tmp_path, id_s, ood, id_accuracy=200 / 3)
    assert (tmp_path / "metrics.md").read_text().endswith("\nID accuracy: 66.67%\n")


def test_the_id_accuracy_is_a_line_of_its_own_below_the_table(tmp_path):
    """Markdown reads a line right below a table as one more row: the accuracy line has a blank
    line before it."""
    id_s, ood = _three_sets()
    write_reports(tmp_path, id_s, ood, id_accuracy=200 / 3)
    md = (tmp_path / "metrics.md").read_text().splitlines()
    assert md[-3].startswith("| neg | ") and md[-2:] == ["", "ID accuracy: 66.67%"]


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


def test_each_histogram_panel_is_titled_by_its_score_and_set_and_has_a_legend(tmp_path, monkeypatch):
    """A panel's title says which score against which set ("msp: ID vs a"), and its legend which
    colour is ID and which the set: six panels, row by score, column by set."""
    from matplotlib.axes import Axes

    titles, legends = [], []
    real_title, real_legend = Axes.set_title, Axes.legend

    def set_title(self, label, *a, **k):
        titles.append(label)
        return real_title(self, label, *a, **k)

    def legend(self, *a, **k):
        legends.append(self.get_title())
        return real_legend(self, *a, **k)

    monkeypatch.setattr(Axes, "set_title", set_title)
    monkeypatch.setattr(Axes, "legend", legend)
    id_s, ood = _three_sets()
    write_reports(tmp_path, id_s, ood)
    want = ["msp: ID vs a", "msp: ID vs b", "msp: ID vs c", "neg: ID vs a", "neg: ID vs b", "neg: ID vs c"]
    assert titles == want and legends == want


def test_a_long_set_name_is_cut_in_the_histogram_and_kept_in_the_tables(tmp_path, monkeypatch):
    """--ood NAME=DIR with a name of 20,000 characters collapsed its panel to nothing, with
    matplotlib's UserWarning on stderr: the panel's title and legend show its first 37 and '...'."""
    import warnings

    from matplotlib.axes import Axes

    titles, real_title = [], Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **k: titles.append(t) or real_title(self, t, *a, **k))
    name = "x" * 20000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_reports(tmp_path, {"msp": np.array([0.9, 0.8])}, {name: {"msp": np.array([0.1, 0.85])}})
    assert titles == ["msp: ID vs " + "x" * 37 + "..."]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith(f"msp,{name},")


def test_a_set_name_with_a_control_character_is_drawn_without_a_warning(tmp_path, monkeypatch):
    """--ood $'a\\rb'=DIR or $'c\\td'=DIR: matplotlib warned "Glyph 13 missing from font(s) DejaVu
    Sans" (two lines on stderr of a run that succeeded); the panel shows the character escaped."""
    import warnings

    from matplotlib.axes import Axes

    titles, real_title = [], Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **k: titles.append(t) or real_title(self, t, *a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_reports(tmp_path, {"msp": np.array([0.9, 0.8])}, {"a\rb": {"msp": np.array([0.1])},
                                                                 "c\td": {"msp": np.array([0.2])}})
    assert titles == ["msp: ID vs a\\u000db", "msp: ID vs c\\u0009d"]


def test_the_histogram_draws_at_most_max_hist_sets_and_says_so(tmp_path, monkeypatch):
    """Its width grew with the OOD sets (210 sets: 85 s and a 67,200-pixel-wide PNG): past
    MAX_HIST_SETS it draws the first ones, its title saying how many of how many; the tables keep all."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    import clip_smot.common.reports as reports

    titles, suptitles = [], []
    real_title, real_suptitle = Axes.set_title, Figure.suptitle
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **k: titles.append(t) or real_title(self, t, *a, **k))
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, *a, **k: suptitles.append(t) or
                        real_suptitle(self, t, *a, **k))
    monkeypatch.setattr(reports, "MAX_HIST_SETS", 2)
    id_s, ood = _three_sets()
    report = write_reports(tmp_path, id_s, ood, title="T")
    assert titles == ["msp: ID vs a", "msp: ID vs b", "neg: ID vs a", "neg: ID vs b"]
    assert suptitles == ["T (the first 2 of 3 OOD sets; the metrics files hold all)"]
    assert list(report["metrics"]["msp"]) == ["a", "b", "c", "average"]
    titles.clear(), suptitles.clear()
    monkeypatch.setattr(reports, "MAX_HIST_SETS", 3)  # all of them: no note
    write_reports(tmp_path, id_s, ood, title="T")
    assert len(titles) == 6 and suptitles == ["T"]


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


def test_a_set_name_with_a_bar_or_a_line_break_stays_in_its_markdown_cells(tmp_path):
    """--ood 'a|b=DIR' gave metrics.md a head of more columns than its rows, and a name with a
    line break cut the head in two: each is escaped (a backslash too, so that it reads back)."""
    write_reports(tmp_path, {"msp": np.array([0.9, 0.8])}, {"a|b": {"msp": np.array([0.1])},
                                                             "x\ny\\": {"msp": np.array([0.95])}})
    md = (tmp_path / "metrics.md").read_text().splitlines()
    assert md[4] == ("| score | a\\|b FPR95↓ | a\\|b AUROC↑ | x\\ny\\\\ FPR95↓ | x\\ny\\\\ AUROC↑ | average FPR95↓ | "
                     "average AUROC↑ |")
    assert md[6] == "| msp | 0.00 | 100.00 | 100.00 | 0.00 | 50.00 | 50.00 |"
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1] == "msp,a|b,0.00,100.00,100.00,100.00"


def test_a_set_name_with_a_carriage_return_reads_back_from_metrics_csv(tmp_path):
    """--ood $'a\\rb'=DIR: csv quotes a field holding a newline, but not one holding a carriage
    return alone, and metrics.csv read back as a row ['msp', 'a'] and a row ['b', '0.00', ...]."""
    import csv

    write_reports(tmp_path, {"msp": np.array([0.9, 0.8])}, {"a\rb": {"msp": np.array([0.1])},
                                                             "c\nd": {"msp": np.array([0.95])}})
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    # a: both ID scores above its one: FPR95 0, AUROC 100. c\nd above both (O I I): FPR95 100, AUROC 0,
    # AUPR-In (1/2 + 2/3) / 2 = 58.33, AUPR-Out 1/3; the means of the two
    assert rows[1:] == [["msp", "a\rb", "0.00", "100.00", "100.00", "100.00"],
                        ["msp", "c\nd", "100.00", "0.00", "58.33", "33.33"],
                        ["msp", "average", "50.00", "50.00", "79.17", "66.67"]]


@pytest.mark.parametrize("value", [0.5, -3e8, 1e12, 3e38])
def test_constant_scores_give_metrics_and_a_histogram(tmp_path, monkeypatch, value):
    """A score that is the same for every image (a collapsed model) has a histogram too: its bins
    are given a width (41 equal edges drew no bar, its densities NaN), one relative to its size
    (a width of 1e-6 beside 1e12 was none: NumPy divided by zero, with its warnings)."""
    from matplotlib.axes import Axes

    drawn, real = [], Axes.hist

    def hist(self, x, *a, **k):
        n, bins, patches = real(self, x, *a, **k)
        drawn.append((np.asarray(n), np.asarray(bins)))
        return n, bins, patches

    monkeypatch.setattr(Axes, "hist", hist)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = write_reports(tmp_path, {"msp": np.full(3, value, np.float32)},
                               {"a": {"msp": np.full(2, value, np.float32)}})
    # every pair tied: AUROC 1/2 (sklearn too); the threshold that keeps all ID keeps every OOD image
    want = 100 * roc_auc_score([1, 1, 1, 0, 0], np.full(5, 0.5))
    assert report["metrics"]["msp"]["a"]["auroc"] == pytest.approx(want) == 50.0
    assert report["metrics"]["msp"]["a"]["fpr95"] == 100.0
    assert (tmp_path / "scores_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(drawn) == 2
    for n, bins in drawn:  # each set's density: finite, all of it in the bin of 0.5, integrating to 1
        assert np.all(np.isfinite(n)) and np.all(np.diff(bins) > 0)
        assert bins[0] <= np.float32(value) <= bins[-1] and float(np.sum(n * np.diff(bins))) == pytest.approx(1.0)


def test_the_histogram_shows_densities_under_the_title_and_closes_its_figure(tmp_path, monkeypatch):
    """4 ID scores against 40 OOD ones are drawn as densities (else one set's bars would hide the
    other's); the title (``$`` escaped, else matplotlib reads math) is the figure's; and the figure
    is closed, not left in pyplot's list for each evaluation of a process."""
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    hists, titles = [], []
    real_hist, real_suptitle = Axes.hist, Figure.suptitle

    def hist(self, x, *a, **k):
        hists.append(k.get("density"))
        return real_hist(self, x, *a, **k)

    def suptitle(self, t, *a, **k):
        titles.append(t)
        return real_suptitle(self, t, *a, **k)

    monkeypatch.setattr(Axes, "hist", hist)
    monkeypatch.setattr(Figure, "suptitle", suptitle)
    before = plt.get_fignums()
    write_reports(tmp_path, {"msp": np.linspace(0.6, 0.9, 4)}, {"a": {"msp": np.linspace(0.0, 0.7, 40)}},
                  title="Prompt $1.safetensors")
    assert hists == [True, True]
    assert titles == [r"Prompt \$1.safetensors"]
    assert plt.get_fignums() == before


def test_extra_entries_and_files_are_written_with_the_metrics(tmp_path):
    """``extra``: more entries of metrics.json (the model, the prompt); ``files``: more files
    (config.json), written with the others."""
    report = write_reports(tmp_path, {"msp": np.array([0.9, 0.8])}, {"a": {"msp": np.array([0.1, 0.85])}},
                           extra={"model": "ViT-B-16", "prompt": "p.safetensors"},
                           files={"config.json": '{"run": 1}\n'})
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert (saved["model"], saved["prompt"]) == ("ViT-B-16", "p.safetensors") == (report["model"], report["prompt"])
    assert (tmp_path / "config.json").read_text() == '{"run": 1}\n'


def test_only_the_reports_temporaries_older_than_an_hour_are_removed(tmp_path):
    """The temporary files of an evaluation killed while writing (``.metrics.csv.*.tmp``) are
    removed by the next one; those of the last hour may be another evaluation's writes in
    progress, and other files' temporaries are not the evaluation's: both are kept."""
    import os
    import time

    tmp_path.joinpath("eval").mkdir()
    old, young, other = (tmp_path / "eval" / n for n in (".metrics.csv.k1x.tmp", ".metrics.json.k2y.tmp",
                                                         ".notes.txt.k3z.tmp"))
    for path in (old, young, other):
        path.write_text("half")
    hours_ago = time.time() - 2 * 3600
    for path in (old, other):
        os.utime(path, (hours_ago, hours_ago))
    os.utime(young, (time.time() - 1800, time.time() - 1800))  # half an hour
    write_reports(tmp_path / "eval", {"msp": np.array([0.9, 0.8])}, {"a": {"msp": np.array([0.1, 0.85])}})
    assert not old.exists() and young.exists() and other.exists()


def test_stale_temporaries_of_each_report_file_an_hour_old_are_removed(tmp_path):
    """An evaluation killed more than an hour ago (65 minutes, not only 90) left temporaries of
    its files: metrics.md's goes, as do those of the histogram and config.json."""
    import os
    import time

    tmp_path.joinpath("eval").mkdir()
    stale = [tmp_path / "eval" / n for n in (".metrics.md.k4w.tmp", ".scores_hist.png.k5v.tmp", ".config.json.k6u.tmp")]
    for path, minutes in zip(stale, (65, 120, 120)):
        path.write_text("half")
        os.utime(path, (time.time() - 60 * minutes, time.time() - 60 * minutes))
    write_reports(tmp_path / "eval", {"msp": np.array([0.9, 0.8])}, {"a": {"msp": np.array([0.1, 0.85])}})
    assert [path.exists() for path in stale] == [False, False, False]


def test_a_failed_write_keeps_a_folder_that_was_there_and_ctrl_c_removes_one_made(tmp_path, monkeypatch):
    """The folder made for the files is removed when they are not written (Ctrl-C too); an empty
    --out folder that was there before stays."""
    import errno
    from pathlib import Path

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    def ctrl_c(self, *a, **k):
        raise KeyboardInterrupt

    scores = {"msp": np.array([0.9, 0.8])}, {"a": {"msp": np.array([0.1, 0.85])}}
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(UserError, match="No space left"):
        write_reports(tmp_path / "empty", *scores)
    assert (tmp_path / "empty").is_dir() and list((tmp_path / "empty").iterdir()) == []
    monkeypatch.setattr(Path, "write_text", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_reports(tmp_path / "fresh", *scores)
    assert not (tmp_path / "fresh").exists()


def test_read_sets_names_each_list_and_folder_read_and_the_digits_folders(tmp_path, monkeypatch):
    """What eval must not write into: each set's list file (a ROOT::LIST argument's list) or
    folder, --id-train's too, and every bundled digits folder in the cache."""
    from clip_smot.common.reports import EvalConfig

    monkeypatch.setenv("CLIP_SMOT_CACHE", str(tmp_path / "cache"))
    digits = tmp_path / "cache" / "digits-32"
    digits.mkdir(parents=True)
    (tmp_path / "cache" / "other").mkdir()
    cfg = EvalConfig(id_data=str(tmp_path / "id"), id_train=str(tmp_path / "train"), out=str(tmp_path / "e"),
                     ood={"a": f"{tmp_path / 'a'}::{tmp_path / 'a.txt'}", "svhn": None})
    files, folders = cfg.read_sets()
    assert [name for name, _ in files] == ["--id image list", "--id-train image list", "--ood a image list"]
    assert files[2] == ("--ood a image list", tmp_path / "a.txt")  # (ROOT::LIST: the list is the file read)
    assert folders == [("the --id folder", str(tmp_path / "id")), ("the --id-train folder", str(tmp_path / "train")),
                       ("the --ood a folder", f"{tmp_path / 'a'}::{tmp_path / 'a.txt'}"),
                       ("the bundled digits folder", digits)]


def test_eval_options_default_to_what_the_docs_say():
    """docs/score.md: eval's --fpr-convention id (the paper's, the default), --batch-size 256,
    --workers 4 decoding processes, --device auto."""
    from clip_smot.common.reports import EvalConfig

    cfg = EvalConfig(id_data="digits", ood={}, out="e")
    assert (cfg.convention, cfg.batch_size, cfg.workers, cfg.device, cfg.id_train, cfg.scores) == (
        "id", 256, 4, "auto", None, None)


@pytest.mark.parametrize("renamed", range(5))
def test_metrics_json_is_renamed_last_so_a_killed_evaluation_is_not_taken_for_finished(tmp_path, monkeypatch,
                                                                                      renamed):
    """A SIGKILL within the final renames: ``reproduce`` takes an evaluation whose metrics.json is
    there for finished (docs/reproduce.md: its last file) and skips it, so metrics.json must be the
    last file renamed into place. It was the second: a kill after it left a stage without its
    metrics.md, config.json and scores_hist.png, skipped on every rerun. The kill is simulated by an
    exception after ``renamed`` renames (the temporaries it leaves do not matter here)."""
    import os

    import clip_smot.common.files as files

    class Killed(BaseException):
        pass

    real, done = os.replace, []

    def replace_then_die(src, dst):
        if len(done) == renamed:
            raise Killed
        real(src, dst)
        done.append(os.path.basename(dst))

    monkeypatch.setattr(files.os, "replace", replace_then_die)
    out = tmp_path / "eval"
    with pytest.raises(Killed):
        write_reports(out, {"msp": np.array([0.9, 0.8])}, {"a": {"msp": np.array([0.1, 0.85])}},
                      files={"config.json": "{}\n"})
    assert "metrics.json" not in done  # (none of the 5 renames after it: every file is written before it)
    assert not (out / "metrics.json").exists()


def test_the_titles_of_a_one_set_histogram_stay_inside_the_figure(tmp_path):
    """One OOD set makes a figure 320 pixels wide: an evaluation's title ("Prompt prompt.safetensors
    (clip-smot-tiny, tiny.safetensors)") and a panel's of a 40-character set name ran past both
    edges, cut there. They wrap now: no text touches the PNG's left or right column."""
    from PIL import Image

    write_reports(tmp_path, {"mcm": np.linspace(0.3, 0.6, 20)}, {"n" * 40: {"mcm": np.linspace(0.1, 0.5, 9)}},
                  title="Prompt prompt.safetensors (clip-smot-tiny, tiny.safetensors)")
    a = np.asarray(Image.open(tmp_path / "scores_hist.png").convert("L"))
    assert a.shape[1] == 320
    assert (a[:, 0] < 128).sum() == 0 and (a[:, -1] < 128).sum() == 0
