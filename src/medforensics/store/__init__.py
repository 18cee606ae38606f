"""Results store: every scan result, run and reader-study answer in a SQL database.

SQLite by default (``~/.medforensics/results.db`` or ``$MEDFORENSICS_DB``), PostgreSQL by URL;
the schema is managed by Alembic migrations shipped in ``migrations/`` and applied on open.

>>> store = ResultStore("sqlite:///results.db")                      # doctest: +SKIP
>>> rec = store.find(content_hash=content_hash("a.dcm"), detector="forensic_cnn", detector_version="1")
"""

from .hashing import content_hash, model_fingerprint, patient_ref
from .store import PHI_META_KEYS, ResultStore, ScanRecord, default_db_url, normalise_url, redact_url

__all__ = [
    "PHI_META_KEYS",
    "ResultStore",
    "ScanRecord",
    "content_hash",
    "default_db_url",
    "model_fingerprint",
    "normalise_url",
    "patient_ref",
    "redact_url",
]
