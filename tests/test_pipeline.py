"""experiment=quick end to end on a tiny subset: report, figures, resume after an interruption."""

from __future__ import annotations

import json

import pytest
from conftest import DATA_ROOT, compose_config, run_cli

import geovq.stages.pipeline as pipeline_module
from geovq.errors import TrainingError
from geovq.train import run_stage

SMALL_AE = "'model.hidden_channels=16','model.latent_dim=8','model.n_res_blocks=1'"
OVERRIDES = [
    "experiment=quick",
    f"data.root={DATA_ROOT}",
    "data.download=false",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.enable_model_summary=false",
    "pipeline.all=['data.subset=300','data.test_subset=100','trainer.max_epochs=1']",
    f"pipeline.vae=[{SMALL_AE}]",
    f"pipeline.vqvae=[{SMALL_AE},'model.quantizer.n_codes=16']",
    f"pipeline.vqvae_ema=[{SMALL_AE},'model.quantizer.n_codes=16']",
    "pipeline.quantize=['quantizer.n_landmarks=300','quantizer.n_neighbors=6','quantizer.n_clusters=16','quantizer.progress=false']",
    "pipeline.kmeans=['quantizer.n_landmarks=300','quantizer.n_clusters=16','quantizer.progress=false']",
    "pipeline.prior=['model.n_layer=1','model.d_model=32','model.n_head=2']",
    "pipeline.sample=['stage.n_samples=100']",
    "pipeline.tsne_points=300",
]
STEPS = ["classifier", "vae", "quantize_geodesic", "quantize_kmeans", "vqvae", "vqvae_ema"] + [
    f"{kind}_{method}" for method in ("A_geodesic", "B_vqvae", "B_vqvae_ema") for kind in ("prior", "sample", "evaluate")
]


@pytest.mark.slow
def test_quick_experiment_writes_report_and_figures_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "experiments" / "quick"
    real_get_stage = pipeline_module.get_stage

    def interrupted(name):  # the run dies when it reaches the first evaluation
        if name == "evaluate":
            raise TrainingError("simulated interruption")
        return real_get_stage(name)

    monkeypatch.setattr(pipeline_module, "get_stage", interrupted)
    with pytest.raises(TrainingError):
        run_stage(compose_config(out, OVERRIDES))
    finished = {step: (out / step / "step.json").stat().st_mtime_ns for step in ("vae", "quantize_geodesic", "sample_A_geodesic")}
    assert not (out / "evaluate_A_geodesic" / "step.json").exists()

    monkeypatch.setattr(pipeline_module, "get_stage", real_get_stage)
    summary = run_stage(compose_config(out, OVERRIDES))
    # Finished steps were reused, not recomputed.
    for step, mtime in finished.items():
        assert (out / step / "step.json").stat().st_mtime_ns == mtime, f"{step} was recomputed"
    for step in STEPS:
        assert (out / step / "step.json").is_file(), step
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"A_geodesic", "B_vqvae", "B_vqvae_ema"}
    for evaluation in report["methods"].values():
        assert 0 < evaluation["recon/test_mse"] < 0.5
        assert 0 < evaluation["codes/utilization"] <= 1
        assert evaluation["prior/test_nll"] > 0 and "fidelity/fid" in evaluation
    assert summary["A_geodesic/codes/n_codes"] == 16
    text = (out / "report.md").read_text()
    assert "| A: GridVAE + geodesic K-Medoids |" in text and "0.016125" in text
    for figure in ("fig1_tsne_clusters.png", "fig2_codebook_usage.png", "fig3_reconstructions.png", "fig4_samples.png"):
        assert (out / figure).stat().st_size > 5000, figure

    # A third run does nothing but the report: every step is reused.
    before = {step: (out / step / "step.json").stat().st_mtime_ns for step in STEPS}
    run_stage(compose_config(out, OVERRIDES + ["pipeline.figures=false"]))
    assert before == {step: (out / step / "step.json").stat().st_mtime_ns for step in STEPS}


def test_pipeline_refuses_misplaced_overrides(tmp_path):
    from geovq.errors import ConfigError

    # An override only one step understands, given to all, names the step and the fix.
    with pytest.raises(ConfigError, match=r"step 'classifier'.*pipeline\.classifier="):
        run_stage(compose_config(tmp_path / "b", OVERRIDES + ["model.latent_dim=16"]))


@pytest.mark.slow
def test_quick_experiment_on_two_cpu_processes(tmp_path):
    """Training steps run distributed (2 gloo processes); quantization, sampling and evaluation once."""
    out = tmp_path / "quick"
    overrides = [item for item in OVERRIDES if not item.startswith("experiment=")]
    result = run_cli("experiment=quick", *overrides, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "pipeline.figures=false", f"hydra.run.dir={out}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2") == 7  # the 7 training steps
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"A_geodesic", "B_vqvae", "B_vqvae_ema"}
    for step in STEPS:
        assert (out / step / "step.json").is_file(), step
