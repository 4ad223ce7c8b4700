"""StartFromAposteriori: a VQ-VAE that starts from pipeline A (stage=vqvae stage.init_codes=...).

Puts the GridVAE and the a posteriori codebook behind a codes.pt of stage=quantize into the VQ-VAE
(``VQVAE.init_from_grid_vae``) when its fit is set up, and measures how far the started model
agrees with those codes: ``init/test_code_agreement`` and ``init/test_mse``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from geovq.artifacts import load_code_grids, load_input
from geovq.errors import ArtifactError
from geovq.metrics.reconstruction import decoded_mse
from geovq.models.inference import map_images
from geovq.models.io import model_from_artifact
from geovq.models.vqvae import VQVAE


class StartFromAposteriori(Callback):
    """Puts the GridVAE and the a posteriori codebook behind a codes.pt of stage=quantize into the
    VQ-VAE when its fit is set up: before the optimizer exists, and before a resumed run loads
    its checkpoint over them."""

    def __init__(self, codes_path: str | Path):
        self.codes = load_code_grids(codes_path)
        recorded = self.codes.provenance.get("inputs", {})
        if "codebook" not in recorded or "vae" not in recorded:
            raise ArtifactError(
                f"stage.init_codes={codes_path} was written by stage={self.codes.provenance.get('stage')}, "
                "which records no GridVAE and a posteriori codebook to start from. Point stage.init_codes at "
                "a codes.pt of stage=quantize (outputs/quantize/runs/<run>/codes.pt)."
            )
        self.codebook = load_input(self.codes, "codebook", kind="codebook")
        self.vae = load_input(self.codes, "vae", kind="grid_vae")
        self.metrics: dict = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        vae = model_from_artifact(self.vae)
        pl_module.init_from_grid_vae(vae, self.codebook.payload["vectors"], source=f"the GridVAE {self.vae.path}")
        if trainer.is_global_zero:
            self.metrics = self._agreement(pl_module, trainer.datamodule.split("test").tensors[0])

    @torch.no_grad()
    def _agreement(self, model: VQVAE, images) -> dict:
        # Both test splits are the first N test images: compare what both hold.
        expected = self.codes.payload["splits"]["test"]
        n = min(len(images), len(expected))
        codes = map_images(model, images[:n], model.codes)
        return {
            "init/test_code_agreement": float((codes == expected[:n]).float().mean()),
            "init/test_mse": decoded_mse(model.decode_codes, codes, images[:n]),
        }
