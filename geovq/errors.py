"""Errors a user can act on.

Each carries a message that names the problem and the fix; the command-line entry point prints
the message alone (no traceback) and exits non-zero.
"""

from contextlib import contextmanager


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
    :class:`ConfigError` naming the config key to change (:func:`config_section`).
    """

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


@contextmanager
def config_section(section: str, settings=None):
    """Building objects from the config section ``section``: a ParameterError becomes a
    ConfigError that names the config key (``quantizer.n_clusters``, ``model.quantizer.decay``),
    and a GeovqError wrapped by Hydra's instantiate comes out as itself. ``settings``, when
    given, are the section's keys: an error about anything else (the data ``X``) names no key."""
    try:
        yield
    except Exception as err:
        cause = err
        while cause is not None and not isinstance(cause, (GeovqError, ParameterError)):
            cause = cause.__cause__ or cause.__context__
        if cause is None or cause is err and isinstance(err, GeovqError):
            raise
        if isinstance(cause, GeovqError):
            raise cause from None
        if settings is not None and cause.parameter not in settings:
            raise ConfigError(f"{section}: {cause}") from None
        raise ConfigError(f"{section}.{cause.parameter}: {cause} Set it with {section}.{cause.parameter}=...") from None


@contextmanager
def caller_names(prefix: str = "", **names: str):
    """Inside this block, a ParameterError from a building block is renamed to the caller's name
    for that argument (``vocab_size`` -> ``n_codes``), after ``prefix`` (``quantizer.``): how a
    model names the arguments of the blocks it builds."""
    try:
        yield
    except ParameterError as err:
        raise ParameterError(prefix + names.get(err.parameter, err.parameter), str(err)) from None
