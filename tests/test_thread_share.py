"""A training step of pipeline.parallel=N follows the thread count its scheduler gives it
(the scheduler's side: tests/test_parallel_steps.py)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from geovq.callbacks.thread_share import (
    THREADS_FILE_ENV,
    FollowThreadShare,
    read_thread_count,
    thread_share_callbacks,
    write_thread_count,
)
from geovq.training import build_trainer


def test_the_count_is_written_whole_and_a_bad_one_is_ignored(tmp_path):
    path = tmp_path / "threads"
    assert read_thread_count(path) is None  # not written yet
    write_thread_count(path, 3)
    assert read_thread_count(path) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["threads"]
    for junk in ("", "two", "0"):
        path.write_text(junk)
        assert read_thread_count(path) is None


class RecordsThreads(L.LightningModule):
    """Records torch's thread count at each training batch and, at batch 1, plays the scheduler
    changing its share."""

    def __init__(self, threads_file, new_count):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.threads_file, self.new_count, self.seen = threads_file, new_count, []

    def training_step(self, batch, batch_idx):
        self.seen.append(torch.get_num_threads())
        if batch_idx == 1:
            write_thread_count(self.threads_file, self.new_count)
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_while_the_share_changes(path, max_steps: int) -> tuple[list[int], int, int, int]:
    """A fit whose count changes at batch 1: the counts its batches saw, the count after the fit,
    and the two counts."""
    before = torch.get_num_threads()
    first, second = (2, 1) if before == 1 else (1, before)
    write_thread_count(path, first)
    model = RecordsThreads(path, second)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, callbacks=thread_share_callbacks(), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    try:
        trainer.fit(model, DataLoader(TensorDataset(torch.rand(16, 2)), batch_size=4))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return model.seen, after, first, second


def test_a_training_step_takes_up_its_new_count_at_the_next_batch(tmp_path, monkeypatch):
    path = tmp_path / "threads"
    monkeypatch.setenv(THREADS_FILE_ENV, str(path))
    assert [type(callback) for callback in thread_share_callbacks()] == [FollowThreadShare]  # as build_trainer adds it
    seen, _, first, second = fit_while_the_share_changes(path, max_steps=4)
    assert seen == [first, first, second, second]
    # Changed at the last batch: taken up at the end of training, before the fit-end work.
    seen, after, first, second = fit_while_the_share_changes(path, max_steps=2)
    assert seen == [first, first] and after == second


def test_outside_a_parallel_study_nothing_follows(monkeypatch):
    monkeypatch.delenv(THREADS_FILE_ENV, raising=False)
    assert thread_share_callbacks() == []


def test_build_trainer_adds_it_in_a_step_of_a_lending_study(make_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv(THREADS_FILE_ENV, str(tmp_path / "threads"))
    trainer = build_trainer(make_cfg("stage=vae"))
    assert [callback.path for callback in trainer.callbacks if isinstance(callback, FollowThreadShare)] == [
        tmp_path / "threads"]
