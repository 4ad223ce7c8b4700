"""stage=classifier end to end on an MNIST subset, and the classifier module itself."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from geovq.errors import ConfigError, ParameterError
from geovq.models.classifier import MNISTClassifier
from geovq.models.io import load_model
from geovq.train import run_stage


@pytest.fixture
def classifier_overrides(tiny_overrides):
    """tiny_overrides without the autoencoder's model.* settings the classifier does not have."""
    return lambda **extra: [item for item in tiny_overrides(**extra) if not item.startswith("model.")]


def test_classifier_shapes_and_features():
    model = MNISTClassifier().eval()
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, model.n_features) == (3, 128)
    assert (model.features(x) >= 0).all()  # ReLU activations
    # The logits are the head applied to the features (eval mode: no dropout).
    torch.testing.assert_close(model.head(model.features(x)), model(x))


@pytest.mark.parametrize("kwargs", [{"dropout": 1.0}, {"head_dropout": -0.1}, {"image_size": 30}])
def test_bad_settings_name_their_argument(kwargs):
    with pytest.raises(ParameterError) as raised:
        MNISTClassifier(**kwargs)
    assert raised.value.parameter == next(iter(kwargs))


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_stage_classifier_trains_tests_and_saves_a_loadable_model(make_cfg, classifier_overrides, tmp_path):
    cfg = make_cfg(
        "stage=classifier",
        *classifier_overrides(
            **{
                "data.subset": 3000,
                "data.test_subset": 1000,
                "data.batch_size": 32,
                "trainer.max_epochs": 2,
                "trainer.log_every_n_steps": 10,
            }
        ),
        tiny=False,
    )
    assert cfg.model._target_.endswith("MNISTClassifier")
    metrics = run_stage(cfg)
    out = tmp_path / "run"
    assert metrics["test/accuracy"] >= 0.9, metrics
    assert metrics["epochs"] == 2
    assert (out / "checkpoints" / "last.ckpt").is_file() and list((out / "checkpoints").glob("best-*.ckpt"))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert {"val/loss", "val/accuracy", "train/accuracy", "test/loss"} <= set(saved)
    with open(out / "csv" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(1 for row in rows if row.get("val/accuracy")) == 2

    model, artifact = load_model(out / "model.pt", "classifier")
    assert isinstance(model, MNISTClassifier) and not model.training
    assert artifact.provenance["stage"] == "classifier"
    # The saved weights are the tested ones: same accuracy on the same 1000 test images.
    from geovq.data.images import load_split

    images, labels = load_split("torchvision.datasets.MNIST", cfg.data.root, train=False, download=False)
    with torch.no_grad():
        accuracy = (model(images[:1000]).argmax(1) == labels[:1000]).float().mean().item()
    assert accuracy == pytest.approx(metrics["test/accuracy"], abs=1e-6)
    assert model.features(images[:2]).shape == (2, 128)


@pytest.mark.slow  # trains
def test_stage_classifier_stops_once_it_is_accurate_enough(make_cfg, classifier_overrides):
    """The classifier only measures samples: it trains until its validation accuracy reaches the
    threshold (99% by default), not to its epoch cap."""
    cfg = make_cfg("stage=classifier", *classifier_overrides(**{"data.subset": 1000, "data.test_subset": 200,
                                                                "data.batch_size": 32, "trainer.max_epochs": 4}),
                   "callbacks.early_stopping.stopping_threshold=0.5", tiny=False)
    assert cfg.callbacks.early_stopping.monitor == "val/accuracy"
    metrics = run_stage(cfg)
    assert metrics["epochs"] == 1 and metrics["val/accuracy"] >= 0.5, metrics


def test_stage_classifier_refuses_another_model(make_cfg, classifier_overrides):
    cfg = make_cfg("stage=classifier", "model=grid_vae", *classifier_overrides(), tiny=False)
    with pytest.raises(ConfigError, match="MNISTClassifier"):
        run_stage(cfg)
