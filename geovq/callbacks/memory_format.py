"""Convolutions in channels_last where it pays: bf16 autocast on a CPU.

In bf16 autocast on a CPU the classifier's step measured clearly faster with channels_last weights
than with contiguous ones, while in float32 channels_last gained nothing (bench/train_step.py;
docs/benchmarks.md). The weights are converted once, before the optimizer is built; each
convolution then computes and returns channels_last, whatever the input's layout.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class ChannelsLastInBf16(Callback):
    """At ``setup``: the model's 4-d weights to channels_last when the Trainer runs bf16 on a CPU."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        on_cpu = trainer.strategy.root_device.type == "cpu"
        if on_cpu and str(trainer.precision).startswith("bf16"):
            pl_module.to(memory_format=torch.channels_last)
