from __future__ import annotations

import numpy as np
import pytest
import torch

from medforensics.detectors import create_detector
from medforensics.detectors.forensic_cnn.model import patch_map, patchify, topk_mean
from medforensics.detectors.layers import BayarConv2d
from medforensics.eval.metrics import compute_metrics


def _assert_bayar(conv: BayarConv2d) -> None:
    w = conv.weight.detach()
    c = w.shape[-1] // 2
    assert torch.allclose(w[..., c, c], torch.full_like(w[..., c, c], -1.0))
    off = w.sum(dim=(-2, -1)) - w[..., c, c]
    assert torch.allclose(off, torch.ones_like(off), atol=1e-5)


def test_bayar_constraint_reimposed_after_steps():
    conv = BayarConv2d(3, 4, 5)
    _assert_bayar(conv)
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    for _ in range(3):
        loss = conv(torch.randn(2, 3, 16, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        conv.constrain_()
        _assert_bayar(conv)
    # a constrained filter ignores constant images (it predicts each pixel from its neighbours)
    out = conv(torch.full((1, 3, 16, 16), 0.7))
    assert out[..., 2:-2, 2:-2].abs().max() < 1e-4


def test_patchify_and_patch_map_roundtrip():
    x = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).view(2, 3, 64, 64)
    patches, grid = patchify(x, 32, 16)
    assert grid == (3, 3) and patches.shape == (2 * 9, 3, 32, 32)
    torch.testing.assert_close(patches[4], x[0, :, 16:48, 16:48])  # centre patch of image 0
    torch.testing.assert_close(patches[9], x[1, :, 0:32, 0:32])
    values = torch.zeros(2, 9)
    values[0, 0] = 1.0  # only the top-left patch of image 0 is "fake"
    m = patch_map(values, grid, (64, 64), 32, 16)
    assert m.shape == (2, 64, 64)
    assert m[0, 0, 0] == 1.0 and m[0, 63, 63] == 0.0 and m[1].abs().max() == 0
    assert 0 < m[0, 20, 20] < 1  # covered by 4 patches, one of them fake


def test_topk_mean():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert topk_mean(logits, 0.5).item() == pytest.approx(2.5)
    assert topk_mean(logits, 0.01).item() == pytest.approx(3.0)


def test_learns_toy_upsampling_trace_and_localises(toy_sets, make_toy_item):
    make_item = make_toy_item

    train, val = toy_sets
    det = create_detector("forensic_cnn", seed=0, width=8, epochs=8, batch_size=8, patches_per_image=4,
                          patch_size=32, patch_stride=16, lr=3e-3, progress=False)
    summary = det.fit(train, val)
    assert summary["best_epoch"] >= 1 and len(summary["history"]) == 8
    y = np.array([int(it["label"]) for it in val])
    s = det.score(np.stack([it["image"].numpy() for it in val]))
    assert compute_metrics(y, s)["auc"] > 0.9
    # the threshold was calibrated on validation reals
    assert det.calibration["method"] == "fpr_on_real_val"
    assert det.calibration["achieved_fpr"] <= det.config["target_fpr"] + 1e-9
    # localisation: on tampered images the map is higher inside the pasted region than outside
    rng = np.random.default_rng(7)
    items = [make_item(rng, 1, tampered=True) for _ in range(6)]
    maps = det.anomaly_map(np.stack([it["image"].numpy() for it in items]))
    masks = np.stack([it["mask"].numpy() for it in items]) > 0.5
    assert maps[masks].mean() > maps[~masks].mean() + 0.1


def test_fit_is_deterministic(toy_sets):
    train, val = toy_sets
    cfg = dict(seed=3, width=8, epochs=1, batch_size=8, patches_per_image=2, patch_size=32, patch_stride=32,
               progress=False)
    a, b = create_detector("forensic_cnn", **cfg), create_detector("forensic_cnn", **cfg)
    a.fit(train[:16])
    b.fit(train[:16])
    batch = np.stack([it["image"].numpy() for it in val[:4]])
    np.testing.assert_array_equal(a.score(batch), b.score(batch))


def test_backbone_options_validated():
    with pytest.raises(TypeError, match="unknown forensic_cnn options"):
        create_detector("forensic_cnn", widht=3)
