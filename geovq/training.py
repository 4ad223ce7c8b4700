"""What every training stage needs: the Trainer with its callbacks and loggers, resume, fit and test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ProgressBar
from omegaconf import DictConfig

from geovq.artifacts import MODEL_FILE, Artifact
from geovq.callbacks.model_artifact import SaveBestModel
from geovq.errors import ConfigError, config_section
from geovq.models.base import OPTIMIZER_SETTINGS
from geovq.run_folder import (
    as_floats,
    output_dir,
    result_config,
    writable_folder_problem,
)


def check_trainer_config(cfg: DictConfig) -> None:
    epochs = cfg.trainer.get("max_epochs")
    steps = cfg.trainer.get("max_steps", -1)
    if epochs is not None and epochs < 1 and (steps is None or steps < 1):
        raise ConfigError(
            f"trainer.max_epochs must be a positive number of epochs, got {epochs}. "
            "Set e.g. trainer.max_epochs=10."
        )


def instantiate_list(section: DictConfig | None) -> list:
    """Instantiate every entry with a _target_ of a config section (callbacks, loggers)."""
    if not section:
        return []
    return [instantiate(entry) for entry in section.values() if entry is not None and "_target_" in entry]


def build_trainer(cfg: DictConfig, stage_callbacks: Iterable[Callback] = ()) -> L.Trainer:
    """The configured Trainer; the stage's own callbacks run before the configured ones."""
    check_trainer_config(cfg)
    callbacks = list(stage_callbacks) + instantiate_list(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):
        # Lightning refuses a progress bar callback next to enable_progress_bar=False.
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    loggers = instantiate_list(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def resume_checkpoint(cfg: DictConfig) -> tuple[str, dict] | None:
    """``ckpt_path``'s file and its contents, loaded safely (``weights_only=True``); None when
    not resuming. ``ckpt_path=last`` is this run folder's ``checkpoints/last.ckpt``, written at
    the end of every epoch."""
    requested = cfg.get("ckpt_path")
    if not requested:
        return None
    path = output_dir(cfg) / "checkpoints" / "last.ckpt" if requested == "last" else Path(requested)
    if not path.is_file():
        raise ConfigError(
            f"cannot resume: no checkpoint at {path}. To resume an interrupted run, pass its folder: "
            "hydra.run.dir=<that run folder> ckpt_path=last (or ckpt_path=<a .ckpt file>)."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign pickle, a damaged file, ...
        raise ConfigError(
            f"cannot resume from {path}: it does not load as plain tensors and values "
            f"({type(err).__name__}), so it was not written by a geovq run or it is damaged. Resume "
            "from a run folder's checkpoints/last.ckpt (hydra.run.dir=<run folder> ckpt_path=last)."
        ) from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "epoch", "loops"} <= checkpoint.keys():
        raise ConfigError(
            f"cannot resume from {path}: it is not a Lightning training checkpoint (no state_dict, "
            "epoch and loop state). Resume from a run folder's checkpoints/last.ckpt."
        )
    return str(path), checkpoint


def finished_run_metrics(cfg: DictConfig) -> dict | None:
    """The metrics of the run in this folder when ``ckpt_path`` resumes a run that already
    trained all its epochs and wrote its metrics.json: resuming it has nothing to do."""
    metrics_file = output_dir(cfg) / "metrics.json"
    if not cfg.get("ckpt_path") or not metrics_file.is_file():
        return None
    _, checkpoint = resume_checkpoint(cfg)
    epochs_done = int(checkpoint["epoch"]) + 1
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is None or epochs_done < max_epochs:
        return None
    return json.loads(metrics_file.read_text())


def check_optimizer_unchanged(model, checkpoint: dict, path: str) -> None:
    """A resumed run continues with the optimizer state of its checkpoint: refuse a changed
    optimizer setting rather than ignore it."""
    saved, now = checkpoint.get(OPTIMIZER_SETTINGS), model.optimizer_settings()
    if saved is None or saved == now:
        return
    changed = sorted(key for key in {*saved, *now} if saved.get(key) != now.get(key))
    was = ", ".join(f"model.optimizer.{key}={saved.get(key)}" for key in changed)
    raise ConfigError(
        f"{path} was trained with {was}; a resumed run continues with the checkpoint's optimizer "
        "state, so the new value would be ignored. Resume with the same settings, or start a new run "
        "(without ckpt_path) to train with the new ones."
    )


def check_optimizer(model) -> None:
    """Build the model's optimizer once before training, so that an impossible setting (a
    negative learning rate) is one line now instead of a traceback inside fit."""
    try:
        model.configure_optimizers()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model.optimizer: {err} (set with model.optimizer.<name>=...)") from None


def check_checkpoint_folder(cfg: DictConfig) -> None:
    problem = writable_folder_problem(output_dir(cfg) / "checkpoints")
    if problem:
        raise ConfigError(
            f"cannot write checkpoints to {output_dir(cfg) / 'checkpoints'} ({problem}). Make it "
            "writable, or run in another folder (hydra.run.dir=... or paths.log_dir=...)."
        )


@dataclass
class Trained:
    """What a training stage gets back: the model with its best weights, its data, the trainer,
    the final train/val and test figures, and the model artifact (model.pt; None off rank zero)."""

    model: L.LightningModule
    datamodule: L.LightningDataModule
    trainer: L.Trainer
    metrics: dict
    model_artifact: Artifact | None


def train_and_test(
    cfg: DictConfig,
    model_class: type,
    extra_callbacks: Iterable[Callback] = (),
    data_kwargs: dict | None = None,
    model_kwargs: dict | None = None,
) -> Trained:
    """Seed, build data/model/trainer from the config, fit (or resume), save the best weights as
    model.pt, and test them.

    ``data_kwargs``/``model_kwargs`` fill in what the stage resolved at run time (an input path,
    the vocabulary size).
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with config_section("data"):
        datamodule = instantiate(cfg.data, **(data_kwargs or {}))
    datamodule.prepare_data()  # fail before training when the data is missing
    with config_section("model"):
        model = instantiate(cfg.model, **(model_kwargs or {}))
    if not isinstance(model, model_class):
        raise ConfigError(
            f"stage={cfg.stage.name} trains a {model_class.__name__} but model= builds a "
            f"{type(model).__name__}; pick a {model_class.__name__} config for model=."
        )
    # First in the list, so that model.pt exists when the other callbacks' on_fit_end runs.
    saver = SaveBestModel(output_dir(cfg) / MODEL_FILE, cfg.stage.name, result_config(cfg))
    check_optimizer(model)
    check_checkpoint_folder(cfg)
    resume = resume_checkpoint(cfg)
    if resume is not None:
        check_optimizer_unchanged(model, resume[1], resume[0])
    trainer = build_trainer(cfg, [saver, *extra_callbacks])
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume and resume[0], weights_only=True)
    # The last epoch's train/val figures, then the test figures of the best weights (which
    # SaveBestModel put in the model when the fit ended).
    metrics = {k: v for k, v in as_floats(trainer.callback_metrics).items() if not k.endswith("_step")}
    metrics = {k.removesuffix("_epoch"): v for k, v in metrics.items()}
    results = trainer.test(model, datamodule=datamodule, verbose=False)
    metrics.update(as_floats(results[0]) if results else {})
    metrics["epochs"] = float(trainer.current_epoch)
    return Trained(model, datamodule, trainer, metrics, saver.artifact)
