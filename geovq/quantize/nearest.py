"""Exact Euclidean k-nearest-neighbour search, chunked, on every core or on a GPU.

Three exact CPU backends:

* ``"pruned"`` (single nearest point only): blocked float32 BLAS in the reference's principal
  axes with exact lower bounds, pruning by groups of reference points, exact float64 re-ranking
  (:mod:`geovq.quantize.pruned_search`). The assignment of millions of latents uses it.
* ``"kdtree"``: scipy's ``cKDTree`` (C++, releases the GIL, ``workers`` threads) built on the
  reference points rotated to their principal axes. A rotation keeps every distance, and the
  tree then splits along the directions the data actually spreads in: 1.7x faster on 16-d
  MNIST patches, 2.5x on the same projected to 64-d (intrinsic dimension 16), measured here.
  Used for the k-NN graph (k neighbours of every landmark).
* ``"brute"``: torch matmul, ``||r||^2 - 2 q.r``, over chunks of queries, then ``topk``.
  Predictable cost, the better choice in many dimensions or for a small reference set.

``"auto"`` takes the brute force for small reference sets (a few hundred, e.g. medoids), the
pruned search for the single nearest point, and otherwise the k-d tree (brute force above 64
dimensions). On GridVAE latents (2.94M x 64, N = 10k landmarks) the pruned search is several
times faster than the tree (``bench/quantize.py --assignment-study``, results in
``bench/results/``).

``device``: the brute force is also the search on a torch device (a GPU): the reference is copied
there once, the float32 products run there (TF32 off, :func:`~geovq.quantize.device.full_float32_matmul`)
and only each query's few best candidates come back.

The k-d tree and the brute force are exact the same way (the pruned search has its own proof):
their candidates are re-ranked by the exact float64 distance, computed from the differences (the
float32 formula loses precision for near points), and each query's result is *proved*: the
search's rounding moves a distance by at most a bound computed from the norms, so a query whose
best point *outside* its candidates is, less that bound, beyond its k-th exact distance has no
other point as near; the few queries without that margin (near or exact ties) search again with
more candidates. Ties go to the lower index on every backend, so the CPU searches and the GPU give
the same neighbours.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from geovq.errors import ParameterError
from geovq.quantize.device import full_float32_matmul, resolve_device
from geovq.quantize.pruned_search import build_index, nearest_pruned
from geovq.quantize.resources import progress_bar, torch_threads

NN_BACKENDS = ("auto", "kdtree", "brute", "pruned")
_BRUTE_MAX_REFERENCE = 512  # below this many reference points the matmul is cheaper than a tree
_KDTREE_MAX_DIM = 64  # above this a k-d tree prunes little in general
_RERANK_EXTRA = 4  # candidates beyond k of the brute force, so that most queries are proved exact at once
_SCORE_BLOCK = {"cpu": 1 << 24, "cuda": 1 << 27}  # (queries x reference) scores per product: 64 MB, 512 MB
_RERANK_BLOCK = 1 << 24  # (queries x candidates x dim) float64 differences per exact re-ranking: 128 MB


def choose_backend(n_reference: int, dim: int, backend: str = "auto", k: int = 1, exclude_self: bool = False) -> str:
    if backend not in NN_BACKENDS:
        raise ParameterError("backend", f"backend must be one of {NN_BACKENDS}, got {backend!r}.")
    single = k == 1 and not exclude_self
    if backend == "pruned" and not single:
        raise ParameterError("backend", "backend='pruned' finds the single nearest point only (k=1, not "
                             "exclude_self); use 'kdtree' or 'brute' for k-NN graphs.")
    if backend != "auto":
        return backend
    if n_reference <= _BRUTE_MAX_REFERENCE:
        return "brute"
    return "pruned" if single else "brute" if dim > _KDTREE_MAX_DIM else "kdtree"


def exact_distances(queries: np.ndarray, reference: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``||queries[i] - reference[index[i, j]]||`` in float64, from differences (no cancellation)."""
    diff = reference[index].astype(np.float64) - queries[:, None, :].astype(np.float64)
    return np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))


