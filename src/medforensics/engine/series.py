"""Series and volumes: a verdict per DICOM series / NIfTI volume and where in 3-D the evidence is.

The engine scores every slice (each instance of a DICOM series, each frame of a multi-frame file or
NIfTI volume) and, when asked (``ScanEngine(series=True)``), keeps a small evidence map and the
position of every slice. :class:`SeriesAggregator` then

1. groups slices by SeriesInstanceUID (DICOM) or by file (NIfTI, multi-frame without a UID);
2. orders them by position along the slice normal (``slice_position``; InstanceNumber / frame
   index where a position is missing) — slice indices in the output are 0-based in that order;
3. stacks their evidence maps into a volume and finds the suspicious regions as 3-D connected
   components of the voxels whose evidence reaches the operating threshold τ
   (:func:`scipy.ndimage.label`, 26-connectivity), each reported as ``(first_slice, last_slice, y, x,
   radius, score)``: the slice range, the evidence-weighted centre in the source image's pixel
   coordinates, the radius of the component's largest cross-section (pixels) and its peak evidence;
4. scores the series as its most suspicious slice (the maximum slice pixel score), fused
   (:mod:`medforensics.engine.fusion`) with the series' header forensics when the results carry
   header reports (:mod:`medforensics.headers`: per-instance findings plus the series rules —
   spacing/size/bit changes, position and instance-number gaps, times out of order, a slice whose
   noise floor or header is out of line with its neighbours); the verdict is at τ.

A series is reported when it has at least two slices. ``max_slices`` bounds the slices kept per
series (the rest are counted, and the record says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..results import ScanResult

#: side of the per-slice evidence map kept for 3-D analysis (small: a 1,000-slice series costs 16 MB)
SLICE_MAP = 64
DEFAULT_MAX_SLICES = 512


@dataclass
class _Slice:
    order: tuple  # sort key: (position or inf, instance number, frame, path)
    score: float
    evidence: np.ndarray | None
    path: str
    frame: int | None
    original_hw: tuple[int, int] | None


@dataclass
class _Series:
    key: str
    uid: str | None
    modality: str | None
    slices: list[_Slice] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)  # InstanceReports of the series' files
    dropped: int = 0


def source_coords(y: float, x: float, side: int, original_hw: tuple[int, int] | None, fit: str) -> tuple[float, float]:
    """Map-pixel (y, x) on a ``side``×``side`` map → pixel (y, x) of the source slice (see io.resize)."""
    if not original_hw:
        return y, x
    h, w = original_hw
    if fit == "stretch":
        return y * h / side, x * w / side
    s = min(h, w) if fit == "center_crop" else max(h, w)
    scale = s / side
    oy, ox = (h - s) / 2, (w - s) / 2  # negative for "pad": the padding lies outside the image
    return y * scale + oy, x * scale + ox


class SeriesAggregator:
    """Collects per-slice results of a scan and reports one record per series (module docstring)."""

    def __init__(self, threshold: float, *, fit: str = "center_crop", max_slices: int = DEFAULT_MAX_SLICES,
                 header_threshold: float = 0.5):
        self.threshold = float(threshold)
        self.header_threshold = float(header_threshold)
        self.fit = fit
        self.max_slices = int(max_slices)
        self._series: dict[str, _Series] = {}

    def add(self, result: ScanResult) -> None:
        """Take one file's result (a slice, or a multi-frame file/volume); errors and 2-D images are ignored."""
        if not result.ok or result.score is None:
            return
        meta = result.meta or {}
        uid = meta.get("series_uid")
        scores = result.frames or [result.score if result.pixel_score is None else result.pixel_score]
        key = f"uid:{uid}" if uid else f"file:{result.path}"
        if not uid and len(scores) < 2:
            return  # a plain 2-D image is not a series
        s = self._series.setdefault(key, _Series(key, uid, result.modality))
        if result.header_report is not None:
            s.headers.append(result.header_report)
        maps = result.frame_maps
        positions = result.frame_positions or [meta.get("slice_position")] * len(scores)
        inst = _number(meta.get("instance_number"))
        shape = tuple(meta.get("original_shape", ()))
        hw = shape[:2] if len(scores) == 1 else shape[1:3]  # (rows, cols[, samples]) or (frames, rows, cols…)
        if meta.get("frame_shape"):  # NIfTI: the displayed slice's size (its on-disk shape is in voxel order)
            hw = tuple(int(v) for v in meta["frame_shape"])
        for i, score in enumerate(scores):
            if len(s.slices) >= self.max_slices:
                s.dropped += 1
                continue
            pos = positions[i] if i < len(positions) else None
            frame = i if len(scores) > 1 else None
            order = (math.inf if pos is None else float(pos), inst, -1 if frame is None else frame, result.path)
            ev = None if maps is None else np.asarray(maps[i], dtype=np.float32)
            s.slices.append(_Slice(order, float(score), ev, result.path, frame, hw if len(hw) == 2 else None))

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready record per series with ≥ 2 slices, in order of first appearance."""
        return [self._record(s) for s in self._series.values() if len(s.slices) >= 2]

    # ------------------------------------------------------------------ one series
    def _record(self, s: _Series) -> dict[str, Any]:
        from ..headers import series_from_reports
        from .fusion import fuse

        slices = sorted(s.slices, key=lambda t: t.order)
        scores = np.asarray([t.score for t in slices])
        pixel = float(scores.max())
        header = series_from_reports(s.headers, s.uid) if s.headers else None
        score = fuse(pixel, None if header is None else header.score, self.threshold, self.header_threshold)
        record: dict[str, Any] = {
            "series_uid": s.uid, "key": s.key, "modality": s.modality, "n_slices": len(slices),
            "score": score, "verdict": "fake" if score >= self.threshold else "real",
            "pixel_score": pixel, "header_score": None if header is None else header.score,
            "slice_scores": [round(float(v), 6) for v in scores],
            "slices": [{"path": t.path, "frame": t.frame} for t in slices],
            "regions": self._regions(slices),
            "findings": [] if header is None else [f.to_dict() for f in header.findings],
        }
        if s.dropped:
            record["findings"].append({"code": "slices_not_scored", "severity": "info",
                                       "message": f"{s.dropped} slice(s) beyond --max-slices {self.max_slices} "
                                                  "were not analysed"})
        return record

    def _regions(self, slices: list[_Slice]) -> list[dict[str, Any]]:
        if any(t.evidence is None for t in slices):
            return []
        volume = np.stack([t.evidence for t in slices])  # S × h × w, slices in position order
        mask = volume >= self.threshold
        if not mask.any():
            return []
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        side = volume.shape[-1]
        out = []
        for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
            comp = labels[sl] == idx
            ev = np.where(comp, volume[sl], 0.0)
            z, y, x = ndimage.center_of_mass(ev)
            z0, y0, x0 = sl[0].start, sl[1].start, sl[2].start
            hw = slices[int(round(z + z0))].original_hw
            cy, cx = source_coords(y + y0 + 0.5, x + x0 + 0.5, side, hw, self.fit)
            area = comp.sum(axis=(1, 2)).max()  # largest cross-section, map pixels
            scale = (min(hw) if hw else side) / side
            r_map = math.sqrt(area / math.pi)
            out.append({"first_slice": int(sl[0].start), "last_slice": int(sl[0].stop - 1),
                        "y": round(float(cy), 1), "x": round(float(cx), 1),
                        "radius": round(float(r_map * scale), 1),
                        "score": round(float(volume[sl][comp].max()), 6), "n_voxels": int(comp.sum()),
                        # the same place as fractions of the model's square input (for drawing on thumbnails)
                        "input_yxr": [round(float((y + y0 + 0.5) / side), 4), round(float((x + x0 + 0.5) / side), 4),
                                      round(float(r_map / side), 4)]})
        out.sort(key=lambda r: (-r["score"], -r["n_voxels"]))
        return out


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf
