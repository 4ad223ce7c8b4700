"""Reconstruction error, the one way every stage measures it."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from geovq.batching import INFERENCE_BATCH


@torch.no_grad()
def decoded_mse(
    decode: Callable[[Tensor], Tensor], inputs: Tensor, images: Tensor, batch_size: int = INFERENCE_BATCH
) -> float:
    """Per-pixel MSE between ``sigmoid(decode(inputs))`` and ``images`` (in [0, 1]), over all of
    them: latents, code grids or anything ``decode`` turns into pixel logits."""
    total = 0.0
    for start in range(0, len(images), batch_size):
        decoded = torch.sigmoid(decode(inputs[start : start + batch_size])).cpu()
        total += float(((decoded - images[start : start + batch_size]) ** 2).sum())
    return total / images.numel()
