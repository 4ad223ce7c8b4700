"""``pipeline.parallel=N``: the pipeline's independent steps, N at a time.

Each step runs as its own ``python -m geovq.train stage=...`` process with its output in
``<step>/step.log``: a fork of a process that has loaded torch once, or a new interpreter
(``pipeline.step_launcher``; ``geovq/study/step_process.py``). The CPU's cores are split between
the N processes (a 2-thread torch job scales poorly on small matrices, two 1-thread jobs side by
side get more done), except for a step that is the only one able to run (the head of a chain:
nothing can become ready while it runs), which gets every core. With
``pipeline.lend_idle_cores=true`` the threads of a place that nothing ready can take go to the
training steps running until a step is ready (geovq/callbacks/thread_share.py says how, and why
it is off by default). Where several GPUs are visible each process gets one of them. A step
starts when the steps it reads are done; steps already done with the same config and inputs are
reused as in the serial run. When a step fails, the steps already running finish (and are kept),
nothing new starts, and the error names the failed step's log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from geovq.callbacks.thread_share import THREADS_FILE_ENV, write_thread_count
from geovq.errors import TrainingError
from geovq.interrupts import signals_deferred
from geovq.stage_registry import trains
from geovq.study.step_process import StepProcess, StepStarter, step_starter

log = logging.getLogger(__name__)

STEP_LOG = "step.log"
POLL_SECONDS = 0.5


class Pipeline(Protocol):
    """What the scheduler needs of a pipeline (``geovq.study.runner.Pipeline``): plan a step (its
    plan has ``name``, ``stage`` and ``folder``), reuse it when done, else launch it as a process,
    collect what the process wrote and record the step as done."""

    results: dict

    def plan(self, name: str, stage: str, overrides: list[str], inputs: dict[str, str]) -> Any: ...

    def reused(self, plan) -> Any: ...

    def prepare_folder(self, plan) -> None: ...

    def launch(self, plan, env: dict, log_file: Path, start: StepStarter) -> StepProcess: ...

    def collect(self, plan, returncode: int, log_file: Path | None = None) -> dict: ...

    def record(self, plan, metrics: dict, seconds: float) -> Any: ...


@dataclass
class StepRequest:
    pipe: Pipeline  # the pipeline (and so the seed) the step belongs to
    name: str
    stage: str
    overrides: list[str]
    inputs: dict[str, str] = field(default_factory=dict)


class StepRecorder:
    """Stands in for a Pipeline while the steps are declared: notes each step (once) instead of
    running it."""

    def __init__(self, pipe: Pipeline, requests: dict[str, StepRequest]):
        self.pipe = pipe
        self.requests = requests

    def step(self, name: str, stage: str, overrides: list[str] = (), inputs: dict[str, str] | None = None) -> None:
        self.requests.setdefault(name, StepRequest(self.pipe, name, stage, list(overrides), dict(inputs or {})))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]


def step_environment(slot: int, threads: int, gpus: list[str], threads_file: Path | None = None) -> dict[str, str]:
    """The environment of the process in ``slot``: its threads (and the file where the scheduler
    changes their count while it runs), and one GPU of several."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if threads_file is not None:
        env[THREADS_FILE_ENV] = str(threads_file)
    if len(gpus) > 1:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


@dataclass
class Running:
    plan: Any  # the pipeline's plan of the step (geovq.study.runner.StepPlan)
    pipe: Pipeline
    process: StepProcess
    slot: int
    slots: int  # how many of the N places it holds: all of them when it runs alone on every core
    log_file: Path
    started: float
    threads: int  # the count it started with
    threads_file: Path | None = None  # where it reads a new count (None: it keeps its first)
    lent: int = 0  # threads it has now beyond those it started with


