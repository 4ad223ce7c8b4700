"""stage=pipeline (``experiment=paper`` / ``experiment=quick``): a whole study as one command.

The study is data (``geovq/study.py``): the experiment declares its representation steps and its
methods in YAML (``geovq/conf/study/``). For every seed of ``pipeline.seeds`` the pipeline runs,
in ``seed_<n>/`` of one experiment folder, each method's chain of steps (inputs first, a step
shared by several methods once), then per method ``prior_<m>``, ``sample_<m>`` and
``evaluate_<m>``. The classifier that measures sample fidelity is trained once, in
``classifier/``. Then report.md, report.json and the figures (``geovq/report.py``).

Each step's config is composed like a command line: ``stage=<stage>``, ``pipeline.all``, the
overrides listed under the stage's name (``pipeline.vqvae`` reaches every VQ-VAE step), the
step's or method's own overrides, its inputs (``stage.vae=<path of the vae step's model.pt>``),
``seed=<n>``, then the overrides you gave, so ``experiment=paper data.root=...`` reaches every
step. A step is skipped when its folder already holds its output made with the same config from
the same inputs (``step.json`` records the config hash and the sha256 of the inputs and the
output), so an interrupted run continues where it stopped, and every completed step's artifacts
stay intact.

On several devices (``trainer=ddp trainer.devices=N``) each training step runs distributed as
its own command; quantization, sampling and evaluation run once, in this process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from geovq import CONF_DIR
from geovq.artifacts import (
    atomic_write_text,
    config_hash,
)
from geovq.errors import ConfigError, TrainingError
from geovq.loggers import log_without_trainer
from geovq.run_folder import output_dir, result_config
from geovq.stages import get_stage
from geovq.study import STAGE_OUTPUTS, Method, Study, plan_study

log = logging.getLogger(__name__)

STEP_FILE = "step.json"
# Steps that train through a Lightning Trainer (and so may run distributed).
TRAINING_STAGES = ("classifier", "vae", "vqvae", "finetune", "prior")


@dataclass
class StepResult:
    name: str
    folder: Path
    output: Path
    metrics: dict
    seconds: float
    reused: bool


def user_overrides() -> list[str]:
    """The command line's overrides, minus those that pick the experiment, the stage or the run folder."""
    if not HydraConfig.initialized():
        return []
    skip = ("experiment", "stage", "hydra", "pipeline", "study")
    return [item for item in HydraConfig.get().overrides.task if override_key(item).split(".")[0].split("@")[0] not in skip]


def compose_step(overrides: list[str], step: str = "") -> DictConfig:
    try:
        if GlobalHydra.instance().is_initialized():
            return compose(config_name="train", overrides=overrides)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)
    except HydraException as err:
        raise ConfigError(
            f"the pipeline's step '{step}' cannot use these overrides ({str(err).splitlines()[0]}). "
            f"Give overrides meant for one step in its list, e.g. 'pipeline.{step or 'vae'}=[\"model.latent_dim=32\"]'."
        ) from None


