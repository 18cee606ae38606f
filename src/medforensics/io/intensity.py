"""Intensity normalisation: the ONE place raw pixel values become float32 in [0, 1].

Every reader hands its raw values here (after DICOM rescale / modality LUT, NIfTI scaling,
palette lookup) together with the project modality and the *kind* of source:

``kind="dicom"`` or ``"nifti"`` (values are physical / stored values):
    * grey **CT** — values are Hounsfield units: clipped to ``config.ct_window``
      (default [-700, 2000] HU, as in Back-in-Time Diffusion) and scaled to [0, 1].
    * grey **MRI** — ``"percentile"``: robust min/max at ``config.mri_percentiles`` then
      clipped; ``"zscore"``: ``(z + clip) / (2 clip)`` clipped. Statistics are pooled over
      the whole array passed in; :func:`normalise_stack` pools over all frames of a file when
      ``config.mri_scope == "volume"`` and works slice by slice when ``"image"``.
    * any other grey image — the DICOM VOI window (centre/width, LINEAR / LINEAR_EXACT /
      SIGMOID exactly as PS3.3 C.11.2.1.2 and pydicom ``apply_windowing``) when ``window``
      is given; otherwise integer data of at most 8 stored bits is divided by its
      bit-depth range (``/ (2**bits - 1)``, display-ready US/SC/endoscopy data) and deeper
      data is min–max scaled per frame (no clipping, so no information is thrown away).
``kind="display"``: values already meant for display — colour DICOM (RGB / YBR→RGB),
    palette-colour or VOI-LUT-table output — in ``[0, 2**bit_depth - 1]``: divided by that
    range (8-bit /255, 16-bit /65535); min–max if the values exceed it.
``kind="raster"`` (PNG/JPEG/TIFF/BMP): integer images divided by ``2**bit_depth - 1``
    (``bit_depth`` defaults to the dtype's width: 8-bit /255, 16-bit /65535); float images
    are clipped to [0, 1] when already inside it, else min–max scaled. Modality is ignored.

Non-finite values (NaN/inf in float NIfTI) are replaced by the finite min/max before any
statistics. A degenerate range (constant image) maps to 0 (z-score: to 0.5, i.e. z = 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np

MODALITIES = ("ct", "mri", "xray", "ultrasound", "endoscopy", "histopathology")
_ALIASES = {"mr": "mri", "x-ray": "xray", "us": "ultrasound", "histology": "histopathology"}

Window = tuple  # (center, width) or (center, width, "LINEAR" | "LINEAR_EXACT" | "SIGMOID")


def canonical_modality(name: str | None) -> str | None:
    """Lower-case and alias a project modality name; ``None`` stays ``None``."""
    if name is None:
        return None
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; expected one of {', '.join(MODALITIES)}")
    return key


@dataclass(frozen=True)
class IntensityConfig:
    """How raw intensities are mapped to [0, 1]; stored with every model as ``Preprocessing.intensity``."""

    ct_window: tuple[float, float] = (-700.0, 2000.0)
    mri_method: str = "percentile"  # "percentile" | "zscore"
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    mri_scope: str = "volume"  # "volume" | "image"
    zscore_clip: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        object.__setattr__(self, "mri_percentiles", tuple(float(v) for v in self.mri_percentiles))
        lo, hi = self.ct_window
        if not hi > lo:
            raise ValueError(f"ct_window must be (low, high) with high > low, got {self.ct_window}")
        plo, phi = self.mri_percentiles
        if not 0.0 <= plo < phi <= 100.0:
            raise ValueError(f"mri_percentiles must satisfy 0 <= low < high <= 100, got {self.mri_percentiles}")
        if self.mri_method not in ("percentile", "zscore"):
            raise ValueError(f"mri_method must be 'percentile' or 'zscore', got {self.mri_method!r}")
        if self.mri_scope not in ("volume", "image"):
            raise ValueError(f"mri_scope must be 'volume' or 'image', got {self.mri_scope!r}")
        if not self.zscore_clip > 0:
            raise ValueError(f"zscore_clip must be > 0, got {self.zscore_clip}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ct_window"] = list(self.ct_window)
        d["mri_percentiles"] = list(self.mri_percentiles)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IntensityConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _fmt(v: float) -> str:
    return f"{float(v):.6g}"


def _finite(raw: np.ndarray) -> np.ndarray:
    arr = np.asarray(raw)
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        good = arr[np.isfinite(arr)]
        lo, hi = (float(good.min()), float(good.max())) if good.size else (0.0, 0.0)
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    return arr


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map [lo, hi] → [0, 1], clipped, float32; degenerate range → zeros."""
    if not hi > lo:
        return np.zeros(arr.shape, dtype=np.float32)
    out = arr.astype(np.float64)  # the one float64 working copy (see io.budget); same values as
    out -= lo  # (arr - lo) / (hi - lo), computed in place
    out /= hi - lo
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32)


def _bit_range(arr: np.ndarray, bit_depth: int | None) -> tuple[np.ndarray, str] | None:
    """Divide by ``2**bits - 1`` when the values fit that range (signed ranges shifted)."""
    bits = bit_depth or (arr.dtype.itemsize * 8 if arr.dtype.kind in "iu" else None)
    if bits is None:
        return None
    lo, hi = 0, 2**bits - 1
    amin, amax = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if amin < 0 and arr.dtype.kind == "i":
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if amin < lo or amax > hi:
        return None
    return _scale(arr, lo, hi), f"stored {bits}-bit range [{lo}, {hi}] → [0, 1]"


def _minmax(arr: np.ndarray, why: str) -> tuple[np.ndarray, str]:
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    return _scale(arr, lo, hi), f"min–max [{_fmt(lo)}, {_fmt(hi)}] → [0, 1] ({why})"


