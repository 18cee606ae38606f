"""zed: the coder's costs, causality, and its surprise on an image from another process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.zed.model import MaskedConv2d, ZedNet, coding_cost, pyramid, to_levels

TINY = {"width": 8, "layers": 2, "scales": 2, "crop": 32, "batch_size": 8, "lr": 5e-3, "progress": False}


def test_masked_conv_is_causal():
    torch.manual_seed(0)
    net = ZedNet(width=4, layers=2, levels=1)
    x = torch.randint(0, 256, (1, 1, 8, 8)).float()
    low = torch.randint(0, 256, (1, 1, 4, 4)).float()
    base = net(x, low, 0)
    y = x.clone()
    y[0, 0, 4, 4] = 255 - y[0, 0, 4, 4]  # change one pixel: only later pixels (raster order) may move
    diff = (net(y, low, 0) - base).abs().sum(1)[0]
    assert diff[:4].max() == 0 and diff[4, :5].max() == 0
    assert diff[4, 5:].max() > 0 or diff[5:].max() > 0
    assert MaskedConv2d("A", 1, 1, 3).mask.sum() == 4 and MaskedConv2d("B", 1, 1, 3).mask.sum() == 5


def test_coding_cost_matches_distribution():
    logits = torch.zeros(1, 256, 2, 2)  # uniform: 8 bits actual and expected
    nll, ent = coding_cost(torch.full((1, 1, 2, 2), 7.0), logits)
    np.testing.assert_allclose(nll.numpy(), 8.0, atol=1e-5)
    np.testing.assert_allclose(ent.numpy(), 8.0, atol=1e-5)
    logits[:, 7] = 50.0  # (almost) certain of level 7
    nll, ent = coding_cost(torch.full((1, 1, 2, 2), 7.0), logits)
    assert nll.max() < 1e-3 and ent.max() < 1e-3


def test_pyramid_halves_and_rounds():
    lev = to_levels(torch.rand(2, 1, 16, 16))
    pyr = pyramid(lev, 3)
    assert [p.shape[-1] for p in pyr] == [16, 8, 4]
    assert all(torch.equal(p, p.round()) for p in pyr)


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="combine"):
        create_detector("zed", combine="median")
    with pytest.raises(ValueError, match="crop"):
        create_detector("zed", crop=7)
    with pytest.raises(ValueError, match="channels"):
        create_detector("zed", **TINY).score(np.zeros((1, 2, 16, 16), np.float32))


def test_fit_rejects_fakes_only(toy_sets):
    fakes = [it for it in toy_sets[0] if int(it["label"]) == 1]
    with pytest.raises(ValueError, match="real images only"):
        create_detector("zed", steps=1, **TINY).fit(fakes[:2])


def _blocky(rng: np.random.Generator, n: int) -> np.ndarray:
    """Textures made at 32 px and up-sampled 4× by nearest neighbour: another process than the reals."""
    from scipy.ndimage import gaussian_filter

    out = []
    for _ in range(n):
        base = gaussian_filter(rng.random((32, 32)), 0.5)
        base = (base - base.min()) / (np.ptp(base) + 1e-8)
        small = np.clip(0.2 + 0.6 * base + rng.normal(0, 0.02, (32, 32)), 0, 1).astype(np.float32)
        out.append(np.repeat(np.kron(small, np.ones((4, 4), np.float32))[None], 3, axis=0))
    return np.stack(out)


def test_upsampled_image_is_surprising(toy_sets, make_toy_item, tmp_path):
    """Trained on smooth noise textures only, the coder finds nearest-neighbour up-sampled textures
    (another process) off its real statistics: they score above every held-out real."""
    train, _ = toy_sets
    reals = [it for it in train if int(it["label"]) == 0][:12]
    rng = np.random.default_rng(1)
    val = [make_toy_item(rng, 0) for _ in range(10)]
    det = create_detector("zed", seed=0, steps=250, **TINY)
    summary = det.fit(reals + [it for it in train if int(it["label"]) == 1][:4], val)
    assert summary["n_train"] == 12 and summary["train_fakes_skipped"] == 4
    test_real = np.stack([make_toy_item(rng, 0)["image"].numpy() for _ in range(6)])
    test_fake = _blocky(rng, 6)
    s_real, s_fake = det.score(test_real), det.score(test_fake)
    assert s_fake.min() > s_real.max(), (s_real, s_fake)
    # its coding-cost gap is far outside the real validation images' spread at some level
    mean, std = det.stats["pooled"]
    assert (np.abs((det.coding_costs(test_fake)["gap"] - mean) / std).max(1) > 3).all()
    # deterministic, and the same after a save/load round trip
    np.testing.assert_array_equal(det.score(test_fake), s_fake)
    again = load_detector(det.save(tmp_path / "zed"))
    np.testing.assert_array_equal(again.score(test_fake), s_fake)
    # heat-maps are in [0, 1] and brighter on the other process's images
    maps_real, maps_fake = det.anomaly_map(test_real), det.anomaly_map(test_fake)
    assert maps_fake.shape == (6, 128, 128) and maps_fake.min() >= 0 and maps_fake.max() <= 1
    assert maps_fake.mean() > maps_real.mean()


def test_modality_statistics_used_when_known(toy_sets):
    train, _ = toy_sets
    reals = [it for it in train if int(it["label"]) == 0]
    val = [{**it, "modality": "ct" if i % 2 else "mri"} for i, it in enumerate(reals[:12])]
    det = create_detector("zed", seed=0, steps=3, min_modality_reals=5, **TINY)
    det.fit(reals[12:20], val)
    assert set(det.stats) == {"pooled", "ct", "mri"}
    batch = np.stack([it["image"].numpy() for it in reals[:4]])
    gaps = det.coding_costs(batch)["gap"]
    pooled = det.score(batch)
    np.testing.assert_allclose(det.score_modality(batch, [None, "unknown", None, None]), pooled)
    np.testing.assert_allclose(det.probability_from_gaps(gaps), pooled)
    assert not np.allclose(det.score_modality(batch, ["ct"] * 4), pooled)
    assert "modality_threshold" in det.calibration and det.calibration["modalities"] == ["ct", "mri"]
