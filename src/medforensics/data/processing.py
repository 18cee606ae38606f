"""Image processing ops: matching processing history, training-time augmentation, robustness.

Every op takes float32 pixels in [0, 1] (H×W or H×W×3), returns a new float32 array of the same
ndim in [0, 1], never works in place, and is deterministic given its arguments / rng.
Sizes are always ``(height, width)``.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

RngLike = np.random.Generator | int | None

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
RESAMPLE_NAMES = tuple(_RESAMPLE)


def _check(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"expected H×W or H×W×3 pixels, got shape {arr.shape}")
    return np.clip(arr.astype(np.float32, copy=False), 0.0, 1.0)


def _as_rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _to_u8(pixels: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- basic ops


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """Round trip through an 8-bit Pillow JPEG at ``quality`` (grey as 'L', colour as RGB 4:2:0)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    img = _check(pixels)
    buf = io.BytesIO()
    Image.fromarray(_to_u8(img)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("L" if img.ndim == 2 else "RGB"), dtype=np.float32) / 255.0
    return out


def resize(pixels: np.ndarray, size: tuple[int, int] | int, resample: str = "bicubic") -> np.ndarray:
    """Resize to ``size`` = (H, W) (int: square) with Pillow in float32, per channel, clipped.

    ``resample``: nearest | bilinear | bicubic | area (box) | lanczos; Pillow antialiases downscales.
    """
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}; use one of {RESAMPLE_NAMES}")
    img = _check(pixels)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    if (h, w) == img.shape[:2]:
        return img.copy()
    chans = [img] if img.ndim == 2 else [img[..., c] for c in range(3)]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((w, h), _RESAMPLE[resample])) for c in chans]
    res = out[0] if img.ndim == 2 else np.stack(out, axis=2)
    return np.clip(res, 0.0, 1.0).astype(np.float32)


def resize_roundtrip(
    pixels: np.ndarray,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    down: str = "bicubic",
    up: str = "bicubic",
) -> np.ndarray:
    """Resize to ``scale``×(H, W) (or to ``size``) with ``down``, then back to (H, W) with ``up``."""
    img = _check(pixels)
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    H, W = img.shape[:2]
    if scale is not None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        size = (max(1, round(H * scale)), max(1, round(W * scale)))
    small = resize(img, size, down)  # type: ignore[arg-type]
    return resize(small, (H, W), up)


