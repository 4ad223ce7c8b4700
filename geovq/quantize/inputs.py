"""Validation of the arrays and arguments handed to the quantizers.

Every check raises :class:`geovq.errors.ParameterError` naming the argument (``parameter``: the
argument's own name, e.g. ``"n_clusters"``, or ``"X"``/``"variances"`` for the input arrays) with
a message naming the problem and the fix in terms of that argument. This layer knows nothing of
config files: the stage that built the quantizer turns the error into a ``ConfigError`` naming
the config key to change.
"""

from __future__ import annotations

import os

import numpy as np

from geovq.errors import ParameterError


def as_vectors(X, name: str = "X") -> np.ndarray:
    """``X`` as a C-contiguous float32 (n, d) array of finite values (torch tensors accepted)."""
    if hasattr(X, "detach"):  # a torch tensor, possibly on an accelerator
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ParameterError(
            name,
            f"{name} must be a 2-D array (n_vectors, dim), got shape {X.shape}; "
            "flatten latent grids first, e.g. z.permute(0, 2, 3, 1).reshape(-1, dim)."
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ParameterError(name, f"{name} is empty (shape {X.shape}); pass at least one vector of dimension >= 1.")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ParameterError(name, f"{name} must hold real numbers, got dtype {X.dtype}.")
    X = np.ascontiguousarray(X, dtype=np.float32)
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ParameterError(
            name,
            f"{name} has {bad.size} row(s) with NaN or infinite values (first at row {bad[0]}); "
            "these usually come from a diverged encoder: check the VAE run, or drop those rows."
        )
    return X


def as_variances(variances, X: np.ndarray, name: str = "variances") -> np.ndarray:
    """Posterior variances matching ``X`` row for row, finite and non-negative."""
    V = as_vectors(variances, name)
    if V.shape != X.shape:
        raise ParameterError(
            name,
            f"{name} has shape {V.shape} but the means have shape {X.shape}; pass the diagonal "
            "posterior variances (exp(logvar)) of the same vectors, in the same order."
        )
    if (V < 0).any():
        raise ParameterError(name, f"{name} has negative entries; pass variances (exp(logvar)), not log-variances.")
    return V


EDGE_WEIGHTS = ("euclidean", "wasserstein")


def geometry_features(X: np.ndarray, variances, edge_weight: str) -> np.ndarray:
    """The vectors in which Euclidean distance is the chosen edge weight.

    The 2-Wasserstein distance between diagonal Gaussians is
    ``W2^2 = ||mu1 - mu2||^2 + ||sigma1 - sigma2||^2``, i.e. the Euclidean distance between the
    concatenations ``[mu, sigma]``. So every later step (k-NN, connection, assignment) works on
    these features and stays plain Euclidean.
    """
    if edge_weight not in EDGE_WEIGHTS:
        raise ParameterError("edge_weight", f"edge_weight must be one of {EDGE_WEIGHTS}, got {edge_weight!r}.")
    if edge_weight == "euclidean":
        return X
    if variances is None:
        raise ParameterError(
            "variances",
            "edge_weight='wasserstein' needs the posterior variances: call fit(X, variances=...) "
            "and predict(X, variances=...), or use edge_weight='euclidean'."
        )
    V = as_variances(variances, X)
    return np.ascontiguousarray(np.concatenate([X, np.sqrt(V)], axis=1), dtype=np.float32)


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Number of workers: ``-1``/``None`` means every core this process may use."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_jobs is None or n_jobs == -1:
        return max(1, available)
    if not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 or n_jobs < -1:
        raise ParameterError("n_jobs", f"n_jobs must be a positive integer or -1 (all cores), got {n_jobs!r}.")
    return int(n_jobs)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(name, f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ParameterError(name, f"{name} must be one of {tuple(choices)}, got {value!r}.")
    return value
