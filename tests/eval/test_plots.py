"""ROC / PR / histogram PNGs."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medforensics.eval import plot_pr, plot_roc, plot_score_histogram

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curves():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(100), np.ones(100)]
    return {
        "good": (labels, np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)),
        "chance": (labels, rng.random(200)),
        "one-class": (np.zeros(5), rng.random(5)),  # skipped, no error
    }


def test_plots_write_pngs(tmp_path) -> None:
    curves = _curves()
    for fn, name in ((plot_roc, "roc.png"), (plot_pr, "sub/pr.png")):
        out = fn(curves, tmp_path / name)
        assert out.exists() and out.read_bytes()[:8] == PNG_MAGIC
        with Image.open(out) as im:
            assert im.size[0] > 200 and im.size[1] > 200
    out = plot_roc(curves, tmp_path / "roc_log.png", log_fpr=True)
    assert out.read_bytes()[:8] == PNG_MAGIC
    labels, scores = curves["good"]
    out = plot_score_histogram(labels, scores, tmp_path / "hist.png", threshold=0.5)
    assert out.read_bytes()[:8] == PNG_MAGIC
