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
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from geovq.artifacts import atomic_write_text
from geovq.loggers import log_to_wandb


class CodebookUsageLogger(Callback):
    """Reads ``pl_module.epoch_code_counts[split]`` at the end of each train/val epoch."""

    def __init__(self, path: str | Path, splits: tuple[str, ...] = ("train", "val")):
        self.path = Path(path)
        self.splits = tuple(splits)
        # A resumed run continues the file of the interrupted one (its later epochs are replaced).
        self.rows: list[tuple[str, int, int, int]] = _read_rows(self.path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._record(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, pl_module, "val")

    def _record(self, trainer: L.Trainer, pl_module, split: str) -> None:
        if split not in self.splits:
            return
        counts = torch.as_tensor(pl_module.epoch_code_counts[split])
        if trainer.world_size > 1:  # every rank takes part in the gather; rank zero writes
            counts = pl_module.all_gather(counts.to(pl_module.device)).reshape(-1, len(counts)).sum(0).cpu()
        if not trainer.is_global_zero:
            return
        counts = counts.numpy()
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


def _read_rows(path: Path) -> list[tuple[str, int, int, int]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [(row["split"], int(row["epoch"]), int(row["code"]), int(row["count"])) for row in csv.DictReader(handle)]

