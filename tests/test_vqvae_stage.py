"""stage=vqvae end to end, and the commitment-cost sweep through Hydra's multirun."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from geovq.artifacts import load_code_grids, require_made_from
from geovq.models.io import load_model
from geovq.models.vqvae import VQVAE
from geovq.train import run_stage


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_stage_vqvae_writes_model_codes_and_usage(make_cfg, tmp_path):
    metrics = run_stage(make_cfg("stage=vqvae", "model.quantizer.n_codes=16"))
    out = tmp_path / "run"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    model, model_art = load_model(out / "model.pt", "vqvae")
    assert isinstance(model, VQVAE) and model.n_codes == 16
    codes = load_code_grids(out / "codes.pt")
    require_made_from(codes, "vqvae", model_art)
    splits = codes.payload["splits"]
    assert codes.payload["n_codes"] == 16
    assert splits["train"].shape == (256 - 21, 7, 7) and splits["val"].shape == (21, 7, 7)
    assert splits["test"].shape == (200, 7, 7)
    assert int(splits["test"].min()) >= 0 and int(splits["test"].max()) < 16
    # The stored codes are what the saved model assigns.
    with open(out / "code_usage.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["split"] for row in rows} == {"train", "val"}
    assert sum(int(r["count"]) for r in rows if r["split"] == "val") == 21 * 49
    saved = json.loads((out / "metrics.json").read_text())
    assert 0 < saved["codes/train_utilization"] <= 1
    assert saved["codes/train_codes_used"] == int((torch.bincount(splits["train"].flatten(), minlength=16) > 0).sum())
    assert saved["test/mse"] == metrics["test/mse"] > 0


@pytest.mark.slow
def test_commitment_cost_sweep_writes_a_summary(run_cli, tiny_overrides, tmp_path):
    result = run_cli(
        "-m",
        "stage=vqvae",
        "model.quantizer.commitment_cost=0.25,2.5",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "figures=false",
        "model.quantizer.n_codes=8",
        *tiny_overrides(**{"data.subset": 128, "data.test_subset": 64}),
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert (sweep / "0" / "codes.pt").is_file() and (sweep / "1" / "codes.pt").is_file()
    table = (sweep / "summary.md").read_text()
    assert "model.quantizer.commitment_cost" in table and "| 0.25 |" in table and "| 2.5 |" in table
    with open(sweep / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model.quantizer.commitment_cost"] for row in rows] == ["0.25", "2.5"]
    assert all(float(row["test/mse"]) > 0 and 0 < float(row["codes/train_utilization"]) <= 1 for row in rows)
    assert (sweep / "summary.png").stat().st_size > 5000
