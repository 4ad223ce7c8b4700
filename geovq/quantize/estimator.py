"""Geodesic K-Medoids: the a posteriori codebook of the paper (section 3.1), as an estimator.

fit:  landmarks -> k-NN graph over the distinct landmarks -> join its components ->
      all-pairs shortest paths (float32) -> K-Medoids on that matrix -> codebook = medoids.
predict: every vector to a cluster by one of the rules of :mod:`geovq.quantize.assignment`.

A :class:`~geovq.quantize.base.CodebookQuantizer` (a scikit-learn estimator); see there for the
interface shared with :class:`~geovq.quantize.EuclideanKMeans`.

Duplicate landmarks (uniform sampling on MNIST draws the same background vector thousands of
times) are one node of the graph: identical vectors are the same point of the manifold, at
geodesic distance 0, with identical rows in the distance matrix. The graph, the shortest paths and
the nearest-landmark search run on the distinct landmarks; K-Medoids still runs on all
``n_landmarks`` (the matrix is expanded), so the objective weighs each landmark once, as in the paper.
Compared with a k-NN graph built on the multiset, each node gets ``n_neighbors`` *distinct*
neighbours instead of spending them on its own copies.
"""

from __future__ import annotations

import logging

import numpy as np

from geovq.errors import ParameterError
from geovq.quantize.assignment import (
    ASSIGNMENTS,
    assign_by_geodesic,
    assign_to_nearest_landmark,
    assign_to_nearest_medoid,
)
from geovq.quantize.base import CodebookQuantizer
from geovq.quantize.connectivity import connect_components
from geovq.quantize.dedup import unique_rows
from geovq.quantize.device import resolve_device, search_device
from geovq.quantize.geodesic import geodesic_distances, worker_memory_bytes
from geovq.quantize.inputs import (
    EDGE_WEIGHTS,
    check_choice,
    check_positive_int,
    geometry_features,
    resolve_n_jobs,
)
from geovq.quantize.knn_graph import knn_graph
from geovq.quantize.landmarks import LANDMARK_SELECTIONS, select_landmarks
from geovq.quantize.graph_kmedoids import graph_kmedoids
from geovq.quantize.medoids import KMEDOIDS_BACKENDS, KMedoidsResult, kmedoids
from geovq.quantize.nearest import NN_BACKENDS
from geovq.quantize.full_graph import assign_to_graph_nodes, check_full_params, fit_full_graph
from geovq.quantize.resources import StepRecorder

log = logging.getLogger(__name__)

METHODS = ("dense", "graph", "graph_full")
FULL_ASSIGNMENTS = ("landmark", "medoid")  # method="graph_full": every training vector is a node
START_METHODS = ("dense", "graph")


class _AssignmentRules:
    """``assignment_rules``: all three rules, but ``("landmark", "medoid")`` on an estimator with
    ``method="graph_full"`` (its geodesic rule would need the N x K node-to-medoid matrix)."""

    def __get__(self, obj, owner=None):
        return FULL_ASSIGNMENTS if obj is not None and getattr(obj, "method", None) == "graph_full" else ASSIGNMENTS


