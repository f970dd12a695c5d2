"""Correlations, the trend fit and the recommendation on synthetic sweeps with known trends."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from synthetic import Trial, make_sweep, noise_trials, trend_trials

from mtft_ray.analysis.fetch import open_sweep
from mtft_ray.analysis.importance import param_importance
from mtft_ray.analysis.load import load_sweep_dir
from mtft_ray.analysis.recommend import recommend
from mtft_ray.analysis.stats import correlations, fit_trend, spearman, spearman_ci

TREND_SPACE = {"selection.strategy": {"choice": ["random", "selected", "no_diversity"]}, "tasks.M": {"int": [25, 400]}}


def load(path):
    with open_sweep(str(path)) as loc:
        return load_sweep_dir(loc)


@pytest.fixture(scope="module")
def trend(tmp_path_factory):
    return load(make_sweep(tmp_path_factory.mktemp("trend") / "sw", trend_trials(), space=TREND_SPACE))


def test_spearman_matches_known_values():
    x = np.arange(8.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)  # ties: average ranks
    assert math.isnan(spearman(x, np.ones(8))) and math.isnan(spearman([1, 2], [2, 1]))


def test_shuffled_fits_are_rarely_as_good_as_the_noise_that_beats_the_mean():
    """Under pure noise, the permutation p-value is about uniform: p < 0.05 in about 5% of sweeps."""
    p = [fit_trend(pd.DataFrame({"trial_id": [str(i) for i in range(len(ts))], "Mm": [t.M * t.m for t in ts],
                                 "diversity": [t.diversity for t in ts], "acc_1shot": [t.acc for t in ts]}),
                   "acc_1shot", n_perm=49, seed=s).perm_p
         for s, ts in enumerate(noise_trials(seed=seed) for seed in range(60))]
    assert 0.0 <= np.mean(np.array(p) < 0.05) <= 0.15 and 0.35 < np.mean(p) < 0.65


def test_bootstrap_ci_is_seeded_and_honest_about_few_trials():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    a, b = spearman_ci(x, y, label="x", seed=0), spearman_ci(x, y, label="x", seed=0)
    assert (a.lo, a.hi) == (b.lo, b.hi) and a.lo < a.rho < a.hi and a.lo > 0
    few = spearman_ci([1, 2, 3, 4], [1, 2, 4, 3], label="x")
    assert few.lo < 0 < few.hi and "few trials" in few.note  # 4 trials cannot tell the sign
    const = spearman_ci([1, 1, 1, 1], [1, 2, 3, 4], label="x")
    assert math.isnan(const.rho) and const.note == "constant across the trials"


def test_correlations_recover_the_trend(trend):
    corr = {c.label: c for c in correlations(trend.finished(), trend.metric)}
    assert corr["M·m"].rho > 0.4 and corr["M·m"].lo > 0  # acc rises with M·m ...
    assert corr["diversity"].rho > 0.4 and corr["diversity"].lo > 0  # ... and with diversity
    assert corr["consistency"].lo < 0 < corr["consistency"].hi  # consistency is unrelated noise
    assert corr["M·m"].n == corr["diversity"].n == 24


def test_fit_recovers_slopes_and_beats_the_mean_on_held_out_trials(trend):
    fit = fit_trend(trend.finished(), trend.metric)
    assert fit.predictors == ["log_Mm", "diversity", "consistency"] and not fit.dropped
    assert abs(fit.coef["log_Mm"] - 0.03) < 3 * fit.se["log_Mm"] and fit.significant("log_Mm")
    assert abs(fit.coef["diversity"] - 0.04) < 3 * fit.se["diversity"] and fit.significant("diversity")
    assert not fit.significant("consistency")
    assert fit.loo_r2 > 0.9 and fit.loo_mae < fit.base_mae / 3 and fit.beats_baseline
    assert fit.perm_p == pytest.approx(1 / 200)  # no shuffled fit comes close
    assert len(fit.held_out) == fit.n == 24


def test_recommendation_follows_the_fitted_slope(trend):
    fit = fit_trend(trend.finished(), trend.metric)
    rec = recommend(trend, fit)
    best = trend.finished().sort_values("acc_1shot").iloc[-1]
    assert rec.basis == "fit" and rec.params["tasks.M"] == 400  # from 200, doubled inside the searched [25, 400]
    anchor = trend.trials.set_index("trial_id").loc[rec.anchor]
    expected = anchor["acc_1shot"] + fit.coef["log_Mm"] * math.log(400 / anchor["M"])
    assert rec.predicted == pytest.approx(expected) and rec.plus_minus > 0
    assert rec.params["selection.strategy"] in {"random", "selected", "no_diversity"}
    assert best["M"] == 200 and any("largest tasks.M" in m for m in rec.more)
    assert "Next run for target lao" in rec.summary and "tasks.M=400" in rec.summary


def test_next_size_goes_just_beyond_a_range_that_is_used_up(tmp_path):
    trials = [Trial({"tasks.M": M}, acc=0.6 + 0.02 * math.log(M) + 0.001 * (i % 3), M=M, diversity=-5 + 0.1 * (i % 2))
              for i, M in enumerate([25, 50, 100, 25, 50, 100, 25, 50, 100])]
    data = load(make_sweep(tmp_path / "sw", trials))
    rec = recommend(data, fit_trend(data.finished(), data.metric))
    assert rec.basis == "fit" and rec.params == {"tasks.M": 200}  # 2 x the largest M tried, not more


def test_no_trend_falls_back_to_the_best_observed_config(tmp_path):
    data = load(make_sweep(tmp_path / "sw", noise_trials(seed=0)))
    fit = fit_trend(data.finished(), data.metric)
    assert fit.ok and not fit.beats_baseline and fit.loo_r2 < 0 and fit.perm_p > 0.5
    rec = recommend(data, fit)
    best = data.finished().sort_values("acc_1shot").iloc[-1]
    assert rec.basis == "best observed" and rec.anchor == best["trial_id"]
    assert rec.params == {"tasks.M": best["tasks.M"], "finetune.lr": best["finetune.lr"]}
    assert "no better than the mean" in rec.reasons[0] and "run more trials" in rec.summary


def test_constant_missing_and_collinear_predictors_are_dropped_with_reasons():
    base = {"trial_id": [f"t{i}" for i in range(8)], "Mm": [625, 1250, 2500, 5000] * 2,
            "acc_1shot": [0.70, 0.72, 0.74, 0.77, 0.71, 0.73, 0.74, 0.76]}
    fit = fit_trend(pd.DataFrame({**base, "diversity": [-5.0] * 8, "consistency": [None] * 8}), "acc_1shot")
    assert fit.predictors == ["log_Mm"]
    assert fit.dropped["diversity"].startswith("constant") and "not reported" in fit.dropped["consistency"]
    div = list(np.log(base["Mm"]) * 2 + 1)  # an exact function of log(M·m)
    fit = fit_trend(pd.DataFrame({**base, "diversity": div, "consistency": [0.9, 0.91, 0.92, 0.93] + [None] * 4}),
                    "acc_1shot")
    assert "collinear with log(M·m)" in fit.dropped["diversity"] and "only 4 trials" in fit.dropped["consistency"]
    few = fit_trend(pd.DataFrame({k: v[:3] for k, v in base.items()}), "acc_1shot")
    assert not few.ok and "need ≥ 4" in few.dropped["log_Mm"]


def test_optuna_importance_from_the_search_space(trend, tmp_path):
    imp = param_importance(trend.finished(), trend.space, trend.metric, trend.mode)
    assert set(imp.values) == {"selection.strategy", "tasks.M"} and sum(imp.values.values()) == pytest.approx(1)
    assert imp.values["tasks.M"] > 2 * imp.values["selection.strategy"]  # the trend is in M; strategy is noise
    one = load(make_sweep(tmp_path / "one", [Trial({"tasks.M": M}, M=M) for M in (25, 50, 100, 200)]))
    assert "≥ 2 searched parameters that vary; 1 do (tasks.M)" in param_importance(
        one.finished(), one.space, one.metric, one.mode).note
    assert "needs ≥ 4 finished trials" in param_importance(
        one.finished().head(3), one.space, one.metric, one.mode).note


def test_inclusion_effects_with_known_means_and_unknown_flags():
    from mtft_ray.analysis.stats import inclusion_effects

    t = pd.DataFrame({"f": [True, False, True, False, None], "g": ["True", "False", "False", "False", "True"],
                      "acc_1shot": [0.8, 0.7, 0.9, 0.6, 0.1]})
    f, g = inclusion_effects(t, {"f": "a", "g": "b"}, "acc_1shot")
    assert (f.n_in, f.n_out) == (2, 2) and f.diff == pytest.approx(0.2)  # the trial without a flag is neither
    # each side's standard error: var(0.8, 0.9)/2 and var(0.7, 0.6)/2
    assert f.half_width == pytest.approx(1.96 * (0.005 / 2 + 0.005 / 2) ** 0.5)
    assert (g.n_in, g.n_out) == (2, 3) and g.mean_in == pytest.approx(0.45) and g.mean_out == pytest.approx((0.7 + 0.9 + 0.6) / 3)
