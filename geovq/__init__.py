"""geovq: discrete latent representations, end-to-end VQ-VAE vs a posteriori geodesic quantization."""

__version__ = "0.1.0"
