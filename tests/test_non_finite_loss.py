"""A loss that becomes NaN stops training with a message naming the step; checkpoints survive."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from geovq.callbacks.non_finite_loss import StopOnNonFiniteLoss
from geovq.errors import TrainingError
from geovq.models.grid_vae import GridVAE


class BlowsUpAtStep(GridVAE):
    def __init__(self, bad_step: int):
        super().__init__(latent_dim=4, hidden_channels=8, n_res_blocks=0)
        self.bad_step = bad_step

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= self.bad_step else loss


def nan_loss_message(folder) -> str:
    """Train until the loss becomes NaN at step 5 (checkpoints every 2 steps in ``folder``);
    the error's message."""
    images = torch.rand(64, 1, 28, 28)
    loader = DataLoader(TensorDataset(images, torch.zeros(64)), batch_size=16)
    checkpoints = ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_last=True)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        callbacks=[StopOnNonFiniteLoss(), checkpoints],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    with pytest.raises(TrainingError) as err:
        trainer.fit(BlowsUpAtStep(bad_step=5), train_dataloaders=loader)
    return str(err.value)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    message = nan_loss_message(tmp_path)
    assert "nan at global step 5" in message and "last.ckpt" in message and "ckpt_path=last" in message
    kept = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
