"""Learning-rate schedules whose end is not the epoch cap.

``WarmupReduceLROnPlateau``: a linear warm-up over the first ``warmup_steps`` optimizer steps,
then a constant learning rate, multiplied by ``factor`` whenever the monitored validation figure
has not improved by ``threshold`` for more than ``patience`` epochs (torch's ReduceLROnPlateau).
Training ends by early stopping, not because the schedule ran out: with a cosine annealed to zero
at ``trainer.max_epochs``, "stopped at the cap" and "the schedule ended" were the same event.

Lightning steps it once per epoch with the value of the config's ``monitor`` key
(``GeovqModule.scheduler_monitor``); the warm-up runs as a hook before each optimizer step. Its
settings hold no epoch count, so a run resumed with a higher ``trainer.max_epochs`` continues
the same schedule.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau


class WarmupReduceLROnPlateau(ReduceLROnPlateau):
    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, **plateau):
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
        super().__init__(optimizer, **plateau)
        self.warmup_steps = warmup_steps
        self.warmup_done = 0  # optimizer steps taken during the warm-up (kept in state_dict)
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        # Not stored on self: state_dict() saves every attribute but the optimizer.
        optimizer.register_step_pre_hook(self._warm_up)

    @property
    def warming_up(self) -> bool:
        return self.warmup_done < self.warmup_steps

    def _warm_up(self, optimizer, args, kwargs) -> None:
        """Before optimizer step k (0-based) of the warm-up: the learning rate base * (k+1) / warmup_steps."""
        if not self.warming_up:
            return
        self.warmup_done += 1
        for group, base in zip(optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.warmup_done / self.warmup_steps
        self._last_lr = [float(group["lr"]) for group in optimizer.param_groups]

    def step(self, metrics, epoch=None) -> None:  # type: ignore[override]
        before = [float(group["lr"]) for group in self.optimizer.param_groups]
        super().step(metrics, epoch)
        if self.warming_up:
            # A reduction during the warm-up lowers the rate the warm-up climbs to.
            for i, (old, group) in enumerate(zip(before, self.optimizer.param_groups)):
                if old > 0 and group["lr"] != old:
                    self.base_lrs[i] *= float(group["lr"]) / old
