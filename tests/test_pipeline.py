"""experiment=quick end to end on a tiny subset: report, figures, resume after an interruption."""

from __future__ import annotations

import json

import pytest
import torch

import geovq.stages.pipeline as pipeline_module
from geovq.errors import TrainingError
from geovq.train import run_stage

# The study of study_overrides (conftest.py): experiment=quick on a tiny subset.
METHODS = ("A_geodesic", "A_kmeans", "B_paper_objective", "B_per_image", "B_ema")
STEPS = ["classifier"] + [f"seed_0/{step}" for step in ("vae", "quantize_geodesic", "quantize_kmeans", "vqvae_paper_objective", "vqvae", "vqvae_ema")] + [
    f"seed_0/{kind}_{method}" for method in METHODS for kind in ("prior", "sample", "evaluate")
]


@pytest.mark.slow
def test_quick_experiment_writes_report_and_figures_and_resumes(compose_config, study_overrides, tmp_path, monkeypatch):
    out = tmp_path / "experiments" / "quick"
    real_get_stage = pipeline_module.get_stage

    def interrupted(name):  # the run dies when it reaches the first evaluation
        if name == "evaluate":
            raise TrainingError("simulated interruption")
        return real_get_stage(name)

    monkeypatch.setattr(pipeline_module, "get_stage", interrupted)
    with pytest.raises(TrainingError):
        run_stage(compose_config(out, study_overrides))
    finished = {step: (out / step / "step.json").stat().st_mtime_ns for step in ("seed_0/vae", "seed_0/quantize_geodesic", "seed_0/sample_A_geodesic")}
    assert not (out / "seed_0/evaluate_A_geodesic" / "step.json").exists()

    monkeypatch.setattr(pipeline_module, "get_stage", real_get_stage)
    summary = run_stage(compose_config(out, study_overrides))
    # Finished steps were reused, not recomputed.
    for step, mtime in finished.items():
        assert (out / step / "step.json").stat().st_mtime_ns == mtime, f"{step} was recomputed"
    for step in STEPS:
        assert (out / step / "step.json").is_file(), step
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == list(METHODS)
    for method in report["methods"].values():
        evaluation = method["seeds"]["0"]
        assert 0 < evaluation["recon/test_mse"] < 0.5
        assert 0 < evaluation["paper/recon_mse_first_batch"] < 0.5 and evaluation["paper/prior_train_perplexity"] > 1
        assert 0 < evaluation["codes/utilization"] <= 1
        assert evaluation["prior/test_nll"] > 0 and "fidelity/fid" in evaluation
    assert summary["A_geodesic/codes/n_codes"] == 16
    text = (out / "report.md").read_text()
    assert "| A: GridVAE + geodesic K-Medoids |" in text and "0.016125" in text and "0.011385" in text
    assert "## Findings" in text and "not separable (n = 1)" in text and "better than" not in text
    # experiment=quick's priors stop at their small cap, and the report says so; every method's cost.
    assert "priors hit their epoch cap" in text and "## Budgets" in text
    assert all(record["networks"]["prior"]["epochs"] >= 1 for record in report["budgets"])
    assert all("fidelity/fid_ci_low" in method["seeds"]["0"] for method in report["methods"].values())
    for figure in ("fig1_tsne_clusters.png", "fig2_codebook_usage.png", "fig3_reconstructions.png", "fig4_samples.png",
                   "fig5_prior_val_nll.png", "fig6_per_seed.png"):
        assert (out / figure).stat().st_size > 5000, figure

    # A third run does nothing but the report: every step is reused.
    before = {step: (out / step / "step.json").stat().st_mtime_ns for step in STEPS}
    run_stage(compose_config(out, study_overrides + ["pipeline.figures=false"]))
    assert before == {step: (out / step / "step.json").stat().st_mtime_ns for step in STEPS}


def test_pipeline_refuses_misplaced_overrides(compose_config, study_overrides, tmp_path):
    from geovq.errors import ConfigError

    # An override only one step understands, given to all, names the step and the fix.
    with pytest.raises(ConfigError, match=r"step 'classifier'.*pipeline\.classifier="):
        run_stage(compose_config(tmp_path / "b", study_overrides + ["model.latent_dim=16"]))


