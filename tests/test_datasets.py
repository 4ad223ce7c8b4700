"""Data sets beyond MNIST: every on-disk format built tiny in a temporary folder, read by its data
module, and run end to end (stage=vae, quantize, vqvae, prior, sample, and experiment=quick
debug=tiny) with models that follow its channels, size and likelihood.

The formats: torchvision's IDX files (MNIST raw, FashionMNIST and KMNIST as the .gz files they are
distributed as), CIFAR-10's pickled batches (not the official files, so not their md5 sums), and
folders of PNGs in two classes (RGB 32x32 with a held-out test split; grey 64x64 in train/ and
test/). The images are a bright square or disc on a black background, the class saying which.
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image

from geovq.artifacts import load_artifact, load_code_grids
from geovq.config_check import check_settings
from geovq.errors import ConfigError, DataError
from geovq.models.io import load_model
from geovq.train import run_stage

# -- building the files -----------------------------------------------------------------------
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def shapes(n: int, size: int, channels: int, rng, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images N x S x S x C: a bright square (even labels) or disc (odd) on black."""
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, n_classes, n)
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = rng.integers(size // 8, size // 4 + 1)
        square = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        images[i][square if labels[i] % 2 == 0 else disc] = rng.integers(128, 256, channels)
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: magic 0x0000080N (uint8, N dimensions), big-endian sizes, the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(root: Path, name: str, n_train: int, n_test: int, gz: bool, seed: int = 0) -> Path:
    """<root>/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz], as torchvision reads them."""
    rng = np.random.default_rng(seed)
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = shapes(n, 28, 1, rng, 10)
        for kind, data in (("images-idx3", images[..., 0]), ("labels-idx1", labels)):
            payload, path = idx_bytes(data), raw / f"{split}-{kind}-ubyte"
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
            else:
                path.write_bytes(payload)
    return root


def write_cifar(root: Path, per_batch: int, n_test: int, seed: int = 0) -> Path:
    """<root>/cifar-10-batches-py/: data_batch_1..5 and test_batch (dicts of 'data' N x 3072 uint8,
    channel-major, and 'labels'), batches.meta ('label_names'), pickled as CIFAR-10 ships them."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        images, labels = shapes(n, 32, 3, rng, 10)
        entry = {"batch_label": name, "labels": [int(label) for label in labels],
                 "data": images.transpose(0, 3, 1, 2).reshape(n, 3072), "filenames": [f"{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch,
                                                        "num_vis": 3072}))
    return root


def write_folder(root: Path, n: int, size: int, mode: str, classes=("discs", "squares"), seed: int = 0) -> Path:
    """n PNG files, in one sub-folder per class (ImageFolder) or flat (``classes`` None)."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    images, labels = shapes(n, size, channels, rng, 2)
    for i in range(n):
        folder = root / classes[1 - labels[i] % 2] if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i] if channels == 3 else images[i][..., 0], mode=mode).save(folder / f"img_{i:03d}.png")
    return root


@dataclass
class Dataset:
    """A built data set: the overrides that read it, and what its data module and models hold."""

    overrides: list[str]
    channels: int
    image_size: int
    downsample: int
    likelihood: str
    n_classes: int | None
    model: list[str] = field(default_factory=list)  # the GridVAE / VQ-VAE's own overrides

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample


def build(name: str, root: Path) -> Dataset:
    if name in ("mnist", "fashion_mnist", "kmnist"):
        folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}[name]
        write_idx(root, folder, 64, 24, gz=name != "mnist", seed=len(name))
        return Dataset([f"data={name}", f"data.root={root}", "data.download=false", "data.val_size=8"], 1, 28, 4, "bernoulli", 10)
    if name == "cifar10":
        write_cifar(root, 12, 24)
        return Dataset(["data=cifar10", f"data.root={root}", "data.download=false", "data.val_size=8"], 3, 32, 4, "gaussian", 10)
    if name == "folder_rgb32":  # two classes, a held-out test split; the logistic likelihood, a 4x4 grid
        write_folder(root / "images", 60, 32, "RGB")
        return Dataset(["data=image_folder", f"data.path={root / 'images'}", "data.likelihood=logistic"], 3, 32, 8,
                       "logistic", 2, ["model.downsample=8"])
    if name == "folder_grey64":  # two classes in train/ and test/, an 8x8 grid
        write_folder(root / "images" / "train", 48, 64, "L", seed=1)
        write_folder(root / "images" / "test", 16, 64, "L", seed=2)
        return Dataset(["data=image_folder", f"data.path={root / 'images'}", "data.channels=1", "data.image_size=64"],
                       1, 64, 8, "gaussian", 2, ["model.downsample=8"])
    raise KeyError(name)


