"""The written analysis: tables, every plot as a valid PNG, report.md / report.html, and safe rewrites."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd
import pytest
from synthetic import Trial, make_sweep, noise_trials, trend_trials

from mtft_ray.analysis import analyze, summary
from mtft_ray.analysis.plots import CAPTIONS
from mtft_ray.errors import MtftError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = sorted(set(CAPTIONS) - {"subsets.png", "pareto.png"})  # only for sweeps that search a subset,
# and for multi-objective sweeps
TREND_SPACE = {"selection.strategy": {"choice": ["random", "selected", "no_diversity"]}, "tasks.M": {"int": [25, 400]}}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def trend_analysis(tmp_path_factory):
    root = make_sweep(tmp_path_factory.mktemp("trend") / "sw",
                      trend_trials() + [Trial({"selection.strategy": "selected", "tasks.M": 50}, status="errored")],
                      space=TREND_SPACE)
    return analyze(str(root))


def test_every_file_is_written(trend_analysis):
    out = trend_analysis.out
    assert out == trend_analysis.data.location.local / "analysis"  # default: PATH/analysis
    names = {p.name for p in trend_analysis.files}
    assert names == {"trials.csv", "trials.parquet", "report.md", "report.html", *PLOTS}
    assert trend_analysis.skipped == {"subsets.png": "the sweep searches no subset (e.g. tasks.domains: {subset: [...]})"}
    for name in PLOTS:
        w, h = png_size(out / name)
        assert w > 500 and h > 200
    assert trend_analysis.files[-1].name == "report.md"  # written last


def test_tables_have_one_row_per_trial(trend_analysis):
    out = trend_analysis.out
    csv, parquet = pd.read_csv(out / "trials.csv"), pd.read_parquet(out / "trials.parquet")
    assert len(csv) == len(parquet) == 25
    assert csv["status"].value_counts().to_dict() == {"finished": 24, "errored": 1}
    for col in ("trial_id", "selection.strategy", "tasks.M", "M", "m", "Mm", "subset", "diversity", "consistency",
                "acc_1shot", "ci95_1shot", "val_acc", "seconds", "images_per_s", "checkpoint", "started_at", "note"):
        assert col in parquet.columns, col
    assert parquet["checkpoint"].dropna().map(lambda p: Path(p).is_file()).all()


def test_report_content(trend_analysis):
    md = (trend_analysis.out / "report.md").read_text()
    for heading in ("# Sweep analysis: synthetic", "## Best configuration", "## Recommendation for the next run",
                    "## Correlations", "## Trend fit", "## Trials", "## Plots", "## Files"):
        assert heading in md, heading
    best = trend_analysis.data.finished().sort_values("acc_1shot").iloc[-1]
    assert f"| trial | {best['trial_id']} |" in md and best["checkpoint"] in md
    assert re.search(r"\| M·m \| 24 \| \+0\.\d\d \| \[\+0\.\d\d, \+\d\.\d\d\] \|", md)
    assert "The fit beats that baseline" in md and "tasks.M=400" in md
    assert "Trials: 25 (24 finished, 1 errored)" in md and "exceeds the classes" in md
    for name in PLOTS:
        assert f"]({name})" in md
    html = (trend_analysis.out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == len(PLOTS) and all(base64.b64decode(i)[:8] == PNG_MAGIC for i in images)


def test_summary_lines(trend_analysis):
    text = summary(trend_analysis)
    assert text.startswith("synthetic: 25 trials (24 finished, 1 errored); sweep ended")
    for needle in ("best:", "checkpoint:", "correlation: M·m +", "fit:         acc_1shot ~ log(M·m) + diversity",
                   "next:        selection.strategy=", "report.md"):
        assert needle in text, needle


def test_plots_that_cannot_be_drawn_are_listed_with_the_reason(tmp_path):
    trials = [Trial({"tasks.M": 100}, acc=0.7 + 0.01 * i, diversity=None, consistency=None) for i in range(3)]
    a = analyze(str(make_sweep(tmp_path / "sw", trials)), tmp_path / "out")
    assert set(a.skipped) == {"size.png", "diversity.png", "strategies.png", "importance.png", "fit.png",
                              "subsets.png"}
    assert {p.name for p in a.files} == {"trials.csv", "trials.parquet", "timeline.png", "report.html", "report.md"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Plots not drawn:" in md and "every finished trial has M=100 and m=25" in md
    assert "needs ≥ 4 finished trials, the sweep has 3" in md


def test_rerun_replaces_stale_outputs(tmp_path):
    root = make_sweep(tmp_path / "sw", noise_trials(seed=0))
    out = tmp_path / "out"
    (out).mkdir()
    (out / "strategies.png").write_bytes(b"stale")  # from an earlier analysis of another sweep
    (out / "notes.txt").write_text("the user's own file")
    a = analyze(str(root), out)
    assert "strategies.png" in a.skipped and not (out / "strategies.png").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"


def test_a_crash_while_writing_leaves_no_report(tmp_path, monkeypatch):
    root = make_sweep(tmp_path / "sw", noise_trials(seed=0))
    out = tmp_path / "out"
    analyze(str(root), out)
    assert (out / "report.md").is_file()
    real = Path.replace

    def failing(self, target):
        if Path(target).name == "timeline.png":
            raise OSError("disk full")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        analyze(str(root), out)
    assert not (out / "report.md").exists() and not (out / "report.html").exists()


def test_running_sweep_with_partial_trials(tmp_path):
    trials = [Trial({"tasks.M": M}, acc=0.7 + 0.0001 * M, M=M) for M in (25, 50, 100, 200)] + \
             [Trial({"tasks.M": 400}, status="running"), Trial({"tasks.M": 400}, status="truncated")]
    a = analyze(str(make_sweep(tmp_path / "sw", trials, ended=False)), tmp_path / "out")
    assert a.data.trials["status"].value_counts().to_dict() == {"finished": 4, "running": 2}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "still running" in md and "result.json line 3 is truncated" in md
    assert "2 report(s) so far" in md


def test_all_trials_errored_is_reported(tmp_path):
    trials = [Trial({"tasks.M": M}, status="errored") for M in (25, 50)]
    a = analyze(str(make_sweep(tmp_path / "sw", trials)), tmp_path / "out")
    assert a.recommendation is None and a.data.finished().empty
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Trials: 2 (2 errored)" in md and md.count("exceeds the classes") == 2
    assert "No trial has finished" in md


def test_a_sweep_without_trials_is_an_error(tmp_path):
    root = make_sweep(tmp_path / "sw", [])
    with pytest.raises(MtftError, match="has no trials yet"):
        analyze(str(root))


def test_searched_domain_subsets_get_include_columns_effects_and_importance(tmp_path):
    """Known effects: domain a adds 5 points, c costs 3, b nothing; the analysis recovers them."""
    from synthetic import subset_trials

    space = {"tasks.domains": {"subset": ["a", "b", "c"]}, "tasks.M": {"choice": [50, 100]}}
    a = analyze(str(make_sweep(tmp_path / "sw", subset_trials(), space=space)))
    t = pd.read_parquet(a.out / "trials.parquet")
    assert set(t["tasks.domains"]) == {"a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"}
    for x in "abc":
        assert (t[f"tasks.domains[{x}]"] == t["tasks.domains"].str.split("+").map(lambda s, x=x: x in s)).all()
    md = (a.out / "report.md").read_text()
    assert "### `tasks.domains`: with and without each item" in md
    rows = {r[0]: r for r in (line.strip("| ").split(" | ") for line in md.splitlines())
            if r[0] in ("a", "b", "c") and len(r) == 7}
    assert list(rows) == ["a", "b", "c"]  # largest gain first
    diff = {k: float(r[5]) for k, r in rows.items()}
    half = {k: float(r[6].removeprefix("± ")) for k, r in rows.items()}
    assert diff["a"] == pytest.approx(5, abs=1.0) and diff["c"] == pytest.approx(-3, abs=1.0)
    assert abs(diff["b"]) < half["b"] and abs(diff["a"]) > half["a"] and abs(diff["c"]) > half["c"]
    assert png_size(a.out / "subsets.png")[0] > 500 and "subsets.png" not in a.skipped
    # importance judges the subset item by item: a and c matter, b does not
    imp = a.importance.values
    assert set(imp) == {"tasks.domains[a]", "tasks.domains[b]", "tasks.domains[c]", "tasks.M"}
    assert min(imp["tasks.domains[a]"], imp["tasks.domains[c]"]) > 3 * imp["tasks.domains[b]"]
    # the recommendation names a subset as an override takes it: with a, without c
    rec = a.recommendation.params["tasks.domains"]
    assert rec.startswith("[") and "a" in rec and "c" not in rec


def test_a_trial_warning_reaches_the_table_the_report_and_the_summary(tmp_path):
    warning = ("multitask: no finetuned epoch beat the pretrained weights on validation (pretrained 41.00%, "
               "best finetuned 37.50% at epoch 2): kept the pretrained weights")
    trials = trend_trials(6) + [Trial({"selection.strategy": "random", "tasks.M": 30}, extra={"warnings": warning})]
    a = analyze(str(make_sweep(tmp_path / "sw", trials, space=TREND_SPACE)))
    table = pd.read_csv(a.out / "trials.csv")
    assert table["warnings"].notna().sum() == 1 and table["warnings"].dropna().iloc[0] == warning
    report = (a.out / "report.md").read_text()
    assert "**Warnings** (1 of 7 trials):" in report and warning in report
    assert any(line.startswith("WARNING:") and warning in line for line in summary(a).splitlines())
