"""stage=classifier: train the MNIST digit classifier whose features the fidelity metrics use.

Writes to the run folder: checkpoints/ (last and best by val/loss), csv/ (metrics every epoch),
model.pt (the best weights as a ``classifier`` artifact), metrics.json, config.yaml.
Load it with ``load_model(path, "classifier")`` and pass it to :mod:`geovq.metrics.fidelity`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from geovq.loggers import log_final_and_finish
from geovq.models.classifier import MNISTClassifier
from geovq.run_folder import write_run_files
from geovq.training import train_and_test


def run(cfg: DictConfig) -> dict:
    trained = train_and_test(cfg, MNISTClassifier)
    if trained.trainer.is_global_zero:
        write_run_files(cfg, trained.metrics)
    log_final_and_finish(trained.trainer, trained.metrics)
    return trained.metrics
