"""Geodesic K-Medoids on the k-NN graph (quantizer.method=graph): no N x N matrix."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import make_swiss_roll

from geovq.errors import ParameterError
from geovq.quantize import EuclideanKMeans, GeodesicKMedoids, geodesic_distances, kmedoids, knn_graph, nearest_medoid
from geovq.quantize.graph_kmedoids import graph_kmedoids


def noisy_roll(n=1500, noise=0.3, seed=0):
    X, t = make_swiss_roll(n, noise=noise, random_state=seed)
    return X.astype(np.float32), t


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_objective_is_near_fasterpam_on_the_dense_matrix():
    X, _ = noisy_roll(1200, 0.3, 1)
    graph = knn_graph(X, 10)
    D = geodesic_distances(graph)
    for seed in range(3):
        found = graph_kmedoids(graph, 12, random_state=seed)
        dense = kmedoids(D, 12, random_state=seed)
        assert found.inertia <= dense.inertia * 1.02
        # The objective is the true geodesic one: the dense matrix agrees.
        assert found.inertia == pytest.approx(nearest_medoid(D, found.medoids)[1], rel=1e-5)


def test_objective_never_increases_and_every_medoid_is_in_its_own_cluster():
    X, _ = noisy_roll(900, 0.3, 2)
    found = graph_kmedoids(knn_graph(X, 10), 10, random_state=0)
    assert all(b <= a + 1e-9 for a, b in zip(found.history, found.history[1:]))
    np.testing.assert_array_equal(found.labels[found.medoids], np.arange(10))
    assert found.history[-1] < found.history[0]  # the iterations improve on the seeding


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_noisy_swiss_roll_clusters_stay_contiguous_along_the_roll():
    X, t = noisy_roll(2000, 0.4, 3)
    gkm = GeodesicKMedoids(n_clusters=8, n_landmarks=2000, n_neighbors=10, method="graph").fit(X)
    labels = gkm.predict(X)
    # One turn of the roll is 2 pi in t: a cluster reaching across to the next layer spans
    # about 2 pi or more (K-Means, blind to the roll, does that); along the roll, much less.
    spans = [np.ptp(t[labels == c]) for c in range(8)]
    assert max(spans) < 1.25 * np.pi
    km_labels = EuclideanKMeans(n_clusters=8, n_landmarks=None).fit(X).predict(X)
    assert sum(np.ptp(t[km_labels == c]) > 2 * np.pi for c in range(8)) >= 2
    # Each cluster is one connected piece of the k-NN graph.
    graph = knn_graph(X, 10)
    from scipy.sparse.csgraph import connected_components

    for c in range(8):
        members = np.flatnonzero(labels == c)
        assert connected_components(graph[members][:, members], directed=False)[0] == 1


def test_graph_mode_is_deterministic_and_seeded():
    X, _ = noisy_roll(800, 0.3, 4)
    make = lambda seed: GeodesicKMedoids(n_clusters=6, n_landmarks=500, n_neighbors=8, method="graph",
                                         random_state=seed).fit(X)
    a, b, c = make(0), make(0), make(1)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert a.inertia_ == b.inertia_
    assert not np.array_equal(a.landmark_indices_, c.landmark_indices_)


def test_graph_mode_matches_the_dense_attributes_and_weighs_duplicates():
    X, _ = noisy_roll(600, 0.3, 5)
    X = np.concatenate([X, X[:100]])  # duplicates: one graph node, counted once per copy
    gkm = GeodesicKMedoids(n_clusters=6, n_landmarks=700, n_neighbors=8, method="graph").fit(X)
    dense = GeodesicKMedoids(n_clusters=6, n_landmarks=700, n_neighbors=8, store_distances=True).fit(X)
    D = dense.geodesic_distances_  # same landmarks, same graph
    np.testing.assert_array_equal(gkm.landmark_indices_, dense.landmark_indices_)
    labels, objective = nearest_medoid(D, gkm.medoid_indices_)
    assert gkm.inertia_ == pytest.approx(objective, rel=1e-5)
    np.testing.assert_allclose(gkm.landmark_geodesic_to_medoids_, D[:, gkm.medoid_indices_], rtol=1e-5, atol=1e-5)
    assert gkm.inertia_ <= dense.inertia_ * 1.03
    for rule in gkm.assignment_rules:
        assert gkm.predict(X, assignment=rule).shape == (len(X),)


def test_bad_input_raises_parameter_error():
    X, _ = noisy_roll(300, 0.3, 6)
    graph = knn_graph(X, 8)
    with pytest.raises(ParameterError, match="n_clusters=400"):
        graph_kmedoids(graph, 400)
    split = sp.block_diag([graph, graph]).tocsr()
    with pytest.raises(ParameterError, match="2 connected components"):
        graph_kmedoids(split, 4)
    with pytest.raises(ParameterError, match="method must be one of"):
        GeodesicKMedoids(method="sparse").fit(X)
    with pytest.raises(ParameterError, match="store_distances"):
        GeodesicKMedoids(n_landmarks=200, method="graph", store_distances=True).fit(X)
    with pytest.raises(ParameterError, match="n_clusters"):
        GeodesicKMedoids(n_clusters=250, n_landmarks=200, method="graph").fit(X)
