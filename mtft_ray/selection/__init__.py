"""Task selection: consistency, diversity and the paper's greedy Algorithm 1 with ablations.

Pure functions on cached feature arrays (numpy in, numpy out); no Ray, no model.

Example:
    >>> from mtft_ray.selection import select
    >>> result = select("selected", features, task_samples, target)  # doctest: +SKIP
    >>> result.to_json()["selected"]  # doctest: +SKIP
"""

from mtft_ray.selection.greedy import MEASURES, Plateau, SelectionResult, greedy_select, plateau_k
from mtft_ray.selection.metrics import SetStats, consistency, coverage, mahalanobis_diversity, task_means
from mtft_ray.selection.plot import plot_selection
from mtft_ray.selection.strategies import STRATEGIES, ablations, select

__all__ = [
    "MEASURES", "STRATEGIES", "Plateau", "SelectionResult", "SetStats", "ablations", "consistency",
    "coverage", "greedy_select", "mahalanobis_diversity", "plateau_k", "plot_selection", "select",
    "task_means",
]
