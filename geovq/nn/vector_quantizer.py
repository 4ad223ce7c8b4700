"""Vector quantization layer of the VQ-VAE (van den Oord et al., 2017), with anti-collapse options.

Input: encoder outputs ``z_e`` of shape B x D x H x W (channel-first, as ``ConvEncoder`` emits).
Each of the B*H*W vectors is replaced by its nearest code (squared Euclidean distance, computed
as ||z||^2 - 2 z.e + ||e||^2 with one matmul), and the gradient is copied straight through from
the quantized vectors to ``z_e``.

Losses, each a MEAN over the B*H*W*D latent elements (so the numbers do not depend on the batch
size, the grid size or D; a model that wants a per-image sum multiplies by H*W*D, as
``geovq.models.vqvae.VQVAE`` does):

- ``codebook_loss``   = mean ||sg[z_e] - e||^2   (moves the codes; dropped, i.e. 0, with ``ema``)
- ``commitment_loss`` = mean ||z_e - sg[e]||^2   (moves the encoder; reported *unscaled*)
- ``loss`` = codebook_loss + commitment_cost * commitment_loss

Anti-collapse options, all off by default (the paper's configuration), as plain constructor
arguments in the spirit of lucidrains/vector-quantize-pytorch:

- ``ema``: the codebook is a buffer updated from exponential moving averages of the cluster sizes
  and of the sums of the vectors assigned to each code (Laplace-smoothed by ``eps``). Only codes
  used in a batch move; unused codes keep their vector exactly.
- ``kmeans_init``: the first training batch's encoder outputs initialise the codebook
  (:func:`kmeans_init_codebook`) with k-means++ seeding (distinct seeds: a vector identical to a chosen one has zero weight) and
  ``kmeans_iters`` Lloyd iterations.
- ``restart_dead_codes``: dead codes are re-seeded from the encoder outputs of the current
  training step (a random sample of ``restart_buffer_size`` of them when there are more),
  favouring the ones the codebook represents worst, plus a little noise. Checked at every
  training step; a code is dead when a criterion that is on says so:

  * ``dead_code_threshold`` (> 0): its usage, an exponential moving average (decay
    ``dead_code_decay``) of the number of vectors it wins per training step, fell below that
    fraction of the average code's usage (like vector-quantize-pytorch's
    ``threshold_ema_dead_code``, relative so that it does not depend on the batch size, the grid
    or the number of processes). The average (``ema_usage``) is kept for a learned codebook and an
    EMA codebook alike, with its own decay: the codebook's ``decay`` (0.99, a time constant of 100
    steps) would let a code that stopped being used look alive for hundreds of steps, while early
    in training the encoder's outputs move by more than the spacing of the codes at every step
    and empty most of a k-means-initialised codebook within five steps. The average starts at the
    first training batch's counts; a re-seeded code starts again at the average usage, so that it
    counts as dead again only after a step or two without winning its share.
  * ``dead_code_window`` (not null): it was unused for that many consecutive training steps.

  Seeds come from the latest outputs only: older ones, from an encoder that has moved since, are
  exactly the vectors the codebook represents worst, and codes seeded there die at once.

  The paper's appendix reports that its resampling made the reconstruction loss explode. Here the
  code's optimisation state is kept consistent with its new vector: with ``ema`` its cluster size
  and embedding sum are reset to describe the new vector; with a learned codebook the restarted
  indices are returned (``QuantizerOutput.restarted``) so that the training loop resets those rows
  of the optimizer state with ``reset_optimizer_state_rows`` before its next step (the VQVAE
  LightningModule does that). Restarts happen at the start of a training forward, before the
  codebook is used, so the new codes already compete for this batch's vectors.

Usage statistics: every forward returns the batch's per-code counts (training and evaluation
alike, for per-epoch accumulation); in training mode they are also added to the ``usage_counts``
buffer (``reset_usage()`` clears it), which ``utilization()``, ``perplexity()`` and
``dead_codes()`` summarise through ``geovq.metrics.codebook``.

Precision: distances, the EMA updates and the losses are computed in float32 (at least) with
autocast switched off, whatever the caller's autocast or input dtype (nearest-code search in
bfloat16 would pick wrong codes); ``quantized`` is returned in the input's dtype.

Data parallelism (``torch.distributed`` initialised with a world size > 1; DDP, Lightning's ddp
strategy): every rank applies the same update, so the codebooks stay identical.

- The per-batch code counts and, with ``ema``, the per-code sums of the assigned vectors are
  all-reduced (summed) before the EMA update, the ``usage_counts`` buffer and the dead-code
  statistics (``steps_since_used``, ``ema_usage``): they describe the global batch. (The counts
  that ``forward`` *returns* stay this process's own, for per-epoch accumulation by the caller.)
- ``kmeans_init`` runs on rank 0 over the first batch's vectors gathered from every rank, and the
  codebook (with its cluster sizes) is broadcast.
- Dead codes are chosen once, on rank 0 (seeds from rank 0's outputs of the step), and the
  indices and new vectors are broadcast, so ``restarted`` is the same on every rank and the
  caller resets the same optimizer rows everywhere.

A single process does no collective at all.

Randomness (initial codebook, k-means seeding, restarts) comes from torch's global generator, so
``torch.manual_seed`` makes the layer deterministic (under data parallelism, rank 0's generator
makes the k-means and restart choices).

Invalid arguments raise :class:`geovq.errors.ParameterError` naming the argument (``n_codes``,
``code_dim``, ..., ``z_e`` for a badly shaped input); the layer knows nothing of config keys, the
model or stage that built it names the one to change.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from geovq.errors import ParameterError
from geovq.metrics.codebook import perplexity as _perplexity
from geovq.metrics.codebook import usage_summary as _usage_summary
from geovq.metrics.codebook import utilization as _utilization


class QuantizerOutput(NamedTuple):
    """What ``VectorQuantizer.forward`` returns."""

    quantized: Tensor  # B x D x H x W, the codes with the straight-through gradient to z_e
    codes: Tensor  # B x H x W, int64 in [0, K)
    loss: Tensor  # codebook_loss + commitment_cost * commitment_loss (scalar)
    codebook_loss: Tensor  # mean ||sg[z_e] - e||^2 (0 with EMA)
    commitment_loss: Tensor  # mean ||z_e - sg[e]||^2, unscaled
    counts: Tensor  # K int64: how often each code was chosen in this batch
    restarted: Tensor  # int64 indices of the codes re-seeded in this call (empty unless restarting)


class VectorQuantizer(nn.Module):
    """Nearest-code quantization of B x D x H x W inputs against a K x D codebook.

    Args:
        n_codes: K, the number of codes.
        code_dim: D, the dimension of each code; must equal the encoder's output channels.
        commitment_cost: beta, the weight of the commitment loss.
        ema: update the codebook by exponential moving averages instead of gradients.
        decay: EMA decay in (0, 1).
        eps: Laplace smoothing of the EMA cluster sizes (> 0).
        kmeans_init: initialise the codebook by k-means on the first training batch.
        kmeans_iters: Lloyd iterations of that initialisation.
        restart_dead_codes: re-seed dead codes (see ``dead_code_threshold`` and ``dead_code_window``).
        dead_code_window: training steps without use after which a code counts as dead; None
            turns this criterion off.
        restart_buffer_size: at most this many of the step's encoder outputs are candidate seeds.
        restart_noise: std of the noise added to a re-seeded code, relative to the std of the
            buffered encoder outputs.
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

        # The usual VQ-VAE initialisation (Sonnet, most PyTorch ports): small uniform codes.
        initial = torch.empty(self.n_codes, self.code_dim).uniform_(-1.0 / self.n_codes, 1.0 / self.n_codes)
        if self.ema:
            self.register_buffer("embedding", initial)
            # Statistics consistent with "each code has seen one vector: itself", so that
            # embed_sum / cluster_size == embedding from the start.
            self.register_buffer("cluster_size", torch.ones(self.n_codes))
            self.register_buffer("embed_sum", initial.clone())
        else:
            self.embedding = nn.Parameter(initial)
        self.register_buffer("initialized", torch.tensor(not self.kmeans_init))
        self.register_buffer("usage_counts", torch.zeros(self.n_codes, dtype=torch.int64))
        self.register_buffer("steps_since_used", torch.zeros(self.n_codes, dtype=torch.int64))
        if self._uses_threshold:
            # Moving average of the vectors each code wins per training step; negative until the
            # first training step, which sets it to that step's counts. (Registered only with the
            # option on, so that models saved without it load as before.)
            self.register_buffer("ema_usage", torch.full((self.n_codes,), -1.0))
        # The latest encoder outputs, candidate seeds of restarts; not worth a place in checkpoints.
        self.register_buffer("recent_latents", torch.zeros(0, self.code_dim), persistent=False)
        self._initialized_seen = not self.kmeans_init

    @property
    def _uses_threshold(self) -> bool:
        return self.restart_dead_codes and self.dead_code_threshold > 0

    def extra_repr(self) -> str:
        return (f"n_codes={self.n_codes}, code_dim={self.code_dim}, commitment_cost={self.commitment_cost}, "
                f"ema={self.ema}, kmeans_init={self.kmeans_init}, restart_dead_codes={self.restart_dead_codes}")

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
        if self.ema:
            self.cluster_size.fill_(1.0)
            self.embed_sum.copy_(self.embedding)
        self.initialized.fill_(True)
        self._initialized_seen = True

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
        # Everything in float32 at least, whatever autocast says (bf16 distances pick wrong codes).
        with torch.autocast(device_type=flat.device.type, enabled=False):
            out = self._quantize_flat(flat)
        quantized_flat, codes_flat, loss, codebook_loss, commitment_loss, counts, restarted = out
        batch, _, *grid = z_e.shape
        quantized = quantized_flat.view(batch, *grid, self.code_dim).movedim(-1, 1)
        return QuantizerOutput(
            quantized=quantized.to(z_e.dtype),
            codes=codes_flat.view(batch, *grid),
            loss=loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            counts=counts,
            restarted=restarted,
        )

    def _quantize_flat(self, flat: Tensor):
        dtype = torch.promote_types(self.embedding.dtype, torch.float32)
        flat = flat.to(dtype)  # e.g. bf16 encoder outputs under autocast
        restarted = torch.zeros(0, dtype=torch.int64, device=flat.device)
        if self.training:
            if not self._initialized_seen and not bool(self.initialized):  # one host sync at most
                self._kmeans_initialise(flat.detach())
            self._initialized_seen = True
            if self.restart_dead_codes:
                self._remember(flat.detach())
                restarted = self._restart_dead()

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
            with torch.no_grad():
                self._update_statistics(flat.detach(), codes_flat, counts)

        # Straight-through estimator: forward value = codes, gradient w.r.t. z_e = identity.
        quantized_st = flat + (quantized_flat - flat).detach()
        return quantized_st, codes_flat, loss, codebook_loss, commitment_loss, counts, restarted

    @torch.no_grad()
    def _update_statistics(self, flat: Tensor, codes: Tensor, counts: Tensor) -> None:
        """Usage counts, dead-code statistics and the EMA codebook, from the global batch."""
        sums = None
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat.to(self.embed_sum.dtype))
        if _world_size() > 1:
            counts = counts.clone()
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
        self.usage_counts += counts
        self.steps_since_used += 1
        self.steps_since_used[counts > 0] = 0
        if self._uses_threshold:
            current = counts.to(self.ema_usage.dtype)
            averaged = self.ema_usage * self.dead_code_decay + current * (1 - self.dead_code_decay)
            self.ema_usage.copy_(torch.where(self.ema_usage < 0, current, averaged))
        if self.ema:
            self._ema_update(sums, counts)

    # -- usage statistics ---------------------------------------------------------------------
    def reset_usage(self) -> None:
        """Forget the usage counted so far (``usage_counts``)."""
        self.usage_counts.zero_()

    def utilization(self) -> float:
        """Fraction of codes used at least once since the last ``reset_usage()``."""
        return _utilization(self.usage_counts.cpu().numpy())

    def perplexity(self) -> float:
        """exp(entropy) of code usage since the last ``reset_usage()``, in [1, K] (0 if nothing seen)."""
        return _perplexity(self.usage_counts.cpu().numpy())

    def dead_codes(self) -> Tensor:
        """Indices (int64) of the codes not used since the last ``reset_usage()``."""
        return torch.nonzero(self.usage_counts == 0).flatten()

    def usage_summary(self) -> dict:
        return _usage_summary(self.usage_counts.cpu().numpy())

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
        # In float32 at least: low-precision distances would pick the wrong nearest code.
        dtype = torch.promote_types(flat.dtype, torch.float32)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            return _squared_distances(flat.to(dtype), self.embedding.to(dtype)).argmin(dim=1)

    @torch.no_grad()
    def _ema_update(self, sums: Tensor, counts: Tensor) -> None:
        self.cluster_size.mul_(self.decay).add_(counts.to(self.cluster_size.dtype), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.n_codes * self.eps) * total
        # Unused codes are left exactly where they are: their sum and size decayed by the same
        # factor, so only the smoothing would move them (towards the origin), which is noise.
        used = counts > 0
        self.embedding[used] = self.embed_sum[used] / smoothed[used].unsqueeze(1)

    @torch.no_grad()
    def _kmeans_initialise(self, flat: Tensor) -> None:
        world = _world_size()
        if world > 1:
            # k-means on rank 0 over every rank's first batch; the codebook and the cluster sizes
            # are broadcast, so that every rank starts from the same statistics.
            flat = _all_gather_rows(flat)
            packed = torch.zeros(self.n_codes, self.code_dim + 1, device=flat.device, dtype=self.embedding.dtype)
            if dist.get_rank() == 0:
                packed[:, :-1] = kmeans_init_codebook(flat.float(), self.n_codes, self.kmeans_iters)
                packed[:, -1] = self._kmeans_sizes(flat, packed[:, :-1]).to(packed.dtype)
            dist.broadcast(packed, src=0)
            centers, sizes = packed[:, :-1], packed[:, -1]
        else:
            centers = kmeans_init_codebook(flat.float(), self.n_codes, self.kmeans_iters)
            sizes = None
        self.embedding.data.copy_(centers.to(self.embedding.dtype))
        if self.ema:
            # Sizes of the k-means clusters on this batch, so that the EMA update on this same
            # batch leaves the statistics as they are (decay * c + (1 - decay) * c = c).
            if sizes is None:
                sizes = self._kmeans_sizes(flat, self.embedding)
            self.cluster_size.copy_(sizes.clamp(min=1).to(self.cluster_size.dtype))
            self.embed_sum.copy_(self.embedding * self.cluster_size.unsqueeze(1))
        self.initialized.fill_(True)

    def _kmeans_sizes(self, flat: Tensor, centers: Tensor) -> Tensor:
        return torch.bincount(_squared_distances(flat, centers).argmin(1), minlength=self.n_codes)

    @torch.no_grad()
    def _remember(self, flat: Tensor) -> None:
        """Keep the candidate seeds of restarts: this batch's vectors (a random sample of
        ``restart_buffer_size`` of them when there are more)."""
        if flat.shape[0] > self.restart_buffer_size:
            flat = flat[torch.randperm(flat.shape[0], device=flat.device)[: self.restart_buffer_size]]
        self.recent_latents = flat.to(self.embedding.dtype)

    def _dead_mask(self) -> Tensor:
        dead = torch.zeros(self.n_codes, dtype=torch.bool, device=self.steps_since_used.device)
        if self.dead_code_window is not None:
            dead |= self.steps_since_used >= self.dead_code_window
        if self._uses_threshold:
            dead |= (self.ema_usage >= 0) & (self.ema_usage < self.dead_code_threshold * self.ema_usage.mean())
        return dead

    @torch.no_grad()
    def _restart_dead(self) -> Tensor:
        if _world_size() > 1:
            # Chosen once, on rank 0, and broadcast: a flag column and the new vectors.
            packed = torch.zeros(self.n_codes, self.code_dim + 1, device=self.embedding.device,
                                 dtype=self.embedding.dtype)
            if dist.get_rank() == 0:
                dead = torch.nonzero(self._dead_mask()).flatten()
                seeds = self._restart_seeds(dead)
                if seeds is not None:
                    packed[dead, 0] = 1
                    packed[dead, 1:] = seeds.to(packed.dtype)
            dist.broadcast(packed, src=0)
            dead = torch.nonzero(packed[:, 0] > 0).flatten()
            if dead.numel() == 0:
                return dead
            seeds = packed[dead, 1:]
        else:
            dead = torch.nonzero(self._dead_mask()).flatten()
            seeds = self._restart_seeds(dead)
            if seeds is None:
                return dead[:0]
        self.embedding.data[dead] = seeds.to(self.embedding.dtype)
        if self.ema:
            # The new code starts as "one vector seen: itself"; its old statistics would drag it
            # straight back to where it died.
            self.cluster_size[dead] = 1.0
            self.embed_sum[dead] = self.embedding[dead]
        self.steps_since_used[dead] = 0
        if self._uses_threshold:
            # As if it had won its share so far: dead again after a step or two without it.
            self.ema_usage[dead] = self.ema_usage.clamp(min=0).mean()
        return dead

    def _restart_seeds(self, dead: Tensor) -> Tensor | None:
        """New vectors for the ``dead`` codes, from this step's encoder outputs (None: no restart)."""
        if dead.numel() == 0 or self.recent_latents.shape[0] == 0:
            return None
        pool = self.recent_latents
        alive = torch.ones(self.n_codes, dtype=torch.bool, device=pool.device)
        alive[dead] = False
        # Favour the vectors the living codes represent worst (k-means++ style weights).
        if alive.any():
            weights = _squared_distances(pool, self.embedding[alive]).min(dim=1).values.clamp(min=0)
        else:
            weights = torch.ones(pool.shape[0], device=pool.device)
        n = dead.numel()
        if int((weights > 0).sum()) >= n:
            chosen = torch.multinomial(weights, n, replacement=False)
        else:
            chosen = torch.randint(pool.shape[0], (n,), device=pool.device)
        scale = self.restart_noise * float(pool.std()) if pool.shape[0] > 1 else self.restart_noise
        return pool[chosen] + torch.randn(n, self.code_dim, device=pool.device) * max(scale, 1e-6)


