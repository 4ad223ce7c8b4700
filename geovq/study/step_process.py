"""How a study starts one step's process: ``python -m geovq.train ARGS`` with the step's
environment, its output in the step's log.

``pipeline.step_launcher=fork`` (the default) forks each step from a server process that imported
torch, Lightning, Hydra and the stages once (multiprocessing's forkserver, started at the first
step and kept for the life of the study's process), so a step starts in well under a second
instead of paying the 5-10 s of interpreter and imports again (docs/scaling.md). The child is
still a process of its own: its crash, memory, signal handlers and thread settings are its own,
and it runs the same entry point with the same arguments and environment as the command.
``subprocess`` starts each step as a new interpreter, the way it was before; it is also what
``fork`` falls back to where there is no forkserver (Windows).

The server imports modules and does nothing else: no torch work runs in it, so torch's OpenMP
thread pool and CUDA are untouched when it forks (neither survives a fork; the OpenBLAS pools that
numpy and scipy start on import are rebuilt in the child by OpenBLAS's own fork handlers). The
first step waits for the server's imports (seconds, once).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import runpy
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Protocol

from geovq.stage_registry import STAGES, STEP_STAGES

log = logging.getLogger(__name__)

STEP_LAUNCHERS = ("fork", "subprocess")
# What the server imports before it forks the first step: what every step's start-up spends its
# seconds on. geovq/train.py itself runs in each step as __main__ (as -m runs it), and is not
# loaded under its own name here: runpy warns when a module it runs as __main__ is loaded already.
PRELOAD = ["geovq.study.server_signals",  # first: the server outlives SIGINT/SIGTERM from then on
           "torch", "lightning", "hydra", "geovq.training", *(STAGES[stage].module for stage in STEP_STAGES)]


class StepProcess(Protocol):
    """A running step: the part of ``subprocess.Popen`` that the study uses."""

    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


# start(args, env, log_file): the step's process, running ``python -m geovq.train ARGS``.
StepStarter = Callable[[list[str], dict[str, str], "Path | None"], StepProcess]


def start_subprocess(args: list[str], env: dict[str, str], log_file: Path | None = None) -> subprocess.Popen:
    """The step as a new interpreter; its output to ``log_file`` (None: this process's)."""
    command = [sys.executable, "-m", "geovq.train", *args]
    if log_file is None:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env)
    with open(log_file, "a") as stream:  # the child holds its own handle; a resumed step's log goes on
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env, stdout=stream, stderr=stream)


class ForkedStep:
    """A step forked from the server, with Popen's methods: exit status 143 / 130 when a signal
    stopped it, a negative one when a signal killed it, as a subprocess reports them."""

    def __init__(self, process: multiprocessing.Process):
        self.process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(f"step process {self.pid}", timeout)
        return self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()


def start_forked(args: list[str], env: dict[str, str], log_file: Path | None = None) -> ForkedStep:
    """The step as a fork of the server (started by the first call), its output to ``log_file``."""
    if log_file is not None:
        open(log_file, "a").close()  # there from the start, like the subprocess's; the child appends
    process = step_server().Process(target=run_forked_step, args=(list(args), dict(env), log_file and str(log_file)),
                                    name=f"geovq.train {args[0] if args else ''}".strip())
    process.start()
    return ForkedStep(process)


def step_server() -> multiprocessing.context.ForkServerContext:
    """multiprocessing's forkserver, whose server (one per process, started by the first
    ``Process.start``) loads PRELOAD first; once it runs, set_forkserver_preload changes nothing."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def step_starter(launcher: str) -> StepStarter:
    """The start function of ``pipeline.step_launcher`` (checked by the caller)."""
    if launcher == "fork" and "forkserver" not in multiprocessing.get_all_start_methods():
        log.info("pipeline.step_launcher=fork needs a forkserver, which this platform lacks: "
                 "each step starts as a new interpreter (pipeline.step_launcher=subprocess).")
        return start_subprocess
    return start_forked if launcher == "fork" else start_subprocess


# -- in the forked child ---------------------------------------------------------------------


def run_forked_step(args: list[str], env: dict[str, str], log_file: str | None) -> None:
    """The forked child becomes ``python -m geovq.train ARGS``: the step's environment, then
    geovq/train.py run as ``__main__``, as ``-m`` runs it (its modules are loaded already, so
    this costs milliseconds). Its exit status is the entry point's: multiprocessing turns
    SystemExit(n) into n."""
    enter_step_environment(env, log_file)
    sys.argv = [sys.argv[0], *args]  # run_module puts the module's file first, as -m does
    # Under -m the module exists only as __main__ (a study started by the `geovq` script imported it).
    sys.modules.pop("geovq.train", None)
    try:
        runpy.run_module("geovq.train", run_name="__main__", alter_sys=True)
    except Exception:  # what the interpreter does with an uncaught error: its traceback, status 1
        sys.excepthook(*sys.exc_info())
        raise SystemExit(1) from None
    finally:
        # An interpreter's exit: wait for the non-daemon threads, then the atexit handlers (log
        # files, loggers, DataLoader workers); the fork ends with os._exit, which runs neither.
        threading._shutdown()
        atexit._run_exitfuncs()


def enter_step_environment(env: dict[str, str], log_file: str | None) -> None:
    """What a new interpreter started with ``env`` and its output in ``log_file`` would have:
    signals that stop it quietly while it starts, stdout and stderr (also of C code) in the log,
    the environment, and torch's and BLAS's thread counts, which they read from the environment
    when they were loaded, in the server, before the step's environment existed."""
    from geovq.interrupts import stop_quietly_while_starting

    stop_quietly_while_starting()
    if log_file is not None:
        redirect_output(log_file)
    os.environ.clear()
    os.environ.update(env)
    threads = env.get("OMP_NUM_THREADS")
    if threads:
        import torch
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(threads))  # numpy's and scipy's OpenBLAS, and the OpenMP runtime
        torch.set_num_threads(int(threads))
    import numpy

    numpy.random.seed()  # its own entropy, as in a new interpreter (the fork copied the server's state)


def redirect_output(log_file: str) -> None:
    """fds 1 and 2 onto the log (so C code writes there too), and new sys.stdout / sys.stderr on
    them, buffered as a new interpreter buffers a file."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    encoding = getattr(sys.stdout, "encoding", None)  # the locale's, as the server's interpreter chose it
    sys.stdout = sys.__stdout__ = open(1, "w", encoding=encoding, closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding=encoding, errors="backslashreplace", buffering=1,
                                       closefd=False)
