"""Bad inputs and faults: resume from the true last epoch, one run per folder, one `error:` line
for each impossible setting, nothing written before the settings are checked."""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from geovq.artifacts import find_latest
from geovq.errors import ConfigError
from geovq.run_folder import LOCK_FILE, RunFolderBusy, lock_run_folder
from geovq.train import run_stage


class InterruptAtEpoch(L.Callback):
    """Ctrl-C at the start of an epoch (after the previous one completed and was checkpointed)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


class RecordEpochs(L.Callback):
    started: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        RecordEpochs.started.append(trainer.current_epoch)


def files_in(folder):
    """Every file under ``folder`` with its bytes and modification time."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


# Only the first epoch is ever "best" (monitoring the epoch number with mode=min): every later
# epoch is one whose monitored value did not improve.
NEVER_IMPROVES = ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min", "figures=false"]


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_resume_continues_after_the_last_completed_epoch_when_the_monitor_stopped_improving(make_cfg, tmp_path):
    out = tmp_path / "run"
    interrupt = f"+callbacks.interrupt._target_={__name__}.InterruptAtEpoch"
    with pytest.raises(SystemExit):  # Lightning's graceful Ctrl-C handling exits
        run_stage(make_cfg("stage=vae", *NEVER_IMPROVES, interrupt, "+callbacks.interrupt.epoch=3",
                           output_dir=out, **{"trainer.max_epochs": 5}))
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2  # the third epoch
    RecordEpochs.started = []
    record = f"+callbacks.record._target_={__name__}.RecordEpochs"
    run_stage(make_cfg("stage=vae", *NEVER_IMPROVES, record, "ckpt_path=last", output_dir=out, **{"trainer.max_epochs": 5}))
    assert RecordEpochs.started == [3, 4]  # the fourth and fifth epochs: nothing trained again
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_resuming_a_finished_run_does_nothing_and_rewrites_nothing(make_cfg, tmp_path):
    out = tmp_path / "run"
    metrics = run_stage(make_cfg("stage=vae", output_dir=out))
    before = files_in(out)
    again = run_stage(make_cfg("stage=vae", "ckpt_path=last", output_dir=out))
    assert again == pytest.approx(metrics)
    assert files_in(out) == before


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_changed_learning_rate_on_resume_is_refused_not_ignored(make_cfg, tmp_path):
    out = tmp_path / "run"
    run_stage(make_cfg("stage=vae", "figures=false", output_dir=out))
    with pytest.raises(ConfigError, match=r"model\.optimizer\.lr=0\.001.*new run"):
        run_stage(make_cfg("stage=vae", "figures=false", "ckpt_path=last", "model.optimizer.lr=0.0001",
                           output_dir=out, **{"trainer.max_epochs": 2}))


def test_the_non_finite_loss_advice_works_as_written(make_cfg, nan_loss_message, tmp_path):
    message = nan_loss_message(tmp_path / "nan")
    advice = re.search(r"Resume with gradient clipping: (.+?);", message).group(1)
    overrides = [item for item in shlex.split(advice) if not item.startswith("hydra.")]
    cfg = make_cfg("stage=vae", *overrides)
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.ckpt_path == "last"


def test_a_malicious_checkpoint_is_refused_without_running_its_code(make_cfg, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(ConfigError, match="cannot resume from .*bad.ckpt"):
        run_stage(make_cfg("stage=vae", f"ckpt_path={bad}"))
    assert not marker.exists()


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.optimizer.lr=-0.001", "model.optimizer"),
        ("data.test_subset=0", "data.test_subset"),
    ],
)
def test_impossible_settings_stop_before_anything_is_written(make_cfg, tmp_path, override, needle):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=re.escape(needle)):
        run_stage(make_cfg("stage=vae", override, output_dir=out))
    assert not any(out.rglob("*.pt")) and not any(out.rglob("*.ckpt"))


