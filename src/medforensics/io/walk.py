"""Finding inputs, sniffing their format and dispatching them to a reader.

**Format sniffing** (:func:`sniff_format`) looks at content, not names: ``DICM`` at byte 128
→ DICOM; PNG / JPEG / TIFF / BMP / GIF / WebP / JPEG 2000 magic → Pillow; a NIfTI header
size (348 or 540, either byte order), possibly inside gzip → NIfTI. Only when no magic
matches does the name help: ``.nii``/``.nii.gz`` → NIfTI reader, ``.dcm``/``.dicom``/
``.dic``/``.ima`` or a first tag in group 0002/0008 → DICOM reader (preamble-less files).

**Walking** (:func:`iter_entries`, :func:`iter_files`): top-level paths are visited in the
order given; a regular file given explicitly is always yielded. Inside a folder, files come
first (by name), then the problems found in it, then sub-folders (by name), recursively.
Problems — a missing path, a dangling symbolic link, a link loop, a folder that cannot be
listed, a FIFO / device / socket — are yielded by :func:`iter_entries` as
:class:`UnreadableImageError` items and the walk goes on; nothing that is not a regular file
is ever opened (:func:`~medforensics.io.files.check_regular_file`). Skipped while walking: hidden entries (name starting
with ``.``), ``DICOMDIR``, and sidecars ``.json .csv .txt .md .html``. Every other regular
file is yielded — unknown formats included — so batch callers can report them. DICOM files
(``DICM`` magic) of one series are kept together, ordered by (InstanceNumber, name), and
the series takes the place of its first file by name; other files keep name order.
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Callable

from .budget import current_budget
from .files import check_regular_file, file_kind, open_regular
from .dicom import DICOM_SUFFIXES, has_dicm_magic, looks_like_raw_dicom, read_dicom, series_key
from .intensity import IntensityConfig, canonical_modality
from .nifti import is_nifti_header, read_nifti
from .raster import read_raster
from .types import MedImage, UnreadableImageError, reraise_fatal

SKIP_NAMES = frozenset({"DICOMDIR"})
SIDECAR_SUFFIXES = frozenset({".json", ".csv", ".txt", ".md", ".html"})

_RASTER_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
    (b"BM", "bmp"),
)
_UNSUPPORTED_MAGIC = (
    (b"%PDF", "PDF document"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1a\x45\xdf\xa3", "Matroska/WebM video"),
    (b"<?xml", "XML document"),
)
_READERS = {"dicom": read_dicom, "nifti": read_nifti}


def _check_file(path: Path) -> int:
    """Old name of :func:`check_regular_file` (kept for callers)."""
    return check_regular_file(path)


def sniff_format(path: str | Path) -> str:
    """Return ``"dicom"``, ``"nifti"``, ``"png"``, ``"jpeg"``, ``"tiff"``, ``"bmp"``, … or raise."""
    p = Path(path)
    check_regular_file(p)
    try:
        with open_regular(p) as fh:
            head = fh.read(1024)
    except OSError as exc:
        raise UnreadableImageError(p, f"cannot read file: {exc.strerror or exc}") from exc
    name = p.name.lower()
    if has_dicm_magic(head):
        return "dicom"
    for magic, fmt in _RASTER_MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if is_nifti_header(head):
        return "nifti"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(p, "rb") as gz:
                inner = gz.read(4)
        except (OSError, EOFError) as exc:
            if name.endswith(".nii.gz"):
                return "nifti"
            raise UnreadableImageError(p, f"corrupt gzip data: {exc}") from exc
        if is_nifti_header(inner) or name.endswith(".nii.gz"):
            return "nifti"
        raise UnreadableImageError(p, "unsupported format: gzip archive that does not contain a NIfTI image")
    for magic, what in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            raise UnreadableImageError(p, f"unsupported format: {what}")
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES) or looks_like_raw_dicom(head):
        return "dicom"
    suffix = p.suffix.lower()
    hint = f" (extension {suffix} does not match the content)" if suffix else ""
    raise UnreadableImageError(p, f"not a recognised image format{hint}")


def frame_indices(n: int, max_frames: int | None) -> list[int]:
    """Evenly spread ``max_frames`` of ``n`` frame indices (centred bins; all if None/≥ n)."""
    if max_frames is None or max_frames >= n:
        return list(range(n))
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    return [int((i + 0.5) * n / max_frames) for i in range(max_frames)]


def _read(
    path: str | Path,
    select: Callable[[int], list[int]],
    modality: str | None,
    intensity: IntensityConfig | None,
    decode_budget: int | str | None = None,
) -> list[MedImage]:
    p = Path(path)
    modality = canonical_modality(modality)
    config = intensity if intensity is not None else IntensityConfig()
    budget = current_budget(decode_budget)
    fmt = sniff_format(p)
    try:
        if fmt in _READERS:
            return _READERS[fmt](p, select, modality, config, budget=budget)
        return read_raster(p, select, modality, config, sniffed=fmt, budget=budget)
    except UnreadableImageError:
        raise
    except MemoryError as exc:
        raise UnreadableImageError(p, f"out of memory while decoding {fmt} file") from exc
    except Exception as exc:  # never let a decoder's own exception type escape
        raise UnreadableImageError(p, f"cannot read {fmt} file: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:  # native decoders' panics (pyo3 PanicException) are not Exceptions
        reraise_fatal(exc)
        raise UnreadableImageError(
            p, f"pixel decoder crashed reading {fmt} file: {type(exc).__name__}: {str(exc) or 'no message'}"
        ) from exc


def load(
    path: str | Path,
    *,
    frame: int | None = None,
    modality: str | None = None,
    intensity: IntensityConfig | None = None,
    decode_budget: int | str | None = None,
) -> MedImage:
    """Load one image at native resolution, pixels float32 in [0, 1] (H×W or H×W×3).

    ``frame`` picks a frame/slice of a multi-frame file (default: the middle one, ``n // 2``;
    negative values count from the end). ``modality`` overrides the detected modality.
    ``decode_budget`` (bytes, or ``"512M"``…) overrides :data:`.budget.DECODE_BUDGET_BYTES`.
    Raises :class:`UnreadableImageError` for anything that cannot be read.
    """
    p = Path(path)

    def select(n: int) -> list[int]:
        k = n // 2 if frame is None else int(frame)
        k = k + n if k < 0 else k
        if not 0 <= k < n:
            raise UnreadableImageError(p, f"frame {frame} out of range: the file has {n} frame(s)")
        return [k]

    return _read(p, select, modality, intensity, decode_budget)[0]


def load_frames(
    path: str | Path,
    *,
    modality: str | None = None,
    intensity: IntensityConfig | None = None,
    max_frames: int | None = None,
    decode_budget: int | str | None = None,
) -> list[MedImage]:
    """Load every frame/slice (evenly subsampled to at most ``max_frames``); single image → [one].

    ``load_frames(p)[k]`` equals ``load(p, frame=k)``: intensity statistics never depend on
    which frames are returned. Only the frames decoded count against ``decode_budget``.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    return _read(path, lambda n: frame_indices(n, max_frames), modality, intensity, decode_budget)


