"""stage=pipeline (``experiment=paper`` / ``experiment=quick``): the whole study as one command.

Runs, each in a subfolder of one fixed experiment folder:

    classifier                        (for sample fidelity)
    vae -> quantize_geodesic -> prior_A -> sample_A -> evaluate_A        pipeline A
           quantize_kmeans                                               (Figure 1's baseline)
    vqvae -> prior_B -> sample_B -> evaluate_B                           pipeline B (paper config)
    vqvae_ema -> prior_B_ema -> sample_B_ema -> evaluate_B_ema           B with anti-collapse
    report.md, report.json, figures

Each step's config is composed like a command line (``stage=<name>``, the experiment's
overrides for it, then the overrides you gave), so ``experiment=paper data.root=...`` reaches
every step. A step is skipped when its folder already holds its output made with the same
config from the same inputs (``step.json`` records the config hash and the sha256 of the
inputs and the output), so an interrupted run continues where it stopped, and every completed
step's artifacts stay intact.

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
    CODES_FILE,
    EVALUATION_FILE,
    MODEL_FILE,
    SAMPLES_FILE,
    atomic_write_text,
    config_hash,
)
from geovq.errors import ConfigError, TrainingError
from geovq.loggers import log_without_trainer
from geovq.run_folder import output_dir, result_config
from geovq.stages import get_stage

log = logging.getLogger(__name__)

STEP_FILE = "step.json"
# Steps that train through a Lightning Trainer (and so may run distributed).
TRAINING_STAGES = ("classifier", "vae", "vqvae", "prior")


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
    skip = ("experiment=", "stage=", "hydra.", "+experiment=", "pipeline.")
    return [item for item in HydraConfig.get().overrides.task if not item.startswith(skip)]


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
    """Runs named steps in order, skipping those already done with the same config and inputs."""

    def __init__(self, root: Path, base_overrides: list[str]):
        self.root = root
        self.base = base_overrides
        self.results: dict[str, StepResult] = {}

    def step(self, name: str, stage: str, overrides: list[str], output: str, inputs: tuple[str, ...] = ()) -> StepResult:
        folder = self.root / name
        # Quiet by default (one summary table per training step is a screenful); yours come last and win.
        overrides = ["trainer.enable_model_summary=false", *overrides, *self.base]
        if stage == "prior":  # the prior reads code grids (data=codes): image-data settings do not apply
            overrides = [item for item in overrides if override_key(item).split(".")[0] != "data"]
        cfg = compose_step([f"stage={stage}", *overrides], name)
        with open_dict(cfg):
            cfg.paths.output_dir = str(folder)
            cfg.paths.log_dir = str(self.root)
        key = config_hash(
            {"config": result_config(cfg), "inputs": {i: file_sha256(self.results[i].output) for i in inputs}}
        )
        record = folder / STEP_FILE
        target = folder / output
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


def run(cfg: DictConfig) -> dict:
    from geovq.report import write_report

    plan = OmegaConf.to_container(cfg.pipeline, resolve=True)
    pipe = Pipeline(output_dir(cfg), user_overrides())
    every = plan.get("all", [])
    pipe.step("classifier", "classifier", every + plan["classifier"], MODEL_FILE)
    vae = pipe.step("vae", "vae", every + plan["vae"], MODEL_FILE)
    pipe.step("quantize_geodesic", "quantize", [f"stage.vae={vae.output}", *every, *plan["quantize"]], CODES_FILE, ("vae",))
    pipe.step("quantize_kmeans", "quantize", [f"stage.vae={vae.output}", "quantizer=kmeans", *every, *plan["kmeans"]], CODES_FILE, ("vae",))
    pipe.step("vqvae", "vqvae", every + plan["vqvae"], CODES_FILE)
    pipe.step("vqvae_ema", "vqvae", ["model=vqvae_ema", *every, *plan["vqvae_ema"]], CODES_FILE)
    methods = {"A_geodesic": "quantize_geodesic", "B_vqvae": "vqvae", "B_vqvae_ema": "vqvae_ema"}
    for method, codes in methods.items():
        codes_path = pipe.results[codes].output
        prior = pipe.step(f"prior_{method}", "prior", [f"stage.codes={codes_path}", *every, *plan["prior"]], MODEL_FILE, (codes,))
        samples = pipe.step(
            f"sample_{method}", "sample", [f"stage.prior={prior.output}", *every, *plan["sample"]], SAMPLES_FILE, (f"prior_{method}",)
        )
        pipe.step(
            f"evaluate_{method}",
            "evaluate",
            [f"stage.samples={samples.output}", f"stage.classifier={pipe.results['classifier'].output}", *every, *plan["evaluate"]],
            EVALUATION_FILE,
            (f"sample_{method}", "classifier"),
        )
    images = None
    if plan.get("figures", True):
        data = instantiate(compose_step(["stage=vae", *every, *pipe.base], "vae").data)
        images = (data.split("train").tensors[0], data.split("test").tensors[0])
    report = write_report(pipe, methods, output_dir(cfg), plan.get("figures", True), plan.get("tsne_points", 10000), images)
    log_without_trainer(cfg, report["summary"], [output_dir(cfg) / name for name in report["figures"]])
    return report["summary"]