def test_an_unwritable_checkpoint_folder_is_reported_before_training(make_cfg, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the checkpoint folder should be")
    with pytest.raises(ConfigError, match="cannot write checkpoints"):
        run_stage(make_cfg("stage=vae", output_dir=out))
    assert not (out / "csv").exists()


def test_a_run_folder_is_held_by_one_run(tmp_path):
    lock = lock_run_folder(tmp_path)
    try:
        with pytest.raises(RunFolderBusy, match="another geovq run"):
            lock_run_folder(tmp_path)
    finally:
        lock.release()
    lock_run_folder(tmp_path).release()  # free again once released


@pytest.mark.slow
def test_a_second_run_in_a_busy_folder_stops_and_touches_nothing(run_cli, tiny_overrides, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"test/mse": 0.5}\n')  # the first run's files
    lock = lock_run_folder(out)
    before = files_in(out)
    try:
        result = run_cli("stage=vae", f"hydra.run.dir={out}", *tiny_overrides())
    finally:
        lock.release()
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: another geovq run is using the run folder")
    assert files_in(out) == before


def test_picking_the_newest_input_says_which_file(tmp_path, caplog):
    older, newer = tmp_path / "vae" / "runs" / "a" / "model.pt", tmp_path / "vae" / "runs" / "b" / "model.pt"
    for path in (older, newer):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="geovq.artifacts"):
        assert find_latest(tmp_path, "vae", "model.pt") == newer
    assert str(newer) in caplog.text


def test_resuming_without_a_checkpoint_says_how(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"cannot resume: no checkpoint.*hydra\.run\.dir=.*ckpt_path=last"):
        run_stage(make_cfg("stage=vae", "ckpt_path=last", output_dir=tmp_path / "fresh"))


# -- stopping on purpose: SIGINT / SIGTERM ------------------------------------------------------


