"""BTD's DDPM: the noise predictor ε_θ(x_t, t), its β schedule, and the back-in-time steps.

Notation (Ho et al., 2020, and the BTD paper) with the *paper's* step index t ∈ {1, …, T}:
β_t is the noise variance added at step t, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s and ᾱ_0 = 1.
``diffusers`` indexes the same steps from 0: its ``alphas_cumprod[k]`` is ᾱ_{k+1} and the U-Net is
conditioned on ``k = t − 1``. Every function here takes the paper's t and converts once
(:func:`model_timestep`).

Images are handled in the DDPM's range [−1, 1]; :func:`to_model_range` / :func:`from_model_range`
map from / to the project's [0, 1] pixels.

``diffusers`` is imported lazily (it takes seconds to import and the detector registry imports
every detector module at start-up).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: our names for the β schedules → diffusers' names
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "squaredcos_cap_v2": "squaredcos_cap_v2",
                  "scaled_linear": "scaled_linear", "sigmoid": "sigmoid"}


def _diffusers() -> tuple[Any, Any]:
    with warnings.catch_warnings():  # diffusers warns at import time on CPU-only machines
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
        from diffusers.models.unets.unet_2d import UNet2DModel
        from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    return UNet2DModel, DDPMScheduler


def build_unet(
    in_channels: int = 1,
    base_width: int = 16,
    channel_mult: Sequence[int] = (1, 2, 2),
    layers_per_block: int = 1,
    attention: bool = False,
    norm_num_groups: int = 8,
    sample_size: int = 96,
) -> Any:
    """A ``diffusers.UNet2DModel`` noise predictor ε_θ(x_t, t) of width ``base_width``·``channel_mult``.

    ``base_width`` is the paper's ``init_features`` (8 or 32 in its comparison); ``len(channel_mult)``
    levels, each halving the resolution (so inputs must be divisible by 2^(levels−1)).
    ``attention`` adds self-attention in the deepest down/up blocks and the middle block.
    """
    UNet2DModel, _ = _diffusers()
    widths = tuple(int(base_width) * int(m) for m in channel_mult)
    if not widths or min(widths) <= 0:
        raise ValueError(f"base_width and channel_mult must be positive, got {base_width} × {tuple(channel_mult)}")
    bad = [w for w in widths if w % norm_num_groups]
    if bad:
        raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block width {widths}")
    levels = len(widths)
    down = tuple("AttnDownBlock2D" if attention and i == levels - 1 and levels > 1 else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if attention and i == 0 and levels > 1 else "UpBlock2D" for i in range(levels))
    return UNet2DModel(
        sample_size=int(sample_size),
        in_channels=int(in_channels),
        out_channels=int(in_channels),
        block_out_channels=widths,
        layers_per_block=int(layers_per_block),
        down_block_types=down,
        up_block_types=up,
        add_attention=bool(attention),
        attention_head_dim=max(1, widths[-1] // 4) if attention else None,
        norm_num_groups=int(norm_num_groups),
    )


def build_scheduler(
    num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02
) -> Any:
    """The DDPM ``DDPMScheduler`` (ε-prediction, no x̂₀ clipping, fixed-small posterior variance)."""
    _, DDPMScheduler = _diffusers()
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got {beta_schedule!r}")
    return DDPMScheduler(
        num_train_timesteps=int(num_train_timesteps),
        beta_start=float(beta_start),
        beta_end=float(beta_end),
        beta_schedule=BETA_SCHEDULES[beta_schedule],
        prediction_type="epsilon",
        variance_type="fixed_small",
        clip_sample=False,
    )


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels → the DDPM's [−1, 1]."""
    return x * 2.0 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """The DDPM's [−1, 1] → [0, 1] pixels (not clipped)."""
    return (x + 1.0) * 0.5


def model_timestep(t: int) -> int:
    """Paper step t ∈ {1, …, T} → the diffusers index the U-Net and scheduler use (t − 1)."""
    return int(t) - 1


def alpha_bar(scheduler: Any, t: int) -> float:
    """ᾱ_t for the paper's step t (ᾱ_0 = 1)."""
    if t <= 0:
        return 1.0
    return float(scheduler.alphas_cumprod[model_timestep(t)].double())


def _check_step(scheduler: Any, t: int) -> None:
    T = int(scheduler.config.num_train_timesteps)
    if not 1 <= int(t) <= T:
        raise ValueError(f"diffusion step t must be in [1, {T}], got {t}")


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, t: int, scheduler: Any) -> torch.Tensor:
    """x̂₀ = (x_t − √(1−ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t."""
    _check_step(scheduler, t)
    ab_t = alpha_bar(scheduler, t)
    return (x_t - (1.0 - ab_t) ** 0.5 * eps) / ab_t**0.5


def posterior_coefficients(scheduler: Any, t: int) -> tuple[float, float, float]:
    """(c₀, c_t, β̃_t) with μ̃_t = c₀ x̂₀ + c_t x_t and posterior variance β̃_t, for the paper's step t."""
    _check_step(scheduler, t)
    ab_t, ab_prev = alpha_bar(scheduler, t), alpha_bar(scheduler, t - 1)
    alpha_t = ab_t / ab_prev  # α_t = ᾱ_t / ᾱ_{t−1}
    beta_t = 1.0 - alpha_t  # β_t
    c0 = ab_prev**0.5 * beta_t / (1.0 - ab_t)  # √ᾱ_{t−1} β_t / (1 − ᾱ_t)
    ct = alpha_t**0.5 * (1.0 - ab_prev) / (1.0 - ab_t)  # √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    var = (1.0 - ab_prev) / (1.0 - ab_t) * beta_t  # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) β_t
    return c0, ct, var


