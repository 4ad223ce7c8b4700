"""pipeline.parallel=N: independent steps side by side, each as its own process."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import pytest

from geovq.callbacks.thread_share import THREADS_FILE_ENV, read_thread_count
from geovq.errors import ConfigError, TrainingError
from geovq.study import parallel
from geovq.study.parallel import (
    STEP_LOG,
    StepRequest,
    available_cores,
    launch_order,
    run_steps,
    share_cores,
    start_ready_steps,
    step_environment,
    stop_processes,
)
from geovq.study.runner import STEP_FILE, Pipeline, StepPlan
from geovq.study.step_process import (
    enter_step_environment,
    start_forked,
    start_subprocess,
    step_server,
    step_starter,
)
from geovq.train import run_stage

STUDY_STEPS = ["classifier", "seed_0/vae", "seed_0/kmeans8", "seed_0/prior_A_kmeans8", "seed_0/sample_A_kmeans8",
               "seed_0/evaluate_A_kmeans8"]


def test_each_process_gets_its_threads_and_one_gpu_of_several():
    env = step_environment(slot=1, threads=4, gpus=["0", "1"])
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert step_environment(slot=2, threads=1, gpus=["4", "5"])["CUDA_VISIBLE_DEVICES"] == "4"


class FakeProcess:
    """A step process that ends (status 0) at its ``ticks``-th poll and notes, at each poll, the
    thread count its file holds (as a training step reads it at each batch)."""

    def __init__(self, ticks, threads_file, interrupt=False):
        self.ticks, self.threads_file, self.interrupt = ticks, threads_file, interrupt
        self.returncode, self.counts = None, []

    def poll(self):
        if self.interrupt:  # Ctrl-C while the scheduler waits on it
            self.interrupt = False
            raise KeyboardInterrupt
        if self.threads_file is not None:
            self.counts.append(read_thread_count(Path(self.threads_file)))
        self.ticks -= 1
        if self.ticks <= 0 and self.returncode is None:
            self.returncode = 0
        return self.returncode

    def terminate(self):
        self.returncode = -15

    def wait(self, timeout=None):
        return self.returncode


class FakePipe:
    """Plans and launches steps without running anything: what the scheduler decides, and with
    which threads. A step's process ends at its ``ticks[name]``-th poll (1 unless given)."""

    def __init__(self, root, ticks=None, interrupt=None):
        self.root, self.results, self.launched, self.files, self.processes = root, {}, [], {}, {}
        self.ticks, self.interrupt = ticks or {}, interrupt

    def plan(self, name, stage, overrides, inputs):
        return StepPlan(name, stage, [], None, "key", self.root / name, self.root / name / "out")

    def reused(self, plan):
        return None

    def prepare_folder(self, plan):
        plan.folder.mkdir(parents=True, exist_ok=True)

    def launch(self, plan, env, **_):
        self.launched.append((plan.name, int(env["OMP_NUM_THREADS"])))
        self.files[plan.name] = env.get(THREADS_FILE_ENV)
        process = FakeProcess(self.ticks.get(plan.name, 1), self.files[plan.name], plan.name == self.interrupt)
        self.processes[plan.name] = process
        return process

    def collect(self, plan, returncode, log_file=None):
        return {}

    def record(self, plan, metrics, seconds):
        self.results[plan.name] = metrics


def test_the_longest_chain_starts_first(tmp_path):
    pipe = FakePipe(tmp_path)
    declared = [StepRequest(pipe, "classifier", "classifier", []), StepRequest(pipe, "vqvae", "vqvae", []),
                StepRequest(pipe, "vae", "vae", []), StepRequest(pipe, "quantize", "quantize", [], {"stage.vae": "vae"}),
                StepRequest(pipe, "prior_A", "prior", [], {"stage.codes": "quantize"}),
                StepRequest(pipe, "prior_B", "prior", [], {"stage.codes": "vqvae"}),
                StepRequest(pipe, "evaluate_A", "evaluate", [], {"stage.prior": "prior_A", "stage.classifier": "classifier"}),
                StepRequest(pipe, "evaluate_B", "evaluate", [], {"stage.prior": "prior_B", "stage.classifier": "classifier"})]
    order = [request.name for request in launch_order(declared)]
    training = [name for name in order if name.startswith(("vae", "vqvae", "classifier", "prior"))]
    assert training == ["vae", "vqvae", "classifier", "prior_A", "prior_B"]
    start_ready_steps(launch_order(declared), {}, [], n_parallel=2, cores=2, gpus=[], start=None)
    assert [name for name, _ in pipe.launched] == ["vae", "vqvae"]  # the classifier, read last, waits


