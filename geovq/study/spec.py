"""A study as data: the steps and methods an experiment declares in YAML (``pipeline.steps``,
``pipeline.methods``), checked and put in the order they run.

A *step* is one stage run: ``{stage: quantize, inputs: {stage.vae: vae}, overrides: [...]}``.
``inputs`` maps a config key of that stage to another step, whose output file the key receives,
so one GridVAE step serves every a posteriori quantizer that names it. A *method* names the step
whose code grids it studies (``codes:``); the pipeline derives its prior, samples and evaluation.

    steps:
      vae: {stage: vae}
      quantize_kmeans: {stage: quantize, inputs: {stage.vae: vae}, overrides: [quantizer=kmeans]}
    methods:
      A_kmeans: {codes: quantize_kmeans, title: "A: GridVAE + Euclidean K-Means"}

Nothing here runs anything: ``plan_study`` turns the config into checked plain objects, so a
mistake (a method naming a step that does not exist, a cycle, a step that makes no code grids)
is one message before any training starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geovq.artifacts import CODES_FILE
from geovq.errors import ConfigError
from geovq.stage_registry import STAGES, STEP_STAGES

# What each stage leaves in its folder for the next steps.
STAGE_OUTPUTS = {name: STAGES[name].output for name in STEP_STAGES}
# Stages whose output is code grids, i.e. what a method may study.
CODE_STAGES = tuple(stage for stage, output in STAGE_OUTPUTS.items() if output == CODES_FILE)
# Steps the pipeline itself adds for every method (their names are reserved).
DERIVED = ("prior", "sample", "evaluate")
# Those it adds without priors (pipeline.priors=false): the evaluation of the codes alone, in a
# step of its own name, so that neither kind of evaluation replaces the other in a study's folder.
RECONSTRUCTION_ONLY = ("evaluate",)
RECONSTRUCTION_STEP = "reconstruction"


@dataclass(frozen=True)
class Step:
    name: str
    stage: str
    overrides: tuple[str, ...] = ()
    inputs: tuple[tuple[str, str], ...] = ()  # (config key, step name)

    @property
    def output(self) -> str:
        return STAGE_OUTPUTS[self.stage]


@dataclass(frozen=True)
class Method:
    name: str
    codes: str
    title: str
    paper: str | None = None  # the paper's Table 1 row it reproduces (A or B)
    overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # per derived stage


@dataclass(frozen=True)
class Study:
    steps: dict[str, Step]
    methods: dict[str, Method]
    # False for a study of the codes alone: no prior, samples, nor the classifier that scores them.
    priors: bool = True

    @property
    def derived(self) -> tuple[str, ...]:
        """The steps added for every method."""
        return DERIVED if self.priors else RECONSTRUCTION_ONLY

    def grids_step(self, method: str) -> str:
        """The step whose code grids the method's prior learns: its codes step, or for codes that
        only change the decoder (stage=finetune) the step whose grids they copy."""
        step = self.steps[self.methods[method].codes]
        source = STAGES[step.stage].same_grids_as
        return dict(step.inputs).get(source, step.name) if source else step.name

    def derived_step(self, method: str, stage: str) -> str:
        """The name of the method's prior, sample or evaluate step. Methods that study the same code
        grids with the same prior settings share one prior: the first such method's. Without
        priors the evaluation is ``reconstruction_<method>``."""
        if stage == "evaluate" and not self.priors:
            return f"{RECONSTRUCTION_STEP}_{method}"
        if stage != "prior":
            return f"{stage}_{method}"
        wanted = (self.grids_step(method), self.methods[method].overrides["prior"])
        owner = next(m for m in self.methods.values() if (self.grids_step(m.name), m.overrides["prior"]) == wanted)
        return f"prior_{owner.name}"

    def chain(self, step: str) -> list[Step]:
        """The steps ``step`` needs, inputs first, ending with ``step`` itself."""
        order: list[Step] = []

        def visit(name: str) -> None:
            if any(s.name == name for s in order):
                return
            for _, upstream in self.steps[name].inputs:
                visit(upstream)
            order.append(self.steps[name])

        visit(step)
        return order

    @property
    def steps_run(self) -> set[str]:
        """The declared steps that some method's codes need (a step no method needs never runs)."""
        return {step.name for method in self.methods.values() for step in self.chain(method.codes)}


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where} must be a list of overrides like ['trainer.max_epochs=5'], got {value!r}.")
    return tuple(value)