def start_cli(args: list[str], log_file) -> subprocess.Popen:
    """`python -m geovq.train ARGS` in the background, its output in ``log_file``."""
    env = {**os.environ, "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    with open(log_file, "w") as stream:
        return subprocess.Popen([sys.executable, "-m", "geovq.train", *args], stdout=stream, stderr=stream,
                                stdin=subprocess.DEVNULL, env=env, cwd=Path(__file__).resolve().parents[1])


def wait_for(path, process, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear in {seconds} s"
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_signal_ends_a_training_run_as_interrupted_with_the_command_that_continues_it(signum, tiny_overrides, tmp_path):
    out = tmp_path / "run"
    process = start_cli(["stage=vae", f"hydra.run.dir={out}", "trainer.max_epochs=200", "figures=false",
                         *tiny_overrides()], tmp_path / "log")
    wait_for(out / "checkpoints" / "last.ckpt", process)
    process.send_signal(signum)
    assert process.wait(timeout=120) == 128 + signum  # 143 / 130: never the status of a success
    output = (tmp_path / "log").read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    line = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert len(line) == 1 and signal.Signals(signum).name in line[0] and str(out / "checkpoints" / "last.ckpt") in line[0]
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    continue_with = shlex.split(line[0].split("Continue with: ", 1)[1])
    assert continue_with[:3] == ["python", "-m", "geovq.train"]
    assert f"hydra.run.dir={out}" in continue_with and "ckpt_path=last" in continue_with


def _wait_for_terminate(ready) -> None:
    ready.set()
    time.sleep(60)


def test_a_pool_worker_ended_by_its_pool_is_not_an_interruption_of_the_run():
    """A quantizer's fork-Pool worker inherits the run's handlers; the SIGTERM of its pool's
    terminate() must end it as a plain worker (killed by the signal), not raise RunInterrupted
    there (a traceback per worker in the step's log)."""
    import multiprocessing

    from geovq.interrupts import signals_interrupt

    context = multiprocessing.get_context("fork")
    with signals_interrupt():
        ready = context.Event()
        worker = context.Process(target=_wait_for_terminate, args=(ready,))
        worker.start()
        assert ready.wait(30)
        worker.terminate()
        worker.join(30)
    assert worker.exitcode == -signal.SIGTERM  # RunInterrupted in the worker would exit 1


SIGINT_AND_SIGTERM_TOGETHER = """
import signal
from geovq.interrupts import RunInterrupted, signals_interrupt

both = {signal.SIGINT, signal.SIGTERM}
with signals_interrupt():
    signal.pthread_sigmask(signal.SIG_BLOCK, both)
    signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGTERM)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)  # both arrive now, SIGINT first
        sum(range(1000))
    except RunInterrupted as interrupted:
        print("stopped by", interrupted.signal_name)
    sum(range(1000))  # where Python handles the pending SIGTERM
"""


def test_a_second_signal_arriving_with_the_first_is_ignored_without_a_traceback():
    """A study stops a step with SIGINT and SIGTERM close together: the first unwinds the run,
    the second, already pending, must be ignored quietly (with SIG_IGN as its handler Python
    printed "OSError: Signal 15 ignored due to race condition" and a traceback in the step's log)."""
    result = subprocess.run([sys.executable, "-c", SIGINT_AND_SIGTERM_TOGETHER], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped by SIGINT"
    assert "race condition" not in result.stderr and "Traceback" not in result.stderr


def test_a_later_signal_stops_nothing_even_where_lightning_put_the_run_handler_back():
    """Lightning's signal connector restores the handlers it found (the run's) while the run
    unwinds; a study's SIGTERM arriving then must not raise a second interruption."""
    from geovq.interrupts import RunInterrupted, _raise_interrupted, signals_interrupt

    with signals_interrupt():
        with pytest.raises(RunInterrupted) as first:
            signal.raise_signal(signal.SIGINT)
        signal.signal(signal.SIGTERM, _raise_interrupted)  # what Lightning's teardown does
        signal.raise_signal(signal.SIGTERM)  # raises RunInterrupted again without the flag
    assert first.value.signal_name == "SIGINT"


def test_a_step_process_that_exits_0_without_finishing_is_not_recorded(data_root, tmp_path):
    """Exit status 0 is not enough (Lightning exits 0 on SIGTERM): a step counts only when its
    process wrote back this run's token, so an earlier run's metrics are never recorded anew."""
    from geovq.errors import TrainingError
    from geovq.run_folder import STEP_TOKEN_ENV, write_completion
    from geovq.study.runner import STEP_FILE, Pipeline

    pipe = Pipeline(tmp_path, [f"data.root={data_root}"], {})
    plan = pipe.plan("vae", "vae", [], {})
    plan.folder.mkdir(parents=True)
    (plan.folder / "metrics.json").write_text('{"test/mse": 0.5}\n')  # an earlier run's
    with pytest.raises(TrainingError, match="exited without saying it finished"):
        pipe.collect(plan, 0)
    os.environ[STEP_TOKEN_ENV] = "an-earlier-launch"
    try:
        write_completion(plan.folder, "vae")
    finally:
        del os.environ[STEP_TOKEN_ENV]
    with pytest.raises(TrainingError, match="exited without saying it finished"):
        pipe.collect(plan, 0)
    assert not (plan.folder / STEP_FILE).exists()
    os.environ[STEP_TOKEN_ENV] = plan.token
    try:
        write_completion(plan.folder, "vae")
    finally:
        del os.environ[STEP_TOKEN_ENV]
    assert pipe.collect(plan, 0) == {"test/mse": 0.5}


def stopped_after_one_epoch(calls: list):
    """A training stage whose first run is stopped after writing its first epoch's checkpoint
    (as Ctrl-C leaves it); later runs finish. ``calls`` gets each run's ckpt_path."""
    def get_stage(stage: str):
        def run(cfg) -> dict:
            calls.append(cfg.get("ckpt_path"))
            folder = Path(cfg.paths.output_dir)
            if len(calls) == 1:
                (folder / "checkpoints").mkdir(parents=True)
                (folder / "checkpoints" / "last.ckpt").write_text("epoch 1")
                raise KeyboardInterrupt
            (folder / "model.pt").write_text(f"trained, resumed: {cfg.get('ckpt_path') == 'last'}")
            return {"test/mse": 0.5}
        return run
    return get_stage


def test_a_training_step_stopped_part_way_resumes_from_its_last_checkpoint(data_root, tmp_path):
    """A long study stopped at any moment loses at most an epoch of each step it was training:
    rerun, such a step continues from its checkpoint (which holds the generators' states, so it
    ends as an unstopped run: test_prior_convergence.py), unless its config or inputs changed."""
    from geovq.study.runner import STARTED_FILE, Pipeline

    calls = []
    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path, [f"data.root={data_root}"], {}, get_stage=stopped_after_one_epoch(calls)).step("vae", "vae")
    assert (tmp_path / "vae" / STARTED_FILE).exists() and not (tmp_path / "vae" / "step.json").exists()

    rerun = Pipeline(tmp_path, [f"data.root={data_root}"], {}, get_stage=stopped_after_one_epoch(calls))
    result = rerun.step("vae", "vae")
    assert calls == [None, "last"] and result.output.read_text() == "trained, resumed: True"
    assert (tmp_path / "vae" / "checkpoints" / "last.ckpt").read_text() == "epoch 1"  # resumed in place
    assert json.loads((tmp_path / "vae" / "step.json").read_text())["resumed"] is True


def test_a_step_run_as_its_own_process_resumes_the_same_way(data_root, tmp_path):
    """pipeline.parallel=N and DDP: the scheduler prepares the folder, then launches the step
    with ckpt_path=last."""
    from geovq.study.runner import Pipeline

    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path, [f"data.root={data_root}"], {}, get_stage=stopped_after_one_epoch([])).step("vae", "vae")
    pipe = Pipeline(tmp_path, [f"data.root={data_root}"], {})
    plan = pipe.plan("vae", "vae", [], {})
    pipe.prepare_folder(plan)
    assert "ckpt_path=last" in pipe.launch(plan, start=lambda args, env, log_file: args)
    assert (tmp_path / "vae" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("how", ["its fit ended", "it failed", "it exited 1"])
def test_a_step_that_finished_its_fit_or_failed_starts_over_instead_of_resuming(data_root, tmp_path, how):
    """Only a stopped fit resumes: one that ended (model.pt written, the step stopped before it
    was recorded) or a run that failed (its checkpoint may hold what made it fail) starts over."""
    from geovq.errors import TrainingError
    from geovq.study.runner import Pipeline

    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path, [f"data.root={data_root}"], {}, get_stage=stopped_after_one_epoch([])).step("vae", "vae")
    pipe = Pipeline(tmp_path, [f"data.root={data_root}"], {})
    plan = pipe.plan("vae", "vae", [], {})
    if how == "its fit ended":
        (plan.folder / "model.pt").write_text("the best epoch")
    elif how == "it failed":
        def diverged(cfg):
            raise TrainingError("the loss is NaN")
        with pytest.raises(TrainingError):
            Pipeline(tmp_path, [f"data.root={data_root}"], {}, get_stage=lambda stage: diverged).step("vae", "vae")
    else:
        with pytest.raises(TrainingError, match="failed with exit code 1"):
            pipe.collect(plan, 1)
    plan = pipe.plan("vae", "vae", [], {})
    pipe.prepare_folder(plan)
    assert not plan.resume and "ckpt_path=last" not in pipe.launch(plan, start=lambda args, env, log_file: args)
    assert not (tmp_path / "vae" / "checkpoints").exists()  # set aside in .replaced/


def test_a_stopped_step_whose_config_changed_starts_over_and_keeps_the_stopped_run(data_root, tmp_path):
    from geovq.study.runner import Pipeline

    calls = []
    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path, [f"data.root={data_root}"], {}, get_stage=stopped_after_one_epoch(calls)).step("vae", "vae")
    changed = Pipeline(tmp_path, [f"data.root={data_root}"], {}, get_stage=stopped_after_one_epoch(calls))
    changed.step("vae", "vae", ["model.beta=0.5"])
    assert calls == [None, None]
    assert [p.read_text() for p in (tmp_path / "vae" / ".replaced").rglob("last.ckpt")] == ["epoch 1"]


