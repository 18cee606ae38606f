"""forensic_cnn scores the patch grid in one fully convolutional pass: geometry, parity with cutting
the patches (exact where no patch border is involved, within CONV_GRID_TOLERANCE for the shipped
model), one pass for score + map, and the per-patch path kept behind ``grid="patches"``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.forensic_cnn.model import (
    CONV_GRID_TOLERANCE,
    ForensicCNN,
    conv_grid_supported,
    patchify,
)


def _tiny(**kw):
    torch.manual_seed(0)
    det = create_detector("forensic_cnn", width=8, bayar_channels=3, preprocessing={"size": 128, "channels": 3}, **kw)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode BN matters
        for m in det.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return det


def _images(n=3, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_single_patch_image_matches_the_patch_classifier_exactly():
    torch.manual_seed(0)
    model = ForensicCNN(3, 8, 3).eval()
    x = _images(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.patch_grid(x, 64, 32).flatten(), model(x), rtol=1e-5, atol=1e-5)


def test_grid_geometry_matches_patchify():
    """Cell (i, j) = the head on the mean of the 4×4 features under patch (i, j) (64 px at stride 32)."""
    torch.manual_seed(0)
    model = ForensicCNN(3, 8, 3).eval()
    x = _images(2, 128)
    with torch.no_grad():
        patches, grid = patchify(x, 64, 32)
        one_pass = model.patch_grid(x, 64, 32)
        f = model.features(x)
        manual = torch.stack([torch.stack([model.head(f[:, :, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4].mean((2, 3)))[:, 0]
                                           for j in range(grid[1])], 1) for i in range(grid[0])], 1)
        per_patch = model(patches).view(2, *grid)
    assert f.shape[-2:] == (8, 8) and one_pass.shape == (2, *grid) == (2, 3, 3)
    torch.testing.assert_close(one_pass, manual, rtol=1e-5, atol=1e-5)
    # cut patches see zero padding at their borders, the whole image sees its neighbours: they differ
    assert (per_patch - one_pass).abs().max() > 1e-4


def test_unsupported_geometry_is_refused_and_the_detector_falls_back_to_patches():
    assert conv_grid_supported((256, 256), 64, 32)
    assert not conv_grid_supported((250, 256), 64, 32)
    assert not conv_grid_supported((256, 256), 64, 24)
    model = ForensicCNN(3, 8, 3).eval()
    with pytest.raises(ValueError, match="multiples of 16"):
        model.patch_grid(torch.rand(1, 3, 120, 120), 64, 32)
    det = _tiny()
    x = _images(2, 120)
    conv, _ = det._patch_logits(x, grid="conv")
    cut, _ = det._patch_logits(x, grid="patches")
    torch.testing.assert_close(conv, cut)  # 120 px: not a multiple of 16, so both cut the patches


def test_grid_option_selects_the_path_and_rejects_unknown_values():
    det = _tiny()
    x = _images(3, 128)
    conv = det.score(x)
    det.config["grid"] = "patches"
    cut = det.score(x)
    assert not np.allclose(conv, cut, atol=1e-7)  # really two paths
    assert np.abs(conv - cut).max() < 0.2
    det.config["grid"] = "fancy"
    with pytest.raises(ValueError, match="grid must be 'conv' or 'patches'"):
        det.score(x)
    with pytest.raises(TypeError, match="unknown forensic_cnn options"):
        create_detector("forensic_cnn", gird="conv")


def test_score_with_maps_is_one_pass_and_equals_score_and_anomaly_map():
    det = _tiny()
    x = _images(3, 128)
    calls = {"n": 0}
    orig = det.model.features

    def counted(images):
        calls["n"] += 1
        return orig(images)

    det.model.features = counted
    scores, maps = det.score_with_maps(x)
    assert calls["n"] == 1  # one forward pass for both (score_batch 8 ≥ 3 images)
    np.testing.assert_allclose(scores, det.score(x), rtol=0, atol=1e-7)
    np.testing.assert_allclose(maps, det.anomaly_map(x), rtol=0, atol=1e-7)
    assert maps.shape == (3, 128, 128) and 0 <= maps.min() and maps.max() <= 1
    empty_scores, empty_maps = det.score_with_maps(torch.zeros(0, 3, 128, 128))
    assert empty_scores.shape == (0,) and empty_maps is None


def test_base_score_with_maps_default_calls_both_methods():
    det = create_detector("forensic_cnn", width=8, bayar_channels=3, preprocessing={"size": 64, "channels": 3})
    from medforensics.detectors.base import Detector

    x = _images(2, 64)
    with torch.no_grad():
        s, m = Detector._score_and_map_arrays(det, x)
    np.testing.assert_allclose(s, det.score(x), atol=1e-7)
    np.testing.assert_allclose(m, det.anomaly_map(x), atol=1e-7)


@pytest.fixture(scope="module")
def shipped_and_images():
    """The shipped default model and a few real DICOMs / synthetic textures, preprocessed."""
    from medforensics.io import load
    from medforensics.io.samples import pydicom_test_files

    det = load_detector("default")
    folder = pydicom_test_files()
    arrays = []
    if folder is not None:
        for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm"):
            arrays.append(det.preprocessing(load(folder / name)))
    x = torch.cat([torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, 3, 256, 256),
                   _images(3, 256, seed=5)])
    return det, x


def test_shipped_model_one_pass_within_the_measured_tolerance(shipped_and_images):
    det, x = shipped_and_images
    assert det.config["grid"] == "conv"  # the shipped config has no "grid": the default applies
    with torch.no_grad():
        cut, grid = det._patch_logits(x, grid="patches")
        conv, grid2 = det._patch_logits(x, grid="conv")
    assert grid == grid2 == (7, 7)
    s_cut, s_conv = det._score_logits(cut), det._score_logits(conv)
    delta = np.abs(s_cut - s_conv)
    assert delta.max() <= CONV_GRID_TOLERANCE, delta
    assert np.corrcoef(cut.flatten().numpy(), conv.flatten().numpy())[0, 1] > 0.9