@pytest.mark.slow
def test_a_study_on_two_cpu_processes(run_cli, study_overrides, one_method_study, tmp_path):
    """Training steps run distributed (2 gloo processes); quantization, sampling and evaluation once.
    A study of one method of each pipeline (A: GridVAE + K-Means, B: VQ-VAE) keeps it to five
    distributed steps; experiment=quick's whole study is the test above, in one process."""
    out = tmp_path / "quick"
    overrides = [item for item in study_overrides if not item.startswith("experiment=")]
    steps = one_method_study[1][:-1] + ", vqvae: {stage: vqvae}}"
    methods = "+pipeline.methods={A_kmeans8: {codes: kmeans8}, B: {codes: vqvae}}"
    result = run_cli("experiment=quick", *overrides, "~study", steps, methods, "trainer=ddp", "trainer.accelerator=cpu",
                     "trainer.devices=2", "pipeline.figures=false", f"hydra.run.dir={out}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    # the 5 training steps: classifier, GridVAE, VQ-VAE, two priors
    assert output.count("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2") == 5
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["A_kmeans8", "B"]
    for step in ["classifier"] + [f"seed_0/{s}" for s in ("vae", "kmeans8", "vqvae", "prior_A_kmeans8", "prior_B",
                                                          "sample_B", "evaluate_A_kmeans8")]:
        assert (out / step / "step.json").is_file(), step


# A whole study (several training steps): slow tier; CI's default run includes it.
@pytest.mark.slow
def test_a_method_declared_in_config_runs_for_two_seeds_and_reports_its_spread(compose_config, study_overrides,
                                                                                one_method_study, tmp_path):
    out = tmp_path / "study"
    summary = run_stage(compose_config(out, study_overrides + one_method_study + ["pipeline.seeds=[3,4]", "pipeline.prior=['model.n_layer=1','model.d_model=32','model.n_head=2','trainer.max_epochs=3','callbacks.early_stopping.patience=1']"]))
    for seed in (3, 4):
        for step in ("vae", "kmeans8", "prior_A_kmeans8", "sample_A_kmeans8", "evaluate_A_kmeans8"):
            assert (out / f"seed_{seed}" / step / "step.json").is_file(), (seed, step)
        history = json.loads((out / f"seed_{seed}" / "prior_A_kmeans8" / "history.json").read_text())
        assert 1 <= len(history["val/nll"]) <= 3 and all(v > 0 for v in history["val/nll"])
    assert (out / "classifier" / "step.json").is_file() and not (out / "seed_3" / "classifier").exists()
    report = json.loads((out / "report.json").read_text())
    runs = report["methods"]["A_kmeans8"]["seeds"]
    assert set(runs) == {"3", "4"} and all(run["codes/n_codes"] == 8 for run in runs.values())
    # Different seeds, different models: the spread is real, and the summary is the mean of the two.
    mses = [run["recon/test_mse"] for run in runs.values()]
    assert mses[0] != mses[1]
    assert summary["A_kmeans8/recon/test_mse"] == pytest.approx(sum(mses) / 2)
    assert summary["A_kmeans8/recon/test_mse_std"] > 0
    text = (out / "report.md").read_text()
    assert "n = 2 seeds (3, 4)" in text and "| A: K-Means, K=8 |" in text and " ± " in text
    assert "## Priors" in text and (out / "fig5_prior_val_nll.png").stat().st_size > 5000
    for record in report["priors"]:
        assert record["prior/epochs"] <= record["prior/max_epochs"] == 3
    assert "## Budgets" in text
    # The continuous GridVAE's reference is every seed's, not the first one's.
    per_seed = report["references"]["continuous_test_mse_per_seed"]
    assert per_seed == [runs[s]["recon/continuous_test_mse"] for s in ("3", "4")] and per_seed[0] != per_seed[1]
    assert report["references"]["continuous_test_mse"] == pytest.approx(sum(per_seed) / 2)
    assert "References: continuous GridVAE (posterior mean) test MSE " + f"{sum(per_seed) / 2:.5f} ± " in text
    # So is the FD floor: each seed draws its own training images for it.
    floors = report["references"]["fid_floor_per_seed"]
    assert floors == [runs[s]["fidelity/fid_floor"] for s in ("3", "4")] and floors[0] != floors[1]
    assert f"FD floor (training vs test images) {sum(floors) / 2:.2f} ± " in text


@pytest.mark.slow
def test_a_fine_tuned_decoder_samples_from_the_prior_of_the_grids_it_copies(compose_config, study_overrides,
                                                                           one_method_study, tmp_path):
    """One prior per distinct set of code grids: the fine-tuned decoder's method trains none of its own."""
    from geovq.artifacts import load_artifact

    out = tmp_path / "study"
    steps = one_method_study[1][:-1] + ", tuned: {stage: finetune, inputs: {stage.codes: kmeans8}}}"
    methods = "+pipeline.methods={A_kmeans8: {codes: kmeans8}, A_tuned: {codes: tuned}}"
    run_stage(compose_config(out, study_overrides + ["~study", steps, methods, "pipeline.figures=false"]))
    seed = out / "seed_0"
    assert (seed / "prior_A_kmeans8" / "step.json").is_file() and not (seed / "prior_A_tuned").exists()
    samples = load_artifact(seed / "sample_A_tuned" / "samples.pt", kind="samples")
    assert samples.provenance["inputs"]["prior"]["sha256"] == load_artifact(seed / "prior_A_kmeans8" / "model.pt").sha256
    assert samples.provenance["inputs"]["vae"]["sha256"] == load_artifact(seed / "tuned" / "model.pt").sha256
    plain = load_artifact(seed / "sample_A_kmeans8" / "samples.pt", kind="samples")
    assert torch.equal(plain.payload["codes"], samples.payload["codes"])  # the same prior and seed draw the same grids
    assert not torch.equal(plain.payload["images"], samples.payload["images"])  # decoded by another decoder
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"A_kmeans8", "A_tuned"}
    assert "| A_tuned (the prior of A_kmeans8: the same code grids) |" in (out / "report.md").read_text()


