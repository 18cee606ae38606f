"""FastAPI dependencies of the routers: the service, settings and token store of the app, and the token check.

Everything a route needs comes from ``request.app.state`` (set once by :func:`~medforensics.serve.app.create_app`),
so routers are plain module-level :class:`fastapi.APIRouter` objects with no closures.
"""

from __future__ import annotations

import logging

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .auth import TokenFileError, TokenStore
from .service import ScanService
from .settings import ServeSettings

log = logging.getLogger("medforensics.serve")

bearer = HTTPBearer(auto_error=False, description="API token from `medforensics serve --create-token NAME`")


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_service(request: Request) -> ScanService:
    return request.app.state.service


def get_tokens(request: Request) -> TokenStore:
    return request.app.state.tokens


async def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer),
                        settings: ServeSettings = Depends(get_settings),
                        tokens: TokenStore = Depends(get_tokens)) -> str:
    """The name of the caller's token; 401 without a valid one, 503 when the token file is unusable
    (the service fails closed and says what is wrong with the file)."""
    if not settings.auth:
        return "anonymous"
    try:
        name = tokens.verify(creds.credentials if creds else None)
    except TokenFileError as exc:
        log.error("refusing requests: %s", exc)
        raise HTTPException(503, f"{exc} (every request is refused until the file is fixed)") from None
    if name is None:
        raise HTTPException(401, "missing or invalid API token", headers={"WWW-Authenticate": "Bearer"})
    return name
