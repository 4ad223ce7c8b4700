"""Geodesic K-Medoids on the k-NN graph itself, never forming the N x N distance matrix.

Memory O(N k + N K) instead of 4 N^2 bytes, so 100k landmarks fit where 40k needed 8 GiB.

1. *Seeding* (k-medoids++ on geodesics): the first medoid uniformly, each next one drawn with
   probability proportional to its geodesic distance to the medoids so far; one Dijkstra per
   new medoid, cut off at the current largest distance (beyond it nothing can get closer).
2. *Alternation* (Voronoi iteration, Park & Jun 2009): one multi-source Dijkstra from all
   medoids gives every node its nearest medoid (its cell) and that distance; then each cell's
   medoid moves to the node of the cell with the smallest sum of distances to the cell, measured
   along paths inside the cell. A node's shortest path from its medoid never leaves the cell
   (a node on it closer to another medoid would bring the end node closer too), so the current
   medoid's in-cell sum is its true sum, and a move lowers the objective or leaves it: the
   objective (recomputed exactly by the next multi-source Dijkstra) never increases.
3. *Regional swaps* (what takes alternation to PAM quality): each cell with the ``n_neighbours``
   cells that share the most edges with it forms a region; best-improvement PAM swaps are made
   inside it on in-region path lengths, which provably lowers the global objective by at least
   the regional gain (:mod:`geovq.quantize.graph_swaps`). Alternation and swap passes repeat
   (at most ``max_rounds``), a pass trying only regions changed since they were last tried.

For millions of nodes (``method="graph_full"``, :mod:`geovq.quantize.full_graph`) the seeding is
replaced by given medoids (``init_medoids``: a landmark solution lifted to the full graph), the
swaps are skipped, and a cell's medoid moves by ``cell_update="sampled"``: Dijkstras from nodes
drawn by weight estimate every node's in-cell sum, and the best estimates are scored exactly.

Measured on GridVAE latents, N = 10k, k = 15, K = 128 (``bench/quantize.py --graph-sizes``):
alternation alone ends 10-12% above FasterPAM on the dense matrix; with the swaps, within 1-2%.

Nodes may carry weights (how many landmarks a distinct graph node stands for): the objective
is sum over nodes of weight x distance to the nearest medoid, as if duplicates were expanded.
Deterministic for a given ``random_state``; cells are updated in forked worker processes (scipy's
Dijkstra holds the GIL).
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, dijkstra

from geovq.errors import ParameterError
from geovq.quantize.graph_swaps import cell_adjacency, region_of, swap_in_region
from geovq.quantize.resources import current_rss, peak_rss, reset_peak

_MAX_CANDIDATES = 256  # candidate medoids scored per cell (those nearest the current medoid)
CELL_UPDATES = ("nearest", "sampled")
_MIN_NODES_FOR_PROCESSES = 4000
_SHARED: dict = {}  # the graph and weights, inherited by forked workers


@dataclass
class GraphKMedoidsResult:
    medoids: np.ndarray  # (K,) int64 node indices
    labels: np.ndarray  # (n,) int64 nearest medoid (cluster index) of every node
    distances: np.ndarray  # (n,) float64 geodesic distance of every node to its medoid
    inertia: float  # sum of weight x distance
    n_iter: int
    history: list  # objective after seeding and after each iteration
    initial_labels: np.ndarray | None = None  # (n,) cells of the starting medoids (cluster j = medoids[j] before the renumbering)


def graph_kmedoids(
    graph: sp.csr_matrix, n_clusters: int, *, weights: np.ndarray | None = None, random_state: int | None = 0,
    max_iter: int = 100, n_jobs: int = 1, swap_passes: bool = True, n_neighbours: int = 6,
    max_candidates: int = 150, max_rounds: int = 10, init_medoids: np.ndarray | None = None,
    cell_update: str = "nearest", n_samples: int = 48, n_exact: int = 16, tol: float = 0.0,
) -> GraphKMedoidsResult:
    """K-Medoids of the nodes of the connected, symmetric, non-negative ``graph``.

    ``weights``: per node (default 1). ``max_iter``: alternation steps in all. ``swap_passes``:
    run the regional swaps (False: plain alternation). ``n_neighbours``: cells joined to each
    cell to form its region; ``max_candidates``: swap candidates per region (the region's medoids
    and a seeded sample). ``init_medoids``: start from these K distinct nodes instead of the
    seeding (the multi-level start: a landmark solution lifted to this graph). ``cell_update``:
    how a cell's medoid moves, ``"nearest"`` (the in-cell sums of the 256 nodes nearest the
    current medoid, exact) or ``"sampled"`` (for cells of many thousand nodes: the sum of every
    node of the cell is estimated from ``n_samples`` Dijkstras from nodes drawn by weight, and the
    ``n_exact`` best estimates are scored exactly, see :func:`_best_in_cell_sampled`). ``tol``:
    stop alternating when an iteration lowers the objective by less than this fraction.
    Raises ParameterError for a disconnected graph or K outside [1, n].
    """
    graph = sp.csr_matrix(graph, dtype=np.float64)
    n = graph.shape[0]
    if not 1 <= n_clusters <= n:
        raise ParameterError("n_clusters", f"n_clusters={n_clusters} must be in [1, {n}] (the number of graph nodes).")
    n_comp, _ = connected_components(graph, directed=False)
    if n_comp > 1:
        raise ParameterError(
            "graph", f"graph has {n_comp} connected components, so some geodesic distances are infinite; "
            "join them first with geovq.quantize.connect_components (GeodesicKMedoids does this).")
    if cell_update not in CELL_UPDATES:
        raise ParameterError("cell_update", f"cell_update must be one of {CELL_UPDATES}, got {cell_update!r}.")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(random_state)
    if init_medoids is None:
        medoids = _seed(graph, n_clusters, w, rng)
    else:
        medoids = np.asarray(init_medoids, dtype=np.int64)
        if medoids.shape != (n_clusters,) or np.unique(medoids).size != n_clusters or medoids.min() < 0 or medoids.max() >= n:
            raise ParameterError("init_medoids", f"init_medoids must be {n_clusters} distinct node indices in [0, {n}).")
    dist, labels = voronoi(graph, medoids)
    initial_labels = labels
    history = [float(w @ dist)]
    _SHARED["graph"], _SHARED["weights"] = graph, w
    _SHARED["update"] = (cell_update, n_samples, n_exact, int(rng.integers(2**31)), tol)
    n_iter = 0
    dirty = np.ones(n_clusters, dtype=bool)
    try:
        for _ in range(max_rounds):
            before = labels
            medoids, dist, labels, steps = _alternate(graph, w, medoids, dist, labels, history, max_iter - n_iter, n_jobs)
            n_iter += steps
            if not swap_passes or n_iter >= max_iter:
                break
            dirty |= _cells_changed(before, labels)
            swapped, dist, labels, dirty = _swap_pass(graph, w, medoids, dist, labels, history, n_neighbours,
                                                      max_candidates, rng, dirty)
            if not dirty.any():
                break
            medoids = swapped
    finally:
        _LAST.clear()
        _LAST["worker_extra"] = _SHARED.get("worker_extra", 0)
        _SHARED.clear()
    order = np.argsort(medoids)  # clusters numbered by medoid node id
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return GraphKMedoidsResult(medoids[order], rank[labels], dist, history[-1], n_iter, history, initial_labels)


def _cells_changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    moved = before != after
    out = np.zeros(int(max(before.max(), after.max())) + 1, dtype=bool)
    out[before[moved]] = out[after[moved]] = True
    return out


def _alternate(graph, w, medoids, dist, labels, history, max_iter, n_jobs):
    """Voronoi iteration until no medoid moves or the objective stops falling."""
    for step in range(1, max_iter + 1):
        moved = _update_cells(medoids, labels, dist, n_jobs)
        if np.array_equal(moved, medoids):
            return medoids, dist, labels, step
        new_dist, new_labels = voronoi(graph, moved)
        if float(w @ new_dist) >= history[-1]:  # no gain (ties): stop rather than cycle
            return medoids, dist, labels, step
        medoids, dist, labels = moved, new_dist, new_labels
        history.append(float(w @ dist))
        if history[-1] > history[-2] * (1 - _SHARED["update"][4]):  # gained less than tol
            return medoids, dist, labels, step
    return medoids, dist, labels, max_iter


def _swap_pass(graph, w, medoids, dist, labels, history, n_neighbours, max_candidates, rng, dirty):
    """One pass of regional PAM swaps, cell after cell (see geovq.quantize.graph_swaps), over
    the regions that hold a cell changed since they were last tried (``dirty``). Returns the
    new state and the cells changed in this pass."""
    medoids = medoids.copy()
    changed = np.zeros(medoids.size, dtype=bool)
    adjacency = cell_adjacency(graph, labels, medoids.size)
    for cell in range(medoids.size):
        cells = region_of(cell, adjacency, n_neighbours)
        if not (dirty[cells].any() or changed[cells].any()):
            continue  # tried before, nothing in it has changed since
        nodes = np.flatnonzero(np.isin(labels, cells))
        new, gain = swap_in_region(graph, w, nodes, medoids[cells], max_candidates, rng)
        if gain > 0:
            medoids[cells] = new
            new_dist, new_labels = voronoi(graph, medoids)
            moved = new_labels != labels
            changed[cells] = True
            changed[new_labels[moved]] = True
            changed[labels[moved]] = True
            dist, labels = new_dist, new_labels
            history.append(float(w @ dist))
            adjacency = cell_adjacency(graph, labels, medoids.size)
    return medoids, dist, labels, changed


def voronoi(graph: sp.csr_matrix, medoids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every node to its nearest medoid and that medoid's position in ``medoids``
    (one multi-source Dijkstra; a medoid is its own cell)."""
    dist, _, sources = dijkstra(graph, directed=True, indices=medoids, min_only=True, return_predecessors=True)
    position = np.empty(graph.shape[0], dtype=np.int64)
    position[medoids] = np.arange(len(medoids))
    return dist, position[sources]


