"""``IntensityConfig`` and the rules of ``normalise_intensity``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medforensics.io import IntensityConfig, normalise_intensity

CFG = IntensityConfig()


def test_config_round_trip_and_validation():
    cfg = IntensityConfig(ct_window=(-1000, 1000), mri_method="zscore", mri_scope="image", zscore_clip=2.5)
    d = cfg.to_dict()
    assert d["ct_window"] == [-1000.0, 1000.0]
    assert IntensityConfig.from_dict({**d, "unknown": 1}) == cfg
    assert IntensityConfig.from_dict(IntensityConfig().to_dict()) == IntensityConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mri_method = "percentile"  # type: ignore[misc]
    for bad in ({"mri_method": "minmax"}, {"mri_scope": "series"}, {"ct_window": (5, 5)}, {"mri_percentiles": (50, 10)}):
        with pytest.raises(ValueError):
            IntensityConfig(**bad)


def test_defaults():
    assert CFG.ct_window == (-700.0, 2000.0) and CFG.mri_method == "percentile"
    assert CFG.mri_percentiles == (0.5, 99.5) and CFG.mri_scope == "volume" and CFG.zscore_clip == 3.0


def test_raster_rules():
    u8 = np.array([[0, 128, 255]], np.uint8)
    out, desc = normalise_intensity(u8, None, kind="raster", bit_depth=None, config=CFG)
    np.testing.assert_allclose(out, [[0, 128 / 255, 1]], atol=1e-7)
    assert out.dtype == np.float32 and "255" in desc
    u16 = np.array([[0, 65535]], np.uint16)
    np.testing.assert_allclose(normalise_intensity(u16, None, kind="raster", bit_depth=None, config=CFG)[0], [[0, 1]])
    f = np.array([[0.2, 0.7]], np.float32)
    np.testing.assert_allclose(normalise_intensity(f, "ct", kind="raster", bit_depth=None, config=CFG)[0], f)
    g = np.array([[-1.0, 0.0, 3.0]], np.float32)
    out, desc = normalise_intensity(g, None, kind="raster", bit_depth=None, config=CFG)
    np.testing.assert_allclose(out, [[0, 0.25, 1]])
    assert "min–max" in desc


def test_ct_window_and_nan():
    hu = np.array([-2000.0, -700.0, 650.0, 2000.0, 5000.0, np.nan])
    out, desc = normalise_intensity(hu, "ct", kind="nifti", bit_depth=None, config=CFG)
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1, 0], atol=1e-7)
    assert desc == "CT window [-700, 2000] HU → [0, 1]"


def test_mri_percentile_and_zscore():
    x = np.arange(1001, dtype=np.float64)
    out, desc = normalise_intensity(x, "mri", kind="dicom", bit_depth=12, config=CFG)
    lo, hi = np.percentile(x, [0.5, 99.5])
    np.testing.assert_allclose(out, np.clip((x - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert "p0.5–p99.5" in desc
    z = IntensityConfig(mri_method="zscore", zscore_clip=3.0)
    out, desc = normalise_intensity(x, "mri", kind="dicom", bit_depth=12, config=z)
    np.testing.assert_allclose(out, np.clip(((x - x.mean()) / x.std() + 3) / 6, 0, 1), atol=1e-6)
    assert float(out[500]) == pytest.approx(0.5)


def test_other_dicom_fallbacks():
    eight = np.array([[0, 51, 255]], np.uint8)
    out, desc = normalise_intensity(eight, "ultrasound", kind="dicom", bit_depth=8, config=CFG)
    np.testing.assert_allclose(out, [[0, 0.2, 1]], atol=1e-7)
    assert "8-bit range" in desc
    deep = np.array([[100, 150, 300]], np.uint16)
    out, desc = normalise_intensity(deep, None, kind="dicom", bit_depth=12, config=CFG)
    np.testing.assert_allclose(out, [[0, 0.25, 1]], atol=1e-7)
    assert "min–max [100, 300]" in desc
    out, desc = normalise_intensity(deep, "xray", kind="dicom", bit_depth=12, config=CFG, window=(150.5, 101))
    np.testing.assert_allclose(out, [[0, 0.5, 1]], atol=1e-7)
    assert "C=150.5 W=101" in desc
