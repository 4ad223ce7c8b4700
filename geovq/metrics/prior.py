"""Figures for an autoregressive prior over code grids, and the baseline it must beat.

A prior's per-token NLL (nats) is reported three ways: the NLL itself, its perplexity exp(NLL)
and bits per image (NLL x cells per image / ln 2). Perplexity alone flatters a collapsed codebook:
with 15 codes in use, even a model that ignores context scores at most 15. ``unigram_entropy`` is
that context-free baseline, the NLL of predicting every cell from the training codes' marginal
distribution; what a prior learns is the gap between the two.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from geovq.batching import INFERENCE_BATCH
from geovq.errors import ConfigError
from geovq.metrics.codebook import code_counts


def nll_summary(nll: float, tokens_per_image: int) -> dict[str, float]:
    """``{"nll", "perplexity", "bits_per_image"}`` for a mean per-token NLL in nats."""
    nll = float(nll)
    return {
        "nll": nll,
        "perplexity": math.exp(nll),
        "bits_per_image": nll * tokens_per_image / math.log(2),
    }


def unigram_entropy(train_codes, n_codes: int) -> float:
    """Entropy (nats) of the codes' marginal distribution: the NLL of a context-free model.

    ``train_codes``: codes of any shape (e.g. N x 7 x 7), integers in [0, n_codes).
    """
    counts = code_counts(train_codes, n_codes).astype(np.float64)
    total = counts.sum()
    if total == 0:
        raise ConfigError("unigram_entropy needs at least one code; the training split is empty.")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


@torch.no_grad()
def prior_nll(prior, codes: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> float:
    """Mean per-token NLL (nats) of ``codes`` under ``prior`` (a TransformerPrior), over every
    token of the split, in batches."""
    total = 0.0
    for start in range(0, len(codes), batch_size):
        total += float(prior.token_nll(codes[start : start + batch_size]).sum())
    return total / codes.numel()
