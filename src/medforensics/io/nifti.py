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
import io
import zlib
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes, apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from .budget import FLOAT32, FLOAT64, DecodeBudgetError, DecodeCost, current_budget, shape_text
from .intensity import IntensityConfig, canonical_modality, normalise_stack, pools_frames
from .raster import check_frame_size, check_total_size
from .files import open_regular
from .types import ImageMeta, MedImage, UnreadableImageError

Select = Callable[[int], list[int]]
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr")
CT_GUESS_THRESHOLD = -500.0


def is_nifti_header(head: bytes) -> bool:
    """True when ``head`` starts with a NIfTI-1/Analyze (348) or NIfTI-2 (540) header size."""
    if len(head) < 4:
        return False
    return int.from_bytes(head[:4], "little") in (348, 540) or int.from_bytes(head[:4], "big") in (348, 540)


def _open(path: Path, max_inflated: int | None = None) -> nib.filebasedimages.FileBasedImage:
    """nibabel image; a file without a NIfTI suffix is read into memory (inflated up to ``max_inflated``)."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return nib.load(str(path))
    with open_regular(path) as fh:
        data = fh.read()
    if data[:2] == b"\x1f\x8b":
        if max_inflated is None:
            data = gzip.decompress(data)
        else:  # bounded: a gzip bomb stops at the budget instead of filling memory
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            inflated = inflater.decompress(data, max_inflated + 1)
            if len(inflated) > max_inflated:
                raise DecodeBudgetError(path, "gzip-compressed NIfTI data inflating to more than the budget",
                                        len(inflated), max_inflated)
            data = inflated
    cls = nib.Nifti2Image if int.from_bytes(data[:4], "little") == 540 or int.from_bytes(data[:4], "big") == 540 else nib.Nifti1Image
    return cls.from_bytes(data)


def guess_modality(volume: np.ndarray) -> str:
    """``"ct"`` if the volume looks like Hounsfield units (min < -500), else ``"mri"``."""
    finite = volume[np.isfinite(volume)] if volume.dtype.kind == "f" else volume
    return "ct" if finite.size and float(finite.min()) < CT_GUESS_THRESHOLD else "mri"


def display_slice(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice ``k`` of a RAS+ volume in the radiological display convention."""
    return np.ascontiguousarray(volume[:, :, k].T[::-1, ::-1])


def _gzip_size(path: Path) -> int | None:
    """Uncompressed size of a gzip file from its trailer (mod 2**32; None if not gzip)."""
    try:
        with open_regular(path) as fh:
            if fh.read(2) != b"\x1f\x8b":
                return None
            fh.seek(-4, 2)
            return int.from_bytes(fh.read(4), "little")
    except OSError:
        return None


def _nifti_header(path: Path) -> nib.Nifti1Header | nib.Nifti2Header | None:
    """The header alone (first 540 bytes, inflated if gzipped), without reading the data."""
    try:
        with open_regular(path) as fh:
            head = fh.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            raw = fh.read(540)
        two = 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
        return (nib.Nifti2Header if two else nib.Nifti1Header).from_fileobj(io.BytesIO(raw))
    except Exception:
        return None


def nifti_cost(path: Path, shape: tuple[int, ...], dtype: np.dtype, scaled: bool, n_decode: int | None,
               *, in_memory_file: bool, volume_only: bool = False) -> DecodeCost:
    """Peak bytes of :func:`read_nifti` (see :mod:`.budget`).

    The first 3-D volume as stored (x × y × z × the data type), its scaled copy (float64 when
    ``scl_slope``/``scl_inter`` apply or the data are float), the display-ordered slices decoded,
    then either the MRI volume statistics (``n_decode`` None: every slice, stacked + sorted copy
    + float64 copy) or one slice's float64 working copy, and the float32 slices returned; a file
    without a NIfTI suffix is also read whole into memory (and inflated when gzipped). Slices
    are counted at the largest of the three axial planes, as the reorientation may pick any.
    ``volume_only`` counts just what reading the volume holds (checked before it is read; the
    full estimate is checked once the modality, hence the statistics, is known).
    """
    x, y = shape[0], shape[1]
    z = shape[2] if len(shape) > 2 else 1
    voxels = x * y * z
    slice_values = max(x * y, x * z, y * z)
    item = int(dtype.itemsize)
    value_item = FLOAT64 if scaled else item
    decoded = voxels if n_decode is None else min(voxels, n_decode * slice_values)
    cost = DecodeCost(shape_text(z, y, x, 1, str(dtype)) + (" (first volume)" if len(shape) > 3 else ""))
    if in_memory_file:
        cost.add("file read into memory", path.stat().st_size + (_gzip_size(path) or 0))
    cost.add("stored volume", voxels * item)
    if path.name.lower().endswith(".gz") or in_memory_file:  # the inflated bytes, then the array
        cost.add("inflated data buffer", voxels * item)
    if scaled:
        cost.add("scaled float64 volume", voxels * FLOAT64)
    if volume_only:
        return cost
    cost.add("display-ordered slices", decoded * value_item)
    if n_decode is None:
        cost.add("volume statistics (stack, sorted copy, float64 copy)", voxels * (2 * value_item + FLOAT64))
    else:
        cost.add("float64 working copy of one slice", slice_values * FLOAT64)
    cost.add("float32 slices", decoded * FLOAT32)
    return cost


def read_nifti(
    path: Path, select: Select, modality: str | None, config: IntensityConfig, *, budget: int | None = None
) -> list[MedImage]:
    """Decode the selected axial slices of a NIfTI image (see the module docstring).

    The decode is checked against the byte ``budget`` from the header before the data are read.
    """
    budget = current_budget(budget)
    in_memory = not path.name.lower().endswith(NIFTI_SUFFIXES)
    if in_memory:  # read whole into memory below: check the header first
        hdr = _nifti_header(path)
        if hdr is not None:
            hshape = tuple(int(s) for s in hdr.get_data_shape())
            if len(hshape) >= 2 and all(s > 0 for s in hshape):
                nifti_cost(path, hshape, hdr.get_data_dtype(), True, None, in_memory_file=True,
                           volume_only=True).check(path, budget)
    try:
        img = _open(path, max_inflated=budget)
    except UnreadableImageError:
        raise
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
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    scaled = not (slope in (None, 1) and inter in (None, 0))
    nifti_cost(path, shape, dtype, scaled, None, in_memory_file=in_memory, volume_only=True).check(path, budget)
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
    n_decode: int | None = None
    if not pools_frames(project, kind="nifti", config=config):
        try:
            n_decode = len(select(max(x, y, z)))
        except UnreadableImageError:
            n_decode = 1
    nifti_cost(path, shape, dtype, scaled, n_decode, in_memory_file=in_memory).check(path, budget)
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
                # (rows, columns) of the displayed slice: the on-disk shape is in voxel order, not display order
                "frame_shape": [int(v) for v in slices[j].shape[:2]],
                "slice_position": float(k * new_zooms[2]),  # RAS-reoriented: index order is position order
                "volume_index": 0 if len(shape) > 3 else None,
                "modality_guessed": modality is None,
                "data_dtype": str(dtype),
            },
        )
        images.append(MedImage(np.ascontiguousarray(pixels[j], dtype=np.float32), meta))
    return images
