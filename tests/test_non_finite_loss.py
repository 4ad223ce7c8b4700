"""A loss that becomes NaN stops training with a message naming the step; checkpoints survive."""

from __future__ import annotations

import pytest

import torch


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(nan_loss_message, tmp_path):
    message = nan_loss_message(tmp_path)
    assert "nan at global step 5" in message and "last.ckpt" in message and "ckpt_path=last" in message
    kept = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