@pytest.mark.slow
def test_a_stopped_parallel_pipeline_stops_its_steps_and_a_rerun_continues(study_overrides, one_method_study, tmp_path):
    out = tmp_path / "study"
    # Minutes of training: a step left running would outlast the wait below (a forked step is not
    # orphaned: the study's exit waits for it).
    long_vae = "pipeline.vae=['model.hidden_channels=16','model.latent_dim=8','model.n_res_blocks=1','trainer.max_epochs=5000']"
    args = [f"hydra.run.dir={out}", "pipeline.parallel=2", *study_overrides, *one_method_study, long_vae]
    process = start_cli(args, tmp_path / "log")
    wait_for(out / "seed_0" / "vae" / "checkpoints" / "last.ckpt", process, seconds=400)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    output = (tmp_path / "log").read_text()
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if line.startswith("interrupted (SIGTERM): stage=pipeline")]
    # A step started as a command names the folder on its command line; one forked from the step
    # server (pipeline.step_launcher=fork) writes its output to a log there.
    leftover = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(out) in _cmdline(pid) + _stdout(pid)]
    assert leftover == []  # no step process outlives the pipeline
    assert not (out / "seed_0" / "vae" / "step.json").exists()  # the stopped step is not recorded
    lock_run_folder(out / "seed_0" / "vae").release()  # and its folder is free for the rerun


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stdout(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return ""


# -- resumes ------------------------------------------------------------------------------------


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_more_epochs_on_resume_are_refused_when_the_schedule_cannot_follow(make_cfg, tmp_path):
    out = tmp_path / "run"
    run_stage(make_cfg("stage=vae", "figures=false", output_dir=out))
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs=1.*learning-rate schedule"):
        run_stage(make_cfg("stage=vae", "figures=false", "ckpt_path=last", output_dir=out, **{"trainer.max_epochs": 2}))


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_checkpoint_of_another_stage_or_shape_is_refused_before_training(make_cfg, tmp_path):
    out = tmp_path / "run"
    run_stage(make_cfg("stage=vae", "figures=false", output_dir=out))
    last = out / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="stage=vae wrote it"):
        run_stage(make_cfg("stage=vqvae", "model=vqvae", f"ckpt_path={last}", output_dir=tmp_path / "other"))
    with pytest.raises(ConfigError, match=r"cannot resume .*is \[.*\], this model's is \[.*other model settings"):
        run_stage(make_cfg("stage=vae", "figures=false", f"ckpt_path={last}", output_dir=tmp_path / "wider",
                           **{"model.latent_dim": 4}))
    assert not (tmp_path / "wider" / "model.pt").exists()


