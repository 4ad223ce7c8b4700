"""Choosing the landmarks: the subset of vectors on which the geodesic graph is built.

* ``"uniform"`` (the paper): ``n_landmarks`` rows drawn uniformly without replacement. On MNIST
  ~60% of the latents are near-identical background vectors, so ~60% of the landmarks land in
  one tight blob and the rest of the manifold gets few.
* ``"unique"``: collapse duplicates first (exact bits, or the same cell of a grid of side
  ``duplicate_tolerance``), then draw uniformly among the distinct vectors. Each blob of
  duplicates gets at most one landmark; the density elsewhere is unchanged.
* ``"maxmin"``: greedy farthest-point sampling (the landmark-Isomap choice of de Silva and
  Tenenbaum) among a uniform pool of ``pool_factor * n_landmarks`` distinct vectors: each new
  landmark is the pool point farthest from those already chosen, which covers the manifold
  evenly (it flattens density completely and reaches outliers first).

All are seeded by ``random_state`` and deterministic. The result indexes ``X``, sorted.
"""

from __future__ import annotations

import numpy as np
import torch

from geovq.errors import ParameterError
from geovq.quantize.dedup import unique_rows
from geovq.quantize.resources import progress_bar, torch_threads

LANDMARK_SELECTIONS = ("uniform", "unique", "maxmin")


def select_landmarks(
    X: np.ndarray,
    n_landmarks: int,
    method: str = "uniform",
    random_state: int | None = 0,
    *,
    duplicate_tolerance: float = 0.0,
    pool_factor: float = 4.0,
    n_jobs: int = 1,
    progress: bool = False,
) -> np.ndarray:
    """Indices (sorted, into ``X``) of ``n_landmarks`` landmarks chosen by ``method``."""
    if method not in LANDMARK_SELECTIONS:
        raise ParameterError("method", f"method (the landmark selection) must be one of {LANDMARK_SELECTIONS}, got {method!r}.")
    if duplicate_tolerance < 0:
        raise ParameterError("duplicate_tolerance", f"duplicate_tolerance must be >= 0 (0 = exact duplicates), got {duplicate_tolerance}.")
    rng = np.random.default_rng(random_state)
    n = X.shape[0]
    if method == "uniform":
        if n_landmarks > n:
            raise ParameterError(
                "n_landmarks",
                f"n_landmarks={n_landmarks} but only {n} vectors were given; lower n_landmarks "
                f"to at most {n} or pass more vectors."
            )
        return np.sort(rng.choice(n, size=n_landmarks, replace=False)).astype(np.int64)

    groups = unique_rows(X, duplicate_tolerance)
    if n_landmarks > groups.n_unique:
        what = "distinct" if duplicate_tolerance == 0 else f"distinct (at tolerance {duplicate_tolerance})"
        raise ParameterError(
            "n_landmarks",
            f"n_landmarks={n_landmarks} but X has only {groups.n_unique} {what} vectors out of {n}; "
            f"lower n_landmarks to at most {groups.n_unique}, or use method='uniform' "
            "(which repeats duplicates)."
        )
    if method == "unique":
        chosen = rng.choice(groups.n_unique, size=n_landmarks, replace=False)
        return np.sort(groups.first_index[chosen])

    pool_size = min(groups.n_unique, max(n_landmarks, int(np.ceil(pool_factor * n_landmarks))))
    pool = groups.first_index[np.sort(rng.choice(groups.n_unique, size=pool_size, replace=False))]
    start = int(rng.integers(pool_size))
    picked = farthest_point_order(X[pool], n_landmarks, start, n_jobs=n_jobs, progress=progress)
    return np.sort(pool[picked])


def farthest_point_order(points: np.ndarray, n_pick: int, start: int = 0, *, n_jobs: int = 1, progress: bool = False):
    """Greedy max-min order: ``n_pick`` row indices, each the farthest from those before it."""
    pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    picked = np.empty(n_pick, dtype=np.int64)
    picked[0] = start
    with torch_threads(n_jobs), progress_bar(n_pick, "maxmin landmarks", progress) as bar:
        nearest_sq = ((pts - pts[start]) ** 2).sum(1)
        for i in range(1, n_pick):
            nxt = int(torch.argmax(nearest_sq))
            picked[i] = nxt
            torch.minimum(nearest_sq, ((pts - pts[nxt]) ** 2).sum(1), out=nearest_sq)
            bar.update()
    return picked
