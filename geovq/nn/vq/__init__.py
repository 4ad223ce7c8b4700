"""The hand-written VQ layer of the paper's VQ-VAE baseline, in parts.

- ``layer``: :class:`VectorQuantizer`, nearest-code lookup with the straight-through gradient;
- ``codebook``: the learned or EMA codebook and its update;
- ``init``: k-means initialisation from the first training batch;
- ``restarts``: dead-code criteria, re-seeding and the optimizer rows of re-seeded codes;
- ``distributed``: the collectives that keep every rank's codebook identical.
"""

from geovq.nn.vq.layer import VectorQuantizer

__all__ = ["VectorQuantizer"]
