"""Log the per-code usage histogram of every epoch to every active logger.

Always: ``<run folder>/code_usage.csv`` (split, epoch, code, count), rewritten atomically each
epoch. With W&B: a histogram of counts per code and the scalar utilization / perplexity, so the
run comparison of a sweep shows codebook usage side by side.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from geovq.artifacts import atomic_write_text
from geovq.metrics.codebook import usage_summary


class CodebookUsageLogger(Callback):
    """Reads ``pl_module.epoch_code_counts[split]`` at the end of each train/val epoch."""

    def __init__(self, path: str | Path, splits: tuple[str, ...] = ("train", "val")):
        self.path = Path(path)
        self.splits = tuple(splits)
        self.rows: list[tuple[str, int, int, int]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._record(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, pl_module, "val")

    def _record(self, trainer: L.Trainer, pl_module, split: str) -> None:
        if split not in self.splits or not trainer.is_global_zero:
            return
        counts = np.asarray(pl_module.epoch_code_counts[split])
        epoch = trainer.current_epoch
        self.rows = [row for row in self.rows if not (row[0] == split and row[1] == epoch)]
        self.rows.extend((split, epoch, code, int(count)) for code, count in enumerate(counts))
        self._write_csv()
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                log_to_wandb(logger, split, counts, trainer.global_step)

    def _write_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["split", "epoch", "code", "count"])
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())


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
