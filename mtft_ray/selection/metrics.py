"""Consistency and diversity of a set of finetuning tasks with respect to a target.

Everything works on cached features of the *pretrained* backbone (METHOD.md, "Task
selection"): ``features`` ``(n_samples, d)``, a task is a row of sample ids into it, the target
is its own ``(n_t, d)`` array.

Definitions (``t̄`` target mean feature, ``X`` the multiset of the selected tasks' sample
features, ``N = |X|``, ``μ`` its mean, ``S`` its covariance with divisor ``N``):

* **consistency** of a task: ``cos(mean feature of the task, t̄)``; 1 for a task whose mean
  points where the target's does.
* **Mahalanobis diversity**: ``-D`` with ``D = sqrt((t̄-μ)ᵀ Σ̂⁻¹ (t̄-μ))`` and
  ``Σ̂ = (1-α)·S + α·ν·I``, ``ν = tr(S)/d``, ``α`` the Ledoit–Wolf shrinkage intensity
  (Ledoit & Wolf 2004, the estimator scikit-learn's ``ledoit_wolf`` computes). The shrinkage
  keeps ``Σ̂`` positive definite when ``N < d``. Larger is better (0: the target mean sits at
  the selected tasks' mean); the sign flip keeps "larger = better coverage" for every measure.
* **coverage** (distribution-free): ``mean_i max(0, max_{x∈X} cos(t_i - c, x - c))`` over the
  target samples ``t_i``, with ``c`` a fixed centre (the pool's mean feature in greedy
  selection). It is in ``[0, 1]``, never decreases when a task is added, and reaches 1 only
  when every target sample has a selected sample pointing the same way. Centring removes the
  direction all backbone features share, which otherwise makes every cosine large.

:class:`SetStats` keeps running sums (count, sum, second moment ``Σ w x xᵀ`` and the few
fourth-moment sums Ledoit–Wolf needs), so adding a task costs ``O(m·d²)`` and never revisits
earlier tasks; reading the distance costs one ``d×d`` float32 Cholesky factorisation
(``d³/3`` flops) refined twice in float64 (agrees with a direct float64 computation to ~1e-7
relative). Sums are float64, products of one chunk float32.

Caveat: Ledoit–Wolf's ``α`` falls as ``N`` grows, so the estimate trusts low-variance
directions more and a target mean that is off the pool's distribution can look *farther* as
tasks are added. ``shrinkage=`` fixes ``α`` to compare.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> features = rng.standard_normal((200, 16)).astype(np.float32)
    >>> tasks = rng.integers(0, 200, size=(10, 20))
    >>> target = features[:5]
    >>> cons = consistency(task_means(features, tasks), target.mean(0))
    >>> stats = SetStats(features, target)
    >>> stats.add(tasks[int(cons.argmax())])
    >>> d, c = stats.mahalanobis_diversity(), stats.coverage()
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from mtft_ray.errors import MtftError

__all__ = ["task_means", "consistency", "SetStats", "mahalanobis_diversity", "coverage"]

_CHUNK = 4096  # rows gathered at a time when adding many samples
_TINY = float(np.finfo(np.float32).tiny)


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    """A float32 CPU tensor viewing ``x`` when it is already float32 and contiguous."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays: nothing writes to them
        return torch.from_numpy(arr)


def task_means(features: np.ndarray, task_samples: np.ndarray) -> np.ndarray:
    """Mean feature of every task.

    Args:
        features: ``(n_samples, d)`` float features.
        task_samples: ``(n_tasks, m)`` integer sample ids into ``features`` (assumed in range).

    Returns:
        ``(n_tasks, d)`` float32 means, computed without materialising ``(n_tasks, m, d)``.
    """
    weight = _as_tensor(features)
    ids = torch.from_numpy(np.ascontiguousarray(task_samples, dtype=np.int64))
    if ids.shape[0] == 0:
        return np.zeros((0, weight.shape[1]), np.float32)
    with torch.no_grad():
        return F.embedding_bag(ids, weight, mode="mean").numpy()


