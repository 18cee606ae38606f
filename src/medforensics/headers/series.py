"""Per-series rules: an instance compared with the other instances of its SeriesInstanceUID.

Instances are ordered along the slice normal (ImagePositionPatient · (row × column direction of
the series' ImageOrientationPatient)) when all have a position, else by InstanceNumber. A
finding that points at one slice carries its ``path``; rules that need a majority stay silent
when fewer than :data:`MIN_SLICES` instances are given, and "minority" means at most a third of
the series (a series split half-and-half is mixed, not tampered).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

import numpy as np

from .findings import Finding, InstanceReport
from .uids import SCRIPTING_TOOLKITS, toolkit_of_uid, toolkit_of_version_name

MIN_SLICES = 3
#: Robust z-score above which a slice's pixel statistic is out of line with its neighbours.
Z_OUTLIER = 6.0
NEIGHBOURS = 2  # slices on each side a slice's statistics are compared with


def _minority(values: list[Any]) -> tuple[Any, list[int]] | None:
    """(majority value, indices of the minority) when the minority is ≤ ⅓ of the known values."""
    known = [i for i, v in enumerate(values) if v not in (None, "")]
    if len(known) < MIN_SLICES:
        return None
    counts = Counter(values[i] for i in known)
    value, n = counts.most_common(1)[0]
    others = [i for i in known if values[i] != value]
    if not others or len(others) * 3 > len(known):
        return None
    return value, others


def order_instances(reports: list[InstanceReport]) -> tuple[list[InstanceReport], np.ndarray | None]:
    """Reports sorted along the slice normal (and those positions), else by InstanceNumber."""
    orients = [tuple(r.facts.get("orientation") or ()) for r in reports]
    positions = [r.facts.get("position") for r in reports]
    if all(p is not None for p in positions) and any(orients):
        common = Counter(o for o in orients if o).most_common(1)[0][0]
        normal = np.cross(np.array(common[:3]), np.array(common[3:]))
        if np.linalg.norm(normal) > 0.5:  # a degenerate orientation has no normal: fall back below
            normal = normal / np.linalg.norm(normal)
            pos = np.array([float(np.dot(p, normal)) for p in positions])
            order = sorted(range(len(reports)), key=lambda i: (pos[i], reports[i].path))
            return [reports[i] for i in order], pos[order]
    inf = float("inf")
    order = sorted(range(len(reports)),
                   key=lambda i: (reports[i].facts.get("instance_number") if reports[i].facts.get(
                       "instance_number") is not None else inf, reports[i].path))
    return [reports[i] for i in order], None


def _pin(report: InstanceReport, code: str, severity: str, message: str, evidence: dict[str, Any]) -> Finding:
    return Finding(code, severity, message, evidence, "series", report.path)


def _odd_ones_out(code: str, severity: str, rs: list[InstanceReport], facts: str, note: str = "") -> list[Finding]:
    """A finding ``code`` on each slice whose value of a ``facts`` attribute differs from the series'."""
    out = []
    keys = rs[0].facts.get(facts, {}).keys() if rs else []
    for key in keys:
        values = [r.facts.get(facts, {}).get(key) for r in rs]
        found = _minority(values)
        if found is None:
            continue
        value, others = found
        for i in others:
            out.append(_pin(rs[i], code, severity,
                            f"{key} is {values[i]!r} in this slice but {value!r} in the rest of its series{note}.",
                            {"attribute": key, "value": values[i], "series_value": value}))
    return out


def _geometry(rs: list[InstanceReport]) -> list[Finding]:
    return _odd_ones_out("inconsistent_geometry_in_series", "medium", rs, "geometry")


def _constant_tags(rs: list[InstanceReport]) -> list[Finding]:
    return _odd_ones_out("header_differs_from_series", "medium", rs, "constant", " (normally constant within a series)")


def _uid_prefix(uid: str, k: int) -> str:
    return ".".join(uid.split(".")[:k])


