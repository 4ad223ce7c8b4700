"""k-means initialisation of the VQ layer's codebook from the first training batch.

The usual small uniform codebook sits away from the encoder's outputs, and most of its codes never
win; k-means puts the codes where the vectors are. Seeding is k-means++ with distinct seeds
(MNIST's blank background gives many identical vectors, which must not become identical codes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from geovq.errors import ParameterError
from geovq.nn.vq.codebook import cluster_sizes, squared_distances
from geovq.nn.vq.distributed import all_gather_rows, filled_on_rank0


@torch.no_grad()
def kmeans_init_codebook(x: Tensor, k: int, iters: int = 10) -> Tensor:
    """The ``kmeans_init`` codebook: k x D centers of the vectors ``x`` (N x D), by k-means++
    seeding then ``iters`` Lloyd iterations (torch's global RNG).

    Seeds are distinct data vectors (a vector equal to a chosen seed has zero weight); if ``x``
    holds fewer than ``k`` distinct vectors, the remaining seeds are data vectors plus small noise.
    An empty cluster keeps its previous center, so centers stay distinct.
    """
    n, dim = x.shape
    if n == 0:
        raise ParameterError("x", "x is empty: the k-means initialisation of the codebook needs at least one vector.")
    first = int(torch.randint(n, (1,)))
    centers = [x[first]]
    closest = (x - x[first]).pow(2).sum(1)
    noise_scale = 1e-3 * float(x.std()) if n > 1 else 1e-3
    for _ in range(1, k):
        if float(closest.sum()) > 0:
            pick = int(torch.multinomial(closest, 1))
            center = x[pick]
        else:  # no distinct vector left
            center = x[int(torch.randint(n, (1,)))] + torch.randn(dim, device=x.device) * max(noise_scale, 1e-6)
        centers.append(center)
        closest = torch.minimum(closest, (x - center).pow(2).sum(1))
    centers = torch.stack(centers)
    for _ in range(iters):
        assign = squared_distances(x, centers).argmin(1)
        sizes = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        nonempty = sizes > 0
        centers[nonempty] = sums[nonempty] / sizes[nonempty].unsqueeze(1).to(x.dtype)
    return centers


@torch.no_grad()
def kmeans_codebook(flat: Tensor, n_codes: int, iters: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(K x D centers, K cluster sizes) of k-means over the first batch's vectors ``flat``.

    Under data parallelism: over every rank's vectors, on rank 0, broadcast to every rank.
    """
    flat = all_gather_rows(flat)

    def fit(packed: Tensor) -> None:
        centers = kmeans_init_codebook(flat.float(), n_codes, iters).to(packed.dtype)
        packed[:, :-1] = centers
        packed[:, -1] = cluster_sizes(flat, centers).to(packed.dtype)

    packed = filled_on_rank0(torch.zeros(n_codes, flat.shape[1] + 1, device=flat.device, dtype=dtype), fit)
    return packed[:, :-1], packed[:, -1]
