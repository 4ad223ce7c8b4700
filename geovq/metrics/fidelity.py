"""Sample fidelity measured with a trained MNIST classifier (plain torch + torchmetrics).

* ``frechet_distance``: the Fréchet distance between the Gaussians fitted to the classifier's
  penultimate features of two image sets (FID with the MNIST classifier in place of Inception;
  torchmetrics' ``FrechetInceptionDistance`` with a custom feature module). Its scale depends on
  the classifier, so read it against ``fid_floor``, the distance between real training and
  real test images with the same classifier and the same set sizes. ``fidelity_report`` adds a
  bootstrap interval over the generated samples (their sampling noise): the distance of the
  samples' features drawn again with replacement, ``n_bootstrap`` times, to the same test features
  (``bootstrap_interval``).
* ``classifier_scores``: the Inception-Score-style pair: ``confidence`` (mean max softmax
  probability: are samples recognisable digits?) and ``class_entropy`` (entropy of the histogram
  of predicted digits: ln 10 = every digit equally often, 0 = one digit only), with the
  histogram itself and the Inception Score exp(E_x KL(p(y|x) || p(y))) (1 .. 10).

Images are N x C x H x W (or N x H x W) floats in [0, 1], or uint8 in 0..255, of the classifier's
data set (any channels and size it was built for). A feature network trained without labels
(``n_classes`` 0) gives the distances but no class scores; ``fidelity_report``'s ``features``
says which network it used.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from geovq.batching import INFERENCE_BATCH
from geovq.metrics.subsets import seeded_subset

N_CLASSES = 10


def as_unit_images(images: Tensor) -> Tensor:
    """Images as float32 N x C x H x W in [0, 1]: uint8 is divided by 255, N x H x W gains C=1."""
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        images = images.to(torch.float32) / 255.0
    elif images.is_floating_point():
        images = images.to(torch.float32)
    else:
        raise TypeError(f"images must be floats in [0, 1] or uint8 in 0..255, got {images.dtype}.")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4:
        raise ValueError(f"images must be N x C x H x W (or N x H x W), got shape {tuple(images.shape)}.")
    return images


@contextmanager
def _eval_mode(module: nn.Module):
    """Eval mode and no gradients inside; the module's previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


@contextmanager
def _one_thread():
    """One intra-op thread inside: the bootstrap's many small 128 x 128 eigenproblems ran 20-100x
    slower on 2 busy cores with two threads than with one (their threads wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _device(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class ClassifierFeatures(nn.Module):
    """A classifier's penultimate features (float64, eval mode) as an FID feature network.

    ``classifier`` needs ``features(x) -> N x d``; ``num_features`` (d) is read from its
    ``n_features`` or found with one dummy image. Inputs may be float [0, 1] or uint8.
    """

    def __init__(self, classifier: nn.Module, image_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        self.classifier = classifier
        n_features = getattr(classifier, "n_features", None)
        if n_features is None:
            with _eval_mode(classifier):
                dummy = torch.zeros(1, *image_shape, device=_device(classifier))
                n_features = classifier.features(dummy).shape[-1]
        self.num_features = int(n_features)

    def forward(self, x: Tensor) -> Tensor:
        x = as_unit_images(x).to(_device(self.classifier))
        with _eval_mode(self.classifier):
            return self.classifier.features(x).flatten(1).to(torch.float64)


def _fid_metric(classifier: nn.Module) -> FrechetInceptionDistance:
    # sync_on_compute=False: called on one process (e.g. rank zero) it must not wait for others.
    metric = FrechetInceptionDistance(feature=ClassifierFeatures(classifier), normalize=True, sync_on_compute=False)
    return metric.to(_device(classifier))


def _update(metric: FrechetInceptionDistance, images: Tensor, real: bool, batch_size: int) -> None:
    images = as_unit_images(images)
    if len(images) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images per set, got {len(images)}.")
    for start in range(0, len(images), batch_size):
        metric.update(images[start : start + batch_size], real=real)


def frechet_distance(
    classifier: nn.Module, real_images: Tensor, fake_images: Tensor, batch_size: int = INFERENCE_BATCH
) -> float:
    """Fréchet distance between the classifier features of two image sets (FID-style, >= 0)."""
    metric = _fid_metric(classifier)
    _update(metric, real_images, True, batch_size)
    _update(metric, fake_images, False, batch_size)
    return float(metric.compute())


@torch.no_grad()
def predict_logits(classifier: nn.Module, images: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
    """The classifier's logits N x n_classes (eval mode, on the classifier's device), on the CPU."""
    images = as_unit_images(images)
    device = _device(classifier)
    with _eval_mode(classifier):
        return torch.cat(
            [classifier(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
        )


def scores_from_logits(logits: Tensor, n_classes: int | None = None) -> dict:
    """``confidence``, ``class_entropy`` (nats), ``class_histogram`` and ``inception_score`` of logits N x K."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be N x K with N >= 1, got shape {tuple(logits.shape)}.")
    n_classes = n_classes or logits.shape[1]
    probs = logits.softmax(dim=1)
    counts = torch.bincount(probs.argmax(dim=1), minlength=n_classes)
    frequencies = counts[counts > 0].double() / len(probs)
    class_entropy = float(-(frequencies * frequencies.log()).sum())
    # Inception Score: exp of the mean KL between each p(y|x) and the marginal p(y).
    marginal = probs.mean(dim=0, keepdim=True)
    kl = torch.special.xlogy(probs, probs) - torch.special.xlogy(probs, marginal)
    return {
        "confidence": float(probs.max(dim=1).values.mean()),
        "class_entropy": class_entropy,
        "class_histogram": [int(c) for c in counts],
        "inception_score": math.exp(float(kl.sum(dim=1).mean())),
    }


