"""Every config in geovq/conf/ composes, and every object it describes instantiates."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from geovq import CONF_DIR
from geovq.precision import cpu_has_native_bf16, fast_precision
from lightning.pytorch.callbacks import ProgressBar

from geovq.training import build_trainer

GROUPS = ["data", "model", "trainer", "logger", "callbacks", "stage", "experiment", "paths", "quantizer"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_config_composes_and_instantiates(make_cfg, group, option, tmp_path):
    if group == "trainer" and option == "gpu" and not torch.cuda.is_available():
        pytest.skip("no GPU here; the gpu trainer config only composes")
    cfg = make_cfg(f"{group}={option}", tiny=False)
    assert cfg.stage.name
    if group == "data":
        datamodule = instantiate(cfg.data)
        assert datamodule.hparams.batch_size > 0
    elif group == "model":
        # null means "from the code grids" (stage=prior passes n_codes and grid_size in) or "from
        # the data's labels" (stage=classifier passes n_classes in).
        from_stage = {"n_codes": 16, "grid_size": 7, "n_classes": 10}
        extra = {key: value for key, value in from_stage.items() if key in cfg.model and cfg.model[key] is None}
        assert isinstance(instantiate(cfg.model, **extra), torch.nn.Module)
    elif group == "trainer":
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs >= 1
    elif group in ("logger", "callbacks"):
        # Every configured entry reaches the Trainer a stage builds, as the class it names.
        trainer = build_trainer(cfg)
        held = Counter(type(obj).__name__ for obj in (trainer.loggers if group == "logger" else trainer.callbacks))
        named = Counter(entry._target_.rsplit(".", 1)[-1] for entry in cfg[group].values()
                        if entry is not None and "_target_" in entry)
        assert named == held if group == "logger" else named <= held, (named, held)
    elif group == "quantizer":
        # The configured settings pass the quantizer's checks; with small sizes it fits and codes.
        quantizer = instantiate(cfg.quantizer)
        quantizer.check_params()
        small = {"n_clusters": 4, "n_landmarks": 60, "n_neighbors": 5, "n_jobs": 1, "progress": False}
        quantizer.set_params(**{key: value for key, value in small.items() if key in quantizer.get_params()})
        vectors = np.random.default_rng(0).normal(size=(80, 3)).astype(np.float32)
        extra = {"variances": np.ones_like(vectors)} if quantizer.uses_variances else {}
        codes = quantizer.fit(vectors, **extra).predict(vectors, **extra)
        assert quantizer.cluster_centers_.shape == (4, 3) and codes.shape == (80,)
        assert set(codes.tolist()) <= set(range(4))
    elif group == "paths":
        assert Path(cfg.paths.output_dir).is_dir()


def test_every_group_has_an_option():
    for group in GROUPS:
        assert options(group), f"geovq/conf/{group} is empty"


def test_precision_is_a_plain_override(make_cfg):
    cfg = make_cfg("trainer.precision=bf16-mixed")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert "bf16" in str(trainer.precision)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_progress_bar_can_be_switched_off(make_cfg, enabled):
    """trainer.enable_progress_bar=false must not meet Lightning's refusal of the configured bar."""
    trainer = build_trainer(make_cfg("stage=vae", f"trainer.enable_progress_bar={str(enabled).lower()}"))
    assert any(isinstance(callback, ProgressBar) for callback in trainer.callbacks) is enabled


@pytest.mark.parametrize(("flags", "native"), [("fpu avx2 fma", False), ("avx2 avx512f avx512_bf16", True),
                                               ("avx2 amx_bf16 amx_tile", True)])
def test_bf16_is_chosen_only_where_the_cpu_computes_it(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is native
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_experiment_paper_asks_for_the_fast_precision_of_the_prior(make_cfg):
    """The paper's priors (d_model 64) train in bf16 where the CPU computes it (faster, with its
    attention kept off torch's slow bf16 kernel, and the same NLL), else in float32."""
    prior = OmegaConf.to_container(make_cfg("experiment=paper", tiny=False).pipeline, resolve=True)["prior"]
    expected = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    assert f"trainer.precision={expected}" in prior or torch.cuda.is_available()
    assert fast_precision("cpu", "prior") == expected
    if not torch.cuda.is_available():
        assert fast_precision("gpu", "prior") == "32-true"  # no device to compute bf16 on


@pytest.mark.parametrize(("native", "model", "expected"), [
    (True, "classifier", "bf16-mixed"), (True, "prior", "bf16-mixed"), (True, "grid_vae", "bf16-mixed"),
    (True, "vqvae", "32-true"), (False, "grid_vae", "32-true"),
    (True, None, "bf16-mixed"), (False, "classifier", "32-true"), (False, "prior", "32-true"), (False, None, "32-true"),
])
def test_bf16_is_chosen_per_model_where_it_measured_faster(monkeypatch, native, model, expected):
    import geovq.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.fast_precision("cpu", model) == expected


def test_an_unknown_model_is_refused_by_the_precision_resolver():
    with pytest.raises(ValueError, match="unknown model 'gridvae'"):
        fast_precision("cpu", "gridvae")


def test_the_classifier_trains_in_the_fast_precision_and_channels_last_in_bf16(make_cfg):
    cfg = make_cfg("stage=classifier", tiny=False)
    assert cfg.trainer.precision == fast_precision(cfg.trainer.accelerator, "classifier")
    assert cfg.callbacks.channels_last._target_.endswith("ChannelsLastInBf16")


def test_the_gridvae_trains_in_its_fast_precision_unless_told_otherwise(make_cfg):
    """stage=vae (and every study's GridVAE) asks the resolver; a command-line precision wins."""
    assert make_cfg("stage=vae", tiny=False).trainer.precision == fast_precision("cpu", "grid_vae")
    assert make_cfg("stage=vae", "trainer.precision=32-true", tiny=False).trainer.precision == "32-true"
    assert make_cfg("experiment=rate_distortion", tiny=False).trainer.precision == fast_precision("cpu", "grid_vae")


def test_wandb_groups_the_runs_of_a_sweep(make_cfg):
    assert make_cfg("logger=wandb", "stage=vqvae").logger.wandb.group == "vqvae"
    cfg = make_cfg("logger=wandb", "stage=vqvae", "hydra.mode=MULTIRUN", "hydra.sweep.dir=/tmp/sweeps/commitment")
    assert cfg.logger.wandb.group == "vqvae-sweep-commitment"
    assert make_cfg("logger=wandb", "experiment=quick").logger.wandb.group == "experiment-quick"
