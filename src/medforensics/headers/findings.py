"""Named header findings, their weights and the header score.

A :class:`Finding` is one piece of evidence read from a DICOM header or file structure: a stable
``code`` (what the lead's outputs key on), a ``severity`` (``info`` / ``low`` / ``medium`` /
``high``), a one-sentence ``message`` for a human and an ``evidence`` dict (JSON-able values).

Scores combine findings as a noisy-OR, ``1 - Π(1 - weight)``: each finding is an independent
chance that the object was rewritten. With :data:`SEVERITY_WEIGHTS` one ``high`` finding or two
``medium`` ones reach the default operating point :data:`DEFAULT_THRESHOLD` (0.5); ``info`` and
``low`` findings alone never do (checked on genuine data by
``bench/header_forensics_false_positives/run.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

#: Severity → weight in the noisy-OR score.
SEVERITY_WEIGHTS: dict[str, float] = {"info": 0.05, "low": 0.15, "medium": 0.3, "high": 0.6}
#: Header score at or above which an instance / a series is flagged.
DEFAULT_THRESHOLD = 0.5

#: Every finding code → (scope, severity or severities, what it means). Outputs can use it as a legend.
CODES: dict[str, tuple[str, str, str]] = {
    # per instance
    "unreadable_header": ("instance", "high", "the header cannot be read (or the file holds no data set)"),
    "malformed_attribute": ("instance", "medium", "an attribute value cannot be interpreted"),
    "missing_type1_attribute": ("instance", "medium", "the CT / MR Image IOD requires it with a value"),
    "missing_type2_attribute": ("instance", "low", "the CT / MR Image IOD requires it to be present"),
    "implausible_attribute_value": ("instance", "medium",
                                    "a value no scanner writes (slope ≤ 0, kVp, spacing, non-orthonormal orientation)"),
    "inconsistent_pixel_description": ("instance", "low|high",
                                       "Bits/HighBit/PixelRepresentation/SamplesPerPixel contradict each other"),
    "pixel_data_length_mismatch": ("instance", "medium|high", "pixel data bytes ≠ Rows×Columns×frames×samples×bits"),
    "pixel_data_undecodable": ("instance", "medium", "the pixel data cannot be decoded as the header says"),
    "pixel_values_exceed_bits_stored": ("instance", "medium", "stored values use bits above BitsStored"),
    "transfer_syntax_encoding_mismatch": ("instance", "high", "the data set / pixel data is not encoded as the "
                                                              "transfer syntax says"),
    "file_meta_sop_instance_mismatch": ("instance", "high", "MediaStorageSOPInstanceUID ≠ SOPInstanceUID"),
    "file_meta_sop_class_mismatch": ("instance", "high", "MediaStorageSOPClassUID ≠ SOPClassUID"),
    "no_file_meta": ("instance", "low", "no preamble / file meta (ACR-NEMA style)"),
    "toolkit_sop_instance_uid": ("instance", "info|medium", "SOPInstanceUID from a toolkit root (medium when the "
                                                            "file claims a scanner vendor)"),
    "toolkit_implementation_class": ("instance", "info|low", "last written by a toolkit (low for pydicom, GDCM/ITK)"),
    "secondary_capture_with_acquisition_pixels": ("instance", "high", "secondary capture holding CT-like HU pixels "
                                                                      "with a scanner noise floor"),
    # per series (pointing at one slice unless said otherwise)
    "inconsistent_geometry_in_series": ("series", "medium", "rows/columns/spacing/bits/orientation/padding differ "
                                                            "from the series"),
    "header_differs_from_series": ("series", "medium", "a normally constant tag (vendor, software, station, "
                                                       "implementation class, transfer syntax…) differs"),
    "sop_instance_uid_root_differs": ("series", "high", "SOPInstanceUID not under the root the series shares"),
    "series_mixes_toolkit_writer": ("series", "high", "a scripting toolkit (pydicom, GDCM/ITK) generated the UID of / "
                                                      "last wrote some slices of a series but not the others"),
    "duplicate_slice_position": ("series", "medium", "two slices at the same position"),
    "slice_position_gap": ("series", "low", "a slice step > 1.5× the series' step"),
    "instance_number_duplicate": ("series", "medium", "InstanceNumber used twice"),
    "instance_number_out_of_order": ("series", "medium", "InstanceNumber out of order with position"),
    "instance_number_gap": ("series", "low", "InstanceNumber jumps more than the series' step"),
    "time_out_of_order": ("series", "medium", "Acquisition/ContentTime out of order with position"),
    "noise_floor_outlier": ("series", "medium|high", "noise floor out of line with the neighbours "
                                                     "(high when doubled/halved)"),
    "pixel_range_outlier": ("series", "low", "min/max value or bits used out of line with the neighbours"),
    "series_rule_failed": ("series", "info", "a series rule could not run (points at no slice)"),
}


@dataclass(frozen=True)
class Finding:
    """One named piece of header / file-structure evidence.

    ``scope`` is ``"instance"`` (read from the file alone) or ``"series"`` (from comparing the
    instance with the rest of its series); ``path`` is the file the finding points at, or
    ``None`` for a series finding that belongs to no single file.
    """

    code: str
    severity: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    scope: str = "instance"
    path: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITY_WEIGHTS:
            raise ValueError(f"unknown severity {self.severity!r} (one of {sorted(SEVERITY_WEIGHTS)})")

    @property
    def weight(self) -> float:
        return SEVERITY_WEIGHTS[self.severity]

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "weight": self.weight,
            "message": self.message,
            "evidence": self.evidence,
            "scope": self.scope,
            "path": self.path,
        }


def combine(findings: Iterable[Finding]) -> float:
    """Noisy-OR of the findings' weights, in [0, 1] (0 for no findings)."""
    keep = 1.0
    for f in findings:
        keep *= 1.0 - f.weight
    return float(1.0 - keep)


