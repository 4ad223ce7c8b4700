"""VQVAE: the end-to-end baseline (paper, section 3.2): conv encoder -> vector quantizer -> conv decoder.

Same encoder/decoder family and latent grid as the GridVAE (7x7 on MNIST: image_size / downsample
cells a side), so that the comparison is about quantization alone.

Loss scale, ``loss_reduction="per_image"`` (the default; per image, averaged over the batch)::

    loss = rec + vq_loss
    rec     = BCE(logits, x) summed over the pixels of an image                (as in the GridVAE)
              (the NLL of ``likelihood``, geovq/models/likelihood.py; Bernoulli: BCE)
    vq_loss = sum over the grid cells (7x7 on MNIST) and D dims of
              ||sg[z_e] - e||^2 + commitment_cost * ||z_e - sg[e]||^2

i.e. the van den Oord et al. objective for one data point, both terms summed over their own
elements. The quantizer returns its losses as means over latent elements; they are multiplied by
H*W*D here. Why: the paper's code summed the reconstruction over the whole batch but averaged the
VQ loss over all latent elements, which weighted the VQ terms B*H*W*D times (about 4e5 for
batches of 128 and D=64) less than a per-image objective does. Adam rescales the codebook's own
gradients, so the codebook still learned; but the encoder receives both the reconstruction and
the commitment gradients, and the commitment part was drowned, so ``commitment_cost`` had next to
no effect (consistent with the appendix: raising it from 0.25 to 2.5 barely changed utilization).
With both terms per image, the VQ term starts at the same order as the reconstruction term and
the commitment gradient on the encoder is comparable to the reconstruction gradient, so
``commitment_cost`` keeps a real effect. ``rec`` is also directly comparable with the GridVAE's.

``loss_reduction="paper"`` reproduces the paper's reduction exactly, to show its collapse under
its own objective::

    objective = BCE(logits, x) summed over the whole batch (not divided by B)
              + codebook_loss + commitment_cost * commitment_loss   (the quantizer's means, unscaled)

Training minimises ``objective``; the logs keep the per-image scale of the default, so that the
two reductions compare: ``{split}/rec`` and ``{split}/vq_loss`` (and its two terms) are per image
in both, and ``{split}/loss`` is the optimised objective per image (``objective / B``; in the
default that is ``rec + vq_loss``, as before).

The quantizer is swappable (``quantizer.kind``, ``geovq.nn.quantizers``): ``vq``, the hand-written
layer above (the default), or a layer of vector-quantize-pytorch (``fsq``, ``library_vq`` with the
rotation trick, ``simvq``); what the model needs from any of them is
``geovq.nn.quantizer_layer.QuantizerLayer``. Whatever the kind, the model gives code grids
B x G x G in [0, n_codes), ``lookup``/``decode_codes`` for grids sampled by a prior, and per-epoch
usage.
``init_from_grid_vae`` starts the encoder, decoder and codebook from a GridVAE and its a
posteriori codebook (stage=vqvae ``stage.init_codes``).

Reported alongside: per-pixel MSE of the [0, 1] reconstructions (through the VQ layer) over the
full validation/test split, and codebook usage over each epoch: ``{split}/utilization``
(fraction of codes used), ``{split}/code_perplexity`` (exp of the usage entropy) and
``{split}/dead_codes`` (codes never chosen during the epoch). The model counts the codes of every
batch, per process, and sums the counts over the processes once, at the end of the epoch; the
epoch's per-code counts are kept in ``epoch_code_counts[split]`` for callbacks (e.g. a usage
histogram).

Mixed precision and data parallelism are the quantizer's business: it works in float32 under
autocast and keeps the codebook identical on every rank (``geovq.nn.vq``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchmetrics import MeanSquaredError

from geovq.data import SPLITS
from geovq.errors import ConfigError, ParameterError, caller_names
from geovq.metrics.codebook import usage_summary
from geovq.models.base import GeovqModule
from geovq.models.likelihood import PixelLikelihood
from geovq.nn.conv import ConvDecoder, ConvEncoder
from geovq.nn.quantizer_layer import FreeCodebook, QuantizerLayer
from geovq.nn.quantizers import build_quantizer

LOSS_REDUCTIONS = ("per_image", "paper")
# What must agree between a GridVAE and a VQ-VAE that starts from it.
SHARED_ARCHITECTURE = ("latent_dim", "hidden_channels", "n_res_blocks", "in_channels", "downsample", "likelihood")
# The settings a person changes through the data (model.in_channels and model.likelihood follow data=).
DATA_KEYS = {"in_channels": "data.channels", "likelihood": "data.likelihood"}


class VQVAE(GeovqModule):
    quantizer: QuantizerLayer

    def __init__(
        self,
        latent_dim: int = 64,
        hidden_channels: int = 64,
        n_res_blocks: int = 2,
        in_channels: int = 1,
        quantizer: dict | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        loss_reduction: str = "per_image",
        downsample: int = 4,
        likelihood: str = "bernoulli",
    ):
        """``quantizer``: ``kind`` (``vq`` when absent) and that quantizer's keyword arguments
        (for ``vq``: ``n_codes``, ``commitment_cost``, ``ema``, ``kmeans_init``, ...) as one block,
        so that every option of the layer is one config key (``model.quantizer.<option>``); its
        ``code_dim`` is ``latent_dim``. ``loss_reduction``: ``per_image`` or ``paper`` (above)."""
        super().__init__(optimizer, scheduler)
        # Plain values (Hydra passes configs), so that checkpoints load with weights_only=True.
        quantizer = OmegaConf.to_container(quantizer) if isinstance(quantizer, DictConfig) else dict(quantizer or {})
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ParameterError("loss_reduction",
                                 f"loss_reduction must be one of {', '.join(LOSS_REDUCTIONS)}, got '{loss_reduction}'.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        # Built in this order, so that a seed gives the same initial weights as before. The conv
        # blocks' latent side is latent_dim (checked by the encoder before the quantizer sees it).
        with caller_names(out_channels="latent_dim", in_channels="latent_dim"):
            self.encoder = ConvEncoder(in_channels, hidden_channels, latent_dim, n_res_blocks, downsample)
            with caller_names(prefix="quantizer."):
                if quantizer.get("kind", "vq") == "vq":
                    quantizer.setdefault("n_codes", 128)
                self.quantizer = build_quantizer(latent_dim, **quantizer)
            self.decoder = ConvDecoder(latent_dim, hidden_channels, in_channels, n_res_blocks, downsample)
        self.pixel_likelihood = PixelLikelihood(likelihood, in_channels)  # no weights for bernoulli
        self.mse = torch.nn.ModuleDict({s: MeanSquaredError() for s in ("val", "test")})
        # Per-code counts of the current (or last finished) epoch of each split, on the model's
        # device while accumulating; read them through ``epoch_code_counts``.
        self._code_counts: dict[str, Tensor] = {s: torch.zeros(self.n_codes, dtype=torch.int64) for s in SPLITS}
        self._pending_restarts: list[Tensor] = []

    # -- the model --------------------------------------------------------------------------
    @property
    def n_codes(self) -> int:
        """K, the codebook size."""
        return self.quantizer.n_codes

    @property
    def codebook(self) -> Tensor:
        """The K x D codebook (detached)."""
        return self.quantizer.codebook

    def encode(self, x: Tensor) -> Tensor:
        """Encoder outputs z_e, B x D x G x G (before quantization; G = image side / downsample)."""
        return self.encoder(x)

    def quantize(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """(z_q B x D x G x G, codes B x G x G int64): nearest codes, no gradient trick, no side effects."""
        codes = self.quantizer.nearest(z_e)
        return self.quantizer.lookup(codes), codes

    def codes(self, x: Tensor) -> Tensor:
        """The code grid of each image, B x G x G int64 in [0, n_codes)."""
        return self.quantizer.nearest(self.encode(x))

    def decode(self, z: Tensor) -> Tensor:
        """Pixel logits B x C x S x S for latents B x D x G x G."""
        return self.decoder(z)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Pixel logits B x C x S x S for code grids B x G x G (e.g. sampled by the prior)."""
        return self.decode(self.quantizer.lookup(codes))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Images in [0, 1] decoded from the quantized encoder outputs."""
        return self.pixel_likelihood.mean(self.decode(self.quantize(self.encode(x))[0]))

    @torch.no_grad()
    def init_from_grid_vae(self, vae, codebook: Tensor, source: str = "the GridVAE") -> None:
        """Start from a GridVAE and its K x D a posteriori codebook: its decoder, its encoder's
        posterior-mean half (the GridVAE's last layer emits mu then logvar), the codebook as codes.

        Then ``codes(x)`` is the nearest codebook vector of the GridVAE's mu, and the quantized
        reconstruction is the GridVAE's a posteriori one with nearest-code assignment.
        Mismatched settings raise a ConfigError naming the model key to set; ``source`` names
        where the GridVAE comes from in that message.
        """
        for key in SHARED_ARCHITECTURE:
            mine, theirs = self.hparams[key], vae.hparams[key]
            if mine != theirs:
                name = DATA_KEYS.get(key, f"model.{key}")
                raise ConfigError(
                    f"{name}={mine}, but {source} has {key}={theirs}: the VQ-VAE "
                    f"starts from its weights, so the two must agree. Set {name}={theirs}."
                )
        if not isinstance(self.quantizer, FreeCodebook):
            raise ConfigError(
                f"model.quantizer.kind={(self.hparams.quantizer or {}).get('kind', 'vq')} has no codebook of free vectors to start "
                "from an a posteriori codebook; use the hand-written layer (model=vqvae_hybrid, kind vq)."
            )
        if codebook.shape[0] != self.n_codes:
            raise ConfigError(
                f"model.quantizer.n_codes={self.n_codes}, but the a posteriori codebook of {source} has "
                f"{codebook.shape[0]} codes. Set model.quantizer.n_codes={codebook.shape[0]}."
            )
        encoder = vae.encoder.state_dict()
        last = f"net.{len(self.encoder.net) - 1}."  # the 1x1 conv that emits [mu, logvar]
        latent_dim = self.hparams.latent_dim
        encoder = {k: v[:latent_dim] if k.startswith(last) else v for k, v in encoder.items()}
        self.encoder.load_state_dict(encoder)
        self.decoder.load_state_dict(vae.decoder.state_dict())
        self.pixel_likelihood.load_state_dict(vae.pixel_likelihood.state_dict())
        self.quantizer.set_codebook(codebook.to(self.quantizer.codebook))

    def loss_terms(self, x: Tensor) -> dict[str, Tensor]:
        z_e = self.encode(x)
        vq = self.quantizer(z_e)
        logits = self.decode(vq.quantized)
        batch = x.shape[0]
        per_image = z_e[0].numel()  # H * W * D: the quantizer's means -> sums per image
        rec_sum = self.pixel_likelihood.nll(logits, x)
        rec = rec_sum / batch
        vq_loss = vq.loss * per_image
        if self.hparams.loss_reduction == "paper":
            objective = rec_sum + vq.loss
            loss = objective / batch
        else:
            objective = loss = rec + vq_loss
        return {
            "objective": objective,
            "loss": loss,
            "rec": rec,
            "vq_loss": vq_loss,
            "codebook_loss": vq.codebook_loss * per_image,
            "commitment_loss": vq.commitment_loss * per_image,
            "logits": logits,
            "codes": vq.codes,
            "counts": vq.counts,
            "restarted": vq.restarted,
        }

    # -- code usage over an epoch -----------------------------------------------------------------
    @property
    def epoch_code_counts(self) -> dict[str, np.ndarray]:
        """Per-code counts (int64 arrays of length n_codes) of each split's current epoch.

        Complete once the epoch's last batch has run, i.e. from ``on_{split}_epoch_end`` (callbacks
        included) until the next epoch of that split starts. Per process under data parallelism.
        """
        return {s: c.detach().cpu().numpy().copy() for s, c in self._code_counts.items()}

    def _reset_counts(self, split: str) -> None:
        self._code_counts[split] = torch.zeros(self.n_codes, dtype=torch.int64, device=self.device)

    def _log_usage(self, split: str) -> None:
        counts = self._code_counts[split]
        if self.trainer is not None and self.trainer.world_size > 1:
            counts = self.all_gather(counts).reshape(-1, counts.shape[0]).sum(0)
        summary = usage_summary(counts.cpu().numpy())
        n_codes = summary["n_codes"]
        self.log(f"{split}/utilization", summary["utilization"], on_step=False, on_epoch=True, sync_dist=False)
        self.log(f"{split}/code_perplexity", summary["perplexity"], on_step=False, on_epoch=True, sync_dist=False)
        self.log(f"{split}/dead_codes", float(n_codes - summary["codes_used"]), on_step=False, on_epoch=True,
                 sync_dist=False)

    # -- Lightning ----------------------------------------------------------------------------
    def _step(self, batch, split: str) -> Tensor:
        x = batch[0]
        terms = self.loss_terms(x)
        counts = terms["counts"]
        self._code_counts[split] = self._code_counts[split].to(counts.device) + counts
        on_step = split == "train"
        if not on_step:
            # Outside training the quantizer has no side effects; these logits are the
            # reconstruction (through the VQ layer) whose MSE the paper compares.
            self.mse[split](self.pixel_likelihood.mean(terms["logits"]).contiguous(), x)
            self.log(f"{split}/mse", self.mse[split], prog_bar=True, on_step=False, on_epoch=True)
        log = dict(on_step=False, on_epoch=True, batch_size=len(x))
        self.log(f"{split}/loss", terms["loss"], prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(x))
        self.log(f"{split}/rec", terms["rec"], **log)
        self.log(f"{split}/vq_loss", terms["vq_loss"], **log)
        self.log(f"{split}/commitment_loss", terms["commitment_loss"], **log)
        if self.quantizer.has_codebook_loss:
            self.log(f"{split}/codebook_loss", terms["codebook_loss"], **log)
        if split == "train" and terms["restarted"].numel():
            self._pending_restarts.append(terms["restarted"])
        return terms["objective"]

    def on_before_optimizer_step(self, optimizer) -> None:
        # Codes re-seeded during this step's forward(s) (several with gradient accumulation) start
        # with fresh Adam moments: the step below must not push a new vector with the moments of
        # the dead one it replaced. Under data parallelism the quantizer chooses restarts on rank 0
        # and broadcasts them, so every rank resets the same rows and the replicas stay identical.
        if self._pending_restarts:
            rows = torch.unique(torch.cat(self._pending_restarts))
            self._pending_restarts = []
            if isinstance(self.quantizer, FreeCodebook):  # the only kind that restarts codes
                self.quantizer.reset_optimizer_rows(optimizer, rows)
            self.log("train/restarted_codes", float(rows.numel()), on_step=False, on_epoch=True, reduce_fx="sum")

    def on_train_epoch_start(self) -> None:
        self._reset_counts("train")

    def on_validation_epoch_start(self) -> None:
        self._reset_counts("val")

    def on_test_epoch_start(self) -> None:
        self._reset_counts("test")

    def on_train_epoch_end(self) -> None:
        self._log_usage("train")

    def on_validation_epoch_end(self) -> None:
        self._log_usage("val")

    def on_test_epoch_end(self) -> None:
        self._log_usage("test")
