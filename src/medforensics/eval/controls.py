"""Control scores a forensic detector must beat: cues of *processing*, not of generation.

A detector that separates real from fake images no better than one of these scores has learned
how the files were processed (sharpened, blurred, compressed, resampled), not how they were made:

* :func:`sharpness_score` — mean absolute Laplacian (4-neighbour, mirrored borders);
* :func:`file_history_score` — how much processing history an image carries: an 8×8 JPEG-grid
  term (the IJG quality estimated from the quantisation tables when given a JPEG *file*, else the
  blockiness of the pixels) plus a resampling term (the periodicity peak of the spectrum of the
  second derivative, Gallagher 2005 / Kirchner 2008). Higher = more history.

Both are plain functions of a pixel array (H×W or H×W×3, float in [0, 1]) or of a file path
(read with :func:`medforensics.io.load`); they return one float per image and have no threshold
or direction of their own — a benchmark orients them (e.g. on a training split). They are
deliberately kept apart from the shipped detectors and registered nowhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["file_history_components", "file_history_score", "jpeg_blockiness", "resampling_periodicity",
           "sharpness_score"]

#: the JPEG block size
BLOCK = 8
#: lowest normalised frequency (cycles/pixel) searched for a resampling peak: below it the
#: second-derivative profile follows image content, not interpolation
MIN_RESAMPLING_FREQUENCY = 0.05
#: zero-padding factor of the second-derivative spectrum, and the half-width (in native frequency bins)
#: of the local background a peak is measured against
PAD, PEAK_WINDOW = 4, 6
#: a JPEG file of estimated IJG quality q gets the JPEG term (100 − q) / JPEG_QUALITY_SCALE
JPEG_QUALITY_SCALE = 25.0
#: pixel blockiness is multiplied by this to be on the scale of the quality term (measured on shared
#: CT/X-ray/MRI/ultrasound slices at 256²: a JPEG q75 round trip has a blockiness of about 0.2–0.4,
#: so ×4 puts it near the (100 − 75) / 25 = 1 of a q75 file)
BLOCKINESS_SCALE = 4.0


def _pixels(image: Any) -> np.ndarray:
    """Float64 luma (H×W) from an array or a file path."""
    if isinstance(image, (str, Path)):
        from ..io import load

        image = load(image).pixels
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):  # C×H×W
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise ValueError(f"expected H×W, H×W×3 or C×H×W pixels, got shape {np.shape(image)}")
    if min(arr.shape) < 2 * BLOCK:
        raise ValueError(f"image too small for a control score: {arr.shape} (need at least {2 * BLOCK} px a side)")
    if not np.isfinite(arr).all():
        raise ValueError("pixels contain NaN or inf")
    return arr


def sharpness_score(image: Any) -> float:
    """Mean |Laplacian| (4-neighbour, mirrored borders) of an image in [0, 1]; RGB: mean over channels.

    ``image``: pixels (H×W, H×W×3 or C×H×W) or a file path. Blurring lowers it; sharpening,
    noise and fine texture raise it.
    """
    if isinstance(image, (str, Path)):
        from ..io import load

        image = load(image).pixels
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[2] not in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected H×W, H×W×3 or C×H×W pixels, got shape {x.shape}")
    chans = [x] if x.ndim == 2 else [x[..., c] for c in range(x.shape[-1])]
    return float(np.mean([np.abs(ndimage.laplace(c, mode="reflect")).mean() for c in chans]))


def jpeg_blockiness(image: Any) -> float:
    """Strength of an 8×8 block grid: for each axis, the mean |step| between neighbouring columns
    (rows) grouped by position mod 8; (largest phase − median phase) / median phase, averaged over
    the two axes. About 0 for unprocessed images, larger for stronger JPEG compression; the grid
    may sit at any offset."""
    g = _pixels(image) * 255.0
    out = []
    for d in (np.abs(np.diff(g, axis=1)).mean(axis=0), np.abs(np.diff(g, axis=0)).mean(axis=1)):
        n = (d.size // BLOCK) * BLOCK
        phases = d[:n].reshape(-1, BLOCK).mean(axis=0)
        med = float(np.median(phases))
        out.append(0.0 if med <= 1e-9 else (float(phases.max()) - med) / med)
    return float(np.mean(out))


def resampling_periodicity(image: Any) -> float:
    """Periodic interpolation trace: for each axis, the profile of mean |second derivative| across
    the image (Gallagher 2005), its magnitude spectrum (mean removed, zero-padded 4×), and
    log(peak / median) over frequencies from :data:`MIN_RESAMPLING_FREQUENCY` to Nyquist; the larger
    of the two axes. An image resampled by a non-integer factor (e.g. a 0.875× round trip: period 8
    px) or JPEG-compressed (8-px grid) has a sharp peak there; an unprocessed one a broad spectrum.
    A 2× round trip with centred pixels has two mirror-symmetric phases and leaves no peak."""
    g = _pixels(image)
    vals = []
    for axis in (1, 0):
        d2 = np.abs(np.diff(g, n=2, axis=axis)).mean(axis=1 - axis)
        spec = np.abs(np.fft.rfft(d2 - d2.mean(), n=PAD * d2.size))
        # local background: the median over ± PEAK_WINDOW native bins around each frequency
        local = ndimage.median_filter(spec, size=2 * PAD * PEAK_WINDOW + 1, mode="reflect")
        band = np.fft.rfftfreq(PAD * d2.size) >= MIN_RESAMPLING_FREQUENCY
        ratio = spec[band] / np.maximum(local[band], 1e-12 * max(float(spec.max()), 1e-300))
        vals.append(math.log(float(ratio.max())) if ratio.size else 0.0)
    return float(max(vals))


def _jpeg_file_quality(image: Any) -> int | None:
    if not isinstance(image, (str, Path)):
        return None
    from ..data.processing import estimate_jpeg_quality

    try:
        return estimate_jpeg_quality(Path(image))
    except OSError:
        return None


def file_history_components(image: Any) -> dict[str, float | int | None]:
    """The parts of :func:`file_history_score`: ``jpeg_quality`` (estimated from the quantisation
    tables of a JPEG file, else None), ``blockiness``, ``resampling``, the two terms and ``score``."""
    quality = _jpeg_file_quality(image)
    pixels = _pixels(image)
    block = jpeg_blockiness(pixels)
    resampling = resampling_periodicity(pixels)
    jpeg_term = (100 - quality) / JPEG_QUALITY_SCALE if quality is not None else BLOCKINESS_SCALE * block
    return {"jpeg_quality": quality, "blockiness": block, "resampling": resampling, "jpeg_term": float(jpeg_term),
            "score": float(jpeg_term + resampling)}


def file_history_score(image: Any) -> float:
    """One number per image, higher = more processing history: the JPEG term (from the quantisation
    tables of a JPEG file, else the pixels' 8×8 blockiness) plus the resampling-periodicity term.
    ``image``: pixels (H×W, H×W×3 or C×H×W, in [0, 1]) or a file path."""
    return float(file_history_components(image)["score"])
