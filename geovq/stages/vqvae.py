"""stage=vqvae: train the end-to-end VQ-VAE (pipeline B), write its model and code grids.

Writes to the run folder: checkpoints/, csv/, code_usage.csv (per-code counts every epoch),
model.pt (kind ``vqvae``), codes.pt (kind ``code_grids``: train/val/test N x 7 x 7, the same
format as the quantize stage's), reconstructions.png, metrics.json, config.yaml.

``stage.init_codes`` (a codes.pt of stage=quantize, or ``quantize``: the newest one) starts the
VQ-VAE from the GridVAE and the a posteriori codebook behind those codes (``VQVAE.init_from_grid_vae``),
then trains it end to end (model=vqvae_hybrid). codes.pt records those codes as its input
``init_codes``; metrics.json gets ``init/test_code_agreement`` (the fraction of the test codes of
stage=quantize that the started model reproduces: 1 with nearest-code assignment, less with the
geodesic landmark assignment) and ``init/test_mse`` (its quantized test MSE before training).
"""

from __future__ import annotations

from omegaconf import DictConfig

from geovq.artifacts import CODES_FILE, save_code_grids
from geovq.callbacks.codebook_usage import CodebookUsageLogger
from geovq.callbacks.start_from_aposteriori import StartFromAposteriori
from geovq.data import SPLITS
from geovq.inputs import init_codes_path
from geovq.loggers import log_final_and_finish
from geovq.metrics.codebook import code_counts, usage_summary
from geovq.models.inference import map_images
from geovq.models.vqvae import VQVAE
from geovq.run_folder import output_dir, result_config, write_run_files
from geovq.training import train_and_test
from geovq.viz.reconstructions import save_reconstructions


def run(cfg: DictConfig) -> dict:
    usage_logger = CodebookUsageLogger(output_dir(cfg) / "code_usage.csv")
    codes_path = init_codes_path(cfg)
    start = StartFromAposteriori(codes_path) if codes_path else None
    trained = train_and_test(cfg, VQVAE, extra_callbacks=[usage_logger, *([start] if start else [])])
    model, datamodule, trainer, metrics = trained.model, trained.datamodule, trained.trainer, trained.metrics
    grids = {
        split: map_images(model, datamodule.split(split).tensors[0], model.codes, trainer, desc=f"codes ({split})")
        for split in SPLITS
    }
    # Usage of the final codebook over all training images (the paper's utilization figure).
    for key, value in usage_summary(code_counts(grids["train"], model.n_codes)).items():
        metrics[f"codes/train_{key}"] = value
    inputs = {"vqvae": trained.model_artifact}
    if start is not None:
        metrics.update(start.metrics)
        inputs["init_codes"] = start.codes
    if trainer.is_global_zero:
        save_code_grids(
            output_dir(cfg) / CODES_FILE, grids, model.n_codes, stage="vqvae", config=result_config(cfg),
            inputs=inputs,
        )
        if cfg.figures:
            save_reconstructions({"VQ-VAE": model}, datamodule, output_dir(cfg) / "reconstructions.png")
        write_run_files(cfg, metrics)
    log_final_and_finish(trainer, metrics)
    return metrics
