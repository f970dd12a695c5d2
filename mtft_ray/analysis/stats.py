"""Rank correlations with bootstrap CIs, and the trend fit of accuracy on log(M·m), diversity, consistency.

The fit is ordinary least squares over the finished trials. Its quality is judged on held-out
trials (leave-one-out) against a mean-only baseline, because a handful of trials fits almost
anything in-sample. Predictors that are missing, constant or collinear across the trials, or
that the trials are too few to carry, are dropped, and the report says which and why.

Example:
    >>> import numpy as np
    >>> x = np.arange(10.0)
    >>> round(spearman(x, x ** 2), 3)
    1.0
    >>> c = spearman_ci(x, -x, label="x")
    >>> round(c.rho, 3), c.n
    (-1.0, 10)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

PREDICTORS = {"log_Mm": "log(M·m)", "diversity": "diversity", "consistency": "consistency"}
MIN_EXTRA_ROWS = 3  # a fit with p predictors needs p + 3 trials: every leave-one-out fit keeps a residual
COLLINEAR_R = 0.98
PERMUTATIONS = 199


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant or n < 3."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return math.nan
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho of the metric with one variable, with a percentile bootstrap CI.

    Attributes:
        label: the variable as shown to people.
        n: trials with both values.
        rho: the rank correlation (NaN when undefined).
        lo, hi: its confidence interval (NaN when undefined), see :func:`spearman_ci`.
        note: why rho or its CI is missing, if it is.
    """

    label: str
    n: int
    rho: float
    lo: float
    hi: float
    note: str = ""


