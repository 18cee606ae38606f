"""Identity of inputs and models: the one de-duplication key every entry point uses.

:func:`content_key` names an input by its *content*, the same however it reached the engine:

- a DICOM instance (``DICM`` magic, or a preamble-less data set the reader accepts) is named by its
  SOP Instance UID and its **decoded** pixel values, so a file on disk, an upload and a C-STORE in
  any lossless transfer syntax (explicit/implicit VR, big endian, deflated, RLE, JPEG lossless,
  JPEG-LS, JPEG 2000 reversible) give one key; a lossy re-encoding changes the pixels and therefore
  the key (it *is* other content);
- every other file is named by the SHA-256 of its bytes.

:func:`model_fingerprint` names a model by its weights, preprocessing and configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 1 << 20
DICOM_KEY_VERSION = b"medforensics-dicom-pixels-v1"


def file_sha256(data: str | os.PathLike | bytes | bytearray | memoryview) -> str:
    """SHA-256 hex digest of a file's content (path given) or of ``bytes`` (streamed, constant memory).

    A path is opened with :func:`medforensics.io.files.open_regular` (hashing a FIFO or a device
    would never end): a special file raises :class:`~medforensics.io.UnreadableImageError`;
    ``OSError`` when it cannot be read.
    """
    from ..io.files import open_regular

    h = hashlib.sha256()
    if isinstance(data, (bytes, bytearray, memoryview)):
        h.update(data)
        return h.hexdigest()
    with open_regular(Path(data)) as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def dicom_pixel_key(path: str | Path) -> str | None:
    """Transfer-syntax-independent key of a DICOM instance, or None when it has no decodable pixels.

    SHA-256 over a version tag, the SOP Instance UID, the pixel array's shape and dtype and its
    values in little-endian byte order. Call it only on a file the readers accepted (they enforce the
    memory budget before decoding).
    """
    from ..io.dicom import read_dataset

    ds = read_dataset(Path(path))
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return None
    arr = np.asarray(ds.pixel_array)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    h = hashlib.sha256(DICOM_KEY_VERSION)
    h.update(str(ds.get("SOPInstanceUID", "")).encode())
    h.update(f"{arr.shape}|{arr.dtype.str}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def content_key(path: str | Path) -> str:
    """The de-duplication key of one input file (see the module docstring).

    Raises :class:`medforensics.io.UnreadableImageError` for a path that is not a readable regular
    file. A DICOM file whose pixels cannot be decoded falls back to its byte hash.
    """
    from ..io import UnreadableImageError, check_regular_file, sniff_format

    p = Path(path)
    check_regular_file(p)
    try:
        if sniff_format(p) == "dicom":
            key = dicom_pixel_key(p)
            if key is not None:
                return key
    except Exception:  # undecodable DICOM: still a file with an identity (its bytes)
        pass
    try:
        return file_sha256(p)
    except UnreadableImageError:
        raise
    except OSError as exc:
        raise UnreadableImageError(p, f"cannot read file: {exc.strerror or exc}") from exc


def model_fingerprint(detector: Any) -> str:
    """Short identity of a detector's weights and config: ``<name>-v<version>-<sha256[:12]>``.

    Two models with the same detector name and version but different weights, preprocessing or
    calibration get different fingerprints, so the store never answers one with the other's scores.
    """
    import torch

    h = hashlib.sha256()
    meta = {"name": detector.name, "version": detector.version, "config": detector.config,
            "preprocessing": detector.preprocessing.to_dict()}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for key, tensor in sorted(detector.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"{detector.name}-v{detector.version}-{h.hexdigest()[:12]}"
