"""DICOM header forensics: named findings per instance and per series, and a header score.

What a pixel detector cannot see — who wrote the file, whether its header agrees with itself,
with its pixel data and with the rest of its series — read as evidence. API (nothing here
raises on a bad file; an unreadable header is an ``unreadable_header`` finding)::

    from medforensics.headers import inspect_instance, inspect_series, inspect_paths

    r = inspect_instance("slice.dcm")              # InstanceReport: .findings, .score, .to_dict()
    s = inspect_series(paths_of_one_series)        # SeriesReport: .instances (slice order), .findings, .score
    for s in inspect_paths(["study/"]):            # files / folders → one SeriesReport per SeriesInstanceUID
        for r in s.instances:
            r.path, r.score, r.flagged(), [f.code for f in r.all_findings]

``InstanceReport.score`` (the per-file ``header_score``) combines the file's own findings with
the series findings that point at it; ``SeriesReport.score`` is the series'. Both are in [0, 1]
and flagged at :data:`DEFAULT_THRESHOLD`. ``pixels=False`` reads headers only
(``stop_before_pixels``) and skips the pixel-statistics rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..io.types import UnreadableImageError
from ..io.walk import iter_entries
from .findings import CODES, DEFAULT_THRESHOLD, SEVERITY_WEIGHTS, Finding, InstanceReport, SeriesReport, combine
from .instance import inspect_dataset, inspect_instance
from .series import series_findings

__all__ = [
    "CODES",
    "DEFAULT_THRESHOLD",
    "SEVERITY_WEIGHTS",
    "Finding",
    "InstanceReport",
    "SeriesReport",
    "combine",
    "inspect_dataset",
    "inspect_instance",
    "inspect_paths",
    "inspect_series",
    "series_from_reports",
]


def series_from_reports(reports: list[InstanceReport], series_uid: str | None = None) -> SeriesReport:
    """Run the series rules over already-inspected instances of one series (attaches the
    findings that point at a file to that file's ``series_findings``)."""
    ordered, findings = series_findings(reports)
    by_path: dict[str, InstanceReport] = {r.path: r for r in ordered}
    for r in ordered:
        r.series_findings = []
    for f in findings:
        if f.path is not None and f.path in by_path:
            by_path[f.path].series_findings.append(f)
    uid = series_uid if series_uid is not None else next(
        (r.series_instance_uid for r in ordered if r.series_instance_uid), "")
    return SeriesReport(series_instance_uid=uid or "", instances=ordered, findings=findings)


def inspect_series(paths: Iterable[str | Path], *, pixels: bool = True) -> SeriesReport:
    """Header forensics of the files of ONE series (the caller grouped them; see :func:`inspect_paths`)."""
    return series_from_reports([inspect_instance(p, pixels=pixels) for p in paths])


def inspect_paths(paths: Iterable[str | Path] | str | Path, *, pixels: bool = True) -> list[SeriesReport]:
    """Files and folders → one :class:`SeriesReport` per SeriesInstanceUID, in first-seen order.

    Folders are walked with :func:`medforensics.io.iter_entries`; files that are not DICOM (no
    preamble and no raw DICOM header) are skipped, walk problems and unreadable DICOM files come
    back as single-instance reports with an ``unreadable_header`` finding. Instances without a
    SeriesInstanceUID are grouped by folder (report uid ``""``).
    """
    groups: dict[str, list[InstanceReport]] = {}
    singles: list[SeriesReport] = []
    for entry in iter_entries(paths):
        if isinstance(entry, UnreadableImageError):
            r = InstanceReport(path=str(entry.path), error=entry.reason)
            r.findings.append(Finding("unreadable_header", "high", f"The file cannot be read: {entry.reason}.",
                                      {"reason": entry.reason}, "instance", str(entry.path)))
            singles.append(SeriesReport("", [r], []))
            continue
        if not _looks_like_dicom(entry):
            continue
        r = inspect_instance(entry, pixels=pixels)
        if r.error is not None:
            singles.append(SeriesReport("", [r], []))
        elif r.series_instance_uid:
            groups.setdefault(r.series_instance_uid, []).append(r)
        else:  # no SeriesInstanceUID (e.g. stripped by an anonymiser): the folder stands in
            groups.setdefault(f"{_NO_UID}{Path(r.path).parent}", []).append(r)
    return [series_from_reports(rs, "" if key.startswith(_NO_UID) else key) for key, rs in groups.items()] + singles


_NO_UID = "\x00folder:"


def _looks_like_dicom(path: Path) -> bool:
    from ..io.dicom import has_dicm_magic, looks_like_raw_dicom
    from ..io.files import open_regular

    try:
        with open_regular(path) as fh:
            head = fh.read(132)
    except (OSError, UnreadableImageError):
        return True  # let inspect_instance report why
    return has_dicm_magic(head) or looks_like_raw_dicom(head)
