"""The Euclidean baseline: K-Means on the same vectors, with the same estimator interface.

Fits scikit-learn's ``KMeans`` (or ``MiniBatchKMeans`` for many vectors) on the vectors chosen
by the same landmark selection as :class:`~geovq.quantize.GeodesicKMedoids` with the same
``random_state``, so both clusterings see exactly the same sample (``n_landmarks=None`` fits on
all vectors). Prediction is nearest-centre assignment on the distinct vectors.
"""

from __future__ import annotations

import warnings

import numpy as np

from geovq.errors import ConfigError
from geovq.quantize.assignment import assign_to_nearest_medoid
from geovq.quantize.inputs import as_vectors, check_choice, check_positive_int, resolve_n_jobs
from geovq.quantize.landmarks import LANDMARK_SELECTIONS, select_landmarks
from geovq.quantize.resources import StepRecorder


class EuclideanKMeans:
    """K-Means codebook. Fitted attributes: ``cluster_centers_`` (K x D float32), ``labels_``
    (of the fitted sample), ``inertia_`` (sum of squared Euclidean distances, scikit-learn's),
    ``landmark_indices_`` (the sample, indices into X), ``n_iter_``, ``timings_``, ``peak_memory_``."""

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

    def settings(self) -> dict:
        """Constructor arguments, for recording next to the artifacts."""
        return {name: getattr(self, name) for name in (
            "n_clusters", "n_landmarks", "landmark_selection", "minibatch", "batch_size", "n_init",
            "max_iter", "random_state", "n_jobs", "progress",
        )}

    get_params = settings

    def fit(self, X, variances=None) -> "EuclideanKMeans":
        from sklearn.cluster import KMeans, MiniBatchKMeans

        if variances is not None:
            warnings.warn("EuclideanKMeans clusters the means only; the variances are ignored.", stacklevel=2)
        k = check_positive_int(self.n_clusters, "n_clusters")
        check_choice(self.landmark_selection, "landmark_selection", LANDMARK_SELECTIONS)
        X = as_vectors(X)
        rec = StepRecorder()
        with rec.step("landmarks"):
            if self.n_landmarks is None:
                idx = np.arange(X.shape[0])
            else:
                idx = select_landmarks(X, check_positive_int(self.n_landmarks, "n_landmarks"),
                                       self.landmark_selection, self.random_state, n_jobs=resolve_n_jobs(self.n_jobs))
        sample = X[idx]
        if k > sample.shape[0]:
            raise ConfigError(
                f"n_clusters={k} is more than the {sample.shape[0]} vectors clustered; lower n_clusters "
                "or raise n_landmarks."
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
        self.n_features_in_ = X.shape[1]
        self.timings_, self.peak_memory_ = rec.timings, rec.peak_memory
        return self

    def predict(self, X, variances=None) -> np.ndarray:
        """Index of the nearest centre of every row of ``X``."""
        if not hasattr(self, "cluster_centers_"):
            raise ConfigError("this EuclideanKMeans is not fitted yet; call fit(X) first.")
        X = as_vectors(X)
        if X.shape[1] != self.n_features_in_:
            raise ConfigError(
                f"X has dimension {X.shape[1]} but the codebook was fitted on dimension "
                f"{self.n_features_in_}; pass latents from the same model."
            )
        rec = StepRecorder()
        with rec.step("assignment"):
            labels = assign_to_nearest_medoid(X, self.cluster_centers_, n_jobs=resolve_n_jobs(self.n_jobs),
                                              progress=self.progress)
        self.timings_.update(rec.timings)
        self.peak_memory_.update(rec.peak_memory)
        return labels

    def fit_predict(self, X, variances=None) -> np.ndarray:
        return self.fit(X, variances).predict(X)
