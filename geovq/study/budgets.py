"""What each method of a study cost: per network it trained (GridVAE, VQ-VAE, decoder, prior) the
epochs and the training examples it saw (images; code grids for the prior), the gradient steps of
all of them, and the wall time of all its steps, from each step's metrics (``epochs``,
``train/images_seen``, ``train/steps``: geovq/metrics/budget.py) and its step.json (``seconds``).

A method's budget is everything its codes, prior, samples and evaluation needed from nothing: a
step shared by several methods (one GridVAE serving both a posteriori quantizers) counts in each.
The classifier that measures fidelity is the study's instrument, in no method's budget.
"""

from __future__ import annotations

import math

from geovq.study.spec import Study

# The stages that train a network, and what the report calls it.
NETWORKS = {"vae": "GridVAE", "vqvae": "VQ-VAE", "finetune": "decoder", "prior": "prior"}
# Per network: (the budget's name, the step metric it sums).
NETWORK_FIGURES = (("epochs", "epochs"), ("images_seen", "train/images_seen"), ("steps", "train/steps"))


def method_steps(study: Study, name: str) -> list[tuple[str, str]]:
    """(step name, stage) of every step of the method in a seed's folder: its codes' chain, then
    its prior, samples and evaluation (its evaluation alone in a study without priors)."""
    return [(step.name, step.stage) for step in study.chain(study.methods[name].codes)] + [
        (study.derived_step(name, d), d) for d in study.derived]


def method_budgets(pipe, study: Study, seeds: list[int]) -> dict[str, dict[int, dict]]:
    """Per method and seed: ``networks`` ({network: {epochs, images_seen, steps}}), ``steps`` (the
    gradient steps of all its networks) and ``seconds`` (the wall time of all its steps)."""
    budgets: dict[str, dict[int, dict]] = {}
    for name in study.methods:
        budgets[name] = {}
        for seed in seeds:
            networks: dict[str, dict[str, float]] = {}
            seconds, resumed = 0.0, False
            for step, stage in method_steps(study, name):
                result = pipe.results[f"seed_{seed}/{step}"]
                seconds += result.seconds
                resumed |= result.resumed  # its time before the stop is not in step.json
                if stage in NETWORKS:
                    figures = networks.setdefault(NETWORKS[stage], dict.fromkeys((key for key, _ in NETWORK_FIGURES), 0.0))
                    for key, metric in NETWORK_FIGURES:
                        figures[key] += float(result.metrics.get(metric, math.nan))
            steps = sum(figures["steps"] for figures in networks.values())
            budgets[name][seed] = {"networks": networks, "steps": steps, "seconds": seconds, "resumed": resumed}
    return budgets


def code_epochs(budget: dict) -> float:
    """The epochs of the networks that made the method's codes (all but the prior)."""
    return sum(figures["epochs"] for network, figures in budget["networks"].items() if network != "prior")


def code_epochs_text(budget: dict) -> str:
    """e.g. "20 epochs (GridVAE 10 + VQ-VAE 10)"."""
    parts = [f"{network} {figures['epochs']:.0f}" for network, figures in budget["networks"].items() if network != "prior"]
    return f"{code_epochs(budget):.0f} epochs ({' + '.join(parts)})"


def head_start(first: str, second: str, budgets: dict[str, dict[int, dict]]) -> str | None:
    """A sentence when the two methods' codes had different training budgets (their first seed's),
    naming both; None when the budgets match."""
    a, b = (next(iter(budgets[name].values())) for name in (first, second))
    if math.isclose(code_epochs(a), code_epochs(b)) or math.isnan(code_epochs(a) - code_epochs(b)):
        return None
    return f"Budgets differ: {first} trained its codes for {code_epochs_text(a)}, {second} for {code_epochs_text(b)}."


def count(value: float) -> str:
    """A count of examples or steps, short: 550k, 1.1M."""
    if value is None or math.isnan(value):
        return "n/a"
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.0f}"


def budget_section(study: Study, budgets: dict[str, dict[int, dict]]) -> tuple[list[str], list[dict]]:
    """The report's Budgets table (the mean over seeds, which differ only where early stopping
    ended a prior at another epoch) and its records for report.json."""
    networks = [n for n in NETWORKS.values() if any(n in b["networks"] for runs in budgets.values() for b in runs.values())]
    if study.priors:
        examples, steps = "images; code grids for the prior", "codes, prior, samples, evaluation"
        shared = "A step shared by several methods counts in each; the fidelity classifier is in none."
    else:
        examples, steps = "images", "codes, evaluation; no priors"
        shared = "A step shared by several methods counts in each."
    lines = [
        f"What each method cost, from nothing: per network it trained, its epochs and the training examples it saw "
        f"({examples}); the gradient steps of all of them; the wall time of all the method's steps ({steps}). {shared} "
        "Mean over seeds.",
        "",
        "| method | " + " | ".join(f"{n}: epochs, examples" for n in networks) + " | gradient steps | wall time (s) |",
        "|---|" + "---|" * (len(networks) + 2),
    ]
    records = []
    for name, method in study.methods.items():
        runs = list(budgets[name].values())
        cells = []
        for network in networks:
            trained = [run["networks"][network] for run in runs if network in run["networks"]]
            if not trained:
                cells.append("-")
                continue
            epochs = sum(t["epochs"] for t in trained) / len(trained)
            images = sum(t["images_seen"] for t in trained) / len(trained)
            cells.append(f"{epochs:.3g}, {count(images)}")
        steps = sum(run["steps"] for run in runs) / len(runs)
        seconds = sum(run["seconds"] for run in runs) / len(runs)
        at_least = ">= " if any(run["resumed"] for run in runs) else ""
        lines.append(f"| {method.title} | " + " | ".join(cells) + f" | {count(steps)} | {at_least}{seconds:.0f} |")
        records += [{"method": name, "seed": seed, **budget} for seed, budget in budgets[name].items()]
    if any(run["resumed"] for runs in budgets.values() for run in runs.values()):
        lines += ["", ">= : a step of the method was stopped and resumed; only its time after the last resume is counted."]
    return lines, records
