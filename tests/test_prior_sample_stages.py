"""stage=prior and stage=sample end to end, on tiny code grids of both pipelines."""

from __future__ import annotations

import json
import math

import pytest
import torch

from geovq.artifacts import load_artifact
from geovq.errors import ArtifactError, ConfigError
from geovq.models.io import load_model, save_model
from geovq.train import run_stage

TINY_PRIOR = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "data.batch_size=64", "trainer.max_epochs=1",
              "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false"]
QUANTIZER = ["quantizer.n_landmarks=300", "quantizer.n_neighbors=6", "quantizer.n_clusters=8", "quantizer.progress=false"]


@pytest.fixture(scope="module")
def pipelines(compose_config, tiny_overrides, tmp_path_factory):
    """Tiny upstream runs of both pipelines, laid out as outputs/<stage>/runs/<name>."""
    logs = tmp_path_factory.mktemp("outputs")
    run_stage(compose_config(logs / "vae" / "runs" / "a", tiny_overrides() + ["stage=vae", "callbacks=quantize", "figures=false", *QUANTIZER]))
    run_stage(compose_config(logs / "vqvae" / "runs" / "b", tiny_overrides() + ["stage=vqvae", "model.quantizer.n_codes=16", "figures=false"]))
    return logs


@pytest.fixture
def prior_cfg(compose_config):
    """``prior_cfg(logs, name, *extra)``: a tiny stage=prior writing into logs/prior/runs/name."""
    return lambda logs, name, *extra: compose_config(logs / "prior" / "runs" / name,
                                                     ["stage=prior", f"paths.log_dir={logs}", *TINY_PRIOR, *extra])


@pytest.mark.parametrize("pipeline,n_codes", [("geodesic", 8), ("vqvae", 16)])
@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_prior_then_samples_for_each_pipeline(compose_config, prior_cfg, pipelines, pipeline, n_codes):
    logs = pipelines
    metrics = run_stage(prior_cfg(logs, pipeline, f"stage.codes={pipeline}"))
    prior_dir = logs / "prior" / "runs" / pipeline
    prior, art = load_model(prior_dir / "model.pt", "prior")
    assert prior.hparams.n_codes == n_codes
    for split in ("train", "val", "test"):
        assert metrics[f"{split}/perplexity"] == pytest.approx(math.exp(metrics[f"{split}/nll"]), rel=1e-4)
    assert 0 <= metrics["unigram/nll"] <= math.log(n_codes) + 1e-6
    assert metrics["test/bits_per_image"] == pytest.approx(metrics["test/nll"] * 49 / math.log(2), rel=1e-4)
    assert metrics["prior/converged"] == 0.0 and metrics["prior/epochs"] == 1  # one epoch: the cap ended it

    sample_dir = logs / "sample" / "runs" / pipeline
    cfg = compose_config(sample_dir, ["stage=sample", f"paths.log_dir={logs}", f"stage.prior={prior_dir / 'model.pt'}",
                                      "stage.n_samples=20", "stage.batch_size=8", "stage.top_k=4"])
    sample_metrics = run_stage(cfg)
    samples = load_artifact(sample_dir / "samples.pt", kind="samples")
    assert samples.payload["images"].shape == (20, 1, 28, 28) and samples.payload["images"].dtype == torch.uint8
    codes = samples.payload["codes"]
    assert codes.shape == (20, 7, 7) and int(codes.min()) >= 0 and int(codes.max()) < n_codes
    expected_inputs = {"prior", "codes", "vqvae"} if pipeline == "vqvae" else {"prior", "codes", "codebook", "vae"}
    assert set(samples.provenance["inputs"]) == expected_inputs
    assert samples.provenance["inputs"]["prior"]["sha256"] == art.sha256
    assert (sample_dir / "samples.png").stat().st_size > 1000
    assert json.loads((sample_dir / "metrics.json").read_text())["sample/n"] == 20 == sample_metrics["sample/n"]


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_top_k_one_sampling_is_deterministic(compose_config, prior_cfg, pipelines, tmp_path):
    logs = pipelines
    run_stage(prior_cfg(logs, "greedy", "stage.codes=vqvae"))
    prior_path = logs / "prior" / "runs" / "greedy" / "model.pt"
    codes = []
    for seed in (1, 2):
        out = tmp_path / f"s{seed}"
        run_stage(compose_config(out, ["stage=sample", f"stage.prior={prior_path}", "stage.n_samples=5", "stage.top_k=1", f"seed={seed}", "figures=false"]))
        codes.append(load_artifact(out / "samples.pt").payload["codes"])
    assert torch.equal(codes[0], codes[1])


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_bad_sampling_inputs_are_refused(compose_config, prior_cfg, pipelines, tmp_path):
    logs = pipelines
    run_stage(prior_cfg(logs, "checks", "stage.codes=geodesic"))
    prior_path = logs / "prior" / "runs" / "checks" / "model.pt"
    base = ["stage=sample", f"stage.prior={prior_path}", "stage.n_samples=4", "figures=false"]
    with pytest.raises(ConfigError, match="temperature"):
        run_stage(compose_config(tmp_path / "t", base + ["stage.temperature=0"]))
    # A decoder of the wrong kind, and a GridVAE of another run, are refused by provenance.
    with pytest.raises(ArtifactError, match="expected 'grid_vae'"):
        run_stage(compose_config(tmp_path / "d", base + [f"stage.decoder={logs / 'vqvae' / 'runs' / 'b' / 'model.pt'}"]))
    other_vae, _ = load_model(logs / "vae" / "runs" / "a" / "model.pt", "grid_vae")
    with torch.no_grad():
        next(other_vae.parameters()).add_(0.01)
    save_model(tmp_path / "other_vae.pt", other_vae, "grid_vae", stage="vae")
    with pytest.raises(ArtifactError, match="mismatched artifacts"):
        run_stage(compose_config(tmp_path / "e", base + [f"stage.decoder={tmp_path / 'other_vae.pt'}"]))