def test_a_multi_seed_study_finishes_seed_by_seed(tmp_path):
    """The first seed's evaluations run before the second seed's training: a long run that is
    stopped has whole seeds to show."""
    pipe = FakePipe(tmp_path)
    declared = [StepRequest(pipe, "classifier", "classifier", [])]
    for seed in ("seed_0", "seed_1"):
        declared += [StepRequest(pipe, f"{seed}/vqvae", "vqvae", []),
                     StepRequest(pipe, f"{seed}/prior_B", "prior", [], {"stage.codes": f"{seed}/vqvae"}),
                     StepRequest(pipe, f"{seed}/sample_B", "sample", [], {"stage.prior": f"{seed}/prior_B"}),
                     StepRequest(pipe, f"{seed}/evaluate_B", "evaluate", [],
                                 {"stage.samples": f"{seed}/sample_B", "stage.classifier": "classifier"})]
    order = [request.name for request in launch_order(declared)]
    assert order == ["seed_0/sample_B", "seed_0/evaluate_B", "seed_0/vqvae", "seed_0/prior_B", "classifier",
                     "seed_1/sample_B", "seed_1/evaluate_B", "seed_1/vqvae", "seed_1/prior_B"]


def test_a_finished_prior_is_sampled_and_evaluated_before_the_next_prior_starts(tmp_path):
    """Two places, three priors of a seed: when the first prior ends, its sample takes the free
    place before the third prior (an hour of training), so a study stopped then has the first
    prior's samples and evaluation. (The classifier, which every evaluation reads, is trained
    once, with the first seed: seed 1 finds it done.)"""
    pipe = FakePipe(tmp_path)
    declared = [StepRequest(pipe, "classifier", "classifier", [])]
    for method in ("A", "B", "C"):
        declared += [StepRequest(pipe, f"seed_1/codes_{method}", "vqvae", []),
                     StepRequest(pipe, f"seed_1/prior_{method}", "prior", [], {"stage.codes": f"seed_1/codes_{method}"}),
                     StepRequest(pipe, f"seed_1/sample_{method}", "sample", [], {"stage.prior": f"seed_1/prior_{method}"}),
                     StepRequest(pipe, f"seed_1/evaluate_{method}", "evaluate", [],
                                 {"stage.samples": f"seed_1/sample_{method}", "stage.classifier": "classifier"})]
    pipe.results.update({"classifier": object(), **{f"seed_1/codes_{m}": object() for m in "ABC"}})
    pending, plans, running = [r for r in launch_order(declared) if r.name not in pipe.results], {}, []
    start_ready_steps(pending, plans, running, n_parallel=2, cores=2, gpus=[], start=None)
    assert [name for name, _ in pipe.launched] == ["seed_1/prior_A", "seed_1/prior_B"]
    running[:] = [job for job in running if job.plan.name != "seed_1/prior_A"]  # prior A ends, B trains on
    pipe.results["seed_1/prior_A"] = object()
    start_ready_steps(pending, plans, running, n_parallel=2, cores=2, gpus=[], start=None)
    assert [name for name, _ in pipe.launched][2:] == ["seed_1/sample_A"]  # not prior C
    running[:] = [job for job in running if job.plan.name != "seed_1/sample_A"]
    pipe.results["seed_1/sample_A"] = object()
    start_ready_steps(pending, plans, running, n_parallel=2, cores=2, gpus=[], start=None)
    assert [name for name, _ in pipe.launched][3:] == ["seed_1/evaluate_A"]


