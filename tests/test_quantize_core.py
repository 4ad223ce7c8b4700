"""The numerical core of geodesic quantization (geovq.quantize), on small synthetic data."""

from __future__ import annotations

import builtins
import copy
import json

import numpy as np
import pytest
from scipy.sparse.csgraph import floyd_warshall
from scipy.spatial.distance import cdist
from sklearn.base import clone
from sklearn.datasets import make_swiss_roll
from sklearn.exceptions import NotFittedError
from sklearn.manifold import Isomap
from sklearn.neighbors import NearestNeighbors, kneighbors_graph
from sklearn.utils.validation import check_is_fitted

import geovq.quantize.geodesic as geodesic_module
from geovq.errors import ConfigError, ParameterError
from geovq.quantize import (
    ASSIGNMENTS,
    CodebookQuantizer,
    EuclideanKMeans,
    GeodesicKMedoids,
    assign_by_geodesic,
    connect_components,
    geodesic_distances,
    kmedoids,
    knn_graph,
    nearest_neighbors,
    select_landmarks,
    undirected_graph,
    unique_rows,
)


def gaussian(n, dim=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def blobs(n_per=60, centers=((0, 0), (20, 0), (0, 20), (20, 20)), scale=0.5, seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(c, scale, size=(n_per, len(c))) for c in centers]).astype(np.float32)
    return X, np.repeat(np.arange(len(centers)), n_per)


# -- deduplication and neighbours --------------------------------------------------------------


def test_unique_rows_groups_identical_rows_in_first_occurrence_order():
    X = np.array([[1, 2], [0, 0], [1, 2], [-0.0, 0], [3, 4]], dtype=np.float32)
    groups = unique_rows(X)
    assert groups.first_index.tolist() == [0, 1, 4]  # -0.0 is the same point as 0.0
    assert groups.counts.tolist() == [2, 2, 1]
    np.testing.assert_array_equal(X[groups.first_index][groups.inverse], X)


def test_unique_rows_with_tolerance_merges_near_duplicates():
    X = np.array([[0.10, 0.0], [0.1000001, 0.0], [5.0, 5.0]], dtype=np.float32)
    assert unique_rows(X).n_unique == 3
    assert unique_rows(X, tolerance=1e-3).n_unique == 2


@pytest.mark.parametrize("backend", ["kdtree", "brute"])
def test_nearest_neighbors_match_sklearn(backend):
    ref, queries = gaussian(300, 5, seed=1), gaussian(200, 5, seed=2)
    dist, idx = nearest_neighbors(queries, ref, 4, backend=backend, n_jobs=2, chunk_size=64)
    want_d, want_i = NearestNeighbors(n_neighbors=4).fit(ref).kneighbors(queries)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-5)


def test_kdtree_search_with_fewer_reference_points_than_dimensions():
    ref, queries = gaussian(5, 8, seed=1), gaussian(50, 8, seed=2)
    dist, idx = nearest_neighbors(queries, ref, 2, backend="kdtree")
    want_d, want_i = NearestNeighbors(n_neighbors=2).fit(ref).kneighbors(queries)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-6)


# -- graph, connectivity, geodesic distances ---------------------------------------------------


def test_undirected_edge_weight_is_the_distance_not_the_sum():
    X = np.array([[0.0], [1.0], [3.0]], dtype=np.float32)
    G = knn_graph(X, 1)
    # 0 and 1 are each other's nearest neighbour: one edge of length 1, both directions.
    assert G[0, 1] == G[1, 0] == 1.0
    assert G[1, 2] == G[2, 1] == 2.0  # 2 -> 1 only, made undirected
    assert G[0, 2] == 0 and G.nnz == 4
    naive = kneighbors_graph(X, 1, mode="distance")
    assert (naive + naive.T)[0, 1] == 2.0  # the classic bug this construction avoids


def test_undirected_graph_keeps_one_edge_per_pair():
    G = undirected_graph([0, 1, 1, 2], [1, 0, 2, 1], [1.0, 1.0, 2.5, 2.5], 3)
    assert G.nnz == 4 and G[0, 1] == 1.0 and G[2, 1] == 2.5