def test_ckpt_path_on_a_stage_that_does_not_train_is_an_error(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="stage=sample does not train"):
        run_stage(make_cfg("stage=sample", "ckpt_path=last"))


# -- finished runs are kept ---------------------------------------------------------------------


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_new_run_in_a_folder_holding_a_run_is_refused_and_touches_nothing(run_cli, tiny_overrides, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "metrics.json").write_text('{"test/mse": 0.5}\n')
    (out / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    before = files_in(out)
    result = run_cli("stage=vae", f"hydra.run.dir={out}", *tiny_overrides())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: the run folder") and "ckpt_path=last" in last_line and "overwrite=true" in last_line
    assert {path: value for path, value in files_in(out).items() if path.name != LOCK_FILE} == before


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_overwrite_moves_the_earlier_run_aside_before_the_new_one_writes(run_cli, tiny_overrides, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"test/mse": 0.5}\n')
    result = run_cli("stage=vae", f"hydra.run.dir={out}", "overwrite=true", "figures=false", *tiny_overrides())
    assert result.returncode == 0, result.stderr
    kept = list((out / ".replaced").glob("*/metrics.json"))
    assert len(kept) == 1 and kept[0].read_text() == '{"test/mse": 0.5}\n'
    assert json.loads((out / "metrics.json").read_text())["test/mse"] != 0.5
    assert find_latest(tmp_path, "run", "metrics.json") == out / "metrics.json"  # never the set-aside copy


# -- settings checked before any work -----------------------------------------------------------


@pytest.mark.parametrize(
    "stage,override,key",
    [
        ("stage=vae", "data.batch_size=abc", "data.batch_size"),
        ("stage=vae", "data.subset=100.5", "data.subset"),
        ("stage=vae", "trainer.max_epochs=1.5", "trainer.max_epochs"),
        ("stage=vae", "seed=abc", "seed"),
        ("stage=vae", "data.num_workers=-1", "data.num_workers"),
        ("stage=vae", "model.optimizer.lr=0", "model.optimizer.lr"),
        ("stage=vae", "quantizer.n_clusters=-5", "quantizer.n_clusters"),
        ("stage=vqvae", "model.quantizer.n_codes=12.5", "model.quantizer.n_codes"),
        ("stage=sample", "stage.temperature=hot", "stage.temperature"),
    ],
)
@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_bad_settings_are_one_error_naming_the_key_before_anything_is_written(make_cfg, tmp_path, stage, override, key):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=re.escape(key)):
        run_stage(make_cfg(stage, override, output_dir=out))
    assert not any(path.is_file() for path in out.rglob("*"))


