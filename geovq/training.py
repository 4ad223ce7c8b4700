"""What every training stage needs: the Trainer with its callbacks and loggers, resume, fit and test."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig

from geovq.errors import ConfigError
from geovq.run_folder import as_floats, output_dir, result_config


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

def build_trainer(cfg: DictConfig, extra_callbacks: Iterable[Callback] = ()) -> L.Trainer:
    check_trainer_config(cfg)
    callbacks = instantiate_list(cfg.get("callbacks")) + list(extra_callbacks)
    loggers = instantiate_list(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``ckpt_path=last`` -> this run folder's last checkpoint, with a clear error if absent."""
    requested = cfg.get("ckpt_path")
    if not requested:
        return None
    path = output_dir(cfg) / "checkpoints" / "last.ckpt" if requested == "last" else Path(requested)
    if not path.is_file():
        raise ConfigError(
            f"cannot resume: no checkpoint at {path}. To resume an interrupted run, pass its folder: "
            "hydra.run.dir=<that run folder> ckpt_path=last (or ckpt_path=<a .ckpt file>)."
        )
    return str(path)

def best_checkpoint(trainer: L.Trainer) -> str | None:
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            return callback.best_model_path
    return None

def train_and_test(
    cfg: DictConfig,
    model_class: type,
    extra_callbacks: Iterable[Callback] = (),
    data_kwargs: dict | None = None,
    model_kwargs: dict | None = None,
):
    """Seed, build data/model/trainer from the config, fit (or resume), test the best weights.

    ``data_kwargs``/``model_kwargs`` fill in what the stage resolved at run time (an input path,
    the vocabulary size). Returns ``(model, datamodule, trainer, test_metrics)``; the model
    holds the best weights.
    """
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, **(data_kwargs or {}))
    datamodule.prepare_data()  # fail before training when the data is missing
    model = instantiate(cfg.model, **(model_kwargs or {}))
    if not isinstance(model, model_class):
        raise ConfigError(
            f"stage={cfg.stage.name} trains a {model_class.__name__} but model= builds a "
            f"{type(model).__name__}; pick a {model_class.__name__} config for model=."
        )
    trainer = build_trainer(cfg, extra_callbacks)
    for callback in trainer.callbacks:
        if hasattr(callback, "bind_run_config"):  # callbacks that write artifacts record provenance
            callback.bind_run_config(result_config(cfg))
    trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg))
    # The last epoch's train/val figures, then the test figures of the best weights.
    metrics = {k: v for k, v in as_floats(trainer.callback_metrics).items() if not k.endswith("_step")}
    metrics = {k.removesuffix("_epoch"): v for k, v in metrics.items()}
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best_checkpoint(trainer), verbose=False)
    metrics.update(as_floats(results[0]) if results else {})
    metrics["epochs"] = float(trainer.current_epoch)
    return model, datamodule, trainer, metrics
