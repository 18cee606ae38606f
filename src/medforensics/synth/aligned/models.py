"""A family of small, near-lossless autoencoders whose decoders leave "final-component" traces.

Every member is a pure-torch, fully convolutional, single-channel autoencoder (RGB images go
through it channel by channel) named after its parts::

    ae-<upsampling>-s<stride>-<bottleneck>-w<width>[-seed<k>]

* ``upsampling``: ``transposed`` (ConvTranspose2d 4×4/2), ``nearest`` (nearest ×2 + conv 3×3),
  ``bilinear`` (bilinear ×2 + conv 3×3), ``pixelshuffle`` (conv 3×3 to 4× channels + PixelShuffle);
* ``stride``: 4 or 8 (latent side = image side / stride);
* ``bottleneck``: ``kl`` (Gaussian posterior, tiny KL weight; round trips use the mean) or ``vq``
  (product vector quantisation: the latent channels are cut into groups of ``vq_dim`` and each
  group is replaced by its nearest entry of its own ``vq_codes``-entry codebook, straight-through
  gradients, codebook + commitment losses as in VQ-VAE; codebooks start from encoder outputs);
* ``width``: channels of the conv stack.

Decoders have no skip connections: everything the output holds passed through the latent and
then through the decoder's upsampling stack. Loss: L1 + ``freq_weight`` · L1 between the
(orthonormal) FFT magnitudes, so detail is not traded for blur. Models are trained on random
crops (offsets multiple of 8) of real images with the generator factory's machinery
(:class:`~medforensics.synth.generators.Generator`: seeds, resumable checkpoints, safetensors +
JSON model directories).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..generators.base import Generator, TrainingData

UPSAMPLERS = ("transposed", "nearest", "bilinear", "pixelshuffle")
BOTTLENECKS = ("kl", "vq")
STRIDES = (4, 8)
FAMILY = "aligned_ae"


def _up(kind: str, width: int) -> list[nn.Module]:
    if kind == "transposed":
        return [nn.ConvTranspose2d(width, width, 4, 2, 1)]
    if kind in ("nearest", "bilinear"):
        up = nn.Upsample(scale_factor=2, mode=kind, **({"align_corners": False} if kind == "bilinear" else {}))
        return [up, nn.Conv2d(width, width, 3, 1, 1)]
    if kind == "pixelshuffle":
        return [nn.Conv2d(width, 4 * width, 3, 1, 1), nn.PixelShuffle(2)]
    raise ValueError(f"unknown upsampling {kind!r}; choose one of {', '.join(UPSAMPLERS)}")


class AlignedAE(nn.Module):
    """Encoder: conv → [stride-2 conv, SiLU, conv, SiLU] × log2(stride) → 1×1 to latent stats.

    Decoder: 3×3 from latent → [upsample(kind), SiLU, conv, SiLU] × log2(stride) → 3×3 to 1 channel.
    """

    def __init__(self, upsampling: str, stride: int, bottleneck: str, width: int, latent_channels: int,
                 vq_dim: int = 2, vq_codes: int = 256):
        super().__init__()
        if stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {stride}")
        if bottleneck not in BOTTLENECKS:
            raise ValueError(f"bottleneck must be one of {BOTTLENECKS}, got {bottleneck!r}")
        if bottleneck == "vq" and latent_channels % vq_dim:
            raise ValueError(f"latent_channels={latent_channels} is not a multiple of vq_dim={vq_dim}")
        self.bottleneck, self.latent_channels = bottleneck, int(latent_channels)
        self.vq_dim, self.vq_codes = int(vq_dim), int(vq_codes)
        levels = int(math.log2(stride))
        enc: list[nn.Module] = [nn.Conv2d(1, width, 3, 1, 1), nn.SiLU()]
        for _ in range(levels):
            enc += [nn.Conv2d(width, width, 4, 2, 1), nn.SiLU(), nn.Conv2d(width, width, 3, 1, 1), nn.SiLU()]
        out = 2 * latent_channels if bottleneck == "kl" else latent_channels
        enc += [nn.Conv2d(width, out, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, width, 3, 1, 1), nn.SiLU()]
        for _ in range(levels):
            dec += [*_up(upsampling, width), nn.SiLU(), nn.Conv2d(width, width, 3, 1, 1), nn.SiLU()]
        dec += [nn.Conv2d(width, 1, 3, 1, 1)]
        self.decoder = nn.Sequential(*dec)
        if bottleneck == "vq":
            groups = latent_channels // vq_dim
            self.codebook = nn.Parameter(torch.zeros(groups, vq_codes, vq_dim))
            self.register_buffer("codebook_ready", torch.zeros(()))

    # ---------------------------------------------------------------- bottleneck
    def _groups(self, z: torch.Tensor) -> torch.Tensor:
        """B×C×h×w → G×(B·h·w)×d."""
        b, c, h, w = z.shape
        g = c // self.vq_dim
        return z.view(b, g, self.vq_dim, h, w).permute(1, 0, 3, 4, 2).reshape(g, b * h * w, self.vq_dim)

    def _ungroup(self, v: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        b, c, h, w = shape
        g = c // self.vq_dim
        return v.view(g, b, h, w, self.vq_dim).permute(1, 0, 4, 2, 3).reshape(b, c, h, w)

    @torch.no_grad()
    def init_codebook(self, z: torch.Tensor, g: torch.Generator) -> None:
        """Seed every codebook with encoder outputs of a batch (avoids dead codes at the start)."""
        flat = self._groups(z)
        idx = torch.randint(0, flat.shape[1], (self.vq_codes,), generator=g)
        self.codebook.copy_(flat[:, idx] + 1e-3 * torch.randn(self.codebook.shape, generator=g))
        self.codebook_ready.fill_(1.0)

    def quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codebook entries (straight-through) and the VQ-VAE codebook + commitment loss."""
        flat = self._groups(z)
        d = torch.cdist(flat, self.codebook)
        idx = d.argmin(dim=-1)
        q = torch.gather(self.codebook, 1, idx[..., None].expand(-1, -1, self.vq_dim))
        loss = F.mse_loss(q, flat.detach()) + 0.25 * F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()
        return self._ungroup(q, z.shape), loss

    # ---------------------------------------------------------------- passes
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x ∈ [0, 1] (B×1×H×W) → raw encoder output."""
        return self.encoder(x * 2.0 - 1.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (self.decoder(z) + 1.0) / 2.0

    def forward(self, x: torch.Tensor, g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction (unclamped, in [0, 1] units) and the bottleneck loss term."""
        h = self.encode(x)
        if self.bottleneck == "kl":
            mu, logvar = h.chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)
            if g is not None:  # training: reparameterised sample
                z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
            else:
                z = mu
            kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
            return self.decode(z), kl
        if g is not None and not bool(self.codebook_ready):
            self.init_codebook(h, g)
        q, loss = self.quantise(h)
        return self.decode(q), loss


