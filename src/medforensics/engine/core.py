"""The one scan engine: decode workers → batches across files → detector → :class:`ScanResult`.

Every entry point walks this path: ``medforensics scan`` (with or without ``--db``), the Ray path,
the REST service and the DICOM receiver.

- **Decoding** runs in worker processes (:class:`~medforensics.engine.decode.DecodePool`): a native
  decoder that panics, crashes or hangs costs one file, reported as a named error.
- **Batching**: decoded frames of many files are stacked into one model batch of about
  ``batch_size`` frames; the detector computes score and evidence map in one pass where it can
  (:meth:`Detector.score_with_maps`).
- **Order and memory**: :meth:`ScanEngine.scan` streams results in input order; at most ``window``
  inputs are between "read from the input iterator" and "handed to the caller", and decoded
  frames waiting for the model are capped at four batches, so memory stays flat however many
  files are scanned.
- **De-duplication** against a results store follows :mod:`medforensics.engine.dedup`, keyed by
  :func:`~medforensics.engine.keys.content_key` (the same for a file, an upload and a C-STORE).
- **Concurrent callers** (service requests, received instances) use :meth:`ScanEngine.submit`,
  which returns a future; a background thread gathers submitted inputs into model batches
  (dynamic batching: it scores as soon as a batch is full, nothing else is being decoded, or the
  oldest decoded input has waited ``max_wait`` seconds).

A multi-frame file or volume is scored per frame (at most ``max_frames``, evenly spaced); its score
is the maximum frame score, its heat-map and thumbnail those of that frame.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..io import UnreadableImageError, iter_files, standardise
from ..results import ScanResult
from .decode import DEFAULT_TIMEOUT, Decoded, DecodeOptions, DecodePool
from .fusion import fuse
from .dedup import StoreRule
from .keys import model_fingerprint
from .series import SLICE_MAP

log = logging.getLogger(__name__)

#: side of the thumbnail and heat-map kept per result (small, so a report over many files fits in memory)
THUMBNAIL = 128


def default_workers() -> int:
    """Decode workers for this machine: one per core beyond the one the model uses, 1–4."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


@dataclass
class ScanInput:
    """One input for the engine: a file on disk, reported under ``name`` (e.g. an upload's file name)."""

    path: Path
    name: str | None = None
    error: str | None = None  # an input that failed before decoding (e.g. the walk could not list it)
    force: bool = False  # score it even if the store holds an answer (the engine's ``force``, per input)

    @property
    def reported(self) -> str:
        return self.name if self.name is not None else str(self.path)


def expand_inputs(paths: Iterable[str | Path | ScanInput]) -> Iterator[ScanInput]:
    """Files and folders (walked lazily, :func:`medforensics.io.iter_files` order) → :class:`ScanInput`.

    A path that cannot be walked (missing, unreadable folder, dangling link) becomes an input with
    ``error`` set: it is reported and the walk goes on.
    """
    from ..io import iter_entries

    for raw in paths:
        if isinstance(raw, ScanInput):
            yield raw
            continue
        for item in iter_entries([raw]):
            if isinstance(item, UnreadableImageError):
                yield ScanInput(Path(item.path), error=item.reason)
            else:
                yield ScanInput(Path(item))


