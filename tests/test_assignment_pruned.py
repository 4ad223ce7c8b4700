"""The exact pruned nearest-neighbour search behind the assignment of millions of latents."""

from __future__ import annotations

import numpy as np
import pytest

from geovq.errors import ParameterError
from geovq.quantize import assign_to_nearest_landmark, nearest_neighbors
from geovq.quantize.nearest import choose_backend
from geovq.quantize.pruned_search import build_index, nearest_pruned


def low_rank(n, dim, seed, active=6):
    """Points whose variance sits in a few directions, with a faint tail (like GridVAE means)."""
    rng = np.random.default_rng(seed)
    scale = np.r_[np.ones(min(active, dim)), np.full(max(0, dim - active), 1e-3)]
    mix = np.linalg.qr(np.random.default_rng(99).normal(size=(dim, dim)))[0]
    return ((rng.normal(size=(n, dim)) * scale) @ mix).astype(np.float32)


def brute_nearest(queries, reference):
    """Ground truth in float64 from differences: nearest, ties to the lower index."""
    q, r = queries.astype(np.float64), reference.astype(np.float64)
    d = np.stack([np.sqrt(((q - row) ** 2).sum(1)) for row in r], 1)
    return d.min(1), d.argmin(1)


@pytest.mark.parametrize("dim, n_ref", [(2, 700), (16, 900), (64, 1500), (100, 600)])
@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_pruned_search_is_exact(dim, n_ref):
    ref, queries = low_rank(n_ref, dim, 1), low_rank(4000, dim, 2)
    queries[:20] = ref[:20]  # queries on reference points: distance 0
    want_d, want_i = brute_nearest(queries, ref)
    got_d, got_i = nearest_pruned(queries, build_index(ref), n_jobs=2, chunk_size=1000)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-6, atol=1e-9)


def test_pruned_search_breaks_ties_to_the_lower_index():
    ref = low_rank(800, 8, 3)
    ref[500] = ref[10]  # an exact duplicate: equal distance from every query
    queries = np.concatenate([low_rank(2000, 8, 4), ref[[10, 500]]])
    _, got = nearest_pruned(queries, build_index(ref))
    _, want = brute_nearest(queries, ref)
    np.testing.assert_array_equal(got, want)
    assert got[-1] == got[-2] == 10


def test_pruned_search_same_result_on_one_or_two_threads_and_any_groups():
    ref, queries = low_rank(1200, 32, 5), low_rank(5000, 32, 6)
    one = nearest_pruned(queries, build_index(ref), n_jobs=1)
    two = nearest_pruned(queries, build_index(ref, n_groups=7), n_jobs=2, chunk_size=777)
    np.testing.assert_array_equal(one[1], two[1])


def test_auto_backend_takes_pruned_search_for_single_nearest_only():
    assert choose_backend(10000, 64, "auto", k=1) == "pruned"
    assert choose_backend(10000, 64, "auto", k=15, exclude_self=True) == "kdtree"
    assert choose_backend(128, 64, "auto", k=1) == "brute"
    with pytest.raises(ParameterError, match="k=1"):
        nearest_neighbors(low_rank(50, 3, 0), low_rank(50, 3, 1), 2, backend="pruned")


def test_landmark_assignment_matches_the_kdtree():
    ref, queries = low_rank(2000, 24, 7), low_rank(20000, 24, 8)
    labels = np.random.default_rng(0).integers(0, 16, size=len(ref))
    pruned = assign_to_nearest_landmark(queries, ref, labels, backend="pruned", n_jobs=2)
    tree = assign_to_nearest_landmark(queries, ref, labels, backend="kdtree", n_jobs=2)
    np.testing.assert_array_equal(pruned, tree)


def test_estimator_with_pruned_backend_gives_the_kdtree_codes():
    from geovq.quantize import GeodesicKMedoids

    X = low_rank(3000, 12, 9)
    make = lambda backend: GeodesicKMedoids(n_clusters=8, n_landmarks=600, n_neighbors=8, nn_backend=backend).fit(X)
    pruned, tree = make("pruned"), make("kdtree")
    np.testing.assert_array_equal(pruned.medoid_indices_, tree.medoid_indices_)  # same graph
    np.testing.assert_array_equal(pruned.predict(X), tree.predict(X))