def _skipped(entry: Path) -> bool:
    name = entry.name
    return name.startswith(".") or name.upper() in SKIP_NAMES or entry.suffix.lower() in SIDECAR_SUFFIXES


def _order_folder(files: list[Path]) -> list[Path]:
    """Name order, with each DICOM series gathered at its first file, by InstanceNumber."""
    keys = {f: series_key(f) for f in files}
    series: dict[str, list[tuple[float, str, Path]]] = {}
    for f in files:
        key = keys[f]
        if key is not None:
            series.setdefault(key[0], []).append((key[1], f.name, f))
    out: list[Path] = []
    done: set[str] = set()
    for f in files:
        key = keys[f]
        if key is None:
            out.append(f)
        elif key[0] not in done:
            done.add(key[0])
            out.extend(item[2] for item in sorted(series[key[0]], key=lambda t: (t[0], t[1])))
    return out


def _walk_dir(folder: Path, seen: set[str], ancestors: tuple[str, ...] = ()) -> Iterator[Path | UnreadableImageError]:
    real = os.path.realpath(folder)
    if real in ancestors:
        yield UnreadableImageError(folder, f"symbolic link loop: points back to {real}, which contains it")
        return
    if real in seen:  # the same folder reached by another link: walked once
        return
    seen.add(real)
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield UnreadableImageError(folder, f"cannot list directory: {exc.strerror or exc}")
        return
    files: list[Path] = []
    dirs: list[Path] = []
    problems: list[UnreadableImageError] = []
    for entry in entries:
        path = Path(entry.path)
        if _skipped(path):
            continue
        try:
            st = os.stat(entry.path)  # follows symbolic links
        except OSError as exc:
            try:
                check_regular_file(path)
            except UnreadableImageError as err:  # the named reason: dangling link, loop, access…
                problems.append(err)
            else:  # pragma: no cover - appeared between the two calls
                files.append(path)
            continue
        if stat.S_ISDIR(st.st_mode):
            dirs.append(path)
        elif stat.S_ISREG(st.st_mode):
            files.append(path)
        else:
            problems.append(UnreadableImageError(path, f"not a regular file: {file_kind(st.st_mode)}"))
    yield from _order_folder(files)
    yield from problems
    for sub in dirs:
        yield from _walk_dir(sub, seen, ancestors + (real,))


