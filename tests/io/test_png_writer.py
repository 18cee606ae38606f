"""The one PNG writer: lossless at the array's bit depth, the shared corpus's container, atomic."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medforensics.benchmark.build.format_check import format_features
from medforensics.io.png import PNG_COMPRESS_LEVEL, png_mode, to_uint8, write_png


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8),
        (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3),
        (np.arange(40 * 24, dtype=np.uint32) * 67 % 65536).astype(np.uint16).reshape(24, 40),
        (np.arange(40 * 24, dtype=np.uint32) * 67 % 65536).astype(">u2").reshape(24, 40),
        np.full((16, 16, 1), 7, np.uint8),
    ],
    ids=["grey8", "rgb8", "grey16", "grey16-big-endian", "grey8-one-channel"],
)
def test_round_trip_is_exact_and_the_container_is_the_corpus_one(tmp_path, arr):
    path = write_png(tmp_path / "sub" / "x.png", arr)
    with Image.open(path) as im:
        back = np.asarray(im)
    expect = arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
    assert back.dtype.kind == "u" and back.dtype.itemsize == expect.dtype.itemsize
    np.testing.assert_array_equal(back.astype(np.int64), expect.astype(np.int64))
    feats = format_features(path)
    # zlib FLEVEL 3 like every PNG of ../shared/data; Pillow's default (level 6) would give 2
    assert feats["png_zlib_level"] == 3 and feats["metadata_chunks"] == 0
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary left behind


def test_pillow_default_would_differ(tmp_path):
    """The reason for the writer: the level is visible in the container."""
    arr = np.zeros((8, 8), np.uint8)
    Image.fromarray(arr).save(tmp_path / "default.png")
    assert format_features(tmp_path / "default.png")["png_zlib_level"] == 2
    assert format_features(write_png(tmp_path / "ours.png", arr))["png_zlib_level"] == 3
    assert PNG_COMPRESS_LEVEL == 9


@pytest.mark.parametrize(
    "arr, what",
    [(np.zeros((8, 8), np.float32), "float32"), (np.zeros((8, 8, 4), np.uint8), "(8, 8, 4)"),
     (np.zeros((8, 8, 3), np.uint16), "uint16"), (np.zeros(8, np.uint8), "(8,)")],
)
def test_arrays_that_cannot_be_stored_losslessly_are_refused_and_nothing_is_replaced(tmp_path, arr, what):
    target = write_png(tmp_path / "keep.png", np.full((4, 4), 9, np.uint8))
    before = target.read_bytes()
    with pytest.raises(ValueError, match="losslessly") as err:
        write_png(target, arr)
    assert what in str(err.value)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]
    with pytest.raises(ValueError):
        png_mode(arr)


def test_to_uint8_rounds_and_clips():
    np.testing.assert_array_equal(to_uint8(np.array([-0.5, 0.0, 0.5, 1.0, 2.0])), [0, 0, 128, 255, 255])
