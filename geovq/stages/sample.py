"""stage=sample: draw code grids from a trained prior, decode them into images.

The prior's provenance leads to everything else: its code grids, and from them the codebook
and GridVAE decoder (pipeline A) or the VQ-VAE (pipeline B). ``stage.decoder`` /
``stage.codebook`` may point at those files explicitly; a file from another run is refused.
Writes samples.png (the first 64), samples.pt (kind ``samples``: uint8 images and the codes,
with provenance tying them to prior, codebook and decoder), metrics.json and config.yaml.
"""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig

from geovq.artifacts import MODEL_FILE, SAMPLES_FILE, save_artifact
from geovq.errors import ConfigError, config_section
from geovq.inputs import codes_to_decode, given_or_newest
from geovq.loggers import log_without_trainer
from geovq.metrics.codebook import code_counts, usage_summary
from geovq.models.decoding import code_decoder
from geovq.models.io import load_model
from geovq.run_folder import output_dir, result_config, write_run_files
from geovq.viz.images import image_grid_figure, save_figure


@torch.no_grad()
def run(cfg: DictConfig) -> dict:
    options = cfg.stage
    if not isinstance(options.n_samples, int) or not isinstance(options.batch_size, int) or options.n_samples < 1 or options.batch_size < 1:
        raise ConfigError(f"stage.n_samples and stage.batch_size must be >= 1, got {options.n_samples} and {options.batch_size}.")
    prior_path = given_or_newest(cfg, options.prior, "prior", MODEL_FILE, kind="prior")
    prior, prior_art = load_model(prior_path, "prior")
    codes_art = codes_to_decode(prior_art, options.codes)
    decode, decoder_inputs, label = code_decoder(codes_art, options.decoder, options.codebook)

    started = time.perf_counter()
    with config_section("stage"):
        grids = prior.sample(options.n_samples, options.temperature, options.top_k, seed=cfg.seed, batch_size=options.batch_size)
    sample_seconds = time.perf_counter() - started
    images = torch.cat([torch.sigmoid(decode(grids[s : s + options.batch_size])) for s in range(0, len(grids), options.batch_size)])
    decode_seconds = time.perf_counter() - started - sample_seconds

    usage = usage_summary(code_counts(grids, prior.hparams.n_codes))
    metrics = {
        "sample/n": len(grids),
        "sample/seconds": sample_seconds,
        "sample/decode_seconds": decode_seconds,
        "sample/grids_per_second": len(grids) / max(sample_seconds, 1e-9),
        "sample/codes_used": usage["codes_used"],
        "sample/code_perplexity": usage["perplexity"],
    }
    payload = {
        "images": (images * 255).round().to(torch.uint8),
        "codes": grids.to(torch.int16),
        "settings": {"temperature": float(options.temperature), "top_k": options.top_k, "seed": int(cfg.seed)},
    }
    save_artifact(
        output_dir(cfg) / SAMPLES_FILE, "samples", payload, stage="sample", config=result_config(cfg),
        inputs={"prior": prior_art, "codes": codes_art, **decoder_inputs},
    )
    if cfg.figures:
        fig = image_grid_figure(images[:64], title=f"samples: {label}, T={options.temperature}, top-k={options.top_k}")
        save_figure(fig, output_dir(cfg) / "samples.png")
    write_run_files(cfg, metrics)
    log_without_trainer(cfg, metrics, [output_dir(cfg) / "samples.png"])
    return metrics
