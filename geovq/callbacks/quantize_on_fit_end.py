"""The quantization stage as a Lightning callback: quantize the GridVAE when its fit ends.

Non-gradient: at ``on_fit_end`` it loads the best checkpoint's weights (the ones stage=vae saves
as model.pt), extracts the posterior means of every image through the Trainer's devices (under
DDP every rank encodes its shard and the shards are gathered), fits the quantizer once on rank
zero and writes codebook.pt and codes.pt beside the checkpoints. The same code runs alone as
stage=quantize on a saved GridVAE.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from geovq.aposteriori import SPLITS, check_quantizer, quantize_vae
from geovq.artifacts import MODEL_FILE
from geovq.errors import ConfigError
from geovq.models.io import save_model


class QuantizeOnFitEnd(Callback):
    def __init__(self, quantizer, output_dir: str | Path, compare_assignments: bool = False):
        check_quantizer(quantizer)
        self.quantizer = quantizer
        self.output_dir = Path(output_dir)
        self.compare_assignments = compare_assignments
        self.run_config: dict | None = None  # set by the stage, for provenance
        self.metrics: dict = {}

    def bind_run_config(self, config: dict) -> None:
        self.run_config = config

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        from geovq.models.grid_vae import GridVAE

        if not isinstance(pl_module, GridVAE):
            raise ConfigError(
                f"callbacks=quantize quantizes a GridVAE's latent space, but this run trains a "
                f"{type(pl_module).__name__}; use it with stage=vae."
            )

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:
            state = torch.load(best, map_location=pl_module.device, weights_only=True)["state_dict"]
            pl_module.load_state_dict(state)
        # The same artifact stage=vae writes after testing (same weights and config, same bytes),
        # written here first so that the codebook can name the GridVAE it was made from.
        vae_artifact = None
        if trainer.is_global_zero:
            vae_artifact = save_model(self.output_dir / MODEL_FILE, pl_module, "grid_vae", stage="vae", config=self.run_config)
        datamodule = trainer.datamodule
        images = {split: datamodule.split(split).tensors[0] for split in SPLITS}
        self.metrics, _ = quantize_vae(
            pl_module,
            images,
            self.quantizer,
            self.output_dir,
            vae_artifact=vae_artifact,
            config={"quantizer": self.quantizer.settings(), "vae_run": self.run_config},
            trainer=trainer,
            compare_assignments=self.compare_assignments,
        )
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in self.metrics.items()}, step=trainer.global_step)
        trainer.strategy.barrier("quantize_on_fit_end")
