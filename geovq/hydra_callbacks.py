"""Hydra callbacks: checks that must happen before Hydra starts writing the run folder."""

from __future__ import annotations

import os
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from geovq.run_folder import (
    RunFolderBusy,
    RunFolderTaken,
    lock_run_folder,
    refuse_earlier_run,
    set_aside_earlier_run,
    writable_folder_problem,
)


class ClaimOutputFolder(Callback):
    """Before Hydra writes anything in a run folder: refuse, with one clear line, a folder that
    cannot be written or that another geovq run is using; then hold its lock for this run."""

    def __init__(self) -> None:
        self.locks = []

    def __getstate__(self) -> dict:
        # Launchers that run jobs in other processes (launcher=submitit_local/slurm/joblib)
        # pickle Hydra's callbacks with every job; the locks stay with the process that took them.
        return {**self.__dict__, "locks": []}

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._claim(config.hydra.run.dir)
        if launch_rank() == 0:
            keep_earlier_run(config, config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._claim(config.hydra.sweep.dir)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._release()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._release()

    def _claim(self, folder: str) -> None:
        if launch_rank() != 0:  # a DDP worker started for the run that holds the folder
            return
        problem = writable_folder_problem(folder)
        if problem:
            _fail(
                f"cannot write the output folder {folder} ({problem}). Choose a writable place with "
                "paths.log_dir=/some/writable/folder (or hydra.run.dir=... for one run)."
            )
        try:
            self.locks.append(lock_run_folder(folder))
        except RunFolderBusy as err:
            _fail(str(err))

    def _release(self) -> None:
        while self.locks:
            self.locks.pop().release()


def keep_earlier_run(config: DictConfig, folder: str) -> None:
    """A new run in a folder that holds an earlier one: refused, unless it resumes that run
    (``ckpt_path``) or ``overwrite=true`` moves the earlier files aside. A study's folder is
    meant to be reused: its pipeline keeps what is done and reruns the rest."""
    if config.get("ckpt_path") or config.stage.name == "pipeline":
        return
    if config.get("overwrite"):
        moved = set_aside_earlier_run(folder)
        if moved is not None:
            print(f"overwrite=true: the earlier run's files are now in {moved}", file=sys.stderr)
        return
    try:
        refuse_earlier_run(folder)
    except RunFolderTaken as err:
        _fail(str(err))


def launch_rank() -> int:
    """This process's rank among the processes of one distributed run, from what the launcher
    (torchrun, SLURM, Lightning's own subprocess launcher) puts in the environment; 0 alone."""
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


class SweepSummary(Callback):
    """At the end of a multirun, write summary.csv / summary.md in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from geovq.sweeps import collect_runs, failed_runs, write_summary

        path = write_summary(config.hydra.sweep.dir)
        if path is None:
            return
        print(f"sweep summary: {path}")
        print(path.read_text())
        failed = failed_runs(collect_runs(config.hydra.sweep.dir))
        if failed:  # the sweep went on past them, but it did not succeed
            _fail(f"{len(failed)} sweep point(s) failed (jobs {', '.join(run['job'] for run in failed)}); "
                  f"their errors are in {path}.", code=1)
