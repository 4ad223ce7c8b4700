"""Quantize a trained GridVAE's latent space: shared by stage=quantize and the fit-end callback.

1. Posterior means (and variances) of every image of each split, through the Trainer's devices
   (or, without a Trainer, on the model's device). What a later step uses there stays there: the
   test images and their latents, for the decoded MSEs, which are summed on that device.
2. The quantizer (geodesic K-Medoids or Euclidean K-Means, from geovq.quantize) is fitted once,
   on the training split's vectors, on rank zero.
3. Every vector of every split gets a code; the code grids and the codebook are written as
   artifacts, with metrics: utilization and code perplexity on the training codes, quantized test
   MSE (decoding the codebook vectors), the continuous test MSE for reference, the K-Medoids
   objective, and the time and peak memory of each step.

Artifacts: ``codebook.pt`` (kind ``codebook``: K x D vectors, medoid ids, timings, settings,
metrics) and ``codes.pt`` (kind ``code_grids``), both recording the GridVAE they came from.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geovq.artifacts import (
    CODEBOOK_FILE,
    CODES_FILE,
    Artifact,
    save_artifact,
    save_code_grids,
)
from geovq.data import SPLITS
from geovq.errors import ConfigError, config_section
from geovq.metrics.codebook import code_counts, usage_summary
from geovq.metrics.reconstruction import decoded_mse
from geovq.models.inference import map_images
from geovq.quantize import CodebookQuantizer
from geovq.quantize.resources import StepRecorder

log = logging.getLogger(__name__)


def latent_grids(model, images: Tensor, trainer=None, split: str = "", progress: bool = True,
                 keep_on_device: bool = False) -> tuple[Tensor, Tensor]:
    """Posterior means and variances, each N x D x H x W (on the CPU, or on the encoder's device
    with ``keep_on_device``)."""
    desc = f"latents ({split})" if progress else None
    both = map_images(model, images, lambda x: torch.cat(model.encode(x), dim=1), trainer, desc=desc,
                      keep_on_device=keep_on_device)
    mu, logvar = both.chunk(2, dim=1)
    return mu, logvar.exp()


def grid_to_rows(grid: Tensor) -> np.ndarray:
    """N x D x H x W (on any device) -> (N*H*W) x D float32 on the host, rows in (image, row,
    column) order."""
    return grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1]).cpu().numpy().astype(np.float32, copy=False)


def quantized_mse(model, codebook: np.ndarray, codes: Tensor, images: Tensor) -> float:
    """Per-pixel MSE of images decoded from their codebook vectors, over the whole split."""
    vectors = torch.as_tensor(codebook, dtype=torch.float32, device=model.device)
    return decoded_mse(lambda c: model.decode_codebook(vectors, c), codes.to(model.device), images)


def continuous_mse(model, mu: Tensor, images: Tensor) -> float:
    """Per-pixel MSE of images decoded from their posterior means."""
    return decoded_mse(lambda m: model.decode(m.to(model.device)), mu, images)


def quantize_vae(
    model,
    images: dict[str, Tensor],
    quantizer: CodebookQuantizer,
    out_dir: str | Path,
    *,
    vae_artifact: Artifact | None,
    config: dict | None,
    trainer=None,
    compare_assignments: bool = False,
    progress: bool = True,
) -> tuple[dict, np.ndarray | None]:
    """Fit ``quantizer`` on the training latents of ``model`` and write codebook and code grids.

    Every rank extracts latents (so DDP shards the work); only rank zero fits and writes. The
    model runs on the Trainer's device (without one: where it is) and goes back where it was.
    Returns the metrics and the per-code counts of the training codes (``({}, None)`` on other ranks).
    """
    home = model.device
    model.to(trainer.strategy.root_device if trainer is not None else home)
    try:
        return _quantize_on_device(model, images, quantizer, Path(out_dir), vae_artifact=vae_artifact, config=config,
                                   trainer=trainer, compare_assignments=compare_assignments, progress=progress)
    finally:
        model.to(home)


def _quantize_on_device(model, images, quantizer, out_dir: Path, *, vae_artifact, config, trainer,
                        compare_assignments: bool, progress: bool) -> tuple[dict, np.ndarray | None]:
    model.eval()
    # The test split is decoded again for every MSE: its images and latents stay on the device.
    images = {**images, "test": images["test"].to(model.device)}
    latents = {split: latent_grids(model, images[split], trainer, split, progress, keep_on_device=split == "test")
               for split in SPLITS}
    if trainer is not None and not trainer.is_global_zero:
        return {}, None
    grid_shape = latents["train"][0].shape[2:]
    vectors = {split: grid_to_rows(mu) for split, (mu, _) in latents.items()}
    variances = {split: grid_to_rows(var) for split, (_, var) in latents.items()} if quantizer.uses_variances else {}

    log.info("fitting %s on %d vectors of dimension %d", type(quantizer).__name__, *vectors["train"].shape)
    started = time.perf_counter()
    with config_section("quantizer", quantizer.get_params()):
        quantizer.fit(vectors["train"], variances=variances.get("train"))
    fit_seconds = time.perf_counter() - started

    recorder = StepRecorder()  # predict changes nothing in the quantizer: its cost is measured here

    def codes_of(split: str, **rule) -> Tensor:
        labels = quantizer.predict(vectors[split], variances=variances.get(split), **rule)
        return torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1, *grid_shape)

    with recorder.step("assignment"):
        grids = {split: codes_of(split) for split in SPLITS}
    timings = {**quantizer.timings_, **recorder.timings}
    codebook = np.asarray(quantizer.cluster_centers_, dtype=np.float32)
    n_codes = len(codebook)
    train_counts = code_counts(grids["train"], n_codes)
    metrics = code_metrics(model, codebook, grids, images, "quantized")
    metrics["continuous/test_mse"] = continuous_mse(model, latents["test"][0], images["test"])
    metrics["quantized/objective"] = float(quantizer.inertia_)
    metrics["time/fit"] = fit_seconds
    for step, seconds in timings.items():
        metrics[f"time/{step}"] = float(seconds)
    for step, nbytes in {**quantizer.peak_memory_, **recorder.peak_memory}.items():
        metrics[f"memory_mb/{step}"] = float(nbytes) / 2**20

    if compare_assignments:
        for rule in quantizer.assignment_rules:
            if rule == quantizer.get_params()["assignment"]:
                continue
            other = {split: codes_of(split, assignment=rule) for split in ("train", "test")}
            metrics.update(code_metrics(model, codebook, other, images, f"assign_{rule}"))

    inputs = {"vae": vae_artifact} if vae_artifact is not None else {}
    payload = {
        "vectors": torch.from_numpy(codebook),
        "method": type(quantizer).__name__,
        "settings": {k: v for k, v in quantizer.get_params(deep=False).items() if v is None or isinstance(v, (int, float, str, bool))},
        "metrics": dict(metrics),
        "train_counts": torch.as_tensor(train_counts),
        "timings": {k: float(v) for k, v in timings.items()},
    }
    for name, value in quantizer.artifact_fields().items():
        payload[name] = torch.as_tensor(value, dtype=torch.int64) if isinstance(value, np.ndarray) else value
    codebook_artifact = save_artifact(out_dir / CODEBOOK_FILE, "codebook", payload, stage="quantize", config=config, inputs=inputs)
    save_code_grids(
        out_dir / CODES_FILE, grids, n_codes, stage="quantize", config=config,
        inputs={**inputs, "codebook": codebook_artifact},
    )
    return metrics, train_counts


def code_metrics(model, codebook: np.ndarray, grids: dict[str, Tensor], images: dict[str, Tensor], prefix: str) -> dict:
    summary = usage_summary(code_counts(grids["train"], len(codebook)))
    metrics = {f"{prefix}/train_{key}": value for key, value in summary.items()}
    metrics[f"{prefix}/test_mse"] = quantized_mse(model, codebook, grids["test"], images["test"])
    return metrics


def check_quantizer(quantizer, section: str = "quantizer") -> None:
    """Refuse a quantizer that cannot work before any latent is extracted (or any VAE trained);
    ``section`` is the config key that built it, which the message names."""
    if not isinstance(quantizer, CodebookQuantizer):
        raise ConfigError(
            f"quantizer= builds a {type(quantizer).__name__}, which is not a geovq.quantize.CodebookQuantizer; "
            "use quantizer=geodesic or quantizer=kmeans (or a config of your own subclass)."
        )
    with config_section(section):
        quantizer.check_params()  # e.g. more clusters than landmarks
