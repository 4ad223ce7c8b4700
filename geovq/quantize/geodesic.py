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

import mmap
import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, dijkstra

from geovq.errors import ConfigError
from geovq.quantize.resources import progress_bar

_CHUNK_BYTES = 64 << 20  # float64 rows one worker holds at a time
_MIN_NODES_FOR_PROCESSES = 1500  # below this, forking costs more than it saves

# Set just before forking; forked workers inherit it instead of receiving pickles.
_SHARED: dict = {}


def geodesic_distances(
    graph: sp.csr_matrix, *, n_jobs: int = 1, progress: bool = False, chunk_rows: int | None = None
) -> np.ndarray:
    """``D[i, j]`` = length of the shortest path from node ``i`` to ``j`` (float32, n x n).

    ``graph`` must be a symmetric, connected adjacency matrix with non-negative weights (see
    :func:`geovq.quantize.connectivity.connect_components`).
    """
    graph = sp.csr_matrix(graph, dtype=np.float64)
    n = graph.shape[0]
    n_comp, _ = connected_components(graph, directed=False)
    if n_comp > 1:
        raise ConfigError(
            f"the graph has {n_comp} connected components, so some geodesic distances are infinite; "
            "join them first with geovq.quantize.connect_components (GeodesicKMedoids does this)."
        )
    if graph.nnz and graph.data.min() < 0:
        raise ConfigError("edge weights must be non-negative distances.")
    if chunk_rows is None:
        per_worker = max(1, _CHUNK_BYTES // (8 * n))
        chunk_rows = max(1, min(per_worker, -(-n // (16 * n_jobs))))  # >= 16 chunks per worker to balance
    bounds = [(s, min(n, s + chunk_rows)) for s in range(0, n, chunk_rows)]

    use_fork = n_jobs > 1 and n >= _MIN_NODES_FOR_PROCESSES and "fork" in mp.get_all_start_methods()
    if use_fork:
        buffer = mmap.mmap(-1, max(1, n * n * 4))  # anonymous and MAP_SHARED: workers write into it
        out = np.frombuffer(buffer, dtype=np.float32, count=n * n).reshape(n, n)
    else:
        out = np.empty((n, n), dtype=np.float32)
    _SHARED.update(graph=graph, out=out)
    try:
        with progress_bar(n, "shortest paths", progress, unit="src") as bar:
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
        _SHARED.clear()
    return out


def _rows_from(bounds: tuple[int, int]) -> int:
    start, stop = bounds
    rows = dijkstra(_SHARED["graph"], directed=True, indices=np.arange(start, stop))
    _SHARED["out"][start:stop] = rows  # float64 -> float32 here, one chunk at a time
    return stop - start
