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
    them: latents, code grids or anything ``decode`` turns into pixel logits. The errors are
    summed where ``decode`` puts its output (no decoded image goes to the host) and read once."""
    sums = []
    for start in range(0, len(images), batch_size):
        decoded = torch.sigmoid(decode(inputs[start : start + batch_size]))
        sums.append(((decoded - images[start : start + batch_size].to(decoded.device)) ** 2).sum())
    # The float32 batch sums added in float64 in order, as each batch's error was before.
    return sum(torch.stack(sums).tolist() if sums else []) / images.numel()