def spearman_ci(x, y, *, label: str, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Correlation:
    """Spearman's rho of paired finite values and its CI.

    The CI is the wider of a seeded percentile bootstrap over trials and the Fisher-z interval:
    a bootstrap over a handful of trials (few distinct values) is far too narrow on its own.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    rho = spearman(x, y)
    if math.isnan(rho):
        why = f"only {n} trial(s) with a value" if n < 3 else "constant across the trials"
        return Correlation(label, n, math.nan, math.nan, math.nan, why)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    rx, ry = pd.DataFrame(x[idx]).rank(axis=1).to_numpy(), pd.DataFrame(y[idx]).rank(axis=1).to_numpy()
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    denom = np.sqrt((rx ** 2).sum(1) * (ry ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (rx * ry).sum(1) / denom
    boot = boot[np.isfinite(boot)]
    lo, hi = _fisher_z(rho, n, level)
    if len(boot) >= n_boot / 2:
        b_lo, b_hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
        lo, hi = min(lo, float(b_lo)), max(hi, float(b_hi))
    return Correlation(label, n, rho, lo, hi, "few trials: indicative only" if n < 10 else "")


def _fisher_z(rho: float, n: int, level: float) -> tuple[float, float]:
    """Fisher-z interval of a Spearman rho with Bonett & Wright's (2000) standard error; [-1, 1] for n <= 3."""
    if n <= 3:
        return -1.0, 1.0
    z = math.atanh(max(-0.9999, min(0.9999, rho)))
    half = float(NormalDist().inv_cdf((1 + level) / 2)) * math.sqrt((1 + rho ** 2 / 2) / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


def design(trials: pd.DataFrame) -> pd.DataFrame:
    """The fit's candidate predictors per trial: ``log_Mm`` (natural log), ``diversity``, ``consistency``."""
    mm = pd.to_numeric(trials.get("Mm"), errors="coerce")
    return pd.DataFrame({"log_Mm": np.log(mm.where(mm > 0)),
                         "diversity": pd.to_numeric(trials.get("diversity"), errors="coerce"),
                         "consistency": pd.to_numeric(trials.get("consistency"), errors="coerce")},
                        index=trials.index)


def correlations(trials: pd.DataFrame, metric: str, seed: int = 0) -> list[Correlation]:
    """Spearman's rho (bootstrap 95% CI) of ``metric`` with diversity, consistency and M·m."""
    y = pd.to_numeric(trials[metric], errors="coerce").to_numpy()
    x = design(trials)
    return [spearman_ci(x[k].to_numpy(), y, label="M·m" if k == "log_Mm" else label, seed=seed)
            for k, label in PREDICTORS.items()]


@dataclass
class Fit:
    """OLS of the metric on the kept predictors, with leave-one-out quality.

    Attributes:
        predictors: kept predictor names (keys of :data:`PREDICTORS`).
        dropped: predictor → why it was left out.
        coef, se: intercept and slopes, and their standard errors (NaN without residual dof).
        n: trials fitted.
        r2: in-sample R².
        loo_r2: held-out R² against the mean-only baseline (1 - SSE_loo / SSE_mean_loo).
        loo_mae, base_mae: held-out mean absolute error of the fit and of the mean of the other trials.
        perm_p: share of fits to shuffled accuracies whose held-out R² is as good (small: not luck).
        observed, held_out: the fitted trials' metric and their leave-one-out predictions.
        trial_ids: the fitted trials.
    """

    predictors: list[str]
    dropped: dict[str, str]
    coef: dict[str, float] = field(default_factory=dict)
    se: dict[str, float] = field(default_factory=dict)
    n: int = 0
    r2: float = math.nan
    loo_r2: float = math.nan
    loo_mae: float = math.nan
    base_mae: float = math.nan
    perm_p: float = math.nan
    observed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    held_out: np.ndarray = field(default_factory=lambda: np.zeros(0))
    trial_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """A fit was made (at least one predictor, enough trials)."""
        return bool(self.predictors) and self.n > 0

    @property
    def beats_baseline(self) -> bool:
        """Held-out error below the mean-only baseline's."""
        return self.ok and self.loo_mae < self.base_mae and self.loo_r2 > 0

    def predict(self, x: dict[str, float]) -> float:
        return self.coef["intercept"] + sum(self.coef[p] * x[p] for p in self.predictors)

    def significant(self, p: str) -> bool:
        """The slope's ±2 SE interval excludes zero."""
        return p in self.predictors and math.isfinite(self.se[p]) and abs(self.coef[p]) > 2 * self.se[p]


def _choose(x: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """Predictors in priority order, each kept only if the trials can carry it (see module docstring)."""
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for p in PREDICTORS:
        col = x[p]
        if col.notna().sum() == 0:
            dropped[p] = "not reported by any finished trial"
            continue
        rows = x[[*kept, p]].dropna()
        need = len(kept) + 1 + MIN_EXTRA_ROWS
        if rows[p].nunique() < 2:
            dropped[p] = f"constant ({rows[p].iloc[0]:.4g}) across the {len(rows)} trials that report it"
        elif len(rows) < need:
            dropped[p] = f"only {len(rows)} trials report it with the other predictors; {len(kept) + 1} predictor(s) need ≥ {need}"
        else:
            r = {k: abs(float(np.corrcoef(rows[k], rows[p])[0, 1])) for k in kept}
            worst = max(r, key=r.get) if r else None
            if worst and r[worst] > COLLINEAR_R:
                dropped[p] = f"collinear with {PREDICTORS[worst]} across these trials (|r| = {r[worst]:.3f})"
            else:
                kept.append(p)
    return kept, dropped


def _loo(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out predictions of the OLS fit and of the mean, for each column of ``Y`` (n × k)."""
    n = len(X)
    A = np.column_stack([np.ones(n), X])
    held, base = np.empty_like(Y), np.empty_like(Y)
    for i in range(n):
        keep = np.arange(n) != i
        held[i] = A[i] @ np.linalg.lstsq(A[keep], Y[keep], rcond=None)[0]
        base[i] = Y[keep].mean(0)
    return held, base


def fit_trend(trials: pd.DataFrame, metric: str, n_perm: int = PERMUTATIONS, seed: int = 0) -> Fit:
    """Fit ``metric`` ~ log(M·m) + diversity + consistency on the given (finished) trials.

    Besides the held-out comparison with the mean, the held-out R² is compared with that of
    ``n_perm`` fits to shuffled accuracies (seeded): :attr:`Fit.perm_p` is the share that do as well.
    """
    x = design(trials)
    y = pd.to_numeric(trials[metric], errors="coerce")
    x, y = x[y.notna()], y[y.notna()]
    kept, dropped = _choose(x)
    if not kept:
        return Fit([], dropped)
    rows = x[kept].dropna()
    X, Y = rows.to_numpy(float), y.loc[rows.index].to_numpy(float)
    n, p = X.shape
    A = np.column_stack([np.ones(n), X])
    beta = np.linalg.lstsq(A, Y, rcond=None)[0]
    resid = Y - A @ beta
    dof = n - p - 1
    cov = (resid @ resid / dof) * np.linalg.pinv(A.T @ A) if dof > 0 else np.full((p + 1, p + 1), np.nan)
    rng = np.random.default_rng(seed)
    Ys = np.column_stack([Y, *(rng.permutation(Y) for _ in range(n_perm))])
    held, base = _loo(X, Ys)
    with np.errstate(invalid="ignore", divide="ignore"):
        loo_r2 = 1 - ((Ys - held) ** 2).sum(0) / ((Ys - base) ** 2).sum(0)
    names = ["intercept", *kept]
    sst = float(((Y - Y.mean()) ** 2).sum())
    return Fit(kept, dropped, dict(zip(names, map(float, beta))), dict(zip(names, map(float, np.sqrt(np.diag(cov))))),
               n, 1 - float(resid @ resid) / sst if sst else math.nan, float(loo_r2[0]),
               float(np.abs(Y - held[:, 0]).mean()), float(np.abs(Y - base[:, 0]).mean()),
               float((1 + np.sum(loo_r2[1:] >= loo_r2[0])) / (1 + n_perm)), Y, held[:, 0],
               [str(t) for t in trials.loc[rows.index, "trial_id"]])


@dataclass(frozen=True)
class Inclusion:
    """The metric of trials that include one item of a searched subset against those that leave it out.

    Attributes:
        item: the item (a source domain).
        n_in, n_out: finished trials with and without it.
        mean_in, mean_out: their mean metric (NaN without trials).
        diff: ``mean_in - mean_out``.
        half_width: half the 95% interval of ``diff`` (normal approximation with each side's
            standard error; NaN unless both sides have two or more trials).
    """

    item: str
    n_in: int
    n_out: int
    mean_in: float
    mean_out: float
    diff: float
    half_width: float


def inclusion_effects(trials: pd.DataFrame, flags: dict[str, str], metric: str) -> list[Inclusion]:
    """For each include-flag column (``flags``: column → item): the metric with the item and without it.

    A marginal comparison over the sweep's trials: other searched keys are not held fixed, so it
    reads as "trials with this domain scored ...", not as a causal effect.
    """
    y = pd.to_numeric(trials[metric], errors="coerce") if metric in trials else pd.Series(dtype=float)
    out = []
    for column, item in flags.items():
        if column not in trials:
            continue
        flag = trials[column].map(lambda v: bool(v) if isinstance(v, (bool, np.bool_))
                                  else {"True": True, "False": False}.get(v) if isinstance(v, str) else None)
        a, b = y[flag == True].dropna(), y[flag == False].dropna()  # noqa: E712 - None (not sampled) is neither
        mean = lambda s: float(s.mean()) if len(s) else math.nan
        se2 = lambda s: float(s.var(ddof=1)) / len(s) if len(s) >= 2 else math.nan
        half = 1.96 * math.sqrt(se2(a) + se2(b))
        out.append(Inclusion(item, len(a), len(b), mean(a), mean(b), mean(a) - mean(b), half))
    return out


def pct(v: float | None, digits: int = 1) -> str:
    """An accuracy as percent (``0.8162`` → ``81.6 %``); ``-`` when missing."""
    return "-" if v is None or not math.isfinite(float(v)) else f"{100 * float(v):.{digits}f} %"
