"""Decode memory budget in bytes: checked from the header before any pixel is allocated."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from medforensics.io import UnreadableImageError, load, load_frames
from medforensics.io import budget as budget_mod
from medforensics.io.budget import DecodeBudgetError, parse_bytes

MiB = 1 << 20


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _zeros_deflated(compressor, n: int, chunk: int = 1 << 22) -> bytes:
    out = bytearray()
    block = b"\0" * chunk
    while n > 0:
        out += compressor.compress(block[: min(n, chunk)])
        n -= chunk
    return bytes(out)


def deflated_dicom(path: Path, rows: int, cols: int, spp: int = 3, frames: int = 1) -> Path:
    """A Deflated Explicit VR LE DICOM whose zero pixel data are streamed (never held in memory)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, spp
    ds.PhotometricInterpretation = "RGB" if spp == 3 else "MONOCHROME2"
    if spp == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n = rows * cols * spp * frames
    n += n % 2
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, n)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = comp.compress(body.getvalue() + pixel_header) + _zeros_deflated(comp, n) + comp.flush()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    path.write_bytes(fp.getvalue() + data)
    return path


def zero_png(path: Path, width: int, height: int, color_type: int = 6) -> Path:
    """A valid PNG (8-bit, colour type 6 = RGBA) of zeros, compressed in a stream."""
    bands = {0: 1, 2: 3, 6: 4}[color_type]
    comp = zlib.compressobj(9)
    idat = _zeros_deflated(comp, height * (1 + width * bands)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    return path


def needed(path: Path, **kw) -> int:
    with pytest.raises(DecodeBudgetError) as ei:
        load_frames(path, decode_budget=1, **kw)
    return ei.value.needed


# --------------------------------------------------------------------------- the budget itself
def test_parse_bytes_and_default():
    assert parse_bytes("512M") == 512 * MiB
    assert parse_bytes("2G") == 2 << 30
    assert parse_bytes("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_bytes("1000") == 1000
    for bad in ("lots", "-1", "0", "5X"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert budget_mod.DEFAULT_DECODE_BUDGET_BYTES == 1 << 30


def test_env_var_sets_the_module_budget():
    code = "from medforensics.io.budget import DECODE_BUDGET_BYTES as B; print(B)"
    env = {**os.environ, "MEDFORENSICS_DECODE_BUDGET": "300M"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == 300 * MiB


def test_module_budget_applies_and_per_call_overrides(tmp_path: Path, monkeypatch):
    path = zero_png(tmp_path / "z.png", 1000, 1000)
    assert load(path).pixels.shape == (1000, 1000, 3)
    monkeypatch.setattr(budget_mod, "DECODE_BUDGET_BYTES", 20 * MiB)
    with pytest.raises(DecodeBudgetError):
        load(path)
    assert load(path, decode_budget="1G").pixels.shape == (1000, 1000, 3)


# --------------------------------------------------------------------------- PNG
def test_png_of_zeros_over_budget_names_file_size_and_budget(tmp_path: Path, monkeypatch):
    path = zero_png(tmp_path / "bomb.png", 4000, 3000)
    assert path.stat().st_size < 200_000
    from PIL import Image

    def no_decode(self, *a, **k):  # the check must come before Pillow decodes anything
        raise AssertionError("pixels decoded despite the budget")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decode)
    with pytest.raises(UnreadableImageError) as ei:
        load(path, decode_budget=64 * MiB)
    err = ei.value
    assert isinstance(err, DecodeBudgetError)
    assert err.path == str(path)
    assert "4000×3000" in err.reason and "RGBA" in err.reason
    assert "64.0 MiB" in err.reason and "needs about" in err.reason
    assert err.needed > 64 * MiB and err.budget == 64 * MiB


def test_png_9990_square_rgba_rejected_by_default_budget(tmp_path: Path):
    ihdr = struct.pack(">IIBBBBB", 9990, 9990, 8, 6, 0, 0, 0)
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                     + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
    with pytest.raises(DecodeBudgetError) as ei:
        load(path)
    assert ei.value.needed > 4 << 30  # ~9990² × (4 + 3 + 24 + 12) bytes


def test_png_within_budget_decodes(tmp_path: Path):
    path = zero_png(tmp_path / "ok.png", 400, 300)
    img = load(path, decode_budget=64 * MiB)
    assert img.pixels.shape == (300, 400, 3) and float(img.pixels.max()) == 0.0


# --------------------------------------------------------------------------- DICOM
def test_deflated_dicom_with_huge_matrix_rejected_before_inflating(tmp_path: Path, monkeypatch):
    path = deflated_dicom(tmp_path / "dfl.dcm", 3000, 3000)
    assert path.stat().st_size < 100_000

    def no_read(*a, **k):
        raise AssertionError("pydicom inflated the data set despite the budget")

    import medforensics.io.dicom as dicom_mod

    monkeypatch.setattr(dicom_mod.pydicom, "dcmread", no_read)
    with pytest.raises(DecodeBudgetError) as ei:
        load(path, decode_budget=64 * MiB)
    reason = ei.value.reason
    assert "3000×3000×3" in reason and "deflated" in reason and "64.0 MiB" in reason


def test_deflated_7000_square_rgb_rejected_by_default_budget(tmp_path: Path):
    path = deflated_dicom(tmp_path / "dfl7000.dcm", 7000, 7000)
    assert path.stat().st_size < 400_000
    with pytest.raises(DecodeBudgetError) as ei:
        load(path)
    assert "7000×7000×3" in ei.value.reason


def test_deflated_dicom_within_budget_decodes(tmp_path: Path):
    path = deflated_dicom(tmp_path / "small.dcm", 64, 48, spp=1)
    img = load(path, decode_budget=64 * MiB)
    assert img.pixels.shape == (64, 48)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian


def test_compressed_dicom_checked_before_decoding(pyd: Path, monkeypatch):
    path = pyd / "MR_small_RLE.dcm"
    import medforensics.io.dicom as dicom_mod

    def no_decode(*a, **k):
        raise AssertionError("decoded despite the budget")

    monkeypatch.setattr(dicom_mod, "pixel_array", no_decode)
    with pytest.raises(DecodeBudgetError) as ei:
        load(path, decode_budget=MiB)
    assert "64×64" in ei.value.reason


def test_only_decoded_frames_count(pyd: Path):
    path = pyd / "examples_ybr_color.dcm"  # 30 frames of 320×240 RGB
    all_frames, one = needed(path), needed(path, max_frames=1)
    assert all_frames > one
    middle = (all_frames + one) // 2
    with pytest.raises(DecodeBudgetError) as ei:
        load_frames(path, decode_budget=middle)
    assert "30 frames of 320×240×3" in ei.value.reason
    frames = load_frames(path, max_frames=1, decode_budget=middle)
    assert len(frames) == 1


# --------------------------------------------------------------------------- NIfTI
def test_nifti_over_budget(tmp_path: Path):
    import nibabel as nib

    vol = np.zeros((256, 256, 64), dtype=np.int16)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    with pytest.raises(DecodeBudgetError) as ei:
        load(path, decode_budget=8 * MiB)
    assert "64 frames of 256×256 int16" in ei.value.reason
    assert load(path, decode_budget=256 * MiB).pixels.shape == (256, 256)


def test_estimate_is_in_bytes_of_the_dtype(tmp_path: Path):
    import nibabel as nib

    small = tmp_path / "i16.nii"
    big = tmp_path / "f64.nii"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 8), np.int16), np.eye(4)), small)
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 8), np.float64), np.eye(4)), big)
    assert needed(big) > needed(small)


@pytest.mark.parametrize(
    "name, marker, offset, fmt",
    [
        ("MR_small_jp2klossless.dcm", b"\xff\x4f\xff\x51", 8, ">II"),  # J2K SIZ Xsiz, Ysiz
        ("SC_rgb_jpeg_dcmtk.dcm", b"\xff\xc0", 5, ">HH"),  # JPEG SOF0 height, width
    ],
)
def test_codestream_larger_than_the_dicom_header_is_refused_before_decoding(pyd, tmp_path, monkeypatch, name, marker,
                                                                           offset, fmt):
    data = bytearray((pyd / name).read_bytes())
    i = data.find(marker)
    struct.pack_into(fmt, data, i + offset, 20000, 20000)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    import medforensics.io.dicom as dicom_mod

    def no_decode(*a, **k):
        raise AssertionError("decoded a codestream larger than the header")

    monkeypatch.setattr(dicom_mod, "pixel_array", no_decode)
    with pytest.raises(UnreadableImageError, match="declares 20000×20000.*more than the DICOM header"):
        load(path)