def _world_size() -> int:
    """The number of data-parallel processes (1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _all_gather_rows(x: Tensor) -> Tensor:
    """Every rank's rows of ``x`` (N_r x D, N_r may differ), concatenated in rank order."""
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros(max(sizes), x.shape[1])
    padded[: x.shape[0]] = x
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([rows[:n] for rows, n in zip(gathered, sizes)])


def _squared_distances(x: Tensor, codebook: Tensor) -> Tensor:
    """N x K squared Euclidean distances, via one matmul."""
    return (
        x.pow(2).sum(1, keepdim=True)
        - 2.0 * x @ codebook.t().to(x.dtype)
        + codebook.pow(2).sum(1).to(x.dtype).unsqueeze(0)
    )


@torch.no_grad()
def kmeans_init_codebook(x: Tensor, k: int, iters: int = 10) -> Tensor:
    """The ``kmeans_init`` codebook: k x D centers of the vectors ``x`` (N x D), by k-means++
    seeding then ``iters`` Lloyd iterations (torch's global RNG).

    Seeds are distinct data vectors (a vector equal to a chosen seed has zero weight); if ``x``
    holds fewer than ``k`` distinct vectors, the remaining seeds are data vectors plus small noise.
    An empty cluster keeps its previous center, so centers stay distinct.
    """
    n, dim = x.shape
    if n == 0:
        raise ParameterError("x", "x is empty: the k-means initialisation of the codebook needs at least one vector.")
    first = int(torch.randint(n, (1,)))
    centers = [x[first]]
    closest = (x - x[first]).pow(2).sum(1)
    noise_scale = 1e-3 * float(x.std()) if n > 1 else 1e-3
    for _ in range(1, k):
        if float(closest.sum()) > 0:
            pick = int(torch.multinomial(closest, 1))
            center = x[pick]
        else:  # no distinct vector left
            center = x[int(torch.randint(n, (1,)))] + torch.randn(dim, device=x.device) * max(noise_scale, 1e-6)
        centers.append(center)
        closest = torch.minimum(closest, (x - center).pow(2).sum(1))
    centers = torch.stack(centers)
    for _ in range(iters):
        assign = _squared_distances(x, centers).argmin(1)
        sizes = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        nonempty = sizes > 0
        centers[nonempty] = sums[nonempty] / sizes[nonempty].unsqueeze(1).to(x.dtype)
    return centers


def reset_optimizer_state_rows(optimizer, param: Tensor, rows) -> int:
    """Zero the per-element optimizer state of ``param`` at the given first-axis ``rows``.

    For Adam/AdamW that is ``exp_avg`` and ``exp_avg_sq`` (and ``max_exp_avg_sq`` with amsgrad),
    for SGD the momentum buffer: every state tensor shaped like ``param``. A restarted code then
    starts its optimisation afresh instead of inheriting the moments of the vector it replaced.
    Works with a plain torch optimizer or Lightning's wrapper; a parameter without state yet (no
    step taken) is left alone. Returns how many state tensors were touched.
    """
    optimizer = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer -> torch optimizer
    rows = torch.as_tensor(rows, dtype=torch.int64)
    if rows.numel() == 0:
        return 0
    state = optimizer.state.get(param)
    if not state:
        return 0
    touched = 0
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value[rows.to(value.device)] = 0
            touched += 1
    return touched


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