def test_a_model_the_stage_does_not_train_is_named_before_anything_is_built(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="stage=vae trains a GridVAE but model= builds a TransformerPrior"):
        run_stage(make_cfg("stage=vae", "model=prior", tiny=False, output_dir=tmp_path / "run"))
    assert not any(path.is_file() for path in (tmp_path / "run").rglob("*"))


@pytest.mark.parametrize("stage,override", [("stage=vqvae", "model.quantizer.n_codes=2000000000"),
                                            ("stage=sample", "stage.n_samples=100000000000")])
def test_an_allocation_that_cannot_fit_is_refused_up_front(make_cfg, stage, override):
    with pytest.raises(ConfigError, match="GiB of memory"):
        run_stage(make_cfg(stage, override))


def test_a_setting_the_stage_does_not_read_is_named(make_cfg):
    from geovq.config_check import ignored_overrides

    assert ignored_overrides(make_cfg("stage=prior", tiny=False), ["quantizer.n_clusters=64", "seed=1"]) == ["quantizer.n_clusters"]
    assert ignored_overrides(make_cfg("stage=quantize"), ["quantizer.n_clusters=64"]) == []


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_bad_setting_on_the_command_line_is_one_line_and_exit_1(run_cli, tiny_overrides, tmp_path):
    result = run_cli("stage=vae", "data.batch_size=abc", f"hydra.run.dir={tmp_path / 'run'}", *tiny_overrides())
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: data.batch_size='abc' is not an integer: it must be an integer >= 1. Set it with data.batch_size=..."]


# -- sweeps that finish -------------------------------------------------------------------------


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_failing_sweep_point_is_recorded_and_the_sweep_goes_on(run_cli, tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "stage=vqvae", "model=vqvae", "model.quantizer.n_codes=8,-1,16", f"hydra.sweep.dir={sweep}",
                     "figures=false", *tiny_overrides())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "1 sweep point(s) failed (jobs 1)" in result.stderr
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [row["model.quantizer.n_codes"] for row in rows] == ["8", "-1", "16"]
    assert rows[0]["test/mse"] and rows[2]["test/mse"] and not rows[1]["test/mse"]
    assert "model.quantizer.n_codes=-1 is out of range" in rows[1]["error"]
    assert "job 1: model.quantizer.n_codes=-1" in (sweep / "summary.md").read_text()
    assert (sweep / "1" / "failed.json").is_file()


@pytest.mark.slow
def test_a_failing_point_beside_a_good_one_under_joblib_does_not_kill_it(run_cli, tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "stage=vqvae", "model=vqvae", "model.quantizer.n_codes=8,-1", "launcher=joblib",
                     "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", "figures=false", *tiny_overrides())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert rows[0]["test/mse"] and not rows[0]["error"] and "out of range" in rows[1]["error"]


@pytest.mark.slow
def test_an_optuna_search_kept_in_sqlite_continues_where_it_stopped(run_cli, tiny_overrides, tmp_path):
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for sweep in ("first", "second"):  # the second command: the same search, continued
        result = run_cli("-m", "hparams_search=vqvae_optuna", "model=vqvae", "hydra.sweeper.n_trials=1",
                         f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={tmp_path / sweep}", "figures=false",
                         *tiny_overrides())
        assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="vqvae_optuna", storage=storage).trials
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE"]


