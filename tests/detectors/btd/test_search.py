"""BTD search mode: window features, fitted real residual statistics, z scores and maps, mode switching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.btd.search import check_window_norm, fit_norm, standardise, window_features

TINY = dict(base_width=8, channel_mult=[1, 2], patch_size=32, stride=16, steps=40, batch_size=8, lr=2e-3,
            t_range=10, progress=False, preprocessing={"size": 64, "channels": 1}, search_window=16,
            search_stride=8)


def smooth(rng: np.random.Generator, size: int = 64) -> torch.Tensor:
    b = gaussian_filter(rng.random((size, size)), 3.0)
    return torch.from_numpy((0.2 + 0.6 * (b - b.min()) / (np.ptp(b) + 1e-8)).astype(np.float32)[None])


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    train = [{"image": smooth(rng), "label": torch.tensor(0.0)} for _ in range(10)]
    val = [{"image": smooth(rng), "label": torch.tensor(0.0)} for _ in range(8)]
    det = create_detector("btd", seed=0, **TINY)
    det.fit(train, val)
    test = torch.stack([smooth(rng) for _ in range(3)])
    return det, [t["image"] for t in train], [v["image"] for v in val], test


def test_window_features_match_brute_force():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.random((2, 20, 24)).astype(np.float32))
    res = torch.from_numpy(rng.random((2, 20, 24)).astype(np.float32)) * 1e-3
    r, m, s, positions, win = window_features(img, res, 8, 6)
    assert win == 8 and positions[0] == (0, 0) and positions[-1] == (12, 16)  # last window aligned with the end
    assert r.shape == m.shape == s.shape == (2, len(positions))
    for k, (y, x) in enumerate(positions):
        w = img[1, y : y + 8, x : x + 8].double()
        assert m[1, k] == pytest.approx(float(w.mean()), abs=1e-9)
        assert s[1, k] == pytest.approx(np.log(float(w.std(unbiased=False)) + 1e-4), abs=1e-6)
        assert r[1, k] == pytest.approx(np.log(float(res[1, y : y + 8, x : x + 8].double().mean()) + 1e-10), abs=1e-6)


def test_fit_norm_bins_and_fallback():
    rng = np.random.default_rng(2)
    m = rng.random(4000)
    s = rng.normal(size=4000)
    r = 3.0 * s + rng.normal(scale=0.5, size=4000)  # the expected residual grows with texture
    norm = fit_norm(r, m, s, bins=8, min_count=30, window=8, stride=4)
    check_window_norm(norm)
    z = standardise(norm, r, m, s)
    assert abs(np.median(z)) < 0.1 and 0.8 < np.subtract(*np.percentile(z, [75, 25])) / 1.349 < 1.3
    # the raw residual follows texture; z does not (binning removes most of that dependence)
    assert np.corrcoef(r, s)[0, 1] > 0.9 and abs(np.corrcoef(z, s)[0, 1]) < 0.5
    sparse = fit_norm(r[:40], m[:40], s[:40], bins=4, min_count=30, window=8, stride=4)
    assert np.allclose(sparse["median"], sparse["global_median"])  # every bin too small: global statistics
    with pytest.raises(ValueError, match="at least 30"):
        fit_norm(r[:10], m[:10], s[:10], min_count=30, window=8, stride=4)


def test_check_window_norm_errors():
    with pytest.raises(ValueError, match="lacks"):
        check_window_norm({"version": 1})
    with pytest.raises(ValueError, match="version"):
        check_window_norm({"version": 99, "window": 8, "stride": 4, "mean_edges": [], "logstd_edges": [],
                           "median": [[0.0]], "spread": [[1.0]]})


def test_z_mode_needs_statistics():
    det = create_detector("btd", seed=0, **{**TINY, "window_score": "z"})
    with pytest.raises(ValueError, match="window_norm"):
        det.score(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="window_score"):
        create_detector("btd", seed=0, **{**TINY, "window_score": "nope"})


def test_fit_window_norm_switches_and_keeps_residual_scores(trained, tmp_path):
    det, train, val, test = trained
    before, tau_before = det.score(test), det.threshold
    summary = det.fit_window_norm(train, val, min_count=10)
    assert det.config["window_score"] == "z" and summary["window_norm_windows"] > 0
    z_scores, z_maps = det.score_with_maps(test)
    assert z_maps.shape == (3, 64, 64) and np.all((z_maps >= 0) & (z_maps <= 1))
    np.testing.assert_allclose(z_maps.max(axis=(1, 2)), z_scores, atol=1e-5)  # the map's maximum is the score
    assert det.calibration["window_score"] == "z" and det.calibration["n_real"] == len(val)
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    np.testing.assert_array_equal(again.score(test), det.score(test))
    assert again.threshold == det.threshold
    again.set_window_score("residual")  # the old scoring, with its own calibration, unchanged
    np.testing.assert_allclose(again.score(test), before, atol=1e-12)
    assert again.threshold == tau_before
    again.set_window_score("z")
    np.testing.assert_array_equal(again.score(test), z_scores)
    both = again.window_analysis(test)
    np.testing.assert_allclose(again.probability(both["z"]), z_scores, atol=1e-6)


def test_artefact_raises_window_z_and_roi(trained):
    det, train, val, test = trained
    if det.config["window_score"] != "z":
        det.fit_window_norm(train, val, min_count=10)
    clean = test[:1].clone()
    bad = clean.clone()
    bad[..., 20:36, 24:40] = torch.from_numpy(np.random.default_rng(3).random((16, 16)).astype(np.float32))
    out = det.window_analysis(torch.cat([clean, bad]))
    assert out["z"][1] > out["z"][0] + 1.0
    k = np.unravel_index(np.argmax(out["z_map"][1]), out["z_map"][1].shape)
    assert 20 - 16 <= k[0] < 36 + 16 and 24 - 16 <= k[1] < 40 + 16  # the peak window overlaps the artefact
    roi = det.raw_scores(torch.cat([clean, bad]), centers=[(28.0, 32.0), (28.0, 32.0)])
    assert roi[1] > roi[0]


def test_median_reference_subtracts_the_image_level(trained):
    det, train, val, test = trained
    if det.config["window_score"] != "z":
        det.fit_window_norm(train, val, min_count=10)
    plain = det.window_analysis(test)
    det.config["z_reference"] = "median"
    try:
        ref = det.window_analysis(test)
        zw = plain["z_windows_plain"]
        np.testing.assert_allclose(ref["z"], (zw - np.median(zw, axis=1, keepdims=True)).max(1), atol=1e-6)
        np.testing.assert_allclose(det.raw_scores(test), ref["z"], atol=1e-5)
        brighter = test * 0.5 + 0.25  # the same images at another contrast: the median moves with them
        assert np.all(np.isfinite(det.raw_scores(brighter, centers=[(32.0, 32.0)] * 3)))
    finally:
        det.config["z_reference"] = "none"
    with pytest.raises(ValueError, match="z_reference"):
        create_detector("btd", seed=0, **{**TINY, "z_reference": "mean"})
