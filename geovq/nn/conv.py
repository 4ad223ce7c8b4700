"""Convolutional encoder and decoder shared by the GridVAE and the VQ-VAE.

28x28 images <-> a 7x7 grid of ``channels``-dimensional vectors: two stride-2 convolutions
down, two stride-2 transposed convolutions up, residual blocks at the 7x7 resolution.
Both models use the same family so that their comparison is about quantization alone.
"""

from __future__ import annotations

from torch import Tensor, nn

from geovq.errors import ParameterError


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _check_sizes(hidden_channels: int, latent_channels: int, n_res_blocks: int, latent_name: str) -> None:
    if hidden_channels < 1:
        raise ParameterError("hidden_channels", f"hidden_channels must be >= 1, got {hidden_channels}.")
    if latent_channels < 1:
        raise ParameterError(latent_name, f"{latent_name} (the latent dimension D) must be >= 1, got {latent_channels}.")
    if n_res_blocks < 0:
        raise ParameterError("n_res_blocks", f"n_res_blocks must be >= 0, got {n_res_blocks}.")


class ConvEncoder(nn.Module):
    """B x C x 28 x 28 -> B x out_channels x 7 x 7."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, n_res_blocks: int = 2):
        super().__init__()
        _check_sizes(hidden_channels, out_channels, n_res_blocks, "out_channels")
        half = max(1, hidden_channels // 2)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, half, 4, stride=2, padding=1),  # 14x14
            nn.ReLU(),
            nn.Conv2d(half, hidden_channels, 4, stride=2, padding=1),  # 7x7
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            *[ResidualBlock(hidden_channels) for _ in range(n_res_blocks)],
            nn.ReLU(),
            nn.Conv2d(hidden_channels, out_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """B x in_channels x 7 x 7 -> B x out_channels x 28 x 28 logits."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, n_res_blocks: int = 2):
        super().__init__()
        _check_sizes(hidden_channels, in_channels, n_res_blocks, "in_channels")
        half = max(1, hidden_channels // 2)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            *[ResidualBlock(hidden_channels) for _ in range(n_res_blocks)],
            nn.ReLU(),
            nn.ConvTranspose2d(hidden_channels, half, 4, stride=2, padding=1),  # 14x14
            nn.ReLU(),
            nn.ConvTranspose2d(half, out_channels, 4, stride=2, padding=1),  # 28x28
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