def test_steps_side_by_side_share_the_cores_and_a_lone_step_gets_them_all(tmp_path):
    pipe = FakePipe(tmp_path)
    pending = [StepRequest(pipe, "vae", "vae", []), StepRequest(pipe, "vqvae", "vqvae", []),
               StepRequest(pipe, "vqvae_ema", "vqvae", []), StepRequest(pipe, "quantize", "quantize", [], {"stage.vae": "vae"})]
    plans, running = {}, []
    start_ready_steps(pending, plans, running, n_parallel=2, cores=8, gpus=[], start=None)
    assert pipe.launched == [("vae", 4), ("vqvae", 4)]  # two places, half the cores each; the third waits
    running.clear()  # both finished
    pipe.results.update(vae=object(), vqvae=object())
    start_ready_steps(pending, plans, running, n_parallel=2, cores=8, gpus=[], start=None)
    assert pipe.launched[2:] == [("vqvae_ema", 4), ("quantize", 4)]

    lone = FakePipe(tmp_path)
    pending, running = [StepRequest(lone, "vae", "vae", []), StepRequest(lone, "quantize", "quantize", [], {"stage.vae": "vae"})], []
    start_ready_steps(pending, {}, running, n_parallel=2, cores=8, gpus=[], start=None)
    # The head of a chain: nothing else can start before it ends, so it takes every core and both places.
    assert lone.launched == [("vae", 8)] and running[0].slots == 2


def given(pipe: FakePipe, name: str) -> int | None:
    return read_thread_count(Path(pipe.files[name]))


def test_an_idle_place_lends_its_threads_to_training_steps_until_a_step_is_ready(tmp_path):
    pipe = FakePipe(tmp_path / "steps")
    pending = [StepRequest(pipe, "prior_A", "prior", []), StepRequest(pipe, "prior_B", "prior", []),
               StepRequest(pipe, "sample_B", "sample", [], {"stage.prior": "prior_B"})]
    plans, running = {}, []
    start_ready_steps(pending, plans, running, n_parallel=2, cores=2, gpus=[], start=None, threads_dir=tmp_path)
    share_cores(running, n_parallel=2, cores=2)
    assert [given(pipe, name) for name in ("prior_A", "prior_B")] == [1, 1]  # one core each

    running.pop()  # prior_B ends; sample_B is ready only once it is recorded: nothing ready yet
    share_cores(running, n_parallel=2, cores=2)
    assert given(pipe, "prior_A") == 2  # the idle core goes to the step still running

    pipe.results["prior_B"] = object()  # recorded: sample_B starts, and prior_A gives its core back
    start_ready_steps(pending, plans, running, n_parallel=2, cores=2, gpus=[], start=None, threads_dir=tmp_path)
    share_cores(running, n_parallel=2, cores=2)
    assert [job.plan.name for job in running] == ["prior_A", "sample_B"] and given(pipe, "prior_A") == 1
    assert pipe.files["sample_B"] is None  # no training batches to take up a count: no file

    running.remove(running[0])  # prior_A ends beside sample_B: no training step is left to lend to
    share_cores(running, n_parallel=2, cores=2)
    assert running[0].lent == 0


def test_with_every_place_taken_no_count_changes(tmp_path):
    pipe = FakePipe(tmp_path / "steps")
    pending = [StepRequest(pipe, name, "vqvae", []) for name in ("vqvae", "vqvae_ema", "vqvae_kmeans")]
    running = []
    start_ready_steps(pending, {}, running, n_parallel=3, cores=8, gpus=[], start=None, threads_dir=tmp_path)
    share_cores(running, n_parallel=3, cores=8)
    assert [given(pipe, name) for name in ("vqvae", "vqvae_ema", "vqvae_kmeans")] == [2, 2, 2]
    running.pop()  # one place idle: its 2 threads and the 2 nobody had go to the two left
    share_cores(running, n_parallel=3, cores=8)
    assert [given(pipe, name) for name in ("vqvae", "vqvae_ema")] == [4, 4]


