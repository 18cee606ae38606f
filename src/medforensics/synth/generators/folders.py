"""Images in and out of the generator factory: training arrays, sample folders, imported fakes, grids.

Resizing follows the project's one documented resize, :func:`medforensics.io.standardise`
(centre square crop, Pillow bicubic on float32, antialiased when downsampling, clipped to
[0, 1]): real training images are brought to the generator's resolution with it, and samples
are brought from the generator's resolution to the benchmark size (256) with it — exactly the
function every real image goes through on its way to a detector. Samples are then stored as
8-bit PNGs (``rint(clip(x, 0, 1) · 255)``, the same quantisation as
:mod:`medforensics.data.processing`): mode ``L`` for grey, ``RGB`` for colour.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ...data.manifest import Manifest, ManifestRow, infer_family, is_image_file
from ...io import UnreadableImageError, load, standardise, to_channels
from ...io.png import to_uint8, write_png

if TYPE_CHECKING:
    from .base import Generator

#: manifest columns written by :func:`import_fakes` (the imported files' history)
HISTORY_COLUMNS = ("original_format", "original_height", "original_width", "original_channels", "jpeg_quality")


def _as_manifest(manifest: Manifest | str | Path) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else Manifest.read(manifest)


def load_training_images(
    manifest: Manifest | str | Path,
    resolution: int,
    channels: int,
    modality: str | None = None,
    label: str | None = "real",
    split: str | Iterable[str] | None = None,
    fit: str = "center_crop",
    progress: bool = False,
) -> np.ndarray:
    """Rows of ``manifest`` (filtered by ``modality``, ``label``, ``split``) → float32 array in [0, 1].

    Each image is read with :func:`medforensics.io.load` (modality-aware intensity), resized with
    :func:`medforensics.io.standardise` (``fit``) to ``resolution`` and converted to ``channels``
    (grey replicated to RGB, RGB to luma). Returns N×H×W (``channels=1``) or N×H×W×3. Unreadable
    files are skipped with one warning naming them; no readable image at all raises ``ValueError``.
    """
    man = _as_manifest(manifest)
    crit: dict[str, object] = {}
    if modality is not None:
        crit["modality"] = modality
    if label is not None:
        crit["label"] = label
    if split is not None:
        crit["split"] = {split} if isinstance(split, str) else set(split)
    rows = man.filter(**crit)
    if not len(rows):
        raise ValueError(f"no rows with {crit} in the manifest ({len(man)} rows)")
    out, bad = [], []
    for row, path in tqdm(list(zip(rows, rows.paths())), desc="load images", disable=not progress, leave=False):
        try:
            img = load(path, modality=row.modality or None)
            chw = to_channels(standardise(img.pixels, int(resolution), fit=fit), int(channels))
        except (UnreadableImageError, ValueError, OSError) as exc:
            bad.append(f"{path}: {exc}")
            continue
        out.append(chw[0] if channels == 1 else np.moveaxis(chw, 0, -1))
    if bad:
        shown = "; ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
        warnings.warn(f"skipped {len(bad)} unreadable image(s): {shown}", stacklevel=2)
    if not out:
        raise ValueError(f"none of the {len(rows)} selected images could be read")
    return np.stack(out).astype(np.float32)


def sample_to_folder(
    gen: "Generator",
    n: int,
    out_dir: str | Path,
    modality: str,
    generator_name: str,
    seed: int = 0,
    size: int = 256,
    batch_size: int = 16,
    family: str | None = None,
    manifest_path: str | Path | None = None,
    progress: bool = True,
) -> Manifest:
    """Sample ``n`` fakes into ``out_dir`` as 8-bit PNGs of ``size``×``size``; return their manifest.

    Samples are resized from ``gen.resolution`` with :func:`medforensics.io.standardise` (the
    resize real images get). Files are named ``<generator_name>_s<seed>_<index:06d>.png``; if any
    of them exists already nothing is written (``FileExistsError``). Rows: label ``fake``,
    ``source`` = ``generator`` = ``generator_name``, ``family`` (default: the generator's),
    ``patient_id`` NA, extra columns ``resolution``, ``steps``, ``seed``, ``sampler``. Relative
    paths are against ``out_dir``; the manifest is written only when ``manifest_path`` is given.
    """
    n, size = int(n), int(size)
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if not generator_name or any(c in generator_name for c in "/\\"):
        raise ValueError(f"generator_name must be a non-empty name without slashes, got {generator_name!r}")
    out_dir = Path(out_dir)
    names = [f"{generator_name}_s{seed}_{i:06d}.png" for i in range(n)]
    existing = [name for name in names if (out_dir / name).exists()]
    if existing:
        raise FileExistsError(f"{out_dir}: {len(existing)} of the output files exist already (e.g. {existing[0]}); "
                              "choose another folder, seed or generator name")
    if manifest_path is not None and Path(manifest_path).exists():
        raise FileExistsError(f"{manifest_path} exists already")
    out_dir.mkdir(parents=True, exist_ok=True)
    family = family or gen.family
    extra = {"resolution": str(gen.resolution), "steps": str(gen.step), "seed": str(seed),
             "sampler": gen.describe_sampler()}
    rows = []
    bar = tqdm(total=n, desc=f"sample {generator_name}", disable=not progress, leave=False, dynamic_ncols=True)
    chunk = max(1, int(batch_size)) * 4
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        arr = gen.sample_range(start, count, seed=seed, batch_size=batch_size)
        for k in range(count):
            img = standardise(arr[k], size)
            write_png(out_dir / names[start + k], to_uint8(img))
            rows.append(ManifestRow(path=names[start + k], label="fake", modality=modality, source=generator_name,
                                    generator=generator_name, family=family, patient_id="NA", extra=dict(extra)))
        bar.update(count)
    bar.close()
    man = Manifest(rows, out_dir)
    if manifest_path is not None:
        man.write(manifest_path)
        man.path = Path(manifest_path)
    return man


def import_fakes(
    folder: str | Path,
    generator: str,
    modality: str,
    family: str | None = None,
    manifest_root: str | Path | None = None,
    progress: bool = False,
) -> tuple[Manifest, list[str]]:
    """Index fakes made elsewhere: every image file under ``folder`` → a manifest row.

    Each file is read with :func:`medforensics.io.load`; its history goes into extra columns
    (:data:`HISTORY_COLUMNS`: source format, original height/width/channels, and the IJG JPEG
    quality estimated from the quantisation tables, empty when not a JPEG). Files that cannot be
    read are left out and returned as ``"path: reason"`` strings. Paths are relative to
    ``manifest_root`` (default ``folder``).
    """
    from ...data.processing import estimate_jpeg_quality

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    if not generator.strip():
        raise ValueError("the generator name is empty")
    if not modality.strip():
        raise ValueError("the modality is empty")
    root = Path(manifest_root).expanduser().resolve() if manifest_root is not None else folder.resolve()
    family = family if family is not None else infer_family(generator)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    rows, errors = [], []
    for path in tqdm(files, desc="import fakes", disable=not progress, leave=False):
        try:
            img = load(path, modality=modality)
            quality = estimate_jpeg_quality(path) if img.meta.source_format == "jpeg" else None
        except (UnreadableImageError, OSError, ValueError) as exc:
            errors.append(str(exc) if isinstance(exc, UnreadableImageError) else f"{path}: {exc}")
            continue
        h, w = (int(v) for v in img.pixels.shape[:2])  # io.load keeps the native size
        extra = {
            "original_format": img.meta.source_format,
            "original_height": str(h),
            "original_width": str(w),
            "original_channels": str(3 if img.pixels.ndim == 3 else 1),
            "jpeg_quality": "" if quality is None else str(quality),
        }
        rel = Path(path.resolve()).relative_to(root) if path.resolve().is_relative_to(root) else path.resolve()
        rows.append(ManifestRow(path=rel.as_posix(), label="fake", modality=modality.strip().lower(), source=generator,
                                generator=generator, family=family, patient_id="NA", extra=extra))
    return Manifest(rows, root, extra_columns=list(HISTORY_COLUMNS)), errors


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """N×H×W or N×H×W×3 in [0, 1] → one H'×W'(×3) float image, tiles separated by ``pad`` px of grey."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim not in (3, 4) or len(arr) == 0:
        raise ValueError(f"expected a non-empty N×H×W(×3) array, got shape {arr.shape}")
    n, h, w = arr.shape[:3]
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad) + arr.shape[3:], 0.5, np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = arr[i]
    return grid


def save_grid(images: np.ndarray, path: str | Path, ncol: int | None = None) -> Path:
    """Save :func:`make_grid` of ``images`` as an 8-bit PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images, ncol)
    write_png(path, to_uint8(grid))
    return path
