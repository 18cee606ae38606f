"""Fixtures for the io tests: the sample DICOM folders shipped by pydicom / pydicom-data."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medforensics.io.samples import pydicom_data_folder, pydicom_test_files


@pytest.fixture(scope="session")
def pyd() -> Path:
    """pydicom's own test_files folder (always installed with pydicom)."""
    folder = pydicom_test_files()
    assert folder is not None, "pydicom test files not found"
    return folder


@pytest.fixture(scope="session")
def pdd() -> Path:
    """pydicom-data's data folder; tests using it are skipped when it is not installed."""
    folder = pydicom_data_folder()
    if folder is None:
        pytest.skip("pydicom-data is not installed")
    return folder


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid 8-bit grey PNG claiming ``width``×``height`` with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def png_header():
    """Factory: bytes of a PNG whose header claims the given size (no real pixel data)."""
    return png_header_only


@pytest.fixture
def encoded():
    """Factory: ``encoded(array, "PNG", **save_kwargs)`` → file bytes via Pillow."""
    return encode
