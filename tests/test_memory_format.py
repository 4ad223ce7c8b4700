"""Convolution weights in channels_last exactly when the Trainer runs bf16 on the CPU."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from geovq.callbacks.memory_format import ChannelsLastInBf16


class TinyConv(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3)  # two in-channels: one would make both layouts the same strides
        self.formats = []

    def training_step(self, batch, _):
        out = self.conv(batch[0])
        self.formats.append(out.is_contiguous(memory_format=torch.channels_last))
        return out.float().square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("precision", "channels_last"), [("bf16-mixed", True), ("32-true", False)])
def test_channels_last_only_in_bf16(precision, channels_last):
    model = TinyConv()
    data = DataLoader(TensorDataset(torch.rand(8, 2, 8, 8)), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", precision=precision, max_steps=2, callbacks=[ChannelsLastInBf16()],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert model.formats == [channels_last] * 2  # the convolutions compute in that layout
    assert trainer.global_step == 2  # the optimizer kept training the converted weights
