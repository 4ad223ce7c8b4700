"""report.md and report.json of a pipeline run (stage=pipeline): one row per method of the study.

Every figure is measured on held-out data and says so (the full protocol): reconstruction MSE
over the whole test split, prior NLL on the test code grids, Fréchet distances against the test
images. A second table gives each method under the paper's own protocol (MSE on the first test
batch of 128, prior perplexity on the training codes) next to the paper's Table 1. With several
seeds every figure is the mean ± standard deviation over n seeds (per-seed values in
report.json). The FD carries its 95% bootstrap interval over the samples (sampling noise) next to
that spread (training noise). The findings state each declared comparison paired by seed, and call
a method better only where the t interval of the mean paired difference excludes zero
(geovq/study/findings.py). The Priors table says whether each prior converged or hit its epoch
cap, and the Budgets table what each method cost (geovq/study/budgets.py).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from geovq.artifacts import atomic_write_text
from geovq.study.budgets import budget_section, head_start, method_budgets
from geovq.study.figures import write_figures
from geovq.study.findings import LEVEL, paired_difference, verdict
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
    ("FD (samples vs test) [95% bootstrap]", "fidelity/fid", "{:.2f}"),
    ("classifier confidence", "fidelity/confidence", "{:.3f}"),
    ("digit entropy (nats)", "fidelity/class_entropy", "{:.3f}"),
]
# (title, our key, our format, the paper's key, the paper's format: its values as published, its
# column's title)
PAPER_PROTOCOL = [
    ("recon MSE (first test batch of 128)", "paper/recon_mse_first_batch", "{:.5f}", "recon_mse", "{}", "recon MSE"),
    ("utilization (training codes)", "codes/utilization", "{:.1%}", "utilization", "{:.1%}", "utilization"),
    ("prior perplexity (training codes)", "paper/prior_train_perplexity", "{:.4f}", "prior_perplexity", "{}", "perplexity"),
]
# The figures of a method's prior and samples (none in a study with pipeline.priors=false).
PRIOR_FIGURES = ("prior/", "fidelity/", "paper/prior_")
# What the findings compare, and the word of a claim (lower is better for MSE and FD; a lower prior
# NLL is better only between codebooks of similar code perplexity, so it is only "lower").
FINDINGS = [("test MSE", "recon/test_mse", "{:+.5f}", "better"), ("prior test NLL", "prior/test_nll", "{:+.4f}", "lower"),
            ("FD", "fidelity/fid", "{:+.2f}", "better")]


def measured(columns: list[tuple], study: Study) -> list[tuple]:
    """The columns (key second) the study measures: without priors, none of PRIOR_FIGURES."""
    return [column for column in columns if study.priors or not column[1].startswith(PRIOR_FIGURES)]


def fmt(template: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return template.format(0.0 if abs(value) < 1e-9 else value)  # no "-0.000"


def cell(values: list[float], template: str) -> str:
    mean, std, n = spread(values)
    if n > 1:
        return f"{fmt(template, mean)} ± {fmt(template, std).lstrip('+')}"
    return fmt(template, mean)


def fd_cell(runs: dict[int, dict], template: str) -> str:
    """The FD with its sampling noise: one seed "FD [low, high]" (the 95% bootstrap interval over
    the samples); several "mean ± std over seeds (sampling ± the mean half-width of the intervals)"."""
    text = cell(values(runs, "fidelity/fid"), template)
    bounds = [(run["fidelity/fid_ci_low"], run["fidelity/fid_ci_high"]) for run in runs.values()
              if isinstance(run.get("fidelity/fid_ci_low"), (int, float)) and isinstance(run.get("fidelity/fid_ci_high"), (int, float))]
    if not bounds:
        return text
    if len(runs) == 1:
        return f"{text} [{fmt(template, bounds[0][0])}, {fmt(template, bounds[0][1])}]"
    return f"{text} (sampling ± {fmt(template, sum(high - low for low, high in bounds) / len(bounds) / 2)})"


def seed_reference(runs: dict[str, dict[int, dict]], seeds: list[int], key: str) -> list[float]:
    """Per seed, a figure that the evaluations of that seed's methods share (the continuous
    GridVAE's test MSE, the FD floor of that seed's training images): the first method's that has it."""
    per_seed = (next((r[seed][key] for r in runs.values() if key in r[seed]), None) for seed in seeds)
    return [value for value in per_seed if value is not None]