def test_run_steps_lends_at_the_tail_and_removes_its_files(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    monkeypatch.setattr(parallel, "POLL_SECONDS", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    pipe = FakePipe(tmp_path / "steps", ticks={"prior_A": 2, "sample_A": 2, "prior_B": 8})
    requests = [StepRequest(pipe, "prior_A", "prior", []), StepRequest(pipe, "prior_B", "prior", []),
                StepRequest(pipe, "sample_A", "sample", [], {"stage.prior": "prior_A"})]
    run_steps(requests, n_parallel=2, lend_idle_cores=True)
    assert set(pipe.results) == {"prior_A", "sample_A", "prior_B"}
    counts = pipe.processes["prior_B"].counts
    # One core while prior_A, then sample_A, ran beside it; both cores once it was alone.
    assert counts[0] == 1 and counts[-1] == 2 and counts == sorted(counts)
    assert list((tmp_path / "tmp").iterdir()) == []  # its thread files are gone

    interrupted = FakePipe(tmp_path / "again", ticks={"prior_A": 5, "prior_B": 5}, interrupt="prior_B")
    with pytest.raises(KeyboardInterrupt):
        run_steps([StepRequest(interrupted, "prior_A", "prior", []), StepRequest(interrupted, "prior_B", "prior", [])],
                  n_parallel=2, lend_idle_cores=True)
    assert interrupted.processes["prior_A"].returncode == -15  # stopped, not left running
    assert list((tmp_path / "tmp").iterdir()) == []


def test_without_lending_no_step_gets_a_thread_file(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "POLL_SECONDS", 0)
    pipe = FakePipe(tmp_path)
    run_steps([StepRequest(pipe, "prior_A", "prior", []), StepRequest(pipe, "prior_B", "prior", [])], n_parallel=2)
    assert set(pipe.results) == {"prior_A", "prior_B"} and pipe.files == {"prior_A": None, "prior_B": None}


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
    assert report["parallel"] == 2 and report["lend_idle_cores"] is False  # off unless asked
    assert report["methods"]["A_kmeans8"]["seeds"]["0"]["codes/n_codes"] == 8
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


@pytest.mark.parametrize("switch", ["lend_idle_cores", "priors"])
def test_a_switch_is_true_or_false(compose_config, study_overrides, tmp_path, switch):
    with pytest.raises(ConfigError, match=f"pipeline.{switch} is true or false"):
        run_stage(compose_config(tmp_path, study_overrides + ["pipeline.parallel=2", f"pipeline.{switch}=sometimes"]))
    assert not (tmp_path / "classifier").exists()


def test_parallel_steps_and_ddp_are_exclusive(compose_config, study_overrides, tmp_path):
    with pytest.raises(ConfigError, match="trainer.devices=1 with pipeline.parallel"):
        run_stage(compose_config(tmp_path, study_overrides + ["pipeline.parallel=2", "trainer=ddp", "trainer.devices=2"]))


# -- how a step's process starts: pipeline.step_launcher ------------------------------------------


@pytest.fixture
def tiny_pipeline(tmp_path, tiny_overrides):
    """``tiny_pipeline(name)``: a Pipeline of tiny steps in tmp_path/name (small GridVAE, debug=tiny)."""
    small_vae = [item for item in tiny_overrides() if item.startswith("model.")]
    base = [item for item in tiny_overrides() if not item.startswith("model.")] + ["figures=false"]
    return lambda name, *extra: Pipeline(tmp_path / name, [*base, *extra], {"vae": small_vae})


@pytest.mark.slow  # trains: the slow tier (CI runs both tiers)
def test_forked_steps_give_the_metrics_and_logs_of_new_interpreters(tiny_pipeline):
    metrics, logs = {}, {}
    for launcher in ("subprocess", "fork"):
        pipe = tiny_pipeline(launcher)
        run_steps([StepRequest(pipe, "vae", "vae", []), StepRequest(pipe, "classifier", "classifier", [])], 2, launcher)
        metrics[launcher] = {name: result.metrics for name, result in pipe.results.items()}
        logs[launcher] = (pipe.root / "vae" / STEP_LOG).read_text().replace(str(pipe.root), "<root>")
    assert metrics["fork"] == metrics["subprocess"] and set(metrics["fork"]) == {"vae", "classifier"}
    assert logs["fork"] == logs["subprocess"] and "done: stage=vae in <root>/vae" in logs["fork"]


def test_a_forked_step_that_fails_is_named_with_its_log_and_not_recorded(tiny_pipeline, tmp_path):
    pipe = tiny_pipeline("study", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(TrainingError, match=r"step 'vae' \(stage=vae\) failed with exit code 1; its log, .*vae/step\.log"):
        run_steps([StepRequest(pipe, "vae", "vae", [])], 2, "fork")
    assert "error: MNIST not found under" in (pipe.root / "vae" / STEP_LOG).read_text()
    assert not (pipe.root / "vae" / STEP_FILE).exists() and "vae" not in pipe.results


@pytest.mark.slow  # trains: the slow tier (CI runs both tiers)
def test_sigterm_stops_a_forked_step_as_interrupted_and_nothing_is_recorded(tiny_pipeline):
    pipe = tiny_pipeline("study", "trainer.max_epochs=500")
    plan = pipe.plan("vae", "vae", [], {})
    pipe.prepare_folder(plan)
    log_file = plan.folder / STEP_LOG
    process = pipe.launch(plan, env=step_environment(0, 1, []), log_file=log_file, start=start_forked)
    try:
        deadline = time.monotonic() + 240
        while not (plan.folder / "checkpoints" / "last.ckpt").exists():
            assert process.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, "no checkpoint in 240 s"
            time.sleep(0.2)
    finally:
        stop_processes([process])  # what a stopped study does: SIGTERM, then wait
    assert process.returncode == 143
    with pytest.raises(TrainingError, match="failed with exit code 143"):
        pipe.collect(plan, process.returncode, log_file)
    output = log_file.read_text()
    assert "Traceback" not in output and "interrupted (SIGTERM): stage=vae" in output
    assert not (plan.folder / STEP_FILE).exists() and not (plan.folder / "metrics.json").exists()


def report_threads(env: dict, log_file: str) -> None:
    """In a forked child: the step's environment, then the thread counts it left, into the log
    (the Python line through sys.stdout, the other straight to fd 1 as C code writes)."""
    enter_step_environment(env, log_file)
    import torch
    from threadpoolctl import threadpool_info

    print(json.dumps({"torch": torch.get_num_threads(), "pools": [pool["num_threads"] for pool in threadpool_info()],
                      "token": os.environ.get("STEP_TEST_TOKEN")}), flush=True)
    os.write(1, b"written to fd 1\n")


def test_a_forked_step_gets_its_thread_count_environment_and_log(tmp_path):
    # The server loaded torch and BLAS with every core: the child must set its own count.
    threads = 1 if available_cores() > 1 else 2
    env = {**step_environment(0, threads, []), "STEP_TEST_TOKEN": "abc"}
    log_file = tmp_path / STEP_LOG
    process = step_server().Process(target=report_threads, args=(env, str(log_file)))
    process.start()
    process.join(120)
    assert process.exitcode == 0
    line, fd_line = log_file.read_text().splitlines()
    seen = json.loads(line)
    assert seen["torch"] == threads and seen["pools"] and set(seen["pools"]) == {threads} and seen["token"] == "abc"
    assert fd_line == "written to fd 1"


def test_without_a_forkserver_steps_start_as_new_interpreters_and_one_line_says_so(monkeypatch, caplog):
    monkeypatch.setattr("multiprocessing.get_all_start_methods", lambda: ["spawn"])  # as on Windows
    with caplog.at_level(logging.INFO, logger="geovq.study.step_process"):
        assert step_starter("fork") is start_subprocess
    assert len(caplog.records) == 1 and "new interpreter" in caplog.records[0].getMessage()
    assert step_starter("subprocess") is start_subprocess


def test_an_unknown_step_launcher_is_a_one_line_error(compose_config, study_overrides, tmp_path):
    with pytest.raises(ConfigError, match="pipeline.step_launcher .*fork.*subprocess.*got 'bogus'") as error:
        run_stage(compose_config(tmp_path, study_overrides + ["pipeline.parallel=2", "pipeline.step_launcher=bogus"]))
    assert "\n" not in str(error.value)


def test_the_step_server_outlives_a_signal_to_the_process_group(tmp_path):
    """kill -- -PGID, GNU timeout and scancel signal the study, its steps and the step server at
    once: the server must stay alive (else multiprocessing reports its running steps as ended,
    exit 255, and cannot stop them)."""
    import signal
    from multiprocessing import forkserver

    step = start_forked(["--help"], dict(os.environ), tmp_path / "help.log")
    assert step.wait(timeout=120) == 0
    server = forkserver._forkserver._forkserver_pid
    os.kill(server, signal.SIGTERM)
    os.kill(server, signal.SIGINT)
    time.sleep(0.5)
    # A killed server is a zombie until multiprocessing reaps it: alive means running or sleeping.
    state = open(f"/proc/{server}/stat").read().rsplit(")", 1)[1].split()[0]
    assert state not in ("Z", "X"), "the step server died of the signal"
    assert start_forked(["--help"], dict(os.environ), tmp_path / "again.log").wait(timeout=120) == 0


def test_a_forked_step_stopped_before_it_sets_its_handlers_ends_at_once():
    """The milliseconds between the fork and the step's own handlers: a step stopped there ends
    with 128 + signal, as later, instead of ignoring the signal as the server does until the
    study's grace period ends and it is killed."""
    import signal

    for stop in (signal.SIGTERM, signal.SIGINT):
        process = step_server().Process(target=time.sleep, args=(60,))  # never sets handlers
        process.start()
        try:
            time.sleep(0.5)
            os.kill(process.pid, stop)
            process.join(10)
            assert process.exitcode == 128 + stop, f"{stop.name}: exit code {process.exitcode} (None: still running)"
        finally:
            if process.exitcode is None:
                process.kill()


class StartingPipe(FakePipe):
    """A FakePipe whose steps are started by the scheduler's start function."""

    def launch(self, plan, env, log_file=None, start=None):
        return start([], env, log_file)


def test_a_study_stopped_while_it_starts_a_step_stops_that_step_too(tmp_path):
    """Ctrl-C arriving while a step's process is being started (the first one also starts the
    step server: seconds) waits until the study has recorded the process, so the study stops it
    instead of leaving it to run on alone, holding its folder."""
    import signal
    import subprocess
    import sys

    from geovq.interrupts import RunInterrupted, signals_interrupt

    started = []

    def start_and_get_interrupted(args, env, log_file):
        # A step's process as it begins: it unblocks the stop signals and sets its handlers, then works.
        step = "from geovq.interrupts import stop_quietly_while_starting as s; s(); import time; time.sleep(120)"
        started.append(subprocess.Popen([sys.executable, "-c", step], env=env))
        os.kill(os.getpid(), signal.SIGINT)  # the study is stopped before the start function returns
        time.sleep(0.2)  # time for an undeferred handler to run here, before the process is recorded
        return started[-1]

    pipe = StartingPipe(tmp_path)
    try:
        with pytest.raises(RunInterrupted), signals_interrupt():
            parallel.schedule([StepRequest(pipe, "vae", "vae", [])], n_parallel=1, cores=1, gpus=[],
                              start=start_and_get_interrupted, threads_dir=None)
        assert started[0].poll() is not None, "the step started as the study was stopped runs on"
        assert started[0].returncode == 143  # stopped as a step is (SIGTERM), not killed after the grace time
    finally:
        for process in started:
            process.kill()
            process.wait()


def test_checking_a_rerun_does_not_read_an_earlier_runs_outputs(tmp_path):
    """Before any step runs, an input not made yet stands for a path no run writes: an earlier
    run's model.pt in the step's folder (set aside when the step runs again) is not checked
    against today's settings."""
    from geovq.study.runner import StepChecker

    pipe = Pipeline(tmp_path, [], {})
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "model.pt").write_bytes(b"an earlier run's GridVAE")
    outputs = {}
    StepChecker(pipe, outputs).step("vae", "vae")
    assert not outputs["vae"].exists() and outputs["vae"].name == "model.pt"
