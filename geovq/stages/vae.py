"""stage=vae: train the GridVAE, test it on the full test set, save it for the next stages.

Writes to the run folder: checkpoints/ (last and best by val/loss), csv/ (metrics every epoch),
model.pt (the best weights as a geovq artifact), reconstructions.png, kl_per_dimension.png,
metrics.json, config.yaml. Besides the test loss and MSE it reports the rate of the test
posteriors (``rate/*``, geovq.metrics.rate) against ln K of the codebook ``quantizer=`` would
build from it, since a VAE carrying far fewer nats per position than ln K wastes the codebook.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from geovq.callbacks.quantize_on_fit_end import QuantizeOnFitEnd
from geovq.loggers import log_figures, log_final_and_finish
from geovq.metrics.rate import ACTIVE_KL, kl_per_dimension, rate_summary
from geovq.models.grid_vae import GridVAE
from geovq.models.inference import map_images
from geovq.run_folder import output_dir, write_run_files
from geovq.training import Trained, train_and_test
from geovq.viz.images import save_figure
from geovq.viz.rate import kl_per_dimension_figure
from geovq.viz.reconstructions import save_reconstructions


def run(cfg: DictConfig) -> dict:
    trained = train_and_test(cfg, GridVAE)
    metrics = trained.metrics
    for callback in trained.trainer.callbacks:
        if isinstance(callback, QuantizeOnFitEnd):  # callbacks=quantize: its codebook's figures
            metrics.update(callback.metrics)
    mean_kl, rate = rate_on_test_split(trained, cfg.quantizer.get("n_clusters") if cfg.get("quantizer") else None)
    metrics.update({f"rate/{key}": value for key, value in rate.items()})
    if trained.trainer.is_global_zero:
        if cfg.figures:
            save_reconstructions({"GridVAE (posterior mean)": trained.model}, trained.datamodule, output_dir(cfg) / "reconstructions.png")
            figure = save_figure(kl_per_dimension_figure(mean_kl, rate, ACTIVE_KL), output_dir(cfg) / "kl_per_dimension.png")
            log_figures(trained.trainer.loggers, [figure])
        write_run_files(cfg, metrics)
    log_final_and_finish(trained.trainer, metrics)
    return metrics


def rate_on_test_split(trained: Trained, n_codes: int | None) -> tuple[torch.Tensor, dict]:
    """Each latent dimension's KL per position averaged over the test posteriors, and the rate
    figures (every rank encodes its shard of the test split under DDP)."""
    model, images = trained.model, trained.datamodule.split("test").tensors[0]
    kl = map_images(model, images, lambda x: kl_per_dimension(*model.encode(x)), trained.trainer)
    with torch.no_grad():
        n_positions = model.encode(images[:1].to(model.device))[0][0, 0].numel()
    mean_kl = kl.mean(dim=0)
    return mean_kl, rate_summary(mean_kl, n_positions, n_codes)

