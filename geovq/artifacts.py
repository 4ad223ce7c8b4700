"""The one place that saves and loads stage outputs.

An artifact is a ``torch.save`` file holding a plain dict::

    {"kind": str, "format": 1, "provenance": {...}, "payload": {...}}

with only tensors, numbers, strings, lists and dicts inside, so it loads with
``torch.load(..., weights_only=True)``. Beside it a ``<name>.json`` sidecar repeats the
provenance and the file's sha256 for people and for provenance look-ups.

Provenance records the stage, a hash of the config that made it, the sha256 of every artifact
it was made from and the package version (the sidecar adds the time and the input paths). Writes go to a temporary file in the same
folder and are renamed into place, so an interrupted write never leaves a half-written artifact
and never destroys the previous one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from geovq import __version__
from geovq.errors import ArtifactError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# The file names every stage writes in its run folder (and reads from upstream run folders).
MODEL_FILE = "model.pt"
CODES_FILE = "codes.pt"
CODEBOOK_FILE = "codebook.pt"
SAMPLES_FILE = "samples.pt"
EVALUATION_FILE = "evaluation.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass
class Artifact:
    """A loaded (or just written) artifact."""

    path: Path
    kind: str
    payload: dict
    provenance: dict
    sha256: str = field(default="")

    def ref(self) -> dict:
        """What a downstream artifact records about this one."""
        return {"kind": self.kind, "sha256": self.sha256, "path": str(self.path)}


def config_hash(config: Mapping[str, Any] | None) -> str:
    """A stable short hash of a (resolved, plain) config mapping."""
    text = json.dumps(config or {}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_artifact(
    path: str | os.PathLike,
    kind: str,
    payload: dict,
    *,
    stage: str,
    config: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Artifact] | None = None,
) -> Artifact:
    """Atomically write an artifact with its provenance and return it (with its sha256)."""
    path = Path(path)
    provenance = {
        "stage": stage,
        "config_hash": config_hash(config),
        "inputs": {name: {k: v for k, v in art.ref().items() if k != "path"} for name, art in (inputs or {}).items()},
        "geovq_version": __version__,
    }
    # The file holds no time stamp or path, so the same inputs, config and result give the same
    # bytes and sha256 (what lets a rerun recognise a finished stage); the sidecar has the time.
    record = {"kind": kind, "format": FORMAT_VERSION, "provenance": provenance, "payload": payload}
    buffer = io.BytesIO()
    torch.save(record, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(path, data)
    sidecar = {
        "kind": kind,
        "sha256": digest,
        "provenance": provenance,
        "input_paths": {name: str(Path(art.path).resolve()) for name, art in (inputs or {}).items()},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=2) + "\n")
    return Artifact(path=path, kind=kind, payload=payload, provenance=provenance, sha256=digest)


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def load_artifact(path: str | os.PathLike, kind: str | None = None) -> Artifact:
    """Load an artifact safely (``weights_only=True``), checking its kind when given."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(
            f"artifact not found: {path}. Run the stage that writes it first, "
            "or point the config at an existing file."
        )
    data = path.read_bytes()
    try:
        record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupted file, foreign pickle, ...
        # torch's own message is many lines and suggests weights_only=False, which would run
        # whatever code the file holds: only its kind is kept.
        raise ArtifactError(
            f"cannot read artifact {path} ({type(err).__name__}): it holds more than plain tensors and values, "
            "or it is damaged, so it was not written by geovq. Rerun the stage that writes it."
        ) from None
    if not isinstance(record, dict) or "kind" not in record or "payload" not in record:
        raise ArtifactError(
            f"{path} is not a geovq artifact (no kind/payload). Rerun the stage that writes it."
        )
    if kind is not None and record["kind"] != kind:
        raise ArtifactError(
            f"{path} holds a '{record['kind']}' artifact, expected '{kind}'. "
            "Point the config at the right file."
        )
    return Artifact(
        path=path,
        kind=record["kind"],
        payload=record["payload"],
        provenance=record.get("provenance", {}),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def require_made_from(artifact: Artifact, input_name: str, upstream: Artifact) -> None:
    """Refuse ``artifact`` unless its provenance says it was made from ``upstream``."""
    recorded = artifact.provenance.get("inputs", {}).get(input_name)
    if recorded is None:
        raise ArtifactError(
            f"{artifact.path} records no '{input_name}' input; cannot check it matches "
            f"{upstream.path}. Rerun the stage that wrote {artifact.path.name}."
        )
    if recorded["sha256"] != upstream.sha256:
        raise ArtifactError(
            f"mismatched artifacts: {artifact.path} was made from another {input_name} "
            f"(sha256 {recorded['sha256'][:12]}), not from {upstream.path} "
            f"(sha256 {upstream.sha256[:12]}). Use the {input_name} it was made from, or rerun "
            f"the stage that wrote {artifact.path.name} on this one."
        )


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """The JSON sidecar of an artifact, or None when absent or unreadable."""
    try:
        return json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None


# -- code grids -------------------------------------------------------------------------------
# Both pipelines hand the prior the same thing: for each split, N x H x W integer codes in [0, K).
CODE_GRIDS = "code_grids"


def save_code_grids(path, grids: Mapping[str, torch.Tensor], n_codes: int, **provenance) -> Artifact:
    """Save the code grids of each split (train/val/test) with the codebook size K."""
    splits = {}
    for name, grid in grids.items():
        grid = torch.as_tensor(grid)
        if grid.ndim != 3 or grid.is_floating_point():
            raise ArtifactError(f"code grids of split '{name}' must be N x H x W integers, got {tuple(grid.shape)} {grid.dtype}.")
        if grid.numel() and (int(grid.min()) < 0 or int(grid.max()) >= n_codes):
            raise ArtifactError(f"codes of split '{name}' lie outside [0, {n_codes}).")
        splits[name] = grid.to(torch.int16 if n_codes <= 32767 else torch.int32)
    return save_artifact(path, CODE_GRIDS, {"n_codes": int(n_codes), "splits": splits}, **provenance)


def load_code_grids(path) -> Artifact:
    """Load code grids; ``payload["splits"][name]`` comes back as int64."""
    artifact = load_artifact(path, kind=CODE_GRIDS)
    artifact.payload["splits"] = {k: v.to(torch.int64) for k, v in artifact.payload["splits"].items()}
    return artifact


def find_latest(log_dir, stage: str, filename: str, kind: str | None = None, accept=None) -> Path:
    """The newest ``filename`` written by ``stage`` under ``log_dir`` (runs and multiruns),
    of artifact ``kind`` when given (a multirun over stages shares one folder), and for which
    ``accept(path)`` holds when given."""
    candidates = [
        path for path in Path(log_dir).glob(f"{stage}/**/{filename}")
        if not _set_aside(path.relative_to(log_dir))  # an earlier run moved aside by overwrite=true
        and (kind is None or (read_sidecar(path) or {}).get("kind") == kind) and (accept is None or accept(path))
    ]
    candidates.sort(key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ArtifactError(
            f"no {filename} from stage={stage} under {Path(log_dir).resolve()}/{stage}. Run "
            f"`python -m geovq.train stage={stage}` first, or give the file's path explicitly."
        )
    log.info("using the newest %s of stage=%s: %s", filename, stage, candidates[-1])
    return candidates[-1]


def _set_aside(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts[:-1])


def load_input(artifact: Artifact, name: str, kind: str | None = None, path=None) -> Artifact:
    """The input ``name`` an artifact was made from, checked against its recorded sha256.

    ``path`` points at the input explicitly; by default it is the path recorded in the
    artifact's sidecar when it was written.
    """
    if path is None:
        recorded = (read_sidecar(artifact.path) or {}).get("input_paths", {}).get(name)
        if recorded is None:
            raise ArtifactError(
                f"{artifact.path} does not record where its '{name}' input is; give its path explicitly."
            )
        path = recorded
    upstream = load_artifact(path, kind=kind)
    require_made_from(artifact, name, upstream)
    return upstream
