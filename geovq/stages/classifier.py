"""stage=classifier: train the classifier whose features the fidelity metrics use, on the data set
in use (its labels; model.n_classes=null takes their number from the data).

Images without labels (a flat data=image_folder) get the same network trained as an autoencoder
(n_classes 0: geovq/models/classifier.py); metrics.json says which (``classifier/n_classes``,
0 for autoencoder features).

Writes to the run folder: checkpoints/ (last and best by val/loss), csv/ (metrics every epoch),
model.pt (the best weights as a ``classifier`` artifact), metrics.json, config.yaml.
Load it with ``load_model(path, "classifier")`` and pass it to :mod:`geovq.metrics.fidelity`.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from geovq.errors import ConfigError, config_section
from geovq.loggers import log_final_and_finish
from geovq.models.classifier import MNISTClassifier
from geovq.run_folder import write_run_files
from geovq.training import train_and_test


def run(cfg: DictConfig) -> dict:
    def build(datamodule):
        n_classes = classes_to_learn(cfg.model.get("n_classes"), datamodule)
        with config_section("model"):
            model = instantiate(cfg.model, n_classes=n_classes)
        if n_classes == 0:
            drop_accuracy_stopping(cfg)
        return model, datamodule

    trained = train_and_test(cfg, MNISTClassifier, build=build)
    trained.metrics["classifier/n_classes"] = float(trained.model.n_classes)
    if trained.trainer.is_global_zero:
        write_run_files(cfg, trained.metrics)
    log_final_and_finish(trained.trainer, trained.metrics)
    return trained.metrics


def classes_to_learn(configured: int | None, datamodule) -> int:
    """model.n_classes, or (null) the number of classes of the data's labels, 0 without labels."""
    found = getattr(datamodule, "num_classes", None) or 0
    if configured is None:
        return found
    if configured and configured != found:
        has = f"labels of {found} classes" if found else "no labels"
        raise ConfigError(
            f"model.n_classes={configured}, but data= has {has}. Leave model.n_classes=null to take them from "
            "the data (0 trains the network as an autoencoder, without labels)."
        )
    return configured


def drop_accuracy_stopping(cfg: DictConfig) -> None:
    """An autoencoder has no accuracy to stop at: the callbacks watching val/accuracy (the stage's
    early stopping at 99%) are left out, so it trains its trainer.max_epochs (recorded in config.yaml)."""
    callbacks = cfg.get("callbacks") or {}
    with open_dict(cfg):
        for name in list(callbacks):
            entry = callbacks[name]
            if entry is not None and entry.get("monitor") == "val/accuracy":
                callbacks[name] = None
