"""A step of ``pipeline.parallel=N`` follows the thread count its scheduler gives it while it runs
(``pipeline.lend_idle_cores=true``).

A study's steps start with the cores split between the N places. When a place falls idle and no
step is ready to take it (at a study's tail, the last prior still training while the others are
done), the scheduler (geovq/study/parallel.py) lends that place's threads to the training steps
running by writing a larger count into the file that ``GEOVQ_THREADS_FILE`` names; when a step
becomes ready, it starts it and writes the first count back. The step takes up a new count at its
next batch (training, validation, test or predict) and at the end of training. Phases without
batches (a quantization at the end of a GridVAE's fit, mapping the images to codes) keep the count
they started with, and only torch's threads change: the OpenBLAS limit a step started with stays.

Off by default: float sums split by thread count, and the moment a step's count changes depends
on how long the other steps took, so with lending two runs of the same study give figures that
differ in the last digits. The file holds one integer; reading it costs microseconds, a batch
tens of milliseconds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from geovq.artifacts import atomic_write_text

log = logging.getLogger(__name__)

THREADS_FILE_ENV = "GEOVQ_THREADS_FILE"


def read_thread_count(path: Path) -> int | None:
    """The count in ``path``; None where there is none (not written yet, or not a count). The
    scheduler writes each count atomically (a temporary file renamed into place), so a partial
    write is never read."""
    try:
        count = int(path.read_text())
    except (OSError, ValueError):
        return None
    return count if count >= 1 else None


def write_thread_count(path: Path, count: int) -> None:
    """Write ``count`` so that a reader sees the old count or the new one, never a part."""
    atomic_write_text(path, str(count))


class FollowThreadShare(Callback):
    """Sets torch's thread count to the one in ``path`` at each batch and at the end of training."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.enabled = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # One process per device under DDP: each would take the whole share. The pipeline refuses
        # DDP beside pipeline.parallel, so this is a guard, not a case that arises.
        self.enabled = trainer.world_size == 1

    def follow(self, trainer: L.Trainer) -> None:
        if not self.enabled:
            return
        count = read_thread_count(self.path)
        if count is not None and count != torch.get_num_threads():
            log.info("step %d: %d thread(s) from now on (the study's scheduler changed this step's share)",
                     trainer.global_step, count)
            torch.set_num_threads(count)

    def on_train_batch_start(self, trainer: L.Trainer, *_) -> None:
        self.follow(trainer)

    def on_validation_batch_start(self, trainer: L.Trainer, *_) -> None:
        self.follow(trainer)

    def on_test_batch_start(self, trainer: L.Trainer, *_) -> None:
        self.follow(trainer)

    def on_predict_batch_start(self, trainer: L.Trainer, *_) -> None:
        self.follow(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.follow(trainer)  # before the fit-end work (a quantization) that has no batches


def thread_share_callbacks() -> list[Callback]:
    """The callback when this process is a step whose scheduler lends threads (its environment
    names the file), else none."""
    path = os.environ.get(THREADS_FILE_ENV)
    return [FollowThreadShare(path)] if path else []
