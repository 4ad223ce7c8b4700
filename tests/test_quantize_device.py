"""The quantizer's searches on a torch device (geovq.quantize.device): exact, the same neighbours
and codes as the CPU searches. There is no GPU here, so the device code runs on torch's CPU device;
a GPU is simulated only where a test needs torch to say it has one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

import geovq.quantize.estimator as estimator_module
import geovq.quantize.euclidean_kmeans as kmeans_module
import geovq.quantize.nearest as nearest_module
from geovq.errors import ConfigError, ParameterError, config_section
from geovq.quantize import (
    EuclideanKMeans,
    GeodesicKMedoids,
    assign_by_geodesic,
    assign_to_nearest_landmark,
    assign_to_nearest_medoid,
    knn_graph,
    nearest_neighbors,
    resolve_device,
)
from geovq.quantize.dedup import RowLookup
from geovq.quantize.device import full_float32_matmul
from geovq.quantize.full_graph import assign_to_graph_nodes


def gaussian(n, dim=6, seed=0, offset=0.0):
    return (np.random.default_rng(seed).normal(size=(n, dim)) + offset).astype(np.float32)


def lexsorted_neighbours(queries, reference, k, exclude_self=False):
    """The k nearest by exact float64 distance, ties to the lower index: the definition."""
    index = np.broadcast_to(np.arange(len(reference)), (len(queries), len(reference))).copy()
    dist = nearest_module.exact_distances(queries, reference, index)
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    order = np.lexsort((index, dist), axis=1)[:, :k]
    return np.take_along_axis(dist, order, 1), order


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# -- resolve_device --------------------------------------------------------------------------------


def test_resolve_device_names_and_auto(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_takes_the_gpu_where_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ParameterError, match="2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused_naming_the_fix(no_cuda, device):
    with pytest.raises(ParameterError) as err:
        resolve_device(device)
    assert err.value.parameter == "device"
    assert "device='cpu'" in str(err.value) and "device='auto'" in str(err.value)


def test_an_unknown_device_is_refused(no_cuda):
    with pytest.raises(ParameterError, match="device must be one of"):
        resolve_device("gpu")


@pytest.mark.parametrize("make", [GeodesicKMedoids, EuclideanKMeans])
def test_a_quantizer_on_cuda_without_a_gpu_fails_before_fitting_naming_the_config_key(no_cuda, make):
    quantizer = make(device="cuda")
    with pytest.raises(ConfigError) as err, config_section("quantizer"):
        quantizer.check_params()
    assert "quantizer.device" in str(err.value) and "\n" not in str(err.value)


# -- full float32 products -------------------------------------------------------------------------


def matmul_settings():
    backends = torch.backends
    if hasattr(backends.cuda.matmul, "fp32_precision"):
        return backends.cuda.matmul.fp32_precision, backends.mkldnn.matmul.fp32_precision, backends.cudnn.conv.fp32_precision
    return torch.get_float32_matmul_precision(), backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32


@pytest.fixture
def restore_matmul_settings():
    backends = torch.backends
    if hasattr(backends.cuda.matmul, "fp32_precision"):
        holders = [backends.cuda.matmul, backends.mkldnn.matmul, backends.cudnn.conv]
        saved = [h.fp32_precision for h in holders]
        yield
        for holder, value in zip(holders, saved):
            holder.fp32_precision = value
    else:
        saved = matmul_settings()
        yield
        torch.set_float32_matmul_precision(saved[0])
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = saved[1:]


def test_full_float32_matmul_turns_tf32_off_and_restores_the_settings(restore_matmul_settings):
    full = ("ieee",) * 3 if hasattr(torch.backends.cuda.matmul, "fp32_precision") else ("highest", False, False)
    torch.set_float32_matmul_precision("medium")  # TF32 (and bf16 on oneDNN) allowed
    before = matmul_settings()
    assert before != full
    with full_float32_matmul():
        assert matmul_settings() == full
    assert matmul_settings() == before
    with pytest.raises(RuntimeError, match="inside"), full_float32_matmul():
        raise RuntimeError("inside")
    assert matmul_settings() == before


# -- exact neighbours on a device ------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4])
def test_device_search_equals_the_kdtree(k):
    # Offset from the origin: the float32 products lose precision there unless the data is centred.
    ref, queries = gaussian(700, offset=30.0, seed=1), gaussian(500, offset=30.0, seed=2)
    dist, idx = nearest_neighbors(queries, ref, k, device="cpu", chunk_size=128)
    want_d, want_i = cKDTree(ref.astype(np.float64)).query(queries.astype(np.float64), k)
    np.testing.assert_array_equal(idx, want_i.reshape(idx.shape))
    np.testing.assert_allclose(dist, want_d.reshape(dist.shape), rtol=1e-12)


def test_device_knn_without_self_equals_the_kdtree():
    points = gaussian(600, seed=3)
    dist, idx = nearest_neighbors(points, points, 5, exclude_self=True, device="cpu", chunk_size=100)
    want_d, want_i = cKDTree(points.astype(np.float64)).query(points.astype(np.float64), 6)
    np.testing.assert_array_equal(idx, want_i[:, 1:])
    np.testing.assert_allclose(dist, want_d[:, 1:], rtol=1e-12)


def test_ties_go_to_the_lower_index_on_the_device_and_the_cpu():
    grid = np.stack(np.meshgrid(np.arange(12), np.arange(12)), -1).reshape(-1, 2).astype(np.float32)
    inside = (grid < 11).all(1)
    centres = grid[inside][:40] + 0.5  # the four corners of each centre's cell are equally far
    for queries, k, exclude in ((centres, 3, False), (centres, 4, False), (grid, 3, True), (grid, 5, True)):
        reference = grid
        want_d, want_i = lexsorted_neighbours(queries, reference, k, exclude)
        dist, idx = nearest_neighbors(queries, reference, k, exclude_self=exclude, device="cpu")
        np.testing.assert_array_equal(idx, want_i)
        np.testing.assert_array_equal(dist, want_d)
        cpu_d, cpu_i = nearest_neighbors(queries, reference, k, exclude_self=exclude, backend="kdtree")
        np.testing.assert_array_equal(cpu_i, want_i)
        np.testing.assert_array_equal(cpu_d, want_d)


def test_every_cpu_search_and_the_device_give_the_same_nearest_point_in_ties(monkeypatch):
    import geovq.quantize.full_graph as full_graph

    grid = np.stack(np.meshgrid(np.arange(30), np.arange(30)), -1).reshape(-1, 2).astype(np.float32)
    reference = grid[np.random.default_rng(0).permutation(len(grid))]  # ties among scattered indices
    queries = grid[(grid < 29).all(1)] + 0.5  # four grid points equally near each
    want = lexsorted_neighbours(queries, reference, 1)[1][:, 0]
    for backend in ("pruned", "kdtree", "brute"):
        np.testing.assert_array_equal(nearest_neighbors(queries, reference, 1, backend=backend)[1][:, 0], want)
    np.testing.assert_array_equal(nearest_neighbors(queries, reference, 1, device="cpu")[1][:, 0], want)
    monkeypatch.setattr(full_graph, "_TREE_MIN_REFERENCE", 0)  # the tree kept for millions of training vectors
    labels = np.arange(len(reference))
    np.testing.assert_array_equal(assign_to_graph_nodes(queries, RowLookup(reference), labels), want)
    np.testing.assert_array_equal(assign_to_graph_nodes(queries, RowLookup(reference), labels, device="cpu"), want)


def test_more_tied_points_than_candidates_are_searched_again_and_the_lowest_index_wins(monkeypatch):
    # Around each query, 8 grid points at distance sqrt(5) exactly (in float64: the coordinates
    # are exact in float32), in shuffled order; centred, their float32 scores differ by rounding,
    # so the first few candidates are a random few of them and cannot be proved the nearest.
    ring = np.array([(1, 2), (2, 1), (-1, 2), (-2, 1), (1, -2), (2, -1), (-1, -2), (-2, -1)])
    rng = np.random.default_rng(0)
    centres = np.stack(np.meshgrid(np.arange(8), np.arange(5)), -1).reshape(-1, 2) * 10 + 0.375
    reference = (centres[:, None] + ring[None]).reshape(-1, 2)[rng.permutation(len(centres) * 8)].astype(np.float32)
    queries = centres.astype(np.float32)
    widths = []
    real = nearest_module.rank_exactly
    monkeypatch.setattr(nearest_module, "rank_exactly", lambda q, r, i, k: (widths.append(i.shape[1]), real(q, r, i, k))[1])
    for k in (1, 3):
        dist, idx = nearest_neighbors(queries, reference, k, device="cpu")
        want_d, want_i = lexsorted_neighbours(queries, reference, k)
        np.testing.assert_array_equal(idx, want_i)
        np.testing.assert_array_equal(dist, want_d)
    assert max(widths) > widths[0]  # searched again with more candidates


# -- the steps and the quantizers with a device ----------------------------------------------------


def test_knn_graph_on_the_device_is_the_cpu_graph():
    points = gaussian(400, seed=4)
    default, on_device = knn_graph(points, 7), knn_graph(points, 7, device="cpu")
    assert (default != on_device).nnz == 0 and default.nnz == on_device.nnz


def test_assignment_rules_on_the_device_give_the_cpu_codes():
    X, landmarks = gaussian(3000, seed=5), gaussian(600, seed=6)  # > 512 landmarks: the CPU takes the pruned search
    labels = np.random.default_rng(0).integers(0, 20, 600)
    X[::7] = X[0]  # duplicates: searched once
    np.testing.assert_array_equal(assign_to_nearest_landmark(X, landmarks, labels),
                                  assign_to_nearest_landmark(X, landmarks, labels, device="cpu"))
    np.testing.assert_array_equal(assign_to_nearest_medoid(X, landmarks[:50]),
                                  assign_to_nearest_medoid(X, landmarks[:50], device="cpu"))
    to_medoids = np.random.default_rng(1).uniform(0, 5, (600, 20)).astype(np.float32)
    np.testing.assert_array_equal(assign_by_geodesic(X, landmarks, to_medoids),
                                  assign_by_geodesic(X, landmarks, to_medoids, device="cpu"))
    lookup, node_labels = RowLookup(landmarks), np.arange(600) % 20
    np.testing.assert_array_equal(assign_to_graph_nodes(X, lookup, node_labels),
                                  assign_to_graph_nodes(X, lookup, node_labels, device="cpu"))


def simulate_gpu(monkeypatch) -> list:
    """From now on, the quantizers' ``device`` resolves to torch's CPU device, as it does to a GPU
    where there is one: their searches take the device path. Returns the list of the device
    searches made (their devices)."""
    searches = []
    real = nearest_module.BruteForceSearch

    class Counted(real):
        def __init__(self, reference, device, **kw):
            searches.append(str(device))
            super().__init__(reference, device, **kw)

    monkeypatch.setattr(nearest_module, "BruteForceSearch", Counted)
    for module in (estimator_module, kmeans_module):
        monkeypatch.setattr(module, "search_device", lambda device: torch.device("cpu"))
    return searches


@pytest.mark.parametrize("params", [dict(assignment="landmark"), dict(assignment="geodesic", method="graph"),
                                    dict(method="graph_full", n_landmarks=60)])
def test_geodesic_kmedoids_on_a_device_gives_the_cpu_codebook_and_codes(params, monkeypatch):
    X = gaussian(700, dim=4, seed=7)
    settings = {"n_clusters": 6, "n_landmarks": 300, "n_neighbors": 8, "n_jobs": 1, **params}
    cpu = GeodesicKMedoids(**settings).fit(X)
    cpu_codes = cpu.predict(X[:400] + 0.01)
    searches = simulate_gpu(monkeypatch)
    device = GeodesicKMedoids(**settings).fit(X)
    assert searches, "the device path did not run"
    np.testing.assert_array_equal(device.medoid_indices_, cpu.medoid_indices_)
    np.testing.assert_array_equal(device.predict(X[:400] + 0.01), cpu_codes)
    assert device.inertia_ == cpu.inertia_


def test_euclidean_kmeans_on_a_device_gives_the_cpu_codes(monkeypatch):
    X = gaussian(2000, seed=8)
    settings = dict(n_clusters=8, n_landmarks=500, n_jobs=1)
    cpu = EuclideanKMeans(**settings).fit(X)
    searches = simulate_gpu(monkeypatch)
    device = EuclideanKMeans(**settings).fit(X)
    np.testing.assert_array_equal(device.cluster_centers_, cpu.cluster_centers_)
    np.testing.assert_array_equal(device.predict(X), cpu.predict(X))
    assert searches


# -- the config ------------------------------------------------------------------------------------


def test_quantizer_device_changes_no_config_hash(make_cfg):
    from geovq.artifacts import config_hash
    from geovq.callbacks.quantize_on_fit_end import recorded_settings
    from geovq.run_folder import result_config

    def key(*overrides):
        return config_hash(result_config(make_cfg("stage=quantize", *overrides)))

    assert make_cfg("stage=quantize").quantizer.device == "auto"
    assert key() == key("quantizer.device=cpu") == key("quantizer.device=cuda")
    assert key("quantizer=kmeans") == key("quantizer=kmeans", "quantizer.device=cpu")
    assert key() != key("quantizer.n_clusters=64")  # a setting that changes results does change it
    assert "device" not in recorded_settings(make_cfg("stage=quantize", "quantizer.device=cpu").quantizer)
