"""PNG / JPEG / TIFF / BMP round trips through ``load``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medforensics.io import load, load_frames

RNG = np.random.default_rng(1234)


def test_png_8bit_grey(tmp_path, encoded):
    arr = RNG.integers(0, 256, (37, 53), dtype=np.uint8)
    path = tmp_path / "grey.png"
    path.write_bytes(encoded(arr, "PNG"))
    img = load(path)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (37, 53)
    np.testing.assert_array_equal(img.pixels, (arr / 255.0).astype(np.float32))
    m = img.meta
    assert m.source_format == "png" and m.bit_depth == 8 and m.modality is None
    assert m.frame_index is None and m.n_frames == 1 and m.original_shape == (37, 53)
    assert "255" in m.intensity


def test_png_16bit_grey(tmp_path, encoded):
    arr = RNG.integers(0, 65536, (40, 30), dtype=np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535
    path = tmp_path / "grey16.png"
    path.write_bytes(encoded(arr, "PNG"))
    img = load(path)
    np.testing.assert_allclose(img.pixels, arr / 65535.0, atol=1e-7)
    assert img.meta.bit_depth == 16 and "65535" in img.meta.intensity
    assert img.pixels[0, 1] == 1.0


def test_png_rgb_and_modality_argument(tmp_path, encoded):
    arr = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    path.write_bytes(encoded(arr, "PNG"))
    img = load(path, modality="endoscopy")
    assert img.is_color and img.meta.modality == "endoscopy" and img.meta.photometric == "RGB"
    np.testing.assert_array_equal(img.pixels, (arr / 255.0).astype(np.float32))


def test_rgba_composited_on_black(tmp_path, encoded):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 200  # red everywhere
    arr[0, :, 3] = 0  # transparent row
    arr[1, :, 3] = 255  # opaque row
    arr[2, :, 3] = 128
    path = tmp_path / "rgba.png"
    path.write_bytes(encoded(arr, "PNG"))
    img = load(path)
    assert img.pixels.shape == (4, 4, 3)
    assert np.all(img.pixels[0] == 0)
    np.testing.assert_allclose(img.pixels[1, :, 0], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(img.pixels[2, :, 0], round(200 * 128 / 255) / 255, atol=1e-6)
    assert np.all(img.pixels[..., 1:] == 0)
    assert img.meta.original_shape == (4, 4, 4)


def test_palette_and_la_png(tmp_path):
    pal = Image.new("P", (6, 5))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (768 - 9))
    pal.putpixel((2, 3), 1)
    p = tmp_path / "pal.png"
    pal.save(p)
    img = load(p)
    assert img.pixels.shape == (5, 6, 3)
    np.testing.assert_array_equal(img.pixels[3, 2], [1.0, 0.0, 0.0])
    assert img.pixels[0, 0].sum() == 0

    la = Image.fromarray(np.dstack([np.full((3, 3), 100, np.uint8), np.full((3, 3), 255, np.uint8)]), mode="LA")
    q = tmp_path / "la.png"
    la.save(q)
    g = load(q)
    assert g.pixels.shape == (3, 3)
    np.testing.assert_allclose(g.pixels, 100 / 255, atol=1e-6)


def test_jpeg_round_trip(tmp_path, encoded):
    y, x = np.mgrid[0:64, 0:96]
    arr = np.dstack([x * 2, y * 3, (x + y)]).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    path.write_bytes(encoded(arr, "JPEG", quality=95))
    img = load(path)
    assert img.meta.source_format == "jpeg" and img.pixels.shape == (64, 96, 3)
    assert np.abs(img.pixels - arr / 255.0).mean() < 0.02


def test_tiff_16bit_and_multipage(tmp_path, encoded):
    arr = RNG.integers(0, 65536, (25, 35), dtype=np.uint16)
    path = tmp_path / "x.tif"
    path.write_bytes(encoded(arr, "TIFF"))
    img = load(path)
    assert img.meta.source_format == "tiff" and img.meta.bit_depth == 16
    np.testing.assert_allclose(img.pixels, arr / 65535.0, atol=1e-7)

    pages = [Image.fromarray(np.full((8, 9), v, np.uint8)) for v in (0, 128, 255)]
    multi = tmp_path / "pages.tiff"
    pages[0].save(multi, save_all=True, append_images=pages[1:])
    frames = load_frames(multi)
    assert [f.meta.frame_index for f in frames] == [0, 1, 2]
    assert all(f.meta.n_frames == 3 for f in frames)
    assert [float(f.pixels.mean()) for f in frames] == pytest.approx([0.0, 128 / 255, 1.0])
    assert load(multi).meta.frame_index == 1  # middle page by default


def test_float_tiff(tmp_path):
    inside = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    p = tmp_path / "f.tif"
    Image.fromarray(inside).save(p)
    np.testing.assert_allclose(load(p).pixels, inside, atol=1e-7)
    outside = np.linspace(-5, 15, 20, dtype=np.float32).reshape(4, 5)
    q = tmp_path / "g.tif"
    Image.fromarray(outside).save(q)
    img = load(q)
    np.testing.assert_allclose(img.pixels, (outside + 5) / 20, atol=1e-6)
    assert "min–max" in img.meta.intensity


def test_bmp_and_format_from_content(tmp_path, encoded):
    arr = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    bmp = tmp_path / "a.bmp"
    bmp.write_bytes(encoded(arr, "BMP"))
    assert load(bmp).meta.source_format == "bmp"
    disguised = tmp_path / "really_png.jpg"
    disguised.write_bytes(encoded(arr, "PNG"))
    img = load(disguised)
    assert img.meta.source_format == "png"
    np.testing.assert_array_equal(img.pixels, (arr / 255.0).astype(np.float32))
