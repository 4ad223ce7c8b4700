"""The VQ-VAE's vector quantization layer (van den Oord et al., 2017), with anti-collapse options.

Each vector of the encoder's B x D x H x W output becomes its nearest code (squared Euclidean
distance, one matmul) and the gradient is copied straight through to the encoder. The options, all
off by default (the paper's layer), are plain constructor arguments in the spirit of
vector-quantize-pytorch: an EMA codebook (``codebook``), k-means initialisation on the first
training batch (``init``) and dead-code restarts (``restarts``). Under data parallelism every rank
applies the same update, so the codebooks stay identical (``distributed``). Distances, updates
and losses run in float32 at least whatever autocast says: nearest-code search in bfloat16 picks
wrong codes. Randomness comes from torch's global generator (rank 0's under data parallelism).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geovq.errors import ParameterError
from geovq.nn.quantizer_layer import QuantizerOutput
from geovq.nn.vq.codebook import ema_update, register_codebook, reset_ema_statistics, squared_distances
from geovq.nn.vq.distributed import summed_over_ranks
from geovq.nn.vq.init import kmeans_codebook
from geovq.nn.vq.restarts import candidate_seeds, chosen_restarts, dead_codes, reset_optimizer_state_rows, update_usage


class VectorQuantizer(nn.Module):
    """Nearest-code quantization of B x D x H x W inputs against a K x D codebook.

    Losses are means over the B*H*W*D latent elements: ``codebook_loss`` = mean ||sg[z_e] - e||^2
    (0 with ``ema``), ``commitment_loss`` = mean ||z_e - sg[e]||^2 (unscaled), ``loss`` =
    codebook_loss + commitment_cost * commitment_loss. Training forwards update the codebook's
    statistics; evaluation forwards have no side effect.

    Args:
        n_codes: K, the number of codes.
        code_dim: D, the dimension of each code; must equal the encoder's output channels.
        commitment_cost: beta, the weight of the commitment loss.
        ema: update the codebook by exponential moving averages instead of gradients.
        decay: EMA decay in (0, 1).
        eps: Laplace smoothing of the EMA cluster sizes (> 0).
        kmeans_init: initialise the codebook by k-means on the first training batch.
        kmeans_iters: Lloyd iterations of that initialisation.
        restart_dead_codes: at the start of every training forward, re-seed the dead codes (see
            ``dead_code_threshold`` and ``dead_code_window``) from that batch's encoder outputs.
        dead_code_window: training steps without use after which a code counts as dead; None
            turns this criterion off.
        restart_buffer_size: at most this many of the step's encoder outputs are candidate seeds.
        restart_noise: std of the noise added to a re-seeded code, relative to the std of the
            candidate seeds.
        dead_code_threshold: a code whose moving average of the vectors it wins per training
            step falls below this fraction of the average code's counts as dead (e.g. 0.5); 0
            turns this criterion off.
        dead_code_decay: decay in (0, 1) of that moving average (0.3: mostly the last two
            steps).
    """

    def __init__(
        self,
        n_codes: int,
        code_dim: int,
        commitment_cost: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        restart_dead_codes: bool = False,
        dead_code_window: int | None = 100,
        restart_buffer_size: int = 4096,
        restart_noise: float = 0.01,
        dead_code_threshold: float = 0.0,
        dead_code_decay: float = 0.3,
    ):
        super().__init__()
        _validate(n_codes, code_dim, commitment_cost, decay, eps, kmeans_iters, dead_code_window,
                  restart_buffer_size, restart_noise, restart_dead_codes, dead_code_threshold, dead_code_decay)
        self.n_codes = int(n_codes)
        self.code_dim = int(code_dim)
        self.commitment_cost = float(commitment_cost)
        self.ema = bool(ema)
        self.decay = float(decay)
        self.eps = float(eps)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = int(kmeans_iters)
        self.restart_dead_codes = bool(restart_dead_codes)
        self.dead_code_window = None if dead_code_window is None else int(dead_code_window)
        self.restart_buffer_size = int(restart_buffer_size)
        self.restart_noise = float(restart_noise)
        self.dead_code_threshold = float(dead_code_threshold)
        self.dead_code_decay = float(dead_code_decay)

        register_codebook(self, self.n_codes, self.code_dim, self.ema)
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        self.register_buffer("steps_since_used", torch.zeros(self.n_codes, dtype=torch.int64))
        if self._uses_threshold:
            # Moving average of the vectors each code wins per training step; negative until the
            # first training step sets it. (Only with the option on, so older models load as before.)
            self.register_buffer("ema_usage", torch.full((self.n_codes,), -1.0))
        self._initialized_seen = not self.kmeans_init

    @property
    def _uses_threshold(self) -> bool:
        return self.restart_dead_codes and self.dead_code_threshold > 0

    def extra_repr(self) -> str:
        return (f"n_codes={self.n_codes}, code_dim={self.code_dim}, commitment_cost={self.commitment_cost}, "
                f"ema={self.ema}, kmeans_init={self.kmeans_init}, restart_dead_codes={self.restart_dead_codes}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Models saved while the layer also counted usage per epoch (the VQ-VAE does that now).
        state_dict.pop(prefix + "usage_counts", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- the codebook ---------------------------------------------------------------------------
    @property
    def codebook(self) -> Tensor:
        """The K x D codebook (detached)."""
        return self.embedding.detach()

    @property
    def has_codebook_loss(self) -> bool:
        """Whether the codebook learns from ``codebook_loss`` (not from EMA updates)."""
        return not self.ema

    @torch.no_grad()
    def set_codebook(self, vectors: Tensor) -> None:
        """Start from the K x D codes ``vectors`` (e.g. an a posteriori codebook): no k-means
        initialisation follows, and the EMA statistics say "each code has seen one vector: itself"."""
        if tuple(vectors.shape) != (self.n_codes, self.code_dim):
            raise ParameterError(
                "vectors", f"the codebook is {self.n_codes} x {self.code_dim}, got vectors of shape {tuple(vectors.shape)}."
            )
        self.embedding.data.copy_(vectors)
        self._reset_ema_statistics(1.0)
        self.initialized.fill_(True)
        self._initialized_seen = True

    def reset_optimizer_rows(self, optimizer, rows: Tensor) -> None:
        """Fresh optimizer state for the re-seeded codes ``rows`` (a learned codebook's)."""
        if self.has_codebook_loss:
            reset_optimizer_state_rows(optimizer, self.embedding, rows)

    def _reset_ema_statistics(self, sizes, rows=slice(None)) -> None:
        if self.ema:
            reset_ema_statistics(self.embedding, self.cluster_size, self.embed_sum, sizes, rows)

    def nearest(self, z_e: Tensor) -> Tensor:
        """Codes B x H x W (int64) of the nearest codebook vectors; no side effects."""
        return self._nearest_flat(self._flatten(z_e)).view(z_e.shape[0], *z_e.shape[2:])

    def lookup(self, codes: Tensor) -> Tensor:
        """Codebook vectors B x D x H x W for codes B x H x W."""
        codes = torch.as_tensor(codes, device=self.embedding.device).long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.n_codes):
            raise ParameterError(
                "codes",
                f"codes must lie in [0, {self.n_codes}) for this codebook, got [{int(codes.min())}, "
                f"{int(codes.max())}]; were they made with a model that has a different n_codes?"
            )
        return F.embedding(codes, self.embedding).movedim(-1, 1)

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, z_e: Tensor) -> QuantizerOutput:
        flat = self._flatten(z_e)  # N x D, N = B*H*W
        with torch.autocast(device_type=flat.device.type, enabled=False):
            out = self._quantize_flat(flat)
        batch, _, *grid = z_e.shape
        quantized = out.quantized.view(batch, *grid, self.code_dim).movedim(-1, 1)
        return out._replace(quantized=quantized.to(z_e.dtype), codes=out.codes.view(batch, *grid))

    def _quantize_flat(self, flat: Tensor) -> QuantizerOutput:
        """The output for N x D vectors (quantized N x D, codes N)."""
        dtype = torch.promote_types(self.embedding.dtype, torch.float32)
        flat = flat.to(dtype)  # e.g. bf16 encoder outputs under autocast
        restarted = torch.zeros(0, dtype=torch.int64, device=flat.device)
        if self.training:
            if not self._initialized_seen and not bool(self.initialized):  # one host sync at most
                self._kmeans_initialise(flat.detach())
            self._initialized_seen = True
            if self.restart_dead_codes:
                restarted = self._restart_dead(flat.detach())

        embedding = self.embedding.to(dtype)
        codes_flat = self._nearest_flat(flat)
        counts = torch.bincount(codes_flat, minlength=self.n_codes)
        quantized_flat = F.embedding(codes_flat, embedding)

        commitment_loss = F.mse_loss(flat, quantized_flat.detach())
        if self.ema:
            codebook_loss = torch.zeros((), device=flat.device, dtype=flat.dtype)
        else:
            codebook_loss = F.mse_loss(quantized_flat, flat.detach())
        loss = codebook_loss + self.commitment_cost * commitment_loss

        if self.training:
            self._update_statistics(flat.detach(), codes_flat, counts)

        # Straight-through estimator: forward value = codes, gradient w.r.t. z_e = identity.
        quantized_st = flat + (quantized_flat - flat).detach()
        return QuantizerOutput(quantized_st, codes_flat, loss, codebook_loss, commitment_loss, counts, restarted)

    @torch.no_grad()
    def _update_statistics(self, flat: Tensor, codes: Tensor, counts: Tensor) -> None:
        """Dead-code statistics and the EMA codebook, from the global batch (every rank's)."""
        counts = summed_over_ranks(counts)  # the returned counts stay this process's own
        update_usage(self.steps_since_used, self.ema_usage if self._uses_threshold else None, counts,
                     self.dead_code_decay)
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat.to(self.embed_sum.dtype))
            ema_update(self.embedding, self.cluster_size, self.embed_sum, summed_over_ranks(sums), counts,
                       self.decay, self.eps)

    @torch.no_grad()
    def _kmeans_initialise(self, flat: Tensor) -> None:
        centers, sizes = kmeans_codebook(flat, self.n_codes, self.kmeans_iters, self.embedding.dtype)
        self.embedding.data.copy_(centers)
        # Sizes of the k-means clusters on this batch, so that the EMA update on this same batch
        # leaves the statistics as they are (decay * c + (1 - decay) * c = c).
        self._reset_ema_statistics(sizes.clamp(min=1))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _restart_dead(self, flat: Tensor) -> Tensor:
        """Re-seed the dead codes from this step's vectors ``flat``; their indices."""
        pool = candidate_seeds(flat, self.restart_buffer_size).to(self.embedding.dtype)
        ema_usage = self.ema_usage if self._uses_threshold else None
        dead = dead_codes(self.steps_since_used, ema_usage, self.dead_code_window, self.dead_code_threshold)
        rows, seeds = chosen_restarts(dead, pool, self.embedding, self.restart_noise)
        if rows.numel() == 0:
            return rows
        self.embedding.data[rows] = seeds
        # "One vector seen: itself": its old statistics would drag it straight back where it died.
        self._reset_ema_statistics(1.0, rows)
        self.steps_since_used[rows] = 0
        if ema_usage is not None:
            # As if it had won its share so far: dead again after a step or two without it.
            ema_usage[rows] = ema_usage.clamp(min=0).mean()
        return rows

    # -- internals ------------------------------------------------------------------------------
    def _flatten(self, z_e: Tensor) -> Tensor:
        if z_e.dim() < 3:
            raise ParameterError(
                "z_e",
                f"the vector quantizer expects channel-first inputs z_e of shape B x D x H x W, got shape "
                f"{tuple(z_e.shape)}; pass the encoder's output grid, not flattened vectors.",
            )
        if z_e.shape[1] != self.code_dim:
            raise ParameterError(
                "z_e",
                f"z_e has {z_e.shape[1]} channels but the codebook has code_dim={self.code_dim}; the "
                "encoder's output channels must equal code_dim.",
            )
        return z_e.movedim(1, -1).reshape(-1, self.code_dim)

    @torch.no_grad()
    def _nearest_flat(self, flat: Tensor) -> Tensor:
        dtype = torch.promote_types(flat.dtype, torch.float32)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            return squared_distances(flat.to(dtype), self.embedding.to(dtype)).argmin(dim=1)


def _validate(n_codes, code_dim, commitment_cost, decay, eps, kmeans_iters, dead_code_window,
              restart_buffer_size, restart_noise, restart_dead_codes, dead_code_threshold, dead_code_decay) -> None:
    if n_codes < 1:
        raise ParameterError("n_codes", f"the codebook needs at least one code: n_codes (K) must be >= 1, got {n_codes}.")
    if code_dim < 1:
        raise ParameterError("code_dim", f"code_dim (the code dimension D) must be >= 1, got {code_dim}.")
    if commitment_cost < 0:
        raise ParameterError("commitment_cost", f"commitment_cost must be >= 0, got {commitment_cost}.")
    if not 0.0 < decay < 1.0:
        raise ParameterError("decay", f"decay (of the EMA) must lie strictly between 0 and 1 (e.g. 0.99), got {decay}.")
    if eps <= 0:
        raise ParameterError("eps", f"eps (the EMA Laplace smoothing) must be > 0 (e.g. 1e-5), got {eps}.")
    if kmeans_iters < 0:
        raise ParameterError("kmeans_iters", f"kmeans_iters must be >= 0, got {kmeans_iters}.")
    if dead_code_window is not None and dead_code_window < 1:
        raise ParameterError("dead_code_window",
                             f"dead_code_window must be >= 1 training step (or null: off), got {dead_code_window}.")
    if restart_buffer_size < 1:
        raise ParameterError("restart_buffer_size", f"restart_buffer_size must be >= 1, got {restart_buffer_size}.")
    if restart_noise < 0:
        raise ParameterError("restart_noise", f"restart_noise must be >= 0, got {restart_noise}.")
    if dead_code_threshold < 0:
        raise ParameterError("dead_code_threshold",
                             f"dead_code_threshold must be >= 0 (a fraction of the average code's usage; 0: off), "
                             f"got {dead_code_threshold}.")
    if not 0.0 < dead_code_decay < 1.0:
        raise ParameterError("dead_code_decay",
                             f"dead_code_decay must lie strictly between 0 and 1 (e.g. 0.3), got {dead_code_decay}.")
    if restart_dead_codes and dead_code_window is None and dead_code_threshold <= 0:
        raise ParameterError("dead_code_threshold",
                             "restart_dead_codes needs a criterion for a dead code: dead_code_threshold > 0 or "
                             "a dead_code_window; both are off.")
