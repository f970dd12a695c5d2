"""Sweeps: Ray Tune + Optuna over experiment configs (task subsets, M, m, shots, learning rate).

Example:
    >>> from mtft_ray.sweep import load_sweep
    >>> sweep = load_sweep("sweeps/quickstart.yaml")  # doctest: +SKIP
"""

from mtft_ray.sweep.schema import SweepConfig, load_sweep

__all__ = ["SweepConfig", "load_sweep"]
