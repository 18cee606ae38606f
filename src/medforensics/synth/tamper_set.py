"""Build a tampered copy set (injection/removal with masks) from the real rows of a manifest."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..data.manifest import Manifest, ManifestRow
from ..detectors.components.progress import progress
from ..io import UnreadableImageError, load
from ..io.png import to_uint8, write_png
from .tamper import tamper

KINDS = ("inject", "remove")


def _pick(key: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for ``key`` (independent of row order)."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12


def _inside(path: str) -> Path:
    """``path`` as a relative name that stays under the output folder: a manifest path that is absolute
    or climbs out (``../``) keeps its clean parts behind a short hash of the whole path, so copies of
    two different sources never share a name and nothing is ever written beside (or over) a source."""
    parts = Path(path).parts
    clean = [q for q in parts if q not in ("..", ".", "") and q != Path(path).anchor]
    if len(clean) == len(parts) and not Path(path).is_absolute():
        return Path(*parts)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    return Path(f"_{digest}", *clean) if clean else Path(f"_{digest}")


def make_tampered_set(
    manifest: Manifest,
    out_dir: str | Path,
    *,
    fraction: float = 0.5,
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
    show_progress: bool = True,
) -> Manifest:
    """Tamper a stable ``fraction`` of the manifest's real rows and write PNGs + masks under ``out_dir``.

    Each tampered copy keeps its source row's modality, source, patient id and split (so a
    patient never crosses splits) and is saved as an 8-bit PNG like the shared real images, so
    the copy and its source share one file history. The mask (255 = altered) is written beside it
    and referenced by the row's ``mask`` column; ``original_path`` names the source image.
    Existing files are reused (the set is deterministic), never silently replaced by other content.
    """
    out_dir = Path(out_dir)
    reals = [r for r in manifest if r.label == "real" and _pick(r.path, seed) < fraction]
    rows: list[ManifestRow] = []
    for row in progress(reals, "tampering", enabled=show_progress):
        kind = kinds[int(_pick("kind:" + row.path, seed) * len(kinds))]
        stem = _inside(row.path).with_suffix("")
        img_rel = Path(kind) / f"{stem}.png"
        mask_rel = Path(kind) / f"{stem}.mask.png"
        img_path, mask_path = out_dir / img_rel, out_dir / mask_rel
        if not (img_path.exists() and mask_path.exists()):
            try:
                image = load(row.resolve(manifest.root), modality=row.modality)
            except UnreadableImageError:
                continue
            rng = np.random.default_rng([seed, int(_pick("rng:" + row.path, seed) * 2**31)])
            tampered, mask = tamper(image, kind, rng)
            write_png(img_path, to_uint8(tampered.pixels))
            write_png(mask_path, mask.astype(np.uint8) * 255)
        extra = {k: v for k, v in row.extra.items() if k in ("license",)}
        extra.update(original_path=str(row.resolve(manifest.root)), mask=str(mask_path.resolve()))
        rows.append(
            replace(row, path=str(img_rel), label="fake", generator=f"tamper-{kind}", family="tamper", extra=extra)
        )
    return Manifest.from_rows(rows, root=out_dir)
