"""The FastAPI application: ``create_app(settings)`` → REST API under ``/v1``, the web page at ``/``.

Endpoints (all but ``/``, ``/static/*`` and ``/healthz`` need ``Authorization: Bearer <token>``):

- ``POST /v1/scans`` — multipart upload of one or more files (field ``files``), or JSON
  ``{"paths": [...]}`` of server-side files when enabled; ``?force=true`` re-scans what the store
  already knows. Answers 200 with one item per input (``status`` "ok" | "error"): one bad file
  never fails the request.
- ``GET /v1/scans`` (``verdict``, ``source``, ``run_id``, ``limit``, ``offset``), ``/v1/scans.csv``,
  ``/v1/scans.json`` — stored results; ``GET /v1/scans/{id}`` (+ ``/image.png``, ``/heatmap.png``).
- ``GET /v1/models``, ``GET /healthz``; OpenAPI at ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import tempfile
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from .auth import TokenStore
from .previews import PREVIEW_SIZE, apply_window, display_units, png_bytes, preview_paths, read_unit_png
from .service import ItemOutcome, ScanService, upload_suffix
from .settings import ServeSettings

log = logging.getLogger("medforensics.serve")
Verdict = Literal["fake", "real", "error"]
STATIC = Path(str(resources.files("medforensics.serve") / "static"))
#: the page loads nothing but its own files: no CDN, no inline script
CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
EXPORT_FIELDS = ("id", "created_at", "source", "path", "sop_instance_uid", "modality", "detector",
                 "detector_version", "model_id", "score", "threshold", "verdict", "error", "content_hash", "run_id")


# ---------------------------------------------------------------------------- body size limit
class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: 413 when a request body exceeds ``max_bytes`` (Content-Length or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body exceeds the limit of {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)


# ---------------------------------------------------------------------------- helpers
def _record_dict(rec: Any, *, cached: bool | None = None) -> dict[str, Any]:
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


def _item(outcome: ItemOutcome, index: int, **ident: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, **ident, "status": outcome.status, "error": outcome.error,
                           "cached": outcome.cached}
    if outcome.record is not None:
        out["scan_id"] = outcome.record.id
        out["scan"] = _record_dict(outcome.record)
    else:
        out["scan_id"] = None
    return out


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(EXPORT_FIELDS)
    for r in rows:
        writer.writerow(["" if r.get(k) is None else r.get(k) for k in EXPORT_FIELDS])
    return buf.getvalue()


# ---------------------------------------------------------------------------- app factory
def create_app(settings: ServeSettings | None = None, *, service: ScanService | None = None,
               tokens: TokenStore | None = None) -> FastAPI:
    """Build the app; the model is loaded once here (or ``service`` is used as given)."""
    settings = settings or ServeSettings.from_env()
    svc = service or ScanService(settings)
    token_store = tokens or TokenStore(settings.tokens_file)
    bearer = HTTPBearer(auto_error=False, description="API token from `medforensics serve --create-token NAME`")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("serving model %s (threshold %.4f), %d API token(s)", svc.model_id, svc.threshold,
                 len(token_store) if settings.auth else 0)
        yield

    app = FastAPI(title="medforensics", version=__version__, lifespan=lifespan, docs_url=None,
                  description="Detect AI-generated and tampered medical images. Research use only; not a medical device.")
    _mount_offline_docs(app)
    app.state.settings = settings
    app.state.service = svc
    app.state.tokens = token_store
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.middleware("http")
    async def access_log(request: Request, call_next):
        # route template and status only: file names, query values and bodies may carry PHI
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        log.info("%s %s → %d (%.0f ms)", request.method, getattr(route, "path", "?"), response.status_code,
                 1000 * (time.perf_counter() - t0))
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s", type(exc).__name__)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    async def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        if not settings.auth:
            return "anonymous"
        name = token_store.verify(creds.credentials if creds else None)
        if name is None:
            raise HTTPException(401, "missing or invalid API token", headers={"WWW-Authenticate": "Bearer"})
        return name

    auth = [Depends(require_token)]

    # ------------------------------------------------------------------ open endpoints
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Content-Security-Policy": CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Liveness and readiness: the model is loaded and the store answers."""
        try:
            await run_in_threadpool(lambda: svc.store.query(limit=1))  # cheap round trip
            store_ok = True
        except Exception as exc:  # report, don't crash the probe
            log.error("store check failed: %s", type(exc).__name__)
            store_ok = False
        return {"status": "ok" if store_ok else "degraded", "model_id": svc.model_id, "store": store_ok,
                "version": __version__}

    # ------------------------------------------------------------------ models
    @app.get("/v1/models", dependencies=auth, tags=["models"])
    async def models() -> dict[str, Any]:
        """The model this service scores with, plus registered detectors and shipped models."""
        from ..detectors import list_detectors
        from ..detectors.registry import PRETRAINED

        return {"active": svc.model_info(), "registered_detectors": list_detectors(), "shipped": sorted(PRETRAINED)}

    # ------------------------------------------------------------------ scanning
    async def _run_items(jobs: list[tuple[dict[str, Any], Any]]) -> list[dict[str, Any]]:
        """Run ``(ident, thunk)`` jobs in the thread pool, one after the other, under the request deadline."""
        deadline = time.monotonic() + settings.request_timeout_s
        items = []
        for index, (ident, thunk) in enumerate(jobs):
            left = deadline - time.monotonic()
            if left <= 0:
                items.append({"index": index, **ident, "status": "error", "scan_id": None, "cached": False,
                              "error": f"not scanned: the request deadline of {settings.request_timeout_s:g} s passed"})
                continue
            try:
                outcome = await asyncio.wait_for(run_in_threadpool(thunk), timeout=left)
            except asyncio.TimeoutError:
                outcome = ItemOutcome("error", error=f"timed out after {settings.request_timeout_s:g} s "
                                      "(the result is stored when it completes; re-send to fetch it)")
            except Exception as exc:  # one bad item never fails the request
                log.error("item failed: %s", type(exc).__name__)
                outcome = ItemOutcome("error", error=f"internal error: {type(exc).__name__}")
            items.append(_item(outcome, index, **ident))
        return items

    def _upload_job(upload: UploadFile, force: bool):
        suffix = upload_suffix(upload.filename)
        display = os.path.basename(upload.filename or "") or "upload"

        def job() -> ItemOutcome:
            fd, tmp = tempfile.mkstemp(prefix="mf-upload-", suffix=suffix)
            try:
                with os.fdopen(fd, "wb") as fh:
                    upload.file.seek(0)
                    while chunk := upload.file.read(1 << 20):
                        fh.write(chunk)
                from ..store import content_hash

                h = content_hash(tmp)
                stored = display if settings.store_phi else f"upload:{h[:16]}{suffix}"
                return svc.scan_file(Path(tmp), stored_path=stored, force=force, content_hash=h)
            finally:
                os.unlink(tmp)

        return {"filename": display}, job

    def _path_job(raw: str, force: bool):
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

    scan_body_doc = {
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

    @app.post("/v1/scans", dependencies=auth, tags=["scans"], openapi_extra=scan_body_doc)
    async def create_scans(request: Request, force: bool = Query(False, description="re-scan even if stored")) -> dict[str, Any]:
        """Scan uploaded files (multipart field ``files``) or server-side ``paths`` (JSON, when enabled)."""
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=settings.max_files + 1, max_fields=settings.max_files + 16)
            except HTTPException as exc:
                if "Too many files" in str(exc.detail):
                    raise HTTPException(413, f"at most {settings.max_files} files per request") from None
                raise
            uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not uploads:
                raise HTTPException(422, "no files in the upload (use the multipart field 'files')")
            if len(uploads) > settings.max_files:
                raise HTTPException(413, f"at most {settings.max_files} files per request, got {len(uploads)}")
            try:
                items = await _run_items([_upload_job(u, force) for u in uploads])
            finally:
                await form.close()
        elif ctype.startswith("application/json"):
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
            items = await _run_items([_path_job(p, force or bool(body.get("force"))) for p in paths])
        else:
            raise HTTPException(415, "send multipart/form-data (files) or application/json (paths)")
        n_err = sum(i["status"] != "ok" for i in items)
        return {"model": {"model_id": svc.model_id, "detector": svc.detector.name, "threshold": svc.threshold},
                "n": len(items), "n_ok": len(items) - n_err, "n_error": n_err, "items": items}

    async def _get(scan_id: str) -> Any:
        rec = await run_in_threadpool(svc.store.get, scan_id)
        if rec is None:
            raise HTTPException(404, "no such scan")
        return rec

    async def _query(verdict: str | None, source: str | None, run_id: str | None, limit: int, offset: int):
        kw = {"verdict": verdict, "source": source, "run_id": run_id}
        recs = await run_in_threadpool(lambda: svc.store.query(**kw, limit=limit, offset=offset))
        total = await run_in_threadpool(lambda: svc.store.count(**kw))
        return [_record_dict(r) for r in recs], total

    @app.get("/v1/scans", dependencies=auth, tags=["scans"])
    async def list_scans(verdict: Verdict | None = None, source: str | None = None, run_id: str | None = None,
                         limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        """Stored results, newest first."""
        rows, total = await _query(verdict, source, run_id, limit, offset)
        return {"total": total, "limit": limit, "offset": offset, "items": rows}

    @app.get("/v1/scans.csv", dependencies=auth, tags=["scans"], response_class=Response)
    async def export_csv(verdict: Verdict | None = None, source: str | None = None, run_id: str | None = None,
                         limit: int = Query(1000, ge=1), offset: int = Query(0, ge=0)) -> Response:
        """Stored results as CSV (at most ``export_limit`` rows)."""
        rows, _ = await _query(verdict, source, run_id, min(limit, settings.export_limit), offset)
        return Response(_csv_text(rows), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="medforensics-scans.csv"'})

    @app.get("/v1/scans.json", dependencies=auth, tags=["scans"])
    async def export_json(verdict: Verdict | None = None, source: str | None = None, run_id: str | None = None,
                          limit: int = Query(1000, ge=1), offset: int = Query(0, ge=0)) -> JSONResponse:
        """Stored results as one JSON document (at most ``export_limit`` rows)."""
        rows, total = await _query(verdict, source, run_id, min(limit, settings.export_limit), offset)
        return JSONResponse({"total": total, "items": rows},
                            headers={"Content-Disposition": 'attachment; filename="medforensics-scans.json"'})

    @app.get("/v1/scans/{scan_id}", dependencies=auth, tags=["scans"])
    async def get_scan(scan_id: str) -> dict[str, Any]:
        """One stored result."""
        return _record_dict(await _get(scan_id))

    def _image_path(rec: Any) -> Path:
        image_p, _ = preview_paths(svc.preview_dir, rec.content_hash, rec.model_id or "")
        if not image_p.is_file():
            raise HTTPException(404, "no preview image stored for this scan")
        return image_p

    @app.get("/v1/scans/{scan_id}/image.png", dependencies=auth, tags=["scans"], response_class=Response)
    async def scan_image(scan_id: str, level: float | None = None, width: float | None = Query(None, gt=0)) -> Response:
        """The scanned view (best frame, detector's crop); ``level``/``width`` in HU for CT, else 0..1."""
        rec = await _get(scan_id)
        path = _image_path(rec)
        units = display_units(rec.modality, rec.meta)

        def render() -> bytes:
            return png_bytes(apply_window(read_unit_png(path), units, level, width))

        return Response(await run_in_threadpool(render), media_type="image/png")

    @app.get("/v1/scans/{scan_id}/heatmap.png", dependencies=auth, tags=["scans"], response_class=Response)
    async def scan_heatmap(scan_id: str, mode: Literal["overlay", "map"] = "overlay",
                           alpha: float = Query(0.45, ge=0, le=1), level: float | None = None,
                           width: float | None = Query(None, gt=0)) -> Response:
        """The evidence heat-map blended over the image (``mode=overlay``) or colour-mapped alone (``map``)."""
        from ..eval.report import colorize_heatmap, overlay_heatmap

        rec = await _get(scan_id)
        if not rec.heatmap_path or not Path(rec.heatmap_path).is_file():
            raise HTTPException(404, "no heat-map stored for this scan")
        units = display_units(rec.modality, rec.meta)
        image_p = _image_path(rec) if mode == "overlay" else None

        def render() -> bytes:
            heat = read_unit_png(rec.heatmap_path)
            if image_p is None:
                return png_bytes(colorize_heatmap(heat, size=(PREVIEW_SIZE, PREVIEW_SIZE)))
            image = apply_window(read_unit_png(image_p), units, level, width)
            return png_bytes(overlay_heatmap(image, heat, alpha=alpha))

        return Response(await run_in_threadpool(render), media_type="image/png")

    return app


def _mount_offline_docs(app: FastAPI) -> None:
    """Serve the OpenAPI page at ``/docs`` with Swagger UI assets from the ``swagger-ui-bundle``
    package, so it works on hospital networks without internet (FastAPI's default uses a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # fall back to FastAPI's CDN-hosted page
        swagger_ui_path = None
    if swagger_ui_path is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
        js, css = "/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"
    else:
        js = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
        css = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="medforensics API",
                                   swagger_js_url=js, swagger_css_url=css, swagger_favicon_url="")