def iter_entries(paths: Iterable[str | Path] | str | Path) -> Iterator[Path | UnreadableImageError]:
    """The walk: every file under ``paths`` as a ``Path``, every problem as an ``UnreadableImageError``.

    Order as :func:`iter_files`. Nothing stops the walk: a path that does not exist, a dangling
    symbolic link (given or found), a symbolic link loop, a folder that cannot be listed, a
    FIFO / device / socket inside a folder or given explicitly — each is yielded as an error
    naming the path and what is wrong, and the walk goes on. Only regular files are yielded
    as paths, so a caller may open (or hash) them; still call
    :func:`~medforensics.io.files.check_regular_file` first, as the file may change.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for raw in paths:
        p = Path(raw)
        try:
            st = os.stat(p)
        except OSError:
            try:
                check_regular_file(p)
            except UnreadableImageError as err:
                yield err
                continue
            st = os.stat(p)  # pragma: no cover - appeared meanwhile
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(p, set())
        elif stat.S_ISREG(st.st_mode):
            yield p
        else:
            yield UnreadableImageError(p, f"not a regular file: {file_kind(st.st_mode)}")


_entries = iter_entries  # old private name, still used by callers


def iter_files(paths: Iterable[str | Path] | str | Path) -> Iterator[Path]:
    """Yield the files under ``paths`` in a deterministic order (rules in the module docstring).

    Raises :class:`UnreadableImageError` at the first problem :func:`iter_entries` reports
    (missing path, unreadable folder, dangling link, FIFO…). Callers that must report every
    problem and go on use :func:`iter_entries` instead.
    """
    for item in iter_entries(paths):
        if isinstance(item, UnreadableImageError):
            raise item
        yield item


def iter_images(
    paths: Iterable[str | Path] | str | Path, **load_kwargs: object
) -> Iterator[tuple[Path, list[MedImage] | UnreadableImageError]]:
    """For each file of :func:`iter_files`, yield ``(path, frames)`` or ``(path, error)``.

    ``load_kwargs`` go to :func:`load_frames` (``modality``, ``intensity``, ``max_frames``).
    Never raises for a bad file; every problem of the walk (:func:`iter_entries`) is yielded as
    ``(path, error)`` too, and the walk goes on.
    """
    for item in iter_entries(paths):
        if isinstance(item, UnreadableImageError):
            yield Path(item.path), item
            continue
        result: list[MedImage] | UnreadableImageError
        try:
            result = load_frames(item, **load_kwargs)  # type: ignore[arg-type]
        except UnreadableImageError as err:
            result = err
        yield item, result


def group_series(paths: Iterable[str | Path] | str | Path) -> dict[str, list[Path]]:
    """DICOM files (``DICM`` magic) under ``paths`` grouped by SeriesInstanceUID.

    Each list is sorted by (InstanceNumber, name); files without a SeriesInstanceUID share
    the key ``""``; non-DICOM files are left out. Keys follow first appearance.
    """
    groups: dict[str, list[tuple[float, str, Path]]] = {}
    for f in iter_files(paths):
        key = series_key(f)
        if key is not None:
            groups.setdefault(key[0], []).append((key[1], str(f), f))
    return {uid: [t[2] for t in sorted(items, key=lambda t: (t[0], t[1]))] for uid, items in groups.items()}
