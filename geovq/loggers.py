"""Sending a stage's figures to its loggers (CSV, W&B) and closing them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from geovq.metrics.codebook import usage_summary
from geovq.run_folder import as_floats
from geovq.training import instantiate_list


def log_final_and_finish(trainer: L.Trainer, metrics: dict) -> None:
    """Log a training stage's final figures (the test ones and what the stage added) and close
    its loggers, so that the next stage run in this process gets a W&B run of its own."""
    for logger in trainer.loggers:
        logger.log_metrics({f"final/{k}": v for k, v in as_floats(metrics).items()}, step=trainer.global_step)
    finish_loggers(trainer.loggers)


def log_without_trainer(cfg: DictConfig, metrics: dict, figures: Iterable[Path] = (), usage: dict | None = None) -> None:
    """Send a non-training stage's metrics to the configured loggers; W&B also gets the figures
    and the code-usage histograms (``usage``: name -> per-code counts)."""
    loggers = instantiate_list(cfg.get("logger"))
    for logger in loggers:
        logger.log_metrics(as_floats(metrics), step=0)
        log_figures([logger], figures)
        if isinstance(logger, WandbLogger):
            for name, counts in (usage or {}).items():
                log_to_wandb(logger, name, counts, 0)
        logger.save()
    finish_loggers(loggers)


def log_figures(loggers, figures: Iterable[Path]) -> None:
    """Send saved figures to the W&B loggers among ``loggers`` (as ``figures/<file stem>``)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for figure in figures:
                if Path(figure).exists():
                    logger.log_image(key=f"figures/{Path(figure).stem}", images=[str(figure)])


def finish_loggers(loggers) -> None:
    """Close each logger; a W&B run is finished so the next stage in this process starts its own."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def log_to_wandb(logger: WandbLogger, split: str, counts: np.ndarray, step: int) -> None:
    import wandb

    summary = usage_summary(counts)
    edges = np.arange(len(counts) + 1)
    logger.experiment.log(
        {
            f"{split}/code_usage": wandb.Histogram(np_histogram=(counts.astype(np.float64), edges)),
            f"{split}/utilization": summary["utilization"],
            f"{split}/code_perplexity": summary["perplexity"],
            "trainer/global_step": step,
        }
    )
