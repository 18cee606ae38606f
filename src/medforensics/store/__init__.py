"""Results store: every scan result, run and reader-study answer in a SQL database.

SQLite by default (``~/.medforensics/results.db`` or ``$MEDFORENSICS_DB``), PostgreSQL by URL;
the schema is managed by Alembic migrations shipped in ``migrations/`` and applied on open.

>>> store = ResultStore("sqlite:///results.db")                      # doctest: +SKIP
>>> rec = store.find(content_hash=content_hash("a.dcm"), detector="forensic_cnn", detector_version="1")

The hashing helpers (``content_hash``, ``model_fingerprint``, ``patient_ref``) need only the standard
library and are always available; everything else needs the ``store`` extra (SQLAlchemy, Alembic)
and is imported on first use, so the core install can import this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .hashing import content_hash, model_fingerprint, patient_ref

if TYPE_CHECKING:  # pragma: no cover
    from .store import (PHI_META_KEYS, ResultStore, ScanRecord, SeriesRecord, default_db_url, normalise_url,
                        redact_url)

#: names defined in :mod:`.store` (needs SQLAlchemy), imported on first access
_LAZY = ("PHI_META_KEYS", "ResultStore", "ScanRecord", "SeriesRecord", "default_db_url", "normalise_url",
         "redact_url")
EXTRA_HINT = "the results store needs SQLAlchemy and Alembic: pip install 'medforensics[store]'"

__all__ = sorted(("content_hash", "model_fingerprint", "patient_ref", *_LAZY))


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = import_module(".store", __name__)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("sqlalchemy", "alembic"):
            raise ModuleNotFoundError(f"{EXTRA_HINT} ({exc})", name=exc.name) from exc
        raise
    return getattr(module, name)
