"""GridVAE: a continuous VAE whose posterior is a 7x7 grid of diagonal Gaussians.

Loss = negative ELBO per image: Bernoulli reconstruction (BCE with logits, summed over pixels)
+ beta * KL(q(z|x) || N(0, I)) summed over the grid, averaged over the batch.
Reconstruction MSE is measured per pixel on [0, 1] images, decoding the posterior mean.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanSquaredError

from geovq.errors import ParameterError, caller_names
from geovq.models.base import GeovqModule
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
    ):
        super().__init__(optimizer, scheduler)
        if beta < 0:
            raise ParameterError("beta", f"beta must be >= 0, got {beta}.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        with caller_names(out_channels="latent_dim", in_channels="latent_dim"):  # the blocks' latent side
            self.encoder = ConvEncoder(in_channels, hidden_channels, 2 * latent_dim, n_res_blocks)
            self.decoder = ConvDecoder(latent_dim, hidden_channels, in_channels, n_res_blocks)
        self.mse = torch.nn.ModuleDict({s: MeanSquaredError() for s in ("val", "test")})

    # -- the model --------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance, each B x D x 7 x 7."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits B x C x 28 x 28 for latents B x D x 7 x 7."""
        return self.decoder(z)

    def decode_codebook(self, codebook: Tensor, grids: Tensor) -> Tensor:
        """Pixel logits of code grids N x 7 x 7: each cell decoded from the vector its code names
        in ``codebook`` (K x D), pipeline A's decoding."""
        return self.decode(codebook[grids.to(codebook.device)].permute(0, 3, 1, 2))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Images in [0, 1] decoded from the posterior mean."""
        return torch.sigmoid(self.decode(self.encode(x)[0]))

    def loss_terms(self, x: Tensor) -> dict[str, Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        logits = self.decode(z)
        batch = x.shape[0]
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / batch
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
            self.mse[split](torch.sigmoid(terms["logits"]), x)
            self.log(f"{split}/mse", self.mse[split], prog_bar=True, on_step=False, on_epoch=True)
        self.log(f"{split}/loss", terms["loss"], prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(x))
        self.log(f"{split}/rec", terms["rec"], on_step=False, on_epoch=True, batch_size=len(x))
        self.log(f"{split}/kl", terms["kl"], on_step=False, on_epoch=True, batch_size=len(x))
        return terms["loss"]
