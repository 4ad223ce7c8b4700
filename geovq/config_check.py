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
    positive("data.subset", optional=True), positive("data.test_subset", optional=True), Rule("data.val_size", int, low=0),
    # trainer
    Rule("trainer.max_epochs", int, low=-1, optional=True), Rule("trainer.max_steps", int, low=-1, optional=True),
    positive("trainer.log_every_n_steps"), Rule("trainer.num_sanity_val_steps", int, low=-1),
    positive("trainer.accumulate_grad_batches", optional=True),
    positive("trainer.gradient_clip_val", float, optional=True),
    # models
    positive("model.latent_dim"), positive("model.hidden_channels"), Rule("model.n_res_blocks", int, low=0),
    positive("model.in_channels"), Rule("model.beta", float, low=0),
    positive("model.optimizer.lr", float), Rule("model.optimizer.weight_decay", float, low=0),
    positive("model.n_codes", optional=True), positive("model.grid_size"), positive("model.n_layer"),
    positive("model.n_head"), positive("model.d_model"), fraction("model.dropout"), fraction("model.head_dropout"),
    positive("model.channels"), positive("model.n_features"), positive("model.n_classes"), positive("model.image_size"),
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
