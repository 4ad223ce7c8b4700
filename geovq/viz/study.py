"""The study's figures (paper Figures 1-4): t-SNE of clusterings, codebook usage, reconstructions, samples."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402


def tsne_figure(vectors: np.ndarray, labelings: dict[str, np.ndarray], seed: int = 0):
    """One t-SNE embedding of ``vectors``, coloured by each labeling side by side (Figure 1)."""
    from sklearn.manifold import TSNE

    # n_jobs=-1: the exact neighbour search on every core (the same neighbours, the same embedding).
    embedding = TSNE(n_components=2, init="pca", perplexity=30, random_state=seed, n_jobs=-1).fit_transform(vectors)
    fig, axes = plt.subplots(1, len(labelings), figsize=(6 * len(labelings), 6), squeeze=False)
    for ax, (title, labels) in zip(axes[0], labelings.items()):
        ax.scatter(embedding[:, 0], embedding[:, 1], c=labels % 20, cmap="tab20", s=2, linewidths=0)
        ax.set_title(f"{title} ({len(np.unique(labels))} clusters)")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE of {len(vectors)} GridVAE latent vectors")
    return fig


def usage_figure(counts: dict[str, np.ndarray]):
    """Per-code usage of each codebook, codes sorted by use (Figure 2)."""
    fig, axes = plt.subplots(1, len(counts), figsize=(5 * len(counts), 3.2), squeeze=False)
    for ax, (title, c) in zip(axes[0], counts.items()):
        c = np.sort(np.asarray(c))[::-1]
        share = c / max(c.sum(), 1)
        ax.bar(np.arange(len(c)), share, width=1.0, color="tab:blue")
        ax.set_title(f"{title}: {(c > 0).sum()}/{len(c)} codes used", fontsize=10)
        ax.set_xlabel("code (sorted by use)")
        ax.set_ylabel("share of training vectors")
        ax.set_yscale("log")
    fig.tight_layout()
    return fig


def sample_panels_figure(samples: dict[str, torch.Tensor], n: int = 64):
    """An 8x8 grid of samples for each method, side by side (Figure 4)."""
    fig, axes = plt.subplots(1, len(samples), figsize=(4.2 * len(samples), 4.6), squeeze=False)
    per_row = int(math.sqrt(n))
    for ax, (title, images) in zip(axes[0], samples.items()):
        grid = make_grid(images[:n].float(), nrow=per_row, padding=2, pad_value=0.5)
        ax.imshow(grid.permute(1, 2, 0).numpy(), vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return fig


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


def learning_curves_figure(curves: dict[str, list[list[float]]], ylabel: str, marked: set[str] = frozenset()):
    """One line per run (several per method: one per seed) of a value per epoch; methods in
    ``marked`` (e.g. priors that hit the epoch cap) are drawn dashed and say so."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (title, runs) in enumerate(curves.items()):
        style = "--" if title in marked else "-"
        for j, values in enumerate(runs):
            label = (f"{title} (hit the epoch cap)" if title in marked else title) if j == 0 else None
            ax.plot(range(1, len(values) + 1), values, style, marker="o", ms=3, color=colors[i % len(colors)], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