def classifier_scores(classifier: nn.Module, images: Tensor, batch_size: int = INFERENCE_BATCH) -> dict:
    """How recognisable (``confidence``) and how varied (``class_entropy``) the predicted digits are
    (the classes of the classifier's data set; none for a feature network trained without labels)."""
    n_classes = getattr(classifier, "n_classes", N_CLASSES)
    if not n_classes:
        return {}
    return scores_from_logits(predict_logits(classifier, images, batch_size), n_classes)


# The bootstrap interval's coverage: 95%, between the 2.5th and the 97.5th percentile.
INTERVAL = 0.95


def feature_matrix(classifier: nn.Module, images: Tensor, batch_size: int = INFERENCE_BATCH) -> Tensor:
    """The classifier's features (float64, N x d, on the CPU) of at least 2 images, in batches."""
    images = as_unit_images(images)
    if len(images) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images per set, got {len(images)}.")
    features = ClassifierFeatures(classifier)
    return torch.cat([features(images[start : start + batch_size]).cpu() for start in range(0, len(images), batch_size)])


def gaussian(features: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean and covariance (n - 1 in the denominator) of N x d float64 features, each row counted
    ``weights[i]`` times when given (a resample with replacement), as torchmetrics' FID sums them."""
    if weights is None:
        n, total, outer = len(features), features.sum(dim=0), features.T @ features
    else:
        weights = weights.to(features.dtype)
        n, total, outer = float(weights.sum()), weights @ features, features.T @ (features * weights[:, None])
    mean = total / n
    return mean, (outer - n * torch.outer(mean, mean)) / (n - 1)


def frechet_of_gaussians(real: tuple[Tensor, Tensor], fake: tuple[Tensor, Tensor], real_root: Tensor | None = None) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), torchmetrics' FID formula. The trace
    of the root is that of the symmetric S_r^(1/2) S_f S_r^(1/2) (the same eigenvalues), whose
    eigenvalues are cheaper to find; ``real_root`` is S_r^(1/2) when already known."""
    (mu_r, cov_r), (mu_f, cov_f) = real, fake
    root = symmetric_root(cov_r) if real_root is None else real_root
    eigenvalues = torch.linalg.eigvalsh(root @ cov_f @ root).clamp(min=0)
    return float((mu_r - mu_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * eigenvalues.sqrt().sum())


def symmetric_root(cov: Tensor) -> Tensor:
    """The symmetric square root of a covariance (negative rounding-error eigenvalues as 0)."""
    eigenvalues, vectors = torch.linalg.eigh(cov)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def bootstrap_interval(real: tuple[Tensor, Tensor], fake_features: Tensor, n_resamples: int, seed: int = 0,
                       level: float = INTERVAL) -> tuple[float, float]:
    """How far the Fréchet distance moves with another draw of as many samples: the ``level``
    percentile interval of the distance over ``n_resamples`` resamples of the fake features (with
    replacement, seeded) against the fixed real Gaussian, shifted by the resamples' mean excess
    over the distance itself. (A resample repeats samples; like any smaller sample set that adds
    to the distance, here by about as much as the spread, which the shift takes back out.)"""
    generator = np.random.default_rng(seed)
    n, root = len(fake_features), symmetric_root(real[1])
    distances = []
    with _one_thread():
        for _ in range(n_resamples):
            counts = torch.from_numpy(np.bincount(generator.integers(0, n, n), minlength=n))
            distances.append(frechet_of_gaussians(real, gaussian(fake_features, counts), root))
        excess = float(np.mean(distances)) - frechet_of_gaussians(real, gaussian(fake_features), root)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(distances, [tail, 100 - tail])
    return float(low) - excess, float(high) - excess


def fidelity_report(
    classifier: nn.Module,
    samples: Tensor,
    test_images: Tensor,
    train_images: Tensor | None = None,
    batch_size: int = INFERENCE_BATCH,
    seed: int = 0,
    n_bootstrap: int = 0,
    real_features=None,
) -> dict:
    """``fid`` (samples vs test images), ``fid_floor`` and the classifier scores of the samples.

    ``fid_floor`` (only with ``train_images``) is the Fréchet distance of as many real training
    images as there are samples (a seeded random choice) to the same test images: what a
    perfect generator would score at this sample size, the number to read ``fid`` against.
    With ``n_bootstrap`` > 0, ``fid_ci_low`` / ``fid_ci_high`` bound the 95% bootstrap interval of
    ``fid`` over the samples (``bootstrap_interval``, seeded by ``seed``). ``real_features``
    (``images -> features``) gives the features of the real images (test and floor), e.g. from a
    cache shared by every evaluation (geovq/metrics/feature_cache.py).
    """
    samples = as_unit_images(samples)
    real_features = real_features or partial(feature_matrix, classifier, batch_size=batch_size)
    real = gaussian(real_features(test_images))  # serves every distance
    sample_features = feature_matrix(classifier, samples, batch_size)
    report = {"fid": frechet_of_gaussians(real, gaussian(sample_features)), "n_samples": len(samples),
              "n_test": len(as_unit_images(test_images))}
    if n_bootstrap > 0:
        report["fid_ci_low"], report["fid_ci_high"] = bootstrap_interval(real, sample_features, n_bootstrap, seed)
        report["fid_bootstrap"] = n_bootstrap
    if train_images is not None:
        floor_images = seeded_subset(as_unit_images(train_images), len(samples), seed)
        report["fid_floor"] = frechet_of_gaussians(real, gaussian(real_features(floor_images)))
        report["n_floor"] = len(floor_images)
    report.update(classifier_scores(classifier, samples, batch_size))
    report["features"] = getattr(classifier, "feature_source", "classifier features")
    return report