def rank_exactly(queries: np.ndarray, reference: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of each row's candidates ``index`` by exact distance, ties to the lower
    index: ``(distances, indices)``, each ``(n, k)``."""
    dist = exact_distances(queries, reference, index)
    order = np.lexsort((index, dist), axis=1)[:, :k]
    return np.take_along_axis(dist, order, 1), np.take_along_axis(index, order, 1)


def nearest_neighbors(
    queries: np.ndarray,
    reference: np.ndarray,
    k: int = 1,
    *,
    exclude_self: bool = False,
    backend: str = "auto",
    n_jobs: int = 1,
    chunk_size: int = 65536,
    progress: bool = False,
    desc: str = "nearest neighbours",
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``reference`` for each row of ``queries``.

    Returns ``(distances, indices)``, each ``(n_queries, k)``, sorted by distance, ties by index;
    distances are exact float64. With ``exclude_self`` (queries *are* the reference, all rows
    distinct) a point is not its own neighbour. ``device``: None, the CPU search ``backend``
    chooses; a torch device (``"cpu"``, ``"cuda"``, ``"auto"``, ...), the brute force on it
    (``backend`` then only has to be valid). Both give the same result.
    """
    n_ref = reference.shape[0]
    if k + int(exclude_self) > n_ref:
        raise ParameterError(
            "k",
            f"k={k} nearest neighbours asked for among only {n_ref - int(exclude_self)} candidate points "
            "of reference; lower k or pass more reference points."
        )
    backend = choose_backend(n_ref, reference.shape[1], backend, k, exclude_self)
    if backend == "pruned" and device is None:
        dist, idx = nearest_pruned(queries, build_index(reference), n_jobs=n_jobs, progress=progress, desc=desc)
        return dist[:, None], idx[:, None]
    if device is None and backend == "kdtree":
        search = KdTreeSearch(reference)
    else:
        search = BruteForceSearch(reference, resolve_device("cpu" if device is None else device))
    return search_in_chunks(search, queries, k, exclude_self=exclude_self, n_jobs=n_jobs, chunk_size=chunk_size,
                            progress=progress, desc=desc)


def search_in_chunks(search, queries: np.ndarray, k: int, *, exclude_self: bool = False, n_jobs: int = 1,
                     chunk_size: int = 65536, progress: bool = False, desc: str = "nearest neighbours"):
    """:func:`nearest_neighbors` with a search built beforehand (a :class:`KdTreeSearch` kept for
    several calls), over chunks of ``queries``."""
    n = queries.shape[0]
    chunk_size = min(chunk_size, max(256, search.max_chunk))
    out_d = np.empty((n, k), dtype=np.float64)
    out_i = np.empty((n, k), dtype=np.int64)
    with progress_bar(n, desc, progress, unit="vec") as bar, torch_threads(n_jobs), full_float32_matmul():
        for start in range(0, n, chunk_size):
            q = queries[start : start + chunk_size]
            own = np.arange(start, start + len(q))[:, None] if exclude_self else None
            out_d[start : start + len(q)], out_i[start : start + len(q)] = search.nearest(q, k, own, n_jobs)
            bar.update(len(q))
    return out_d, out_i


def _proved_nearest(q, reference, k, own, candidates, m):
    """The ``k`` nearest rows of ``reference`` for each query ``q``, by exact distance, ties to
    the lower index, each row proved exact. ``candidates(rows, m)`` gives, for those queries,
    ``m`` candidate indices each and a lower bound of the exact distance of every point *not*
    among them; a row whose bound exceeds its k-th exact distance has no other point as near
    (nor as near: ties are all among the candidates). The others ask again for twice as many."""
    n_ref = reference.shape[0]
    out_d = np.empty((len(q), k), dtype=np.float64)
    out_i = np.empty((len(q), k), dtype=np.int64)
    pending = np.arange(len(q))
    while pending.size:
        step = max(1, _RERANK_BLOCK // (m * q.shape[1]))
        retry = []
        for s in range(0, pending.size, step):
            rows = pending[s : s + step]
            cand, bound = candidates(rows, m)
            if own is not None:  # self out; rows where it was not a candidate lose their last one
                cand = _drop_self(cand, own[rows], m - 1)
            dist, idx = rank_exactly(q[rows], reference, cand, k)
            proved = np.ones(rows.size, bool) if m == n_ref else bound > dist[:, -1]
            out_d[rows[proved]], out_i[rows[proved]] = dist[proved], idx[proved]
            retry.append(rows[~proved])
        pending = np.concatenate(retry)
        m = min(2 * m, n_ref)
    return out_d, out_i


class KdTreeSearch:
    """The k-d tree in principal axes over the reference (scipy's ``cKDTree``, float64). Its
    distances, in rotated coordinates, are within rounding of the exact ones: a point it did not
    return is at least as far as the last one it did, less that rounding."""

    max_chunk = 1 << 62

    def __init__(self, reference: np.ndarray):
        self.reference = reference
        self.tree, self.rotate = principal_axes_tree(reference)
        self.radius = float(np.sqrt(np.einsum("ij,ij->i", self.tree.data, self.tree.data).max()))
        # Rounding of the rotation and of the tree's float64 sums, as a multiple of |q| + radius
        # (the centred norms); a hundred times the float64 epsilon per dimension, to spare.
        self.rounding = 100 * reference.shape[1] * float(np.finfo(np.float64).eps)

    def nearest(self, q: np.ndarray, k: int, own: np.ndarray | None, n_jobs: int = 1):
        rotated = self.rotate(q)
        slack = self.rounding * (np.linalg.norm(rotated, axis=1) + self.radius)

        def candidates(rows, m):
            dist, idx = self.tree.query(rotated[rows], k=m, workers=n_jobs)
            return idx.reshape(len(rows), m), dist.reshape(len(rows), m)[:, -1] - slack[rows]

        # One candidate beyond k: proved at once unless it ties with the k-th.
        m = min(k + int(own is not None) + 1, self.reference.shape[0])
        return _proved_nearest(q, self.reference, k, own, candidates, m)


class BruteForceSearch:
    """Brute force on a torch device: the reference there once, centred, float32 scores
    ``||r||^2 - 2 q.r`` of a chunk of queries, each query's best ``m`` back to the host. Every
    point outside them scored at least the m-th score, so its exact squared distance is at least
    ``|q|^2`` + that - the rounding bound."""

    def __init__(self, reference: np.ndarray, device: torch.device, chunk: int = 65536):
        self.reference = reference
        self.device = device
        self.max_chunk = _SCORE_BLOCK.get(device.type, _SCORE_BLOCK["cpu"]) // max(1, reference.shape[0])
        # Centred, the norms in the rounding bound are the spread of the data, not its offset.
        self.center = reference.mean(0, dtype=np.float64)
        centred = np.empty(reference.shape, dtype=np.float32)
        radius_sq = 0.0
        for s in range(0, reference.shape[0], chunk):  # no float64 copy of millions of rows
            part = reference[s : s + chunk] - self.center
            radius_sq = max(radius_sq, float(np.einsum("ij,ij->i", part, part).max()))
            centred[s : s + chunk] = part
        self.radius = float(np.sqrt(radius_sq))
        self.ref = torch.from_numpy(centred).to(device)
        self.ref_sq = (self.ref * self.ref).sum(1)
        # |float32 score - exact score| <= rounding x (|q| + radius)^2, u = 2^-24: the dot products
        # and squared norms (dim terms each, dim u), the final sum (u), the inputs' rounding to
        # float32 (4 u); twice that, to spare.
        unit = float(np.finfo(np.float32).eps) / 2
        self.rounding = 2 * (2 * reference.shape[1] + 5) * unit

    def nearest(self, q: np.ndarray, k: int, own: np.ndarray | None, n_jobs: int = 1):
        centred = q.astype(np.float64) - self.center
        q_dev = torch.from_numpy(centred.astype(np.float32)).to(self.device)
        q_sq = np.einsum("ij,ij->i", centred, centred)
        slack = self.rounding * (np.sqrt(q_sq) + self.radius) ** 2

        def candidates(rows, m):
            scores = torch.addmm(self.ref_sq.unsqueeze(0), q_dev[torch.from_numpy(rows).to(self.device)],
                                 self.ref.T, alpha=-2.0)
            values, cand = scores.topk(m, dim=1, largest=False, sorted=True)
            least_sq = q_sq[rows] + values[:, -1].cpu().numpy().astype(np.float64) - slack[rows]
            return cand.cpu().numpy().astype(np.int64), np.sqrt(np.maximum(least_sq, 0))

        m = min(k + int(own is not None) + _RERANK_EXTRA, self.reference.shape[0])
        return _proved_nearest(q, self.reference, k, own, candidates, m)


def principal_axes_tree(reference: np.ndarray):
    """A k-d tree over ``reference`` in its principal axes, and the map taking queries there."""
    ref = reference.astype(np.float64)
    center = ref.mean(0)
    # A complete orthonormal basis even with fewer points than dimensions.
    _, _, axes = np.linalg.svd(ref - center, full_matrices=ref.shape[0] < ref.shape[1])
    basis = axes.T

    def rotate(points: np.ndarray) -> np.ndarray:
        return (points.astype(np.float64) - center) @ basis

    return cKDTree(rotate(ref)), rotate


def _drop_self(idx: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's own index, keeping the first ``k`` others in order."""
    keep = idx != own
    # Rows where self was not among the candidates keep one extra: cut every row to k.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, order, 1)
