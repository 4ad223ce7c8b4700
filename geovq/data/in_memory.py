"""Data loaders over tensors held in memory: what the image and code-grid data modules share."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset


class InMemoryDataModule(L.LightningDataModule):
    """Train (shuffled, ``batch_size``) / val / test (``eval_batch_size``) loaders over
    ``self.dataset(split)``; subclasses hold the tensors and define ``dataset``."""

    def dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    @property
    def input_artifacts(self) -> dict:
        """The artifacts this data was read from, for the provenance of a model trained on it
        (none for images read from a dataset folder)."""
        return {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.hparams.batch_size if shuffle else self.hparams.eval_batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
