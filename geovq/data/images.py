"""Image data held in memory as one float tensor N x C x S x S in [0, 1], with int64 labels.

Two sources, each a config of the ``data`` group:

- :class:`ImageDataModule`: a torchvision data set in its own on-disk format, named by
  ``data.dataset_class``. MNIST's layout (IDX files in ``<root>/<Class>/raw/``: MNIST,
  FashionMNIST, KMNIST; ``.gz`` copies are unpacked in place) and CIFAR's (pickled batches in
  ``<root>/cifar-10-batches-py/``: CIFAR10, CIFAR100). Train/val from its training files, test from
  its test files. Nothing is downloaded when the files are there.
- :class:`ImageFolderDataModule`: a folder of images, ``data.path``: class sub-folders (torchvision's
  ImageFolder layout: the sub-folder names are the labels) or a flat folder (no labels); an
  optional ``train/`` + ``test/`` pair of such folders, else a seeded held-out test split.

Both convert every image to ``data.channels`` (1: grey, 3: RGB) and ``data.image_size`` pixels a
side (a folder's images: the shorter side resized, then center-cropped; a data set whose images
have another size: resized), and both expose ``channels``, ``image_size`` and ``num_classes``
(None without labels; then the labels are -1). MNIST at its own 28 x 28 grey is read exactly as
before (no conversion runs).
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import re
import shutil
import struct
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import get_class
from torch import Tensor
from torch.utils.data import TensorDataset

from geovq.batching import INFERENCE_BATCH
from geovq.data.in_memory import InMemoryDataModule
from geovq.errors import ConfigError, DataError

DATA_ROOT_ENV = "GEOVQ_DATA_ROOT"
# The reconstruction likelihoods a data set may suggest to the models (geovq/models/likelihood.py).
LIKELIHOODS = ("bernoulli", "gaussian", "logistic")
CHANNELS = (1, 3)
# ITU-R 601 luma, the weights of PIL's convert("L"): colour images read as grey.
LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------------------------
# torchvision data sets in their own on-disk formats
# --------------------------------------------------------------------------------------------
def load_split(dataset_class: str, root: str | os.PathLike, train: bool, download: bool,
               channels: int | None = None, image_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Images as float32 N x C x H x W in [0, 1] and labels as int64, or a DataError.

    ``channels`` / ``image_size``: convert to these (None: as the files hold them)."""
    images, labels, _ = read_dataset(dataset_class, root, train, download)
    return fit_images(images.to(torch.float32).div_(255.0), channels, image_size), labels


def read_dataset(dataset_class: str, root: str | os.PathLike, train: bool, download: bool) -> tuple[Tensor, Tensor, list]:
    """The split's images as uint8 N x C x H x W as the files hold them, labels int64, class names."""
    cls = dataset_class_named(dataset_class)
    files = format_of(cls, Path(root).expanduser())
    files.unpack_gz()
    try:
        dataset = files.open(train, download=False)
    except (RuntimeError, OSError) as missing:
        if not download:
            raise DataError(files.missing_message(missing)) from None
        created = [folder for folder in (*reversed(files.folder.absolute().parents), files.folder.absolute()) if not folder.exists()]
        try:
            dataset = files.open(train, download=True)
        except DataError:
            raise
        except Exception as failed:  # no network, mirror down, unwritable folder, ...
            _remove(created)  # no empty <root>/<Dataset>/raw left behind, also in a shared data folder
            raise DataError(files.missing_message(failed)) from None
    images, labels = files.tensors(dataset)
    if len(images) != len(labels):
        raise DataError(files.count_message(train, len(images), len(labels)))
    classes = list(getattr(dataset, "classes", []) or [])
    files.check_values(train, images, labels, classes)
    return images, labels, classes


def dataset_class_named(dataset_class: str):
    try:
        cls = get_class(dataset_class)
    except Exception as err:
        raise ConfigError(
            f"data.dataset_class={dataset_class} cannot be imported ({err}); use a torchvision dataset "
            "with MNIST's layout (torchvision.datasets.MNIST, FashionMNIST, KMNIST) or CIFAR's "
            "(torchvision.datasets.CIFAR10, CIFAR100), or data=image_folder for a folder of images."
        ) from None
    if not isinstance(cls, type) or not (hasattr(cls, "resources") or hasattr(cls, "base_folder")):
        raise ConfigError(
            f"data.dataset_class={dataset_class} has neither MNIST's layout (IDX files) nor CIFAR's (pickled "
            "batches); use one of those torchvision data sets, or data=image_folder for a folder of images."
        )
    return cls


