"""Training checkpoints written like every other geovq file: to a temporary file, then renamed.

Lightning writes a checkpoint straight into its final name, so a full disk or a kill during the
write leaves a truncated ``last.ckpt`` where the previous good one was. Here the previous file
stays intact until the new one is complete, and a failed write is one line saying what to do.
"""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geovq.artifacts import atomic_write_bytes
from geovq.errors import TrainingError


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            atomic_write_bytes(path, buffer.getvalue())
        except OSError as err:
            raise TrainingError(
                f"cannot write the checkpoint {path} ({err.strerror or err}); the checkpoints written before it "
                "are intact. Free some space (or choose another folder with paths.log_dir=...) and resume with "
                "hydra.run.dir=<this run folder> ckpt_path=last."
            ) from None
