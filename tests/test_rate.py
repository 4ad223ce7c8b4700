"""The rate figures of geovq.metrics.rate on posteriors whose KL is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from geovq.metrics.rate import ACTIVE_KL, gaussian_kl, kl_per_dimension, rate_summary


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(3, 4, 7, 7), torch.randn(3, 4, 7, 7)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.allclose(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p), atol=1e-5)


def test_known_rate_one_active_dimension():
    # 5 images, D=4, a 7x7 grid. Dimension 0: mean 1, unit variance -> 0.5 nats at every position.
    # Dimension 1: N(0, e^-1) -> 0.5 (e^-1 - 1 + 1) = 0.5 / e nats at every position.
    # Dimension 2: at the prior -> 0. Dimension 3: 0.004 nats, under the activity threshold.
    mu, logvar = torch.zeros(5, 4, 7, 7), torch.zeros(5, 4, 7, 7)
    mu[:, 0] = 1.0
    logvar[:, 1] = -1.0
    mu[:, 3] = math.sqrt(2 * 0.004)
    kl = kl_per_dimension(mu, logvar)
    assert kl.shape == (5, 4)
    expected = torch.tensor([0.5, 0.5 / math.e, 0.0, 0.004])
    assert torch.allclose(kl.mean(0), expected, atol=1e-6)
    rate = rate_summary(kl.mean(0), n_positions=49, n_codes=128)
    assert rate["kl_per_position"] == pytest.approx(0.5 + 0.5 / math.e + 0.004, rel=1e-5)
    assert rate["kl_per_image"] == pytest.approx(49 * rate["kl_per_position"], rel=1e-6)
    assert rate["active_dims"] == 2 and rate["latent_dims"] == 4
    assert rate["ln_codebook_size"] == pytest.approx(math.log(128))
    # A dimension is active above 0.01 nats per position (ACTIVE_KL), not at it.
    near_threshold = torch.tensor([0.0101, ACTIVE_KL, 0.0099, 0.02, 0.0])
    assert rate_summary(near_threshold, n_positions=49)["active_dims"] == 2


def test_kl_per_image_is_the_total_kl_of_the_grid():
    mu, logvar = torch.randn(6, 3, 7, 7), torch.randn(6, 3, 7, 7) * 0.3
    total_per_image = gaussian_kl(mu, logvar).sum(dim=(1, 2, 3)).mean()
    rate = rate_summary(kl_per_dimension(mu, logvar).mean(0), n_positions=49)
    assert rate["kl_per_image"] == pytest.approx(float(total_per_image), rel=1e-5)
    assert "ln_codebook_size" not in rate
