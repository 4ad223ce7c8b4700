"""The VQ layer's collectives under data parallelism (``torch.distributed`` with a world size > 1).

Every rank must apply the same codebook update, so statistics are summed over the ranks and
random choices (k-means seeds, restarts) are made once, on rank 0, and broadcast. With one
process every helper is a plain call: no collective at all.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """The number of data-parallel processes (1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def summed_over_ranks(x: Tensor) -> Tensor:
    """``x`` summed over every rank, as a new tensor (``x`` itself with one process)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def all_gather_rows(x: Tensor) -> Tensor:
    """Every rank's rows of ``x`` (N_r x D, N_r may differ), concatenated in rank order."""
    world = world_size()
    if world == 1:
        return x
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros(max(sizes), x.shape[1])
    padded[: x.shape[0]] = x
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([rows[:n] for rows, n in zip(gathered, sizes)])


def filled_on_rank0(out: Tensor, fill: Callable[[Tensor], None]) -> Tensor:
    """``out``, filled in place by ``fill`` on rank 0 only (its random choices included) and
    broadcast, so that every rank ends with the same values."""
    world = world_size()
    if world == 1 or dist.get_rank() == 0:
        fill(out)
    if world > 1:
        dist.broadcast(out, src=0)
    return out
