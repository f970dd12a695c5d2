"""Analysis of sweep results: tables, plots, a report and a recommendation (``mtft-ray analyze``).

Example:
    >>> from mtft_ray.analysis import analyze, summary
    >>> print(summary(analyze("runs/sweeps/quickstart")))   # doctest: +SKIP
"""

from mtft_ray.analysis.analyze import Analysis, analyze, default_out, summary

__all__ = ["Analysis", "analyze", "default_out", "summary"]
