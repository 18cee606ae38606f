"""Preview images and heat-maps kept next to the store, and their window/level rendering.

For each scanned file the service keeps what the detector looked at: the best-scoring frame as the
detector's preprocessing made it (its square crop and input size), shown at :data:`PREVIEW_SIZE` px,
as a 16-bit grey (or 8-bit RGB) PNG, and the detector's evidence map of that frame as a 16-bit grey
PNG at the same size. The heat-map therefore lines up with the preview pixel for pixel.

Window/level: CT frames were mapped from Hounsfield units to [0, 1] through the CT window of
the intensity config (default −700…2000 HU), so ``HU = lo + x (hi − lo)`` recovers HU inside that
window and a narrower window/level can be applied for display. Other images use [0, 1] units.
"""

from __future__ import annotations

import io
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import standardise
from ..store.files import open_private, private_dir

PREVIEW_SIZE = 512
_CT_WINDOW = re.compile(r"CT window \[(-?[\d.]+),\s*(-?[\d.]+)\]\s*HU")


@dataclass(frozen=True)
class DisplayUnits:
    """The unit the window/level controls work in for one scan."""

    units: str  # "HU" or "" (normalised intensity 0..1)
    lo: float
    hi: float

    def to_dict(self) -> dict:
        return {"units": self.units, "min": self.lo, "max": self.hi,
                "default_level": (self.lo + self.hi) / 2, "default_width": self.hi - self.lo}


def display_units(modality: str | None, meta: dict | None) -> DisplayUnits:
    """HU for CT frames normalised through the CT window (read from the intensity note), else 0..1."""
    note = str((meta or {}).get("intensity", ""))
    m = _CT_WINDOW.search(note)
    if modality == "ct" and m:
        return DisplayUnits("HU", float(m.group(1)), float(m.group(2)))
    return DisplayUnits("", 0.0, 1.0)


def preview_paths(root: Path, content_hash: str, model_id: str) -> tuple[Path, Path]:
    """(image, heat-map) PNG paths of one file × model; names carry hashes only, never file names."""
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)
    folder = Path(root) / content_hash[:2]
    stem = f"{content_hash}-{key}"
    return folder / f"{stem}.image.png", folder / f"{stem}.heatmap.png"


def _atomic_png(img: Image.Image, path: Path) -> None:
    """Write ``img`` to ``path`` through a temporary file; patient pixels: folders 0700, files 0600."""
    private_dir(path.parent)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # writers never share one
    with open_private(tmp) as fh:
        img.save(fh, format="PNG")
    tmp.replace(path)


def save_preview_arrays(chw: np.ndarray, heatmap: np.ndarray | None, image_path: Path, heatmap_path: Path) -> Path | None:
    """Write the detector's input frame (``C×H×W`` in [0, 1], already cropped and resized by its
    preprocessing) at :data:`PREVIEW_SIZE` px — 16-bit grey when its channels are equal, else 8-bit RGB —
    and ``heatmap`` (any size, resized to match) when given; return the heat-map path or None."""
    chw = np.asarray(chw, dtype=np.float32)
    grey = chw.shape[0] == 1 or all(np.array_equal(chw[0], c) for c in chw[1:])
    view = standardise(chw[0] if grey else np.moveaxis(chw[:3], 0, -1), PREVIEW_SIZE)
    if grey:
        img = Image.fromarray((np.clip(view, 0, 1) * 65535 + 0.5).astype(np.uint16))
    else:
        img = Image.fromarray((np.clip(view, 0, 1) * 255 + 0.5).astype(np.uint8))
    _atomic_png(img, image_path)
    if heatmap is None:
        return None
    hm = np.clip(np.nan_to_num(standardise(np.asarray(heatmap, dtype=np.float32), PREVIEW_SIZE)), 0, 1)
    _atomic_png(Image.fromarray((hm * 65535 + 0.5).astype(np.uint16)), heatmap_path)
    return heatmap_path


def read_unit_png(path: str | Path) -> np.ndarray:
    """A PNG written by :func:`save_previews` (or any 8/16-bit PNG, or a ``.npy``) → float32 in [0, 1]."""
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False).astype(np.float32)
        return np.clip(arr, 0, 1)
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32):
        return np.clip(arr.astype(np.float32) / 65535.0, 0, 1)
    return np.clip(arr.astype(np.float32), 0, 1)


def apply_window(x: np.ndarray, units: DisplayUnits, level: float | None, width: float | None) -> np.ndarray:
    """Window/level (in ``units``) applied to normalised pixels ``x``; result in [0, 1]."""
    if level is None and width is None:
        return x
    values = units.lo + x * (units.hi - units.lo)
    level = (units.lo + units.hi) / 2 if level is None else float(level)
    width = (units.hi - units.lo) if width is None else float(width)
    width = max(width, 1e-6 * (units.hi - units.lo))
    return np.clip((values - (level - width / 2)) / width, 0.0, 1.0)


def png_bytes(rgb_or_grey: np.ndarray) -> bytes:
    """8-bit PNG of a float [0, 1] or uint8 array (grey or RGB)."""
    a = np.asarray(rgb_or_grey)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()
