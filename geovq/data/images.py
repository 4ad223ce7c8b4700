"""Image data: torchvision's MNIST-style datasets held in memory as one float tensor.

Any torchvision dataset with MNIST's layout (``.data`` uint8 N x H x W, ``.targets``) works:
MNIST, FashionMNIST, KMNIST are each one config file (``data.dataset_class``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
from pathlib import Path

import torch
from hydra.utils import get_class
from torch.utils.data import TensorDataset

from geovq.batching import INFERENCE_BATCH
from geovq.data.in_memory import InMemoryDataModule
from geovq.errors import ConfigError, DataError

DATA_ROOT_ENV = "GEOVQ_DATA_ROOT"


def load_split(dataset_class: str, root: str | os.PathLike, train: bool, download: bool):
    """Images as float32 N x 1 x H x W in [0, 1] and labels as int64, or a DataError."""
    try:
        cls = get_class(dataset_class)
    except Exception as err:
        raise ConfigError(
            f"data.dataset_class={dataset_class} cannot be imported ({err}); use a torchvision dataset "
            "with MNIST's layout, e.g. torchvision.datasets.MNIST or torchvision.datasets.FashionMNIST."
        ) from None
    root = Path(root).expanduser()
    try:
        dataset = _open(cls, root, train, download=False)
    except (RuntimeError, OSError) as missing:
        if not download:
            raise DataError(_missing_message(cls.__name__, root, missing)) from None
        raw = root.absolute() / cls.__name__ / "raw"
        created = [folder for folder in (*reversed(raw.parents), raw) if not folder.exists()]
        try:
            dataset = _open(cls, root, train, download=True)
        except DataError:
            raise
        except Exception as failed:  # no network, mirror down, unwritable folder, ...
            _remove(created)  # no empty <root>/<Dataset>/raw left behind, also in a shared data folder
            raise DataError(_missing_message(cls.__name__, root, failed)) from None
    images = dataset.data
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(images)
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    if len(images) != len(labels):
        split = "train" if train else "t10k"
        files = " and ".join(str(path.resolve()) for path in _raw_files(cls, root) if path.name.startswith(f"{split}-"))
        raise DataError(
            f"{cls.__name__}'s {split} split has {len(images)} images but {len(labels)} labels ({files}): "
            f"one of these files is corrupt or truncated. {_corrupt_fix(cls.__name__, 'them')}"
        )
    _check_values(cls, root, train, images, labels)
    return images.to(torch.float32).div_(255.0).unsqueeze(1), labels


def _remove(created: list[Path]) -> None:
    """The folders a failed download created (deepest first), with what it left in them."""
    for folder in reversed(created):
        shutil.rmtree(folder, ignore_errors=True)


# An image data set of this layout has a background: MNIST's images are 81% zero pixels,
# FashionMNIST's 50%. Random bytes of the right size have 0.4%.
MIN_BACKGROUND = 0.05


def _check_values(cls, root: Path, train: bool, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Files of the right size can still hold garbage: labels must name a class, and images must
    look like images (a share of background pixels), or the file is named as corrupt."""
    split = "train" if train else "t10k"
    files = {path.name.split("-")[1]: path for path in _raw_files(cls, root) if path.name.startswith(f"{split}-")}
    n_classes = len(getattr(cls, "classes", [])) or None
    if n_classes is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        bad = files.get("labels", f"{split} labels")
        raise DataError(
            f"the {cls.__name__} file {Path(bad).resolve()} is corrupt: it holds labels outside 0..{n_classes - 1}. "
            f"{_corrupt_fix(cls.__name__, 'it')}"
        )
    sample = images[:1000]
    if sample.numel() and float((sample == 0).float().mean()) < MIN_BACKGROUND:
        bad = files.get("images", f"{split} images")
        raise DataError(
            f"the {cls.__name__} file {Path(bad).resolve()} is corrupt: its pixels look like random bytes "
            f"(fewer than {MIN_BACKGROUND:.0%} background pixels in its first images). {_corrupt_fix(cls.__name__, 'it')}"
        )


def _open(cls, root: Path, train: bool, download: bool):
    """The torchvision dataset, or a DataError naming the file when its files exist but cannot be
    parsed (torchvision raises a bare AssertionError, or a RuntimeError that reads as 'not found')."""
    try:
        return cls(root=str(root), train=train, download=download)
    except Exception:
        files = _raw_files(cls, root)
        if not files or not all(path.is_file() for path in files):
            raise  # missing: reported (or downloaded) as before
        bad = [(path, problem) for path in files if (problem := _idx_problem(path))]
        if not bad:
            raise
        listing = " and ".join(f"{path.resolve()} ({problem})" for path, problem in bad)
        verb, pronoun = ("is", "it") if len(bad) == 1 else ("are", "them")
        raise DataError(
            f"the {cls.__name__} file {listing} {verb} corrupt or truncated. {_corrupt_fix(cls.__name__, pronoun)}"
        ) from None


