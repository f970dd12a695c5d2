"""Plot of a selection walk: both diversity measures against k, the stopping point marked.

Example:
    >>> plot_selection(result, "selection.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from mtft_ray.selection.greedy import SelectionResult

__all__ = ["plot_selection"]


def plot_selection(result: SelectionResult, path: str | Path) -> Path:
    """Save a PNG of the diversity and coverage curves of ``result`` against k.

    A walk's curves run past the selected k (the additions the plateau rule looked at); the
    selected k is a dashed line and a marker on each curve. Fixed-size strategies have one
    point.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    n = len(result.diversity_curve)
    ks = list(range(1, n + 1)) if n > 1 else [result.k]
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    panels = [("mahalanobis", "diversity (−D)", "Mahalanobis diversity: minus the shrunk distance of the target mean",
               result.diversity_curve, result.diversity, "tab:blue"),
              ("coverage", "coverage", "coverage: mean cosine of target samples to their nearest selected sample",
               result.coverage_curve, result.coverage, "tab:green")]
    for ax, (name, ylabel, title, curve, value, color) in zip(axes, panels):
        driving = result.measure == name
        ax.plot(ks, curve, marker="." if n < 200 else None, color=color, lw=1.8 if driving else 1.0)
        ax.axvline(result.k, color="0.3", ls="--", lw=1)
        ax.plot([result.k], [value], marker="o", ms=8, color="tab:red", zorder=3)
        ax.set_ylabel(ylabel)
        ax.set_title(title + ("  [drives the stop]" if driving else ""), fontsize=8, loc="left")
        ax.grid(alpha=0.3)
    unit = "units" if result.level == "unit" else "tasks"
    axes[-1].set_xlabel(f"k ({unit} added, consistency order)" if result.strategy == "selected" else f"k ({unit} added)")
    title = f"{result.strategy}: k = {result.k}"
    if result.measure:
        title += f" (plateau of {result.measure}, walked {n})"
    title += f", mean consistency {result.mean_consistency:.3f}"
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
