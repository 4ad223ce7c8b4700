"""stage=vae: train the GridVAE, test it on the full test set, save it for the next stages.

Writes to the run folder: checkpoints/ (last and best by val/loss), csv/ (metrics every epoch),
model.pt (the best weights as a geovq artifact), reconstructions.png, metrics.json, config.yaml.
"""

from __future__ import annotations

from omegaconf import DictConfig

from geovq.artifacts import MODEL_FILE
from geovq.loggers import log_final_and_finish
from geovq.models.grid_vae import GridVAE
from geovq.models.io import save_model
from geovq.run_folder import output_dir, result_config, write_run_files
from geovq.training import train_and_test
from geovq.viz.reconstructions import save_reconstructions


def run(cfg: DictConfig) -> dict:
    model, datamodule, trainer, metrics = train_and_test(cfg, GridVAE)
    for callback in trainer.callbacks:
        metrics.update(getattr(callback, "metrics", {}))  # e.g. QuantizeOnFitEnd's
    if trainer.is_global_zero:
        save_model(output_dir(cfg) / MODEL_FILE, model, "grid_vae", stage="vae", config=result_config(cfg))
        if cfg.figures:
            save_reconstructions({"GridVAE (posterior mean)": model}, datamodule, output_dir(cfg) / "reconstructions.png")
        write_run_files(cfg, metrics)
    log_final_and_finish(trainer, metrics)
    return metrics

