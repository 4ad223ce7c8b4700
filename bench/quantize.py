"""Benchmark: geovq's geodesic quantization stage against the stack one would write by hand.

Reference (same landmarks, same k, same process):
    sklearn kneighbors_graph(mode="distance"), symmetrised the way Isomap does it: scipy
    shortest_path(method="D", directed=False) on it, i.e. each edge usable both ways with its own
    length (float64 N x N). (G + G.T would double mutual edges; G.maximum(G.T) drops the
    zero-length edges between duplicate landmarks, which on MNIST leaves the ~60% duplicate
    landmarks isolated and most distances infinite.)
    scikit-learn-extra KMedoids(method="alternate", init="k-medoids++", metric="precomputed")
    sklearn NearestNeighbors(1) on the landmarks -> the cluster of every vector's nearest landmark
Ours: geovq.quantize.GeodesicKMedoids(landmark_selection="uniform", backend="fasterpam",
      assignment="landmark") fit on the vectors, then predict on all of them.

Input vectors (--vectors):
    latents (default)   GridVAE posterior means of the 60,000 MNIST training images (2.94M x 64):
                        from --latents FILE.pt (a float tensor N x D, N x D x H x W, or a dict with
                        "latents"/"mu"), from --checkpoint (a GridVAE model artifact), or else from
                        a small GridVAE the benchmark trains itself (stage=vae on 10k images, cached
                        in outputs/bench/gridvae/model.pt)
    patches             "MNIST-derived vectors": each training image cut into its 7x7 grid of 4x4
                        patches (2.94M vectors of dim 16, 62% of them identical background patches),
                        optionally projected to --dim by a fixed random matrix.

    python bench/quantize.py --sizes 10000 --k 15             # the study's setting, GridVAE latents
    python bench/quantize.py --vectors patches                # sizes 2000 5000 10000 20000
    python bench/quantize.py --ours-only --sizes 40000        # shows N=40k fits in memory
    python bench/quantize.py --graph-sizes 10000 40000 100000 --k 15   # method=graph, no N x N matrix
    python bench/quantize.py --full --k 15                    # method=graph_full on all 2.695M training latents
    python bench/quantize.py --full --full-size 500000 --k 15 # ... on the first 500k of them
    python bench/quantize.py --ann-study 200000 --k 15        # approximate-neighbour libraries: time, recall
    python bench/quantize.py --device cuda --ours-only --sizes 10000 --assignment-study   # searches on the GPU

Times are wall-clock seconds on this machine; memory is the extra resident memory each step
needed at its peak (see geovq/quantize/resources.py). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geovq.quantize import GeodesicKMedoids, nearest_medoid, resolve_device, select_landmarks  # noqa: E402
from geovq.quantize.device import search_device  # noqa: E402
from geovq.quantize.resources import StepRecorder, children_peak_rss, lifetime_peak_rss  # noqa: E402

STEPS = ("landmarks", "knn_graph", "connect", "shortest_paths", "kmedoids", "assignment")
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


# -- input vectors -------------------------------------------------------------------------------


def mnist_images(root: Path) -> torch.Tensor:
    import torchvision

    data = torchvision.datasets.MNIST(root=str(root), train=True, download=False).data
    return data.to(torch.float32).div_(255.0)  # (60000, 28, 28) in [0, 1]


def mnist_patches(root: Path, dim: int, seed: int) -> np.ndarray:
    images = mnist_images(root).numpy()
    patches = images.reshape(-1, 7, 4, 7, 4).transpose(0, 1, 3, 2, 4).reshape(-1, 16)
    if dim != 16:  # a linear map keeps duplicates duplicates
        projection = np.random.default_rng(seed).normal(size=(16, dim)).astype(np.float32) / np.sqrt(dim)
        patches = patches @ projection
    return np.ascontiguousarray(patches, dtype=np.float32)


def latents_from_file(path: str) -> np.ndarray:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        obj = next(obj[key] for key in ("latents", "mu", "means", "z") if key in obj)
    z = torch.as_tensor(obj, dtype=torch.float32)
    if z.ndim == 4:  # N x D x H x W grids
        z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return z.numpy()


def latents_from_checkpoint(path: str, root: Path) -> np.ndarray:
    from geovq.models.io import load_model

    model, _ = load_model(path, "grid_vae")
    images = mnist_images(root).unsqueeze(1)
    means = []
    with torch.no_grad():
        for batch in images.split(1000):
            mu, _ = model.encode(batch)
            means.append(mu.permute(0, 2, 3, 1).reshape(-1, mu.shape[1]))
    return torch.cat(means).numpy()


BENCH_VAE = Path("outputs/bench/gridvae/model.pt")
REFERENCE_TOTAL: dict[int, float] = {}  # N -> seconds of the reference stack in this run


def train_small_gridvae(root: Path) -> str:
    """A GridVAE trained by the project's own stage (10k images, 2 epochs), cached."""
    import subprocess

    if not BENCH_VAE.exists():
        print(f"training a small GridVAE (stage=vae, 10k images) into {BENCH_VAE.parent} ...", flush=True)
        subprocess.run([sys.executable, "-m", "geovq.train", "stage=vae", f"data.root={root}", "data.subset=10000",
                        "data.test_subset=2000", "trainer.max_epochs=2", "logger=csv",
                        f"hydra.run.dir={BENCH_VAE.parent}"], check=True)
    return str(BENCH_VAE)