NAMES = ["mnist", "fashion_mnist", "kmnist", "cifar10", "folder_rgb32", "folder_grey64"]
TINY_AE = ["model.latent_dim=4", "model.hidden_channels=8", "model.n_res_blocks=0"]
QUIET = ["callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every data set, built once: name -> Dataset."""
    return {name: build(name, tmp_path_factory.mktemp(name)) for name in NAMES}


def datamodule(compose_config, tmp_path, dataset: Dataset, *extra: str):
    cfg = compose_config(tmp_path / "run", ["stage=vae", *dataset.overrides, *extra])
    check_settings(cfg)
    data = instantiate(cfg.data)
    data.prepare_data()
    return cfg, data


# -- reading them -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_each_format_reads_as_a_data_module_the_models_follow(compose_config, built, tmp_path, name):
    dataset = built[name]
    cfg, data = datamodule(compose_config, tmp_path, dataset, *dataset.model)
    assert (data.channels, data.image_size, data.num_classes) == (dataset.channels, dataset.image_size, dataset.n_classes)
    for split in ("train", "val", "test"):
        images, labels = data.split(split).tensors
        assert images.dtype == torch.float32 and images.shape[1:] == (dataset.channels, dataset.image_size, dataset.image_size)
        assert 0 <= float(images.min()) and float(images.max()) <= 1 and float(images.max()) > 0.5
        assert labels.dtype == torch.int64 and 0 <= int(labels.min()) and int(labels.max()) < dataset.n_classes
    # The models are built for these images: model.in_channels, model.likelihood and the grid follow data=.
    assert (cfg.model.in_channels, cfg.model.likelihood) == (dataset.channels, dataset.likelihood)
    model = instantiate(cfg.model)
    grid = model.encode(data.split("test").tensors[0][:2])[0]
    assert grid.shape[-2:] == (dataset.grid, dataset.grid)
    assert model.reconstruct(data.split("test").tensors[0][:2]).shape == (2, dataset.channels, dataset.image_size, dataset.image_size)


def test_split_sizes_subset_and_the_held_out_test_split(compose_config, built, tmp_path):
    rgb = built["folder_rgb32"]
    _, data = datamodule(compose_config, tmp_path, rgb)
    # 60 images: 6 held out for test (0.1), 5 of the other 54 for validation (0.1), 49 train.
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [49, 5, 6]
    _, again = datamodule(compose_config, tmp_path, rgb, "seed=1", "data.subset=20", "data.test_subset=3")
    assert [len(again.split(s)) for s in ("train", "val", "test")] == [18, 2, 3]
    # Another run seed draws another validation split but the same test images.
    assert torch.equal(again.split("test").tensors[0], data.split("test").tensors[0][:3])
    grey = built["folder_grey64"]
    _, data = datamodule(compose_config, tmp_path, grey, "data.val_size=4")
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [44, 4, 16]  # test/ is the test split
    cifar = built["cifar10"]
    _, data = datamodule(compose_config, tmp_path, cifar, "data.subset=30")
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [26, 4, 24]  # val 8 of 60 -> 4 of 30


def test_gz_files_are_unpacked_in_place_and_no_network_is_asked(compose_config, built, tmp_path, monkeypatch):
    import torchvision

    def no_download(self):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.datasets.KMNIST, "download", no_download)
    kmnist = built["kmnist"]
    _, data = datamodule(compose_config, tmp_path, kmnist, "data.download=true")
    assert len(data.split("test")) == 24
    raw = Path(kmnist.overrides[1].split("=", 1)[1]) / "KMNIST" / "raw"
    assert (raw / "t10k-images-idx3-ubyte").is_file() and (raw / "t10k-images-idx3-ubyte.gz").is_file()


def test_channels_and_size_are_converted(compose_config, built, tmp_path):
    _, grey = datamodule(compose_config, tmp_path, built["cifar10"], "data.channels=1", "data.image_size=28")
    assert grey.split("train").tensors[0].shape[1:] == (1, 28, 28)
    _, colour = datamodule(compose_config, tmp_path, built["mnist"], "data.channels=3", "data.image_size=32")
    images = colour.split("train").tensors[0]
    assert images.shape[1:] == (3, 32, 32) and torch.equal(images[:, 0], images[:, 2])


