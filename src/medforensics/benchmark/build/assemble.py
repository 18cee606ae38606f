"""Assembly of the benchmark: write every selected image through the one pipeline, then the
manifest, the pins, the grids and the build report (see :func:`build_benchmark`)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...data import Manifest, ManifestRow, anatomy_of, assert_no_leakage
from ...data.shared import anatomies_compatible, real_anatomies
from ...detectors.components.progress import progress
from ...io import UnreadableImageError, load
from ..records import json_default
from .format_check import format_statistics_check
from .inputs import write_sources
from .options import BUILD_FILE, MANIFEST_FILE, SOURCES_FILE, BuildOptions, BuildResult, rank
from .pipeline import colour_modes, history_of, native_sides, out_name, pipeline, safe_name, save_png
from .split import Selection, benchmark_split, cap_per_generator, select_balanced, sources_in_test, split_factory


def build_benchmark(
    real: Manifest,
    fakes: Manifest | Sequence[Manifest],
    out: str | Path,
    *,
    imported: Manifest | None = None,
    options: BuildOptions | None = None,
    sources: dict[str, set[str]] | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> BuildResult:
    """Build the benchmark in ``out`` (see the package docstring); return its manifest and report.

    ``real``: real rows (other labels ignored). ``fakes``: factory fakes (one manifest or several).
    ``imported``: published fakes made elsewhere (all go to test). ``sources``: generator name →
    absolute paths of its training images (pinned to train; written to ``out/bench_sources.json``).
    Refuses a non-empty ``out`` unless ``overwrite``.
    """
    t0 = time.time()
    opt = options or BuildOptions()
    out = _prepare(out, overwrite)
    reals, factory, imported = _inputs(real, fakes, imported, opt, out)
    pinned = set().union(*sources.values()) if sources else set()
    reals, imported = benchmark_split(reals, imported, test_fraction=opt.test_fraction, seed=opt.seed, pinned=pinned)
    factory = split_factory(factory, test_fraction=opt.test_fraction, seed=opt.seed)
    selection = select_balanced(reals, factory, opt)

    writer = _Writer(out, opt, modes=colour_modes(selection.real, reals.root),
                     fake_sides=native_sides(selection.fake, factory.root))
    writer.reals_and_fakes(selection, reals.root, factory.root, show_progress)
    if imported is not None and len(imported) and opt.max_imported_per_generator:
        imported = cap_per_generator(imported, int(opt.max_imported_per_generator), opt.seed)
    n_imported = writer.imported(imported, reals, selection.real, show_progress) if imported is not None else 0

    manifest = Manifest(writer.rows, out)
    assert_no_leakage(manifest)
    manifest_path = manifest.write(out / MANIFEST_FILE, overwrite=True)
    manifest = Manifest.read(manifest_path)
    if sources:
        write_sources(out, sources)
    report = _report(manifest, out, opt, writer, selection, sources_in_test(reals, sources), n_imported, t0)
    (out / BUILD_FILE).write_text(json.dumps(report, indent=2, default=json_default))
    if not report["format_check"]["passed"]:
        warnings.warn(f"format statistics separate real from fake in {out}: {report['format_check']['failures']}",
                      stacklevel=2)
    return BuildResult(manifest, manifest_path, report)


def _prepare(out: str | Path, overwrite: bool) -> Path:
    """The output folder, emptied of an earlier build when ``overwrite``."""
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True (--force) to replace it")
        for sub in ("real", "fake", "grids"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for f in (MANIFEST_FILE, BUILD_FILE, SOURCES_FILE):
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _inputs(real: Manifest, fakes: Manifest | Sequence[Manifest], imported: Manifest | None, opt: BuildOptions,
            out: Path) -> tuple[Manifest, Manifest, Manifest | None]:
    """Reals, factory fakes and imported fakes, restricted to the options' modalities."""
    fake_list = [fakes] if isinstance(fakes, Manifest) else list(fakes)
    factory = (Manifest.concat(fake_list) if fake_list else Manifest([], out)).filter(label="fake")
    reals = real.filter(label="real")
    if opt.modalities:
        mods = set(opt.modalities)
        reals, factory = reals.filter(modality=mods), factory.filter(modality=mods)
        imported = imported.filter(modality=mods) if imported is not None else None
    if not len(reals):
        raise ValueError("no real images to build a benchmark from")
    return reals, factory, imported