@dataclass
class RunSummary:
    """Counts and throughput of one engine run."""

    run_id: str | None = None
    n_files: int = 0  # inputs seen
    n_ok: int = 0  # inputs with a score (fresh or from the store)
    n_error: int = 0  # inputs that could not be read or scored
    n_cached: int = 0  # answered from the store
    n_scored: int = 0  # tried afresh in this run (decoded and scored, or failed), not answered from the store
    seconds: float = 0.0
    images_per_s: float = 0.0  # freshly scored inputs per second of wall time
    files_per_s: float = 0.0  # all inputs per second
    decode_restarts: int = 0  # decode workers replaced after a crash or a time-out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count(self, result: ScanResult, scored: bool) -> None:
        self.n_files += 1
        self.n_ok += result.ok
        self.n_error += not result.ok
        self.n_cached += result.cached
        self.n_scored += scored

    def finish(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.images_per_s = self.n_scored / seconds if seconds > 0 else 0.0
        self.files_per_s = self.n_files / seconds if seconds > 0 else 0.0


@dataclass
class _Item:
    seq: int
    inp: ScanInput
    future: Future | None = None
    decoded: Decoded | None = None
    previous: Any = None  # the store's record for this key, if any
    cached: ScanResult | None = None  # a stored OK answer (kept while maps are computed for a report)
    t_ready: float = 0.0
    scored: bool = False
    centres: list | None = None  # ROI centre per decoded frame, in the model's input pixels (engine roi)


class _Pipeline:
    """Items between input and result: decoding, waiting for the model, scored."""

    def __init__(self, engine: ScanEngine, pool: DecodePool, run_id: str | None = None):
        self.e, self.pool, self.run_id = engine, pool, run_id
        self.items: dict[int, _Item] = {}
        self.ready: deque[int] = deque()
        self.ready_frames = 0
        self.decoding = 0
        self.finished: dict[int, ScanResult] = {}  # scan(): results waiting for their turn
        # the same content twice in flight (store keys only): the first is scored, the others wait for its answer
        self.leaders: dict[str, int] = {}  # key → seq of the item being scored
        self.followers: dict[int, list[_Item]] = {}  # leader seq → items answered by it

    # ------------------------------------------------------------------ stages
    def add(self, item: _Item) -> None:
        self.items[item.seq] = item
        if item.inp.error is not None:
            self._finish(item, self.e._error_result(item.inp.reported, item.inp.error))
            return
        self.decoding += 1
        self.pool.submit(item.seq, item.inp.path)

    def poll(self, timeout: float | None) -> None:
        for d in self.pool.get(timeout):
            self.decoding -= 1
            item = self.items.get(d.seq)
            if item is None:
                continue
            item.decoded = d
            rule = self.e.rule
            if rule is not None and d.key is not None and not item.inp.force:
                item.previous = rule.lookup(d.key)
            if d.error is None and self.e.roi is not None:
                d.error = self.e._place_roi(item, d)
            if d.error is not None:
                item.scored = True  # a fresh attempt (a stored error is always tried again)
                self._finish(item, self.e._error_result(item.inp.reported, d.error))
                continue
            if rule is not None and rule.answers(item.previous):
                item.cached = rule.cached_result(item.previous, item.inp.reported, self.e.threshold, d.key)
                if not (self.e.with_maps and self.e.cached_maps):  # the stored answer is enough
                    self._finish(item, item.cached)
                    continue
            if rule is not None and d.key is not None and not item.inp.force:
                leader = self.leaders.get(d.key)
                if leader is not None:  # the same content is being scored now: one row, one answer
                    self.followers.setdefault(leader, []).append(item)
                    continue
                self.leaders[d.key] = d.seq
            item.t_ready = time.monotonic()
            self.ready.append(d.seq)
            self.ready_frames += d.n_frames

    def should_score(self, *, dynamic: bool) -> bool:
        if not self.ready:
            return False
        if self.ready_frames >= self.e.batch_size or self.decoding == 0:
            return True
        oldest = self.items[self.ready[0]].t_ready
        return dynamic and time.monotonic() - oldest >= self.e.max_wait

    def score_batch(self) -> None:
        """Score the oldest ready items together (about ``batch_size`` frames)."""
        batch: list[_Item] = []
        frames = 0
        while self.ready and (not batch or frames + self.items[self.ready[0]].decoded.n_frames <= self.e.batch_size):
            item = self.items[self.ready.popleft()]
            batch.append(item)
            frames += item.decoded.n_frames
        self.ready_frames -= frames
        self._score(batch)

    def _score(self, batch: list[_Item]) -> None:
        arrays = np.concatenate([it.decoded.arrays for it in batch])
        try:
            if self.e.roi is None:
                scores, maps = self.e._forward(arrays)
            else:
                scores, maps = self.e._forward(arrays, [c for it in batch
                                                        for c in (it.centres or [None] * it.decoded.n_frames)])
        except Exception as err:  # one input must not fail its batch: score each alone to find it
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); scoring its inputs one by one", len(batch), err)
                for it in batch:
                    self._score([it])
                return
            it = batch[0]
            self._finish(it, self.e._error_result(it.inp.reported, f"scoring failed: {type(err).__name__}: {err}"))
            return
        start = 0
        for it in batch:
            n = it.decoded.n_frames
            res = self.e._assemble(it, scores[start : start + n], None if maps is None else maps[start : start + n])
            it.scored = True
            start += n
            self._finish(it, res)

    # ------------------------------------------------------------------ results
    def _finish(self, item: _Item, result: ScanResult) -> None:
        e = self.e
        try:
            if item.cached is not None:  # stored answer + freshly computed pictures for the report
                item.cached.thumbnail, item.cached.heatmap = result.thumbnail, result.heatmap
                result = item.cached
            elif e.rule is not None:
                extra = e.on_result(result, item.decoded) if e.on_result is not None and result.ok else {}
                key = item.decoded.key if item.decoded is not None else None
                result = e.rule.record(result, key, item.previous, run_id=self.run_id, **(extra or {}))
            else:
                if e.on_result is not None and result.ok:
                    e.on_result(result, item.decoded)
                if item.decoded is not None:
                    result.content_hash = item.decoded.key
        except Exception as err:  # the store is down: the input is not lost silently, it fails by name
            log.error("could not record %s: %s", item.inp.reported, err)
            result = e._error_result(item.inp.reported, f"could not record result: {type(err).__name__}: {err}")
            result.score = None
        key = item.decoded.key if item.decoded is not None else None
        if key is not None and self.leaders.get(key) == item.seq:
            del self.leaders[key]
        item.decoded = None  # free the pixels now
        self._deliver(item, result, item.scored)
        for follower in self.followers.pop(item.seq, []):
            follower.decoded = None
            answer = replace(result, path=follower.inp.reported, cached=True)
            self._deliver(follower, answer, False)

    def _deliver(self, item: _Item, result: ScanResult, scored: bool) -> None:
        self.e.summary.count(result, scored)
        del self.items[item.seq]
        if item.future is not None:
            item.future.set_result(result)
        else:
            self.finished[item.seq] = result


