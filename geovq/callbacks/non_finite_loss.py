"""Stop training with a clear message when the loss stops being a finite number."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from geovq.errors import TrainingError


class StopOnNonFiniteLoss(Callback):
    """Raise :class:`TrainingError` naming the step when the training loss is NaN or infinite.

    Checked before the backward pass, so the bad step never reaches the weights, and before the
    next checkpoint is written, so the last good checkpoint stays untouched.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module, loss) -> None:
        value = float(loss.detach())
        # Every rank takes the same decision, so no rank is left waiting in a collective.
        if not trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            return
        kept = _last_checkpoint(trainer)
        raise TrainingError(
            f"the training loss became {value} at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}), before its optimizer step. "
            + (f"The last good checkpoint is kept at {kept}. " if kept else "No checkpoint was written yet. ")
            + f"Resume with gradient clipping: hydra.run.dir={trainer.default_root_dir} ckpt_path=last "
            "trainer.gradient_clip_val=1.0; or start a new run with a lower learning rate "
            "(model.optimizer.lr=...); a resumed run keeps its optimizer settings."
        )


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            path = callback.last_model_path or callback.best_model_path
            if path and Path(path).exists():
                return path
    return None
