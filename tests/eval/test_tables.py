"""Paper-style tables and per-group / per-generator evaluation."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from medforensics.eval import (
    bootstrap_metrics,
    metric_table,
    per_generator_metrics,
    per_group_metrics,
    render_rich_table,
)

ROWS = {
    "DetA": {"CT": {"acc": 0.973, "ap": 0.991}, "MRI": {"acc": 0.90, "ap": 0.95}},
    "DetB": {"CT": {"acc": 0.5, "ap": float("nan")}},
}


def test_markdown_acc_ap_cells_and_mean() -> None:
    t = metric_table(ROWS)
    md = t.markdown
    lines = md.strip().splitlines()
    assert lines[0] == "| Detector | CT | MRI | Mean |"
    assert lines[1].startswith("|---|")
    assert "| DetA | 97.3/99.1 | 90.0/95.0 | 93.7/97.0 |" in md  # (97.3+90)/2 = 93.65 -> 93.7 (rounding of float)
    assert "| DetB | 50.0/- | - | 50.0/- |" in md


def test_records_long_format() -> None:
    t = metric_table(ROWS)
    recs = {(r["detector"], r["column"]): r for r in t.records}
    assert set(recs) == {("DetA", "CT"), ("DetA", "MRI"), ("DetA", "Mean"), ("DetB", "CT"), ("DetB", "Mean")}
    assert recs[("DetA", "Mean")]["acc"] == pytest.approx(0.9365)
    assert recs[("DetA", "MRI")]["ap"] == 0.95


def test_csv_and_json(tmp_path) -> None:
    t = metric_table(ROWS)
    with t.to_csv(tmp_path / "t.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and rows[0]["detector"] == "DetA" and float(rows[0]["acc"]) == 0.973
    data = json.loads(t.to_json(tmp_path / "t.json").read_text())
    assert data[3]["ap"] is None  # NaN -> null


def test_interval_cells_from_bootstrap() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200), np.ones(200)]
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    boot = bootstrap_metrics(labels, scores, n_iter=50)
    rows = {"Det": {"CT": boot}}
    s = boot["auc"]
    expected = f"AUC {s['point']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]"
    t = metric_table(rows, intervals="auc")
    assert expected in t.markdown
    assert f"| AUC {s['point']:.2f} |" in t.markdown  # Mean column: no interval
    # default layout still works with bootstrap dicts (point estimates)
    acc_ap = f"{100 * boot['acc']['point']:.1f}/{100 * boot['ap']['point']:.1f}"
    assert acc_ap in metric_table(rows).markdown
    rec = metric_table(rows).records[0]
    assert rec["auc_lo"] == s["lo"] and rec["auc_hi"] == s["hi"] and rec["auc"] == s["point"]


def test_interval_format_exact() -> None:
    rows = {"D": {"X": {"auc": {"mean": 0.931, "lo": 0.901, "hi": 0.962, "std": 0.01, "point": 0.93}}}}
    assert "AUC 0.93 [0.90, 0.96]" in metric_table(rows, intervals="auc").markdown


def test_rich_table() -> None:
    table = render_rich_table(metric_table(ROWS), title="Results")
    assert isinstance(table, Table)
    assert [c.header for c in table.columns] == ["Detector", "CT", "MRI", "Mean"]
    console = Console(record=True, width=120)
    console.print(table)
    assert "97.3/99.1" in console.export_text()
    assert isinstance(render_rich_table(ROWS), Table)


def _dataset():
    # CT: reals low scores; MRI: reals high-ish scores. gen_ct makes CT fakes, gen_mri MRI fakes.
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.4, 0.5, 0.9, 0.95])
    modalities = np.array(["ct", "ct", "ct", "mri", "mri", "mri", "ct", "ct", "mri", "mri"])
    generators = np.array([None, None, None, None, None, None, "gen_ct", "gen_ct", "gen_mri", "gen_mri"], dtype=object)
    return labels, scores, modalities, generators


def test_per_group_metrics() -> None:
    labels, scores, modalities, _ = _dataset()
    res = per_group_metrics(labels, scores, modalities, threshold=0.5)
    assert list(res) == ["ct", "mri", "all"]
    assert res["ct"]["n_real"] == 3 and res["ct"]["n_fake"] == 2
    assert res["ct"]["auc"] == 1.0  # 0.4, 0.5 > 0.1, 0.2, 0.3
    assert res["mri"]["auc"] == 1.0
    assert res["all"]["n_real"] == 6 and res["all"]["auc"] < 1.0
    boot = per_group_metrics(labels, scores, modalities, bootstrap=True, n_iter=10, seed=0)
    assert set(boot["ct"]) == {"acc", "ap", "auc", "eer"} and boot["ct"]["auc"]["point"] == 1.0


def test_per_generator_pairs_fakes_with_same_modality_reals() -> None:
    labels, scores, modalities, generators = _dataset()
    res = per_generator_metrics(labels, scores, modalities, generators, threshold=0.5)
    assert list(res) == ["gen_ct", "gen_mri", "all"]
    ct = res["gen_ct"]
    assert (ct["n_real"], ct["n_fake"]) == (3, 2)  # only CT reals
    assert ct["auc"] == 1.0  # against MRI reals (0.6-0.8) it would not be
    assert ct["acc"] == pytest.approx(4 / 5)  # 0.4 missed at 0.5
    assert (res["gen_mri"]["n_real"], res["gen_mri"]["n_fake"]) == (3, 2)
    assert res["all"]["n_real"] == 6 and res["all"]["n_fake"] == 4


def test_per_generator_multi_modality_generator() -> None:
    labels, scores, modalities, generators = _dataset()
    generators[8] = "gen_ct"  # gen_ct now also has an MRI fake -> evaluated against CT + MRI reals
    res = per_generator_metrics(labels, scores, modalities, generators)
    assert (res["gen_ct"]["n_real"], res["gen_ct"]["n_fake"]) == (6, 3)
    assert (res["gen_mri"]["n_real"], res["gen_mri"]["n_fake"]) == (3, 1)


def test_group_validation() -> None:
    labels, scores, modalities, _ = _dataset()
    with pytest.raises(ValueError, match="group_values"):
        per_group_metrics(labels, scores, modalities[:-1])
    with pytest.raises(ValueError, match="reserved"):
        per_group_metrics(labels, scores, np.array(["all"] * labels.size))
    # a one-class group is evaluated, ranking metrics NaN
    res = per_group_metrics(labels, scores, np.array(["a"] * 6 + ["b"] * 4))
    assert math.isnan(res["b"]["auc"]) and res["b"]["fake_acc"] == 0.75