def test_prior_vocabulary_must_match_the_codes(prior_cfg, pipelines):
    logs = pipelines
    with pytest.raises(ConfigError, match="model.n_codes=16"):
        run_stage(prior_cfg(logs, "mismatch", "stage.codes=vqvae", "model.n_codes=32"))


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_evaluate_measures_code_grids_alone(compose_config, tiny_overrides, pipelines, tmp_path):
    """stage=evaluate stage.reconstruction_only=true: a pipeline's codes without a prior, samples
    or classifier; the codes by pipeline name (the newest) as other stages take them."""
    logs = pipelines
    base = tiny_overrides() + ["stage=evaluate", f"paths.log_dir={logs}", "stage.reconstruction_only=true"]
    metrics = run_stage(compose_config(tmp_path / "b", base + ["stage.codes=vqvae"]))
    assert metrics["codes/n_codes"] == 16 and 0 < metrics["recon/test_mse"] < 0.5
    assert 0 < metrics["paper/recon_mse_first_batch"] < 0.5 and 1 <= metrics["codes/codes_used"] <= 16
    assert not any(key.startswith(("prior/", "fidelity/")) for key in metrics)
    evaluation = json.loads((tmp_path / "b" / "evaluation.json").read_text())
    assert evaluation["recon/test_mse"] == metrics["recon/test_mse"]
    a = run_stage(compose_config(tmp_path / "a", base + ["stage.codes=geodesic"]))
    assert a["codes/n_codes"] == 8 and 0 < a["recon/continuous_test_mse"] < 0.5  # A: the GridVAE's own MSE too
    with pytest.raises(ConfigError, match="stage.codes=None is neither a pipeline"):
        run_stage(compose_config(tmp_path / "none", base))
    assert not (tmp_path / "none" / "evaluation.json").exists()
