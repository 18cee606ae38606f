"""Series verdicts in the receiver: collect each series' instance results and judge the series once it is complete.

A PACS sends a study as many C-STORE requests, one per instance, and the receiver scores each on its
own. :class:`SeriesTracker` keeps, per SeriesInstanceUID, what
:class:`medforensics.engine.series.SeriesAggregator` needs of every scored instance (its score, small
per-frame evidence maps, slice positions, header report — no pixels, no thumbnails) and emits one
series record when the series is *complete*:

- the association that carried it was released and every instance it carried has been scored
  (``storescu`` sending a study in one association gets its verdicts right after the release), or
- nothing arrived for the series for ``quiet_s`` seconds and nothing of it is still being scored
  (instances sent over several associations, a sender that aborts, instances resumed from the spool);
- the receiver stops (every open series is judged on what it has).

Memory stays bounded: a series keeps at most ``max_slices`` instances (the rest are counted and the
record says so, as ``scan --max-slices`` does); the open series together keep at most
``max_open_slices`` (beyond that the least recently active one is judged early); after its verdict
a series leaves the open set, and only the last ``keep_closed`` judged series are kept so that a
late instance re-evaluates its series with full evidence. A late instance of a series no longer
kept re-opens it from the results store (``reload``: the stored instance scores and positions,
without evidence maps: the record then names the slices whose 3-D evidence was not kept).

The emitted record is a :class:`SeriesAggregator` record plus ``study_uid``; a series is reported
only with at least two slices. ``emit(record)`` runs on the tracker's own thread, never on an
association's, and whatever it raises is logged, never propagated.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..engine.series import DEFAULT_MAX_SLICES, SeriesAggregator
from ..results import ScanResult

log = logging.getLogger(__name__)

DEFAULT_QUIET_S = 10.0
DEFAULT_KEEP_CLOSED = 4


@dataclass
class _Open:
    uid: str
    results: dict[str, ScanResult] = field(default_factory=dict)  # SOP Instance UID (or path) → slim result
    dropped: int = 0  # instances beyond max_slices
    pending: int = 0  # announced (spooled) and not finished
    last: float = 0.0  # last arrival or finished instance (monotonic clock)
    closing: bool = False  # the association that carried it was released
    reload: bool = True  # look for earlier instances in the store before judging (not known in memory)
    study_uid: str | None = None

    @property
    def n_frames(self) -> int:
        return sum(max(1, len(r.frames)) for r in self.results.values())


def slim(result: ScanResult) -> ScanResult:
    """What the aggregator needs of a result: no thumbnail, no heat-map."""
    return dataclasses.replace(result, thumbnail=None, heatmap=None)


def _instance_key(result: ScanResult) -> str:
    return str((result.meta or {}).get("sop_instance_uid") or result.path)


class SeriesTracker:
    """Open series of a receiver and when to judge them (module docstring)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], *, threshold: float, fit: str = "center_crop",
                 header_threshold: float = 0.5, quiet_s: float = DEFAULT_QUIET_S,
                 max_slices: int = DEFAULT_MAX_SLICES, max_open_slices: int | None = None,
                 keep_closed: int = DEFAULT_KEEP_CLOSED,
                 reload: Callable[[str], list[ScanResult]] | None = None, tick: float = 0.2,
                 clock: Callable[[], float] = time.monotonic):
        if quiet_s < 0:
            raise ValueError(f"quiet_s must be >= 0, got {quiet_s}")
        if max_slices < 2:
            raise ValueError(f"max_slices must be at least 2, got {max_slices}")
        self.emit_fn = emit
        self.threshold, self.fit, self.header_threshold = float(threshold), fit, float(header_threshold)
        self.quiet_s = float(quiet_s)
        self.max_slices = int(max_slices)
        self.max_open_slices = int(max_open_slices or 8 * self.max_slices)
        self.keep_closed = max(0, int(keep_closed))
        self.reload_fn = reload
        self.tick = float(tick)
        self.clock = clock
        self.emitted = 0
        self._open: dict[str, _Open] = {}
        self._closed: OrderedDict[str, _Open] = OrderedDict()
        self._tokens: dict[Any, str] = {}  # announced instance (spool path) → its series UID
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    # ------------------------------------------------------------------ events (any thread)
    def _get(self, uid: str) -> _Open:
        s = self._open.get(uid)
        if s is None:
            s = self._closed.pop(uid, None)  # a late instance of a series judged a moment ago
            if s is not None:
                s.closing = False
                log.info("series %s re-opened by a late instance", uid)
            else:
                s = _Open(uid)
            self._open[uid] = s
        s.last = self.clock()
        return s

    def expect(self, token: Any, series_uid: str | None) -> None:
        """An instance of ``series_uid`` was received (``token``: its spool path); it will be :meth:`done`."""
        if not series_uid:
            return
        with self._cond:
            self._tokens[token] = series_uid
            self._get(series_uid).pending += 1

    def done(self, token: Any, result: ScanResult | None = None) -> None:
        """An instance finished (``result`` None when it failed): the result joins its series."""
        with self._cond:
            uid = self._tokens.pop(token, None)
            meta_uid = (result.meta or {}).get("series_uid") if result is not None else None
            if uid is not None and uid in self._open:
                self._open[uid].pending = max(0, self._open[uid].pending - 1)
            if result is not None and result.ok and result.score is not None and (meta_uid or uid):
                s = self._get(str(meta_uid or uid))
                key = _instance_key(result)
                if key in s.results or len(s.results) < self.max_slices:
                    s.results[key] = slim(result)
                else:
                    s.dropped += 1
                s.study_uid = s.study_uid or (result.meta or {}).get("study_uid")
                self._evict_if_over()
            self._cond.notify_all()

    def release(self, series_uids: Iterable[str]) -> None:
        """The association that carried these series was released: judge each once its instances are scored."""
        with self._cond:
            for uid in series_uids:
                s = self._open.get(uid)
                if s is not None:
                    s.closing = True
            self._cond.notify_all()

    def _evict_if_over(self) -> None:
        total = sum(s.n_frames for s in self._open.values())
        if total <= self.max_open_slices or len(self._open) < 2:
            return
        oldest = min(self._open.values(), key=lambda s: s.last)
        log.warning("more than %d slices in open series: judging series %s early", self.max_open_slices, oldest.uid)
        oldest.closing, oldest.pending = True, 0

    # ------------------------------------------------------------------ judging
    def due(self, *, everything: bool = False) -> list[_Open]:
        """Take the series to judge now out of the open set (they move to the closed cache)."""
        now = self.clock()
        out = []
        with self._cond:
            for uid, s in list(self._open.items()):
                quiet = now - s.last >= self.quiet_s
                if everything or (s.pending == 0 and (s.closing or quiet)):
                    del self._open[uid]
                    if s.results:
                        out.append(s)
                        self._closed[uid] = s
                        self._closed.move_to_end(uid)
            while len(self._closed) > self.keep_closed:
                self._closed.popitem(last=False)
        return out

    def record(self, s: _Open) -> dict[str, Any] | None:
        """The series record of an open series (None with fewer than two slices)."""
        results = list(s.results.values())
        notes: list[dict[str, Any]] = []
        if s.reload and self.reload_fn is not None:
            try:
                earlier = [r for r in self.reload_fn(s.uid) if _instance_key(r) not in s.results]
            except Exception as err:
                log.error("series %s: cannot read its earlier instances from the store: %s", s.uid,
                          type(err).__name__)
                earlier = []
            room = max(0, self.max_slices - len(results))
            s.dropped += max(0, len(earlier) - room)
            results += earlier[:room]
            if earlier[:room]:
                notes.append({"code": "evidence_not_kept", "severity": "info",
                              "message": f"{len(earlier[:room])} earlier slice(s) re-read from the results store "
                                         "without their evidence maps: 3-D regions were not re-evaluated"})
        agg = SeriesAggregator(self.threshold, fit=self.fit, header_threshold=self.header_threshold,
                               max_slices=self.max_slices)
        for r in results:
            agg.add(r)
        records = [r for r in agg.records() if r.get("series_uid") == s.uid]
        if not records:
            return None
        rec = records[0]
        rec["study_uid"] = s.study_uid or next(((r.meta or {}).get("study_uid") for r in results
                                                if (r.meta or {}).get("study_uid")), None)
        rec["threshold"] = self.threshold
        if s.dropped:
            rec["findings"].append({"code": "slices_not_scored", "severity": "info",
                                    "message": f"{s.dropped} instance(s) beyond --max-slices {self.max_slices} "
                                               "were not analysed"})
        rec["findings"] += notes
        return rec

    def judge(self, *, everything: bool = False) -> int:
        """Judge and emit every due series; returns how many records were emitted."""
        n = 0
        for s in self.due(everything=everything):
            try:
                rec = self.record(s)
                s.reload = False  # the earlier instances are in memory now (or there were none)
                if rec is None:
                    continue
                self.emit_fn(rec)
                n += 1
            except Exception:
                log.exception("series %s: cannot emit its verdict", s.uid)
        self.emitted += n
        return n

    # ------------------------------------------------------------------ background thread
    def start(self) -> None:
        with self._cond:
            self._stop = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dicom-series", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                self._cond.wait(self.tick)
            self.judge()

    def stop(self) -> None:
        """Stop the thread and judge every open series on what it has."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        self.judge(everything=True)

    @property
    def open_series(self) -> list[str]:
        with self._cond:
            return list(self._open)
