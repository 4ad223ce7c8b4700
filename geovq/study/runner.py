"""Running a study (``stage=pipeline``: ``experiment=paper`` / ``experiment=quick``) as one command.

The study is data (``geovq/study/spec.py``): the experiment declares its representation steps and its
methods in YAML (``geovq/conf/study/``). For every seed of ``pipeline.seeds`` the pipeline runs,
in ``seed_<n>/`` of one experiment folder, each method's chain of steps (inputs first, a step
shared by several methods once), then per method ``prior_<m>``, ``sample_<m>`` and
``evaluate_<m>`` (one prior per distinct set of code grids: a method whose codes only swap the
decoder, stage=finetune's, samples from the prior of the grids it copies). The classifier that measures sample fidelity is trained once, in
``classifier/``. Then report.md, report.json and the figures (``geovq/study/report.py``).

Each step's config is composed like a command line: ``stage=<stage>``, ``pipeline.all``, the
overrides listed under the stage's name (``pipeline.vqvae`` reaches every VQ-VAE step), the
step's or method's own overrides, its inputs (``stage.vae=<path of the vae step's model.pt>``),
``seed=<n>``, then the overrides you gave, so ``experiment=paper data.root=...`` reaches every
step. A step is skipped when its folder already holds its output made with the same config from
the same inputs (``step.json`` records the config hash and the sha256 of the inputs and the
output), so an interrupted run continues where it stopped, and every completed step's artifacts
stay intact; a training step stopped part-way with the same key (``started.json``) resumes from
its last checkpoint. A step another study has finished with the same key is copied from there
(``pipeline.reuse_from``, ``geovq/study/finished_steps.py``).

On several devices (``trainer=ddp trainer.devices=N``) each training step runs distributed as
its own command; quantization, sampling and evaluation run once, in this process. With
``pipeline.parallel=N`` independent steps run N at a time instead, each as its own process
(``geovq/study/parallel.py``), forked from one that has loaded torch once unless
``pipeline.step_launcher=subprocess`` (``geovq/study/step_process.py``).

Nothing here imports a stage: the stage entry (``geovq/stages/pipeline.py``) passes in
``get_stage``, which runs a step in this process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

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
from geovq.config_check import check_settings, override_key
from geovq.errors import ConfigError, TrainingError
from geovq.interrupts import signals_deferred
from geovq.loggers import log_without_trainer
from geovq.outcome import LAST_CHECKPOINT
from geovq.run_folder import (
    COMPLETION_FILE,
    STEP_TOKEN_ENV,
    completed_with,
    output_dir,
    result_config,
    set_aside_earlier_run,
)
from geovq.stage_registry import STAGES, STEP_STAGES
from geovq.study.finished_steps import (
    STEP_FILE,
    FinishedSteps,
    StepChangedWhileCopied,
    copy_step,
    file_sha256,
    read_record,
)
from geovq.study.parallel import StepRecorder, run_steps, stop_processes
from geovq.study.report import write_report
from geovq.study.spec import DERIVED, STAGE_OUTPUTS, Method, Study, plan_study
from geovq.study.step_process import STEP_LAUNCHERS, StepProcess, StepStarter, start_subprocess

log = logging.getLogger(__name__)

# The key a step's run started with: a training step stopped part-way with the same key resumes.
STARTED_FILE = "started.json"
# How a step's process ends when it is stopped (not failed): Ctrl-C or SIGTERM handled (130, 143),
# or killed by a signal (negative: SIGINT, SIGTERM, SIGKILL, e.g. the machine's out-of-memory killer).
INTERRUPTED_EXIT_CODES = {130, 143, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL}
# A stage's run(cfg) by its name: geovq.stages.get_stage.
StageLookup = Callable[[str], Callable[[DictConfig], dict]]


@dataclass
class StepResult:
    name: str
    folder: Path
    output: Path
    metrics: dict
    seconds: float
    reused: bool
    copied_from: str = ""  # the other study's step folder it was copied from (pipeline.reuse_from)
    resumed: bool = False  # resumed after a stop: ``seconds`` is the time after its last resume

    @cached_property
    def output_sha256(self) -> str:
        """Hashed once, however many later steps read this output (each step's key holds it)."""
        return file_sha256(self.output)


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


@dataclass
class StepPlan:
    """A step ready to run: its composed config, its key and where its output goes."""
    name: str
    stage: str
    overrides: list[str]
    cfg: DictConfig
    key: str
    folder: Path
    target: Path
    # Given to the step's process, which writes it back when it finished (run_folder.COMPLETION_FILE).
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    resume: bool = False  # a training step stopped part-way: it continues from its last checkpoint


class Pipeline:
    """Runs named steps, each in ``root/<name>``, skipping those already done with the same
    config and inputs. ``inputs`` maps a config key of the step to an earlier step, whose
    output path the key receives (and whose output's hash is part of the step's key).
    ``results`` may be shared with other pipelines of the same run (one per seed). ``get_stage``
    runs a step in this process (a step run as its own command needs none). A step not done here
    but finished by another study (``finished``: the folders of ``pipeline.reuse_from``) is
    copied in."""

    def __init__(self, root: Path, base_overrides: list[str], stage_overrides: dict[str, list[str]],
                 results: dict[str, StepResult] | None = None, get_stage: StageLookup | None = None,
                 finished: FinishedSteps | None = None):
        self.root = root
        self.finished = finished
        self.base = base_overrides
        self.stage_overrides = stage_overrides
        self.results: dict[str, StepResult] = {} if results is None else results
        self.get_stage = get_stage
        self.started = time.perf_counter()

    def step(self, name: str, stage: str, overrides: list[str] = (), inputs: dict[str, str] | None = None) -> StepResult:
        if name in self.results:  # shared by several methods: run once
            return self.results[name]
        plan = self.plan(name, stage, overrides, inputs or {})
        return self.reused(plan) or self.execute(plan)

    def plan(self, name: str, stage: str, overrides: list[str], inputs: dict[str, str]) -> StepPlan:
        paths = {key: self.results[upstream].output for key, upstream in inputs.items()}
        overrides, cfg = self.checked_config(name, stage, overrides, paths)
        folder = self.root / name
        return StepPlan(name, stage, overrides, cfg, self.step_key(cfg, inputs), folder, folder / STAGE_OUTPUTS[stage])

    def checked_config(self, name: str, stage: str, overrides: list[str], input_paths: dict[str, Path]) -> tuple[list[str], DictConfig]:
        """The step's full override list and its composed config, its settings checked; each input
        key receives the path in ``input_paths`` (an upstream output, or where it will be)."""
        folder = self.root / name
        # Quiet by default (one summary table per training step is a screenful); yours come last and win.
        overrides = ["trainer.enable_model_summary=false", *self.stage_overrides.get("all", []),
                     *self.stage_overrides.get(stage, []), *overrides,
                     *(f"{key}={path}" for key, path in input_paths.items()), *self.base]
        if stage == "prior":  # the prior reads code grids (data=codes): image-data settings do not apply
            overrides = [item for item in overrides if override_key(item).split(".")[0] != "data"]
        cfg = compose_step([f"stage={stage}", *overrides], name)
        with open_dict(cfg):
            cfg.paths.output_dir = str(folder)
            cfg.paths.log_dir = str(self.root)
        try:
            check_settings(cfg)  # also in this process, where the step's command line is not run
        except ConfigError as err:
            raise ConfigError(f"the pipeline's step '{name}': {err}") from None
        return overrides, cfg

    def reused(self, plan: StepPlan) -> StepResult | None:
        """The step's earlier result, when its folder holds one made with the same key, or a copy
        of another study's (``pipeline.reuse_from``)."""
        record = plan.folder / STEP_FILE
        done = read_record(record) if plan.target.exists() else None
        if done is None or done.get("key") != plan.key or done.get("output_sha256") != file_sha256(plan.target):
            done = self.copied(plan)
            if done is None:
                return None
        else:
            log.info("step %s: reusing %s (same config and inputs)", plan.name, plan.target)
        result = StepResult(plan.name, plan.folder, plan.target, done["metrics"], done["seconds"], True,
                            done.get("copied_from", ""), done.get("resumed", False))
        self.results[plan.name] = result
        return result

    def copied(self, plan: StepPlan) -> dict | None:
        """Another study's finished step with the same key, copied into the step's folder (what
        an earlier run left there set aside first); its step.json, or None when there is none."""
        found = self.finished.find(plan.key, plan.target.name) if self.finished else None
        if found is None:
            return None
        self.clear_folder(plan)
        try:
            done = copy_step(found, plan.folder, plan.target.name)
        except StepChangedWhileCopied:
            log.info("step %s: %s changed while it was copied; the step runs here instead", plan.name, found.folder)
            return None
        log.info("step %s: copied from %s (same config and inputs)", plan.name, found.folder)
        return done

    def execute(self, plan: StepPlan) -> StepResult:
        log.info("step %s: running stage=%s in %s", plan.name, plan.stage, plan.folder)
        self.prepare_folder(plan)
        started = time.perf_counter()
        if STAGES[plan.stage].trains and distributed(plan.cfg):
            # Lightning's DDP launcher starts the other ranks by running the current command
            # again, which must be that one stage, not the whole pipeline.
            process = None
            try:
                with signals_deferred():  # not stopped between its start and `process` naming it
                    process = self.launch(plan)
                returncode = process.wait()
            finally:
                if process is not None:
                    stop_processes([process])  # interrupted while waiting: the step stops with us
            metrics = self.collect(plan, returncode)
        else:
            try:
                metrics = self.get_stage(plan.stage)(plan.cfg) or {}
            except Exception:  # failed, not interrupted (RunInterrupted and Ctrl-C are BaseExceptions)
                self.forget_start(plan)
                raise
        return self.record(plan, metrics, time.perf_counter() - started)

    def prepare_folder(self, plan: StepPlan) -> None:
        """A training step stopped part-way (an interrupted study, a killed machine) with the same
        key continues from its last checkpoint, which holds the random generators' states, so it
        ends as a run never stopped would. Any other step that runs again starts in a clean
        folder (``clear_folder``), with a record of the key it starts with."""
        if self.stopped_part_way(plan):
            plan.resume = True
            with open_dict(plan.cfg):
                plan.cfg.ckpt_path = "last"
            log.info("step %s: resuming from %s (stopped part-way, same config and inputs)", plan.name,
                     plan.folder / LAST_CHECKPOINT)
            return
        self.clear_folder(plan)
        atomic_write_text(plan.folder / STARTED_FILE, json.dumps({"key": plan.key}) + "\n")

    def stopped_part_way(self, plan: StepPlan) -> bool:
        """Its training started with this key, was interrupted (a failed run forgets its start:
        ``forget_start``) after an epoch, and its fit had not ended (a fit that ended, even if
        its step was stopped before it was recorded, wrote model.pt: it runs again from the start)."""
        started = read_record(plan.folder / STARTED_FILE) or {}
        return (STAGES[plan.stage].trains and started.get("key") == plan.key
                and (plan.folder / LAST_CHECKPOINT).is_file()
                and not plan.target.exists() and not (plan.folder / "metrics.json").exists())

    def forget_start(self, plan: StepPlan) -> None:
        """A step that failed (not one that was interrupted) starts over when it runs again: its
        checkpoint may hold what made it fail (a bug fixed since, a diverged run)."""
        (plan.folder / STARTED_FILE).unlink(missing_ok=True)

    def clear_folder(self, plan: StepPlan) -> None:
        """What an earlier run of the step left (an old config's model.pt, an interrupted run's
        checkpoints) is moved into ``.replaced/``, so it can neither be mistaken for this run's
        output nor lost."""
        plan.folder.mkdir(parents=True, exist_ok=True)
        moved = set_aside_earlier_run(plan.folder)
        if moved is not None:
            log.info("step %s: an earlier run's files are now in %s", plan.name, moved)

    def launch(self, plan: StepPlan, env: dict | None = None, log_file: Path | None = None,
               start: StepStarter = start_subprocess) -> StepProcess:
        """The step as its own ``python -m geovq.train`` process, with its completion token:
        ``start`` makes it a new interpreter or a fork of the study's step server
        (``geovq/study/step_process.py``); its output goes to ``log_file`` (None: ours)."""
        args = [f"stage={plan.stage}", *plan.overrides, f"hydra.run.dir={plan.folder}", f"paths.log_dir={self.root}",
                *(["ckpt_path=last"] if plan.resume else [])]
        env = {**(os.environ if env is None else env), STEP_TOKEN_ENV: plan.token}
        return start(args, env, log_file)

    def collect(self, plan: StepPlan, returncode: int, log_file: Path | None = None) -> dict:
        """The metrics a step run by ``launch`` wrote in this run, or why it failed. Its exit code
        alone is not enough: a step counts only if it wrote back its token when it finished."""
        where = f"its log, {log_file}," if log_file else "its output above"
        if returncode != 0:
            if returncode not in INTERRUPTED_EXIT_CODES:
                self.forget_start(plan)
            raise TrainingError(
                f"the pipeline's step '{plan.name}' (stage={plan.stage}) failed with exit code {returncode}; "
                f"{where} says why. Rerun the same command to continue: finished steps are reused."
            )
        if not completed_with(plan.folder, plan.token):
            raise TrainingError(
                f"the pipeline's step '{plan.name}' (stage={plan.stage}) exited without saying it finished "
                f"(no {COMPLETION_FILE} of this run in {plan.folder}), so it did not finish and is not recorded; "
                f"{where} says why. Rerun the same command to continue: finished steps are reused."
            )
        return json.loads((plan.folder / "metrics.json").read_text())

    def record(self, plan: StepPlan, metrics: dict, seconds: float) -> StepResult:
        metrics = {k: float(v) for k, v in metrics.items()}
        done = {"stage": plan.stage, "key": plan.key, "output_sha256": file_sha256(plan.target), "seconds": seconds,
                "resumed": plan.resume, "metrics": metrics}
        atomic_write_text(plan.folder / STEP_FILE, json.dumps(done, indent=2) + "\n")
        result = StepResult(plan.name, plan.folder, plan.target, metrics, seconds, False, resumed=plan.resume)
        self.results[plan.name] = result
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
            section[leaf] = "sha256:" + self.results[upstream].output_sha256
        return config_hash(config)


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
    """The method's representation chain, then its prior, samples and evaluation, in ``seed_folder``
    (in a study without priors, the evaluation of its codes alone)."""
    for step in study.chain(method.codes):
        pipe.step(f"{seed_folder}/{step.name}", step.stage, list(step.overrides),
                  {key: f"{seed_folder}/{upstream}" for key, upstream in step.inputs})
    prior, sample, evaluate = (f"{seed_folder}/{study.derived_step(method.name, stage)}" for stage in DERIVED)
    grids, codes = f"{seed_folder}/{study.grids_step(method.name)}", f"{seed_folder}/{method.codes}"
    if not study.priors:  # evaluate is reconstruction_<method> here
        pipe.step(evaluate, "evaluate", ["stage.reconstruction_only=true", *method.overrides["evaluate"]],
                  {"stage.codes": codes})
        return
    pipe.step(prior, "prior", list(method.overrides["prior"]), {"stage.codes": grids})
    # Codes that copy the prior's grids with another decoder (a fine-tuned one) are decoded by it.
    decoder = {} if codes == grids else {"stage.codes": codes}
    pipe.step(sample, "sample", list(method.overrides["sample"]), {"stage.prior": prior, **decoder})
    pipe.step(evaluate, "evaluate", list(method.overrides["evaluate"]),
              {"stage.samples": sample, "stage.classifier": "classifier"})


class StepChecker:
    """Stands in for a Pipeline while the steps are declared: composes and checks each step's
    config (once), so that a bad setting of a late step (an evaluation's, after hours of training)
    is refused before the first step runs. An input not made yet is a path no run writes."""

    def __init__(self, pipe: Pipeline, outputs: dict[str, Path]):
        self.pipe = pipe
        self.outputs = outputs

    def step(self, name: str, stage: str, overrides: list[str] = (), inputs: dict[str, str] | None = None) -> None:
        if name in self.outputs:
            return
        paths = {key: self.outputs[upstream] for key, upstream in (inputs or {}).items()}
        self.pipe.checked_config(name, stage, list(overrides), paths)
        # A path no run writes: an earlier run's output in the step's folder must not be read
        # (nor checked against today's settings) before the step runs again and sets it aside.
        self.outputs[name] = self.pipe.root / name / ".not-made-yet" / STAGE_OUTPUTS[stage]


def check_every_step(pipe: Pipeline, study: Study, seeds: list[int], per_stage: dict) -> None:
    """Every step's settings, before any step runs. The first seed stands for all: a seed changes
    no setting that is checked (seed_list has checked the seeds themselves). A study without priors
    checks the steps a later run with priors adds too, so that a mistake in pipeline.prior shows
    now, not when that run starts."""
    outputs: dict[str, Path] = {}
    for variant in [study] if study.priors else [study, replace(study, priors=True)]:
        declare_steps(pipe, variant, seeds[:1], per_stage, lambda target: StepChecker(target, outputs))


def declare_steps(pipe: Pipeline, study: Study, seeds: list[int], per_stage: dict, runner) -> None:
    """Every step of the study, in order: the classifier (the measuring instrument of the samples,
    one for every seed and method; none without priors), then each seed's methods.
    ``runner(pipeline)`` is what receives the steps: the pipeline itself (run them now) or a
    recorder (run them later, several at once)."""
    if study.priors:
        runner(pipe).step("classifier", "classifier")
    for seed in seeds:
        seeded = Pipeline(pipe.root, [f"seed={seed}", *pipe.base], per_stage, pipe.results, pipe.get_stage, pipe.finished)
        for method in study.methods.values():
            run_method(runner(seeded), study, method, f"seed_{seed}")


def parallel_steps_option(cfg: DictConfig, options: dict) -> int:
    n_parallel = options.get("parallel", 1)
    if not isinstance(n_parallel, int) or isinstance(n_parallel, bool) or n_parallel < 1:
        raise ConfigError(f"pipeline.parallel is the number of steps run at once, a positive integer; got {n_parallel!r}.")
    if n_parallel > 1 and distributed(cfg):
        raise ConfigError(
            "pipeline.parallel > 1 runs several single-device steps at once; it cannot be combined with a "
            "distributed trainer (trainer=ddp / trainer.devices > 1). Choose one: pipeline.parallel=1 with DDP, "
            "or trainer.devices=1 with pipeline.parallel=N."
        )
    return n_parallel


def step_launcher_option(options: dict) -> str:
    launcher = options.get("step_launcher", "fork")
    if launcher not in STEP_LAUNCHERS:
        raise ConfigError(f"pipeline.step_launcher is how each step of pipeline.parallel=N starts: fork (a fork of a "
                          f"process that has loaded torch once) or subprocess (a new interpreter); got {launcher!r}.")
    return launcher


# The pipeline's true/false options: their defaults, and what true and false mean.
SWITCHES = {
    "lend_idle_cores": (False, "lend an idle place's threads to the steps running, or not"),
    "priors": (True, "each method's prior, samples and their fidelity, or its codes' reconstruction and codebook "
                     "use alone, without the priors' hours"),
}


def switch_option(options: dict, name: str) -> bool:
    default, meaning = SWITCHES[name]
    value = options.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"pipeline.{name} is true or false ({meaning}); got {value!r}.")
    return value


