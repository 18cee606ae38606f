"""Pure-torch networks of the reconstruction baselines (inputs and outputs in [0, 1]).

* :class:`ConvAE` — convolutional autoencoder with a spatial bottleneck (stride-2 convolutions
  down, transposed convolutions up).
* :class:`UNetAE` — the same encoder/decoder with U-Net skip connections. Plain skips let the
  network copy its input (an identity that also "reconstructs" anomalies; Baur et al., *Autoencoders
  for unsupervised anomaly segmentation in brain MR images: a comparative study*, MedIA 2021), so
  skips are (1) only used at the ``skip_levels`` deepest decoder levels — the full-resolution
  levels have none — and (2) passed through channel dropout (``skip_dropout``) while training, so
  the decoder has to rely on the bottleneck as well.
* :class:`VAE` — convolutional one-class VAE with a dense Gaussian latent (needs a fixed input size).

The in-painting autoencoder uses :class:`UNetAE` with an extra mask channel (see ``detectors``);
the DDPM out-of-distribution detector uses ``diffusers.UNet2DModel`` (see :func:`make_unet2d`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def _down(cin: int, cout: int) -> nn.Sequential:
    """Halve the resolution: 4×4 stride-2 convolution, GroupNorm, LeakyReLU, then a 3×3 refinement."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 4, 2, 1), nn.GroupNorm(_groups(cout), cout), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(_groups(cout), cout), nn.LeakyReLU(0.2, inplace=True),
    )


def _up(cin: int, cout: int) -> nn.Sequential:
    """Double the resolution: 4×4 stride-2 transposed convolution, GroupNorm, LeakyReLU, 3×3 conv."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.GroupNorm(_groups(cout), cout), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(_groups(cout), cout), nn.LeakyReLU(0.2, inplace=True),
    )


def level_widths(width: int, depth: int) -> list[int]:
    """Channel widths of the encoder levels: width, 2·width, 4·width, ... capped at 8·width."""
    return [width * min(2**i, 8) for i in range(depth)]


class UNetAE(nn.Module):
    """Encoder–bottleneck–decoder; skip connections at the ``skip_levels`` deepest levels only.

    With ``skip_levels=0`` this is a plain convolutional autoencoder (:class:`ConvAE`). The
    bottleneck is a 1×1 convolution to ``latent_channels`` at 1/2^depth resolution.
    ``in_channels`` may exceed ``out_channels`` (e.g. image + mask for in-painting).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        width: int = 16,
        depth: int = 4,
        latent_channels: int = 16,
        skip_levels: int = 0,
        skip_dropout: float = 0.0,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if not 0 <= skip_levels < depth:
            raise ValueError(f"skip_levels must be in [0, depth - 1] = [0, {depth - 1}], got {skip_levels}")
        out_channels = in_channels if out_channels is None else out_channels
        widths = level_widths(width, depth)
        self.depth, self.skip_levels = depth, skip_levels
        self.downs = nn.ModuleList(_down(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths))
        self.to_latent = nn.Conv2d(widths[-1], latent_channels, 1)
        self.from_latent = nn.Sequential(nn.Conv2d(latent_channels, widths[-1], 1), nn.LeakyReLU(0.2, inplace=True))
        # decoder level i upsamples from widths[i] to widths[i-1] (or to `width` at the top); the
        # deepest `skip_levels` levels concatenate the encoder feature of the same resolution
        ups = []
        for i in range(depth - 1, -1, -1):
            cin = widths[i] * (2 if self._has_skip(i) else 1)
            ups.append(_up(cin, widths[i - 1] if i > 0 else width))
        self.ups = nn.ModuleList(ups)
        self.skip_drop = nn.Dropout2d(skip_dropout) if skip_dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(width, out_channels, 3, 1, 1)

    def _has_skip(self, level: int) -> bool:
        # level depth-1 is the deepest one, just above the bottleneck: it never has a skip
        return self.depth - 1 - self.skip_levels <= level < self.depth - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        h = x
        for down in self.downs:
            h = down(h)
            feats.append(h)
        h = self.from_latent(self.to_latent(h))
        for up, level in zip(self.ups, range(self.depth - 1, -1, -1)):
            if self._has_skip(level):
                h = torch.cat([h, self.skip_drop(feats[level])], dim=1)
            h = up(h)
        return torch.sigmoid(self.head(h))


class ConvAE(UNetAE):
    """Plain convolutional autoencoder (a :class:`UNetAE` without skip connections)."""

    def __init__(self, in_channels: int = 1, width: int = 16, depth: int = 4, latent_channels: int = 16):
        super().__init__(in_channels, in_channels, width, depth, latent_channels, skip_levels=0)


class VAE(nn.Module):
    """Convolutional VAE: encoder → (μ, log σ²) of a ``latent_dim`` Gaussian → decoder.

    ``size`` (input side, a multiple of 2^depth) fixes the dense layers. :meth:`forward` returns
    ``(reconstruction, mu, logvar)``; with ``sample=False`` the decoder gets μ (deterministic).
    """

    def __init__(self, in_channels: int = 1, size: int = 64, width: int = 16, depth: int = 4, latent_dim: int = 64):
        super().__init__()
        if size % 2**depth:
            raise ValueError(f"VAE input size {size} must be a multiple of 2**depth = {2**depth}")
        widths = level_widths(width, depth)
        self.side, self.top = size // 2**depth, widths[-1]
        self.encoder = nn.Sequential(*(_down(a, b) for a, b in zip([in_channels, *widths[:-1]], widths)))
        flat = self.top * self.side**2
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)
        self.expand = nn.Linear(latent_dim, flat)
        rev = widths[::-1]
        self.decoder = nn.Sequential(*(_up(a, b) for a, b in zip(rev, [*rev[1:], width])))
        self.head = nn.Conv2d(width, in_channels, 3, 1, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x).flatten(1)
        return self.mu(h), self.logvar(h).clamp(-12.0, 12.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.expand(z), 0.2).view(-1, self.top, self.side, self.side)
        return torch.sigmoid(self.head(self.decoder(h)))

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        if sample:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)  # reparameterisation z = μ + σ·ε
        else:
            z = mu
        return self.decode(z), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(q(z|x) ‖ N(0, I)) = ½ Σ (μ² + σ² − log σ² − 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=1)


def make_unet2d(channels: int, size: int, base_width: int = 16, levels: int = 3, layers_per_block: int = 1):
    """A small ``diffusers.UNet2DModel`` noise predictor ε_θ(x_t, t) (no attention blocks)."""
    from diffusers import UNet2DModel

    widths = tuple(base_width * min(2**i, 4) for i in range(levels))
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=widths,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=_groups(base_width),
    )