def run_steps(requests: list[StepRequest], n_parallel: int, launcher: str = "fork",
              lend_idle_cores: bool = False) -> None:
    """Runs ``requests`` (declared inputs first), at most ``n_parallel`` at once, in
    ``launch_order`` (seed by seed; within a seed what trains nothing first, then the longest
    chain), each started by ``launcher`` (``pipeline.step_launcher``: fork | subprocess); with
    ``lend_idle_cores``, the threads of a place nothing can take go to the training steps running."""
    cores, gpus, start = available_cores(), visible_gpus(), step_starter(launcher)
    log.info("pipeline.parallel=%d: up to %d steps at once, %d thread(s) each (a step that runs alone: %d)%s%s",
             n_parallel, n_parallel, max(1, cores // n_parallel), cores,
             f", GPUs {', '.join(gpus)} in turn" if len(gpus) > 1 else "",
             "; an idle place lends its threads to the training steps running" if lend_idle_cores else "")
    pending = launch_order(requests)
    lending = tempfile.TemporaryDirectory(prefix="geovq-threads-") if lend_idle_cores else contextlib.nullcontext()
    with lending as threads_dir:
        failures = schedule(pending, n_parallel, cores, gpus, start, threads_dir and Path(threads_dir))
    if failures:
        raise failures[0]


def schedule(pending: list[StepRequest], n_parallel: int, cores: int, gpus: list[str], start: StepStarter,
             threads_dir: Path | None) -> list[TrainingError]:
    """``run_steps``'s loop: start what is ready, lend idle places' threads (with a
    ``threads_dir``), collect what ended; the failed steps' errors."""
    plans: dict[str, Any] = {}
    running: list[Running] = []
    failures: list[TrainingError] = []
    try:
        while pending or running:
            if not failures:
                start_ready_steps(pending, plans, running, n_parallel, cores, gpus, start, threads_dir)
            if threads_dir is not None:
                share_cores(running, n_parallel, cores)
            if not running:
                if pending and not failures:
                    names = ", ".join(request.name for request in pending)
                    raise TrainingError(f"the pipeline's steps {names} wait for steps that are not declared.")
                break
            time.sleep(POLL_SECONDS)
            for job in [job for job in running if job.process.poll() is not None]:
                running.remove(job)
                try:
                    metrics = job.pipe.collect(job.plan, job.process.returncode, job.log_file)
                except TrainingError as err:
                    failures.append(err)
                    log.error("step %s failed; the %d step(s) still running finish first", job.plan.name, len(running))
                    continue
                seconds = time.perf_counter() - job.started
                job.pipe.record(job.plan, metrics, seconds)
                log.info("step %s: done in %.0f s", job.plan.name, seconds)
    finally:
        stop_processes([job.process for job in running])  # interrupted, or an error here: no orphans
    return failures


def stop_processes(processes: list[StepProcess], grace_seconds: float = 60) -> None:
    """Ask each step process still running to stop (SIGTERM: it says what it kept and exits
    143), wait for it, and kill one that is still there after ``grace_seconds``: the pipeline
    never exits while a step of it runs on, holding its folder's lock."""
    alive = [process for process in processes if process.poll() is None]
    for process in alive:
        process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in alive:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch_order(requests: list[StepRequest]) -> list[StepRequest]:
    """The requests seed by seed (the folder before the step's name, in the order declared; a step
    of no seed, the classifier, with the first). Within a seed the steps that train nothing
    (quantize, sample, evaluate: seconds to minutes) come first, then the training steps, the head
    of the longest chain of waiting steps first (ties: as declared). A prior's sample and
    evaluation so run as soon as it ends, before the seed's next prior, and a seed's before the
    next seed's training: a study that is stopped has the finished priors evaluated, and two
    places stay busy either way. Except the first seed's: the classifier that every evaluation
    reads is the end of a short chain, so it trains after that seed's priors have started, where
    it fills the place a prior leaves idle at the end (first would cost about its own time, 2-4
    minutes, on a one-seed study's wall time); the first seed's samples wait for it."""
    lengths = chain_length(requests)
    seeds: dict[str, int] = {}
    for request in requests:
        if "/" in request.name:
            seeds.setdefault(request.name.split("/", 1)[0], len(seeds))

    def seed_index(request: StepRequest) -> int:
        return seeds[request.name.split("/", 1)[0]] if "/" in request.name else 0

    return sorted(requests, key=lambda request: (seed_index(request), trains(request.stage), -lengths[request.name]))


def chain_length(requests: list[StepRequest]) -> dict[str, int]:
    """How many steps wait on each step, one after the other, at most: the longest chains start
    first (a GridVAE before the classifier, which only the evaluations read)."""
    readers: dict[str, list[str]] = {request.name: [] for request in requests}
    for request in requests:
        for upstream in request.inputs.values():
            readers.setdefault(upstream, []).append(request.name)
    lengths: dict[str, int] = {}

    def length(name: str) -> int:
        if name not in lengths:
            lengths[name] = max((1 + length(reader) for reader in readers.get(name, [])), default=0)
        return lengths[name]

    return {request.name: length(request.name) for request in requests}


def start_ready_steps(pending: list[StepRequest], plans: dict[str, Any], running: list[Running],
                      n_parallel: int, cores: int, gpus: list[str], start: StepStarter,
                      threads_dir: Path | None = None) -> None:
    """Plans (once) every pending step whose inputs are done, drops those already done, then
    starts the planned ones while places are free; each training step gets a file in
    ``threads_dir`` (None: none) where it finds the thread count ``share_cores`` gives it."""
    changed = True
    while changed:  # a reused step may make the steps that read it ready
        changed = False
        for request in list(pending):
            results = request.pipe.results
            if request.name in plans or not all(upstream in results for upstream in request.inputs.values()):
                continue
            plan = request.pipe.plan(request.name, request.stage, request.overrides, request.inputs)
            if request.pipe.reused(plan):
                pending.remove(request)
                changed = True
            else:
                plans[request.name] = plan
    ready = [request for request in pending if request.name in plans]
    if not running and len(ready) == 1:  # nothing can become ready while it runs: it gets every core
        launch(ready[0], plans, pending, running, slot=0, slots=n_parallel, threads=cores, gpus=gpus, start=start,
               threads_dir=threads_dir)
        return
    for request in ready:
        taken = {job.slot for job in running}
        if sum(job.slots for job in running) >= n_parallel:
            return
        slot = min(set(range(n_parallel)) - taken)
        launch(request, plans, pending, running, slot=slot, slots=1, threads=max(1, cores // n_parallel), gpus=gpus,
               start=start, threads_dir=threads_dir)


def launch(request: StepRequest, plans: dict[str, Any], pending: list[StepRequest], running: list[Running],
           slot: int, slots: int, threads: int, gpus: list[str], start: StepStarter,
           threads_dir: Path | None = None) -> None:
    plan = plans.pop(request.name)
    pending.remove(request)
    request.pipe.prepare_folder(plan)
    log_file = plan.folder / STEP_LOG
    threads_file = threads_file_for(request, threads_dir, threads)
    env = step_environment(slot, threads, gpus, threads_file)
    with signals_deferred():  # a process started is one the study knows, and stops when it is stopped
        process = request.pipe.launch(plan, env=env, log_file=log_file, start=start)
        running.append(Running(plan, request.pipe, process, slot, slots, log_file, time.perf_counter(), threads,
                               threads_file))
    log.info("step %s: running stage=%s on %d thread(s) (log: %s)", request.name, request.stage, threads, log_file)


def threads_file_for(request: StepRequest, threads_dir: Path | None, threads: int) -> Path | None:
    """The file in ``threads_dir`` where a training step finds its thread count (``threads`` to
    start with; only a training step reads it, at its batches); None for other steps."""
    if threads_dir is None or not trains(request.stage):
        return None
    path = threads_dir / quote(request.name, safe="")  # step names are unique, and so are these
    return path if written(path, threads, request.name) else None


def written(path: Path, count: int, step: str) -> bool:
    """Write ``count`` for ``step``; False, with a warning, where it cannot be written: lending
    threads may cost speed, never the study."""
    try:
        write_thread_count(path, count)
    except OSError as err:
        log.warning("step %s: cannot write its thread count to %s (%s); it keeps the threads it has", step, path, err)
        return False
    return True


def share_cores(running: list[Running], n_parallel: int, cores: int) -> None:
    """While places are idle (nothing ready took them), the threads nobody started with go to the
    training steps running, split evenly; once every place is taken again, each has the threads it
    started with. Steps without a file keep theirs."""
    followers = [job for job in running if job.threads_file is not None]
    spare = 0
    if followers and sum(job.slots for job in running) < n_parallel:
        spare = max(0, cores - sum(job.threads for job in running))
    for rank, job in enumerate(followers):
        lent = spare // len(followers) + (rank < spare % len(followers))
        if lent == job.lent:
            continue
        if not written(job.threads_file, job.threads + lent, job.plan.name):
            job.threads_file = None
            continue
        log.info("step %s: %d thread(s) from its next batch", job.plan.name, job.threads + lent)
        job.lent = lent
