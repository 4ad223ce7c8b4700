"""GridVAE: shapes, the negative ELBO, and learning on a fixed batch."""

from __future__ import annotations

import pytest
import torch

from geovq.errors import ParameterError
from geovq.models.grid_vae import GridVAE


def test_encode_decode_shapes():
    model = GridVAE(latent_dim=12, hidden_channels=16, n_res_blocks=1)
    x = torch.rand(5, 1, 28, 28)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 12, 7, 7)
    assert model.decode(mu).shape == (5, 1, 28, 28)
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and 0 <= recon.min() and recon.max() <= 1


def test_kl_is_zero_at_the_prior_and_loss_is_per_image():
    model = GridVAE(latent_dim=4, hidden_channels=8, n_res_blocks=0)
    torch.nn.init.zeros_(model.encoder.net[-1].weight)
    torch.nn.init.zeros_(model.encoder.net[-1].bias)
    model.eval()
    x = torch.rand(3, 1, 28, 28)
    terms = model.loss_terms(x)
    assert float(terms["kl"]) == pytest.approx(0.0, abs=1e-6)
    # Doubling the batch with the same images leaves a per-image loss unchanged.
    assert float(model.loss_terms(torch.cat([x, x]))["loss"]) == pytest.approx(float(terms["loss"]), rel=1e-5)


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_loss_falls_on_a_fixed_batch(data_root):
    from geovq.data.images import load_split

    torch.manual_seed(0)
    images = load_split("torchvision.datasets.MNIST", data_root, train=True, download=False)[0][:64]
    model = GridVAE(latent_dim=8, hidden_channels=16, n_res_blocks=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model.loss_terms(images)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("kwargs", [{"latent_dim": 0}, {"hidden_channels": 0}, {"beta": -1.0}])
def test_invalid_sizes_are_refused(kwargs):
    with pytest.raises(ParameterError) as raised:
        GridVAE(**kwargs)
    assert raised.value.parameter == next(iter(kwargs))
