"""stage=classifier: train the MNIST digit classifier whose features the fidelity metrics use.

Writes to the run folder: checkpoints/ (last and best by val/loss), csv/ (metrics every epoch),
model.pt (the best weights as a ``classifier`` artifact), metrics.json, config.yaml.
Load it with ``load_model(path, "classifier")`` and pass it to :mod:`geovq.metrics.fidelity`.
"""

from __future__ import annotations

from omegaconf import DictConfig

from geovq.artifacts import MODEL_FILE
from geovq.loggers import log_final_and_finish
from geovq.models.classifier import MNISTClassifier
from geovq.models.io import save_model
from geovq.run_folder import output_dir, result_config, write_run_files
from geovq.training import train_and_test


def run(cfg: DictConfig) -> dict:
    model, _, trainer, metrics = train_and_test(cfg, MNISTClassifier)
    if trainer.is_global_zero:
        save_model(output_dir(cfg) / MODEL_FILE, model, "classifier", stage="classifier", config=result_config(cfg))
        write_run_files(cfg, metrics)
    log_final_and_finish(trainer, metrics)
    return metrics
