"""Assemble a balanced real/fake benchmark whose file history cannot separate the classes.

``build_benchmark(real, fakes, out)`` writes ``out/real/<modality>/<source>/*.png``,
``out/fake/<modality>/<generator>/*.png``, ``out/manifest.csv`` and ``out/build.json``.

**One pipeline for both classes.** Every image, real or fake, is loaded with
:func:`medforensics.io.load` (modality-aware intensity, float32 in [0, 1]), standardised to
``size``×``size`` with :func:`medforensics.io.standardise` (centre square crop, Pillow bicubic),
optionally post-processed by one :class:`~medforensics.data.processing.MatchedProcessing` chain
(``--resize`` round trip, ``--jpeg`` quality) and written as an 8-bit PNG (zlib level 6, no
metadata chunks) in one colour mode per modality (the majority mode of its reals).

**Matched resolution** (default on). Generators sample at a low native resolution (e.g. 64 px)
and their samples are upsampled to ``size`` by ``standardise``. Reals are given the same history:
each selected real is first standardised to the native side of a fake of its modality (chosen
deterministically from the fakes' native sides), quantised to 8 bits as the fakes were stored,
then standardised to ``size`` like the fakes. Without this the classes would differ in
upsampling (and PNG bytes per pixel) rather than in generation traces.

**Splits.** Reals are split 80/20 at the patient level with
:func:`medforensics.data.patient_split` (same seed → same split). Generated fakes have no
patients; each sample is its own group and every generator sends ≈ ``test_fraction`` of its
samples to test. To keep the generators' *training sources* out of the test split, generators
should be trained on the train-split reals only (:func:`split_reals` gives the split before
training; the bench runner does this). A generator folder may list its training images in
``bench_sources.json`` (``{"sources": [absolute paths]}``); any real listed there is pinned to
train (with its whole patient group) and the build report counts the sources found in test
(always 0). Published fakes imported with ``imported_fakes`` all go to test (they measure
generalisation to generators never trained on), as do their matched reals.

**Balance.** Within each (modality, split), as many reals as factory fakes are kept (the smaller
count, capped by ``per_class`` × the split's share); fakes are taken round-robin across
generators, reals by a seeded hash rank.

**Matched reals for imported fakes.** With ``matched_real``, each imported (published) fake gets
one test-split real of the same modality and a compatible anatomy (``data.shared`` rules; any
anatomy of the modality when none matches, flagged ``anatomy_matched=false``) which is given the
fake's file history: its stored square side (resampled down with the same bicubic resize), a
JPEG round trip at the fake's quality (:func:`~medforensics.data.processing.estimate_jpeg_quality`
for JPEG files; for PNGs whose provenance notes say "JPEG", ``assumed_jpeg_quality``), then the
common pipeline. Both then carry "stored at side s, maybe JPEG, bicubic to size".

:func:`format_statistics_check` measures how well file-format statistics (dimensions, bit depth,
colour mode, container format, JPEG quality, PNG zlib level, metadata chunks; and, reported apart,
the content-dependent file size, bytes per pixel and IDAT chunk count) predict the label; a
properly built benchmark passes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import Manifest, ManifestRow, anatomy_of, assert_no_leakage, index_folder, infer_family, patient_split
from ..data.processing import MatchedProcessing, estimate_jpeg_quality, jpeg, quantise
from ..data.shared import anatomies_compatible, real_anatomies
from ..io import UnreadableImageError, load, standardise
from ..train.common import progress

BUILD_FILE = "build.json"
MANIFEST_FILE = "manifest.csv"
SOURCES_FILE = "bench_sources.json"
ROLES = ("real", "factory", "published", "matched_real")
_COLOUR_MODES = {"RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "P"}


# =============================================================================== options / results


@dataclass
class BuildOptions:
    """Options of :func:`build_benchmark` (see the module docstring)."""

    size: int = 256
    fit: str = "center_crop"
    per_class: int | None = None  # images per class per modality (train + test); None = all that balance
    jpeg_quality: int | None = None  # matched post-processing, both classes
    resize: float | None = None  # matched resize round trip (scale), both classes
    match_resolution: bool = True
    matched_real: bool = True
    max_imported_per_generator: int | None = None  # cap on imported fakes per generator (seeded draw)
    assumed_jpeg_quality: int = 85
    test_fraction: float = 0.2
    seed: int = 0
    modalities: tuple[str, ...] | None = None
    compress_level: int = 6
    format_tolerance: float = 0.6
    grid: bool = True

    def post(self) -> MatchedProcessing | None:
        if self.jpeg_quality is None and self.resize in (None, 1.0):
            return None
        return MatchedProcessing(scale=self.resize, jpeg_quality=self.jpeg_quality)


@dataclass
class BuildResult:
    manifest: Manifest
    manifest_path: Path
    report: dict[str, Any]


# =============================================================================== inputs


def load_real_manifest(source: str | Path, modality: str | None = None) -> Manifest:
    """Real images from ``"shared"``, a manifest file, a folder with ``manifest.csv``, a
    ``real/<modality>/<source>/`` folder, or a flat folder of images of one ``modality``."""
    from ..data import shared_manifest

    if str(source) == "shared":
        man = shared_manifest()
    else:
        path = Path(source).expanduser()
        if path.is_file():
            man = Manifest.read(path)
        elif (path / MANIFEST_FILE).is_file():
            man = Manifest.read(path / MANIFEST_FILE)
        elif path.is_dir() and ((path / "real").is_dir() or (path / "fake").is_dir()):
            man = index_folder(path)
        elif path.is_dir():
            if not modality:
                raise ValueError(f"{path}: a flat folder of images needs a modality (--modality)")
            man = _flat_folder(path, "real", modality, path.name, "")
        else:
            raise FileNotFoundError(f"real images not found: {path}")
    reals = man.filter(label="real")
    if modality:
        reals = reals.filter(modality=modality)
    if not len(reals):
        raise ValueError(f"{source}: no real images{' of modality ' + modality if modality else ''}")
    return reals


def _flat_folder(folder: Path, label: str, modality: str, source: str, family: str) -> Manifest:
    from ..data.manifest import is_image_file

    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    rows = [ManifestRow(path=os.path.relpath(p, folder), label=label, modality=modality, source=source,
                        generator=source if label == "fake" else "", family=family) for p in files]
    return Manifest(rows, folder)


def load_fake_source(
    path: str | Path,
    *,
    modality: str | None = None,
    n_samples: int | None = None,
    sample_dir: str | Path | None = None,
    seed: int = 0,
) -> Manifest:
    """Fake rows from a generator folder: a manifest file, a folder with ``manifest.csv`` (e.g.
    written by ``sample_to_folder``), a ``fake/<modality>/<generator>/`` tree, a saved generator
    model directory (``n_samples`` are then drawn into ``sample_dir``), or a flat folder of images
    (needs ``modality``; the folder name is the generator)."""
    path = Path(path).expanduser()
    if path.is_file():
        man = Manifest.read(path)
    elif (path / MANIFEST_FILE).is_file():
        man = Manifest.read(path / MANIFEST_FILE)
    elif path.is_dir() and (path / "fake").is_dir():
        man = index_folder(path)
    elif path.is_dir() and _is_generator_dir(path):
        man = sample_generator_dir(path, n_samples=n_samples, out_dir=sample_dir, modality=modality, seed=seed)
        modality = None  # already the generator's
    elif path.is_dir():
        if not modality:
            raise ValueError(f"{path}: a flat folder of fakes needs a modality")
        man = _flat_folder(path, "fake", modality, path.name, _generator_family(path, path.name))
    else:
        raise FileNotFoundError(f"generator folder not found: {path}")
    fakes = man.filter(label="fake")
    if modality:
        fakes = fakes.filter(modality=modality)
    if not len(fakes):
        raise ValueError(f"{path}: no fake images")
    rows = []
    for r in fakes:
        gen = r.generator or r.source or path.name
        rows.append(r.copy(generator=gen, source=r.source or gen, family=r.family or infer_family(gen), patient_id=""))
    return fakes.with_rows(rows)


def _generator_family(folder: Path, name: str) -> str:
    info = folder / "GENERATOR.json"
    if info.is_file():
        try:
            fam = json.loads(info.read_text()).get("family", "")
            if fam:
                return str(fam)
        except (json.JSONDecodeError, AttributeError):
            pass
    return infer_family(name)


def _is_generator_dir(path: Path) -> bool:
    """A model directory written by ``synth.generators.Generator.save``."""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == "medforensics-generator"
    except (json.JSONDecodeError, AttributeError):
        return False


def sample_generator_dir(
    path: Path, *, n_samples: int | None, out_dir: str | Path | None, modality: str | None = None, seed: int = 0,
    name: str | None = None,
) -> Manifest:
    """Draw ``n_samples`` from a saved generator (``synth.generators.load_generator``) into
    ``out_dir`` at the generator's native resolution (the builder upsamples them like the reals);
    an existing ``out_dir/manifest.csv`` is reused."""
    if out_dir is None:
        raise ValueError(f"{path}: sampling a generator needs a folder to write the samples to")
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_FILE).is_file():
        return Manifest.read(out_dir / MANIFEST_FILE)
    if not n_samples:
        raise ValueError(f"{path} is a generator model directory: say how many samples to draw (--samples N)")
    if not modality:
        raise ValueError(f"{path}: a generator model directory does not record its modality; pass --modality")
    from ..synth.generators import load_generator, sample_to_folder

    gen = load_generator(path)
    return sample_to_folder(gen, int(n_samples), out_dir, modality=modality, generator_name=name or path.name,
                            seed=seed, size=gen.resolution, manifest_path=out_dir / MANIFEST_FILE, progress=False)


def generator_sources(folder: str | Path) -> set[str] | None:
    """Absolute paths of the real images a generator was trained on (``bench_sources.json``), if recorded."""
    file = Path(folder) / SOURCES_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: invalid JSON ({exc})") from exc
    return {os.path.normpath(p) for p in data.get("sources", [])}


def split_reals(reals: Manifest, *, test_fraction: float = 0.2, seed: int = 0, pinned: Iterable[str] = ()) -> Manifest:
    """Patient-level train/test split (:func:`~medforensics.data.patient_split`).

    Existing ``train``/``test`` values are kept (other values are cleared); rows whose absolute
    path is in ``pinned`` (generator training sources) are forced to train; the rest of a group
    follows its pinned rows. Deterministic: the same rows and seed give the same split, so
    generators can be trained on the train side before the benchmark is built.
    """
    pinned = {os.path.normpath(str(p)) for p in pinned}

    def initial(r: ManifestRow) -> str:
        if pinned and os.path.normpath(str(r.resolve(reals.root))) in pinned:
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


# =============================================================================== pipeline


def _rank(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """((H, W), PIL mode) from a raster header; DICOM/NIfTI are decoded."""
    try:
        with Image.open(path) as im:
            return (im.size[1], im.size[0]), im.mode
    except Exception:
        img = load(path)
        return img.pixels.shape[:2], "RGB" if img.pixels.ndim == 3 else "L"


def _to_mode(pixels: np.ndarray, mode: str) -> np.ndarray:
    if mode == "RGB" and pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    if mode == "L" and pixels.ndim == 3:
        return (pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)
    return pixels


def pipeline(
    pixels: np.ndarray,
    *,
    size: int,
    fit: str = "center_crop",
    native_side: int | None = None,
    history_jpeg: int | None = None,
    post: MatchedProcessing | None = None,
) -> np.ndarray:
    """The one processing path of the builder (float32 in [0, 1] → ``size``×``size``).

    ``native_side``: first standardise to that side and quantise to 8 bits (the stored state of a
    generated or published image); ``history_jpeg``: then a JPEG round trip at that quality.
    """
    out = pixels
    if native_side is not None:
        out = quantise(standardise(out, int(native_side), fit=fit), 8)
        if history_jpeg is not None:
            out = jpeg(out, int(history_jpeg))
    out = standardise(out, size, fit=fit)
    if post is not None:
        out = post(out)
    return out


def save_png(pixels: np.ndarray, path: Path, mode: str, compress_level: int = 6) -> None:
    """8-bit PNG in ``mode`` ('L' or 'RGB'), fixed zlib level, no metadata chunks; atomic."""
    arr = np.rint(np.clip(_to_mode(pixels, mode), 0.0, 1.0) * 255.0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr, mode=mode).save(tmp, format="PNG", compress_level=compress_level, optimize=False)
    os.replace(tmp, path)


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep.strip("._") or "x"


def _out_name(row: ManifestRow, root: Path) -> str:
    src = str(row.resolve(root))
    return f"{_safe(Path(row.path).stem)[:60]}_{hashlib.sha1(src.encode()).hexdigest()[:8]}.png"


def _history_of(row: ManifestRow, root: Path, assumed_quality: int) -> dict[str, Any]:
    """Stored square side and JPEG quality (estimated, assumed from notes, or none) of an input file."""
    path = row.resolve(root)
    (h, w), _ = _header(path)
    q = estimate_jpeg_quality(path) if path.suffix.lower() in (".jpg", ".jpeg") else None
    if q is None and row.extra.get("jpeg_quality", "").strip().isdigit():  # recorded by synth import_fakes
        q = int(row.extra["jpeg_quality"])
    source = "estimated" if q is not None else ""
    if q is None:
        notes = row.extra.get("notes", "").lower()
        if "jpeg" in notes or "jpg" in notes:
            q, source = assumed_quality, "assumed from provenance notes"
    return {"side": int(min(h, w)), "size": [int(h), int(w)], "jpeg_quality": q, "jpeg_source": source}


# =============================================================================== building


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
    """Build the benchmark in ``out`` (see the module docstring); return its manifest and report.

    ``real``: real rows (other labels ignored). ``fakes``: factory fakes (one manifest or several).
    ``imported``: published fakes made elsewhere (all go to test). ``sources``: generator name →
    absolute paths of its training images (pinned to train). Refuses a non-empty ``out`` unless
    ``overwrite``.
    """
    t0 = time.time()
    opt = options or BuildOptions()
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True (--force) to replace it")
        for sub in ("real", "fake", "grids"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for f in (MANIFEST_FILE, BUILD_FILE):
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    fake_list = [fakes] if isinstance(fakes, Manifest) else list(fakes)
    factory = Manifest.concat(fake_list) if fake_list else Manifest([], out)
    factory = factory.filter(label="fake")
    reals = real.filter(label="real")
    mods = set(opt.modalities) if opt.modalities else None
    if mods:
        reals, factory = reals.filter(modality=mods), factory.filter(modality=mods)
        imported = imported.filter(modality=mods) if imported is not None else None
    if not len(reals):
        raise ValueError("no real images to build a benchmark from")

    # ---- splits (imported fakes are pinned to test and split together with the reals, so a real
    # sharing a group with one of them — same patient or same source figure — follows it to test)
    pinned = set().union(*sources.values()) if sources else set()
    reals, imported = benchmark_split(reals, imported, test_fraction=opt.test_fraction, seed=opt.seed, pinned=pinned)
    factory = patient_split(factory.with_rows([r.copy(split="", patient_id="") for r in factory]),
                            test_fraction=opt.test_fraction, seed=opt.seed, overwrite=True)
    source_leaks = {
        gen: sum(1 for r in reals if r.split == "test" and os.path.normpath(str(r.resolve(reals.root))) in paths)
        for gen, paths in (sources or {}).items()
    }

    # ---- balance per (modality, split)
    selected_real: list[ManifestRow] = []
    selected_fake: list[ManifestRow] = []
    skipped: dict[str, str] = {}
    for modality in sorted({r.modality for r in reals} | {r.modality for r in factory}):
        if not any(r.modality == modality for r in factory) and len(factory):
            skipped[modality] = "no factory fakes"
            continue
        if not any(r.modality == modality for r in reals):
            skipped[modality] = "no reals"
            continue
        for split in ("train", "test"):
            r_rows = sorted((r for r in reals if r.modality == modality and r.split == split),
                            key=lambda r: _rank(opt.seed, r.path))
            f_rows = [r for r in factory if r.modality == modality and r.split == split]
            if len(factory) == 0:  # a reals-only build (e.g. for imported fakes): keep every real
                n = len(r_rows)
            else:
                n = min(len(r_rows), len(f_rows))
            if opt.per_class:
                share = opt.test_fraction if split == "test" else 1 - opt.test_fraction
                n = min(n, max(1, round(opt.per_class * share)))
            selected_real += r_rows[:n]
            selected_fake += _round_robin(f_rows, n, opt.seed)

    # ---- per-modality colour mode and native sides
    mode_votes: dict[str, Counter] = defaultdict(Counter)
    for r in selected_real:
        _, mode = _header(r.resolve(reals.root))
        mode_votes[r.modality]["RGB" if mode in _COLOUR_MODES else "L"] += 1
    modes = {m: votes.most_common(1)[0][0] for m, votes in mode_votes.items()}
    fake_sides: dict[str, list[int]] = defaultdict(list)
    fake_shape: dict[str, tuple[int, int]] = {}
    for r in selected_fake:
        shape, _ = _header(r.resolve(factory.root))
        fake_shape[r.path] = shape
        fake_sides[r.modality].append(min(shape))
    for m in fake_sides:
        fake_sides[m].sort()

    post = opt.post()
    rows: list[ManifestRow] = []
    errors: list[dict[str, str]] = []

    def emit(row: ManifestRow, root: Path, role: str, folder: str, *, native_side: int | None = None,
             history_jpeg: int | None = None, extra: dict[str, str] | None = None) -> ManifestRow | None:
        src = row.resolve(root)
        rel = Path(folder) / _safe(row.modality) / _safe(row.source or row.generator or "unknown") / _out_name(row, root)
        if role == "matched_real":
            rel = rel.with_name(rel.stem + "_m" + hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:6] + ".png")
        try:
            pixels = load(src, modality=row.modality).pixels
            shape = pixels.shape[:2]
            pix = pipeline(pixels, size=opt.size, fit=opt.fit, native_side=native_side, history_jpeg=history_jpeg,
                           post=post)
            save_png(pix, out / rel, modes.get(row.modality, "L"), opt.compress_level)
        except (UnreadableImageError, ValueError, OSError) as err:
            errors.append({"path": str(src), "role": role, "error": f"{type(err).__name__}: {err}"})
            return None
        steps = []
        if native_side is not None:
            steps.append(f"standardise {native_side} + 8-bit")
            if history_jpeg is not None:
                steps.append(f"JPEG q{history_jpeg}")
        steps.append(f"standardise {opt.size}")
        if post is not None:
            steps.append(post.describe())
        keep_extra = {k: v for k, v in row.extra.items() if k not in ("mask", "mask_path", "frame")}
        new = ManifestRow(
            path=rel.as_posix(), label=row.label, modality=row.modality, source=row.source or row.generator,
            generator=row.generator if row.label == "fake" else "", family=row.family if row.label == "fake" else "",
            patient_id=row.patient_id, split=row.split,
            extra={**keep_extra, "role": role, "input_path": str(src), "native_size": f"{shape[0]}x{shape[1]}",
                   "processing": " → ".join(steps), "anatomy": anatomy_of(row), **(extra or {})},
        )
        rows.append(new)
        return new

    def side_for(row: ManifestRow) -> int | None:
        sides = fake_sides.get(row.modality)
        if not (opt.match_resolution and sides):
            return None
        side = sides[_rank(opt.seed, "side:" + row.path) % len(sides)]
        return side if side < opt.size else None

    work = [("real", r) for r in selected_real] + [("factory", r) for r in selected_fake]
    for role, row in progress(work, "building (real + factory fakes)", enabled=show_progress):
        if role == "real":
            emit(row, reals.root, "real", "real", native_side=side_for(row))
        else:
            emit(row, factory.root, "factory", "fake")

    # ---- imported (published) fakes and their matched reals
    n_imported = 0
    if imported is not None and len(imported) and opt.max_imported_per_generator:
        cap = int(opt.max_imported_per_generator)
        by_gen: dict[str, list[ManifestRow]] = defaultdict(list)
        for r in sorted(imported, key=lambda r: _rank(opt.seed, "imp:" + r.path)):
            by_gen[r.generator or r.source].append(r)
        imported = imported.with_rows([r for rows_ in by_gen.values() for r in rows_[:cap]])
    if imported is not None and len(imported):
        reals_by_anat = real_anatomies(reals)
        test_reals = sorted((r for r in reals if r.split == "test"), key=lambda r: _rank(opt.seed, "match:" + r.path))
        use_count: Counter = Counter()
        for row in progress(list(imported), "imported fakes (+ matched reals)", enabled=show_progress):
            if not any(r.modality == row.modality for r in selected_real):
                continue
            hist = _history_of(row, imported.root, opt.assumed_jpeg_quality)
            anat = anatomy_of(row)
            matched_anatomy = any(anatomies_compatible(anat, a) for a in reals_by_anat.get(row.modality, ()))
            new_fake = emit(row, imported.root, "published", "fake",
                            extra={"anatomy_matched": "true" if matched_anatomy else "false",
                                   "jpeg_history": "" if hist["jpeg_quality"] is None else str(hist["jpeg_quality"])})
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
            pick = min(pool, key=lambda r: (use_count[r.path], _rank(opt.seed, f"{row.path}|{r.path}")))
            use_count[pick.path] += 1
            side = min(hist["side"], opt.size)
            emit(pick, reals.root, "matched_real", "real", native_side=side, history_jpeg=hist["jpeg_quality"],
                 extra={"matched_to": new_fake.path, "anatomy_matched": "true" if same_anatomy else "false",
                        "history": json.dumps({"side": side, "jpeg_quality": hist["jpeg_quality"],
                                               "jpeg_source": hist["jpeg_source"], "resample": "bicubic"})})

    manifest = Manifest(rows, out)
    assert_no_leakage(manifest)
    manifest_path = manifest.write(out / MANIFEST_FILE, overwrite=True)
    manifest = Manifest.read(manifest_path)
    fmt = format_statistics_check(manifest, tolerance=opt.format_tolerance)
    grids = write_grids(manifest, out / "grids") if opt.grid else {}
    report = {
        "options": asdict(opt),
        "summary": manifest.summary(),
        "counts": _counts(manifest),
        "modes": modes,
        "native_sides": {m: dict(Counter(s)) for m, s in fake_sides.items()},
        "generators": _generator_table(manifest),
        "skipped_modalities": skipped,
        "generator_sources_in_test": source_leaks,
        "n_imported": n_imported,
        "errors": errors,
        "format_check": fmt.to_dict(),
        "grids": {k: str(Path(v).relative_to(out)) for k, v in grids.items()},
        "seconds": round(time.time() - t0, 1),
    }
    (out / BUILD_FILE).write_text(json.dumps(report, indent=2, default=_json_default))
    if not fmt.passed:
        warnings.warn(f"format statistics separate real from fake in {out}: {fmt.failures}", stacklevel=2)
    return BuildResult(manifest, manifest_path, report)


def _round_robin(rows: list[ManifestRow], n: int, seed: int) -> list[ManifestRow]:
    by_gen: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        by_gen[r.generator].append(r)
    queues = [sorted(v, key=lambda r: _rank(seed, r.path)) for _, v in sorted(by_gen.items())]
    out: list[ManifestRow] = []
    i = 0
    while len(out) < n and any(queues):
        q = queues[i % len(queues)]
        if q:
            out.append(q.pop(0))
        i += 1
    return out


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
            path = folder / f"{_safe(name)}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(strip).save(path)
            out[name] = path
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# =============================================================================== format statistics


#: container features: must carry no information about the label in a proper benchmark
CONTAINER_FEATURES = ("format_png", "format_jpeg", "width", "height", "bit_depth", "channels", "jpeg_quality",
                      "png_zlib_level", "metadata_chunks")
#: content-dependent size features: reported apart (smooth images compress better, legitimately);
#: encoders split IDAT data into fixed-size chunks, so the IDAT count follows the compressed size
SIZE_FEATURES = ("file_size", "bytes_per_pixel", "png_idat_chunks")
_BITS = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "CMYK": 8, "I;16": 16, "I;16B": 16, "I;16L": 16,
         "I": 32, "F": 32}
_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}


def _png_chunks(data: bytes) -> tuple[int, int, int]:
    """(zlib FLEVEL of the first IDAT, number of IDAT chunks, number of ancillary chunks)."""
    pos, level, n_idat, n_anc = 8, -1, 0, 0
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if ctype == b"IDAT":
            if n_idat == 0 and len(body) >= 2:
                level = body[1] >> 6  # RFC 1950 FLG.FLEVEL: 0 fastest … 3 maximum compression
            n_idat += 1
        elif ctype not in _CRITICAL:
            n_anc += 1
        if ctype == b"IEND":
            break
        pos += 12 + length
    return level, n_idat, n_anc


def format_features(path: str | Path) -> dict[str, float]:
    """File-format statistics of one image file (no pixel decoding except the header)."""
    path = Path(path)
    data = path.read_bytes()
    feats: dict[str, float] = {"file_size": float(len(data))}
    with Image.open(path) as im:
        fmt, (w, h), mode = im.format or "", im.size, im.mode
        n_channels = len(im.getbands())
        info_keys = [k for k in im.info if k not in ("dpi",)]
    feats.update(
        format_png=float(fmt == "PNG"), format_jpeg=float(fmt == "JPEG"), width=float(w), height=float(h),
        bit_depth=float(_BITS.get(mode, 8)), channels=float(n_channels),
        bytes_per_pixel=len(data) / max(1, w * h * n_channels),
    )
    feats["jpeg_quality"] = float(estimate_jpeg_quality(path) or 0) if fmt == "JPEG" else 0.0
    if fmt == "PNG":
        level, n_idat, n_anc = _png_chunks(data)
        feats.update(png_zlib_level=float(level), png_idat_chunks=float(n_idat), metadata_chunks=float(n_anc))
    else:
        feats.update(png_zlib_level=-1.0, png_idat_chunks=0.0, metadata_chunks=float(len(info_keys)))
    return feats


@dataclass
class FormatReport:
    """Per-feature separability (max(AUC, 1−AUC)) and a cross-validated logistic regression."""

    n: int
    feature_auc: dict[str, float]
    container_lr_auc: float
    size_lr_auc: float
    per_modality: dict[str, dict[str, Any]]
    tolerance: float
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def _separability(y: np.ndarray, x: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if np.ptp(x) == 0 or y.min() == y.max():
        return 0.5
    auc = float(roc_auc_score(y, x))
    return max(auc, 1.0 - auc)


def _lr_auc(y: np.ndarray, X: np.ndarray, seed: int = 0) -> float:
    """5-fold (or fewer) cross-validated AUC of a standardised logistic regression; 0.5 if nothing varies."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = np.ptp(X, axis=0) > 0 if X.size else np.zeros(0, bool)
    n_min = int(min((y == 0).sum(), (y == 1).sum()))
    if not keep.any() or n_min < 2:
        return 0.5
    folds = min(5, n_min)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    prob = cross_val_predict(model, X[:, keep], y, cv=cv, method="predict_proba")[:, 1]
    from sklearn.metrics import roc_auc_score

    # one-sided: cross-validated predictions of uninformative features are anti-correlated with the
    # labels (each training fold holds the opposite class imbalance), so AUC < 0.5 means "no information"
    return float(roc_auc_score(y, prob)) if np.ptp(prob) > 0 else 0.5


