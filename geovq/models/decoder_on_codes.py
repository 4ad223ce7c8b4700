"""DecoderOnCodes: a GridVAE whose decoder learns to decode the codebook vectors of fixed code
grids (stage=finetune, pipeline A with a fine-tuned decoder).

The GridVAE was trained to decode its continuous posterior means; after quantization it decodes
codebook vectors instead. Only the decoder trains, with the GridVAE's reconstruction loss (its
likelihood's NLL summed per image: BCE on MNIST); the encoder takes no gradient (so the optimizer leaves it alone) and the
codebook is a buffer. Saved as what it trains: the GridVAE.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanSquaredError

from geovq.models.base import GeovqModule


class DecoderOnCodes(GeovqModule):
    def __init__(self, vae, codebook: Tensor, optimizer=None, scheduler=None):
        super().__init__(optimizer, scheduler)
        self.vae = vae.train()  # a loaded model comes in eval mode; it has no dropout or norm layers either way
        self.vae.encoder.requires_grad_(False)
        self.register_buffer("codebook", torch.as_tensor(codebook, dtype=torch.float32))
        self.mse = torch.nn.ModuleDict({s: MeanSquaredError() for s in ("val", "test")})

    def saved_model(self):
        return self.vae

    def decode_codes(self, grids: Tensor) -> Tensor:
        """Pixel logits of code grids N x H x W."""
        return self.vae.decode_codebook(self.codebook, grids)

    def _step(self, batch, split: str) -> Tensor:
        images, grids = batch
        logits = self.decode_codes(grids)
        # The GridVAE's reconstruction term: its NLL summed over pixels, averaged over images.
        loss = self.vae.reconstruction_nll(logits, images) / len(images)
        if split != "train":
            self.mse[split](self.vae.pixel_likelihood.mean(logits).contiguous(), images)
            self.log(f"{split}/mse", self.mse[split], prog_bar=True, on_step=False, on_epoch=True)
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=split == "train", on_epoch=True, batch_size=len(images))
        return loss
