"""How well a screen ranked a sweep: Spearman of each proxy with the metric on constructed trials."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from mtft_ray.analysis.screening import find_screen, parse_subset, read_screen_file, screening_agreement
from mtft_ray.errors import MtftError

ITEMS = ["a", "b", "c", "d", "e"]
SUBSETS = [list(c) for k in range(1, 6) for c in itertools.combinations(ITEMS, k)]  # 31


def make_screen(values: dict[str, np.ndarray]) -> dict:
    """A screen document over SUBSETS with the given proxy values, ranked by the first proxy."""
    first = next(iter(values.values()))
    order = np.argsort(-first, kind="stable")
    rank = np.empty(len(first), int)
    rank[order] = np.arange(1, len(first) + 1)
    rows = [{"subset": s, **{k: float(v[i]) for k, v in values.items()}, "combined": float(rank[i]),
             "rank": int(rank[i])} for i, s in enumerate(SUBSETS)]
    return {"key": "tasks.domains", "items": ITEMS, "rows": rows}


def trials_for(acc: np.ndarray, repeats: int = 1, noise: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = [{"tasks.domains": "+".join(s), "acc_1shot": a + noise * rng.standard_normal()}
            for _ in range(repeats) for s, a in zip(SUBSETS, acc)]
    return pd.DataFrame(rows)


def test_a_perfect_proxy_a_reversed_one_and_noise():
    rng = np.random.default_rng(0)
    acc = rng.uniform(0.5, 0.8, len(SUBSETS))
    screen = make_screen({"logme": 2 * acc + 1, "coverage": -acc, "proto_acc": rng.uniform(size=len(SUBSETS))})
    s = screening_agreement(trials_for(acc), screen, "acc_1shot", seed=0)
    c = {x.label: x for x in s.correlations}
    assert set(c) == {"logme", "coverage", "proto_acc", "combined"} and s.n == 31 and not s.unmatched
    assert c["logme"].rho == pytest.approx(1.0) and c["logme"].hi == pytest.approx(1.0) and c["logme"].lo > 0.8
    assert c["coverage"].rho == pytest.approx(-1.0) and c["coverage"].hi < -0.8
    assert c["proto_acc"].lo < 0 < c["proto_acc"].hi and abs(c["proto_acc"].rho) < 0.4  # independent: CI spans 0
    assert c["combined"].rho == pytest.approx(1.0)  # ranked by logme; the mean rank is negated (positive = good)
    # the pick: the screen's first is the finetuned best, nothing lost
    assert s.pick["finetuned_rank"] == 1 and s.pick["lost"] == 0.0 and s.pick["screen_rank_of_best"] == 1
    # seeded: the same seed repeats every interval (the CI is spearman_ci's: the wider of the
    # seeded bootstrap and the Fisher-z interval)
    again = screening_agreement(trials_for(acc), screen, "acc_1shot", seed=0).correlations
    assert again == s.correlations


def test_repeated_trials_are_averaged_per_subset_and_unscreened_subsets_counted():
    acc = np.linspace(0.5, 0.8, len(SUBSETS))
    screen = make_screen({"logme": acc.copy()})
    screen["rows"] = screen["rows"][:20]  # a sampled screen: 11 subsets were not scored
    trials = trials_for(acc, repeats=3, noise=0.001)  # noise far below the gaps: per-subset means keep the order
    s = screening_agreement(trials, screen, "acc_1shot")
    assert s.n == 20 and len(s.unmatched) == 11
    assert s.correlations[0].rho == pytest.approx(1.0) and s.correlations[0].n == 20
    lines = "\n".join(s.lines())
    assert "20 finetuned subsets of tasks.domains (11 not in the screen)" in lines and "logme +1.00" in lines


def test_the_pick_says_what_trusting_the_screen_would_cost():
    acc = np.linspace(0.5, 0.8, len(SUBSETS))  # the last subset (all five) is best
    screen = make_screen({"logme": -acc})  # the screen ranks it last and puts the worst first
    s = screening_agreement(trials_for(acc), screen, "acc_1shot")
    assert s.pick["subset"] == "a" and s.pick["finetuned_rank"] == 31 and s.pick["screen_rank_of_best"] == 31
    assert s.pick["lost"] == pytest.approx(0.3) and s.pick["best_subset"] == "a+b+c+d+e"
    low = screening_agreement(trials_for(acc), screen, "acc_1shot", mode="min")  # smaller is better
    assert low.pick["finetuned_rank"] == 1 and low.pick["lost"] == 0.0


def test_too_few_subsets_give_no_rho_but_say_why():
    screen = make_screen({"logme": np.arange(31.0)})
    s = screening_agreement(trials_for(np.arange(31.0)).iloc[:2], screen, "acc_1shot")
    assert s.n == 2 and np.isnan(s.correlations[0].rho) and "only 2 trial(s)" in s.correlations[0].note
    with pytest.raises(MtftError, match="no 'tasks.domains' or 'acc_5shot' column"):
        screening_agreement(trials_for(np.arange(31.0)), screen, "acc_5shot")


def test_parse_subset_reads_every_recorded_form():
    assert parse_subset("a+b") == parse_subset(["b", "a"]) == parse_subset('["a", "b"]') == frozenset("ab")
    assert parse_subset(None) is None and parse_subset(float("nan")) is None and parse_subset("[oops") is None


def test_find_screen_order_and_read_errors(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    recorded = tmp_path / "elsewhere.json"
    recorded.write_text(json.dumps(make_screen({"logme": np.arange(31.0)})))
    space = {"tasks.domains": {"choice": [["a"]], "screen": str(recorded), "top": 1}}
    assert find_screen(sweep, space) == recorded  # from sweep.json's resolved screen entry
    (sweep / "screen.json").write_text(recorded.read_text())
    assert find_screen(sweep, space) == sweep / "screen.json"  # the sweep folder's own first
    assert find_screen(sweep, space, explicit=recorded) == recorded  # --screen wins
    assert find_screen(tmp_path / "none", {}) is None
    with pytest.raises(MtftError, match="--screen .*missing.json: no such file"):
        find_screen(sweep, space, explicit=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"rows": 3}')
    with pytest.raises(MtftError, match="is not a screen file"):
        read_screen_file(tmp_path / "bad.json")
    assert read_screen_file(recorded)["key"] == "tasks.domains"
