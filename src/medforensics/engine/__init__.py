"""The scan engine: every entry point (CLI, Ray, service, DICOM receiver) scans through it.

``ScanEngine`` (decode workers → batches → detector → ``ScanResult``, in input order or through
futures), ``ScanInput``, ``content_key`` (the one de-duplication key), ``model_fingerprint``.
Attributes are imported lazily so that a decode worker, which imports
:mod:`medforensics.engine.decode`, never loads torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ScanEngine": ".core", "ScanInput": ".core", "RunSummary": ".core", "THUMBNAIL": ".core",
    "default_workers": ".core", "expand_inputs": ".core", "run_args": ".core",
    "content_key": ".keys", "file_sha256": ".keys", "model_fingerprint": ".keys",
    "SeriesAggregator": ".series", "DecodePool": ".decode", "Decoded": ".decode", "StoreRule": ".dedup",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
