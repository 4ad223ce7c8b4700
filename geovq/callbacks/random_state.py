"""The random generators' states in every checkpoint, so that a resumed run draws what an
unstopped one would.

Lightning's checkpoint holds the weights, the optimizer, the schedule and the loops' progress,
but not the generators: a run resumed from ``last.ckpt`` would shuffle its next epochs (and draw
its dropout masks) from the state ``seed_everything`` left at start, not from where the stopped
run was, and end with other weights. A study resumes its interrupted training steps
(``geovq/study/runner.py``), and the same seed and config must give the same figures however
often the run was stopped. Every training stage's Trainer has this callback
(``geovq.training.build_trainer``); a checkpoint written without it resumes as before.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class RandomStateInCheckpoint(Callback):
    """Saves torch's (CPU and every CUDA device's), numpy's and Python's generator states when a
    checkpoint is written and sets them back when a run resumes from it. The states are tensors
    and lists of ints, so the checkpoint still loads with ``weights_only=True``."""

    def state_dict(self) -> dict:
        version, numpy_keys, position, has_gauss, cached_gauss = np.random.get_state()
        python_version, python_state, python_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(numpy_keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gauss": float(cached_gauss)},
            "python": {"version": python_version, "state": list(python_state), "gauss": python_gauss},
        }

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        numpy_state = state["numpy"]
        np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                             numpy_state["has_gauss"], numpy_state["cached_gauss"]))
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
