"""Series and volumes: slices ordered by position, 3-D regions from evidence maps, series in scan's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.detectors.base import Detector
from medforensics.engine import ScanEngine, SeriesAggregator
from medforensics.engine.series import source_coords
from medforensics.io import IntensityConfig, Preprocessing
from medforensics.results import ScanResult

CT = Path(pydicom.__file__).parent / "data/test_files/CT_small.dcm"


def _result(path, score, position, evidence, uid="1.2.3", instance=None):
    return ScanResult(path=path, score=score, threshold=0.5, verdict="fake" if score >= 0.5 else "real",
                      modality="ct", meta={"series_uid": uid, "slice_position": position,
                                           "instance_number": instance, "original_shape": (128, 128)},
                      frame_maps=evidence[None], frame_positions=[position])


def test_aggregator_orders_slices_by_position_and_finds_the_cube():
    rng = np.random.default_rng(0)
    n, side = 12, 64
    volume = rng.uniform(0, 0.3, (n, side, side)).astype(np.float32)
    volume[4:7, 20:30, 36:46] = 0.95  # the tampered cube: slices 4–6, rows 20–29, columns 36–45
    agg = SeriesAggregator(0.5, fit="center_crop")
    order = rng.permutation(n)  # instances arrive in an arbitrary order
    for k in order:
        agg.add(_result(f"s{k:02d}.dcm", float(volume[k].max()), position=-100.0 + 2.5 * k, evidence=volume[k],
                        instance=int(n - k)))  # instance numbers run backwards: position must win
    agg.add(ScanResult(path="plain.png", score=0.9, meta={}))  # a 2-D image is not a series
    agg.add(ScanResult(path="broken.dcm", error="cannot read", meta={"series_uid": "1.2.3"}))
    (rec,) = agg.records()
    assert rec["n_slices"] == n
    assert [s["path"] for s in rec["slices"]] == [f"s{k:02d}.dcm" for k in range(n)]
    assert rec["verdict"] == "fake"
    top = rec["regions"][0]
    assert (top["first_slice"], top["last_slice"]) == (4, 6)
    # centre of the cube in source pixels: the 64-px map covers the 128-px slice (scale 2)
    assert top["y"] == pytest.approx(25 * 2, abs=2)
    assert top["x"] == pytest.approx(41 * 2, abs=2)
    assert top["radius"] == pytest.approx(np.sqrt(100 / np.pi) * 2, rel=0.1)
    assert len(rec["regions"]) == 1


def test_volume_regions_use_the_displayed_slice_size_not_the_voxel_order_shape():
    # a NIfTI volume: on-disk shape (x, y, z) = (64, 128, 12); io shows 128×64 slices (rows = y) and says so
    n, side = 12, 64
    volume = np.full((n, side, side), 0.1, np.float32)
    volume[4:7, 20:30, 36:46] = 0.95
    agg = SeriesAggregator(0.5, fit="stretch")
    agg.add(ScanResult(path="vol.nii.gz", score=0.95, threshold=0.5, verdict="fake", modality="mri",
                       frames=[float(v.max()) for v in volume],
                       meta={"original_shape": (64, 128, 12), "frame_shape": [128, 64], "n_frames": n},
                       frame_maps=volume, frame_positions=[float(k) for k in range(n)]))
    (rec,) = agg.records()
    top = rec["regions"][0]
    assert (top["first_slice"], top["last_slice"]) == (4, 6)
    assert top["y"] == pytest.approx(25 * 128 / side, abs=2)  # rows stretch ×2
    assert top["x"] == pytest.approx(41 * 64 / side, abs=1.5)  # columns ×1


def test_nifti_results_carry_the_displayed_frame_shape(tmp_path, tiny_model_dir):
    nib = pytest.importorskip("nibabel")
    data = np.random.default_rng(0).normal(100, 10, (40, 24, 6)).astype(np.float32)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["scan", str(path), "--model", str(tiny_model_dir), "--json", str(out)])
    assert res.exit_code == 0, res.output
    meta = json.loads(out.read_text())["results"][0]["meta"]
    assert meta["frame_shape"] == [24, 40] and list(meta["original_shape"]) == [40, 24, 6]


def test_untouched_series_has_no_region_and_a_real_verdict():
    agg = SeriesAggregator(0.5)
    for k in range(5):
        agg.add(_result(f"s{k}.dcm", 0.2, float(k), np.full((64, 64), 0.2, np.float32)))
    (rec,) = agg.records()
    assert rec["verdict"] == "real"
    assert rec["regions"] == []


def test_source_coords_follow_the_fit_of_the_preprocessing():
    assert source_coords(32, 32, 64, (512, 512), "center_crop") == (256, 256)
    assert source_coords(0, 0, 64, (100, 200), "center_crop") == (0, 50)  # the crop starts 50 px in
    assert source_coords(32, 32, 64, (100, 200), "stretch") == (50, 100)


class BrightSpot(Detector):
    """Test detector: evidence = how bright each pixel is above 0.8 (a pasted bright lesion lights up)."""

    name = "test_bright_spot"

    def fit(self, train, val=None):
        return {}

    def _anomaly_map_arrays(self, batch: torch.Tensor) -> np.ndarray:
        grey = batch.mean(dim=1)
        return (grey > 0.8).float().numpy()

    def _score_arrays(self, batch: torch.Tensor) -> np.ndarray:
        return self._anomaly_map_arrays(batch).reshape(len(batch), -1).max(axis=1)

    def state_dict(self):
        return {}

    def load_state_dict(self, tensors):
        pass


def _write_series(folder: Path, n: int, cube: range) -> list[Path]:
    """``n`` slices with pydicom's CT_small header and soft-tissue noise, positions 5 mm apart, written in
    shuffled file order; a bright 12×12 square pasted into the slices of ``cube`` (rows 40–51, columns 70–81)."""
    base = pydicom.dcmread(CT)
    rng = np.random.default_rng(2)
    uid = pydicom.uid.generate_uid()
    files = []
    for k, name_k in enumerate(np.random.default_rng(1).permutation(n)):
        ds = base.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = int(n - k)
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        arr = (rng.normal(40, 10, base.pixel_array.shape) - float(base.RescaleIntercept)).astype(np.int16)
        if k in cube:
            arr[40:52, 70:82] = 3000
        ds.PixelData = arr.astype(base.pixel_array.dtype).tobytes()
        path = folder / f"slice{name_k:02d}.dcm"
        ds.save_as(path)
        files.append(path)
    return files


def test_a_synthetic_series_with_an_injected_cube_is_found_at_the_right_slices(tmp_path):
    _write_series(tmp_path, 10, range(3, 6))
    det = BrightSpot(preprocessing=Preprocessing(size=128, intensity=IntensityConfig()))
    det.set_threshold(0.5, method="test")
    agg = SeriesAggregator(det.threshold, fit=det.preprocessing.fit)
    with ScanEngine(det, workers=1, series=True) as engine:
        for res in engine.scan([tmp_path]):
            assert res.ok, res.error
            agg.add(res)
    (rec,) = agg.records()
    assert rec["n_slices"] == 10
    assert rec["verdict"] == "fake"
    top = rec["regions"][0]
    assert (top["first_slice"], top["last_slice"]) == (3, 5)
    assert top["y"] == pytest.approx(45.5, abs=3)
    assert top["x"] == pytest.approx(75.5, abs=3)


def test_scan_json_has_a_series_list(tiny_model_dir, tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    _write_series(folder, 4, range(0))
    out, report = tmp_path / "r.json", tmp_path / "r.html"
    res = CliRunner().invoke(app, ["scan", str(folder), "--model", str(tiny_model_dir), "--json", str(out),
                                   "--report", str(report)])
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    assert len(payload["results"]) == 4
    (series,) = payload["series"]
    assert series["n_slices"] == 4
    assert series["modality"] == "ct"
    assert set(series) >= {"series_uid", "modality", "n_slices", "score", "verdict", "regions", "findings"}
    positions = [json.loads(json.dumps(r))["meta"]["slice_position"] for r in payload["results"]]
    assert sorted(positions) == [0.0, 5.0, 10.0, 15.0]
    assert series["score"] == pytest.approx(max(r["score"] for r in payload["results"]))
    assert "Series and volumes" in report.read_text()


def test_scan_with_a_store_records_the_series_verdict(tiny_model_dir, tmp_path):
    from medforensics.store import ResultStore

    folder = tmp_path / "series"
    folder.mkdir()
    _write_series(folder, 3, range(0))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    res = CliRunner().invoke(app, ["scan", str(folder), "--model", str(tiny_model_dir), "--db", url])
    assert res.exit_code == 0, res.output
    store = ResultStore(url)
    (row,) = store.query_series()
    assert row.n_slices == 3
    assert store.count() == 3
    store.close()