class _Writer:
    """Writes images through :func:`~.pipeline.pipeline` and collects their manifest rows; an
    unreadable input is recorded in ``errors`` and skipped."""

    def __init__(self, out: Path, opt: BuildOptions, *, modes: dict[str, str], fake_sides: dict[str, list[int]]):
        self.out, self.opt, self.modes, self.fake_sides = out, opt, modes, fake_sides
        self.post = opt.post()
        self.rows: list[ManifestRow] = []
        self.errors: list[dict[str, str]] = []

    def reals_and_fakes(self, sel: Selection, real_root: Path | None, fake_root: Path | None, show: bool) -> None:
        work = [("real", r) for r in sel.real] + [("factory", r) for r in sel.fake]
        for role, row in progress(work, "building (real + factory fakes)", enabled=show):
            if role == "real":
                self.emit(row, real_root, "real", "real", native_side=self.side_for(row))
            else:
                self.emit(row, fake_root, "factory", "fake")

    def side_for(self, row: ManifestRow) -> int | None:
        """Matched resolution: a real gets the native side of a (seeded) fake of its modality."""
        sides = self.fake_sides.get(row.modality)
        if not (self.opt.match_resolution and sides):
            return None
        side = sides[rank(self.opt.seed, "side:" + row.path) % len(sides)]
        return side if side < self.opt.size else None

    def imported(self, imported: Manifest, reals: Manifest, selected_real: list[ManifestRow], show: bool) -> int:
        """Imported (published) fakes, each with a matched test real given its file history."""
        if not len(imported):
            return 0
        opt = self.opt
        reals_by_anat = real_anatomies(reals)
        test_reals = sorted((r for r in reals if r.split == "test"), key=lambda r: rank(opt.seed, "match:" + r.path))
        use_count: Counter = Counter()
        n_imported = 0
        for row in progress(list(imported), "imported fakes (+ matched reals)", enabled=show):
            if not any(r.modality == row.modality for r in selected_real):
                continue
            hist = history_of(row, imported.root, opt.assumed_jpeg_quality)
            anat = anatomy_of(row)
            matched_anatomy = any(anatomies_compatible(anat, a) for a in reals_by_anat.get(row.modality, ()))
            jpeg_history = "" if hist["jpeg_quality"] is None else str(hist["jpeg_quality"])
            new_fake = self.emit(row, imported.root, "published", "fake",
                                 extra={"anatomy_matched": "true" if matched_anatomy else "false",
                                        "jpeg_history": jpeg_history})
            if new_fake is None:
                continue
            n_imported += 1
            if not opt.matched_real:
                continue
            pool = [r for r in test_reals if r.modality == row.modality and anatomies_compatible(anatomy_of(r), anat)]
            same_anatomy = bool(pool)
            pool = pool or [r for r in test_reals if r.modality == row.modality]
            if not pool:
                continue
            pick = min(pool, key=lambda r: (use_count[r.path], rank(opt.seed, f"{row.path}|{r.path}")))
            use_count[pick.path] += 1
            side = min(hist["side"], opt.size)
            self.emit(pick, reals.root, "matched_real", "real", native_side=side, history_jpeg=hist["jpeg_quality"],
                      extra={"matched_to": new_fake.path, "anatomy_matched": "true" if same_anatomy else "false",
                             "history": json.dumps({"side": side, "jpeg_quality": hist["jpeg_quality"],
                                                    "jpeg_source": hist["jpeg_source"], "resample": "bicubic"})})
        return n_imported

    def emit(self, row: ManifestRow, root: Path | None, role: str, folder: str, *, native_side: int | None = None,
             history_jpeg: int | None = None, extra: dict[str, str] | None = None) -> ManifestRow | None:
        opt = self.opt
        src = row.resolve(root)
        group = safe_name(row.source or row.generator or "unknown")
        rel = Path(folder) / safe_name(row.modality) / group / out_name(row, root)
        if role == "matched_real":
            tag = hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:6]
            rel = rel.with_name(rel.stem + "_m" + tag + ".png")
        try:
            pixels = load(src, modality=row.modality).pixels
            shape = pixels.shape[:2]
            pix = pipeline(pixels, size=opt.size, fit=opt.fit, native_side=native_side, history_jpeg=history_jpeg,
                           post=self.post)
            save_png(pix, self.out / rel, self.modes.get(row.modality, "L"), opt.compress_level)
        except (UnreadableImageError, ValueError, OSError) as err:
            self.errors.append({"path": str(src), "role": role, "error": f"{type(err).__name__}: {err}"})
            return None
        steps = []
        if native_side is not None:
            steps.append(f"standardise {native_side} + 8-bit")
            if history_jpeg is not None:
                steps.append(f"JPEG q{history_jpeg}")
        steps.append(f"standardise {opt.size}")
        if self.post is not None:
            steps.append(self.post.describe())
        keep_extra = {k: v for k, v in row.extra.items() if k not in ("mask", "mask_path", "frame")}
        new = ManifestRow(
            path=rel.as_posix(), label=row.label, modality=row.modality, source=row.source or row.generator,
            generator=row.generator if row.label == "fake" else "", family=row.family if row.label == "fake" else "",
            patient_id=row.patient_id, split=row.split,
            extra={**keep_extra, "role": role, "input_path": str(src), "native_size": f"{shape[0]}x{shape[1]}",
                   "processing": " → ".join(steps), "anatomy": anatomy_of(row), **(extra or {})},
        )
        self.rows.append(new)
        return new