def _raw_files(cls, root: Path) -> list[Path]:
    """The uncompressed idx files torchvision reads: <root>/<ClassName>/raw/<name without .gz>."""
    names = [Path(url).name.removesuffix(".gz") for url, _ in getattr(cls, "resources", [])]
    return [root / cls.__name__ / "raw" / name for name in names]


def _idx_problem(path: Path) -> str | None:
    """Why an idx file (uint8 data, big-endian header) cannot be read, or None if its header
    and size agree."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            header = file.read(16)
    except OSError:
        return None  # unreadable for another reason: left to the caller's original error
    if len(header) < 4 or header[:3] != b"\x00\x00\x08" or not 1 <= header[3] <= 3:
        return "no idx header: it does not start with the magic number 0x0000080N"
    n_dims = header[3]
    named = re.search(r"idx(\d)", path.name)  # train-images-idx3-ubyte: 3 dimensions
    if named and int(named.group(1)) != n_dims:
        return f"its header says {n_dims} dimensions, an idx{named.group(1)} file has {named.group(1)}"
    if len(header) < 4 + 4 * n_dims:
        return f"{size} bytes, shorter than its header"
    dims = struct.unpack(f">{n_dims}I", header[4 : 4 + 4 * n_dims])
    expected = 4 + 4 * n_dims + math.prod(dims)
    if size != expected:
        return f"{size} bytes where its header ({' x '.join(map(str, dims))}) needs {expected}"
    return None


def _corrupt_fix(name: str, pronoun: str) -> str:
    return (
        f"Delete {pronoun} so that torchvision downloads {name} again (data.download=true), or point data.root "
        f"(or the {DATA_ROOT_ENV} environment variable) at a folder that holds an intact copy of {name}/raw/."
    )


def _missing_message(name: str, root: Path, err: Exception) -> str:
    return (
        f"{name} not found under {root.resolve()}/{name}/raw and it could not be downloaded "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}). "
        f"Point data.root (or the {DATA_ROOT_ENV} environment variable) at a folder that holds "
        f"{name}/raw/, e.g. data.root=../shared/data."
    )


class ImageDataModule(InMemoryDataModule):
    """Seeded train/val split of the training images; test = the official test images.

    ``subset`` keeps a seeded random ``subset`` of the training pool (split in the same
    proportion as the full one) and the first ``test_subset`` test images, for quick runs.
    """

    def __init__(
        self,
        root: str = "data",
        dataset_class: str = "torchvision.datasets.MNIST",
        val_size: int = 5000,
        batch_size: int = 128,
        eval_batch_size: int = INFERENCE_BATCH,
        num_workers: int = 0,
        subset: int | None = None,
        test_subset: int | None = None,
        download: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size} and {eval_batch_size}.")
        if subset is not None and subset < 2:
            raise ConfigError(f"data.subset must be >= 2 images (or null for all), got {subset}.")
        if test_subset is not None and test_subset < 1:
            raise ConfigError(f"data.test_subset must be >= 1 image (or null for all), got {test_subset}.")
        if val_size < 1:
            raise ConfigError(f"data.val_size must be >= 1, got {val_size}.")
        self.save_hyperparameters()
        self.splits: dict[str, TensorDataset] = {}

    def prepare_data(self) -> None:
        # Fails fast, before any training, when the files are missing and cannot be fetched.
        for train in (True, False):
            load_split(self.hparams.dataset_class, self.hparams.root, train, self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        images, labels = load_split(hp.dataset_class, hp.root, True, hp.download)
        generator = torch.Generator().manual_seed(hp.seed)
        order = torch.randperm(len(images), generator=generator)
        val_size = hp.val_size
        if hp.subset is not None and hp.subset < len(images):
            val_size = max(1, round(hp.subset * hp.val_size / len(images)))
            order = order[: hp.subset]
        if val_size >= len(order):
            raise ConfigError(
                f"data.val_size={val_size} leaves no training images out of {len(order)}."
            )
        val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
        self.splits["train"] = TensorDataset(images[train_idx], labels[train_idx])
        self.splits["val"] = TensorDataset(images[val_idx], labels[val_idx])
        test_images, test_labels = load_split(hp.dataset_class, hp.root, False, hp.download)
        n_test = hp.test_subset if hp.test_subset is not None else hp.subset
        if n_test is not None:
            test_images, test_labels = test_images[:n_test], test_labels[:n_test]
        self.splits["test"] = TensorDataset(test_images, test_labels)

    def split(self, name: str) -> TensorDataset:
        self.setup()
        return self.splits[name]

    def dataset(self, split: str) -> TensorDataset:
        return self.split(split)
