"""The scan path every entry point walks: files → io.load → detector.score → ScanResult."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .detectors.base import Detector
from .io import UnreadableImageError, iter_images, standardise
from .results import ScanResult

THUMBNAIL = 128


def scan_paths(
    paths: Iterable[str | Path],
    detector: Detector,
    *,
    threshold: float | None = None,
    max_frames: int = 16,
    with_maps: bool = True,
    model_id: str | None = None,
) -> Iterator[ScanResult]:
    """Scan files and folders (recursively), yielding one :class:`ScanResult` per file.

    A file that cannot be read or scored yields a result with ``error`` set and ``score`` None;
    the scan always goes on. Multi-frame files and volumes are scored per frame (at most
    ``max_frames``, evenly spaced); the file's score is the maximum frame score, and its heat-map
    and thumbnail are those of that frame.
    """
    tau = detector.threshold if threshold is None else float(threshold)
    model_id = model_id or f"{detector.name}-v{detector.version}"
    for path, loaded in iter_images(paths, max_frames=max_frames):
        if isinstance(loaded, UnreadableImageError):
            yield ScanResult(path=str(path), error=loaded.reason, threshold=tau, model=model_id)
            continue
        yield score_frames(str(path), loaded, detector, tau, with_maps=with_maps, model_id=model_id)


def score_frames(path: str, frames: list, detector: Detector, threshold: float, *, with_maps: bool = True,
                 model_id: str | None = None) -> ScanResult:
    """Score the frames of one file into a ScanResult (errors are captured, never raised)."""
    meta = frames[0].meta if frames else None
    result = ScanResult(path=path, threshold=threshold, model=model_id or detector.name,
                        modality=meta.modality if meta else None)
    try:
        if not frames:
            raise UnreadableImageError(path, "no image frames")
        batch = detector.prepare(frames)
        scores = detector.score(batch)
        best = int(np.argmax(scores))
        result.score = float(scores[best])
        result.frames = [float(s) for s in scores] if len(scores) > 1 else []
        result.verdict = "fake" if result.score >= threshold else "real"
        m = frames[best].meta
        result.meta = {k: v for k, v in m.to_dict().items() if k not in ("extra", "path") and v not in (None, "", ())}
        if with_maps:  # kept small (THUMBNAIL px) so a report over many files stays in memory
            chw = batch[best].numpy()  # single-channel models (e.g. btd): H×W, not H×W×1
            result.thumbnail = standardise(chw[0] if chw.shape[0] == 1 else np.moveaxis(chw, 0, -1), THUMBNAIL)
            maps = detector.anomaly_map(batch[best : best + 1])
            result.heatmap = None if maps is None else standardise(maps[0], THUMBNAIL)
    except UnreadableImageError as err:
        result.error = err.reason
    except Exception as err:  # a bad input must never take down a batch
        result.error = f"scoring failed: {type(err).__name__}: {err}"
        result.score = result.verdict = None
    return result
