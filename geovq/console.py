"""What a geovq run prints: each message once, on its own line above the progress bars.

Hydra configures logging from ``conf/hydra/job_logging/geovq.yaml``: one console handler on the
root logger (Lightning's own handlers removed, so its lines are not printed twice), writing
through tqdm so that a log line never runs into a progress bar, and a filter for Lightning's
adverts. Python warnings become log lines of the same handler, once each.
"""

from __future__ import annotations

import logging
import warnings

import lightning.pytorch  # noqa: F401  (imported before Hydra configures logging, so that
# the logging config removes the console handlers Lightning attaches to its loggers at import)
from tqdm.auto import tqdm

# Messages that are advertisements or third-party deprecations a geovq user cannot act on.
# "Received SIGTERM" too: geovq's own line says what was interrupted and how to continue.
_NOISE = ("litlogger", "LeafSpec", "TPU available", "Received SIGTERM")


class ProgressAwareHandler(logging.StreamHandler):
    """A console handler that prints above active tqdm bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(word in message for word in _NOISE)


def route_warnings_to_log() -> None:
    """Print each Python warning as one log line (``UserWarning: ...``), without its source line."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # torch's note on a foreign pickle's protocol, printed before geovq refuses the file anyway
    warnings.filterwarnings("ignore", message=".*Detected pickle protocol.*")
    logger = logging.getLogger("py.warnings")

    def show(message, category, filename, lineno, file=None, line=None):
        logger.warning("%s: %s", category.__name__, message)

    warnings.showwarning = show