def format_of(cls, root: Path):
    return BatchFiles(cls, root) if hasattr(cls, "base_folder") and hasattr(cls, "train_list") else IdxFiles(cls, root)


def _remove(created: list[Path]) -> None:
    """The folders a failed download created (deepest first), with what it left in them."""
    for folder in reversed(created):
        shutil.rmtree(folder, ignore_errors=True)


def _corrupt_fix(name: str, pronoun: str, folder: str) -> str:
    return (
        f"Delete {pronoun} so that torchvision downloads {name} again (data.download=true), or point data.root "
        f"(or the {DATA_ROOT_ENV} environment variable) at a folder that holds an intact copy of {folder}/."
    )


class DatasetFiles:
    """What the on-disk layouts below share: their files, a split opened with corrupt files named,
    and the message for missing ones. A layout gives ``names()``, ``read(train, download)`` (the
    torchvision dataset) and ``problem(path)`` (why a present file does not parse, or None)."""

    also_accepted = ""  # another form a missing file may take, for the message

    def files(self) -> list[Path]:
        return [self.folder / name for name in self.names()]

    def open(self, train: bool, download: bool):
        """The torchvision dataset, or a DataError naming the file when its files exist but cannot be
        parsed (torchvision raises a bare AssertionError, or a RuntimeError that reads as 'not found')."""
        try:
            return self.read(train, download)
        except Exception:
            files = self.files()
            if not files or not all(path.is_file() for path in files):
                raise  # missing: reported (or downloaded) as before
            bad = [(path, problem) for path in files if (problem := self.problem(path))]
            if not bad:
                raise
            listing = " and ".join(f"{path.resolve()} ({problem})" for path, problem in bad)
            verb, pronoun = ("is", "it") if len(bad) == 1 else ("are", "them")
            raise DataError(
                f"the {self.name} file {listing} {verb} corrupt or truncated. {_corrupt_fix(self.name, pronoun, self.relative)}"
            ) from None

    def missing_message(self, err: Exception) -> str:
        missing = [path.name for path in self.files() if not path.is_file()]
        expected = f" (missing there: {', '.join(missing)}{self.also_accepted})" if missing else ""
        return (
            f"{self.name} not found under {self.folder.resolve()}{expected} and it could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}). "
            f"Point data.root (or the {DATA_ROOT_ENV} environment variable) at a folder that holds "
            f"{self.relative}/, e.g. data.root=../shared/data."
        )


