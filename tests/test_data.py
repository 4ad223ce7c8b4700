"""The MNIST data module: splits, ranges, subsets, and the missing- and corrupt-data errors."""

from __future__ import annotations

import os
import shutil
import struct

import pytest
import torch

from geovq.data.images import ImageDataModule, load_split
from geovq.errors import DataError


def test_full_split_sizes_and_pixel_range(data_root):
    dm = ImageDataModule(root=str(data_root), download=False)
    dm.setup()
    assert len(dm.split("train")) == 55_000 and len(dm.split("val")) == 5_000 and len(dm.split("test")) == 10_000
    images = dm.split("train").tensors[0]
    assert images.dtype == torch.float32 and images.shape[1:] == (1, 28, 28)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert abs(float(images.mean()) - 0.1307) < 0.005


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
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


@pytest.fixture
def mnist_copy(data_root, tmp_path):
    """A writable copy of the MNIST files: <tmp>/data/MNIST/raw/*-ubyte."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copyfile(data_root / "MNIST" / "raw" / name, raw / name)
    return tmp_path / "data"


def load_error(root, train=False) -> str:
    with pytest.raises(DataError) as err:
        load_split("torchvision.datasets.MNIST", root, train=train, download=False)
    return str(err.value)


def test_random_bytes_file_is_reported_as_corrupt_by_name(mnist_copy):
    bad = mnist_copy / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(os.urandom(bad.stat().st_size))
    message = load_error(mnist_copy)
    assert str(bad.resolve()) in message and "corrupt" in message
    assert "t10k-labels" not in message and "train-" not in message  # only the bad file is named
    assert "data.root" in message and "Delete it" in message


def test_truncated_file_is_reported_by_name_not_as_missing(mnist_copy):
    bad = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    message = load_error(mnist_copy)
    assert str(bad.resolve()) in message and "truncated" in message
    assert "could not be downloaded" not in message and "not found" not in message


def test_wrong_magic_number_is_reported_by_name(mnist_copy):
    bad = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(bad.read_bytes())
    data[3] = 3  # a labels file whose header claims 3 dimensions
    bad.write_bytes(bytes(data))
    message = load_error(mnist_copy)
    assert str(bad.resolve()) in message and "corrupt" in message


def test_images_and_labels_of_different_counts_name_both_files(mnist_copy):
    labels = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = labels.read_bytes()
    labels.write_bytes(data[:4] + struct.pack(">I", 5000) + data[8 : 8 + 5000])  # a valid file of 5000 labels
    message = load_error(mnist_copy)
    assert str(labels.resolve()) in message
    assert str((mnist_copy / "MNIST" / "raw" / "t10k-images-idx3-ubyte").resolve()) in message
    assert "10000 images but 5000 labels" in message


def test_missing_file_is_still_reported_as_not_found(mnist_copy):
    (mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    message = load_error(mnist_copy)
    assert "not found" in message and "could not be downloaded" in message and "data.root" in message


@pytest.mark.slow
def test_cli_reports_a_corrupt_file_in_one_line(run_cli, mnist_copy, tmp_path):
    bad = mnist_copy / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(os.urandom(1000))
    result = run_cli(
        "stage=vae", f"data.root={mnist_copy}", "data.download=false", f"paths.log_dir={tmp_path / 'outputs'}",
        "trainer.max_epochs=1", "data.subset=256",
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error:") and str(bad.resolve()) in last and "corrupt" in last, last
