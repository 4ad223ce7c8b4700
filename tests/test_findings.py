"""What a study's report may claim: "better" only where the paired difference's interval excludes
zero, "not separable" otherwise and at n = 1; the FD's bootstrap interval; whether each prior
converged; and what each method cost (its Budgets table), on a study's results made up here."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pytest
from scipy import stats

from geovq.study.findings import paired_difference, verdict
from geovq.study.report import write_report
from geovq.study.spec import plan_study


def test_differences_that_straddle_zero_are_not_separable():
    difference = paired_difference([-0.3, 0.1, 0.4])
    assert difference.low < 0 < difference.high and not difference.separable
    assert verdict("A", "B", difference) == "not separable"


def test_differences_whose_interval_excludes_zero_say_which_is_better():
    lower = paired_difference([-0.31, -0.29, -0.30])
    assert lower.high < 0 and verdict("A", "B", lower) == "A better than B"
    higher = paired_difference([0.31, 0.29, 0.30])
    assert higher.low > 0 and verdict("A", "B", higher, better="lower") == "B lower than A"


def test_the_interval_is_the_t_interval_of_the_mean():
    diffs = [1.0, 2.0, 4.0]
    difference = paired_difference(diffs)
    mean, sd = sum(diffs) / 3, math.sqrt(sum((d - 7 / 3) ** 2 for d in diffs) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert (difference.mean, difference.std) == pytest.approx((mean, sd))
    assert (difference.low, difference.high) == pytest.approx((mean - half, mean + half))
    # Two seeds whose difference is large next to its spread still need the interval: t(0.975, 1) = 12.7.
    assert verdict("A", "B", paired_difference([-1.0, -0.5])) == "not separable"


def test_one_seed_claims_nothing():
    difference = paired_difference([-5.0])
    assert difference.n == 1 and math.isnan(difference.low) and not difference.separable
    assert verdict("A", "B", difference) == "not separable (n = 1)"
    assert verdict("A", "B", paired_difference([])) == "not separable (n = 0)"


# -- the report ---------------------------------------------------------------------------------

STUDY = plan_study(
    {"vae": {"stage": "vae"}, "kmeans": {"stage": "quantize", "inputs": {"stage.vae": "vae"}},
     "hybrid": {"stage": "vqvae", "inputs": {"stage.init_codes": "kmeans"}}, "vqvae": {"stage": "vqvae"}},
    {"A": {"codes": "kmeans", "title": "A: K-Means"}, "H": {"codes": "hybrid", "title": "hybrid"},
     "B": {"codes": "vqvae", "title": "B: VQ-VAE"}},
)
# Per method and seed: test MSE and FD. A and B straddle (MSE differences -1e-4, +2e-4, -5e-5);
# H is below B by about 1e-3 on every seed.
MSE = {"A": [0.0100, 0.0103, 0.01005], "H": [0.0090, 0.0091, 0.0090], "B": [0.0101, 0.0101, 0.0101]}
FD = {"A": [20.0, 22.0, 21.0], "H": [10.0, 11.0, 10.5], "B": [15.0, 15.5, 16.0]}


def fake_pipe(tmp_path, seeds, prior_epochs=(5, 12)):
    """A finished study's results as the runner keeps them: step metrics, seconds, evaluations."""
    results = {"classifier": SimpleNamespace(metrics={"test/accuracy": 0.99}, seconds=60.0, reused=False, copied_from="", resumed=False)}

    def add(name, metrics, seconds, output=None):
        results[name] = SimpleNamespace(metrics=metrics, seconds=seconds, reused=False, copied_from="", resumed=False, output=output)

    for i, seed in enumerate(seeds):
        folder = f"seed_{seed}"
        add(f"{folder}/vae", {"epochs": 10.0, "train/images_seen": 550000.0, "train/steps": 4300.0}, 100.0)
        add(f"{folder}/kmeans", {}, 20.0)
        add(f"{folder}/hybrid", {"epochs": 10.0, "train/images_seen": 550000.0, "train/steps": 4300.0}, 200.0)
        add(f"{folder}/vqvae", {"epochs": 10.0, "train/images_seen": 550000.0, "train/steps": 4300.0}, 200.0)
        for method in STUDY.methods:
            epochs = prior_epochs[0] if method == "A" else prior_epochs[1]
            add(f"{folder}/prior_{method}", {"epochs": float(epochs), "train/images_seen": 55000.0 * epochs,
                                             "train/steps": 430.0 * epochs, "prior/epochs": float(epochs),
                                             "prior/converged": float(epochs < 12), "prior/max_epochs": 12.0,
                                             "prior/best_epoch": float(epochs), "prior/best_val_nll": 2.0}, 50.0)
            add(f"{folder}/sample_{method}", {}, 10.0)
            evaluation = tmp_path / f"evaluation_{seed}_{method}.json"
            fd = FD[method][i]
            evaluation.write_text(json.dumps({"recon/test_mse": MSE[method][i], "prior/test_nll": 1.5, "fidelity/fid": fd,
                                              "fidelity/fid_ci_low": fd - 0.5, "fidelity/fid_ci_high": fd + 0.5,
                                              "data/n_test": 10000}))
            add(f"{folder}/evaluate_{method}", {}, 5.0, evaluation)
    return SimpleNamespace(results=results, started=time.perf_counter())


