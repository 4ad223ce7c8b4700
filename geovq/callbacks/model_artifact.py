"""Write a training stage's model.pt, once, when its fit ends.

At ``on_fit_end`` the module gets the weights of the best checkpoint (by the monitored metric),
and rank zero saves them as the stage's model artifact. Every training stage writes its model.pt
this way, and only this way; a callback that runs later in the same fit end (the quantization
stage) reads the artifact from here to record where its codebook came from.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from geovq.artifacts import Artifact
from geovq.models.io import model_kind, save_model

# Checkpoint key of the stage that trained it.
CHECKPOINT_STAGE = "geovq_stage"


class SaveBestModel(Callback):
    def __init__(self, path: str | Path, stage: str, config: dict):
        self.path = Path(path)
        self.stage = stage
        self.config = config  # the run's result config, recorded as provenance
        self.artifact: Artifact | None = None  # set on rank zero when the fit ends

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_STAGE] = self.stage  # a resume in another stage is refused by name

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        best = best_checkpoint(trainer)
        if best:
            state = torch.load(best, map_location=pl_module.device, weights_only=True)["state_dict"]
            pl_module.load_state_dict(state)
        if trainer.is_global_zero:
            inputs = trainer.datamodule.input_artifacts if trainer.datamodule is not None else {}
            model = pl_module.saved_model()
            self.artifact = save_model(
                self.path, model, model_kind(model), stage=self.stage, config=self.config, inputs=inputs
            )
        trainer.strategy.barrier("save_best_model")


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """The best checkpoint of the monitored metric, when there is one on disk."""
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor and callback.best_model_path:
            if Path(callback.best_model_path).is_file():
                return callback.best_model_path
    return None
