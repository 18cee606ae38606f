"""Stored results: ``GET /v1/scans`` (+ ``.csv``/``.json`` exports), ``/v1/scans/{id}`` and its images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from ..deps import get_service, get_settings, require_token
from ..previews import PREVIEW_SIZE, apply_window, display_units, png_bytes, preview_paths, read_unit_png
from ..records import csv_text, record_dict
from ..service import ScanService
from ..settings import ServeSettings

router = APIRouter(prefix="/v1", tags=["scans"], dependencies=[Depends(require_token)])

Verdict = Literal["fake", "real", "error"]
#: largest ``offset`` (and export ``limit``) accepted: far above any store, far below SQL's 64-bit integers
MAX_OFFSET = 1_000_000_000
#: window level/width bounds (HU or 0..1 units): finite and far beyond any modality's range
MAX_WINDOW = 1e6


@dataclass(frozen=True)
class Filters:
    """The common query of list and export endpoints (``limit`` has its own default per endpoint)."""

    verdict: str | None
    source: str | None
    run_id: str | None
    offset: int

    @property
    def kw(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "source": self.source, "run_id": self.run_id}


def filters(verdict: Verdict | None = None, source: str | None = None, run_id: str | None = None,
            offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> Filters:
    return Filters(verdict, source, run_id, offset)


async def _query(svc: ScanService, f: Filters, limit: int) -> tuple[list[dict[str, Any]], int]:
    recs = await run_in_threadpool(lambda: svc.store.query(**f.kw, limit=limit, offset=f.offset))
    total = await run_in_threadpool(lambda: svc.store.count(**f.kw))
    return [record_dict(r) for r in recs], total


async def _get(svc: ScanService, scan_id: str) -> Any:
    rec = await run_in_threadpool(svc.store.get, scan_id)
    if rec is None:
        raise HTTPException(404, "no such scan")
    return rec


@router.get("/scans")
async def list_scans(f: Filters = Depends(filters), limit: int = Query(100, ge=1, le=1000),
                     svc: ScanService = Depends(get_service)) -> dict[str, Any]:
    """Stored results, newest first."""
    rows, total = await _query(svc, f, limit)
    return {"total": total, "limit": limit, "offset": f.offset, "items": rows}


@router.get("/scans.csv", response_class=Response)
async def export_csv(f: Filters = Depends(filters), limit: int = Query(1000, ge=1, le=MAX_OFFSET),
                     svc: ScanService = Depends(get_service),
                     settings: ServeSettings = Depends(get_settings)) -> Response:
    """Stored results as CSV (at most ``export_limit`` rows; text that looks like a formula is escaped)."""
    rows, _ = await _query(svc, f, min(limit, settings.export_limit))
    return Response(csv_text(rows), media_type="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="medforensics-scans.csv"'})


@router.get("/scans.json")
async def export_json(f: Filters = Depends(filters), limit: int = Query(1000, ge=1, le=MAX_OFFSET),
                      svc: ScanService = Depends(get_service),
                      settings: ServeSettings = Depends(get_settings)) -> JSONResponse:
    """Stored results as one JSON document (at most ``export_limit`` rows)."""
    rows, total = await _query(svc, f, min(limit, settings.export_limit))
    return JSONResponse({"total": total, "items": rows},
                        headers={"Content-Disposition": 'attachment; filename="medforensics-scans.json"'})


@router.get("/scans/{scan_id}")
async def get_scan(scan_id: str, svc: ScanService = Depends(get_service)) -> dict[str, Any]:
    """One stored result."""
    return record_dict(await _get(svc, scan_id))


def _image_path(svc: ScanService, rec: Any) -> Path:
    image_p, _ = preview_paths(svc.preview_dir, rec.content_hash, rec.model_id or "")
    if not image_p.is_file():
        raise HTTPException(404, "no preview image stored for this scan")
    return image_p


Level = Query(None, ge=-MAX_WINDOW, le=MAX_WINDOW, allow_inf_nan=False)
Width = Query(None, gt=0, le=MAX_WINDOW, allow_inf_nan=False)


@router.get("/scans/{scan_id}/image.png", response_class=Response)
async def scan_image(scan_id: str, level: float | None = Level, width: float | None = Width,
                     svc: ScanService = Depends(get_service)) -> Response:
    """The scanned view (best frame, detector's crop); ``level``/``width`` in HU for CT, else 0..1."""
    rec = await _get(svc, scan_id)
    path = _image_path(svc, rec)
    units = display_units(rec.modality, rec.meta)

    def render() -> bytes:
        return png_bytes(apply_window(read_unit_png(path), units, level, width))

    return Response(await run_in_threadpool(render), media_type="image/png")


@router.get("/scans/{scan_id}/heatmap.png", response_class=Response)
async def scan_heatmap(scan_id: str, mode: Literal["overlay", "map"] = "overlay",
                       alpha: float = Query(0.45, ge=0, le=1, allow_inf_nan=False),
                       level: float | None = Level, width: float | None = Width,
                       svc: ScanService = Depends(get_service)) -> Response:
    """The evidence heat-map blended over the image (``mode=overlay``) or colour-mapped alone (``map``)."""
    from ...eval.report import colorize_heatmap, overlay_heatmap

    rec = await _get(svc, scan_id)
    if not rec.heatmap_path or not Path(rec.heatmap_path).is_file():
        raise HTTPException(404, "no heat-map stored for this scan")
    units = display_units(rec.modality, rec.meta)
    image_p = _image_path(svc, rec) if mode == "overlay" else None

    def render() -> bytes:
        heat = read_unit_png(rec.heatmap_path)
        if image_p is None:
            return png_bytes(colorize_heatmap(heat, size=(PREVIEW_SIZE, PREVIEW_SIZE)))
        image = apply_window(read_unit_png(image_p), units, level, width)
        return png_bytes(overlay_heatmap(image, heat, alpha=alpha))

    return Response(await run_in_threadpool(render), media_type="image/png")
