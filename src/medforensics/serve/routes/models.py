"""``GET /v1/models``: the model the service scores with, registered detectors and shipped models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from ..deps import get_service, require_token
from ..service import ScanService

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_token)])


@router.get("/models")
async def models(svc: ScanService = Depends(get_service)) -> dict[str, Any]:
    """The model this service scores with, plus registered detectors and shipped models."""
    from ...detectors import list_detectors
    from ...detectors.registry import PRETRAINED

    return {"active": svc.model_info(), "registered_detectors": list_detectors(), "shipped": sorted(PRETRAINED)}
