"""train → evaluate → data index → demo through the real CLI, on tiny data and tiny models."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.detectors import load_detector

runner = CliRunner()
TINY = ["--set", "epochs=1", "--set", "width=8", "--set", "patch_size=64", "--set", "patch_stride=64",
        "--set", "progress=false"]


def test_train_then_evaluate(tiny_manifest, tmp_path):
    out = tmp_path / "model"
    res = runner.invoke(app, ["train", "forensic_cnn", "--manifest", str(tiny_manifest.path), "--out", str(out),
                              "--workdir", str(tmp_path / "work"), "--tamper-fraction", "0", "--n-boot", "5", *TINY])
    assert res.exit_code == 0, res.output
    det = load_detector(out)
    assert det.name == "forensic_cnn" and det.config["width"] == 8
    card = (out / "MODEL_CARD.md").read_text()
    assert "medforensics train forensic_cnn" in card and "Test metrics" in card
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert set(metrics) == {"plain", "matched"}

    js = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate", str(tiny_manifest.path), "--model", str(out), "--split", "all",
                              "--n-boot", "5", "--json", str(js), "--report", str(tmp_path / "eval.html")])
    assert res.exit_code == 0, res.output
    result = json.loads(js.read_text())
    plain = result["views"]["plain"]
    assert plain["n"] == len(tiny_manifest)
    per_mod = plain["all fakes"]["per_modality"]
    assert {"xray", "endoscopy", "all"} <= set(per_mod)
    assert 0.0 <= per_mod["all"]["auc"]["mean"] <= 1.0
    assert per_mod["all"]["auc"]["lo"] <= per_mod["all"]["auc"]["hi"]
    html = (tmp_path / "eval.html").read_text()
    assert "data:image/png;base64" in html and "per_modality" in html


def test_train_refuses_to_overwrite_a_model(tiny_manifest, tmp_path, tiny_model_dir):
    res = runner.invoke(app, ["train", "forensic_cnn", "--manifest", str(tiny_manifest.path),
                              "--out", str(tiny_model_dir), *TINY])
    assert res.exit_code == 2 and "--force" in res.output


def test_train_reports_an_unreadable_extra_train_manifest(tiny_manifest, tmp_path):
    res = runner.invoke(app, ["train", "forensic_cnn", "--manifest", str(tiny_manifest.path), "--out",
                              str(tmp_path / "model"), "--extra-train", str(tmp_path / "missing.csv"), *TINY])
    assert res.exit_code == 2 and "missing.csv" in res.output
    assert not (tmp_path / "model").exists()


def test_data_index_builds_a_split_manifest(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for rel in ("real/ct/srcA/a.png", "real/ct/srcA/b.png", "fake/ct/ddpm_x/c.png", "fake/ct/ddpm_x/d.png"):
        (tmp_path / "root" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "root" / rel)
    out = tmp_path / "m.csv"
    res = runner.invoke(app, ["data", "index", str(tmp_path / "root"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    from medforensics.data import Manifest

    m = Manifest.read(out)
    assert len(m) == 4 and {r.label for r in m} == {"real", "fake"}
    assert all(r.split in ("train", "test") for r in m)
    assert {r.family for r in m if r.label == "fake"} == {"diffusion"}
    assert all(r.resolve(m.root).exists() for r in m)


def test_demo_runs_on_sample_dicoms(tmp_path, tiny_model_dir):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--out", str(out), "--model", str(tiny_model_dir), "--max-samples", "8"])
    assert res.exit_code == 0, res.output
    payload = json.loads((out / "results.json").read_text())
    results = payload["results"]
    tampered = [r for r in results if "/tampered/" in r["path"]]
    real = [r for r in results if "/real/" in r["path"]]
    assert len(tampered) >= 8 and len(real) >= 8
    broken = [r for r in results if r["path"].endswith("truncated.dcm")]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["score"] is None
    assert all(r["score"] is not None for r in results if r is not broken[0])
    assert (out / "report.html").stat().st_size > 10_000
    # a second run into the same demo folder is allowed; a foreign folder is refused
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    res = runner.invoke(app, ["demo", "--out", str(foreign), "--model", str(tiny_model_dir)])
    assert res.exit_code == 2 and (foreign / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("cmd", [["models"], ["--help"]])
def test_informational_commands(cmd):
    res = runner.invoke(app, cmd)
    assert res.exit_code == 0, res.output
