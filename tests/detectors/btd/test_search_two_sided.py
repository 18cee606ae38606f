"""BTD two-sided search mode (``window_score="z2"``): texture-deficit statistics, scores, switching, old configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.btd.search import (
    check_window_norm,
    deficit_features,
    fit_deficit,
    fit_norm,
    standardise_deficit,
    window_features,
)

TINY = dict(base_width=8, channel_mult=[1, 2], patch_size=32, stride=16, steps=40, batch_size=8, lr=2e-3,
            t_range=10, progress=False, preprocessing={"size": 64, "channels": 1}, search_window=16,
            search_stride=8)
DEFICIT = {"sub_window": 8, "sub_stride": 4}


def textured(rng: np.random.Generator, size: int = 64) -> torch.Tensor:
    """Smooth anatomy-like background plus fine texture everywhere (as CT noise)."""
    b = gaussian_filter(rng.random((size, size)), 3.0)
    b = 0.25 + 0.5 * (b - b.min()) / (np.ptp(b) + 1e-8)
    t = gaussian_filter(rng.standard_normal((size, size)), 0.7)
    img = b + 0.04 * t / t.std()
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32)[None])


def smooth_fill(img: torch.Tensor, y0: int, x0: int, size: int) -> torch.Tensor:
    """Replace a size×size square by the bilinear blend of its border (no texture inside): an in-painted hole."""
    out = img.clone()
    a = img[0].double().numpy()
    top, bot = a[y0 - 1, x0 : x0 + size], a[y0 + size, x0 : x0 + size]
    left, right = a[y0 : y0 + size, x0 - 1], a[y0 : y0 + size, x0 + size]
    u = (np.arange(size) + 1) / (size + 1)
    vert = (1 - u)[:, None] * top[None] + u[:, None] * bot[None]
    horiz = (1 - u)[None] * left[:, None] + u[None] * right[:, None]
    out[0, y0 : y0 + size, x0 : x0 + size] = torch.from_numpy(0.5 * (vert + horiz)).float()
    return out


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    train = [{"image": textured(rng), "label": torch.tensor(0.0)} for _ in range(12)]
    val = [{"image": textured(rng), "label": torch.tensor(0.0)} for _ in range(10)]
    det = create_detector("btd", seed=0, **TINY)
    det.fit(train, val)
    tau_residual = det.threshold
    summary = det.fit_window_norm([t["image"] for t in train], [v["image"] for v in val], min_count=10, deficit=DEFICIT)
    test = torch.stack([textured(rng) for _ in range(4)])
    return det, summary, tau_residual, test


def test_deficit_features_match_brute_force():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.random((2, 20, 24)).astype(np.float32))
    res = torch.from_numpy(rng.random((2, 20, 24)).astype(np.float32)) * 1e-3
    _, _, _, positions, win = window_features(img, res, 12, 6)
    q_std = deficit_features(img, res, 12, 6, feature="input_std", sub_window=6, sub_stride=3)
    q_res = deficit_features(img, res, 12, 6, feature="residual", sub_window=6, sub_stride=3)
    assert q_std.shape == q_res.shape == (2, len(positions))
    for k, (y, x) in enumerate(positions):
        stds, means = [], []
        for oy in range(0, 7, 3):
            for ox in range(0, 7, 3):
                stds.append(float(img[1, y + oy : y + oy + 6, x + ox : x + ox + 6].double().std(unbiased=False)))
                means.append(float(res[1, y + oy : y + oy + 6, x + ox : x + ox + 6].double().mean()))
        assert q_std[1, k] == pytest.approx(np.log(min(stds) + 1e-4), abs=1e-6)
        assert q_res[1, k] == pytest.approx(np.log(min(means) + 1e-10), abs=1e-6)
    with pytest.raises(ValueError, match="feature"):
        deficit_features(img, res, 12, 6, feature="entropy")


def test_fit_deficit_standardises_and_is_checked():
    rng = np.random.default_rng(2)
    m, s = rng.random(4000), rng.normal(size=4000)
    r = 3.0 * s + rng.normal(scale=0.5, size=4000)
    q = s - np.abs(rng.normal(scale=0.3, size=4000))  # the smallest sub-window texture is below the window's
    norm = fit_norm(r, m, s, bins=8, min_count=30, window=8, stride=4)
    for binning, shape in (("mean×logstd", (8, 8)), ("mean", (8, 1))):
        norm["deficit"] = fit_deficit(norm, q, m, s, feature="input_std", sub_window=4, sub_stride=2, binning=binning)
        check_window_norm(norm)
        assert np.asarray(norm["deficit"]["median"]).shape == shape
        zq = standardise_deficit(norm, q, m, s)
        assert abs(np.median(zq)) < 0.15
        # a window with far less local texture than real windows of its bin gets a large positive zq
        assert standardise_deficit(norm, q[:1] - 3.0, m[:1], s[:1])[0] > zq[0] + 2.0
    norm["deficit"]["median"] = [[0.0]]
    with pytest.raises(ValueError, match="deficit"):
        check_window_norm(norm)
    with pytest.raises(ValueError, match="binning"):
        fit_deficit(norm, q, m, s, binning="texture")


def test_fit_window_norm_calibrates_z2_and_switches(fitted, tmp_path):
    det, summary, tau_residual, test = fitted
    norm = det.config["window_norm"]
    assert det.config["window_score"] == "z"  # as before two-sided mode existed
    assert norm["deficit"]["sub_window"] == 8 and set(norm["calibration"]) == {"residual", "z", "z2"}
    assert {"z2_center", "z2_scale"} <= set(norm) and summary["threshold_z2"] == norm["calibration"]["z2"]["threshold"]
    z_scores = det.score(test)
    det.set_window_score("z2")
    z2_scores, z2_maps = det.score_with_maps(test)
    assert det.calibration["window_score"] == "z2" and det.threshold == summary["threshold_z2"]
    np.testing.assert_allclose(z2_maps.max(axis=(1, 2)), z2_scores, atol=1e-5)  # the map's maximum is the score
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.config["window_score"] == "z2"
    np.testing.assert_array_equal(again.score(test), z2_scores)
    both = again.window_analysis(test)
    np.testing.assert_allclose(again.probability(both["z2"]), z2_scores, atol=1e-6)
    assert np.all(both["z2_windows_plain"] >= both["z_windows_plain"])  # max(z, zq) per window
    again.set_window_score("z")
    np.testing.assert_array_equal(again.score(test), z_scores)  # z is unchanged by the deficit statistics
    again.set_window_score("residual")
    assert again.threshold == tau_residual
    det.set_window_score("z")


def test_smooth_fill_is_seen_by_z2_not_by_z(fitted):
    """An in-painted smooth square in a textured image: z2 (two-sided) flags it far more than z does; on the
    untouched image the two scores agree that it is real."""
    det, _, _, test = fitted
    clean = test[:1]
    filled = smooth_fill(clean[0], 22, 26, 14)[None]
    det.set_window_score("z")
    try:
        z_clean, z_fill = det.score(torch.cat([clean, filled]))
        tau_z = det.threshold
        det.set_window_score("z2")
        z2_clean, z2_fill = det.score(torch.cat([clean, filled]))
        tau_z2 = det.threshold
        out = det.window_analysis(torch.cat([clean, filled]))
        roi = det.raw_scores(torch.cat([clean, filled]), centers=[(29.0, 33.0)] * 2)
    finally:
        det.set_window_score("z")
    assert z2_fill > z_fill + 0.2  # on the probability scale, each score with its own calibration
    assert z2_fill > tau_z2 and z2_clean < tau_z2 and z_clean < tau_z
    assert z2_fill - z2_clean > z_fill - z_clean + 0.2
    # the peak two-sided window overlaps the filled square; the ROI centred on it scores it above the clean one
    k = np.unravel_index(np.argmax(out["z2_map"][1]), out["z2_map"][1].shape)
    assert 22 - 16 <= k[0] < 36 + 16 and 26 - 16 <= k[1] < 40 + 16
    assert roi[1] > roi[0] + 1.0


def test_old_window_norm_without_deficit_still_loads(fitted, tmp_path):
    det, _, _, test = fitted
    det.save(tmp_path / "old")
    cfg_path = tmp_path / "old" / "config.json"
    import json

    cfg = json.loads(cfg_path.read_text())
    for key in ("deficit", "z2_center", "z2_scale"):
        cfg["config"]["window_norm"].pop(key)
    cfg["config"]["window_norm"]["calibration"].pop("z2")
    cfg_path.write_text(json.dumps(cfg))
    old = load_detector(tmp_path / "old")  # a config written before two-sided mode: reads, z unchanged
    np.testing.assert_array_equal(old.score(test), det.score(test))
    with pytest.raises(ValueError, match="texture-deficit"):
        old.set_window_score("z2")
    old.config["window_score"] = "z2"
    with pytest.raises(ValueError, match="deficit"):
        old.score(test)
    with pytest.raises(ValueError, match="window_score"):
        create_detector("btd", seed=0, **{**TINY, "window_score": "z3"})