@dataclass
class InstanceReport:
    """Header forensics of one file.

    ``findings`` are the file's own (scope ``instance``); ``series_findings`` are the series
    findings that point at this file (filled in by :func:`~medforensics.headers.inspect_series`).
    ``score`` combines both. ``error`` is set when the header could not be read at all (the
    report then carries one ``unreadable_header`` finding).
    """

    path: str
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    modality: str | None = None
    findings: list[Finding] = field(default_factory=list)
    series_findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    #: per-slice header values and pixel statistics used by the series rules (not part of the API)
    facts: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def all_findings(self) -> list[Finding]:
        return [*self.findings, *self.series_findings]

    @property
    def score(self) -> float:
        return combine(self.all_findings)

    def flagged(self, threshold: float = DEFAULT_THRESHOLD) -> bool:
        return self.score >= threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "modality": self.modality,
            "header_score": self.score,
            "error": self.error,
            "findings": [f.to_dict() for f in self.all_findings],
        }


@dataclass
class SeriesReport:
    """Header forensics of the instances of one SeriesInstanceUID.

    ``instances`` are ordered along the slice normal when every instance has a position (else
    by InstanceNumber, then path); ``findings`` are all series findings (those pointing at a file
    also appear in that instance's ``series_findings``).
    ``score`` = 1 − (1 − highest instance score) · Π(1 − weight of series findings that point
    at no single file).
    """

    series_instance_uid: str
    instances: list[InstanceReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def score(self) -> float:
        top = max((r.score for r in self.instances), default=0.0)
        unpinned = combine(f for f in self.findings if f.path is None)
        return float(1.0 - (1.0 - top) * (1.0 - unpinned))

    def flagged(self, threshold: float = DEFAULT_THRESHOLD) -> bool:
        return self.score >= threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "header_score": self.score,
            "n_instances": len(self.instances),
            "findings": [f.to_dict() for f in self.findings],
            "instances": [r.to_dict() for r in self.instances],
        }