class IdxFiles(DatasetFiles):
    """MNIST's layout: ``<root>/<Class>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``."""

    # An image data set of this layout has a background: MNIST's images are 81% zero pixels,
    # FashionMNIST's 50%. Random bytes of the right size have 0.4%.
    min_background = 0.05

    def __init__(self, cls, root: Path):
        self.cls, self.root, self.name = cls, root, cls.__name__
        self.folder = root / self.name / "raw"
        self.relative = f"{self.name}/raw"

    def names(self) -> list[str]:
        """The uncompressed idx files torchvision reads (its resources without .gz)."""
        return [Path(url).name.removesuffix(".gz") for url, _ in getattr(self.cls, "resources", [])]

    def split_files(self, train: bool) -> dict[str, Path]:
        """{'images': path, 'labels': path} of one split."""
        split = "train" if train else "t10k"
        return {path.name.split("-")[1]: path for path in self.files() if path.name.startswith(f"{split}-")}

    def unpack_gz(self) -> None:
        """``<name>.gz`` beside a missing ``<name>`` is unpacked in place: the files as they are
        distributed need no network (torchvision only unpacks what it downloaded itself)."""
        for path in self.files():
            packed = path.with_name(path.name + ".gz")
            if path.exists() or not packed.is_file():
                continue
            partial = path.with_name(f".{path.name}.{os.getpid()}.part")
            try:
                with gzip.open(packed, "rb") as source, partial.open("wb") as target:
                    shutil.copyfileobj(source, target)
                os.replace(partial, path)
            except (EOFError, gzip.BadGzipFile, zlib.error) as err:
                partial.unlink(missing_ok=True)
                raise DataError(f"the {self.name} file {packed.resolve()} is corrupt or truncated: it does not "
                                f"unpack as gzip ({type(err).__name__}). {_corrupt_fix(self.name, 'it', self.relative)}") from None
            except OSError as err:
                partial.unlink(missing_ok=True)
                raise DataError(f"cannot unpack {packed.resolve()} into {path.parent.resolve()} ({err}); unpack it "
                                "there yourself (gunzip -k), or point data.root at a writable copy.") from None

    also_accepted = ", or the same with .gz"

    def read(self, train: bool, download: bool):
        return self.cls(root=str(self.root), train=train, download=download)

    def problem(self, path: Path) -> str | None:
        return _idx_problem(path)

    @staticmethod
    def tensors(dataset) -> tuple[Tensor, Tensor]:
        images = dataset.data
        if not isinstance(images, torch.Tensor):
            images = torch.as_tensor(images)
        return images.unsqueeze(1), torch.as_tensor(dataset.targets, dtype=torch.int64)

    def count_message(self, train: bool, n_images: int, n_labels: int) -> str:
        split = "train" if train else "t10k"
        files = " and ".join(str(path.resolve()) for path in self.split_files(train).values())
        return (f"{self.name}'s {split} split has {n_images} images but {n_labels} labels ({files}): "
                f"one of these files is corrupt or truncated. {_corrupt_fix(self.name, 'them', self.relative)}")

    def check_values(self, train: bool, images: Tensor, labels: Tensor, classes: list) -> None:
        """Files of the right size can still hold garbage: labels must name a class, and images must
        look like images (a share of background pixels), or the file is named as corrupt."""
        split = "train" if train else "t10k"
        files = self.split_files(train)
        n_classes = len(classes) or None
        if n_classes is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            bad = files.get("labels", f"{split} labels")
            raise DataError(
                f"the {self.name} file {Path(bad).resolve()} is corrupt: it holds labels outside 0..{n_classes - 1}. "
                f"{_corrupt_fix(self.name, 'it', self.relative)}"
            )
        sample = images[:1000]
        if sample.numel() and float((sample == 0).float().mean()) < self.min_background:
            bad = files.get("images", f"{split} images")
            raise DataError(
                f"the {self.name} file {Path(bad).resolve()} is corrupt: its pixels look like random bytes "
                f"(fewer than {self.min_background:.0%} background pixels in its first images). "
                f"{_corrupt_fix(self.name, 'it', self.relative)}"
            )


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


class BatchFiles(DatasetFiles):
    """CIFAR's layout: pickled batches ``<root>/<base_folder>/`` (CIFAR10: data_batch_1..5,
    test_batch, batches.meta), read by torchvision's class itself.

    torchvision accepts these files only when their md5 sums are those of the official release;
    here a file that is present counts (a re-packed or a test's copy reads as the files it is), and
    a file that does not parse is named by :func:`_batch_problem`. A download (data.download=true,
    only when files are missing) is still the official archive, checked by its md5.
    """

    def __init__(self, cls, root: Path):
        self.cls, self.root, self.name = cls, root, cls.__name__
        self.folder = root / cls.base_folder
        self.relative = cls.base_folder
        self.reader = _present_files_reader(cls)

    def split_names(self, train: bool) -> list[str]:
        return [name for name, _ in (self.cls.train_list if train else self.cls.test_list)]

    def names(self) -> list[str]:
        return [*self.split_names(True), *self.split_names(False), self.cls.meta["filename"]]

    def unpack_gz(self) -> None:
        pass  # torchvision unpacks the archive it downloads; the batches themselves are not packed

    def read(self, train: bool, download: bool):
        return self.reader(root=str(self.root), train=train, download=download)

    def problem(self, path: Path) -> str | None:
        return _batch_problem(path, self.cls.meta)

    @staticmethod
    def tensors(dataset) -> tuple[Tensor, Tensor]:
        images = torch.as_tensor(dataset.data).permute(0, 3, 1, 2).contiguous()  # N x H x W x C -> N x C x H x W
        return images, torch.as_tensor(dataset.targets, dtype=torch.int64)

    def count_message(self, train: bool, n_images: int, n_labels: int) -> str:
        files = " and ".join(str((self.folder / name).resolve()) for name in self.split_names(train))
        return (f"{self.name}'s {'train' if train else 'test'} split has {n_images} images but {n_labels} labels "
                f"({files}): one of these files is corrupt. {_corrupt_fix(self.name, 'them', self.relative)}")

    def check_values(self, train: bool, images: Tensor, labels: Tensor, classes: list) -> None:
        if classes and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            files = " or ".join(str((self.folder / name).resolve()) for name in self.split_names(train))
            raise DataError(
                f"the {self.name} files {files} are corrupt: they hold labels outside 0..{len(classes) - 1} "
                f"({len(classes)} classes in {(self.folder / self.cls.meta['filename']).resolve()}). "
                f"{_corrupt_fix(self.name, 'them', self.relative)}"
            )


