"""The figure of a sweep (``geovq.sweeps``): each metric against the swept value."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def sweep_figure(values: list, series: dict[str, list], axis: str):
    """Each metric against the swept value, one panel per metric."""
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (name, ys) in zip(axes[0], series.items()):
        ax.plot(values, ys, marker="o")
        ax.set_xlabel(axis)
        ax.set_title(name, fontsize=10)
        if all(v > 0 for v in values) and max(values) / min(values) >= 8:
            ax.set_xscale("log")
    fig.tight_layout()
    return fig
