"""bench/train_step.py measures a training step and its fraction of the machine's peak."""

from __future__ import annotations

import pytest

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclass looks the module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_one_eager_step_of_the_prior_has_time_flops_and_a_fraction_of_peak():
    bench = _bench()
    row = bench.measure("prior", "fp32", compiled=False, channels_last=False, steps=1, warmup=1)
    peak = bench.peaks("fp32", "cpu", reps=2)
    assert row.ms > 0 and row.gflop_per_step > 0 and row.gflops > 0
    assert 0 < row.gflops / max(peak.values()) <= 1.5
    assert "| prior | fp32 |" in "\n".join(bench.table([row], {"fp32": peak}))
