"""Centre-patch geometry and sliding-window extraction / overlap-averaging."""

from __future__ import annotations

import pytest
import torch

from medforensics.detectors.btd.patches import (
    extract_windows,
    merge_windows,
    patch_origin,
    prepared_center,
    region_box,
    window_positions,
)
from medforensics.io.preprocess import Preprocessing


def test_window_positions_cover_the_image():
    assert window_positions(128, 32, 16) == list(range(0, 97, 16))
    assert window_positions(100, 32, 32) == [0, 32, 64, 68]  # last window aligned with the end
    assert window_positions(20, 32, 16) == [0]


def test_extract_then_merge_reproduces_a_map():
    x = torch.rand(2, 1, 70, 50)
    windows, pos = extract_windows(x, 32, 16)
    assert windows.shape == (2 * len(pos), 1, 32, 32)
    merged = merge_windows(windows.view(2, len(pos), 32, 32), pos, (70, 50))
    torch.testing.assert_close(merged, x[:, 0])


def test_patch_origin_is_centred_and_clamped():
    assert patch_origin((128, 128), 96, (256, 256)) == (80, 80)
    assert patch_origin((5, 250), 96, (256, 256)) == (0, 160)
    with pytest.raises(ValueError, match="outside"):
        patch_origin((300, 10), 96, (256, 256))
    assert region_box((48, 48), 32, 96) == (32, 64, 32, 64)
    assert region_box((2, 90), 32, 96) == (0, 32, 64, 96)


def test_prepared_center_follows_the_standard_resize():
    pre = Preprocessing(size=256, fit="center_crop")
    assert prepared_center((512, 640), (256, 320), pre) == pytest.approx((128.0, 128.0))
    assert prepared_center((100, 100), (50, 25), Preprocessing(size=200, fit="stretch")) == pytest.approx((100, 50))
    with pytest.raises(ValueError, match="centre crop"):
        prepared_center((512, 640), (256, 10), pre)