def format_statistics_check(
    manifest: Manifest, *, tolerance: float = 0.6, size_warning: float = 0.8, min_per_class: int = 5
) -> FormatReport:
    """How well file-format statistics predict real vs fake (see :data:`CONTAINER_FEATURES`).

    Fails when any container feature, or a cross-validated logistic regression on all of them,
    separates the classes with AUC above ``tolerance`` — overall or within a modality with at
    least ``min_per_class`` images per class. File size, bytes per pixel and the number of PNG
    IDAT chunks (:data:`SIZE_FEATURES`) depend on image content as well as on the file history;
    above ``size_warning`` they produce a warning.
    """
    feats, labels, mods, errors = [], [], [], []
    for row in manifest:
        try:
            feats.append(format_features(row.resolve(manifest.root)))
        except (OSError, ValueError) as err:
            errors.append(f"{row.path}: {type(err).__name__}: {err}")
            continue
        labels.append(row.y)
        mods.append(row.modality)
    y = np.asarray(labels, dtype=np.int64)
    names = CONTAINER_FEATURES + SIZE_FEATURES
    X = np.array([[f[k] for k in names] for f in feats], dtype=np.float64).reshape(len(feats), len(names))
    nc = len(CONTAINER_FEATURES)
    failures, warns = [], []

    def assess(sel: np.ndarray, where: str) -> dict[str, Any]:
        ys, Xs = y[sel], X[sel]
        aucs = {k: round(_separability(ys, Xs[:, i]), 4) for i, k in enumerate(names)}
        lr_c = round(_lr_auc(ys, Xs[:, :nc]), 4)
        lr_s = round(_lr_auc(ys, Xs[:, nc:]), 4)
        for k in CONTAINER_FEATURES:
            if aucs[k] > tolerance:
                failures.append(f"{where}: {k} separates real/fake (AUC {aucs[k]:.3f} > {tolerance})")
        if lr_c > tolerance:
            failures.append(f"{where}: logistic regression on container features reaches AUC {lr_c:.3f} > {tolerance}")
        for k in SIZE_FEATURES:
            if aucs[k] > size_warning:
                warns.append(f"{where}: {k} separates real/fake (AUC {aucs[k]:.3f}); content-dependent — check that "
                             "both classes share resolution and post-processing")
        return {"feature_auc": aucs, "container_lr_auc": lr_c, "size_lr_auc": lr_s,
                "n_real": int((ys == 0).sum()), "n_fake": int((ys == 1).sum())}

    if len(y) == 0 or y.min() == y.max():
        return FormatReport(len(y), {}, 0.5, 0.5, {}, tolerance, [], ["one class only: nothing to check"], errors)
    overall = assess(np.ones(len(y), bool), "all")
    per_mod = {}
    for m in sorted(set(mods)):
        sel = np.array([x == m for x in mods])
        if min((y[sel] == 0).sum(), (y[sel] == 1).sum()) >= min_per_class:
            per_mod[m] = assess(sel, m)
    return FormatReport(len(y), overall["feature_auc"], overall["container_lr_auc"], overall["size_lr_auc"], per_mod,
                        tolerance, failures, warns, errors)
