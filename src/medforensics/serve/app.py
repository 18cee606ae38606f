"""The FastAPI application: ``create_app(settings)`` → REST API under ``/v1``, the web page at ``/``.

Endpoints (all but ``/``, ``/static/*``, ``/docs`` and ``/healthz`` need ``Authorization: Bearer <token>``):

- ``POST /v1/scans`` — multipart upload of one or more files (field ``files``), or JSON
  ``{"paths": [...]}`` of server-side files when enabled; ``?force=true`` re-scans what the store
  already knows. Answers 200 with one item per input (``status`` "ok" | "error"): one bad file
  never fails the request.
- ``GET /v1/scans`` (``verdict``, ``source``, ``run_id``, ``limit``, ``offset``), ``/v1/scans.csv``,
  ``/v1/scans.json`` — stored results; ``GET /v1/scans/{id}`` (+ ``/image.png``, ``/heatmap.png``).
- ``GET /v1/series`` (``verdict``, ``source``, ``study_uid``, ``modality``, ``model_id``, ``limit``,
  ``offset``), ``GET /v1/series/{uid}`` — stored series verdicts (``POST /v1/scans`` answers the
  series of its instances under ``series``).
- ``GET /v1/models``, ``GET /healthz``; OpenAPI at ``/openapi.json`` and ``/docs``.

The routes live in :mod:`medforensics.serve.routes` (one ``APIRouter`` per area); they get the service,
settings and token store through the dependencies of :mod:`medforensics.serve.deps`.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .. import __version__
from .auth import TokenFileError, TokenStore
from .middleware import AccessLog, BodySizeLimit
from .routes import health, models, pages, results, scans, series
from .service import ScanService
from .settings import ServeSettings

log = logging.getLogger("medforensics.serve")


@asynccontextmanager
async def _lifespan(app: FastAPI):
    svc, tokens, settings = app.state.service, app.state.tokens, app.state.settings
    try:
        n_tokens = len(tokens) if settings.auth else 0
    except TokenFileError as exc:  # requests get a 503 saying so; the service still starts
        log.error("%s", exc)
        n_tokens = 0
    log.info("serving model %s (threshold %.4f), %d API token(s)", svc.model_id, svc.threshold, n_tokens)
    yield
    await run_in_threadpool(svc.close)  # finish queued files, stop the engine and its decode workers


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error: %s", type(exc).__name__)  # never the message: it may quote file names
    return JSONResponse({"detail": "internal error"}, status_code=500)


def create_app(settings: ServeSettings | None = None, *, service: ScanService | None = None,
               tokens: TokenStore | None = None) -> FastAPI:
    """Build the app; the model is loaded once here (or ``service`` is used as given)."""
    settings = settings or ServeSettings.from_env()
    app = FastAPI(title="medforensics", version=__version__, lifespan=_lifespan, docs_url=None,
                  description="Detect AI-generated and tampered medical images. Research use only; not a medical device.")
    app.state.settings = settings
    app.state.service = service or ScanService(settings)
    app.state.tokens = tokens or TokenStore(settings.tokens_file)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(AccessLog)  # outermost: 413s and 401s are logged too
    app.add_exception_handler(Exception, _unexpected)
    for module in (pages, health, models, scans, results, series):
        app.include_router(module.router)
    pages.mount_static(app)
    return app
