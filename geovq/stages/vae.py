"""stage=vae: train the GridVAE, test it on the full test set, save it for the next stages.

Writes to the run folder: checkpoints/ (last and best by val/loss), metrics.csv (every epoch),
model.pt (the best weights as a geovq artifact), reconstructions.png, metrics.json, config.yaml.
"""

from __future__ import annotations

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from geovq.artifacts import save_model
from geovq.errors import ConfigError
from geovq.models.grid_vae import GridVAE
from geovq.stages.lightning_setup import (
    as_floats,
    best_checkpoint,
    build_trainer,
    output_dir,
    resolve_ckpt_path,
    result_config,
    write_run_files,
)
from geovq.viz.images import image_rows_figure, save_figure

MODEL_FILE = "model.pt"


def run(cfg: DictConfig) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    model = instantiate(cfg.model)
    if not isinstance(model, GridVAE):
        raise ConfigError(f"stage=vae trains a GridVAE but model= builds a {type(model).__name__}; use model=grid_vae.")
    trainer = build_trainer(cfg)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg))
    best = best_checkpoint(trainer)
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    metrics = as_floats(results[0]) if results else {}
    if trainer.is_global_zero:
        save_model(output_dir(cfg) / MODEL_FILE, model, "grid_vae", stage="vae", config=result_config(cfg))
        if cfg.get("figures", True):
            save_reconstructions(model, datamodule, output_dir(cfg) / "reconstructions.png")
        write_run_files(cfg, metrics)
    return metrics


@torch.no_grad()
def save_reconstructions(model: GridVAE, datamodule, path, n: int = 16) -> None:
    images = datamodule.split("test").tensors[0][:n]
    model = model.to("cpu").eval()
    rows = {"test images": images, "GridVAE (posterior mean)": model.reconstruct(images)}
    save_figure(image_rows_figure(rows), path)
