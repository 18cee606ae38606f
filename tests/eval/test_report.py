"""HTML scan and evaluation reports."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from medforensics.eval import metric_table, overlay_heatmap, plot_roc, write_eval_report, write_scan_report
from medforensics.results import ScanResult

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _results() -> list[ScanResult]:
    yy, xx = np.mgrid[0:256, 0:300]
    grey = (xx / 299.0).astype(np.float32)
    rgb = np.stack([grey, 1 - grey, np.full_like(grey, 0.5)], axis=2)
    heat = np.exp(-((yy - 128) ** 2 + (xx - 150) ** 2) / 2000.0)
    return [
        ScanResult(path="scans/<script>.png", modality="xray", score=0.91, threshold=0.5, verdict="fake",
                   model="tiny", thumbnail=grey, heatmap=heat[::4, ::4]),
        ScanResult(path="scans/ok & fine.dcm", modality="ct", score=0.12, threshold=0.5, verdict="real",
                   model="tiny", thumbnail=rgb, frames=[0.1, 0.12, 0.05]),
        ScanResult(path="scans/broken.dcm", error="UnreadableImageError: <b>truncated</b> file", model="tiny"),
    ]


def test_scan_report(tmp_path) -> None:
    out = write_scan_report(_results(), tmp_path / "rep" / "report.html", title="Scan & check",
                            model_info={"name": "tiny-cnn", "weights": "w.safetensors"}, threshold=0.5)
    html = out.read_text(encoding="utf-8")
    # user text escaped
    assert "<script>" not in html and "&lt;script&gt;.png" in html
    assert "<b>truncated</b>" not in html and "&lt;b&gt;truncated&lt;/b&gt;" in html
    assert "ok &amp; fine.dcm" in html and "Scan &amp; check" in html
    # images: thumbnail + overlay for row 1, thumbnail for row 2, none for the error row
    uris = DATA_URI.findall(html)
    assert len(uris) == 3
    for uri in uris:
        with Image.open(io.BytesIO(base64.b64decode(uri))) as im:
            assert im.format == "PNG" and max(im.size) == 128 and im.mode == "RGB"
    # self-contained
    assert "http://" not in html and "https://" not in html and "<link" not in html
    # summary and rows
    assert re.search(r"Files scanned</td><td class=\"num\">3<", html)
    assert re.search(r"Flagged fake</td><td class=\"num\">1<", html)
    assert re.search(r"Errors</td><td class=\"num\">1<", html)
    assert "tiny-cnn" in html and "w.safetensors" in html
    assert 'class="badge fake"' in html and 'class="badge real"' in html and 'class="badge error"' in html
    assert "3 frames, max 0.120 (#1)" in html and "0.100, 0.120, 0.050" in html
    assert "0.9100" in html


def test_scan_report_with_calibration_dict(tmp_path) -> None:
    cal = {"threshold": 0.73, "target_fpr": 0.05, "achieved_fpr": 0.049, "n_real": 1000, "method": "fpr"}
    html = write_scan_report(_results()[1:], tmp_path / "r.html", threshold=cal).read_text()
    assert "0.73" in html and "5.00%" in html and "1000 real validation images" in html


def test_scan_report_verdict_from_threshold_and_bad_arrays(tmp_path) -> None:
    results = [
        ScanResult(path="a.png", score=0.8, thumbnail=np.zeros((3, 3, 7))),  # bad shape: no image, no crash
        ScanResult(path="b.png", score=0.2, heatmap=np.ones((40, 20))),  # heat map only
    ]
    html = write_scan_report(results, tmp_path / "r.html", threshold=0.5).read_text()
    assert 'class="badge fake"' in html and 'class="badge real"' in html
    assert len(DATA_URI.findall(html)) == 1


def test_overlay_heatmap() -> None:
    img = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    heat = np.zeros((12, 16))
    heat[6:, 8:] = 1.0
    out = overlay_heatmap(img, heat, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    grey = np.round(img * 255)
    # cold corner: inferno(0) is near black -> about half the grey value
    assert np.allclose(out[0, 0], grey[0, 0] / 2, atol=3)
    # hot corner: inferno(1) is pale yellow -> red channel well above half of grey
    assert out[-1, -1, 0] > grey[-1, -1] / 2 + 100
    # alpha 0 returns the image itself (grey -> RGB)
    same = overlay_heatmap((img * 255).astype(np.uint8), heat, alpha=0.0)
    assert np.array_equal(same[..., 0], (img * 255).astype(np.uint8)) and np.array_equal(same[..., 0], same[..., 2])
    with pytest.raises(ValueError):
        overlay_heatmap(img, np.zeros((2, 2, 2, 2)))


def test_eval_report(tmp_path) -> None:
    labels = np.r_[np.zeros(20), np.ones(20)]
    scores = np.r_[np.linspace(0, 0.6, 20), np.linspace(0.4, 1, 20)]
    roc = plot_roc({"det": (labels, scores)}, tmp_path / "roc.png")
    table = metric_table({"Det<A>": {"CT": {"acc": 0.973, "ap": 0.991}}})
    out = write_eval_report(
        {"Per modality": table, "Markdown": table.markdown, "Records": table.records, "Note": "plain <text>"},
        {"ROC curves": roc},
        tmp_path / "eval.html",
        info={"dataset": "synthetic"},
    )
    html = out.read_text()
    assert html.count("97.3/99.1") == 4  # CT and Mean cells, in the MetricTable and the parsed Markdown
    assert "Det&lt;A&gt;" in html and "Det<A>" not in html
    assert "<pre>plain &lt;text&gt;</pre>" in html
    assert "<td>0.9730</td>" not in html and ">0.9730<" in html  # records table, numbers formatted
    assert len(DATA_URI.findall(html)) == 1 and "ROC curves" in html
    assert "synthetic" in html
    # a plain list of plot paths also works
    assert "roc" in write_eval_report(table, [roc], tmp_path / "e2.html").read_text()
