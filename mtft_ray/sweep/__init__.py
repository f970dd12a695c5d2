"""Sweeps: Ray Tune + Optuna over experiment configs (task subsets, M, m, shots, learning rate).

Modules, top to bottom: :mod:`~mtft_ray.sweep.schema` (the sweep YAML), :mod:`~mtft_ray.sweep.space`
(the search space checked, applied, priced), :mod:`~mtft_ray.sweep.load` (a sweep file read),
:mod:`~mtft_ray.sweep.driver` (one trial), :mod:`~mtft_ray.sweep.tuner` (the Tuner).

Example:
    >>> from mtft_ray.sweep.load import load_sweep
    >>> sweep, base = load_sweep("sweeps/quickstart.yaml")  # doctest: +SKIP
"""
