"""The reader-study web app: a blinded page that shows one image at a time and a results page.

API (no file names, paths, labels or detector scores before a session is finished):

- ``POST /api/sessions`` ``{"reader": "name"}`` → ``{"session_id", "n"}``
- ``GET /api/sessions/{sid}`` → progress (``n``, ``n_answered``, ``next_position``, ``status``)
- ``GET /api/sessions/{sid}/items/{position}/image.png`` → the blinded image
- ``POST /api/sessions/{sid}/items/{position}/answer`` ``{"answer": "real"|"fake", "confidence": 1..5}``
- ``POST /api/sessions/{sid}/finish`` → the summary (reader vs detector), stored in the results store
- ``GET /api/sessions/{sid}/summary`` → the stored summary; ``GET /results/{sid}`` → results page
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .study import ReaderStudy

STATIC = Path(str(resources.files("medforensics.reader_study") / "static"))
CSP = "default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
NO_STORE = {"Cache-Control": "no-store"}


class NewSession(BaseModel):
    reader: str = Field("anonymous", max_length=128)


class Answer(BaseModel):
    answer: Literal["real", "fake"]
    confidence: int = Field(..., ge=1, le=5)


def create_reader_app(study: ReaderStudy) -> FastAPI:
    """The reader-study app around a prepared :class:`ReaderStudy`."""
    app = FastAPI(title="medforensics reader study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study = study

    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Content-Security-Policy": CSP})

    app.get("/", include_in_schema=False)(page)

    @app.get("/results/{session_id}", include_in_schema=False)
    async def results_page(session_id: str) -> FileResponse:
        return page()

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def call(fn, *args, **kwargs):
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except KeyError:
            raise HTTPException(404, "no such session or image") from None
        except PermissionError as err:
            raise HTTPException(409, str(err)) from None
        except ValueError as err:
            raise HTTPException(409, str(err)) from None

    @app.post("/api/sessions")
    async def new_session(body: NewSession) -> dict:
        sid = await run_in_threadpool(study.new_session, body.reader)
        return {"session_id": sid, "n": len(study.images)}

    @app.get("/api/sessions/{session_id}")
    async def status(session_id: str) -> dict:
        return await call(study.status, session_id)

    @app.get("/api/sessions/{session_id}/items/{position}/image.png")
    async def image(session_id: str, position: int) -> Response:
        data = await call(study.image_png, session_id, position)
        return Response(data, media_type="image/png", headers=NO_STORE)

    @app.post("/api/sessions/{session_id}/items/{position}/answer")
    async def answer(session_id: str, position: int, body: Answer) -> dict:
        await call(study.answer, session_id, position, answer=1 if body.answer == "fake" else 0,
                   confidence=body.confidence)
        return await call(study.status, session_id)

    @app.post("/api/sessions/{session_id}/finish")
    async def finish(session_id: str) -> dict:
        return await call(study.finish, session_id)

    @app.get("/api/sessions/{session_id}/summary")
    async def summary(session_id: str) -> dict:
        out = await call(study.summary, session_id)
        if out is None:
            raise HTTPException(409, "this session is not finished yet")
        return out

    return app