def _uid_roots(rs: list[InstanceReport]) -> list[Finding]:
    """SOP instance UIDs whose root (longest prefix shared by ≥ ⅔ of the series) differs."""
    uids = [r.sop_instance_uid or "" for r in rs]
    known = [i for i, u in enumerate(uids) if u]
    if len(known) < MIN_SLICES:
        return []
    best_k, best_prefix = 0, ""
    for k in range(1, 40):
        counts = Counter(_uid_prefix(uids[i], k) for i in known if len(uids[i].split(".")) > k)
        if not counts:
            break
        prefix, n = counts.most_common(1)[0]
        if n * 3 < 2 * len(known):
            break
        best_k, best_prefix = k, prefix
    if best_k < 4:
        return []
    out = []
    for i in known:
        if not (uids[i] + ".").startswith(best_prefix + "."):
            out.append(_pin(rs[i], "sop_instance_uid_root_differs", "high",
                            f"This slice's SOPInstanceUID does not start with the root {best_prefix} that "
                            "the rest of its series shares (it was generated by something else).",
                            {"sop_instance_uid": uids[i], "series_root": best_prefix}))
    return out


def _writer(r: InstanceReport) -> tuple[str | None, str | None]:
    """(scripting toolkit that generated the SOPInstanceUID, scripting toolkit that last wrote the file)."""
    constant = r.facts.get("constant", {}) or {}
    uid_kit = toolkit_of_uid(r.sop_instance_uid)
    meta_kit = toolkit_of_uid(constant.get("ImplementationClassUID")) or toolkit_of_version_name(
        constant.get("ImplementationVersionName"))
    return (uid_kit if uid_kit in SCRIPTING_TOOLKITS else None,
            meta_kit if meta_kit in SCRIPTING_TOOLKITS else None)


def _mixed_writers(rs: list[InstanceReport]) -> list[Finding]:
    """Slices written by a scripting toolkit in a series whose other slices were not.

    A whole series re-written by one tool (an anonymiser, a conversion) is uniform and stays
    silent; an attacker who edits a few slices and re-saves them with a script leaves those
    slices' writer (a new SOPInstanceUID under the toolkit's root, or its implementation class)
    different from the rest — whatever fraction of the series they are, so no majority is needed.
    """
    if len(rs) < MIN_SLICES:
        return []
    writers = [_writer(r) for r in rs]

    def named(r: InstanceReport, part: int) -> bool:  # the slice says who made its UID / wrote it at all
        constant = r.facts.get("constant", {}) or {}
        return bool(r.sop_instance_uid) if part == 0 else bool(
            constant.get("ImplementationClassUID") or constant.get("ImplementationVersionName"))

    out = []
    for part, what in ((0, "SOPInstanceUID was generated"), (1, "file was last written")):
        comparable = [i for i, r in enumerate(rs) if named(r, part)]
        by_kit = [i for i in comparable if writers[i][part]]
        others = len(comparable) - len(by_kit)
        if len(comparable) < MIN_SLICES or not by_kit or not others:
            continue
        for i in by_kit:
            out.append(_pin(rs[i], "series_mixes_toolkit_writer", "high",
                            f"This slice's {what} by {writers[i][part]}, but {others} other slice(s) of its "
                            "series were not: a script re-saved part of the series.",
                            {"toolkit": writers[i][part],
                             "part": "sop_instance_uid" if part == 0 else "implementation_class",
                             "slices_by_toolkit": len(by_kit), "slices": len(comparable)}))
    return out


def _positions(rs: list[InstanceReport], pos: np.ndarray | None) -> list[Finding]:
    if pos is None or len(pos) < MIN_SLICES:
        return []
    out = []
    steps = np.diff(pos)
    nonzero = steps[steps > 0.01]
    typical = float(np.median(nonzero)) if nonzero.size else 0.0
    for i, s in enumerate(steps):
        if s <= 0.01:
            out.append(_pin(rs[i + 1], "duplicate_slice_position", "medium",
                            f"This slice lies at the same position ({pos[i + 1]:.2f} mm along the normal) as "
                            "another slice of its series.", {"position_mm": float(pos[i + 1]),
                                                               "other": rs[i].path}))
        elif typical > 0 and s > 1.5 * typical + 0.05:
            out.append(_pin(rs[i + 1], "slice_position_gap", "low",
                            f"The step to this slice is {s:.2f} mm where the series steps {typical:.2f} mm "
                            "(slices missing or moved).", {"step_mm": float(s), "typical_step_mm": typical}))
    return out