def reference_record(name: str, per_seed: list[float]) -> dict:
    """report.json's entries of a seed_reference: its mean over seeds and the per-seed values."""
    return {name: spread(per_seed)[0] if per_seed else None, f"{name}_per_seed": per_seed}


def table_cell(runs: dict[int, dict], key: str, template: str) -> str:
    return fd_cell(runs, template) if key == "fidelity/fid" else cell(values(runs, key), template)


def findings(study: Study, runs: dict, comparisons: list, budgets: dict | None = None) -> tuple[list[str], list[dict]]:
    """Each declared comparison (first minus second), paired by seed, with the t interval of the
    mean difference and what it lets the report claim (geovq/study/findings.py)."""
    lines, records = [], []
    for first, second in comparisons or []:
        if first not in runs or second not in runs:
            continue
        parts = []
        for label, key, template, better in FINDINGS:
            diffs = [runs[first][s][key] - runs[second][s][key] for s in runs[first]
                     if s in runs[second] and key in runs[first][s] and key in runs[second][s]]
            difference = paired_difference(diffs)
            if difference.n == 0:
                continue
            claim = verdict(first, second, difference, better)
            if difference.n > 1:
                interval = f"[{fmt(template, difference.low)}, {fmt(template, difference.high)}]"
                parts.append(f"{label} {fmt(template, difference.mean)} {interval} (n = {difference.n}): {claim}")
            else:
                parts.append(f"{label} {fmt(template, difference.mean)}: {claim}")
            records.append({"first": first, "second": second, "metric": key, "mean_difference": difference.mean,
                            "std": difference.std, "ci_low": difference.low, "ci_high": difference.high,
                            "n": difference.n, "verdict": claim})
        note = head_start(first, second, budgets) if budgets else None
        lines.append(f"- {study.methods[first].title} minus {study.methods[second].title}: " + "; ".join(parts) + "."
                     + (f" {note}" if note else ""))
    return lines, records


def time_note(result) -> str:
    """Where a step's time comes from, when not from this command running it from the start."""
    notes = []
    if result.copied_from:  # pipeline.reuse_from
        notes.append(f"reused: copied from {result.copied_from}")
    elif result.reused:
        notes.append("reused")
    if result.resumed:
        notes.append("resumed: its time after the last resume")
    return f" ({'; '.join(notes)})" if notes else ""


