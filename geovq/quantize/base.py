"""The interface of every a posteriori quantizer: a scikit-learn clusterer with a codebook.

A quantizer is fitted once on the latent vectors of a trained VAE and then gives every vector a
code. The calling code (the quantize stage, the fit-end callback, the benchmark) uses only what
:class:`CodebookQuantizer` declares, never ``hasattr`` probes:

==========================  =====================================================================
``check_params()``          validate the constructor arguments before any data exists; raises
                            :class:`~geovq.errors.ParameterError` naming the argument
``fit(X, y=None, *,         build the codebook from the vectors ``X`` (n, D); ``y`` is ignored
variances=None)``           (scikit-learn convention); returns ``self``
``predict(X, *,             (n,) int64 codes; changes no state of the estimator, so a caller
variances=None)``           times it itself
``fit_predict(X, ...)``     ``fit(X)`` then ``predict(X)``: codes of ``X``, not of the fitted sample
``uses_variances``          whether fit/predict need the posterior variances (keyword only)
``assignment_rules``        the predict rules a caller may compare (``predict(X, assignment=r)``);
                            ``()`` for a quantizer with one rule
``artifact_fields()``       the fitted extras worth storing next to the codebook, as numpy int
                            arrays or JSON-able values
==========================  =====================================================================

Fitted attributes (set by :meth:`fit` only; none ends in ``_`` before, so
:func:`sklearn.utils.validation.check_is_fitted` works): ``cluster_centers_`` (K, D) float32 (the
codebook), ``labels_`` (codes of the fitted sample), ``inertia_`` (the objective),
``n_features_in_``, ``timings_`` (seconds per fit step) and ``peak_memory_`` (bytes per fit step,
see :mod:`geovq.quantize.resources`). Constructor arguments are stored unchanged, so
``get_params``/``set_params``/``sklearn.base.clone`` work (scikit-learn's ``BaseEstimator``).

A new quantizer is one subclass that defines ``__init__`` (keyword arguments stored as they are),
:meth:`check_params`, :meth:`_fit` (sets ``cluster_centers_``, ``labels_``, ``inertia_`` and its
own extras, recording its steps in the given :class:`~geovq.quantize.resources.StepRecorder`) and
:meth:`_predict`; plus, where relevant, ``uses_variances``, ``assignment_rules`` and
:meth:`artifact_fields`. :meth:`fit` and :meth:`predict` do the common validation.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted

from geovq.errors import ParameterError
from geovq.quantize.inputs import as_vectors
from geovq.quantize.resources import StepRecorder

REQUIRED_FITTED = ("cluster_centers_", "labels_", "inertia_")


class CodebookQuantizer(ClusterMixin, BaseEstimator):
    """Base class of the a posteriori quantizers (see the module docstring for the interface)."""

    #: Predict rules a caller may compare; the first-class rule is the ``assignment`` parameter
    #: where a quantizer has several.
    assignment_rules: tuple[str, ...] = ()

    @property
    def uses_variances(self) -> bool:
        """Whether :meth:`fit` and :meth:`predict` need ``variances=`` (the posterior variances)."""
        return False

    def check_params(self) -> None:
        """Validate the constructor arguments (callable before :meth:`fit`); raise
        :class:`~geovq.errors.ParameterError` naming the bad argument."""

    # -- fit ----------------------------------------------------------------------------------

    def fit(self, X, y=None, *, variances=None) -> CodebookQuantizer:
        """Build the codebook from the vectors ``X`` (n, D), and their posterior ``variances``
        (n, D) where :attr:`uses_variances`. ``y`` is ignored."""
        self.check_params()
        X = as_vectors(X)
        self._forget_fit()
        recorder = StepRecorder()
        self._fit(X, variances, recorder)
        missing = [name for name in REQUIRED_FITTED if name not in vars(self)]
        if missing:
            raise NotImplementedError(f"{type(self).__name__}._fit did not set {', '.join(missing)}.")
        self.n_features_in_ = X.shape[1]
        self.timings_ = dict(recorder.timings)
        self.peak_memory_ = dict(recorder.peak_memory)
        return self

    def _fit(self, X: np.ndarray, variances, recorder: StepRecorder) -> None:
        """Fit on the validated float32 vectors ``X``; set the fitted attributes."""
        raise NotImplementedError

    def _forget_fit(self) -> None:
        """Remove the fitted attributes of an earlier fit (a refit never keeps stale ones)."""
        for name in [name for name in vars(self) if name.endswith("_") and not name.startswith("__")]:
            delattr(self, name)

    # -- predict ------------------------------------------------------------------------------

    def predict(self, X, *, variances=None) -> np.ndarray:
        """Code (int64) of every row of ``X``. Changes no state of the estimator."""
        X = self._check_predict_input(X)
        return np.asarray(self._predict(X, variances), dtype=np.int64)

    def _predict(self, X: np.ndarray, variances) -> np.ndarray:
        """Codes of the validated float32 vectors ``X`` (the estimator is fitted)."""
        raise NotImplementedError

    def _check_predict_input(self, X) -> np.ndarray:
        """``X`` as float32 vectors of the fitted dimension; NotFittedError before :meth:`fit`."""
        check_is_fitted(self)
        X = as_vectors(X)
        if X.shape[1] != self.n_features_in_:
            raise ParameterError(
                "X",
                f"X has dimension {X.shape[1]} but the codebook was fitted on dimension "
                f"{self.n_features_in_}; pass vectors from the same model.",
            )
        return X

    def fit_predict(self, X, y=None, *, variances=None) -> np.ndarray:
        """Fit on ``X`` and return the codes of ``X`` (not ``labels_``, the fitted sample's)."""
        return self.fit(X, variances=variances).predict(X, variances=variances)

    # -- what to store ------------------------------------------------------------------------

    def artifact_fields(self) -> dict:
        """Fitted extras worth storing next to the codebook: numpy int arrays or JSON-able values."""
        check_is_fitted(self)
        return {}
