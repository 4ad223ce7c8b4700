"""The reduce-on-plateau step that Lightning takes after an epoch's checkpoint, replayed on resume.

Lightning writes a run's end-of-epoch checkpoint in ``on_train_epoch_end`` and only then steps the
reduce-on-plateau schedulers with that epoch's validation figure (``FitLoop.on_advance_end``). The
checkpoint therefore holds each such scheduler as it was *before* its step for the epoch it
closes, and a run resumed from it goes on to the next epoch without that step: the halving (or
the new best, or one more bad epoch) that the epoch caused is lost, and the resumed run ends with
other weights than one never stopped. The prior's schedule (``geovq/models/schedules.py``) is
such a scheduler; what the lost step did to a full-MNIST prior is in docs/reliability.md.

This callback keeps, from an epoch's end until the next epoch starts (when the step has been
taken), the figure each plateau scheduler waits for. A checkpoint written in between holds them,
and a run resumed from it gives them to its schedulers before its first epoch, as the stopped
run would have. A checkpoint written without this callback holds none: the resumed run warns that
it will not end exactly as an unstopped run.
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class PlateauStepInCheckpoint(Callback):
    def __init__(self) -> None:
        self.pending: list[float | None] = []  # per scheduler config: the figure of its step still to take
        self.restored: list[float | None] | None = None
        self.resumed_without_state = False

    @staticmethod
    def _plateau_configs(trainer) -> list:
        return [config for config in trainer.lr_scheduler_configs if config.reduce_on_plateau and config.interval == "epoch"]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Runs before the checkpoint callbacks' hook (Lightning calls those last) and before the
        # fit loop steps the plateau schedulers with the same figures.
        self.pending = []
        for config in self._plateau_configs(trainer):
            value = trainer.callback_metrics.get(config.monitor)
            owed = value is not None and (trainer.current_epoch + 1) % config.frequency == 0  # as the fit loop decides
            self.pending.append(float(value) if owed else None)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.pending = []  # the fit loop has stepped the schedulers: nothing is owed any more

    def state_dict(self) -> dict:
        return {"pending": list(self.pending)}

    def load_state_dict(self, state: dict) -> None:
        self.restored = list(state.get("pending", []))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Said in on_train_start: the schedulers do not exist yet when the checkpoint is read.
        self.resumed_without_state = self.state_key not in (checkpoint.get("callbacks") or {})

    def on_train_start(self, trainer, pl_module) -> None:
        """After the checkpoint's schedulers are restored, before the first epoch: the step the
        stopped run would have taken at the end of its last epoch."""
        restored, self.restored = self.restored, None
        configs = self._plateau_configs(trainer)
        if self.resumed_without_state and configs:
            log.warning("this checkpoint holds no pending reduce-on-plateau step (written by an older geovq): the "
                        "resumed run skips its last epoch's step, so it may not end exactly as an unstopped run")
        if not restored:
            return
        if len(restored) != len(configs):
            log.warning("the checkpoint's pending reduce-on-plateau steps (%d) do not match this run's plateau "
                        "schedulers (%d): none replayed", len(restored), len(configs))
            return
        for config, value in zip(configs, restored):
            if value is not None:
                pl_module.lr_scheduler_step(config.scheduler, value)
