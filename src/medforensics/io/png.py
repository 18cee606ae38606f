"""The one lossless PNG writer of the toolkit: every PNG that medforensics makes goes through here.

Why one writer: a forensic detector (or the format-statistics leak check,
:func:`medforensics.benchmark.build.format_check.format_statistics_check`) can tell files apart by
their container alone — zlib level, chunk layout, metadata. Every PNG of the shared corpus
(``../shared/data``, real and fake) carries zlib ``FLEVEL`` 3 (maximum compression) and no ancillary
chunks; Pillow's default (``compress_level=6``) writes ``FLEVEL`` 2. Fakes, tampered copies and
re-encoded files written here therefore share the reals' container: same level, no metadata, the
array's own bit depth. Writes are atomic (a temporary name renamed into place), so an interrupted
run never leaves a half-written image under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

#: zlib level 9 → RFC 1950 FLEVEL 3, the level of every PNG in the shared corpus
PNG_COMPRESS_LEVEL = 9

_MODES = {(np.dtype(np.uint8), 2): "L", (np.dtype(np.uint8), 3): "RGB", (np.dtype(np.uint16), 2): "I;16"}


def _native(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def png_mode(pixels: np.ndarray) -> str:
    """Pillow mode that stores ``pixels`` losslessly: uint8 grey ``L`` or RGB ``RGB``, uint16 grey ``I;16``."""
    arr = _native(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    mode = _MODES.get((arr.dtype, arr.ndim))
    if mode is None or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"cannot store a {arr.dtype} array of shape {arr.shape} losslessly as PNG "
                         "(uint8 H×W or H×W×3, uint16 H×W)")
    return mode


def write_png(path: str | Path, pixels: np.ndarray, *, compress_level: int = PNG_COMPRESS_LEVEL) -> Path:
    """Write an integer array losslessly as PNG (see :func:`png_mode`), no metadata chunks, atomically.

    Float images are the caller's to quantise (:func:`to_uint8`): the writer never rescales, so what
    is stored is exactly what was given.
    """
    path = Path(path)
    arr = _native(pixels)
    mode = png_mode(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(np.ascontiguousarray(arr))
    if img.mode != mode:  # Pillow's own choice for the dtype; never a silent conversion
        raise ValueError(f"Pillow maps a {arr.dtype} array to mode {img.mode!r}, not {mode!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        img.save(tmp, format="PNG", compress_level=int(compress_level), optimize=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] (values outside are clipped) rounded to uint8."""
    return np.rint(np.clip(np.asarray(pixels, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
