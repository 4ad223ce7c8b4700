"""One small module per stage; each exposes ``run(cfg) -> dict of metrics``."""

import importlib

STAGES = {
    "vae": "geovq.stages.vae",
    "vqvae": "geovq.stages.vqvae",
    "quantize": "geovq.stages.quantize",
    "finetune": "geovq.stages.finetune",
    "prior": "geovq.stages.prior",
    "sample": "geovq.stages.sample",
    "classifier": "geovq.stages.classifier",
    "evaluate": "geovq.stages.evaluate",
    "pipeline": "geovq.stages.pipeline",
}


def get_stage(name: str):
    """The ``run`` function of a stage, or a clear error listing the known stages."""
    from geovq.errors import ConfigError

    if name not in STAGES:
        raise ConfigError(f"unknown stage '{name}'. Choose one of: {', '.join(STAGES)} (stage=<name>).")
    return importlib.import_module(STAGES[name]).run
