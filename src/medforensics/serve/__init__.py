"""REST service and web page: ``create_app(settings)`` (FastAPI), API tokens, service settings.

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart, sqlalchemy, alembic). Run it with
``medforensics serve``; see ``docs/service.md``.
"""

from .auth import TokenStore, hash_token
from .settings import ServeSettings

__all__ = ["ServeSettings", "TokenStore", "create_app", "hash_token"]


def __getattr__(name: str):
    if name == "create_app":  # imported lazily: pulls in FastAPI and the detector stack
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
