"""3-D attacks on CT / MR series (CT-GAN style) and writing them back into DICOM / NIfTI.

The attack the Back-in-Time Diffusion paper answers (CT-GAN, Mirsky et al. 2019) edits a *study*:
a lesion is injected into, or removed from, a few consecutive slices of a series and the pixels
are written back into the files with the headers untouched. This module does the same on a stack
of slices ``S×H×W`` (float, in Hounsfield units for CT or raw scaled values for MR) with its voxel
spacing ``(dz, dy, dx)`` in mm:

* :func:`inject_lesion_3d` — an irregular ellipsoidal nodule (radius in mm, default 4–15 mm) with a
  3-D soft alpha, its intensity either a synthetic soft-tissue nodule (CT: +20…+80 HU) or taken from
  a donor region (MR: a bright percentile of the surrounding slab), with Gaussian noise matched to the
  local noise floor (std of a high-pass of the surroundings) so that the lesion is not too smooth;
* :func:`remove_lesion_3d` — fills an ellipsoid from its surroundings by a 3-D harmonic (Laplace)
  fill with anisotropic spacing (:func:`scipy.sparse.linalg.spsolve`), plus matched noise;
* :func:`inpaint_cube_diffusion` — re-draws an ellipsoid slice by slice with a trained BTD U-Net
  (the shipped ``btd-ct`` / ``btd-mri`` models, through
  :class:`medforensics.synth.attacks.RepaintModel`) at the slice's native resolution: RePaint's
  known-region replacement, started (SDEdit-style) from the harmonic fill noised to the U-Net's
  trained time range — those U-Nets only know t ≤ 20, so plain RePaint from t = 1000 gives noise.

Every attack returns a :class:`Tamper3DResult`: the new stack (float32), the boolean 3-D mask of the
voxels it changed (nothing outside it changes, bit for bit) and the ground-truth record
``(first_slice, last_slice, y, x, radius_px)`` (slice indices 0-based in position order) — what the
series scanner (:class:`medforensics.engine.SeriesAggregator`) must find.

Reading and writing as an attacker would:

* :func:`read_dicom_series` groups a folder's files by SeriesInstanceUID and orders them by position
  along the slice normal (ImagePositionPatient · (row × column of ImageOrientationPatient)), giving
  the stack in modality units (RescaleSlope/Intercept applied);
* :func:`write_dicom_series` maps the attacked voxels back to stored values (inverse rescale,
  rounded, clipped to the stored bit range, the original dtype), writes each modified slice with the
  ORIGINAL header (same UIDs); native (uncompressed) transfer syntaxes are kept; a compressed one is
  re-encoded with pydicom when it has an encoder for it (RLE Lossless, JPEG 2000 Lossless, JPEG-LS
  Lossless), otherwise the slice is written as Explicit VR Little Endian — the result says which, per
  file (the write-back helpers live in :mod:`medforensics.io.dicom_write`, shared with ``demo``). Unmodified slices are copied byte for byte.
* :func:`read_nifti_volume` / :func:`write_nifti_volume` do the same for NIfTI, in the scanner's
  slice convention (RAS-reoriented, axial slices in radiological display), writing the volume back in
  its original voxel order with the same affine and header and the original data type.
"""

from __future__ import annotations

import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from ..io.dicom_write import encode_pixel_data, to_stored
from .tamper import RngLike, _as_rng

#: default lesion radius range (mm), CT-GAN's nodules are roughly 4–15 mm in radius
RADIUS_MM = (4.0, 15.0)
#: synthetic soft-tissue nodule intensity in HU (lung nodules)
NODULE_HU = (20.0, 80.0)
#: CT window used to map HU to the U-Net's [0, 1] range (the BTD window, see io.intensity)
CT_WINDOW = (-700.0, 2000.0)


@dataclass
class Tamper3DResult:
    """A tampered stack plus its ground truth."""

    volume: np.ndarray  # float32 S×H×W, same units as the input
    mask: np.ndarray  # bool S×H×W: True where voxels were altered (soft edge included)
    kind: str  # "inject" | "remove" | "inpaint"
    center: tuple[int, int, int]  # (z, y, x) voxel indices
    radius_mm: float
    radius_px: float  # in-plane radius in pixels (of the mask's largest cross-section)
    first_slice: int
    last_slice: int
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def record(self) -> tuple[int, int, int, int, float]:
        """``(first_slice, last_slice, y, x, radius_px)``; slices 0-based in position order."""
        return (self.first_slice, self.last_slice, int(self.center[1]), int(self.center[2]), round(self.radius_px, 2))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "method": self.method, "first_slice": self.first_slice,
                "last_slice": self.last_slice, "center_zyx": [int(v) for v in self.center],
                "y": int(self.center[1]), "x": int(self.center[2]), "radius_px": round(self.radius_px, 2),
                "radius_mm": round(self.radius_mm, 2), "n_voxels": int(self.mask.sum()),
                "slices": sorted({int(z) for z in np.nonzero(self.mask.any(axis=(1, 2)))[0]}),
                "details": self.details}


