"""GridVAE: a continuous VAE whose posterior is a grid of diagonal Gaussians (7x7 on MNIST:
image_size / downsample cells a side).

Loss = negative ELBO per image: the reconstruction NLL summed over pixels (``likelihood``:
Bernoulli, BCE with logits, by default; geovq/models/likelihood.py) + beta * KL(q(z|x) || N(0, I))
summed over the grid, averaged over the batch.
Reconstruction MSE is measured per pixel on [0, 1] images, decoding the posterior mean.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanSquaredError

from geovq.errors import ParameterError, caller_names
from geovq.models.base import GeovqModule
from geovq.models.likelihood import PixelLikelihood
from geovq.nn.conv import ConvDecoder, ConvEncoder


class GridVAE(GeovqModule):
    def __init__(
        self,
        latent_dim: int = 64,
        hidden_channels: int = 64,
        n_res_blocks: int = 2,
        in_channels: int = 1,
        beta: float = 1.0,
        optimizer: Any = None,
        scheduler: Any = None,
        downsample: int = 4,
        likelihood: str = "bernoulli",
    ):
        super().__init__(optimizer, scheduler)
        if beta < 0:
            raise ParameterError("beta", f"beta must be >= 0, got {beta}.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        with caller_names(out_channels="latent_dim", in_channels="latent_dim"):  # the blocks' latent side
            self.encoder = ConvEncoder(in_channels, hidden_channels, 2 * latent_dim, n_res_blocks, downsample)
            self.decoder = ConvDecoder(latent_dim, hidden_channels, in_channels, n_res_blocks, downsample)
        self.pixel_likelihood = PixelLikelihood(likelihood, in_channels)  # no weights for bernoulli
        self.mse = torch.nn.ModuleDict({s: MeanSquaredError() for s in ("val", "test")})

    # -- the model --------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance, each B x D x G x G (G = image side / downsample)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits B x C x S x S for latents B x D x G x G."""
        return self.decoder(z)

    def decode_codebook(self, codebook: Tensor, grids: Tensor) -> Tensor:
        """Pixel logits of code grids N x G x G: each cell decoded from the vector its code names
        in ``codebook`` (K x D), pipeline A's decoding."""
        return self.decode(codebook[grids.to(codebook.device)].permute(0, 3, 1, 2))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Images in [0, 1] decoded from the posterior mean."""
        return self.pixel_likelihood.mean(self.decode(self.encode(x)[0]))

    def reconstruction_nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """The reconstruction term summed over the pixels of the batch, in nats."""
        return self.pixel_likelihood.nll(logits, x)

    def loss_terms(self, x: Tensor) -> dict[str, Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        logits = self.decode(z)
        batch = x.shape[0]
        rec = self.reconstruction_nll(logits, x) / batch
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum() / batch
        loss = rec + self.hparams.beta * kl
        return {"loss": loss, "rec": rec, "kl": kl, "logits": logits}

    # -- Lightning ----------------------------------------------------------------------------
    def _step(self, batch, split: str) -> Tensor:
        x = batch[0]
        terms = self.loss_terms(x)
        on_step = split == "train"
        if not on_step:
            # Outside training z is the posterior mean, so these logits are the reconstruction
            # whose MSE the paper compares.
            self.mse[split](self.pixel_likelihood.mean(terms["logits"]).contiguous(), x)
            self.log(f"{split}/mse", self.mse[split], prog_bar=True, on_step=False, on_epoch=True)
        self.log(f"{split}/loss", terms["loss"], prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(x))
        self.log(f"{split}/rec", terms["rec"], on_step=False, on_epoch=True, batch_size=len(x))
        self.log(f"{split}/kl", terms["kl"], on_step=False, on_epoch=True, batch_size=len(x))
        return terms["loss"]