def test_the_summary_reads_finished_and_failed_points(tmp_path):
    from geovq.sweeps import collect_runs, write_failure, write_summary

    for job, n_codes in (("0", 8), ("1", 16)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- model.quantizer.n_codes={n_codes}\n")
    (tmp_path / "0" / "metrics.json").write_text('{"test/mse": 0.25}\n')
    write_failure(tmp_path / "1", "it failed")
    runs = collect_runs(tmp_path)
    assert [(run["job"], run["error"]) for run in runs] == [("0", None), ("1", "it failed")]
    assert "| 1 | 16 | failed |" in write_summary(tmp_path).read_text()


# -- data and disk ------------------------------------------------------------------------------


def copy_of_mnist(data_root, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(data_root / "MNIST", root / "MNIST")
    for path in (root / "MNIST" / "raw").iterdir():
        path.chmod(0o644)
    return root


@pytest.mark.parametrize("name,offset", [("train-images-idx3-ubyte", 16), ("train-labels-idx1-ubyte", 8)])
def test_an_idx_file_of_the_right_size_holding_random_bytes_is_named(data_root, tmp_path, name, offset):
    from geovq.data.images import load_split
    from geovq.errors import DataError

    root = copy_of_mnist(data_root, tmp_path)
    path = root / "MNIST" / "raw" / name
    data = bytearray(path.read_bytes())
    data[offset:] = np.random.default_rng(0).integers(0, 256, len(data) - offset, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=re.escape(f"{path.resolve()} is corrupt")):
        load_split("torchvision.datasets.MNIST", root, True, False)


def test_a_failed_download_removes_the_folders_it_created(tmp_path, monkeypatch):
    import torchvision

    from geovq.data.images import load_split
    from geovq.errors import DataError

    def no_network(self):
        (Path(self.raw_folder)).mkdir(parents=True, exist_ok=True)
        (Path(self.raw_folder) / "train-images-idx3-ubyte.gz").write_bytes(b"half a download")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    shared = tmp_path / "shared"
    shared.mkdir()
    with pytest.raises(DataError, match="could not be downloaded"):
        load_split("torchvision.datasets.MNIST", shared / "new" / "data", True, True)
    assert list(shared.iterdir()) == []  # the folder that was there stays, nothing inside it


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_full_disk_while_checkpointing_is_one_error_and_the_earlier_checkpoint_survives(make_cfg, tmp_path, monkeypatch):
    import errno

    import geovq.checkpoint_io
    from geovq.artifacts import atomic_write_bytes
    from geovq.errors import TrainingError

    writes = []

    def disk_fills_up(path, data):
        writes.append(path)
        if len(writes) > 2:  # epoch 0's best and last checkpoints are written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        atomic_write_bytes(path, data)

    monkeypatch.setattr(geovq.checkpoint_io, "atomic_write_bytes", disk_fills_up)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="No space left on device.*intact.*ckpt_path=last"):
        run_stage(make_cfg("stage=vae", "figures=false", output_dir=out, **{"trainer.max_epochs": 3}))
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not list(out.rglob("*.tmp"))


# -- refusals say only what is safe -------------------------------------------------------------


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_an_unsafe_artifact_is_refused_in_one_line_without_unsafe_advice(run_cli, tiny_overrides, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps({"kind": "grid_vae", "payload": Payload()}))
    result = run_cli("stage=quantize", f"stage.vae={bad}", f"hydra.run.dir={tmp_path / 'q'}", *tiny_overrides())
    assert result.returncode == 1 and not marker.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]
    assert "weights_only" not in result.stderr


def test_an_unsafe_checkpoint_refusal_gives_no_unsafe_advice(make_cfg, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": object()}))
    with pytest.raises(ConfigError) as refused:
        run_stage(make_cfg("stage=vae", f"ckpt_path={bad}"))
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)


# -- every run says what it made ----------------------------------------------------------------


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_finished_run_names_its_folder_and_headline_figures(run_cli, tiny_overrides, tmp_path):
    out = tmp_path / "run"
    result = run_cli("stage=vae", f"hydra.run.dir={out}", "figures=false", *tiny_overrides())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()[-2:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert lines[0] == f"done: stage=vae in {out}"
    assert lines[1].strip() == f"test/mse {metrics['test/mse']:.5g}, rate/kl_per_position {metrics['rate/kl_per_position']:.5g}"


@pytest.mark.parametrize("stage,metrics,expected", [
    ("prior", {"test/nll": 2.98123, "val/nll": 3.0}, "test/nll 2.9812"),
    ("vqvae", {"test/mse": 0.0029, "codes/train_codes_used": 128.0, "codes/train_n_codes": 128.0},
     "test/mse 0.0029, codes/train_codes_used 128, codes/train_n_codes 128"),
    ("evaluate", {"fidelity/fid": 12.345}, "fidelity/fid 12.345"),
])
def test_each_stage_reports_its_headline_figures(make_cfg, stage, metrics, expected):
    from geovq.outcome import finished_lines

    cfg = make_cfg(f"stage={stage}", tiny=False)
    assert finished_lines(cfg, metrics) == [f"done: stage={stage} in {cfg.paths.output_dir}", f"  {expected}"]
