"""stage=vae: train the GridVAE, test it on the full test set, save it for the next stages.

Writes to the run folder: checkpoints/ (last and best by val/loss), csv/ (metrics every epoch),
model.pt (the best weights as a geovq artifact), reconstructions.png, metrics.json, config.yaml.
"""

from __future__ import annotations

from omegaconf import DictConfig

from geovq.callbacks.quantize_on_fit_end import QuantizeOnFitEnd
from geovq.loggers import log_final_and_finish
from geovq.models.grid_vae import GridVAE
from geovq.run_folder import output_dir, write_run_files
from geovq.training import train_and_test
from geovq.viz.reconstructions import save_reconstructions


def run(cfg: DictConfig) -> dict:
    trained = train_and_test(cfg, GridVAE)
    metrics = trained.metrics
    for callback in trained.trainer.callbacks:
        if isinstance(callback, QuantizeOnFitEnd):  # callbacks=quantize: its codebook's figures
            metrics.update(callback.metrics)
    if trained.trainer.is_global_zero:
        if cfg.figures:
            save_reconstructions({"GridVAE (posterior mean)": trained.model}, trained.datamodule, output_dir(cfg) / "reconstructions.png")
        write_run_files(cfg, metrics)
    log_final_and_finish(trained.trainer, metrics)
    return metrics
