"""What the geovq LightningModules share: optimizers from Hydra partials, one step per split.

A subclass implements ``_step(batch, split) -> loss`` for split in train/val/test and calls
``self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)`` in its own
``__init__`` (Lightning reads the constructor arguments from that frame). The optimizer and
scheduler partials stay out of the hparams so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import json
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau

# Checkpoint keys of the optimizer's and the learning-rate schedule's settings, so that a resumed
# run can tell they changed (a cosine schedule's T_max follows trainer.max_epochs; the prior's
# warm-up-then-plateau schedule holds no epoch count, so a higher cap resumes it).
OPTIMIZER_SETTINGS = "geovq_optimizer_settings"
SCHEDULE_SETTINGS = "geovq_schedule_settings"
# Checkpoint key of the module's class, so that a checkpoint of another model is refused by name.
MODEL_CLASS = "geovq_model_class"


class GeovqModule(L.LightningModule):
    # What a reduce-on-plateau schedule watches (Lightning steps it with this logged value).
    scheduler_monitor = "val/loss"

    def __init__(self, optimizer: Any = None, scheduler: Any = None):
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def _step(self, batch, split: str) -> Tensor:
        raise NotImplementedError

    def saved_model(self) -> L.LightningModule:
        """The model a training stage saves as its model.pt: this module, or the model it trains a
        part of (DecoderOnCodes: the GridVAE)."""
        return self

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        # Test figures in float32 whatever precision the model trained in (mixed precision keeps
        # the weights in float32): bf16 autocast would round them by up to ~1%, and a reported
        # figure should not depend on how the model was trained.
        with torch.autocast(self.device.type, enabled=False):
            self._step(batch, "test")

    def optimizer_settings(self) -> dict:
        """The configured optimizer's class and keyword arguments, as plain values."""
        return partial_settings(self.optimizer_factory)

    def schedule_settings(self) -> dict:
        """The configured learning-rate scheduler's class and keyword arguments, as plain values."""
        return partial_settings(self.scheduler_factory)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[OPTIMIZER_SETTINGS] = self.optimizer_settings()
        checkpoint[SCHEDULE_SETTINGS] = self.schedule_settings()
        checkpoint[MODEL_CLASS] = type(self).__name__

    def configure_optimizers(self):
        """The configured optimizer (Adam(1e-3) when none) and, if configured, an epoch scheduler;
        a reduce-on-plateau one is stepped with ``scheduler_monitor`` after each validation."""
        if self.optimizer_factory is None:
            optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        else:
            optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}


def partial_settings(factory) -> dict:
    """A ``functools.partial``'s class and keyword arguments as plain values ({} for None)."""
    if factory is None:
        return {}
    settings = {"_target_": f"{factory.func.__module__}.{factory.func.__qualname__}", **factory.keywords}
    return json.loads(json.dumps(settings, default=str))