def freq_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean |‖FFT(a)‖ − ‖FFT(b)‖| over the orthonormal 2-D spectrum."""
    fa = torch.fft.rfft2(a, norm="ortho").abs()
    fb = torch.fft.rfft2(b, norm="ortho").abs()
    return (fa - fb).abs().mean()


class AlignedAEGenerator(Generator):
    """A member of the autoencoder family wrapped in the generator factory's training machinery.

    Training "images" are crops (``resolution``×``resolution``, one channel). ``sample`` decodes
    Gaussian latents (KL) or random codes (VQ) — only useful as a smoke test; the point of
    these models is :meth:`round_trip`.
    """

    family = FAMILY
    sampler = "round-trip"
    defaults: dict[str, Any] = {
        "upsampling": "transposed",
        "stride": 4,
        "bottleneck": "kl",
        "width": 32,
        "latent_channels": 8,
        "vq_dim": 2,
        "vq_codes": 256,
        "kl_weight": 1e-6,
        "vq_weight": 1.0,
        "freq_weight": 0.1,
        "lr": 1e-3,
    }

    def _resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        if config["upsampling"] not in UPSAMPLERS:
            raise ValueError(f"unknown upsampling {config['upsampling']!r}; choose one of {', '.join(UPSAMPLERS)}")
        if int(config["stride"]) not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {config['stride']}")
        if config["bottleneck"] not in BOTTLENECKS:
            raise ValueError(f"bottleneck must be one of {BOTTLENECKS}, got {config['bottleneck']!r}")
        if self.channels != 1:
            raise ValueError("the aligned autoencoders are single-channel (RGB goes through channel by channel)")
        return config

    def _build(self) -> dict[str, nn.Module]:
        c = self.config
        return {"ae": AlignedAE(c["upsampling"], int(c["stride"]), c["bottleneck"], int(c["width"]),
                                int(c["latent_channels"]), int(c["vq_dim"]), int(c["vq_codes"]))}

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"ae": torch.optim.Adam(self.modules["ae"].parameters(), lr=float(self.config["lr"]))}

    def _train_step(self, data: TrainingData, step: int, g: torch.Generator) -> dict[str, float]:
        x = data.draw(step)
        rec, extra = self.modules["ae"](x, g)
        l1 = F.l1_loss(rec, x)
        fl = freq_l1(rec, x)
        w_extra = float(self.config["kl_weight"] if self.config["bottleneck"] == "kl" else self.config["vq_weight"])
        loss = l1 + float(self.config["freq_weight"]) * fl + w_extra * extra
        opt = self.optimizers["ae"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mse = float(F.mse_loss(rec.detach().clamp(0, 1), x))
        return {"loss": float(loss.detach()), "l1": float(l1.detach()), "freq": float(fl.detach()),
                "psnr": 10 * math.log10(1.0 / max(mse, 1e-12))}

    def _noise_shape(self) -> tuple[int, ...]:
        side = self.resolution // int(self.config["stride"])
        return (int(self.config["latent_channels"]), side, side)

    def _sample_batch(self, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        ae = self.modules["ae"]
        if self.config["bottleneck"] == "vq":
            z, _ = ae.quantise(z)
        return ae.decode(z).clamp(0.0, 1.0)

    @property
    def stride(self) -> int:
        return int(self.config["stride"])

    @torch.no_grad()
    def round_trip(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """B×1×H×W in [0, 1] (H, W multiples of the stride) → reconstruction clamped to [0, 1].

        Without ``g`` the KL bottleneck passes its posterior mean; with ``g`` it passes a sample
        μ + σ·ε drawn from ``g`` (VQ is deterministic either way).
        """
        ae = self.modules["ae"]
        was = ae.training
        ae.eval()
        try:
            rec, _ = ae(x, g if self.config["bottleneck"] == "kl" else None)
        finally:
            ae.train(was)
        return rec.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- the registry
def config_name(upsampling: str, stride: int, bottleneck: str, width: int, seed: int = 0) -> str:
    return f"ae-{upsampling}-s{stride}-{bottleneck}-w{width}" + (f"-seed{seed}" if seed else "")


def _family() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for up, stride, bott, width in itertools.product(UPSAMPLERS, STRIDES, BOTTLENECKS, (32, 48)):
        # wide latents keep the round trip near-lossless: 8 channels per 4×4 block, 16 per 8×8 block
        latent = 8 if stride == 4 else 16
        for seed in (0, 1):
            out[config_name(up, stride, bott, width, seed)] = {
                "upsampling": up, "stride": stride, "bottleneck": bott, "width": width,
                "latent_channels": latent, "seed": seed,
            }
    return out


#: name → plain-data config (``seed`` + :class:`AlignedAEGenerator` options); 64 members
AE_REGISTRY: dict[str, dict[str, Any]] = _family()


def create_ae(name_or_config: str | dict[str, Any], resolution: int = 64, **overrides: Any) -> AlignedAEGenerator:
    """A new, untrained member of the family by registry name (or a config dict)."""
    if isinstance(name_or_config, str):
        if name_or_config not in AE_REGISTRY:
            close = [n for n in AE_REGISTRY if n.startswith(name_or_config.rsplit("-", 1)[0])][:5]
            raise KeyError(f"unknown autoencoder {name_or_config!r}; e.g. {', '.join(close or list(AE_REGISTRY)[:5])} "
                           f"(all names: medforensics.synth.aligned.AE_REGISTRY)")
        cfg = dict(AE_REGISTRY[name_or_config])
    else:
        cfg = dict(name_or_config)
    cfg.update(overrides)
    seed = int(cfg.pop("seed", 0))
    return AlignedAEGenerator(resolution=resolution, channels=1, seed=seed, **cfg)


def _factory(family: str, **kw: Any) -> Generator:
    if family != FAMILY:
        raise ValueError(f"not an aligned autoencoder (family={family!r})")
    return AlignedAEGenerator(**kw)


def load_ae(directory: str | Path) -> AlignedAEGenerator:
    """Load a model directory written by ``AlignedAEGenerator.save`` (safetensors + JSON)."""
    gen = Generator.from_directory(directory, _factory)
    assert isinstance(gen, AlignedAEGenerator)
    return gen


# --------------------------------------------------------------------------- training crops
def random_crops(images: list[np.ndarray], n: int, size: int = 64, seed: int = 0, grid: int = 8) -> np.ndarray:
    """``n`` single-channel ``size``×``size`` crops at offsets that are multiples of ``grid``.

    ``images`` are H×W or H×W×3 float arrays in [0, 1]; an RGB image contributes one random
    channel per crop. Images smaller than ``size`` are skipped; none large enough raises.
    """
    rng = np.random.default_rng([int(seed), 0xC409])
    usable = [im for im in images if im.shape[0] >= size and im.shape[1] >= size]
    if not usable:
        raise ValueError(f"no training image is at least {size}×{size} px")
    out = np.empty((n, size, size), np.float32)
    for k in range(n):
        im = usable[int(rng.integers(len(usable)))]
        y = grid * int(rng.integers((im.shape[0] - size) // grid + 1))
        x = grid * int(rng.integers((im.shape[1] - size) // grid + 1))
        crop = im[y : y + size, x : x + size]
        out[k] = crop[..., int(rng.integers(3))] if crop.ndim == 3 else crop
    return out
