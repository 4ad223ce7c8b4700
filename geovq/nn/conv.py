"""Convolutional encoder and decoder shared by the GridVAE and the VQ-VAE.

S x S images <-> an (S / downsample) x (S / downsample) grid of vectors: log2(downsample)
stride-2 convolutions down, as many stride-2 transposed convolutions up, residual blocks at the
grid's resolution. ``downsample`` 4 (the default) is MNIST's 28x28 -> 7x7 with two of each;
8 gives CIFAR's 32x32 a 4x4 grid. Both models use the same family so that their comparison is
about quantization alone.
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


def _check_sizes(hidden_channels: int, latent_channels: int, n_res_blocks: int, latent_name: str, downsample: int) -> int:
    """The number of stride-2 layers, log2(downsample), once the sizes are checked."""
    if hidden_channels < 1:
        raise ParameterError("hidden_channels", f"hidden_channels must be >= 1, got {hidden_channels}.")
    if latent_channels < 1:
        raise ParameterError(latent_name, f"{latent_name} (the latent dimension D) must be >= 1, got {latent_channels}.")
    if n_res_blocks < 0:
        raise ParameterError("n_res_blocks", f"n_res_blocks must be >= 0, got {n_res_blocks}.")
    if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 2 or downsample & (downsample - 1):
        raise ParameterError("downsample", f"downsample must be a power of two >= 2 (2, 4, 8, ...), got {downsample}.")
    return downsample.bit_length() - 1


class ConvEncoder(nn.Module):
    """B x C x S x S -> B x out_channels x (S / downsample) x (S / downsample)."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, n_res_blocks: int = 2,
                 downsample: int = 4):
        super().__init__()
        n_down = _check_sizes(hidden_channels, out_channels, n_res_blocks, "out_channels", downsample)
        half = max(1, hidden_channels // 2)
        down = []
        for i in range(n_down):  # halve the side each time; the last reaches hidden_channels
            width = hidden_channels if i == n_down - 1 else half
            down += [nn.Conv2d(in_channels if i == 0 else half, width, 4, stride=2, padding=1), nn.ReLU()]
        self.net = nn.Sequential(
            *down,  # downsample 4: 28x28 -> 14x14 -> 7x7
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            *[ResidualBlock(hidden_channels) for _ in range(n_res_blocks)],
            nn.ReLU(),
            nn.Conv2d(hidden_channels, out_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """B x in_channels x G x G -> B x out_channels x (G * upsample) x (G * upsample) logits."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, n_res_blocks: int = 2,
                 upsample: int = 4):
        super().__init__()
        n_up = _check_sizes(hidden_channels, in_channels, n_res_blocks, "in_channels", upsample)
        half = max(1, hidden_channels // 2)
        # Built in the order they run, so that a seed gives the weights it always gave.
        layers = [
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            *[ResidualBlock(hidden_channels) for _ in range(n_res_blocks)],
            nn.ReLU(),
        ]
        for i in range(n_up):  # double the side each time (upsample 4: 7x7 -> 14x14 -> 28x28); the last emits out_channels
            last = i == n_up - 1
            layers.append(nn.ConvTranspose2d(hidden_channels if i == 0 else half, out_channels if last else half, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