def test_a_flat_folder_has_no_labels(compose_config, tmp_path):
    folder = write_folder(tmp_path / "flat", 20, 40, "RGB", classes=None)
    cfg = compose_config(tmp_path / "run", ["stage=classifier", "data=image_folder", f"data.path={folder}", "data.image_size=32"])
    data = instantiate(cfg.data)
    assert data.num_classes is None and set(data.split("train").tensors[1].tolist()) == {-1}
    assert data.split("test").tensors[0].shape[1:] == (3, 32, 32)  # 40x40 center-cropped to 32x32 after resizing


# -- missing and corrupt files: one error naming the folder and the file ----------------------
def test_missing_files_name_the_folder_and_the_file_expected(compose_config, built, tmp_path):
    for name, missing in (("cifar10", "cifar-10-batches-py/data_batch_3"), ("kmnist", "KMNIST/raw/t10k-labels-idx1-ubyte")):
        root = Path(built[name].overrides[1].split("=", 1)[1])
        copy = tmp_path / name
        shutil.copytree(root, copy)
        for path in (copy / missing, copy / (missing + ".gz")):
            path.unlink(missing_ok=True)
        overrides = [item if not item.startswith("data.root=") else f"data.root={copy}" for item in built[name].overrides]
        with pytest.raises(DataError) as err:
            datamodule(compose_config, tmp_path, Dataset(overrides, 1, 28, 4, "bernoulli", 10))
        message = str(err.value)
        folder, file = missing.rsplit("/", 1)
        assert str((copy / folder).resolve()) in message and file in message and "data.root" in message, message
    with pytest.raises(DataError, match="does not exist"):
        datamodule(compose_config, tmp_path, Dataset(["data=image_folder", f"data.path={tmp_path / 'nowhere'}"], 3, 32, 4, "", 0))
    with pytest.raises(ConfigError, match="data.path"):
        datamodule(compose_config, tmp_path, Dataset(["data=image_folder"], 3, 32, 4, "", 0))


def test_corrupt_files_are_named(compose_config, tmp_path):
    root = write_cifar(tmp_path / "cifar", 4, 4)
    bad = root / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DataError, match=f"{bad.resolve()} .*corrupt"):
        datamodule(compose_config, tmp_path, Dataset(["data=cifar10", f"data.root={root}", "data.download=false",
                                                      "data.val_size=2"], 3, 32, 4, "", 10))
    root = write_idx(tmp_path / "k", "KMNIST", 8, 4, gz=True)
    packed = root / "KMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:40])
    with pytest.raises(DataError, match=f"{packed.resolve()} is corrupt"):
        datamodule(compose_config, tmp_path, Dataset(["data=kmnist", f"data.root={root}", "data.download=false",
                                                      "data.val_size=2"], 1, 28, 4, "", 10))
    folder = write_folder(tmp_path / "images", 10, 32, "RGB")
    broken = folder / "discs" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=f"{broken.resolve()} is corrupt"):
        datamodule(compose_config, tmp_path, Dataset(["data=image_folder", f"data.path={folder}"], 3, 32, 4, "", 2))


