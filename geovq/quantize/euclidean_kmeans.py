"""The Euclidean baseline: K-Means on the same vectors, with the same estimator interface.

Fits scikit-learn's ``KMeans`` (or ``MiniBatchKMeans`` for many vectors) on the vectors chosen
by the same landmark selection as :class:`~geovq.quantize.GeodesicKMedoids` with the same
``random_state``, so both clusterings see exactly the same sample (``n_landmarks=None`` fits on
all vectors). Prediction is nearest-centre assignment on the distinct vectors.

A :class:`~geovq.quantize.base.CodebookQuantizer`; it clusters the means only
(``uses_variances`` is false) and has one assignment rule.
"""

from __future__ import annotations

import warnings

import numpy as np

from geovq.errors import ParameterError
from geovq.quantize.assignment import assign_to_nearest_medoid
from geovq.quantize.base import CodebookQuantizer
from geovq.quantize.device import resolve_device, search_device
from geovq.quantize.inputs import check_choice, check_positive_int, resolve_n_jobs
from geovq.quantize.landmarks import LANDMARK_SELECTIONS, select_landmarks
from geovq.quantize.resources import StepRecorder


class EuclideanKMeans(CodebookQuantizer):
    """K-Means codebook.

    Parameters: ``n_clusters`` (K), ``n_landmarks`` (size of the sample clustered; ``None``: all
    vectors), ``landmark_selection`` (as for GeodesicKMedoids), ``minibatch`` (use
    ``MiniBatchKMeans`` with ``batch_size``), ``n_init``, ``max_iter``, ``random_state``,
    ``n_jobs``, ``progress``, ``device`` (where the nearest-centre assignment runs, as for
    GeodesicKMedoids; the K-Means fit is scikit-learn's, on the CPU).

    Fitted attributes: ``cluster_centers_`` (K x D float32), ``labels_`` (of the fitted sample),
    ``inertia_`` (sum of squared Euclidean distances, scikit-learn's), ``landmark_indices_`` (the
    sample, indices into X), ``n_iter_``, ``n_features_in_``, ``timings_`` and ``peak_memory_``
    (per fit step: landmarks, kmeans).
    """

    def __init__(
        self,
        n_clusters: int = 128,
        n_landmarks: int | None = 10000,
        landmark_selection: str = "uniform",
        minibatch: bool = False,
        batch_size: int = 4096,
        n_init: int | str = "auto",
        max_iter: int = 300,
        random_state: int | None = 0,
        n_jobs: int = -1,
        progress: bool = False,
        device: str = "auto",
    ):
        self.n_clusters = n_clusters
        self.n_landmarks = n_landmarks
        self.landmark_selection = landmark_selection
        self.minibatch = minibatch
        self.batch_size = batch_size
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.progress = progress
        self.device = device

    def check_params(self) -> None:
        k = check_positive_int(self.n_clusters, "n_clusters")
        if self.n_landmarks is not None:
            n = check_positive_int(self.n_landmarks, "n_landmarks")
            if k > n:
                raise ParameterError(
                    "n_clusters",
                    f"n_clusters={k} is more than n_landmarks={n}, the number of vectors clustered; "
                    "lower n_clusters or raise n_landmarks.",
                )
        check_choice(self.landmark_selection, "landmark_selection", LANDMARK_SELECTIONS)
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.max_iter, "max_iter")
        if self.n_init != "auto":
            check_positive_int(self.n_init, "n_init")
        resolve_device(self.device)
        resolve_n_jobs(self.n_jobs)

    def _fit(self, X: np.ndarray, variances, rec: StepRecorder) -> None:
        from sklearn.cluster import KMeans, MiniBatchKMeans

        if variances is not None:
            warnings.warn("EuclideanKMeans clusters the means only; the variances are ignored.", stacklevel=3)
        k = int(self.n_clusters)
        with rec.step("landmarks"):
            if self.n_landmarks is None:
                idx = np.arange(X.shape[0])
            else:
                idx = select_landmarks(X, int(self.n_landmarks), self.landmark_selection, self.random_state,
                                       n_jobs=resolve_n_jobs(self.n_jobs))
        sample = X[idx]
        if k > sample.shape[0]:
            raise ParameterError(
                "n_clusters",
                f"n_clusters={k} is more than the {sample.shape[0]} vectors clustered; lower n_clusters "
                "or pass more vectors.",
            )
        with rec.step("kmeans"):
            if self.minibatch:
                model = MiniBatchKMeans(k, batch_size=self.batch_size, n_init=self.n_init,
                                        max_iter=self.max_iter, random_state=self.random_state)
            else:
                model = KMeans(k, n_init=self.n_init, max_iter=self.max_iter, random_state=self.random_state)
            model.fit(sample)
        self.cluster_centers_ = model.cluster_centers_.astype(np.float32)
        self.labels_ = model.labels_.astype(np.int64)
        self.inertia_ = float(model.inertia_)
        self.n_iter_ = int(model.n_iter_)
        self.landmark_indices_ = idx

    def _predict(self, X: np.ndarray, variances) -> np.ndarray:
        """Index of the nearest centre of every row of ``X`` (``variances`` are ignored)."""
        return assign_to_nearest_medoid(X, self.cluster_centers_, n_jobs=resolve_n_jobs(self.n_jobs),
                                        progress=self.progress, device=search_device(self.device))

    def artifact_fields(self) -> dict:
        """``landmark_indices``: the fitted sample, int64 indices into the fitted X."""
        fields = super().artifact_fields()
        fields["landmark_indices"] = np.asarray(self.landmark_indices_, dtype=np.int64)
        return fields
