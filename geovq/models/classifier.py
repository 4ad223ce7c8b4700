"""MNISTClassifier: a small CNN classifier of the data set in use, the feature network of the
fidelity metrics (the name is historical: it takes any channels, image size and classes).

Two 3x3 conv blocks (batch norm, ReLU, 2x2 max-pool; 28 -> 14 -> 7 on MNIST), dropout, a
``n_features``-wide ReLU layer (the features a Fréchet distance compares), dropout, and a linear
layer to the logits.
Loss = cross-entropy; accuracy is measured over each full split. It trains on the
``(images, labels)`` batches of the image data modules (:mod:`geovq.data.images`), images
B x C x S x S floats in [0, 1]. Batch norm makes it train fast (98% test accuracy after one
MNIST epoch at lr 1e-3); the default 5 epochs with a cosine learning rate aim at >= 99%. Under
DDP use ``trainer.sync_batchnorm=true`` for the same statistics as one process.

``n_classes=0`` (images without labels, e.g. a flat data=image_folder): the same trunk trained as
an autoencoder instead, its features decoded back to the image (two transposed convolutions,
BCE with logits per pixel); the Fréchet distance then compares these features, learned without
labels, and there are no class scores (``feature_source`` says which).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from geovq.errors import ParameterError
from geovq.models.base import GeovqModule


class MNISTClassifier(GeovqModule):
    def __init__(
        self,
        channels: int = 32,
        n_features: int = 128,
        dropout: float = 0.25,
        head_dropout: float = 0.5,
        in_channels: int = 1,
        n_classes: int = 10,
        image_size: int = 28,
        optimizer: Any = None,
        scheduler: Any = None,
    ):
        super().__init__(optimizer, scheduler)
        for name, rate in (("dropout", dropout), ("head_dropout", head_dropout)):
            if not 0 <= rate < 1:
                raise ParameterError(name, f"{name} must be in [0, 1), got {rate}.")
        if n_classes < 0:
            raise ParameterError("n_classes", f"n_classes must be >= 0 (0: no labels, autoencoder features), got {n_classes}.")
        if image_size % 4:
            raise ParameterError("image_size", f"image_size must be a multiple of 4 (two 2x2 poolings), got {image_size}.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        side = image_size // 4
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(2 * channels * side * side, n_features),
            nn.ReLU(),
        )
        if n_classes == 0:  # no labels: decode the features back to the image
            self.head = None
            self.reconstruction_head = nn.Sequential(
                nn.Dropout(head_dropout),
                nn.Linear(n_features, 2 * channels * side * side),
                nn.ReLU(),
                nn.Unflatten(1, (2 * channels, side, side)),
                nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.ConvTranspose2d(channels, in_channels, 4, stride=2, padding=1),
            )
            return
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(n_features, n_classes))
        # Attributes, not a ModuleDict: "train" cannot be a ModuleDict key (nn.Module.train).
        self.train_accuracy = MulticlassAccuracy(num_classes=n_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=n_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=n_classes, average="micro")

    @property
    def n_features(self) -> int:
        return self.hparams.n_features

    @property
    def n_classes(self) -> int:
        """The classes it tells apart; 0: trained without labels (autoencoder features)."""
        return self.hparams.n_classes

    @property
    def feature_source(self) -> str:
        """Which features a fidelity report compares, in words."""
        if self.n_classes == 0:
            return "autoencoder features (trained without labels)"
        return f"classifier features ({self.n_classes} classes)"

    # -- the model --------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations B x n_features (deterministic in eval mode; dropout in train)."""
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits B x n_classes for images B x C x H x W in [0, 1] (n_classes=0: the
        reconstruction's pixel logits B x C x H x W)."""
        if self.head is None:
            return self.reconstruction_head(self.trunk(x))
        return self.head(self.trunk(x))

    # -- Lightning ----------------------------------------------------------------------------
    def _step(self, batch, split: str) -> Tensor:
        x, y = batch[0], batch[1]
        if self.head is None:
            loss = F.binary_cross_entropy_with_logits(self(x), x)
            self.log(f"{split}/loss", loss, prog_bar=True, on_step=split == "train", on_epoch=True, batch_size=len(x))
            return loss
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy = getattr(self, f"{split}_accuracy")
        accuracy(logits.detach(), y)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(x))
        self.log(f"{split}/accuracy", accuracy, prog_bar=True, on_step=False, on_epoch=True)
        return loss
