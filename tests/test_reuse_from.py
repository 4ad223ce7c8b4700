"""pipeline.reuse_from: a study copies the steps another study finished with the same config and
inputs (geovq/study/finished_steps.py) instead of training them again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from geovq.errors import ConfigError
from geovq.stage_registry import STEP_STAGES
from geovq.study.finished_steps import STEP_FILE, FinishedSteps
from geovq.study.runner import Pipeline, StepResult, declare_steps, reuse_from_option
from geovq.study.spec import STAGE_OUTPUTS, plan_study


def fake_stages(calls: list[str]):
    """Stages that write an output determined by their config (as a real stage's is) and count their runs."""
    def get_stage(stage: str):
        def run(cfg) -> dict:
            calls.append(f"{stage} {Path(cfg.paths.output_dir).name}")
            folder = Path(cfg.paths.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / STAGE_OUTPUTS[stage]).write_text(OmegaConf.to_yaml(cfg.model) + str(cfg.stage.get("vae")))
            (folder / "metrics.json").write_text('{"test/mse": 0.25}\n')
            return {"test/mse": 0.25}
        return run
    return get_stage


def run_two_steps(root: Path, data_root: Path, calls: list[str], finished: FinishedSteps | None = None,
                  beta: float = 1.0) -> Pipeline:
    """A GridVAE and the K-Means codes of its latents, as a study declares them."""
    pipe = Pipeline(root, [f"data.root={data_root}"], {}, get_stage=fake_stages(calls), finished=finished)
    pipe.step("vae", "vae", [f"model.beta={beta}"])
    pipe.step("quantize_kmeans", "quantize", ["quantizer=kmeans"], {"stage.vae": "vae"})
    return pipe


def test_a_study_copies_the_steps_another_finished_with_the_same_config_and_inputs(data_root, tmp_path):
    ran_first, ran_second = [], []
    run_two_steps(tmp_path / "paper", data_root, ran_first)
    assert ran_first == ["vae vae", "quantize quantize_kmeans"]

    second = run_two_steps(tmp_path / "aposteriori", data_root, ran_second, FinishedSteps([tmp_path / "paper"]))
    assert ran_second == []  # nothing trained again: the quantize step's input is the copied GridVAE
    for name in ("vae", "quantize_kmeans"):
        result = second.results[name]
        assert result.reused and result.copied_from == str((tmp_path / "paper" / name).resolve())
        assert result.folder == tmp_path / "aposteriori" / name and result.output.exists()
        assert result.metrics == {"test/mse": 0.25}
        record = json.loads((result.folder / STEP_FILE).read_text())
        assert record["copied_from"] == result.copied_from
        assert (result.folder / "metrics.json").exists()
        # The other run's own records are not taken: its completion token, the key it started with.
        assert not (result.folder / "complete.json").exists() and not (result.folder / "started.json").exists()
    assert sorted(p.name for p in (tmp_path / "aposteriori").iterdir()) == ["quantize_kmeans", "vae"]  # no staging left
    assert (tmp_path / "paper" / "vae" / STAGE_OUTPUTS["vae"]).exists()  # the other study keeps its own

    # Run again: its own copies are reused, and still say where they came from.
    again = run_two_steps(tmp_path / "aposteriori", data_root, ran_second, FinishedSteps([tmp_path / "paper"]))
    assert ran_second == [] and again.results["vae"].copied_from == second.results["vae"].copied_from


def test_a_step_with_another_config_or_a_changed_output_is_not_copied(data_root, tmp_path):
    ran = []
    run_two_steps(tmp_path / "paper", data_root, [])
    run_two_steps(tmp_path / "other_beta", data_root, ran, FinishedSteps([tmp_path / "paper"]), beta=0.5)
    assert ran == ["vae vae", "quantize quantize_kmeans"]  # another GridVAE, so other codes

    # An output edited after its step finished no longer matches its step.json: trained again.
    (tmp_path / "paper" / "vae" / STAGE_OUTPUTS["vae"]).write_text("edited")
    ran = []
    run_two_steps(tmp_path / "third", data_root, ran, FinishedSteps([tmp_path / "paper"]))
    assert ran[0] == "vae vae"


def test_an_earlier_run_in_the_step_folder_is_set_aside_before_the_copy(data_root, tmp_path):
    run_two_steps(tmp_path / "paper", data_root, [])
    stale = tmp_path / "aposteriori" / "vae"
    stale.mkdir(parents=True)
    (stale / STAGE_OUTPUTS["vae"]).write_text("an interrupted run's")
    run_two_steps(tmp_path / "aposteriori", data_root, [], FinishedSteps([tmp_path / "paper"]))
    kept = list((stale / ".replaced").rglob(STAGE_OUTPUTS["vae"]))
    assert len(kept) == 1 and kept[0].read_text() == "an interrupted run's"
    assert (stale / STAGE_OUTPUTS["vae"]).read_bytes() == (tmp_path / "paper" / "vae" / STAGE_OUTPUTS["vae"]).read_bytes()


def test_reuse_from_names_folders(tmp_path):
    assert reuse_from_option({}, tmp_path) is None
    assert reuse_from_option({"reuse_from": [str(tmp_path)]}, tmp_path) is None  # itself: nothing to copy
    assert reuse_from_option({"reuse_from": [str(tmp_path / "missing")]}, tmp_path).roots == [tmp_path / "missing"]
    for bad in ("outputs/experiments/paper", [3], [""]):
        with pytest.raises(ConfigError, match=r"pipeline.reuse_from lists the folders"):
            reuse_from_option({"reuse_from": bad}, tmp_path)


class KeyRecorder:
    """Declares a study's steps and keeps each one's key, as if every step had run (a step's output
    stands for its key: the same key, the same file)."""

    def __init__(self, pipe: Pipeline, keys: dict[str, str]):
        self.pipe = pipe
        self.keys = keys

    def step(self, name: str, stage: str, overrides=(), inputs=None) -> None:
        if name in self.keys:
            return
        plan = self.pipe.plan(name, stage, list(overrides), dict(inputs or {}))
        result = StepResult(name, plan.folder, plan.target, {}, 0.0, False)
        result.__dict__["output_sha256"] = hashlib.sha256(plan.key.encode()).hexdigest()
        self.pipe.results[name] = result
        self.keys[name] = plan.key


def study_keys(compose_config, data_root: Path, folder: Path, experiment: str) -> tuple[dict[str, str], list, str]:
    cfg = compose_config(folder, [f"experiment={experiment}", f"data.root={data_root}"])
    options = OmegaConf.to_container(cfg.pipeline, resolve=True)
    study = plan_study(options["steps"], options["methods"])
    per_stage = {key: options.get(key) or [] for key in ("all", *STEP_STAGES)}
    keys: dict[str, str] = {}
    declare_steps(Pipeline(folder, [f"data.root={data_root}"], per_stage), study, [0], per_stage,
                  lambda target: KeyRecorder(target, keys))
    return keys, options["reuse_from"], cfg.paths.log_dir


@pytest.mark.parametrize("experiment", ["aposteriori", "quantizers"])
def test_the_other_studies_copy_experiment_papers_shared_steps(compose_config, data_root, tmp_path, experiment):
    """Their steps that are experiment=paper's have its keys, so that they (and the priors,
    samples and evaluations that read them) are copied from its folder, which they name."""
    paper, _, _ = study_keys(compose_config, data_root, tmp_path / "paper", "paper")
    other, reuse_from, log_dir = study_keys(compose_config, data_root, tmp_path / experiment, experiment)
    assert reuse_from == [f"{log_dir}/experiments/paper"]  # where experiment=paper writes (its hydra.run.dir)
    shared = {name for name in paper.keys() & other.keys() if paper[name] == other[name]}
    expected = {"classifier", "seed_0/vqvae_ema", "seed_0/prior_B_ema", "seed_0/sample_B_ema", "seed_0/evaluate_B_ema"}
    if experiment == "aposteriori":
        expected |= {"seed_0/vae", "seed_0/quantize_geodesic", "seed_0/quantize_kmeans",
                     *(f"seed_0/{step}_{method}" for step in ("prior", "sample", "evaluate")
                       for method in ("A_geodesic", "A_kmeans"))}
    else:
        expected |= {"seed_0/vqvae", *(f"seed_0/{step}_B_per_image" for step in ("prior", "sample", "evaluate"))}
    assert expected <= shared, sorted(expected - shared)
    assert shared == paper.keys() & other.keys()  # a step of the same name is the same step
