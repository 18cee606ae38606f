"""Header + pixel fusion: one operating point, findings carried to the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medforensics.engine import ScanEngine
from medforensics.engine.fusion import fuse, header_on_pixel_scale

CT = Path(pydicom.__file__).parent / "data/test_files/CT_small.dcm"


@pytest.mark.parametrize("tau_p", [0.3, 0.5, 0.93])
def test_fused_score_flags_exactly_when_pixels_or_header_are_flagged(tau_p):
    tau_h = 0.5
    grid = np.linspace(0, 1, 41)
    for p in grid:
        for h in grid:
            fused = fuse(p, h, tau_p, tau_h)
            assert (fused >= tau_p) == (p >= tau_p or h >= tau_h), (p, h)
            assert fused >= p
    assert fuse(0.2, None, tau_p, tau_h) == 0.2
    assert header_on_pixel_scale(0.0, tau_p, tau_h) == 0.0
    assert header_on_pixel_scale(1.0, tau_p, tau_h) == pytest.approx(1.0)
    values = [header_on_pixel_scale(h, tau_p, tau_h) for h in grid]
    assert all(b >= a for a, b in zip(values, values[1:]))  # monotone


def test_a_rewritten_header_raises_the_fused_score_and_names_the_finding(det, tmp_path):
    genuine = tmp_path / "genuine.dcm"
    genuine.write_bytes(CT.read_bytes())
    ds = pydicom.dcmread(CT)
    ds.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage  # re-saved as secondary capture by a toolkit
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # pydicom's UID root
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    forged = tmp_path / "forged.dcm"
    ds.save_as(forged)
    with ScanEngine(det, workers=1, headers=True) as engine:
        g, f = engine.scan([genuine, forged])
    assert g.header_score is not None
    assert f.header_score > g.header_score
    assert f.pixel_score is not None
    assert f.score >= f.pixel_score
    assert f.score == pytest.approx(fuse(f.pixel_score, f.header_score, engine.threshold, engine.header_threshold))
    codes = {x["code"] for x in f.findings}
    assert codes, "the forged file has no named finding"
    assert all(x["message"] for x in f.findings)
    with ScanEngine(det, workers=1) as engine:
        (plain,) = engine.scan([forged])
    assert plain.header_score is None
    assert plain.score == pytest.approx(f.pixel_score)