def gaussian_blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (scipy.ndimage, reflect borders) of each channel; ``sigma`` ≤ 0 = copy."""
    img = _check(pixels)
    if sigma <= 0:
        return img.copy()
    sig = (sigma, sigma) if img.ndim == 2 else (sigma, sigma, 0.0)
    return np.clip(ndimage.gaussian_filter(img, sig, mode="reflect"), 0.0, 1.0).astype(np.float32)


def gaussian_noise(pixels: np.ndarray, sigma: float, rng: RngLike = None) -> np.ndarray:
    """Add i.i.d. N(0, σ²) noise per pixel/channel and clip to [0, 1]."""
    img = _check(pixels)
    if sigma <= 0:
        return img.copy()
    noise = _as_rng(rng).normal(0.0, sigma, size=img.shape)
    return np.clip(img + noise, 0.0, 1.0).astype(np.float32)


def quantise(pixels: np.ndarray, bits: int) -> np.ndarray:
    """Round to 2**bits − 1 levels (8 → 255 levels, 16 → 65535)."""
    if not 1 <= int(bits) <= 24:
        raise ValueError(f"bits must be in 1..24, got {bits}")
    levels = float(2 ** int(bits) - 1)
    return (np.rint(_check(pixels).astype(np.float64) * levels) / levels).astype(np.float32)


# --------------------------------------------------------------------------- JPEG quality

# IJG (libjpeg) base tables, natural (row-major) order, ITU-T T.81 Annex K.
_IJG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.int64,
)  # fmt: skip
_IJG_CHROMA = np.array(
    [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
     24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99]
    + [99] * 32,
    dtype=np.int64,
)  # fmt: skip
_ZIGZAG = np.array(
    [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
     12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
     35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
     58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63]
)  # fmt: skip


def ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    """The IJG quantisation table for ``quality`` (jpeg_quality_scaling, baseline-clamped to 1..255)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((base * scale + 50) // 100, 1, 255)


def estimate_jpeg_quality(path: str | Path | BinaryIO) -> int | None:
    """Estimate the IJG quality (1–100) of a JPEG file from its quantisation tables; None if not JPEG.

    Picks the q whose IJG-scaled luminance (and chrominance, if present) tables are closest (L1)
    to the file's; Pillow reports tables in natural order, zig-zag order is tried too.
    """
    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                return None
            tables = {k: np.asarray(list(v), dtype=np.int64) for k, v in getattr(im, "quantization", {}).items()}
    except UnidentifiedImageError:
        return None
    if not tables:
        return None
    pairs = [(tables[k], base) for k, base in ((0, _IJG_LUMA), (1, _IJG_CHROMA)) if k in tables]
    if not pairs:
        pairs = [(next(iter(tables.values())), _IJG_LUMA)]
    best_q, best_err = 50, np.inf
    for order in (None, _ZIGZAG):
        for q in range(1, 101):
            err = 0.0
            for tab, base in pairs:
                ref = ijg_table(base, q)
                ref = ref if order is None else ref[order]
                err += float(np.abs(tab[: ref.size] - ref[: tab.size]).sum())
            if err < best_err:
                best_q, best_err = q, err
    return best_q


# --------------------------------------------------------------------------- histories / chains


def _tuple_or_none(v: Any) -> tuple[int, int] | None:
    return None if v is None else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class History:
    """Processing history: generated at ``original_size`` (H, W), stored as JPEG, upscaled back."""

    original_size: tuple[int, int] | None = None  # None = native size, no resampling
    jpeg_quality: int | None = None
    resample: str = "bicubic"

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Downscale to ``original_size``, JPEG at ``jpeg_quality`` (if any), upscale to input size."""
        img = _check(pixels)
        out = img.copy()
        if self.original_size is not None:
            out = resize(out, self.original_size, self.resample)
        if self.jpeg_quality is not None:
            out = jpeg(out, self.jpeg_quality)
        if self.original_size is not None:
            out = resize(out, img.shape[:2], self.resample)
        return out

    __call__ = apply

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["original_size"] = None if self.original_size is None else list(self.original_size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "History":
        q = data.get("jpeg_quality")
        return cls(
            original_size=_tuple_or_none(data.get("original_size")),
            jpeg_quality=None if q is None else int(q),
            resample=str(data.get("resample", "bicubic")),
        )


def _pair(v: Any) -> tuple[float, float]:
    return (float(v[0]), float(v[1]))


@dataclass(frozen=True)
class RandomPostProcess:
    """Randomised post-processing for real and fake alike: resize round trip → blur → noise → JPEG.

    Every call draws the same number of random values from ``rng`` (whichever steps fire), so a
    seeded Generator gives reproducible streams.
    """

    p_resize: float = 0.5
    scale_range: tuple[float, float] = (0.5, 1.0)
    down_choices: tuple[str, ...] = ("bicubic", "bilinear", "area")
    up_choices: tuple[str, ...] = ("bicubic", "bilinear")
    p_jpeg: float = 0.5
    quality_range: tuple[int, int] = (60, 100)
    p_blur: float = 0.2
    blur_range: tuple[float, float] = (0.0, 1.0)
    p_noise: float = 0.2
    noise_range: tuple[float, float] = (0.0, 0.01)

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator | int) -> np.ndarray:
        rng = _as_rng(rng)
        u = rng.random(4)
        scale = rng.uniform(*self.scale_range)
        down = self.down_choices[int(rng.integers(len(self.down_choices)))]
        up = self.up_choices[int(rng.integers(len(self.up_choices)))]
        quality = int(rng.integers(self.quality_range[0], self.quality_range[1] + 1))
        blur = rng.uniform(*self.blur_range)
        noise = rng.uniform(*self.noise_range)
        noise_seed = int(rng.integers(2**63))
        out = _check(pixels).copy()
        if u[0] < self.p_resize:
            out = resize_roundtrip(out, scale=scale, down=down, up=up)
        if u[1] < self.p_blur:
            out = gaussian_blur(out, blur)
        if u[2] < self.p_noise:
            out = gaussian_noise(out, noise, np.random.default_rng(noise_seed))
        if u[3] < self.p_jpeg:
            out = jpeg(out, quality)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RandomPostProcess":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        for k in ("scale_range", "blur_range", "noise_range"):
            if k in kw:
                kw[k] = _pair(kw[k])
        if "quality_range" in kw:
            kw["quality_range"] = (int(kw["quality_range"][0]), int(kw["quality_range"][1]))
        for k in ("down_choices", "up_choices"):
            if k in kw:
                kw[k] = tuple(str(x) for x in kw[k])
        return cls(**kw)


@dataclass(frozen=True)
class MatchedProcessing:
    """Fixed chain applied identically to every test image: resize round trip, then JPEG.

    Default: ×0.5 bicubic round trip, then JPEG q85. ``size`` (H, W) overrides ``scale``;
    ``scale=None`` and ``size=None`` skip resizing, ``jpeg_quality=None`` skips JPEG.
    """

    scale: float | None = 0.5
    size: tuple[int, int] | None = None
    down: str = "bicubic"
    up: str = "bicubic"
    jpeg_quality: int | None = 85

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = _check(pixels).copy()
        if self.size is not None:
            out = resize_roundtrip(out, size=self.size, down=self.down, up=self.up)
        elif self.scale is not None and self.scale != 1.0:
            out = resize_roundtrip(out, scale=self.scale, down=self.down, up=self.up)
        if self.jpeg_quality is not None:
            out = jpeg(out, self.jpeg_quality)
        return out

    def describe(self) -> str:
        steps = []
        if self.size is not None:
            steps.append(f"resize to {self.size[0]}×{self.size[1]} ({self.down}) and back ({self.up})")
        elif self.scale is not None and self.scale != 1.0:
            steps.append(f"resize ×{self.scale:g} ({self.down}) and back ({self.up})")
        if self.jpeg_quality is not None:
            steps.append(f"JPEG q{self.jpeg_quality}")
        return " → ".join(steps) if steps else "identity"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = None if self.size is None else list(self.size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MatchedProcessing":
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        if "size" in kw:
            kw["size"] = _tuple_or_none(kw["size"])
        return cls(**kw)


# --------------------------------------------------------------------------- robustness


def content_seed(pixels: np.ndarray) -> int:
    """A seed derived from the image's bytes (CRC32 of its float32 pixels)."""
    return zlib.crc32(np.ascontiguousarray(pixels, dtype=np.float32).tobytes())


Perturbation = Callable[..., np.ndarray]


def _noise(sigma: float) -> Perturbation:
    def f(pixels: np.ndarray, rng: RngLike = None) -> np.ndarray:
        return gaussian_noise(pixels, sigma, rng if rng is not None else content_seed(pixels))

    return f


def _wrap(fn: Callable[[np.ndarray], np.ndarray]) -> Perturbation:
    def f(pixels: np.ndarray, rng: RngLike = None) -> np.ndarray:  # rng unused: deterministic op
        return fn(pixels)

    return f


#: Named perturbations ``f(pixels, rng=None) -> pixels`` for robustness protocols. All are
#: deterministic; the noise ones use ``rng`` when given, else a seed from the image content
#: (:func:`content_seed`), so the same image always gets the same noise.
ROBUSTNESS_PERTURBATIONS: dict[str, Perturbation] = {
    "jpeg95": _wrap(lambda p: jpeg(p, 95)),
    "jpeg75": _wrap(lambda p: jpeg(p, 75)),
    "jpeg50": _wrap(lambda p: jpeg(p, 50)),
    "jpeg30": _wrap(lambda p: jpeg(p, 30)),
    "blur0.5": _wrap(lambda p: gaussian_blur(p, 0.5)),
    "blur1": _wrap(lambda p: gaussian_blur(p, 1.0)),
    "blur2": _wrap(lambda p: gaussian_blur(p, 2.0)),
    "resize0.5": _wrap(lambda p: resize_roundtrip(p, scale=0.5)),
    "resize0.75": _wrap(lambda p: resize_roundtrip(p, scale=0.75)),
    "noise0.01": _noise(0.01),
    "noise0.03": _noise(0.03),
    "quant8": _wrap(lambda p: quantise(p, 8)),
}
