"""Content and identity hashing for the results store (SHA-256, hex)."""

from __future__ import annotations

import hashlib

#: the one de-duplication key and model identity live with the scan engine; re-exported for store users
from ..engine.keys import file_sha256 as content_hash
from ..engine.keys import model_fingerprint


def patient_ref(patient_id: str | None) -> str | None:
    """SHA-256 hex of a patient identifier (``None``/empty stays ``None``): the stored pseudonym."""
    if patient_id is None or str(patient_id).strip() == "":
        return None
    return hashlib.sha256(str(patient_id).strip().encode("utf-8")).hexdigest()
