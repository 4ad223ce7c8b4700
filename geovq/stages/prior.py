"""stage=prior: train the Transformer prior on the code grids of either pipeline.

``stage.codes`` names the code grids: ``geodesic`` (the newest codes.pt of stage=quantize, or of
a GridVAE run with the quantization callback), ``vqvae`` (the newest of stage=vqvae), or a path.
Reports per-token NLL (nats), perplexity and bits per image on train, val and the held-out test
grids, and the unigram baseline (entropy of the training codes' marginal): perplexity alone
rewards a collapsed codebook. Writes model.pt (kind ``prior``), metrics.json, config.yaml.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from geovq.artifacts import CODES_FILE, find_latest, load_code_grids
from geovq.errors import ArtifactError, ConfigError
from geovq.loggers import log_final_and_finish
from geovq.metrics.prior import unigram_entropy
from geovq.models.prior import TransformerPrior
from geovq.run_folder import write_run_files
from geovq.training import train_and_test

# Where each pipeline's code grids come from.
CODE_SOURCES = {"geodesic": ("quantize", "vae"), "vqvae": ("vqvae",)}


def resolve_codes(cfg: DictConfig) -> Path:
    """The code-grid file named by ``stage.codes`` (a pipeline name or a path)."""
    choice = str(cfg.stage.codes)
    if choice not in CODE_SOURCES:
        if not Path(choice).is_file():
            raise ConfigError(
                f"stage.codes={choice} is neither a pipeline ({' | '.join(CODE_SOURCES)}) nor an existing "
                "file; give geodesic, vqvae, or the path of a codes.pt."
            )
        return Path(choice)
    found = []
    for stage in CODE_SOURCES[choice]:
        try:
            found.append(find_latest(cfg.paths.log_dir, stage, CODES_FILE, kind="code_grids"))
        except ArtifactError:
            continue
    if not found:
        raise ArtifactError(
            f"no code grids of the {choice} pipeline under {Path(cfg.paths.log_dir).resolve()} "
            f"(looked in {', '.join(CODE_SOURCES[choice])}). Run `python -m geovq.train stage="
            f"{CODE_SOURCES[choice][0]}` first, or give stage.codes=<path to codes.pt>."
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def run(cfg: DictConfig) -> dict:
    codes_path = resolve_codes(cfg)
    # model.n_codes=null: the vocabulary is the codebook size recorded with the codes; a number
    # is checked against it by the data module.
    n_codes = cfg.model.n_codes or int(load_code_grids(codes_path).payload["n_codes"])
    trained = train_and_test(
        cfg,
        TransformerPrior,
        data_kwargs={"path": str(codes_path), "n_codes": n_codes},
        model_kwargs={"n_codes": n_codes},
    )
    metrics = trained.metrics
    baseline = unigram_entropy(trained.datamodule.split("train"), trained.datamodule.n_codes)
    metrics["unigram/nll"] = baseline
    metrics["unigram/perplexity"] = math.exp(baseline)
    if trained.trainer.is_global_zero:
        write_run_files(cfg, metrics)
    log_final_and_finish(trained.trainer, metrics)
    return metrics