def _present_files_reader(cls):
    """``cls`` with its md5 checks replaced by presence checks (see :class:`BatchFiles`)."""

    class PresentFiles(cls):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if not path.is_file():
                raise RuntimeError(f"Dataset metadata file {path} not found")
            with path.open("rb") as infile:
                self.classes = pickle.load(infile, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    PresentFiles.__name__ = PresentFiles.__qualname__ = cls.__name__
    return PresentFiles


def _batch_problem(path: Path, meta: dict) -> str | None:
    """Why a pickled batch (or the meta file) cannot be read, or None if it parses."""
    try:
        with path.open("rb") as file:
            entry = pickle.load(file, encoding="latin1")
    except OSError:
        return None
    except Exception as err:  # UnpicklingError, EOFError, ValueError, ...
        return f"it does not unpickle: {type(err).__name__}"
    if not isinstance(entry, dict):
        return f"it holds a {type(entry).__name__}, not a dict"
    if path.name == meta["filename"]:
        return None if meta["key"] in entry else f"it has no '{meta['key']}'"
    data = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    if data is None or labels is None:
        return "it has no 'data' and 'labels'"
    shape = getattr(data, "shape", ())
    if len(shape) != 2 or shape[1] != 3 * 32 * 32:
        return f"its data is {tuple(shape)}, not N x 3072 (32 x 32 RGB)"
    if shape[0] != len(labels):
        return f"{shape[0]} images but {len(labels)} labels"
    return None


# --------------------------------------------------------------------------------------------
# channels and size
# --------------------------------------------------------------------------------------------
def fit_images(images: Tensor, channels: int | None, image_size: int | None) -> Tensor:
    """Float images N x C x H x W as ``channels`` x ``image_size`` x ``image_size``: grey repeated
    to RGB, RGB to grey by ITU-R 601 luma, a square image resized (bilinear, antialiased). Images
    that already fit are returned as they are (no operation runs)."""
    if channels is not None and images.shape[1] != channels:
        if channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1).contiguous()
        elif channels == 1 and images.shape[1] == 3:
            weights = torch.tensor(LUMA, dtype=images.dtype).view(1, 3, 1, 1)
            images = (images * weights).sum(dim=1, keepdim=True)
        else:
            raise ConfigError(f"data.channels={channels}: images of {images.shape[1]} channels cannot be converted to it.")
    if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
        resized = []
        for start in range(0, len(images), 1000):
            part = F.interpolate(images[start : start + 1000], size=(image_size, image_size), mode="bilinear",
                                 align_corners=False, antialias=True)
            resized.append(part.clamp_(0.0, 1.0))
        images = torch.cat(resized) if resized else images.new_zeros((0, images.shape[1], image_size, image_size))
    return images


