"""Trained models as artifacts: saved as constructor arguments plus weights, rebuilt from their class.

A model artifact holds no pickled code, so it loads with ``weights_only=True``; the kind names the
class that rebuilds it.
"""

from __future__ import annotations

from geovq.artifacts import Artifact, load_artifact, save_artifact
from geovq.errors import ArtifactError
from geovq.models.classifier import MNISTClassifier
from geovq.models.grid_vae import GridVAE
from geovq.models.prior import TransformerPrior
from geovq.models.vqvae import VQVAE

MODEL_CLASSES = {
    "grid_vae": GridVAE,
    "vqvae": VQVAE,
    "prior": TransformerPrior,
    "classifier": MNISTClassifier,
}


def model_kind(model) -> str:
    """The artifact kind of a model (``grid_vae``, ``vqvae``, ...)."""
    for kind, cls in MODEL_CLASSES.items():
        if type(model) is cls:
            return kind
    raise ArtifactError(f"{type(model).__name__} is not a model geovq saves ({', '.join(MODEL_CLASSES)}).")


def save_model(path, model, kind: str, **provenance) -> Artifact:
    """Save a trained model's hparams and weights as a ``kind`` artifact."""
    hparams = dict(model.hparams)  # save_hyperparameters already left out the optimizer partials
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return save_artifact(path, kind, {"hparams": hparams, "state_dict": state}, **provenance)


def load_model(path, kind: str):
    """Rebuild a model from its artifact (eval mode, on CPU) and return ``(model, artifact)``."""
    try:
        artifact = load_artifact(path, kind=kind)
    except ArtifactError as err:
        raise ArtifactError(f"{err} A '{kind}' model is written by its training stage (model.pt).") from None
    return model_from_artifact(artifact), artifact


def model_from_artifact(artifact: Artifact):
    """The model a model artifact describes, in eval mode on the CPU."""
    kind, path = artifact.kind, artifact.path
    if kind not in MODEL_CLASSES:
        raise ArtifactError(f"{path} holds a '{kind}' artifact, not a model ({', '.join(MODEL_CLASSES)}).")
    model = MODEL_CLASSES[kind](**artifact.payload["hparams"])
    try:
        model.load_state_dict(artifact.payload["state_dict"])
    except RuntimeError as err:
        raise ArtifactError(f"{path}: weights do not fit a {kind} with its recorded settings ({err}).") from None
    return model.eval()
