"""Non-gradient quantization of a trained VAE's latents (the paper's section 3.1).

Plain numpy/scipy/torch, no Lightning or Hydra: arrays in, arrays out.

    from geovq.quantize import GeodesicKMedoids
    gkm = GeodesicKMedoids(n_clusters=128, n_landmarks=10000, n_neighbors=15).fit(latents)
    codes = gkm.predict(latents)           # (n,) int64
    codebook = gkm.cluster_centers_        # (128, D) float32

The steps are usable alone: :func:`select_landmarks`, :func:`knn_graph`,
:func:`connect_components`, :func:`geodesic_distances`, :func:`kmedoids`, and the three
assignment rules; :class:`EuclideanKMeans` is the baseline with the same interface.

Both estimators are :class:`CodebookQuantizer` subclasses (scikit-learn ``BaseEstimator`` +
``ClusterMixin``): ``fit(X, *, variances=None)``, ``predict(X, *, variances=None)`` (no side
effects), ``check_params()``, ``uses_variances``, ``assignment_rules``, ``artifact_fields()``;
see :mod:`geovq.quantize.base`. Invalid arguments raise :class:`geovq.errors.ParameterError`
naming the argument.
"""

from geovq.quantize.assignment import (
    ASSIGNMENTS,
    assign_by_geodesic,
    assign_to_nearest_landmark,
    assign_to_nearest_medoid,
)
from geovq.quantize.ann_graph import KnnGraphReport, neighbour_graph
from geovq.quantize.base import CodebookQuantizer
from geovq.quantize.connectivity import ConnectionReport, connect_components
from geovq.quantize.dedup import UniqueRows, unique_rows
from geovq.quantize.device import resolve_device
from geovq.quantize.estimator import GeodesicKMedoids
from geovq.quantize.euclidean_kmeans import EuclideanKMeans
from geovq.quantize.geodesic import geodesic_distances
from geovq.quantize.knn_graph import knn_graph, undirected_graph
from geovq.quantize.landmarks import (
    LANDMARK_SELECTIONS,
    farthest_point_order,
    select_landmarks,
)
from geovq.quantize.medoids import (
    KMEDOIDS_BACKENDS,
    KMedoidsResult,
    kmedoids,
    nearest_medoid,
)
from geovq.quantize.nearest import nearest_neighbors

__all__ = [
    "ASSIGNMENTS",
    "KMEDOIDS_BACKENDS",
    "LANDMARK_SELECTIONS",
    "CodebookQuantizer",
    "ConnectionReport",
    "EuclideanKMeans",
    "GeodesicKMedoids",
    "KMedoidsResult",
    "KnnGraphReport",
    "UniqueRows",
    "assign_by_geodesic",
    "assign_to_nearest_landmark",
    "assign_to_nearest_medoid",
    "connect_components",
    "farthest_point_order",
    "geodesic_distances",
    "kmedoids",
    "knn_graph",
    "nearest_medoid",
    "nearest_neighbors",
    "neighbour_graph",
    "resolve_device",
    "select_landmarks",
    "undirected_graph",
    "unique_rows",
]
