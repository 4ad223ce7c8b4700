"""What the VQ-VAE needs from a quantizer layer, whichever kind it is.

The hand-written layer (``geovq.nn.vq``) and the vector-quantize-pytorch adapters
(``geovq.nn.library_quantizers``) both satisfy :class:`QuantizerLayer`; only the hand-written one
has a codebook of free vectors (:class:`FreeCodebook`), which an a posteriori codebook can start
and which dead-code restarts re-seed.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from torch import Tensor


class QuantizerOutput(NamedTuple):
    """What a quantizer layer's forward returns. Losses are means over the B*H*W*D latent elements."""

    quantized: Tensor  # B x D x H x W, the codes with the layer's gradient to z_e
    codes: Tensor  # B x H x W, int64 in [0, K)
    loss: Tensor  # what training minimises: codebook_loss + commitment_cost * commitment_loss (scalar)
    codebook_loss: Tensor  # mean ||sg[z_e] - e||^2 (0 without a codebook learned by this loss)
    commitment_loss: Tensor  # mean ||z_e - sg[e]||^2, unscaled
    counts: Tensor  # K int64: how often each code was chosen in this batch, by this process
    restarted: Tensor  # int64 indices of the codes re-seeded in this call (empty unless restarting)


@runtime_checkable
class QuantizerLayer(Protocol):
    """A layer that turns encoder outputs B x D x H x W into codes of a K x D codebook."""

    n_codes: int  # K
    code_dim: int  # D

    @property
    def has_codebook_loss(self) -> bool:
        """Whether ``codebook_loss`` trains the codebook (the VQ-VAE logs it only then)."""
        ...

    @property
    def codebook(self) -> Tensor:
        """The K x D vectors the codes decode from (detached)."""
        ...

    def __call__(self, z_e: Tensor) -> QuantizerOutput:
        """Quantize, with the layer's gradient and, in training, its updates."""
        ...

    def nearest(self, z_e: Tensor) -> Tensor:
        """Codes B x H x W (int64) of ``z_e``, without side effects."""
        ...

    def lookup(self, codes: Tensor) -> Tensor:
        """Vectors B x D x H x W of codes B x H x W."""
        ...


@runtime_checkable
class FreeCodebook(Protocol):
    """A quantizer layer whose codebook is K free vectors."""

    def set_codebook(self, vectors: Tensor) -> None:
        """Start from the K x D codes ``vectors`` (e.g. an a posteriori codebook)."""
        ...

    def reset_optimizer_rows(self, optimizer, rows: Tensor) -> None:
        """Give the re-seeded codes ``rows`` (``QuantizerOutput.restarted``) fresh optimizer state."""
        ...
