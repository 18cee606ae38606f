"""Convolutional VAE (Kingma & Welling): sampling from the prior, and the latent diffusion autoencoder.

Loss per image (the negative ELBO): −log p(x|z) + β · KL(q(z|x) ‖ N(0, I)) with
q(z|x) = N(μ, diag σ²), z = μ + σ ⊙ ε (reparameterisation), KL = −½ Σ (1 + log σ² − μ² − σ²).
The reconstruction term is the Bernoulli (binary cross-entropy) likelihood of the [0, 1] pixels
(``recon="bce"``) or a Gaussian one (``recon="mse"``: Σ (x − x̂)² / (2 · 0.1²)). The optimised loss
is that sum divided by the number of pixels; the logged ``recon`` is per pixel, ``kl`` per image.

The latent is a vector (``latent_dim`` > 0: the encoder goes down to 4×4, then a linear layer) or
spatial (``latent_dim=0``: ``latent_channels`` × (H / 2^downsample)², used by latent diffusion).
GroupNorm, not BatchNorm, so a sample does not depend on the rest of its batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Generator, TrainingData, group_count

_MSE_SIGMA = 0.1


def _norm(c: int) -> nn.Module:
    return nn.GroupNorm(group_count(c, 8), c)


class ConvVAE(nn.Module):
    """Encoder: conv → [stride-2 conv, norm, SiLU] × d; decoder mirrors it (transposed convs)."""

    def __init__(self, resolution: int, channels: int, width: int = 32, latent_dim: int = 128,
                 latent_channels: int = 4, downsample: int | None = None, recon: str = "bce"):
        super().__init__()
        if recon not in ("bce", "mse"):
            raise ValueError(f"recon must be 'bce' or 'mse', got {recon!r}")
        self.recon, self.latent_dim = recon, int(latent_dim)
        d = int(downsample) if downsample is not None else int(math.log2(resolution // 4))
        if d < 1 or resolution // 2**d < 1:
            raise ValueError(f"cannot downsample {resolution} px {d} times")
        widths = [width * min(2**i, 8) for i in range(d + 1)]
        self.side = resolution // 2**d
        enc: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, 1, 1), nn.SiLU()]
        for i in range(d):
            enc += [nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1), _norm(widths[i + 1]), nn.SiLU()]
        self.encoder = nn.Sequential(*enc)
        top = widths[-1]
        if self.latent_dim > 0:
            self.to_stats = nn.Linear(top * self.side**2, 2 * self.latent_dim)
            self.from_latent = nn.Linear(self.latent_dim, top * self.side**2)
        else:
            self.to_stats = nn.Conv2d(top, 2 * int(latent_channels), 1)
            self.from_latent = nn.Conv2d(int(latent_channels), top, 3, 1, 1)
        dec: list[nn.Module] = [nn.SiLU()]
        for i in range(d, 0, -1):
            dec += [nn.ConvTranspose2d(widths[i], widths[i - 1], 4, 2, 1), _norm(widths[i - 1]), nn.SiLU()]
        dec += [nn.Conv2d(widths[0], channels, 3, 1, 1)]
        self.decoder = nn.Sequential(*dec)
        self._top = top

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ∈ [0, 1] → (μ, log σ²)."""
        h = self.encoder(x * 2.0 - 1.0)
        if self.latent_dim > 0:
            h = h.flatten(1)
        stats = self.to_stats(h)
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z)
        if self.latent_dim > 0:
            h = h.view(z.shape[0], self._top, self.side, self.side)
        return self.decoder(h)

    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        """Latents → images in [0, 1]."""
        out = self.decode_logits(z)
        return torch.sigmoid(out) if self.recon == "bce" else out.clamp(0.0, 1.0)

    def loss(self, x: torch.Tensor, g: torch.Generator, kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO (β = ``kl_weight``) per pixel; logged parts: recon per pixel, KL per image."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=g)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = self.decode_logits(z)
        n, pixels = x.shape[0], x[0].numel()
        if self.recon == "bce":
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / n
        else:
            rec = F.mse_loss(logits, x, reduction="sum") / (2 * _MSE_SIGMA**2) / n
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n
        loss = (rec + kl_weight * kl) / pixels
        return loss, {"recon": float(rec.detach()) / pixels, "kl": float(kl.detach())}


class VAEGenerator(Generator):
    """Convolutional VAE; samples decode z ~ N(0, temperature² · I)."""

    family = "vae"
    sampler = "prior"
    defaults: dict[str, Any] = {
        "width": 32,
        "latent_dim": 128,
        "recon": "bce",
        "kl_weight": 1.0,
        "lr": 1e-3,
        "temperature": 1.0,
    }

    def _resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        if int(config["latent_dim"]) < 1:
            raise ValueError(f"latent_dim must be ≥ 1, got {config['latent_dim']}")
        if config["recon"] not in ("bce", "mse"):
            raise ValueError(f"recon must be 'bce' or 'mse', got {config['recon']!r}")
        return config

    def _build(self) -> dict[str, nn.Module]:
        c = self.config
        return {"vae": ConvVAE(self.resolution, self.channels, width=int(c["width"]),
                               latent_dim=int(c["latent_dim"]), recon=c["recon"])}

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": torch.optim.Adam(self.modules["vae"].parameters(), lr=float(self.config["lr"]))}

    def _train_step(self, data: TrainingData, step: int, g: torch.Generator) -> dict[str, float]:
        loss, parts = self.modules["vae"].loss(data.draw(step), g, float(self.config["kl_weight"]))
        opt = self.optimizers["vae"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), **parts}

    def _noise_shape(self) -> tuple[int, ...]:
        return (int(self.config["latent_dim"]),)

    def _sample_batch(self, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.modules["vae"].decode_images(z * float(self.config["temperature"]))

    def describe_sampler(self) -> str:
        t = float(self.config["temperature"])
        return "prior" + (f"-t{t:g}" if t != 1.0 else "")
