"""Dead-code restarts of the VQ layer: which codes are dead, their new vectors, their optimizer state.

A code is dead when a criterion that is on says so: its usage, a moving average of the vectors it
wins per training step, fell below a fraction of the average code's (relative, so independent of
the batch and grid sizes), or it was unused for a window of steps. The moving average has its own
short decay: early in training the encoder's outputs move by more than the spacing of the codes at
every step and can empty most of a k-means codebook within five steps.

Seeds are this step's encoder outputs, favouring the ones the living codes represent worst, plus a
little noise; older outputs, from an encoder that has moved since, would make codes that die at
once. The paper's resampling made the reconstruction loss explode; here a re-seeded code's
optimisation state is reset with it (its EMA statistics in the layer, its optimizer rows by
:func:`reset_optimizer_state_rows`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from geovq.nn.vq.codebook import squared_distances
from geovq.nn.vq.distributed import filled_on_rank0


@torch.no_grad()
def update_usage(steps_since_used: Tensor, ema_usage: Tensor | None, counts: Tensor, decay: float) -> None:
    """Count a training step with the per-code ``counts`` of its (global) batch; ``ema_usage``
    (None: threshold off) starts at the first step's counts."""
    steps_since_used += 1
    steps_since_used[counts > 0] = 0
    if ema_usage is not None:
        current = counts.to(ema_usage.dtype)
        averaged = ema_usage * decay + current * (1 - decay)
        ema_usage.copy_(torch.where(ema_usage < 0, current, averaged))


def dead_codes(steps_since_used: Tensor, ema_usage: Tensor | None, window: int | None, threshold: float) -> Tensor:
    """Boolean mask of the dead codes: unused for ``window`` steps (None: off), or with a usage
    below ``threshold`` times the average code's (``ema_usage`` None: off)."""
    dead = torch.zeros_like(steps_since_used, dtype=torch.bool)
    if window is not None:
        dead |= steps_since_used >= window
    if ema_usage is not None:
        dead |= (ema_usage >= 0) & (ema_usage < threshold * ema_usage.mean())
    return dead


def candidate_seeds(flat: Tensor, most: int) -> Tensor:
    """This step's encoder outputs ``flat`` (N x D), a random sample of ``most`` of them when there are more."""
    if flat.shape[0] > most:
        flat = flat[torch.randperm(flat.shape[0], device=flat.device)[:most]]
    return flat


@torch.no_grad()
def restart_seeds(pool: Tensor, codebook: Tensor, dead: Tensor, noise: float) -> Tensor | None:
    """New vectors for the ``dead`` codes (indices) from the candidate seeds ``pool`` (None: no restart)."""
    if dead.numel() == 0 or pool.shape[0] == 0:
        return None
    alive = torch.ones(codebook.shape[0], dtype=torch.bool, device=pool.device)
    alive[dead] = False
    # Favour the vectors the living codes represent worst (k-means++ style weights).
    if alive.any():
        weights = squared_distances(pool, codebook[alive]).min(dim=1).values.clamp(min=0)
    else:
        weights = torch.ones(pool.shape[0], device=pool.device)
    n = dead.numel()
    if int((weights > 0).sum()) >= n:
        chosen = torch.multinomial(weights, n, replacement=False)
    else:
        chosen = torch.randint(pool.shape[0], (n,), device=pool.device)
    scale = noise * float(pool.std()) if pool.shape[0] > 1 else noise
    return pool[chosen] + torch.randn(n, codebook.shape[1], device=pool.device) * max(scale, 1e-6)


@torch.no_grad()
def chosen_restarts(dead: Tensor, pool: Tensor, codebook: Tensor, noise: float) -> tuple[Tensor, Tensor]:
    """(indices, new vectors) of the codes to re-seed among the ``dead`` ones (a mask).

    Under data parallelism they are chosen on rank 0 and broadcast, so every rank re-seeds the
    same codes with the same vectors and resets the same optimizer rows.
    """

    def choose(packed: Tensor) -> None:  # a flag column, then the new vectors
        rows = torch.nonzero(dead).flatten()
        seeds = restart_seeds(pool, codebook, rows, noise)
        if seeds is not None:
            packed[rows, 0] = 1
            packed[rows, 1:] = seeds.to(packed.dtype)

    n_codes, dim = codebook.shape
    packed = filled_on_rank0(torch.zeros(n_codes, dim + 1, device=codebook.device, dtype=codebook.dtype), choose)
    rows = torch.nonzero(packed[:, 0] > 0).flatten()
    return rows, packed[rows, 1:]


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
