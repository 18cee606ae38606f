"""Plain vs processing-matched view for the unsupervised reconstruction detectors.

The quick benchmark showed ae / unet_ae / inpaint_ae / oc_vae / ddpm_ood with identical AUCs in
both views. Cause: not a bug — every per-image score does change, but the matched chain (0.5×
bicubic round trip + JPEG q85) moves reconstruction errors by ~0.3 % while real and fake errors
differ several-fold, so no real–fake pair swaps order and AUC/EER (8 reals × 8 fakes per
modality) are unchanged. These tests pin the parts that would make it a bug: the matched view
reaches these grey-scale detectors, nothing reuses plain-view scores, and the probability map
keeps the ranking of the raw score (no saturation beyond the calibration range).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medforensics.benchmark.protocol import ViewTransform, score_manifest
from medforensics.benchmark.protocols import in_distribution_rows, score_rows
from medforensics.data import ImageDataset
from medforensics.data.processing import MatchedProcessing
from medforensics.detectors import create_detector
from medforensics.detectors.reconstruction.detectors import EmpiricalCDF

TINY = Path(__file__).resolve().parents[1] / "detectors" / "tiny"
RECONSTRUCTION = ("ae", "unet_ae", "inpaint_ae", "oc_vae", "ddpm_ood")


def _tiny(name: str):
    cfg = json.loads((TINY / f"{name}.json").read_text())
    cfg["preprocessing"] = {"size": 64, "channels": 1}
    if name == "inpaint_ae":
        cfg["center_patch"] = 16
    return create_detector(name, seed=0, **cfg)


@pytest.mark.parametrize("name", RECONSTRUCTION)
def test_matched_view_rescores_reconstruction_detectors(name: str, toy_benchmark) -> None:
    m = toy_benchmark.manifest
    train, test = in_distribution_rows(m, "train"), in_distribution_rows(m, "test")
    det = _tiny(name)
    det.fit(ImageDataset(train, det.preprocessing, seed=0), None)
    plain = score_manifest(det, test, view="plain", show_progress=False)
    matched = score_manifest(det, test, view="matched", show_progress=False)
    assert [r.path for r in plain.rows] == [r.path for r in matched.rows] and len(plain.rows) >= 8
    np.testing.assert_array_equal(plain.labels, matched.labels)
    # the matched chain reaches the (grey-scale) model: scores move for (nearly) every image
    assert np.mean(plain.scores != matched.scores) > 0.8, name
    # ...and they are exactly the scores of the matched-view pixels (nothing cached from the plain view)
    pre = det.preprocessing
    ds = ImageDataset(test, pre, transform=ViewTransform(pre.size, pre.fit, "matched", MatchedProcessing()), seed=0)
    direct = det.score(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    np.testing.assert_allclose(matched.scores, direct, rtol=0, atol=1e-6)
    # the runner's scoring path (score_rows) gives the same numbers for both views
    np.testing.assert_array_equal(score_rows(det, test, view="matched").scores, matched.scores)
    np.testing.assert_array_equal(score_rows(det, test, view="plain").scores, plain.scores)


def test_probability_keeps_ranking_beyond_the_calibration_range() -> None:
    ref = np.linspace(0.01, 0.05, 20)  # raw scores of the real validation images
    cdf = EmpiricalCDF(ref, log=True)
    above = np.array([0.0500001, 0.06, 0.1, 1.0, 10.0, 1e3, 1e6])
    below = np.array([1e-9, 1e-6, 1e-4, 1e-3, 0.0099999])
    p_above, p_below = cdf(above), cdf(below)
    assert np.all(np.diff(p_above) > 0) and p_above.max() < 1.0 and p_above.min() > cdf([0.05])[0]
    assert np.all(np.diff(p_below) > 0) and p_below.min() > 0.0 and p_below.max() < cdf([0.01])[0]
    # so AUC of probabilities == AUC of raw scores, also when every fake is beyond every real
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    raw = np.r_[rng.uniform(0.01, 0.05, 30), rng.uniform(0.05, 5.0, 30)]
    y = np.r_[np.zeros(30), np.ones(30)]
    flip = rng.permutation(60)[:10]
    y[flip] = 1 - y[flip]
    assert roc_auc_score(y, cdf(raw)) == roc_auc_score(y, raw)
    assert len(np.unique(cdf(raw))) == len(np.unique(raw))


def test_reconstruction_detector_probability_is_strictly_monotone_after_fit(toy_benchmark) -> None:
    m = toy_benchmark.manifest
    det = _tiny("ae")
    det.fit(ImageDataset(in_distribution_rows(m, "train"), det.preprocessing, seed=0), None)
    ref = det.calibrator.reference
    raw = np.geomspace(ref.min() / 100, ref.max() * 100, 200)
    assert np.all(np.diff(det.probability(raw)) > 0)
