"""Broken inputs: every failure is an ``UnreadableImageError`` naming the file and the reason."""

from __future__ import annotations

import re
import time
import tracemalloc

import numpy as np
import pytest

from medforensics.io import MAX_PIXELS, UnreadableImageError, load, load_frames


def expect(path, pattern: str) -> UnreadableImageError:
    """``load`` and ``load_frames`` raise with ``pattern`` in the reason and the path in str()."""
    with pytest.raises(UnreadableImageError) as ei:
        load(path)
    err = ei.value
    assert re.search(pattern, err.reason), err.reason
    assert err.path == str(path) and str(err) == f"{path}: {err.reason}"
    with pytest.raises(UnreadableImageError) as ei2:
        load_frames(path)
    assert re.search(pattern, ei2.value.reason), ei2.value.reason
    return err


def test_missing_file(tmp_path):
    expect(tmp_path / "nope.png", "file not found")


def test_directory(tmp_path):
    expect(tmp_path, "is a directory")


def test_zero_bytes(tmp_path):
    p = tmp_path / "empty.dcm"
    p.write_bytes(b"")
    expect(p, r"^empty file \(0 bytes\)$")


def test_random_bytes(tmp_path):
    data = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    data = b"\x13\x37" + data[2:]  # make sure no magic matches by chance
    p = tmp_path / "noise.bin"
    p.write_bytes(data)
    expect(p, "not a recognised image format")
    q = tmp_path / "noise"
    q.write_bytes(data)
    expect(q, "not a recognised image format")


def test_text_renamed_dcm(tmp_path):
    p = tmp_path / "notes.dcm"
    p.write_text("Patient notes: this is not an image at all.\n" * 20)
    expect(p, "not a DICOM file")


def test_random_bytes_named_dcm(tmp_path):
    p = tmp_path / "noise.dcm"
    p.write_bytes(b"\xaa" * 2000)
    expect(p, "not a DICOM file")


def test_truncated_png(tmp_path, encoded):
    data = encoded(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8), "PNG")
    p = tmp_path / "half.png"
    p.write_bytes(data[: len(data) // 2])
    expect(p, "truncated PNG data")


def test_truncated_jpeg(tmp_path, encoded):
    data = encoded(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8), "JPEG")
    p = tmp_path / "half.jpg"
    p.write_bytes(data[: len(data) // 2])
    expect(p, "truncated JPEG data")


@pytest.mark.parametrize("offset", [14, 40, 50])  # IHDR data, IDAT chunk type, IDAT data
def test_corrupt_png(tmp_path, encoded, offset):
    data = bytearray(encoded(np.random.default_rng(1).integers(0, 256, (50, 50), dtype=np.uint8), "PNG"))
    data[offset] ^= 0xFF
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(data))
    expect(p, "corrupt PNG data")


def test_decompression_bomb_rejected_before_allocation(tmp_path, png_header):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header(30000, 30000))
    tracemalloc.start()
    t0 = time.perf_counter()
    err = expect(p, f"image too large: 30000×30000 pixels exceeds the limit of {MAX_PIXELS:,}")
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 20 * 2**20
    assert "30000×30000" in err.reason


def test_over_project_limit_below_pillow_limit(tmp_path, png_header):
    p = tmp_path / "big.png"
    p.write_bytes(png_header(10001, 10001))  # 100.02 MP: Pillow only warns, we refuse
    expect(p, "image too large: 10001×10001 pixels")


def test_unsupported_format(tmp_path):
    p = tmp_path / "report.png"
    p.write_bytes(b"%PDF-1.7\n" + b"0" * 500)
    expect(p, "unsupported format: PDF document")


def test_bad_arguments_are_value_errors(tmp_path, encoded):
    p = tmp_path / "ok.png"
    p.write_bytes(encoded(np.zeros((4, 4), np.uint8), "PNG"))
    with pytest.raises(ValueError, match="unknown modality"):
        load(p, modality="xyz")
    with pytest.raises(ValueError, match="max_frames"):
        load_frames(p, max_frames=0)


def test_rle_decoder_panic_becomes_unreadable(pyd, tmp_path):
    """pylibjpeg-rle (Rust) panics on this edit; PanicException is a BaseException, not an Exception."""
    data = bytearray((pyd / "MR_small_RLE.dcm").read_bytes())
    data[1544] = 0xFF  # inside the RLE header: a segment offset past the end of the frame
    path = tmp_path / "panic.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(UnreadableImageError) as ei:
        load(path)
    assert "pixel decoder crashed" in ei.value.reason
    assert "PanicException" in ei.value.reason
    assert not isinstance(ei.value.__cause__, Exception)  # it really was a non-Exception error


def test_interrupts_are_not_swallowed(pyd, monkeypatch):
    import medforensics.io.dicom as dicom_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(dicom_mod, "pixel_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(pyd / "CT_small.dcm")


def test_other_base_exceptions_from_any_reader_are_reported(tmp_path, monkeypatch, encoded):
    import numpy as np

    import medforensics.io.walk as walk_mod

    class NativeCrash(BaseException):
        pass

    def crash(*a, **k):
        raise NativeCrash("boom")

    path = tmp_path / "a.png"
    path.write_bytes(encoded(np.zeros((4, 4), np.uint8), "PNG"))
    monkeypatch.setattr(walk_mod, "read_raster", crash)
    with pytest.raises(UnreadableImageError, match="pixel decoder crashed.*NativeCrash: boom"):
        load(path)


def test_absurd_number_of_frames_is_a_named_error(pyd, tmp_path):
    import pydicom

    ds = pydicom.dcmread(pyd / "MR_small.dcm")
    ds.NumberOfFrames = "1e308"
    path = tmp_path / "frames.dcm"
    ds.save_as(path)
    with pytest.raises(UnreadableImageError, match="invalid DICOM image pixel module"):
        load(path)
