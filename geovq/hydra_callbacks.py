"""Hydra callbacks: checks that must happen before Hydra starts writing the run folder."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CheckOutputFolder(Callback):
    """Refuse, with one clear line, an output folder that cannot be created or written."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _check_writable(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _check_writable(config.hydra.sweep.dir)


def _check_writable(folder: str) -> None:
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as err:
        print(
            f"error: cannot write the output folder {path} ({err.strerror or err}). "
            "Choose a writable place with paths.log_dir=/some/writable/folder "
            "(or hydra.run.dir=... for one run).",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    if not os.access(path, os.W_OK):  # pragma: no cover - root can write anyway
        print(f"error: the output folder {path} is not writable; set paths.log_dir.", file=sys.stderr)
        raise SystemExit(2)


class SweepSummary(Callback):
    """At the end of a multirun, write summary.csv / summary.md in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from geovq.sweeps import write_summary

        path = write_summary(config.hydra.sweep.dir)
        if path is not None:
            print(f"sweep summary: {path}")
            print(path.read_text())
