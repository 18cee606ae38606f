"""Classical lesion injection / removal (the attacks of the Back-in-Time Diffusion paper).

* :func:`inject_lesion` copy-moves a bright, blob-like donor region (from the same image or a
  ``source`` image) — or, when no donor qualifies, a synthesised irregular nodule textured with
  the image's own noise — into the foreground, with Poisson blending (``cv2.seamlessClone``)
  under an irregular elliptical soft mask.
* :func:`remove_region` inpaints an elliptical region (by default the brightest compact structure,
  i.e. a "lesion") from its surroundings with ``cv2.inpaint`` and re-adds noise matched to the
  surrounding texture.

Precision: ``cv2.inpaint`` (TELEA and NS) accepts 8-bit, 16-bit and 32-bit float single-channel
images; removal uses float32 per channel on the 0–65535 scale (TELEA overshoots wildly on [0, 1]
floats), i.e. better than 16-bit. ``cv2.seamlessClone`` is 8-bit 3-channel only, so injection
stretches the local blend window to ~191 grey levels, runs the clone, and adds back only the
*difference* the clone made, in float: the destination keeps its full precision and the
quantisation error is below 1/191 of the local intensity range.

All functions take float32 H×W or H×W×3 pixels in [0, 1], never modify the input, and change
pixels only where the returned ``mask`` is True. Given an int seed (or a seeded Generator) they
are deterministic.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from ..io.types import MedImage

RngLike = np.random.Generator | int | None

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CLONE_FLAGS = {"seamless": cv2.NORMAL_CLONE, "normal": cv2.NORMAL_CLONE, "mixed": cv2.MIXED_CLONE}
_INPAINT_FLAGS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
MIN_SIZE = 32
# cv2.inpaint's float32 TELEA path assumes an 8/16-bit-like value range (on [0, 1] data it
# overshoots wildly), so inpainting runs in float32 on the 0–65535 scale: uint16 range, float precision.
_INPAINT_SCALE = np.float32(65535.0)


@dataclass
class TamperResult:
    """Tampered pixels plus the ground-truth mask of every altered pixel."""

    pixels: np.ndarray  # float32, same shape as the input, in [0, 1]
    mask: np.ndarray  # bool H×W, True where pixels were altered (blend margin included)
    kind: str  # "inject" | "remove"
    center: tuple[int, int]  # (y, x)
    radius: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)  # e.g. donor kind / location


# --------------------------------------------------------------------------- helpers


def _as_rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"expected H×W or H×W×3 pixels, got shape {arr.shape}")
    if min(arr.shape[:2]) < MIN_SIZE:
        raise ValueError(f"image too small to tamper: {arr.shape[:2]} (need >= {MIN_SIZE})")
    return np.clip(arr.astype(np.float32, copy=True), 0.0, 1.0)


def _luma(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else np.tensordot(pixels, _LUMA, axes=([2], [0])).astype(np.float32)


def _match_channels(src: np.ndarray, ndim: int) -> np.ndarray:
    if src.ndim == ndim:
        return src
    return _luma(src) if ndim == 2 else np.repeat(src[..., None], 3, axis=2)


def _scale(shape: tuple[int, ...]) -> float:
    return min(shape[:2]) / 256.0


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centers)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1 - w0))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    return float(centers[int(np.argmax(between))])


def foreground_mask(pixels: np.ndarray) -> np.ndarray:
    """Body/tissue mask: Otsu threshold + morphology; background = the class dominating the border.

    Returns all-True when the image has no uniform background (e.g. a texture-filled frame).
    """
    g = ndimage.gaussian_filter(_luma(np.asarray(pixels, dtype=np.float32)), max(1.0, _scale(pixels.shape)))
    t = _otsu(g)
    fg = g > t
    border = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])
    if border.mean() > 0.5:  # bright background (e.g. histopathology slide glass)
        fg = ~fg
    bg_vals, fg_vals = g[~fg], g[fg]
    if bg_vals.size == 0 or fg_vals.size == 0:
        return np.ones(g.shape, dtype=bool)
    if bg_vals.std() > 0.08 or abs(float(fg_vals.mean()) - float(bg_vals.mean())) < 0.1:
        return np.ones(g.shape, dtype=bool)  # no uniform background to exclude
    k = max(1, int(round(2 * _scale(pixels.shape))))
    st = ndimage.generate_binary_structure(2, 1)
    fg = ndimage.binary_opening(fg, st, iterations=k)
    fg = ndimage.binary_closing(fg, st, iterations=k)
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
        fg = labels == (1 + int(np.argmax(sizes)))
    if fg.mean() < 0.05:
        return np.ones(g.shape, dtype=bool)
    return fg


def _blob_candidates(
    g: np.ndarray, valid: np.ndarray, dist: np.ndarray, sigmas: list[float], k: int
) -> list[tuple[float, int, int, float]]:
    """Bright blobs (score, y, x, σ), best first; large images are searched at ~256² scale.

    Detection runs on a box-downsampled copy (factor f keeps every σ/f ≥ 1.5) and each peak is
    re-located at full resolution within ±f px.
    """
    f = max(1, min(min(g.shape) // 256, int(min(sigmas) / 1.5)))
    if f == 1:
        return _blob_candidates_at(g, valid, dist, sigmas, k)
    hs, ws = g.shape[0] // f, g.shape[1] // f
    small = cv2.resize(np.ascontiguousarray(g[: hs * f, : ws * f], dtype=np.float32), (ws, hs), interpolation=cv2.INTER_AREA)
    sub = (slice(f // 2, hs * f, f), slice(f // 2, ws * f, f))
    cands = _blob_candidates_at(small, valid[sub], dist[sub] / f, [s / f for s in sigmas], k)
    out = []
    for score, y, x, s in cands:
        y, x, s = y * f + f // 2, x * f + f // 2, s * f
        h = int(math.ceil(4 * s)) + f
        y0, x0 = max(0, y - h), max(0, x - h)
        patch = g[y0 : y + h + 1, x0 : x + h + 1].astype(np.float64)
        resp = -(s**2) * ndimage.gaussian_laplace(patch, s)
        ly, lx = y - y0, x - x0
        win = resp[max(0, ly - f) : ly + f + 1, max(0, lx - f) : lx + f + 1]
        wy, wx = np.unravel_index(int(np.argmax(win)), win.shape)
        ry, rx = max(0, ly - f) + int(wy) + y0, max(0, lx - f) + int(wx) + x0
        if valid[ry, rx]:
            y, x = ry, rx
        out.append((score, int(y), int(x), float(s)))
    return out


def _blob_candidates_at(
    g: np.ndarray, valid: np.ndarray, dist: np.ndarray, sigmas: list[float], k: int
) -> list[tuple[float, int, int, float]]:
    """Bright blobs: scale-space maxima of the scale-normalised −LoG, as (score, y, x, σ), best first.

    A peak is kept when (1) its best scale lies inside ``sigmas`` (blobs larger or smaller than the
    range are rejected, rather than being matched by their rim), (2) it lies ≥ 2.5σ inside the
    foreground (``dist``) so body edges do not pose as blobs, (3) its response beats
    max(0.05, 6·MAD) of that scale, (4) its Hessian is blob-like (both curvatures negative, at most
    ~4:1 elongation), and (5) ``valid`` is True there (applied after peak finding).
    """
    g64 = g.astype(np.float64)
    ext = [sigmas[0] / 1.25, *sigmas, sigmas[-1] * 1.25]
    stack = np.stack([-(s**2) * ndimage.gaussian_laplace(g64, s) for s in ext])
    best = stack.argmax(axis=0)
    resp = stack.max(axis=0)
    size = 2 * int(math.ceil(sigmas[-1] * math.sqrt(2))) + 1
    peaks = (resp == ndimage.maximum_filter(resp, size=size)) & valid & (best > 0) & (best < len(ext) - 1)
    thr = np.empty(len(ext))
    for i, s in enumerate(ext):
        ok = dist > 2.5 * s
        vals = stack[i][ok] if ok.any() else stack[i].ravel()
        thr[i] = max(0.05, 6.0 * 1.4826 * float(np.median(np.abs(vals - np.median(vals)))))
    sig_at = np.asarray(ext)[best]
    peaks &= (dist > 2.5 * sig_at) & (resp > thr[best])
    ys, xs = np.nonzero(peaks)
    out: list[tuple[float, int, int, float]] = []
    for i in np.argsort(-resp[ys, xs], kind="stable")[: 10 * k]:
        y, x = int(ys[i]), int(xs[i])
        if _blob_like(g64, y, x, float(sig_at[y, x])):
            out.append((float(resp[y, x]), y, x, float(sig_at[y, x])))
            if len(out) == k:
                break
    return out


def _blob_like(g: np.ndarray, y: int, x: int, s: float, max_elong: float = 4.0) -> bool:
    """Hessian test at (y, x), scale s: bright blob (trace < 0, det > 0), not an edge/ridge."""
    h = int(math.ceil(4 * s)) + 1
    patch = np.pad(g, h, mode="reflect")[y : y + 2 * h + 1, x : x + 2 * h + 1]
    hyy = ndimage.gaussian_filter(patch, s, order=(2, 0))[h, h]
    hxx = ndimage.gaussian_filter(patch, s, order=(0, 2))[h, h]
    hxy = ndimage.gaussian_filter(patch, s, order=(1, 1))[h, h]
    tr, det = hxx + hyy, hxx * hyy - hxy**2
    return bool(tr < 0 and det > 0 and tr**2 / det < (max_elong + 1) ** 2 / max_elong)


def _fg_distance(fg: np.ndarray) -> np.ndarray:
    """Distance (px) to the nearest background pixel; the image border does not count as background."""
    if fg.all():
        return np.full(fg.shape, np.inf)
    return ndimage.distance_transform_edt(fg)


def _shape_rho(
    rng: np.random.Generator, radius: float, half: int, irregular: float, min_aspect: float, max_amp: float = 0.2
) -> np.ndarray:
    """Normalised radius map of an irregular rotated ellipse on a (2·half+1)² grid (≤ 1 = inside)."""
    aspect = rng.uniform(min_aspect, 1.0)
    angle = rng.uniform(0.0, math.pi)
    ks = np.arange(2, 6)
    amps = rng.normal(0.0, irregular, size=ks.size) / ks * 2
    if np.abs(amps).sum() > max_amp:
        amps *= max_amp / np.abs(amps).sum()
    phases = rng.uniform(0.0, 2 * math.pi, size=ks.size)
    a, b = radius / math.sqrt(aspect), radius * math.sqrt(aspect)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    e = np.hypot(u / a, v / b)
    theta = np.arctan2(v / b, u / a)
    f = 1.0 + (amps[:, None, None] * np.cos(ks[:, None, None] * theta + phases[:, None, None])).sum(0)
    return e / f


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _window(arr: np.ndarray, cy: int, cx: int, half: int) -> np.ndarray:
    return arr[cy - half : cy + half + 1, cx - half : cx + half + 1]


def _fit_center(center: tuple[int, int], shape: tuple[int, ...]) -> tuple[int, int]:
    return int(np.clip(round(center[0]), 0, shape[0] - 1)), int(np.clip(round(center[1]), 0, shape[1] - 1))


def _border_distance(shape: tuple[int, ...]) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return np.minimum(np.minimum(yy, shape[0] - 1 - yy), np.minimum(xx, shape[1] - 1 - xx)).astype(np.float64) + 1


def _random_center(rng: np.random.Generator, fg: np.ndarray, margin: float) -> tuple[int, int]:
    dist = np.minimum(_fg_distance(fg), _border_distance(fg.shape))
    valid = dist > margin
    if not valid.any():
        valid = dist >= dist.max() * 0.5 if dist.max() > 0 else np.ones_like(fg)
    ys, xs = np.nonzero(valid)
    i = int(rng.integers(ys.size))
    return int(ys[i]), int(xs[i])


def _poisson_blend(dst_w: np.ndarray, src_w: np.ndarray, clone: np.ndarray, flag: int) -> np.ndarray:
    """seamlessClone of src into dst on a local 8-bit stretch; returns dst + (clone − dst) in float."""
    lo = float(min(dst_w.min(), src_w.min()))
    span = max(float(max(dst_w.max(), src_w.max())) - lo, 1e-3)
    s = 191.0 / span

    def to8(x: np.ndarray) -> np.ndarray:
        x8 = np.clip(np.rint((x - lo) * s + 32.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(x8 if x8.ndim == 3 else np.repeat(x8[..., None], 3, axis=2))

    dst8, src8 = to8(dst_w), to8(src_w)
    m8 = clone.astype(np.uint8) * 255
    m8[0, :] = m8[-1, :] = m8[:, 0] = m8[:, -1] = 0
    bx, by, bw, bh = cv2.boundingRect(m8)
    if bw == 0 or bh == 0:
        return dst_w.copy()
    out8 = cv2.seamlessClone(src8, dst8, m8, (bx + bw // 2, by + bh // 2), flag)
    delta = (out8.astype(np.float32) - dst8.astype(np.float32)) / s
    if dst_w.ndim == 2:
        delta = delta[..., 0]
    return dst_w + delta


_ENCLOSE = 1.5  # mask radius / donor blob radius (σ·√2), so an irregular mask still encloses it


def _feather(r: float) -> float:
    return max(2.0, 0.3 * r)


def _half(r: float) -> int:
    """Half-size of the blend window for mask radius ``r`` (shape extent ≤ 1.55·(r + feather))."""
    return int(math.ceil(1.6 * (r + _feather(r)))) + 4


def _pad(img: np.ndarray, half: int) -> np.ndarray:
    return np.pad(img, [(half, half), (half, half)] + [(0, 0)] * (img.ndim - 2), mode="reflect")


def _default_radius(rng: np.random.Generator, shape: tuple[int, ...]) -> float:
    return max(3.0, float(rng.uniform(6.0, 20.0)) * _scale(shape))


# --------------------------------------------------------------------------- injection


def _synth_lesion(
    rng: np.random.Generator, dst_w: np.ndarray, g: np.ndarray, fg: np.ndarray, radius: float, half: int
) -> np.ndarray:
    """Donor window = destination + smoothed irregular bright blob + the image's own noise texture."""
    rho = _shape_rho(rng, radius * 0.8, half, irregular=0.12, min_aspect=0.6)
    blob = ndimage.gaussian_filter((rho <= 1.0).astype(np.float64), max(0.7, 0.15 * radius))
    blob *= 1.0 + 0.25 * ndimage.gaussian_filter(rng.standard_normal(blob.shape), max(1.0, 0.15 * radius))
    vals = g[fg] if fg.any() else g.ravel()
    rng_fg = float(np.percentile(vals, 99) - np.percentile(vals, 1))
    amp = float(rng.uniform(0.6, 1.2)) * max(rng_fg, 0.25)
    # texture: high-pass residual of a random foreground window of the image
    resid = g - ndimage.gaussian_filter(g, 1.0)
    pad = np.pad(resid, half, mode="reflect")
    ty, tx = _random_center(rng, fg, 0)
    tex = _window(pad, ty + half, tx + half, half)
    add = (amp * blob + 0.5 * tex * np.clip(blob / max(blob.max(), 1e-6), 0, 1)).astype(np.float32)
    return dst_w + (add if dst_w.ndim == 2 else add[..., None])


