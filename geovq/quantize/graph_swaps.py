"""PAM swaps inside regions of the k-NN graph: what takes alternating K-Medoids to PAM quality.

Alternation (moving each medoid within its own cell) stops in local optima that a swap across
cells would leave. Here each cell in turn forms a *region* with the cells that share the most
graph edges with it; in the region's induced subgraph, best-improvement PAM swaps (Kaufman &
Rousseeuw) between the region's medoids and candidate nodes of the region are made until none
improves the region's weighted objective.

Why a regional gain is a global gain: a region is a union of whole Voronoi cells, and paths
from a medoid to the nodes of its cell stay inside the cell, so before the swaps the region's
objective on in-region paths equals its share of the global objective. After the swaps, nodes
outside keep their (outside) medoids, and nodes inside are at most as far as the in-region paths
say (true geodesics are never longer; an outside medoid can only be closer). So the global
objective drops by at least the regional gain: no check with the full graph is needed.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

_TOL = 1e-9  # relative gain below which a swap counts as none (float noise)


def cell_adjacency(graph: sp.csr_matrix, labels: np.ndarray, n_cells: int) -> np.ndarray:
    """(K, K) number of graph edges between every two cells (zero diagonal)."""
    coo = graph.tocoo()
    pairs = labels[coo.row] * n_cells + labels[coo.col]
    counts = np.bincount(pairs, minlength=n_cells * n_cells).reshape(n_cells, n_cells)
    np.fill_diagonal(counts, 0)
    return counts


def region_of(cell: int, adjacency: np.ndarray, n_neighbours: int) -> np.ndarray:
    """Cell ``cell`` and the ``n_neighbours`` cells joined to it by the most graph edges."""
    ranked = np.argsort(-adjacency[cell], kind="stable")
    return np.r_[cell, ranked[: min(n_neighbours, int((adjacency[cell] > 0).sum()))]]


def swap_in_region(
    graph: sp.csr_matrix, weights: np.ndarray, nodes: np.ndarray, medoids: np.ndarray,
    max_candidates: int, rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Best-improvement swaps among ``nodes`` (the region); returns the region's new medoids
    (node ids, same order: medoid ``j`` replaced in place) and the gain (>= 0)."""
    position = {int(v): i for i, v in enumerate(nodes)}
    meds = np.array([position[int(m)] for m in medoids])
    cand = np.arange(nodes.size)
    if nodes.size > max_candidates:  # large regions: the medoids and a seeded sample of the rest
        rest = np.setdiff1d(cand, meds)
        cand = np.union1d(meds, rng.choice(rest, max_candidates - meds.size, replace=False))
    sub = graph[nodes][:, nodes]
    # d[o, c]: in-region path length from node o to candidate c (the graph is symmetric).
    d = dijkstra(sub, directed=True, indices=cand).T
    col_of = np.full(nodes.size, -1)
    col_of[cand] = np.arange(cand.size)
    w = weights[nodes]
    start = cost = _region_cost(d[:, col_of[meds]], w)
    while meds.size:
        to_meds = d[:, col_of[meds]]
        order = np.argsort(to_meds, axis=1)
        d1 = np.take_along_axis(to_meds, order[:, :1], 1)[:, 0]
        d2 = np.take_along_axis(to_meds, order[:, 1:2], 1)[:, 0] if meds.size > 1 else np.full(nodes.size, np.inf)
        n1 = order[:, 0]
        # Swap (medoid j -> candidate c): every node takes min(d1, d_c), except those of j's
        # cell, which take min(d2, d_c).
        closer = np.minimum(d, d1[:, None])
        add = w @ (closer - d1[:, None])
        delta = np.tile(add, (meds.size, 1))
        for j in range(meds.size):
            mine = n1 == j
            delta[j] += w[mine] @ (np.minimum(d[mine], d2[mine, None]) - closer[mine])
        delta[:, np.isin(cand, meds)] = np.inf  # a medoid is no candidate
        j, c = np.unravel_index(np.argmin(delta), delta.shape)
        if not delta[j, c] < -_TOL * max(cost, 1e-300):
            break
        meds[j] = cand[c]
        cost = _region_cost(d[:, col_of[meds]], w)
    return nodes[meds], start - cost


def _region_cost(to_meds: np.ndarray, w: np.ndarray) -> float:
    return float(w @ to_meds.min(1)) if to_meds.size else 0.0
