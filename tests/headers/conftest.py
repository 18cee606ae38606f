"""A small genuine-looking CT series built from pydicom's ``CT_small.dcm`` and the attacks on it.

The series keeps everything a scanner wrote (file meta, UID root, vendor, software); slices are
moved along the normal 5 mm apart, numbered, timed 1 s apart, and each gets its own seeded
quantum noise so the slices differ like real ones do.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medforensics.io.samples import pydicom_test_files

N_SLICES = 9


def _ct_small() -> pydicom.Dataset:
    folder = pydicom_test_files()
    if folder is None or not (folder / "CT_small.dcm").is_file():
        pytest.skip("pydicom's CT_small.dcm is not installed")
    return pydicom.dcmread(folder / "CT_small.dcm")


def write_series(folder: Path, n: int = N_SLICES, seed: int = 0) -> list[Path]:
    base = _ct_small()
    rng = np.random.default_rng(seed)
    pixels = base.pixel_array.astype(np.int32)
    x, y, z = (float(v) for v in base.ImagePositionPatient)
    root = str(base.SOPInstanceUID)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        ds = copy.deepcopy(base)
        uid = f"{root}.{k + 1}"
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [x, y, z + 5.0 * k]
        ds.SliceLocation = z + 5.0 * k
        ds.AcquisitionTime = f"{112936 + k:06d}"
        ds.ContentTime = f"{113008 + k:06d}"
        noisy = pixels + np.round(rng.normal(0.0, 2.0, pixels.shape)).astype(np.int32)
        ds.PixelData = np.clip(noisy, -32768, 32767).astype(np.int16).tobytes()
        path = folder / f"slice{k:02d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


@pytest.fixture
def ct_small() -> pydicom.Dataset:
    """A fresh copy of pydicom's CT_small.dcm (GE CT, 128×128, HU rescale)."""
    return _ct_small()


@pytest.fixture
def ct_series(tmp_path: Path) -> list[Path]:
    return write_series(tmp_path / "series")