def _lis_members(values: list[float], strict: bool) -> set[int]:
    """Indices of one longest non-decreasing (strict: increasing) subsequence."""
    n = len(values)
    best = [1] * n
    prev = [-1] * n
    for i in range(n):
        for j in range(i):
            ok = values[j] < values[i] if strict else values[j] <= values[i]
            if ok and best[j] + 1 > best[i]:
                best[i], prev[i] = best[j] + 1, j
    i = max(range(n), key=lambda t: best[t]) if n else -1
    out = set()
    while i >= 0:
        out.add(i)
        i = prev[i]
    return out


def _out_of_order(values: list[float | None], strict: bool) -> list[int] | None:
    """Indices that break the monotone order of ``values`` (either direction), or None when the
    order is not monotone for most of them (e.g. interleaved acquisition)."""
    idx = [i for i, v in enumerate(values) if v is not None]
    if len(idx) < MIN_SLICES or len({values[i] for i in idx}) < 2:
        return None
    seq = [float(values[i]) for i in idx]  # type: ignore[arg-type]
    up = _lis_members(seq, strict)
    down = _lis_members([-v for v in seq], strict)
    keep = up if len(up) >= len(down) else down
    bad = [idx[k] for k in range(len(idx)) if k not in keep]
    if len(bad) * 5 > len(idx):
        return None
    return bad


def _instance_numbers(rs: list[InstanceReport], pos: np.ndarray | None) -> list[Finding]:
    nums = [r.facts.get("instance_number") for r in rs]
    known = [n for n in nums if n is not None]
    out = []
    dup = {n for n, c in Counter(known).items() if c > 1}
    for i, n in enumerate(nums):
        if n in dup:
            out.append(_pin(rs[i], "instance_number_duplicate", "medium",
                            f"InstanceNumber {n} is used by more than one slice of this series.",
                            {"instance_number": n}))
    if pos is None:
        return out
    bad = _out_of_order(nums, strict=True) or []
    for i in bad:
        if nums[i] in dup:
            continue
        out.append(_pin(rs[i], "instance_number_out_of_order", "medium",
                        f"InstanceNumber {nums[i]} is out of order with the slice's position among its "
                        "neighbours.", {"instance_number": nums[i], "position_index": i}))
    seq = [n for n in nums if n is not None]
    if len(seq) == len(nums) and not bad and not dup and len(seq) >= MIN_SLICES:
        gaps = [abs(b - a) for a, b in zip(seq, seq[1:])]
        typical = Counter(gaps).most_common(1)[0][0]
        for i, g in enumerate(gaps):
            if typical >= 1 and g > typical:
                out.append(_pin(rs[i + 1], "instance_number_gap", "low",
                                f"InstanceNumber jumps by {g} to this slice where the series steps by {typical}.",
                                {"instance_number": seq[i + 1], "jump": g, "typical_step": typical}))
    return out


def _seconds(tm: str | None) -> float | None:
    if not tm:
        return None
    text = tm.strip().replace(":", "")
    try:
        hh, mm = int(text[0:2]), int(text[2:4]) if len(text) >= 4 else 0
        ss = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600 + mm * 60 + ss


def _times(rs: list[InstanceReport], pos: np.ndarray | None) -> list[Finding]:
    out = []
    for key in ("AcquisitionTime", "ContentTime"):
        values = [_seconds(r.facts.get("times", {}).get(key)) for r in rs]
        bad = _out_of_order(values, strict=False) or []
        for i in bad:
            out.append(_pin(rs[i], "time_out_of_order", "medium",
                            f"{key} of this slice is out of order with its position among its neighbours "
                            "(the rest of the series was acquired in slice order).",
                            {"attribute": key, "value": rs[i].facts.get("times", {}).get(key)}))
    return out


