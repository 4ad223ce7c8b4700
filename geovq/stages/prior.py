"""stage=prior: train the Transformer prior on the code grids of either pipeline.

``stage.codes`` names the code grids: ``geodesic`` (the newest codes.pt of stage=quantize, or of
a GridVAE run with the quantization callback), ``vqvae`` (the newest of stage=vqvae), or a path.
Reports per-token NLL (nats), perplexity and bits per image on train, val and the held-out test
grids, and the unigram baseline (entropy of the training codes' marginal): perplexity alone
rewards a collapsed codebook.

Training stops when the validation NLL has not improved by ``callbacks.early_stopping.min_delta``
for ``patience`` epochs, or at the cap ``trainer.max_epochs`` (model=prior's learning-rate schedule
has no end of its own: geovq/models/schedules.py); ``prior/epochs``, ``prior/converged`` (1: early
stopping ended it, 0: it hit the cap) and ``prior/best_epoch`` say which, and history.json holds
the validation NLL of every epoch. Writes model.pt (kind ``prior``),
metrics.json, history.json, config.yaml.
"""

from __future__ import annotations

import json
import math

from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig

from geovq.artifacts import atomic_write_text, load_code_grids
from geovq.callbacks.epoch_history import HISTORY_FILE, EpochHistory
from geovq.inputs import resolve_codes
from geovq.loggers import log_final_and_finish
from geovq.metrics.prior import unigram_entropy
from geovq.models.prior import TransformerPrior
from geovq.run_folder import output_dir, write_run_files
from geovq.training import train_and_test


def convergence(trainer, val_nll: list[float]) -> dict:
    """How the training ended: epochs run, whether early stopping ended it (else the epoch cap
    did, or it was off), and the epoch of the best validation NLL (1-based)."""
    stoppers = [cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]
    stopped = bool(stoppers) and stoppers[0].stopped_epoch > 0
    best = min(range(len(val_nll)), key=val_nll.__getitem__) + 1 if val_nll else 0
    return {"prior/epochs": float(trainer.current_epoch), "prior/converged": float(stopped),
            "prior/max_epochs": float(trainer.max_epochs), "prior/best_epoch": float(best),
            "prior/best_val_nll": float(min(val_nll)) if val_nll else float("nan")}


def run(cfg: DictConfig) -> dict:
    codes_path = resolve_codes(cfg)
    # model.n_codes=null: the vocabulary is the codebook size recorded with the codes; a number
    # is checked against it by the data module. model.grid_size=null: the side of the code grids.
    n_codes, grid_size = cfg.model.n_codes, cfg.model.get("grid_size")
    if n_codes is None or grid_size is None:
        codes = load_code_grids(codes_path).payload
        n_codes = n_codes or int(codes["n_codes"])
        grid_size = grid_size or int(codes["splits"]["train"].shape[-1])
    history = EpochHistory(("val/nll",))
    trained = train_and_test(
        cfg,
        TransformerPrior,
        [history],
        data_kwargs={"path": str(codes_path), "n_codes": n_codes},
        model_kwargs={"n_codes": n_codes, "grid_size": grid_size},
    )
    metrics = trained.metrics
    baseline = unigram_entropy(trained.datamodule.split("train"), trained.datamodule.n_codes)
    metrics["unigram/nll"] = baseline
    metrics["unigram/perplexity"] = math.exp(baseline)
    metrics.update(convergence(trained.trainer, history.history["val/nll"]))
    if trained.trainer.is_global_zero:
        atomic_write_text(output_dir(cfg) / HISTORY_FILE, json.dumps(history.history, indent=2) + "\n")
        write_run_files(cfg, metrics)
    log_final_and_finish(trained.trainer, metrics)
    return metrics
