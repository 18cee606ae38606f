"""DDPM generators (``diffusers``): pixel-space ``diffusion`` and ``latent_diffusion`` over a VAE.

Training (Ho et al., DDPM): x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε with t ~ U{0, T−1}, ε ~ N(0, I).
The U-Net predicts v = √ᾱ_t · ε − √(1 − ᾱ_t) · x_0 (Salimans & Ho, ``prediction_type=
"v_prediction"``, default) and minimises ‖v − v_θ(x_t, t)‖², or predicts ε and minimises
‖ε − ε_θ(x_t, t)‖² (``"epsilon"``, the original DDPM target). The default is v because with ε
the image content at large t is learnt only through a signal scaled by √ᾱ_T ≈ 0.006: after a few
hundred CPU steps an ε-model's samples were mid-grey noise where a v-model's were already dark
images with a bright body. Images are scaled to [−1, 1]. An exponential moving average of the
weights (``ema_decay``, warm-up min(decay, (1+s)/(10+s))) is what samples.

Sampling: DDIM (Song et al.) over ``sampling_steps`` (default 50) timesteps of the trained
schedule, deterministic with ``eta=0``.

``latent_diffusion`` first trains the convolutional VAE of :mod:`.vae` with spatial latents for
``vae_steps`` steps, then freezes it and trains the same DDPM on its latents (posterior means
μ(x), scaled to unit standard deviation by a factor fixed when the VAE phase ends).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .base import Generator, TrainingData, group_count
from .vae import ConvVAE


def _diffusers():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from diffusers.models.unets.unet_2d import UNet2DModel
            from diffusers.schedulers.scheduling_ddim import DDIMScheduler
            from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the diffusion generators need the 'diffusers' package: pip install 'medforensics[diffusion]'"
        ) from exc
    return UNet2DModel, DDPMScheduler, DDIMScheduler


def default_channel_mult(size: int) -> list[int]:
    """U-Net width multipliers per level for a ``size``×``size`` input (lowest level ≥ 4×4 … 8×8)."""
    if size <= 16:
        return [1, 2]
    if size <= 32:
        return [1, 2, 2]
    if size <= 64:
        return [1, 2, 2, 2]
    if size <= 128:
        return [1, 1, 2, 2, 4]
    return [1, 1, 2, 2, 4, 4]


UNET_DEFAULTS: dict[str, Any] = {
    "base_width": 32,
    "channel_mult": None,  # default_channel_mult(resolution)
    "layers_per_block": 1,
    "attention": True,  # self-attention at the lowest resolution level
    "attention_head_dim": 8,
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "prediction_type": "v_prediction",
    "sampling_steps": 50,
    "eta": 0.0,
    "lr": 2e-4,
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "ema_decay": 0.995,
}


class _DDPMMixin:
    """U-Net + schedulers + EMA shared by the pixel and latent variants."""

    config: dict[str, Any]
    modules: dict[str, torch.nn.Module]

    def _resolve_unet(self, config: dict[str, Any], size: int) -> dict[str, Any]:
        mult = config["channel_mult"] or default_channel_mult(size)
        config["channel_mult"] = [int(m) for m in mult]
        if size % (2 ** (len(mult) - 1)):
            raise ValueError(f"{size}×{size} is not divisible by 2^{len(mult) - 1} (channel_mult={mult})")
        if config["prediction_type"] not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {config['prediction_type']!r}")
        if int(config["sampling_steps"]) < 1 or int(config["sampling_steps"]) > int(config["num_train_timesteps"]):
            raise ValueError(f"sampling_steps must be in 1…num_train_timesteps, got {config['sampling_steps']}")
        if not 0.0 <= float(config["ema_decay"]) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {config['ema_decay']}")
        return config

    def _make_unet(self, size: int, channels: int) -> torch.nn.Module:
        UNet2DModel, DDPMScheduler, _ = _diffusers()
        c = self.config
        widths = [int(c["base_width"]) * m for m in c["channel_mult"]]
        n = len(widths)
        down = ["DownBlock2D"] * n
        up = ["UpBlock2D"] * n
        if c["attention"]:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        groups = min(group_count(w, 32) for w in widths)
        self.ddpm = DDPMScheduler(
            num_train_timesteps=int(c["num_train_timesteps"]), beta_schedule=c["beta_schedule"],
            prediction_type=c["prediction_type"], clip_sample=True,
        )
        return UNet2DModel(
            sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=tuple(widths),
            layers_per_block=int(c["layers_per_block"]), down_block_types=tuple(down), up_block_types=tuple(up),
            norm_num_groups=groups, attention_head_dim=int(c["attention_head_dim"]), add_attention=bool(c["attention"]),
        )

    def _unet_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.modules["unet"].parameters(), lr=float(self.config["lr"]),
                                 weight_decay=float(self.config["weight_decay"]))

    def _ema_modules(self, unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
        if float(self.config["ema_decay"]) <= 0:
            return {}
        ema = copy.deepcopy(unet)
        ema.requires_grad_(False)
        return {"ema": ema}

    def _denoiser(self) -> torch.nn.Module:
        return self.modules.get("ema", self.modules["unet"])

    def _ddpm_step(self, x0: torch.Tensor, step: int, g: torch.Generator, opt: torch.optim.Optimizer) -> float:
        """One DDPM step on x_0 ∈ [−1, 1] (or scaled latents); returns the loss."""
        unet = self.modules["unet"]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, self.ddpm.config.num_train_timesteps, (x0.shape[0],), generator=g)
        xt = self.ddpm.add_noise(x0, noise, t)
        target = noise if self.config["prediction_type"] == "epsilon" else self.ddpm.get_velocity(x0, noise, t)
        loss = F.mse_loss(unet(xt, t).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), float(self.config["grad_clip"]))
        opt.step()
        if "ema" in self.modules:
            decay = min(float(self.config["ema_decay"]), (1.0 + step) / (10.0 + step))
            with torch.no_grad():
                for pe, p in zip(self.modules["ema"].parameters(), unet.parameters()):
                    pe.lerp_(p, 1.0 - decay)
                for be, b in zip(self.modules["ema"].buffers(), unet.buffers()):
                    be.copy_(b)
        return float(loss.detach())

    @torch.no_grad()
    def _ddim(self, z: torch.Tensor, g: torch.Generator, clip: bool) -> torch.Tensor:
        _, _, DDIMScheduler = _diffusers()
        sched = DDIMScheduler.from_config(self.ddpm.config, timestep_spacing="trailing", clip_sample=clip)
        sched.set_timesteps(int(self.config["sampling_steps"]))
        x, net = z, self._denoiser()
        for t in sched.timesteps:
            out = net(x, t).sample
            x = sched.step(out, t, x, eta=float(self.config["eta"]), generator=g).prev_sample
        return x

    def describe_sampler(self) -> str:
        eta = float(self.config["eta"])
        return f"ddim-{self.config['sampling_steps']}" + (f"-eta{eta:g}" if eta else "")


class DiffusionGenerator(_DDPMMixin, Generator):
    """Pixel-space DDPM (``diffusers.UNet2DModel`` + ``DDPMScheduler``), DDIM sampling."""

    family = "diffusion"
    defaults = dict(UNET_DEFAULTS)

    def _resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return self._resolve_unet(config, self.resolution)

    def _build(self) -> dict[str, torch.nn.Module]:
        unet = self._make_unet(self.resolution, self.channels)
        return {"unet": unet, **self._ema_modules(unet)}

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"unet": self._unet_optimizer()}

    def _train_step(self, data: TrainingData, step: int, g: torch.Generator) -> dict[str, float]:
        x0 = data.draw(step) * 2.0 - 1.0
        return {"loss": self._ddpm_step(x0, step, g, self.optimizers["unet"])}

    def _noise_shape(self) -> tuple[int, ...]:
        return (self.channels, self.resolution, self.resolution)

    def _sample_batch(self, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return (self._ddim(z, g, clip=True) + 1.0) / 2.0


class _LatentScale(torch.nn.Module):
    """Holds the latent scale factor (and whether it was fixed) as buffers, so it is saved."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("fixed", torch.zeros(()))


