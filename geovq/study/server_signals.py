"""Imported first by the step server (geovq/study/step_process.py, PRELOAD) and by nothing else:
the server ignores SIGINT and SIGTERM, so that a signal sent to the whole process group (Ctrl-C,
GNU timeout, SLURM's scancel) reaches the study and its steps but leaves the server alive while
the study stops them. Without it, a dead server makes multiprocessing report every running step as
ended (exit code 255) and terminate() on them does nothing: steps left running on their own. Each
step sets its own handlers as it starts (enter_step_environment)."""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