def _seed(graph, n_clusters, w, rng) -> np.ndarray:
    n = graph.shape[0]
    medoids = [int(rng.integers(n))]
    nearest = dijkstra(graph, directed=True, indices=medoids[0])
    for _ in range(1, n_clusters):
        p = w * nearest
        total = p.sum()
        nxt = int(rng.choice(n, p=p / total)) if total > 0 else int(rng.choice(np.setdiff1d(np.arange(n), medoids)))
        medoids.append(nxt)
        # Nodes farther than the current largest distance cannot come closer through the new medoid.
        np.minimum(nearest, dijkstra(graph, directed=True, indices=nxt, limit=nearest.max()), out=nearest)
    return np.sort(np.asarray(medoids, dtype=np.int64))


def _update_cells(medoids, labels, dist, n_jobs) -> np.ndarray:
    by_cell = np.argsort(labels, kind="stable")
    cuts = np.searchsorted(labels[by_cell], np.arange(1, len(medoids)))
    tasks = [(int(m), cell, dist[cell]) for m, cell in zip(medoids, np.split(by_cell, cuts))]
    sampled = _SHARED["update"][0] == "sampled"
    work = _best_in_cell_sampled if sampled else _best_in_cell
    if sampled:  # one seed per cell, whatever the order the workers take them in
        seed = _SHARED["update"][3] + int(_SHARED.setdefault("round", 0)) * len(tasks)
        _SHARED["round"] += 1
        tasks = [(*t, seed + j) for j, t in enumerate(tasks)]
    if n_jobs > 1 and labels.size >= _MIN_NODES_FOR_PROCESSES and "fork" in mp.get_all_start_methods():
        order = np.argsort([-t[1].size for t in tasks], kind="stable")  # largest cells first: balanced workers
        moved = [0] * len(tasks)
        _SHARED["work"] = work
        with mp.get_context("fork").Pool(n_jobs, initializer=_worker_start) as pool:
            chunk = 1 if sampled else max(1, len(tasks) // (8 * n_jobs))
            for j, (m, extra) in zip(order, pool.imap(_measured, [tasks[j] for j in order], chunksize=chunk)):
                moved[j] = m
                _SHARED["worker_extra"] = max(_SHARED.get("worker_extra", 0), extra)
    else:
        moved = [work(t) for t in tasks]
    return np.asarray(moved, dtype=np.int64)  # medoid j stays cluster j


_WORKER: dict = {}


def _worker_start() -> None:
    """In a forked worker: its resident memory at the start (the parent's pages it shares) and a
    fresh peak, so a task reports only what the worker itself added (see resources.py)."""
    _WORKER["start"] = current_rss()
    reset_peak()


def _measured(task):
    return _SHARED["work"](task), max(0, peak_rss() - _WORKER["start"])


def worker_extra_bytes() -> int:
    """The most memory one worker of the last :func:`graph_kmedoids` call added at its peak."""
    return int(_LAST.get("worker_extra", 0))


_LAST: dict = {}


def _best_in_cell(task) -> int:
    """The node of the cell with the smallest weighted sum of in-cell path lengths to the cell
    (the current medoid unless another is strictly better)."""
    medoid, cell, to_medoid = task
    graph, w = _SHARED["graph"], _SHARED["weights"]
    if cell.size <= 2:
        return medoid
    sub = graph[cell][:, cell]
    # Candidates: the nodes nearest the current medoid (a better medoid lies near the old one).
    cand = np.argsort(to_medoid, kind="stable")[:_MAX_CANDIDATES]
    costs = dijkstra(sub, directed=True, indices=cand) @ w[cell]
    best = int(np.argmin(costs))
    own = int(np.flatnonzero(cell[cand] == medoid)[0])
    return int(cell[cand[best]]) if costs[best] < costs[own] * (1 - 1e-12) else medoid


def _best_in_cell_sampled(task) -> int:
    """The cell's new medoid for a cell of many nodes, from ``n_samples + n_exact`` Dijkstras
    inside the cell instead of one per candidate.

    The cost of a candidate ``c`` is ``sum_i w_i d(i, c)`` over the cell's nodes ``i``. Drawing
    ``n_samples`` nodes with probability proportional to their weight, ``W / S * sum_s d(s, c)``
    estimates it without bias for *every* node ``c`` at once (one Dijkstra per sample gives
    ``d(s, .)``; the graph is symmetric). The ``n_exact`` nodes with the smallest estimates are then
    scored exactly (one Dijkstra each), and the best replaces the current medoid (scored exactly
    too) only if strictly better: the estimate chooses the candidates, never the move, so the
    objective still never increases.
    """
    medoid, cell, to_medoid, seed = task
    graph, w = _SHARED["graph"], _SHARED["weights"]
    _, n_samples, n_exact, _, _ = _SHARED["update"]
    if cell.size <= 2:
        return medoid
    sub = graph[cell][:, cell]
    wc = w[cell]
    own = int(np.flatnonzero(cell == medoid)[0])
    if cell.size <= n_samples + n_exact:  # small cell: score every node exactly
        cand = np.arange(cell.size)
    else:
        rng = np.random.default_rng(seed)
        draws, counts = np.unique(rng.choice(cell.size, size=n_samples, p=wc / wc.sum()), return_counts=True)
        estimate = np.zeros(cell.size)
        for s in range(0, draws.size, 16):  # 16 rows of float64 at a time
            estimate += counts[s : s + 16] @ dijkstra(sub, directed=True, indices=draws[s : s + 16])
        cand = np.union1d(np.argpartition(estimate, n_exact)[:n_exact], [own])
    costs = np.empty(cand.size)
    for s in range(0, cand.size, 16):
        costs[s : s + 16] = dijkstra(sub, directed=True, indices=cand[s : s + 16]) @ wc
    best = int(np.argmin(costs))
    mine = float(costs[np.flatnonzero(cand == own)[0]])
    return int(cell[cand[best]]) if costs[best] < mine * (1 - 1e-12) else medoid
