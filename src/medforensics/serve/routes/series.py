"""Stored series verdicts: ``GET /v1/series`` and ``GET /v1/series/{uid}``.

A series verdict is written by ``POST /v1/scans`` (instances of one series sent together) and by the
DICOM receiver (when a series is complete or quiet); one row per series and model, updated when the
series is re-evaluated.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool

from ..deps import get_service, require_token
from ..service import ScanService
from .results import MAX_OFFSET

router = APIRouter(prefix="/v1", tags=["series"], dependencies=[Depends(require_token)])


@router.get("/series")
async def list_series(verdict: Literal["fake", "real"] | None = None, source: str | None = None,
                      study_uid: str | None = None, modality: str | None = None, model_id: str | None = None,
                      limit: int = Query(100, ge=1, le=MAX_OFFSET), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                      svc: ScanService = Depends(get_service)) -> dict[str, Any]:
    """Series verdicts, most recently updated first."""
    kw = {"verdict": verdict, "source": source, "study_uid": study_uid, "modality": modality, "model_id": model_id}
    rows = await run_in_threadpool(lambda: svc.store.query_series(**kw, limit=limit, offset=offset))
    total = await run_in_threadpool(lambda: svc.store.count_series(**kw))
    return {"total": total, "limit": limit, "offset": offset, "items": [r.to_dict() for r in rows]}


@router.get("/series/{uid}")
async def get_series(uid: str, model_id: str | None = None,
                     svc: ScanService = Depends(get_service)) -> dict[str, Any]:
    """The newest verdict on one series (by Series Instance UID, or by the verdict's id)."""
    rec = await run_in_threadpool(lambda: svc.store.get_series(uid, model_id=model_id))
    if rec is None:
        raise HTTPException(404, "no such series")
    return rec.to_dict()