# --------------------------------------------------------------------------- geometry helpers


def _check_stack(volume: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, tuple[float, float, float]]:
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"expected an S×H×W stack, got shape {vol.shape}")
    if vol.shape[0] < 2 or min(vol.shape[1:]) < 16:
        raise ValueError(f"stack too small to tamper: {vol.shape} (need >= 2 slices of >= 16×16)")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive mm values (dz, dy, dx), got {spacing!r}")
    if not np.isfinite(vol).all():
        raise ValueError("stack has non-finite voxels")
    return vol.astype(np.float32, copy=True), sp  # type: ignore[return-value]


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def body_mask(volume: np.ndarray, modality: str) -> np.ndarray:
    """Per-slice filled foreground (CT: > −500 HU; MR: > Otsu-like 20th percentile of non-zero voxels)."""
    if modality == "ct":
        fg = volume > -500.0
    else:
        nz = volume[volume > 0]
        thr = float(np.percentile(nz, 20)) if nz.size else 0.0
        fg = volume > thr
    out = np.zeros_like(fg)
    for k in range(fg.shape[0]):
        sl = ndimage.binary_opening(fg[k], iterations=2)
        out[k] = ndimage.binary_fill_holes(sl)
    return out


def _radii(radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    return np.array([radius_mm / spacing[0], radius_mm / spacing[1], radius_mm / spacing[2]])


def _pick_center(
    rng: np.random.Generator, volume: np.ndarray, radii: np.ndarray, modality: str, prefer: str = "any"
) -> tuple[int, int, int]:
    """A random voxel inside the body, at least one radius (+ edge) from the stack's borders.

    ``prefer="lung"`` (CT injection) prefers voxels in aerated tissue (−950…−500 HU) inside the body,
    where a nodule is plausible; ``prefer="bright"`` (removal) prefers the brightest compact structure.
    """
    S, H, W = volume.shape
    mz, my, mx = (int(math.ceil(1.3 * r)) + 1 for r in radii)
    mz = min(mz, (S - 1) // 2)
    valid = np.zeros(volume.shape, bool)
    valid[mz:S - mz, my:H - my, mx:W - mx] = True
    body = body_mask(volume, modality)
    inside = ndimage.binary_erosion(body, structure=np.ones((1, 3, 3), bool), iterations=max(1, int(max(radii[1:]))))
    cand = valid & inside
    if prefer == "lung" and modality == "ct":
        lung = cand & (volume > -950.0) & (volume < -500.0)
        lung = ndimage.binary_erosion(lung, structure=np.ones((1, 3, 3), bool), iterations=max(1, int(max(radii[1:]) * 0.7)))
        if lung.any():
            cand = lung
    elif prefer == "bright":
        sm = ndimage.gaussian_filter(volume, sigma=[max(r / 2, 0.5) for r in radii])
        vals = sm[cand] if cand.any() else None
        if vals is not None and vals.size:
            bright = cand & (sm >= np.percentile(vals, 97))
            if bright.any():
                cand = bright
    if not cand.any():
        cand = valid if valid.any() else np.ones(volume.shape, bool)
    idx = np.flatnonzero(cand)
    z, y, x = np.unravel_index(int(idx[int(rng.integers(idx.size))]), volume.shape)
    return int(z), int(y), int(x)


def _ellipsoid_rho(
    shape: tuple[int, int, int], center: tuple[int, int, int], radii: np.ndarray, rng: np.random.Generator | None,
    irregular: float = 0.0,
) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Normalised ellipsoid distance ρ (1 on the surface) inside a bounding box, optionally made irregular."""
    box = []
    for c, r, n in zip(center, radii, shape):
        h = int(math.ceil(1.6 * r)) + 2
        box.append(slice(max(0, c - h), min(n, c + h + 1)))
    zz, yy, xx = np.ogrid[box[0], box[1], box[2]]
    rho = np.sqrt(((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2
                  + ((xx - center[2]) / radii[2]) ** 2)
    if irregular > 0 and rng is not None:
        bump = ndimage.gaussian_filter(rng.standard_normal(rho.shape), sigma=[max(0.7, r / 2.5) for r in radii])
        bump /= max(float(np.abs(bump).max()), 1e-6)
        rho = rho * (1.0 + irregular * bump)
    return rho.astype(np.float32), tuple(box)  # type: ignore[return-value]


def _soft_alpha(rho: np.ndarray, feather: float) -> np.ndarray:
    """1 inside ρ ≤ 1, smooth fall-off to 0 at ρ = 1 + feather."""
    return _smoothstep((1.0 + feather - rho) / feather).astype(np.float32)


def noise_floor(volume: np.ndarray, region: np.ndarray) -> float:
    """Std of the in-plane high-pass (voxel − 3×3 Gaussian, σ=1) over ``region``, corrected for the
    filter's gain on white noise — an estimate of the acquisition noise std."""
    hp = volume - ndimage.gaussian_filter(volume, sigma=(0, 1.0, 1.0))
    vals = hp[region] if region.any() else hp.ravel()
    # robust std (MAD); for white noise the σ=1 Gaussian high-pass keeps ≈ 0.85 of the std (2-D)
    mad = float(np.median(np.abs(vals - np.median(vals)))) * 1.4826
    return mad / 0.85


def _matched_noise(rng: np.random.Generator, shape: tuple[int, ...], std: float, corr: float = 0.6) -> np.ndarray:
    """Gaussian noise with a slight in-plane correlation (CT noise is not white), scaled to ``std``."""
    n = rng.standard_normal(shape)
    if corr > 0:
        n = ndimage.gaussian_filter(n, sigma=(0, corr, corr))
        n /= max(float(n.std()), 1e-6)
    return (n * std).astype(np.float32)


def _shell(rho: np.ndarray, inner: float, outer: float) -> np.ndarray:
    return (rho > inner) & (rho <= outer)


def _finish(
    orig: np.ndarray, new_box: np.ndarray, alpha: np.ndarray, box: tuple[slice, slice, slice],
    center: tuple[int, int, int], radius_mm: float, kind: str, method: str, details: dict[str, Any],
) -> Tamper3DResult:
    out = orig.copy()
    sub = out[box]
    mixed = sub + alpha * (new_box - sub)
    changed = (alpha > 0) & (mixed != sub)
    sub[changed] = mixed[changed]
    mask = np.zeros(orig.shape, bool)
    mask[box] = changed
    if not mask.any():
        raise ValueError("the attack changed no voxel (flat region or radius below one voxel)")
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    area = mask.sum(axis=(1, 2)).max()
    return Tamper3DResult(out, mask, kind, center, float(radius_mm), float(math.sqrt(area / math.pi)),
                          int(zs.min()), int(zs.max()), method, details)


def _resolve(
    vol: np.ndarray, spacing: tuple[float, float, float], gen: np.random.Generator, center: Any, radius_mm: Any,
    modality: str, prefer: str,
) -> tuple[tuple[int, int, int], float, np.ndarray]:
    r = float(radius_mm) if radius_mm is not None else float(gen.uniform(*RADIUS_MM))
    if not (0 < r < 200):
        raise ValueError(f"radius_mm must be in (0, 200), got {r}")
    radii = _radii(r, spacing)
    radii[0] = max(radii[0], 0.75)  # at least the centre slice, usually its neighbours too
    if max(radii[1:]) * 2.2 > min(vol.shape[1:]):
        raise ValueError(f"radius {r} mm is too large for slices of {vol.shape[1:]} pixels at {spacing[1:]} mm")
    if center is None:
        c = _pick_center(gen, vol, radii, modality, prefer)
    else:
        c = tuple(int(round(float(v))) for v in center)
        if len(c) != 3 or not all(0 <= v < n for v, n in zip(c, vol.shape)):
            raise ValueError(f"center {center!r} is outside the stack of shape {vol.shape} (z, y, x)")
    return c, r, radii  # type: ignore[return-value]


# --------------------------------------------------------------------------- attacks


def inject_lesion_3d(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    modality: str = "ct",
    center: tuple[int, int, int] | None = None,
    radius_mm: float | None = None,
    intensity: float | None = None,
    rng: RngLike = None,
) -> Tamper3DResult:
    """Inject an irregular ellipsoidal lesion across consecutive slices (module docstring).

    ``intensity``: the lesion's mean value (CT default: uniform +20…+80 HU, a soft-tissue nodule;
    MR default: from the donor region — the 95th percentile of the body voxels in the surrounding
    slab, ±10 %). The lesion has a smooth internal profile, a ~30 % soft edge (3-D alpha) and
    noise matched to the local noise floor of the surroundings.
    """
    modality = _modality(modality)
    vol, sp = _check_stack(volume, spacing)
    gen = _as_rng(rng)
    c, r, radii = _resolve(vol, sp, gen, center, radius_mm, modality, "lung")
    rho, box = _ellipsoid_rho(vol.shape, c, radii, gen, irregular=0.15)
    sub = vol[box]
    surround = _shell(rho, 1.4, 2.2)
    sigma = noise_floor(sub, surround if surround.any() else np.ones_like(surround))
    if intensity is None:
        if modality == "ct":
            level, donor = float(gen.uniform(*NODULE_HU)), "synthetic-nodule"
        else:
            slab = vol[box[0]]
            fgm = body_mask(slab, modality)
            vals = slab[fgm] if fgm.any() else slab.ravel()
            level, donor = float(np.percentile(vals, 95)) * float(gen.uniform(0.9, 1.1)), "donor-percentile"
    else:
        level, donor = float(intensity), "given"
    # internal profile: slightly brighter core, low-frequency heterogeneity, matched noise
    core = 1.0 + 0.08 * _smoothstep(1.0 - rho)
    hetero = ndimage.gaussian_filter(gen.standard_normal(rho.shape), sigma=[max(0.7, x / 3) for x in radii])
    hetero /= max(float(hetero.std()), 1e-6)
    spread = 0.06 * abs(level) if modality != "ct" else 8.0
    lesion = level * core + spread * hetero + _matched_noise(gen, rho.shape, sigma)
    alpha = _soft_alpha(rho, feather=0.3)
    # where the lesion is blended only partly, keep the destination's own noise: no smooth halo
    details = {"donor": donor, "level": round(level, 2), "noise_std": round(sigma, 3),
               "radii_vox": [round(float(v), 2) for v in radii], "spacing_mm": list(sp), "modality": modality}
    return _finish(vol, lesion.astype(np.float32), alpha, box, c, r, "inject", "ellipsoid-soft-alpha", details)


def _harmonic_fill(sub: np.ndarray, unknown: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Solve Laplace's equation (anisotropic, weights 1/d²) on ``unknown`` voxels with the others as
    Dirichlet boundary values (6-neighbourhood; the box border is treated as known)."""
    idx = -np.ones(sub.shape, np.int64)
    pts = np.argwhere(unknown)
    n = len(pts)
    idx[tuple(pts.T)] = np.arange(n)
    rows, cols, vals = [], [], []
    rhs = np.zeros(n)
    diag = np.zeros(n)
    for axis in range(3):
        w = 1.0 / spacing[axis] ** 2
        for step in (-1, 1):
            nb = pts.copy()
            nb[:, axis] += step
            inside = (nb[:, axis] >= 0) & (nb[:, axis] < sub.shape[axis])
            ii = np.nonzero(inside)[0]
            nbi = nb[ii]
            j = idx[tuple(nbi.T)]
            diag[ii] += w
            unk = j >= 0
            rows.append(ii[unk])
            cols.append(j[unk])
            vals.append(np.full(int(unk.sum()), -w))
            known = ii[~unk]
            rhs[known] += w * sub[tuple(nbi[~unk].T)]
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    A = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    sol = spsolve(A, rhs)
    out = sub.astype(np.float64).copy()
    out[tuple(pts.T)] = sol
    return out.astype(np.float32)


def remove_lesion_3d(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    modality: str = "ct",
    center: tuple[int, int, int] | None = None,
    radius_mm: float | None = None,
    rng: RngLike = None,
) -> Tamper3DResult:
    """Fill an ellipsoid across consecutive slices from its surroundings (3-D harmonic fill + matched
    noise, soft edge). Default ``center``: a bright compact structure in the body (a "lesion")."""
    modality = _modality(modality)
    vol, sp = _check_stack(volume, spacing)
    gen = _as_rng(rng)
    c, r, radii = _resolve(vol, sp, gen, center, radius_mm, modality, "bright")
    rho, box = _ellipsoid_rho(vol.shape, c, radii, gen, irregular=0.08)
    sub = vol[box]
    feather = 0.25
    unknown = rho <= 1.0 + feather
    # boundary values from a lightly smoothed copy (the noise is added back below)
    smooth = ndimage.gaussian_filter(sub, sigma=(0, 1.0, 1.0))
    filled = _harmonic_fill(smooth, unknown, sp)
    surround = _shell(rho, 1.3, 2.2)
    sigma = noise_floor(sub, surround if surround.any() else np.ones_like(surround))
    filled = filled + _matched_noise(gen, filled.shape, sigma)
    alpha = _soft_alpha(rho, feather=feather)
    details = {"fill": "harmonic-3d", "noise_std": round(sigma, 3), "radii_vox": [round(float(v), 2) for v in radii],
               "spacing_mm": list(sp), "modality": modality}
    return _finish(vol, filled, alpha, box, c, r, "remove", "harmonic-fill", details)


def _to_unit(vol: np.ndarray, modality: str) -> tuple[np.ndarray, float, float]:
    if modality == "ct":
        lo, hi = CT_WINDOW
    else:
        lo, hi = (float(v) for v in np.percentile(vol, [0.5, 99.5]))
        if hi <= lo:
            hi = lo + 1.0
    return np.clip((vol - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), lo, hi


@dataclass
class _Diffusion:
    unet: Any
    betas: np.ndarray
    to_model: Any
    from_model: Any
    name: str


def _diffusion(model: Any) -> _Diffusion:
    from .attacks import RepaintModel

    rp = model if isinstance(model, RepaintModel) else RepaintModel.from_detector(model)
    return _Diffusion(rp.unet, rp.scheduler.betas.float().numpy().astype(np.float64), rp.to_model, rp.from_model,
                      rp.name or getattr(model, "name", ""))


def _trained_t_range(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    if isinstance(cfg, dict) and cfg.get("t_range"):
        return int(cfg["t_range"])
    return None


def repaint_truncated(
    diff: _Diffusion, crop: np.ndarray, mask: np.ndarray, init: np.ndarray, t_start: int, seed: int
) -> np.ndarray:
    """RePaint-style conditional sampling started at ``t_start`` instead of pure noise (SDEdit start).

    The masked region starts from ``init`` (here: the harmonic fill) noised to ``t_start`` with
    q(x_t | x_0); every ancestral DDPM step (x_{t-1} ~ p_θ(x_{t-1} | x_t)) is followed by RePaint's
    replacement of the known region by the original noised to t−1, q(x_{t−1} | x_0). The BTD U-Nets
    are trained on t ≤ ``t_range`` (20) only, so sampling from t = 1000 as plain RePaint does gives
    noise, not tissue: starting inside the trained range is what makes them usable as in-painters.
    ``crop``, ``init`` H×W in [0, 1], ``mask`` H×W bool. Returns H×W in [0, 1] (known region = ``crop``).
    """
    import torch

    betas = diff.betas
    abar = np.cumprod(1.0 - betas)
    gen = torch.Generator().manual_seed(int(seed))
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    x0_known = diff.to_model(torch.from_numpy(crop.astype(np.float32))[None, None])
    x0_init = diff.to_model(torch.from_numpy(np.where(mask, init, crop).astype(np.float32))[None, None])
    t0 = int(t_start) - 1
    x = math.sqrt(abar[t0]) * x0_init + math.sqrt(1 - abar[t0]) * torch.randn(x0_init.shape, generator=gen)
    was = diff.unet.training
    diff.unet.eval()
    with torch.no_grad():
        for t in range(t0, -1, -1):
            eps = diff.unet(x, t).sample
            ab, ab_prev = abar[t], (abar[t - 1] if t > 0 else 1.0)
            x0_hat = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1.0, 1.0)
            beta_t = 1 - ab / ab_prev
            mean = (math.sqrt(ab_prev) * beta_t / (1 - ab)) * x0_hat + (math.sqrt(1 - beta_t) * (1 - ab_prev) / (1 - ab)) * x
            if t > 0:
                var = beta_t * (1 - ab_prev) / (1 - ab)
                x_prev = mean + math.sqrt(var) * torch.randn(x.shape, generator=gen)
                known = math.sqrt(ab_prev) * x0_known + math.sqrt(1 - ab_prev) * torch.randn(x.shape, generator=gen)
            else:
                x_prev, known = mean, x0_known
            x = m * x_prev + (1 - m) * known
    diff.unet.train(was)
    out = diff.from_model(x)[0, 0].clamp(0.0, 1.0).numpy()
    return np.where(mask, out, crop).astype(np.float32)


def inpaint_cube_diffusion(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    model: Any,
    *,
    modality: str = "ct",
    center: tuple[int, int, int] | None = None,
    radius_mm: float | None = None,
    rng: RngLike = None,
    seed: int | None = None,
    t_start: int | None = None,
    min_crop: int = 64,
) -> Tamper3DResult:
    """Re-draw an ellipsoid slice by slice with a diffusion U-Net (``model``: a detector with a U-Net
    and scheduler, e.g. ``load_detector("btd-ct")``, or a
    :class:`~medforensics.synth.attacks.RepaintModel`).

    Each slice is mapped to the U-Net's [0, 1] range (CT: the BTD window −700…2000 HU; MR: the
    stack's 0.5–99.5 percentiles); the ellipsoid's cross-section is first filled harmonically (as
    :func:`remove_lesion_3d`), then re-drawn by :func:`repaint_truncated` from ``t_start`` (default:
    the detector's trained ``t_range``, else 20) on a crop (≥ ``min_crop`` px, the U-Net's training
    patch) at the slice's native resolution, and mapped back; voxels the U-Net leaves at the window's
    floor or ceiling (e.g. lung below −700 HU) keep the harmonic fill plus matched noise. Only the
    cross-sections' voxels change. Deterministic given ``rng`` (or ``seed`` alone).
    """
    modality = _modality(modality)
    vol, sp = _check_stack(volume, spacing)
    gen = _as_rng(rng if rng is not None or seed is None else int(seed))
    diff = _diffusion(model)
    t_start = int(t_start or _trained_t_range(model) or 20)
    if not 1 <= t_start <= len(diff.betas):
        raise ValueError(f"t_start must be in 1..{len(diff.betas)}, got {t_start}")
    c, r, radii = _resolve(vol, sp, gen, center, radius_mm, modality, "any")
    base_seed = int(seed) if seed is not None else int(gen.integers(2**31 - 1))
    rho, box = _ellipsoid_rho(vol.shape, c, radii, gen, irregular=0.05)
    unknown = rho <= 1.0
    init_box = _harmonic_fill(ndimage.gaussian_filter(vol[box], sigma=(0, 1.0, 1.0)), unknown, sp)
    region = np.zeros(vol.shape, bool)
    region[box] = unknown
    sigma = noise_floor(vol[box], _shell(rho, 1.3, 2.2))
    init = vol.copy()
    init[box] = np.where(unknown, init_box, vol[box])
    # outside the U-Net's window (e.g. lung below −700 HU) the model cannot draw: those voxels keep
    # the harmonic fill plus matched noise instead of being floored to the window
    fallback = init.copy()
    fallback[box] += _matched_noise(gen, rho.shape, sigma)
    unit, lo, hi = _to_unit(vol, modality)
    init_unit = np.clip((init - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out = vol.copy()
    H, W = vol.shape[1:]
    for k in np.nonzero(region.any(axis=(1, 2)))[0]:
        m2 = region[k]
        ys, xs = np.nonzero(m2)
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        extent = int(max(np.abs(ys - cy).max(), np.abs(xs - cx).max())) + 1
        side = int(math.ceil(max(min_crop, 2 * extent + 16) / 16) * 16)
        half = side // 2
        pad = [np.pad(a, half, mode="reflect") for a in (unit[k], init_unit[k])]
        pm = np.pad(m2, half)
        sl = (slice(cy, cy + side), slice(cx, cx + side))
        filled = repaint_truncated(diff, pad[0][sl], pm[sl], pad[1][sl], t_start, base_seed + int(k))
        full = pad[0].copy()
        full[sl] = filled
        p01 = full[half:half + H, half:half + W]
        new = np.where((p01 <= 0.0) | (p01 >= 1.0), fallback[k], lo + p01 * (hi - lo))
        out[k][m2] = new[m2].astype(np.float32)
    mask = out != vol
    if not mask.any():
        raise ValueError("the in-painting changed no voxel")
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    area = region.sum(axis=(1, 2)).max()
    details = {"model": diff.name, "sampler": "repaint-truncated", "t_start": t_start, "seed": base_seed,
               "window": [lo, hi], "radii_vox": [round(float(v), 2) for v in radii], "spacing_mm": list(sp),
               "modality": modality}
    return Tamper3DResult(out, mask, "inpaint", c, r, float(math.sqrt(area / math.pi)), int(zs.min()), int(zs.max()),
                          "repaint", details)


def _modality(modality: str) -> str:
    m = str(modality).strip().lower()
    if m in ("ct",):
        return "ct"
    if m in ("mr", "mri"):
        return "mri"
    raise ValueError(f"unsupported modality {modality!r}: the 3-D attacks handle 'ct' and 'mri'")


# --------------------------------------------------------------------------- DICOM series I/O


class SeriesError(ValueError):
    """A folder / file that cannot be read or written as a series (the message names it)."""


@dataclass
class DicomSeries:
    """A DICOM series in position order: files, headers, stored arrays and the stack in modality units."""

    root: Path
    paths: list[Path]
    datasets: list[Any]
    stored: list[np.ndarray]  # each slice's stored values, original dtype
    slopes: list[tuple[float, float]]  # (slope, intercept) per slice
    positions: list[float]
    volume: np.ndarray  # float32 S×H×W in modality units (HU for CT)
    spacing: tuple[float, float, float]
    series_uid: str
    modality: str  # "ct" | "mri"


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> DicomSeries:
    """Read one single-frame DICOM series from ``folder`` (recursively), ordered by position.

    Raises :class:`SeriesError` naming the folder / file when there is no series, several series and
    no ``series_uid``, multi-frame files, mismatched slice sizes or missing pixel data."""
    import pydicom

    from ..io.dicom import slice_position

    root = Path(folder)
    if not root.is_dir():
        raise SeriesError(f"{root}: not a folder")
    groups: dict[str, list[tuple[Path, Any]]] = {}
    no_uid = 0
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue  # not DICOM (README, JSON...): skipped
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if "Rows" not in ds:
            continue
        if not uid:
            no_uid += 1
            continue
        groups.setdefault(uid, []).append((p, ds))
    if not groups:
        extra = f" ({no_uid} image file(s) lack the SeriesInstanceUID that groups a series)" if no_uid else ""
        raise SeriesError(f"{root}: no DICOM image files with a SeriesInstanceUID{extra}")
    if series_uid is None:
        if len(groups) > 1:
            listing = ", ".join(f"{u} ({len(v)} files)" for u, v in groups.items())
            raise SeriesError(f"{root}: holds {len(groups)} series; choose one with --series-uid: {listing}")
        series_uid = next(iter(groups))
    if series_uid not in groups:
        raise SeriesError(f"{root}: no series {series_uid!r}")
    items = groups[series_uid]
    order = []
    for p, ds in items:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise SeriesError(f"{p}: multi-frame file; tamper-series handles single-frame series (one file per slice)")
        pos = slice_position(ds, 0)
        inst = ds.get("InstanceNumber", None)
        order.append((math.inf if pos is None else pos, float(inst) if inst not in (None, "") else math.inf, str(p), p))
    order.sort()
    if len(order) < 2:
        raise SeriesError(f"{root}: series {series_uid} has {len(order)} file(s); need at least 2 slices")
    paths, datasets, stored, slopes, positions, values = [], [], [], [], [], []
    for pos, _, _, p in order:
        try:
            ds = pydicom.dcmread(p)
            arr = ds.pixel_array
        except Exception as exc:
            raise SeriesError(f"{p}: cannot decode pixel data: {exc}") from exc
        if arr.ndim != 2:
            raise SeriesError(f"{p}: expected a grey 2-D slice, got pixel array shape {arr.shape}")
        if values and arr.shape != values[0].shape:
            raise SeriesError(f"{p}: slice size {arr.shape} differs from the series' {values[0].shape}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        paths.append(p)
        datasets.append(ds)
        stored.append(arr)
        slopes.append((slope, inter))
        positions.append(pos)
        values.append(arr.astype(np.float32) * slope + inter)
    ds0 = datasets[0]
    ps = ds0.get("PixelSpacing", None)
    dy, dx = (float(ps[0]), float(ps[1])) if ps is not None and len(ps) == 2 else (1.0, 1.0)
    finite = [v for v in positions if math.isfinite(v)]
    steps = np.abs(np.diff(finite)) if len(finite) >= 2 else np.array([])
    dz = float(np.median(steps)) if steps.size and np.median(steps) > 0 else float(ds0.get("SliceThickness", 1.0) or 1.0)
    mod = str(ds0.get("Modality", "")).upper()
    modality = "ct" if mod == "CT" else "mri" if mod == "MR" else ("ct" if min(v.min() for v in values) < -500 else "mri")
    return DicomSeries(root, paths, datasets, stored, slopes, positions, np.stack(values), (dz, dy, dx),
                       series_uid, modality)


def write_dicom_series(series: DicomSeries, result: Tamper3DResult, out_dir: str | Path) -> dict[str, Any]:
    """Write the tampered series under ``out_dir`` (same relative file names; must not exist or be
    empty). Returns ``{"files": [{path, slice, modified, transfer_syntax}], ...}``."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise SeriesError(f"{out}: exists and is not empty; refusing to overwrite")
    if result.volume.shape != series.volume.shape:
        raise SeriesError(f"tampered stack {result.volume.shape} does not match the series {series.volume.shape}")
    files = []
    for k, (p, ds, arr, (slope, inter)) in enumerate(zip(series.paths, series.datasets, series.stored, series.slopes)):
        rel = p.relative_to(series.root)
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        m = result.mask[k]
        if not m.any():
            shutil.copyfile(p, dst)
            files.append({"path": str(rel), "slice": k, "modified": False,
                          "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", ""))})
            continue
        new = arr.copy()
        new[m] = to_stored(result.volume[k][m], slope, inter, ds, arr.dtype)
        if np.array_equal(new, arr):  # the change rounds away in stored values: the file stays as it was
            shutil.copyfile(p, dst)
            files.append({"path": str(rel), "slice": k, "modified": False, "n_changed_stored": 0,
                          "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", ""))})
            continue
        ts_in = str(ds.file_meta.get("TransferSyntaxUID", ""))
        ts_out = encode_pixel_data(ds, new)
        ds.save_as(dst, enforce_file_format=False)
        files.append({"path": str(rel), "slice": k, "modified": True, "transfer_syntax": ts_out,
                      "transfer_syntax_in": ts_in, "n_changed_stored": int((new != arr).sum())})
    return {"files": files, "series_uid": series.series_uid}


