"""The service's scanning core: one loaded model, the results store, de-duplication and previews.

Nothing here re-implements loading or thresholding: files go through :func:`medforensics.io.load_frames`
and :func:`medforensics.scan.score_frames`, exactly like ``medforensics scan``. Every method is
synchronous (the app runs them in a thread pool); the model is guarded by a lock because detector
objects are not guaranteed to be thread-safe, while decoding and hashing run in parallel.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..detectors import Detector, load_detector
from ..detectors.registry import PRETRAINED
from ..io import UnreadableImageError, load_frames
from ..results import ScanResult
from ..scan import score_frames
from .previews import preview_paths, save_previews
from .settings import ServeSettings

log = logging.getLogger("medforensics.serve")

#: upload suffixes kept on the temporary file (readers sniff content; NIfTI also needs the name)
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                   ".bmp", ".gif", ".webp", ".jp2", ".gz")


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
    """Model + store + previews; :meth:`scan_file` is the one entry point for a file on disk."""

    def __init__(self, settings: ServeSettings, *, detector: Detector | None = None, store: Any = None):
        from ..store import ResultStore
        from ..store.hashing import model_fingerprint

        self.settings = settings
        self.detector = detector if detector is not None else load_detector(settings.model)
        self.threshold = float(self.detector.threshold if settings.threshold is None else settings.threshold)
        self.model_id = model_fingerprint(self.detector)
        if settings.threshold is not None:  # another operating point gives other verdicts: another key
            self.model_id += f"@t={self.threshold:.6g}"
        self.store = store if store is not None else ResultStore(url=settings.db_url, store_phi=settings.store_phi)
        self.preview_dir = Path(settings.heatmap_dir).expanduser()
        self._model_lock = threading.Lock()

    # ------------------------------------------------------------------ info
    def model_info(self) -> dict[str, Any]:
        det = self.detector
        cal = {k: v for k, v in det.calibration.items() if k != "real_val_scores"}
        name = self.settings.model if self.settings.model in PRETRAINED else Path(self.settings.model).name
        return {"name": name, "detector": det.name, "detector_version": det.version, "model_id": self.model_id,
                "threshold": self.threshold, "calibration": cal, "preprocessing": det.preprocessing.to_dict(),
                "max_frames": self.settings.max_frames, "heatmaps": type(det)._anomaly_map_arrays
                is not Detector._anomaly_map_arrays}

    # ------------------------------------------------------------------ scanning
    def find(self, content_hash: str):
        return self.store.find(content_hash=content_hash, detector=self.detector.name,
                               detector_version=self.detector.version, model_id=self.model_id)

    def scan_file(self, path: Path, *, stored_path: str, force: bool = False,
                  content_hash: str | None = None) -> ItemOutcome:
        """Hash, look up, load, score, save previews and store one file; errors become outcomes."""
        from ..store import content_hash as hash_file

        h = content_hash or hash_file(path)
        if not force:
            found = self.find(h)
            if found is not None:
                return ItemOutcome("error" if found.error else "ok", found, cached=True, error=found.error)
        det = self.detector
        frames: list = []
        try:
            frames = load_frames(path, max_frames=self.settings.max_frames)
        except UnreadableImageError as err:
            result = ScanResult(path=stored_path, error=err.reason, threshold=self.threshold, model=self.model_id)
        else:
            with self._model_lock:
                result = score_frames(stored_path, frames, det, self.threshold, with_maps=True,
                                      model_id=self.model_id)
        result.path = stored_path
        heatmap_path = None
        if result.ok and frames:
            best = int(np.argmax(result.frames)) if result.frames else 0
            image_p, heat_p = preview_paths(self.preview_dir, h, self.model_id)
            try:
                heatmap_path = save_previews(frames[best], result.heatmap, image_p, heat_p,
                                             fit=det.preprocessing.fit)
            except OSError as exc:  # previews are a convenience: never lose the score for them
                log.warning("could not write preview (%s)", type(exc).__name__)
        meta = dict(result.meta)
        patient_id = meta.pop("patient_id", None)  # handed to the store, which hashes it unless store_phi
        result.meta = meta
        record = self.store.add(result, content_hash=h, detector=det.name, detector_version=det.version,
                                source="api", heatmap_path=None if heatmap_path is None else str(heatmap_path),
                                patient_id=patient_id, model_id=self.model_id)
        return ItemOutcome("ok" if result.ok else "error", record, error=result.error)