def _report(manifest: Manifest, out: Path, opt: BuildOptions, writer: _Writer, selection: Selection,
            source_leaks: dict[str, int], n_imported: int, t0: float) -> dict[str, Any]:
    fmt = format_statistics_check(manifest, tolerance=opt.format_tolerance)
    grids = write_grids(manifest, out / "grids") if opt.grid else {}
    return {
        "options": asdict(opt),
        "summary": manifest.summary(),
        "counts": _counts(manifest),
        "modes": writer.modes,
        "native_sides": {m: dict(Counter(s)) for m, s in writer.fake_sides.items()},
        "generators": _generator_table(manifest),
        "skipped_modalities": selection.skipped,
        "generator_sources_in_test": source_leaks,
        "n_imported": n_imported,
        "errors": writer.errors,
        "format_check": fmt.to_dict(),
        "grids": {k: str(Path(v).relative_to(out)) for k, v in grids.items()},
        "seconds": round(time.time() - t0, 1),
    }


def _counts(manifest: Manifest) -> dict[str, Any]:
    c: dict[str, Any] = {}
    for r in manifest:
        key = f"{r.split}/{r.modality}/{r.extra.get('role', '')}"
        c[key] = c.get(key, 0) + 1
    return dict(sorted(c.items()))


def _generator_table(manifest: Manifest) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in manifest:
        if r.label == "fake":
            g = out.setdefault(r.generator, {"family": r.family, "modality": r.modality, "role": r.get("role"),
                                             "train": 0, "test": 0})
            g[r.split] = g.get(r.split, 0) + 1
    return dict(sorted(out.items()))


def write_grids(manifest: Manifest, folder: Path, n: int = 8, thumb: int = 96) -> dict[str, Path]:
    """One PNG strip of ``n`` thumbnails per generator (and per modality of reals), for people to look at."""
    groups: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in manifest:
        role = r.get("role")
        if role in ("factory", "published"):
            groups[r.generator].append(r)
        elif role == "real":
            groups[f"real-{r.modality}"].append(r)
    out = {}
    for name, rows in sorted(groups.items()):
        tiles = []
        for r in rows[:n]:
            with Image.open(r.resolve(manifest.root)) as im:
                tiles.append(np.asarray(im.convert("RGB").resize((thumb, thumb), Image.Resampling.BILINEAR)))
        if tiles:
            strip = np.concatenate(tiles, axis=1)
            path = folder / f"{safe_name(name)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(strip).save(path)
            out[name] = path
    return out
