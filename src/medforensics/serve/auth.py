"""API tokens: random bearer tokens, stored only as SHA-256 digests in a JSON file (0600).

A token is ``mf_`` + 43 URL-safe characters (256 random bits from :mod:`secrets`). With that much
entropy a fast hash is enough — there is nothing to brute-force — so the file holds
``sha256(token)`` per named token and comparison uses :func:`hmac.compare_digest`. The clear token
is shown once, at creation, and never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

TOKEN_PREFIX = "mf_"


class TokenFileError(ValueError):
    """The token file exists but cannot be used (not JSON, wrong shape, unreadable): fail closed, say why."""


def hash_token(token: str) -> str:
    """Hex SHA-256 digest of a token (what is kept at rest)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """Named token digests in a JSON file: ``{"tokens": {name: {"sha256", "created"}}}``."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._digests: dict[str, str] = {}
        self._mtime: float | None = None

    # ------------------------------------------------------------------ file
    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"tokens": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"tokens file {self.path} is not valid JSON: {exc}") from None
        except OSError as exc:
            raise TokenFileError(f"tokens file {self.path} cannot be read: {exc.strerror or exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), dict):
            raise TokenFileError(f"tokens file {self.path} has no 'tokens' mapping")
        for name, entry in data["tokens"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise TokenFileError(f"tokens file {self.path}: token {name!r} has no 'sha256' digest")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, self.path)

    # ------------------------------------------------------------------ API
    def create(self, name: str, *, replace: bool = False) -> str:
        """Make a new token called ``name``, store its digest, return the clear token (shown once)."""
        name = name.strip()
        if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"token name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
        data = self._read()
        if name in data["tokens"] and not replace:
            raise ValueError(f"a token named {name!r} already exists in {self.path}; revoke it first or replace it")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        data["tokens"][name] = {"sha256": hash_token(token), "created": datetime.now(timezone.utc).isoformat()}
        self._write(data)
        return token

    def revoke(self, name: str) -> bool:
        """Remove the token called ``name``; True if it existed."""
        data = self._read()
        if data["tokens"].pop(name, None) is None:
            return False
        self._write(data)
        return True

    def names(self) -> list[str]:
        return sorted(self._read()["tokens"])

    def _digests_now(self) -> dict[str, str]:
        """Digest → name, re-read when the file changes (tokens can be added while serving)."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        with self._lock:
            if mtime != self._mtime:
                tokens = self._read()["tokens"] if mtime is not None else {}
                self._digests = {entry["sha256"]: name for name, entry in tokens.items()}
                self._mtime = mtime
            return self._digests

    def verify(self, token: str | None) -> str | None:
        """The name of the token if it is valid, else None (constant-time digest comparison)."""
        if not token:
            return None
        digest = hash_token(token)
        found = None
        for known, name in self._digests_now().items():
            if hmac.compare_digest(known, digest):
                found = name
        return found

    def __len__(self) -> int:
        return len(self._digests_now())
