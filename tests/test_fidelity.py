"""Fidelity metrics: the classifier Fréchet distance and the Inception-Score-style scores."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from geovq.data.images import load_split
from geovq.metrics.fidelity import (
    ClassifierFeatures,
    as_unit_images,
    bootstrap_interval,
    classifier_scores,
    feature_matrix,
    fidelity_report,
    frechet_distance,
    gaussian,
    scores_from_logits,
)
from geovq.models.classifier import MNISTClassifier

MNIST = "torchvision.datasets.MNIST"


@pytest.fixture(scope="module")
def mnist(data_root):
    train_images, train_labels = load_split(MNIST, data_root, train=True, download=False)
    test_images, _ = load_split(MNIST, data_root, train=False, download=False)
    return {"train": train_images[:4000], "train_labels": train_labels[:4000], "test": test_images[:1000]}


@pytest.fixture(scope="module")
def trained_classifier(mnist):
    """An MNISTClassifier trained for 200 steps on the first 2000 training images (~95% accurate)."""
    torch.manual_seed(0)
    model = MNISTClassifier()
    images, labels = mnist["train"][:2000], mnist["train_labels"][:2000]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(200):
        batch = torch.randint(0, len(images), (64,))
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def untrained_classifier():
    torch.manual_seed(1)
    return MNISTClassifier().eval()


def noisy(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + std * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def feature_scale(classifier, images) -> float:
    """Total variance of the features: the scale a Fréchet distance is measured in."""
    features = ClassifierFeatures(classifier)(images)
    return float(features.var(dim=0).sum())


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_classifier_features_fit_torchmetrics_fid(trained_classifier, mnist):
    features = ClassifierFeatures(trained_classifier)
    assert features.num_features == 128 and isinstance(features.num_features, int)
    out = features(mnist["test"][:5])
    assert out.shape == (5, 128) and out.dtype == torch.float64
    metric = FrechetInceptionDistance(feature=features, normalize=True)
    metric.update(mnist["test"][:100], real=True)
    metric.update(mnist["test"][100:200], real=False)
    assert float(metric.compute()) > 0


def test_features_are_eval_mode_and_leave_the_mode_alone(mnist):
    torch.manual_seed(0)
    model = MNISTClassifier().train()  # dropout on
    features = ClassifierFeatures(model)
    images = mnist["test"][:8]
    torch.testing.assert_close(features(images), features(images))  # deterministic: eval mode
    assert model.training  # restored
    assert not torch.equal(model.features(images), model.features(images))  # dropout in train mode


def test_features_found_without_n_features():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(28 * 28, 7)

        def features(self, x):
            return self.linear(x.flatten(1))

    assert ClassifierFeatures(Plain()).num_features == 7


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_distance_of_a_set_to_itself_is_zero(trained_classifier, mnist):
    images = mnist["test"][:500]
    scale = feature_scale(trained_classifier, images)
    assert scale > 1
    assert abs(frechet_distance(trained_classifier, images, images)) < 1e-3 * scale


@pytest.mark.parametrize("which", ["trained", "untrained"])
@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_distance_grows_with_the_corruption(which, trained_classifier, untrained_classifier, mnist):
    classifier = trained_classifier if which == "trained" else untrained_classifier
    real, held_out = mnist["test"][:500], mnist["test"][500:1000]
    distances = [frechet_distance(classifier, real, noisy(held_out, std) if std else held_out) for std in (0, 0.1, 0.3, 0.6)]
    assert distances == sorted(distances) and len(set(distances)) == 4, distances
    if which == "trained":
        # Two real sets are far closer to each other than to a corrupted one.
        assert distances[0] < 0.2 * distances[2], distances


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_uint8_input_gives_the_float_distance(trained_classifier, mnist):
    as_bytes = (mnist["test"][:500] * 255).round().to(torch.uint8)
    as_floats = as_bytes.float() / 255
    other = mnist["test"][500:1000]
    expected = frechet_distance(trained_classifier, as_floats, other)
    assert frechet_distance(trained_classifier, as_bytes, other) == pytest.approx(expected, rel=1e-9)
    # N x 28 x 28 (no channel axis), as torchvision stores them, works too; so does a batch size
    # that does not divide the set (the sums over batches are the same).
    assert frechet_distance(trained_classifier, as_bytes[:, 0], other, batch_size=150) == pytest.approx(expected, rel=1e-6)


def test_as_unit_images_rejects_other_types():
    with pytest.raises(TypeError):
        as_unit_images(torch.zeros(2, 1, 28, 28, dtype=torch.int64))
    with pytest.raises(ValueError):
        as_unit_images(torch.zeros(2, 28 * 28))


def test_too_few_images_is_an_error(trained_classifier, mnist):
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(trained_classifier, mnist["test"][:10], mnist["test"][:1])


# -- classifier scores on hand-made logits -----------------------------------------------------
def one_hot_logits(digits, confidence: float = 30.0) -> torch.Tensor:
    return confidence * F.one_hot(torch.as_tensor(digits), 10).double()


def test_scores_of_one_digit_only():
    scores = scores_from_logits(one_hot_logits([3] * 50))
    assert scores["class_entropy"] == 0
    assert scores["class_histogram"] == [0, 0, 0, 50, 0, 0, 0, 0, 0, 0]
    assert scores["confidence"] == pytest.approx(1.0)
    assert scores["inception_score"] == pytest.approx(1.0)


def test_scores_of_every_digit_equally_often():
    scores = scores_from_logits(one_hot_logits(list(range(10)) * 7))
    assert scores["class_entropy"] == pytest.approx(math.log(10))
    assert scores["class_histogram"] == [7] * 10
    assert scores["confidence"] == pytest.approx(1.0)
    assert scores["inception_score"] == pytest.approx(10.0)


def test_scores_of_unsure_predictions():
    scores = scores_from_logits(torch.zeros(20, 10))  # every digit equally likely
    assert scores["confidence"] == pytest.approx(0.1)
    assert scores["inception_score"] == pytest.approx(1.0)
    # Two digits, half each: ln 2.
    assert scores_from_logits(one_hot_logits([1, 7] * 5))["class_entropy"] == pytest.approx(math.log(2))


class DigitFromBrightness(nn.Module):
    """A stand-in classifier: an image of constant brightness k/9 is the digit k, surely."""

    def forward(self, x):
        return one_hot_logits(x.flatten(1).mean(dim=1).mul(9).round().long()).float()


def test_classifier_scores_run_the_classifier_in_batches():
    digits = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9])
    images = (digits.float() / 9).view(-1, 1, 1, 1).expand(-1, 1, 28, 28)
    scores = classifier_scores(DigitFromBrightness(), images, batch_size=5)
    assert scores["class_histogram"] == [1] * 9 + [3]
    assert 0 < scores["class_entropy"] < math.log(10)
    same = classifier_scores(DigitFromBrightness(), (images * 255).round().to(torch.uint8))
    assert same["class_histogram"] == scores["class_histogram"]


def test_real_digits_score_as_recognisable_and_varied(trained_classifier, mnist):
    scores = classifier_scores(trained_classifier, mnist["test"])
    assert scores["confidence"] > 0.8
    assert scores["class_entropy"] > 0.95 * math.log(10)
    assert sum(scores["class_histogram"]) == 1000 and len(scores["class_histogram"]) == 10


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_fidelity_report(trained_classifier, mnist):
    test_images, samples, train_images = mnist["test"][:500], mnist["test"][500:1000], mnist["train"][2000:4000]
    good = fidelity_report(trained_classifier, samples, test_images, train_images)
    assert {"fid", "fid_floor", "confidence", "class_entropy", "class_histogram", "inception_score"} <= set(good)
    assert good["n_samples"] == good["n_floor"] == good["n_test"] == 500
    # The floor is the distance of real training images: the same as the fid of 'samples' that
    # are that very choice of training images.
    chosen = train_images[torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))[:500].sort().values]
    # The report computes its distances from features shared by the floor and the bootstrap; the
    # two routes agree to float64 round-off, which the thread count moves (1e-8 seen on 2 threads).
    assert good["fid_floor"] == pytest.approx(frechet_distance(trained_classifier, test_images, chosen), rel=1e-6)
    assert good["fid"] == pytest.approx(frechet_distance(trained_classifier, test_images, samples), rel=1e-6)
    bad = fidelity_report(trained_classifier, noisy(samples, 0.5), test_images, train_images)
    assert bad["fid"] > 5 * max(good["fid"], bad["fid_floor"])
    assert bad["fid_floor"] == pytest.approx(good["fid_floor"])
    assert "fid_floor" not in fidelity_report(trained_classifier, samples[:100], test_images)


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_fd_bootstrap_interval_is_seeded_and_brackets_the_sampling_noise(trained_classifier, mnist):
    test_images, samples = mnist["test"][:500], mnist["test"][500:1000]
    report = fidelity_report(trained_classifier, samples, test_images, n_bootstrap=50, seed=3)
    assert report["fid_bootstrap"] == 50
    # The interval of the distance over resampled sample sets, about the distance itself.
    assert report["fid_ci_low"] < report["fid"] < report["fid_ci_high"]
    again = fidelity_report(trained_classifier, samples, test_images, n_bootstrap=50, seed=3)
    assert (again["fid_ci_low"], again["fid_ci_high"]) == (report["fid_ci_low"], report["fid_ci_high"])
    assert "fid_ci_low" not in fidelity_report(trained_classifier, samples, test_images)
    # Fewer samples: more sampling noise, a wider interval.
    real = gaussian(feature_matrix(trained_classifier, test_images))
    wide = bootstrap_interval(real, feature_matrix(trained_classifier, samples[:100]), 50, seed=3)
    assert wide[1] - wide[0] > report["fid_ci_high"] - report["fid_ci_low"]


def test_weighted_gaussian_is_the_gaussian_of_the_repeated_rows():
    features = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([0, 2, 1, 0, 3, 0])
    mean, cov = gaussian(features, weights)
    repeated = features.repeat_interleave(weights, dim=0)
    assert torch.allclose(mean, repeated.mean(dim=0)) and torch.allclose(cov, torch.cov(repeated.T))


def test_seeded_subset_is_reproducible_in_order_and_capped():
    """The FD floor's training images and the paper-protocol training perplexity's code grids."""
    from geovq.metrics.subsets import seeded_subset

    items = torch.arange(100)
    picked = seeded_subset(items, 10)
    assert torch.equal(picked, seeded_subset(items, 10)) and len(picked) == 10
    assert bool((picked[1:] > picked[:-1]).all())  # original order kept
    assert not torch.equal(picked, seeded_subset(items, 10, seed=1))
    assert torch.equal(seeded_subset(items, 500), items)


def test_real_features_are_computed_once_per_classifier_and_images(trained_classifier, mnist, tmp_path, monkeypatch):
    """A study's evaluations share the real images' features: the second one reads them."""
    import geovq.metrics.feature_cache as cache
    from geovq.artifacts import save_artifact

    art = save_artifact(tmp_path / "classifier" / "model.pt", "classifier", {"state": 1}, stage="classifier")
    images = mnist["test"][:50]
    calls = []
    monkeypatch.setattr(cache, "feature_matrix", lambda model, x: calls.append(len(x)) or feature_matrix(model, x))
    first = cache.cached_features(trained_classifier, art)(images)
    again = cache.cached_features(trained_classifier, art)(images.clone())
    assert calls == [50] and torch.equal(first, again)
    assert len(list((tmp_path / "classifier" / "features").glob("*.pt"))) == 1
    # Another classifier's file (same images) is not used: computed again.
    other = save_artifact(tmp_path / "classifier" / "model.pt", "classifier", {"state": 2}, stage="classifier")
    cache.cached_features(trained_classifier, other)(images)
    assert calls == [50, 50]
