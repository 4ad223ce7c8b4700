"""stage=vae: train the GridVAE, test it on the full test set, save it for the next stages.

Writes to the run folder: checkpoints/ (last and best by val/loss), csv/ (metrics every epoch),
model.pt (the best weights as a geovq artifact), reconstructions.png, metrics.json, config.yaml.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from geovq.artifacts import MODEL_FILE, save_model
from geovq.models.grid_vae import GridVAE
from geovq.stages.lightning_setup import log_final_and_finish, output_dir, result_config, train_and_test, write_run_files
from geovq.viz.images import image_rows_figure, save_figure


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


@torch.no_grad()
def save_reconstructions(models: dict, datamodule, path, n: int = 16) -> None:
    """Test images above each model's reconstruction of them."""
    images = datamodule.split("test").tensors[0][:n]
    rows = {"test images": images}
    for label, model in models.items():
        rows[label] = model.to("cpu").eval().reconstruct(images)
    save_figure(image_rows_figure(rows), path)
