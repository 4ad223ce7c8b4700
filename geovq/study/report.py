"""report.md and report.json of a pipeline run (stage=pipeline): one row per method of the study.

Every figure is measured on held-out data and says so (the full protocol): reconstruction MSE
over the whole test split, prior NLL on the test code grids, Fréchet distances against the test
images. A second table gives each method under the paper's own protocol (MSE on the first test
batch of 128, prior perplexity on the training codes) next to the paper's Table 1. With several
seeds every figure is the mean ± standard deviation over n seeds (per-seed values in
report.json), and the findings state each declared comparison with its spread.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from geovq.artifacts import atomic_write_text
from geovq.study.figures import write_figures
from geovq.study.results import PRIOR_KEYS, method_runs, spread, values
from geovq.study.spec import Study

# Table 1 of the paper (MSE on one test batch; perplexity on training data).
PAPER_TABLE = {
    "A": {"recon_mse": 0.016125, "utilization": 1.0, "prior_perplexity": 4.9448},
    "B": {"recon_mse": 0.011385, "utilization": 0.117, "prior_perplexity": 4.2686},
}

FULL_PROTOCOL = [
    ("recon MSE (test)", "recon/test_mse", "{:.5f}"),
    ("codes used", "codes/codes_used", "{:.0f}"),
    ("utilization", "codes/utilization", "{:.1%}"),
    ("code perplexity", "codes/perplexity", "{:.1f}"),
    ("prior NLL (test, nats/token)", "prior/test_nll", "{:.4f}"),
    ("prior perplexity (test)", "prior/test_perplexity", "{:.3f}"),
    ("unigram perplexity", "prior/unigram_perplexity", "{:.3f}"),
    ("bits/image (test)", "prior/test_bits_per_image", "{:.1f}"),
    ("FD (samples vs test)", "fidelity/fid", "{:.2f}"),
    ("classifier confidence", "fidelity/confidence", "{:.3f}"),
    ("digit entropy (nats)", "fidelity/class_entropy", "{:.3f}"),
]
# (title, our key, our format, the paper's key, the paper's format: its values as published)
PAPER_PROTOCOL = [
    ("recon MSE (first test batch of 128)", "paper/recon_mse_first_batch", "{:.5f}", "recon_mse", "{}"),
    ("utilization (training codes)", "codes/utilization", "{:.1%}", "utilization", "{:.1%}"),
    ("prior perplexity (training codes)", "paper/prior_train_perplexity", "{:.4f}", "prior_perplexity", "{}"),
]
# What the findings compare.
FINDINGS = [("test MSE", "recon/test_mse", "{:+.5f}"), ("prior test NLL", "prior/test_nll", "{:+.4f}"),
            ("FD", "fidelity/fid", "{:+.2f}")]


def fmt(template: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return template.format(0.0 if abs(value) < 1e-9 else value)  # no "-0.000"


def cell(values: list[float], template: str) -> str:
    mean, std, n = spread(values)
    if n > 1:
        return f"{fmt(template, mean)} ± {fmt(template, std).lstrip('+')}"
    return fmt(template, mean)


def findings(study: Study, runs: dict, comparisons: list) -> tuple[list[str], list[dict]]:
    """Each declared comparison (first minus second), paired by seed, against its spread."""
    lines, records = [], []
    for first, second in comparisons or []:
        if first not in runs or second not in runs:
            continue
        parts = []
        for label, key, template in FINDINGS:
            diffs = [runs[first][s][key] - runs[second][s][key] for s in runs[first] if key in runs[first][s] and key in runs[second][s]]
            mean, std, n = spread(diffs)
            if n == 0:
                continue
            if n > 1:
                verdict = "smaller than its spread: not distinguishable" if abs(mean) <= std else "larger than its spread"
                parts.append(f"{label} {fmt(template, mean)} ± {fmt(template, std).lstrip('+')} ({verdict})")
            else:
                parts.append(f"{label} {fmt(template, mean)} (one seed: spread unknown)")
            records.append({"first": first, "second": second, "metric": key, "mean_difference": mean, "std": std, "n": n})
        lines.append(f"- {study.methods[first].title} minus {study.methods[second].title}: " + "; ".join(parts) + ".")
    return lines, records


def write_report(pipe, study: Study, seeds: list[int], out_dir: Path, options: dict, images=None) -> dict:
    runs = method_runs(pipe, study, seeds)
    first = {name: r[seeds[0]] for name, r in runs.items()}
    n_seeds = len(seeds)
    continuous = next((e["recon/continuous_test_mse"] for e in first.values() if "recon/continuous_test_mse" in e), None)
    fid_floor = next((e["fidelity/fid_floor"] for e in first.values() if "fidelity/fid_floor" in e), None)
    accuracy = pipe.results["classifier"].metrics.get("test/accuracy")
    n_test = next(iter(first.values())).get("data/n_test")
    seeds_note = f"mean ± standard deviation over n = {n_seeds} seeds ({', '.join(map(str, seeds))})" if n_seeds > 1 else f"one seed ({seeds[0]})"

    lines = [
        "# geovq report: a posteriori quantization vs end-to-end VQ-VAE",
        "",
        f"Seeds: {seeds_note}; the per-seed values are in report.json.",
        "",
        "## Full protocol (held-out data)",
        "",
        f"Reconstruction MSE per pixel over the whole test split ({fmt('{:.0f}', n_test)} images); codebook use of the "
        "training codes; prior NLL on the test code grids; Fréchet distance (FD) of the project's MNIST classifier "
        "features between the samples and the test images.",
        "",
        "| method | " + " | ".join(title for title, _, _ in FULL_PROTOCOL) + " |",
        "|---|" + "---|" * len(FULL_PROTOCOL),
    ]
    for name, method in study.methods.items():
        lines.append(f"| {method.title} | " + " | ".join(cell(values(runs[name], key), t) for _, key, t in FULL_PROTOCOL) + " |")
    lines += [
        "",
        f"References: continuous GridVAE (posterior mean) test MSE {fmt('{:.5f}', continuous)}; FD floor (training vs "
        f"test images) {fmt('{:.2f}', fid_floor)}; classifier test accuracy {fmt('{:.2%}', accuracy)}.",
        "",
        "## The paper's protocol (Table 1 like for like)",
        "",
        "The paper measured MSE on a single test batch of 128 images and the Transformer's perplexity on its training "
        "data. The same measurements of our runs (the perplexity on a seeded choice of as many training code grids as there "
        "are test images), next to the paper's published values for the row each method reproduces:",
        "",
        "| method | " + " | ".join(title for title, *_ in PAPER_PROTOCOL) + " | paper: " + " | paper: ".join(
            ("recon MSE", "utilization", "perplexity")) + " |",
        "|---|" + "---|" * (2 * len(PAPER_PROTOCOL)),
    ]
    for name, method in study.methods.items():
        ours = [cell(values(runs[name], key), t) for _, key, t, _, _ in PAPER_PROTOCOL]
        paper = PAPER_TABLE.get(method.paper)
        theirs = [fmt(t, paper[k]) if paper else "" for _, _, _, k, t in PAPER_PROTOCOL]
        lines.append(f"| {method.title} | " + " | ".join(ours + theirs) + " |")

    prior_lines, prior_records, capped = prior_section(study, runs)
    lines += ["", "## Priors", ""] + prior_lines
    finding_lines, finding_records = findings(study, runs, options.get("comparisons"))
    if finding_lines:
        lines += ["", "## Findings", "",
                  "Differences of the means (first minus second), paired by seed, ± the standard deviation of the "
                  "per-seed differences. Lower is better for test MSE and FD; a lower prior NLL is better only "
                  "between codebooks of similar code perplexity (a collapsed codebook is easy to predict).", ""] + finding_lines
    times = {name: round(r.seconds, 1) for name, r in pipe.results.items()}
    wall = time.perf_counter() - pipe.started
    parallel = options.get("parallel", 1)
    lines += ["", "## Time of each step", "",
              f"Seconds; reused steps show the time of the run that made them. This command took {wall:.0f} s until "
              f"the figures, with pipeline.parallel={parallel}" + (" (steps side by side share the CPU, so each "
              "took longer than it would alone)." if parallel > 1 else "."), ""]
    lines += [f"- {name}: {seconds}" + (" (reused)" if pipe.results[name].reused else "") for name, seconds in times.items()]

    figure_files = []
    if options.get("figures", True):
        figure_files = write_figures(pipe, study, seeds, out_dir, options, images, runs, capped)
        lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figure_files]

    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    summary = {}
    for name, r in runs.items():
        keys = {key for run in r.values() for key, value in run.items() if isinstance(value, (int, float))}
        for key in keys:
            mean, std, n = spread(values(r, key))
            summary[f"{name}/{key}"] = mean
            if n > 1:
                summary[f"{name}/{key}_std"] = std
    report = {
        "seeds": seeds,
        "methods": {name: {"title": study.methods[name].title, "paper_row": study.methods[name].paper,
                           "seeds": {str(s): run for s, run in r.items()}} for name, r in runs.items()},
        "findings": finding_records,
        "priors": prior_records,
        "paper_table_1": PAPER_TABLE,
        "step_seconds": times,
        "wall_seconds_until_figures": round(wall, 1),
        "parallel": parallel,
        "figures": figure_files,
        "references": {"continuous_test_mse": continuous, "fid_floor": fid_floor, "classifier_test_accuracy": accuracy},
        "summary": summary,
    }
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def prior_section(study: Study, runs: dict) -> tuple[list[str], list[dict], set[str]]:
    """Per method: epochs run, whether early stopping ended training or the cap did."""
    lines = [
        "Each prior trains until its validation NLL stops improving (early stopping) or reaches the epoch cap. "
        "A prior that hit the cap may be undertrained: its samples measure the prior as much as the codes.",
        "",
        "| method | epochs run | ended by | best epoch | best val NLL |",
        "|---|---|---|---|---|",
    ]
    records, capped = [], set()
    for name, method in study.methods.items():
        ends, epochs, best = [], [], []
        for seed, run in runs[name].items():
            epochs.append(f"{run.get('prior/epochs', float('nan')):.0f}")
            best.append(f"{run.get('prior/best_epoch', float('nan')):.0f}")
            ended = "patience" if run.get("prior/stopped_on_patience") else "**the cap**"
            ends.append(ended)
            if ended != "patience":
                capped.add(method.title)
            records.append({"method": name, "seed": seed, **{k: run.get(k) for k in PRIOR_KEYS}})
        lines.append(f"| {method.title} | {', '.join(epochs)} | {', '.join(ends)} | {', '.join(best)} | "
                     f"{cell(values(runs[name], 'prior/best_val_nll'), '{:.4f}')} |")
    return lines, records, capped