def posterior_mean(x_t: torch.Tensor, x0_hat: torch.Tensor, t: int, scheduler: Any) -> torch.Tensor:
    """μ̃_t(x_t, x̂₀) = (√ᾱ_{t−1} β_t / (1−ᾱ_t)) x̂₀ + (√α_t (1−ᾱ_{t−1}) / (1−ᾱ_t)) x_t."""
    c0, ct, _ = posterior_coefficients(scheduler, t)
    return c0 * x0_hat + ct * x_t


def predict_noise(unet: Any, x_t: torch.Tensor, t: int) -> torch.Tensor:
    """ε_θ(x_t, t) for a batch at the paper's step t."""
    steps = torch.full((x_t.shape[0],), model_timestep(t), dtype=torch.long, device=x_t.device)
    return unet(x_t, steps).sample


def backward_step(
    unet: Any,
    scheduler: Any,
    x_t: torch.Tensor,
    t: int,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One DDPM reverse step x_t → x_{t−1} (model range).

    Deterministic: x_{t−1} = μ̃_t(x_t, x̂₀). Stochastic: x_{t−1} = μ̃_t + √β̃_t z, z ~ N(0, I)
    (β̃_1 = 0, so the last step — and d = 1 — is deterministic either way).
    """
    eps = predict_noise(unet, x_t, t)
    mean = posterior_mean(x_t, predict_x0(x_t, eps, t, scheduler), t, scheduler)
    if not stochastic:
        return mean
    _, _, var = posterior_coefficients(scheduler, t)
    if var <= 0.0:
        return mean
    z = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device="cpu").to(x_t.device)
    return mean + var**0.5 * z


def back_in_time(
    unet: Any,
    scheduler: Any,
    x0: torch.Tensor,
    d: int = 1,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BTD's reconstruction x′: treat the suspect image x₀ (model range) as x_d and run d reverse steps
    d, d−1, …, 1. The anomaly evidence is the residual x₀ − x′."""
    _check_step(scheduler, d)
    x = x0
    for t in range(int(d), 0, -1):
        x = backward_step(unet, scheduler, x, t, stochastic=stochastic, generator=generator)
    return x


def noise_loss(
    unet: Any, scheduler: Any, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """DDPM training loss ‖ε − ε_θ(x_t, t)‖² with x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε (``t``: paper steps, a batch)."""
    k = (t - 1).long()
    x_t = scheduler.add_noise(x0, noise, k)
    return torch.nn.functional.mse_loss(unet(x_t, k).sample, noise)


# ------------------------------------------------------------------ scoring fast path
@dataclass(frozen=True)
class ReverseStep:
    """The noise-free terms of one reverse step at the paper's step t (they depend on the schedule only):
    x̂₀ = (x_t − ``sqrt_one_minus_ab`` ε) / ``sqrt_ab``; μ̃ = ``c0`` x̂₀ + ``ct`` x_t; x_{t−1} = μ̃ + ``sigma`` z."""

    t: int
    sqrt_one_minus_ab: float
    sqrt_ab: float
    c0: float
    ct: float
    sigma: float


def reverse_steps(scheduler: Any, d: int) -> tuple[ReverseStep, ...]:
    """The terms of steps d, d−1, …, 1, computed once per (schedule, d) instead of at every call.
    Same float64 arithmetic as :func:`predict_x0` / :func:`posterior_coefficients`."""
    _check_step(scheduler, d)
    out = []
    for t in range(int(d), 0, -1):
        ab_t = alpha_bar(scheduler, t)
        c0, ct, var = posterior_coefficients(scheduler, t)
        out.append(ReverseStep(t, (1.0 - ab_t) ** 0.5, ab_t**0.5, c0, ct, var**0.5 if var > 0.0 else 0.0))
    return tuple(out)


def back_in_time_steps(
    noise: Callable[[torch.Tensor, int], torch.Tensor],
    steps: Sequence[ReverseStep],
    x0: torch.Tensor,
    *,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`back_in_time` with precomputed :class:`ReverseStep` terms and any noise predictor
    ``noise(x_t, t)`` (eager U-Net or an inference runtime). With the eager U-Net the result is
    bit-identical to :func:`back_in_time` (same operations in the same order, same random draws)."""
    x = x0
    for s in steps:
        eps = noise(x, s.t)
        mean = s.c0 * ((x - s.sqrt_one_minus_ab * eps) / s.sqrt_ab) + s.ct * x
        if stochastic and s.sigma > 0.0:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            mean = mean + s.sigma * z
        x = mean
    return x


class FixedStepNoise(torch.nn.Module):
    """ε_θ(·, t) at one fixed paper step t, as a plain tensor → tensor module (what a runtime exports)."""

    def __init__(self, unet: Any, t: int):
        super().__init__()
        self.unet, self.t = unet, int(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x, torch.full((x.shape[0],), model_timestep(self.t), dtype=torch.long)).sample
