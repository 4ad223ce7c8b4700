"""The rate-distortion sweep: both a posteriori quantizers at the end of one GridVAE fit
(callbacks=quantize_both), the sweep summary's rate columns and figure, experiment=rate_distortion."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from geovq.artifacts import config_hash, load_artifact, load_code_grids, require_made_from
from geovq.run_folder import result_config
from geovq.inputs import resolve_codes
from geovq.sweeps import write_summary
from geovq.train import run_stage

# Shared by both quantizers through quantizer=; n_neighbors is the geodesic one's alone.
SMALL = ["quantizer.n_landmarks=300", "quantizer.n_clusters=8", "quantizer.progress=false",
         "callbacks.quantize_geodesic.quantizer.n_neighbors=6"]
BOTH = ["stage=vae", "callbacks=quantize_both", "figures=false", *SMALL]
METHODS = {"geodesic": "GeodesicKMedoids", "kmeans": "EuclideanKMeans"}


def write_job(sweep, job: int, beta: float) -> list[str]:
    """The overrides Hydra records for job ``job`` of a multirun over model.beta."""
    overrides = [f"model.beta={beta}", "callbacks=quantize_both"]
    (sweep / str(job) / ".hydra").mkdir(parents=True, exist_ok=True)
    (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return overrides


@pytest.fixture(scope="module")
def sweep(compose_config, tiny_overrides, tmp_path_factory):
    """A two-point sweep over beta run in-process, laid out as Hydra's multirun lays it out."""
    sweep = tmp_path_factory.mktemp("sweep")
    runs = []
    for job, beta in enumerate((1.0, 0.1)):
        overrides = write_job(sweep, job, beta)
        cfg = compose_config(sweep / str(job), tiny_overrides() + BOTH + overrides)
        runs.append((cfg, run_stage(cfg)))
    GlobalHydra.instance().clear()
    return sweep, runs


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_both_quantizers_write_their_own_folder_codes_and_metrics(sweep, make_cfg):
    folder, [(cfg, metrics), _] = sweep
    out = folder / "0"
    assert not (out / "codes.pt").exists()  # nothing of either lands where callbacks=quantize writes
    vae = load_artifact(out / "model.pt")
    recorded = result_config(cfg)
    assert "quantizer" not in recorded  # the vae's own record: it used neither quantizer
    for name, method in METHODS.items():
        codebook = load_artifact(out / f"quantize_{name}" / "codebook.pt", kind="codebook")
        codes = load_code_grids(out / f"quantize_{name}" / "codes.pt")
        require_made_from(codebook, "vae", vae)
        require_made_from(codes, "codebook", codebook)
        assert codebook.payload["method"] == method and codes.payload["n_codes"] == 8
        # Its codes record its own quantizer, as stage=quantize quantizer=<name> records it.
        alone = result_config(make_cfg("stage=quantize", f"quantizer={name}", *SMALL[:3],
                                       *(["quantizer.n_neighbors=6"] if name == "geodesic" else [])))
        own = {**recorded, "quantizer": alone["quantizer"]}
        assert codes.provenance["config_hash"] == config_hash(own)
        assert 0 < metrics[f"quantized_{name}/train_utilization"] <= 1
        assert metrics[f"quantized_{name}/test_mse"] > 0 and metrics[f"time_{name}/fit"] >= 0
    assert "quantized/test_mse" not in metrics and "time/fit" not in metrics
    # The two differ (medoids are training latents, K-Means centres are means).
    assert metrics["quantized_geodesic/test_mse"] != metrics["quantized_kmeans/test_mse"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["quantized_kmeans/test_mse"] == pytest.approx(metrics["quantized_kmeans/test_mse"])
    assert saved["rate/ln_codebook_size"] == pytest.approx(math.log(8))
    assert saved["continuous/test_mse"] == pytest.approx(saved["test/mse"], rel=1e-4)


def test_stage_codes_geodesic_never_picks_the_kmeans_codes_beside_them(sweep, make_cfg, tmp_path):
    """stage=prior stage.codes=geodesic takes the newest geodesic codes, even when a GridVAE run
    with callbacks=quantize_both wrote K-Means codes after them."""
    folder, _ = sweep
    run = tmp_path / "logs" / "vae" / "runs" / "r1"
    shutil.copytree(folder / "0", run)
    os.utime(run / "quantize_kmeans" / "codes.pt")  # the newest codes.pt under the log folder
    cfg = make_cfg("stage=prior", "stage.codes=geodesic", f"paths.log_dir={tmp_path / 'logs'}", tiny=False)
    assert resolve_codes(cfg) == run / "quantize_geodesic" / "codes.pt"


def test_the_sweep_summary_holds_the_rate_and_both_quantized_errors(sweep):
    folder, runs = sweep
    path = write_summary(folder)
    header = path.read_text().splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:2] == ["job", "model.beta"]
    for key in ("test/mse", "quantized_geodesic/test_mse", "quantized_kmeans/test_mse",
                "rate/kl_per_position", "rate/ln_codebook_size", "rate/active_dims"):
        assert key in columns, key
    with open(folder / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model.beta"] for row in rows] == ["1.0", "0.1"]
    for row, (_, metrics) in zip(rows, runs):
        assert float(row["rate/kl_per_position"]) == pytest.approx(metrics["rate/kl_per_position"])
    assert (folder / "rate_distortion.png").stat().st_size > 10000


def test_a_sweep_without_the_rate_draws_no_rate_distortion_figure(tmp_path):
    for job, n_codes in enumerate((8, 16)):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.quantizer.n_codes={n_codes}"]))
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"test/mse": 0.01, "codes/train_utilization": 0.5}))
    write_summary(tmp_path)
    assert (tmp_path / "summary.png").is_file() and not (tmp_path / "rate_distortion.png").exists()


