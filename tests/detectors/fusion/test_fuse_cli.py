"""`medforensics models fuse`: a fused model calibrated on a manifest's real validation split, usable by scan."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.detectors import create_detector, load_detector

runner = CliRunner()


def test_fuse_builds_a_calibrated_model_scan_can_use(tiny_manifest, tiny_model_dir, tmp_path):
    zed = create_detector("zed", seed=0, width=8, layers=1, scales=2, progress=False)  # 256 px like the member
    zed_dir = zed.save(tmp_path / "zed")
    out = tmp_path / "fused"
    res = runner.invoke(app, ["models", "fuse", str(tiny_model_dir), str(zed_dir), "--out", str(out),
                              "--manifest", str(tiny_manifest.path), "--val-fraction", "0.5", "--target-fpr", "0.2"])
    assert res.exit_code == 0, res.output
    det = load_detector(out)
    assert det.name == "fusion" and [m.name for m in det.members] == ["forensic_cnn", "zed"]
    cal = det.calibration
    assert cal["method"] == "fpr_on_real_val" and cal["target_fpr"] == 0.2 and cal["achieved_fpr"] <= 0.2
    assert cal["n_real"] == det.training_summary["calibration_images"] > 0
    # the operating point holds on the calibration reals' stored scores
    assert np.mean(np.asarray(cal["real_val_scores"]) >= det.threshold) <= 0.2
    # scan goes through the normal interface
    scan_json = tmp_path / "scan.json"
    folder = tiny_manifest.root
    res = runner.invoke(app, ["scan", str(folder), "--model", str(out), "--json", str(scan_json)])
    assert res.exit_code == 0, res.output
    report = json.loads(scan_json.read_text())
    assert report["detector"] == "fusion" and report["threshold"] == det.threshold
    scored = [r for r in report["results"] if r["error"] is None]
    assert scored and all(0 <= r["score"] <= 1 for r in scored)

    res = runner.invoke(app, ["models", "fuse", str(tiny_model_dir), "--out", str(tmp_path / "one")])
    assert res.exit_code == 2 and "at least two" in res.output
    res = runner.invoke(app, ["models", "fuse", str(tiny_model_dir), str(zed_dir), "--out", str(out),
                              "--manifest", str(tiny_manifest.path)])
    assert res.exit_code == 2 and "--force" in res.output
