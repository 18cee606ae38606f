"""How stored records and per-file outcomes are shown: JSON dicts of the API and the CSV export."""

from __future__ import annotations

import csv
import io
from typing import Any

from ..outputs import csv_row
from .previews import display_units
from .service import ItemOutcome

EXPORT_FIELDS = ("id", "created_at", "source", "path", "sop_instance_uid", "modality", "detector",
                 "detector_version", "model_id", "score", "threshold", "verdict", "error", "content_hash", "run_id")


def record_dict(rec: Any, *, cached: bool | None = None) -> dict[str, Any]:
    """A stored :class:`~medforensics.store.ScanRecord` as the API shows it (with display units and image URLs)."""
    d = rec.to_dict()
    for k, v in list(d.items()):
        if hasattr(v, "isoformat"):
            d[k] = v.isoformat()
    if d.get("patient_name") is None:
        d.pop("patient_name", None)
    d["display"] = display_units(d.get("modality"), d.get("meta")).to_dict()
    d["image_url"] = f"/v1/scans/{rec.id}/image.png" if rec.error is None else None
    d["heatmap_url"] = f"/v1/scans/{rec.id}/heatmap.png" if rec.heatmap_path else None
    if cached is not None:
        d["cached"] = cached
    return d


def item_dict(outcome: ItemOutcome, index: int, **ident: Any) -> dict[str, Any]:
    """One item of a ``POST /v1/scans`` answer: its position, what was sent (file name / path) and the outcome."""
    out: dict[str, Any] = {"index": index, **ident, "status": outcome.status, "error": outcome.error,
                           "cached": outcome.cached}
    if outcome.record is not None:
        out["scan_id"] = outcome.record.id
        out["scan"] = record_dict(outcome.record)
    else:
        out["scan_id"] = None
    return out


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The CSV export of record dicts (:data:`EXPORT_FIELDS`; formula-like text cells escaped by the one
    rule of :func:`medforensics.outputs.csv_safe`)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(EXPORT_FIELDS)
    for r in rows:
        writer.writerow(csv_row(r.get(k) for k in EXPORT_FIELDS))
    return buf.getvalue()