def test_experiment_rate_distortion_sweeps_four_betas_with_both_quantizers(compose_config, tmp_path):
    cfg = compose_config(tmp_path / "run", ["experiment=rate_distortion", "quantizer.n_clusters=64"])
    GlobalHydra.instance().clear()
    assert cfg.stage.name == "vae" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params == {"model.beta": "1,0.3,0.1,0.03"}
    assert "experiments/rate_distortion/" in cfg.hydra.sweep.dir
    for name, method in METHODS.items():
        callback = cfg.callbacks[f"quantize_{name}"]
        assert callback.name == name and callback.quantizer._target_.endswith(method)
        assert callback.quantizer.n_clusters == 64 and callback.quantizer.n_landmarks == cfg.quantizer.n_landmarks


def test_an_impossible_named_quantizer_is_refused_before_training(compose_config, tmp_path):
    cfg = compose_config(tmp_path / "run", ["stage=vae", "callbacks=quantize_both", "quantizer.n_landmarks=50",
                                            "quantizer.n_clusters=64"])
    GlobalHydra.instance().clear()
    with pytest.raises(Exception, match="n_clusters=64 is more than n_landmarks=50"):
        instantiate(cfg.callbacks.quantize_kmeans)
    # A setting of one quantizer alone: the message names the key that sets it.
    cfg = compose_config(tmp_path / "run", ["stage=vae", "callbacks=quantize_both", "callbacks.quantize_geodesic.quantizer.n_neighbors=0"])
    GlobalHydra.instance().clear()
    with pytest.raises(Exception, match=r"Set it with callbacks\.quantize_geodesic\.quantizer\.n_neighbors="):
        instantiate(cfg.callbacks.quantize_geodesic)


@pytest.mark.slow
def test_the_experiment_runs_as_one_command(run_cli, tiny_overrides, tmp_path):
    """The whole sweep through the CLI, no -m: each run quantized twice, then the summary (the
    fast tests above cover each part in-process; this is hydra.mode: MULTIRUN and SweepSummary)."""
    result = run_cli(
        "experiment=rate_distortion", "model.beta=1,0.1", f"hydra.sweep.dir={tmp_path}",
        *tiny_overrides(**{"data.subset": 128, "data.test_subset": 64}), *SMALL, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "1" / "quantize_kmeans" / "codes.pt").is_file()
    with open(tmp_path / "summary.csv") as handle:
        assert [row["model.beta"] for row in csv.DictReader(handle)] == ["1", "0.1"]
    assert (tmp_path / "rate_distortion.png").is_file()
