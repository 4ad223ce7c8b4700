"""Sample fidelity measured with a trained MNIST classifier (plain torch + torchmetrics).

* ``frechet_distance``: the Fréchet distance between the Gaussians fitted to the classifier's
  penultimate features of two image sets (FID with the MNIST classifier in place of Inception;
  torchmetrics' ``FrechetInceptionDistance`` with a custom feature module). Its scale depends on
  the classifier, so read it against ``fid_floor``, the distance between real training and
  real test images with the same classifier and the same set sizes.
* ``classifier_scores``: the Inception-Score-style pair: ``confidence`` (mean max softmax
  probability: are samples recognisable digits?) and ``class_entropy`` (entropy of the histogram
  of predicted digits: ln 10 = every digit equally often, 0 = one digit only), with the
  histogram itself and the Inception Score exp(E_x KL(p(y|x) || p(y))) (1 .. 10).

Images are N x 1 x 28 x 28 (or N x 28 x 28) floats in [0, 1], or uint8 in 0..255.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

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


def _fid_metric(classifier: nn.Module, keep_real: bool = False) -> FrechetInceptionDistance:
    # sync_on_compute=False: called on one process (e.g. rank zero) it must not wait for others.
    metric = FrechetInceptionDistance(
        feature=ClassifierFeatures(classifier),
        normalize=True,
        reset_real_features=not keep_real,
        sync_on_compute=False,
    )
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
    """How recognisable (``confidence``) and how varied (``class_entropy``) the predicted digits are."""
    return scores_from_logits(predict_logits(classifier, images, batch_size), N_CLASSES)


def fidelity_report(
    classifier: nn.Module,
    samples: Tensor,
    test_images: Tensor,
    train_images: Tensor | None = None,
    batch_size: int = INFERENCE_BATCH,
    seed: int = 0,
) -> dict:
    """``fid`` (samples vs test images), ``fid_floor`` and the classifier scores of the samples.

    ``fid_floor`` (only with ``train_images``) is the Fréchet distance of as many real training
    images as there are samples (a seeded random choice) to the same test images: what a
    perfect generator would score at this sample size, the number to read ``fid`` against.
    """
    samples = as_unit_images(samples)
    metric = _fid_metric(classifier, keep_real=True)  # the test features serve both distances
    _update(metric, test_images, True, batch_size)
    _update(metric, samples, False, batch_size)
    report = {"fid": float(metric.compute()), "n_samples": len(samples), "n_test": len(as_unit_images(test_images))}
    if train_images is not None:
        train_images = as_unit_images(train_images)
        floor_images = seeded_subset(train_images, len(samples), seed)
        metric.reset()  # keeps the real (test) features
        _update(metric, floor_images, False, batch_size)
        report["fid_floor"] = float(metric.compute())
        report["n_floor"] = len(floor_images)
    report.update(classifier_scores(classifier, samples, batch_size))
    return report
