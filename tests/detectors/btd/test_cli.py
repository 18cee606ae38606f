"""`medforensics train btd`, `evaluate` and `scan` with a BTD model (residual heat-map in the HTML report)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.detectors import load_detector

runner = CliRunner()
TINY = ["--set", "base_width=8", "--set", "channel_mult=[1, 2]", "--set", "steps=3", "--set", "batch_size=2",
        "--set", "t_range=10", "--set", "progress=false", "--set", 'preprocessing={"size": 32, "channels": 1}']


def test_train_evaluate_scan_with_heatmap(tiny_manifest, tmp_path):
    out = tmp_path / "btd"
    res = runner.invoke(app, ["train", "btd", "--manifest", str(tiny_manifest.path), "--modality", "xray",
                              "--out", str(out), "--workdir", str(tmp_path / "work"), "--n-boot", "5", *TINY])
    assert res.exit_code == 0, res.output
    det = load_detector(out)
    assert det.name == "btd" and det.preprocessing.channels == 1
    assert det.training_summary["train_fakes_skipped"] == 0  # real-only data from the CLI
    assert det.training_summary["n_train"] > 0 and det.config["patch_size"] == 96  # non-CT/MRI default
    assert "medforensics train btd" in (out / "MODEL_CARD.md").read_text()

    res = runner.invoke(app, ["evaluate", str(tiny_manifest.path), "--model", str(out), "--split", "all",
                              "--n-boot", "5", "--json", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    plain = json.loads((tmp_path / "eval.json").read_text())["views"]["plain"]
    assert 0.0 <= plain["all fakes"]["per_modality"]["all"]["auc"]["mean"] <= 1.0

    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    img = (rng.random((48, 48)) * 255).astype(np.uint8)
    Image.fromarray(img).save(folder / "a.png")
    report, js = tmp_path / "r.html", tmp_path / "r.json"
    res = runner.invoke(app, ["scan", str(folder), "--model", str(out), "--report", str(report), "--json", str(js)])
    assert res.exit_code == 0, res.output
    (r,) = json.loads(js.read_text())["results"]
    assert r["error"] is None and 0.0 <= r["score"] <= 1.0
    assert 'alt="heat map overlay"' in report.read_text()  # the residual map is drawn