# --------------------------------------------------------------------------- NIfTI


@dataclass
class NiftiVolume:
    """A NIfTI volume as the scanner slices it: RAS-reoriented, axial slices in display convention."""

    path: Path
    image: Any  # nibabel image
    raw: np.ndarray  # stored data in the file's voxel order (3-D, original dtype)
    slope: float
    inter: float
    transform: np.ndarray | None  # nibabel ornt transform file→RAS (None: degenerate affine, voxel order kept)
    volume: np.ndarray  # float32 S×H×W scaled values
    spacing: tuple[float, float, float]
    modality: str


def _to_stack(vol_ras: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(vol_ras, (2, 1, 0))[:, ::-1, ::-1])  # display_slice for every k


def _from_stack(stack: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(stack[:, ::-1, ::-1], (2, 1, 0)))


def read_nifti_volume(path: str | Path, modality: str | None = None) -> NiftiVolume:
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    p = Path(path)
    try:
        img = nib.load(str(p))
        raw = np.asarray(img.dataobj.get_unscaled())
    except Exception as exc:
        raise SeriesError(f"{p}: cannot read NIfTI: {exc}") from exc
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3 or raw.dtype.kind not in "iuf":
        raise SeriesError(f"{p}: expected a 3-D scalar volume, got shape {raw.shape} dtype {raw.dtype}")
    slope = getattr(img.dataobj, "slope", 1.0)
    inter = getattr(img.dataobj, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    data = raw.astype(np.float32) * slope + inter
    zooms = [float(v) for v in img.header.get_zooms()[:3]]
    try:
        transform = ornt_transform(io_orientation(img.affine), axcodes2ornt("RAS"))
        ras = apply_orientation(data, transform)
        new = [1.0, 1.0, 1.0]
        for axis, (target, _f) in enumerate(transform):
            new[int(target)] = zooms[axis]
    except Exception:
        transform, ras, new = None, data, zooms
    stack = _to_stack(ras)
    mod = _modality(modality) if modality else ("ct" if float(stack.min()) < -500 else "mri")
    # stack axes: (z, rows = y, cols = x) → spacing (dz, dy, dx)
    return NiftiVolume(p, img, raw, slope, inter, transform, stack, (new[2], new[1], new[0]), mod)


def write_nifti_volume(vol: NiftiVolume, result: Tamper3DResult, out_path: str | Path) -> dict[str, Any]:
    """Write the tampered volume with the same affine, header and data type (refuses to overwrite)."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation

    out = Path(out_path)
    if out.exists():
        raise SeriesError(f"{out}: exists; refusing to overwrite")
    mask_ras = _from_stack(result.mask)
    val_ras = _from_stack(result.volume)
    if vol.transform is not None:
        inv = _inverse(vol.transform)
        mask_f = apply_orientation(mask_ras, inv)
        val_f = apply_orientation(val_ras, inv)
    else:
        mask_f, val_f = mask_ras, val_ras
    raw = vol.raw.copy()
    new_vals = (val_f[mask_f].astype(np.float64) - vol.inter) / vol.slope
    if raw.dtype.kind in "iu":
        info = np.iinfo(raw.dtype)
        new_vals = np.clip(np.rint(new_vals), info.min, info.max)
    raw[mask_f] = new_vals.astype(raw.dtype)
    hdr = vol.image.header.copy()
    img = type(vol.image)(raw.reshape(vol.image.shape), vol.image.affine, hdr)
    img.header.set_slope_inter(vol.slope if vol.slope != 1.0 or vol.inter != 0.0 else None,
                               vol.inter if vol.slope != 1.0 or vol.inter != 0.0 else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return {"files": [{"path": out.name, "modified": True, "dtype": str(raw.dtype)}]}


def _inverse(transform: np.ndarray) -> np.ndarray:
    """Inverse of a nibabel orientation transform (axis permutation + flips)."""
    inv = np.zeros_like(transform)
    for axis, (target, flip) in enumerate(transform):
        inv[int(target)] = (axis, flip)
    return inv


# --------------------------------------------------------------------------- one call: series in, tampered series out

ATTACKS = ("inject", "remove", "inpaint")
GROUND_TRUTH = "ground_truth.json"


def is_nifti_path(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def tamper_series(
    source: str | Path,
    out: str | Path,
    attack: str,
    *,
    seed: int = 0,
    radius_mm: float | None = None,
    center: tuple[int, int, int] | None = None,
    model: Any = None,
    series_uid: str | None = None,
    modality: str | None = None,
) -> dict[str, Any]:
    """Attack a DICOM series folder or a NIfTI volume and write the tampered copy plus
    ``OUT/ground_truth.json``. ``out`` must not exist or be empty. ``model`` (for ``inpaint``): a
    detector or RepaintModel; default ``load_detector("btd-ct" | "btd-mri")`` by modality.
    Returns the ground-truth dictionary (also written)."""
    import json

    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    src = Path(source)
    dst = Path(out)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise SeriesError(f"{dst}: exists and is not an empty folder; refusing to overwrite")
    if not src.exists():
        raise SeriesError(f"{src}: no such file or folder")
    nifti = src.is_file() and is_nifti_path(src)
    if nifti:
        data = read_nifti_volume(src, modality)
        vol, sp, mod = data.volume, data.spacing, data.modality
    elif src.is_dir():
        data = read_dicom_series(src, series_uid)
        vol, sp, mod = data.volume, data.spacing, (_modality(modality) if modality else data.modality)
    else:
        raise SeriesError(f"{src}: neither a folder of DICOM files nor a .nii / .nii.gz volume")
    rng = np.random.default_rng(int(seed))
    if attack == "inject":
        res = inject_lesion_3d(vol, sp, modality=mod, center=center, radius_mm=radius_mm, rng=rng)
    elif attack == "remove":
        res = remove_lesion_3d(vol, sp, modality=mod, center=center, radius_mm=radius_mm, rng=rng)
    else:
        if model is None:
            from ..detectors import load_detector

            model = load_detector("btd-ct" if mod == "ct" else "btd-mri")
        res = inpaint_cube_diffusion(vol, sp, model, modality=mod, center=center, radius_mm=radius_mm, rng=rng,
                                     seed=int(seed))
    dst.mkdir(parents=True, exist_ok=True)
    if nifti:
        written = write_nifti_volume(data, res, dst / src.name)
        fmt = "nifti"
    else:
        written = write_dicom_series(data, res, dst)
        fmt = "dicom-series"
    gt = {"source": str(src), "format": fmt, "attack": attack, "seed": int(seed), "modality": mod,
          "shape": list(vol.shape), "spacing_mm": [float(v) for v in sp],
          "record": list(res.record), "ground_truth": res.to_json(), "written": written}
    if not nifti:
        gt["series_uid"] = data.series_uid
    (dst / GROUND_TRUTH).write_text(json.dumps(gt, indent=1, default=_json_default))
    return gt


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
