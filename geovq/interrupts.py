"""Stopping a run on purpose: Ctrl-C (SIGINT) and SIGTERM (``kill``, ``timeout``, a container
stop, a SLURM preemption) end it as an interruption, never as a success.

Lightning turns SIGTERM into an exception that exits with status 0, and Ctrl-C into
``sys.exit(1)`` after a screenful of traceback. While :func:`signals_interrupt` is active both
signals raise :class:`RunInterrupted` instead, wherever the run is; the entry point turns it into
one line and the conventional exit status 128 + signal number (130, 143), so a scheduler, a shell
loop or a study never mistakes a stopped run for a finished one.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# The process that installed the handlers. A process forked from it (a quantizer's fork-Pool worker)
# inherits them, but its SIGTERM comes from its own pool's terminate(), not from whoever stops the
# run: it must die as a plain worker would, not raise RunInterrupted (one traceback per worker).
_run_pid: int | None = None

# Set by the first stop signal of a run. Lightning's signal connector puts back the handlers it
# found (this module's) while the run unwinds, so the flag, not the handler in place, says that a
# later signal has nothing left to stop.
_stopping = False


class RunInterrupted(BaseException):
    """The run was stopped by a signal. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way up (Hydra's instantiate, a retry loop) swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum, frame) -> None:
    global _stopping
    if os.getpid() != _run_pid:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _stopping:
        return
    if signum == signal.SIGTERM and _distributed():
        # Every rank must stop at the same step, or the others wait forever in a collective:
        # Lightning's own handler (which runs before this one) shares the signal between the
        # ranks, and each raises SIGTERMException at the next step boundary (see as_interruption).
        return
    # Later signals (a second Ctrl-C while child processes are being stopped) are ignored: the
    # first one is already unwinding the run, and a second exception would cut its clean-up short.
    _stopping = True
    ignore_later_signals()
    raise RunInterrupted(signum)


def ignore_later_signals() -> None:
    """From now on SIGINT and SIGTERM do nothing: for a process that is reporting its
    interruption and exiting, where a second signal would only replace that report by another."""
    # A handler that does nothing, not SIG_IGN: a signal that arrived with the first (a study's
    # SIGINT and SIGTERM together) is already pending in Python, and Python reports a pending
    # signal whose handler became SIG_IGN as "OSError: Signal 15 ignored due to race condition".
    for stop in STOP_SIGNALS:
        signal.signal(stop, _ignore_later_signal)


def _ignore_later_signal(signum, frame) -> None:
    pass


def _distributed() -> bool:
    import torch.distributed

    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def signals_interrupt():
    """Within this block SIGINT and SIGTERM raise RunInterrupted (main thread only, where
    Python delivers signals); the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _run_pid, _stopping
    _run_pid = os.getpid()
    _stopping = False
    previous = {stop: signal.getsignal(stop) for stop in STOP_SIGNALS}
    for stop in STOP_SIGNALS:
        signal.signal(stop, _raise_interrupted)
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


@contextmanager
def signals_deferred():
    """Within this block SIGINT and SIGTERM are held and arrive, to the handlers there were, as it
    ends. Starting a step's process and recording it as running must not be cut in two: a study
    stopped in between would not know the process it started, which would then run on alone,
    holding its step's folder. (Handlers, not a blocked signal mask: a signal sent to the process
    reaches whichever of its threads does not block it, and torch's threads do not.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {stop: signal.getsignal(stop) for stop in STOP_SIGNALS}
    for stop in STOP_SIGNALS:
        signal.signal(stop, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
        if held:
            signal.raise_signal(held[0])


def stop_quietly_while_starting() -> None:
    """Until a run starts, a signal (Ctrl-C while torch and Lightning load) ends the process with
    one line and 128 + signal, instead of a traceback through the import machinery."""

    def stop(signum, frame):
        print(f"interrupted ({signal.Signals(signum).name}) while starting; nothing was written.", file=sys.stderr)
        raise SystemExit(128 + signum)

    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, stop)


def as_interruption(err: BaseException) -> RunInterrupted | None:
    """The interruption behind ``err``: ours, a KeyboardInterrupt (no handler installed), or
    Lightning's SIGTERMException (raised on the other ranks of a distributed run)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(err, RunInterrupted):
        return err
    if isinstance(err, KeyboardInterrupt):
        return RunInterrupted(signal.SIGINT)
    if isinstance(err, SIGTERMException):
        return RunInterrupted(signal.SIGTERM)
    return None