@pytest.mark.parametrize("k", [5, 8])
def test_geodesic_distances_equal_floyd_warshall_and_isomap(k):
    X = gaussian(250, 3)
    G = knn_graph(X, k)
    D = geodesic_distances(G)
    assert D.dtype == np.float32 and D.shape == (250, 250)
    np.testing.assert_allclose(D, floyd_warshall(G, directed=False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(D, Isomap(n_neighbors=k).fit(X).dist_matrix_, rtol=1e-5, atol=1e-5)


def test_geodesic_distances_in_worker_processes_equal_single_process(monkeypatch):
    X = gaussian(300, 3, seed=3)
    G = knn_graph(X, 6)
    single = geodesic_distances(G, n_jobs=1)
    monkeypatch.setattr(geodesic_module, "_MIN_NODES_FOR_PROCESSES", 0)  # force the forked pool
    forked = geodesic_distances(G, n_jobs=2, chunk_rows=17, progress=True)
    np.testing.assert_array_equal(forked, single)


def test_geodesic_distances_follow_a_circle_arc():
    theta = np.sort(np.random.default_rng(0).uniform(0, 1.5 * np.pi, 300))
    X = np.stack([np.cos(theta), np.sin(theta)], 1).astype(np.float32)
    D = geodesic_distances(knn_graph(X, 10))
    true = np.abs(theta[:, None] - theta[None, :])  # arc length on the unit circle
    iu = np.triu_indices(len(X), 1)
    assert np.corrcoef(D[iu], true[iu])[0, 1] > 0.999
    assert np.abs(D - true).max() < 0.01
    chord = cdist(X, X)
    assert D[0, -1] > 2.5 * chord[0, -1]  # across the gap, the path goes round the arc


def test_swiss_roll_geodesics_and_clusters_follow_the_roll():
    X, t = make_swiss_roll(800, noise=0.0, random_state=0)
    X = X.astype(np.float32)
    height = X[:, 1]
    arc = 0.5 * (t * np.sqrt(1 + t**2) + np.arcsinh(t))  # arc length of the spiral at angle t
    true = np.hypot(arc[:, None] - arc[None, :], height[:, None] - height[None, :])
    gkm = GeodesicKMedoids(n_clusters=8, n_landmarks=800, n_neighbors=10, store_distances=True).fit(X)
    D = gkm.geodesic_distances_[np.argsort(gkm.landmark_indices_)]  # all 800 are landmarks
    iu = np.triu_indices(len(X), 1)
    assert np.corrcoef(D[iu], true[iu])[0, 1] > 0.99

    # One turn of the roll is 2 pi in t; a cluster spanning more than pi in t crosses layers.
    geo_labels = gkm.predict(X)
    km_labels = EuclideanKMeans(n_clusters=8, n_landmarks=None).fit(X).predict(X)
    geo_span = [np.ptp(t[geo_labels == c]) for c in range(8)]
    km_span = [np.ptp(t[km_labels == c]) for c in range(8)]
    assert max(geo_span) < np.pi
    assert sum(s > 2 * np.pi for s in km_span) >= 2


def test_disconnected_graph_is_joined_by_closest_pair_and_reported():
    left, right = gaussian(60, 2, seed=1), gaussian(60, 2, seed=2) + np.float32(50.0)
    X = np.concatenate([left, right])
    G = knn_graph(X, 3)
    with pytest.raises(ParameterError, match="connected components") as error:
        geodesic_distances(G)
    assert error.value.parameter == "graph"
    with pytest.warns(UserWarning, match="2 connected components"):
        G2, report = connect_components(G, X)
    assert report.n_components_before == 2 and report.n_edges_added == 1
    i, j, length = report.edges[0]
    cross = cdist(left, right)
    assert length == pytest.approx(cross.min(), rel=1e-6)
    assert G2[i, j] == G2[j, i] == pytest.approx(length)
    D = geodesic_distances(G2)
    assert np.isfinite(D).all() and D[:60, 60:].min() >= length - 1e-4

    with pytest.warns(UserWarning, match="joined them with 1 edges"):
        gkm = GeodesicKMedoids(n_clusters=4, n_landmarks=120, n_neighbors=3).fit(X)
    assert gkm.n_components_ == 2
    assert gkm.connection_report_["n_edges_added"] == 1
    assert np.isfinite(gkm.landmark_geodesic_to_medoids_).all()


def test_many_components_are_all_joined():
    X = np.concatenate([gaussian(20, 2, seed=s) + np.float32(30 * s) for s in range(6)])
    with pytest.warns(UserWarning):
        G, report = connect_components(knn_graph(X, 5), X, warn=True)
    assert report.n_components_before == 6 and report.n_edges_added == 5  # a spanning tree
    # blobs sit on a line 30 * sqrt(2) apart: the tree links neighbours only, never 1 to 3
    assert all(length < 45 for _, _, length in report.edges)
    assert np.isfinite(geodesic_distances(G)).all()


# -- K-Medoids and the estimator ---------------------------------------------------------------


def test_kmedoids_backends_on_the_same_matrix():
    pytest.importorskip("sklearn_extra")
    D = geodesic_distances(knn_graph(gaussian(400, 3, seed=4), 8))
    fast = kmedoids(D, 16, backend="fasterpam", random_state=0)
    alt = kmedoids(D, 16, backend="sklearn_extra", random_state=0)
    for result in (fast, alt):
        assert len(np.unique(result.medoids)) == 16
        assert result.inertia == pytest.approx(D[np.arange(400), result.medoids[result.labels]].sum(dtype=np.float64))
    assert fast.inertia <= alt.inertia * (1 + 1e-6)
    gkm = GeodesicKMedoids(n_clusters=16, n_landmarks=300, n_neighbors=8, backend="sklearn_extra").fit(gaussian(400, 3))
    assert gkm.cluster_centers_.shape == (16, 3)


def test_sklearn_extra_missing_gives_the_install_step(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn_extra(name, *args, **kwargs):
        if name.startswith("sklearn_extra"):
            raise ImportError("No module named 'sklearn_extra'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn_extra)
    with pytest.raises(ParameterError, match="--no-binary scikit-learn-extra") as error:
        kmedoids(np.zeros((5, 5), np.float32), 2, backend="sklearn_extra")
    assert error.value.parameter == "backend"


def test_fitted_attributes():
    X = gaussian(500, 4)
    gkm = GeodesicKMedoids(n_clusters=10, n_landmarks=200, n_neighbors=6).fit(X)
    assert gkm.cluster_centers_.shape == (10, 4) and gkm.cluster_centers_.dtype == np.float32
    np.testing.assert_array_equal(gkm.cluster_centers_, X[gkm.landmark_indices_[gkm.medoid_indices_]])
    assert gkm.labels_.shape == (200,) and set(gkm.labels_) == set(range(10))
    np.testing.assert_array_equal(gkm.labels_[gkm.medoid_indices_], np.arange(10))
    assert gkm.landmark_geodesic_to_medoids_.shape == (200, 10)
    assert gkm.inertia_ == pytest.approx(
        gkm.landmark_geodesic_to_medoids_[np.arange(200), gkm.labels_].sum(dtype=np.float64), rel=1e-6
    )
    assert gkm.n_components_ == 1 and gkm.connection_report_["n_edges_added"] == 0
    steps = {"landmarks", "knn_graph", "connect", "shortest_paths", "kmedoids"}
    assert steps <= set(gkm.timings_) and steps <= set(gkm.peak_memory_)
    assert not hasattr(gkm, "geodesic_distances_")  # the N x N matrix is not kept by default
    assert gkm.n_features_in_ == 4
    gkm.predict(X)
    assert set(gkm.timings_) == steps  # predict records nothing: its caller times it
    assert gkm.get_params(deep=False)["n_neighbors"] == 6 and gkm.get_params() == gkm.get_params(deep=False)


def test_same_seed_same_codebook_other_seed_other_landmarks():
    X = gaussian(600, 4, seed=5)
    fits = [GeodesicKMedoids(n_clusters=12, n_landmarks=300, n_neighbors=6, random_state=s).fit(X) for s in (7, 7, 8)]
    np.testing.assert_array_equal(fits[0].cluster_centers_, fits[1].cluster_centers_)
    np.testing.assert_array_equal(fits[0].labels_, fits[1].labels_)
    assert fits[0].inertia_ == fits[1].inertia_
    assert not np.array_equal(fits[0].landmark_indices_, fits[2].landmark_indices_)


def test_duplicate_landmarks_share_one_graph_node():
    rng = np.random.default_rng(0)
    X = np.concatenate([gaussian(200, 3), np.zeros((300, 3), np.float32)])[rng.permutation(500)]
    gkm = GeodesicKMedoids(n_clusters=8, n_landmarks=250, n_neighbors=5, store_distances=True).fit(X)
    zero = np.flatnonzero((gkm.landmarks_ == 0).all(1))
    assert len(zero) > 100 and gkm.n_unique_landmarks_ == 250 - len(zero) + 1
    D = gkm.geodesic_distances_
    assert (D[np.ix_(zero, zero)] == 0).all()
    np.testing.assert_array_equal(D[zero], np.broadcast_to(D[zero[0]], (len(zero), 250)))
    assert len(set(gkm.labels_[zero])) == 1


@pytest.mark.filterwarnings("ignore:the k-NN graph had:UserWarning")  # separated blobs: joined on purpose
@pytest.mark.parametrize("mode", ASSIGNMENTS)
def test_assignment_rules_agree_on_separated_blobs(mode):
    X, truth = blobs()
    gkm = GeodesicKMedoids(n_clusters=4, n_landmarks=120, n_neighbors=8, random_state=1).fit(X)
    labels = gkm.predict(X, assignment=mode)
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    # each blob is one cluster, the same one for every rule
    blob_label = np.array([np.bincount(labels[truth == b]).argmax() for b in range(4)])
    assert len(set(blob_label)) == 4
    np.testing.assert_array_equal(labels, blob_label[truth])
    np.testing.assert_array_equal(labels, gkm.predict(X, assignment="landmark"))


@pytest.mark.filterwarnings("ignore:the k-NN graph had:UserWarning")  # separated blobs: joined on purpose
def test_assignment_deduplicates_and_matches_the_undeduplicated_result():
    X, _ = blobs(n_per=40)
    X = np.concatenate([X, X[:50], X[:50]])
    gkm = GeodesicKMedoids(n_clusters=6, n_landmarks=100, n_neighbors=6).fit(X)
    for mode in ASSIGNMENTS:
        fast = gkm.predict(X, assignment=mode)
        np.testing.assert_array_equal(fast[:50], fast[-50:])
    geo = assign_by_geodesic(X, gkm._node_points, gkm._node_to_medoids, 5, deduplicate=False)
    np.testing.assert_array_equal(geo, gkm.predict(X, assignment="geodesic"))


def test_geodesic_rule_on_a_landmark_that_is_a_medoid_picks_its_cluster():
    X = gaussian(300, 2, seed=9)
    gkm = GeodesicKMedoids(n_clusters=6, n_landmarks=300, n_neighbors=6, assignment="geodesic").fit(X)
    np.testing.assert_array_equal(gkm.predict(gkm.cluster_centers_), np.arange(6))


def test_wasserstein_edges_and_assignment():
    rng = np.random.default_rng(0)
    mu = gaussian(200, 3)
    var = rng.uniform(0.1, 2.0, size=mu.shape).astype(np.float32)
    gkm = GeodesicKMedoids(n_clusters=5, n_landmarks=150, n_neighbors=6, edge_weight="wasserstein",
                           store_distances=True).fit(mu, variances=var)
    L = gkm.landmark_indices_
    w2 = np.sqrt(cdist(mu[L], mu[L]) ** 2 + cdist(np.sqrt(var[L]), np.sqrt(var[L])) ** 2)
    assert (gkm.geodesic_distances_ >= w2 - 1e-4).all()  # a path is never shorter than the direct W2
    G = knn_graph(np.concatenate([mu, np.sqrt(var)], 1), 4)
    r, c = G.nonzero()
    full_w2 = np.sqrt(((mu[r] - mu[c]) ** 2).sum(1) + ((np.sqrt(var[r]) - np.sqrt(var[c])) ** 2).sum(1))
    np.testing.assert_allclose(np.asarray(G[r, c]).ravel(), full_w2, rtol=1e-5)
    assert gkm.cluster_center_variances_.shape == (5, 3)
    assert gkm.predict(mu, variances=var).shape == (200,)
    with pytest.raises(ParameterError, match="variances") as error:
        gkm.predict(mu)
    assert error.value.parameter == "variances"


def test_progress_bars_run():
    X = gaussian(300, 3)
    gkm = GeodesicKMedoids(n_clusters=5, n_landmarks=200, n_neighbors=5, progress=True).fit(X)
    for mode in ASSIGNMENTS:
        gkm.predict(X, assignment=mode)


# -- landmark selection ------------------------------------------------------------------------


def duplicate_heavy(n=2000, share=0.6, seed=0):
    """Like MNIST background: ``share`` of the rows are one identical vector."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    blob = rng.random(n) < share
    X[blob] = 0.0
    return X, blob


@pytest.mark.parametrize("method", ["uniform", "unique", "maxmin"])
def test_landmark_selection_is_seeded(method):
    X, _ = duplicate_heavy()
    a = select_landmarks(X, 200, method, random_state=3)
    np.testing.assert_array_equal(a, select_landmarks(X, 200, method, random_state=3))
    assert not np.array_equal(a, select_landmarks(X, 200, method, random_state=4))
    assert len(np.unique(a)) == 200 and np.all(np.diff(a) > 0)


def test_unique_and_maxmin_landmarks_avoid_the_duplicate_blob():
    X, blob = duplicate_heavy()
    in_blob = {m: blob[select_landmarks(X, 300, m, random_state=0)].mean() for m in ("uniform", "unique", "maxmin")}
    assert 0.5 < in_blob["uniform"] < 0.7
    assert in_blob["unique"] <= 1 / 300 and in_blob["maxmin"] <= 1 / 300


def test_near_duplicates_need_a_tolerance():
    X, blob = duplicate_heavy()
    X[blob] += np.random.default_rng(1).normal(0, 1e-6, size=(blob.sum(), 4)).astype(np.float32)
    exact = blob[select_landmarks(X, 300, "unique", random_state=0)].mean()
    tolerant = blob[select_landmarks(X, 300, "unique", random_state=0, duplicate_tolerance=1e-3)].mean()
    assert exact > 0.5 and tolerant < 0.05


def test_maxmin_spreads_landmarks_over_a_dense_and_a_sparse_region():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (1800, 2)), rng.uniform(-5, 5, (200, 2))]).astype(np.float32)
    dense = np.arange(2000) < 1800
    assert dense[select_landmarks(X, 100, "uniform", 0)].mean() > 0.8
    # maxmin picks from a uniform pool of pool_factor * n_landmarks distinct vectors
    assert dense[select_landmarks(X, 100, "maxmin", 0)].mean() < 0.8
    assert dense[select_landmarks(X, 100, "maxmin", 0, pool_factor=20)].mean() < 0.2


# -- invalid settings and inputs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "parameter", "message"),
    [
        (dict(n_clusters=50, n_landmarks=40), "n_clusters", "n_clusters=50 is more than n_landmarks=40"),
        (dict(n_clusters=0), "n_clusters", "n_clusters must be"),
        (dict(n_landmarks=1), "n_landmarks", "n_landmarks must be"),
        (dict(n_neighbors=0), "n_neighbors", "n_neighbors must be"),
        (dict(n_neighbors=40, n_landmarks=40), "n_neighbors", r"n_neighbors must be .*\[1, 39\]"),
        (dict(landmark_selection="random"), "landmark_selection", "landmark_selection must be one of"),
        (dict(edge_weight="cosine"), "edge_weight", "edge_weight must be one of"),
        (dict(assignment="nearest"), "assignment", "assignment must be one of"),
        (dict(backend="pam"), "backend", "backend must be one of"),
        (dict(nn_backend="ball"), "nn_backend", "nn_backend must be one of"),
        (dict(n_candidates=0), "n_candidates", "n_candidates must be"),
        (dict(max_iter=0), "max_iter", "max_iter must be"),
        (dict(duplicate_tolerance=-1.0), "duplicate_tolerance", "duplicate_tolerance must be"),
        (dict(n_jobs=0), "n_jobs", "n_jobs"),
    ],
)
def test_bad_arguments_raise_parameter_error_naming_them(params, parameter, message):
    settings = dict(n_clusters=5, n_landmarks=40, n_neighbors=5) | params
    for call in (GeodesicKMedoids(**settings).check_params, lambda: GeodesicKMedoids(**settings).fit(gaussian(100, 3))):
        with pytest.raises(ParameterError, match=message) as error:
            call()
        assert error.value.parameter == parameter
        assert "quantizer." not in str(error.value)  # the estimator does not know the config keys


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        (dict(n_clusters=0), "n_clusters"),
        (dict(n_clusters=50, n_landmarks=40), "n_clusters"),
        (dict(n_landmarks=0), "n_landmarks"),
        (dict(landmark_selection="random"), "landmark_selection"),
        (dict(batch_size=0), "batch_size"),
        (dict(n_init=0), "n_init"),
        (dict(max_iter=0), "max_iter"),
        (dict(n_jobs=-2), "n_jobs"),
    ],
)
def test_kmeans_bad_arguments_raise_parameter_error_naming_them(params, parameter):
    with pytest.raises(ParameterError) as error:
        EuclideanKMeans(**dict(n_clusters=5, n_landmarks=40) | params).check_params()
    assert error.value.parameter == parameter


def test_bad_inputs_raise_parameter_error():
    X = gaussian(100, 3)
    small = dict(n_clusters=5, n_landmarks=40, n_neighbors=5)
    cases = [
        ("n_landmarks", "only 100 vectors", lambda: GeodesicKMedoids(n_clusters=5, n_landmarks=200).fit(X)),
        ("n_landmarks", "only 30 distinct",
         lambda: GeodesicKMedoids(**small, landmark_selection="unique").fit(np.repeat(X[:30], 4, axis=0))),
        ("n_clusters", "distinct vectors, fewer than n_clusters",
         lambda: GeodesicKMedoids(n_clusters=10, n_landmarks=40, n_neighbors=3).fit(np.repeat(X[:8], 10, axis=0))),
        ("X", "2-D", lambda: GeodesicKMedoids(**small).fit(X[0])),
        ("X", "empty", lambda: GeodesicKMedoids(**small).fit(X[:0])),
        ("variances", "edge_weight='wasserstein' needs",
         lambda: GeodesicKMedoids(**small, edge_weight="wasserstein").fit(X)),
        ("variances", "log-variances",
         lambda: GeodesicKMedoids(**small, edge_weight="wasserstein").fit(X, variances=-np.ones_like(X))),
        ("variances", "shape",
         lambda: GeodesicKMedoids(**small, edge_weight="wasserstein").fit(X, variances=np.ones((100, 2)))),
    ]
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[7, 1] = bad
        cases.append(("X", "NaN or infinite .* row 7", lambda Xb=Xb: GeodesicKMedoids(**small).fit(Xb)))
    for parameter, message, call in cases:
        with pytest.raises(ParameterError, match=message) as error:
            call()
        assert error.value.parameter == parameter, message
    with pytest.raises(NotFittedError, match="not fitted"):
        GeodesicKMedoids(**small).predict(X)
    gkm = GeodesicKMedoids(**small).fit(X)
    with pytest.raises(ParameterError, match="dimension 4 but the codebook was fitted on dimension 3") as error:
        gkm.predict(gaussian(10, 4))
    assert error.value.parameter == "X"


def test_parameter_error_is_a_value_error_not_a_config_error():
    with pytest.raises(ValueError) as error:
        GeodesicKMedoids(n_clusters=0).fit(gaussian(50, 2))
    assert isinstance(error.value, ParameterError) and not isinstance(error.value, ConfigError)


# -- Euclidean baseline ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:the k-NN graph had:UserWarning")  # separated blobs: joined on purpose
@pytest.mark.parametrize("minibatch", [False, True])
def test_kmeans_baseline_fits_and_predicts(minibatch):
    X, truth = blobs()
    km = EuclideanKMeans(n_clusters=4, n_landmarks=120, minibatch=minibatch, batch_size=64).fit(X)
    assert km.cluster_centers_.shape == (4, 2) and km.cluster_centers_.dtype == np.float32
    assert km.inertia_ > 0 and km.labels_.shape == (120,)
    labels = km.predict(X)
    np.testing.assert_array_equal(labels[km.landmark_indices_], km.labels_)
    assert len({labels[truth == b][0] for b in range(4)}) == 4
    assert set(km.timings_) == {"landmarks", "kmeans"} == set(km.peak_memory_)  # predict records nothing
    gkm = GeodesicKMedoids(n_clusters=4, n_landmarks=120, n_neighbors=8).fit(X)
    np.testing.assert_array_equal(km.landmark_indices_, gkm.landmark_indices_)  # same sample
    with pytest.raises(ParameterError, match="dimension") as error:
        km.predict(np.zeros((3, 5)))
    assert error.value.parameter == "X"
    with pytest.raises(ParameterError, match="n_clusters=200 is more than n_landmarks=120") as error:
        EuclideanKMeans(n_clusters=200, n_landmarks=120).fit(X)
    assert error.value.parameter == "n_clusters"
    with pytest.raises(ParameterError, match="n_clusters=300 is more than the 240 vectors") as error:
        EuclideanKMeans(n_clusters=300, n_landmarks=None).fit(X)
    assert error.value.parameter == "n_clusters"
    with pytest.warns(UserWarning, match="variances are ignored"):
        km.fit(X, variances=np.ones_like(X))


# -- the estimator interface (CodebookQuantizer, scikit-learn) ----------------------------------

SMALL = {
    "geodesic": lambda **kw: GeodesicKMedoids(**{"n_clusters": 4, "n_landmarks": 80, "n_neighbors": 8, "n_jobs": 1, **kw}),
    "kmeans": lambda **kw: EuclideanKMeans(**{"n_clusters": 4, "n_landmarks": 80, "n_jobs": 1, **kw}),
}


def fitted_attributes(est) -> list[str]:
    return sorted(name for name in vars(est) if name.endswith("_") and not name.startswith("__"))


def assert_same_state(before: dict, after: dict):
    assert before.keys() == after.keys()
    for name, value in before.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, after[name]), name
        else:
            assert value == after[name], name


@pytest.mark.parametrize("kind", SMALL)
def test_estimators_are_sklearn_estimators(kind):
    est = SMALL[kind](random_state=3)
    assert isinstance(est, CodebookQuantizer)
    params = est.get_params(deep=False)
    assert params["n_clusters"] == 4 and params["random_state"] == 3
    assert params == est.get_params()
    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    assert fitted_attributes(est) == []  # nothing ending in "_" before fit
    X = gaussian(200, 3)
    assert est.fit(X) is est
    check_is_fitted(est)
    for name in ("cluster_centers_", "labels_", "inertia_", "n_features_in_", "timings_", "peak_memory_"):
        assert hasattr(est, name), name
    assert est.cluster_centers_.shape == (4, 3) and est.cluster_centers_.dtype == np.float32

    copy_ = clone(est)
    assert type(copy_) is type(est) and copy_ is not est
    assert copy_.get_params(deep=False) == params
    assert fitted_attributes(copy_) == []
    with pytest.raises(NotFittedError):
        copy_.predict(X)

    assert est.set_params(n_clusters=5, random_state=4) is est
    assert est.n_clusters == 5 and est.get_params()["random_state"] == 4
    assert est.fit(X).cluster_centers_.shape == (5, 3)
    with pytest.raises(ValueError, match="Invalid parameter"):
        est.set_params(no_such_parameter=1)


def test_kmeans_get_params_without_deep_works():
    params = EuclideanKMeans().get_params(deep=False)
    assert params["n_landmarks"] == 10000 and params["n_init"] == "auto" and len(params) == 11


@pytest.mark.parametrize("kind", SMALL)
def test_predict_changes_no_state(kind):
    X = gaussian(200, 3)
    est = SMALL[kind]().fit(X)
    before = copy.deepcopy(vars(est))
    codes = est.predict(X)
    assert codes.dtype == np.int64 and codes.shape == (200,)
    for rule in est.assignment_rules:
        est.predict(X, assignment=rule)
    assert_same_state(before, vars(est))


@pytest.mark.parametrize("kind", SMALL)
def test_variances_are_keyword_only(kind):
    X = gaussian(200, 3)
    V = np.ones_like(X)
    est = SMALL[kind]()
    est.fit(X, None)  # y, positional, ignored (scikit-learn convention)
    with pytest.raises(TypeError):
        est.fit(X, None, V)
    with pytest.raises(TypeError):
        est.predict(X, V)
    with pytest.raises(TypeError):
        est.fit_predict(X, None, V)


@pytest.mark.parametrize("kind", SMALL)
def test_fit_predict_gives_the_codes_of_x(kind):
    X = gaussian(200, 3)
    codes = SMALL[kind]().fit_predict(X)
    assert codes.shape == (200,)  # not labels_, which are the fitted sample's (80)
    np.testing.assert_array_equal(codes, SMALL[kind]().fit(X).predict(X))


@pytest.mark.parametrize("kind", SMALL)
def test_check_params_before_fit_names_the_parameter(kind):
    est = SMALL[kind](n_clusters=200, n_landmarks=100)
    with pytest.raises(ParameterError, match="n_clusters=200 is more than n_landmarks=100") as error:
        est.check_params()
    assert error.value.parameter == "n_clusters"
    assert SMALL[kind]().check_params() is None


def test_uses_variances_and_assignment_rules():
    assert CodebookQuantizer.assignment_rules == () == EuclideanKMeans.assignment_rules
    assert GeodesicKMedoids.assignment_rules == ASSIGNMENTS == ("landmark", "medoid", "geodesic")
    gkm = GeodesicKMedoids()
    assert gkm.uses_variances is False
    assert gkm.set_params(edge_weight="wasserstein").uses_variances is True
    assert EuclideanKMeans().uses_variances is False
    assert "uses_variances" not in GeodesicKMedoids().get_params()  # a property, not a parameter


def test_artifact_fields():
    X = gaussian(200, 3)
    for est in (SMALL["geodesic"](), SMALL["kmeans"]()):
        with pytest.raises(NotFittedError):
            est.artifact_fields()
    gkm = SMALL["geodesic"]().fit(X)
    fields = gkm.artifact_fields()
    assert set(fields) == {"landmark_indices", "medoid_indices", "medoid_vector_indices", "connection_report"}
    for name in ("landmark_indices", "medoid_indices", "medoid_vector_indices"):
        assert isinstance(fields[name], np.ndarray) and fields[name].dtype == np.int64
    np.testing.assert_array_equal(fields["landmark_indices"], gkm.landmark_indices_)
    np.testing.assert_array_equal(fields["medoid_indices"], gkm.medoid_indices_)
    np.testing.assert_array_equal(X[fields["medoid_vector_indices"]], gkm.cluster_centers_)
    report = fields["connection_report"]
    assert json.loads(json.dumps(report)) == report  # plain JSON-able values
    assert report["n_components_before"] == gkm.n_components_

    km = SMALL["kmeans"]().fit(X)
    fields = km.artifact_fields()
    assert set(fields) == {"landmark_indices"} and fields["landmark_indices"].dtype == np.int64
    np.testing.assert_array_equal(fields["landmark_indices"], km.landmark_indices_)


def test_disconnected_graph_report_in_artifact_fields_is_plain():
    X = np.concatenate([gaussian(60, 2, seed=1), gaussian(60, 2, seed=2) + np.float32(50.0)])
    with pytest.warns(UserWarning, match="2 connected components"):
        gkm = GeodesicKMedoids(n_clusters=4, n_landmarks=120, n_neighbors=3).fit(X)
    report = gkm.artifact_fields()["connection_report"]
    assert json.loads(json.dumps(report)) == report
    assert report["n_edges_added"] == 1 and isinstance(report["edges"][0], list)


def test_refit_forgets_the_attributes_of_the_earlier_fit():
    X = gaussian(200, 3)
    gkm = SMALL["geodesic"](edge_weight="wasserstein", store_distances=True).fit(X, variances=np.ones_like(X))
    assert hasattr(gkm, "cluster_center_variances_") and hasattr(gkm, "geodesic_distances_")
    gkm.set_params(edge_weight="euclidean", store_distances=False).fit(X)
    assert not hasattr(gkm, "cluster_center_variances_") and not hasattr(gkm, "geodesic_distances_")


def test_a_new_quantizer_is_one_subclass():
    class FirstVectors(CodebookQuantizer):
        """Codebook = the first n_clusters vectors; nearest-centre codes."""

        def __init__(self, n_clusters: int = 3):
            self.n_clusters = n_clusters

        def check_params(self):
            if self.n_clusters < 1:
                raise ParameterError("n_clusters", f"n_clusters must be >= 1, got {self.n_clusters}.")

        def _fit(self, X, variances, recorder):
            with recorder.step("pick"):
                self.cluster_centers_ = X[: self.n_clusters].copy()
            self.labels_ = np.arange(self.n_clusters)
            self.inertia_ = 0.0

        def _predict(self, X, variances):
            return cdist(X, self.cluster_centers_).argmin(1)

    X = gaussian(50, 2)
    est = FirstVectors()
    with pytest.raises(NotFittedError):
        est.predict(X)
    codes = est.fit(X).predict(X)
    assert codes.dtype == np.int64 and codes[:3].tolist() == [0, 1, 2]
    assert est.n_features_in_ == 2 and set(est.timings_) == {"pick"} and est.artifact_fields() == {}
    assert clone(est).get_params() == {"n_clusters": 3} and not est.uses_variances
    with pytest.raises(ParameterError):
        FirstVectors(0).fit(X)


def test_geodesic_distances_from_some_sources_are_rows_of_the_full_matrix(monkeypatch):
    G = knn_graph(gaussian(300, 3, seed=4), 6)
    full = geodesic_distances(G)
    sources = np.array([7, 0, 299, 42])
    np.testing.assert_array_equal(geodesic_distances(G, sources=sources), full[sources])
    monkeypatch.setattr(geodesic_module, "_MIN_NODES_FOR_PROCESSES", 0)  # the forked pool too
    np.testing.assert_array_equal(geodesic_distances(G, sources=sources, n_jobs=2, chunk_rows=3), full[sources])
