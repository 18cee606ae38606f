"""The model shipped inside the package: complete, calibrated, documented and reproducible."""

from __future__ import annotations

import json

import numpy as np

from medforensics.detectors import load_detector, pretrained_dir


def test_shipped_default_model_is_complete_and_reproducible():
    folder = pretrained_dir("default")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["detector"] == "forensic_cnn"
    assert cfg["calibration"]["method"] == "fpr_on_real_val"
    assert cfg["calibration"]["achieved_fpr"] <= cfg["calibration"]["target_fpr"]
    assert (folder / "weights.safetensors").stat().st_size < 10 * 2**20  # a few MB
    card = (folder / "MODEL_CARD.md").read_text()
    for needle in ("medforensics train forensic_cnn", "Test metrics", "matched",
                   "non-commercial"):
        assert needle in card, needle
    det = load_detector("default")
    rng = np.random.default_rng(0)
    batch = rng.random((3, 3, 256, 256), dtype=np.float32)
    a, b = det.score(batch), load_detector(folder).score(batch)
    np.testing.assert_array_equal(a, b)
    assert np.all((a >= 0) & (a <= 1))
