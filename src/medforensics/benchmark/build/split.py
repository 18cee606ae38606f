"""Splits and balance of the benchmark builder.

Reals are split at the patient level (:func:`~medforensics.data.patient_split`); reals a
generator was trained on (its *sources*) are pinned to train with their patient group; imported
(published) fakes all go to test, and a real sharing a group with one follows it there. Generated
fakes have no patients: each sample is its own group. Within each (modality, split), as many
reals as factory fakes are kept; fakes round-robin over generators, reals by a seeded rank.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ...data import Manifest, ManifestRow, patient_split
from .options import BuildOptions, rank


def source_keys(row: ManifestRow, root: Path | None) -> set[str]:
    """The paths a pinned source may be listed under: the row's file, and the original input of a
    row of a built benchmark (its ``input_path``), so a benchmark rebuilt from another keeps its pins."""
    keys = {os.path.normpath(str(row.resolve(root)))}
    if row.extra.get("input_path"):
        keys.add(os.path.normpath(row.extra["input_path"]))
    return keys


def split_reals(reals: Manifest, *, test_fraction: float = 0.2, seed: int = 0, pinned: Iterable[str] = ()) -> Manifest:
    """Patient-level train/test split (:func:`~medforensics.data.patient_split`).

    Existing ``train``/``test`` values are kept (other values are cleared); rows whose absolute
    path (or, for a built benchmark's rows, original input path) is in ``pinned`` (generator
    training sources) are forced to train; the rest of a group follows its pinned rows.
    Deterministic: the same rows and seed give the same split, so generators can be trained on
    the train side before the benchmark is built.
    """
    pinned = {os.path.normpath(str(p)) for p in pinned}

    def initial(r: ManifestRow) -> str:
        if pinned and source_keys(r, reals.root) & pinned:
            return "train"
        return r.split if r.split in ("train", "test") else ""

    rows = [r.copy(split=initial(r)) for r in reals]
    return patient_split(reals.with_rows(rows), test_fraction=test_fraction, seed=seed, overwrite=False)


def benchmark_split(
    reals: Manifest, imported: Manifest | None = None, *, test_fraction: float = 0.2, seed: int = 0,
    pinned: Iterable[str] = (),
) -> tuple[Manifest, Manifest | None]:
    """The builder's split of reals (and of imported fakes, pinned to test and split together
    with the reals so a real sharing a patient or source figure with one follows it to test)."""
    reals = reals.filter(label="real")
    if imported is None or not len(imported):
        return split_reals(reals, test_fraction=test_fraction, seed=seed, pinned=pinned), imported
    imported = imported.filter(label="fake")
    imported = imported.with_rows([r.copy(split="test") for r in imported])
    both = split_reals(Manifest.concat([reals, imported]), test_fraction=test_fraction, seed=seed, pinned=pinned)
    return both.filter(label="real"), both.filter(label="fake")


def split_factory(factory: Manifest, *, test_fraction: float = 0.2, seed: int = 0) -> Manifest:
    """Generated fakes: each sample its own group, ≈ ``test_fraction`` of every generator to test."""
    rows = [r.copy(split="", patient_id="") for r in factory]
    return patient_split(factory.with_rows(rows), test_fraction=test_fraction, seed=seed, overwrite=True)


def sources_in_test(reals: Manifest, sources: dict[str, set[str]] | None) -> dict[str, int]:
    """Per generator, how many of its training sources ended in the test split (0 when pinned)."""
    test_keys = [source_keys(r, reals.root) for r in reals if r.split == "test"]
    return {gen: sum(1 for keys in test_keys if keys & paths) for gen, paths in (sources or {}).items()}


@dataclass
class Selection:
    """The balanced rows of a build and the modalities left out (with the reason)."""

    real: list[ManifestRow] = field(default_factory=list)
    fake: list[ManifestRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def select_balanced(reals: Manifest, factory: Manifest, opt: BuildOptions) -> Selection:
    """As many reals as factory fakes per (modality, split), capped by ``per_class`` × the split's share.

    With no factory fakes at all (a reals-only build, e.g. for imported fakes) every real is kept.
    """
    sel = Selection()
    for modality in sorted({r.modality for r in reals} | {r.modality for r in factory}):
        if not any(r.modality == modality for r in factory) and len(factory):
            sel.skipped[modality] = "no factory fakes"
            continue
        if not any(r.modality == modality for r in reals):
            sel.skipped[modality] = "no reals"
            continue
        for split in ("train", "test"):
            r_rows = sorted((r for r in reals if r.modality == modality and r.split == split),
                            key=lambda r: rank(opt.seed, r.path))
            f_rows = [r for r in factory if r.modality == modality and r.split == split]
            n = len(r_rows) if len(factory) == 0 else min(len(r_rows), len(f_rows))
            if opt.per_class:
                share = opt.test_fraction if split == "test" else 1 - opt.test_fraction
                n = min(n, max(1, round(opt.per_class * share)))
            sel.real += r_rows[:n]
            sel.fake += round_robin(f_rows, n, opt.seed)
    return sel


def round_robin(rows: list[ManifestRow], n: int, seed: int) -> list[ManifestRow]:
    """``n`` rows taken in turn from each generator (each generator's rows in seeded order)."""
    by_gen: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        by_gen[r.generator].append(r)
    queues = [sorted(v, key=lambda r: rank(seed, r.path)) for _, v in sorted(by_gen.items())]
    out: list[ManifestRow] = []
    i = 0
    while len(out) < n and any(queues):
        q = queues[i % len(queues)]
        if q:
            out.append(q.pop(0))
        i += 1
    return out


def cap_per_generator(imported: Manifest, cap: int, seed: int) -> Manifest:
    """At most ``cap`` imported fakes per generator (a seeded draw)."""
    by_gen: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in sorted(imported, key=lambda r: rank(seed, "imp:" + r.path)):
        by_gen[r.generator or r.source].append(r)
    return imported.with_rows([r for rows_ in by_gen.values() for r in rows_[:cap]])
