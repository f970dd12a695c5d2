"""The Pareto front: known by construction (a curve plus dominated points, ties, NaNs, max/min mixes,
three objectives), against a brute-force reference, and in the analysis of a multi-objective sweep."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from synthetic import Trial, make_sweep, trend_trials

from mtft_ray.analysis import analyze, summary
from mtft_ray.analysis.pareto import pareto_front, pareto_mask
from mtft_ray.errors import MtftError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OBJ, MODES = ["acc", "hours"], ["max", "min"]


def brute_front(rows: list[tuple], modes: list[str]) -> set[int]:
    """Indices of the rows no other row dominates, written the slow, obvious way."""
    better = lambda a, b, mode: a > b if mode == "max" else a < b
    ok = [i for i, r in enumerate(rows) if all(isinstance(v, float) and np.isfinite(v) for v in r)]
    front = set()
    for i in ok:
        dominated = any(all(rows[j][k] == rows[i][k] or better(rows[j][k], rows[i][k], m) for k, m in enumerate(modes))
                        and any(better(rows[j][k], rows[i][k], m) for k, m in enumerate(modes)) for j in ok if j != i)
        if not dominated:
            front.add(i)
    return front


def on(df: pd.DataFrame, metrics: list[str], modes: list[str]) -> set:
    return set(df.index[pareto_mask(df, metrics, modes)])


def curve_frame() -> tuple[pd.DataFrame, set[int]]:
    """acc = 1 − exp(−hours) at four costs (the front), each point also 0.3 h dearer and 0.05 worse
    (dominated), a tie of a front point (on the front too), a point as accurate as a front point but
    dearer (dominated: equal is not better), and NaN rows that would dominate everything."""
    hours = [0.5, 1.0, 2.0, 4.0]
    rows = [(1 - np.exp(-h), h) for h in hours]
    front = set(range(4))
    rows += [(a - 0.05, h + 0.3) for a, h in rows[:4]]
    rows.append(rows[2])  # a tie: index 8
    front.add(8)
    rows.append((rows[1][0], rows[1][1] + 0.01))  # as accurate as a front point, dearer: dominated
    rows += [(np.nan, 0.01), (0.999, np.nan), (np.nan, np.nan)]
    df = pd.DataFrame(rows, columns=OBJ, index=[f"t{i}" for i in range(len(rows))])  # not a RangeIndex
    return df, {f"t{i}" for i in front}


def test_front_of_a_known_curve_with_ties_and_nans():
    df, front = curve_frame()
    mask = pareto_mask(df, OBJ, MODES)
    assert set(df.index[mask]) == front
    assert mask.index.equals(df.index) and mask.dtype == bool
    ordered = pareto_front(df, OBJ, MODES)
    assert list(ordered.index) == ["t3", "t2", "t8", "t1", "t0"]  # best accuracy first; the tie in order


def test_flipping_a_mode_changes_the_front():
    df, _ = curve_frame()
    # minimise both: the cheapest point, and the worst one (t0's dearer, worse copy)
    assert on(df, OBJ, ["min", "min"]) == {"t0", "t4"}
    # maximise both: the most accurate point, and the dearest one (t3's dearer, worse copy)
    assert on(df, OBJ, ["max", "max"]) == {"t3", "t7"}
    # one objective: the best; a NaN counts only in an objective used (t11 lacks hours, t10 accuracy)
    assert on(df, ["acc"], ["max"]) == {"t11"} and on(df, ["hours"], ["min"]) == {"t10"}
    assert on(df.drop(["t11"]), ["acc"], ["max"]) == {"t3"}
    assert on(df.loc[["t2", "t8", "t1"]], ["acc"], ["max"]) == {"t2", "t8"}  # a tie


def test_a_third_objective_rescues_a_dominated_point():
    df = pd.DataFrame({"acc": [0.9, 0.8, 0.7, 0.7], "hours": [1.0, 2.0, 3.0, 3.0], "div": [0.0, 0.0, 1.0, 0.5]})
    assert pareto_mask(df, ["acc", "hours"], ["max", "min"]).tolist() == [True, False, False, False]
    assert pareto_mask(df, ["acc", "hours", "div"], ["max", "min", "max"]).tolist() == [True, False, True, False]


@pytest.mark.parametrize("k", [2, 3])
def test_matches_a_brute_force_front_on_tied_random_points(k):
    rng = np.random.default_rng(k)
    for trial in range(20):
        values = rng.integers(0, 4, (25, k)).astype(float)  # a 4-level grid: many ties
        values[rng.random((25, k)) < 0.05] = np.nan
        modes = list(rng.choice(["max", "min"], k))
        df = pd.DataFrame(values, columns=[f"o{i}" for i in range(k)])
        got = set(np.flatnonzero(pareto_mask(df, list(df.columns), modes)))
        assert got == brute_front([tuple(map(float, r)) for r in values], modes), (trial, modes)
        assert got  # a non-empty set of complete points always has a front


def test_missing_column_empty_frame_and_bad_modes():
    df = pd.DataFrame({"acc": [0.5, 0.6]})
    assert not pareto_mask(df, ["acc", "gpu_hours"], MODES).any()  # nobody reports gpu_hours
    assert pareto_front(df.iloc[0:0], ["acc"], ["max"]).empty
    with pytest.raises(MtftError, match="one mode per metric"):
        pareto_mask(df, ["acc", "acc2"], ["max"])
    with pytest.raises(MtftError, match="'max' or 'min'"):
        pareto_mask(df, ["acc"], ["maximize"])


# a synthetic 2-objective sweep: accuracy up, gpu_hours down; the front by construction
SWEEP = [  # (acc, gpu_hours, status)
    (0.70, 0.10, "finished"),   # 00000 front (cheapest)
    (0.75, 0.20, "finished"),   # 00001 front
    (0.74, 0.30, "finished"),   # 00002 dominated by 00001
    (0.80, 0.50, "finished"),   # 00003 front (most accurate)
    (0.80, 0.60, "finished"),   # 00004 dominated by 00003 (equal accuracy, dearer)
    (0.75, 0.20, "finished"),   # 00005 front: ties 00001
    (0.95, None, "finished"),   # 00006 no gpu_hours: left out, though the most accurate
    (0.99, 0.01, "errored"),    # 00007 never finished
]
FRONT = {"00000", "00001", "00003", "00005"}


def multi_sweep(root, metric=("acc_1shot", "gpu_hours"), mode=("max", "min")):
    trials = [Trial({"tasks.M": 10 * (i + 1)}, acc=acc, M=10 * (i + 1), status=status,
                    extra={} if gpu is None else {"gpu_hours": gpu, "cpu_hours": 2 * gpu, "seconds": 3600 * gpu})
              for i, (acc, gpu, status) in enumerate(SWEEP)]
    return make_sweep(root, trials, metric=list(metric), mode=list(mode), name="multi")


def section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_ids(text: str) -> list[str]:
    return [line.split("|")[1].strip() for line in text.splitlines()
            if line.startswith("| ") and re.fullmatch(r"\d{5}", line.split("|")[1].strip())]


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    return analyze(str(multi_sweep(tmp_path_factory.mktemp("multi") / "sw")))


def test_analysis_of_a_two_objective_sweep_draws_and_lists_the_front(multi):
    d = multi.data
    assert d.metrics == ["acc_1shot", "gpu_hours"] and d.modes == ["max", "min"]
    assert (d.metric, d.mode) == ("acc_1shot", "max")  # the primary, for everything single-metric
    assert {str(t).rsplit("_", 1)[-1] for t in multi.front["trial_id"]} == FRONT
    png = (multi.out / "pareto.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000 and "pareto.png" not in multi.skipped
    md = (multi.out / "report.md").read_text()
    assert "metrics `acc_1shot` (max), `gpu_hours` (min)" in md
    pareto = section(md, "Pareto front")
    assert set(table_ids(pareto)) == FRONT and len(table_ids(pareto)) == len(FRONT)
    assert table_ids(pareto)[0] == "00003"  # best accuracy first
    assert "4 of 6 finished trials are on the Pareto front" in pareto
    assert "Left out: 1 finished trial(s) without every objective" in pareto
    row = next(line for line in pareto.splitlines() if line.startswith("| 00003 "))
    assert "80.0 % ± 1.0" in row and "| 0.5 |" in row  # the accuracy with its CI, gpu_hours as is
    assert "![Pareto front](pareto.png)" in md and "## Best configuration by acc_1shot" in md
    head = next(line for line in section(md, "Trials").splitlines() if line.startswith("| trial |"))
    assert "| acc_1shot ± CI | gpu_hours |" in head  # the trials table shows every objective
    text = summary(multi)
    assert "metrics acc_1shot (max), gpu_hours (min)" in text
    front_lines = [x for x in text.splitlines() if re.match(r"  \d{5}  tasks\.M=", x)]
    assert {x.split()[0] for x in front_lines} == FRONT
    assert "gpu_hours 0.1" in text and "acc_1shot 70.0 % ± 1.0" in text
    csv = pd.read_csv(multi.out / "trials.csv")
    assert list(csv["gpu_hours"].isna()) == [False] * 6 + [True, True]  # the objective is a column


def test_three_objectives_draw_pairs_and_minimising_accuracy_turns_the_front_around(tmp_path):
    a = analyze(str(multi_sweep(tmp_path / "three", ("acc_1shot", "gpu_hours", "cpu_hours"), ("max", "min", "min"))))
    assert {str(t).rsplit("_", 1)[-1] for t in a.front["trial_id"]} == FRONT  # cpu_hours = 2·gpu_hours: no change
    assert (a.out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    b = analyze(str(multi_sweep(tmp_path / "flip", ("acc_1shot", "gpu_hours"), ("min", "max"))))
    assert {str(t).rsplit("_", 1)[-1] for t in b.front["trial_id"]} == {"00000", "00002", "00004"}


def test_a_single_objective_sweep_has_no_pareto_output(tmp_path):
    a = analyze(str(make_sweep(tmp_path / "sw", trend_trials(8))))
    assert a.front is None and not (a.out / "pareto.png").exists() and "pareto.png" not in a.skipped
    md = (a.out / "report.md").read_text()
    assert "Pareto" not in md and "metric `acc_1shot` (max)" in md and "## Best configuration\n" in md
    assert "pareto" not in summary(a)


def test_brute_force_reference_agrees_on_the_curve():
    """The reference itself, on the constructed case (so its agreement above means something)."""
    df, front = curve_frame()
    rows = [tuple(map(float, r)) for r in df.to_numpy()]
    assert {df.index[i] for i in brute_front(rows, MODES)} == front
