"""``ScanResult``: one record per scanned input, the shared currency of CLI, reports and service."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ScanResult:
    """The outcome of scanning one input file.

    ``score`` is the probability of fake (1 = AI-generated/tampered) or ``None`` when the input
    failed, in which case ``error`` says why. ``frames`` holds per-frame scores for multi-frame /
    volume inputs (the file's ``score`` is their maximum). ``heatmap`` (H×W float array in [0, 1])
    and ``thumbnail`` (H×W or H×W×3 float array in [0, 1]) are kept in memory for reports only.
    """

    path: str
    modality: str | None = None
    score: float | None = None
    threshold: float | None = None
    verdict: str | None = None  # "fake" | "real" | None (error)
    error: str | None = None
    model: str | None = None
    frames: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    heatmap: Any = field(default=None, repr=False, compare=False)
    thumbnail: Any = field(default=None, repr=False, compare=False)
    # set when a results store is used: the file's SHA-256, the stored record's id, and whether the
    # result was answered from the store instead of being scored again
    content_hash: str | None = field(default=None, compare=False)
    scan_id: str | None = field(default=None, compare=False)
    cached: bool = field(default=False, compare=False)
    # header forensics (DICOM): ``score`` is then the fusion of ``pixel_score`` and ``header_score``
    # (medforensics.engine.fusion); ``findings`` are the named header findings (dicts: code, severity, message)
    pixel_score: float | None = None
    header_score: float | None = None
    findings: list = field(default_factory=list)
    header_report: Any = field(default=None, repr=False, compare=False)  # in memory: for the series rules
    # per-frame evidence for series / volume analysis (in memory only; set when the engine is asked for it):
    # F small evidence maps (F×h×w float32) and each frame's position along the slice normal (mm or None)
    frame_maps: Any = field(default=None, repr=False, compare=False)
    frame_positions: list = field(default_factory=list, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (arrays dropped)."""
        d = asdict(self)
        for key in ("heatmap", "thumbnail", "frame_maps", "frame_positions", "header_report"):
            d.pop(key)
        return d
