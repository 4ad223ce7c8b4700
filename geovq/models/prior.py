"""TransformerPrior: the autoregressive prior p(z_i | z_<i) over code grids (paper, section 3.1 step 3).

The same module serves both pipelines: it sees only code grids, flattened in raster order to
grid_size**2 tokens per image, with codes in [0, n_codes).

Loss: cross-entropy per token in nats, averaged over the tokens of the batch. Reported per split
over the FULL split (token-weighted, accumulated over the epoch, not a mean of batch means):

    {split}/nll             mean per-token negative log-likelihood, nats
    {split}/perplexity      exp(nll)
    {split}/bits_per_image  nll * grid_size**2 / ln 2

``{split}/loss`` is the batch loss averaged over the epoch (the checkpoint monitors val/loss);
every image has the same number of tokens, so on val/test it equals ``{split}/nll``. Train figures
are measured with dropout on, while the weights move, as usual for a training loss.

Compare the NLL with ``geovq.metrics.prior.unigram_entropy`` of the training codes: perplexity
alone rewards a collapsed codebook.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from geovq.data import SPLITS
from geovq.errors import ConfigError, ParameterError, caller_names
from geovq.metrics.prior import nll_summary, unigram_entropy  # noqa: F401  (unigram_entropy re-exported)
from geovq.models.base import GeovqModule
from geovq.nn.transformer import GPT


class TransformerPrior(GeovqModule):
    scheduler_monitor = "val/nll"  # what early stopping watches too (stage=prior)

    def __init__(
        self,
        n_codes: int = 128,
        grid_size: int | None = 7,
        n_layer: int = 3,
        n_head: int = 4,
        d_model: int = 128,
        dropout: float = 0.0,
        optimizer: Any = None,
        scheduler: Any = None,
    ):
        super().__init__(optimizer, scheduler)
        if grid_size is None:
            raise ParameterError("grid_size", "grid_size (the side of the code grids) must be given; stage=prior "
                                              "reads it from the code grids when model.grid_size=null.")
        if grid_size < 1:
            raise ParameterError("grid_size", f"grid_size must be >= 1, got {grid_size}.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        with caller_names(vocab_size="n_codes", seq_len="grid_size"):
            self.gpt = GPT(n_codes, grid_size * grid_size, n_layer, n_head, d_model, dropout)
        # nan_strategy="disable": a NaN loss must show in the NLL, not be dropped from the mean.
        # (keys carry a suffix: a ModuleDict key may not shadow Module.train)
        self.nll = torch.nn.ModuleDict({f"{s}_nll": MeanMetric(nan_strategy="disable") for s in SPLITS})

    # -- the model --------------------------------------------------------------------------
    @property
    def tokens_per_image(self) -> int:
        return self.hparams.grid_size**2

    def _tokens(self, codes: Tensor) -> Tensor:
        """B x G x G grids or B x G*G sequences -> B x G*G tokens (raster order)."""
        tokens = codes.reshape(codes.shape[0], -1)
        if tokens.shape[1] != self.tokens_per_image:
            g = self.hparams.grid_size
            raise ConfigError(
                f"code grids have {tokens.shape[1]} cells per image but the prior expects "
                f"model.grid_size={g} ({g}x{g} = {self.tokens_per_image} cells). Set model.grid_size "
                "to the side of the code grids."
            )
        return tokens

    def forward(self, codes: Tensor) -> Tensor:
        """Logits B x G*G x K; ``logits[:, i]`` predicts cell i (raster order) from cells < i."""
        return self.gpt(self._tokens(codes))

    def token_nll(self, codes: Tensor) -> Tensor:
        """Per-token negative log-likelihood in nats, B x G*G."""
        tokens = self._tokens(codes)
        logits = self.gpt(tokens).float()
        # Flattened to (tokens, K): the softmax then runs over contiguous rows, about half the
        # time of cross_entropy over the transposed B x K x L logits.
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), reduction="none")
        return nll.view_as(tokens)

    def image_nll(self, codes: Tensor) -> Tensor:
        """Negative log-likelihood of each whole grid in nats, B."""
        return self.token_nll(codes).sum(dim=1)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = 0,
        batch_size: int = 1000,
    ) -> Tensor:
        """n code grids n x G x G (int64, on the model's device), the same for the same seed.

        ``top_k=1`` is greedy decoding (no randomness). ``seed=None`` draws from torch's global RNG.
        """
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        codes = self.gpt.generate(n, temperature=temperature, top_k=top_k, generator=generator, batch_size=batch_size)
        g = self.hparams.grid_size
        return codes.view(n, g, g)

    # -- Lightning ----------------------------------------------------------------------------
    def _step(self, batch, split: str) -> Tensor:
        codes = batch[0] if isinstance(batch, (list, tuple)) else batch
        token_nll = self.token_nll(codes)
        loss = token_nll.mean()
        self.nll[f"{split}_nll"].update(token_nll.detach())
        on_step = split == "train"
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(codes))
        return loss

    def _log_nll(self, split: str) -> None:
        metric = self.nll[f"{split}_nll"]
        if not metric.update_called:
            return
        summary = nll_summary(metric.compute(), self.tokens_per_image)  # compute() syncs processes
        metric.reset()
        for name, value in summary.items():
            self.log(f"{split}/{name}", value, prog_bar=name == "perplexity", on_step=False, on_epoch=True,
                     sync_dist=False)

    def on_train_epoch_start(self) -> None:
        self.nll["train_nll"].reset()

    def on_validation_epoch_start(self) -> None:
        self.nll["val_nll"].reset()

    def on_test_epoch_start(self) -> None:
        self.nll["test_nll"].reset()

    def on_train_epoch_end(self) -> None:
        self._log_nll("train")

    def on_validation_epoch_end(self) -> None:
        self._log_nll("val")

    def on_test_epoch_end(self) -> None:
        self._log_nll("test")
