"""Decoding code grids to images: follows a code-grid artifact's provenance to the decoder that
matches it (pipeline A: the GridVAE and its codebook; pipeline B: the VQ-VAE)."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from geovq.artifacts import Artifact, load_input
from geovq.errors import ArtifactError
from geovq.models.io import model_from_artifact


def code_decoder(codes: Artifact, decoder_path=None, codebook_path=None) -> tuple[Callable[[Tensor], Tensor], dict, str]:
    """``(codes -> pixel logits, the artifacts used, a label)`` for the pipeline of ``codes``."""
    inputs = codes.provenance.get("inputs", {})
    if "vqvae" in inputs:
        vqvae_art = load_input(codes, "vqvae", kind="vqvae", path=decoder_path)
        vqvae = model_from_artifact(vqvae_art)
        return vqvae.decode_codes, {"vqvae": vqvae_art}, "VQ-VAE"
    if "codebook" in inputs and "vae" in inputs:
        codebook_art = load_input(codes, "codebook", kind="codebook", path=codebook_path)
        vae_art = load_input(codes, "vae", kind="grid_vae", path=decoder_path)
        vae = model_from_artifact(vae_art)
        vectors = codebook_art.payload["vectors"]

        def decode(grids: Tensor) -> Tensor:
            return vae.decode_codebook(vectors, grids)

        return decode, {"codebook": codebook_art, "vae": vae_art}, f"GridVAE + {codebook_art.payload['method']}"
    raise ArtifactError(f"{codes.path} records neither a VQ-VAE nor a codebook and GridVAE; rerun the stage that wrote it.")