def _robust_z(values: list[float | None], floor: float) -> list[float | None]:
    """Residual of each value against the median of its ±NEIGHBOURS neighbours, in units of the
    series' robust spread of those residuals (at least ``floor``)."""
    n = len(values)
    resid: list[float | None] = [None] * n
    for i, v in enumerate(values):
        if v is None:
            continue
        around = [values[j] for j in range(max(0, i - NEIGHBOURS), min(n, i + NEIGHBOURS + 1))
                  if j != i and values[j] is not None]
        if len(around) >= 2:
            resid[i] = v - float(np.median(around))
    known = np.array([r for r in resid if r is not None], dtype=float)
    if known.size < MIN_SLICES:
        return [None] * n
    scale = max(float(1.4826 * np.median(np.abs(known - np.median(known)))), floor)
    return [None if r is None else r / scale for r in resid]


#: statistic → (code, severity, transform, floor of the spread, smallest change that counts, unit)
PIXEL_STATS: dict[str, tuple[str, str, Callable[[float], float], float, float, str]] = {
    "noise": ("noise_floor_outlier", "medium", lambda v: math.log(max(v, 1e-3)), 0.05, 0.25, "log"),
    "vmin": ("pixel_range_outlier", "low", float, 5.0, 100.0, "value"),
    "vmax": ("pixel_range_outlier", "low", float, 20.0, 500.0, "value"),
    "bits_used": ("pixel_range_outlier", "low", float, 1.0, 2.0, "bits"),
}
MIN_PIXEL_SLICES = 5


def _pixel_stats(rs: list[InstanceReport]) -> list[Finding]:
    stats = [r.facts.get("stats") for r in rs]
    if sum(s is not None for s in stats) < MIN_PIXEL_SLICES:
        return []
    out = []
    for key, (code, severity, fn, floor, min_change, unit) in PIXEL_STATS.items():
        values = [fn(s[key]) if s is not None and s.get(key) is not None else None for s in stats]
        zs = _robust_z(values, floor)
        for i, z in enumerate(zs):
            edge = i < NEIGHBOURS or i >= len(zs) - NEIGHBOURS  # one-sided neighbours: trends look like jumps
            if z is None or abs(z) < Z_OUTLIER * (2 if edge else 1):
                continue
            n = len(values)
            around = [values[j] for j in range(max(0, i - NEIGHBOURS), min(n, i + NEIGHBOURS + 1))
                      if j != i and values[j] is not None]
            change = float(values[i] - np.median(around))  # type: ignore[operator]
            if abs(change) < min_change:
                continue
            raw = stats[i][key]  # type: ignore[index]
            ref = float(np.median([s[key] for j, s in enumerate(stats) if s is not None and s.get(key) is not None
                                   and j != i and abs(j - i) <= NEIGHBOURS]))
            sev = severity
            if key == "noise" and abs(change) >= math.log(2.0):
                sev = "high"  # noise floor doubled / halved against the neighbours
            out.append(_pin(rs[i], code, sev,
                            f"This slice's {key} ({raw:.4g}) is out of line with its neighbours ({ref:.4g}; "
                            f"robust z = {z:.1f}).",
                            {"statistic": key, "value": raw, "neighbours": ref, "z": float(z)}))
    return out


SERIES_RULES = (_geometry, _constant_tags, _uid_roots, _mixed_writers)
ORDERED_RULES = (_positions, _instance_numbers, _times)


def series_findings(reports: list[InstanceReport]) -> tuple[list[InstanceReport], list[Finding]]:
    """(reports in slice order, series findings); readable reports only are compared."""
    readable = [r for r in reports if r.error is None and r.facts]
    ordered, pos = order_instances(readable)
    findings: list[Finding] = []
    for rule in SERIES_RULES:
        findings.extend(_safe(rule, ordered))
    for rule2 in ORDERED_RULES:
        findings.extend(_safe(rule2, ordered, pos))
    findings.extend(_safe(_pixel_stats, ordered))
    unreadable = [r for r in reports if r not in readable]
    return ordered + unreadable, findings


def _safe(rule: Callable[..., list[Finding]], *args: Any) -> list[Finding]:
    try:
        return rule(*args)
    except Exception as exc:  # never let one odd series take down the batch
        return [Finding("series_rule_failed", "info",
                        f"The series rule {rule.__name__.lstrip('_')} could not run: {type(exc).__name__}: {exc}.",
                        {"rule": rule.__name__.lstrip("_"), "error": str(exc)}, "series", None)]
