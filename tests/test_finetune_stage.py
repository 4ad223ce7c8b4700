"""stage=finetune: the GridVAE's decoder trained on its codebook, the rest frozen, and the
prior/sample stages running off the codes.pt it writes with the fine-tuned decoder."""

from __future__ import annotations

import json

import pytest
import torch

from geovq.artifacts import load_artifact, load_code_grids, save_code_grids
from geovq.errors import ArtifactError, ConfigError
from geovq.models.decoding import code_decoder
from geovq.models.io import load_model
from geovq.train import run_stage

QUANTIZER = ["quantizer.n_landmarks=300", "quantizer.n_neighbors=6", "quantizer.n_clusters=8", "quantizer.progress=false"]
TINY_PRIOR = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "data.batch_size=64", "trainer.max_epochs=1",
              "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def finetuned(compose_config, tiny_overrides, tmp_path_factory):
    """A tiny GridVAE quantized when its fit ends (outputs/vae/runs/a), then its decoder fine-tuned
    on the newest a posteriori codes (stage.codes=geodesic, the default)."""
    logs = tmp_path_factory.mktemp("outputs")
    vae_metrics = run_stage(compose_config(logs / "vae" / "runs" / "a", tiny_overrides() + ["stage=vae", "callbacks=quantize", "figures=false", *QUANTIZER]))
    out = logs / "finetune" / "runs" / "f"
    metrics = run_stage(compose_config(out, tiny_overrides() + ["stage=finetune", f"paths.log_dir={logs}", "trainer.max_epochs=3"]))
    return logs, out, vae_metrics, metrics


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_only_the_decoder_changes(finetuned):
    logs, out, _, _ = finetuned
    original, _ = load_model(logs / "vae" / "runs" / "a" / "model.pt", "grid_vae")
    tuned, tuned_art = load_model(out / "model.pt", "grid_vae")
    before, after = original.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert tuned_art.provenance["stage"] == "finetune"


def test_codes_keep_their_grids_and_codebook_and_lead_to_the_finetuned_decoder(finetuned):
    logs, out, _, _ = finetuned
    source = load_code_grids(logs / "vae" / "runs" / "a" / "codes.pt")
    codes = load_code_grids(out / "codes.pt")
    assert codes.payload["n_codes"] == source.payload["n_codes"] == 8
    for split in ("train", "val", "test"):
        assert torch.equal(codes.payload["splits"][split], source.payload["splits"][split])
    tuned = load_artifact(out / "model.pt")
    assert tuned.provenance["inputs"]["codes"]["sha256"] == source.sha256  # trained on these codes
    _, inputs, _ = code_decoder(codes)
    assert inputs["vae"].sha256 == tuned.sha256
    assert inputs["codebook"].sha256 == source.provenance["inputs"]["codebook"]["sha256"]


def test_test_mse_through_the_codes_does_not_rise(finetuned):
    _, out, vae_metrics, metrics = finetuned
    # Before: the quantize step's own figure, decoded the same way.
    assert metrics["recon/test_mse_before"] == pytest.approx(vae_metrics["quantized/test_mse"], rel=1e-5)
    assert metrics["recon/test_mse"] <= metrics["recon/test_mse_before"]
    assert metrics["recon/test_mse"] == pytest.approx(metrics["test/mse"], rel=1e-4)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["recon/test_mse"] == pytest.approx(metrics["recon/test_mse"])
    assert (out / "reconstructions.png").stat().st_size > 1000


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_prior_and_samples_run_off_the_new_codes_with_the_finetuned_decoder(compose_config, finetuned):
    logs, out, _, _ = finetuned
    prior_dir, sample_dir = logs / "prior" / "runs" / "ft", logs / "sample" / "runs" / "ft"
    # The prior learns the original grids (the fine-tuned codes copy them); sampling takes the decoder apart.
    run_stage(compose_config(prior_dir, ["stage=prior", f"stage.codes={logs / 'vae' / 'runs' / 'a' / 'codes.pt'}", *TINY_PRIOR]))
    run_stage(compose_config(sample_dir, ["stage=sample", f"stage.prior={prior_dir / 'model.pt'}", f"stage.codes={out / 'codes.pt'}",
                                          "stage.n_samples=6", "figures=false"]))
    samples = load_artifact(sample_dir / "samples.pt", kind="samples")
    assert samples.provenance["inputs"]["vae"]["sha256"] == load_artifact(out / "model.pt").sha256
    # The images are the fine-tuned decoder's, not the original GridVAE's.
    tuned, _ = load_model(out / "model.pt", "grid_vae")
    vectors = load_artifact(logs / "vae" / "runs" / "a" / "codebook.pt").payload["vectors"]
    with torch.no_grad():
        expected = torch.sigmoid(tuned.decode(vectors[samples.payload["codes"].long()].permute(0, 3, 1, 2)))
    assert torch.equal(samples.payload["images"], (expected * 255).round().to(torch.uint8))
    # Grids that are neither the prior's nor made from them are refused, naming the key.
    other = save_code_grids(logs / "other_codes.pt", {s: g.clone() for s, g in load_code_grids(out / "codes.pt").payload["splits"].items()},
                            8, stage="quantize")
    with pytest.raises(ArtifactError, match=r"neither the code grids the prior .* stage.codes="):
        run_stage(compose_config(logs / "sample" / "runs" / "bad", ["stage=sample", f"stage.prior={prior_dir / 'model.pt'}",
                                                                     f"stage.codes={other.path}", "stage.n_samples=6", "figures=false"]))


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_vqvae_codes_are_refused(compose_config, tiny_overrides, tmp_path):
    vq = tmp_path / "vq"
    run_stage(compose_config(vq, tiny_overrides() + ["stage=vqvae", "model.quantizer.n_codes=8", "figures=false"]))
    with pytest.raises(ArtifactError, match=r"VQ-VAE.*stage.codes=<codes.pt of stage=quantize>"):
        run_stage(compose_config(tmp_path / "ft", tiny_overrides() + ["stage=finetune", f"stage.codes={vq / 'codes.pt'}"]))


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_missing_codes_file_and_other_data_are_refused(compose_config, tiny_overrides, finetuned, tmp_path):
    logs, _, _, _ = finetuned
    with pytest.raises(ConfigError, match="nor an existing file"):
        run_stage(compose_config(tmp_path / "a", tiny_overrides() + ["stage=finetune", f"stage.codes={tmp_path / 'none.pt'}"]))
    codes = logs / "vae" / "runs" / "a" / "codes.pt"
    with pytest.raises(ConfigError, match="data settings"):
        run_stage(compose_config(tmp_path / "b", tiny_overrides(**{"data.subset": 300}) + ["stage=finetune", f"stage.codes={codes}"]))
