"""Collapsing duplicate vectors.

On MNIST most cells of the 7x7 grid are background, so a large share of the latent vectors
(62% of the raw 4x4 patches) are bit-identical. Every expensive step works on the distinct
vectors only and maps results back through ``inverse``.

``np.unique(axis=0)`` sorts rows lexicographically and takes ~30 s on 2.94M x 16 floats; hashing
each row to one 64-bit word and sorting the words takes ~1 s. Hash collisions are checked and
fall back to the exact method, so the result is always exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_FNV_PRIME = np.uint64(0x100000001B3)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)


@dataclass(frozen=True)
class UniqueRows:
    """``vectors[first_index]`` are the distinct rows, in order of first occurrence;
    ``vectors == vectors[first_index][inverse]``; ``counts[u]`` rows equal distinct row ``u``."""

    first_index: np.ndarray  # (n_unique,) int64
    inverse: np.ndarray  # (n,) int64
    counts: np.ndarray  # (n_unique,) int64

    @property
    def n_unique(self) -> int:
        return int(self.first_index.size)


def _row_hashes(words: np.ndarray) -> np.ndarray:
    """FNV-1a over the 32-bit words of each row, then a final avalanche (splitmix64)."""
    h = np.full(words.shape[0], _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h ^= words[:, j]
            h *= _FNV_PRIME
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x7FB5D329728EA185)
        h ^= h >> np.uint64(27)
    return h


def _grid_keys(X: np.ndarray, tolerance: float) -> np.ndarray:
    """Rows as the 32-bit words that identify them: exact bits, or the cell of a grid of side
    ``tolerance`` (near-duplicates closer than the grid spacing mostly share a cell)."""
    if tolerance > 0:
        cells = np.floor(X / np.float32(tolerance)).astype(np.int64)
        return (cells & 0xFFFFFFFF).astype(np.uint32)  # wraparound only merges cells 2^32 apart
    # Adding +0.0 turns -0.0 into +0.0: the same point, but different bits.
    return (np.asarray(X, dtype=np.float32) + np.float32(0.0)).view(np.uint32)


def _hash_rows(X: np.ndarray, tolerance: float, chunk: int = 32768) -> np.ndarray:
    """One 64-bit hash per row, in row chunks that stay in cache (a column pass over the whole
    array would read every cache line once per column)."""
    hashes = np.empty(X.shape[0], dtype=np.uint64)
    for s in range(0, X.shape[0], chunk):
        hashes[s : s + chunk] = _row_hashes(_grid_keys(X[s : s + chunk], tolerance).astype(np.uint64))
    return hashes


def _same_rows(X: np.ndarray, tolerance: float, rep: np.ndarray, chunk: int = 32768) -> bool:
    """Whether every row has the same key as the representative row ``rep[i]`` of its group."""
    for s in range(0, X.shape[0], chunk):
        if not np.array_equal(_grid_keys(X[s : s + chunk], tolerance), _grid_keys(X[rep[s : s + chunk]], tolerance)):
            return False
    return True


def _group_sorted(hashes: np.ndarray):
    """Like ``np.unique(hashes, return_index, return_inverse, return_counts)``, groups numbered
    by first occurrence, with one (unstable, faster) sort."""
    n = hashes.size
    order = np.argsort(hashes)
    sorted_h = hashes[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(sorted_h[1:], sorted_h[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    first = np.minimum.reduceat(order, starts)
    counts = np.diff(np.append(starts, n))
    group_of_sorted = np.cumsum(new_group) - 1
    by_first = np.argsort(first, kind="stable")
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(by_first.size)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = rank[group_of_sorted]
    return first[by_first].astype(np.int64), inverse, counts[by_first].astype(np.int64)


def unique_rows(X: np.ndarray, tolerance: float = 0.0) -> UniqueRows:
    """Group identical rows of ``X`` (or rows in the same grid cell of side ``tolerance``)."""
    X = np.asarray(X)
    first, inverse, counts = _group_sorted(_hash_rows(X, tolerance))
    if not _same_rows(X, tolerance, first[inverse]):  # a hash collision: astronomically rare
        keys = _grid_keys(X, tolerance)
        _, first, inverse, counts = np.unique(keys, axis=0, return_index=True, return_inverse=True, return_counts=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first, inverse, counts = first[order], rank[inverse.reshape(-1)], counts[order]
    return UniqueRows(first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64))


class RowLookup:
    """Finds rows of new arrays among the rows of ``reference`` (bit-identical, -0.0 = +0.0) by
    their 64-bit hashes: O(n log m), no distance computed. ``find(X)`` gives each row of ``X``
    the index of an equal reference row, or -1."""

    def __init__(self, reference: np.ndarray):
        self.reference = reference
        hashes = _hash_rows(reference, 0.0)
        self.order = np.argsort(hashes, kind="stable")
        self.sorted_hashes = hashes[self.order]

    def find(self, X: np.ndarray, chunk: int = 32768) -> np.ndarray:
        out = np.full(X.shape[0], -1, dtype=np.int64)
        if X.shape[1] != self.reference.shape[1] or not self.order.size:
            return out
        hashes = _hash_rows(X, 0.0)
        pos = np.minimum(np.searchsorted(self.sorted_hashes, hashes), self.order.size - 1)
        hit = np.flatnonzero(self.sorted_hashes[pos] == hashes)
        for s in range(0, hit.size, chunk):  # confirm: equal hashes of different rows are possible
            rows = hit[s : s + chunk]
            cand = self.order[pos[rows]]
            same = (_grid_keys(X[rows], 0.0) == _grid_keys(self.reference[cand], 0.0)).all(1)
            out[rows[same]] = cand[same]
        return out
