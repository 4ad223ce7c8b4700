"""The reconstruction term p(x | z) of the GridVAE and the VQ-VAE (``model.likelihood``).

The decoder emits one value per pixel and channel, its "logits" l; the reconstructed image (the
mean every MSE, figure and sample uses) is sigmoid(l) in [0, 1] for every likelihood, so only the
training loss changes with it. ``nll`` is the negative log-likelihood in nats summed over the
pixels (and the batch), the scale the models report as ``{split}/rec``:

- ``bernoulli``: each pixel value a Bernoulli probability, BCE with logits (MNIST's, as in the
  paper; right for binarised or nearly binary grey images).
- ``gaussian``: N(x; sigmoid(l), sigma_c^2) with one learned scale per channel, i.e. a weighted
  MSE whose weight 1/sigma^2 the model learns (a calibrated decoder, Rybkin et al. 2021): the
  reconstruction and the KL or VQ terms balance themselves. A density on continuous values, so
  its NLL can be negative.
- ``logistic``: the discretised logistic of PixelCNN++ (one component, 256 bins of [0, 1],
  location sigmoid(l), one learned scale per channel): a probability of the 8-bit values, in
  nats per image (divide by C*H*W*ln 2 for bits per dimension).

The three NLLs model the pixels differently, so compare ``rec`` only between models of the same
likelihood; the MSE compares across them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geovq.errors import ParameterError

LIKELIHOODS = ("bernoulli", "gaussian", "logistic")
# The learned scales start at sigma = 0.1 of the [0, 1] range: the order of a first
# reconstruction's error, so neither the reconstruction nor the KL term swamps the other at the start.
INITIAL_LOG_SCALE = math.log(0.1)
# Half a bin of 8-bit pixel values in [0, 1] (the discretised logistic's bins).
HALF_BIN = 0.5 / 255.0
LOG_2PI = math.log(2 * math.pi)


class PixelLikelihood(nn.Module):
    """p(x | logits) for images in [0, 1]; ``bernoulli`` has no parameters (a model's weights are
    those it had before this module existed), ``gaussian`` and ``logistic`` one log-scale per channel."""

    def __init__(self, kind: str = "bernoulli", channels: int = 1):
        super().__init__()
        if kind not in LIKELIHOODS:
            raise ParameterError("likelihood", f"likelihood must be one of {', '.join(LIKELIHOODS)}, got '{kind}'.")
        self.kind = kind
        if kind != "bernoulli":
            self.log_scale = nn.Parameter(torch.full((channels,), INITIAL_LOG_SCALE))

    def mean(self, logits: Tensor) -> Tensor:
        """The reconstructed image in [0, 1]."""
        return torch.sigmoid(logits)

    def nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """Negative log-likelihood of ``x`` (B x C x H x W in [0, 1]) in nats, summed over everything."""
        if self.kind == "bernoulli":
            return F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        log_scale = self.log_scale.view(1, -1, 1, 1).to(logits.dtype)
        if self.kind == "gaussian":
            z = (x - torch.sigmoid(logits)) * torch.exp(-log_scale)
            return (0.5 * z.square() + log_scale + 0.5 * LOG_2PI).sum()
        return discretized_logistic_nll(torch.sigmoid(logits), log_scale, x).sum()

    def extra_repr(self) -> str:
        return self.kind


def discretized_logistic_nll(location: Tensor, log_scale: Tensor, x: Tensor) -> Tensor:
    """-log P(x) per element of the logistic of ``location`` and ``exp(log_scale)`` integrated over
    x's 8-bit bin (width 1/255); the end bins take the tails, as in PixelCNN++."""
    inv_scale = torch.exp(-log_scale)
    centered = x - location
    upper = inv_scale * (centered + HALF_BIN)
    lower = inv_scale * (centered - HALF_BIN)
    cdf_delta = torch.sigmoid(upper) - torch.sigmoid(lower)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid(upper), for x at 0
    log_one_minus_cdf_lower = -F.softplus(lower)  # log (1 - sigmoid(lower)), for x at 1
    # Where the bin's probability is too small to subtract accurately: the density times the bin width.
    mid = inv_scale * centered
    log_pdf_mid = mid - log_scale - 2.0 * F.softplus(mid) + math.log(2 * HALF_BIN)
    inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
    log_prob = torch.where(x < HALF_BIN, log_cdf_upper, torch.where(x > 1.0 - HALF_BIN, log_one_minus_cdf_lower, inner))
    return -log_prob
