"""Today's end-to-end quantizers, taken from vector-quantize-pytorch, as quantizer layers of the VQ-VAE.

Each adapter wraps one layer of the library, which does the quantizing, in the interface the
VQ-VAE needs (:class:`geovq.nn.quantizer_layer.QuantizerLayer`):

- :class:`FSQQuantizer`: finite scalar quantization (Mentzer et al., 2023), ``levels`` [8, 4, 4]
  = 128 codes. FSQ rounds a few bounded scalars, so the library projects D -> len(levels) before
  the rounding and back after it (its ``dim`` argument); no codebook, no auxiliary loss.
- :class:`LibraryVQ`: the library's ``VectorQuantize`` with the rotation trick (Fifty et al.,
  2024: the gradient through the layer rotates the decoder's gradient onto the encoder output
  instead of copying it), an EMA codebook, k-means initialisation and dead-code replacement;
  ``use_cosine_sim`` makes the codebook one of unit vectors matched by cosine similarity.
- :class:`SimVQQuantizer`: SimVQ (Zhu et al., 2024): a frozen random codebook reparameterised by
  one learned linear map, so that every code moves with each gradient step (against collapse).

Outside training every adapter quantizes with ``lookup(nearest(z_e))`` and no side effect, as
the hand-written layer does, so that an evaluation's reconstruction is exactly
``decode_codes(codes)``. Losses are means over latent elements, as the hand-written layer's:
``loss = codebook_loss + commitment_cost * commitment_loss``; in training ``loss`` is the
library's own. Everything runs in float32 under autocast. Under DDP the EMA codebook of
``LibraryVQ`` is a buffer, which DDP broadcasts from rank 0 at every forward, so the replicas keep
one codebook (updated from rank 0's batch).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vector_quantize_pytorch import FSQ, SimVQ, VectorQuantize

from geovq.errors import ParameterError
from geovq.nn.quantizer_layer import QuantizerOutput


class LibraryQuantizer(nn.Module):
    """A quantizer layer around one library layer; subclasses say how to train, pick codes and
    look them up."""

    has_codebook_loss = False  # a codebook learned by a loss term (logged as codebook_loss)

    def __init__(self, n_codes: int, code_dim: int, commitment_cost: float = 0.0):
        super().__init__()
        if code_dim < 1:
            raise ParameterError("code_dim", f"code_dim (the code dimension D) must be >= 1, got {code_dim}.")
        if commitment_cost < 0:
            raise ParameterError("commitment_cost", f"commitment_cost must be >= 0, got {commitment_cost}.")
        self.n_codes = int(n_codes)
        self.code_dim = int(code_dim)
        self.commitment_cost = float(commitment_cost)

    # -- what a subclass provides ------------------------------------------------------------
    def _train_forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(quantized B x D x H x W with the layer's gradient, codes B x H x W, loss) in training."""
        raise NotImplementedError

    def _codes(self, z: Tensor) -> Tensor:
        """Codes B x H x W of float32 inputs, without side effects."""
        raise NotImplementedError

    def _vectors(self, codes: Tensor) -> Tensor:
        """N x D vectors of N codes."""
        raise NotImplementedError

    # -- the interface -------------------------------------------------------------------------
    @property
    def codebook(self) -> Tensor:
        """The K x D vectors the codes decode from (detached)."""
        with torch.no_grad():
            return self._vectors(torch.arange(self.n_codes, device=self._device)).detach()

    def nearest(self, z_e: Tensor) -> Tensor:
        """Codes B x H x W (int64); no side effects."""
        self._check(z_e)
        with torch.no_grad(), torch.autocast(device_type=z_e.device.type, enabled=False):
            return self._codes(z_e.float()).long()

    def lookup(self, codes: Tensor) -> Tensor:
        """Vectors B x D x H x W of codes B x H x W."""
        codes = torch.as_tensor(codes, device=self._device).long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.n_codes):
            raise ParameterError(
                "codes",
                f"codes must lie in [0, {self.n_codes}) for this quantizer, got [{int(codes.min())}, "
                f"{int(codes.max())}]; were they made with a model that has another number of codes?",
            )
        return self._vectors(codes.reshape(-1)).view(*codes.shape, -1).movedim(-1, 1)

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        self._check(z_e)
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z = z_e.float()
            if self.training:
                quantized, codes, loss = self._train_forward(z)  # the library's gradient and loss
                codes = codes.long()
                with torch.no_grad():  # its terms, for the logs
                    codebook_loss, commitment_loss = self._loss_terms(z, self.lookup(codes))
            else:
                codes = self.nearest(z)
                quantized = self.lookup(codes)
                codebook_loss, commitment_loss = self._loss_terms(z, quantized)
                loss = codebook_loss + self.commitment_cost * commitment_loss
        return QuantizerOutput(
            quantized=quantized.to(z_e.dtype),
            codes=codes,
            loss=loss,
            codebook_loss=codebook_loss.detach(),
            commitment_loss=commitment_loss.detach(),
            counts=torch.bincount(codes.reshape(-1), minlength=self.n_codes),
            restarted=torch.zeros(0, dtype=torch.int64, device=z_e.device),
        )

    def _loss_terms(self, z: Tensor, chosen: Tensor) -> tuple[Tensor, Tensor]:
        """(codebook_loss, commitment_loss): means of ||sg[z] - e||^2 (0 without a learned codebook)
        and of ||z - sg[e]||^2, z as the layer compares it with the codes."""
        z = self._compared(z)
        codebook_loss = F.mse_loss(chosen, z.detach()) if self.has_codebook_loss else z.new_zeros(())
        return codebook_loss, F.mse_loss(z, chosen.detach())

    def _compared(self, z: Tensor) -> Tensor:
        """The encoder output as the layer compares it with the codes."""
        return z

    @property
    def _device(self) -> torch.device:
        return next(itertools.chain(self.buffers(), self.parameters())).device

    def _check(self, z_e: Tensor) -> None:
        if z_e.dim() != 4 or z_e.shape[1] != self.code_dim:
            raise ParameterError(
                "z_e",
                f"the quantizer expects encoder outputs B x {self.code_dim} x H x W, got shape {tuple(z_e.shape)}; "
                "the encoder's output channels must equal code_dim.",
            )


