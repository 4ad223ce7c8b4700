"""What every training stage needs: the Trainer with its callbacks and loggers, resume, fit and test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ProgressBar
from omegaconf import DictConfig, OmegaConf

from geovq.artifacts import MODEL_FILE, Artifact
from geovq.callbacks.model_artifact import CHECKPOINT_STAGE, SaveBestModel
from geovq.callbacks.plateau_step import PlateauStepInCheckpoint
from geovq.callbacks.random_state import RandomStateInCheckpoint
from geovq.callbacks.thread_share import thread_share_callbacks
from geovq.checkpoint_io import AtomicCheckpointIO
from geovq.errors import ConfigError, config_section
from geovq.metrics.budget import training_budget
from geovq.models.base import MODEL_CLASS, OPTIMIZER_SETTINGS, SCHEDULE_SETTINGS
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


def check_model_class(cfg: DictConfig, model_class: type) -> None:
    """Before any data is read or model built: the stage trains ``model_class``, and model= must
    build one (model=prior on stage=vae would fail deep inside the prior's constructor)."""
    target = cfg.model.get("_target_")
    try:
        configured = get_class(target)
    except Exception:
        configured = None
    if configured is None or not issubclass(configured, model_class):
        name = configured.__name__ if configured is not None else target
        raise ConfigError(
            f"stage={cfg.stage.name} trains a {model_class.__name__} but model= builds a "
            f"{name}; pick a {model_class.__name__} config for model=."
        )


def instantiate_list(section: DictConfig | None) -> list:
    """Instantiate every entry with a _target_ of a config section (callbacks, loggers)."""
    if not section:
        return []
    return [instantiate(entry) for entry in section.values() if entry is not None and "_target_" in entry]


def build_trainer(cfg: DictConfig, stage_callbacks: Iterable[Callback] = ()) -> L.Trainer:
    """The configured Trainer; the stage's own callbacks run before the configured ones. Every
    checkpoint holds the random generators' states and the reduce-on-plateau step still owed for
    its epoch, so a resumed run ends as an unstopped one."""
    check_trainer_config(cfg)
    callbacks = [*stage_callbacks, *instantiate_list(cfg.get("callbacks")), RandomStateInCheckpoint(), PlateauStepInCheckpoint(),
                 *thread_share_callbacks()]
    if not cfg.trainer.get("enable_progress_bar", True):
        # Lightning refuses a progress bar callback next to enable_progress_bar=False.
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    loggers = instantiate_list(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])


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
    trained_by = checkpoint.get(CHECKPOINT_STAGE)
    if trained_by is not None and trained_by != cfg.stage.name:
        raise ConfigError(
            f"cannot resume stage={cfg.stage.name} from {path}: stage={trained_by} wrote it. Resume a "
            f"{cfg.stage.name} run from its own folder (hydra.run.dir=<that run folder> ckpt_path=last)."
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


def check_resumable(cfg: DictConfig, model, checkpoint: dict, path: str) -> None:
    """Refuse, before anything trains, a checkpoint this run cannot continue exactly: another
    model class, other shapes, another optimizer or learning-rate schedule."""
    saved_class = checkpoint.get(MODEL_CLASS)
    if saved_class is not None and saved_class != type(model).__name__:
        raise ConfigError(
            f"cannot resume from {path}: it holds a {saved_class}, and model= builds a {type(model).__name__}. "
            f"Resume with the model it was trained with (its run folder's config.yaml), or start a new run."
        )
    check_same_shapes(model, checkpoint["state_dict"], path)
    check_settings_unchanged(cfg, model, checkpoint, path)


def check_same_shapes(model, saved: dict, path: str) -> None:
    now = model.state_dict()
    missing, unexpected = sorted(now.keys() - saved.keys()), sorted(saved.keys() - now.keys())
    resized = [key for key in now.keys() & saved.keys() if tuple(now[key].shape) != tuple(saved[key].shape)]
    if not (missing or unexpected or resized):
        return
    if resized:
        key = sorted(resized)[0]
        detail = f"its {key} is {list(saved[key].shape)}, this model's is {list(now[key].shape)}"
    else:
        detail = f"weights {', '.join((missing or unexpected)[:3])} are only in {'this model' if missing else 'the checkpoint'}"
    raise ConfigError(
        f"cannot resume from {path}: {detail}, so it was trained with other model settings. Resume with "
        "the settings it was trained with (its run folder's config.yaml), or start a new run without ckpt_path."
    )


def check_settings_unchanged(cfg: DictConfig, model, checkpoint: dict, path: str) -> None:
    """A resumed run continues the optimizer state and the learning-rate schedule of its
    checkpoint: a changed setting would be ignored (a cosine schedule spans trainer.max_epochs,
    so more epochs would train at the rate it ended with, zero). Refused, naming the key."""
    changed = {f"model.optimizer.{key}": value
               for key, value in changed_settings(checkpoint.get(OPTIMIZER_SETTINGS), model.optimizer_settings()).items()}
    changed.update({schedule_key_name(cfg, key): value
                    for key, value in changed_settings(checkpoint.get(SCHEDULE_SETTINGS), model.schedule_settings()).items()})
    if not changed:
        return
    was = ", ".join(f"{key}={value}" for key, value in changed.items())
    raise ConfigError(
        f"{path} was trained with {was}; a resumed run continues the checkpoint's optimizer state and "
        "learning-rate schedule, so the new value would be ignored. Resume with the same settings, or start "
        "a new run (without ckpt_path) to train with the new ones."
    )


def changed_settings(saved: dict | None, now: dict) -> dict:
    """The saved value of every key whose value changed (nothing when nothing was saved)."""
    if saved is None or saved == now:
        return {}
    return {key: saved.get(key) for key in sorted({*saved, *now}) if saved.get(key) != now.get(key)}


def schedule_key_name(cfg: DictConfig, key: str) -> str:
    """The config key a person changes: ``trainer.max_epochs`` when the scheduler's setting is
    an interpolation of it, else ``model.scheduler.<key>``."""
    scheduler = cfg.model.get("scheduler")
    raw = OmegaConf.to_container(scheduler, resolve=False).get(key) if scheduler is not None else None
    if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}"):
        return raw[2:-1]
    return f"model.scheduler.{key}"


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
    build: Callable[[L.LightningDataModule], tuple[L.LightningModule, L.LightningDataModule]] | None = None,
) -> Trained:
    """Seed, build data/model/trainer from the config, fit (or resume), save the best weights as
    model.pt, and test them.

    ``data_kwargs``/``model_kwargs`` fill in what the stage resolved at run time (an input path,
    the vocabulary size). ``build(datamodule) -> (model, datamodule)`` builds the model (and the
    data it trains on) in place of model= (stage=finetune: a saved GridVAE's decoder on code grids).
    """
    check_model_class(cfg, model_class)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with config_section("data"):
        datamodule = instantiate(cfg.data, **(data_kwargs or {}))
    datamodule.prepare_data()  # fail before training when the data is missing
    if build is not None:
        model, datamodule = build(datamodule)
    else:
        with config_section("model"):
            model = instantiate(cfg.model, **(model_kwargs or {}))
    # First in the list, so that model.pt exists when the other callbacks' on_fit_end runs.
    saver = SaveBestModel(output_dir(cfg) / MODEL_FILE, cfg.stage.name, result_config(cfg))
    check_optimizer(model)
    check_checkpoint_folder(cfg)
    resume = resume_checkpoint(cfg)
    if resume is not None:
        check_resumable(cfg, model, resume[1], resume[0])
    trainer = build_trainer(cfg, [saver, *extra_callbacks])
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume and resume[0], weights_only=True)
    # The last epoch's train/val figures, then the test figures of the best weights (which
    # SaveBestModel put in the model when the fit ended).
    metrics = {k: v for k, v in as_floats(trainer.callback_metrics).items() if not k.endswith("_step")}
    metrics = {k.removesuffix("_epoch"): v for k, v in metrics.items()}
    results = trainer.test(model, datamodule=datamodule, verbose=False)
    metrics.update(as_floats(results[0]) if results else {})
    metrics["epochs"] = float(trainer.current_epoch)
    metrics.update(training_budget(trainer, datamodule))
    return Trained(model, datamodule, trainer, metrics, saver.artifact)
