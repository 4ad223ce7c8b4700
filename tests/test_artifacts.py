"""Artifacts: atomic writes, provenance, safe loading, mismatches refused."""

from __future__ import annotations

import os

import pytest
import torch

from geovq import artifacts
from geovq.artifacts import load_artifact, require_made_from, save_artifact
from geovq.errors import ArtifactError


def test_roundtrip_records_provenance(tmp_path):
    upstream = save_artifact(tmp_path / "up.pt", "codes", {"x": torch.arange(3)}, stage="a", config={"k": 1})
    art = save_artifact(
        tmp_path / "down.pt", "prior", {"w": torch.ones(2)}, stage="b", config={"k": 2}, inputs={"codes": upstream}
    )
    loaded = load_artifact(tmp_path / "down.pt", kind="prior")
    assert loaded.sha256 == art.sha256
    assert torch.equal(loaded.payload["w"], torch.ones(2))
    prov = loaded.provenance
    assert prov["stage"] == "b"
    assert prov["inputs"]["codes"]["sha256"] == upstream.sha256
    assert prov["config_hash"] == artifacts.config_hash({"k": 2}) != artifacts.config_hash({"k": 1})
    assert prov["geovq_version"]
    assert artifacts.read_sidecar(tmp_path / "down.pt")["sha256"] == art.sha256
    require_made_from(loaded, "codes", load_artifact(tmp_path / "up.pt"))


def test_failed_write_leaves_previous_artifact_intact(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    save_artifact(path, "codes", {"v": torch.zeros(4)}, stage="s")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(path, "codes", {"v": torch.ones(4)}, stage="s")
    assert path.read_bytes() == before
    assert torch.equal(load_artifact(path).payload["v"], torch.zeros(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "a.pt.json"], "temporary file left behind"


def test_wrong_kind_and_mismatched_inputs_are_refused(tmp_path):
    a = save_artifact(tmp_path / "a.pt", "codes", {"v": 1}, stage="s")
    b = save_artifact(tmp_path / "b.pt", "codes", {"v": 2}, stage="s")
    prior = save_artifact(tmp_path / "p.pt", "prior", {}, stage="prior", inputs={"codes": a})
    with pytest.raises(ArtifactError, match="holds a 'codes' artifact, expected 'prior'"):
        load_artifact(tmp_path / "a.pt", kind="prior")
    with pytest.raises(ArtifactError, match="mismatched artifacts"):
        require_made_from(prior, "codes", b)


def test_missing_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="cannot read artifact"):
        load_artifact(tmp_path / "junk.pt")
    torch.save({"some": "dict"}, tmp_path / "plain.pt")
    with pytest.raises(ArtifactError, match="not a geovq artifact"):
        load_artifact(tmp_path / "plain.pt")


def test_loading_refuses_pickled_code(tmp_path):
    # weights_only=True: an artifact smuggling an arbitrary object is not executed.
    torch.save({"kind": "codes", "payload": {"obj": Smuggled()}}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="cannot read"):
        load_artifact(tmp_path / "evil.pt")


class Smuggled:
    """Stands for any class a malicious or foreign pickle would carry."""


def test_same_content_gives_the_same_sha256(tmp_path):
    first = save_artifact(tmp_path / "a.pt", "codes", {"v": torch.arange(5)}, stage="s", config={"k": 1})
    again = save_artifact(tmp_path / "b.pt", "codes", {"v": torch.arange(5)}, stage="s", config={"k": 1})
    other = save_artifact(tmp_path / "c.pt", "codes", {"v": torch.arange(5)}, stage="s", config={"k": 2})
    assert first.sha256 == again.sha256 != other.sha256
    assert artifacts.read_sidecar(tmp_path / "a.pt")["created"]


def test_find_latest_picks_the_newest_run(tmp_path):
    old = save_artifact(tmp_path / "vae" / "runs" / "1" / "model.pt", "grid_vae", {}, stage="vae")
    new = save_artifact(tmp_path / "vae" / "multiruns" / "x" / "0" / "model.pt", "grid_vae", {"n": 1}, stage="vae")
    os.utime(old.path, (1, 1))
    assert artifacts.find_latest(tmp_path, "vae", "model.pt") == new.path
    # A multirun over stages shares a folder: the kind picks the right file.
    vq = save_artifact(tmp_path / "vae" / "multiruns" / "x" / "1" / "model.pt", "vqvae", {}, stage="vqvae")
    assert artifacts.find_latest(tmp_path, "vae", "model.pt") == vq.path
    assert artifacts.find_latest(tmp_path, "vae", "model.pt", kind="grid_vae") == new.path
    with pytest.raises(ArtifactError, match="stage=prior"):
        artifacts.find_latest(tmp_path, "prior", "model.pt")
