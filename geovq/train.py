"""Command-line entry point: ``python -m geovq.train stage=<name> [overrides]``.

Composes the Hydra config, dispatches to one stage, and turns errors a user can fix into one
clear line on stderr (exit code 1) instead of a traceback.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports below, which take seconds
    from geovq.interrupts import stop_quietly_while_starting

    stop_quietly_while_starting()

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from geovq.config_check import check_settings, ignored_overrides
from geovq.console import route_warnings_to_log
from geovq.errors import GeovqError
from geovq.hydra_callbacks import launch_rank
from geovq.interrupts import as_interruption, ignore_later_signals, signals_interrupt
from geovq.outcome import finished_lines, interrupted_line
from geovq.precision import fast_precision
from geovq.run_folder import write_completion
from geovq.stage_registry import TRAINING_STAGES, trains

log = logging.getLogger(__name__)


def run_group(stage_name: str) -> str:
    """The W&B group of a run, so that the dashboard compares related runs side by side: the
    runs of one sweep share a group, so do the stages of one experiment; otherwise the stage."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return stage_name
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"{stage_name}-sweep-{Path(hydra_cfg.sweep.dir).name}"
    experiment = hydra_cfg.runtime.choices.get("experiment")
    if experiment not in (None, "null"):
        return f"experiment-{experiment}"
    return stage_name


OmegaConf.register_new_resolver("geovq_run_group", run_group, replace=True)
OmegaConf.register_new_resolver("geovq_fast_precision", fast_precision, replace=True)


def run_stage(cfg: DictConfig) -> dict:
    """Run the stage named by ``cfg.stage.name`` and return its metrics."""
    from geovq.stages import get_stage
    from geovq.training import finished_run_metrics

    check_settings(cfg)
    for key in ignored_overrides(cfg, command_line_overrides()):
        log.warning("%s does not apply to stage=%s; it is ignored.", key, cfg.stage.name)
    if cfg.get("ckpt_path") and not trains(cfg.stage.name):
        from geovq.errors import ConfigError

        raise ConfigError(
            f"ckpt_path: stage={cfg.stage.name} does not train, so it has no checkpoint to resume; "
            f"leave ckpt_path out (it resumes {', '.join(TRAINING_STAGES)} runs)."
        )
    finished = finished_run_metrics(cfg)
    if finished is not None:  # resuming a run that trained all its epochs: touch nothing
        log.info("%s finished all its epochs already; nothing to resume.", cfg.paths.output_dir)
        return finished
    return get_stage(cfg.stage.name)(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict | float | None:
    route_warnings_to_log()
    try:
        with signals_interrupt():
            metrics = run_stage(cfg)
            value = optimized_value(cfg, metrics)
    except BaseException as err:
        stop = as_interruption(err)
        if stop is not None:  # Ctrl-C / SIGTERM: one line, and never the exit status of a success
            ignore_later_signals()  # a study's SIGTERM after its SIGINT must not replace that line
            print(interrupted_line(cfg, stop.signal_name), file=sys.stderr)
            raise SystemExit(stop.exit_code) from None
        if not isinstance(err, Exception):
            raise
        user_error = find_user_error(err)
        if in_sweep():  # one failed point is recorded; the sweep goes on with the others
            return record_failed_point(cfg, err, user_error)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(1) from None
    if launch_rank() == 0:  # one report for a distributed run, not one per process
        write_completion(cfg.paths.output_dir, cfg.stage.name)
        print("\n".join(finished_lines(cfg, metrics)))
    return value


def command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failed_point(cfg: DictConfig, err: Exception, user_error: GeovqError | None) -> float | None:
    """A sweep point that failed: its error line on stderr and in its folder (``failed.json``, read
    by the sweep summary), the traceback in its log when the error is not one a user can fix.
    Returns what the sweeper gets: NaN for a search (Optuna records a failed trial), else None."""
    from geovq.sweeps import write_failure

    if user_error is None:
        log.error("the sweep point failed", exc_info=err)
    message = str(user_error) if user_error is not None else f"{type(err).__name__}: {err}"
    print(f"error: {message}", file=sys.stderr)
    write_failure(cfg.paths.output_dir, message)
    return float("nan") if cfg.get("optimized_metric") else None


def optimized_value(cfg: DictConfig, metrics: dict | None) -> dict | float | None:
    """What a run returns to Hydra: with ``optimized_metric`` set (hparams_search=...), that
    metric of the stage as a float, the objective of a sweeper such as Optuna; else the metrics."""
    name = cfg.get("optimized_metric")
    if not name:
        return metrics
    if not metrics or name not in metrics:
        from geovq.errors import ConfigError

        known = ", ".join(sorted(metrics or {})) or "none"
        raise ConfigError(
            f"optimized_metric: stage {cfg.stage.name} has no metric '{name}' (its metrics: {known}). "
            "Choose one of them with optimized_metric=<name>."
        )
    return float(metrics[name])


def find_user_error(err: BaseException) -> GeovqError | None:
    """The GeovqError behind ``err``, also when Hydra's instantiate or Lightning wrapped it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, GeovqError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()
