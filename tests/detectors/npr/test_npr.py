from __future__ import annotations

import numpy as np
import pytest
import torch

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.npr.model import NPRNet, npr_residual
from medforensics.eval.metrics import compute_metrics


def test_npr_residual_zero_on_2x2_blocks_nonzero_otherwise():
    g = torch.Generator().manual_seed(0)
    small = torch.rand(2, 3, 8, 8, generator=g)
    blocky = small.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # constant on 2×2 blocks
    assert npr_residual(blocky).abs().max() == 0
    noisy = blocky.clone()
    noisy[0, 1, 5, 6] += 0.1  # one pixel off its block's value
    r = npr_residual(noisy)
    assert r.shape == noisy.shape
    assert torch.nonzero(r).tolist() == [[0, 1, 5, 6]]
    assert r[0, 1, 5, 6].item() == pytest.approx(0.1, abs=1e-6)
    # blocks shifted by one pixel are not aligned with the 2×2 grid: non-zero residual
    assert npr_residual(blocky[..., 1:, 1:]).abs().max() > 0
    # the top-left pixel of each block is the reference: always zero there, any image
    x = torch.rand(1, 1, 7, 9, generator=g)  # odd sizes keep their shape
    r = npr_residual(x)
    assert r.shape == x.shape and r[..., ::2, ::2].abs().max() == 0 and r.abs().max() > 0


def test_cam_mean_is_the_logit():
    torch.manual_seed(0)
    net = NPRNet(3, width=4, stages=2).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.cam(x).mean(dim=(1, 2)), net(x), atol=1e-5, rtol=1e-5)


def test_learns_toy_upsampling_trace(toy_sets, tmp_path):
    train, val = toy_sets
    det = create_detector("npr", seed=0, width=8, stages=2, epochs=3, batch_size=8, train_crop=64, lr=3e-3,
                          progress=False)
    summary = det.fit(train, val)
    assert len(summary["history"]) == 3 and summary["best_epoch"] >= 1
    y = np.array([int(it["label"]) for it in val])
    batch = np.stack([it["image"].numpy() for it in val])
    s = det.score(batch)
    assert s[y == 1].mean() > s[y == 0].mean()
    assert compute_metrics(y, s)["auc"] > 0.9
    assert det.calibration["method"] == "fpr_on_real_val"
    maps = det.anomaly_map(batch)
    assert maps.shape == (16, 128, 128) and maps.min() >= 0 and maps.max() <= 1
    # deterministic: the same seed gives the same scores; saved model reproduces them
    again = create_detector("npr", seed=0, width=8, stages=2, epochs=3, batch_size=8, train_crop=64, lr=3e-3,
                            progress=False)
    again.fit(train, val)
    np.testing.assert_allclose(again.score(batch), s, rtol=1e-6, atol=1e-7)
    det.save(tmp_path / "m")
    np.testing.assert_array_equal(load_detector(tmp_path / "m").score(batch), s)


def test_rejects_unknown_option():
    with pytest.raises(TypeError, match="unknown npr options: bogus"):
        create_detector("npr", bogus=1)
