"""Shared fixtures: the local MNIST copy, Hydra configs composed for a temporary run folder, the
command line as a user runs it, and the tiny settings the tests train with. Test modules take
these as fixture arguments and import nothing from here or from each other."""

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
# The autoencoder sizes of every tiny run: GridVAE/VQVAE keyword arguments, model.* overrides.
TINY_MODEL = {"latent_dim": 8, "hidden_channels": 16, "n_res_blocks": 1}


def _tiny_overrides(**extra) -> list[str]:
    """Overrides for a CPU run of a few steps on a tiny MNIST subset: debug=tiny (the same
    settings a user gets from the command line) plus small models."""
    base = {
        "data.root": str(DATA_ROOT),
        "data.download": "false",
        **{f"model.{key}": value for key, value in TINY_MODEL.items()},
    }
    base.update(extra)
    return ["debug=tiny", *(f"{key}={value}" for key, value in base.items())]


def _compose_config(output_dir: Path, overrides: list[str]):
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
        all_overrides = (_tiny_overrides(**tiny_extra) if tiny else []) + list(overrides)
        return _compose_config(output_dir or tmp_path / "run", all_overrides)

    yield _make
    GlobalHydra.instance().clear()


def _run_cli(*args: str, cwd: Path | None = None, timeout: int = 300, env: dict | None = None):
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


@pytest.fixture(scope="session")
def repo() -> Path:
    """The checkout's root folder."""
    return REPO


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args, cwd=None, timeout=300, env=None)``: ``python -m geovq.train ARGS`` in a
    subprocess, as a user runs it; returns the CompletedProcess."""
    return _run_cli


@pytest.fixture(scope="session")
def tiny_overrides():
    """``tiny_overrides(**extra)``: the overrides of a tiny CPU run (debug=tiny, the local MNIST,
    small models), ``extra`` as ``key=value`` overrides added or replacing them."""
    return _tiny_overrides


@pytest.fixture(scope="session")
def compose_config():
    """``compose_config(output_dir, overrides)``: conf/train.yaml composed as ``python -m
    geovq.train`` would, writing into output_dir (no tiny settings added; see make_cfg)."""
    yield _compose_config
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def wandb_records():
    """``wandb_records(folder)``: the record files (bytes) of the offline W&B runs under folder,
    once W&B has written them. run.finish() returns before W&B's service has (on a loaded machine
    a test read the header alone); wandb.teardown, what a process's exit runs, waits for it."""

    def read(folder: Path) -> list[bytes]:
        import wandb

        wandb.teardown()
        return [record.read_bytes() for record in sorted(folder.glob("offline-run-*/run-*.wandb"))]

    return read


@pytest.fixture
def tiny_model() -> dict:
    """The keyword arguments of a tiny GridVAE/VQVAE (the sizes tiny_overrides sets)."""
    return dict(TINY_MODEL)


@pytest.fixture
def one_method_study() -> list[str]:
    """A study of one method declared on the command line: a GridVAE and a K-Means codebook of
    8 codes (add it to study_overrides)."""
    return [
        "~study",
        "+pipeline.steps={vae: {stage: vae}, kmeans8: {stage: quantize, inputs: {stage.vae: vae}, "
        "overrides: ['quantizer=kmeans', 'quantizer.n_clusters=8']}}",
        "+pipeline.methods={A_kmeans8: {codes: kmeans8, title: 'A: K-Means, K=8'}}",
    ]


@pytest.fixture
def study_overrides(data_root) -> list[str]:
    """experiment=quick on a tiny subset with small models: every step trains one epoch."""
    small_ae = "'model.hidden_channels=16','model.latent_dim=8','model.n_res_blocks=1'"
    return [
        "experiment=quick",
        f"data.root={data_root}",
        "data.download=false",
        "callbacks.progress_bar.refresh_rate=0",
        "trainer.enable_model_summary=false",
        "pipeline.all=['data.subset=300','data.test_subset=100','trainer.max_epochs=1']",
        f"pipeline.vae=[{small_ae}]",
        f"pipeline.vqvae=[{small_ae},'model.quantizer.n_codes=16']",
        "pipeline.quantize=['quantizer.n_landmarks=300','quantizer.n_clusters=16','quantizer.progress=false']",
        "pipeline.prior=['model.n_layer=1','model.d_model=32','model.n_head=2']",
        "pipeline.sample=['stage.n_samples=100']",
        "pipeline.tsne_points=300",
    ]


def _nan_loss_message(folder) -> str:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from geovq.callbacks.non_finite_loss import StopOnNonFiniteLoss
    from geovq.errors import TrainingError
    from geovq.models.grid_vae import GridVAE

    class BlowsUpAtStep(GridVAE):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.global_step >= 5 else loss

    images = torch.rand(64, 1, 28, 28)
    loader = DataLoader(TensorDataset(images, torch.zeros(64)), batch_size=16)
    checkpoints = ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_last=True)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        callbacks=[StopOnNonFiniteLoss(), checkpoints],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    with pytest.raises(TrainingError) as err:
        trainer.fit(BlowsUpAtStep(latent_dim=4, hidden_channels=8, n_res_blocks=0), train_dataloaders=loader)
    return str(err.value)


@pytest.fixture(scope="session")
def nan_loss_message():
    """``nan_loss_message(folder)``: train until the loss becomes NaN at step 5 (checkpoints every
    2 steps in ``folder``); the TrainingError's message."""
    return _nan_loss_message
