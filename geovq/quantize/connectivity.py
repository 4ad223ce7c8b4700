"""Making the k-NN graph connected, and saying how.

A k-NN graph over clustered data often falls apart into components (two digits' latents far
apart, an isolated outlier). Between components every geodesic distance is infinite; K-Medoids
cannot use that, and replacing ``inf`` by "a large constant" silently distorts every distance.

The rule here: join the components by the shortest straight segments between them, forming a
minimum spanning tree over the components where two components are as far apart as their
closest pair of points (Boruvka's algorithm: each round links every component to its nearest
other component, which at least halves their number). The added edges are real Euclidean
distances, so the geodesics stay metric. :class:`ConnectionReport` records what was added.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from geovq.quantize.knn_graph import undirected_graph
from geovq.quantize.resources import torch_threads

CONNECTION_RULE = "minimum spanning tree over components, joined by their closest pairs of points (Boruvka)"


@dataclass
class ConnectionReport:
    """What :func:`connect_components` did; ``edges`` are ``(i, j, length)`` in graph-node indices."""

    n_components_before: int
    n_edges_added: int = 0
    edges: list = field(default_factory=list)
    rounds: int = 0
    rule: str = CONNECTION_RULE
    median_knn_edge: float = 0.0  # for scale: a typical edge of the k-NN graph

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.n_components_before <= 1:
            return "the k-NN graph was connected; no edge added"
        lengths = np.array([e[2] for e in self.edges])
        return (
            f"the k-NN graph had {self.n_components_before} connected components; joined them with "
            f"{self.n_edges_added} edges ({self.rule}) of length min {lengths.min():.4g}, "
            f"median {np.median(lengths):.4g}, max {lengths.max():.4g} (median k-NN edge: "
            f"{self.median_knn_edge:.4g}); raise n_neighbors if these joins are too long"
        )


def connect_components(
    graph: sp.csr_matrix, points: np.ndarray, *, n_jobs: int = 1, warn: bool = True
) -> tuple[sp.csr_matrix, ConnectionReport]:
    """Return a connected version of ``graph`` (nodes = rows of ``points``) and the report."""
    n_comp, comp = connected_components(graph, directed=False)
    report = ConnectionReport(
        n_components_before=int(n_comp),
        median_knn_edge=float(np.median(graph.data)) if graph.nnz else 0.0,
    )
    if n_comp <= 1:
        return graph, report
    coo = graph.tocoo()
    rows, cols, weights = [coo.row.astype(np.int64)], [coo.col.astype(np.int64)], [coo.data]
    pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    with torch_threads(n_jobs):
        while n_comp > 1:
            report.rounds += 1
            for i, j, length in _closest_links(pts, points, comp, n_comp):
                report.edges.append((int(i), int(j), float(length)))
                rows.append(np.array([i]))
                cols.append(np.array([j]))
                weights.append(np.array([length]))
            graph = undirected_graph(np.concatenate(rows), np.concatenate(cols), np.concatenate(weights), graph.shape[0])
            n_comp, comp = connected_components(graph, directed=False)
    report.n_edges_added = len(report.edges)
    if warn:  # one channel: the command line turns warnings into log lines (geovq.console)
        warnings.warn(report.summary(), stacklevel=3)
    return graph, report


def _closest_links(pts: torch.Tensor, points: np.ndarray, comp: np.ndarray, n_comp: int):
    """For every component but the largest, its closest pair of points to any other component
    (one Boruvka round; the largest component's own closest link is the closest link of some
    other component, or is found in a later round).

    Brute force in chunks, O(m n d) for the m points outside the largest component, run only
    when the graph is disconnected (millions of nodes with a few stray clumps: cheap). The pair
    is the closest to float32 precision; its length is then computed exactly.
    """
    n = pts.shape[0]
    largest = int(np.argmax(np.bincount(comp, minlength=n_comp)))
    queries = np.flatnonzero(comp != largest)
    comp_t = torch.from_numpy(comp.astype(np.int64))
    sq = (pts * pts).sum(1)
    best_d = torch.full((queries.size,), float("inf"))
    best_j = torch.zeros(queries.size, dtype=torch.int64)
    ref_chunk = min(n, 1 << 18)
    q_chunk = max(256, (1 << 24) // ref_chunk)
    for s in range(0, queries.size, q_chunk):
        q = torch.from_numpy(queries[s : s + q_chunk])
        for r in range(0, n, ref_chunk):
            d = torch.addmm(sq[r : r + ref_chunk].unsqueeze(0), pts[q], pts[r : r + ref_chunk].T, alpha=-2.0) + sq[q, None]
            d.masked_fill_(comp_t[q, None] == comp_t[None, r : r + ref_chunk], float("inf"))
            value, where = d.min(1)
            better = value < best_d[s : s + q_chunk]
            best_d[s : s + q_chunk] = torch.where(better, value, best_d[s : s + q_chunk])
            best_j[s : s + q_chunk] = torch.where(better, where + r, best_j[s : s + q_chunk])
    # Exact lengths for the candidates (the matmul form loses precision for near points).
    best_j = best_j.numpy()
    exact = np.sqrt(((points[queries].astype(np.float64) - points[best_j].astype(np.float64)) ** 2).sum(1))
    qcomp = comp[queries]
    order = np.lexsort((exact, qcomp))  # by component, then by link length
    first = order[np.r_[True, qcomp[order][1:] != qcomp[order][:-1]]]  # each component's shortest link
    links = {}
    for f in first:
        i, j = int(queries[f]), int(best_j[f])
        links[(min(i, j), max(i, j))] = float(exact[f])  # two components choosing each other: one edge
    return [(i, j, length) for (i, j), length in sorted(links.items())]
