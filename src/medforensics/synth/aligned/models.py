"""A family of small, near-lossless autoencoders whose decoders leave "final-component" traces.

Every member is a pure-torch, fully convolutional, single-channel autoencoder (RGB images go
through it channel by channel) named after its parts::

    ae-<upsampling>-s<stride>-<bottleneck>-z<latent channels>-w<width>[-seed<k>]

* ``upsampling``: ``transposed`` (ConvTranspose2d 4×4/2), ``nearest`` (nearest ×2 + conv 3×3),
  ``bilinear`` (bilinear ×2 + conv 3×3), ``pixelshuffle`` (conv 3×3 to 4× channels + PixelShuffle);
* ``stride``: 4 or 8 (latent side = image side / stride);
* ``bottleneck``: ``kl`` (Gaussian posterior, tiny KL weight; round trips use the mean; the
  log-variance starts small so the sampling noise does not swamp early training) or ``vq``
  (residual product vector quantisation: the latent channels are cut into groups of ``vq_dim``;
  each group is replaced by its nearest entry of its own ``vq_codes``-entry codebook, then the
  remainder by the nearest entry of a second codebook, and so on for ``vq_stages`` stages;
  straight-through gradients, codebook + commitment losses as in VQ-VAE; codebooks start from
  encoder outputs / residuals);
* ``z``: latent channels. Near-lossless by design: stride 4 carries 16 channels per 4×4 block
  and stride 8 64 channels per 8×8 block (one latent value per pixel), so the bottleneck never
  has to throw detail away and a decoder that blurs is a training failure, not the design;
* ``width``: channels of the conv stack.

Decoders have no skip connections from the encoder: everything the output holds passed through
the latent and then through the decoder's upsampling stack (each level: upsample, a residual
3×3 block). Loss: L1 + ``freq_weight`` · L1 between the (orthonormal) FFT magnitudes, so detail
is not traded for blur. Adam with a linear warm-up and a cosine decay over the ``fit`` call's
steps (``schedule_steps`` fixes the horizon instead). Models are trained on random
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


class _Res(nn.Module):
    """x + conv(SiLU(conv(x))) at constant width (the second conv starts at zero: identity at init)."""

    def __init__(self, width: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(width, width, 3, 1, 1), nn.Conv2d(width, width, 3, 1, 1)
        nn.init.zeros_(self.b.weight)
        nn.init.zeros_(self.b.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(F.silu(self.a(x)))


class AlignedAE(nn.Module):
    """Encoder: conv → [stride-2 conv 4×4, SiLU, residual block] × log2(stride) → 1×1 to latent stats.

    Decoder: 3×3 from latent, residual block → [upsample(kind), SiLU, residual block] × log2(stride) → SiLU → 3×3 to 1 channel.
    """

    def __init__(self, upsampling: str, stride: int, bottleneck: str, width: int, latent_channels: int,
                 vq_dim: int = 2, vq_codes: int = 256, vq_stages: int = 1, logvar_init: float = -10.0,
                 enc_shortcut: bool = True):
        super().__init__()
        if stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {stride}")
        if bottleneck not in BOTTLENECKS:
            raise ValueError(f"bottleneck must be one of {BOTTLENECKS}, got {bottleneck!r}")
        if bottleneck == "vq" and latent_channels % vq_dim:
            raise ValueError(f"latent_channels={latent_channels} is not a multiple of vq_dim={vq_dim}")
        if vq_stages < 1:
            raise ValueError(f"vq_stages must be ≥ 1, got {vq_stages}")
        self.bottleneck, self.latent_channels = bottleneck, int(latent_channels)
        self.vq_dim, self.vq_codes, self.vq_stages = int(vq_dim), int(vq_codes), int(vq_stages)
        levels = int(math.log2(stride))
        enc: list[nn.Module] = [nn.Conv2d(1, width, 3, 1, 1), nn.SiLU()]
        for _ in range(levels):
            enc += [nn.Conv2d(width, width, 4, 2, 1), nn.SiLU(), _Res(width)]
        out = 2 * latent_channels if bottleneck == "kl" else latent_channels
        head = nn.Conv2d(width, out, 1)
        if bottleneck == "kl":  # small posterior σ at the start (the KL weight is tiny anyway)
            with torch.no_grad():
                head.bias[latent_channels:].fill_(float(logvar_init))
                head.weight[latent_channels:].mul_(0.01)
        enc += [head]
        self.encoder = nn.Sequential(*enc)
        self.stride = int(stride)
        # the encoder also sees its input space-to-depth (a learnable 1×1 map of the stride×stride
        # block's pixels, added to the latent mean): the latent carries the pixels from step 0
        self.shortcut = nn.Conv2d(stride * stride, latent_channels, 1, bias=False) if enc_shortcut else None
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, width, 3, 1, 1), _Res(width)]
        for _ in range(levels):
            dec += [*_up(upsampling, width), nn.SiLU(), _Res(width)]
        dec += [nn.SiLU(), nn.Conv2d(width, 1, 3, 1, 1)]
        self.decoder = nn.Sequential(*dec)
        if bottleneck == "vq":
            groups = latent_channels // vq_dim
            self.codebook = nn.Parameter(torch.zeros(vq_stages, groups, vq_codes, vq_dim))
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
        """Seed every stage's codebooks with encoder outputs (stage 1) / their residuals (later stages)."""
        r = self._groups(z)
        for s in range(self.vq_stages):
            idx = torch.randint(0, r.shape[1], (self.vq_codes,), generator=g)
            self.codebook[s].copy_(r[:, idx] + 1e-3 * r.std() * torch.randn(self.codebook[s].shape, generator=g))
            r = r - self._nearest(r, self.codebook[s])
        self.codebook_ready.fill_(1.0)

    def _nearest(self, flat: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
        idx = torch.cdist(flat, book).argmin(dim=-1)
        return torch.gather(book, 1, idx[..., None].expand(-1, -1, self.vq_dim))

    def quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual product quantisation (straight-through) and the VQ-VAE codebook + commitment loss."""
        flat = self._groups(z)
        r, q, loss = flat.detach(), torch.zeros_like(flat), flat.new_zeros(())
        for s in range(self.vq_stages):
            qs = self._nearest(r, self.codebook[s])
            loss = loss + F.mse_loss(qs, r)  # pulls the stage's codes towards its residuals
            q = q + qs
            r = (r - qs).detach()
        loss = loss + 0.25 * F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()
        return self._ungroup(q, z.shape), loss

    # ---------------------------------------------------------------- passes
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x ∈ [0, 1] (B×1×H×W) → raw encoder output (KL: mean and log-variance channels)."""
        x = x * 2.0 - 1.0
        h = self.encoder(x)
        if self.shortcut is not None:
            s = self.shortcut(F.pixel_unshuffle(x, self.stride))
            h = torch.cat([h[:, : self.latent_channels] + s, h[:, self.latent_channels :]], dim=1)
        return h

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
        "latent_channels": 16,
        "vq_dim": 2,
        "vq_codes": 256,
        "vq_stages": 2,
        "kl_weight": 1e-6,
        "vq_weight": 1.0,
        "freq_weight": 0.1,
        "lr": 2e-3,
        "lr_min_ratio": 0.02,
        "warmup_steps": 50,
        "schedule_steps": 0,
        "enc_shortcut": True,
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
                                int(c["latent_channels"]), int(c["vq_dim"]), int(c["vq_codes"]), int(c["vq_stages"]),
                                enc_shortcut=bool(c["enc_shortcut"]))}

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"ae": torch.optim.Adam(self.modules["ae"].parameters(), lr=float(self.config["lr"]))}

    def _validate_fit(self, steps: int) -> None:
        self._horizon = int(self.config.get("schedule_steps") or 0) or int(steps)

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``lr·lr_min_ratio`` at the horizon."""
        c = self.config
        top, warm = float(c["lr"]), int(c["warmup_steps"])
        horizon = max(getattr(self, "_horizon", 0), step + 1, warm + 1)
        if step < warm:
            return top * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, horizon - warm))
        low = top * float(c["lr_min_ratio"])
        return low + 0.5 * (top - low) * (1 + math.cos(math.pi * t))

    def _train_step(self, data: TrainingData, step: int, g: torch.Generator) -> dict[str, float]:
        for group in self.optimizers["ae"].param_groups:
            group["lr"] = self.lr_at(step)
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
#: latent channels per stride: one latent value per pixel (16 per 4×4 block, 64 per 8×8 block)
LATENT = {4: 16, 8: 64}


def config_name(upsampling: str, stride: int, bottleneck: str, width: int, seed: int = 0,
                latent: int | None = None) -> str:
    z = LATENT[int(stride)] if latent is None else int(latent)
    return f"ae-{upsampling}-s{stride}-{bottleneck}-z{z}-w{width}" + (f"-seed{seed}" if seed else "")


def _family() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for up, stride, bott, width in itertools.product(UPSAMPLERS, STRIDES, BOTTLENECKS, (32, 48)):
        latent = LATENT[stride]
        for seed in (0, 1):
            out[config_name(up, stride, bott, width, seed, latent)] = {
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
