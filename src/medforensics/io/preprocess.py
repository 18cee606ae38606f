"""The one preprocessing chain shared by training and scanning, stored with every model.

``Preprocessing`` is the whole saved chain from a file to what a detector consumes:

    read (``io.load_frames`` with ``intensity``) → ``standardise`` (``size``, ``fit``) → ``channels``

* :meth:`Preprocessing.load` runs the whole chain for a file and returns the ``C×H×W`` float32
  arrays together with the native-resolution :class:`MedImage` records (metadata, heat-map
  overlays). Scanning calls it; training calls the same two halves with its augmentation in
  between: :meth:`Preprocessing.read` (file → MedImages, with this model's intensity config) and
  ``Preprocessing.__call__`` (one MedImage → ``C×H×W``).
* Its fields are plain data that round-trip through a model's ``config.json``
  (:meth:`to_dict` / :meth:`from_dict`); a saved model therefore reproduces its scores exactly.
  A ``config.json`` written before ``intensity`` was stored loads with the default
  :class:`IntensityConfig`, which is what every scan used then.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .intensity import IntensityConfig
from .resize import standardise
from .types import MedImage


class LoadedFrames(NamedTuple):
    """What :meth:`Preprocessing.load` returns: ``arrays[k]`` is ``images[k]`` prepared."""

    arrays: list[np.ndarray]  # C×H×W float32 in [0, 1], one per frame
    images: list[MedImage]  # native resolution, after intensity normalisation


@dataclass(frozen=True)
class Preprocessing:
    size: int = 256
    fit: str = "center_crop"  # see io.resize.standardise
    channels: int = 3  # 3: grey images are replicated to RGB; 1: colour images are converted to luma
    intensity: IntensityConfig = field(default_factory=IntensityConfig)  # raw values → [0, 1] at read time

    def __post_init__(self) -> None:
        if isinstance(self.intensity, dict):
            object.__setattr__(self, "intensity", IntensityConfig.from_dict(self.intensity))
        elif self.intensity is None:
            object.__setattr__(self, "intensity", IntensityConfig())
        elif not isinstance(self.intensity, IntensityConfig):
            raise TypeError(f"intensity must be an IntensityConfig or a dict, got {type(self.intensity).__name__}")

    def __call__(self, image: MedImage) -> np.ndarray:
        """Standardise ``image`` to ``size``×``size`` and return ``channels``×H×W float32 in [0, 1]."""
        pixels = standardise(image.pixels, self.size, fit=self.fit)
        return to_channels(pixels, self.channels)

    def read(
        self,
        path: str | Path,
        *,
        max_frames: int | None = None,
        frame: int | None = None,
        modality: str | None = None,
        decode_budget: int | None = None,
    ) -> list[MedImage]:
        """First half of the chain: the file's frames with this preprocessing's intensity config.

        ``frame`` picks one frame/slice (as :func:`medforensics.io.load`); otherwise every frame,
        evenly subsampled to at most ``max_frames`` (as :func:`medforensics.io.load_frames`).
        Raises :class:`~medforensics.io.UnreadableImageError` for anything unreadable.
        """
        from .walk import load, load_frames  # the readers import nothing from here

        extra: dict[str, Any] = {} if decode_budget is None else {"decode_budget": decode_budget}
        if frame is not None:
            return [load(path, frame=frame, modality=modality, intensity=self.intensity, **extra)]
        return load_frames(path, modality=modality, intensity=self.intensity, max_frames=max_frames, **extra)

    def load(
        self,
        path: str | Path,
        *,
        max_frames: int | None = None,
        frame: int | None = None,
        modality: str | None = None,
        decode_budget: int | None = None,
    ) -> LoadedFrames:
        """The whole saved chain for a file: read (this intensity config) → standardise → channels.

        Returns ``LoadedFrames(arrays, images)``: one ``channels×size×size`` float32 array per
        frame read, and the native-resolution :class:`MedImage` it came from.
        """
        images = self.read(path, max_frames=max_frames, frame=frame, modality=modality, decode_budget=decode_budget)
        return LoadedFrames([self(im) for im in images], images)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "fit": self.fit, "channels": self.channels, "intensity": self.intensity.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if kwargs.get("intensity") is not None:
            kwargs["intensity"] = IntensityConfig.from_dict(kwargs["intensity"])
        return cls(**kwargs)


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
