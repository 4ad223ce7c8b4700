"""The VQ layer's codebook: K x D vectors, learned by a loss or moved by exponential moving averages.

A learned codebook is a parameter that the optimizer moves with the codebook loss
||sg[z_e] - e||^2. An EMA codebook is a buffer recomputed from moving averages of each code's
cluster size and of the sum of the vectors assigned to it (Laplace-smoothed by ``eps``): no
gradient, and only the codes used in a batch move.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def register_codebook(layer: nn.Module, n_codes: int, code_dim: int, ema: bool) -> None:
    """Give ``layer`` its ``embedding``: a parameter, or with ``ema`` a buffer with its statistics
    ``cluster_size`` and ``embed_sum``."""
    # The usual VQ-VAE initialisation (Sonnet, most PyTorch ports): small uniform codes.
    initial = torch.empty(n_codes, code_dim).uniform_(-1.0 / n_codes, 1.0 / n_codes)
    if ema:
        layer.register_buffer("embedding", initial)
        # "Each code has seen one vector: itself", so that embed_sum / cluster_size == embedding.
        layer.register_buffer("cluster_size", torch.ones(n_codes))
        layer.register_buffer("embed_sum", initial.clone())
    else:
        layer.embedding = nn.Parameter(initial)


def squared_distances(x: Tensor, codebook: Tensor) -> Tensor:
    """N x K squared Euclidean distances, via one matmul."""
    return (
        x.pow(2).sum(1, keepdim=True)
        - 2.0 * x @ codebook.t().to(x.dtype)
        + codebook.pow(2).sum(1).to(x.dtype).unsqueeze(0)
    )


def cluster_sizes(x: Tensor, centers: Tensor) -> Tensor:
    """How many of the vectors ``x`` (N x D) are nearest to each of the K ``centers`` (int64)."""
    return torch.bincount(squared_distances(x, centers).argmin(1), minlength=centers.shape[0])


@torch.no_grad()
def ema_update(embedding: Tensor, cluster_size: Tensor, embed_sum: Tensor, sums: Tensor, counts: Tensor,
               decay: float, eps: float) -> None:
    """One EMA step from a batch's per-code ``counts`` and ``sums`` of the assigned vectors."""
    cluster_size.mul_(decay).add_(counts.to(cluster_size.dtype), alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + embedding.shape[0] * eps) * total
    # Unused codes are left exactly where they are: their sum and size decayed by the same
    # factor, so only the smoothing would move them (towards the origin), which is noise.
    used = counts > 0
    embedding[used] = embed_sum[used] / smoothed[used].unsqueeze(1)


@torch.no_grad()
def reset_ema_statistics(embedding: Tensor, cluster_size: Tensor, embed_sum: Tensor, sizes,
                         rows=slice(None)) -> None:
    """Statistics saying that code k (of ``rows``) is the mean of ``sizes[k]`` vectors, so that
    embed_sum / cluster_size == embedding: a code set from outside is not dragged back to the
    vectors it had before."""
    cluster_size[rows] = sizes
    embed_sum[rows] = embedding[rows] * cluster_size[rows].unsqueeze(1)
