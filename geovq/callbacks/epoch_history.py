"""EpochHistory: one value per epoch of the metrics a report plots (e.g. a prior's validation NLL).

Kept in the checkpoint (``state_dict``), so that a run resumed with ``ckpt_path=last`` still has
the curve of the epochs it ran before the interruption.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

# Where a stage writes the history (stage=prior: the validation NLL of every epoch).
HISTORY_FILE = "history.json"


class EpochHistory(Callback):
    def __init__(self, keys: tuple[str, ...] = ("val/nll",)):
        self.keys = tuple(keys)
        self.history: dict[str, list[float]] = {key: [] for key in self.keys}
        self.history["epoch"] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        # After the module's and the epoch-end hooks: the epoch's validation figures are logged.
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.history["epoch"].append(float(trainer.current_epoch))
        for key in self.keys:
            self.history[key].append(float(metrics[key]) if key in metrics else float("nan"))

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {key: list(values) for key, values in state_dict["history"].items()}
