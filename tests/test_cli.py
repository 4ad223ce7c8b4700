"""Bad input through the command line: one clear line, no traceback, nothing half-written."""

from __future__ import annotations

import re

import pytest


def assert_clear_error(result, *needles):
    assert result.returncode != 0
    err = result.stderr
    assert "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in err, err[-2000:]


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_unknown_stage_lists_the_choices(run_cli, tmp_path):
    result = run_cli("stage=nope", f"paths.log_dir={tmp_path}")
    assert_clear_error(result, "stage/nope", "vae")


@pytest.mark.slow
def test_missing_data_folder(run_cli, tiny_overrides, tmp_path):
    result = run_cli("stage=vae", f"hydra.run.dir={tmp_path / 'r'}", *tiny_overrides(**{"data.root": tmp_path / "nowhere"}))
    assert_clear_error(result, "error:", str(tmp_path / "nowhere"), "data.root")


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage,override,needle",
    [
        ("vae", "trainer.max_epochs=-3", "trainer.max_epochs"),
        ("vae", "model.latent_dim=0", "model.latent_dim"),
        ("vqvae", "model.quantizer.decay=1.5", "model.quantizer.decay"),
    ],
)
def test_invalid_config_values(run_cli, tiny_overrides, tmp_path, stage, override, needle):
    result = run_cli(f"stage={stage}", f"hydra.run.dir={tmp_path / 'r'}", *tiny_overrides(), override)
    assert_clear_error(result, "error:", needle)


@pytest.mark.slow
def test_unwritable_output_folder(run_cli, tiny_overrides, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_cli("stage=vae", f"paths.log_dir={blocker / 'outputs'}", *tiny_overrides())
    assert_clear_error(result, "cannot write the output folder", "paths.log_dir")


@pytest.mark.slow
def test_resume_without_a_checkpoint_says_how(run_cli, tiny_overrides, tmp_path):
    result = run_cli("stage=vae", "ckpt_path=last", f"hydra.run.dir={tmp_path / 'r'}", *tiny_overrides())
    assert_clear_error(result, "cannot resume", "hydra.run.dir")


@pytest.mark.slow
def test_console_prints_each_message_once_without_adverts(run_cli, tiny_overrides, tmp_path):
    result = run_cli(
        "stage=vae", "callbacks=quantize", "quantizer.progress=false", "quantizer.n_landmarks=200",
        "quantizer.n_clusters=8", "quantizer.n_neighbors=5", f"hydra.run.dir={tmp_path / 'r'}", *tiny_overrides(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    # Lines that are not progress bars (tqdm redraws those with carriage returns).
    lines = [line.strip() for line in output.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line]
    # The same message from two handlers differs only by its prefix ("INFO: ", "[time][logger][INFO] - ").
    bare = [re.sub(r"^(\[[^\]]*\])+ - |^(INFO|WARNING): ", "", line) for line in lines]
    messages = [line for line in bare if not line.startswith(("|", "-", "0 |", "1 |", "2 |")) and "params" not in line.lower()]
    repeated = {line for line in messages if messages.count(line) > 1}
    assert not repeated, repeated
    for noise in ("litlogger", "Seed set to", "LeafSpec", "latents (train)"):
        assert noise not in output, noise
    assert "fitting GeodesicKMedoids" in output
