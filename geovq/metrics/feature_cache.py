"""The classifier features of real images, computed once per classifier and image set.

Every evaluation of a study compares its samples with the same real images (the test split, and
as many training images for the floor) through the same classifier: their features are kept
beside the classifier, in ``<classifier folder>/features/<sha256 of the images>.pt`` (kind
``features``, made from that classifier), so the second and later evaluations read them instead
of running the classifier again. A file made from another classifier is recomputed, never used.
"""

from __future__ import annotations

import hashlib
from typing import Callable

from torch import Tensor, nn

from geovq.artifacts import Artifact, load_artifact, save_artifact
from geovq.errors import ArtifactError
from geovq.metrics.fidelity import as_unit_images, feature_matrix

FEATURES = "features"


def images_sha256(images: Tensor) -> str:
    return hashlib.sha256(as_unit_images(images).contiguous().numpy().tobytes()).hexdigest()


def cached_features(classifier: nn.Module, classifier_art: Artifact) -> Callable[[Tensor], Tensor]:
    """``images -> classifier features`` (float64 N x d), read from or written to the cache."""
    folder = classifier_art.path.parent / FEATURES

    def features(images: Tensor) -> Tensor:
        path = folder / f"{images_sha256(images)[:32]}.pt"
        try:
            cached = load_artifact(path, kind=FEATURES)
            if cached.provenance.get("inputs", {}).get("classifier", {}).get("sha256") == classifier_art.sha256:
                return cached.payload["features"]
        except ArtifactError:  # absent or unreadable: computed again below
            pass
        computed = feature_matrix(classifier, images)
        folder.mkdir(parents=True, exist_ok=True)
        save_artifact(path, FEATURES, {"features": computed}, stage="evaluate", inputs={"classifier": classifier_art})
        return computed

    return features
