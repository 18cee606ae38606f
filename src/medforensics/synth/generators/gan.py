"""DCGAN (Radford et al.) generator / discriminator with a BCE or WGAN-GP (Gulrajani et al.) loss.

G: z ∈ R^{z_dim} → 4×4 (transposed conv) → [×2 transposed conv, BatchNorm, ReLU]… → tanh.
D: [stride-2 conv, norm, LeakyReLU(0.2)]… down to 4×4 → 4×4 conv → one logit / critic value.

* ``loss="bce"``: the non-saturating GAN loss; D uses BatchNorm; Adam(2e-4, β=(0.5, 0.999)).
* ``loss="wgan-gp"``: critic loss E[D(x̃)] − E[D(x)] + λ · E[(‖∇_x̂ D(x̂)‖₂ − 1)²] on
  x̂ = ε·x + (1−ε)·x̃, ε ~ U[0, 1] (λ = ``gp_weight``, default 10); ``n_critic`` critic updates per
  generator update; generator loss −E[D(x̃)]; the critic uses LayerNorm (GroupNorm with one
  group), not BatchNorm, as the gradient penalty is per sample; Adam(1e-4, β=(0, 0.9)).

One training *step* is one generator update. Samples use G in eval mode (BatchNorm running
statistics), so an image does not depend on the rest of its batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Generator, TrainingData

LOSSES = ("wgan-gp", "bce")


def _widths(resolution: int, width: int) -> list[int]:
    n_up = int(math.log2(resolution)) - 2  # stride-2 layers between 4×4 and the output
    return [width * min(2 ** (n_up - 1 - i), 8) for i in range(n_up)]  # e.g. 64 px: 8w, 4w, 2w, w


class DCGANGenerator(nn.Module):
    def __init__(self, resolution: int, channels: int, z_dim: int, width: int):
        super().__init__()
        ws = _widths(resolution, width)
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, ws[0], 4, 1, 0, bias=False), nn.BatchNorm2d(ws[0]), nn.ReLU(True)]
        for a, b in zip(ws[:-1], ws[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ws[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, width: int, norm: str):
        super().__init__()
        ws = list(reversed(_widths(resolution, width)))  # w, 2w, 4w, 8w

        def norm_layer(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if norm == "batch" else nn.GroupNorm(1, c)

        layers: list[nn.Module] = [nn.Conv2d(channels, ws[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for a, b in zip(ws[:-1], ws[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), norm_layer(b), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ws[-1], 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class GANGenerator(Generator):
    """DCGAN with ``loss="wgan-gp"`` (default) or ``"bce"``."""

    family = "gan"
    sampler = "z~N(0,I)"
    defaults: dict[str, Any] = {
        "loss": "wgan-gp",
        "z_dim": 100,
        "width": 64,  # G's last / D's first feature width (DCGAN's ngf = ndf)
        "n_critic": None,  # wgan-gp: 5, bce: 1
        "gp_weight": 10.0,
        "lr": None,  # wgan-gp: 1e-4, bce: 2e-4
        "betas": None,  # wgan-gp: (0.0, 0.9), bce: (0.5, 0.999)
    }

    def _resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        if config["loss"] not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {config['loss']!r}")
        wgan = config["loss"] == "wgan-gp"
        if config["n_critic"] is None:
            config["n_critic"] = 5 if wgan else 1
        if config["lr"] is None:
            config["lr"] = 1e-4 if wgan else 2e-4
        if config["betas"] is None:
            config["betas"] = [0.0, 0.9] if wgan else [0.5, 0.999]
        config["betas"] = [float(b) for b in config["betas"]]
        if int(config["n_critic"]) < 1:
            raise ValueError(f"n_critic must be ≥ 1, got {config['n_critic']}")
        if self.resolution < 8:
            raise ValueError("the DCGAN needs resolution ≥ 8")
        return config

    def _build(self) -> dict[str, nn.Module]:
        c = self.config
        g = DCGANGenerator(self.resolution, self.channels, int(c["z_dim"]), int(c["width"]))
        d = DCGANDiscriminator(self.resolution, self.channels, int(c["width"]),
                               "batch" if c["loss"] == "bce" else "layer")
        _dcgan_init(g)
        _dcgan_init(d)
        return {"generator": g, "discriminator": d}

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        lr, betas = float(self.config["lr"]), tuple(self.config["betas"])
        return {
            "generator": torch.optim.Adam(self.modules["generator"].parameters(), lr=lr, betas=betas),
            "discriminator": torch.optim.Adam(self.modules["discriminator"].parameters(), lr=lr, betas=betas),
        }

    def _z(self, n: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn((n, int(self.config["z_dim"])), generator=g)

    def _train_step(self, data: TrainingData, step: int, g: torch.Generator) -> dict[str, float]:
        G, D = self.modules["generator"], self.modules["discriminator"]
        opt_g, opt_d = self.optimizers["generator"], self.optimizers["discriminator"]
        wgan = self.config["loss"] == "wgan-gp"
        d_losses, gps = [], []
        for k in range(int(self.config["n_critic"])):
            real = data.draw(step, k) * 2.0 - 1.0
            with torch.no_grad():
                fake = G(self._z(real.shape[0], g))
            d_real, d_fake = D(real), D(fake)
            if wgan:
                eps = torch.rand((real.shape[0], 1, 1, 1), generator=g)
                mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
                grad = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)[0]
                gp = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
                loss_d = d_fake.mean() - d_real.mean() + float(self.config["gp_weight"]) * gp
                gps.append(float(gp.detach()))
            else:
                loss_d = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + \
                    F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            d_losses.append(float(loss_d.detach()))
        D.requires_grad_(False)
        try:
            out = D(G(self._z(data.batch_size, g)))
            loss_g = -out.mean() if wgan else F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
        finally:
            D.requires_grad_(True)
        losses = {"d_loss": sum(d_losses) / len(d_losses), "g_loss": float(loss_g.detach())}
        if gps:
            losses["gp"] = sum(gps) / len(gps)
        return losses

    def _noise_shape(self) -> tuple[int, ...]:
        return (int(self.config["z_dim"]),)

    def _sample_batch(self, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return (self.modules["generator"](z) + 1.0) / 2.0