def test_a_study_without_priors_measures_the_codes_alone_and_a_later_run_adds_the_priors(
        compose_config, study_overrides, one_method_study, tmp_path):
    """pipeline.priors=false: the representation half of a study (codes, their reconstruction and
    codebook use, findings on test MSE at n = 2) with no classifier, prior nor samples; the same
    folder with priors reuses every step and adds the rest."""
    out = tmp_path / "study"
    steps = one_method_study[1][:-1] + ", kmeans4: {stage: quantize, inputs: {stage.vae: vae}, " \
        "overrides: ['quantizer=kmeans', 'quantizer.n_clusters=4']}}"
    methods = "+pipeline.methods={A_kmeans8: {codes: kmeans8}, A_kmeans4: {codes: kmeans4}}"
    study = study_overrides + ["~study", steps, methods, "+pipeline.comparisons=[[A_kmeans8,A_kmeans4]]",
                               "pipeline.seeds=[0,1]", "pipeline.figures=false"]
    summary = run_stage(compose_config(out, study + ["pipeline.priors=false"]))
    assert not (out / "classifier").exists()
    for seed in ("seed_0", "seed_1"):
        assert sorted(p.name for p in (out / seed).iterdir()) == ["kmeans4", "kmeans8", "reconstruction_A_kmeans4",
                                                                 "reconstruction_A_kmeans8", "vae"]
    report = json.loads((out / "report.json").read_text())
    run = report["methods"]["A_kmeans8"]["seeds"]["1"]
    assert 0 < run["recon/test_mse"] < 0.5 and run["codes/n_codes"] == 8 and 0 < run["codes/utilization"] <= 1
    assert not any(key.startswith(("prior/", "fidelity/")) for key in run)
    assert summary["A_kmeans4/codes/n_codes"] == 4 and summary["A_kmeans8/recon/test_mse_std"] > 0
    assert report["with_priors"] is False and report["priors"] == []
    assert {record["metric"] for record in report["findings"]} == {"recon/test_mse"}
    text = (out / "report.md").read_text()
    assert "pipeline.priors=false" in text and "FD" not in text and "fidelity" not in text
    assert "test MSE" in text.split("## Findings")[1] and "(n = 2)" in text

    # With priors, the same folder: the codes' steps and the reconstruction evaluations stay as they were.
    done = {step: (out / step / "step.json").stat().st_mtime_ns
            for step in ("seed_0/vae", "seed_1/kmeans4", "seed_1/reconstruction_A_kmeans8")}
    run_stage(compose_config(out, study))
    assert done == {step: (out / step / "step.json").stat().st_mtime_ns for step in done}
    report = json.loads((out / "report.json").read_text())
    assert report["with_priors"] is True and (out / "seed_1/sample_A_kmeans8").is_dir()
    assert "fidelity/fid" in report["methods"]["A_kmeans4"]["seeds"]["1"]
    # ...and reports the same codes' figures: one measurement, two steps.
    assert report["methods"]["A_kmeans8"]["seeds"]["1"]["recon/test_mse"] == run["recon/test_mse"]


