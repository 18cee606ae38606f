"""``sample_dicoms`` / ``all_sample_dicoms``: the shipped real DICOMs, and robustness on all."""

from __future__ import annotations

import numpy as np
import pydicom
import pydicom.data
import pytest

from medforensics.io import UnreadableImageError, all_sample_dicoms, load, load_frames, sample_dicoms
from medforensics.io.dicom import map_modality
from medforensics.io.samples import SAMPLE_NOTES


def test_sample_dicoms_never_uses_the_downloader(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("get_testdata_file(s) must not be called (it downloads)")

    monkeypatch.setattr(pydicom.data, "get_testdata_file", boom)
    monkeypatch.setattr(pydicom.data, "get_testdata_files", boom)
    samples = sample_dicoms()
    assert {"CT_small.dcm", "MR_small.dcm", "examples_palette.dcm"} <= set(samples)
    assert all(p.is_file() for p in samples.values())
    assert set(samples) <= set(SAMPLE_NOTES)


def test_pydicom_data_samples_present(pdd):
    samples = sample_dicoms()
    assert {"MR2_UNCI.dcm", "US1_UNCI.dcm", "RG1_UNCI.dcm", "emri_small.dcm", "OT-PAL-8-face.dcm"} <= set(samples)
    assert samples["MR2_UNCI.dcm"].parent == pdd


def test_every_curated_sample_loads():
    for name, path in sample_dicoms().items():
        img = load(path)
        assert img.pixels.dtype == np.float32 and np.isfinite(img.pixels).all(), name
        assert img.pixels.min() >= 0 and img.pixels.max() <= 1, name
        assert img.pixels.ndim in (2, 3) and img.pixels.std() > 0, name
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        assert img.meta.modality == map_modality(ds.get("Modality")), name


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom complains about the odd files
def test_all_samples_load_or_fail_cleanly():
    paths = all_sample_dicoms()
    assert len(paths) >= len(sample_dicoms())
    ok = failed = 0
    for path in paths:
        try:
            frames = load_frames(path, max_frames=2)
        except UnreadableImageError as err:
            assert err.path == str(path) and err.reason
            failed += 1
            continue
        for f in frames:
            assert f.pixels.dtype == np.float32 and f.pixels.min() >= 0 and f.pixels.max() <= 1, path
        ok += 1
    assert ok > 0 and failed > 0  # the pydicom folder holds SR, RT plans, DICOMDIRs, truncated files


def test_samples_without_pydicom_data(monkeypatch):
    import medforensics.io.samples as samples_mod

    monkeypatch.setattr(samples_mod, "pydicom_data_folder", lambda: None)
    samples = samples_mod.sample_dicoms()
    assert "CT_small.dcm" in samples and "MR2_UNCI.dcm" not in samples
    assert all("data_store" not in str(p) for p in samples_mod.all_sample_dicoms())