def load_vectors(args) -> tuple[np.ndarray, str]:
    if args.vectors == "patches":
        X = mnist_patches(args.data_root, args.dim, args.seed)
        return X, f"MNIST-derived vectors (4x4 patches of the 60,000 training images, dim {X.shape[1]})"
    if args.latents:
        return latents_from_file(args.latents), f"latents from {args.latents}"
    checkpoint = args.checkpoint or train_small_gridvae(args.data_root)
    return latents_from_checkpoint(checkpoint, args.data_root), f"GridVAE posterior means ({checkpoint})"


# -- the two stacks ------------------------------------------------------------------------------


def reference_stack(X, landmark_idx, k, n_clusters, seed):
    from scipy.sparse.csgraph import shortest_path
    from sklearn.neighbors import NearestNeighbors, kneighbors_graph
    from sklearn_extra.cluster import KMedoids

    rec = StepRecorder()
    L = X[landmark_idx]
    with rec.step("knn_graph"):
        G = kneighbors_graph(L, k, mode="distance")
    with rec.step("shortest_paths"):
        D = shortest_path(G, method="D", directed=False)
    n_inf = int(np.isinf(D).sum())
    if n_inf:  # what a hand-written stack would do with a disconnected graph
        D[np.isinf(D)] = D[np.isfinite(D)].max() * 2
    with rec.step("kmedoids"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        km = KMedoids(n_clusters, metric="precomputed", method="alternate", init="k-medoids++",
                      random_state=seed).fit(D)
    with rec.step("assignment"):
        nn = NearestNeighbors(n_neighbors=1).fit(L)
        codes = km.labels_[nn.kneighbors(X, return_distance=False)[:, 0]]
    return rec, km.medoid_indices_.astype(np.int64), float(km.inertia_), codes, D, n_inf


def fit_recording_steps(gkm: GeodesicKMedoids, X) -> StepRecorder:
    """Fit ``gkm`` (its warnings always shown) and a StepRecorder holding the fit's steps (its
    ``timings_``/``peak_memory_``); predict records nothing, so callers time it in the recorder."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        gkm.fit(X)
    rec = StepRecorder()
    rec.timings.update(gkm.timings_)
    rec.peak_memory.update(gkm.peak_memory_)
    return rec


def our_stack(X, n_landmarks, k, n_clusters, seed, progress, keep_distances, device="auto"):
    """Fit and predict; returns the estimator, the codes and a StepRecorder with every step
    (the fit's ``timings_``/``peak_memory_``, plus the assignment, timed here: predict records nothing)."""
    gkm = GeodesicKMedoids(n_clusters=n_clusters, n_landmarks=n_landmarks, n_neighbors=k,
                           landmark_selection="uniform", random_state=seed, store_distances=keep_distances,
                           progress=progress, device=device)
    rec = fit_recording_steps(gkm, X)
    with rec.step("assignment"):
        codes = gkm.predict(X)
    return gkm, codes, rec


# -- report --------------------------------------------------------------------------------------


def fmt_s(t):
    return "-" if t is None else f"{t:8.2f}"


def fmt_mb(b):
    return "-" if b is None else f"{b / 2**20:8.0f}"


def table(n, ref, ours):
    """``ref`` and ``ours``: StepRecorders (``ref`` may be None)."""
    lines = [f"{'step':<16}{'ref s':>9}{'ref MB':>9}{'ours s':>9}{'ours MB':>9}{'speedup':>9}"]
    for step in STEPS:
        rt = ref.timings.get(step) if ref else None
        ot = ours.timings.get(step)
        speed = f"{rt / ot:8.1f}x" if rt and ot else ""
        lines.append(f"{step:<16}{fmt_s(rt):>9}{fmt_mb(ref.peak_memory.get(step) if ref else None):>9}"
                     f"{fmt_s(ot):>9}{fmt_mb(ours.peak_memory.get(step)):>9}{speed:>9}")
    rtot = sum(ref.timings.values()) if ref else None
    otot = sum(ours.timings[s] for s in STEPS if s in ours.timings)
    lines.append(f"{'total':<16}{fmt_s(rtot):>9}{'':>9}{fmt_s(otot):>9}{'':>9}"
                 f"{(f'{rtot / otot:8.1f}x' if rtot else ''):>9}")
    return "\n".join(lines), rtot, otot


def run_size(X, n, args):
    print(f"\n=== N = {n} landmarks, k = {args.k}, K = {args.clusters} ===", flush=True)
    landmark_idx = select_landmarks(X, n, "uniform", args.seed)
    gc.collect()
    ours, our_codes, our_steps = our_stack(X, n, args.k, args.clusters, args.seed, args.progress, not args.ours_only,
                                           args.device)
    assert np.array_equal(ours.landmark_indices_, landmark_idx), "both stacks must use the same landmarks"
    print(f"distinct landmark vectors: {ours.n_unique_landmarks_} of {n}; graph components before "
          f"joining: {ours.n_components_}", flush=True)
    our_D = getattr(ours, "geodesic_distances_", None)
    ours.__dict__.pop("geodesic_distances_", None)
    ref = None
    if not args.ours_only:
        gc.collect()
        ref, ref_medoids, ref_obj, ref_codes, ref_D, n_inf = reference_stack(X, landmark_idx, args.k, args.clusters, args.seed)
        text, rtot, otot = table(n, ref, our_steps)
        print(text)
        _, ours_on_ref = nearest_medoid(ref_D.astype(np.float32), ours.medoid_indices_)
        _, ref_on_ours = nearest_medoid(our_D, ref_medoids)
        print(f"K-Medoids objective (sum of geodesic distances of the {n} landmarks to their medoid):")
        print(f"  on the reference matrix: reference alternate {ref_obj:.1f}   our medoids {ours_on_ref:.1f}")
        print(f"  on our matrix:           reference medoids   {ref_on_ours:.1f}   ours (FasterPAM) {ours.inertia_:.1f}")
        if n_inf:
            print(f"  reference graph was disconnected: {n_inf} infinite distances replaced by 2 x max")
        print(f"codes equal to the reference's nearest-landmark codes (up to cluster naming): "
              f"{agreement(ref_codes, our_codes):.3f}")
        print(f"TOTAL  reference {rtot:.2f} s   ours {otot:.2f} s   speedup {rtot / otot:.1f}x", flush=True)
        REFERENCE_TOTAL[n] = rtot
        del ref_D
        floor = dijkstra_floor(X, landmark_idx, args.k, torch.get_num_threads())
        print(f"shortest paths: ours {our_steps.timings['shortest_paths']:.2f} s; one Dijkstra per node spread "
              f"over {torch.get_num_threads()} cores {floor:.2f} s; ratio {our_steps.timings['shortest_paths'] / floor:.2f}",
              flush=True)
    else:
        text, _, otot = table(n, None, our_steps)
        print(text)
        print(f"K-Medoids objective (ours, FasterPAM): {ours.inertia_:.1f}")
        print(f"TOTAL  ours {otot:.2f} s", flush=True)
    del our_D
    gc.collect()


def assignment_study(X, n, args):
    """Where the assignment time goes: duplicates collapsed or not; pruned BLAS, k-d tree or torch matmul."""
    from geovq.quantize import nearest_neighbors, unique_rows

    landmarks = X[select_landmarks(X, n, "uniform", args.seed)]
    landmarks = landmarks[unique_rows(landmarks).first_index]
    print(f"\n--- assignment study: nearest of {len(landmarks)} distinct landmarks (N = {n}) for all "
          f"{X.shape[0]} vectors ---", flush=True)
    t = time.perf_counter()
    groups = unique_rows(X)
    t_dedup = time.perf_counter() - t
    distinct = X[groups.first_index]
    print(f"collapse duplicates: {t_dedup:6.2f} s -> {groups.n_unique} distinct vectors "
          f"({groups.n_unique / X.shape[0]:.0%})", flush=True)
    results = {}
    device = search_device(args.device)
    variants = [("pruned BLAS, distinct vectors", distinct, "pruned", None),
                ("k-d tree, distinct vectors", distinct, "kdtree", None),
                ("torch matmul, distinct vectors", distinct, "brute", None),
                ("k-d tree, all vectors", X, "kdtree", None)]
    if device is not None:
        variants.insert(3, (f"brute force on {device}, distinct vectors", distinct, "auto", device))
    for name, queries, backend, on in variants:
        t = time.perf_counter()
        _, idx = nearest_neighbors(queries, landmarks, 1, backend=backend, n_jobs=torch.get_num_threads(), device=on)
        results[name] = idx[:, 0] if queries is X else idx[groups.inverse, 0]
        print(f"{name:<32}{time.perf_counter() - t:8.2f} s", flush=True)
    ref = results["k-d tree, all vectors"]
    for name, idx in results.items():
        differ = np.flatnonzero(idx != ref)
        d_this = np.linalg.norm(X[differ].astype(np.float64) - landmarks[idx[differ]], axis=1)
        d_ref = np.linalg.norm(X[differ].astype(np.float64) - landmarks[ref[differ]], axis=1)
        worse = int(np.sum(d_this > d_ref * (1 + 1e-6)))
        print(f"  {name:<32} other nearest landmark than the k-d tree on all vectors for {len(differ)} "
              f"vectors, of which {worse} are not ties (equal distance within 1e-6)")


def dijkstra_floor(X, landmark_idx, k, n_jobs, n_sources=400, seed=0):
    """Seconds that one Dijkstra from every node would take, spread over ``n_jobs`` cores:
    scipy's Dijkstra, one process, timed from a sample of sources on the same graph as ours."""
    from scipy.sparse.csgraph import dijkstra

    from geovq.quantize import connect_components, knn_graph, unique_rows

    points = X[landmark_idx][unique_rows(X[landmark_idx]).first_index]
    graph, _ = connect_components(knn_graph(points, k, n_jobs=n_jobs), points, n_jobs=n_jobs, warn=False)
    sources = np.random.default_rng(seed).choice(len(points), min(n_sources, len(points)), replace=False)
    t = time.perf_counter()
    dijkstra(graph, directed=True, indices=sources)
    return (time.perf_counter() - t) * len(points) / len(sources) / n_jobs


def graph_size(X, n, args):
    """method=graph: time, peak memory and objective of the whole stage at ``n`` landmarks; at
    n <= 10k also its objective against FasterPAM on the dense matrix (same graph and landmarks)."""
    print(f"\n=== method=graph, N = {n} landmarks, k = {args.k}, K = {args.clusters} ===", flush=True)
    gc.collect()
    gkm = GeodesicKMedoids(n_clusters=args.clusters, n_landmarks=n, n_neighbors=args.k, method="graph",
                           random_state=args.seed, progress=args.progress, device=args.device)
    gkm.fit(X)
    rec = StepRecorder()
    rec.timings.update(gkm.timings_)
    rec.peak_memory.update(gkm.peak_memory_)
    with rec.step("assignment"):
        gkm.predict(X)
    print(f"{'step':<18}{'s':>9}{'extra MB':>10}")
    for step, seconds in rec.timings.items():
        print(f"{step:<18}{seconds:9.2f}{rec.peak_memory[step] / 2**20:10.0f}")
    total = sum(rec.timings.values())
    versus = f"   speedup over the reference stack of this run {REFERENCE_TOTAL[n] / total:.1f}x" if n in REFERENCE_TOTAL else ""
    print(f"{'total':<18}{total:9.2f}{versus}")
    print(f"objective {gkm.inertia_:.2f}; distinct landmarks {gkm.n_unique_landmarks_}; iterations "
          f"{gkm.kmedoids_n_iter_}; peak RSS of this process so far {lifetime_peak_rss() / 2**30:.2f} GiB", flush=True)
    if n <= 10000 and args.graph_seeds:
        compare_with_fasterpam(X, n, args)


def compare_with_fasterpam(X, n, args):
    from geovq.quantize import connect_components, geodesic_distances, kmedoids, knn_graph, unique_rows
    from geovq.quantize.estimator import _expand
    from geovq.quantize.graph_kmedoids import graph_kmedoids

    n_jobs = torch.get_num_threads()
    idx = select_landmarks(X, n, "uniform", args.seed)
    nodes = unique_rows(X[idx])
    points = X[idx][nodes.first_index]
    graph, _ = connect_components(knn_graph(points, args.k, n_jobs=n_jobs), points, n_jobs=n_jobs, warn=False)
    D = _expand(geodesic_distances(graph, n_jobs=n_jobs), nodes.inverse)
    print(f"same graph and landmarks, K-Medoids seed varied:\n{'seed':<6}{'FasterPAM (dense)':>20}{'s':>7}"
          f"{'graph':>12}{'s':>7}{'graph / FasterPAM':>19}")
    ratios = []
    for seed in range(args.graph_seeds):
        t = time.perf_counter()
        dense = kmedoids(D, args.clusters, random_state=seed)
        t_dense = time.perf_counter() - t
        t = time.perf_counter()
        found = graph_kmedoids(graph, args.clusters, weights=nodes.counts, random_state=seed, n_jobs=n_jobs)
        t_graph = time.perf_counter() - t
        ratios.append(found.inertia / dense.inertia)
        print(f"{seed:<6}{dense.inertia:20.2f}{t_dense:7.1f}{found.inertia:12.2f}{t_graph:7.1f}{ratios[-1]:19.4f}")
    print(f"graph / FasterPAM: mean {np.mean(ratios):.4f}, worst {max(ratios):.4f} "
          "(FasterPAM time excludes the all-pairs shortest paths it needs)", flush=True)
    del D


TRAIN_VECTORS = 55000 * 49  # the training split of stage=quantize: 55k of the 60k images, 49 positions each


def full_graph(X, args):
    """method=graph_full on the first ``--full-size`` vectors (default: 55k images' worth, the
    training split's size): time and peak memory of each step, the full-graph objective of the
    full solution against the 10k-landmark solution's on the same graph, the agreement of their
    codes, and the exact assignment of held-out vectors (the images after the training ones)."""
    from sklearn.metrics import adjusted_mutual_info_score

    n = min(args.full_size or TRAIN_VECTORS, X.shape[0])
    train, held_out = X[:n], X[n : n + args.held_out]
    print(f"\n=== method=graph_full: {n} training vectors, k = {args.k}, K = {args.clusters}, start: "
          f"{args.full_landmarks} landmarks ({args.start_method}) ===", flush=True)
    gc.collect()
    gkm = GeodesicKMedoids(n_clusters=args.clusters, n_landmarks=args.full_landmarks, n_neighbors=args.k,
                           method="graph_full", start_method=args.start_method, random_state=args.seed,
                           progress=args.progress, full_max_iter=args.full_max_iter, device=args.device)
    rec = fit_recording_steps(gkm, train)
    with rec.step("assign_held_out"):
        held_codes = gkm.predict(held_out) if len(held_out) else None
    with rec.step("assign_train"):
        train_codes = gkm.predict(train)
    print(f"{'step':<18}{'s':>9}{'extra MB':>10}")
    for step, seconds in rec.timings.items():
        print(f"{step:<18}{seconds:9.2f}{rec.peak_memory[step] / 2**20:10.0f}")
    fit_total = sum(gkm.timings_.values())
    print(f"{'fit total':<18}{fit_total:9.2f}   (+ assignment of {len(held_out)} held-out vectors "
          f"{rec.timings['assign_held_out']:.2f} s)")
    knn = gkm.knn_report_
    print(f"k-NN graph: {knn['search']}, {knn['library']} {knn['params']}: build {knn['seconds_build']:.1f} s, "
          f"query {knn['seconds_query']:.1f} s, recall@{args.k} {knn['recall']:.4f} on {knn['recall_sample']} "
          f"sampled nodes (exact check {knn['seconds_recall']:.1f} s); distinct vectors {gkm.n_unique_landmarks_}; "
          f"components before joining {gkm.n_components_}", flush=True)
    assert np.array_equal(train_codes, gkm.labels_[np.arange(n)] if gkm.n_unique_landmarks_ == n else train_codes)
    start, full = gkm.start_inertia_, gkm.inertia_
    print(f"full-graph objective (sum over the {n} training vectors of the geodesic distance to their medoid):")
    print(f"  {args.full_landmarks}-landmark solution's medoids: {start:.2f}")
    print(f"  full-graph solution:                 {full:.2f}   ({100 * (full / start - 1):+.3f}%; "
          f"{gkm.kmedoids_n_iter_} iterations; history {', '.join(f'{v:.1f}' for v in gkm.objective_history_)})")
    landmark = gkm.landmark_start_
    with rec.step("landmark_codes"):
        landmark_codes = landmark.predict(train)  # the paper's codes: the cluster of the nearest landmark
    cells = gkm.start_labels_[_node_of(gkm, train)]
    same_medoids = np.intersect1d(gkm.landmark_indices_[gkm.medoid_indices_], gkm.start_medoid_vector_indices_).size
    print(f"codes of the {n} training vectors, full solution against the landmark solution "
          f"({same_medoids} of {args.clusters} medoids unchanged):")
    print(f"  vs the paper's nearest-landmark codes:  AMI {adjusted_mutual_info_score(landmark_codes, train_codes):.4f}, "
          f"majority-matched agreement {agreement(landmark_codes, train_codes):.4f}")
    print(f"  vs the landmark medoids' full-graph cells: AMI {adjusted_mutual_info_score(cells, train_codes):.4f}, "
          f"majority-matched agreement {agreement(cells, train_codes):.4f}")
    print(f"  landmark codes vs landmark medoids' full-graph cells: AMI "
          f"{adjusted_mutual_info_score(landmark_codes, cells):.4f}", flush=True)
    if held_codes is not None:
        held_landmark = landmark.predict(held_out)
        print(f"  held-out vectors ({len(held_out)}): AMI {adjusted_mutual_info_score(held_landmark, held_codes):.4f}, "
              f"agreement {agreement(held_landmark, held_codes):.4f}")
    used = np.bincount(train_codes, minlength=args.clusters)
    p = used / used.sum()
    perplexity = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    pl = np.bincount(landmark_codes, minlength=args.clusters) / n
    perplexity_l = float(np.exp(-(pl[pl > 0] * np.log(pl[pl > 0])).sum()))
    print(f"code perplexity on the training vectors: full {perplexity:.1f}, landmark {perplexity_l:.1f}; codes used "
          f"{int((used > 0).sum())} / {int((pl > 0).sum())}")
    from geovq.quantize.graph_kmedoids import worker_extra_bytes

    n_jobs = torch.get_num_threads()
    process, extra = lifetime_peak_rss(), worker_extra_bytes()
    print(f"peak memory: this process {process / 2**30:.2f} GiB (its peak RSS since it started: latents loaded, the "
          f"landmark comparison included); each K-Medoids worker added at most {extra / 2**30:.2f} GiB to the pages it "
          f"shares with it (its peak RSS - its RSS when forked; its whole RSS, shared pages counted, "
          f"{children_peak_rss() / 2**30:.2f} GiB); process + {n_jobs} workers: {(process + n_jobs * extra) / 2**30:.2f} GiB",
          flush=True)


def _node_of(gkm, train):
    """The graph node of each training vector (identical vectors are one node, as in the fit)."""
    from geovq.quantize import unique_rows

    if gkm.n_unique_landmarks_ == len(train):
        return np.arange(len(train))
    return unique_rows(np.ascontiguousarray(train, dtype=np.float32)).inverse


def ann_study(X, n, args):
    """Approximate-neighbour libraries on ``n`` distinct vectors: build and query time, recall@k
    against exact neighbours on a sample (the measurement behind geovq.quantize.ann_graph)."""
    from geovq.quantize import unique_rows
    from geovq.quantize.ann_graph import sampled_recall
    from geovq.quantize.nearest import _drop_self

    rng = np.random.default_rng(args.seed)
    U = X[unique_rows(X).first_index]
    P = np.ascontiguousarray(U[np.sort(rng.choice(len(U), min(n, len(U)), replace=False))])
    k, n_jobs = args.k, torch.get_num_threads()
    print(f"\n--- approximate {k}-NN graph of {len(P)} distinct vectors (of {len(U)} distinct in {len(X)}), "
          f"{n_jobs} threads ---", flush=True)

    def report(name, seconds_build, seconds_query, labels):
        idx = _drop_self(labels.astype(np.int64), np.arange(len(P))[:, None], k)
        recall, m = sampled_recall(P, idx, k, 2000, args.seed, n_jobs)
        print(f"{name:<44}{seconds_build:8.1f}{seconds_query:8.1f}{seconds_build + seconds_query:8.1f}{recall:9.4f}",
              flush=True)

    print(f"{'library, parameters':<44}{'build':>8}{'query':>8}{'total':>8}{'recall':>9}")
    t = time.perf_counter()
    from geovq.quantize import nearest_neighbors

    nearest_neighbors(P[:20000], P, k + 1, backend="kdtree", n_jobs=n_jobs)
    print(f"{'exact k-d tree (principal axes), 20k queries':<44}{'':8}{time.perf_counter() - t:8.1f}"
          f"{(time.perf_counter() - t) * len(P) / 20000:8.1f}{1:9.4f}  (total extrapolated to all queries)", flush=True)
    try:
        from geovq.quantize.ann_graph import build_hnsw  # as the library builds it: one thread, queried on n_jobs

        for M, efc, ef in ((10, 40, 32), (12, 60, 40), (16, 100, 40), (8, 40, 20)):
            t = time.perf_counter()
            index, _, tb = build_hnsw(P, m=M, ef_construction=efc, random_state=0, n_jobs=n_jobs)
            index.set_ef(ef)
            labels, _ = index.knn_query(P, k=k + 1)
            report(f"hnswlib M={M} ef_construction={efc} ef={ef}", tb, time.perf_counter() - t - tb, labels)
    except ImportError:
        print("hnswlib not installed")
    try:
        import faiss

        faiss.omp_set_num_threads(n_jobs)
        for M, efc, ef in ((16, 40, 40), (16, 80, 64)):
            t = time.perf_counter()
            index = faiss.IndexHNSWFlat(P.shape[1], M)
            index.hnsw.efConstruction = efc
            index.add(P)
            tb = time.perf_counter() - t
            index.hnsw.efSearch = ef
            _, labels = index.search(P, k + 1)
            report(f"faiss HNSWFlat M={M} efConstruction={efc} efSearch={ef}", tb, time.perf_counter() - t - tb, labels)
        for nlist, nprobe in ((1024, 8), (1024, 16)):
            t = time.perf_counter()
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(P.shape[1]), P.shape[1], nlist)
            index.train(P[rng.choice(len(P), min(len(P), 50 * nlist), replace=False)])
            index.add(P)
            tb = time.perf_counter() - t
            index.nprobe = nprobe
            _, labels = index.search(P, k + 1)
            report(f"faiss IVFFlat nlist={nlist} nprobe={nprobe}", tb, time.perf_counter() - t - tb, labels)
    except ImportError:
        print("faiss-cpu not installed")
    try:
        import pynndescent

        for run in ("first (numba compiles)", "second"):
            t = time.perf_counter()
            index = pynndescent.NNDescent(P, n_neighbors=k + 1, random_state=args.seed, n_jobs=n_jobs, low_memory=True)
            labels, _ = index.neighbor_graph
            report(f"pynndescent, {run}", time.perf_counter() - t, 0.0, labels)
    except ImportError:
        print("pynndescent not installed")


def agreement(a, b) -> float:
    """Share of vectors on which two codings agree after matching clusters by majority."""
    k = int(max(a.max(), b.max())) + 1
    joint = np.zeros((k, k), dtype=np.int64)
    np.add.at(joint, (a, b), 1)
    return float(joint.max(axis=1).sum() / len(a))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", choices=("latents", "patches"), default="latents",
                        help="GridVAE latents (default) or MNIST 4x4 patches")
    parser.add_argument("--checkpoint", help="a GridVAE model artifact (default: train a small one)")
    parser.add_argument("--latents", help="a .pt file with a float tensor of latents N x D")
    parser.add_argument("--sizes", type=int, nargs="*", default=None,
                        help="landmark counts of the dense comparison (default 2000 5000 10000 20000; "
                             "none with --graph-sizes)")
    parser.add_argument("--graph-sizes", type=int, nargs="*", default=[],
                        help="landmark counts for method=graph (time, peak memory, objective)")
    parser.add_argument("--graph-seeds", type=int, default=3,
                        help="seeds of the method=graph vs dense FasterPAM comparison (N <= 10k)")
    parser.add_argument("--k", type=int, default=10, help="neighbours of the k-NN graph")
    parser.add_argument("--clusters", type=int, default=128)
    parser.add_argument("--dim", type=int, default=16, help="dimension of the MNIST-derived vectors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ours-only", action="store_true", help="skip the reference stack")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--assignment-study", action="store_true",
                        help="also time the assignment variants (with/without deduplication, k-d tree/matmul)")
    parser.add_argument("--full", action="store_true",
                        help="method=graph_full on every training vector (time, memory, objective vs the landmark start)")
    parser.add_argument("--full-size", type=int, default=None,
                        help="training vectors of --full (default 55,000 x 49 = 2,695,000, the training split)")
    parser.add_argument("--held-out", type=int, default=245000,
                        help="vectors after the training ones assigned exactly by --full (default: 5k images)")
    parser.add_argument("--full-landmarks", type=int, default=10000, help="landmarks of the start solution")
    parser.add_argument("--start-method", choices=("dense", "graph"), default="dense")
    parser.add_argument("--full-max-iter", type=int, default=10)
    parser.add_argument("--ann-study", type=int, nargs="*", default=[],
                        help="vector counts for the approximate-neighbour comparison (hnswlib, faiss, pynndescent)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where our stack's exact neighbour searches run (quantizer.device): auto = cuda "
                             "when torch sees a GPU; the reference stack always runs on the CPU")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)  # cuda without a GPU: refused before any work
    except ValueError as err:
        parser.error(f"--device {args.device}: {err}")

    start = time.perf_counter()
    X, source = load_vectors(args)
    print(f"geovq quantize benchmark  {time.strftime('%Y-%m-%d %H:%M')}  python {platform.python_version()}  "
          f"torch {torch.__version__}  cores {torch.get_num_threads()}  {platform.processor() or platform.machine()}  "
          f"searches on {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"vectors: {source}: {X.shape[0]} x {X.shape[1]} (loaded in {time.perf_counter() - start:.1f} s)")
    print(f"command: python bench/quantize.py {' '.join(sys.argv[1:] if argv is None else argv)}", flush=True)
    only_new = args.graph_sizes or args.full or args.ann_study
    sizes = args.sizes if args.sizes is not None else ([] if only_new else [2000, 5000, 10000, 20000])
    for n in sizes:
        run_size(X, n, args)
        if args.assignment_study:
            assignment_study(X, n, args)
    for n in args.graph_sizes:
        graph_size(X, n, args)
    for n in args.ann_study:
        ann_study(X, n, args)
    if args.full:
        full_graph(X, args)
    print(f"\npeak RSS of this process {lifetime_peak_rss() / 2**30:.2f} GiB; of any worker process "
          f"{children_peak_rss() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