def consistency(task_means: np.ndarray, target_mean: np.ndarray) -> np.ndarray:
    """Cosine similarity of each task's mean feature with the target's mean feature.

    Args:
        task_means: ``(n_tasks, d)``.
        target_mean: ``(d,)``.

    Returns:
        ``(n_tasks,)`` float64 in ``[-1, 1]``; 0 where either vector is zero.
    """
    means = np.asarray(task_means, dtype=np.float64)
    t = np.asarray(target_mean, dtype=np.float64)
    denom = np.linalg.norm(means, axis=1) * np.linalg.norm(t)
    dots = means @ t
    return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm in place (zero rows stay zero)."""
    return x.div_(torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(_TINY))


class SetStats:
    """Running statistics of a growing multiset of selected sample features.

    Linear algebra runs in torch (one BLAS, one thread pool: ``torch.set_num_threads`` governs
    it); inputs and outputs are numpy.

    Args:
        features: ``(n_samples, d)`` pool features (viewed as float32, copied only if needed).
        target: ``(n_t, d)`` target features.
        center: ``(d,)`` centre for the coverage cosines; zeros (plain cosine) when omitted.
        shrinkage: fixed intensity α in ``[0, 1]`` instead of Ledoit–Wolf's (which falls as
            the set grows, so the distance also reflects how many samples were seen).
    """

    def __init__(self, features: np.ndarray, target: np.ndarray, center: np.ndarray | None = None,
                 shrinkage: float | None = None):
        if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
            raise MtftError(f"shrinkage must be in [0, 1] (or None for Ledoit-Wolf), got {shrinkage}")
        self._fixed_alpha = shrinkage
        self._f = _as_tensor(features)
        d = self._f.shape[1]
        self.dim = d
        tgt = _as_tensor(target)
        self._ref = tgt.mean(dim=0)  # moments are taken about t̄: then t̄ - μ = -mean
        self._center = torch.zeros(d) if center is None else _as_tensor(center).reshape(d).clone()
        self._target_dirs = _unit_rows(tgt - self._center)
        self._best_cos = torch.full((len(tgt),), -1.0)
        self.n = 0.0  # total weight (number of samples, with multiplicity)
        self._s = torch.zeros(d, dtype=torch.float64)  # Σ w (x - t̄)
        self._sa = 0.0  # Σ w a,  a = |x - t̄|²
        self._saa = 0.0  # Σ w a²
        self._sax = torch.zeros(d, dtype=torch.float64)  # Σ w a (x - t̄)
        self._C = torch.zeros(d, d, dtype=torch.float64)  # Σ w (x - t̄)(x - t̄)ᵀ
        self._W = torch.empty(d, d)  # float32 workspace for the factorisation
        self.shrinkage = float("nan")  # α of the last distance computed

    def add(self, ids: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Add samples (with multiplicity ``weights``, default 1 each) to the set."""
        ids = torch.from_numpy(np.asarray(ids, dtype=np.int64).ravel())
        w_all = None if weights is None else torch.from_numpy(np.asarray(weights, np.float64).ravel())
        with torch.no_grad():
            for lo in range(0, len(ids), _CHUNK):
                x = self._f.index_select(0, ids[lo : lo + _CHUNK])  # a copy
                self._add_rows(x, None if w_all is None else w_all[lo : lo + _CHUNK])

    def _add_rows(self, x: torch.Tensor, w: torch.Tensor | None) -> None:
        dirs = _unit_rows(x - self._center)
        torch.maximum(self._best_cos, (self._target_dirs @ dirs.T).amax(dim=1), out=self._best_cos)
        x = x.sub_(self._ref)
        x64 = x.double()
        a = torch.einsum("ij,ij->i", x64, x64)
        wa = a if w is None else w * a
        self.n += float(len(x) if w is None else w.sum())
        self._s += x64.sum(dim=0) if w is None else w @ x64
        self._sa += float(wa.sum())
        self._saa += float(wa @ a)
        self._sax += wa @ x64
        xw = x if w is None else x * w.float()[:, None]
        self._C += xw.T @ x  # float32 product of one chunk, accumulated in float64

    def merge(self, other: SetStats) -> None:
        """Add the samples of ``other`` (built on the same target and centre) without revisiting
        them: the statistics of the union of both multisets, at ``O(d²)`` instead of ``O(N·d²)``."""
        if other.dim != self.dim or not torch.equal(other._ref, self._ref) or not torch.equal(other._center,
                                                                                             self._center):
            raise MtftError("SetStats.merge: the two sets were built for different targets or centres")
        self.n += other.n
        self._sa += other._sa
        self._saa += other._saa
        for mine, theirs in ((self._s, other._s), (self._sax, other._sax), (self._C, other._C)):
            mine += theirs
        torch.maximum(self._best_cos, other._best_cos, out=self._best_cos)

    def coverage(self) -> float:
        """Mean over target samples of the clipped cosine to their nearest selected sample."""
        if self.n == 0:
            return 0.0
        return float(self._best_cos.clamp_min(0.0).double().mean())

    def mahalanobis_diversity(self) -> float:
        """``-D``: minus the shrunk Mahalanobis distance of the target mean (larger = better)."""
        return -self.mahalanobis_distance()

    def mahalanobis_distance(self) -> float:
        """Distance of the target mean under the Ledoit–Wolf-shrunk Gaussian of the set."""
        if self.n == 0:
            return float("inf")
        with torch.no_grad():
            return self._distance()

    def _distance(self) -> float:
        n, d, C = self.n, self.dim, self._C
        v = self._s / n  # μ - t̄; the distance is symmetric in its sign
        vv = float(v @ v)
        vCv = float(v @ (C @ v))
        tr = self._sa / n - vv  # tr S
        if not tr > 0:  # every selected sample identical
            self.shrinkage = 1.0
            return 0.0 if vv == 0 else float("inf")
        alpha = self._ledoit_wolf(v, vv, vCv, tr) if self._fixed_alpha is None else self._fixed_alpha
        self.shrinkage = alpha
        a, b = 1.0 - alpha, alpha * tr / d  # Σ̂ = a S + b I
        if a == 0.0:
            return math.sqrt(vv / b)
        return math.sqrt(max(self._quadratic(v, a, b), 0.0))

    def _ledoit_wolf(self, v: torch.Tensor, vv: float, vCv: float, tr: float) -> float:
        """Ledoit–Wolf intensity from the running sums (moments about the set's mean)."""
        n, d, C = self.n, self.dim, self._C
        s2 = float(torch.vdot(C.view(-1), C.view(-1))) / n**2 - 2.0 * vCv / n + vv**2  # |S|_F²
        m4 = self._saa - 4.0 * float(v @ self._sax) + 4.0 * vCv + 2.0 * vv * self._sa - 3.0 * n * vv**2
        beta = (m4 / n - s2) / (d * n)  # Σ_i |x_i x_iᵀ - S|_F² / (d N²)
        delta = (s2 - tr**2 / d) / d  # |S - ν I|_F² / d
        return 1.0 if delta <= 0 else min(max(beta / delta, 0.0), 1.0)

    def _quadratic(self, v: torch.Tensor, a: float, b: float) -> float:
        """``vᵀ (a S + b I)⁻¹ v`` with ``S = C/N - vvᵀ``."""
        n, C, W = self.n, self._C, self._W

        def apply(x: torch.Tensor) -> torch.Tensor:  # (a S + b I) x in float64
            return (C @ x).mul_(a / n).sub_(v, alpha=a * float(v @ x)).add_(x, alpha=b)

        v32 = v.float()
        W.copy_(C).mul_(a / n).addr_(v32, v32, alpha=-a).diagonal().add_(b)
        chol, info = torch.linalg.cholesky_ex(W)
        if int(info) != 0:  # float32 too coarse for this Σ̂: factorise in float64
            full = (C / n - torch.outer(v, v)).mul_(a)
            full.diagonal().add_(b)
            chol64, info = torch.linalg.cholesky_ex(full)
            if int(info) != 0:  # singular: only possible without shrinkage (α = 0)
                return math.inf
            return float(v @ torch.cholesky_solve(v[:, None], chol64)[:, 0])
        x = torch.cholesky_solve(v32[:, None], chol)[:, 0].double()
        for _ in range(2):  # iterative refinement: float64 residual, float32 correction
            r = v - apply(x)
            x += torch.cholesky_solve(r.float()[:, None], chol)[:, 0]
        return float(v @ x)


def mahalanobis_diversity(selected: np.ndarray, target: np.ndarray) -> float:
    """Mahalanobis diversity (see module docstring) of a feature set against a target.

    Args:
        selected: ``(N, d)`` features of the selected tasks' samples.
        target: ``(n_t, d)`` target features (only their mean is used).
    """
    stats = SetStats(selected, target)
    stats.add(np.arange(len(selected)))
    return stats.mahalanobis_diversity()


def coverage(selected: np.ndarray, target: np.ndarray, center: np.ndarray | None = None) -> float:
    """Coverage (see module docstring) of a target by a feature set.

    Args:
        selected: ``(N, d)`` features of the selected tasks' samples.
        target: ``(n_t, d)`` target features.
        center: ``(d,)`` centre subtracted before the cosines; none when omitted.
    """
    stats = SetStats(selected, target, center)
    stats.add(np.arange(len(selected)))
    return stats.coverage()
