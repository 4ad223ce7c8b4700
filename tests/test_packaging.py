"""geovq installs as a wheel that carries its configs and runs from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from geovq import CONF_DIR


@pytest.fixture(scope="module")
def wheel(repo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(repo)],
        check=True, capture_output=True, timeout=300,
    )
    return next(out.glob("geovq-*.whl"))


@pytest.mark.slow  # trains or runs the CLI: the slow tier (CI runs both tiers)
def test_the_wheel_holds_every_config_and_the_console_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"geovq/conf/{path.relative_to(CONF_DIR).as_posix()}" for path in CONF_DIR.rglob("*.yaml")}
    assert len(configs) > 30 and configs <= names, sorted(configs - names)
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "geovq = geovq.train:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_the_installed_wheel_trains_from_an_unrelated_folder(wheel, repo, data_root, tmp_path):
    env_dir = tmp_path / "venv"
    # geovq itself from the wheel, installed into a bare venv ...
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # ... its dependencies from wherever this interpreter imports them (a venv's site-packages, the
    # base interpreter's, folders a .pth adds), but this checkout: listed in a .pth of the new venv,
    # after its own site-packages. (system_site_packages=True would give the base interpreter's
    # packages only, not those of a venv this test runs in.)
    here = [Path(entry).resolve() for entry in sys.path if entry and Path(entry).is_dir()]
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    (Path(site_packages) / "running_interpreter.pth").write_text(
        "".join(f"{path}\n" for path in dict.fromkeys(here) if path != repo.resolve()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    located = subprocess.run([str(python), "-c", "import geovq; print(geovq.__file__)"], cwd=elsewhere,
                             capture_output=True, text=True, check=True)
    assert str(env_dir) in located.stdout  # the installed copy, not this checkout
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(env_dir / "bin" / "geovq"), "stage=vae", f"data.root={data_root}", "data.subset=500", "trainer.max_epochs=1",
         "debug=tiny", "model.hidden_channels=16", "model.latent_dim=8", "data.download=false"],
        cwd=elsewhere, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(elsewhere.glob("outputs/vae/runs/*/model.pt"))
