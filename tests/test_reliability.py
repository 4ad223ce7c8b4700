"""Bad inputs and faults: resume from the true last epoch, one run per folder, one `error:` line
for each impossible setting, nothing written before the settings are checked."""

from __future__ import annotations

import logging
import pickle
import re
import shlex

import lightning as L
import pytest
import torch
from conftest import run_cli, tiny_overrides

from geovq.artifacts import find_latest
from geovq.errors import ConfigError
from geovq.run_folder import RunFolderBusy, lock_run_folder
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


def test_resuming_a_finished_run_does_nothing_and_rewrites_nothing(make_cfg, tmp_path):
    out = tmp_path / "run"
    metrics = run_stage(make_cfg("stage=vae", output_dir=out))
    before = files_in(out)
    again = run_stage(make_cfg("stage=vae", "ckpt_path=last", output_dir=out))
    assert again == pytest.approx(metrics)
    assert files_in(out) == before


def test_a_changed_learning_rate_on_resume_is_refused_not_ignored(make_cfg, tmp_path):
    out = tmp_path / "run"
    run_stage(make_cfg("stage=vae", "figures=false", output_dir=out))
    with pytest.raises(ConfigError, match=r"model\.optimizer\.lr=0\.001.*new run"):
        run_stage(make_cfg("stage=vae", "figures=false", "ckpt_path=last", "model.optimizer.lr=0.0001",
                           output_dir=out, **{"trainer.max_epochs": 2}))


def test_the_non_finite_loss_advice_works_as_written(make_cfg, tmp_path):
    from test_non_finite_loss import nan_loss_message

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
def test_a_second_run_in_a_busy_folder_stops_and_touches_nothing(tmp_path):
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
