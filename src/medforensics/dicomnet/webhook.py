"""JSON webhook for flagged results: POSTs from a background thread (never blocks a DICOM association).

Payload: ``{"event": "medforensics.flagged", "result": <ScanRecord.to_dict() without patient_name>}``.
Delivery is retried a few times with back-off; failures are logged (URL host and record id only)
and counted, never raised into the receiver.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_STOP = object()


def check_url(url: str) -> str:
    """Validate a webhook URL (http/https with a host); return it or raise ``ValueError``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"webhook URL must be http(s)://host[:port]/path, got {url!r}")
    return url


def post_json(url: str, payload: dict[str, Any], *, timeout: float = 5.0, headers: dict[str, str] | None = None) -> int:
    """POST ``payload`` as JSON; return the HTTP status (raises ``urllib.error.URLError``/``HTTPError``)."""
    body = json.dumps(payload, default=str).encode("utf-8")
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "medforensics",
                                          **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked in check_url
        return int(resp.status)


class WebhookSender:
    """Queue of payloads delivered by one daemon thread; :meth:`close` drains the queue."""

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3, backoff: float = 0.5,
                 headers: dict[str, str] | None = None):
        self.url = check_url(url)
        self.timeout, self.retries, self.backoff, self.headers = timeout, retries, backoff, headers
        self.sent = self.failed = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="medforensics-webhook", daemon=True)
        self._thread.start()

    def submit(self, payload: dict[str, Any]) -> None:
        self._queue.put(payload)

    def _deliver(self, payload: dict[str, Any]) -> bool:
        host = urlsplit(self.url).netloc
        for attempt in range(self.retries + 1):
            try:
                status = post_json(self.url, payload, timeout=self.timeout, headers=self.headers)
                if 200 <= status < 300:
                    return True
                log.warning("webhook %s answered HTTP %s", host, status)
            except urllib.error.HTTPError as err:
                log.warning("webhook %s answered HTTP %s", host, err.code)
                if 400 <= err.code < 500 and err.code != 429:
                    return False  # the receiver refuses this payload: retrying will not help
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                log.warning("webhook %s unreachable: %s", host, getattr(err, "reason", err))
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        return False

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is _STOP:
                    return
                ok = self._deliver(payload)
                self.sent += ok
                self.failed += not ok
                if not ok:
                    rid = payload.get("result", {}).get("id") if isinstance(payload, dict) else None
                    log.error("webhook delivery failed for record %s", rid)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every submitted payload was delivered (or given up)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._queue.put(_STOP)
        self._thread.join(timeout)
