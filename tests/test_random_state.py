"""The random generators' states travel in checkpoints (geovq/callbacks/random_state.py), so a
resumed run draws what an unstopped one would (the end-to-end check: test_prior_convergence.py)."""

from __future__ import annotations

import io
import logging
import random

import numpy as np
import torch

from geovq.callbacks.random_state import RandomStateInCheckpoint


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], float(np.random.randn())


def through_a_checkpoint(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save({"callbacks": {"RandomStateInCheckpoint": state}}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["callbacks"]["RandomStateInCheckpoint"]


def test_the_states_survive_a_weights_only_checkpoint_and_come_back():
    callback = RandomStateInCheckpoint()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    np.random.randn()  # numpy caches the second Gaussian: that is state too
    saved = through_a_checkpoint(callback.state_dict())
    expected = draws()
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    callback.load_state_dict(saved)
    assert draws() == expected


def test_what_cannot_be_restored_is_said_not_guessed(caplog):
    callback = RandomStateInCheckpoint()
    with caplog.at_level(logging.WARNING):
        callback.on_load_checkpoint(None, None, {"callbacks": {}})  # written before this callback
    assert "holds no random generator states" in caplog.text

    saved = callback.state_dict()
    callback.world_size = 2  # DDP: the checkpoint holds rank 0's generators only
    torch.manual_seed(3)
    expected = torch.rand(3).tolist()
    torch.manual_seed(3)
    with caplog.at_level(logging.WARNING):
        callback.load_state_dict(saved)
    assert torch.rand(3).tolist() == expected and "multi-process run draws its random numbers anew" in caplog.text
