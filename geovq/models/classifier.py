"""MNISTClassifier: a small CNN digit classifier, the feature network of the fidelity metrics.

Two 3x3 conv blocks (batch norm, ReLU, 2x2 max-pool; 28 -> 14 -> 7), dropout, a
``n_features``-wide ReLU layer (the features a Fréchet distance compares), dropout, and a linear
layer to the logits.
Loss = cross-entropy; accuracy is measured over each full split. It trains on the
``(images, labels)`` batches of :class:`geovq.data.images.ImageDataModule`, images
B x 1 x 28 x 28 floats in [0, 1]. Batch norm makes it train fast (98% test accuracy after one
MNIST epoch at lr 1e-3); the default 5 epochs with a cosine learning rate aim at >= 99%. Under
DDP use ``trainer.sync_batchnorm=true`` for the same statistics as one process.
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
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(n_features, n_classes))
        # Attributes, not a ModuleDict: "train" cannot be a ModuleDict key (nn.Module.train).
        self.train_accuracy = MulticlassAccuracy(num_classes=n_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=n_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=n_classes, average="micro")

    @property
    def n_features(self) -> int:
        return self.hparams.n_features

    # -- the model --------------------------------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations B x n_features (deterministic in eval mode; dropout in train)."""
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits B x n_classes for images B x C x H x W in [0, 1]."""
        return self.head(self.trunk(x))

    # -- Lightning ----------------------------------------------------------------------------
    def _step(self, batch, split: str) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy = getattr(self, f"{split}_accuracy")
        accuracy(logits.detach(), y)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(x))
        self.log(f"{split}/accuracy", accuracy, prog_bar=True, on_step=False, on_epoch=True)
        return loss
