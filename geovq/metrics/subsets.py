"""A seeded random subset, the same for every run that asks for it."""

from __future__ import annotations

import torch
from torch import Tensor


def seeded_subset(items: Tensor, n: int, seed: int = 0) -> Tensor:
    """``min(n, len(items))`` rows of ``items`` chosen at random with ``seed``, in their original order."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[: min(n, len(items))]
    return items[order.sort().values]
