"""Shared fixtures: the local MNIST copy and Hydra configs composed for a temporary run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import geovq.train  # noqa: F401  (registers the config resolvers)
from geovq import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("GEOVQ_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()


def tiny_overrides(**extra) -> list[str]:
    """Overrides for a CPU run of a few steps on a tiny MNIST subset: debug=tiny (the same
    settings a user gets from the command line) plus small models."""
    base = {
        "data.root": str(DATA_ROOT),
        "data.download": "false",
        "model.hidden_channels": 16,
        "model.n_res_blocks": 1,
        "model.latent_dim": 8,
    }
    base.update(extra)
    return ["debug=tiny", *(f"{key}={value}" for key, value in base.items())]


def compose_config(output_dir: Path, overrides: list[str]):
    """Compose conf/train.yaml as `python -m geovq.train` would, writing into output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        if not any(item.startswith("paths.log_dir=") for item in overrides):
            cfg.paths.log_dir = str(output_dir.parent)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str, output_dir: Path | None = None, tiny: bool = True, **tiny_extra):
        all_overrides = (tiny_overrides(**tiny_extra) if tiny else []) + list(overrides)
        return compose_config(output_dir or tmp_path / "run", all_overrides)

    yield _make
    GlobalHydra.instance().clear()


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300, env: dict | None = None):
    """Run `python -m geovq.train ARGS` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "", "WANDB_SILENT": "true", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        [sys.executable, "-m", "geovq.train", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found at {DATA_ROOT}; set GEOVQ_DATA_ROOT to a folder holding MNIST/raw")
    return DATA_ROOT
