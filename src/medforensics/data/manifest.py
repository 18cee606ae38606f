"""Image manifests: one row per image (path, label, modality, provenance), as CSV or Parquet.

A manifest's relative ``path`` values are resolved against the folder of the manifest file
itself (:attr:`Manifest.root`). Columns beyond the standard ones are kept verbatim in
:attr:`ManifestRow.extra` and written back unchanged, so provenance (``original_path``,
``license``, ``notes``...) survives every round trip.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

LABELS = ("real", "fake")
REQUIRED_COLUMNS = ("path", "label", "modality")
STANDARD_COLUMNS = ("path", "label", "modality", "source", "generator", "family", "patient_id", "split")
#: extra columns holding local file paths; rewritten like ``path`` when a manifest is written elsewhere
PATH_COLUMNS = ("mask", "mask_path")
_MISSING_IDS = {"", "na", "n/a", "nan", "none", "null"}


def normalise_id(value: object) -> str:
    """Patient ids: ``NA``/``nan``/``None``/empty → ``""``; anything else stripped."""
    text = "" if value is None else str(value).strip()
    return "" if text.lower() in _MISSING_IDS else text


@dataclass
class ManifestRow:
    """One image. ``path`` is kept as written (relative to the manifest folder, or absolute)."""

    path: str
    label: str
    modality: str
    source: str = ""
    generator: str = ""
    family: str = ""
    patient_id: str = ""
    split: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = str(self.path)
        self.patient_id = normalise_id(self.patient_id)

    @property
    def y(self) -> int:
        """0 for real, 1 for fake."""
        return 1 if self.label == "fake" else 0

    def resolve(self, root: str | Path) -> Path:
        """Absolute location of the image, ``path`` taken relative to ``root``."""
        return resolve_path(self.path, root)

    def get(self, name: str, default: str = "") -> str:
        """A standard field or an extra column by name."""
        if name in STANDARD_COLUMNS:
            return getattr(self, name)
        return self.extra.get(name, default)

    def to_dict(self) -> dict[str, str]:
        out = {name: getattr(self, name) for name in STANDARD_COLUMNS}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ManifestRow":
        values = {k: "" if v is None else str(v) for k, v in data.items()}
        std = {k: values.pop(k, "") for k in STANDARD_COLUMNS}
        return cls(**std, extra=values)

    def copy(self, **changes: Any) -> "ManifestRow":
        return dataclasses.replace(self, extra=dict(self.extra), **changes)


class ManifestError(ValueError):
    """A manifest file is malformed (missing column, bad label, empty modality...)."""


class Manifest:
    """An ordered list of :class:`ManifestRow` plus the folder relative paths resolve against."""

    def __init__(
        self,
        rows: Iterable[ManifestRow] = (),
        root: str | Path = ".",
        *,
        extra_columns: Sequence[str] | None = None,
        path: str | Path | None = None,
    ):
        self.rows: list[ManifestRow] = list(rows)
        self.root: Path = Path(root).expanduser().resolve()
        self.path: Path | None = Path(path) if path is not None else None  # file it was read from
        seen = list(extra_columns or [])
        for row in self.rows:
            seen.extend(k for k in row.extra if k not in seen)
        self.extra_columns: list[str] = list(dict.fromkeys(seen))

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_rows(cls, rows: Iterable[ManifestRow], root: str | Path = ".") -> "Manifest":
        return cls(rows, root)

    @classmethod
    def read(cls, path: str | Path) -> "Manifest":
        """Read and validate a ``.csv`` or ``.parquet`` manifest."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        columns, records = _read_parquet(path) if _is_parquet(path) else _read_csv(path)
        _validate(path, columns, records)
        rows = [ManifestRow.from_dict(rec) for rec in records]
        for row in rows:
            row.label = row.label.strip().lower()
            row.modality = row.modality.strip().lower()
        extra = [c for c in columns if c not in STANDARD_COLUMNS]
        return cls(rows, path.resolve().parent, extra_columns=extra, path=path)

    @classmethod
    def concat(cls, manifests: Iterable["Manifest"], root: str | Path | None = None) -> "Manifest":
        """Join manifests; relative paths are rebased onto ``root`` (default: the first one's)."""
        manifests = list(manifests)
        if root is None:
            root = manifests[0].root if manifests else Path(".")
        root = Path(root).expanduser().resolve()
        rows, extra = [], []
        for man in manifests:
            rows.extend(man._rebased(root))
            extra.extend(man.extra_columns)
        return cls(rows, root, extra_columns=list(dict.fromkeys(extra)))

    # ----------------------------------------------------------------- output
    def columns(self) -> list[str]:
        return list(STANDARD_COLUMNS) + [c for c in self.extra_columns if c not in STANDARD_COLUMNS]

    def write(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write as CSV (or Parquet for ``.parquet``); relative paths are rebased to the new folder."""
        path = Path(path).expanduser()
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self._rebased(path.resolve().parent)
        columns = self.columns()
        records = [{c: row.get(c) for c in columns} for row in rows]
        if _is_parquet(path):
            _write_parquet(path, columns, records)
        else:
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(records)
            os.replace(tmp, path)
        return path

    def _rebased(self, new_root: Path) -> list[ManifestRow]:
        out = []
        for row in self.rows:
            new = row.copy(path=_rebase(row.path, self.root, new_root))
            for col in PATH_COLUMNS:
                if new.extra.get(col, "").strip():
                    new.extra[col] = _rebase(new.extra[col].strip(), self.root, new_root)
            out.append(new)
        return out

    # ----------------------------------------------------------------- selection
    def filter(self, fn: Callable[[ManifestRow], bool] | None = None, /, **criteria: Any) -> "Manifest":
        """Rows where ``fn(row)`` holds and every ``column=value`` matches.

        A criterion value may be a string (equality), a collection (membership) or a
        predicate on the column value, e.g. ``m.filter(label="fake", modality={"ct", "mri"})``.
        """

        def keep(row: ManifestRow) -> bool:
            if fn is not None and not fn(row):
                return False
            for name, want in criteria.items():
                value = row.get(name)
                if callable(want):
                    ok = want(value)
                elif isinstance(want, (set, frozenset, list, tuple)):
                    ok = value in want
                else:
                    ok = value == str(want)
                if not ok:
                    return False
            return True

        return self._derive(r for r in self.rows if keep(r))

    def subset(self, split: str | Iterable[str]) -> "Manifest":
        """Rows of one split (or of several)."""
        splits = {split} if isinstance(split, str) else set(split)
        return self._derive(r for r in self.rows if r.split in splits)

    def _derive(self, rows: Iterable[ManifestRow]) -> "Manifest":
        return Manifest(rows, self.root, extra_columns=self.extra_columns, path=self.path)

    def with_rows(self, rows: Iterable[ManifestRow]) -> "Manifest":
        """Same root and columns, different rows."""
        return self._derive(rows)

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    @overload
    def __getitem__(self, index: int) -> ManifestRow: ...
    @overload
    def __getitem__(self, index: slice | Sequence[int] | np.ndarray) -> "Manifest": ...

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.rows[int(index)]
        if isinstance(index, slice):
            return self._derive(self.rows[index])
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._derive(self.rows[int(i)] for i in idx)

    def __repr__(self) -> str:
        n_fake = sum(r.y for r in self.rows)
        return f"Manifest({len(self)} rows: {len(self) - n_fake} real, {n_fake} fake; root={str(self.root)!r})"

    @property
    def labels(self) -> np.ndarray:
        """0/1 labels (1 = fake), int64."""
        return np.array([r.y for r in self.rows], dtype=np.int64)

    def column(self, name: str) -> list[str]:
        """Values of a standard or extra column (missing extra values read as ``""``)."""
        return [r.get(name) for r in self.rows]

    def paths(self) -> list[Path]:
        """Absolute image paths."""
        return [r.resolve(self.root) for r in self.rows]

    def summary(self) -> dict[str, Any]:
        """JSON-friendly counts: total, nested ``split → label → modality → n`` and fakes per generator."""
        by_split: dict[str, dict[str, dict[str, int]]] = {}
        for (split, label, modality), n in sorted(Counter((r.split or "unsplit", r.label, r.modality) for r in self.rows).items()):
            by_split.setdefault(split, {}).setdefault(label, {})[modality] = n
        gens = Counter(r.generator or "(unknown)" for r in self.rows if r.label == "fake")
        return {
            "total": len(self),
            "real": int(len(self) - self.labels.sum()),
            "fake": int(self.labels.sum()),
            "by_split_label_modality": by_split,
            "by_generator": dict(sorted(gens.items())),
        }


def concat(manifests: Iterable[Manifest], root: str | Path | None = None) -> Manifest:
    """Module-level alias of :meth:`Manifest.concat`."""
    return Manifest.concat(manifests, root)


# --------------------------------------------------------------------- helpers
def resolve_path(path: str, root: str | Path) -> Path:
    """``path`` (as written in a manifest) made absolute against ``root``, ``..`` collapsed."""
    p = Path(path.replace("\\", "/")).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else Path(root) / p))


def _rebase(path: str, old_root: Path, new_root: Path) -> str:
    if Path(path).expanduser().is_absolute():
        return path
    target = os.path.normpath(resolve_path(path, old_root))
    try:
        rel = os.path.relpath(target, new_root)
    except ValueError:  # different drives (Windows)
        return Path(target).as_posix()
    return Path(rel).as_posix()


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _require_pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise ImportError(
            "Parquet manifests need the optional 'pyarrow' package (pip install pyarrow); "
            "use a .csv manifest instead"
        ) from exc
    return pyarrow, pq


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        records = []
        for i, raw in enumerate(reader, start=1):
            if None in raw:
                raise ManifestError(f"{path}: row {i} (line {reader.line_num}) has more fields than the header")
            records.append({k.strip(): (v or "") for k, v in raw.items()})
    return columns, records


def _read_parquet(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    _, pq = _require_pyarrow()
    table = pq.read_table(path)
    columns = list(table.column_names)
    records = [{k: "" if v is None else str(v) for k, v in rec.items()} for rec in table.to_pylist()]
    return columns, records


def _write_parquet(path: Path, columns: list[str], records: list[dict[str, str]]) -> None:
    pa, pq = _require_pyarrow()
    table = pa.table({c: pa.array([r[c] for r in records], type=pa.string()) for c in columns})
    pq.write_table(table, path)


def _validate(path: Path, columns: list[str], records: list[dict[str, str]]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(f"{path}: missing required column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})")
    for i, rec in enumerate(records, start=1):
        where = f"{path}: row {i} (line {i + 1})"
        label = rec["label"].strip().lower()
        if label not in LABELS:
            raise ManifestError(f"{where}: column 'label' must be 'real' or 'fake', got {rec['label']!r}")
        if not rec["modality"].strip():
            raise ManifestError(f"{where}: column 'modality' is empty")
        if not rec["path"].strip():
            raise ManifestError(f"{where}: column 'path' is empty")


# --------------------------------------------------------------------- folder indexing
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")
_FAMILY_HINTS = (  # first match wins, on the lower-cased generator name
    (("ddpm", "diff", "ldm", "maisi"), "diffusion"),
    (("gan",), "gan"),
    (("vae",), "vae"),
    (("tamper", "splice", "copymove", "copy-move"), "tamper"),
)
GENERATOR_FILE = "GENERATOR.json"
PATIENTS_FILE = "patients.csv"
MASKS_DIR = "masks"


def infer_family(generator: str) -> str:
    """Generator family from its name (``diffusion``, ``gan``, ``vae``, ``tamper``) or ``""``."""
    name = generator.lower()
    for hints, family in _FAMILY_HINTS:
        if any(h in name for h in hints):
            return family
    return ""


def is_dicom_file(path: str | Path) -> bool:
    """True when the file has the DICOM preamble magic ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_image_file(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith("."):
        return False
    return name.endswith(IMAGE_EXTENSIONS) or is_dicom_file(path)


def _dicom_patient_id(path: Path) -> str:
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        return normalise_id(getattr(ds, "PatientID", ""))
    except Exception:  # unreadable header: no patient id rather than failing the index
        return ""


def _read_patients(folder: Path) -> dict[str, str]:
    """``patients.csv`` (columns ``path,patient_id``; paths relative to ``folder``)."""
    file = folder / PATIENTS_FILE
    if not file.is_file():
        return {}
    with open(file, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "patient_id"} <= set(reader.fieldnames):
            raise ManifestError(f"{file}: needs columns path,patient_id")
        return {Path(r["path"].strip()).as_posix(): normalise_id(r["patient_id"]) for r in reader}


def _read_family(folder: Path, generator: str) -> str:
    file = folder / GENERATOR_FILE
    if file.is_file():
        try:
            info = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{file}: invalid JSON ({exc})") from exc
        if isinstance(info, dict) and str(info.get("family", "")).strip():
            return str(info["family"]).strip()
    return infer_family(generator)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _problem(msg: str, strict: bool) -> None:
    if strict:
        raise ManifestError(msg)
    warnings.warn(msg + " (ignored)", stacklevel=3)


def index_folder(
    root: str | Path,
    *,
    manifest_path: str | Path | None = None,
    strict: bool = True,
    overwrite: bool = False,
) -> Manifest:
    """Build a manifest from ``real/<modality>/<source>/…`` and ``fake/<modality>/<generator>/…``.

    Images may sit at any depth below the source/generator folder. ``family`` comes from an
    optional ``GENERATOR.json`` (``{"family": "diffusion"}``) in the generator folder, else from
    the generator name. ``patient_id`` is the DICOM PatientID for DICOM files, else looked up in
    an optional ``patients.csv`` (``path,patient_id``; paths relative to the source folder).
    A ``masks/`` folder directly in a source/generator folder is not indexed; a mask there with
    an image's relative path and stem (``masks/<rel>.png``) fills that row's ``mask`` column.
    Hidden entries and loose files at the top or modality level are skipped; other top-level
    folders, or files directly under a modality folder, raise :class:`ManifestError` when
    ``strict`` (default) and are skipped with a warning otherwise. Rows are sorted by path.
    With ``manifest_path`` the paths are relative to its folder and the manifest is written there.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    base = Path(manifest_path).expanduser().resolve().parent if manifest_path else root
    rows: list[ManifestRow] = []
    for top in _visible_dirs(root):
        if top.name not in LABELS:
            _problem(f"{top}: unknown top-level folder (expected only 'real/' and 'fake/')", strict)
            continue
        for mod_dir in _visible_dirs(top):
            loose = sorted(p for p in mod_dir.iterdir() if p.is_file() and is_image_file(p))
            if loose:
                _problem(f"{mod_dir}: images must sit in a <source>/<generator> subfolder, found {loose[0].name}", strict)
            for src_dir in _visible_dirs(mod_dir):
                rows.extend(_index_source(src_dir, top.name, mod_dir.name.lower(), base))
    if not rows:
        warnings.warn(f"{root}: no images found under real/ or fake/", stacklevel=2)
    rows.sort(key=lambda r: r.path)
    man = Manifest(rows, base)
    if manifest_path:
        man.write(manifest_path, overwrite=overwrite)
        man.path = Path(manifest_path)
    return man


def _index_source(src_dir: Path, label: str, modality: str, base: Path) -> list[ManifestRow]:
    patients = _read_patients(src_dir)
    family = _read_family(src_dir, src_dir.name) if label == "fake" else ""
    masks_dir = src_dir / MASKS_DIR
    rows = []
    for file in sorted(src_dir.rglob("*")):
        rel_parts = file.relative_to(src_dir).parts
        if not file.is_file() or any(p.startswith(".") for p in rel_parts) or file.name in (GENERATOR_FILE, PATIENTS_FILE):
            continue
        if rel_parts[0] == MASKS_DIR or not is_image_file(file):
            continue
        rel = Path(*rel_parts).as_posix()
        pid = _dicom_patient_id(file) if is_dicom_file(file) else ""
        pid = pid or patients.get(rel, "")
        extra = {}
        mask = _find_mask(masks_dir, Path(*rel_parts))
        if mask is not None:
            extra["mask"] = Path(os.path.relpath(mask, base)).as_posix()
        rows.append(
            ManifestRow(
                path=Path(os.path.relpath(file, base)).as_posix(),
                label=label,
                modality=modality,
                source=src_dir.name,
                generator=src_dir.name if label == "fake" else "",
                family=family,
                patient_id=pid,
                extra=extra,
            )
        )
    return rows


def _find_mask(masks_dir: Path, rel: Path) -> Path | None:
    """``masks/<rel>`` with the image's name, any image extension (PNG preferred)."""
    if not masks_dir.is_dir():
        return None
    stem = rel.name[: -len(".nii.gz")] if rel.name.lower().endswith(".nii.gz") else rel.stem
    for ext in (".png",) + IMAGE_EXTENSIONS:
        candidate = masks_dir / rel.parent / (stem + ext)
        if candidate.is_file():
            return candidate
    return None

