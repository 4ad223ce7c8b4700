"""The MNIST data module: splits, ranges, subsets, and the missing-data error."""

from __future__ import annotations

import pytest
import torch

from geovq.data.images import ImageDataModule
from geovq.errors import DataError


def test_full_split_sizes_and_pixel_range(data_root):
    dm = ImageDataModule(root=str(data_root), download=False)
    dm.setup()
    assert len(dm.split("train")) == 55_000 and len(dm.split("val")) == 5_000 and len(dm.split("test")) == 10_000
    images = dm.split("train").tensors[0]
    assert images.dtype == torch.float32 and images.shape[1:] == (1, 28, 28)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert abs(float(images.mean()) - 0.1307) < 0.005


def test_split_is_seeded_and_subset_is_proportional(data_root):
    a = ImageDataModule(root=str(data_root), subset=1200, download=False, seed=3)
    b = ImageDataModule(root=str(data_root), subset=1200, download=False, seed=3)
    c = ImageDataModule(root=str(data_root), subset=1200, download=False, seed=4)
    for dm in (a, b, c):
        dm.setup()
    assert len(a.split("train")) == 1100 and len(a.split("val")) == 100 and len(a.split("test")) == 1200
    assert torch.equal(a.split("val").tensors[0], b.split("val").tensors[0])
    assert not torch.equal(a.split("val").tensors[0], c.split("val").tensors[0])
    batch = next(iter(a.train_dataloader()))
    assert batch[0].shape == (128, 1, 28, 28) and batch[1].dtype == torch.int64


def test_missing_data_names_the_folder_and_the_fix(tmp_path):
    dm = ImageDataModule(root=str(tmp_path / "empty"), download=False)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str((tmp_path / "empty").resolve()) in message
    assert "data.root" in message and "GEOVQ_DATA_ROOT" in message
