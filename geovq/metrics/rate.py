"""The rate of a Gaussian VAE: how many nats its latents carry, against what a codebook can hold.

The a posteriori codebook replaces each grid position's vector by one of K codes, at most ln K
nats; a VAE whose KL per position is far below ln K leaves the codebook room it cannot use, one
whose KL is above it loses information to quantization. Plain torch, no model: the caller
passes the posterior's means and log-variances.
"""

from __future__ import annotations

import math

from torch import Tensor

# A latent dimension is active when its mean KL over the data exceeds this many nats (the usual
# definition, as in the "active units" of Burda et al.); below it the posterior is the prior.
ACTIVE_KL = 0.01


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of every element, in nats (same shape as ``mu``)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_per_dimension(mu: Tensor, logvar: Tensor) -> Tensor:
    """Per image and latent dimension, the KL averaged over the grid positions: N x D for
    posteriors N x D x H x W (what one image's dimension costs at one position)."""
    return gaussian_kl(mu, logvar).flatten(2).mean(dim=2)


def rate_summary(mean_kl: Tensor, n_positions: int, n_codes: int | None = None) -> dict:
    """The rate figures from ``mean_kl`` (D: each dimension's KL per position, averaged over the
    data, i.e. ``kl_per_dimension(...).mean(0)``):

    - ``kl_per_position``: nats per grid position, the sum of ``mean_kl`` (= the total KL per
      image / ``n_positions``), to read against ``ln_codebook_size``;
    - ``kl_per_image``: the total KL of an image, the KL term of the ELBO;
    - ``active_dims``: dimensions whose mean KL exceeds :data:`ACTIVE_KL`, out of ``latent_dims``;
    - ``ln_codebook_size``: ln K, the most one code of a K-code codebook carries (when given).
    """
    per_position = float(mean_kl.sum())
    summary = {
        "kl_per_position": per_position,
        "kl_per_image": per_position * n_positions,
        "active_dims": int((mean_kl > ACTIVE_KL).sum()),
        "latent_dims": int(mean_kl.numel()),
    }
    if n_codes is not None:
        summary["ln_codebook_size"] = math.log(n_codes)
    return summary