def test_the_report_claims_only_what_its_intervals_allow(tmp_path):
    options = {"comparisons": [["A", "B"], ["H", "B"]], "figures": False}
    report = write_report(fake_pipe(tmp_path, [0, 1, 2]), STUDY, [0, 1, 2], tmp_path, options)
    text = (tmp_path / "report.md").read_text()
    verdicts = {(r["first"], r["metric"]): r["verdict"] for r in report["findings"]}
    assert verdicts[("A", "recon/test_mse")] == "not separable"
    assert verdicts[("H", "recon/test_mse")] == "H better than B"
    assert verdicts[("A", "fidelity/fid")] == "B better than A"
    assert "test MSE -0.00107 [" in text and "(n = 3): H better than B" in text
    # The hybrid trained its codes for 20 epochs, B for 10: the finding says so.
    assert "Budgets differ: H trained its codes for 20 epochs (GridVAE 10 + VQ-VAE 10), B for 10 epochs (VQ-VAE 10)." in text
    assert "Budgets differ" not in text.split("- A: K-Means minus")[1].split("\n")[0]  # A: GridVAE 10 vs VQ-VAE 10
    # The FD with its spread over seeds and its sampling noise.
    assert "21.00 ± 1.00 (sampling ± 0.50)" in text
    # Each prior: converged or hit the cap.
    assert "| A: K-Means | 5 (12), 5 (12), 5 (12) | yes, yes, yes |" in text
    assert "6 of 9 priors hit their epoch cap (12 epochs)" in text
    # What each method cost: GridVAE + prior for A; GridVAE + VQ-VAE + prior for H.
    assert "## Budgets" in text
    assert "| hybrid | 10, 550k | 10, 550k | 12, 660k | 13.8k | 385 |" in text
    assert "| A: K-Means | 10, 550k | - | 5, 275k | 6.45k | 185 |" in text
    budget = next(r for r in report["budgets"] if r["method"] == "H" and r["seed"] == 0)
    assert budget["networks"]["VQ-VAE"]["images_seen"] == 550000 and budget["seconds"] == 385


def test_one_seed_separates_nothing_and_gives_the_fd_interval(tmp_path):
    report = write_report(fake_pipe(tmp_path, [0]), STUDY, [0], tmp_path, {"comparisons": [["H", "B"]], "figures": False})
    text = (tmp_path / "report.md").read_text()
    assert {r["verdict"] for r in report["findings"]} == {"not separable (n = 1)"}
    assert "better than" not in text
    assert "| 10.00 [9.50, 10.50] |" in text


