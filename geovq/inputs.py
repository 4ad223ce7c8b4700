"""Which file a stage reads: the path its config gives, or else the newest file of a kind under
``paths.log_dir`` (``outputs/<stage>/...``), or the file an artifact's provenance names.

``stage.codes`` also takes a pipeline's name: ``geodesic`` (the newest codes.pt of stage=quantize,
or of a GridVAE run with the quantization callback, made by geodesic K-Medoids) or ``vqvae``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from geovq.artifacts import (
    CODES_FILE,
    Artifact,
    find_latest,
    load_artifact,
    load_input,
    read_sidecar,
)
from geovq.errors import ArtifactError, ConfigError

# Where each pipeline's code grids come from, and the quantizer that must have made them (a
# GridVAE run with callbacks=quantize_both holds K-Means codes beside the geodesic ones).
CODE_SOURCES = {"geodesic": ("quantize", "vae"), "vqvae": ("vqvae",)}
CODE_METHODS = {"geodesic": "GeodesicKMedoids"}


def given_or_newest(cfg: DictConfig, given, stage: str, filename: str, kind: str):
    """``given`` (a path from the config) when set, else the newest ``filename`` of kind ``kind``
    that a ``stage`` run wrote under ``paths.log_dir``."""
    return given or find_latest(cfg.paths.log_dir, stage, filename, kind=kind)


def resolve_codes(cfg: DictConfig) -> Path:
    """The code-grid file named by ``stage.codes`` (a pipeline name or a path)."""
    choice = str(cfg.stage.codes)
    if choice not in CODE_SOURCES:
        if not Path(choice).is_file():
            raise ConfigError(
                f"stage.codes={choice} is neither a pipeline ({' | '.join(CODE_SOURCES)}) nor an existing "
                "file; give geodesic, vqvae, or the path of a codes.pt."
            )
        return Path(choice)
    method = CODE_METHODS.get(choice)
    found = []
    for stage in CODE_SOURCES[choice]:
        try:
            found.append(find_latest(cfg.paths.log_dir, stage, CODES_FILE, kind="code_grids",
                                     accept=None if method is None else lambda path: quantized_by(path) == method))
        except ArtifactError:
            continue
    if not found:
        raise ArtifactError(
            f"no code grids of the {choice} pipeline under {Path(cfg.paths.log_dir).resolve()} "
            f"(looked in {', '.join(CODE_SOURCES[choice])}). Run `python -m geovq.train stage="
            f"{CODE_SOURCES[choice][0]}` first, or give stage.codes=<path to codes.pt>."
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def quantized_by(codes_path: Path) -> str | None:
    """The quantizer class that made a codes.pt (recorded in its codebook), or None."""
    codebook = (read_sidecar(codes_path) or {}).get("input_paths", {}).get("codebook")
    if codebook is None or not Path(codebook).is_file():
        return None
    try:
        return load_artifact(codebook, kind="codebook").payload.get("method")
    except ArtifactError:
        return None


def init_codes_path(cfg: DictConfig) -> Path | None:
    """The codes.pt named by ``stage.init_codes`` (``quantize``: the newest of stage=quantize)."""
    choice = cfg.stage.get("init_codes")
    if not choice:
        return None
    if str(choice) == "quantize":
        return find_latest(cfg.paths.log_dir, "quantize", CODES_FILE, kind="code_grids")
    return Path(choice)


def grid_vae_and_codebook(codes: Artifact) -> tuple[Artifact, Artifact]:
    """The GridVAE and the codebook a posteriori code grids were made with, checked by their
    sha256 (what stage=finetune starts from)."""
    inputs = codes.provenance.get("inputs", {})
    if "vae" not in inputs or "codebook" not in inputs:
        made_by = "a VQ-VAE (stage=vqvae)" if "vqvae" in inputs else f"stage={codes.provenance.get('stage')}"
        raise ArtifactError(
            f"{codes.path} holds code grids of {made_by}, with no GridVAE and codebook: stage=finetune "
            "fine-tunes the decoder of pipeline A. Give stage.codes=<codes.pt of stage=quantize>."
        )
    return load_input(codes, "vae", kind="grid_vae"), load_input(codes, "codebook", kind="codebook")


def codes_to_decode(prior: Artifact, path=None) -> Artifact:
    """The code grids whose decoder turns the prior's samples into images: the grids the prior was
    trained on (``path`` None or that file), or grids made from them that record another decoder
    (stage=finetune's codes.pt: the same grids, the decoder fine-tuned on them). So one prior serves
    every decoder of the same grids, and a study trains one prior per distinct set of code grids."""
    if path is None:
        return load_input(prior, "codes", kind="code_grids")
    given = load_artifact(path, kind="code_grids")
    require_prior_grids(prior, given)
    return given


def require_prior_grids(prior: Artifact, codes: Artifact) -> None:
    """Refuse ``codes`` unless they are the grids ``prior`` was trained on or made from them."""
    recorded = prior.provenance.get("inputs", {}).get("codes", {}).get("sha256")
    source = codes.provenance.get("inputs", {}).get("codes", {}).get("sha256")
    if recorded is not None and recorded in (codes.sha256, source):
        return
    raise ArtifactError(
        f"mismatched artifacts: {codes.path} holds neither the code grids the prior {prior.path} was "
        "trained on nor grids made from them (a stage=finetune codes.pt of those grids). Give "
        "stage.codes=<the prior's codes.pt or a finetune codes.pt made from it>, or leave it unset."
    )
