"""What a training run cost: its optimizer steps and the training examples (images, or code grids)
it saw, summed over its epochs and its processes. A study's report adds them up per method
(geovq/study/budgets.py), so that a method with a head start shows it."""

from __future__ import annotations

import math


def training_budget(trainer, datamodule) -> dict:
    """``train/steps`` (optimizer steps) and ``train/images_seen``: the examples of one epoch (the
    train split, or the part of it that ``limit_train_batches`` leaves) times the epochs run."""
    loader = datamodule.train_dataloader()
    per_epoch = float(len(loader.dataset))
    batches = trainer.num_training_batches
    if loader.batch_size and isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0:
        per_epoch = min(per_epoch, float(batches * loader.batch_size * trainer.world_size))
    return {"train/steps": float(trainer.global_step), "train/images_seen": per_epoch * trainer.current_epoch}
