"""Settings checked by type and range before a run does any work.

Hydra accepts any value on the command line (``data.batch_size=abc``, ``trainer.max_epochs=1.5``);
without this, such a value fails as a traceback deep inside a DataLoader or a Trainer, or worse,
is silently truncated (``n_codes=12.5`` trained as 12). Each rule names a key, its type and its
range; a key a config does not have is skipped, so one table serves every stage and model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from geovq.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    key: str
    kind: type  # int or float (an int is a valid float)
    low: float | None = None
    high: float | None = None
    optional: bool = False  # null allowed
    low_open: bool = False  # low itself excluded (a learning rate > 0)
    high_open: bool = False  # high itself excluded (a dropout < 1)

    def problem(self, value) -> str | None:
        """Why ``value`` does not fit, or None."""
        if value is None:
            return None if self.optional else "must be set"
        numeric = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or (self.kind is float and not math.isfinite(value)):
            return f"is not {'an integer' if self.kind is int else 'a number'}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return "is out of range" if too_low or too_high else None

    def describe(self) -> str:
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        kind = "an integer" if self.kind is int else "a number"
        return kind + (" " + " and ".join(bounds) if bounds else "") + (", or null" if self.optional else "")


def positive(key: str, kind: type = int, optional: bool = False) -> Rule:
    """An integer >= 1, or a number > 0."""
    return Rule(key, kind, low=1, optional=optional) if kind is int else Rule(key, kind, low=0, low_open=True, optional=optional)


def fraction(key: str) -> Rule:
    """In [0, 1): a dropout, a decay."""
    return Rule(key, float, low=0, high=1, high_open=True)


RULES = (
    Rule("seed", int),
    # data (image data and code grids)
    positive("data.batch_size"), positive("data.eval_batch_size"), Rule("data.num_workers", int, low=0),
    positive("data.subset", optional=True), positive("data.test_subset", optional=True),
    positive("data.val_size", float), positive("data.test_size", float),  # a count, or a fraction (0.1)
    Rule("data.channels", int, low=1, high=3), Rule("data.image_size", int, low=4),
    # trainer
    Rule("trainer.max_epochs", int, low=-1, optional=True), Rule("trainer.max_steps", int, low=-1, optional=True),
    positive("trainer.log_every_n_steps"), Rule("trainer.num_sanity_val_steps", int, low=-1),
    positive("trainer.accumulate_grad_batches", optional=True),
    positive("trainer.gradient_clip_val", float, optional=True),
    # models
    positive("model.latent_dim"), positive("model.hidden_channels"), Rule("model.n_res_blocks", int, low=0),
    positive("model.in_channels"), Rule("model.beta", float, low=0), positive("model.downsample"),
    positive("model.optimizer.lr", float), Rule("model.optimizer.weight_decay", float, low=0),
    positive("model.n_codes", optional=True), positive("model.grid_size", optional=True), positive("model.n_layer"),
    positive("model.n_head"), positive("model.d_model"), fraction("model.dropout"), fraction("model.head_dropout"),
    positive("model.channels"), positive("model.n_features"), Rule("model.n_classes", int, low=0, optional=True),
    positive("model.image_size"),
    positive("model.quantizer.n_codes"), Rule("model.quantizer.commitment_cost", float, low=0),
    fraction("model.quantizer.decay"), positive("model.quantizer.eps", float), positive("model.quantizer.kmeans_iters"),
    Rule("model.quantizer.dead_code_threshold", float, low=0), fraction("model.quantizer.dead_code_decay"),
    positive("model.quantizer.dead_code_window", optional=True), positive("model.quantizer.restart_buffer_size"),
    Rule("model.quantizer.restart_noise", float, low=0),
    Rule("model.scheduler.warmup_steps", int, low=0), Rule("model.scheduler.factor", float, low=0, high=1, low_open=True, high_open=True),
    # stages
    positive("stage.n_samples"), positive("stage.temperature", float), positive("stage.top_k", optional=True),
    positive("stage.batch_size"), Rule("stage.fid_bootstrap", int, low=0),
    Rule("callbacks.early_stopping.patience", int, low=0), Rule("callbacks.early_stopping.min_delta", float, low=0),
    Rule("callbacks.early_stopping.stopping_threshold", float, optional=True),
)
QUANTIZER_RULES = (
    positive("quantizer.n_clusters"), positive("quantizer.n_landmarks", optional=True),
    positive("quantizer.n_neighbors", optional=True), Rule("quantizer.n_jobs", int),
    # method=graph_full: the HNSW index, the recall it must reach, the per-cell sampling
    positive("quantizer.ann_m"), positive("quantizer.ann_ef_construction"), positive("quantizer.ann_ef"),
    Rule("quantizer.min_recall", float, low=0, high=1), positive("quantizer.recall_sample"),
    positive("quantizer.full_samples"), positive("quantizer.full_exact"), positive("quantizer.full_max_iter"),
    Rule("quantizer.full_tol", float, low=0, high=1),
)
# Bytes per code-grid position and per sampled image that the sample stage holds in memory
# (the codes, the decoded float image and the grid of logits it samples from).
SAMPLE_BYTES_PER_IMAGE = 8 * 49 + 4 * 28 * 28


def check_settings(cfg: DictConfig) -> None:
    """Every rule whose key the config has, then the settings that depend on each other, then
    the memory of the largest allocations; the first problem is one ConfigError naming its key."""
    rules = RULES + (QUANTIZER_RULES if uses_quantizer(cfg) else ())
    for rule in rules:
        found, value = lookup(cfg, rule.key)
        if found and (problem := rule.problem(value)) is not None:
            raise ConfigError(f"{rule.key}={value!r} {problem}: it must be {rule.describe()}. Set it with {rule.key}=...")
    if uses_quantizer(cfg):
        check_quantizer_sizes(cfg)
    check_image_sizes(cfg)
    check_models_fit_data(cfg)
    check_memory(cfg)


def override_key(item: str) -> str:
    """The config key an override sets: 'data.root=x' -> 'data.root', '+data=codes' -> 'data'."""
    return item.split("=", 1)[0].lstrip("+~")


def ignored_overrides(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """The command line's settings this stage does not read: today the ``quantizer.*`` keys of a
    stage that builds no codebook (stage=prior quantizer.n_clusters=64 trains the same prior)."""
    keys = [override_key(item) for item in overrides]
    return [key for key in keys if key.split(".")[0] == "quantizer" and not uses_quantizer(cfg)]


def uses_quantizer(cfg: DictConfig) -> bool:
    """Stages that build a codebook with ``quantizer=`` (or size the rate figure by it)."""
    callbacks = cfg.get("callbacks") or {}
    return cfg.stage.name in ("quantize", "vae") or any("quantize" in str(name) for name in callbacks)


def check_quantizer_sizes(cfg: DictConfig) -> None:
    clusters, landmarks = cfg.quantizer.get("n_clusters"), cfg.quantizer.get("n_landmarks")
    if landmarks is not None and clusters > landmarks:
        raise ConfigError(
            f"quantizer.n_clusters={clusters} is more than quantizer.n_landmarks={landmarks}: K medoids are chosen "
            "among the landmarks. Lower quantizer.n_clusters or raise quantizer.n_landmarks."
        )


def check_image_sizes(cfg: DictConfig) -> None:
    """The code grid is data.image_size / model.downsample cells a side, and the classifier pools
    twice by 2: a size that does not divide is one line naming data.image_size, before any work."""
    found_size, size = lookup(cfg, "data.image_size")
    if not found_size or not isinstance(size, int):
        return
    found, downsample = lookup(cfg, "model.downsample")
    if found and isinstance(downsample, int) and downsample > 0 and downsample & (downsample - 1):
        raise ConfigError(
            f"model.downsample={downsample} must be a power of two (2, 4, 8, ...): the encoder halves the image "
            "log2(downsample) times. Set it with model.downsample=..."
        )
    if found and isinstance(downsample, int) and downsample > 0 and size % downsample:
        raise ConfigError(
            f"data.image_size={size} is not a multiple of model.downsample={downsample}: the code grid would be "
            f"{size / downsample:g} cells a side. Set {_sizes_near(size, downsample)}, or another model.downsample."
        )
    found, classifier_size = lookup(cfg, "model.image_size")
    if found and isinstance(classifier_size, int) and classifier_size % 4:
        raise ConfigError(
            f"data.image_size={classifier_size} is not a multiple of 4, which the classifier's two 2x2 poolings "
            f"need. Set {_sizes_near(classifier_size, 4)}."
        )


def _sizes_near(size: int, divisor: int) -> str:
    lower = size - size % divisor
    return " or ".join(f"data.image_size={n}" for n in (lower, lower + divisor) if n > 0)


# Model files a stage reads, by the key that gives their path and their kind: the images data=
# gives must be those the model was trained on.
GIVEN_MODELS = (("quantize", "stage.vae", "grid_vae"), ("evaluate", "stage.classifier", "classifier"))
# What a model records of the images it was built for, and the key that sets it.
IMAGE_SETTINGS = {"in_channels": "data.channels", "image_size": "data.image_size"}
# What a resumed checkpoint must share with model= beyond its shapes (model.* unless data= sets it).
RESUMED_SETTINGS = ("in_channels", "image_size", "downsample", "likelihood")


def check_models_fit_data(cfg: DictConfig) -> None:
    """A model file given by path (stage.vae, stage.classifier, ckpt_path) that was trained on
    images of other channels or size than data= gives is one line naming the key, not a shape
    error inside the first convolution."""
    for stage, key, kind in GIVEN_MODELS:
        found, path = lookup(cfg, key)
        if cfg.stage.name != stage or not found or not path or not os.path.isfile(str(path)):
            continue
        from geovq.artifacts import load_artifact

        try:
            hparams = load_artifact(path, kind=kind).payload.get("hparams", {})
        except Exception:  # not a model of that kind: the stage says so
            continue
        for setting, data_key in IMAGE_SETTINGS.items():
            found, wanted = lookup(cfg, data_key)
            if found and setting in hparams and hparams[setting] != wanted:
                raise ConfigError(
                    f"{data_key}={wanted}, but the {kind} {key}={path} was trained on images with {setting}="
                    f"{hparams[setting]}. Set {data_key}={hparams[setting]} (the data it was trained on), or give a "
                    f"{kind} trained on this data."
                )
    check_resumed_settings(cfg)


def check_resumed_settings(cfg: DictConfig) -> None:
    requested = cfg.get("ckpt_path")
    if not requested or "model" not in cfg:
        return
    path = os.path.join(str(cfg.paths.output_dir), "checkpoints", "last.ckpt") if requested == "last" else str(requested)
    if not os.path.isfile(path):
        return  # the resume itself says so
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters") or {}
    except Exception:
        return  # not a checkpoint geovq can resume: the resume itself says so
    raw = OmegaConf.to_container(cfg.model, resolve=False)
    for setting in RESUMED_SETTINGS:
        found, now = lookup(cfg, f"model.{setting}")
        if found and setting in saved and saved[setting] != now:
            source = raw.get(setting)
            key = source[2:-1] if isinstance(source, str) and source.startswith("${") and source.endswith("}") else f"model.{setting}"
            raise ConfigError(
                f"cannot resume from {path}: it was trained with {setting}={saved[setting]}, and {key}={now} builds "
                f"another model. Resume with {key}={saved[setting]} (its run folder's config.yaml), or start a new run."
            )


def check_memory(cfg: DictConfig) -> None:
    """Refuse, in one line, a codebook or a sample count whose arrays alone would not fit in
    this machine's memory, instead of a failed allocation (or swapping) minutes later."""
    available = available_memory()
    if available is None:
        return
    found, n_codes = lookup(cfg, "model.quantizer.n_codes")
    found_dim, dim = lookup(cfg, "model.latent_dim")
    found_batch, batch = lookup(cfg, "data.batch_size")
    if found and found_dim and found_batch:
        # The codebook with its gradient and Adam's two moments, and each batch's distances of
        # 49 positions to every code (computed, then kept for the backward pass).
        needed = 4 * n_codes * (4 * dim + 2 * 49 * batch)
        refuse_if_over(needed, available, "model.quantizer.n_codes", n_codes)
    found, n_samples = lookup(cfg, "stage.n_samples")
    if found and cfg.stage.name == "sample":
        refuse_if_over(n_samples * SAMPLE_BYTES_PER_IMAGE, available, "stage.n_samples", n_samples)


def refuse_if_over(needed: int, available: int, key: str, value) -> None:
    if needed > available:
        raise ConfigError(
            f"{key}={value} needs about {needed / 2**30:.1f} GiB of memory for its arrays alone, and this machine "
            f"has {available / 2**30:.1f} GiB available. Lower {key}."
        )


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def lookup(cfg: DictConfig, key: str) -> tuple[bool, object]:
    """``(True, value)`` when the config has ``key`` (resolved), else ``(False, None)``."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False, None
        node = node[part]
    return True, OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
