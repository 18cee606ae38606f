"""BTD's DDPM arithmetic: the one-step backward (posterior mean) against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from medforensics.detectors.btd.model import (
    back_in_time,
    backward_step,
    build_scheduler,
    build_unet,
    posterior_coefficients,
    predict_noise,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    unet = build_unet(1, base_width=8, channel_mult=(1, 2), layers_per_block=1, sample_size=32).eval()
    return unet, build_scheduler(1000, "linear", 1e-4, 0.02)


def _hand_alpha_bar(t: int) -> float:
    """ᾱ_t of the linear DDPM schedule β_s = 1e-4 + (s − 1)/(T − 1)·(0.02 − 1e-4), computed in plain floats."""
    out = 1.0
    for s in range(1, t + 1):
        out *= 1.0 - (1e-4 + (s - 1) / 999 * (0.02 - 1e-4))
    return out


@pytest.mark.parametrize("t", [1, 2, 10, 300])
def test_one_step_backward_is_the_hand_computed_posterior_mean(tiny, t):
    unet, sched = tiny
    x_t = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(t)) * 2 - 1
    with torch.no_grad():
        eps = predict_noise(unet, x_t, t).double()
        got = backward_step(unet, sched, x_t, t).double()
    ab, ab_prev = _hand_alpha_bar(t), _hand_alpha_bar(t - 1)
    beta = 1 - ab / ab_prev
    x = x_t.double()
    x0_hat = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0_hat + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * x
    torch.testing.assert_close(got, mean, rtol=1e-4, atol=1e-5)


def test_first_step_coefficients_and_d1_residual(tiny):
    unet, sched = tiny
    c0, ct, var = posterior_coefficients(sched, 1)  # ᾱ_0 = 1: μ̃_1 = x̂₀, β̃_1 = 0
    assert c0 == pytest.approx(1.0) and ct == pytest.approx(0.0, abs=1e-12) and var == pytest.approx(0.0, abs=1e-12)
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        eps = predict_noise(unet, x, 1)
        x_prime = back_in_time(unet, sched, x, 1)
    expected = (x - math.sqrt(1e-4) * eps) / math.sqrt(1 - 1e-4)  # x′ = x̂₀ = (x − √β₁ ε_θ) / √α₁
    torch.testing.assert_close(x_prime, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [1, 7])
def test_matches_diffusers_scheduler_step(tiny, t):
    """The same step through diffusers' DDPMScheduler.step (its index is t − 1; stochastic for t > 1)."""
    unet, sched = tiny
    x_t = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        eps = predict_noise(unet, x_t, t)
        ref = sched.step(eps, t - 1, x_t, generator=torch.Generator().manual_seed(5)).prev_sample
        ours = backward_step(unet, sched, x_t, t, stochastic=True, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_back_in_time_is_deterministic_and_checks_d(tiny):
    unet, sched = tiny
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = back_in_time(unet, sched, x, 5), back_in_time(unet, sched, x, 5)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        back_in_time(unet, sched, x, 0)


def test_schedules_and_width_errors():
    cos = build_scheduler(1000, "cosine")
    assert cos.config.beta_schedule == "squaredcos_cap_v2"
    with pytest.raises(ValueError, match="beta_schedule"):
        build_scheduler(1000, "quadratic")
    with pytest.raises(ValueError, match="norm_num_groups"):
        build_unet(1, base_width=12, channel_mult=(1, 2), norm_num_groups=8)
