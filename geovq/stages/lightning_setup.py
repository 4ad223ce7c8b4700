"""What every training stage needs: trainer, loggers, callbacks, resume, run-folder outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from geovq.artifacts import atomic_write_text
from geovq.errors import ConfigError

# Config sections that do not change what a stage computes: left out of the config hash.
NON_RESULT_KEYS = ("paths", "logger", "callbacks", "hydra", "figures", "ckpt_path")
NON_RESULT_SETTINGS = {
    "trainer": ("default_root_dir", "devices", "strategy", "accelerator", "log_every_n_steps", "enable_model_summary"),
    "data": ("root", "num_workers", "download", "eval_batch_size"),
    "quantizer": ("n_jobs", "progress"),
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
    if plain.get("stage", {}).get("name") != "quantize":
        plain.pop("quantizer", None)  # only the quantize stage uses it
    for section, keys in NON_RESULT_SETTINGS.items():
        for key in keys:
            (plain.get(section) or {}).pop(key, None)
    return plain


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


def log_final_and_finish(trainer: L.Trainer, metrics: dict) -> None:
    """Log a training stage's final figures (the test ones and what the stage added) and close
    its loggers, so that the next stage run in this process gets a W&B run of its own."""
    for logger in trainer.loggers:
        logger.log_metrics({f"final/{k}": v for k, v in as_floats(metrics).items()}, step=trainer.global_step)
    finish_loggers(trainer.loggers)


def write_run_files(cfg: DictConfig, metrics: dict) -> None:
    """The resolved config and the stage's final metrics, beside the stage's artifacts."""
    folder = output_dir(cfg)
    atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(resolved_config(cfg)))
    atomic_write_text(folder / "metrics.json", json.dumps(as_floats(metrics), indent=2, sort_keys=True) + "\n")


def as_floats(metrics: dict) -> dict:
    return {key: float(value) for key, value in metrics.items()}


def log_without_trainer(cfg: DictConfig, metrics: dict, figures: Iterable[Path] = (), usage: dict | None = None) -> None:
    """Send a non-training stage's metrics to the configured loggers; W&B also gets the figures
    and the code-usage histograms (``usage``: name -> per-code counts)."""
    from geovq.callbacks.codebook_usage import log_to_wandb

    loggers = instantiate_list(cfg.get("logger"))
    for logger in loggers:
        logger.log_metrics(as_floats(metrics), step=0)
        if isinstance(logger, WandbLogger):
            for figure in figures:
                if Path(figure).exists():
                    logger.log_image(key=f"figures/{Path(figure).stem}", images=[str(figure)])
            for name, counts in (usage or {}).items():
                log_to_wandb(logger, name, counts, 0)
        logger.save()
    finish_loggers(loggers)


def finish_loggers(loggers) -> None:
    """Close each logger; a W&B run is finished so the next stage in this process starts its own."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
