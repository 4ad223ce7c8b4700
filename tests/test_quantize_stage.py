"""The quantization stage: as a fit-end callback, alone on a saved GridVAE, and swept over K."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from geovq.artifacts import load_artifact, load_code_grids, require_made_from
from geovq.errors import ArtifactError, ConfigError
from geovq.models.io import load_model
from geovq.train import run_stage

SMALL_QUANTIZER = ["quantizer.n_landmarks=300", "quantizer.n_neighbors=6", "quantizer.n_clusters=8", "quantizer.progress=false"]


@pytest.fixture(scope="module")
def trained_vae(compose_config, tiny_overrides, tmp_path_factory):
    """A tiny GridVAE trained with the quantization callback attached."""
    out = tmp_path_factory.mktemp("vae") / "run"
    cfg = compose_config(out, tiny_overrides() + ["stage=vae", "callbacks=quantize", "figures=false", *SMALL_QUANTIZER])
    metrics = run_stage(cfg)
    return out, metrics


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_callback_writes_codebook_and_code_grids_at_fit_end(trained_vae, data_root):
    out, metrics = trained_vae
    vae, vae_art = load_model(out / "model.pt", "grid_vae")
    codebook = load_artifact(out / "codebook.pt", kind="codebook")
    codes = load_code_grids(out / "codes.pt")
    require_made_from(codebook, "vae", vae_art)
    require_made_from(codes, "codebook", codebook)
    vectors = codebook.payload["vectors"]
    assert vectors.shape == (8, 8) and codes.payload["n_codes"] == 8
    assert codes.payload["splits"]["train"].shape == (235, 7, 7)
    assert codes.payload["splits"]["test"].shape == (200, 7, 7)
    assert codebook.payload["medoid_indices"].shape == (8,)
    assert {"landmarks", "knn_graph", "shortest_paths", "kmedoids"} <= set(codebook.payload["timings"])
    assert 0 < metrics["quantized/train_utilization"] <= 1
    assert metrics["quantized/test_mse"] > 0 and metrics["continuous/test_mse"] > 0
    # The medoids are real training latents: each codebook vector is one cell's posterior mean.
    from geovq.data.images import ImageDataModule

    dm = ImageDataModule(root=str(data_root), subset=256, test_subset=200, download=False)
    with torch.no_grad():
        mu = vae.encode(dm.split("train").tensors[0])[0].permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.allclose(mu[codebook.payload["medoid_vector_indices"]], vectors, atol=1e-5)
    assert metrics["time/shortest_paths"] >= 0 and "memory_mb/shortest_paths" in metrics


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_stage_quantize_reuses_a_saved_vae(trained_vae, make_cfg, tmp_path):
    vae_dir, _ = trained_vae
    cfg = make_cfg("stage=quantize", f"stage.vae={vae_dir / 'model.pt'}", *SMALL_QUANTIZER, "quantizer.assignment=geodesic")
    metrics = run_stage(cfg)
    out = tmp_path / "run"
    codes = load_code_grids(out / "codes.pt")
    require_made_from(codes, "vae", load_artifact(vae_dir / "model.pt"))
    assert set(codes.payload["splits"]) == {"train", "val", "test"}
    for mode in ("landmark", "medoid"):
        assert 0 < metrics[f"assign_{mode}/train_utilization"] <= 1
        assert metrics[f"assign_{mode}/test_mse"] > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["quantized/objective"] == pytest.approx(metrics["quantized/objective"])


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_stage_quantize_with_the_full_graph(trained_vae, make_cfg, tmp_path):
    vae_dir, _ = trained_vae
    metrics = run_stage(make_cfg("stage=quantize", f"stage.vae={vae_dir / 'model.pt'}", *SMALL_QUANTIZER,
                                 "quantizer=geodesic_full"))
    codebook = load_artifact(tmp_path / "run" / "codebook.pt", kind="codebook").payload
    assert codebook["settings"]["method"] == "graph_full"
    assert metrics["quantized/objective"] <= codebook["start_objective"] == codebook["objective_history"][0]
    assert {"landmark_start", "knn_graph", "kmedoids"} <= set(codebook["timings"])
    assert codebook["knn_report"]["search"] == "exact"  # a few thousand latents: exact neighbours
    assert 0 < metrics["quantized/train_utilization"] <= 1 and metrics["quantized/test_mse"] > 0
    assert 0 < metrics["assign_medoid/train_utilization"] <= 1  # the other rule, compared


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_same_seed_same_codebook(trained_vae, make_cfg, tmp_path):
    vae_dir, _ = trained_vae
    books = []
    for name in ("a", "b"):
        run_stage(make_cfg("stage=quantize", f"stage.vae={vae_dir / 'model.pt'}", *SMALL_QUANTIZER, output_dir=tmp_path / name))
        books.append(load_artifact(tmp_path / name / "codebook.pt").payload["vectors"])
    assert torch.equal(books[0], books[1])


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_kmeans_quantizer(trained_vae, make_cfg, tmp_path):
    vae_dir, _ = trained_vae
    metrics = run_stage(make_cfg("stage=quantize", "quantizer=kmeans", f"stage.vae={vae_dir / 'model.pt'}",
                                 "quantizer.n_landmarks=300", "quantizer.n_clusters=8", "quantizer.progress=false"))
    assert load_artifact(tmp_path / "run" / "codebook.pt").payload["method"] == "EuclideanKMeans"
    assert metrics["quantized/test_mse"] > 0


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_vqvae_is_not_a_gridvae(tmp_path, make_cfg):
    run_stage(make_cfg("stage=vqvae", "model.quantizer.n_codes=8", "figures=false", output_dir=tmp_path / "vq"))
    with pytest.raises(ArtifactError, match="expected 'grid_vae'"):
        run_stage(make_cfg("stage=quantize", f"stage.vae={tmp_path / 'vq' / 'model.pt'}", *SMALL_QUANTIZER))


def test_more_clusters_than_landmarks_is_refused(trained_vae, make_cfg):
    vae_dir, _ = trained_vae
    with pytest.raises(ConfigError, match="n_clusters"):
        run_stage(make_cfg("stage=quantize", f"stage.vae={vae_dir / 'model.pt'}", "quantizer.n_landmarks=50",
                           "quantizer.n_clusters=64", "quantizer.n_neighbors=5"))


@pytest.mark.parametrize("override,names", [("trainer=gpu", "use trainer=cpu"), ("quantizer.device=cuda", "quantizer.device")])
def test_a_gpu_asked_for_where_there_is_none_is_one_line_before_any_work(make_cfg, monkeypatch, override, names):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # stage.vae names no file: the settings are refused before the VAE is looked for.
    with pytest.raises(ConfigError) as err:
        run_stage(make_cfg("stage=quantize", override, "stage.vae=/nonexistent/model.pt", *SMALL_QUANTIZER))
    assert names in str(err.value) and "\n" not in str(err.value)


def test_stage_quantize_with_quantizer_device_cpu(trained_vae, make_cfg, tmp_path):
    vae_dir, _ = trained_vae
    metrics = run_stage(make_cfg("stage=quantize", f"stage.vae={vae_dir / 'model.pt'}", *SMALL_QUANTIZER,
                                 "quantizer.device=cpu", "trainer=cpu", "stage.compare_assignments=false"))
    codes = load_code_grids(tmp_path / "run" / "codes.pt").payload
    assert codes["splits"]["test"].shape == (200, 7, 7) and codes["n_codes"] == 8
    assert 0 < metrics["quantized/train_utilization"] <= 1
    assert metrics["quantized/test_mse"] > 0 and metrics["continuous/test_mse"] > 0


@pytest.mark.slow
def test_cluster_count_sweep_through_multirun(run_cli, tiny_overrides, trained_vae, tmp_path):
    vae_dir, _ = trained_vae
    result = run_cli(
        "-m", "stage=quantize", f"stage.vae={vae_dir / 'model.pt'}", "quantizer.n_clusters=4,8",
        "quantizer.n_landmarks=300", "quantizer.n_neighbors=6", "quantizer.progress=false",
        "stage.compare_assignments=false", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *tiny_overrides(), timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "sweep" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["quantizer.n_clusters"] for row in rows] == ["4", "8"]
    assert [int(float(row["quantized/train_n_codes"])) for row in rows] == [4, 8]


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_quantize_logs_usage_to_wandb_offline(trained_vae, make_cfg, wandb_records, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    vae_dir, _ = trained_vae
    run_stage(make_cfg("stage=quantize", "logger=wandb", f"stage.vae={vae_dir / 'model.pt'}", *SMALL_QUANTIZER,
                       "stage.compare_assignments=false"))
    # The offline run's record file holds the logged keys as plain protobuf strings.
    records = wandb_records(tmp_path / "run" / "wandb")
    assert len(records) == 1, "expected one offline W&B run"
    data = records[0]
    for key in (b"quantized/train/code_usage", b"quantized/train/utilization", b"quantized/test_mse"):
        assert key in data, key


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_quantize_callback_needs_a_gridvae_and_a_valid_quantizer(make_cfg):
    with pytest.raises(ConfigError, match="use it with stage=vae"):
        run_stage(make_cfg("stage=vqvae", "callbacks=quantize", "model.quantizer.n_codes=8", *SMALL_QUANTIZER))
    # An impossible quantizer is refused before the VAE trains, not after.
    from hydra.utils import instantiate

    cfg = make_cfg("stage=vae", "callbacks=quantize", "quantizer.n_landmarks=50", "quantizer.n_clusters=64")
    with pytest.raises(Exception) as err:
        instantiate(cfg.callbacks.quantize_on_fit_end)
    assert "n_clusters=64 is more than n_landmarks=50" in str(err.value)


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_the_callback_run_writes_model_pt_once_and_records_the_config_as_stage_quantize_does(make_cfg, tmp_path, monkeypatch):
    import geovq.artifacts as artifacts
    from geovq.artifacts import config_hash
    from geovq.run_folder import result_config

    writes = []
    real_write = artifacts.atomic_write_bytes
    monkeypatch.setattr(artifacts, "atomic_write_bytes", lambda path, data: (writes.append(path.name), real_write(path, data)))
    cfg = make_cfg("stage=vae", "callbacks=quantize", "figures=false", *SMALL_QUANTIZER)
    run_stage(cfg)
    assert writes.count("model.pt") == 1 and writes.count("codes.pt") == 1
    recorded = result_config(cfg)
    assert load_code_grids(tmp_path / "run" / "codes.pt").provenance["config_hash"] == config_hash(recorded)
    # The same sections as a stage=quantize run records: the quantizer's settings among them.
    quantize_cfg = make_cfg("stage=quantize", *SMALL_QUANTIZER, output_dir=tmp_path / "q")
    assert set(recorded) == set(result_config(quantize_cfg)) and recorded["quantizer"] == result_config(quantize_cfg)["quantizer"]
