"""One small module per stage; each exposes ``run(cfg) -> dict of metrics``. The stages are the
rows of ``geovq/stage_registry.py``."""

import importlib

from geovq.errors import ConfigError
from geovq.stage_registry import STAGES


def get_stage(name: str):
    """The ``run`` function of a stage, or a clear error listing the known stages."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage '{name}'. Choose one of: {', '.join(STAGES)} (stage=<name>).")
    return importlib.import_module(STAGES[name].module).run