def inject_lesion(
    pixels: np.ndarray,
    *,
    center: tuple[int, int] | None = None,
    radius: float | None = None,
    rng: RngLike = None,
    source: np.ndarray | None = None,
    method: str = "seamless",
) -> TamperResult:
    """Copy-move (or synthesise) a lesion-like blob and Poisson-blend it at ``center``.

    ``method``: "seamless"/"normal" (NORMAL_CLONE) or "mixed" (MIXED_CLONE). Default ``center`` is
    a random foreground location; default ``radius`` is 6–20 px at 256² scale (≥ 3 px). With a
    donor, the final radius is refitted to the donor blob (≈0.7–1.4× the request) so the mask
    encloses it; ``TamperResult.radius`` reports it. ``source`` (grey or RGB, any size ≥ the blend
    window) supplies the donor instead of the image itself.
    """
    if method not in _CLONE_FLAGS:
        raise ValueError(f"unknown inject method {method!r}; use one of {sorted(_CLONE_FLAGS)}")
    img = _check(pixels)
    gen = _as_rng(rng)
    H, W = img.shape[:2]
    r_max = min(H, W) / 6.0
    r = float(np.clip(radius if radius is not None else _default_radius(gen, img.shape), 2.0, r_max))
    g = _luma(img)
    fg = foreground_mask(img)
    cy, cx = _fit_center(center, img.shape) if center is not None else _random_center(gen, fg, r)

    # donor search: bright compact blob whose size fits the requested radius; the mask radius is
    # then set from the chosen blob's scale so the mask encloses the whole donor structure
    sig0 = r / _ENCLOSE / math.sqrt(2)
    sigmas = [sig0 * f for f in (0.7, 0.85, 1.0, 1.2, 1.4)]
    half_max = _half(min(r_max, _ENCLOSE * sigmas[-1] * math.sqrt(2) + 1.0))
    donor_img = img if source is None else _match_channels(_check(source), img.ndim)
    dH, dW = donor_img.shape[:2]
    donor_fg = fg if source is None else foreground_mask(donor_img)
    valid = np.zeros(donor_fg.shape, dtype=bool)
    valid[half_max : dH - half_max, half_max : dW - half_max] = True
    if source is None:
        yy, xx = np.ogrid[:H, :W]
        r_big = min(r_max, _ENCLOSE * sigmas[-1] * math.sqrt(2) + 1.0)
        valid &= (yy - cy) ** 2 + (xx - cx) ** 2 > (2 * (r_big + _feather(r_big))) ** 2
    cands = _blob_candidates(_luma(donor_img), valid, _fg_distance(donor_fg), sigmas, k=5)

    details: dict[str, Any]
    if cands:
        _, dy, dx, sig = cands[int(gen.integers(len(cands)))]
        r = float(min(r_max, _ENCLOSE * sig * math.sqrt(2) + 1.0))
        half = _half(r)
        pad_img = _pad(img, half)
        dst_w = _window(pad_img, cy + half, cx + half, half).copy()
        src_w = _window(donor_img, dy, dx, half).copy()
        rho = _shape_rho(gen, r, half, irregular=0.05, min_aspect=0.8, max_amp=0.1)
        details = {"donor": "source" if source is not None else "copy-move", "donor_center": (dy, dx)}
    else:
        half = _half(r)
        pad_img = _pad(img, half)
        dst_w = _window(pad_img, cy + half, cx + half, half).copy()
        src_w = _synth_lesion(gen, dst_w, g, fg, r, half)
        rho = _shape_rho(gen, r, half, irregular=0.1, min_aspect=0.6)
        details = {"donor": "synthetic"}

    feather = _feather(r)
    edge = 1.0 + feather / r
    weight = _smoothstep((edge - rho) / (edge - 1.0)).astype(np.float32)
    clone = rho <= edge + 1.0 / r
    blended = _poisson_blend(dst_w, src_w, clone, _CLONE_FLAGS[method])
    wb = weight if img.ndim == 2 else weight[..., None]
    new_w = np.clip(dst_w + wb * (blended - dst_w), 0.0, 1.0).astype(np.float32)

    pad_out = pad_img.copy()
    _window(pad_out, cy + half, cx + half, half)[...] = new_w
    pad_mask = np.zeros(pad_img.shape[:2], dtype=bool)
    _window(pad_mask, cy + half, cx + half, half)[...] = weight > 0
    out = pad_out[half : half + H, half : half + W]
    mask = pad_mask[half : half + H, half : half + W].copy()
    m3 = mask if img.ndim == 2 else mask[..., None]
    out = np.where(m3, out, img).astype(np.float32)  # untouched pixels stay bit-identical
    return TamperResult(out, mask, "inject", (cy, cx), r, method, details)