def write_report(pipe, study: Study, seeds: list[int], out_dir: Path, options: dict, images=None) -> dict:
    runs = method_runs(pipe, study, seeds)
    first = {name: r[seeds[0]] for name, r in runs.items()}
    n_seeds = len(seeds)
    continuous = seed_reference(runs, seeds, "recon/continuous_test_mse")
    fid_floor = seed_reference(runs, seeds, "fidelity/fid_floor")  # its training images are drawn per seed
    accuracy = pipe.results["classifier"].metrics.get("test/accuracy") if study.priors else None
    full_protocol, paper_protocol = measured(FULL_PROTOCOL, study), measured(PAPER_PROTOCOL, study)
    n_test = next(iter(first.values())).get("data/n_test")
    features = next((e["fidelity/features"] for e in first.values() if e.get("fidelity/features")), "the project classifier's features")
    seeds_note = f"mean ± standard deviation over n = {n_seeds} seeds ({', '.join(map(str, seeds))})" if n_seeds > 1 else f"one seed ({seeds[0]})"
    # The texts that differ for a study of the codes alone (pipeline.priors=false).
    if study.priors:
        measures = (f"; prior NLL on the test code grids; Fréchet distance (FD) in {features} between the samples "
                    "and the test images.")
        references = (f"; FD floor (training vs test images) {cell(fid_floor, '{:.2f}')}; classifier test accuracy "
                      f"{fmt('{:.2%}', accuracy)}. The FD's bracket is its 95% bootstrap interval over the samples (how "
                      "far another draw of as many samples would move it); with several seeds, its mean half-width "
                      "(sampling ±) stands next to the spread over seeds.")
        perplexity_note = " (the perplexity on a seeded choice of as many training code grids as there are test images)"
        lower_is_better = ("Lower is better for test MSE and FD; a lower prior NLL is better only between codebooks of "
                           "similar code perplexity (a collapsed codebook is easy to predict), so it is only called "
                           "lower.")
    else:
        measures = ". No priors nor samples: this study ran with pipeline.priors=false."
        references = "."
        perplexity_note = " (no priors here: MSE and utilization only)"
        lower_is_better = "Lower is better for test MSE, the one figure compared here (no priors: pipeline.priors=false)."

    lines = [
        "# geovq report: a posteriori quantization vs end-to-end VQ-VAE",
        "",
        f"Seeds: {seeds_note}; the per-seed values are in report.json.",
        "",
        "## Full protocol (held-out data)",
        "",
        f"Reconstruction MSE per pixel over the whole test split ({fmt('{:.0f}', n_test)} images); codebook use of the "
        "training codes" + measures,
        "",
        "| method | " + " | ".join(title for title, _, _ in full_protocol) + " |",
        "|---|" + "---|" * len(full_protocol),
    ]
    for name, method in study.methods.items():
        lines.append(f"| {method.title} | " + " | ".join(table_cell(runs[name], key, t) for _, key, t in full_protocol) + " |")
    lines += ["", f"References: continuous GridVAE (posterior mean) test MSE {cell(continuous, '{:.5f}')}" + references]
    lines += [
        "",
        "## The paper's protocol (Table 1 like for like)",
        "",
        "The paper measured MSE on a single test batch of 128 images and the Transformer's perplexity on its training "
        "data. The same measurements of our runs" + perplexity_note +
        ", next to the paper's published values for the row each method reproduces:",
        "",
        "| method | " + " | ".join(title for title, *_ in paper_protocol) + " | paper: " + " | paper: ".join(
            column[-1] for column in paper_protocol) + " |",
        "|---|" + "---|" * (2 * len(paper_protocol)),
    ]
    for name, method in study.methods.items():
        ours = [cell(values(runs[name], key), t) for _, key, t, *_ in paper_protocol]
        paper = PAPER_TABLE.get(method.paper)
        theirs = [fmt(t, paper[k]) if paper else "" for _, _, _, k, t, _ in paper_protocol]
        lines.append(f"| {method.title} | " + " | ".join(ours + theirs) + " |")

    prior_lines, prior_records, capped = prior_section(study, runs)
    lines += ["", "## Priors", ""] + prior_lines
    budgets = method_budgets(pipe, study, seeds)
    budget_lines, budget_records = budget_section(study, budgets)
    lines += ["", "## Budgets", ""] + budget_lines
    finding_lines, finding_records = findings(study, runs, options.get("comparisons"), budgets)
    if finding_lines:
        lines += ["", "## Findings", "",
                  f"Mean differences (first minus second), paired by seed, with the {LEVEL:.0%} t interval of the mean "
                  "paired difference over seeds. A method is called better only where that interval excludes zero, "
                  "\"not separable\" otherwise, and one seed separates nothing (n = 1). " + lower_is_better + " A "
                  "comparison whose methods trained their codes for different budgets says so (the Budgets table).",
                  ""] + finding_lines
    times = {name: round(r.seconds, 1) for name, r in pipe.results.items()}
    wall = time.perf_counter() - pipe.started
    parallel = options.get("parallel", 1)
    lend_idle_cores = parallel > 1 and options.get("lend_idle_cores", False)
    lines += ["", "## Time of each step", "",
              f"Seconds; reused steps show the time of the run that made them. This command took {wall:.0f} s until "
              f"the figures, with pipeline.parallel={parallel}" + (" (steps side by side share the CPU, so each "
              "took longer than it would alone)." if parallel > 1 else ".") + (
                  " pipeline.lend_idle_cores was on: the steps run by this command may have been lent an idle place's "
                  "threads (their step.log says when), so a rerun's figures may differ in the last digits."
                  if lend_idle_cores else ""), ""]
    lines += [f"- {name}: {seconds}" + time_note(pipe.results[name]) for name, seconds in times.items()]

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
        "with_priors": study.priors,  # false: pipeline.priors=false, the codes alone
        "methods": {name: {"title": study.methods[name].title, "paper_row": study.methods[name].paper,
                           "seeds": {str(s): run for s, run in r.items()}} for name, r in runs.items()},
        "findings": finding_records,
        "priors": prior_records,
        "budgets": budget_records,
        "paper_table_1": PAPER_TABLE,
        "step_seconds": times,
        "wall_seconds_until_figures": round(wall, 1),
        "parallel": parallel,
        "lend_idle_cores": lend_idle_cores,
        "figures": figure_files,
        "references": {**reference_record("continuous_test_mse", continuous), **reference_record("fid_floor", fid_floor),
                       "classifier_test_accuracy": accuracy},
        "summary": summary,
    }
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def prior_section(study: Study, runs: dict) -> tuple[list[str], list[dict], set[str]]:
    """Per method: epochs run of its cap, whether it converged (early stopping ended it) or hit the cap."""
    if not study.priors:
        return ["None: this study ran with pipeline.priors=false (each method's codes alone). The same command with "
                "pipeline.priors=true in the same folder adds the priors, samples and their evaluations; the steps "
                "that made the codes are reused."], [], set()
    lines = [
        "Each prior trains until its validation NLL stops improving (early stopping: converged) or reaches its "
        "epoch cap. A prior that hit the cap may be undertrained: its NLL and samples measure its training budget "
        "as much as the codes.",
        "",
        "| method | epochs run (cap) | converged | best epoch | best val NLL |",
        "|---|---|---|---|---|",
    ]
    records, capped, caps = [], set(), set()
    for name, method in study.methods.items():
        ends, epochs, best = [], [], []
        for seed, run in runs[name].items():
            epochs.append(f"{run.get('prior/epochs', float('nan')):.0f} ({run.get('prior/max_epochs', float('nan')):.0f})")
            best.append(f"{run.get('prior/best_epoch', float('nan')):.0f}")
            converged = bool(run.get("prior/converged"))
            ends.append("yes" if converged else "**no: hit the cap**")
            if not converged:
                capped.add(method.title)
                caps.add(f"{run.get('prior/max_epochs', float('nan')):.0f}")
            records.append({"method": name, "seed": seed, **{k: run.get(k) for k in PRIOR_KEYS}})
        owner = study.derived_step(name, "prior").removeprefix("prior_")
        shared = "" if owner == name else f" (the prior of {owner}: the same code grids)"
        lines.append(f"| {method.title}{shared} | {', '.join(epochs)} | {', '.join(ends)} | {', '.join(best)} | "
                     f"{cell(values(runs[name], 'prior/best_val_nll'), '{:.4f}')} |")
    n_capped = sum(not bool(r.get("prior/converged")) for r in records)
    lines += ["", f"{n_capped} of {len(records)} priors hit their epoch cap ({', '.join(sorted(caps, key=float))} "
              "epochs) before they converged; their figures rank training budgets as much as codebooks."
              if n_capped else f"All {len(records)} priors converged before their epoch cap."]
    return lines, records, capped
