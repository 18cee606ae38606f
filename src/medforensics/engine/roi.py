"""Region of interest for a scan (``medforensics scan --roi``): the BTD paper's setting, where the analyst
already knows where to look and the detector scores only the window centred there.

* **pixel** space (default): ``y,x[,slice]`` — row and column in pixels of the source slice (0-based),
  and optionally the slice: its 0-based index in position order within each DICOM series (the order of
  the series regions), or the frame index of a multi-frame file / NIfTI volume. Without a slice, every
  slice of every file is scored at (y, x).
* **patient** space: ``x,y,z`` in millimetres in the DICOM patient coordinate system (LPS, the frame of
  ImagePositionPatient). Per DICOM series the slice is the one whose position along the slice normal
  (ImageOrientationPatient row × column) is nearest the point — the point must lie within half a slice
  spacing of it — and the pixel is ``row = (P − IPP)·column direction / PixelSpacing[0]``,
  ``column = (P − IPP)·row direction / PixelSpacing[1]``.

:func:`plan_roi` resolves the request over the scan's inputs (headers only) into a :class:`RoiPlan`:
which files to scan (with a slice: only that slice of each series), and per file the pixel centre and
frame. The engine maps the centre into the model's preprocessed image (``io.resize`` geometry) and
hands it to :meth:`Detector.score_with_maps` (``roi``); each result's ``meta["roi"]`` records it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPACES = ("pixel", "patient")


class RoiError(ValueError):
    """A region of interest that cannot be used (bad syntax, outside the image, slice out of range)."""


@dataclass(frozen=True)
class RoiSpec:
    """What the user asked for: pixel (y, x[, slice]) or patient (x, y, z) mm."""

    values: tuple[float, ...]
    space: str = "pixel"

    @property
    def slice(self) -> int | None:
        return int(self.values[2]) if self.space == "pixel" and len(self.values) == 3 else None

    def to_dict(self) -> dict[str, Any]:
        if self.space == "patient":
            return {"space": "patient", "x_mm": self.values[0], "y_mm": self.values[1], "z_mm": self.values[2]}
        return {"space": "pixel", "y": self.values[0], "x": self.values[1], "slice": self.slice}


def parse_roi(text: str, space: str = "pixel") -> RoiSpec:
    """``"y,x"`` / ``"y,x,slice"`` (pixel) or ``"x,y,z"`` (patient, mm) → :class:`RoiSpec`."""
    if space not in SPACES:
        raise RoiError(f"ROI space must be one of {', '.join(SPACES)}, got {space!r}")
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise RoiError(f"ROI {text!r}: expected comma-separated numbers "
                       f"({'y,x[,slice]' if space == 'pixel' else 'x,y,z in mm'})") from None
    if not all(math.isfinite(v) for v in values):
        raise RoiError(f"ROI {text!r}: coordinates must be finite numbers")
    if space == "patient":
        if len(values) != 3:
            raise RoiError(f"ROI {text!r}: patient coordinates are x,y,z in mm (3 values), got {len(values)}")
        return RoiSpec(values, "patient")
    if len(values) not in (2, 3):
        raise RoiError(f"ROI {text!r}: expected y,x or y,x,slice (pixels), got {len(values)} values")
    if values[0] < 0 or values[1] < 0:
        raise RoiError(f"ROI {text!r}: pixel coordinates must be ≥ 0")
    if len(values) == 3 and (values[2] < 0 or values[2] != int(values[2])):
        raise RoiError(f"ROI {text!r}: the slice must be a non-negative integer, got {values[2]:g}")
    return RoiSpec(values, "pixel")


@dataclass(frozen=True)
class RoiTarget:
    """Where to look in one file: (y, x) in source pixels, and the frame (None = every frame / single image)."""

    y: float
    x: float
    frame: int | None = None
    slice: int | None = None  # index in the series (position order), when resolved from a series

    def record(self, spec: RoiSpec) -> dict[str, Any]:
        return {**spec.to_dict(), "pixel_y": round(self.y, 3), "pixel_x": round(self.x, 3),
                **({"series_slice": self.slice} if self.slice is not None else {}),
                **({"frame": self.frame} if self.frame is not None else {})}


@dataclass
class RoiPlan:
    """A resolved ROI: the files to scan and the target in each (see :func:`plan_roi`)."""

    spec: RoiSpec
    default: RoiTarget | None = None  # files not listed in per_file (pixel space, no slice)
    per_file: dict[str, RoiTarget] = field(default_factory=dict)
    inputs: list[Path] | None = None  # None: the paths as given
    notes: list[str] = field(default_factory=list)  # series / files the ROI could not be placed in

    def target(self, path: str | Path) -> RoiTarget | None:
        return self.per_file.get(str(path), self.default)


def plan_roi(paths: Iterable[str | Path], spec: RoiSpec) -> RoiPlan:
    """Resolve ``spec`` over the files under ``paths`` (headers only). Pixel space without a slice needs no
    look at the files. Raises :class:`RoiError` when no file can take the ROI (the reasons in the message)."""
    if spec.space == "pixel" and spec.slice is None:
        return RoiPlan(spec, default=RoiTarget(spec.values[0], spec.values[1]))
    from ..io import UnreadableImageError, iter_entries

    plan = RoiPlan(spec, inputs=[])
    series: dict[str, list[dict[str, Any]]] = {}
    for path in iter_entries(paths):
        if isinstance(path, UnreadableImageError):
            plan.notes.append(f"{path.path}: {path.reason}; skipped")
            continue
        info = _header(path)
        if info is None:  # not DICOM
            if spec.space == "patient":
                plan.notes.append(f"{path}: patient coordinates need DICOM geometry (ImagePositionPatient, "
                                  "ImageOrientationPatient, PixelSpacing); skipped")
            elif _is_nifti(path):
                plan.per_file[str(path)] = RoiTarget(spec.values[0], spec.values[1], frame=spec.slice, slice=spec.slice)
                plan.inputs.append(path)
            elif spec.slice == 0:
                plan.per_file[str(path)] = RoiTarget(spec.values[0], spec.values[1], slice=0)
                plan.inputs.append(path)
            else:
                plan.notes.append(f"{path}: a single image has only slice 0; skipped")
            continue
        if info["frames"] > 1:
            if spec.space == "patient":
                plan.notes.append(f"{path}: patient coordinates in multi-frame files are not supported; skipped")
            elif spec.slice >= info["frames"]:
                plan.notes.append(f"{path}: slice {spec.slice} is out of range: the file has {info['frames']} "
                                  f"frames (0–{info['frames'] - 1}); skipped")
            else:
                plan.per_file[str(path)] = RoiTarget(spec.values[0], spec.values[1], frame=spec.slice, slice=spec.slice)
                plan.inputs.append(path)
            continue
        series.setdefault(info["uid"] or f"file:{path}", []).append(info)
    for uid, members in series.items():
        members.sort(key=lambda m: (math.inf if m["position"] is None else m["position"], m["instance"], m["path"]))
        try:
            k, y, x = _place(spec, members)
        except RoiError as err:
            plan.notes.append(f"series {uid} ({len(members)} slices): {err}; skipped")
            continue
        path = members[k]["path"]
        plan.per_file[str(path)] = RoiTarget(y, x, slice=k)
        plan.inputs.append(path)
    if not plan.inputs:
        raise RoiError("the ROI fits no scanned file: " + " | ".join(plan.notes or ["no files"]))
    plan.inputs.sort(key=str)
    return plan


def _place(spec: RoiSpec, members: list[dict[str, Any]]) -> tuple[int, float, float]:
    """(slice index, y, x) of the ROI in one position-ordered DICOM series."""
    n = len(members)
    if spec.space == "pixel":
        k = int(spec.slice)
        if k >= n:
            raise RoiError(f"slice {k} is out of range: the series has {n} slices (0–{n - 1})")
        return k, spec.values[0], spec.values[1]
    geo = [m["geometry"] for m in members]
    if any(g is None for g in geo):
        raise RoiError("a slice lacks ImagePositionPatient / ImageOrientationPatient / PixelSpacing")
    p = np.asarray(spec.values, dtype=np.float64)
    k, y, x = patient_to_pixel(p, geo)
    return k, y, x


def patient_to_pixel(point: np.ndarray, geometry: list[dict[str, Any]]) -> tuple[int, float, float]:
    """Nearest slice along the normal and the (row, column) of ``point`` (patient mm) in it.

    ``geometry``: per slice (in position order) ``ipp`` (3), ``iop`` (6), ``spacing`` (row, column mm),
    ``rows``, ``cols``. Raises :class:`RoiError` when the point is not within half a slice spacing of a
    slice or falls outside the slice's pixels."""
    point = np.asarray(point, dtype=np.float64)
    iop = np.asarray(geometry[0]["iop"], dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 1e-6:
        raise RoiError("ImageOrientationPatient has parallel row and column directions")
    normal /= np.linalg.norm(normal)
    pos = np.array([np.asarray(g["ipp"], dtype=np.float64) @ normal for g in geometry])
    target = float(point @ normal)
    k = int(np.argmin(np.abs(pos - target)))
    if len(pos) > 1:
        half = 0.5 * float(np.median(np.abs(np.diff(np.sort(pos))))) or 0.5
    else:
        half = 0.5 * float(geometry[0].get("thickness") or 1.0)
    if abs(pos[k] - target) > half + 1e-3:
        raise RoiError(f"the point lies {target:.2f} mm along the slice normal, outside the series "
                       f"({pos.min():.2f}…{pos.max():.2f} mm, half spacing {half:.2f} mm)")
    g = geometry[k]
    rel = point - np.asarray(g["ipp"], dtype=np.float64)
    y = float(rel @ col_dir / float(g["spacing"][0]))
    x = float(rel @ row_dir / float(g["spacing"][1]))
    if not (-0.5 <= y < g["rows"] - 0.5 and -0.5 <= x < g["cols"] - 0.5):
        raise RoiError(f"the point falls at pixel (y={y:.1f}, x={x:.1f}), outside the {g['rows']}×{g['cols']} slice")
    return k, min(max(y, 0.0), g["rows"] - 1.0), min(max(x, 0.0), g["cols"] - 1.0)


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _header(path: Path) -> dict[str, Any] | None:
    """Series UID, position, instance number, frames and geometry of a DICOM file; None if not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from ..io.dicom import slice_position

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, AttributeError):
        return None
    if "Rows" not in ds and "PixelData" not in ds and "SOPClassUID" not in ds:
        return None
    try:
        instance = float(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        instance = math.inf
    geometry = None
    try:
        ipp = [float(v) for v in ds.ImagePositionPatient]
        iop = [float(v) for v in ds.ImageOrientationPatient]
        spacing = [float(v) for v in ds.PixelSpacing]
        if len(ipp) == 3 and len(iop) == 6 and len(spacing) == 2:
            geometry = {"ipp": ipp, "iop": iop, "spacing": spacing, "rows": int(ds.Rows), "cols": int(ds.Columns),
                        "thickness": float(ds.get("SliceThickness") or 0) or None}
    except (AttributeError, TypeError, ValueError, KeyError):
        geometry = None
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    return {"path": path, "uid": str(ds.get("SeriesInstanceUID") or "") or None, "instance": instance,
            "position": slice_position(ds, 0), "frames": frames, "geometry": geometry}


def nifti_frame_hw(path: str | Path) -> tuple[int, int]:
    """(rows, columns) of the slices ``medforensics.io`` shows for a NIfTI volume: axial slices of the RAS+
    reoriented volume in display convention (``io.nifti.display_slice``), from the header only."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    img = nib.load(str(path))
    shape = tuple(int(v) for v in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
    try:
        transform = ornt_transform(io_orientation(img.affine), axcodes2ornt("RAS"))
        ras = [0, 0, 0]
        for axis, (target, _flip) in enumerate(transform):
            ras[int(target)] = shape[axis]
    except Exception:  # degenerate affine: io keeps the voxel order
        ras = list(shape)
    return ras[1], ras[0]


def centre_in_input(target: RoiTarget, meta: dict[str, Any], preprocessing: Any,
                    hw: tuple[int, int] | None = None) -> tuple[float, float]:
    """The target's source-pixel centre in the model's preprocessed image (``io.resize`` geometry); ``hw``
    overrides the slice size read from ``meta`` (NIfTI: :func:`nifti_frame_hw`)."""
    from ..detectors.btd.patches import prepared_center

    shape = tuple(meta.get("original_shape") or ())
    if hw is None and meta.get("frame_shape"):
        hw = tuple(int(v) for v in meta["frame_shape"])
    if hw is None:
        hw = shape[1:3] if meta.get("frame_index") is not None and len(shape) >= 3 else shape[:2]
    if len(hw) != 2:
        raise RoiError(f"unknown image size (original_shape {shape})")
    h, w = int(hw[0]), int(hw[1])
    if not (0 <= target.y < h and 0 <= target.x < w):
        raise RoiError(f"ROI (y={target.y:g}, x={target.x:g}) lies outside the {h}×{w} image")
    try:
        return prepared_center((h, w), (target.y, target.x), preprocessing)
    except ValueError as err:
        raise RoiError(f"ROI (y={target.y:g}, x={target.x:g}): {err} the model's input "
                       f"({preprocessing.fit} to {preprocessing.size}²) does not show it") from None
