"""The run folder of a stage: where it is, the config it records, its metrics.json and config.yaml."""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf, open_dict

from geovq.artifacts import atomic_write_text
from geovq.errors import GeovqError

# Config sections that do not change what a stage computes: left out of the config hash.
NON_RESULT_KEYS = ("paths", "logger", "callbacks", "hydra", "figures", "ckpt_path", "overwrite")

NON_RESULT_SETTINGS = {
    "trainer": ("default_root_dir", "devices", "strategy", "accelerator", "log_every_n_steps", "enable_model_summary",
                "enable_progress_bar"),
    "data": ("root", "num_workers", "download", "eval_batch_size"),
    "quantizer": ("n_jobs", "progress", "device"),  # every device gives the same codes (geovq/quantize/device.py)
}


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def resolved_config(cfg: DictConfig) -> dict:
    """The config as plain, resolved data, without Hydra's own section (present in tests)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True)


def result_config(cfg: DictConfig) -> dict:
    """The resolved config minus the parts that do not change results (for provenance)."""
    plain = resolved_config(cfg)
    for key in NON_RESULT_KEYS:
        plain.pop(key, None)
    quantizes = plain.get("stage", {}).get("name") == "quantize" or "quantize_on_fit_end" in (cfg.get("callbacks") or {})
    if not quantizes:
        plain.pop("quantizer", None)  # only stage=quantize and callbacks=quantize use it
    for section, keys in NON_RESULT_SETTINGS.items():
        for key in keys:
            (plain.get(section) or {}).pop(key, None)
    return plain


def write_run_files(cfg: DictConfig, metrics: dict) -> None:
    """The resolved config and the stage's final metrics, beside the stage's artifacts."""
    folder = output_dir(cfg)
    atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(resolved_config(cfg)))
    atomic_write_text(folder / "metrics.json", json.dumps(as_floats(metrics), indent=2, sort_keys=True) + "\n")


def as_floats(metrics: dict) -> dict:
    return {key: float(value) for key, value in metrics.items()}


def writable_folder_problem(folder: str | Path) -> str | None:
    """Why files cannot be written in ``folder`` (created if missing), or None when they can."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as err:
        return err.strerror or str(err)
    return None


LOCK_FILE = ".geovq.lock"


class RunFolderBusy(GeovqError):
    """Another geovq run holds the lock on this run folder."""


def lock_run_folder(folder: str | Path) -> FileLock:
    """Take the run folder for this process: a second run started in the same folder would mix
    its files with this one's. Released by ``.release()`` or when the process ends."""
    lock = FileLock(str(Path(folder) / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderBusy(
            f"another geovq run is using the run folder {folder} (it holds {LOCK_FILE} there). "
            "Wait for it to finish, or run in another folder (hydra.run.dir=... or paths.log_dir=...)."
        ) from None
    return lock


# What a run leaves in its folder: a folder holding any of these holds a finished or an
# interrupted run (a folder with only Hydra's .hydra/, from a run refused at its settings, does not).
RUN_FILES = ("metrics.json", "config.yaml", "checkpoints", "model.pt", "codes.pt", "codebook.pt", "samples.pt",
             "evaluation.json", "report.md", "step.json", "csv", "complete.json")
# Where ``overwrite=true`` moves an earlier run's files: hidden, so no newest-file look-up finds them.
SET_ASIDE_FOLDER = ".replaced"


def earlier_run_files(folder: str | Path) -> list[str]:
    """The names of the files and folders of an earlier run in ``folder`` (empty when none)."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).exists()]


def set_aside_earlier_run(folder: str | Path) -> Path | None:
    """Move everything an earlier run left in ``folder`` (but the lock) into
    ``folder/.replaced/<time>/``, so that a new run starts clean and nothing is lost."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    entries = [p for p in folder.iterdir() if p.name not in (LOCK_FILE, SET_ASIDE_FOLDER)]
    if not entries:
        return None
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    target = folder / SET_ASIDE_FOLDER / stamp
    target.mkdir(parents=True)
    for entry in entries:
        os.replace(entry, target / entry.name)
    return target


def refuse_earlier_run(folder: str | Path) -> None:
    """A new run must not replace a finished or interrupted one: one line saying what to do."""
    found = earlier_run_files(folder)
    if found:
        raise RunFolderTaken(
            f"the run folder {folder} already holds a run ({', '.join(found)}); a new run there would replace it. "
            "Resume it with ckpt_path=last, choose another folder (hydra.run.dir=...), or pass overwrite=true "
            f"to move its files into {Path(folder) / SET_ASIDE_FOLDER}/ first."
        )


class RunFolderTaken(GeovqError):
    """The run folder holds an earlier run that a new run would overwrite."""


# A step of a study counts as done only when its own process says so: the pipeline gives each
# launch a token in this variable, and the step, when it finished, writes it back in this file.
STEP_TOKEN_ENV = "GEOVQ_STEP_TOKEN"
COMPLETION_FILE = "complete.json"


def write_completion(folder: str | Path, stage: str) -> None:
    """Called by a run that finished, when a pipeline launched it (its token is in the environment)."""
    token = os.environ.get(STEP_TOKEN_ENV)
    if token:
        atomic_write_text(Path(folder) / COMPLETION_FILE, json.dumps({"stage": stage, "token": token}) + "\n")


def completed_with(folder: str | Path, token: str) -> bool:
    """Whether the run launched with ``token`` finished in ``folder``."""
    try:
        return json.loads((Path(folder) / COMPLETION_FILE).read_text()).get("token") == token
    except (OSError, ValueError):
        return False
