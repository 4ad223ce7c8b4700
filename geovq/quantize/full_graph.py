"""Geodesic K-Medoids over every training vector (``GeodesicKMedoids(method="graph_full")``).

The paper approximates geodesic quantization with N = 10k landmarks because the full geodesic
matrix of ~3M latents is infeasible. It is; the full-graph *K-Medoids* is not, since it never
needs that matrix (:mod:`geovq.quantize.graph_kmedoids`). The steps, each in the estimator's
``timings_``/``peak_memory_``:

1. ``dedup``: identical vectors are one graph node, weighted by its copies.
2. ``landmark_start``: the landmark solution, exactly as ``method=start_method`` fits it with the
   same ``n_landmarks``, ``landmark_selection`` and seed (the paper's A_geodesic codebook).
3. ``knn_graph``: the k-NN graph of every node (:func:`geovq.quantize.ann_graph.neighbour_graph`:
   NN-descent or HNSW neighbours whose measured recall is at least ``min_recall``; exact below
   50k nodes).
4. ``connect``: components joined by their closest pairs (:mod:`geovq.quantize.connectivity`).
5. ``kmedoids``: the landmark medoids are training vectors, hence nodes of the full graph (the
   multi-level start needs no mapping); one multi-source Dijkstra gives their objective on the
   full graph, ``start_inertia_``. Voronoi iteration then moves each cell's medoid to a better
   node of the cell, candidates chosen from sampled in-cell Dijkstras and scored exactly
   (``cell_update="sampled"``), and the full-graph objective, recomputed exactly by a
   multi-source Dijkstra after each iteration, never increases: ``inertia_ <= start_inertia_``.

Codes: a training vector is a node and takes its own cell (found by hash, no search); any other
vector takes the cell of its nearest training node, by the exact search of
:mod:`geovq.quantize.nearest`.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.base import clone

from geovq.errors import ParameterError
from geovq.quantize.ann_graph import ANN_LIBRARIES, LOW_RECALL_ACTIONS, SEARCHES, neighbour_graph
from geovq.quantize.connectivity import connect_components
from geovq.quantize.dedup import RowLookup, unique_rows
from geovq.quantize.graph_kmedoids import graph_kmedoids, worker_extra_bytes
from geovq.quantize.inputs import check_choice, check_positive_int
from geovq.quantize.nearest import KdTreeSearch, nearest_neighbors, search_in_chunks

log = logging.getLogger(__name__)


def check_full_params(est) -> None:
    """The ``method="graph_full"`` settings of a GeodesicKMedoids (checked whatever the method)."""
    check_choice(est.neighbor_search, "neighbor_search", SEARCHES)
    check_choice(est.on_low_recall, "on_low_recall", LOW_RECALL_ACTIONS)
    check_choice(est.ann_library, "ann_library", ANN_LIBRARIES)
    check_choice(est.start_method, "start_method", ("dense", "graph"))
    for name in ("ann_m", "ann_ef_construction", "ann_ef", "recall_sample", "full_samples", "full_exact", "full_max_iter"):
        check_positive_int(getattr(est, name), name)
    for name, value in (("min_recall", est.min_recall), ("full_tol", est.full_tol)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0 <= value <= 1:
            raise ParameterError(name, f"{name} must be a number in [0, 1], got {value!r}.")
    if est.method == "graph_full" and est.assignment == "geodesic":
        raise ParameterError("assignment", "method='graph_full' has no 'geodesic' assignment (every training vector "
                             "is a graph node; others go to their nearest node's cell): use assignment='landmark' "
                             "or 'medoid'.")


def fit_full_graph(est, X: np.ndarray, features: np.ndarray, variances, rec, n_jobs: int, device=None) -> None:
    """Fit ``est`` (a GeodesicKMedoids with method="graph_full") on every row of ``X``; ``device``:
    where the exact neighbour searches run (None: the CPU searches)."""
    with rec.step("dedup"):
        nodes = unique_rows(features)
        all_distinct = nodes.n_unique == features.shape[0] and np.array_equal(nodes.first_index, np.arange(nodes.n_unique))
        node_points = features if all_distinct else features[nodes.first_index]  # no copy of millions of rows
    if nodes.n_unique <= est.n_neighbors or nodes.n_unique < est.n_clusters:
        raise ParameterError("n_clusters" if nodes.n_unique < est.n_clusters else "n_neighbors",
                             f"only {nodes.n_unique} distinct vectors for n_clusters={est.n_clusters} and "
                             f"n_neighbors={est.n_neighbors}; fit on more vectors.")

    with rec.step("landmark_start"):
        start = clone(est).set_params(method=est.start_method, assignment="landmark")
        start.fit(X, variances=variances)
        start_vectors = start.landmark_indices_[start.medoid_indices_]
        start_nodes = _distinct(nodes.inverse[start_vectors], nodes.n_unique, est.random_state)

    common = dict(n_jobs=n_jobs, progress=est.progress)
    with rec.step("knn_graph"):
        graph, knn_report = neighbour_graph(
            node_points, est.n_neighbors, search=est.neighbor_search, library=est.ann_library, m=est.ann_m,
            ef_construction=est.ann_ef_construction, ef=est.ann_ef, min_recall=est.min_recall,
            recall_sample=est.recall_sample, on_low_recall=est.on_low_recall, random_state=est.random_state,
            device=device, **common)
    log.info("%s", knn_report.summary())
    with rec.step("connect"):
        graph, report = connect_components(graph, node_points, n_jobs=n_jobs)
    with rec.step("kmedoids"):
        found = graph_kmedoids(graph, est.n_clusters, weights=nodes.counts, random_state=est.random_state,
                               init_medoids=start_nodes, cell_update="sampled", swap_passes=False,
                               max_iter=est.full_max_iter, n_samples=est.full_samples, n_exact=est.full_exact,
                               tol=est.full_tol, n_jobs=n_jobs)
    # The forked workers' own extra memory (what they added beyond the pages they share with
    # this process), one per core at worst, on top of this process's peak.
    rec.peak_memory["kmedoids"] += n_jobs * worker_extra_bytes()
    del graph

    est.landmark_indices_ = nodes.first_index  # the "landmarks" are all distinct training vectors
    est.landmarks_ = node_points
    est.medoid_indices_ = found.medoids
    est.cluster_centers_ = X[nodes.first_index[found.medoids]].copy()
    if est.edge_weight == "wasserstein":
        est.cluster_center_variances_ = np.square(features[nodes.first_index[found.medoids], X.shape[1]:])
    est.labels_ = found.labels
    est.inertia_ = found.inertia
    est.start_inertia_ = found.history[0]
    est.objective_history_ = list(found.history)
    est.start_labels_ = found.initial_labels  # each node's cell under the landmark medoids, on the full graph
    est.kmedoids_n_iter_ = found.n_iter
    est.start_medoid_vector_indices_ = start_vectors
    est.landmark_start_ = start
    est.n_unique_landmarks_ = nodes.n_unique
    est.n_components_ = report.n_components_before
    est.connection_report_ = report.as_dict()
    est.knn_report_ = knn_report.as_dict()
    est._node_points = node_points
    est._node_labels = found.labels
    est._node_lookup = RowLookup(node_points)
    est._medoid_points = features[nodes.first_index[found.medoids]]
    log.info("full-graph geodesic k-medoids: %d vectors (%d distinct), K=%d, objective %.6g (landmark start %.6g, "
             "%+.3f%%), %s", X.shape[0], nodes.n_unique, est.n_clusters, est.inertia_, est.start_inertia_,
             100 * (est.inertia_ / est.start_inertia_ - 1), ", ".join(f"{k} {v:.2f}s" for k, v in rec.timings.items()))


def _distinct(medoids: np.ndarray, n: int, random_state) -> np.ndarray:
    """``medoids`` with repeats (two identical landmark vectors chosen as medoids) replaced by
    other nodes, drawn with the seed."""
    medoids = np.asarray(medoids, dtype=np.int64).copy()
    _, first = np.unique(medoids, return_index=True)
    repeats = np.setdiff1d(np.arange(medoids.size), first)
    if repeats.size:
        rng = np.random.default_rng(random_state)
        free = np.setdiff1d(np.arange(n), medoids)
        medoids[repeats] = rng.choice(free, size=repeats.size, replace=False)
    return medoids


def assign_to_graph_nodes(X: np.ndarray, lookup: RowLookup, node_labels: np.ndarray, *, backend: str = "auto",
                          n_jobs: int = 1, progress: bool = False, device=None) -> np.ndarray:
    """Cell of each row of ``X``: its own node's where it is a graph node (a training vector),
    else that of its nearest node (exact search, on ``device`` if given; duplicates among the
    queries searched once)."""
    node_labels = np.asarray(node_labels, dtype=np.int64)
    match = lookup.find(X)
    out = np.empty(X.shape[0], dtype=np.int64)
    known = match >= 0
    out[known] = node_labels[match[known]]
    rest = np.flatnonzero(~known)
    if rest.size:
        groups = unique_rows(X[rest])
        queries = X[rest][groups.first_index]
        if device is None and backend == "auto" and lookup.reference.shape[0] > _TREE_MIN_REFERENCE:
            nearest = _tree_nearest(lookup, queries, n_jobs, progress)
        else:
            nearest = nearest_neighbors(queries, lookup.reference, 1, backend=backend, n_jobs=n_jobs,
                                        progress=progress, desc="assign (nearest training vector)",
                                        device=device)[1][:, 0]
        out[rest] = node_labels[nearest][groups.inverse]
    return out


# Against millions of training vectors the k-d tree in principal axes is the fast exact CPU search
# (its timing against the pruned BLAS search: docs/full_graph.md, Codes). The tree is kept with the lookup.
_TREE_MIN_REFERENCE = 200_000


def _tree_nearest(lookup: RowLookup, queries: np.ndarray, n_jobs: int, progress: bool) -> np.ndarray:
    if getattr(lookup, "tree", None) is None:
        lookup.tree = KdTreeSearch(lookup.reference)
    return search_in_chunks(lookup.tree, queries, 1, n_jobs=n_jobs, progress=progress,
                            desc="assign (nearest training vector)")[1][:, 0]
