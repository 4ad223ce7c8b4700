"""Reconstruction figures: test images above each model's reconstruction of them."""

from __future__ import annotations

import torch

from geovq.viz.images import image_rows_figure, save_figure


@torch.no_grad()
def save_reconstructions(models: dict, datamodule, path, n: int = 16) -> None:
    """Test images above each model's reconstruction of them."""
    images = datamodule.split("test").tensors[0][:n]
    rows = {"test images": images}
    for label, model in models.items():
        rows[label] = model.to("cpu").eval().reconstruct(images)
    save_figure(image_rows_figure(rows), path)
