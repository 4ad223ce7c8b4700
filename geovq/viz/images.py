"""Figures of images: originals above reconstructions, sample grids; grey (1 channel) or colour (3)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from geovq.artifacts import atomic_write_bytes  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure atomically as PNG and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def show_image(ax, image: torch.Tensor) -> None:
    """One C x H x W image in [0, 1] on ``ax``: grey with the gray colour map, RGB as it is."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.ndim == 3 and image.shape[0] == 3:
        ax.imshow(image.permute(1, 2, 0).numpy(), vmin=0, vmax=1)
    else:
        ax.imshow(image.squeeze(0).numpy(), cmap="gray", vmin=0, vmax=1)


def image_rows_figure(rows: dict[str, torch.Tensor], title: str | None = None):
    """One labelled row per entry; each tensor is N x C x H x W in [0, 1]."""
    n_cols = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(0.9 * n_cols, 1.0 * len(rows) + 0.3), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                show_image(ax, images[c])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def image_grid_figure(images: torch.Tensor, n_cols: int | None = None, title: str | None = None):
    """A square-ish grid of N x C x H x W images in [0, 1]."""
    n = len(images)
    n_cols = n_cols or math.ceil(math.sqrt(n))
    n_rows = math.ceil(n / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(0.7 * n_cols, 0.7 * n_rows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            show_image(ax, images[i])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
