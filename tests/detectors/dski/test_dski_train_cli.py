"""``medforensics train dski --backbone tiny`` → ``evaluate`` end to end on the tiny manifest."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.detectors import load_detector

runner = CliRunner()


def test_train_dski_then_evaluate(tiny_manifest, tmp_path):
    out = tmp_path / "dski"
    res = runner.invoke(app, ["train", "dski", "--manifest", str(tiny_manifest.path), "--backbone", "tiny",
                              "--out", str(out), "--workdir", str(tmp_path / "work"), "--tamper-fraction", "0",
                              "--n-boot", "5", "--set", "epochs=1", "--set", "bottleneck=8", "--set", "bank_shots=2",
                              "--set", "batch_size=4", "--set", "progress=false", "--set", "streams=noise"])
    assert res.exit_code == 0, res.output
    det = load_detector(out)
    assert det.name == "dski" and det.config["streams"] == "noise" and det.config["backbone"] == {"tiny": {}}
    assert det.bank_size > 0
    cfg = json.loads((out / "config.json").read_text())
    assert "RANDOMLY INITIALISED" in cfg["config"]["backbone_weights"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "medforensics train dski" in card and "--backbone tiny" in card and "RANDOMLY INITIALISED" in card
    js = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate", str(tiny_manifest.path), "--model", str(out), "--split", "all",
                              "--n-boot", "5", "--json", str(js)])
    assert res.exit_code == 0, res.output
    per_mod = json.loads(js.read_text())["views"]["plain"]["all fakes"]["per_modality"]
    assert 0.0 <= per_mod["all"]["auc"]["mean"] <= 1.0
