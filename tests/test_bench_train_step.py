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



@pytest.mark.parametrize(("native", "expected"), [
    # bf16 at 05e991c and today (its attention in float32 since: the same setting, other code)
    (True, "| prior | bf16 | 0.238 | 1829 | bf16 | 0.238 | 1829 | 1.00x |"),
    (False, "| prior | fp32 | 0.500 | 1280 | fp32 | 0.500 | 1280 | 1.00x |"),  # float32 then and now
])
def test_before_and_after_compares_each_models_study_setting_then_and_now(monkeypatch, native, expected):
    import geovq.precision

    bench = _bench()
    for module in (bench, geovq.precision):
        monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: native)
    peak = {"fp32": {"matmul": 100.0, "conv": 100.0}, "bf16": {"matmul": 300.0, "conv": 300.0}}
    rows = [bench.Row("prior", "fp32", False, False, ms=100.0, best_ms=100.0, gflop_per_step=5.0),
            bench.Row("prior", "bf16", False, False, ms=70.0, best_ms=70.0, gflop_per_step=5.0)]
    assert bench.before_and_after(rows, peak, "cpu")[-1] == expected
    assert bench.study_settings("prior", "cpu")[1] == (("bf16", False) if native else ("fp32", False))
    assert bench.study_settings("classifier", "cpu")[1] == (("bf16", True) if native else ("fp32", False))


@pytest.mark.parametrize(("native", "flags", "kind"), [
    (True, ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], "amx"),
    (True, ["avx2", "avx512f", "avx512_bf16"], "bf16cpu"),
    (True, ["avx512_bf16", "amx_tile"], "bf16cpu"),  # AMX tiles without bf16 in them: not an AMX-BF16 CPU
    (False, ["avx2", "fma"], ""),
])
def test_cpu_kind_tells_amx_from_avx512_bf16_only_from_emulated_bf16(monkeypatch, native, flags, kind):
    bench = _bench()
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(bench, "cpu_description", lambda: ("some CPU", flags))
    assert bench.cpu_kind() == kind
