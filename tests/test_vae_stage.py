"""stage=vae end to end: run folder contents, resume, DDP on CPU, mixed precision, W&B offline."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from geovq.models.grid_vae import GridVAE
from geovq.models.io import load_model
from geovq.train import run_stage


def read_metrics_csv(folder, version=0):
    with open(folder / "csv" / f"version_{version}" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_stage_vae_writes_checkpoints_metrics_figure_and_model(make_cfg, tmp_path):
    cfg = make_cfg("stage=vae")
    metrics = run_stage(cfg)
    out = tmp_path / "run"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list((out / "checkpoints").glob("best-*.ckpt"))
    assert (out / "reconstructions.png").stat().st_size > 1000
    assert (out / "kl_per_dimension.png").stat().st_size > 1000
    assert (out / "config.yaml").read_text().count("root:") >= 1
    saved = json.loads((out / "metrics.json").read_text())
    assert 0 < saved["test/mse"] < 0.3 and saved["test/mse"] == pytest.approx(metrics["test/mse"])
    rows = read_metrics_csv(out)
    assert any(row.get("val/mse") for row in rows) and any(row.get("test/mse") for row in rows)
    model, artifact = load_model(out / "model.pt", "grid_vae")
    assert isinstance(model, GridVAE) and artifact.provenance["stage"] == "vae"
    assert model.encode(torch.rand(2, 1, 28, 28))[0].shape == (2, 8, 7, 7)


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_stage_vae_reports_its_rate_against_the_codebook(make_cfg):
    metrics = run_stage(make_cfg("stage=vae", "figures=false", "quantizer.n_clusters=64"))
    # The same KL as the test loss's KL term, per image, then per position of the 7x7 grid.
    assert metrics["rate/kl_per_image"] == pytest.approx(metrics["test/kl"], rel=1e-4)
    assert metrics["rate/kl_per_position"] == pytest.approx(metrics["test/kl"] / 49, rel=1e-4)
    assert 0 <= metrics["rate/active_dims"] <= metrics["rate/latent_dims"] == 8
    assert metrics["rate/ln_codebook_size"] == pytest.approx(math.log(64))


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_same_seed_same_model(make_cfg, tmp_path):
    first = run_stage(make_cfg("stage=vae", "figures=false", output_dir=tmp_path / "a"))
    second = run_stage(make_cfg("stage=vae", "figures=false", output_dir=tmp_path / "b"))
    assert first["test/mse"] == pytest.approx(second["test/mse"], abs=1e-7)


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_resume_continues_the_global_step(make_cfg, tmp_path):
    # A constant learning rate (no schedule spanning max_epochs), so more epochs can be resumed.
    out = tmp_path / "run"
    run_stage(make_cfg("stage=vae", "figures=false", "model.scheduler=null", output_dir=out))
    first_rows = read_metrics_csv(out)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] > 0
    run_stage(make_cfg("stage=vae", "figures=false", "model.scheduler=null", "ckpt_path=last", output_dir=out,
                       **{"trainer.max_epochs": 2}))
    resumed = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * last["global_step"]
    # The interrupted run's metrics are kept; the resumed run's steps continue after them.
    assert read_metrics_csv(out) == first_rows
    resumed_steps = [int(row["step"]) for row in read_metrics_csv(out, version=1) if row.get("val/loss")]
    assert resumed_steps and min(resumed_steps) >= last["global_step"]


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_bf16_mixed_precision_runs_on_cpu_and_tests_in_float32(make_cfg):
    metrics = run_stage(make_cfg("stage=vae", "figures=false", "trainer.precision=bf16-mixed"))
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
    # The test step runs without autocast: its KL is the float32 rate measured after the fit
    # (under bf16 autocast the two differed by 0.6%).
    assert metrics["test/kl"] == pytest.approx(metrics["rate/kl_per_image"], rel=1e-4)


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_wandb_logger_works_offline_without_account(make_cfg, wandb_records, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no stored login
    run_stage(make_cfg("stage=vae", "logger=wandb"))
    records = wandb_records(tmp_path / "run" / "wandb")
    assert records, "no offline W&B run written"
    # The offline run's record file holds the logged keys as plain protobuf strings.
    record = records[0]
    assert b"figures/kl_per_dimension" in record and b"final/rate/kl_per_position" in record
    assert (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").is_file()


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(run_cli, tiny_overrides, tmp_path):
    out = tmp_path / "ddp"
    result = run_cli(
        "stage=vae",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "figures=false",
        f"hydra.run.dir={out}",
        *tiny_overrides(),
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/mse"] > 0
    # The rate is measured over the whole test split, each rank encoding its shard.
    assert metrics["rate/kl_per_image"] == pytest.approx(metrics["test/kl"], rel=1e-4)
    assert "world_size=2" in result.stderr + result.stdout or "Initializing distributed: GLOBAL_RANK: 1" in (
        result.stderr + result.stdout
    )
