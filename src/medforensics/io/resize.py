"""The documented resize of the project: :func:`standardise` and :func:`resize_to`.

``standardise(pixels, size, fit)`` turns an H×W or H×W×3 float32 image in [0, 1] into
``size``×``size`` (same number of dimensions):

* ``fit="center_crop"`` (default): crop the centred square whose side is the short side
  (offsets ``(H - s) // 2`` and ``(W - s) // 2``), then resize;
* ``fit="stretch"``: resize to ``size``×``size`` ignoring the aspect ratio;
* ``fit="pad"``: pad the short side with zeros (black) to a centred square, then resize.

Resampling is Pillow's ``Image.resize`` on 32-bit float (mode ``"F"``) images, one channel
at a time, with ``Image.Resampling.BICUBIC``. Pillow widens the filter support by the
scale factor when downsampling, so downsampling is antialiased. Bicubic overshoot is
removed by clipping to [0, 1]. When the (cropped/padded) image is already ``size``×``size``
no resampling happens: a float32 copy is returned unchanged, so ``standardise`` is
idempotent.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FITS = ("center_crop", "stretch", "pad")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _check(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels, dtype=np.float32)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"expected H×W or H×W×3 pixels, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image of shape {arr.shape}")
    return arr


def resize_to(pixels: np.ndarray, size_hw: tuple[int, int], resample: str = "bicubic") -> np.ndarray:
    """Resize H×W or H×W×C float data to ``size_hw`` = (height, width) with Pillow, per channel.

    Values are not clipped (bicubic/lanczos may overshoot). Same shape → float32 copy.
    """
    arr = np.asarray(pixels, dtype=np.float32)
    h, w = int(size_hw[0]), int(size_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"target size must be positive, got {size_hw}")
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}; expected one of {', '.join(_RESAMPLE)}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected H×W or H×W×C pixels, got shape {arr.shape}")
    if arr.shape[:2] == (h, w):
        return arr.copy()
    method = _RESAMPLE[resample]

    def one(channel: np.ndarray) -> np.ndarray:
        img = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32))
        return np.asarray(img.resize((w, h), resample=method), dtype=np.float32)

    if arr.ndim == 2:
        return one(arr)
    return np.stack([one(arr[..., c]) for c in range(arr.shape[2])], axis=-1)


def _square(arr: np.ndarray, fit: str) -> np.ndarray:
    h, w = arr.shape[:2]
    if fit == "center_crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return arr[top : top + s, left : left + s]
    if fit == "pad":
        s = max(h, w)
        top, left = (s - h) // 2, (s - w) // 2
        out = np.zeros((s, s) + arr.shape[2:], dtype=np.float32)
        out[top : top + h, left : left + w] = arr
        return out
    return arr


def standardise(pixels: np.ndarray, size: int = 256, fit: str = "center_crop") -> np.ndarray:
    """H×W or H×W×3 float32 in [0, 1] → ``size``×``size`` float32 in [0, 1] (see module doc)."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; expected one of {', '.join(FITS)}")
    if int(size) <= 0:
        raise ValueError(f"size must be positive, got {size}")
    arr = _check(pixels)
    if arr.shape[:2] == (size, size):
        return arr.copy()
    sq = _square(arr, fit)
    if sq.shape[:2] == (size, size):
        return np.array(sq, dtype=np.float32, copy=True)
    return np.clip(resize_to(sq, (size, size), "bicubic"), 0.0, 1.0)
