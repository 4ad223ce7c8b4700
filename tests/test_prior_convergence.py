"""The prior trains until it stops improving: a warm-up-then-plateau schedule whose end is not the
epoch cap, early stopping that fires, prior/converged in metrics.json, and resumes that stay
consistent with the schedule."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from geovq.artifacts import load_artifact, save_code_grids
from geovq.errors import ConfigError
from geovq.models.schedules import WarmupReduceLROnPlateau
from geovq.train import run_stage

TINY_PRIOR = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "data.batch_size=64", "model.scheduler.warmup_steps=4",
              "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false", "figures=false"]


def optimizer_of(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def take_steps(optimizer, n: int) -> list[float]:
    """The learning rate each of n optimizer steps used."""
    rates = []
    for _ in range(n):
        optimizer.step()  # the warm-up sets the rate before the step
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_linear_warm_up_then_constant():
    optimizer = optimizer_of(1.0)
    WarmupReduceLROnPlateau(optimizer, warmup_steps=4, patience=0, threshold=0.1, threshold_mode="abs")
    assert take_steps(optimizer, 6) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_reduced_only_after_an_epoch_without_improvement():
    optimizer = optimizer_of(1.0)
    scheduler = WarmupReduceLROnPlateau(optimizer, warmup_steps=1, factor=0.5, patience=0, threshold=0.1, threshold_mode="abs")
    take_steps(optimizer, 1)
    rates = []
    for val_nll in (2.0, 1.5, 1.45, 1.2, 1.2):  # improvements of 0.5, 0.05 (< threshold), 0.3, 0
        scheduler.step(val_nll)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25])


def test_a_reduction_during_the_warm_up_lowers_what_it_climbs_to():
    optimizer = optimizer_of(1.0)
    scheduler = WarmupReduceLROnPlateau(optimizer, warmup_steps=4, factor=0.5, patience=0)
    take_steps(optimizer, 2)
    scheduler.step(1.0)
    scheduler.step(1.0)  # no improvement: halved
    assert take_steps(optimizer, 3) == pytest.approx([0.375, 0.5, 0.5])


def test_state_survives_a_weights_only_checkpoint():
    optimizer = optimizer_of(1.0)
    scheduler = WarmupReduceLROnPlateau(optimizer, warmup_steps=4)
    take_steps(optimizer, 2)
    buffer = io.BytesIO()
    torch.save({"scheduler": scheduler.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_optimizer = optimizer_of(1.0)
    resumed = WarmupReduceLROnPlateau(resumed_optimizer, warmup_steps=4)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert resumed.warmup_done == 2
    assert take_steps(resumed_optimizer, 3) == pytest.approx([0.75, 1.0, 1.0])


def test_bad_warm_up_is_refused():
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupReduceLROnPlateau(optimizer_of(), warmup_steps=-1)


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    """Tiny code grids a small prior learns quickly: four patterns of 8 codes, 10% of cells noise."""
    generator = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 8, (4, 7, 7), generator=generator)

    def grids(n):
        x = patterns[torch.randint(0, 4, (n,), generator=generator)].clone()
        noise = torch.rand(n, 7, 7, generator=generator) < 0.1
        x[noise] = torch.randint(0, 8, (int(noise.sum()),), generator=generator)
        return x

    path = tmp_path_factory.mktemp("codes") / "codes.pt"
    save_code_grids(path, {"train": grids(256), "val": grids(64), "test": grids(64)}, 8, stage="quantize", config={})
    return path


@pytest.fixture
def prior_cfg(compose_config, codes, tmp_path):
    return lambda *extra, name="prior": compose_config(tmp_path / name, ["stage=prior", f"stage.codes={codes}", *TINY_PRIOR, *extra])


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_prior_that_converges_stops_before_its_cap_and_says_so(prior_cfg, tmp_path):
    # Patience 1 and a min_delta no epoch after the first few can beat: early stopping fires.
    metrics = run_stage(prior_cfg("trainer.max_epochs=30", "callbacks.early_stopping.patience=1",
                                  "callbacks.early_stopping.min_delta=0.05"))
    assert metrics["prior/converged"] == 1.0
    assert metrics["prior/epochs"] == metrics["epochs"] < metrics["prior/max_epochs"] == 30
    assert metrics["train/steps"] == 4 * metrics["epochs"]  # 256 grids in batches of 64
    assert metrics["train/images_seen"] == 256 * metrics["epochs"]


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_a_prior_resumed_with_a_higher_cap_continues_its_schedule(prior_cfg, tmp_path):
    first = run_stage(prior_cfg("trainer.max_epochs=1"))
    assert first["prior/converged"] == 0.0 and first["prior/epochs"] == 1  # it hit the cap
    # The schedule holds no epoch count: a higher cap resumes it ...
    resumed = run_stage(prior_cfg("trainer.max_epochs=2", "ckpt_path=last"))
    assert resumed["prior/epochs"] == 2 and resumed["train/steps"] == 8
    # ... while another schedule setting is refused, by name.
    with pytest.raises(ConfigError, match=r"model\.scheduler\.factor=0\.5.*learning-rate schedule"):
        run_stage(prior_cfg("trainer.max_epochs=3", "ckpt_path=last", "model.scheduler.factor=0.25"))


@pytest.mark.slow  # trains: the slow tier (CI runs both tiers)
def test_a_run_stopped_after_an_epoch_and_resumed_ends_as_one_never_stopped(prior_cfg, tmp_path):
    """What a study relies on when it resumes an interrupted step from its last checkpoint: the
    same batches in the same order after the resume (the random generators' states are in the
    checkpoint), so the same weights and figures as a run that was never stopped."""
    whole = run_stage(prior_cfg("trainer.max_epochs=3", name="whole"))
    run_stage(prior_cfg("trainer.max_epochs=1", name="stopped"))
    resumed = run_stage(prior_cfg("trainer.max_epochs=3", "ckpt_path=last", name="stopped"))
    assert resumed["test/nll"] == whole["test/nll"] and resumed["train/steps"] == whole["train/steps"]
    weights = [load_artifact(tmp_path / name / "model.pt").payload["state_dict"] for name in ("whole", "stopped")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


@pytest.mark.slow  # trains: the slow tier (CI runs both tiers)
def test_a_run_stopped_where_its_schedule_lowers_the_rate_resumes_with_the_lower_rate(prior_cfg, tmp_path, caplog):
    """Lightning steps a reduce-on-plateau schedule after the epoch's checkpoint is written, so a
    run resumed from it would skip the reduction its last epoch caused and go on at the old rate
    (geovq/callbacks/plateau_step.py replays it). A threshold no epoch can beat: the first epoch
    sets the best figure, every later one halves the rate."""
    never_improves = "model.scheduler.threshold=100"
    whole = run_stage(prior_cfg("trainer.max_epochs=3", never_improves, name="whole"))
    run_stage(prior_cfg("trainer.max_epochs=2", never_improves, name="stopped"))  # stopped after the first halving
    resumed = run_stage(prior_cfg("trainer.max_epochs=3", never_improves, "ckpt_path=last", name="stopped"))
    assert resumed["test/nll"] == whole["test/nll"]
    weights = [load_artifact(tmp_path / name / "model.pt").payload["state_dict"] for name in ("whole", "stopped")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    rates = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]["param_groups"][0]["lr"]
             for name in ("whole", "stopped")]
    # Halved once, after epoch 2 (the checkpoint of epoch 3 is written before epoch 3's halving).
    assert rates[0] == rates[1] == pytest.approx(1e-3 / 2)

    # A checkpoint written before the step was kept in it cannot be resumed exactly, and says so.
    checkpoint_file = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    checkpoint["callbacks"] = {key: value for key, value in checkpoint["callbacks"].items() if "PlateauStep" not in key}
    torch.save(checkpoint, checkpoint_file)
    with caplog.at_level(logging.WARNING, logger="geovq.callbacks.plateau_step"):
        run_stage(prior_cfg("trainer.max_epochs=4", never_improves, "ckpt_path=last", name="stopped"))
    assert "holds no pending reduce-on-plateau step" in caplog.text
