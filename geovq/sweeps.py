"""Summaries of a Hydra multirun: one row per run, the swept values and the run's metrics."""

from __future__ import annotations

import csv
import io
import json
from fnmatch import fnmatchcase
from pathlib import Path

import yaml

from geovq.artifacts import atomic_write_text

# Shown first in the Markdown table when present (patterns: quantized_*/ are the named quantizers
# of callbacks=quantize_both); every metric goes to the CSV.
HEADLINE_METRICS = (
    "test/mse",
    "codes/train_codes_used",
    "codes/train_utilization",
    "codes/train_perplexity",
    "test/utilization",
    "test/code_perplexity",
    "quantized/test_mse",
    "quantized/train_codes_used",
    "quantized/train_utilization",
    "quantized/train_perplexity",
    "quantized_*/test_mse",
    "quantized_*/train_codes_used",
    "rate/kl_per_position",
    "rate/ln_codebook_size",
    "rate/active_dims",
    "test/nll",
    "test/perplexity",
)


# What a failed point leaves in its folder instead of metrics.json: its error line.
FAILURE_FILE = "failed.json"


def write_failure(job_dir: str | Path, message: str) -> None:
    atomic_write_text(Path(job_dir) / FAILURE_FILE, json.dumps({"error": message}, indent=2) + "\n")


def collect_runs(sweep_dir: str | Path) -> list[dict]:
    """``{"job": n, "overrides": {key: value}, "metrics": {...}, "error": str | None}`` for every
    point that finished (its metrics) or failed (its error line, no metrics)."""
    runs = []
    jobs = {path.parent for name in ("metrics.json", FAILURE_FILE) for path in Path(sweep_dir).glob(f"*/{name}")}
    for job in sorted(jobs, key=_job_number):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        pairs = dict(item.split("=", 1) for item in overrides if "=" in item)
        metrics_file, failure_file = job / "metrics.json", job / FAILURE_FILE
        finished = metrics_file.exists() and (not failure_file.exists() or metrics_file.stat().st_mtime > failure_file.stat().st_mtime)
        runs.append({
            "job": job.name, "overrides": pairs,
            "metrics": json.loads(metrics_file.read_text()) if finished else {},
            "error": None if finished else json.loads(failure_file.read_text())["error"],
        })
    return runs


def failed_runs(runs: list[dict]) -> list[dict]:
    return [run for run in runs if run["error"] is not None]


def _job_number(folder: Path):
    return (0, int(folder.name)) if folder.name.isdigit() else (1, folder.name)


def swept_keys(runs: list[dict]) -> list[str]:
    """Override keys whose value differs between runs (the axes of the sweep)."""
    keys = sorted({key for run in runs for key in run["overrides"]})
    return [key for key in keys if len({run["overrides"].get(key) for run in runs}) > 1]


def write_summary(sweep_dir: str | Path) -> Path | None:
    """Write summary.csv (all metrics) and summary.md (headline metrics) in the sweep folder, with
    summary.png and, for a sweep of runs that report their rate, rate_distortion.png."""
    runs = collect_runs(sweep_dir)
    if not runs:
        return None
    axes = swept_keys(runs)
    metric_keys = sorted({key for run in runs for key in run["metrics"]})
    headline = [key for pattern in HEADLINE_METRICS for key in metric_keys if fnmatchcase(key, pattern)] or metric_keys

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["job", *axes, *metric_keys, "error"])
    for run in runs:
        writer.writerow([run["job"], *(run["overrides"].get(a, "") for a in axes),
                         *(run["metrics"].get(m, "") for m in metric_keys), run["error"] or ""])
    atomic_write_text(Path(sweep_dir) / "summary.csv", buffer.getvalue())

    lines = ["| " + " | ".join(["job", *axes, *headline]) + " |", "|" + "---|" * (1 + len(axes) + len(headline))]
    for run in runs:
        values = [_fmt(run["metrics"].get(m)) for m in headline] if run["error"] is None else ["failed", *[""] * (len(headline) - 1)]
        lines.append("| " + " | ".join([run["job"], *(run["overrides"].get(a, "") for a in axes), *values]) + " |")
    failed = failed_runs(runs)
    if failed:
        lines += ["", "Failed points (their folders are kept):", ""]
        lines += [f"- job {run['job']}: {run['error']}" for run in failed]
    path = Path(sweep_dir) / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    finished = [run for run in runs if run["error"] is None]
    write_sweep_plot(finished, swept_keys(finished) if len(finished) > 1 else axes, Path(sweep_dir) / "summary.png")
    write_rate_distortion_plot(finished, swept_keys(finished) if len(finished) > 1 else axes, Path(sweep_dir) / "rate_distortion.png")
    return path


# Plotted against the swept value when present: reconstruction and codebook usage.
PLOTTED_METRICS = ("test/mse", "quantized/test_mse", "codes/train_utilization", "quantized/train_utilization",
                   "codes/train_perplexity", "quantized/train_perplexity")


def write_sweep_plot(runs: list[dict], axes: list[str], path: Path) -> Path | None:
    """Utilization, perplexity and test MSE against the swept value (one numeric axis only)."""
    values, runs = numeric_axis(runs, axes)
    series = {m: [run["metrics"][m] for run in runs] for m in PLOTTED_METRICS if all(m in r["metrics"] for r in runs)}
    if not values or not series:
        return None
    from geovq.viz.images import save_figure
    from geovq.viz.sweep import sweep_figure

    return save_figure(sweep_figure(values, series, axes[0]), path)


def write_rate_distortion_plot(runs: list[dict], axes: list[str], path: Path) -> Path | None:
    """Test MSE (continuous and each quantizer's), KL per position against ln K, and active dims
    against the swept value (beta), when the runs report their rate (stage=vae)."""
    values, runs = numeric_axis(runs, axes)
    if not values or not all("rate/kl_per_position" in run["metrics"] for run in runs):
        return None
    from geovq.viz.images import save_figure
    from geovq.viz.rate_distortion import rate_distortion_figure

    return save_figure(rate_distortion_figure(values, [run["metrics"] for run in runs], axes[0]), path)


def numeric_axis(runs: list[dict], axes: list[str]) -> tuple[list[float], list[dict]]:
    """The one swept value of every run, as numbers in increasing order, with the runs in that
    order; ``([], runs)`` for a sweep over several keys or a non-numeric one (nothing to plot)."""
    if len(axes) != 1:
        return [], runs
    try:
        values = [float(run["overrides"][axes[0]]) for run in runs]
    except (KeyError, ValueError):
        return [], runs
    order = sorted(range(len(runs)), key=values.__getitem__)
    return [values[i] for i in order], [runs[i] for i in order]


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and abs(value) < 1:
        return f"{value:.5f}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
