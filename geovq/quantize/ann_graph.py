"""The k-NN graph over millions of points: approximate neighbours, with their recall measured.

An exact k-NN graph costs O(n^2 d) by brute force; the k-d tree of :mod:`geovq.quantize.nearest`
does not save enough in 64 dimensions at millions of points (200k GridVAE latents: 106-177 s for
the exact graph, so hours at 2.7M). Here the neighbours come from an approximate library, chosen
by measurement on GridVAE latents (``bench/quantize.py --ann-study``, 2 cores, results in
``bench/results/quantize_full_2026-12-02.txt``): on 200k, recall@15 / seconds were pynndescent
(NN-descent) 0.9985 / 8-14 s (38 s in a fresh process, numba compiling), hnswlib (HNSW, M=10,
ef_construction=40, ef=32) 0.991 / 10 s, faiss HNSWFlat 0.996 / 16 s, faiss IVFFlat 0.991 / 10 s;
on 1M, pynndescent 0.998 in 119 s (compilation included) against hnswlib 0.987 in 146 s. So
``library="pynndescent"`` by default, ``"hnswlib"`` as the other choice (its index is now built by
one thread, for the same graph in every run on one machine; the hnswlib times here predate that:
docs/full_graph.md).

Approximate neighbours are never used silently: the recall@k of the returned lists is measured
on a random sample of nodes against exact neighbours (brute force, exact distances), reported
in :class:`KnnGraphReport`, and a recall below ``min_recall`` raises a
:class:`~geovq.errors.ParameterError` naming ``min_recall`` (or, with ``on_low_recall="warn"``,
warns and goes on). A neighbour counts as found when the approximate list holds a point at most
as far as the exact k-th neighbour (ties count). Edge weights are exact float64 distances
whatever the search.

``search="auto"`` is exact below ``exact_max_points`` distinct points (the k-d tree graph of
:func:`geovq.quantize.knn_graph`, recall 1 by construction) and approximate above.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from geovq.errors import ParameterError
from geovq.quantize.knn_graph import knn_graph, undirected_graph
from geovq.quantize.nearest import _drop_self, exact_distances, nearest_neighbors, rank_exactly
from geovq.quantize.resources import progress_bar

SEARCHES = ("auto", "exact", "approximate")
ANN_LIBRARIES = ("hnswlib", "pynndescent")
LOW_RECALL_ACTIONS = ("error", "warn")
HNSWLIB_INSTALL = "pip install 'geovq[ann]'  (or: pip install hnswlib)"
PYNNDESCENT_INSTALL = "pip install 'geovq[ann]'  (or: pip install pynndescent)"
EXACT_MAX_POINTS = 50_000  # search="auto": exact below this many distinct points


@dataclass
class KnnGraphReport:
    """How the neighbours were found and how good they are."""

    search: str  # "exact" or "approximate"
    n_points: int
    n_neighbors: int
    library: str = ""  # e.g. "hnswlib 0.8.0"
    params: dict = field(default_factory=dict)
    recall: float = 1.0  # recall@k measured on recall_sample nodes (1 for an exact search)
    recall_sample: int = 0
    min_recall: float = 0.0
    seconds_build: float = 0.0
    seconds_query: float = 0.0
    seconds_recall: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.search == "exact":
            return f"exact {self.n_neighbors}-NN graph of {self.n_points} points"
        return (f"approximate {self.n_neighbors}-NN graph of {self.n_points} points ({self.library}, "
                f"{', '.join(f'{k}={v}' for k, v in self.params.items())}): recall@{self.n_neighbors} "
                f"{self.recall:.4f} on {self.recall_sample} sampled nodes (min_recall {self.min_recall})")


def neighbour_graph(
    points: np.ndarray, n_neighbors: int, *, search: str = "auto", exact_max_points: int = EXACT_MAX_POINTS,
    m: int = 10, ef_construction: int = 40, ef: int = 32, min_recall: float = 0.95, recall_sample: int = 1000,
    on_low_recall: str = "error", random_state: int | None = 0, n_jobs: int = 1, progress: bool = False,
    library: str = "pynndescent", device=None,
) -> tuple[sp.csr_matrix, KnnGraphReport]:
    """The symmetric k-NN graph of the distinct ``points`` (as :func:`~geovq.quantize.knn_graph`)
    and a :class:`KnnGraphReport`. ``m``, ``ef_construction``, ``ef``: the HNSW index's links
    per node, build-time and query-time beam widths (larger: better recall, slower), with
    ``library="hnswlib"``; the default ``"pynndescent"`` (NN-descent) takes its own defaults.
    ``device``: where the exact searches (the exact graph, the recall check) run; None: the CPU."""
    if library not in ANN_LIBRARIES:
        raise ParameterError("library", f"library must be one of {ANN_LIBRARIES}, got {library!r}.")
    if search not in SEARCHES:
        raise ParameterError("search", f"search must be one of {SEARCHES}, got {search!r}.")
    if on_low_recall not in LOW_RECALL_ACTIONS:
        raise ParameterError("on_low_recall", f"on_low_recall must be one of {LOW_RECALL_ACTIONS}, got {on_low_recall!r}.")
    if not 0 <= min_recall <= 1:
        raise ParameterError("min_recall", f"min_recall must be in [0, 1], got {min_recall!r}.")
    n = points.shape[0]
    if search == "exact" or (search == "auto" and n <= exact_max_points):
        graph = knn_graph(points, n_neighbors, n_jobs=n_jobs, progress=progress, device=device)
        return graph, KnnGraphReport("exact", n, n_neighbors, recall_sample=0, min_recall=min_recall)
    if not 1 <= n_neighbors < n:
        raise ParameterError("n_neighbors", f"n_neighbors must be in [1, {n - 1}] for {n} distinct points, got {n_neighbors}.")
    if library == "pynndescent":
        dist, idx, name, seconds_build = nn_descent(points, n_neighbors, random_state=random_state, n_jobs=n_jobs)
        seconds_query, params = 0.0, {}
    else:
        index, name, seconds_build = build_hnsw(points, m=m, ef_construction=ef_construction, random_state=random_state,
                                                n_jobs=n_jobs)
        start = time.perf_counter()
        dist, idx = query_hnsw(index, points, n_neighbors, ef=ef, progress=progress)
        seconds_query = time.perf_counter() - start
        del index
        params = dict(m=m, ef_construction=ef_construction, ef=ef)
    report = KnnGraphReport("approximate", n, n_neighbors, name, params,
                            min_recall=min_recall, seconds_build=seconds_build, seconds_query=seconds_query)
    start = time.perf_counter()
    report.recall, report.recall_sample = sampled_recall(points, idx, n_neighbors, recall_sample, random_state, n_jobs,
                                                         device=device)
    report.seconds_recall = time.perf_counter() - start
    check_recall(report, on_low_recall)
    rows = np.repeat(np.arange(n, dtype=np.int64), n_neighbors)
    graph = undirected_graph(rows, idx.reshape(-1), dist.reshape(-1), n)
    return graph, report


def check_recall(report: KnnGraphReport, on_low_recall: str = "error") -> None:
    """Raise (or warn) when the measured recall is below ``report.min_recall``."""
    if report.recall >= report.min_recall:
        return
    message = (f"the approximate k-NN graph's recall@{report.n_neighbors} is {report.recall:.4f} on "
               f"{report.recall_sample} sampled nodes, below min_recall={report.min_recall}: raise the "
               f"index's ef / ef_construction / m, or search='exact', or lower min_recall to accept it")
    if on_low_recall == "error":
        raise ParameterError("min_recall", message + ".")
    warnings.warn(message + "; going on with it (on_low_recall='warn').", stacklevel=3)


def import_hnswlib():
    try:
        import hnswlib
    except ImportError as exc:
        raise ImportError(f"library='hnswlib' needs hnswlib, which is not installed: {HNSWLIB_INSTALL}") from exc
    return hnswlib


def build_hnsw(points: np.ndarray, *, m: int, ef_construction: int, random_state: int | None, n_jobs: int):
    """An HNSW index over ``points`` (ids = row numbers); returns it, the library's name and
    version, and the build seconds."""
    hnswlib = import_hnswlib()
    from importlib.metadata import version

    start = time.perf_counter()
    index = hnswlib.Index(space="l2", dim=points.shape[1])
    index.init_index(max_elements=points.shape[0], ef_construction=ef_construction, M=m,
                     random_seed=0 if random_state is None else int(random_state))
    # Inserted by one thread: with several, the order in which points join the graph follows the
    # threads' timing, so the index (its recall, the graph, the codebook) changed from run to run
    # under the same seed. The queries, each independent of the others, then use n_jobs threads.
    index.set_num_threads(1)
    index.add_items(np.ascontiguousarray(points, dtype=np.float32), np.arange(points.shape[0]))
    index.set_num_threads(n_jobs)
    return index, f"hnswlib {version('hnswlib')}", time.perf_counter() - start


def query_hnsw(index, points: np.ndarray, k: int, *, ef: int, chunk_size: int = 8192, progress: bool = False):
    """Each point's ``k`` approximate nearest other points (exact float64 distances, sorted)."""
    n = points.shape[0]
    index.set_ef(max(ef, k + 1))
    out_d = np.empty((n, k), dtype=np.float64)
    out_i = np.empty((n, k), dtype=np.int64)
    with progress_bar(n, "k-NN graph (hnswlib)", progress, unit="vec") as bar:
        for s in range(0, n, chunk_size):
            q = points[s : s + chunk_size]
            try:
                labels, _ = index.knn_query(q, k=k + 1)
            except RuntimeError as exc:  # an index too sparse to return k + 1 points for some query
                raise ParameterError("ann_ef", f"the HNSW index could not return {k + 1} neighbours for every point "
                                     f"({exc}); raise ef or m.") from exc
            idx = _drop_self(labels.astype(np.int64), np.arange(s, s + len(q))[:, None], k)
            out_d[s : s + len(q)], out_i[s : s + len(q)] = rank_exactly(q, points, idx, k)
            bar.update(len(q))
    return out_d, out_i


