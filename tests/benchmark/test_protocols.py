"""Every protocol end to end on the toy benchmark, and the robustness perturbations."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from bench_toy_data import TINY_FCNN, bank_detector_registered

from medforensics.benchmark.config import RunConfig
from medforensics.benchmark.protocols import AXES, PERTURBATIONS, dicom_j2k_roundtrip, perturbation_axis
from medforensics.benchmark.runner import BenchmarkRunner

PERTS = ["jpeg50", "j2k20", "quant6"]


@pytest.fixture(scope="module")
def full_run(toy_benchmark, tmp_path_factory):
    out = tmp_path_factory.mktemp("protocols") / "run"
    with bank_detector_registered() as bank:
        cfg = RunConfig.from_dict({
            "name": "toy-protocols", "benchmark": str(toy_benchmark.manifest_path), "n_boot": 5,
            "detectors": [{"detector": "forensic_cnn", "config": TINY_FCNN},
                          {"detector": bank, "label": "bank", "config": {"preprocessing": {"size": 32}}}],
            "protocols": {"logo_holdouts": ["ddpm-xray"], "few_shot_ks": [0, 2], "perturbations": PERTS,
                          "ablations": [{"detector": bank, "label": "bank-5steps",
                                         "config": {"steps": 5, "preprocessing": {"size": 32}}}]},
        })
        summary = BenchmarkRunner(cfg, out, show_progress=False, log=lambda m: None).run()
    return out, summary


def test_every_protocol_produces_results(full_run):
    out, summary = full_run
    assert summary["units_failed"] == []
    units = {p.relative_to(out / "units").with_suffix("").as_posix() for p in (out / "units").rglob("*.json")}
    for det in ("forensic_cnn", "bank"):
        assert f"in_distribution/{det}" in units and f"published/{det}" in units
        assert f"logo/{det}/ddpm-xray" in units
        assert {f"lofo/{det}/{fam}" for fam in ("diffusion", "gan", "vae")} <= units
        assert {f"robustness/{det}/{p}" for p in PERTS} <= units
    assert "few_shot/bank/ddpm-xray" in units and not any(u.startswith("few_shot/forensic_cnn") for u in units)
    assert "ablations/bank-5steps" in units
    # in-distribution + published share one model (same training rows → same config hash)
    ind = json.loads((out / "units/in_distribution/forensic_cnn.json").read_text())
    pub = json.loads((out / "units/published/forensic_cnn.json").read_text())
    assert ind["model"] == pub["model"] and summary["models_cached"] + summary["models_trained"] >= 1
    assert set(pub["test_sets"]) == {"plain reals", "history-matched reals"}


def test_outputs_csv_json_markdown_html_plots(full_run):
    out, summary = full_run
    res = out / "results"
    with open(res / "records.csv") as fh:
        records = list(csv.DictReader(fh))
    assert {r["protocol"] for r in records} == {"in_distribution", "logo", "lofo", "published", "few_shot",
                                                  "robustness", "ablations"}
    assert {r["view"] for r in records} == {"plain", "matched"}
    assert len(json.loads((res / "records.json").read_text())) == len(records)
    md = (res / "tables.md").read_text()
    assert "| Detector | endoscopy | xray | Mean |" in md  # Table 2 layout: modalities + Mean
    assert "forensic_cnn · plain" in md and "forensic_cnn · matched" in md
    for section in ("Leave-one-generator-out", "Leave-one-family-out", "Factory → published generators", "Few-shot",
                    "Robustness", "Ablations", "Format-statistics check"):
        assert section in md
    # published generators: one row per generator with its test-fake count, one table per real set
    per_gen = md.split("AUC [95% CI] per generator, vs plain reals")[1].split("\n## ")[0]
    assert "(n=4)" in per_gen and "| mean over generators |" in per_gen and "mean, anatomy-matched" in per_gen
    few = [line for line in per_gen.splitlines() if "(n=4)" in line]  # too few fakes: AUC without an interval
    assert few and all("AUC" in line and "[" not in line for line in few)
    html = (res / "report.html").read_text()
    assert "<table" in html and html.count("data:image/png;base64") >= 5
    plots = {p.name for p in (res / "plots").glob("*.png")}
    assert {"roc_in_distribution.png", "pr_in_distribution.png", "roc_published.png", "few_shot_auc.png",
            "degradation_jpeg_auc.png", "degradation_j2k_auc.png", "degradation_quant_ap.png"} <= plots
    assert list((res / "tables").glob("*.csv"))


def test_metric_values_are_consistent(full_run):
    out, _ = full_run
    ind = json.loads((out / "units/in_distribution/bank.json").read_text())
    for view in ("plain", "matched"):
        res = ind["views"][view]
        assert set(res["per_modality"]) == {"xray", "endoscopy"}
        auc = res["all"]["auc"]
        assert 0 <= auc["lo"] <= auc["hi"] <= 1 and 0 <= auc["point"] <= 1
        labels = [s[1] for s in res["scores"]]
        assert res["all"]["n_real"] == labels.count(0) and res["all"]["n_fake"] == labels.count(1)
        per_gen = res["per_generator"]  # each generator's fakes vs the reals of its modality
        assert sum(m["n_fake"] for m in per_gen.values()) == res["all"]["n_fake"]
        assert all(0 < m["n_real"] <= res["all"]["n_real"] for m in per_gen.values())
    plain = [s[2] for s in ind["views"]["plain"]["scores"]]
    matched = [s[2] for s in ind["views"]["matched"]["scores"]]
    assert plain != matched  # the matched view really changes the inputs
    fs = json.loads((out / "units/few_shot/bank/ddpm-xray.json").read_text())
    assert [fs["curve"][k]["k_used"] for k in ("0", "2")] == [0, 2]
    s0 = fs["curve"]["0"]["views"]["plain"]["scores"]
    s2 = fs["curve"]["2"]["views"]["plain"]["scores"]
    assert [a[2] for a in s0] != [a[2] for a in s2]  # the bank changed the scores


def test_perturbations_keep_shape_range_and_are_deterministic():
    rng = np.random.default_rng(0)
    grey = rng.random((32, 32)).astype(np.float32)
    rgb = rng.random((32, 32, 3)).astype(np.float32)
    for name, fn in PERTURBATIONS.items():
        for img in (grey, rgb):
            out = fn(img)
            assert out.shape == img.shape and out.dtype == np.float32, name
            assert 0 <= out.min() and out.max() <= 1, name
            np.testing.assert_array_equal(out, fn(img))
    assert all(perturbation_axis(n) is not None for _, pts in AXES.values() for n, _ in pts)


def test_dicom_j2k_roundtrip_is_lossy_and_graded():
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(np.random.default_rng(1).random((64, 64)), 1.5).astype(np.float32)
    err = [np.abs(dicom_j2k_roundtrip(img, r) - img).mean() for r in (10, 50)]
    assert 0 < err[0] < err[1] < 0.1
