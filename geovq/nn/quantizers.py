"""The quantizers a VQ-VAE can use, by name: ``model.quantizer.kind``.

``vq`` (the default, and what a model saved before ``kind`` existed gets) is the hand-written VQ
layer of the paper's baseline; the others are layers of vector-quantize-pytorch
(``geovq.nn.library_quantizers``). The rest of ``model.quantizer`` are that kind's options.
"""

from __future__ import annotations

import inspect

from geovq.errors import ParameterError
from geovq.nn.library_quantizers import FSQQuantizer, LibraryVQ, SimVQQuantizer
from geovq.nn.quantizer_layer import QuantizerLayer
from geovq.nn.vq import VectorQuantizer

QUANTIZERS = {"vq": VectorQuantizer, "fsq": FSQQuantizer, "library_vq": LibraryVQ, "simvq": SimVQQuantizer}


def build_quantizer(code_dim: int, kind: str = "vq", **options) -> QuantizerLayer:
    """The ``kind`` quantizer for codes of dimension ``code_dim``, with its ``options``."""
    if kind not in QUANTIZERS:
        raise ParameterError("kind", f"kind must be one of {', '.join(QUANTIZERS)}, got '{kind}'.")
    cls = QUANTIZERS[kind]
    accepted = set(inspect.signature(cls).parameters) - {"code_dim"}
    for name in options:
        # A leftover option of another kind would otherwise be a TypeError deep inside Hydra.
        if name not in accepted:
            raise ParameterError(
                name, f"kind={kind} has no option '{name}'; its options are {', '.join(sorted(accepted))}."
            )
    return cls(code_dim=code_dim, **options)
