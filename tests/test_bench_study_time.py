"""bench/study_time.py compares studies' wall times, also normalized by the steps that run the same code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "study_time.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_study_time", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_study(folder: Path, start: str, end: str, steps: dict[str, int]) -> Path:
    """A train.log as the study writes it: a first line, one "done in" line per step, a last line."""
    folder.mkdir()
    lines = [f"[2026-12-07 {start},001][geovq.study.parallel][INFO] - pipeline.parallel=2: up to 2 steps at once"]
    lines += [f"[2026-12-07 {start},500][geovq.study.parallel][INFO] - step seed_0/{name}: done in {seconds} s"
              for name, seconds in steps.items()]
    lines.append(f"[2026-12-07 {end},000][geovq.study.parallel][INFO] - step seed_0/evaluate_B_ema: running")
    (folder / "train.log").write_text("\n".join(lines) + "\n")
    return folder


SAME = {"vae": 100, "vqvae": 100, "vqvae_ema": 100, "vqvae_paper_objective": 100}


def test_the_ratio_is_normalized_by_the_same_code_steps(tmp_path, capsys):
    """The second study ran on a machine 1.5x slower (its same-code steps took 1.5x longer) and
    took 0.75x the wall time: 0.5x once the machine's speed is taken out."""
    old = write_study(tmp_path / "old", "10:00:00", "11:00:00", {**SAME, "prior": 3000})
    new = write_study(tmp_path / "new", "12:00:00", "12:45:00", {**{k: 150 for k in SAME}, "prior": 1500})
    assert _bench().study_times(new) == (2700.0, {**{k: 150 for k in SAME}, "prior": 1500})
    _bench().main([str(old), str(new)])
    out = capsys.readouterr().out
    assert f"| {new} | 2700 | 2100 | 600 | 4.500 | 0.750 | 0.500 |" in out
    assert "| prior | 3000 | 1500 |" in out


def test_a_folder_without_a_log_or_a_missing_same_code_step_is_a_clear_error(tmp_path):
    old = write_study(tmp_path / "old", "10:00:00", "11:00:00", SAME)
    with pytest.raises(SystemExit, match="train.log not found"):
        _bench().main([str(old), str(tmp_path)])
    partial = write_study(tmp_path / "partial", "10:00:00", "10:05:00", {"vae": 100})
    with pytest.raises(SystemExit, match="no finished step vqvae, vqvae_ema"):
        _bench().main([str(old), str(partial)])
