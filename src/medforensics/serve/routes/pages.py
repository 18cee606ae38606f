"""The web page (``/``, ``/static/*``) and the offline API docs page (``/docs``): no token needed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(str(resources.files("medforensics.serve") / "static"))
#: the page loads nothing but its own files: no CDN, no inline script
CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Content-Security-Policy": CSP})


def _swagger_assets() -> tuple[str | None, str, str]:
    """(asset folder or None, JS URL, CSS URL) of Swagger UI: the ``swagger-ui-bundle`` package when
    installed (works on hospital networks without internet), else FastAPI's CDN."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return (None, "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js",
                "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css")
    return swagger_ui_path, "/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    from fastapi.openapi.docs import get_swagger_ui_html

    _, js, css = _swagger_assets()
    return get_swagger_ui_html(openapi_url=request.app.openapi_url or "/openapi.json", title="medforensics API",
                               swagger_js_url=js, swagger_css_url=css, swagger_favicon_url="")


def mount_static(app: FastAPI) -> None:
    """Mount the page's files at ``/static`` and Swagger UI's at ``/docs-assets`` (mounts cannot live in a router)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    folder, _, _ = _swagger_assets()
    if folder is not None:
        app.mount("/docs-assets", StaticFiles(directory=folder), name="docs-assets")
