"""``GET /healthz``: liveness and readiness, no token needed."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from ... import __version__
from ..deps import get_service
from ..service import ScanService

log = logging.getLogger("medforensics.serve")
router = APIRouter(tags=["service"])


@router.get("/healthz")
async def healthz(svc: ScanService = Depends(get_service)) -> dict[str, Any]:
    """Liveness and readiness: the model is loaded and the store answers."""
    try:
        await run_in_threadpool(lambda: svc.store.query(limit=1))  # cheap round trip
        store_ok = True
    except Exception as exc:  # report, don't crash the probe
        log.error("store check failed: %s", type(exc).__name__)
        store_ok = False
    return {"status": "ok" if store_ok else "degraded", "model_id": svc.model_id, "store": store_ok,
            "version": __version__}
