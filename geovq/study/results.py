"""A study's results, read back from its finished steps: per method and seed the evaluation (with
the prior's convergence figures), the priors' learning curves, and the mean and spread over seeds."""

from __future__ import annotations

import json

import numpy as np

from geovq.callbacks.epoch_history import HISTORY_FILE
from geovq.study.spec import Study

PRIOR_KEYS = ("prior/epochs", "prior/converged", "prior/max_epochs", "prior/best_epoch", "prior/best_val_nll")
# prior/converged's name in metrics written before it had that name.
FORMER_NAMES = {"prior/stopped_on_patience": "prior/converged"}


def method_runs(pipe, study: Study, seeds: list[int]) -> dict[str, dict[int, dict]]:
    """Per method and seed: the evaluation, with the prior's convergence figures (where the study
    trains priors)."""
    runs = {}
    for name in study.methods:
        runs[name] = {}
        for seed in seeds:
            evaluation = json.loads(pipe.results[f"seed_{seed}/{study.derived_step(name, 'evaluate')}"].output.read_text())
            runs[name][seed] = evaluation
            if not study.priors:
                continue
            prior = pipe.results[f"seed_{seed}/{study.derived_step(name, 'prior')}"].metrics
            prior = {FORMER_NAMES.get(key, key): value for key, value in prior.items()}
            evaluation.update({key: prior[key] for key in PRIOR_KEYS if key in prior})
    return runs


def values(runs: dict[int, dict], key: str) -> list[float]:
    """The numeric values of ``key`` over a method's seeds."""
    return [run[key] for run in runs.values() if isinstance(run.get(key), (int, float))]


def spread(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (nan for one value) and n."""
    array = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(array):
        return float("nan"), float("nan"), 0
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else float("nan"), len(array)


def prior_histories(pipe, study: Study, name: str, seeds: list[int]) -> list[list[float]]:
    """The validation NLL per epoch of the method's prior, one list per seed."""
    curves = []
    for seed in seeds:
        history_file = pipe.results[f"seed_{seed}/{study.derived_step(name, 'prior')}"].folder / HISTORY_FILE
        if history_file.is_file():
            curves.append(json.loads(history_file.read_text()).get("val/nll", []))
    return curves
