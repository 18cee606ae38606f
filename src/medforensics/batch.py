"""Resumable, streaming batch scanning backed by the results store.

:class:`BatchScan` walks the inputs lazily (a generator: memory does not grow with the number of
files), hashes each file (SHA-256 of its content), and

- answers it from the store when a record of the same content, detector, version and model
  fingerprint exists (unless ``force``) — this is what makes a killed run resumable: restarting
  the same command skips everything already committed and scores the rest;
- otherwise decodes and scores it and commits the result at once (one transaction per file), so a
  kill (even ``SIGKILL``) loses at most the file being scored and never duplicates a row.

A file whose stored record is an *error* is tried again (the failure may have been transient); if
it fails again the stored error answers it and no new row is added. The run itself — arguments,
progress counters, images/s — is a row of the ``runs`` table; a restarted run with the same
arguments continues that row instead of opening a new one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .detectors.base import Detector
from .io import UnreadableImageError, iter_files, load_frames
from .results import ScanResult
from .scan import score_frames

log = logging.getLogger(__name__)


@dataclass
class BatchSummary:
    """Counts and throughput of one batch attempt."""

    run_id: str | None = None
    n_files: int = 0  # files seen
    n_ok: int = 0  # files with a score (fresh or from the store)
    n_error: int = 0  # files that could not be read or scored
    n_cached: int = 0  # files answered from the store
    n_scored: int = 0  # files decoded and scored in this attempt
    seconds: float = 0.0
    images_per_s: float = 0.0  # freshly scored files per second of wall time
    files_per_s: float = 0.0  # all files (incl. answered from the store) per second

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def finish(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.images_per_s = self.n_scored / seconds if seconds > 0 else 0.0
        self.files_per_s = self.n_files / seconds if seconds > 0 else 0.0


def iter_paths(paths: Iterable[str | Path]) -> Iterator[Path | UnreadableImageError]:
    """Files under ``paths`` (order of :func:`medforensics.io.iter_files`), lazily; failures as errors."""
    for raw in paths:
        try:
            yield from iter_files([raw])
        except UnreadableImageError as err:  # missing input or unlistable folder: report, go on
            yield err


def run_args(paths: Iterable[str | Path], model_id: str, *, threshold: float, max_frames: int,
             engine: str = "local") -> dict[str, Any]:
    """The arguments that identify a batch run (a restart with the same ones resumes it)."""
    return {"paths": [str(Path(p).expanduser().resolve()) for p in paths], "model_id": model_id,
            "threshold": float(threshold), "max_frames": int(max_frames), "engine": engine}


class BatchScan:
    """Iterate over :class:`ScanResult` for every file under ``paths``; see the module docstring.

    ``store`` None scans without persistence (plain streaming scan). ``resume`` continues the newest
    unfinished run with identical arguments (else a new run is opened). After iteration,
    :attr:`summary` holds counts and images/s (also written to the run's row).
    """

    def __init__(self, paths: Iterable[str | Path], detector: Detector, *, store: Any = None,
                 threshold: float | None = None, max_frames: int = 16, with_maps: bool = False,
                 model_id: str | None = None, force: bool = False, resume: bool = True, source: str = "cli",
                 kind: str = "scan", progress_every: float = 2.0):
        from .store import model_fingerprint

        self.paths = list(paths)
        self.detector = detector
        self.store = store
        self.threshold = detector.threshold if threshold is None else float(threshold)
        self.max_frames = max_frames
        self.with_maps = with_maps
        self.model_id = model_id or model_fingerprint(detector)
        self.force = force
        self.resume = resume
        self.source = source
        self.kind = kind
        self.progress_every = progress_every
        self.summary = BatchSummary()
        self.args = run_args(self.paths, self.model_id, threshold=self.threshold, max_frames=max_frames)

    # ------------------------------------------------------------------ run bookkeeping
    def open_run(self) -> str | None:
        if self.store is None:
            return None
        run_id = self.store.find_open_run(self.kind, self.args) if self.resume else None
        if run_id is not None:
            self.store.resume_run(run_id)
            log.info("resuming run %s", run_id)
        else:
            run_id = self.store.start_run(self.kind, self.args)
        return run_id

    def _progress(self, s: BatchSummary) -> None:
        if self.store is not None and s.run_id:
            self.store.update_run(s.run_id, n_ok=s.n_ok, n_error=s.n_error, n_cached=s.n_cached)

    # ------------------------------------------------------------------ one file
    def _score(self, path: Path) -> ScanResult:
        try:
            frames = load_frames(path, max_frames=self.max_frames)
        except UnreadableImageError as err:
            return ScanResult(path=str(path), error=err.reason, threshold=self.threshold, model=self.model_id)
        return score_frames(str(path), frames, self.detector, self.threshold, with_maps=self.with_maps,
                            model_id=self.model_id)

    def scan_file(self, path: Path, run_id: str | None) -> ScanResult:
        """Answer one file from the store or score and store it (never raises for a bad file)."""
        from .store import content_hash

        try:
            digest = content_hash(path)
        except OSError as err:
            return ScanResult(path=str(path), error=f"cannot read file: {err.strerror or err}",
                              threshold=self.threshold, model=self.model_id)
        previous = None
        if self.store is not None and not self.force:
            previous = self.store.find(content_hash=digest, detector=self.detector.name,
                                       detector_version=self.detector.version, model_id=self.model_id)
        if previous is not None and previous.ok:
            res = previous.to_result(path=str(path), threshold=self.threshold)
            if self.with_maps:  # the report needs pixels: recompute maps, keep the stored answer
                fresh = self._score(path)
                res.thumbnail, res.heatmap = fresh.thumbnail, fresh.heatmap
            res.content_hash, res.scan_id, res.cached = digest, previous.id, True
            return res
        res = self._score(path)
        res.content_hash = digest
        self.summary.n_scored += 1
        if self.store is None:
            return res
        if previous is not None and not res.ok:  # failed again: the stored error answers it (no duplicate)
            res.scan_id, res.cached = previous.id, True
            return res
        rec = self.store.add(res, content_hash=digest, detector=self.detector.name,
                             detector_version=self.detector.version, source=self.source, run_id=run_id,
                             model_id=self.model_id)
        res.scan_id = rec.id
        return res

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[ScanResult]:
        s = self.summary = BatchSummary()
        s.run_id = self.open_run()
        start = last = time.perf_counter()
        try:
            for item in iter_paths(self.paths):
                if isinstance(item, UnreadableImageError):
                    res = ScanResult(path=item.path, error=item.reason, threshold=self.threshold, model=self.model_id)
                else:
                    res = self.scan_file(item, s.run_id)
                s.n_files += 1
                s.n_ok += res.ok
                s.n_error += not res.ok
                s.n_cached += res.cached
                now = time.perf_counter()
                if now - last >= self.progress_every:
                    self._progress(s)
                    last = now
                yield res
        finally:
            s.finish(time.perf_counter() - start)
            self._progress(s)
        if self.store is not None and s.run_id:
            self.store.finish_run(s.run_id, n_ok=s.n_ok, n_error=s.n_error, n_cached=s.n_cached,
                                  seconds=s.seconds, images_per_s=s.images_per_s)