def apply_window(arr: np.ndarray, window: Sequence[Any]) -> tuple[np.ndarray, str]:
    """DICOM VOI window (PS3.3 C.11.2.1.2) mapped to [0, 1] instead of the output bit range."""
    center, width = float(window[0]), float(window[1])
    func = str(window[2]).upper() if len(window) > 2 and window[2] else "LINEAR"
    x = arr.astype(np.float64)
    if func == "SIGMOID" and width > 0:
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif func == "LINEAR_EXACT" and width > 0:
        out = (x - center) / width + 0.5
    elif func == "LINEAR" and width >= 1:
        if width == 1:  # degenerate LINEAR window: a threshold at center - 0.5
            out = (x > center - 0.5).astype(np.float64)
        else:
            out = (x - (center - 0.5)) / (width - 1) + 0.5
    else:
        raise ValueError(f"invalid VOI window: center {center}, width {width}, function {func}")
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    return out, f"DICOM VOI window C={_fmt(center)} W={_fmt(width)} ({func}) → [0, 1]"


def _mri(arr: np.ndarray, config: IntensityConfig, scope: str) -> tuple[np.ndarray, str]:
    if config.mri_method == "zscore":
        x = arr.astype(np.float64)
        mean, std = float(x.mean()), float(x.std())
        c = float(config.zscore_clip)
        z = (x - mean) / std if std > 0 else np.zeros_like(x)
        out = np.clip((z + c) / (2 * c), 0.0, 1.0).astype(np.float32)
        return out, f"MRI z-score over {scope} (mean {_fmt(mean)}, std {_fmt(std)}), clip ±{_fmt(c)} → [0, 1]"
    plo, phi = config.mri_percentiles
    lo, hi = (float(v) for v in np.percentile(arr, [plo, phi]))
    return _scale(arr, lo, hi), (
        f"MRI percentiles p{_fmt(plo)}–p{_fmt(phi)} over {scope} = [{_fmt(lo)}, {_fmt(hi)}] → [0, 1]"
    )


def normalise_intensity(
    raw: np.ndarray,
    modality: str | None,
    *,
    kind: str,
    bit_depth: int | None,
    config: IntensityConfig,
    window: Window | None = None,
) -> tuple[np.ndarray, str]:
    """Map ``raw`` to float32 in [0, 1]; return it with a human-readable description.

    ``kind`` is ``"dicom"``, ``"nifti"``, ``"display"`` or ``"raster"`` (rules in the module
    docstring); ``modality`` is a project modality. Statistics (percentiles, z-score, min–max)
    are computed over the whole array given: one frame, or a whole stack for volume-level
    statistics. Colour DICOM data is passed as ``kind="display"`` with its stored bit depth.
    """
    modality = canonical_modality(modality)
    arr = _finite(raw)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"cannot normalise pixel data of dtype {arr.dtype}")
    if kind == "raster":
        if arr.dtype.kind == "f":
            lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
            if lo >= 0.0 and hi <= 1.0:
                return np.clip(arr, 0.0, 1.0).astype(np.float32), "float values clipped to [0, 1]"
            return _minmax(arr, "float image outside [0, 1]")
        bits = bit_depth or arr.dtype.itemsize * 8
        res = _bit_range(arr, bits)
        return res if res is not None else _minmax(arr, f"values exceed {bits}-bit range")
    if kind == "display":
        res = _bit_range(arr, bit_depth)
        return res if res is not None else _minmax(arr, "display values exceed bit range")
    if kind not in ("dicom", "nifti"):
        raise ValueError(f"unknown intensity kind {kind!r}")
    if modality == "ct":
        lo, hi = config.ct_window
        return _scale(arr, lo, hi), f"CT window [{_fmt(lo)}, {_fmt(hi)}] HU → [0, 1]"
    if modality == "mri":
        return _mri(arr, config, "the array")
    if window is not None:
        return apply_window(arr, window)
    if arr.dtype.kind in "iub" and bit_depth is not None and bit_depth <= 8:
        res = _bit_range(arr, bit_depth)
        if res is not None:
            return res
    return _minmax(arr, "no VOI window" if kind == "dicom" else f"{kind} data")


def pools_frames(modality: str | None, *, kind: str, config: IntensityConfig) -> bool:
    """True when normalising one frame needs every frame of the file (MRI, scope "volume")."""
    return kind in ("dicom", "nifti") and canonical_modality(modality) == "mri" and config.mri_scope == "volume"


def normalise_stack(
    stack: np.ndarray | Sequence[np.ndarray],
    modality: str | None,
    *,
    kind: str,
    bit_depth: int | None,
    config: IntensityConfig,
    windows: Sequence[Window | None] | None = None,
) -> tuple[list[np.ndarray], list[str]]:
    """Normalise a file's frames; MRI statistics are pooled over all frames when scope="volume".

    ``stack`` is a sequence (or leading axis) of frames. Returns one array and one description
    per frame. Everything but pooled MRI is done frame by frame.
    """
    frames = list(stack)
    if not frames:
        return [], []
    if pools_frames(modality, kind=kind, config=config):
        vol = np.stack([np.asarray(f) for f in frames])
        out, desc = normalise_intensity(vol, modality, kind=kind, bit_depth=bit_depth, config=config)
        n = len(frames)
        desc = desc.replace("over the array", f"over volume ({n} frame{'s' if n != 1 else ''})")
        return list(out), [desc] * n
    outs: list[np.ndarray] = []
    descs: list[str] = []
    for i, f in enumerate(frames):
        w = windows[i] if windows is not None else None
        out, desc = normalise_intensity(f, modality, kind=kind, bit_depth=bit_depth, config=config, window=w)
        outs.append(out)
        descs.append(desc.replace("over the array", "over image"))
    return outs, descs