def reuse_from_option(options: dict, root: Path) -> FinishedSteps | None:
    folders = options.get("reuse_from") or []
    if isinstance(folders, str) or not all(isinstance(folder, str) and folder for folder in folders):
        raise ConfigError(f"pipeline.reuse_from lists the folders of other studies whose finished steps this one may "
                          f"copy, e.g. 'pipeline.reuse_from=[outputs/experiments/paper]'; got {folders!r}.")
    others = [Path(folder) for folder in folders if Path(folder).resolve() != root.resolve()]
    return FinishedSteps(others) if others else None


def run_study(cfg: DictConfig, get_stage: StageLookup) -> dict:
    """The study of ``cfg.pipeline``: every step, then the report; returns the report's summary."""
    options = OmegaConf.to_container(cfg.pipeline, resolve=True)
    study = plan_study(options.get("steps"), options.get("methods"), switch_option(options, "priors"), options.get("only"))
    seeds = seed_list(cfg)
    per_stage = {key: options.get(key) or [] for key in ("all", *STEP_STAGES)}
    pipe = Pipeline(output_dir(cfg), user_overrides(), per_stage, get_stage=get_stage,
                    finished=reuse_from_option(options, output_dir(cfg)))
    n_parallel, launcher = parallel_steps_option(cfg, options), step_launcher_option(options)
    lend_idle_cores = switch_option(options, "lend_idle_cores")
    if lend_idle_cores and n_parallel == 1:
        log.warning("pipeline.lend_idle_cores=true does nothing with pipeline.parallel=1: the one step running "
                    "has every core already.")
    check_every_step(pipe, study, seeds, per_stage)
    if n_parallel == 1:
        declare_steps(pipe, study, seeds, per_stage, lambda target: target)
    else:
        requests = {}
        declare_steps(pipe, study, seeds, per_stage, lambda target: StepRecorder(target, requests))
        run_steps(list(requests.values()), n_parallel, launcher, lend_idle_cores)
    images = None
    if options.get("figures", True):
        data = instantiate(compose_step(["stage=vae", *options.get("all", []), *pipe.base], "vae").data)
        images = (data.split("train").tensors[0], data.split("test").tensors[0])
    report = write_report(pipe, study, seeds, output_dir(cfg), options, images)
    log_without_trainer(cfg, report["summary"], [output_dir(cfg) / name for name in report["figures"]])
    return report["summary"]
