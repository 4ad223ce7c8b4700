"""Quantizing every vector once the codebook is known: three rules.

* ``"landmark"`` (the paper's rule): the cluster of the nearest landmark (Euclidean). The
  clusters are the K-Medoids partition of the landmarks, extended by nearest-landmark Voronoi
  cells.
* ``"medoid"``: the nearest medoid by Euclidean distance, i.e. plain vector quantization with the
  medoids as codebook (what a decoder-side lookup would do, ignoring the manifold).
* ``"geodesic"``: the medoid at the smallest approximate geodesic distance,
  ``min over the m nearest landmarks l of ||x - l|| + D_geo(l, medoid)``: enter the graph
  through one of the nearby landmarks and follow the shortest path. Needs only the landmark to
  medoid distances (n_landmarks x K), not the full geodesic matrix.

Speed: millions of vectors (60,000 images x 49 cells), most of them duplicate background
vectors, so each rule runs on the distinct vectors only and maps the labels back; the neighbour
search is exact and multi-threaded (:mod:`geovq.quantize.nearest`).
"""

from __future__ import annotations

import numpy as np
import torch

from geovq.quantize.dedup import unique_rows
from geovq.quantize.device import resolve_device
from geovq.quantize.nearest import nearest_neighbors
from geovq.quantize.resources import progress_bar, torch_threads

ASSIGNMENTS = ("landmark", "medoid", "geodesic")


def _on_distinct(X: np.ndarray, deduplicate: bool, label_fn) -> np.ndarray:
    if not deduplicate:
        return label_fn(X)
    groups = unique_rows(X)
    if groups.n_unique == X.shape[0]:
        return label_fn(X)
    return label_fn(X[groups.first_index])[groups.inverse]


def assign_to_nearest_landmark(
    X: np.ndarray, landmarks: np.ndarray, landmark_labels: np.ndarray, *, deduplicate: bool = True,
    backend: str = "auto", n_jobs: int = 1, progress: bool = False, device=None,
) -> np.ndarray:
    """Label of each row of ``X`` = ``landmark_labels`` of its nearest landmark."""
    landmark_labels = np.asarray(landmark_labels, dtype=np.int64)

    def label(Q):
        _, idx = nearest_neighbors(Q, landmarks, 1, backend=backend, n_jobs=n_jobs, progress=progress,
                                   desc="assign (nearest landmark)", device=device)
        return landmark_labels[idx[:, 0]]

    return _on_distinct(X, deduplicate, label)


def assign_to_nearest_medoid(
    X: np.ndarray, medoids: np.ndarray, *, deduplicate: bool = True, backend: str = "auto",
    n_jobs: int = 1, progress: bool = False, device=None,
) -> np.ndarray:
    """Label of each row of ``X`` = index of its Euclidean-nearest medoid."""

    def label(Q):
        _, idx = nearest_neighbors(Q, medoids, 1, backend=backend, n_jobs=n_jobs, progress=progress,
                                   desc="assign (nearest medoid)", device=device)
        return idx[:, 0]

    return _on_distinct(X, deduplicate, label)


def assign_by_geodesic(
    X: np.ndarray, landmarks: np.ndarray, landmark_to_medoids: np.ndarray, n_candidates: int = 5, *,
    deduplicate: bool = True, backend: str = "auto", n_jobs: int = 1, progress: bool = False,
    chunk_size: int = 16384, device=None,
) -> np.ndarray:
    """Label = argmin over medoids k of min over the ``n_candidates`` nearest landmarks l of
    ``||x - l|| + landmark_to_medoids[l, k]`` (float32 sums, the first medoid of equal scores:
    element-wise, so the same on every device)."""
    on = resolve_device("cpu" if device is None else device)
    geo = torch.from_numpy(np.ascontiguousarray(landmark_to_medoids, dtype=np.float32)).to(on)
    m = min(n_candidates, landmarks.shape[0])

    def label(Q):
        dist, idx = nearest_neighbors(Q, landmarks, m, backend=backend, n_jobs=n_jobs, progress=progress,
                                      desc="assign (geodesic)", device=device)
        out = np.empty(Q.shape[0], dtype=np.int64)
        with torch_threads(n_jobs), progress_bar(Q.shape[0], "geodesic scores", progress, unit="vec") as bar:
            for s in range(0, Q.shape[0], chunk_size):
                d = torch.from_numpy(dist[s : s + chunk_size].astype(np.float32)).to(on)
                i = torch.from_numpy(idx[s : s + chunk_size]).to(on)
                through = (geo[i] + d[:, :, None]).amin(1)  # (chunk, K): best entry landmark per medoid
                out[s : s + chunk_size] = through.argmin(1).cpu().numpy()
                bar.update(len(d))
        return out

    return _on_distinct(X, deduplicate, label)
