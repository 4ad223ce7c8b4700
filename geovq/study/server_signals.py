"""Imported first by the step server (geovq/study/step_process.py, PRELOAD) and by nothing else:
the server outlives SIGINT and SIGTERM, so that a signal sent to the whole process group (Ctrl-C,
GNU timeout, SLURM's scancel) reaches the study and its steps but leaves the server alive while
the study stops them. Without it, a dead server makes multiprocessing report every running step as
ended (exit code 255) and terminate() on them does nothing: steps left running on their own.

A forked step inherits the handler. Ignoring the signals there (SIG_IGN) would leave a step that
is stopped in the milliseconds before it sets its own handlers (enter_step_environment) running
until the study's grace period ends and it is killed; the handler ends such a step at once, with
128 + signal as a step stopped later does."""

import os
import signal

SERVER_PID = os.getpid()


def stop_unless_server(signum, frame) -> None:
    if os.getpid() != SERVER_PID:
        raise SystemExit(128 + signum)


signal.signal(signal.SIGINT, stop_unless_server)
signal.signal(signal.SIGTERM, stop_unless_server)
