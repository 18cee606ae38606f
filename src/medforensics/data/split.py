"""Deterministic, patient-level, stratified train/test (and train/val) splits.

Rows are grouped by a label-independent key (:func:`default_group_key`) so that every image of one
patient — or every crop of one figure — lands on one side. Groups are stratified by their
(label, modality, source) and, inside each stratum, ranked by ``sha256(f"{seed}:{key}")``;
the lowest-ranked ``≈ fraction`` of the groups go to the held-out side. Because a group's rank
depends only on its own key, adding rows later moves at most the few groups near the cut-off:
existing assignments are not reshuffled.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable

from .manifest import Manifest, ManifestRow

GroupKey = Callable[[ManifestRow], str]
_FRAGMENT = re.compile(r"#[A-Za-z_][\w-]*[=(].*$")  # "#crop(x=..)", "#channel=1(FLAIR)", "#frame=3"


def source_of(row: ManifestRow) -> str:
    """The dataset a row comes from: ``source``, or for fakes without one the ``generator``."""
    return row.source or row.generator


def default_group_key(row: ManifestRow) -> str:
    """Label-independent grouping key of a row.

    1. ``patient:<source>:<patient_id>`` when the patient id is known (ids of different
       datasets may collide, so they are namespaced by :func:`source_of`);
    2. ``original:<source_repo>:<original_path>`` when ``extra["original_path"]`` is set (crops of
       one figure stay together, across generators and labels; a ``#crop(...)``-style fragment is
       dropped; without ``source_repo`` the namespace is the row's source);
    3. ``path:<path>`` otherwise (one group per image).
    """
    if row.patient_id:
        return f"patient:{source_of(row)}:{row.patient_id}"
    original = row.extra.get("original_path", "").strip()
    if original:
        namespace = row.extra.get("source_repo", "").strip() or source_of(row)
        return f"original:{namespace}:{_FRAGMENT.sub('', original).strip()}"
    return f"path:{row.path.replace(chr(92), '/')}"


def stratum_of(row: ManifestRow) -> tuple[str, str, str]:
    return (row.label, row.modality, source_of(row))


def _rank(seed: int, salt: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{salt}{key}".encode()).digest()[:8], "big")


def _n_held_out(n_groups: int, fraction: float, rank: int) -> int:
    if n_groups == 0 or fraction <= 0:
        return 0
    if fraction >= 1:
        return n_groups
    if n_groups == 1:  # a lone group goes out with probability `fraction`
        return int(rank / 2**64 < fraction)
    return min(n_groups - 1, max(1, math.floor(fraction * n_groups + 0.5)))


def _assign(
    manifest: Manifest,
    candidates: list[int],
    fraction: float,
    seed: int,
    salt: str,
    held_out: str,
    kept: str,
    key_fn: GroupKey,
    overwrite: bool,
) -> Manifest:
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rows = [r.copy() for r in manifest.rows]
    groups: dict[str, list[int]] = defaultdict(list)
    for i in candidates:
        groups[key_fn(rows[i])].append(i)

    fixed: dict[str, str] = {}
    strata: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for key, members in groups.items():
        existing = Counter(rows[i].split for i in members if rows[i].split and not overwrite)
        if existing:
            fixed[key] = sorted(existing.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        counts = Counter(stratum_of(rows[i]) for i in members)
        primary = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        strata[primary].append(key)

    decided: dict[str, str] = dict(fixed)
    for stratum in sorted(strata):
        keys = sorted(strata[stratum], key=lambda k: (_rank(seed, salt, k), k))
        target = _n_held_out(len(keys), fraction, _rank(seed, salt, keys[0]) if keys else 0)
        need = max(0, target - sum(fixed.get(k) == held_out for k in keys))
        for k in keys:
            if k in fixed:
                continue
            decided[k] = held_out if need > 0 else kept
            need -= decided[k] == held_out

    for key, members in groups.items():
        for i in members:
            if overwrite or not rows[i].split:
                rows[i].split = decided[key]
    return manifest.with_rows(rows)


def patient_split(
    manifest: Manifest,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    group_key: GroupKey | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Copy of ``manifest`` with ``split`` set to ``"train"``/``"test"`` at the group level.

    Each (label, modality, source) stratum sends ≈ ``test_fraction`` of its groups to test (at
    least one when it has ≥ 2 groups, never all of them); a stratum with one group sends it to
    test with probability ``test_fraction`` (by its hash). A group spanning several strata (e.g.
    one figure cropped for several generators) is counted in its most common stratum. Rows that
    already have a split keep it unless ``overwrite``, and the rest of their group follows them.
    """
    key_fn = group_key or default_group_key
    return _assign(manifest, list(range(len(manifest))), test_fraction, seed, "", "test", "train", key_fn, overwrite)


def train_val_split(
    manifest_train: Manifest,
    val_fraction: float = 0.1,
    seed: int = 0,
    *,
    group_key: GroupKey | None = None,
) -> Manifest:
    """Re-split the ``train``/``val``/unsplit rows into ``"train"``/``"val"``; other rows untouched."""
    key_fn = group_key or default_group_key
    candidates = [i for i, r in enumerate(manifest_train.rows) if r.split in ("", "train", "val")]
    return _assign(manifest_train, candidates, val_fraction, seed, "val:", "val", "train", key_fn, overwrite=True)


def find_leakage(manifest: Manifest, *, group_key: GroupKey | None = None) -> dict[str, list[str]]:
    """Groups whose rows sit in more than one (non-empty) split: ``key → sorted splits``."""
    key_fn = group_key or default_group_key
    seen: dict[str, set[str]] = defaultdict(set)
    for row in manifest.rows:
        if row.split:
            seen[key_fn(row)].add(row.split)
    return {k: sorted(v) for k, v in sorted(seen.items()) if len(v) > 1}


def assert_no_leakage(manifest: Manifest, *, group_key: GroupKey | None = None) -> None:
    """Raise ``ValueError`` listing every group (patient/figure/image) found in several splits."""
    bad = find_leakage(manifest, group_key=group_key)
    if bad:
        shown = "; ".join(f"{k} in {'/'.join(v)}" for k, v in list(bad.items())[:20])
        more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
        raise ValueError(f"{len(bad)} group(s) leak across splits: {shown}{more}")