class GeodesicKMedoids(CodebookQuantizer):
    """K-Medoids on geodesic distances of a k-NN graph over landmarks.

    Parameters
    ----------
    n_clusters: codebook size K.
    n_landmarks: number of landmarks N (the paper: 10,000). Memory grows as 4 N^2 bytes.
    n_neighbors: k of the k-NN graph.
    landmark_selection: ``"uniform"`` (paper), ``"unique"`` or ``"maxmin"``; see
        :mod:`geovq.quantize.landmarks`.
    edge_weight: ``"euclidean"`` between means, or ``"wasserstein"``: the 2-Wasserstein distance
        between the diagonal posterior Gaussians (fit/predict then need ``variances=``;
        :attr:`uses_variances` is true).
    assignment: default rule of :meth:`predict`, one of :attr:`assignment_rules`:
        ``"landmark"`` (paper), ``"medoid"``, ``"geodesic"``.
    backend: K-Medoids backend of ``method="dense"``, ``"fasterpam"`` or ``"sklearn_extra"``.
    method: ``"dense"`` (the paper: all-pairs geodesic matrix, 4 N^2 bytes, then K-Medoids on it)
        or ``"graph"``: K-Medoids on the k-NN graph itself, no N x N matrix (seeding, Voronoi
        iteration and regional PAM swaps, see :mod:`geovq.quantize.graph_kmedoids`); memory
        O(N (k + K)), for 100k landmarks and more; or ``"graph_full"``: geodesic K-Medoids over
        *every* fitted vector, on the k-NN graph of all of them (approximate neighbours with
        measured recall above ``min_recall``), started from the ``n_landmarks`` landmark solution
        (``start_method``) and refined on the full graph (see :mod:`geovq.quantize.full_graph`);
        the ``"landmark"`` rule then gives each vector the cell of its nearest fitted vector
        (itself, for a fitted vector), and there is no ``"geodesic"`` rule.
    random_state: seed of the landmark draw and of K-Medoids; same seed, same codebook.
    n_jobs: cores to use (-1: all).
    device: where the exact neighbour searches (k-NN graph, assignment) run: ``"auto"`` (a CUDA GPU
        when torch sees one, else the CPU), ``"cpu"`` (the CPU searches of ``nn_backend``),
        ``"cuda"`` or ``"cuda:N"`` (exact brute force on that GPU). Every device gives the same
        codebook and codes (:mod:`geovq.quantize.device`).
    progress: show tqdm bars for the long steps.
    n_candidates: nearby landmarks tried as graph entry points by the ``"geodesic"`` rule.
    duplicate_tolerance: grid size under which vectors count as duplicates for
        ``landmark_selection="unique"``/``"maxmin"`` (0: bit-identical only).
    max_iter: K-Medoids iteration limit.
    nn_backend: exact neighbour search on the CPU, ``"auto"``, ``"kdtree"``, ``"brute"`` or
        ``"pruned"`` (see :mod:`geovq.quantize.nearest`; with ``"pruned"``, which finds one
        neighbour, the k-NN graph uses ``"auto"``); on a GPU (``device``) the search is brute force.
    store_distances: keep the landmark geodesic matrix as ``geodesic_distances_`` (4 N^2 bytes;
        ``method="dense"`` only).
    neighbor_search, ann_library, ann_m, ann_ef_construction, ann_ef, min_recall, recall_sample,
        on_low_recall: ``method="graph_full"``: the k-NN graph's search (``"auto"``: exact up to
        50k distinct vectors, else approximate), the library (``"pynndescent"`` or
        ``"hnswlib"``), hnswlib's index (links per node, build and query beam widths), the recall@k required of approximate neighbours (measured on ``recall_sample``
        nodes), and ``"error"`` or ``"warn"`` below it (see :mod:`geovq.quantize.ann_graph`).
    start_method: ``method="graph_full"``: the landmark solution it starts from, ``"dense"``
        (the paper's, as ``method="dense"`` fits it) or ``"graph"``.
    full_samples, full_exact, full_max_iter, full_tol: ``method="graph_full"``: per cell and
        iteration, Dijkstras from ``full_samples`` sampled nodes estimate every node's in-cell
        sum and the ``full_exact`` best are scored exactly; at most ``full_max_iter`` iterations,
        stopping when one gains less than the fraction ``full_tol`` of the objective.

    Fitted attributes
    -----------------
    cluster_centers_ (K, D) float32: the medoid vectors (means), the codebook.
    cluster_center_variances_ (K, D): their variances (``edge_weight="wasserstein"`` only).
    medoid_indices_ (K,): indices into the landmarks; landmark_indices_ (N,): indices into X.
    landmarks_ (N, D) float32: the landmark vectors.
    labels_ (N,): cluster of each landmark. inertia_: sum of geodesic distances of the landmarks
        to their medoid (the K-Medoids objective). kmedoids_n_iter_: K-Medoids iterations.
    landmark_geodesic_to_medoids_ (N, K) float32: what the ``"geodesic"`` rule needs.
    n_components_: connected components of the k-NN graph before joining them;
        connection_report_: dict of what was done to connect it (see ConnectionReport).
    n_unique_landmarks_: distinct landmark vectors (= graph nodes).
    n_features_in_: the dimension D of the fitted vectors.
    timings_: seconds per fit step (landmarks, knn_graph, connect, shortest_paths, kmedoids; with
        ``method="graph"``: kmedoids, then medoid_distances, the K single-source Dijkstras);
        predict records nothing (time it yourself). peak_memory_: bytes per step, the peak
        resident memory of this process during the step minus that at its start (see
        :mod:`geovq.quantize.resources`); for shortest_paths the shared result matrix and the
        workers' float64 chunks, which live outside this process's RSS, are added by size.
    """

    assignment_rules = _AssignmentRules()

    def __init__(
        self,
        n_clusters: int = 128,
        n_landmarks: int = 10000,
        n_neighbors: int = 15,
        landmark_selection: str = "uniform",
        edge_weight: str = "euclidean",
        assignment: str = "landmark",
        backend: str = "fasterpam",
        random_state: int | None = 0,
        n_jobs: int = -1,
        progress: bool = False,
        n_candidates: int = 5,
        duplicate_tolerance: float = 0.0,
        max_iter: int = 300,
        nn_backend: str = "auto",
        store_distances: bool = False,
        method: str = "dense",
        neighbor_search: str = "auto",
        ann_library: str = "pynndescent",
        ann_m: int = 10,
        ann_ef_construction: int = 40,
        ann_ef: int = 32,
        min_recall: float = 0.95,
        recall_sample: int = 1000,
        on_low_recall: str = "error",
        start_method: str = "dense",
        full_samples: int = 48,
        full_exact: int = 16,
        full_max_iter: int = 10,
        full_tol: float = 1e-4,
        device: str = "auto",
    ):
        self.n_clusters = n_clusters
        self.n_landmarks = n_landmarks
        self.n_neighbors = n_neighbors
        self.landmark_selection = landmark_selection
        self.edge_weight = edge_weight
        self.assignment = assignment
        self.backend = backend
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.progress = progress
        self.n_candidates = n_candidates
        self.duplicate_tolerance = duplicate_tolerance
        self.max_iter = max_iter
        self.nn_backend = nn_backend
        self.store_distances = store_distances
        self.method = method
        self.neighbor_search = neighbor_search
        self.ann_library = ann_library
        self.ann_m = ann_m
        self.ann_ef_construction = ann_ef_construction
        self.ann_ef = ann_ef
        self.min_recall = min_recall
        self.recall_sample = recall_sample
        self.on_low_recall = on_low_recall
        self.start_method = start_method
        self.full_samples = full_samples
        self.full_exact = full_exact
        self.full_max_iter = full_max_iter
        self.full_tol = full_tol
        self.device = device

    # -- parameters ---------------------------------------------------------------------------

    @property
    def uses_variances(self) -> bool:
        return self.edge_weight == "wasserstein"

    def check_params(self) -> None:
        k = check_positive_int(self.n_clusters, "n_clusters")
        n = check_positive_int(self.n_landmarks, "n_landmarks", 2)
        nn = self.n_neighbors
        if isinstance(nn, bool) or not isinstance(nn, (int, np.integer)) or not 1 <= nn < n:
            raise ParameterError(
                "n_neighbors",
                f"n_neighbors must be an integer in [1, n_landmarks - 1] = [1, {n - 1}], got {nn!r}; "
                "the paper's graphs use 10-15.",
            )
        if k > n:
            raise ParameterError(
                "n_clusters",
                f"n_clusters={k} is more than n_landmarks={n}: the medoids are chosen among the "
                "landmarks; raise n_landmarks or lower n_clusters.",
            )
        check_choice(self.landmark_selection, "landmark_selection", LANDMARK_SELECTIONS)
        check_choice(self.edge_weight, "edge_weight", EDGE_WEIGHTS)
        check_choice(self.assignment, "assignment", self.assignment_rules)
        check_choice(self.backend, "backend", KMEDOIDS_BACKENDS)
        check_choice(self.method, "method", METHODS)
        if self.method != "dense" and self.store_distances:
            raise ParameterError("store_distances", "store_distances=True keeps the N x N geodesic matrix, which "
                                 f"method={self.method!r} never forms; use method='dense' or store_distances=False.")
        check_full_params(self)
        check_choice(self.nn_backend, "nn_backend", NN_BACKENDS)
        check_positive_int(self.n_candidates, "n_candidates")
        check_positive_int(self.max_iter, "max_iter")
        if not isinstance(self.duplicate_tolerance, (int, float, np.integer, np.floating)) or not self.duplicate_tolerance >= 0:
            raise ParameterError(
                "duplicate_tolerance",
                f"duplicate_tolerance must be a number >= 0 (0 = exact duplicates), got {self.duplicate_tolerance!r}.",
            )
        resolve_n_jobs(self.n_jobs)
        resolve_device(self.device)

    # -- fit ----------------------------------------------------------------------------------

    def _fit(self, X: np.ndarray, variances, rec: StepRecorder) -> None:
        """Build the codebook from the vectors ``X`` (n, D) (and their variances, for W2)."""
        n_jobs = resolve_n_jobs(self.n_jobs)
        features = geometry_features(X, variances, self.edge_weight)
        device = search_device(self.device)
        if self.method == "graph_full":
            return fit_full_graph(self, X, features, variances, rec, n_jobs, device)
        common = dict(n_jobs=n_jobs, progress=self.progress)

        with rec.step("landmarks"):
            idx = select_landmarks(
                features, self.n_landmarks, self.landmark_selection, self.random_state,
                duplicate_tolerance=self.duplicate_tolerance, **common,
            )
            nodes = unique_rows(features[idx])  # duplicate landmarks -> one graph node
            node_points = features[idx][nodes.first_index]
        self._check_distinct(nodes.n_unique)

        with rec.step("knn_graph"):
            knn_backend = "auto" if self.nn_backend == "pruned" else self.nn_backend  # pruned: k = 1 only
            graph = knn_graph(node_points, self.n_neighbors, backend=knn_backend, device=device, **common)
        with rec.step("connect"):
            graph, report = connect_components(graph, node_points, n_jobs=n_jobs)
        if self.method == "graph":
            result, node_to_medoids = self._graph_kmedoids(graph, nodes, rec, n_jobs)
        else:
            result, node_to_medoids, D = self._dense_kmedoids(graph, nodes, rec, n_jobs)

        self.landmark_indices_ = idx
        self.landmarks_ = X[idx]
        self.medoid_indices_ = result.medoids
        self.cluster_centers_ = X[idx[result.medoids]].copy()
        if self.edge_weight == "wasserstein":
            self.cluster_center_variances_ = np.square(features[idx[result.medoids], X.shape[1]:])
        self.labels_ = result.labels
        self.inertia_ = result.inertia
        self.kmedoids_n_iter_ = result.n_iter
        self.landmark_geodesic_to_medoids_ = np.ascontiguousarray(node_to_medoids[nodes.inverse])
        self.n_unique_landmarks_ = nodes.n_unique
        self.n_components_ = report.n_components_before
        self.connection_report_ = report.as_dict()
        if self.store_distances:
            self.geodesic_distances_ = D
        # The graph side of predict: distinct landmarks, their labels and medoid distances.
        self._node_points = node_points
        self._node_labels = result.labels[nodes.first_index]
        self._node_to_medoids = node_to_medoids
        self._medoid_points = features[idx[result.medoids]]
        log.info("geodesic k-medoids: %d landmarks (%d distinct), K=%d, objective %.6g, %s",
                 len(idx), nodes.n_unique, self.n_clusters, self.inertia_,
                 ", ".join(f"{k} {v:.2f}s" for k, v in rec.timings.items()))

    def _dense_kmedoids(self, graph, nodes, rec: StepRecorder, n_jobs: int):
        """All-pairs geodesics, expanded to every landmark, then K-Medoids on that matrix."""
        with rec.step("shortest_paths"):
            node_dist = geodesic_distances(graph, n_jobs=n_jobs, progress=self.progress)
        rec.peak_memory["shortest_paths"] += worker_memory_bytes(node_dist.shape[0], n_jobs)
        with rec.step("kmedoids"):
            D = _expand(node_dist, nodes.inverse)
            result = kmedoids(D, self.n_clusters, backend=self.backend, random_state=self.random_state,
                              max_iter=self.max_iter)
        medoid_nodes = nodes.inverse[result.medoids]
        return result, np.ascontiguousarray(node_dist[:, medoid_nodes]), D

    def _graph_kmedoids(self, graph, nodes, rec: StepRecorder, n_jobs: int):
        """K-Medoids of the graph nodes (weighted by their copies among the landmarks), then the
        K rows of geodesics from the medoids; no N x N matrix."""
        with rec.step("kmedoids"):
            found = graph_kmedoids(graph, self.n_clusters, weights=nodes.counts, random_state=self.random_state,
                                   max_iter=self.max_iter, n_jobs=n_jobs)
        with rec.step("medoid_distances"):
            node_to_medoids = np.ascontiguousarray(
                geodesic_distances(graph, n_jobs=n_jobs, progress=self.progress, sources=found.medoids).T)
        result = KMedoidsResult(nodes.first_index[found.medoids], found.labels[nodes.inverse], found.inertia,
                                found.n_iter, "graph")
        return result, node_to_medoids

    def _check_distinct(self, n_distinct: int) -> None:
        if n_distinct < self.n_clusters:
            raise ParameterError(
                "n_clusters",
                f"only {n_distinct} of the {self.n_landmarks} landmarks are distinct vectors, fewer than "
                f"n_clusters={self.n_clusters}; use landmark_selection='unique', more landmarks, or fewer clusters.",
            )
        if self.n_neighbors >= n_distinct:
            raise ParameterError(
                "n_neighbors",
                f"n_neighbors={self.n_neighbors} but only {n_distinct} landmarks are distinct vectors; "
                f"lower n_neighbors below {n_distinct} or use landmark_selection='unique'.",
            )

    # -- predict ------------------------------------------------------------------------------

    def predict(self, X, *, variances=None, assignment: str | None = None) -> np.ndarray:
        """Cluster index (int64) of every row of ``X`` by the rule ``assignment`` (one of
        :attr:`assignment_rules`; default: the constructor's). ``variances`` are needed with
        ``edge_weight="wasserstein"`` only. Changes no state of the estimator."""
        X = self._check_predict_input(X)
        rule = check_choice(self.assignment if assignment is None else assignment, "assignment",
                            self.assignment_rules)
        return self._assign(X, variances, rule)

    def _predict(self, X: np.ndarray, variances) -> np.ndarray:
        return self._assign(X, variances, check_choice(self.assignment, "assignment", self.assignment_rules))

    def _assign(self, X: np.ndarray, variances, rule: str) -> np.ndarray:
        features = geometry_features(X, variances, self.edge_weight)
        common = dict(backend=self.nn_backend, n_jobs=resolve_n_jobs(self.n_jobs), progress=self.progress,
                      device=search_device(self.device))
        if rule == "landmark" and self.method == "graph_full":
            return assign_to_graph_nodes(features, self._node_lookup, self._node_labels, **common)
        if rule == "landmark":
            return assign_to_nearest_landmark(features, self._node_points, self._node_labels, **common)
        if rule == "medoid":
            return assign_to_nearest_medoid(features, self._medoid_points, **common)
        return assign_by_geodesic(features, self._node_points, self._node_to_medoids, self.n_candidates, **common)

    # -- what to store ------------------------------------------------------------------------

    def artifact_fields(self) -> dict:
        """``landmark_indices`` (indices into the fitted X), ``medoid_indices`` (into the
        landmarks), ``medoid_vector_indices`` (into X: which fitted vector each code is) as int64
        arrays, and ``connection_report`` as plain Python values."""
        fields = super().artifact_fields()
        landmarks = np.asarray(self.landmark_indices_, dtype=np.int64)
        medoids = np.asarray(self.medoid_indices_, dtype=np.int64)
        fields.update(
            landmark_indices=landmarks,
            medoid_indices=medoids,
            medoid_vector_indices=landmarks[medoids],
            connection_report=_plain(self.connection_report_),
        )
        if self.method == "graph_full":
            fields.update(knn_report=_plain(self.knn_report_), start_objective=float(self.start_inertia_),
                          objective_history=[float(v) for v in self.objective_history_],
                          start_medoid_vector_indices=np.asarray(self.start_medoid_vector_indices_, dtype=np.int64))
        return fields


def _plain(value):
    """``value`` with numpy scalars/arrays and tuples turned into Python numbers and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value


def _expand(node_dist: np.ndarray, inverse: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """The landmark x landmark matrix from the distinct-node matrix (all copies of a node have
    its row). Each node row is widened once (a gather within one cached row), then copied to
    the rows of all its copies (contiguous copies); chunked so the temporary stays small."""
    n = inverse.size
    if node_dist.shape[0] == n and np.array_equal(inverse, np.arange(n)):
        return node_dist
    out = np.empty((n, n), dtype=np.float32)
    rows_by_node = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[rows_by_node], np.arange(0, node_dist.shape[0] + chunk, chunk))
    for c, a in enumerate(range(0, node_dist.shape[0], chunk)):
        wide = np.take(node_dist[a : a + chunk], inverse, axis=1)  # (chunk, n)
        rows = rows_by_node[bounds[c] : bounds[c + 1]]
        for r in range(0, rows.size, chunk):  # a node may have thousands of copies: bound the temporary
            out[rows[r : r + chunk]] = wide[inverse[rows[r : r + chunk]] - a]
    return out
