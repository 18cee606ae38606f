"""The one preprocessing function shared by training and scanning, stored with every model.

``Preprocessing`` turns a loaded :class:`MedImage` (any size, pixels in [0, 1]) into the
``C×H×W`` float32 array a detector consumes. Its fields are plain data so they round-trip
through a model's ``config.json``; a saved model therefore reproduces its scores exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .resize import standardise
from .types import MedImage


@dataclass(frozen=True)
class Preprocessing:
    size: int = 256
    fit: str = "center_crop"  # see io.resize.standardise
    channels: int = 3  # 3: grey images are replicated to RGB; 1: colour images are converted to luma

    def __call__(self, image: MedImage) -> np.ndarray:
        """Standardise ``image`` to ``size``×``size`` and return ``channels``×H×W float32 in [0, 1]."""
        pixels = standardise(image.pixels, self.size, fit=self.fit)
        return to_channels(pixels, self.channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """H×W or H×W×3 in [0, 1] → ``channels``×H×W float32 (grey replicated, colour → luma if 1)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 2:
        chw = pixels[None]
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        chw = np.moveaxis(pixels, 2, 0)
    else:
        raise ValueError(f"expected H×W or H×W×3 pixels, got shape {pixels.shape}")
    if channels == 3 and chw.shape[0] == 1:
        chw = np.repeat(chw, 3, axis=0)
    elif channels == 1 and chw.shape[0] == 3:
        chw = np.tensordot(_LUMA, chw, axes=1)[None]
    elif channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return np.ascontiguousarray(np.clip(chw, 0.0, 1.0), dtype=np.float32)
