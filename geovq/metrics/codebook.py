"""Codebook usage metrics shared by every quantizer (geodesic, k-means, VQ layer)."""

from __future__ import annotations

import numpy as np
import torch


def code_counts(codes, n_codes: int) -> np.ndarray:
    """How often each of ``n_codes`` codes occurs in ``codes`` (any shape, ints)."""
    flat = torch.as_tensor(codes).reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n_codes):
        raise ValueError(f"codes must lie in [0, {n_codes}), got [{int(flat.min())}, {int(flat.max())}].")
    return torch.bincount(flat, minlength=n_codes).numpy()


def utilization(counts) -> float:
    """Fraction of codes used at least once."""
    counts = np.asarray(counts)
    return float((counts > 0).sum() / len(counts))


def perplexity(counts) -> float:
    """exp(entropy) of the code-usage distribution, in [1, n_codes] (n_codes = all used equally)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def usage_summary(counts) -> dict:
    """The scalar usage figures logged for every codebook."""
    counts = np.asarray(counts)
    return {
        "n_codes": int(len(counts)),
        "codes_used": int((counts > 0).sum()),
        "utilization": utilization(counts),
        "perplexity": perplexity(counts),
    }