def _step(name: str, spec: Any) -> Step:
    where = f"pipeline.steps.{name}"
    if not isinstance(spec, Mapping) or "stage" not in spec:
        raise ConfigError(f"{where} must be a mapping with a stage, e.g. {{stage: vae}}; got {spec!r}.")
    unknown = set(spec) - {"stage", "overrides", "inputs"}
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; a step takes stage, inputs and overrides.")
    stage = spec["stage"]
    if stage not in STAGE_OUTPUTS or stage in DERIVED:
        choices = [s for s in STAGE_OUTPUTS if s not in DERIVED]
        raise ConfigError(f"{where}.stage={stage} is not a step a study declares; choose one of {', '.join(choices)} "
                          "(prior, sample and evaluate are added for every method).")
    inputs = spec.get("inputs") or {}
    if not isinstance(inputs, Mapping):
        raise ConfigError(f"{where}.inputs must map config keys to step names, e.g. {{stage.vae: vae}}; got {inputs!r}.")
    return Step(name, stage, _strings(spec.get("overrides"), f"{where}.overrides"), tuple((str(k), str(v)) for k, v in inputs.items()))


def _method(name: str, spec: Any, steps: dict[str, Step]) -> Method:
    where = f"pipeline.methods.{name}"
    if not isinstance(spec, Mapping) or "codes" not in spec:
        raise ConfigError(f"{where} must name the step whose code grids it studies, e.g. {{codes: quantize_geodesic}}; got {spec!r}.")
    unknown = set(spec) - {"codes", "title", "paper", *DERIVED}
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; a method takes codes, title, paper, "
                          "and override lists for prior, sample and evaluate.")
    codes = spec["codes"]
    if codes not in steps:
        raise ConfigError(f"{where}.codes={codes} is not a step of this study; declared steps: {', '.join(steps) or 'none'}.")
    if steps[codes].stage not in CODE_STAGES:
        raise ConfigError(f"{where}.codes={codes} is a stage={steps[codes].stage} step, which makes no code grids; "
                          f"name a step of stage {' | '.join(CODE_STAGES)}.")
    paper = spec.get("paper")
    if paper not in (None, "A", "B"):
        raise ConfigError(f"{where}.paper={paper}: the paper's Table 1 has rows A and B only (or leave it out).")
    overrides = {stage: _strings(spec.get(stage), f"{where}.{stage}") for stage in DERIVED}
    return Method(name, codes, str(spec.get("title") or name), paper, overrides)


def _only(methods: dict[str, Method], only: Any) -> dict[str, Method]:
    """The methods that ``pipeline.only`` names, checked against the study's."""
    if isinstance(only, str) or not all(isinstance(name, str) for name in only):
        raise ConfigError(f"pipeline.only is a list of method names, e.g. 'pipeline.only=[A_geodesic,B_ema]'; got {only!r}.")
    if not only:
        raise ConfigError(f"pipeline.only=[] names no method; name some, e.g. 'pipeline.only=[{next(iter(methods), 'A_geodesic')}]', "
                          "or leave it null to run every method of the study.")
    unknown = [name for name in only if name not in methods]
    if unknown:
        raise ConfigError(f"pipeline.only names {unknown}, which are not methods of this study; its methods: "
                          f"{', '.join(methods)}.")
    return {name: method for name, method in methods.items() if name in only}


def plan_study(steps_cfg: Mapping | None, methods_cfg: Mapping | None, priors: bool = True,
               only: list[str] | None = None) -> Study:
    """The checked study of ``pipeline.steps`` / ``pipeline.methods`` (plain containers); without
    ``priors``, each method's codes are evaluated on reconstruction and codebook use alone; with
    ``only`` (pipeline.only), the named methods alone."""
    steps = {str(name): _step(str(name), spec) for name, spec in (steps_cfg or {}).items() if spec is not None}
    for step in steps.values():
        for key, upstream in step.inputs:
            if upstream not in steps:
                raise ConfigError(f"pipeline.steps.{step.name}.inputs.{key}={upstream} is not a step of this study; "
                                  f"declared steps: {', '.join(steps)}.")
    _check_acyclic(steps)
    methods = {str(name): _method(str(name), spec, steps) for name, spec in (methods_cfg or {}).items() if spec is not None}
    if only is not None:
        methods = _only(methods, only)
    if not methods:
        raise ConfigError("the study declares no methods: pick one with experiment=paper (or quick), or add "
                          "pipeline.methods.<name>={codes: <step>}.")
    clashes = [name for name in steps if name == "classifier" or name.split("_")[0] in (*DERIVED, RECONSTRUCTION_STEP)]
    if clashes:
        raise ConfigError(f"step names {clashes} are reserved for the steps the pipeline adds; rename them.")
    return Study(steps, methods, priors)


def _check_acyclic(steps: dict[str, Step]) -> None:
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            raise ConfigError(f"pipeline.steps form a cycle: {' -> '.join(path + [name])}; a step cannot need its own output.")
        state[name] = "open"
        for _, upstream in steps[name].inputs:
            visit(upstream, path + [name])
        state[name] = "done"

    for name in steps:
        visit(name, [])
