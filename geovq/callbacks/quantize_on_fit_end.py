"""The quantization stage as a Lightning callback: quantize the GridVAE when its fit ends.

Non-gradient: at ``on_fit_end``, after SaveBestModel has put the best checkpoint's weights in the
module and written them as model.pt, it extracts the posterior means of every image through the Trainer's devices (under
DDP every rank encodes its shard and the shards are gathered), fits the quantizer once on rank
zero and writes codebook.pt and codes.pt beside the checkpoints. The same code runs alone as
stage=quantize on a saved GridVAE.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from geovq.aposteriori import SPLITS, check_quantizer, quantize_vae
from geovq.callbacks.model_artifact import SaveBestModel
from geovq.errors import ConfigError
from geovq.models.grid_vae import GridVAE


class QuantizeOnFitEnd(Callback):
    def __init__(self, quantizer, output_dir: str | Path, compare_assignments: bool = False, progress: bool = True):
        check_quantizer(quantizer)
        self.quantizer = quantizer
        self.output_dir = Path(output_dir)
        self.compare_assignments = compare_assignments
        self.progress = progress
        self.metrics: dict = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if not isinstance(pl_module, GridVAE):
            raise ConfigError(
                f"callbacks=quantize quantizes a GridVAE's latent space, but this run trains a "
                f"{type(pl_module).__name__}; use it with stage=vae."
            )
        self._model_saver(trainer)  # fail now, not after training

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        # SaveBestModel's on_fit_end ran first: the module holds the best weights, saved as model.pt.
        saver = self._model_saver(trainer)
        datamodule = trainer.datamodule
        images = {split: datamodule.split(split).tensors[0] for split in SPLITS}
        self.metrics, _ = quantize_vae(
            pl_module,
            images,
            self.quantizer,
            self.output_dir,
            vae_artifact=saver.artifact,
            config=saver.config,  # the run's config, quantizer included, as stage=quantize records it
            trainer=trainer,
            compare_assignments=self.compare_assignments,
            progress=self.progress,
        )
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics, step=trainer.global_step)
        trainer.strategy.barrier("quantize_on_fit_end")

    @staticmethod
    def _model_saver(trainer: L.Trainer) -> SaveBestModel:
        for callback in trainer.callbacks:
            if isinstance(callback, SaveBestModel):
                return callback
        raise ConfigError("callbacks=quantize needs the GridVAE saved when its fit ends; use it with stage=vae.")
