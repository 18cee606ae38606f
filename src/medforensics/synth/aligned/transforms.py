"""Round trips that turn a real image into its aligned fake, and the sharpness / spectrum match.

``align(pixels, transform)`` keeps everything a detector could use as a shortcut equal between a
real and its fake: the content (the fake *is* the real, re-synthesised by a generator's last
stage), the size (no resize, no crop: the image is padded to a multiple of 8 by mirroring and
processed in tiles whose grid is aligned to 8 px, then cut back), the dtype / bit depth and
channel count, and — after :func:`match_sharpness` — the mean |Laplacian| (or, with
:func:`match_spectrum`, the radial power spectrum). A real that was a JPEG gets its JPEG quality
re-applied on the same 8×8 grid. What is left to tell them apart is the decoder's trace.

Transforms (:func:`parse_transform`):

* ``ae:<name>`` — a member of :data:`~medforensics.synth.aligned.models.AE_REGISTRY`
  (encode → latent mean / nearest codes → decode);
* ``ddpm-1step`` — noise the image to a small timestep ``t`` (x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε) and
  predict x̂₀ with one U-Net call of a factory ``diffusion`` generator;
* ``ddpm-ddim<k>`` — the same noising, then ``k`` deterministic DDIM steps from ``t`` to 0.

Grey images go through single-channel models as they are, RGB images channel by channel.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from ...eval.controls import sharpness_score
from ..generators import train_loop as tl

GRID = 8
#: Pillow modes kept as they are: mode → (dtype, max value)
MODES: dict[str, tuple[type, int]] = {"L": (np.uint8, 255), "RGB": (np.uint8, 255), "I;16": (np.uint16, 65535)}


class AlignError(ValueError):
    """A real image cannot be aligned (unsupported file, mode, size...); the message names the file."""


# --------------------------------------------------------------------------- raster I/O at native bit depth
def read_real(path: str | Path, max_pixels: int = 100_000_000) -> tuple[np.ndarray, dict[str, Any]]:
    """Pixels of a raster file at native bit depth (uint8 L/RGB or uint16 grey) + ``{format, mode, jpeg_quality}``."""
    from ...data.processing import estimate_jpeg_quality

    path = Path(path)
    try:
        with Image.open(path) as im:
            fmt, mode = im.format or "", im.mode
            if im.width * im.height > max_pixels:
                raise AlignError(f"{path}: {im.width}×{im.height} px is over the {max_pixels:,}-pixel limit")
            if mode in ("I;16B", "I;16L", "I;16N"):
                mode = "I;16"
            if mode not in MODES:
                raise AlignError(f"{path}: Pillow mode {im.mode!r} is not supported (grey L / I;16 or RGB); "
                                 "convert the file first")
            arr = np.array(im)
    except AlignError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise AlignError(f"{path}: not a readable raster image ({exc}); DICOM/NIfTI reals are not supported "
                         "by the aligned round trips") from exc
    dtype, _ = MODES[mode]
    arr = arr.astype(dtype, copy=False)
    if min(arr.shape[:2]) < GRID:
        raise AlignError(f"{path}: {arr.shape[1]}×{arr.shape[0]} px is smaller than the {GRID}-px grid")
    quality = estimate_jpeg_quality(path) if fmt == "JPEG" else None
    return arr, {"format": fmt, "mode": mode, "jpeg_quality": quality}


def to_float(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / float(np.iinfo(pixels.dtype).max)


def to_dtype(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    top = float(np.iinfo(dtype).max)
    return np.rint(np.clip(x, 0.0, 1.0) * top).astype(dtype)


# --------------------------------------------------------------------------- measurements
def sharpness(x: np.ndarray) -> float:
    """Mean |Laplacian| (4-neighbour, mirrored borders) of a float image; RGB averaged over channels —
    the benchmark's sharpness-only control, :func:`medforensics.eval.controls.sharpness_score`."""
    return sharpness_score(x)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1] (inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def radial_spectrum(x: np.ndarray, bins: int = 16) -> np.ndarray:
    """Mean power of the 2-D spectrum in ``bins`` rings of normalised frequency (0 … Nyquist√2)."""
    x = np.asarray(x, dtype=np.float64)
    chans = [x] if x.ndim == 2 else [x[..., c] for c in range(x.shape[-1])]
    r, edges = _rings(x.shape[:2], bins)
    out = np.zeros(bins)
    for c in chans:
        p = np.abs(np.fft.rfft2(c - c.mean())) ** 2
        out += np.bincount(r.ravel(), p.ravel(), minlength=bins)[:bins] / np.maximum(
            np.bincount(r.ravel(), minlength=bins)[:bins], 1)
    return out / len(chans)


def _rings(shape: tuple[int, int], bins: int) -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    rad = np.sqrt(fy**2 + fx**2) / math.sqrt(0.5)  # 0 … 1
    edges = np.linspace(0, 1, bins + 1)
    return np.clip(np.digitize(rad, edges) - 1, 0, bins - 1), edges


# --------------------------------------------------------------------------- matching
def _unsharp(x: np.ndarray, a: float, sigma: float) -> np.ndarray:
    """x + a·(x − G_σ x): a > 0 sharpens, −1 ≤ a < 0 blurs (a = −1 is the Gaussian blur)."""
    s = (sigma, sigma) + ((0,) if x.ndim == 3 else ())
    return x + a * (x - ndimage.gaussian_filter(x, s, mode="reflect"))


def match_sharpness(fake: np.ndarray, target: float, dtype: np.dtype, sigma: float = 1.0,
                    max_strength: float = 64.0, iters: int = 40) -> tuple[np.ndarray, dict[str, Any]]:
    """Solve the unsharp/blur strength ``a`` so that the quantised fake's mean |Laplacian| ≈ ``target``.

    ``y = x + a·(x − G_σ x)``: mean |Laplacian| grows with ``a``. Too sharp → ``a`` in [−1, 0]
    (σ doubled, up to 8, while even the full blur ``a = −1`` stays too sharp); too soft → ``a`` in
    [0, hi] with ``hi`` doubled from 1 until it overshoots (at most ``max_strength``). Bisection
    then finds ``a``; every candidate is clipped to [0, 1] and quantised to ``dtype`` before it is
    measured, as it will be saved. Returns that image and ``{strength, sigma, ratio}``.
    """
    def at(a: float, sg: float) -> tuple[np.ndarray, float]:
        y = to_float(to_dtype(_unsharp(fake, a, sg), dtype))
        return y, sharpness(y)

    y0, s0 = at(0.0, sigma)
    if target <= 0 or s0 == target:
        return y0, {"strength": 0.0, "sigma": sigma, "ratio": s0 / target if target > 0 else math.nan}
    if s0 > target:
        lo, hi = -1.0, 0.0
        while at(-1.0, sigma)[1] > target and sigma < 8:
            sigma *= 2
    else:
        lo, hi = 0.0, 1.0
        while at(hi, sigma)[1] < target and hi < max_strength:
            lo, hi = hi, hi * 2
    best = (abs(s0 - target), 0.0, y0, s0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        y, s = at(mid, sigma)
        if abs(s - target) < best[0]:
            best = (abs(s - target), mid, y, s)
        if s > target:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-4 or best[0] < 1e-4 * target:
            break
    _, a, y, s = best
    return y, {"strength": round(a, 5), "sigma": sigma, "ratio": s / target}


def match_spectrum(fake: np.ndarray, real: np.ndarray, dtype: np.dtype, bins: int = 32,
                   clip: tuple[float, float] = (0.25, 4.0)) -> tuple[np.ndarray, dict[str, Any]]:
    """Scale the fake's spectrum ring by ring so its radial power spectrum equals the real's.

    The gain of ring ``i`` is √(P_real(i) / P_fake(i)), clipped to ``clip`` and interpolated
    linearly in radius; the image mean is left alone. Returns the quantised float image and the
    gains applied.
    """
    pf, pr = radial_spectrum(fake, bins), radial_spectrum(real, bins)
    gains = np.clip(np.sqrt(pr / np.maximum(pf, 1e-20)), *clip)
    fy = np.fft.fftfreq(fake.shape[0])[:, None]
    fx = np.fft.rfftfreq(fake.shape[1])[None, :]
    rad = np.sqrt(fy**2 + fx**2) / math.sqrt(0.5)
    centres = (np.arange(bins) + 0.5) / bins
    gmap = np.interp(rad, centres, gains)
    gmap[0, 0] = 1.0
    chans = [fake] if fake.ndim == 2 else [fake[..., c] for c in range(fake.shape[-1])]
    out = [np.fft.irfft2(np.fft.rfft2(c) * gmap, s=c.shape) for c in chans]
    y = out[0] if fake.ndim == 2 else np.stack(out, axis=-1)
    y = to_float(to_dtype(y, dtype))
    return y, {"ring_gains": [round(float(g), 4) for g in gains]}


# --------------------------------------------------------------------------- tiling
def pad_to(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Mirror-pad H×W(×C) at the bottom/right to multiples of ``multiple``; returns the original H, W."""
    h, w = x.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    pad = [(0, ph), (0, pw)] + ([(0, 0)] if x.ndim == 3 else [])
    return (np.pad(x, pad, mode="symmetric") if ph or pw else x), (h, w)


def tiled(fn, x: np.ndarray, tile: int = 256, halo: int = 16, offset: int = 0) -> np.ndarray:
    """Apply ``fn`` (B×1×h×w tensor → same) to a padded H×W float image tile by tile.

    Tiles are ``tile`` px (a multiple of 8) on a grid starting at ``-offset`` (a multiple of 8),
    each read with ``halo`` px of context on every side and cut back to its own area, so every
    tile and every context window starts at a multiple of 8 of the image.
    """
    if tile % GRID or halo % GRID or offset % GRID:
        raise ValueError(f"tile, halo and offset must be multiples of {GRID}, got {tile}, {halo}, {offset}")
    h, w = x.shape
    out = np.empty_like(x)
    starts_y = sorted({0, *(s for s in range(-offset, h, tile) if s > 0)})
    starts_x = sorted({0, *(s for s in range(-offset, w, tile) if s > 0)})
    ends_y = starts_y[1:] + [h]
    ends_x = starts_x[1:] + [w]
    for y0, y1 in zip(starts_y, ends_y):
        for x0, x1 in zip(starts_x, ends_x):
            a0, a1 = max(0, y0 - halo), min(h, y1 + halo)
            b0, b1 = max(0, x0 - halo), min(w, x1 + halo)
            t = torch.from_numpy(np.ascontiguousarray(x[a0:a1, b0:b1]))[None, None]
            r = fn(t)[0, 0].numpy()
            out[y0:y1, x0:x1] = r[y0 - a0 : y1 - a0, x0 - b0 : x1 - b0]
    return out


# --------------------------------------------------------------------------- transforms
@dataclass
class Transform:
    """A named round trip: ``fn(tile B×1×h×w in [0, 1], seed, variant) → tile`` plus its parameters."""

    name: str
    kind: str  # "autoencoder" | "vq-autoencoder" | "diffusion"
    fn: Any
    params: dict[str, Any] = field(default_factory=dict)
    tile: int = 256
    halo: int = 16

    def __call__(self, t: torch.Tensor, seed: int, variant: int = 0) -> torch.Tensor:
        return self.fn(t, seed, variant)


def ae_transform(gen, name: str) -> Transform:
    """Round trip through a trained :class:`~medforensics.synth.aligned.models.AlignedAEGenerator`.

    Variant 0 decodes the posterior mean (KL) or the nearest codes (VQ); variants k > 0 of a KL
    model decode a posterior sample seeded by (seed, k), so they differ even where the shifted
    tile grid does not cut the image. VQ round trips are deterministic: their variants differ
    only along the shifted tile borders.
    """
    c = gen.config
    params = {"model": name, "upsampling": c["upsampling"], "stride": int(c["stride"]),
              "bottleneck": c["bottleneck"], "width": int(c["width"]), "latent_channels": int(c["latent_channels"]),
              "seed": gen.seed, "train_steps": gen.step}
    kind = "vq-autoencoder" if c["bottleneck"] == "vq" else "autoencoder"
    def run(t: torch.Tensor, seed: int, variant: int) -> torch.Tensor:
        return gen.round_trip(t, tl.torch_generator(seed, 0xAE) if variant else None)

    # one tile for the common 256-px reals (halo 32 px of context where an image is larger)
    return Transform(f"ae:{name}", kind, run, params, tile=256, halo=32)


def ddpm_transform(gen, steps: int = 1, t: int = 10) -> Transform:
    """Noise to timestep ``t`` and denoise back with ``steps`` DDIM steps (1: a single x̂₀ prediction)."""
    T = int(gen.ddpm.config.num_train_timesteps)
    if not 1 <= t < T:
        raise ValueError(f"the diffusion round trip's t must be in 1…{T - 1}, got {t}")
    if not 1 <= steps <= t:
        raise ValueError(f"DDIM steps must be in 1…t={t}, got {steps}")
    abar = gen.ddpm.alphas_cumprod.to(torch.float32)
    vpred = gen.config["prediction_type"] == "v_prediction"
    net = gen._denoiser()
    times = [int(round(v)) for v in np.linspace(t, 0, steps + 1)[:-1]]

    @torch.no_grad()
    def run(x: torch.Tensor, seed: int, variant: int = 0) -> torch.Tensor:
        net.eval()
        x0 = x * 2.0 - 1.0
        eps = torch.randn(x0.shape, generator=tl.torch_generator(seed, 0xD1FF))
        a = abar[t]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        for i, ti in enumerate(times):
            a = abar[ti]
            out = net(xt, torch.full((x.shape[0],), ti, dtype=torch.long)).sample
            if vpred:
                x0h = a.sqrt() * xt - (1 - a).sqrt() * out
                eh = (1 - a).sqrt() * xt + a.sqrt() * out
            else:
                eh = out
                x0h = (xt - (1 - a).sqrt() * eh) / a.sqrt()
            x0h = x0h.clamp(-1, 1)
            a_prev = abar[times[i + 1]] if i + 1 < len(times) else torch.tensor(1.0)
            xt = a_prev.sqrt() * x0h + (1 - a_prev).sqrt() * eh
        return ((xt + 1.0) / 2.0).clamp(0.0, 1.0)

    name = "ddpm-1step" if steps == 1 else f"ddpm-ddim{steps}"
    params = {"t": t, "steps": steps, "timesteps": times, "prediction_type": gen.config["prediction_type"],
              "train_steps": gen.step, "resolution": gen.resolution, "seed": gen.seed}
    # the U-Net needs sides divisible by 2^(levels-1) (≤ 8 for the CPU configs): 8-aligned tiles are
    return Transform(name, "diffusion", run, params, tile=128, halo=16)


def parse_transform(spec: str) -> tuple[str, dict[str, Any]]:
    """``"ae:<name>"`` → ("ae", {name}); ``"ddpm-1step"`` → ("ddpm", {steps: 1}); ``"ddpm-ddim4"`` → steps 4."""
    spec = spec.strip()
    if spec.startswith("ae:") and len(spec) > 3:
        from .models import AE_REGISTRY

        name = spec[3:]
        if name not in AE_REGISTRY:
            raise ValueError(f"unknown autoencoder {name!r} in transform {spec!r}; names look like "
                             f"{next(iter(AE_REGISTRY))} (see medforensics.synth.aligned.AE_REGISTRY)")
        return "ae", {"name": name}
    if spec == "ddpm-1step":
        return "ddpm", {"steps": 1}
    if spec.startswith("ddpm-ddim") and spec[len("ddpm-ddim"):].isdigit() and int(spec[len("ddpm-ddim"):]) >= 1:
        return "ddpm", {"steps": int(spec[len("ddpm-ddim"):])}
    raise ValueError(f"unknown transform {spec!r}; use ae:<registry name>, ddpm-1step or ddpm-ddim<k>")


# --------------------------------------------------------------------------- align
def align(
    pixels: np.ndarray,
    transform: Transform,
    variant: int = 0,
    match: str = "sharpness",
    jpeg_quality: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The aligned fake of ``pixels`` (uint8/uint16, H×W or H×W×3) and what was done to it.

    ``variant`` k shifts the tile grid by 8·k px and seeds the stochastic parts with
    ``(seed, k)``: k = 0, 1, … give different fakes of one real. ``match``: ``"sharpness"``
    (:func:`match_sharpness` to the real's mean |Laplacian|), ``"spectrum"`` (:func:`match_spectrum`
    to the real's radial power spectrum), or ``"none"``. ``jpeg_quality`` (the real's, when it was
    a JPEG) is re-applied last, on the same 8×8 grid since nothing moved. Same shape and dtype out.
    """
    if match not in ("sharpness", "spectrum", "none"):
        raise ValueError(f"match must be 'sharpness', 'spectrum' or 'none', got {match!r}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise AlignError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    real = to_float(pixels)
    padded, (h, w) = pad_to(real, GRID)
    chans = [padded] if padded.ndim == 2 else [padded[..., c] for c in range(padded.shape[-1])]
    offset = (GRID * int(variant)) % transform.tile
    run_seed = tl.derive_seed(int(seed), int(variant))
    outs = [tiled(lambda t, c=c: transform(t, tl.derive_seed(run_seed, c), int(variant)), ch, transform.tile,
                  transform.halo, offset)
            for c, ch in enumerate(chans)]
    fake = (outs[0] if padded.ndim == 2 else np.stack(outs, axis=-1))[:h, :w]
    fake = to_float(to_dtype(fake, pixels.dtype))
    info: dict[str, Any] = {"transform": transform.name, **transform.params, "variant": int(variant),
                            "tile": transform.tile, "halo": transform.halo, "grid_offset": offset, "match": match,
                            "psnr_roundtrip": round(psnr(real, fake), 3)}
    s_real, s_raw = sharpness(real), sharpness(fake)
    info["sharpness_real"], info["sharpness_roundtrip"] = round(s_real, 6), round(s_raw, 6)
    if match == "sharpness":
        fake, how = match_sharpness(fake, s_real, pixels.dtype)
        info["sharpness_match"] = how
    elif match == "spectrum":
        fake, how = match_spectrum(fake, real, pixels.dtype)
        info["spectrum_match"] = how
    if jpeg_quality is not None:
        from ...data.processing import jpeg

        if pixels.dtype != np.uint8:
            raise AlignError("JPEG history can only be re-applied to 8-bit images")
        fake = jpeg(fake, int(jpeg_quality))
        info["jpeg_quality"] = int(jpeg_quality)
    out = to_dtype(fake, pixels.dtype)
    final = to_float(out)
    info["sharpness_fake"] = round(sharpness(final), 6)
    info["sharpness_ratio"] = round(info["sharpness_fake"] / s_real, 5) if s_real > 0 else None
    info["psnr"] = round(psnr(real, final), 3)
    return out, json.loads(json.dumps(info, default=float))