def nn_descent(points: np.ndarray, k: int, *, random_state, n_jobs: int, chunk_size: int = 8192):
    """Each point's ``k`` approximate nearest other points by pynndescent's NN-descent (exact
    float64 distances, sorted); returns them, the library's name and the seconds."""
    try:
        import pynndescent
    except ImportError as exc:
        raise ImportError(f"library='pynndescent' needs pynndescent, which is not installed: {PYNNDESCENT_INSTALL}") from exc
    from importlib.metadata import version

    start = time.perf_counter()
    index = pynndescent.NNDescent(np.ascontiguousarray(points, dtype=np.float32), n_neighbors=k + 1,
                                  random_state=random_state, n_jobs=n_jobs, low_memory=True)
    labels, _ = index.neighbor_graph
    del index
    n = points.shape[0]
    out_d = np.empty((n, k), dtype=np.float64)
    out_i = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, chunk_size):
        q = points[s : s + chunk_size]
        idx = _drop_self(labels[s : s + chunk_size].astype(np.int64), np.arange(s, s + len(q))[:, None], k)
        out_d[s : s + len(q)], out_i[s : s + len(q)] = rank_exactly(q, points, idx, k)
    return out_d, out_i, f"pynndescent {version('pynndescent')}", time.perf_counter() - start


def sampled_recall(points: np.ndarray, idx: np.ndarray, k: int, sample: int, random_state, n_jobs: int = 1,
                   device=None):
    """recall@k of the neighbour lists ``idx`` (n, k) on ``sample`` random rows: the share of
    listed neighbours at most as far as the exact k-th nearest other point (found on ``device``,
    if given). Returns ``(recall, sample size)``."""
    n = points.shape[0]
    rows = np.sort(np.random.default_rng(random_state).choice(n, size=min(sample, n), replace=False))
    _, exact = nearest_neighbors(points[rows], points, min(k + 1, n), backend="brute", n_jobs=n_jobs, device=device)
    exact = _drop_self(exact, rows[:, None], k)
    kth = exact_distances(points[rows], points, exact[:, -1:])[:, 0]
    found = exact_distances(points[rows], points, idx[rows, :k])
    hits = (found <= kth[:, None] * (1 + 1e-9)).sum()
    return float(hits / (rows.size * k)), int(rows.size)
