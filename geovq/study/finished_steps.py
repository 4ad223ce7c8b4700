"""Steps another study has finished (``pipeline.reuse_from``): found by their key, copied in.

Studies share steps: experiment=aposteriori's GridVAE, its geodesic and K-Means codes, B-EMA and
the priors, samples and evaluations of those methods are experiment=paper's, the same config
from the same inputs. A step's key (``runner.Pipeline.step_key``) hashes its config with each
input replaced by the sha256 of the file it reads, so a step folder copied from one study into
another is recognised as done there, and so are the steps that read it. Each study folder keeps
its own copy (a study folder stays whole when the other is moved or deleted); the copy's
``step.json`` is written last, so a copy that stops half-way is not taken for a finished step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geovq.artifacts import atomic_write_text
from geovq.run_folder import LOCK_FILE

log = logging.getLogger(__name__)

STEP_FILE = "step.json"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_record(record: Path) -> dict | None:
    """A step.json's content, or None when it cannot be read (a step of another version, a torn file)."""
    try:
        done = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


@dataclass(frozen=True)
class FinishedStep:
    folder: Path
    record: dict  # its step.json


class FinishedSteps:
    """The finished steps under the study folders in ``roots``, looked up by key. The folders
    are read again at each look-up (a few hundred small files), so a step the other study
    finished meanwhile is found too."""

    def __init__(self, roots: list[Path]):
        self.roots = [Path(root) for root in roots]
        for root in self.roots:
            if not root.is_dir():
                log.info("pipeline.reuse_from: %s is not a folder (yet); nothing is reused from it", root)

    def find(self, key: str, output: str) -> FinishedStep | None:
        """A finished step with this key whose ``output`` file is still the one it recorded."""
        for root in self.roots:
            if not root.is_dir():
                continue
            for record in sorted(root.rglob(STEP_FILE)):
                # Hidden folders hold set-aside runs (.replaced) and paths no run writes.
                if any(part.startswith(".") for part in record.relative_to(root).parent.parts):
                    continue
                done = read_record(record)
                if done is None or done.get("key") != key:
                    continue
                target = record.parent / output
                if target.is_file() and file_sha256(target) == done.get("output_sha256"):
                    return FinishedStep(record.parent, done)
        return None


# A finished step's own record of its run, not part of what it made: a copy that took them would
# claim another study's completion token, or resume from a checkpoint it never trained.
NOT_COPIED = (STEP_FILE, LOCK_FILE, "started.json", "complete.json")


def copy_step(step: FinishedStep, folder: Path, output: str) -> dict:
    """The files of the finished ``step`` into the step folder ``folder`` (empty but for hidden
    entries): copied into a hidden sibling first, their ``output`` checked against the step's
    record, then moved in, the step.json (naming where they came from) last. Returns that record."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.copying-", dir=folder.parent))
    try:
        for entry in step.folder.iterdir():
            if entry.name in NOT_COPIED or entry.name.startswith("."):
                continue  # .hydra is the other run's; .replaced its set-aside runs
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name)
            else:
                shutil.copy2(entry, staging / entry.name)
        if file_sha256(staging / output) != step.record["output_sha256"]:
            raise StepChangedWhileCopied(step.folder)
        folder.mkdir(parents=True, exist_ok=True)
        for entry in staging.iterdir():
            os.replace(entry, folder / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = {**step.record, "copied_from": step.record.get("copied_from", str(step.folder.resolve()))}
    atomic_write_text(folder / STEP_FILE, json.dumps(record, indent=2) + "\n")
    return record


class StepChangedWhileCopied(Exception):
    """The other study's step changed while it was copied (that study runs it again): not used."""
