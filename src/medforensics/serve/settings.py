"""Service settings: one pydantic model, filled from keyword arguments, ``MEDFORENSICS_*`` env vars
and the ``medforensics serve`` options (in that order of precedence: explicit > env > default).

``pydantic-settings`` is not a dependency; :meth:`ServeSettings.from_env` reads the environment
with the same naming rule it would use (``MEDFORENSICS_<FIELD>``; lists comma-separated).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_PREFIX = "MEDFORENSICS_"


def default_home() -> Path:
    """Where the service keeps its state unless told otherwise (``$MEDFORENSICS_HOME`` or ``~/.medforensics``)."""
    return Path(os.environ.get(f"{ENV_PREFIX}HOME", Path.home() / ".medforensics")).expanduser()


class ServeSettings(BaseModel):
    """Everything ``create_app`` needs; safe defaults (loopback, auth on, CORS off, server paths off)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    db_url: str | None = None  # None → the store's default (embedded SQLite)
    store_phi: bool = False  # keep patient name/ID and upload file names in the store
    model: str = "default"  # shipped model name or model directory
    threshold: float | None = None  # override the model's calibrated threshold
    max_frames: int = Field(16, ge=1)
    tokens_file: Path = Field(default_factory=lambda: default_home() / "tokens.json")
    auth: bool = True  # False only for local experiments; `serve` refuses it on non-loopback hosts
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1)  # whole request body
    max_files: int = Field(32, ge=1)  # files (or paths) per request
    request_timeout_s: float = Field(120.0, gt=0)  # scoring deadline of one request
    batch_size: int = Field(32, ge=1)  # frames per model batch, gathered across concurrent requests
    decode_workers: int | None = Field(None, ge=0)  # decode processes (None → the engine's default)
    decode_timeout_s: float = Field(60.0, gt=0)  # a decoder stuck longer on one file is killed
    allow_server_paths: bool = False
    allowed_roots: list[Path] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=list)  # empty → no CORS headers at all
    heatmap_dir: Path = Field(default_factory=lambda: default_home() / "previews")
    export_limit: int = Field(10_000, ge=1)  # most rows of one CSV/JSON export
    # bytes one decode may hold (e.g. "512M"; None → medforensics.io's budget, 1 GiB unless
    # MEDFORENSICS_DECODE_BUDGET says otherwise): a larger image is refused before any pixel is allocated
    decode_budget: int | None = None

    @field_validator("decode_budget", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        from ..io.budget import parse_bytes

        return None if value is None or value == "" else parse_bytes(value)

    @field_validator("allowed_roots", mode="after")
    @classmethod
    def _resolve_roots(cls, roots: list[Path]) -> list[Path]:
        return [Path(r).expanduser().resolve() for r in roots]

    @field_validator("allowed_roots", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @classmethod
    def from_env(cls, **overrides: Any) -> "ServeSettings":
        """Settings from ``MEDFORENSICS_<FIELD>`` environment variables, then ``overrides`` (None = unset)."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = os.environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def path_allowed(self, path: Path) -> bool:
        """True when server paths are enabled and ``path`` (symlinks resolved) lies inside an allowed root."""
        if not self.allow_server_paths:
            return False
        real = Path(path).expanduser().resolve()
        return any(real == root or real.is_relative_to(root) for root in self.allowed_roots)