class LatentDiffusionGenerator(_DDPMMixin, Generator):
    """DDPM over the spatial latents of a convolutional VAE trained first (``vae_steps``)."""

    family = "latent_diffusion"
    defaults = {
        **UNET_DEFAULTS,
        "base_width": 64,
        "vae_steps": 1000,
        "vae_width": 32,
        "vae_downsample": 2,  # latent side = resolution / 2**vae_downsample
        "latent_channels": 4,
        "vae_kl_weight": 1e-3,
        "vae_lr": 1e-3,
    }

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** int(self.config["vae_downsample"])

    def _resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        if int(config["vae_downsample"]) < 1 or self.resolution // 2 ** int(config["vae_downsample"]) < 4:
            raise ValueError(f"vae_downsample must leave latents of at least 4×4, got {config['vae_downsample']}")
        if int(config["vae_steps"]) < 1:
            raise ValueError("vae_steps must be ≥ 1 (the autoencoder is trained first)")
        return self._resolve_unet(config, self.resolution // 2 ** int(config["vae_downsample"]))

    def _build(self) -> dict[str, torch.nn.Module]:
        c = self.config
        vae = ConvVAE(self.resolution, self.channels, width=int(c["vae_width"]), latent_dim=0,
                      latent_channels=int(c["latent_channels"]), downsample=int(c["vae_downsample"]))
        unet = self._make_unet(self.latent_size, int(c["latent_channels"]))
        return {"vae": vae, "latent": _LatentScale(), "unet": unet, **self._ema_modules(unet)}

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "vae": torch.optim.Adam(self.modules["vae"].parameters(), lr=float(self.config["vae_lr"])),
            "unet": self._unet_optimizer(),
        }

    def _validate_fit(self, steps: int) -> None:
        if steps <= int(self.config["vae_steps"]):
            warnings.warn(
                f"latent_diffusion trains its VAE for the first vae_steps={self.config['vae_steps']} steps; "
                f"steps={steps} trains no diffusion model yet (continue later with steps > vae_steps)",
                stacklevel=3,
            )

    def _before_training(self, data: TrainingData) -> None:
        self._latents: torch.Tensor | None = None
        if self.step >= int(self.config["vae_steps"]):
            self._prepare_latents(data)

    @torch.no_grad()
    def _prepare_latents(self, data: TrainingData) -> None:
        """Freeze the VAE, encode every training image (posterior mean) and fix the scale."""
        vae = self.modules["vae"]
        vae.eval()
        vae.requires_grad_(False)
        mus = [vae.encode(data.images[i : i + 64])[0] for i in range(0, len(data), 64)]
        mu = torch.cat(mus)
        holder = self.modules["latent"]
        if not bool(holder.fixed):
            std = float(mu.std())
            holder.scale.fill_(1.0 / std if std > 1e-8 else 1.0)
            holder.fixed.fill_(1.0)
        self._latents = mu * holder.scale

    def _train_step(self, data: TrainingData, step: int, g: torch.Generator) -> dict[str, float]:
        vae_steps = int(self.config["vae_steps"])
        if step < vae_steps:
            vae = self.modules["vae"]
            loss, parts = vae.loss(data.draw(step), g, float(self.config["vae_kl_weight"]))
            opt = self.optimizers["vae"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"vae_loss": float(loss.detach()), **parts}
        if self._latents is None:
            self._prepare_latents(data)
        z0 = self._latents[data.indices(step)]
        return {"loss": self._ddpm_step(z0, step, g, self.optimizers["unet"])}

    def _noise_shape(self) -> tuple[int, ...]:
        return (int(self.config["latent_channels"]), self.latent_size, self.latent_size)

    def _sample_batch(self, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        latents = self._ddim(z, g, clip=False) / self.modules["latent"].scale
        return self.modules["vae"].decode_images(latents)

    def describe_sampler(self) -> str:
        return super().describe_sampler() + "-latent"
