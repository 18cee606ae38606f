from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.fft import dctn

from medforensics.detectors import create_detector
from medforensics.detectors.f3net.model import FAD, LFS, F3Net, dct2, idct2
from medforensics.eval.metrics import compute_metrics


def test_dct_matches_scipy_and_inverts():
    x = torch.rand(2, 3, 12, 20, dtype=torch.float64)
    np.testing.assert_allclose(dct2(x).numpy(), dctn(x.numpy(), axes=(-2, -1), norm="ortho"), atol=1e-10)
    torch.testing.assert_close(idct2(dct2(x)), x)


def test_fad_fixed_bands_partition_the_spectrum():
    fad = FAD(filter_size=8)
    base = fad.base_filters(32, 32)
    low, mid, high, all_ = base
    torch.testing.assert_close(low + mid + high, torch.ones(32, 32))  # a partition of the DCT plane
    assert (low * mid).sum() == 0 and (mid * high).sum() == 0 and (low * high).sum() == 0
    assert low.sum() > 0 and mid.sum() > 0 and high.sum() > 0 and all_.min() == 1
    assert low[0, 0] == 1 and high[-1, -1] == 1  # DC is low, the highest frequency is high
    with torch.no_grad():
        fad.weight.zero_()  # σ(0) = 0: only the fixed bases remain
    x = torch.rand(2, 3, 32, 32)
    bands = fad(x).view(2, 4, 3, 32, 32)
    torch.testing.assert_close(bands[:, 0] + bands[:, 1] + bands[:, 2], x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bands[:, 3], x, atol=1e-5, rtol=1e-5)
    # the low band of a smooth ramp holds nearly everything; the high band of a checkerboard does
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 32, 32).contiguous()
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float().expand(1, 1, 32, 32) - 0.5
    assert fad(ramp)[0, 0].pow(2).sum() > 0.95 * ramp.pow(2).sum()
    assert fad(checker)[0, 2].pow(2).sum() > 0.99 * checker.pow(2).sum()


def test_fad_learnable_filters_change_bands_and_resize():
    fad = FAD(filter_size=8)
    x = torch.rand(1, 1, 32, 32)
    assert fad.filters(32, 32).shape == (4, 32, 32)
    assert not torch.allclose(fad(x)[0, 0] + fad(x)[0, 1] + fad(x)[0, 2], x[0, 0], atol=1e-3)
    assert fad(torch.rand(1, 3, 20, 24)).shape == (1, 12, 20, 24)


def test_lfs_output_shape_and_values():
    lfs = LFS(window=10, stride=2, bands=6)
    out = lfs(torch.rand(2, 3, 64, 48))
    assert out.shape == (2, 6, (64 - 10) // 2 + 1, (48 - 10) // 2 + 1)
    assert torch.isfinite(out).all() and out.is_contiguous()  # a strided layout crashed torch's CPU conv backward
    # a constant image only has DC energy: band 0 holds it, the other fixed bands (σ(0)=0) sit at the
    # floor log10(1e-3) up to float32 round-off
    with torch.no_grad():
        lfs.weight.zero_()
    flat = lfs(torch.full((1, 1, 20, 20), 0.5))
    assert flat.shape == (1, 6, 6, 6)
    assert flat[:, 1:].max() < -2.9
    assert flat[:, 0].min() > 2  # log10(0.5·255·10) ≈ 3.1
    with pytest.raises(ValueError, match="larger than the image"):
        lfs(torch.rand(1, 1, 8, 8))


def test_cam_mean_is_the_logit_and_branch_switches():
    torch.manual_seed(0)
    net = F3Net(3, width=4, stages=2, filter_size=8, lfs_window=8, lfs_stride=4, lfs_bands=4).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.cam(x).mean(dim=(1, 2)), net(x), atol=1e-5, rtol=1e-5)
        assert F3Net(3, width=4, stages=2, filter_size=8, use_lfs=False)(x).shape == (2,)
    with pytest.raises(ValueError, match="at least one"):
        F3Net(use_fad=False, use_lfs=False)


def test_learns_toy_upsampling_trace(toy_sets):
    train, val = toy_sets
    det = create_detector("f3net", seed=0, width=8, stages=2, filter_size=16, lfs_window=8, lfs_stride=4,
                          lfs_bands=4, epochs=3, batch_size=8, train_crop=64, lr=3e-3, progress=False)
    summary = det.fit(train, val)
    assert len(summary["history"]) == 3
    y = np.array([int(it["label"]) for it in val])
    batch = np.stack([it["image"].numpy() for it in val])
    s = det.score(batch)
    assert s[y == 1].mean() > s[y == 0].mean()
    assert compute_metrics(y, s)["auc"] > 0.9
    maps = det.anomaly_map(batch)
    assert maps.shape == (16, 128, 128) and maps.min() >= 0 and maps.max() <= 1
