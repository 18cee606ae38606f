"""``POST /v1/scans``: scan uploaded files (multipart) or server-side paths (JSON, when enabled).

Every input becomes one item of the answer, in order; one bad file never fails the request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..deps import get_service, get_settings, require_token
from ..records import item_dict
from ..service import ItemOutcome, ScanService, upload_suffix
from ..settings import ServeSettings

log = logging.getLogger("medforensics.serve")
router = APIRouter(prefix="/v1", tags=["scans"], dependencies=[Depends(require_token)])

Job = tuple[dict[str, Any], Callable[[], ItemOutcome]]

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


async def run_items(jobs: list[Job], timeout_s: float) -> list[dict[str, Any]]:
    """Run ``(ident, thunk)`` jobs in the thread pool, one after the other, under the request deadline."""
    deadline = time.monotonic() + timeout_s
    items = []
    for index, (ident, thunk) in enumerate(jobs):
        left = deadline - time.monotonic()
        if left <= 0:
            items.append({"index": index, **ident, "status": "error", "scan_id": None, "cached": False,
                          "error": f"not scanned: the request deadline of {timeout_s:g} s passed"})
            continue
        try:
            outcome = await asyncio.wait_for(run_in_threadpool(thunk), timeout=left)
        except asyncio.TimeoutError:
            outcome = ItemOutcome("error", error=f"timed out after {timeout_s:g} s "
                                  "(the result is stored when it completes; re-send to fetch it)")
        except Exception as exc:  # one bad item never fails the request
            log.error("item failed: %s", type(exc).__name__)
            outcome = ItemOutcome("error", error=f"internal error: {type(exc).__name__}")
        items.append(item_dict(outcome, index, **ident))
    return items


def upload_job(upload: UploadFile, svc: ScanService, settings: ServeSettings, force: bool) -> Job:
    """Copy one upload to a temporary file (keeping its recognised suffix), scan it, remove the file."""
    suffix = upload_suffix(upload.filename)
    display = os.path.basename(upload.filename or "") or "upload"

    def job() -> ItemOutcome:
        fd, tmp = tempfile.mkstemp(prefix="mf-upload-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                upload.file.seek(0)
                while chunk := upload.file.read(1 << 20):
                    fh.write(chunk)
            from ...store import content_hash

            h = content_hash(tmp)
            stored = display if settings.store_phi else f"upload:{h[:16]}{suffix}"
            return svc.scan_file(Path(tmp), stored_path=stored, force=force, content_hash=h)
        finally:
            os.unlink(tmp)

    return {"filename": display}, job


def path_job(raw: str, svc: ScanService, settings: ServeSettings, force: bool) -> Job:
    """Scan one server-side file, if it is absolute and inside the allowed roots."""
    def job() -> ItemOutcome:
        p = Path(raw).expanduser()
        if not p.is_absolute():
            return ItemOutcome("error", error="server paths must be absolute")
        if not settings.path_allowed(p):
            return ItemOutcome("error", error="path is outside the allowed roots")
        if not p.is_file():
            return ItemOutcome("error", error="not a file on the server")
        return svc.scan_file(p.resolve(), stored_path=str(p.resolve()), force=force)

    return {"path": raw}, job


async def _upload_items(request: Request, svc: ScanService, settings: ServeSettings, force: bool) -> list[dict]:
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
        return await run_items([upload_job(u, svc, settings, force) for u in uploads], settings.request_timeout_s)
    finally:
        await form.close()


async def _path_items(request: Request, svc: ScanService, settings: ServeSettings, force: bool) -> list[dict]:
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
    return await run_items([path_job(p, svc, settings, force) for p in paths], settings.request_timeout_s)


@router.post("/scans", openapi_extra=SCAN_BODY_DOC)
async def create_scans(request: Request, force: bool = Query(False, description="re-scan even if stored"),
                       svc: ScanService = Depends(get_service),
                       settings: ServeSettings = Depends(get_settings)) -> dict[str, Any]:
    """Scan uploaded files (multipart field ``files``) or server-side ``paths`` (JSON, when enabled)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        items = await _upload_items(request, svc, settings, force)
    elif ctype.startswith("application/json"):
        items = await _path_items(request, svc, settings, force)
    else:
        raise HTTPException(415, "send multipart/form-data (files) or application/json (paths)")
    n_err = sum(i["status"] != "ok" for i in items)
    return {"model": {"model_id": svc.model_id, "detector": svc.detector.name, "threshold": svc.threshold},
            "n": len(items), "n_ok": len(items) - n_err, "n_error": n_err, "items": items}
