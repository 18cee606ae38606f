"""The one pixel pipeline of the benchmark builder, for reals and fakes alike.

Every image is loaded with :func:`medforensics.io.load` (float32 in [0, 1]), optionally given a
stored state first (standardised to a native side and quantised to 8 bits, maybe a JPEG round
trip), standardised to ``size``×``size``, optionally post-processed by one
:class:`~medforensics.data.processing.MatchedProcessing` chain, and written as an 8-bit PNG
(fixed zlib level, no metadata chunks) in one colour mode per modality.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...data import ManifestRow
from ...data.processing import MatchedProcessing, estimate_jpeg_quality, jpeg, quantise
from ...io import load, standardise
from ...io.png import to_uint8, write_png

_COLOUR_MODES = {"RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "P"}


def header(path: Path) -> tuple[tuple[int, int], str]:
    """((H, W), PIL mode) from a raster header; DICOM/NIfTI are decoded."""
    try:
        with Image.open(path) as im:
            return (im.size[1], im.size[0]), im.mode
    except Exception:
        img = load(path)
        return img.pixels.shape[:2], "RGB" if img.pixels.ndim == 3 else "L"


def _to_mode(pixels: np.ndarray, mode: str) -> np.ndarray:
    if mode == "RGB" and pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    if mode == "L" and pixels.ndim == 3:
        return (pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)
    return pixels


def pipeline(
    pixels: np.ndarray,
    *,
    size: int,
    fit: str = "center_crop",
    native_side: int | None = None,
    history_jpeg: int | None = None,
    post: MatchedProcessing | None = None,
) -> np.ndarray:
    """The one processing path of the builder (float32 in [0, 1] → ``size``×``size``).

    ``native_side``: first standardise to that side and quantise to 8 bits (the stored state of a
    generated or published image); ``history_jpeg``: then a JPEG round trip at that quality.
    """
    out = pixels
    if native_side is not None:
        out = quantise(standardise(out, int(native_side), fit=fit), 8)
        if history_jpeg is not None:
            out = jpeg(out, int(history_jpeg))
    out = standardise(out, size, fit=fit)
    if post is not None:
        out = post(out)
    return out


def save_png(pixels: np.ndarray, path: Path, mode: str, compress_level: int = 6) -> None:
    """8-bit PNG in ``mode`` ('L' or 'RGB'), fixed zlib level, no metadata chunks; atomic."""
    write_png(path, to_uint8(_to_mode(pixels, mode)), compress_level=compress_level)


def safe_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep.strip("._") or "x"


def out_name(row: ManifestRow, root: Path) -> str:
    src = str(row.resolve(root))
    return f"{safe_name(Path(row.path).stem)[:60]}_{hashlib.sha1(src.encode()).hexdigest()[:8]}.png"


def history_of(row: ManifestRow, root: Path, assumed_quality: int) -> dict[str, Any]:
    """Stored square side and JPEG quality (estimated, assumed from notes, or none) of an input file."""
    path = row.resolve(root)
    (h, w), _ = header(path)
    q = estimate_jpeg_quality(path) if path.suffix.lower() in (".jpg", ".jpeg") else None
    if q is None and row.extra.get("jpeg_quality", "").strip().isdigit():  # recorded by synth import_fakes
        q = int(row.extra["jpeg_quality"])
    source = "estimated" if q is not None else ""
    if q is None:
        notes = row.extra.get("notes", "").lower()
        if "jpeg" in notes or "jpg" in notes:
            q, source = assumed_quality, "assumed from provenance notes"
    return {"side": int(min(h, w)), "size": [int(h), int(w)], "jpeg_quality": q, "jpeg_source": source}


def colour_modes(rows: Iterable[ManifestRow], root: Path | None) -> dict[str, str]:
    """Per modality, the majority colour mode ('L' or 'RGB') of the given (real) rows' files."""
    votes: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        _, mode = header(r.resolve(root))
        votes[r.modality]["RGB" if mode in _COLOUR_MODES else "L"] += 1
    return {m: v.most_common(1)[0][0] for m, v in votes.items()}


def native_sides(rows: Iterable[ManifestRow], root: Path | None) -> dict[str, list[int]]:
    """Per modality, the sorted stored square sides of the given (fake) rows' files."""
    sides: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        shape, _ = header(r.resolve(root))
        sides[r.modality].append(min(shape))
    return {m: sorted(s) for m, s in sides.items()}
