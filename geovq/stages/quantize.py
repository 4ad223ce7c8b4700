"""stage=quantize: a posteriori quantization of a saved GridVAE (pipeline A, step 2).

Reads the GridVAE ``model.pt`` named by ``stage.vae`` (default: the newest one under
``outputs/vae``), so that ``-m stage=quantize quantizer.n_clusters=64,128,256`` reuses one trained
VAE. Writes codebook.pt, codes.pt, metrics.json and config.yaml in its run folder.

The encoder's forward pass (and the decoded MSEs) run on the device ``trainer.accelerator``
names; the quantizer's neighbour searches on ``quantizer.device`` (see geovq/quantize/device.py).
"""

from __future__ import annotations

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from geovq.aposteriori import check_quantizer, quantize_vae
from geovq.artifacts import MODEL_FILE
from geovq.data import SPLITS
from geovq.errors import ConfigError, config_section
from geovq.inputs import given_or_newest
from geovq.loggers import log_without_trainer
from geovq.models.io import load_model
from geovq.quantize.device import resolve_device
from geovq.run_folder import output_dir, result_config, write_run_files


def encoder_device(accelerator) -> torch.device:
    """The device of the encoder's forward pass: the one ``trainer.accelerator`` names."""
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator} but torch sees no CUDA GPU here; "
                              "use trainer=cpu (or trainer.accelerator=auto).")
        return torch.device("cuda")
    if accelerator in ("auto", "cpu"):
        return resolve_device(accelerator)
    raise ConfigError(f"stage=quantize runs its encoder with trainer.accelerator=cpu, gpu or auto, got {accelerator!r}; "
                      "use trainer=cpu or trainer=gpu.")


def run(cfg: DictConfig) -> dict:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    device = encoder_device(cfg.trainer.accelerator)
    quantizer = instantiate(cfg.quantizer)
    check_quantizer(quantizer)  # before any work: e.g. quantizer.device=cuda without a GPU
    vae_path = given_or_newest(cfg, cfg.stage.vae, "vae", MODEL_FILE, kind="grid_vae")
    model, vae_artifact = load_model(vae_path, "grid_vae")
    with config_section("data"):
        datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    images = {split: datamodule.split(split).tensors[0] for split in SPLITS}
    model = model.to(device)
    metrics, train_counts = quantize_vae(
        model,
        images,
        quantizer,
        output_dir(cfg),
        vae_artifact=vae_artifact,
        config=result_config(cfg),
        compare_assignments=cfg.stage.compare_assignments,
        progress=cfg.quantizer.progress,
    )
    write_run_files(cfg, metrics)
    log_without_trainer(cfg, metrics, usage={"quantized/train": train_counts})
    return metrics
