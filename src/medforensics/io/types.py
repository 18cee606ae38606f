"""Shared I/O types: the image-with-metadata record and the one error every reader raises."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class UnreadableImageError(Exception):
    """Raised for any input that cannot be turned into an image.

    Always names the file and the reason, e.g. ``UnreadableImageError(path, "truncated PNG")``.
    Batch callers catch this one type, record ``str(err)`` and carry on.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


#: BaseExceptions that must propagate: everything else a decoder raises becomes an UnreadableImageError.
FATAL_EXCEPTIONS = (KeyboardInterrupt, SystemExit, GeneratorExit)


def reraise_fatal(exc: BaseException) -> None:
    """Re-raise ``exc`` when it is a :data:`FATAL_EXCEPTIONS` (Ctrl-C, exit, generator close).

    Native decoders can raise errors that do not derive from ``Exception`` — pylibjpeg-rle's
    Rust code raises ``pyo3_runtime.PanicException`` (a ``BaseException``) on corrupt data —
    which ``except Exception`` does not catch; readers catch ``BaseException``, call this, and
    report anything else as ``UnreadableImageError(path, "pixel decoder crashed: …")``.
    """
    if isinstance(exc, FATAL_EXCEPTIONS):
        raise exc


@dataclass
class ImageMeta:
    """Metadata carried alongside pixels (MONAI-style). Unknown fields stay ``None``."""

    path: str = ""
    source_format: str = ""  # "dicom" | "nifti" | "png" | "jpeg" | "tiff" | "bmp" | ...
    modality: str | None = None  # medforensics modality: ct, mri, xray, ultrasound, endoscopy, histopathology
    dicom_modality: str | None = None  # raw DICOM (0008,0060) value, e.g. "CT", "MR", "CR"
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    pixel_spacing: tuple[float, float] | None = None
    bit_depth: int | None = None
    photometric: str | None = None
    frame_index: int | None = None  # frame (DICOM multi-frame) or slice (NIfTI) index; None = single image
    n_frames: int = 1
    original_shape: tuple[int, ...] = ()
    intensity: str = ""  # human-readable description of the normalisation applied
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MedImage:
    """Pixels (float32, H×W or H×W×3, in [0, 1] after normalisation) plus :class:`ImageMeta`."""

    pixels: np.ndarray
    meta: ImageMeta

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3
