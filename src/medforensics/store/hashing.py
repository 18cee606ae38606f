"""Content and identity hashing for the results store (SHA-256, hex)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def content_hash(data: str | os.PathLike | bytes | bytearray | memoryview) -> str:
    """SHA-256 hex digest of a file's content (path given) or of ``bytes`` (streamed, constant memory).

    Raises ``FileNotFoundError`` / ``OSError`` when a path cannot be read.
    """
    h = hashlib.sha256()
    if isinstance(data, (bytes, bytearray, memoryview)):
        h.update(data)
        return h.hexdigest()
    with open(Path(data), "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def patient_ref(patient_id: str | None) -> str | None:
    """SHA-256 hex of a patient identifier (``None``/empty stays ``None``): the stored pseudonym."""
    if patient_id is None or str(patient_id).strip() == "":
        return None
    return hashlib.sha256(str(patient_id).strip().encode("utf-8")).hexdigest()


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
