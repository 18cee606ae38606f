"""``scan --roi``: parsing, patient → pixel conversion, slice resolution, out-of-range errors, and scores at an
ROI differ from whole-image scores (BTD's centred patch, the default crop of other detectors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.detectors import create_detector
from medforensics.engine.roi import RoiError, RoiSpec, parse_roi, patient_to_pixel, plan_roi

runner = CliRunner()
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
BTD_TINY = dict(base_width=8, channel_mult=[1, 2], patch_size=32, stride=32, progress=False,
                preprocessing={"size": 64, "channels": 1})


def test_parse_roi_pixel_and_patient():
    assert parse_roi("10,20") == RoiSpec((10.0, 20.0), "pixel")
    spec = parse_roi(" 10.5, 20 ,3")
    assert spec.slice == 3 and spec.to_dict() == {"space": "pixel", "y": 10.5, "x": 20.0, "slice": 3}
    p = parse_roi("-54.2,-216.4,-390.5", "patient")
    assert p.slice is None and p.to_dict()["z_mm"] == -390.5
    for bad, space, match in (("10", "pixel", "y,x"), ("1,2,3,4", "pixel", "y,x"), ("a,b", "pixel", "numbers"),
                              ("-1,5", "pixel", "≥ 0"), ("1,2,1.5", "pixel", "integer"), ("1,2", "patient", "3 values"),
                              ("1,2", "mm", "space")):
        with pytest.raises(RoiError, match=match):
            parse_roi(bad, space)


def _geometry(iop, ipps, spacing=(0.5, 0.8), rows=100, cols=120):
    return [{"ipp": list(p), "iop": list(iop), "spacing": list(spacing), "rows": rows, "cols": cols} for p in ipps]


def test_patient_to_pixel_on_an_oblique_series():
    a = np.deg2rad(30)
    row_dir = np.array([np.cos(a), np.sin(a), 0.0])  # along a row (increasing column)
    col_dir = np.array([0.0, 0.0, -1.0])  # down a column (increasing row): a coronal-ish oblique plane
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-30.0, 12.0, 40.0])
    ipps = [origin + k * 2.5 * normal for k in range(5)]
    geo = _geometry(np.r_[row_dir, col_dir], ipps)
    k, r, c = 3, 42.0, 77.0
    point = ipps[k] + c * 0.8 * row_dir + r * 0.5 * col_dir  # PixelSpacing = (row spacing, column spacing)
    kk, y, x = patient_to_pixel(point, geo)
    assert kk == k and y == pytest.approx(r) and x == pytest.approx(c)
    kk, _, _ = patient_to_pixel(point + 1.0 * normal, geo)  # within half a slice spacing (1.25 mm)
    assert kk == k
    with pytest.raises(RoiError, match="outside the series"):
        patient_to_pixel(ipps[-1] + 3.0 * normal, geo)
    with pytest.raises(RoiError, match="outside the 100×120 slice"):
        patient_to_pixel(ipps[0] + 200 * row_dir, geo)


@pytest.fixture()
def series(tmp_path):
    """A 3-slice DICOM series (CT_small pixels, positions 10/0/5 mm written in that file order)."""
    folder = tmp_path / "series"
    folder.mkdir()
    uid = pydicom.uid.generate_uid()
    for name, z, inst in (("a.dcm", 10.0, 3), ("b.dcm", 0.0, 1), ("c.dcm", 5.0, 2)):
        ds = pydicom.dcmread(CT_SMALL)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = [-100.0, -50.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.6]
        ds.InstanceNumber = inst
        ds.save_as(folder / name)
    return folder


def test_plan_roi_resolves_the_slice_in_position_order(series):
    plan = plan_roi([series], parse_roi("40,50,1"))
    assert [p.name for p in plan.inputs] == ["c.dcm"]  # positions 0, 5, 10 mm → slice 1 is z = 5 (c.dcm)
    t = plan.target(series / "c.dcm")
    assert (t.y, t.x, t.slice) == (40.0, 50.0, 1)
    with pytest.raises(RoiError, match="slice 7 is out of range: the series has 3 slices"):
        plan_roi([series], parse_roi("40,50,7"))
    # patient mm: x = −100 + 0.6·col, y = −50 + 0.5·row, z picks the slice
    plan = plan_roi([series], parse_roi("-70,-30,10.4", "patient"))
    t = plan.target(series / "a.dcm")
    assert plan.inputs == [series / "a.dcm"] and t.slice == 2
    assert t.y == pytest.approx(40.0) and t.x == pytest.approx(50.0)
    with pytest.raises(RoiError, match="outside the series"):
        plan_roi([series], parse_roi("-70,-30,30", "patient"))


def test_detector_roi_scores_differ_from_whole_image():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((2, 1, 64, 64)).astype(np.float32))
    x[1, :, 40:60, 40:60] = 0.5  # a flat patch: its residual differs from the noise elsewhere
    btd = create_detector("btd", seed=0, **BTD_TINY)
    whole = btd.raw_scores(x)
    s_roi, m_roi = btd.score_with_maps(x, roi=(50.0, 50.0))
    assert m_roi.shape == (2, 64, 64)
    np.testing.assert_allclose(s_roi, btd.probability(btd.raw_scores(x, centers=[(50.0, 50.0)] * 2)))
    assert not np.allclose(btd.raw_scores(x, centers=[(50.0, 50.0)] * 2), whole)
    per_image = btd.score(x, roi=[(50.0, 50.0), None])  # None = the whole image
    assert per_image[1] == pytest.approx(float(btd.score(x[1:])[0]))
    with pytest.raises(ValueError, match="outside the 64×64 image"):
        btd.score(x, roi=(70.0, 10.0))
    cnn = create_detector("forensic_cnn", seed=0, width=8, patch_size=32, patch_stride=32, progress=False,
                          preprocessing={"size": 64})
    img = x.repeat(1, 3, 1, 1)
    s, m = cnn.score_with_maps(img, roi=(10.0, 10.0))  # default: the crop around the ROI, resized
    assert s.shape == (2,) and not np.allclose(s, cnn.score(img))
    if m is not None:
        assert m.shape == (2, 64, 64) and np.all(m[:, 40:, 40:] == 0)  # evidence only in the ROI square


@pytest.fixture(scope="module")
def btd_dir(tmp_path_factory):
    det = create_detector("btd", seed=0, **BTD_TINY)
    det.set_threshold(0.5, method="test")
    return det.save(tmp_path_factory.mktemp("btd") / "tiny")


def test_cli_roi_records_and_errors(btd_dir, series, tmp_path):
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["scan", str(series), "--model", str(btd_dir), "--roi", "40,50,1", "--json", str(out),
                              "--decode-workers", "0", "--no-series"])
    assert res.exit_code == 0, res.output
    results = json.loads(out.read_text())["results"]
    assert [Path(r["path"]).name for r in results] == ["c.dcm"]
    roi = results[0]["meta"]["roi"]
    assert roi["space"] == "pixel" and roi["series_slice"] == 1 and (roi["pixel_y"], roi["pixel_x"]) == (40.0, 50.0)
    assert (roi["input_y"], roi["input_x"]) == (20.0, 25.0)  # 128² CT_small → the 64² input
    whole = tmp_path / "w.json"
    assert runner.invoke(app, ["scan", str(series / "c.dcm"), "--model", str(btd_dir), "--json", str(whole),
                               "--decode-workers", "0", "--no-series", "--no-headers"]).exit_code == 0
    out2 = tmp_path / "r2.json"
    assert runner.invoke(app, ["scan", str(series / "c.dcm"), "--model", str(btd_dir), "--json", str(out2),
                               "--roi", "40,50", "--decode-workers", "0", "--no-series", "--no-headers"]).exit_code == 0
    assert json.loads(out2.read_text())["results"][0]["score"] != json.loads(whole.read_text())["results"][0]["score"]
    res = runner.invoke(app, ["scan", str(series), "--model", str(btd_dir), "--roi", "40,50,5", "--decode-workers", "0"])
    assert res.exit_code == 2 and "out of range" in res.output
    res = runner.invoke(app, ["scan", str(series), "--model", str(btd_dir), "--roi", "500,50", "--decode-workers", "0",
                              "--json", str(tmp_path / "x.json")])
    assert res.exit_code == 1  # every file fails, by name
    assert all("outside the 128×128 image" in r["error"] for r in json.loads((tmp_path / "x.json").read_text())["results"])
    res = runner.invoke(app, ["scan", str(series), "--model", str(btd_dir), "--roi", "1,2", "--roi-space", "patient"])
    assert res.exit_code == 2 and "3 values" in res.output
    res = runner.invoke(app, ["scan", str(series), "--model", str(btd_dir), "--roi", "1,2", "--db",
                              f"sqlite:///{tmp_path / 'r.db'}"])
    assert res.exit_code == 2 and "--db" in res.output
