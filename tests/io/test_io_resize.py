"""``standardise`` / ``resize_to``: the project's documented resize."""

from __future__ import annotations

import numpy as np
import pytest

from medforensics.io import ImageMeta, MedImage, Preprocessing, resize_to, standardise

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("fit", ["center_crop", "stretch", "pad"])
@pytest.mark.parametrize("shape", [(300, 200), (120, 400, 3), (50, 60), (256, 256, 3)])
def test_shapes(fit, shape):
    out = standardise(RNG.random(shape, dtype=np.float32), 256, fit=fit)
    assert out.shape == (256, 256) + shape[2:]
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


def test_idempotent_at_target_size():
    x = RNG.random((256, 256, 3), dtype=np.float32)
    y = standardise(x)
    np.testing.assert_array_equal(x, y)
    assert y is not x and not np.shares_memory(x, y)
    np.testing.assert_array_equal(standardise(y), y)
    z = standardise(RNG.random((300, 500), dtype=np.float32))
    np.testing.assert_array_equal(standardise(z), z)


def test_center_crop_without_resampling():
    x = RNG.random((256, 400), dtype=np.float32)
    np.testing.assert_array_equal(standardise(x, fit="center_crop"), x[:, 72:328])


def test_pad_is_centred_zero_padding():
    x = np.ones((128, 256), np.float32)
    out = standardise(x, 256, fit="pad")
    assert np.all(out[:64] == 0) and np.all(out[192:] == 0) and np.all(out[64:192] == 1)


def test_stretch_keeps_constant_and_clips_overshoot():
    np.testing.assert_allclose(standardise(np.full((100, 300), 0.25, np.float32), fit="stretch"), 0.25, atol=1e-6)
    step = np.zeros((64, 64), np.float32)
    step[:, 32:] = 1.0  # bicubic overshoots at the edge; the result is clipped
    assert standardise(step, 256, fit="stretch").max() <= 1.0
    assert resize_to(step, (256, 256)).max() > 1.0


def test_downsampling_is_antialiased():
    checker = (np.indices((512, 512)).sum(axis=0) % 2).astype(np.float32)
    out = standardise(checker, 256)
    assert abs(float(out.mean()) - 0.5) < 0.01 and float(out.std()) < 0.05


def test_resize_to_order_and_channels():
    assert resize_to(np.zeros((10, 20), np.float32), (5, 7)).shape == (5, 7)
    assert resize_to(np.zeros((10, 20, 3), np.float32), (8, 4)).shape == (8, 4, 3)
    grad = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (30, 1))
    small = resize_to(grad, (15, 20), resample="bilinear")
    assert np.all(np.diff(small[7]) > 0)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="fit"):
        standardise(np.zeros((10, 10), np.float32), fit="zoom")
    with pytest.raises(ValueError, match="H×W"):
        standardise(np.zeros((10, 10, 4), np.float32))


def test_preprocessing_uses_standardise():
    img = MedImage(RNG.random((300, 240), dtype=np.float32), ImageMeta())
    out = Preprocessing(size=128)(img)
    assert out.shape == (3, 128, 128)
    np.testing.assert_array_equal(out[0], standardise(img.pixels, 128))
