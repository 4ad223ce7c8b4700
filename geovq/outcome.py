"""What a run says when it ends: where its results are and its headline figures, or, when it
was stopped, what it kept and the command that continues it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig

from geovq.config_check import override_key
from geovq.stage_registry import STAGES

# Checkpoints every training stage writes at the end of each epoch (conf/callbacks/default.yaml).
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def finished_lines(cfg: DictConfig, metrics: dict | None) -> list[str]:
    """One line naming the run folder, one with the headline figures (when the stage has any)."""
    stage, folder = cfg.stage.name, Path(cfg.paths.output_dir)
    if stage == "pipeline":
        return [f"done: stage=pipeline; report: {folder / 'report.md'}"]
    headline = STAGES[stage].headline if stage in STAGES else ()
    figures = [f"{key} {_fmt(metrics[key])}" for key in headline if key in (metrics or {})]
    lines = [f"done: stage={stage} in {folder}"]
    if figures:
        lines.append("  " + ", ".join(figures))
    return lines


def interrupted_line(cfg: DictConfig, signal_name: str) -> str:
    """What was stopped, what of it is kept and the command that continues it."""
    stage, folder = cfg.stage.name, Path(cfg.paths.output_dir)
    again = command_line()
    if stage == "pipeline":
        return (f"interrupted ({signal_name}): stage=pipeline in {folder}; its finished steps are kept and "
                f"reused, and its stopped training steps resume from their last completed epoch. Continue with: {again}")
    last = folder / LAST_CHECKPOINT
    if last.is_file():
        resume = command_line(drop=("hydra.run.dir", "ckpt_path", "overwrite"),
                              add=(f"hydra.run.dir={folder}", "ckpt_path=last"))
        return (f"interrupted ({signal_name}): stage={stage} in {folder}; kept {last} (the last completed epoch), "
                f"no model.pt or metrics.json. Continue with: {resume}")
    return f"interrupted ({signal_name}): stage={stage} in {folder}; nothing of it is kept. Run it again: {again}"


def command_line(drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> str:
    """This process's command, as a person would type it, less the overrides of keys in ``drop``
    and with ``add`` after them."""
    kept = [arg for arg in sys.argv[1:] if override_key(arg) not in drop]
    return shlex.join(["python", "-m", "geovq.train", *kept, *add])


def _fmt(value: float) -> str:
    return f"{value:.5g}" if abs(value) < 1e4 else f"{value:.0f}"
