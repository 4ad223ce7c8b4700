"""Sweeps beyond one process with Hydra's own plugins: the launchers (launcher=joblib,
submitit_local, slurm) and the Optuna search (hparams_search=vqvae_optuna), through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from geovq.errors import ConfigError
from geovq.train import optimized_value


@pytest.fixture
def tiny_sweep(tiny_overrides) -> list[str]:
    """The overrides of each run of a sweep: tiny VQ-VAEs on 128 training images."""
    return ["stage=vqvae", "figures=false", *tiny_overrides(**{"data.subset": 128, "data.test_subset": 64})]


@pytest.fixture
def compose(compose_config, tmp_path):
    def _compose(*overrides: str):
        return compose_config(tmp_path / "run", list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("overrides", "launcher", "settings"),
    [
        (["launcher=joblib", "hydra.launcher.n_jobs=3"], "JoblibLauncher", {"n_jobs": 3, "backend": "loky"}),
        (["launcher=submitit_local"], "submitit_launcher.LocalLauncher", {"timeout_min": 120, "gpus_per_node": 0}),
        (["launcher=slurm", "hydra.launcher.timeout_min=30"], "submitit_launcher.SlurmLauncher",
         {"timeout_min": 30, "gpus_per_node": 1}),
    ],
    ids=["joblib", "submitit_local", "slurm"],
)
def test_launcher_configs_select_hydras_launchers(compose, overrides, launcher, settings):
    cfg = compose(*overrides)
    assert cfg.hydra.launcher._target_.endswith(launcher)
    assert cfg.hydra.sweeper._target_.endswith("BasicSweeper")
    assert cfg.get("optimized_metric") is None
    # The plugin is installed and starts each job with the config's settings (and the command line's).
    started = instantiate(cfg.hydra.launcher)
    given = started.joblib if launcher == "JoblibLauncher" else started.params
    assert {key: given[key] for key in settings} == settings


def test_slurm_asks_for_the_devices_the_trainer_uses(compose):
    cfg = compose("launcher=slurm", "trainer=ddp", "trainer.devices=4", "hydra.launcher.partition=gpu")
    params = instantiate(cfg.hydra.launcher).params
    assert (params["gpus_per_node"], params["tasks_per_node"], params["partition"]) == (4, 4, "gpu")
    assert params["timeout_min"] > 0 and params["cpus_per_task"] >= 1 and params["mem_gb"] > 0
    default = compose("launcher=slurm")
    assert default.trainer.accelerator == "gpu" and default.hydra.launcher.gpus_per_node == 1
    assert default.hydra.launcher.partition is None
    cpu = compose("launcher=slurm", "trainer=cpu", "hydra.launcher.gpus_per_node=0")
    assert cpu.trainer.accelerator == "cpu" and cpu.hydra.launcher.gpus_per_node == 0


def test_optuna_search_config(compose):
    cfg = compose("hparams_search=vqvae_optuna")
    assert cfg.stage.name == "vqvae" and cfg.optimized_metric == "test/mse"
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == cfg.seed
    assert set(sweeper.params) == {"model.quantizer.commitment_cost", "model.quantizer.n_codes"}
    # every key of the search space exists in the VQ-VAE's config
    assert all(OmegaConf.select(cfg, key) is not None for key in sweeper.params)
    # The sweeper reads every key as a range to search (none as a fixed value).
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    searched = instantiate(sweeper).sweeper.params
    distributions, fixed = create_params_from_overrides([f"{key}={value}" for key, value in searched.items()])
    assert not fixed and set(distributions) == set(sweeper.params)
    assert sorted(distributions["model.quantizer.n_codes"].choices) == [32, 64, 128, 256, 512]


def test_main_returns_the_optimized_metric_only_when_asked():
    metrics = {"test/mse": 0.25, "test/loss": 90.0}
    plain = OmegaConf.create({"stage": {"name": "vqvae"}})
    assert optimized_value(plain, metrics) is metrics
    searched = OmegaConf.create({"stage": {"name": "vqvae"}, "optimized_metric": "test/mse"})
    value = optimized_value(searched, metrics)
    assert value == 0.25 and type(value) is float
    wrong = OmegaConf.create({"stage": {"name": "vqvae"}, "optimized_metric": "val/acc"})
    with pytest.raises(ConfigError, match=r"optimized_metric: .*no metric 'val/acc'.*test/loss, test/mse"):
        optimized_value(wrong, metrics)


def check_sweep(sweep: Path, runs: int) -> list[dict]:
    """Each run wrote its metrics.json and the sweep folder its summary; the summary's rows."""
    for job in range(runs):
        assert json.loads((sweep / str(job) / "metrics.json").read_text())["test/mse"] > 0
    assert (sweep / "summary.md").read_text().count("\n") == 2 + runs
    with open(sweep / "summary.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        # each run in its own process started by submitit, as on a SLURM node
        ["launcher=submitit_local"],
        # both runs at once (loky caps each worker's torch threads at cores / n_jobs)
        ["launcher=joblib", "hydra.launcher.n_jobs=2"],
    ],
    ids=["submitit_local", "joblib"],
)
def test_a_sweep_under_a_launcher_writes_every_run_and_the_summary(run_cli, tiny_sweep, tmp_path, launcher):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        *launcher,
        "model.quantizer.commitment_cost=0.25,2.5",
        "model.quantizer.n_codes=8",
        "logger=wandb",  # offline, in the run folder
        f"hydra.sweep.dir={sweep}",
        *tiny_sweep,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = check_sweep(sweep, runs=2)
    assert sorted(row["model.quantizer.commitment_cost"] for row in rows) == ["0.25", "2.5"]
    if launcher[0] == "launcher=submitit_local":
        assert list((sweep / ".submitit").glob("*/*_result.pkl")), "the runs did not go through submitit"
    # the W&B group is resolved inside each job (another process): the runs share the sweep's
    groups = {yaml.safe_load((sweep / str(job) / "config.yaml").read_text())["logger"]["wandb"]["group"] for job in range(2)}
    assert groups == {"vqvae-sweep-sweep"}


@pytest.mark.slow
def test_optuna_search_runs_its_trials_and_reports_the_best(run_cli, tiny_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "hparams_search=vqvae_optuna",
        "hydra.sweeper.n_trials=3",
        "model.quantizer.n_codes=choice(8,16)",  # a smaller search space than the config's
        f"hydra.sweep.dir={sweep}",
        *tiny_sweep,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_sweep(sweep, runs=3)
    assert not (sweep / "3").exists()
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"model.quantizer.commitment_cost", "model.quantizer.n_codes"}
    assert 0.1 <= results["best_params"]["model.quantizer.commitment_cost"] <= 2.5
    assert results["best_params"]["model.quantizer.n_codes"] in (8, 16)
    trials = [json.loads((sweep / str(job) / "metrics.json").read_text())["test/mse"] for job in range(3)]
    assert results["best_value"] == pytest.approx(min(trials))