# --------------------------------------------------------------------------- removal


def remove_region(
    pixels: np.ndarray,
    *,
    center: tuple[int, int] | None = None,
    radius: float | None = None,
    rng: RngLike = None,
    method: str = "telea",
) -> TamperResult:
    """Inpaint an elliptical region from its surroundings (float32 ``cv2.inpaint``, TELEA or NS).

    Default ``center``: one of the brightest compact structures in the foreground (with its
    radius estimated from the blob scale, ×1.3 + 2 px to cover its edge); a random foreground
    location if none stands out. ``radius`` is clipped to [2, min(H, W)/4]. Inpainted pixels get
    noise matched to the surrounding texture so the hole is not suspiciously smooth.
    """
    if method not in _INPAINT_FLAGS:
        raise ValueError(f"unknown remove method {method!r}; use one of {sorted(_INPAINT_FLAGS)}")
    img = _check(pixels)
    gen = _as_rng(rng)
    H, W = img.shape[:2]
    sc = _scale(img.shape)
    g = _luma(img)
    fg = foreground_mask(img)
    details: dict[str, Any] = {"target": "given"}
    if center is None:
        if radius is not None:
            sigmas = [float(radius) / 1.3 / math.sqrt(2)]
        else:
            sigmas = sorted({max(1.5, r0 * sc / math.sqrt(2)) for r0 in (4, 6, 9, 13, 18, 24)})
        cands = _blob_candidates(g, np.ones(fg.shape, dtype=bool), _fg_distance(fg), sigmas, k=5)
        cands = [c for c in cands if c[0] >= 0.5 * cands[0][0]] if cands else []
        if cands:
            _, cy, cx, s = cands[int(gen.integers(len(cands)))]
            r = float(radius) if radius is not None else 1.3 * s * math.sqrt(2) + 2.0
            details = {"target": "blob"}
        else:
            r = float(radius) if radius is not None else _default_radius(gen, img.shape)
            cy, cx = _random_center(gen, fg, r)
            details = {"target": "random"}
    else:
        cy, cx = _fit_center(center, img.shape)
        r = float(radius) if radius is not None else _default_radius(gen, img.shape)
    r = float(np.clip(r, 2.0, min(H, W) / 4.0))

    aspect_half = int(math.ceil(r / math.sqrt(0.75) * 1.2)) + 1
    rho = _shape_rho(gen, r * 1.05, aspect_half, irregular=0.03, min_aspect=0.75)
    hole = rho <= 1.0
    inpaint_r = max(3, int(round(3 * sc)))
    half = aspect_half + 3 * inpaint_r + 4
    ring_w = (rho > 1.0) & (rho <= 1.6)

    pad_img = _pad(img, half)
    win = _window(pad_img, cy + half, cx + half, half).copy()
    hole_w = np.zeros(win.shape[:2], dtype=bool)
    _window(hole_w, half, half, aspect_half)[...] = hole
    ring = np.zeros_like(hole_w)
    _window(ring, half, half, aspect_half)[...] = ring_w
    m8 = hole_w.astype(np.uint8)
    chans = [win] if win.ndim == 2 else [win[..., c] for c in range(3)]
    # texture: noise with the surrounding ring's high-pass std, shared across channels
    noise = ndimage.gaussian_filter(gen.standard_normal(hole_w.shape), 0.6)
    noise /= max(float(noise.std()), 1e-6)
    filled = []
    for ch in chans:
        ch = np.ascontiguousarray(ch, dtype=np.float32)
        inp = cv2.inpaint(ch * _INPAINT_SCALE, m8, inpaint_r, _INPAINT_FLAGS[method]) / _INPAINT_SCALE
        resid = ch - ndimage.gaussian_filter(ch, 1.0)
        sd = float(resid[ring].std()) if ring.any() else 0.0
        filled.append(np.where(hole_w, inp + sd * noise, ch).astype(np.float32))
    new_w = np.clip(filled[0] if win.ndim == 2 else np.stack(filled, axis=2), 0.0, 1.0)

    pad_out = pad_img.copy()
    _window(pad_out, cy + half, cx + half, half)[...] = new_w
    pad_mask = np.zeros(pad_img.shape[:2], dtype=bool)
    _window(pad_mask, cy + half, cx + half, half)[...] = hole_w
    out = pad_out[half : half + H, half : half + W]
    mask = pad_mask[half : half + H, half : half + W].copy()
    m3 = mask if img.ndim == 2 else mask[..., None]
    out = np.where(m3, out, img).astype(np.float32)
    return TamperResult(out, mask, "remove", (cy, cx), r, method, details)


# --------------------------------------------------------------------------- MedImage wrapper


def tamper(image: MedImage, kind: str, rng: RngLike = None) -> tuple[MedImage, np.ndarray]:
    """Inject (``kind="inject"``) or remove (``"remove"``) a lesion; returns (new image, bool mask).

    The new image's meta is a deep copy with ``extra["tamper"] = {kind, center, radius, method}``.
    """
    if kind == "inject":
        res = inject_lesion(image.pixels, rng=rng)
    elif kind == "remove":
        res = remove_region(image.pixels, rng=rng)
    else:
        raise ValueError(f"kind must be 'inject' or 'remove', got {kind!r}")
    meta = copy.deepcopy(image.meta)
    meta.extra["tamper"] = {
        "kind": res.kind,
        "center": [int(res.center[0]), int(res.center[1])],
        "radius": float(res.radius),
        "method": res.method,
    }
    return MedImage(pixels=res.pixels, meta=meta), res.mask
