"""The undirected k-nearest-neighbour graph over the (distinct) landmarks.

Each point is joined to its ``k`` nearest neighbours; the graph is the union of these directed
edges made undirected: ``i -- j`` exists if ``j`` is among ``i``'s neighbours *or* ``i`` among
``j``'s, and its weight is their distance ``||x_i - x_j||``. The classic mistake,
``G + G.T`` on scikit-learn's ``kneighbors_graph``, *adds* the two directions of a mutual edge
and doubles its length; here each undirected pair is stored once with the distance itself.

The points must be distinct (see :mod:`geovq.quantize.dedup`): a duplicate would be its own
zero-length neighbour and use up a neighbour slot without linking anything new.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from geovq.errors import ParameterError
from geovq.quantize.nearest import nearest_neighbors


def knn_graph(
    points: np.ndarray,
    n_neighbors: int,
    *,
    backend: str = "auto",
    n_jobs: int = 1,
    progress: bool = False,
    device=None,
) -> sp.csr_matrix:
    """Symmetric CSR adjacency (float64 weights = Euclidean distances) of the k-NN graph.
    ``device``: None, the CPU search ``backend`` chooses; a torch device, the exact brute force
    on it (see :func:`~geovq.quantize.nearest.nearest_neighbors`): the same graph."""
    n = points.shape[0]
    if not 1 <= n_neighbors < n:
        raise ParameterError(
            "n_neighbors",
            f"n_neighbors must be in [1, {n - 1}] for {n} distinct points, got {n_neighbors}; "
            "lower n_neighbors or pass more distinct points."
        )
    dist, idx = nearest_neighbors(
        points, points, n_neighbors, exclude_self=True, backend=backend, n_jobs=n_jobs,
        progress=progress, desc="k-NN graph", device=device,
    )
    rows = np.repeat(np.arange(n, dtype=np.int64), n_neighbors)
    return undirected_graph(rows, idx.reshape(-1), dist.reshape(-1), n)


def undirected_graph(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, n: int) -> sp.csr_matrix:
    """Symmetric CSR matrix from directed edges; a pair given in both directions is kept once,
    with the smaller weight (the two are equal for a distance), never their sum."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    if (rows == cols).any():
        raise ValueError("self-loops are not edges of a neighbour graph")
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    key = lo * n + hi
    order = np.lexsort((weights, key))  # by pair, then by weight: the first of each pair is the lightest
    key, weights = key[order], weights[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    lo, hi, w = key[first] // n, key[first] % n, weights[first]
    both_rows = np.concatenate([lo, hi])
    both_cols = np.concatenate([hi, lo])
    both_w = np.concatenate([w, w])
    # Each (row, col) now occurs once, so the COO -> CSR conversion sums nothing. Zero-length
    # edges stay as explicit entries, which scipy.sparse.csgraph treats as edges.
    return sp.csr_matrix((both_w, (both_rows, both_cols)), shape=(n, n))