# -- configs that cannot fit the data: one line naming the key --------------------------------
@pytest.mark.parametrize("overrides,key", [
    (["stage=vae", "data=cifar10", "data.image_size=30"], "data.image_size=30"),
    (["stage=vae", "data=cifar10", "model.downsample=8", "data.image_size=36"], "data.image_size=36"),
    (["stage=vqvae", "data=cifar10", "model.downsample=6"], "model.downsample=6"),
    (["stage=classifier", "data=image_folder", "data.image_size=34"], "data.image_size=34"),
    (["stage=vae", "data=image_folder", "data.channels=4"], "data.channels=4"),
])
def test_a_grid_that_is_not_an_integer_is_one_error_naming_the_key(compose_config, tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_settings(compose_config(tmp_path / "run", overrides))


def test_the_experiments_compose_on_cifar10(compose_config, tmp_path):
    for experiment in ("quick", "paper"):
        cfg = compose_config(tmp_path / experiment, [f"experiment={experiment}", "data=cifar10"])
        assert cfg.stage.name == "pipeline" and cfg.data.dataset_class.endswith("CIFAR10")
        check_settings(cfg)
    for stage, expected in (("vae", 3), ("vqvae", 3), ("classifier", 3)):
        cfg = compose_config(tmp_path / stage, [f"stage={stage}", "data=cifar10"])
        check_settings(cfg)
        assert cfg.model.in_channels == expected
    assert compose_config(tmp_path / "c", ["stage=classifier", "data=cifar10"]).model.image_size == 32
    assert compose_config(tmp_path / "v", ["stage=vae", "data=cifar10"]).model.likelihood == "gaussian"
    assert compose_config(tmp_path / "p", ["stage=prior"]).model.grid_size is None  # the side of the code grids


# -- the models' pieces --------------------------------------------------------------------------
def test_likelihoods_nll_in_nats_per_image():
    from geovq.models.likelihood import PixelLikelihood

    torch.manual_seed(0)
    logits, x = torch.randn(2, 3, 4, 4), torch.randint(0, 256, (2, 3, 4, 4)).float() / 255
    assert torch.equal(PixelLikelihood("bernoulli", 3).nll(logits, x), F.binary_cross_entropy_with_logits(logits, x, reduction="sum"))
    assert list(PixelLikelihood("bernoulli", 3).parameters()) == []  # a Bernoulli model's weights are what they were
    gaussian = PixelLikelihood("gaussian", 3)
    sigma = 0.1
    expected = -torch.distributions.Normal(torch.sigmoid(logits), sigma).log_prob(x).sum()
    torch.testing.assert_close(gaussian.nll(logits, x), expected)
    # The discretised logistic is a distribution over the 256 values of a pixel: they sum to 1.
    logistic = PixelLikelihood("logistic", 1)
    values = torch.arange(256).float().view(256, 1, 1, 1) / 255
    for location_logit in (-3.0, 0.0, 0.7, 4.0):
        logit = torch.full_like(values, location_logit)
        per_value = torch.stack([logistic.nll(logit[i : i + 1], values[i : i + 1]) for i in range(256)])
        assert float(torch.exp(-per_value).sum()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="likelihood"):
        PixelLikelihood("poisson")


@pytest.mark.parametrize("downsample,side", [(2, 16), (4, 8), (8, 4)])
def test_the_encoder_and_decoder_halve_the_side_log2_downsample_times(downsample, side):
    from geovq.models.vqvae import VQVAE

    model = VQVAE(latent_dim=4, hidden_channels=8, n_res_blocks=0, in_channels=3, downsample=downsample,
                  likelihood="gaussian", quantizer={"n_codes": 8})
    x = torch.rand(2, 3, 32, 32)
    assert model.codes(x).shape == (2, side, side)
    assert model.decode_codes(model.codes(x)).shape == (2, 3, 32, 32)
    assert model.loss_terms(x)["rec"].isfinite()


def test_mnist_models_get_the_weights_they_always_got():
    """The same seed builds the same MNIST models as before models followed the data (the sums of
    their weights and of one forward pass, recorded from the code before issue 25)."""
    from geovq.models.classifier import MNISTClassifier
    from geovq.models.grid_vae import GridVAE
    from geovq.models.vqvae import VQVAE

    recorded = {"grid_vae": (674.484619, 817.13422), "vqvae": (662.409903, 704.249149), "classifier": (4423.252545, 0.587686)}
    builders = {"grid_vae": lambda: GridVAE(latent_dim=8, hidden_channels=16, n_res_blocks=1),
                "vqvae": lambda: VQVAE(latent_dim=8, hidden_channels=16, n_res_blocks=1, quantizer={"n_codes": 16}),
                "classifier": lambda: MNISTClassifier()}
    for name, make in builders.items():
        torch.manual_seed(0)
        model = make().eval()
        x = torch.rand(2, 1, 28, 28)
        with torch.no_grad():
            y = model.reconstruct(x) if hasattr(model, "reconstruct") else model(x)
        weights = sum(p.double().abs().sum() for p in model.state_dict().values() if p.is_floating_point())
        assert (float(weights), float(y.double().sum())) == pytest.approx(recorded[name], rel=1e-6), name


# -- end to end on each data set ----------------------------------------------------------------
@pytest.fixture(scope="module", params=NAMES)
def stages(request, built, compose_config, tmp_path_factory):
    """stage=vae, quantize, vqvae, prior and sample, each run as its command would, on one data set."""
    name, dataset = request.param, built[request.param]
    logs = tmp_path_factory.mktemp(f"{name}_outputs")
    figures = f"figures={dataset.channels == 3 or dataset.image_size != 28}"  # the grey 28x28 figures: tested elsewhere
    common = ["debug=tiny", f"paths.log_dir={logs}", *QUIET, *dataset.overrides, figures]
    run = lambda stage, *extra: run_stage(compose_config(logs / stage / "runs" / "a", [f"stage={stage}", *common, *extra]))  # noqa: E731
    metrics = {
        "vae": run("vae", *TINY_AE, *dataset.model),
        "quantize": run("quantize", "quantizer=kmeans", "quantizer.n_clusters=8", "quantizer.n_landmarks=200", "quantizer.progress=false",
                        f"stage.vae={logs / 'vae' / 'runs' / 'a' / 'model.pt'}"),
        "vqvae": run("vqvae", *TINY_AE, *dataset.model, "model.quantizer.n_codes=8"),
    }
    prior_common = ["stage=prior", f"paths.log_dir={logs}", "debug=tiny", *QUIET, "model.n_layer=1", "model.d_model=16", "model.n_head=2"]
    metrics["prior"] = run_stage(compose_config(logs / "prior" / "runs" / "a", [*prior_common, "stage.codes=vqvae"]))
    metrics["sample"] = run_stage(compose_config(logs / "sample" / "runs" / "a", [
        "stage=sample", f"paths.log_dir={logs}", "stage.n_samples=12", *dataset.overrides, figures]))
    return name, dataset, logs, metrics


@pytest.mark.slow  # trains: the slow tier (CI runs both tiers)
def test_every_stage_runs_on_every_format(stages):
    name, dataset, logs, metrics = stages
    run = lambda stage: logs / stage / "runs" / "a"  # noqa: E731
    vae, _ = load_model(run("vae") / "model.pt", "grid_vae")
    assert (vae.hparams.in_channels, vae.hparams.likelihood, vae.hparams.downsample) == (dataset.channels, dataset.likelihood, dataset.downsample)
    assert math.isfinite(metrics["vae"]["test/rec"]) and 0 < metrics["vae"]["test/mse"] < 0.5
    drawn = dataset.channels == 3 or dataset.image_size != 28
    assert (run("vae") / "reconstructions.png").is_file() == drawn
    for stage in ("quantize", "vqvae"):
        splits = load_code_grids(run(stage) / "codes.pt").payload["splits"]
        assert splits["train"].shape[1:] == (dataset.grid, dataset.grid), stage
    assert 0 < metrics["vqvae"]["test/mse"] < 0.5
    prior, _ = load_model(run("prior") / "model.pt", "prior")
    assert prior.hparams.grid_size == dataset.grid and math.isfinite(metrics["prior"]["test/nll"])
    samples = load_artifact(run("sample") / "samples.pt", kind="samples").payload
    assert samples["images"].shape == (12, dataset.channels, dataset.image_size, dataset.image_size)
    assert samples["codes"].shape == (12, dataset.grid, dataset.grid)
    assert (run("sample") / "samples.png").is_file() == drawn


def study(dataset: Dataset, extra=()) -> list[str]:
    """experiment=quick debug=tiny on a tiny data set, small models: every step one epoch."""
    autoencoder = ",".join(f"'{item}'" for item in TINY_AE + dataset.model)
    return [
        "experiment=quick", "debug=tiny", *dataset.overrides, *QUIET,
        "pipeline.all=['trainer.max_epochs=1']",
        "pipeline.classifier=['trainer.max_epochs=1']",
        f"pipeline.vae=[{autoencoder}]",
        f"pipeline.vqvae=[{autoencoder},'model.quantizer.n_codes=8']",
        "pipeline.quantize=['quantizer.n_landmarks=120','quantizer.n_clusters=8','quantizer.progress=false']",
        "pipeline.prior=['model.n_layer=1','model.d_model=16','model.n_head=2']",
        "pipeline.sample=['stage.n_samples=12']",
        "pipeline.evaluate=['stage.fid_bootstrap=5']",
        "pipeline.tsne_points=100",
        *extra,
    ]


# The study of experiment=quick (five methods) and its figures run on CIFAR-10; on the other data
# sets experiment=quick runs a study of one method declared on the command line (pipeline B: its
# classifier, VQ-VAE, prior, samples, evaluation and report), without figures, since the stage
# runs above already cover pipeline A there: every format through the study in a fifth of the time.
FULL_STUDY = "cifar10"
ONE_METHOD = [
    "~study",
    "+pipeline.steps={vqvae: {stage: vqvae}}",
    "+pipeline.methods={B: {codes: vqvae, title: 'B: VQ-VAE'}}",
    "pipeline.figures=false",
]


@pytest.fixture(scope="module", params=NAMES)
def quick(request, built, compose_config, tmp_path_factory):
    name, dataset = request.param, built[request.param]
    out = tmp_path_factory.mktemp(f"{name}_study") / "experiments" / "quick"
    summary = run_stage(compose_config(out, study(dataset, () if name == FULL_STUDY else ONE_METHOD)))
    return name, dataset, out, summary


@pytest.mark.slow  # trains: the slow tier (CI runs both tiers)
def test_experiment_quick_runs_on_every_format(quick):
    name, dataset, out, summary = quick
    report = json.loads((out / "report.json").read_text())
    assert len(report["methods"]) == (5 if name == FULL_STUDY else 1)
    for method in report["methods"].values():
        evaluation = method["seeds"]["0"]
        assert 0 < evaluation["recon/test_mse"] < 0.5 and math.isfinite(evaluation["fidelity/fid"])
        assert evaluation["fidelity/features"] == f"classifier features ({dataset.n_classes} classes)"
        assert len(evaluation["fidelity/class_histogram"]) == dataset.n_classes
    classifier, _ = load_model(out / "classifier" / "model.pt", "classifier")
    assert (classifier.hparams.in_channels, classifier.hparams.image_size, classifier.n_classes) == (
        dataset.channels, dataset.image_size, dataset.n_classes)
    codes = load_code_grids(out / "seed_0" / "vqvae" / "codes.pt").payload["splits"]["test"]
    assert codes.shape[1:] == (dataset.grid, dataset.grid)
    if name == FULL_STUDY:  # colour figures
        for figure in ("fig1_tsne_clusters.png", "fig3_reconstructions.png", "fig4_samples.png"):
            assert (out / figure).stat().st_size > 2000, figure


@pytest.mark.slow  # trains: the slow tier (CI runs both tiers)
def test_images_without_labels_get_autoencoder_features(compose_config, tmp_path):
    """A flat folder: the fidelity network trains as an autoencoder, and the report says so."""
    folder = write_folder(tmp_path / "flat", 40, 32, "L", classes=None)
    dataset = Dataset(["data=image_folder", f"data.path={folder}", "data.channels=1"], 1, 32, 4, "gaussian", None)
    out = tmp_path / "experiments" / "quick"
    one_method = [
        "~study",
        "+pipeline.steps={vae: {stage: vae}, kmeans8: {stage: quantize, inputs: {stage.vae: vae}, "
        "overrides: ['quantizer=kmeans', 'quantizer.n_clusters=8']}}",
        "+pipeline.methods={A_kmeans8: {codes: kmeans8, title: 'A: K-Means, K=8'}}",
    ]
    run_stage(compose_config(out, study(dataset, [*one_method, "pipeline.figures=false"])))
    classifier = json.loads((out / "classifier" / "metrics.json").read_text())
    assert classifier["classifier/n_classes"] == 0 and "test/accuracy" not in classifier
    evaluation = json.loads((out / "report.json").read_text())["methods"]["A_kmeans8"]["seeds"]["0"]
    assert evaluation["fidelity/features"] == "autoencoder features (trained without labels)"
    assert math.isfinite(evaluation["fidelity/fid"]) and "fidelity/confidence" not in evaluation


@pytest.mark.slow  # trains: the slow tier (CI runs both tiers)
def test_a_model_of_other_channels_is_one_error_naming_the_key(stages, compose_config, built, tmp_path):
    name, dataset, logs, _ = stages
    if name not in ("cifar10", "mnist"):
        pytest.skip("one grey and one colour data set suffice")
    other = built["mnist" if name == "cifar10" else "cifar10"]
    vae = logs / "vae" / "runs" / "a" / "model.pt"
    with pytest.raises(ConfigError, match=r"data\.channels=.*stage\.vae="):
        check_settings(compose_config(tmp_path / "q", ["stage=quantize", *other.overrides, f"stage.vae={vae}"]))
    # Resuming the run on the other data: refused by the key that changed, before any training.
    with pytest.raises(ConfigError, match=r"cannot resume .*data\.channels="):
        check_settings(compose_config(logs / "vae" / "runs" / "a", ["stage=vae", *other.overrides, "ckpt_path=last"]))
