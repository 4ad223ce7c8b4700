"""pipeline.parallel=N: independent steps side by side, each as its own process."""

from __future__ import annotations

import json

import pytest

from geovq.errors import ConfigError, TrainingError
from geovq.study.parallel import STEP_LOG, StepRequest, launch_order, start_ready_steps, step_environment
from geovq.study.runner import StepPlan
from geovq.train import run_stage

STUDY_STEPS = ["classifier", "seed_0/vae", "seed_0/kmeans8", "seed_0/prior_A_kmeans8", "seed_0/sample_A_kmeans8",
               "seed_0/evaluate_A_kmeans8"]


def test_each_process_gets_its_threads_and_one_gpu_of_several():
    env = step_environment(slot=1, threads=4, gpus=["0", "1"])
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert step_environment(slot=2, threads=1, gpus=["4", "5"])["CUDA_VISIBLE_DEVICES"] == "4"


class FakePipe:
    """Plans and launches steps without running anything: what the scheduler decides, and with which threads."""

    def __init__(self, root):
        self.root, self.results, self.launched = root, {}, []

    def plan(self, name, stage, overrides, inputs):
        return StepPlan(name, stage, [], None, "key", self.root / name, self.root / name / "out")

    def reused(self, plan):
        return None

    def prepare_folder(self, plan):
        plan.folder.mkdir(parents=True, exist_ok=True)

    def launch(self, plan, env, **_):
        self.launched.append((plan.name, int(env["OMP_NUM_THREADS"])))
        return object()


def test_the_longest_chain_starts_first(tmp_path):
    pipe = FakePipe(tmp_path)
    declared = [StepRequest(pipe, "classifier", "classifier", []), StepRequest(pipe, "vqvae", "vqvae", []),
                StepRequest(pipe, "vae", "vae", []), StepRequest(pipe, "quantize", "quantize", [], {"stage.vae": "vae"}),
                StepRequest(pipe, "prior_A", "prior", [], {"stage.codes": "quantize"}),
                StepRequest(pipe, "prior_B", "prior", [], {"stage.codes": "vqvae"}),
                StepRequest(pipe, "evaluate_A", "evaluate", [], {"stage.prior": "prior_A", "stage.classifier": "classifier"}),
                StepRequest(pipe, "evaluate_B", "evaluate", [], {"stage.prior": "prior_B", "stage.classifier": "classifier"})]
    order = [request.name for request in launch_order(declared)]
    assert order == ["vae", "vqvae", "quantize", "classifier", "prior_A", "prior_B", "evaluate_A", "evaluate_B"]
    start_ready_steps(launch_order(declared), {}, [], n_parallel=2, cores=2, gpus=[])
    assert [name for name, _ in pipe.launched] == ["vae", "vqvae"]  # the classifier, read last, waits


def test_steps_side_by_side_share_the_cores_and_a_lone_step_gets_them_all(tmp_path):
    pipe = FakePipe(tmp_path)
    pending = [StepRequest(pipe, "vae", "vae", []), StepRequest(pipe, "vqvae", "vqvae", []),
               StepRequest(pipe, "vqvae_ema", "vqvae", []), StepRequest(pipe, "quantize", "quantize", [], {"stage.vae": "vae"})]
    plans, running = {}, []
    start_ready_steps(pending, plans, running, n_parallel=2, cores=8, gpus=[])
    assert pipe.launched == [("vae", 4), ("vqvae", 4)]  # two places, half the cores each; the third waits
    running.clear()  # both finished
    pipe.results.update(vae=object(), vqvae=object())
    start_ready_steps(pending, plans, running, n_parallel=2, cores=8, gpus=[])
    assert pipe.launched[2:] == [("vqvae_ema", 4), ("quantize", 4)]

    lone = FakePipe(tmp_path)
    pending, running = [StepRequest(lone, "vae", "vae", []), StepRequest(lone, "quantize", "quantize", [], {"stage.vae": "vae"})], []
    start_ready_steps(pending, {}, running, n_parallel=2, cores=8, gpus=[])
    # The head of a chain: nothing else can start before it ends, so it takes every core and both places.
    assert lone.launched == [("vae", 8)] and running[0].slots == 2


# A whole study (several training steps): slow tier; CI's default run includes it.
@pytest.mark.slow
def test_a_study_runs_two_steps_at_a_time_and_a_second_run_reuses_them(compose_config, study_overrides, one_method_study,
                                                                      tmp_path):
    out = tmp_path / "study"
    run_stage(compose_config(out, study_overrides + one_method_study + ["pipeline.parallel=2", "pipeline.figures=false"]))
    for step in STUDY_STEPS:
        assert (out / step / "step.json").is_file(), step
    # Each step ran as its own process, its output in its own log.
    assert "`Trainer.fit` stopped" in (out / "seed_0/prior_A_kmeans8" / STEP_LOG).read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["parallel"] == 2 and report["methods"]["A_kmeans8"]["seeds"]["0"]["codes/n_codes"] == 8
    # The serial run finds every step done: the two modes share the step keys.
    before = {step: (out / step / "step.json").stat().st_mtime_ns for step in STUDY_STEPS}
    run_stage(compose_config(out, study_overrides + one_method_study + ["pipeline.figures=false"]))
    assert before == {step: (out / step / "step.json").stat().st_mtime_ns for step in STUDY_STEPS}


# A whole study (several training steps): slow tier; CI's default run includes it.
@pytest.mark.slow
def test_a_failed_step_names_its_log_and_the_steps_done_are_kept(compose_config, study_overrides, one_method_study,
                                                                 tmp_path):
    out = tmp_path / "study"
    broken_prior = "pipeline.prior=['model.n_layer=1','model.d_model=32','model.n_head=5']"  # 32 is not divisible by 5
    with pytest.raises(TrainingError, match=r"step 'seed_0/prior_A_kmeans8'.*step\.log"):
        run_stage(compose_config(out, study_overrides + one_method_study + ["pipeline.parallel=2", "pipeline.figures=false",
                                                                broken_prior]))
    for step in ("classifier", "seed_0/vae", "seed_0/kmeans8"):
        assert (out / step / "step.json").is_file(), step
    assert not (out / "seed_0/prior_A_kmeans8" / "step.json").exists()
    assert not (out / "seed_0/sample_A_kmeans8").exists()


@pytest.mark.parametrize("value", [0, "two"])
def test_parallel_must_be_a_positive_count(compose_config, study_overrides, tmp_path, value):
    with pytest.raises(ConfigError, match="pipeline.parallel"):
        run_stage(compose_config(tmp_path, study_overrides + [f"pipeline.parallel={value}"]))


def test_parallel_steps_and_ddp_are_exclusive(compose_config, study_overrides, tmp_path):
    with pytest.raises(ConfigError, match="trainer.devices=1 with pipeline.parallel"):
        run_stage(compose_config(tmp_path, study_overrides + ["pipeline.parallel=2", "trainer=ddp", "trainer.devices=2"]))
