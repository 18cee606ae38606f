"""The service's scanning core: the scan engine behind every request, the results store and the previews.

Requests never score anything themselves: each file is handed to :meth:`ScanEngine.submit`
(:mod:`medforensics.engine`), whose background thread gathers the files of all concurrent requests
into model batches, decodes them in worker processes (a crashing or hanging decoder costs one file,
named) and applies the store's de-duplication rule (:mod:`medforensics.engine.dedup`: a stored OK
answer is reused, a stored error is retried). Previews are written by the engine's ``on_result`` hook.
There is no model lock: only the engine's thread runs the model.

Identical uploads that arrive while the first is still being scored wait for that scoring instead of
being scored again, so a file sent by many requests at once is stored once: the engine does this for
every input with the same content key in flight (:class:`~medforensics.engine.core.ScanEngine`).

Series: the engine keeps each frame's small evidence map and position (``series=True``) and runs the
DICOM header forensics (``headers=True``, as ``scan`` and the receiver do); :meth:`ScanService.judge_series`
turns the results of one request into series verdicts (:class:`~medforensics.engine.series.SeriesAggregator`,
through the receiver's :class:`~medforensics.dicomnet.series.SeriesTracker`, so a series whose other
instances the store already holds is judged with them) and upserts them into the store's ``series`` table.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..detectors import Detector, load_detector
from ..detectors.registry import PRETRAINED
from ..engine import ScanEngine, ScanInput, model_fingerprint
from ..results import ScanResult
from .previews import preview_paths, save_preview_arrays
from .settings import ServeSettings

log = logging.getLogger("medforensics.serve")

#: upload suffixes kept on the temporary file (readers sniff content; NIfTI also needs the name)
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                   ".bmp", ".gif", ".webp", ".jp2", ".gz")
CHUNK = 1 << 20


def upload_suffix(filename: str | None) -> str:
    """The recognised suffix of an uploaded file name ('' when none), e.g. ``.nii.gz``."""
    name = (filename or "").lower()
    return next((s for s in UPLOAD_SUFFIXES if name.endswith(s)), "")


@dataclass
class ItemOutcome:
    """What one uploaded file or server path became."""

    status: str  # "ok" | "error"
    record: Any = None  # ScanRecord (stored) or None
    cached: bool = False
    error: str | None = None


class ScanService:
    """Model + engine + store + previews.

    :meth:`submit_upload` / :meth:`submit_path` queue one file and return a future of its
    :class:`~medforensics.results.ScanResult`; :meth:`outcome` turns that into the stored record;
    :meth:`close` finishes queued files and stops the engine.
    """

    def __init__(self, settings: ServeSettings, *, detector: Detector | None = None, store: Any = None):
        from ..store import ResultStore

        self.settings = settings
        self.detector = detector if detector is not None else load_detector(settings.model)
        self.threshold = float(self.detector.threshold if settings.threshold is None else settings.threshold)
        self.model_id = model_fingerprint(self.detector)
        if settings.threshold is not None:  # another operating point gives other verdicts: another key
            self.model_id += f"@t={self.threshold:.6g}"
        self.store = store if store is not None else ResultStore(url=settings.db_url, store_phi=settings.store_phi)
        self.preview_dir = Path(settings.heatmap_dir).expanduser()
        self.engine = ScanEngine(self.detector, threshold=self.threshold, with_maps=True,
                                 max_frames=settings.max_frames, batch_size=settings.batch_size,
                                 workers=settings.decode_workers, store=self.store, source="api",
                                 model_id=self.model_id, decode_timeout=settings.decode_timeout_s,
                                 decode_budget=settings.decode_budget, on_result=self._save_previews,
                                 cached_maps=False,  # a stored answer's previews are on disk already
                                 series=True, headers=True)

    # ------------------------------------------------------------------ info
    def model_info(self) -> dict[str, Any]:
        det = self.detector
        cal = {k: v for k, v in det.calibration.items() if k != "real_val_scores"}
        name = self.settings.model if self.settings.model in PRETRAINED else Path(self.settings.model).name
        return {"name": name, "detector": det.name, "detector_version": det.version, "model_id": self.model_id,
                "threshold": self.threshold, "calibration": cal, "preprocessing": det.preprocessing.to_dict(),
                "max_frames": self.settings.max_frames, "heatmaps": type(det)._anomaly_map_arrays
                is not Detector._anomaly_map_arrays}

    # ------------------------------------------------------------------ previews (engine hook)
    def _save_previews(self, result: ScanResult, decoded: Any) -> dict[str, Any]:
        """``on_result`` hook: keep the best frame as the detector saw it, and its heat-map, as PNGs."""
        if decoded is None or decoded.key is None or decoded.arrays is None:
            return {}
        best = int(np.argmax(result.frames)) if result.frames else 0
        image_p, heat_p = preview_paths(self.preview_dir, decoded.key, self.model_id)
        try:
            heatmap = save_preview_arrays(decoded.arrays[best], result.heatmap, image_p, heat_p)
        except OSError as exc:  # previews are a convenience: never lose the score for them
            log.warning("could not write preview (%s)", type(exc).__name__)
            return {}
        return {} if heatmap is None else {"heatmap_path": str(heatmap)}

    # ------------------------------------------------------------------ scanning
    def submit_upload(self, stream: IO[bytes], filename: str | None, *, force: bool = False) -> Future:
        """Copy an upload to a temporary file (hashing it on the way) and queue it; the file is removed when
        the engine is done with it. The same content already in flight is scored once (by the engine)."""
        suffix = upload_suffix(filename)
        fd, tmp = tempfile.mkstemp(prefix="mf-upload-", suffix=suffix)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as fh:
                stream.seek(0)
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    fh.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        h = digest.hexdigest()
        display = os.path.basename(filename or "") or "upload"
        name = display if self.settings.store_phi else f"upload:{h[:16]}{suffix}"
        try:
            fut = self.engine.submit(ScanInput(Path(tmp), name=name, force=force))
        except BaseException:
            os.unlink(tmp)
            raise
        fut.add_done_callback(lambda _f: _remove(tmp))
        return fut

    def submit_path(self, path: Path, *, force: bool = False) -> Future:
        """Queue a server-side file (already checked against the allowed roots)."""
        return self.engine.submit(ScanInput(path, name=str(path), force=force))

    def outcome(self, result: ScanResult) -> ItemOutcome:
        """The stored record of an engine result (a blocking store read: call it in a worker thread)."""
        record = self.store.get(result.scan_id) if result.scan_id else None
        return ItemOutcome("ok" if result.ok else "error", record, cached=bool(result.cached), error=result.error)

    def judge_series(self, results: list[ScanResult]) -> list[dict[str, Any]]:
        """Series verdicts of one request's results (a blocking store write: call it in a worker thread).

        Every DICOM series with at least two slices (counting its instances already in the store)
        is judged and upserted; each answer is the stored record plus ``slices`` (file names in slice
        order). A multi-frame file or volume without a series UID is judged too but not stored
        (``id`` None). A failure is logged and named in the answer, never raised.
        """
        from ..dicomnet.series import SeriesTracker

        judged: list[dict[str, Any]] = []
        tracker = SeriesTracker(judged.append, threshold=self.threshold, fit=self.detector.preprocessing.fit,
                                header_threshold=self.engine.header_threshold, quiet_s=0.0,
                                keep_closed=0, reload=self._stored_instances)
        volumes = []
        for i, res in enumerate(results):
            if res is None or not res.ok:
                continue
            if (res.meta or {}).get("series_uid"):
                tracker.done(i, res)
            elif len(res.frames) > 1:
                volumes.append(res)
        tracker.judge(everything=True)
        out = []
        for rec in judged:
            try:
                row = self.store.upsert_series(rec, model_id=self.model_id, source="api", threshold=self.threshold)
                out.append({**row.to_dict(), "slices": rec["slices"]})
            except Exception as exc:
                log.error("could not record a series verdict (%s)", type(exc).__name__)
                out.append({**{k: v for k, v in rec.items() if k != "key"}, "id": None,
                            "error": f"could not record the series verdict: {type(exc).__name__}"})
        if volumes:
            from ..engine.series import SeriesAggregator

            agg = SeriesAggregator(self.threshold, fit=self.detector.preprocessing.fit,
                                   header_threshold=self.engine.header_threshold)
            for res in volumes:
                agg.add(res)
            out += [{**{k: v for k, v in rec.items() if k != "key"}, "id": None, "threshold": self.threshold}
                    for rec in agg.records()]
        return out

    def _stored_instances(self, series_uid: str) -> list[ScanResult]:
        return [rec.to_result(threshold=self.threshold)
                for rec in self.store.series_instances(series_uid, model_id=self.model_id)]

    def close(self) -> None:
        """Finish queued files and stop the engine's thread and decode workers."""
        self.engine.close()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