class FSQQuantizer(LibraryQuantizer):
    """FSQ with ``levels`` (K = their product); the library projects D -> len(levels) and back."""

    def __init__(self, code_dim: int, levels=(8, 4, 4)):
        levels = [int(level) for level in levels]
        if not levels or min(levels) < 3:
            raise ParameterError(
                "levels", f"levels must be a non-empty list of integers >= 3 (e.g. [8, 4, 4] = 128 codes), got {levels}."
            )
        super().__init__(int(torch.tensor(levels).prod()), code_dim)
        self.fsq = FSQ(levels=levels, dim=code_dim)

    def _train_forward(self, z):
        quantized, codes = self.fsq(z)
        return quantized, codes, z.new_zeros(())  # FSQ needs no auxiliary loss

    def _loss_terms(self, z, chosen):
        return z.new_zeros(()), z.new_zeros(())  # nor has it a codebook or a commitment term

    def _codes(self, z):
        return self.fsq(z)[1]

    def _vectors(self, codes):
        return self.fsq.indices_to_codes(codes)


class LibraryVQ(LibraryQuantizer):
    """vector-quantize-pytorch's VectorQuantize: EMA codebook, rotation trick by default."""

    def __init__(self, n_codes: int, code_dim: int, commitment_cost: float = 0.25, rotation_trick: bool = True,
                 use_cosine_sim: bool = False, decay: float = 0.8, kmeans_init: bool = True,
                 threshold_ema_dead_code: float = 2.0):
        if n_codes < 1:
            raise ParameterError("n_codes", f"n_codes (K) must be >= 1, got {n_codes}.")
        if not 0.0 < decay < 1.0:
            raise ParameterError("decay", f"decay (of the EMA) must lie strictly between 0 and 1, got {decay}.")
        super().__init__(n_codes, code_dim, commitment_cost)
        self.vq = VectorQuantize(
            dim=code_dim, codebook_size=n_codes, commitment_weight=commitment_cost, rotation_trick=rotation_trick,
            use_cosine_sim=use_cosine_sim, decay=decay, kmeans_init=kmeans_init,
            threshold_ema_dead_code=threshold_ema_dead_code, accept_image_fmap=True,
        )

    def _train_forward(self, z):
        return self.vq(z)

    def _compared(self, z):
        # A cosine-similarity codebook holds unit vectors and compares them with unit inputs.
        return F.normalize(z, dim=1, eps=1e-6) if self.vq.use_cosine_sim else z

    def _codes(self, z):
        if not bool(self.vq._codebook.initted):
            # A k-means codebook before its first training batch is all zeros: every vector is
            # nearest to code 0. (The library's forward would initialise it from this batch.)
            return torch.zeros(z.shape[0], *z.shape[2:], dtype=torch.int64, device=z.device)
        was_training = self.vq.training
        self.vq.eval()  # no EMA update, no dead-code replacement
        try:
            return self.vq(z, freeze_codebook=True)[1]
        finally:
            self.vq.train(was_training)

    def _vectors(self, codes):
        return self.vq.codebook[codes]


class SimVQQuantizer(LibraryQuantizer):
    """SimVQ: codes = a learned linear map of a frozen random codebook; rotation trick by default."""

    has_codebook_loss = True

    def __init__(self, n_codes: int, code_dim: int, commitment_cost: float = 0.25, rotation_trick: bool = True):
        if n_codes < 1:
            raise ParameterError("n_codes", f"n_codes (K) must be >= 1, got {n_codes}.")
        super().__init__(n_codes, code_dim, commitment_cost)
        # The library's loss is commitment_weight * (codebook + input_to_quantize * commitment):
        # with a weight of 1 it is this module's codebook_loss + commitment_cost * commitment_loss.
        self.vq = SimVQ(dim=code_dim, codebook_size=n_codes, channel_first=True, rotation_trick=rotation_trick,
                        input_to_quantize_commit_loss_weight=commitment_cost, commitment_weight=1.0)

    def _train_forward(self, z):
        return self.vq(z)

    def _codes(self, z):
        return self.vq(z)[1]

    def _vectors(self, codes):
        return self.vq.codebook[codes]