def override_key(item: str) -> str:
    """The config key an override sets: 'data.root=x' -> 'data.root', '+data=codes' -> 'data'."""
    return item.split("=", 1)[0].lstrip("+~")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Pipeline:
    """Runs named steps, each in ``root/<name>``, skipping those already done with the same
    config and inputs. ``inputs`` maps a config key of the step to an earlier step, whose
    output path the key receives (and whose output's hash is part of the step's key)."""

    def __init__(self, root: Path, base_overrides: list[str], stage_overrides: dict[str, list[str]]):
        self.root = root
        self.base = base_overrides
        self.stage_overrides = stage_overrides
        self.results: dict[str, StepResult] = {}

    def step(self, name: str, stage: str, overrides: list[str] = (), inputs: dict[str, str] | None = None) -> StepResult:
        if name in self.results:  # shared by several methods: run once
            return self.results[name]
        inputs = inputs or {}
        folder = self.root / name
        # Quiet by default (one summary table per training step is a screenful); yours come last and win.
        overrides = ["trainer.enable_model_summary=false", *self.stage_overrides.get("all", []),
                     *self.stage_overrides.get(stage, []), *overrides,
                     *(f"{key}={self.results[upstream].output}" for key, upstream in inputs.items()), *self.base]
        if stage == "prior":  # the prior reads code grids (data=codes): image-data settings do not apply
            overrides = [item for item in overrides if override_key(item).split(".")[0] != "data"]
        cfg = compose_step([f"stage={stage}", *overrides], name)
        with open_dict(cfg):
            cfg.paths.output_dir = str(folder)
            cfg.paths.log_dir = str(self.root)
        key = self.step_key(cfg, inputs)
        record = folder / STEP_FILE
        target = folder / STAGE_OUTPUTS[stage]
        if record.exists() and target.exists():
            done = json.loads(record.read_text())
            if done.get("key") == key and done.get("output_sha256") == file_sha256(target):
                log.info("step %s: reusing %s (same config and inputs)", name, target)
                result = StepResult(name, folder, target, done["metrics"], done["seconds"], True)
                self.results[name] = result
                return result
        log.info("step %s: running stage=%s in %s", name, stage, folder)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if stage in TRAINING_STAGES and distributed(cfg):
            metrics = self.run_in_own_process(name, stage, overrides, folder)
        else:
            metrics = get_stage(stage)(cfg) or {}
        seconds = time.perf_counter() - started
        metrics = {k: float(v) for k, v in metrics.items()}
        done = {"stage": stage, "key": key, "output_sha256": file_sha256(target), "seconds": seconds, "metrics": metrics}
        atomic_write_text(record, json.dumps(done, indent=2) + "\n")
        result = StepResult(name, folder, target, metrics, seconds, False)
        self.results[name] = result
        return result

    def step_key(self, cfg: DictConfig, inputs: dict[str, str]) -> str:
        """The hash of the step's result config in which each input path is replaced by the sha256
        of the file it names: a step copied into another experiment's folder (the same config, the
        same input files at other paths) is still recognised as done."""
        config = result_config(cfg)
        for key, upstream in inputs.items():
            *parents, leaf = key.split(".")
            section = config
            for part in parents:
                section = section[part]
            section[leaf] = "sha256:" + file_sha256(self.results[upstream].output)
        return config_hash(config)

    def run_in_own_process(self, name: str, stage: str, overrides: list[str], folder: Path) -> dict:
        """A distributed training step as its own ``python -m geovq.train`` command: Lightning's
        DDP launcher starts the other ranks by running the current command again, which must be
        that one stage, not the whole pipeline."""
        command = [sys.executable, "-m", "geovq.train", f"stage={stage}", *overrides,
                   f"hydra.run.dir={folder}", f"paths.log_dir={self.root}"]
        result = subprocess.run(command, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise TrainingError(
                f"the pipeline's step '{name}' (stage={stage}, distributed) failed with exit code "
                f"{result.returncode}; its output above says why. Rerun the same command to continue: "
                "finished steps are reused."
            )
        return json.loads((folder / "metrics.json").read_text())


def distributed(cfg: DictConfig) -> bool:
    """Whether the step's Trainer runs several processes (DDP on several devices)."""
    devices = cfg.trainer.get("devices")
    several = not (devices in (1, "1", "auto", None) or devices == [0])
    return several or cfg.trainer.get("strategy") not in (None, "auto")


def seed_list(cfg: DictConfig) -> list[int]:
    seeds = cfg.pipeline.get("seeds")
    seeds = [cfg.seed] if seeds is None else list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"pipeline.seeds must be distinct integers, e.g. pipeline.seeds=[0,1,2]; got {seeds}.")
    return seeds


def run_method(pipe: Pipeline, study: Study, method: Method, seed_folder: str) -> None:
    """The method's representation chain, then its prior, samples and evaluation, in ``seed_folder``."""
    for step in study.chain(method.codes):
        pipe.step(f"{seed_folder}/{step.name}", step.stage, list(step.overrides),
                  {key: f"{seed_folder}/{upstream}" for key, upstream in step.inputs})
    m = f"{seed_folder}/{{}}_{method.name}"
    pipe.step(m.format("prior"), "prior", list(method.overrides["prior"]), {"stage.codes": f"{seed_folder}/{method.codes}"})
    pipe.step(m.format("sample"), "sample", list(method.overrides["sample"]), {"stage.prior": m.format("prior")})
    pipe.step(m.format("evaluate"), "evaluate", list(method.overrides["evaluate"]),
              {"stage.samples": m.format("sample"), "stage.classifier": "classifier"})


def run(cfg: DictConfig) -> dict:
    from geovq.report import write_report

    options = OmegaConf.to_container(cfg.pipeline, resolve=True)
    study = plan_study(options.get("steps"), options.get("methods"))
    seeds = seed_list(cfg)
    per_stage = {key: options.get(key) or [] for key in ("all", *STAGE_OUTPUTS)}
    pipe = Pipeline(output_dir(cfg), user_overrides(), per_stage)
    pipe.step("classifier", "classifier")  # the measuring instrument: one for every seed and method
    for seed in seeds:
        seeded = Pipeline(pipe.root, [f"seed={seed}", *pipe.base], per_stage)
        seeded.results = pipe.results
        for method in study.methods.values():
            run_method(seeded, study, method, f"seed_{seed}")
    images = None
    if options.get("figures", True):
        data = instantiate(compose_step(["stage=vae", *options.get("all", []), *pipe.base], "vae").data)
        images = (data.split("train").tensors[0], data.split("test").tensors[0])
    report = write_report(pipe, study, seeds, output_dir(cfg), options, images)
    log_without_trainer(cfg, report["summary"], [output_dir(cfg) / name for name in report["figures"]])
    return report["summary"]