# --------------------------------------------------------------------------------------------
# data modules
# --------------------------------------------------------------------------------------------
def _count(size: int | float, n: int, key: str) -> int:
    """A split size given as a count (an integer >= 1) or as a fraction in (0, 1) of ``n``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0 or (isinstance(size, float) and size >= 1):
        raise ConfigError(f"{key}={size!r} must be a number of images (an integer >= 1) or a fraction in (0, 1).")
    return int(size) if isinstance(size, int) else max(1, round(size * n))


class InMemoryImages(InMemoryDataModule):
    """Seeded train/val split of a pool of training images; test = the source's test images.

    ``subset`` keeps a seeded random ``subset`` of the training pool (split in the same proportion
    as the full one) and the first ``test_subset`` test images, for quick runs. Subclasses read the
    images (``_read``); ``channels``, ``image_size`` and ``num_classes`` describe what they hold.
    """

    def __init__(self, channels: int, image_size: int, likelihood: str, val_size, batch_size: int,
                 eval_batch_size: int, subset: int | None, test_subset: int | None):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size} and {eval_batch_size}.")
        if subset is not None and subset < 2:
            raise ConfigError(f"data.subset must be >= 2 images (or null for all), got {subset}.")
        if test_subset is not None and test_subset < 1:
            raise ConfigError(f"data.test_subset must be >= 1 image (or null for all), got {test_subset}.")
        _count(val_size, 1, "data.val_size")
        if channels not in CHANNELS:
            raise ConfigError(f"data.channels={channels!r}: images are read with 1 (grey) or 3 (RGB) channels.")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
            raise ConfigError(f"data.image_size={image_size!r} must be an integer >= 4 (pixels a side).")
        if likelihood not in LIKELIHOODS:
            raise ConfigError(f"data.likelihood={likelihood!r} must be one of {', '.join(LIKELIHOODS)}.")
        self.splits: dict[str, TensorDataset] = {}
        self._classes: list | None = None

    # -- what subclasses provide -------------------------------------------------------------
    def _read(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None, list | None]:
        """(train pool images and labels, test images and labels or None for a held-out split,
        class names or None without labels); images float N x C x S x S in [0, 1]."""
        raise NotImplementedError

    # -- what every image data module exposes ------------------------------------------------
    @property
    def channels(self) -> int:
        return self.hparams.channels

    @property
    def image_size(self) -> int:
        return self.hparams.image_size

    @property
    def likelihood(self) -> str:
        """The reconstruction likelihood these pixels suit (model.likelihood follows it)."""
        return self.hparams.likelihood

    @property
    def num_classes(self) -> int | None:
        """The number of classes of the labels, None when the images have none."""
        self.setup()
        return len(self._classes) if self._classes else None

    @property
    def class_names(self) -> list | None:
        self.setup()
        return list(self._classes) if self._classes else None

    def prepare_data(self) -> None:
        # Fails fast, before any training, when the files are missing (and cannot be fetched) or corrupt.
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        (images, labels), test, classes = self._read()
        generator = torch.Generator().manual_seed(hp.seed)
        order = torch.randperm(len(images), generator=generator)
        val_size = _count(hp.val_size, len(images), "data.val_size")
        if hp.subset is not None and hp.subset < len(images):
            val_size = max(1, round(hp.subset * val_size / len(images)))
            order = order[: hp.subset]
        if val_size >= len(order):
            raise ConfigError(
                f"data.val_size={val_size} leaves no training images out of {len(order)}."
            )
        val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
        self.splits["train"] = TensorDataset(images[train_idx], labels[train_idx])
        self.splits["val"] = TensorDataset(images[val_idx], labels[val_idx])
        test_images, test_labels = test
        n_test = hp.test_subset if hp.test_subset is not None else hp.subset
        if n_test is not None:
            test_images, test_labels = test_images[:n_test], test_labels[:n_test]
        self.splits["test"] = TensorDataset(test_images, test_labels)
        self._classes = classes

    def split(self, name: str) -> TensorDataset:
        self.setup()
        return self.splits[name]

    def dataset(self, split: str) -> TensorDataset:
        return self.split(split)


class ImageDataModule(InMemoryImages):
    """A torchvision data set (``dataset_class``) read from ``root`` in its own format (above):
    train/val from its training files, test = its official test images."""

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
        channels: int = 1,
        image_size: int = 28,
        likelihood: str = "bernoulli",
    ):
        super().__init__(channels, image_size, likelihood, val_size, batch_size, eval_batch_size, subset, test_subset)
        self.save_hyperparameters()

    def _read(self):
        hp = self.hparams
        images, labels, classes = read_dataset(hp.dataset_class, hp.root, True, hp.download)
        test_images, test_labels, _ = read_dataset(hp.dataset_class, hp.root, False, hp.download)
        return ((self._as_unit(images), labels), (self._as_unit(test_images), test_labels), classes or None)

    def _as_unit(self, images: Tensor) -> Tensor:
        """uint8 images as float32 in [0, 1], converted to data.channels and data.image_size."""
        return fit_images(images.to(torch.float32).div_(255.0), self.hparams.channels, self.hparams.image_size)


# --------------------------------------------------------------------------------------------
# a folder of images
# --------------------------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
# A folder holding these two sub-folders is read as its train and test splits.
SPLIT_FOLDERS = ("train", "test")
# The held-out test split of a folder without test/ is drawn with this seed, whatever the run's
# seed: every run (and every seed of a study) evaluates on the same images.
TEST_SPLIT_SEED = 0


def folder_images(folder: Path) -> tuple[list[tuple[Path, int]], list[str] | None]:
    """The image files of a folder, with their class index: torchvision's ImageFolder layout
    (sub-folders = classes, sorted by name) when it has sub-folders, else the flat folder's images
    (label -1, classes None)."""
    from torchvision.datasets.folder import find_classes, make_dataset

    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise DataError(
            f"the image folder {folder.resolve()} {what}. Point data.path at a folder of images ({', '.join(IMAGE_EXTENSIONS)}), "
            "flat or in one sub-folder per class."
        )
    subfolders = [entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")]
    if subfolders:
        classes, class_to_idx = find_classes(str(folder))
        classes = [name for name in classes if not name.startswith(".")]
        class_to_idx = {name: i for i, name in enumerate(classes)}
        try:
            samples = make_dataset(str(folder), class_to_idx, extensions=IMAGE_EXTENSIONS)
        except FileNotFoundError as err:  # a class sub-folder without images
            raise DataError(
                f"the image folder {folder.resolve()} is read as one sub-folder per class, and {str(err).split('.')[0]} "
                f"(images are {', '.join(IMAGE_EXTENSIONS)}). Remove the empty sub-folder or add its images."
            ) from None
        return [(Path(path), index) for path, index in samples], classes
    files = sorted(entry for entry in folder.iterdir() if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(
            f"no images in {folder.resolve()}: expected image files ({', '.join(IMAGE_EXTENSIONS)}) in it, or in "
            "one sub-folder per class. Point data.path at a folder of images."
        )
    return [(path, -1) for path in files], None


def read_image(path: Path, channels: int, image_size: int) -> Tensor:
    """One image file as uint8 C x S x S: converted to grey or RGB, the shorter side resized to
    ``image_size`` (antialiased bilinear), then center-cropped to a square."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
    except Exception as err:  # UnidentifiedImageError, a truncated file, ...
        raise DataError(
            f"the image file {path.resolve()} is corrupt or not an image ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}). Delete or replace it."
        ) from None
    if image.size != (image_size, image_size):
        image = TF.center_crop(TF.resize(image, image_size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True), image_size)
    return TF.pil_to_tensor(image)


