"""All-pairs geodesic (shortest-path) distances over a connected neighbour graph.

scipy's Dijkstra is the engine, run from chunks of source nodes. It holds the GIL (two threads
run barely faster than one), so the chunks go to worker *processes*. The workers are forked and
write their rows straight into one shared anonymous memory map, cast to float32 on the way: the
result is never copied, never pickled, and no (n x n) float64 array ever exists (each worker
holds one float64 chunk of about 64 MB). At 40,000 nodes the result is 6.4 GB.

The graph is symmetric, so Dijkstra runs in "directed" mode on it: the same answer, ~30% faster
than ``directed=False``, which follows the transposed graph as well.
Where ``fork`` is unavailable (Windows, macOS spawn), a thread pool does the same work slower.
"""

from __future__ import annotations

import itertools
import mmap
import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, dijkstra

from geovq.errors import ParameterError
from geovq.quantize.resources import progress_bar

_CHUNK_BYTES = 64 << 20  # float64 rows one worker holds at a time
_MIN_NODES_FOR_PROCESSES = 1500  # below this, forking costs more than it saves

# Set just before forking; forked workers inherit it instead of receiving pickles.
_SHARED: dict = {}
_CALLS = itertools.count()


def geodesic_distances(
    graph: sp.csr_matrix, *, n_jobs: int = 1, progress: bool = False, chunk_rows: int | None = None,
    sources: np.ndarray | None = None,
) -> np.ndarray:
    """``D[i, j]`` = length of the shortest path from node ``i`` to ``j`` (float32, n x n), or
    from ``sources[i]`` to ``j`` (len(sources) x n) when ``sources`` are given.

    ``graph`` must be a symmetric, connected adjacency matrix with non-negative weights (see
    :func:`geovq.quantize.connectivity.connect_components`).
    """
    graph = sp.csr_matrix(graph, dtype=np.float64)
    n = graph.shape[0]
    n_comp, _ = connected_components(graph, directed=False)
    if n_comp > 1:
        raise ParameterError(
            "graph",
            f"graph has {n_comp} connected components, so some geodesic distances are infinite; "
            "join them first with geovq.quantize.connect_components (GeodesicKMedoids does this)."
        )
    if graph.nnz and graph.data.min() < 0:
        raise ParameterError("graph", "graph has negative edge weights; edge weights must be non-negative distances.")
    sources = np.arange(n) if sources is None else np.asarray(sources, dtype=np.int64)
    m = sources.size
    chunk_rows = chunk_rows or default_chunk_rows(n, n_jobs)
    key = next(_CALLS)  # this call's entry in _SHARED (calls from several threads do not mix)
    bounds = [(key, s, min(m, s + chunk_rows)) for s in range(0, m, chunk_rows)]

    use_fork = uses_worker_processes(n, n_jobs)
    if use_fork:
        buffer = mmap.mmap(-1, max(1, m * n * 4))  # anonymous and MAP_SHARED: workers write into it
        out = np.frombuffer(buffer, dtype=np.float32, count=m * n).reshape(m, n)
    else:
        out = np.empty((m, n), dtype=np.float32)
    _SHARED[key] = (graph, out, sources)
    try:
        with progress_bar(m, "shortest paths", progress, unit="src") as bar:
            if use_fork:
                with mp.get_context("fork").Pool(n_jobs) as pool:
                    for done in pool.imap_unordered(_rows_from, bounds):
                        bar.update(done)
            elif n_jobs > 1:
                with ThreadPoolExecutor(n_jobs) as pool:
                    for done in pool.map(_rows_from, bounds):
                        bar.update(done)
            else:
                for b in bounds:
                    bar.update(_rows_from(b))
    finally:
        del _SHARED[key]
    return out


def default_chunk_rows(n: int, n_jobs: int) -> int:
    """Sources per task: at most ~64 MB of float64 rows, and >= 16 tasks per worker to balance."""
    return max(1, min(_CHUNK_BYTES // (8 * n), -(-n // (16 * n_jobs))))


def uses_worker_processes(n: int, n_jobs: int) -> bool:
    return n_jobs > 1 and n >= _MIN_NODES_FOR_PROCESSES and "fork" in mp.get_all_start_methods()


def worker_memory_bytes(n: int, n_jobs: int) -> int:
    """Memory outside this process's RSS: the shared result and the workers' float64 rows."""
    if not uses_worker_processes(n, n_jobs):
        return 0
    return n * n * 4 + min(n_jobs, -(-n // default_chunk_rows(n, n_jobs))) * default_chunk_rows(n, n_jobs) * n * 8


def _rows_from(task) -> int:
    key, start, stop = task
    graph, out, sources = _SHARED[key]
    out[start:stop] = dijkstra(graph, directed=True, indices=sources[start:stop])  # float64 -> float32 per chunk
    return stop - start