def test_a_study_mistake_stops_before_any_step_runs(compose_config, study_overrides, one_method_study, tmp_path):
    from geovq.errors import ConfigError

    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match=r"pipeline.methods.A_kmeans8.codes=vae .* makes no code grids"):
        run_stage(compose_config(out, study_overrides + one_method_study[:2] + ["+pipeline.methods={A_kmeans8: {codes: vae}}"]))
    assert not (out / "classifier").exists()


def test_a_bad_setting_of_a_late_step_is_refused_before_any_step_runs(compose_config, study_overrides, one_method_study, tmp_path):
    """An evaluation's setting is read hours into a study: it is checked, with every other step's,
    before the classifier or the GridVAE start."""
    from geovq.errors import ConfigError

    out = tmp_path / "late"
    with pytest.raises(ConfigError, match=r"step 'seed_0/evaluate_A_kmeans8'.*stage\.fid_bootstrap=-1"):
        run_stage(compose_config(out, study_overrides + one_method_study + ["pipeline.evaluate=['stage.fid_bootstrap=-1']"]))
    assert not (out / "classifier").exists() and not (out / "seed_0").exists()


def test_a_study_without_priors_checks_the_prior_settings_of_the_later_run(compose_config, study_overrides,
                                                                          one_method_study, tmp_path):
    """The codes alone today, the priors tomorrow in the same folder: a mistake in pipeline.prior
    shows before today's first step, not hours into tomorrow's run."""
    from geovq.errors import ConfigError

    out = tmp_path / "codes_only"
    with pytest.raises(ConfigError, match=r"step 'seed_0/prior_A_kmeans8'"):
        run_stage(compose_config(out, study_overrides + one_method_study + [
            "pipeline.priors=false", "pipeline.prior=['model.d_modle=32']"]))
    assert not (out / "seed_0").exists()


def test_a_step_copied_into_another_experiment_keeps_its_key(tmp_path):
    """The step key holds the inputs' content, not their paths: copying finished steps into a new
    experiment's folder lets it reuse them; a changed input file makes the step run again."""
    from geovq.study.runner import Pipeline, StepResult, compose_step

    def key_in(root, vae_bytes):
        vae = root / "seed_0" / "vae" / "model.pt"
        vae.parent.mkdir(parents=True)
        vae.write_bytes(vae_bytes)
        pipe = Pipeline(root, [], {})
        pipe.results["seed_0/vae"] = StepResult("seed_0/vae", vae.parent, vae, {}, 1.0, False)
        cfg = compose_step(["stage=quantize", f"stage.vae={vae}"], "quantize_geodesic")
        cfg.paths.output_dir = str(root / "seed_0" / "quantize_geodesic")
        return pipe.step_key(cfg, {"stage.vae": "seed_0/vae"})

    paper = key_in(tmp_path / "paper", b"the same GridVAE")
    assert key_in(tmp_path / "aposteriori", b"the same GridVAE") == paper
    assert key_in(tmp_path / "other", b"another GridVAE") != paper