def test_a_resumed_step_makes_its_methods_time_a_lower_bound(tmp_path):
    pipe = fake_pipe(tmp_path, [0])
    pipe.results["seed_0/prior_H"].resumed = True  # stopped and resumed: step.json has its last part only
    write_report(pipe, STUDY, [0], tmp_path, {"comparisons": [], "figures": False})
    text = (tmp_path / "report.md").read_text()
    assert "| hybrid | 10, 550k | 10, 550k | 12, 660k | 13.8k | >= 385 |" in text
    assert "| A: K-Means | 10, 550k | - | 5, 275k | 6.45k | 185 |" in text
    assert "only its time after the last resume is counted" in text
    assert "- seed_0/prior_H: 50.0 (resumed: its time after the last resume)" in text


def test_the_per_seed_figure_shows_every_seed_of_every_method_with_the_fd_interval(tmp_path):
    from geovq.study.figures import per_seed_figure, per_seed_panels
    from geovq.study.results import method_runs
    from geovq.viz.images import save_figure

    runs = method_runs(fake_pipe(tmp_path, [0, 1, 2]), STUDY, [0, 1, 2])
    panels = per_seed_panels(STUDY, runs)
    mse, fd = panels.values()
    assert mse["hybrid"] == [(0, 0.0090, None, None), (1, 0.0091, None, None), (2, 0.0090, None, None)]
    assert fd["A: K-Means"][1] == (1, 22.0, 21.5, 22.5)
    fig = per_seed_figure(panels)
    mse_axis, fd_axis = fig.axes
    titles = ["A: K-Means", "hybrid", "B: VQ-VAE"]
    assert [label.get_text() for label in mse_axis.get_yticklabels()] == titles
    # 3 methods x 3 seeds, each an error bar on its method's row, in its seed's colour in every row;
    # the FD's bars span its bootstrap interval, the MSE's have none.
    assert len(mse_axis.containers) == len(fd_axis.containers) == 9
    for i, container in enumerate(fd_axis.containers):
        method, seed = ["A", "H", "B"][i // 3], i % 3
        x, y = container.lines[0].get_xydata()[0]
        assert x == FD[method][seed] and abs(y - i // 3) < 0.3
        assert list(container.lines[2][0].get_segments()[0][:, 0]) == [FD[method][seed] - 0.5, FD[method][seed] + 0.5]
        assert container.lines[0].get_color() == fd_axis.containers[seed].lines[0].get_color()
    assert not any(c.has_xerr for c in mse_axis.containers)
    # The black ticks: each method's mean over its seeds.
    ticks = [line.get_xdata()[0] for line in fd_axis.lines if line.get_color() == "black"]
    assert ticks == pytest.approx([sum(FD[m]) / 3 for m in ("A", "H", "B")])
    assert [text.get_text() for text in fig.legends[0].get_texts()] == ["seed 0", "seed 1", "seed 2"]
    assert save_figure(fig, tmp_path / "fig6_per_seed.png").stat().st_size > 5000

    # A seed without a finite FD is left out of its method's row, whose mean then says its n.
    runs["B"][1]["fidelity/fid"] = float("nan")
    fd_axis = per_seed_figure(per_seed_panels(STUDY, runs)).axes[1]
    assert len(fd_axis.containers) == 8 and [t.get_text() for t in fd_axis.texts] == ["n = 2"]

    # A study without priors has no FD: its figure is the MSE panel alone.
    codes_only = {name: {seed: {"recon/test_mse": run["recon/test_mse"]} for seed, run in r.items()} for name, r in runs.items()}
    assert list(per_seed_panels(STUDY, codes_only)) == ["test MSE (all test images)"]
    assert len(per_seed_figure(per_seed_panels(STUDY, codes_only)).axes) == 1
