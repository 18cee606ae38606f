"""Reconstruction baselines: each learns the real images, flags an obviously altered one, maps, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.reconstruction import EmpiricalCDF, UNetAE, region_mean

SIZE = 32
TINY = {
    "ae": {"width": 8, "depth": 3, "latent_channels": 8},
    "unet_ae": {"width": 8, "depth": 3, "latent_channels": 8, "skip_levels": 1, "skip_dropout": 0.5},
    "inpaint_ae": {"width": 8, "depth": 3, "latent_channels": 8, "score_region": "center", "center_patch": 16},
    "oc_vae": {"width": 8, "depth": 3, "latent_dim": 16},
    "ddpm_ood": {"base_width": 8, "levels": 2, "t_values": [100, 250], "ddim_steps": 4, "lr": 2e-3},
}


def _texture(rng: np.random.Generator) -> np.ndarray:
    base = gaussian_filter(rng.random((SIZE, SIZE)), 2.0)
    base = (base - base.min()) / (np.ptp(base) + 1e-8)
    return (0.25 + 0.5 * base).astype(np.float32)[None]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train = [{"image": torch.from_numpy(_texture(rng)), "label": torch.tensor(0.0)} for _ in range(12)]
    val = [{"image": torch.from_numpy(_texture(rng)), "label": torch.tensor(float(i % 2))} for i in range(8)]
    clean = _texture(rng)
    altered = clean.copy()
    altered[:, 8:24, 8:24] = rng.random((16, 16)) > 0.5  # a salt-and-pepper square: nothing like the reals
    return train, val, np.stack([clean, altered])


@pytest.fixture(scope="module")
def fitted(data):
    train, val, _ = data
    out = {}
    for name, cfg in TINY.items():
        det = create_detector(name, seed=0, preprocessing={"size": SIZE, "channels": 1}, steps=60, batch_size=8,
                              progress=False, **cfg)
        det.fit(train, val)
        out[name] = det
    return out


@pytest.mark.parametrize("name", sorted(TINY))
def test_altered_image_scores_higher_with_a_map(name, fitted, data):
    det, (_, _, batch) = fitted[name], data
    raw = det.raw_scores(batch)
    assert raw[1] > raw[0]
    probs = det.score(batch)
    assert probs[1] > probs[0] and np.all((probs >= 0) & (probs <= 1))
    maps = det.anomaly_map(batch)
    assert maps.shape == (2, SIZE, SIZE) and np.all((maps >= 0) & (maps <= 1))
    # the evidence sits in the altered square
    assert maps[1, 8:24, 8:24].mean() > maps[1].mean()
    assert not det.supervised and det.preprocessing.channels == 1


@pytest.mark.parametrize("name", sorted(TINY))
def test_deterministic_and_save_load(name, fitted, data, tmp_path):
    det, (_, _, batch) = fitted[name], data
    scores = det.score(batch)
    np.testing.assert_array_equal(det.score(batch), scores)
    again = load_detector(det.save(tmp_path / name))
    np.testing.assert_array_equal(again.score(batch), scores)
    np.testing.assert_array_equal(again.anomaly_map(batch), det.anomaly_map(batch))
    assert again.threshold == det.threshold and again.calibration["method"] == "fpr_on_real_val"


def test_threshold_hits_target_fpr_on_validation_reals(data):
    train, _, _ = data
    rng = np.random.default_rng(1)
    val = [{"image": torch.from_numpy(_texture(rng)), "label": torch.tensor(0.0)} for _ in range(20)]
    det = create_detector("ae", preprocessing={"size": SIZE, "channels": 1}, steps=5, progress=False, target_fpr=0.1,
                          **TINY["ae"])
    det.fit(train, val)
    val_scores = det.score(np.stack([v["image"].numpy() for v in val]))
    assert np.mean(val_scores >= det.threshold) == pytest.approx(0.1)
    assert det.calibration["target_fpr"] == 0.1


def test_rgb_input_is_converted_and_odd_sizes_are_padded(fitted):
    det = fitted["ae"]
    rgb = np.random.default_rng(2).random((2, 3, 30, 27)).astype(np.float32)
    assert det.score(rgb).shape == (2,)
    assert det.anomaly_map(rgb).shape == (2, 30, 27)


def test_empirical_cdf_is_strictly_monotone_without_ties_beyond_the_reals():
    cdf = EmpiricalCDF([1.0, 2.0, 3.0, 4.0])
    x = np.array([1e-6, 0.5, 1.0, 2.5, 4.0, 10.0, 1e3, 1e6])
    p = cdf(x)
    assert np.all(np.diff(p) > 0) and p[0] > 0 and p[-1] < 1
    assert cdf([2.0])[0] == pytest.approx(0.4)


def test_unet_ae_skips_only_at_deep_levels():
    net = UNetAE(1, 1, width=4, depth=4, latent_channels=4, skip_levels=2)
    assert [net._has_skip(level) for level in range(4)] == [False, True, True, False]
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="skip_levels"):
        UNetAE(1, 1, depth=3, skip_levels=3)


def test_region_mean_and_bad_options():
    maps = torch.zeros(1, 8, 8)
    maps[0, 2:6, 2:6] = 1
    assert region_mean(maps, "center", 4).item() == 1.0
    assert region_mean(maps, "image", 4).item() == 0.25
    with pytest.raises(TypeError, match="unknown ae options"):
        create_detector("ae", no_such_option=1)
    with pytest.raises(ValueError, match="score_region"):
        create_detector("ae", score_region="middle")
    with pytest.raises(ValueError, match="t_values"):
        create_detector("ddpm_ood", t_values=[0])


def test_training_needs_real_images():
    det = create_detector("ae", preprocessing={"size": SIZE, "channels": 1}, steps=1, progress=False, **TINY["ae"])
    fakes = [{"image": torch.rand(1, SIZE, SIZE), "label": torch.tensor(1.0)}]
    with pytest.raises(ValueError, match="no real images"):
        det.fit(fakes)
