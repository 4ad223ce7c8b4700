"""Apply a model to every image of a split through the Trainer's devices, in dataset order.

Each process takes a contiguous shard of the split; under DDP the shards are all-gathered, so
every rank ends with the whole split in its original order (rank zero then writes artifacts).
"""

from __future__ import annotations

import math
from typing import Callable

import lightning as L
import torch
from torch import Tensor
from tqdm.auto import tqdm

from geovq.batching import INFERENCE_BATCH


@torch.no_grad()
def map_images(
    module: L.LightningModule,
    images: Tensor,
    fn: Callable[[Tensor], Tensor],
    trainer: L.Trainer | None = None,
    batch_size: int = INFERENCE_BATCH,
    desc: str | None = None,
    keep_on_device: bool = False,
) -> Tensor:
    """``fn`` applied to ``images`` in batches on ``module``'s device; results on the CPU, or
    with ``keep_on_device`` on that device (for a next step that uses them there)."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    per_rank = math.ceil(len(images) / world)
    shard = images[rank * per_rank : (rank + 1) * per_rank]
    # After fit, Lightning's teardown has moved the module back to the CPU: put it on this
    # process's device for the extraction, and back where it was afterwards.
    home = module.device
    if trainer is not None:
        module.to(trainer.strategy.root_device)
    was_training = module.training
    module.eval()
    outputs = []
    starts = range(0, len(shard), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None or rank != 0, leave=False):
        out = fn(shard[start : start + batch_size].to(module.device))
        outputs.append(out if keep_on_device else out.cpu())
    module.train(was_training)
    local = torch.cat(outputs) if outputs else torch.empty(0, device=module.device if keep_on_device else "cpu")
    if world == 1:
        module.to(home)
        return local
    # Pad every shard to the same length so that all_gather can stack them, then drop the padding.
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=module.device)
    padded[: len(local)] = local
    gathered = module.all_gather(padded)
    gathered = gathered if keep_on_device else gathered.cpu()
    module.to(home)
    return gathered.reshape(world * per_rank, *local.shape[1:])[: len(images)]
