"""pipeline.parallel=N: independent steps side by side, each as its own process."""

from __future__ import annotations

import json

import pytest
from conftest import compose_config
from test_pipeline import ONE_METHOD, OVERRIDES

from geovq.errors import ConfigError, TrainingError
from geovq.stages.parallel_steps import STEP_LOG, step_environment
from geovq.train import run_stage

STUDY_STEPS = ["classifier", "seed_0/vae", "seed_0/kmeans8", "seed_0/prior_A_kmeans8", "seed_0/sample_A_kmeans8",
               "seed_0/evaluate_A_kmeans8"]


def test_each_process_gets_its_share_of_the_cores_and_one_gpu_of_several():
    env = step_environment(slot=1, n_parallel=2, cores=8, gpus=["0", "1"])
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert step_environment(slot=2, n_parallel=3, cores=2, gpus=["4", "5"])["CUDA_VISIBLE_DEVICES"] == "4"
    env = step_environment(slot=0, n_parallel=4, cores=2, gpus=[])
    assert env["OMP_NUM_THREADS"] == "1"  # never zero threads


def test_a_study_runs_two_steps_at_a_time_and_a_second_run_reuses_them(tmp_path):
    out = tmp_path / "study"
    run_stage(compose_config(out, OVERRIDES + ONE_METHOD + ["pipeline.parallel=2", "pipeline.figures=false"]))
    for step in STUDY_STEPS:
        assert (out / step / "step.json").is_file(), step
    # Each step ran as its own process, its output in its own log.
    assert "`Trainer.fit` stopped" in (out / "seed_0/prior_A_kmeans8" / STEP_LOG).read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["parallel"] == 2 and report["methods"]["A_kmeans8"]["seeds"]["0"]["codes/n_codes"] == 8
    # The serial run finds every step done: the two modes share the step keys.
    before = {step: (out / step / "step.json").stat().st_mtime_ns for step in STUDY_STEPS}
    run_stage(compose_config(out, OVERRIDES + ONE_METHOD + ["pipeline.figures=false"]))
    assert before == {step: (out / step / "step.json").stat().st_mtime_ns for step in STUDY_STEPS}


def test_a_failed_step_names_its_log_and_the_steps_done_are_kept(tmp_path):
    out = tmp_path / "study"
    broken_prior = "pipeline.prior=['model.n_layer=1','model.d_model=32','model.n_head=5']"  # 32 is not divisible by 5
    with pytest.raises(TrainingError, match=r"step 'seed_0/prior_A_kmeans8'.*step\.log"):
        run_stage(compose_config(out, OVERRIDES + ONE_METHOD + ["pipeline.parallel=2", "pipeline.figures=false",
                                                                broken_prior]))
    for step in ("classifier", "seed_0/vae", "seed_0/kmeans8"):
        assert (out / step / "step.json").is_file(), step
    assert not (out / "seed_0/prior_A_kmeans8" / "step.json").exists()
    assert not (out / "seed_0/sample_A_kmeans8").exists()


@pytest.mark.parametrize("value", [0, "two"])
def test_parallel_must_be_a_positive_count(tmp_path, value):
    with pytest.raises(ConfigError, match="pipeline.parallel"):
        run_stage(compose_config(tmp_path, OVERRIDES + [f"pipeline.parallel={value}"]))


def test_parallel_steps_and_ddp_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="trainer.devices=1 with pipeline.parallel"):
        run_stage(compose_config(tmp_path, OVERRIDES + ["pipeline.parallel=2", "trainer=ddp", "trainer.devices=2"]))
