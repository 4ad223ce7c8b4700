"""The random generators' states in every checkpoint, so that a resumed run draws what an
unstopped one would.

Lightning's checkpoint holds the weights, the optimizer, the schedule and the loops' progress,
but not the generators: a run resumed from ``last.ckpt`` would shuffle its next epochs (and draw
its dropout masks and the GridVAE's noise) from the state ``seed_everything`` left at start, not
from where the stopped run was, and end with other weights. A study resumes its interrupted
training steps (``geovq/study/runner.py``), and the same seed and config must give the same
figures however often the run was stopped. Every training stage's Trainer has this callback
(``geovq.training.build_trainer``).

One process only: under DDP the checkpoint is written by rank 0 and holds its generators alone,
so a resumed multi-process run draws anew (with a warning), as does a run resumed from a
checkpoint written without this callback.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class RandomStateInCheckpoint(Callback):
    """Saves torch's (CPU, and CUDA where this run used it), numpy's and Python's generator states
    when a checkpoint is written and sets them back when a single-process run resumes from it.
    The states are tensors and lists of ints, so the checkpoint still loads with
    ``weights_only=True``."""

    def __init__(self) -> None:
        self.world_size = 1

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.world_size = trainer.world_size  # known before a checkpoint is restored

    def state_dict(self) -> dict:
        version, numpy_keys, position, has_gauss, cached_gauss = np.random.get_state()
        python_version, python_state, python_gauss = random.getstate()
        return {
            "world_size": self.world_size,
            "torch": torch.get_rng_state(),
            # Only where this run started CUDA: asking would start it on every GPU of the machine.
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": {"keys": torch.from_numpy(numpy_keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gauss": float(cached_gauss)},
            "python": {"version": python_version, "state": list(python_state), "gauss": python_gauss},
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.state_key not in (checkpoint.get("callbacks") or {}):
            log.warning("this checkpoint holds no random generator states (written by an older geovq): the "
                        "resumed run draws its batches anew, so it will not end exactly as an unstopped run")

    def load_state_dict(self, state: dict) -> None:
        if self.world_size > 1 or state.get("world_size", 1) > 1:
            log.warning("a resumed multi-process run draws its random numbers anew (the checkpoint holds rank 0's "
                        "generators only), so it will not end exactly as an unstopped run")
            return
        torch.set_rng_state(state["torch"])
        if state["cuda"]:
            if torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(state["cuda"])
            else:
                log.warning("the checkpoint holds the CUDA generators of %d GPU(s) and this machine has %d: they "
                            "draw anew", len(state["cuda"]), torch.cuda.device_count() if torch.cuda.is_available() else 0)
        numpy_state = state["numpy"]
        np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                             numpy_state["has_gauss"], numpy_state["cached_gauss"]))
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
