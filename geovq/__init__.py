"""geovq: discrete latent representations, end-to-end VQ-VAE vs a posteriori geodesic quantization."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configs ship inside the package, so an installed geovq (wheel or editable) finds
# them from any working folder.
CONF_DIR = Path(__file__).resolve().parent / "conf"
