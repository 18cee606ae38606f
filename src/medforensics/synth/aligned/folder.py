"""Aligned fake sets: every real of a manifest × every transform × ``per_real`` variants → PNGs + manifest.

Layout of ``out_dir``::

    <transform>/<source>/<real stem>-<8 hex of the real's path>-k<variant>.png   the fake (lossless)
    <same>.json                                                             its manifest row + parameters
    manifest.csv                                                            all rows (written at the end)

A fake counts as done when both its PNG and its JSON exist (the PNG is renamed into place
first, the JSON second), so an interrupted run continues where it stopped and a finished one is
skipped. A PNG without our JSON next to it is somebody else's file: it is never overwritten (the
item is reported as an error). A bad real (unreadable, unsupported mode) is reported and skipped;
it never stops the batch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ...data.manifest import Manifest, ManifestRow
from ...io.png import write_png
from .transforms import AlignError, Transform, align, read_real, to_float

#: extra manifest columns of an aligned fake set
ALIGNED_COLUMNS = ("aligned_to", "transform", "transform_params", "variant", "psnr", "sharpness_ratio")
MANIFEST_NAME = "manifest.csv"


def _slug(name: str) -> str:
    return name.split(":", 1)[-1].replace("/", "_")


def fake_relpath(real_path: Path, row: ManifestRow, transform_name: str, variant: int) -> Path:
    digest = hashlib.sha256(str(real_path).encode()).hexdigest()[:8]
    source = (row.source or "unknown").replace("/", "_")
    return Path(_slug(transform_name)) / source / f"{real_path.stem}-{digest}-k{int(variant)}.png"


def _is_ours(manifest_path: Path) -> bool:
    try:
        with open(manifest_path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except OSError:
        return False
    return all(c in header for c in ("aligned_to", "transform", "transform_params"))


def make_aligned_set(
    reals: Manifest,
    out_dir: str | Path,
    transforms: Sequence[Transform],
    per_real: int = 1,
    match: str = "sharpness",
    seed: int = 0,
    progress: bool = True,
    write_manifest: bool = True,
    transforms_per_real: int | None = None,
) -> tuple[Manifest, list[str], dict[str, int]]:
    """Write the aligned fakes of every real row; return (manifest of the fakes, errors, counts).

    ``transforms_per_real`` k: each real goes through only k of the transforms, drawn without
    replacement by a generator seeded with ``seed`` and the real's path (so a rerun, or the same
    real in another order, draws the same ones); ``None`` uses every transform.

    ``counts`` holds ``written`` and ``skipped`` (done by an earlier run). Fakes keep the real's
    modality, source, patient id and split; ``generator`` is the transform's name, ``family``
    its kind. The manifest (``out_dir/manifest.csv``) is (re)written only if it does not exist or
    is one this function wrote (it has the aligned columns); anything else raises
    ``FileExistsError`` before any work is done.
    """
    out_dir = Path(out_dir)
    if per_real < 1:
        raise ValueError(f"per_real must be ≥ 1, got {per_real}")
    if transforms_per_real is not None and not 1 <= transforms_per_real:
        raise ValueError(f"transforms_per_real must be ≥ 1, got {transforms_per_real}")
    k_tr = len(transforms) if transforms_per_real is None else min(int(transforms_per_real), len(transforms))
    manifest_path = out_dir / MANIFEST_NAME
    if write_manifest and manifest_path.exists() and not _is_ours(manifest_path):
        raise FileExistsError(f"{manifest_path} exists and is not an aligned-fakes manifest; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    errors: list[str] = []
    counts = {"written": 0, "skipped": 0}
    paths = reals.paths()
    total = len(reals) * k_tr * per_real
    bar = tqdm(total=total, desc="aligned fakes", disable=not progress, dynamic_ncols=True)
    for row, real_path in zip(reals, paths):
        pixels: np.ndarray | None = None
        meta: dict[str, Any] = {}
        chosen = list(transforms)
        if k_tr < len(transforms):
            h = int(hashlib.sha256(str(real_path).encode()).hexdigest()[:8], 16)
            pick = np.random.default_rng([int(seed), h, 0xA11]).choice(len(transforms), k_tr, replace=False)
            chosen = [transforms[i] for i in sorted(pick)]
        for transform in chosen:
            for k in range(per_real):
                bar.update(1)
                rel = fake_relpath(real_path, row, transform.name, k)
                png, side = out_dir / rel, out_dir / rel.with_suffix(".json")
                if png.exists() and side.exists():
                    try:
                        rec = json.loads(side.read_text())
                        if rec.get("aligned_to") == str(real_path):
                            rows.append(ManifestRow.from_dict(rec))
                            counts["skipped"] += 1
                            continue
                    except (OSError, json.JSONDecodeError):
                        pass
                if png.exists() and not side.exists():
                    errors.append(f"{png}: exists and was not written by an aligned-fakes run; left alone")
                    continue
                try:
                    if pixels is None:
                        pixels, meta = read_real(real_path)
                    fake, info = align(pixels, transform, variant=k, match=match,
                                       jpeg_quality=meta.get("jpeg_quality"), seed=seed)
                except AlignError as exc:
                    errors.append(str(exc))
                    bar.update(len(chosen) * per_real - 1 - (chosen.index(transform) * per_real + k))
                    break
                except (ValueError, RuntimeError) as exc:
                    errors.append(f"{real_path} ({transform.name}, variant {k}): {exc}")
                    continue
                write_png(png, fake)
                new = ManifestRow(
                    path=rel.as_posix(), label="fake", modality=row.modality, source=row.source,
                    generator=_slug(transform.name), family=transform.kind, patient_id=row.patient_id,
                    split=row.split,
                    extra={"aligned_to": str(real_path), "transform": transform.name,
                           "transform_params": json.dumps(info, sort_keys=True), "variant": str(k),
                           "psnr": f"{info['psnr']:.3f}",
                           "sharpness_ratio": "" if info["sharpness_ratio"] is None else f"{info['sharpness_ratio']:.5f}"},
                )
                tmp = side.with_name(f".{side.name}.tmp")
                tmp.write_text(json.dumps(new.to_dict(), indent=1))
                os.replace(tmp, side)
                rows.append(new)
                counts["written"] += 1
            else:
                continue
            break  # the real could not be read: no transform can use it
    bar.close()
    man = Manifest(rows, out_dir, extra_columns=list(ALIGNED_COLUMNS))
    if write_manifest:
        man.write(manifest_path, overwrite=True)
        man.path = manifest_path
    return man, errors, counts


def load_pairs(manifest: Manifest) -> list[tuple[np.ndarray, np.ndarray, ManifestRow]]:
    """(real float image, fake float image, fake row) for every row of an aligned-fakes manifest."""
    out = []
    for row, path in zip(manifest, manifest.paths()):
        real, _ = read_real(row.extra["aligned_to"])
        fake, _ = read_real(path)
        out.append((to_float(real), to_float(fake), row))
    return out
