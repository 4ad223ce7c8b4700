"""Bad input through the command line: one clear line, no traceback, nothing half-written."""

from __future__ import annotations

import pytest
from conftest import run_cli, tiny_overrides


def assert_clear_error(result, *needles):
    assert result.returncode != 0
    err = result.stderr
    assert "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in err, err[-2000:]


def test_unknown_stage_lists_the_choices(tmp_path):
    result = run_cli("stage=nope", f"paths.log_dir={tmp_path}")
    assert_clear_error(result, "stage/nope", "vae")


def test_missing_data_folder(tmp_path):
    result = run_cli("stage=vae", f"hydra.run.dir={tmp_path / 'r'}", *tiny_overrides(**{"data.root": tmp_path / "nowhere"}))
    assert_clear_error(result, "error:", str(tmp_path / "nowhere"), "data.root")


@pytest.mark.parametrize(
    "stage,override,needle",
    [
        ("vae", "trainer.max_epochs=-3", "trainer.max_epochs"),
        ("vae", "model.latent_dim=0", "model.latent_dim"),
        ("vqvae", "model.quantizer.decay=1.5", "model.quantizer.decay"),
    ],
)
def test_invalid_config_values(tmp_path, stage, override, needle):
    result = run_cli(f"stage={stage}", f"hydra.run.dir={tmp_path / 'r'}", *tiny_overrides(), override)
    assert_clear_error(result, "error:", needle)


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_cli("stage=vae", f"paths.log_dir={blocker / 'outputs'}", *tiny_overrides())
    assert_clear_error(result, "cannot write the output folder", "paths.log_dir")


def test_resume_without_a_checkpoint_says_how(tmp_path):
    result = run_cli("stage=vae", "ckpt_path=last", f"hydra.run.dir={tmp_path / 'r'}", *tiny_overrides())
    assert_clear_error(result, "cannot resume", "hydra.run.dir")
