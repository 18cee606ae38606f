"""Regions of interest for BTD: a patch around a given centre, or a sliding window over the image.

Coordinates are ``(y, x)`` in pixels of the *preprocessed* image (the detector's
``Preprocessing``, by default 256×256); :func:`prepared_center` maps a centre given in the
original image to those coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ...io.preprocess import Preprocessing


def window_positions(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` px every ``stride`` px covering ``[0, length)``;
    the last window is aligned with the end so every pixel is covered."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def pad_to_min(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-pad (replicate when too small to reflect) N×C×H×W on the bottom/right to at least ``size``."""
    h, w = batch.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return batch
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(batch, (0, pw, 0, ph), mode=mode)


def extract_windows(batch: torch.Tensor, window: int, stride: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """All sliding windows: (N·K)×C×window×window (image-major) and the K top-left positions."""
    h, w = batch.shape[-2:]
    positions = [(y, x) for y in window_positions(h, window, stride) for x in window_positions(w, window, stride)]
    crops = torch.stack([batch[:, :, y : y + window, x : x + window] for y, x in positions], dim=1)
    return crops.reshape(-1, *crops.shape[2:]), positions


def merge_windows(values: torch.Tensor, positions: Sequence[tuple[int, int]], shape: tuple[int, int]) -> torch.Tensor:
    """Overlap-average N×K×h×w window maps back onto N×H×W."""
    n, k, wh, ww = values.shape
    total = torch.zeros((n, *shape), dtype=values.dtype)
    count = torch.zeros(shape, dtype=values.dtype)
    for i, (y, x) in enumerate(positions):
        total[:, y : y + wh, x : x + ww] += values[:, i]
        count[y : y + wh, x : x + ww] += 1
    return total / count.clamp_min(1)


def patch_origin(center: tuple[float, float], patch: int, shape: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the ``patch``×``patch`` box centred on ``center`` = (y, x), shifted to stay inside."""
    h, w = shape
    cy, cx = float(center[0]), float(center[1])
    if not (0 <= cy < h and 0 <= cx < w):
        raise ValueError(f"centre (y={cy:g}, x={cx:g}) lies outside the {h}×{w} image")
    y0 = int(round(cy - patch / 2))
    x0 = int(round(cx - patch / 2))
    return min(max(0, y0), max(0, h - patch)), min(max(0, x0), max(0, w - patch))


def region_box(center_in_patch: tuple[float, float], size: int, patch: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the ``size``×``size`` scoring region around a point inside a patch (clamped)."""
    size = min(size, patch)
    y0 = min(max(0, int(round(center_in_patch[0] - size / 2))), patch - size)
    x0 = min(max(0, int(round(center_in_patch[1] - size / 2))), patch - size)
    return y0, y0 + size, x0, x0 + size


def prepared_center(original_hw: tuple[int, int], center: tuple[float, float], preprocessing: Preprocessing) -> tuple[float, float]:
    """Map ``center`` = (y, x) in an original H×W image to the preprocessed ``size``×``size`` image
    (follows :func:`medforensics.io.resize.standardise`: centre crop, stretch or pad)."""
    h, w = (int(v) for v in original_hw)
    y, x = float(center[0]), float(center[1])
    s = preprocessing.size
    if preprocessing.fit == "stretch":
        return y * s / h, x * s / w
    if preprocessing.fit == "center_crop":
        side = min(h, w)
        y, x = y - (h - side) // 2, x - (w - side) // 2
        if not (0 <= y < side and 0 <= x < side):
            raise ValueError(f"centre {center} lies outside the centre crop of the {h}×{w} image")
    elif preprocessing.fit == "pad":
        side = max(h, w)
        y, x = y + (side - h) // 2, x + (side - w) // 2
    else:
        raise ValueError(f"unknown preprocessing fit {preprocessing.fit!r}")
    return y * s / side, x * s / side


def robust_scale(values: np.ndarray, percentile: float) -> float:
    """A high percentile of non-negative values (floored so it is never zero)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return 1.0
    return float(max(np.percentile(v, percentile), 1e-12))
