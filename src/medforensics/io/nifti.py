"""NIfTI reader (nibabel): ``.nii`` / ``.nii.gz`` (NIfTI-1/2, also content-sniffed).

* A 3-D volume yields its axial slices along the last axis after reorientation; a 4-D (or
  higher) image yields the slices of its **first volume** (index 0 on every axis after the
  third); a 2-D image is one slice.
* Orientation: the data are reoriented to the closest canonical RAS+ axes (nibabel
  ``io_orientation``/``apply_orientation``), then each axial slice is shown in the
  radiological convention of DICOM axial images: rows run anterior → posterior, columns
  patient-right → patient-left (``slice = vol[:, :, k].T[::-1, ::-1]``). Slice 0 is the most
  inferior one. A NIfTI converted from a DICOM axial series therefore looks like the DICOM.
* Modality: the ``modality`` argument, else a guess — ``"ct"`` when the minimum finite value
  is below -500 (Hounsfield units: air is -1000), otherwise ``"mri"``.
* Intensities are the scaled values (``scl_slope``/``scl_inter`` applied); normalisation
  is :mod:`.intensity` with ``kind="nifti"`` (MRI statistics over the volume when
  ``mri_scope == "volume"``). Spacing (row, column) comes from the header zooms.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes, apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from .intensity import IntensityConfig, canonical_modality, normalise_stack, pools_frames
from .raster import check_frame_size, check_total_size
from .types import ImageMeta, MedImage, UnreadableImageError

Select = Callable[[int], list[int]]
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr")
CT_GUESS_THRESHOLD = -500.0


def is_nifti_header(head: bytes) -> bool:
    """True when ``head`` starts with a NIfTI-1/Analyze (348) or NIfTI-2 (540) header size."""
    if len(head) < 4:
        return False
    return int.from_bytes(head[:4], "little") in (348, 540) or int.from_bytes(head[:4], "big") in (348, 540)


def _open(path: Path) -> nib.filebasedimages.FileBasedImage:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return nib.load(str(path))
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    cls = nib.Nifti2Image if int.from_bytes(data[:4], "little") == 540 or int.from_bytes(data[:4], "big") == 540 else nib.Nifti1Image
    return cls.from_bytes(data)


def guess_modality(volume: np.ndarray) -> str:
    """``"ct"`` if the volume looks like Hounsfield units (min < -500), else ``"mri"``."""
    finite = volume[np.isfinite(volume)] if volume.dtype.kind == "f" else volume
    return "ct" if finite.size and float(finite.min()) < CT_GUESS_THRESHOLD else "mri"


def display_slice(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice ``k`` of a RAS+ volume in the radiological display convention."""
    return np.ascontiguousarray(volume[:, :, k].T[::-1, ::-1])


def read_nifti(path: Path, select: Select, modality: str | None, config: IntensityConfig) -> list[MedImage]:
    """Decode the selected axial slices of a NIfTI image (see the module docstring)."""
    try:
        img = _open(path)
    except Exception as exc:
        raise UnreadableImageError(path, f"corrupt NIfTI header: {exc}") from exc
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise UnreadableImageError(path, f"unsupported NIfTI shape {shape}")
    x, y = shape[0], shape[1]
    z = shape[2] if len(shape) > 2 else 1
    check_frame_size(path, y, x)
    check_total_size(path, z, y, x)
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf":
        raise UnreadableImageError(path, f"unsupported NIfTI data type {dtype} (only scalar voxels are read)")
    try:
        index = (slice(None),) * min(len(shape), 3) + (0,) * max(len(shape) - 3, 0)
        vol = np.asarray(img.dataobj[index])
    except Exception as exc:
        raise UnreadableImageError(path, f"truncated or corrupt NIfTI data: {exc}") from exc
    if vol.ndim == 2:
        vol = vol[:, :, None]
    affine = img.affine if img.affine is not None else np.eye(4)
    zooms = [float(v) for v in img.header.get_zooms()[:3]] + [1.0] * (3 - min(len(shape), 3))
    try:
        transform = ornt_transform(io_orientation(affine), axcodes2ornt("RAS"))
        vol = apply_orientation(vol, transform)
        new_zooms = [1.0, 1.0, 1.0]
        for axis, (target, _flip) in enumerate(transform):
            new_zooms[int(target)] = zooms[axis]
        axcodes = "".join(str(c) for c in aff2axcodes(affine))
    except Exception:  # degenerate affine: keep the voxel order
        new_zooms, axcodes = zooms, "unknown"
    project = canonical_modality(modality) if modality is not None else guess_modality(vol)
    n = vol.shape[2]
    indices = select(n)
    decode = list(range(n)) if pools_frames(project, kind="nifti", config=config) else indices
    slices = [display_slice(vol, k) for k in decode]
    pixels, descs = normalise_stack(slices, project, kind="nifti", bit_depth=int(dtype.itemsize * 8), config=config)
    keep = {k: j for j, k in enumerate(decode)}
    images = []
    for k in indices:
        j = keep[k]
        meta = ImageMeta(
            path=str(path),
            source_format="nifti",
            modality=project,
            pixel_spacing=(new_zooms[1], new_zooms[0]),
            bit_depth=int(dtype.itemsize * 8),
            photometric="MONOCHROME2",
            frame_index=k if n > 1 else None,
            n_frames=n,
            original_shape=shape,
            intensity=descs[j],
            extra={
                "orientation": axcodes,
                "slice_spacing": new_zooms[2],
                "volume_index": 0 if len(shape) > 3 else None,
                "modality_guessed": modality is None,
                "data_dtype": str(dtype),
            },
        )
        images.append(MedImage(np.ascontiguousarray(pixels[j], dtype=np.float32), meta))
    return images