def read_folder(folder: Path, channels: int, image_size: int, classes: list[str] | None = None):
    """(images float N x C x S x S in [0, 1], labels int64, class names or None) of a folder."""
    files, found = folder_images(folder)
    if classes is not None and found != classes:
        raise DataError(
            f"the class sub-folders of {folder.resolve()} ({', '.join(found or ['none'])}) are not those of the "
            f"train folder ({', '.join(classes)}); give both splits the same classes."
        )
    images = torch.empty((len(files), channels, image_size, image_size), dtype=torch.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = read_image(path, channels, image_size)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return images.to(torch.float32).div_(255.0), labels, found


class ImageFolderDataModule(InMemoryImages):
    """Images of a folder (``path``), converted to ``channels`` and ``image_size``.

    ``path`` holds the images flat (no labels) or in one sub-folder per class (ImageFolder); a
    ``path`` holding ``train/`` and ``test/`` is read as those two splits. Without ``test/``, a
    seeded ``test_size`` (a count, or a fraction of the images) is held out as the test split,
    the same for every run seed (TEST_SPLIT_SEED). ``val_size`` (count or fraction) comes out of
    the rest, seeded by ``seed``, as for a torchvision data set.
    """

    def __init__(
        self,
        path: str | None = None,
        channels: int = 3,
        image_size: int = 32,
        likelihood: str = "gaussian",
        val_size: int | float = 0.1,
        test_size: int | float = 0.1,
        batch_size: int = 128,
        eval_batch_size: int = INFERENCE_BATCH,
        num_workers: int = 0,
        subset: int | None = None,
        test_subset: int | None = None,
        seed: int = 0,
    ):
        super().__init__(channels, image_size, likelihood, val_size, batch_size, eval_batch_size, subset, test_subset)
        _count(test_size, 1, "data.test_size")
        self.save_hyperparameters()

    def _read(self):
        hp = self.hparams
        if not hp.path:
            raise ConfigError("data=image_folder reads the images of data.path: give data.path=<folder of images>.")
        folder = Path(str(hp.path)).expanduser()
        if all((folder / name).is_dir() for name in SPLIT_FOLDERS):
            images, labels, classes = read_folder(folder / "train", hp.channels, hp.image_size)
            test_images, test_labels, _ = read_folder(folder / "test", hp.channels, hp.image_size, classes)
            return (images, labels), (test_images, test_labels), classes
        images, labels, classes = read_folder(folder, hp.channels, hp.image_size)
        n_test = _count(hp.test_size, len(images), "data.test_size")
        if n_test >= len(images) - 1:
            raise ConfigError(f"data.test_size={hp.test_size} leaves fewer than 2 of the {len(images)} images of "
                              f"{folder.resolve()} for training; lower it or add images.")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
        test_idx, pool_idx = order[:n_test].sort().values, order[n_test:].sort().values
        return (images[pool_idx], labels[pool_idx]), (images[test_idx], labels[test_idx]), classes
