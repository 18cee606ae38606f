"""The results-store de-duplication rule, written once for every entry point.

For one input with key ``k`` (:func:`medforensics.engine.keys.content_key`) and model ``m``:

1. the store holds an OK result of ``k`` by ``m`` (and ``force`` is off) → that result answers it,
   marked ``cached``; nothing is scored, no row is added;
2. otherwise the input is scored;
3. the fresh result is stored as a new row — unless the store already held an *error* for ``k``
   and the input failed again: then the stored error answers it (``cached``) and no row is added.
   (A stored error is therefore always retried: the failure may have been transient.)

Inputs without a key (a path that does not exist, a FIFO) are never stored.
"""

from __future__ import annotations

from typing import Any

from ..results import ScanResult


class StoreRule:
    """Look-up and record against a :class:`medforensics.store.ResultStore` for one model."""

    def __init__(self, store: Any, detector: Any, model_id: str, *, force: bool = False, source: str = "cli"):
        self.store = store
        self.detector = detector
        self.model_id = model_id
        self.force = force
        self.source = source

    def lookup(self, key: str | None) -> Any:
        """The stored record for ``key`` (OK or error), or None (also when ``force``)."""
        if key is None or self.force:
            return None
        return self.store.find(content_hash=key, detector=self.detector.name,
                               detector_version=self.detector.version, model_id=self.model_id)

    @staticmethod
    def answers(previous: Any) -> bool:
        """Rule 1: a stored OK result answers the input without scoring."""
        return previous is not None and previous.ok

    def cached_result(self, previous: Any, path: str, threshold: float, key: str) -> ScanResult:
        res = previous.to_result(path=path, threshold=threshold)
        res.content_hash, res.scan_id, res.cached = key, previous.id, True
        return res

    def record(self, result: ScanResult, key: str | None, previous: Any, *, run_id: str | None = None,
               **extra: Any) -> ScanResult:
        """Rule 3: store a freshly scored result (or let a stored error answer a repeated failure)."""
        result.content_hash = key
        if key is None:
            return result
        if previous is not None and not result.ok:
            result.scan_id, result.cached = previous.id, True
            return result
        # UIDs and the patient ID come from result.meta; the store hashes the ID unless opened with store_phi
        rec = self.store.add(result, content_hash=key, detector=self.detector.name,
                             detector_version=self.detector.version, source=self.source, run_id=run_id,
                             model_id=self.model_id, **extra)
        result.scan_id = rec.id
        return result