class ScanEngine:
    """Scan inputs with one detector; see the module docstring.

    ``threshold`` defaults to the detector's calibrated τ. ``store`` (a
    :class:`~medforensics.store.ResultStore`) enables de-duplication and recording under
    ``source``; ``on_result(result, decoded) -> dict`` may add store fields (e.g. ``heatmap_path``)
    for each OK result. ``workers`` decode processes (default :func:`default_workers`; 0 = decode in
    the calling thread, without isolation). ``series`` keeps each frame's small evidence map and
    slice position on the result, for :class:`~medforensics.engine.series.SeriesAggregator`.
    ``headers`` runs :mod:`medforensics.headers` on every DICOM file in the decode worker; the
    file's ``score`` is then the fusion (:mod:`medforensics.engine.fusion`) of ``pixel_score`` and
    ``header_score``, with the named ``findings`` beside them. ``roi`` (an
    :class:`~medforensics.engine.roi.RoiPlan`) scores only the region of interest of each file (the
    frame it names, the window centred on it); ``meta["roi"]`` of each result records it.
    """

    def __init__(self, detector: Any, *, threshold: float | None = None, with_maps: bool = False,
                 max_frames: int | None = 16, batch_size: int = 32, workers: int | None = None, store: Any = None,
                 force: bool = False, source: str = "cli", model_id: str | None = None,
                 decode_timeout: float = DEFAULT_TIMEOUT, on_result: Callable[..., dict | None] | None = None,
                 max_wait: float = 0.005, window: int | None = None, keys: bool | None = None,
                 decode_budget: int | None = None, cached_maps: bool = True, series: bool = False,
                 headers: bool = False, header_threshold: float | None = None, roi: Any = None):
        self.detector = detector
        self.roi = roi  # engine.roi.RoiPlan: score only the region of interest
        self.threshold = float(detector.threshold if threshold is None else threshold)
        self.series = bool(series)  # keep every frame's small evidence map and position (series.py)
        self.headers = bool(headers)  # DICOM header forensics fused into each DICOM file's score (fusion.py)
        if header_threshold is None:
            from ..headers import DEFAULT_THRESHOLD as header_threshold
        self.header_threshold = float(header_threshold)
        self.with_maps = bool(with_maps) or self.series
        self.max_frames = max_frames
        self.batch_size = max(1, int(batch_size))
        self.workers = default_workers() if workers is None else max(0, int(workers))
        self.store = store
        self.model_id = model_id or model_fingerprint(detector)
        self.rule = StoreRule(store, detector, self.model_id, force=force, source=source) if store is not None else None
        self.keys = self.rule is not None if keys is None else bool(keys)  # results carry content_key()
        self.decode_timeout = float(decode_timeout)
        self.decode_budget = decode_budget  # bytes one decode may hold (None: medforensics.io's budget)
        self.cached_maps = bool(cached_maps)  # with_maps: also compute maps for answers taken from the store
        self.on_result = on_result
        self.max_wait = float(max_wait)
        self.window = int(window) if window else 2 * self.batch_size + 2 * max(1, self.workers)
        self.summary = RunSummary()
        self._pool: DecodePool | None = None
        self._lock = threading.Lock()
        self._inbox: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closing = False

    # ------------------------------------------------------------------ plumbing
    def _get_pool(self) -> DecodePool:
        with self._lock:
            if self._pool is None:
                options = DecodeOptions(max_frames=self.max_frames, want_key=self.keys,
                                        decode_budget=self.decode_budget, headers=self.headers)
                self._pool = DecodePool(self.detector.preprocessing, options, workers=self.workers,
                                        timeout=self.decode_timeout)
            return self._pool

    def _error_result(self, path: str, error: str) -> ScanResult:
        return ScanResult(path=path, error=error, threshold=self.threshold, model=self.model_id)

    @torch.no_grad()
    def _forward(self, arrays: np.ndarray, roi: list | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        x = torch.from_numpy(arrays)
        if roi is not None and any(c is not None for c in roi):
            if self.with_maps:
                return self.detector.score_with_maps(x, roi=roi)
            return self.detector.score(x, roi=roi), None
        if self.with_maps:
            return self.detector.score_with_maps(x)
        return self.detector.score(x), None

    def _place_roi(self, item: _Item, d: Decoded) -> str | None:
        """Keep the ROI's frame and put its centre (model input pixels) on ``item``; an error message or None."""
        from .roi import RoiError, centre_in_input, nifti_frame_hw

        target = self.roi.target(item.inp.path)
        if target is None:
            return None
        if target.frame is not None:
            keep = [i for i, m in enumerate(d.metas) if m.get("frame_index", 0) == target.frame]
            if not keep:
                n = d.metas[0].get("n_frames", d.n_frames) if d.metas else 0
                if 0 <= target.frame < n:
                    return (f"ROI slice {target.frame} was not decoded (frames are subsampled to max_frames "
                            f"{self.max_frames}; raise it)")
                return f"ROI slice {target.frame} is out of range: the file has {n} frame(s) (0–{n - 1})"
            d.arrays, d.metas = d.arrays[keep], [d.metas[i] for i in keep]
        try:
            hw = nifti_frame_hw(item.inp.path) if d.metas and d.metas[0].get("source_format") == "nifti" else None
            item.centres = [centre_in_input(target, m, self.detector.preprocessing, hw) for m in d.metas]
        except RoiError as err:
            return str(err)
        for m, c in zip(d.metas, item.centres):
            m["roi"] = {**target.record(self.roi.spec), "input_y": round(c[0], 3), "input_x": round(c[1], 3)}
        return None

    def _assemble(self, item: _Item, scores: np.ndarray, maps: np.ndarray | None) -> ScanResult:
        d = item.decoded
        best = int(np.argmax(scores))
        pixel = float(scores[best])
        header = d.header.score if d.header is not None else None
        score = fuse(pixel, header, self.threshold, self.header_threshold)
        res = ScanResult(path=item.inp.reported, modality=d.modality, score=score, threshold=self.threshold,
                         verdict="fake" if score >= self.threshold else "real", model=self.model_id,
                         frames=[float(s) for s in scores] if len(scores) > 1 else [], meta=dict(d.metas[best]),
                         pixel_score=pixel, header_score=header, header_report=d.header,
                         findings=[f.to_dict() for f in d.header.all_findings] if d.header is not None else [])
        if self.with_maps:
            chw = d.arrays[best]  # single-channel models (e.g. btd): H×W, not H×W×1
            res.thumbnail = standardise(chw[0] if chw.shape[0] == 1 else np.moveaxis(chw, 0, -1), THUMBNAIL)
            res.heatmap = None if maps is None else standardise(maps[best], THUMBNAIL)
        if self.series:
            res.frame_positions = [m.get("slice_position") for m in d.metas]
            if maps is not None:
                res.frame_maps = np.stack([standardise(np.asarray(m, dtype=np.float32), SLICE_MAP) for m in maps])
        return res

    # ------------------------------------------------------------------ streaming scan
    def scan(self, inputs: Iterable[str | Path | ScanInput], *, run_args: dict[str, Any] | None = None,
             resume: bool = True, run_kind: str = "scan", progress_every: float = 2.0) -> Iterator[ScanResult]:
        """Results for every file under ``inputs``, in input order (see the module docstring).

        With a store and ``run_args``, the run is a row of the store's ``runs`` table: a restart with
        the same arguments continues it (``resume``), its counters are updated as it goes.
        """
        pool = self._get_pool()
        s = self.summary = RunSummary()
        runs = _RunTracker(self.store, run_kind, run_args, resume) if self.store is not None and run_args else None
        s.run_id = runs.open() if runs else None
        pipe = _Pipeline(self, pool, s.run_id)
        source = expand_inputs(inputs)
        seq = emitted = 0
        exhausted = False
        cap = 4 * self.batch_size
        start = last = time.perf_counter()
        try:
            while True:
                while (not exhausted and seq - emitted < self.window and pipe.ready_frames < cap
                       and pool.capacity > 0):
                    try:
                        inp = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pipe.add(_Item(seq, inp))
                    seq += 1
                while emitted in pipe.finished:
                    yield pipe.finished.pop(emitted)
                    emitted += 1
                if exhausted and emitted == seq:
                    break
                if pipe.should_score(dynamic=False):
                    pipe.score_batch()
                else:
                    pipe.poll(timeout=0.05)
                if runs and time.perf_counter() - last >= progress_every:
                    runs.progress(s)
                    last = time.perf_counter()
        finally:
            s.decode_restarts = pool.restarts
            s.finish(time.perf_counter() - start)
            if runs:
                runs.progress(s)
        if runs:
            runs.finish(s)

    # ------------------------------------------------------------------ concurrent callers
    def submit(self, inp: str | Path | ScanInput) -> Future:
        """Queue one file for scoring from any thread; the future resolves to its :class:`ScanResult`."""
        if not isinstance(inp, ScanInput):
            inp = ScanInput(Path(inp))
        fut: Future = Future()
        with self._lock:
            if self._closing:
                raise RuntimeError("the scan engine is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="scan-engine", daemon=True)
                self._thread.start()
        self._inbox.put((inp, fut))
        return fut

    def scan_one(self, inp: str | Path | ScanInput, timeout: float | None = None) -> ScanResult:
        return self.submit(inp).result(timeout)

    def _serve(self) -> None:
        pool = self._get_pool()
        pipe = _Pipeline(self, pool)
        seq = 0
        while True:
            idle = not pipe.items
            try:
                while pool.capacity > 0 and pipe.ready_frames < 4 * self.batch_size:
                    got = self._inbox.get(timeout=0.1) if idle else self._inbox.get_nowait()
                    idle = False
                    if got is None:
                        return self._drain(pipe)
                    inp, fut = got
                    if fut.set_running_or_notify_cancel():
                        pipe.add(_Item(seq, inp, future=fut))
                        seq += 1
            except queue.Empty:
                pass
            try:
                if pipe.should_score(dynamic=True):
                    pipe.score_batch()
                elif pipe.decoding:
                    pipe.poll(timeout=min(self.max_wait, 0.01) or 0.001)
                elif pipe.ready:  # waiting out max_wait for more requests to join the batch
                    time.sleep(self.max_wait / 5)
            except Exception as err:  # keep serving: fail only the inputs in flight
                log.exception("scan engine error")
                for item in list(pipe.items.values()):
                    if item.future is not None and not item.future.done():
                        item.future.set_exception(err)
                pipe = _Pipeline(self, pool)

    def _drain(self, pipe: _Pipeline) -> None:
        while pipe.items:
            if pipe.should_score(dynamic=False):
                pipe.score_batch()
            else:
                pipe.poll(timeout=0.05)

    def close(self) -> None:
        """Finish what was submitted, stop the background thread and the decode workers."""
        with self._lock:
            self._closing = True
            thread = self._thread
        if thread is not None:
            self._inbox.put(None)
            thread.join()
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> ScanEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RunTracker:
    """The run row of a store-backed scan: open (or resume), progress, finish."""

    def __init__(self, store: Any, kind: str, args: dict[str, Any], resume: bool):
        self.store, self.kind, self.args, self.resume = store, kind, args, resume
        self.run_id: str | None = None

    def open(self) -> str:
        run_id = self.store.find_open_run(self.kind, self.args) if self.resume else None
        if run_id is not None:
            self.store.resume_run(run_id)
            log.info("resuming run %s", run_id)
        else:
            run_id = self.store.start_run(self.kind, self.args)
        self.run_id = run_id
        return run_id

    def progress(self, s: RunSummary) -> None:
        self.store.update_run(self.run_id, n_ok=s.n_ok, n_error=s.n_error, n_cached=s.n_cached)

    def finish(self, s: RunSummary) -> None:
        self.store.finish_run(self.run_id, n_ok=s.n_ok, n_error=s.n_error, n_cached=s.n_cached,
                              seconds=s.seconds, images_per_s=s.images_per_s)


def run_args(paths: Iterable[str | Path], model_id: str, *, threshold: float, max_frames: int | None,
             engine: str = "local") -> dict[str, Any]:
    """The arguments that identify a scan run (a restart with the same ones resumes it)."""
    return {"paths": [str(Path(p).expanduser().resolve()) for p in paths], "model_id": model_id,
            "threshold": float(threshold), "max_frames": max_frames, "engine": engine}


__all__ = ["THUMBNAIL", "RunSummary", "ScanEngine", "ScanInput", "default_workers", "expand_inputs", "iter_files",
           "run_args"]
