"""Errors a user can act on.

Each carries a message that names the problem and the fix; the command-line entry point prints
the message alone (no traceback) and exits non-zero.
"""


class GeovqError(Exception):
    """Base class of every error with a message meant for the person running geovq."""


class ConfigError(GeovqError, ValueError):
    """An impossible or invalid setting (negative epochs, more clusters than landmarks, ...)."""


class DataError(GeovqError):
    """The data could not be found or read."""


class ArtifactError(GeovqError):
    """An artifact is missing, unreadable, of the wrong kind, or made from other inputs."""


class TrainingError(GeovqError):
    """Training cannot continue (e.g. the loss became NaN)."""


class ParameterError(ValueError):
    """An invalid argument of a building block (a quantizer, a layer), raised by the lower layers
    (``geovq.quantize``, ``geovq.nn``), which know their own arguments but not the config.

    ``parameter`` names the argument; the stage that built the object turns the error into a
    :class:`ConfigError` naming the config key to change (see ``geovq.config_keys``).
    """

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter
