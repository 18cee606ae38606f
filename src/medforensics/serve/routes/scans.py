"""``POST /v1/scans``: scan uploaded files (multipart) or server-side paths (JSON, when enabled).

Every input becomes one item of the answer, in order; one bad file never fails the request. The files
go to the scan engine, which batches them with those of concurrent requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..deps import get_service, get_settings, require_token
from ..records import item_dict
from ..service import ItemOutcome, ScanService
from ..settings import ServeSettings

log = logging.getLogger("medforensics.serve")
router = APIRouter(prefix="/v1", tags=["scans"], dependencies=[Depends(require_token)])

SCAN_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["files"]}},
            "application/json": {"schema": {"type": "object", "properties": {
                "paths": {"type": "array", "items": {"type": "string"}}}, "required": ["paths"]}},
        },
    }
}


Submit = Callable[[], "Future | ItemOutcome"]


def _submit_all(jobs: list[Submit]) -> list[Future | ItemOutcome]:
    """Queue every file of a request (copying uploads to disk): blocking, run in a worker thread."""
    out: list[Future | ItemOutcome] = []
    for submit in jobs:
        try:
            out.append(submit())
        except Exception as exc:  # one bad item never fails the request
            log.error("item failed: %s", type(exc).__name__)
            out.append(ItemOutcome("error", error=f"internal error: {type(exc).__name__}"))
    return out


async def run_items(idents: list[dict[str, Any]], jobs: list[Submit], svc: ScanService,
                    timeout_s: float, results: list | None = None) -> list[dict[str, Any]]:
    """Queue all of a request's files on the engine at once (so they share model batches with each other
    and with concurrent requests), then wait for each under the request deadline. ``results`` (if given)
    receives each engine result (for the request's series verdicts)."""
    deadline = time.monotonic() + timeout_s
    queued = await run_in_threadpool(_submit_all, jobs)

    async def settle(job: Future | ItemOutcome) -> ItemOutcome:
        if isinstance(job, ItemOutcome):
            return job
        try:
            left = max(0.0, deadline - time.monotonic())
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job)), timeout=left)
            if results is not None:
                results.append(result)
            return await run_in_threadpool(svc.outcome, result)
        except asyncio.TimeoutError:
            return ItemOutcome("error", error=f"timed out after {timeout_s:g} s "
                               "(the result is stored when it completes; re-send to fetch it)")
        except Exception as exc:
            log.error("item failed: %s", type(exc).__name__)
            return ItemOutcome("error", error=f"internal error: {type(exc).__name__}")

    outcomes = await asyncio.gather(*(settle(job) for job in queued))
    return [item_dict(outcome, index, **ident) for index, (ident, outcome) in enumerate(zip(idents, outcomes))]


def path_job(raw: str, svc: ScanService, settings: ServeSettings, force: bool) -> Submit:
    """Queue one server-side file, if it is absolute and inside the allowed roots."""
    def submit() -> Future | ItemOutcome:
        p = Path(raw).expanduser()
        if not p.is_absolute():
            return ItemOutcome("error", error="server paths must be absolute")
        if not settings.path_allowed(p):
            return ItemOutcome("error", error="path is outside the allowed roots")
        if not p.is_file():
            return ItemOutcome("error", error="not a file on the server")
        return svc.submit_path(p.resolve(), force=force)

    return submit


async def _upload_items(request: Request, svc: ScanService, settings: ServeSettings, force: bool,
                        results: list | None = None) -> list[dict]:
    try:
        form = await request.form(max_files=settings.max_files + 1, max_fields=settings.max_files + 16)
    except HTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise HTTPException(413, f"at most {settings.max_files} files per request") from None
        raise
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise HTTPException(422, "no files in the upload (use the multipart field 'files')")
        if len(uploads) > settings.max_files:
            raise HTTPException(413, f"at most {settings.max_files} files per request, got {len(uploads)}")
        idents = [{"filename": os.path.basename(u.filename or "") or "upload"} for u in uploads]
        jobs = [functools.partial(svc.submit_upload, u.file, u.filename, force=force) for u in uploads]
        return await run_items(idents, jobs, svc, settings.request_timeout_s, results)
    finally:
        await form.close()


async def _path_items(request: Request, svc: ScanService, settings: ServeSettings, force: bool,
                      results: list | None = None) -> list[dict]:
    if not settings.allow_server_paths:
        raise HTTPException(403, "server-side paths are disabled (start with --allow-server-paths --allowed-root DIR)")
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(422, "invalid JSON body") from None
    paths = body.get("paths") if isinstance(body, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise HTTPException(422, 'expected {"paths": ["/absolute/file", ...]}')
    if len(paths) > settings.max_files:
        raise HTTPException(413, f"at most {settings.max_files} paths per request, got {len(paths)}")
    force = force or bool(body.get("force"))
    return await run_items([{"path": p} for p in paths], [path_job(p, svc, settings, force) for p in paths], svc,
                           settings.request_timeout_s, results)


@router.post("/scans", openapi_extra=SCAN_BODY_DOC)
async def create_scans(request: Request, force: bool = Query(False, description="re-scan even if stored"),
                       svc: ScanService = Depends(get_service),
                       settings: ServeSettings = Depends(get_settings)) -> dict[str, Any]:
    """Scan uploaded files (multipart field ``files``) or server-side ``paths`` (JSON, when enabled).

    Instances of one DICOM series sent together also get a series verdict (``series``, stored)."""
    ctype = request.headers.get("content-type", "")
    results: list = []
    if ctype.startswith("multipart/form-data"):
        items = await _upload_items(request, svc, settings, force, results)
    elif ctype.startswith("application/json"):
        items = await _path_items(request, svc, settings, force, results)
    else:
        raise HTTPException(415, "send multipart/form-data (files) or application/json (paths)")
    n_err = sum(i["status"] != "ok" for i in items)
    series = await run_in_threadpool(svc.judge_series, results) if len(results) > 0 else []
    return {"model": {"model_id": svc.model_id, "detector": svc.detector.name, "threshold": svc.threshold},
            "n": len(items), "n_ok": len(items) - n_err, "n_error": n_err, "items": items, "series": series}
