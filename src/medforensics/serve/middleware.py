"""ASGI middleware of the service (body-size limit, access log) and the uvicorn logging options.

The access log records method, route template (``/v1/scans/{scan_id}``), status and duration — never the
query string, file names or bodies, which may carry tokens or PHI. uvicorn's own access log (full URLs
with query strings) is switched off by :func:`uvicorn_options`.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("medforensics.serve")
ACCESS = logging.getLogger("medforensics.serve.access")


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


class AccessLog:
    """ASGI middleware: one ``medforensics.serve.access`` line per request — method, route template, status,
    milliseconds. The route template comes from the matched route (``?`` when none matched)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            ACCESS.info("%s %s → %d (%.0f ms)", scope.get("method", "?"), getattr(route, "path", "?"), status,
                        1000 * (time.perf_counter() - t0))


def log_config(log_level: str = "info") -> dict[str, Any]:
    """uvicorn's logging configuration plus the ``medforensics`` loggers (so the service's access log and
    warnings are printed by default), at ``log_level``."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["medforensics"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    return cfg


def uvicorn_options(log_level: str = "info") -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config``: our logging, and no uvicorn access log
    (it records full URLs, query strings included)."""
    return {"log_config": log_config(log_level), "log_level": log_level, "access_log": False}
