"""``ResultStore``: scan results, runs and reader-study answers in SQLite (default) or PostgreSQL.

Opening a store upgrades its schema to the newest Alembic revision. Each method opens its own
session, so one store can be shared by FastAPI worker threads and pynetdicom association threads.

PHI policy: patient IDs are stored only as SHA-256 (``patient_ref``) and patient names not at all,
unless the store is opened with ``store_phi=True``; ``meta`` never holds patient fields; log lines
name content hashes / UIDs / record ids only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from ..results import ScanResult
from .files import create_private_file
from .hashing import patient_ref as hash_patient
from .models import ReaderItem, ReaderSession, Run, Scan, Series, utcnow

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: ImageMeta / ScanResult.meta keys that identify a person: never copied into ``meta``.
PHI_META_KEYS = frozenset({"patient_id", "patient_name", "patient_birth_date", "patient_sex", "patient_age",
                           "PatientID", "PatientName", "PatientBirthDate", "accession_number", "AccessionNumber",
                           "referring_physician", "institution_name", "other_patient_ids"})
SOURCES = ("cli", "api", "dicom", "ray")
_MIGRATE_LOCK = threading.Lock()


def default_db_url() -> str:
    """``$MEDFORENSICS_DB`` (a URL, or a file path taken as SQLite) or ``sqlite:///~/.medforensics/results.db``."""
    env = os.environ.get("MEDFORENSICS_DB", "").strip()
    if env:
        return normalise_url(env)
    path = Path.home() / ".medforensics" / "results.db"
    return f"sqlite:///{path}"


def normalise_url(url: str) -> str:
    """Accept a SQLAlchemy URL, or a plain file path (→ SQLite); ``"default"`` → :func:`default_db_url`."""
    url = url.strip()
    if url == "default":
        return default_db_url()
    if "://" in url:
        return url
    return f"sqlite:///{Path(url).expanduser().resolve()}"


def redact_url(url: str) -> str:
    """The URL with any password hidden (safe to print)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    if ts.tzinfo is None:  # SQLite returns naive datetimes; they are stored in UTC
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat()


def args_key(kind: str, args: dict[str, Any]) -> str:
    """Canonical SHA-256 of a run's kind and arguments (how a restarted run finds its predecessor)."""
    return hashlib.sha256(json.dumps([kind, args], sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ScanRecord:
    """One stored scan result (see :class:`medforensics.store.models.Scan`)."""

    id: str
    created_at: str
    source: str
    path: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None
    content_hash: str
    modality: str | None
    detector: str
    detector_version: str
    model_id: str | None
    score: float | None
    threshold: float | None
    verdict: str | None
    heatmap_path: str | None
    error: str | None
    frames: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    patient_ref: str | None = None
    patient_name: str | None = None
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_row(cls, row: Scan) -> ScanRecord:
        return cls(id=row.id, created_at=_iso(row.created_at) or "", source=row.source, path=row.path,
                   sop_instance_uid=row.sop_instance_uid, study_uid=row.study_uid, series_uid=row.series_uid,
                   content_hash=row.content_hash, modality=row.modality, detector=row.detector,
                   detector_version=row.detector_version, model_id=row.model_id, score=row.score,
                   threshold=row.threshold, verdict=row.verdict, heatmap_path=row.heatmap_path, error=row.error,
                   frames=list(row.frames or []), meta=dict(row.meta or {}), patient_ref=row.patient_ref,
                   patient_name=row.patient_name, run_id=row.run_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def to_result(self, *, path: str | None = None, threshold: float | None = None) -> ScanResult:
        """A :class:`ScanResult` answering from this record (verdict re-derived at ``threshold`` if given)."""
        tau = self.threshold if threshold is None else float(threshold)
        verdict = self.verdict
        if self.score is not None and tau is not None:
            verdict = "fake" if self.score >= tau else "real"
        meta = dict(self.meta)
        evidence = meta.pop(EVIDENCE_KEY, None) or {}
        return ScanResult(path=path or self.path or "", modality=self.modality, score=self.score, threshold=tau,
                          verdict=verdict, error=self.error, model=self.model_id, frames=list(self.frames),
                          meta=meta, pixel_score=evidence.get("pixel_score"),
                          header_score=evidence.get("header_score"), findings=list(evidence.get("findings") or []))


@dataclass
class SeriesRecord:
    """One stored series verdict (see :class:`medforensics.store.models.Series`)."""

    id: str
    series_uid: str
    study_uid: str | None
    modality: str | None
    n_slices: int
    score: float
    pixel_score: float | None
    header_score: float | None
    verdict: str
    threshold: float | None
    model_id: str
    regions: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    slice_scores: list[float] = field(default_factory=list)
    source: str = "cli"
    created_at: str = ""
    updated_at: str = ""

    @classmethod
    def from_row(cls, row: Series) -> SeriesRecord:
        return cls(id=row.id, series_uid=row.series_uid, study_uid=row.study_uid, modality=row.modality,
                   n_slices=row.n_slices, score=row.score, pixel_score=row.pixel_score,
                   header_score=row.header_score, verdict=row.verdict, threshold=row.threshold,
                   model_id=row.model_id, regions=list(row.regions or []), findings=list(row.findings or []),
                   slice_scores=list(row.slice_scores or []), source=row.source,
                   created_at=_iso(row.created_at) or "", updated_at=_iso(row.updated_at) or "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _series_values(record: dict[str, Any], threshold: float | None, study_uid: str | None) -> dict[str, Any]:
    """Column values of a :class:`~medforensics.engine.series.SeriesAggregator` record (checked)."""
    uid = _opt(record.get("series_uid")) or _opt(record.get("key"))
    if uid is None:
        raise ValueError("a series record needs a series_uid (or a key)")
    verdict = record.get("verdict")
    if verdict not in ("fake", "real"):
        raise ValueError(f"series {uid}: verdict must be 'fake' or 'real', got {verdict!r}")
    score = record.get("score")
    if score is None or not math.isfinite(float(score)):
        raise ValueError(f"series {uid}: score must be a finite number, got {score!r}")
    tau = record.get("threshold", threshold)

    def num(v: Any) -> float | None:
        return None if v is None else float(v)

    safe = lambda v: json.loads(json.dumps(v or [], default=str))  # noqa: E731
    return {"series_uid": uid, "study_uid": _opt(study_uid if study_uid is not None else record.get("study_uid")),
            "modality": _opt(record.get("modality")), "n_slices": int(record.get("n_slices") or 0),
            "score": float(score), "pixel_score": num(record.get("pixel_score")),
            "header_score": num(record.get("header_score")), "verdict": verdict, "threshold": num(tau),
            "regions": safe(record.get("regions")), "findings": safe(record.get("findings")),
            "slice_scores": [float(x) for x in record.get("slice_scores") or []]}


#: meta key under which a record keeps the parts of a fused score (pixel, header, named findings)
EVIDENCE_KEY = "evidence"


def _evidence(result: ScanResult) -> dict[str, Any]:
    if result.pixel_score is None and result.header_score is None and not result.findings:
        return {}
    return {EVIDENCE_KEY: {"pixel_score": result.pixel_score, "header_score": result.header_score,
                           "findings": result.findings}}


def _clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Drop PHI keys and make values JSON-safe."""
    out: dict[str, Any] = {}
    for k, v in (meta or {}).items():
        if k in PHI_META_KEYS:
            continue
        out[k] = json.loads(json.dumps(v, default=str))
    return out


class ResultStore:
    """Results database. ``url`` None → :func:`default_db_url`; plain file paths are SQLite files."""

    def __init__(self, url: str | None = None, *, store_phi: bool = False, upgrade: bool = True):
        self.url = normalise_url(url) if url else default_db_url()
        self.store_phi = bool(store_phi)
        parsed = make_url(self.url)
        kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
        self._sqlite = parsed.get_backend_name() == "sqlite"
        if self._sqlite:
            db = parsed.database
            if db and db != ":memory:" and not db.startswith("file:"):
                # patient data: a new database (and its folder) is the owner's only; SQLite gives the
                # -wal/-shm files the database file's mode
                create_private_file(db)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if not db or db == ":memory:":
                from sqlalchemy.pool import StaticPool

                kwargs["poolclass"] = StaticPool  # one shared in-memory database for all threads
            else:
                kwargs.update(pool_size=8, max_overflow=32)  # many service / receiver threads
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self._sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        if upgrade:
            self.upgrade()

    # ------------------------------------------------------------------ schema
    def alembic_config(self):
        """An ``alembic.config.Config`` for this database (no ini file)."""
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        return cfg

    def revision(self) -> str | None:
        """The database's current Alembic revision (None for an empty database)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head(self) -> str:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema to ``revision`` (default: newest)."""
        from alembic import command

        if revision == "head" and self.revision() == self.head():
            return
        try:
            with _MIGRATE_LOCK, self.engine.begin() as conn:
                cfg = self.alembic_config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
        except Exception:
            # another process may have migrated the same database at the same moment
            if revision == "head" and self.revision() == self.head():
                return
            raise
        log.info("results store schema at revision %s", self.revision())

    def downgrade(self, revision: str) -> None:
        """Migrate the schema down to ``revision`` (``"base"`` drops every table)."""
        from alembic import command

        with _MIGRATE_LOCK, self.engine.begin() as conn:
            cfg = self.alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultStore({redact_url(self.url)!r}, store_phi={self.store_phi})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success, rolled back on error."""
        with self._session() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    # ------------------------------------------------------------------ scans
    def find(self, *, content_hash: str, detector: str, detector_version: str,
             model_id: str | None = None) -> ScanRecord | None:
        """Newest record of this content scored by this detector/version (and ``model_id`` if given)."""
        stmt = (select(Scan).where(Scan.content_hash == content_hash, Scan.detector == detector,
                                   Scan.detector_version == str(detector_version))
                .order_by(Scan.created_at.desc()).limit(1))
        if model_id is not None:
            stmt = stmt.where(Scan.model_id == model_id)
        with self._session() as s:
            row = s.scalars(stmt).first()
            return ScanRecord.from_row(row) if row is not None else None

    def add(self, result: ScanResult, *, content_hash: str, detector: str, detector_version: str,
            source: str = "cli", run_id: str | None = None, heatmap_path: str | None = None,
            patient_id: str | None = None, patient_name: str | None = None,
            model_id: str | None = None) -> ScanRecord:
        """Store one result (committed at once) and return its record.

        UIDs and the patient ID are taken from ``result.meta`` when not given; the patient ID is
        hashed and the name dropped unless the store was opened with ``store_phi=True``.
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if not content_hash or len(content_hash) != 64:
            raise ValueError(f"content_hash must be a SHA-256 hex digest, got {content_hash!r}")
        meta = dict(result.meta or {})
        pid = patient_id if patient_id is not None else meta.get("patient_id")
        pname = patient_name if patient_name is not None else meta.get("patient_name")
        row = Scan(
            id=str(uuid.uuid4()), created_at=utcnow(), source=source, path=result.path,
            sop_instance_uid=_opt(meta.get("sop_instance_uid")), study_uid=_opt(meta.get("study_uid")),
            series_uid=_opt(meta.get("series_uid")), content_hash=content_hash, modality=result.modality,
            detector=detector, detector_version=str(detector_version), model_id=model_id or result.model,
            score=None if result.score is None else float(result.score),
            threshold=None if result.threshold is None else float(result.threshold),
            verdict=result.verdict, heatmap_path=heatmap_path, error=result.error,
            frames=[float(x) for x in result.frames], meta={**_clean_meta(meta), **_evidence(result)},
            patient_ref=(_opt(pid) if self.store_phi else hash_patient(pid)),
            patient_name=_opt(pname) if self.store_phi else None, run_id=run_id,
        )
        with self.session() as s:
            s.add(row)
        log.debug("stored scan %s (content %s, source %s)", row.id, content_hash[:12], source)
        return ScanRecord.from_row(row)

    def get(self, scan_id: str) -> ScanRecord | None:
        with self._session() as s:
            row = s.get(Scan, scan_id)
            return ScanRecord.from_row(row) if row is not None else None

    def _filtered(self, stmt, verdict: str | None, run_id: str | None, source: str | None,
                  sop_instance_uid: str | None, content_hash: str | None, path: str | None):
        if verdict is not None:
            stmt = stmt.where(Scan.verdict.is_(None) if verdict == "error" else Scan.verdict == verdict)
        for col, value in ((Scan.run_id, run_id), (Scan.source, source), (Scan.sop_instance_uid, sop_instance_uid),
                           (Scan.content_hash, content_hash), (Scan.path, path)):
            if value is not None:
                stmt = stmt.where(col == value)
        return stmt

    def query(self, *, verdict: str | None = None, run_id: str | None = None, source: str | None = None,
              sop_instance_uid: str | None = None, content_hash: str | None = None, path: str | None = None,
              limit: int = 100, offset: int = 0) -> list[ScanRecord]:
        """Records, newest first, filtered by verdict (``"fake"``/``"real"``/``"error"``), run, source…"""
        stmt = self._filtered(select(Scan), verdict, run_id, source, sop_instance_uid, content_hash, path)
        stmt = stmt.order_by(Scan.created_at.desc(), Scan.id).offset(max(0, int(offset)))
        if limit is not None:
            stmt = stmt.limit(max(0, int(limit)))
        with self._session() as s:
            return [ScanRecord.from_row(r) for r in s.scalars(stmt)]

    def count(self, *, verdict: str | None = None, run_id: str | None = None, source: str | None = None,
              sop_instance_uid: str | None = None, content_hash: str | None = None, path: str | None = None) -> int:
        stmt = self._filtered(select(func.count()).select_from(Scan), verdict, run_id, source, sop_instance_uid,
                              content_hash, path)
        with self._session() as s:
            return int(s.scalar(stmt) or 0)

    # ------------------------------------------------------------------ series
    def upsert_series(self, record: dict[str, Any], *, model_id: str, source: str = "cli",
                      threshold: float | None = None, study_uid: str | None = None) -> SeriesRecord:
        """Store a series verdict (a :class:`~medforensics.engine.series.SeriesAggregator` record).

        One row per (series UID, model): a series evaluated again (more instances arrived) updates its
        row, keeping its id and ``created_at``. ``threshold`` / ``study_uid`` are used when the record
        does not carry them.
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if not model_id:
            raise ValueError("model_id is required for a series verdict")
        values = _series_values(record, threshold, study_uid)
        for attempt in range(2):  # a concurrent insert of the same series: the second try updates it
            try:
                with self.session() as s:
                    row = s.scalars(select(Series).where(Series.series_uid == values["series_uid"],
                                                         Series.model_id == model_id)).first()
                    now = utcnow()
                    if row is None:
                        row = Series(id=str(uuid.uuid4()), model_id=model_id, source=source, created_at=now,
                                     updated_at=now, **values)
                        s.add(row)
                    else:
                        for k, v in values.items():
                            if k == "study_uid" and v is None:
                                continue
                            setattr(row, k, v)
                        row.source, row.updated_at = source, now
                    s.flush()
                    out = SeriesRecord.from_row(row)
                log.debug("stored series verdict %s (%s)", out.id, out.verdict)
                return out
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def series_instances(self, series_uid: str, *, model_id: str | None = None) -> list[ScanRecord]:
        """The newest OK record of each instance (SOP Instance UID) of a series, by ``model_id`` if given."""
        stmt = select(Scan).where(Scan.series_uid == series_uid, Scan.error.is_(None))
        if model_id is not None:
            stmt = stmt.where(Scan.model_id == model_id)
        out: dict[str, ScanRecord] = {}
        with self._session() as s:
            for row in s.scalars(stmt.order_by(Scan.created_at.desc(), Scan.id)):
                out.setdefault(row.sop_instance_uid or row.id, ScanRecord.from_row(row))
        return list(out.values())

    def get_series(self, series_uid: str, *, model_id: str | None = None) -> SeriesRecord | None:
        """The newest verdict on this series (by ``model_id`` if given; a row id is accepted too)."""
        stmt = select(Series).where((Series.series_uid == series_uid) | (Series.id == series_uid))
        if model_id is not None:
            stmt = stmt.where(Series.model_id == model_id)
        stmt = stmt.order_by(Series.updated_at.desc(), Series.id).limit(1)
        with self._session() as s:
            row = s.scalars(stmt).first()
            return SeriesRecord.from_row(row) if row is not None else None

    @staticmethod
    def _series_filtered(stmt, verdict: str | None, source: str | None, study_uid: str | None,
                         model_id: str | None, modality: str | None):
        for col, value in ((Series.verdict, verdict), (Series.source, source), (Series.study_uid, study_uid),
                           (Series.model_id, model_id), (Series.modality, modality)):
            if value is not None:
                stmt = stmt.where(col == value)
        return stmt

    def query_series(self, *, verdict: str | None = None, source: str | None = None, study_uid: str | None = None,
                     model_id: str | None = None, modality: str | None = None, limit: int | None = 100,
                     offset: int = 0) -> list[SeriesRecord]:
        """Series verdicts, most recently updated first, filtered by verdict, source, study, model, modality."""
        stmt = self._series_filtered(select(Series), verdict, source, study_uid, model_id, modality)
        stmt = stmt.order_by(Series.updated_at.desc(), Series.id).offset(max(0, int(offset)))
        if limit is not None:
            stmt = stmt.limit(max(0, int(limit)))
        with self._session() as s:
            return [SeriesRecord.from_row(r) for r in s.scalars(stmt)]

    def count_series(self, *, verdict: str | None = None, source: str | None = None, study_uid: str | None = None,
                     model_id: str | None = None, modality: str | None = None) -> int:
        stmt = self._series_filtered(select(func.count()).select_from(Series), verdict, source, study_uid,
                                     model_id, modality)
        with self._session() as s:
            return int(s.scalar(stmt) or 0)

    # ------------------------------------------------------------------ runs
    def start_run(self, kind: str, args: dict[str, Any]) -> str:
        """Record the start of a run; returns its id."""
        run = Run(id=str(uuid.uuid4()), kind=kind, args=json.loads(json.dumps(args, default=str)),
                  args_key=args_key(kind, args), status="running", started_at=utcnow(), updated_at=utcnow(),
                  n_ok=0, n_error=0, n_cached=0)
        with self.session() as s:
            s.add(run)
        return run.id

    def find_open_run(self, kind: str, args: dict[str, Any]) -> str | None:
        """Id of the newest unfinished run with the same kind and arguments (a run to resume), or None."""
        stmt = (select(Run.id).where(Run.args_key == args_key(kind, args), Run.kind == kind, Run.status == "running")
                .order_by(Run.started_at.desc()).limit(1))
        with self._session() as s:
            return s.scalars(stmt).first()

    def resume_run(self, run_id: str) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise KeyError(f"no run {run_id!r}")
            run.status, run.updated_at = "running", utcnow()

    def update_run(self, run_id: str, *, n_ok: int, n_error: int, n_cached: int = 0) -> None:
        """Progress of a running run (counts so far)."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is not None:
                run.n_ok, run.n_error, run.n_cached, run.updated_at = int(n_ok), int(n_error), int(n_cached), utcnow()

    def finish_run(self, run_id: str, *, n_ok: int, n_error: int, seconds: float, images_per_s: float,
                   n_cached: int = 0) -> None:
        """Mark a run finished with its totals and throughput."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise KeyError(f"no run {run_id!r}")
            run.status, run.finished_at, run.updated_at = "finished", utcnow(), utcnow()
            run.n_ok, run.n_error, run.n_cached = int(n_ok), int(n_error), int(n_cached)
            run.seconds, run.images_per_s = float(seconds), float(images_per_s)

    def run(self, run_id: str) -> dict[str, Any] | None:
        """A run as a JSON-ready dict."""
        with self._session() as s:
            r = s.get(Run, run_id)
            if r is None:
                return None
            return {"id": r.id, "kind": r.kind, "args": r.args, "status": r.status, "started_at": _iso(r.started_at),
                    "updated_at": _iso(r.updated_at), "finished_at": _iso(r.finished_at), "n_ok": r.n_ok,
                    "n_error": r.n_error, "n_cached": r.n_cached, "seconds": r.seconds, "images_per_s": r.images_per_s}

    # ------------------------------------------------------------------ reader study
    def create_reader_session(self, *, reader: str, detector: str, items: list[dict[str, Any]], seed: int) -> str:
        """A blinded reading session; ``items``: ``{"position", "image_ref", "truth": 0/1, "detector_score"}``."""
        sid = str(uuid.uuid4())
        positions = [int(it["position"]) for it in items]
        if len(set(positions)) != len(positions):
            raise ValueError("reader items must have distinct positions")
        with self.session() as s:
            s.add(ReaderSession(id=sid, reader=reader, detector=detector, seed=int(seed), n_items=len(items),
                                status="open", created_at=utcnow()))
            s.flush()
            for it in items:
                truth = int(it["truth"])
                if truth not in (0, 1):
                    raise ValueError(f"truth must be 0 or 1, got {it['truth']!r}")
                score = it.get("detector_score")
                s.add(ReaderItem(session_id=sid, position=int(it["position"]), image_ref=str(it["image_ref"]),
                                 truth=truth, detector_score=None if score is None else float(score)))
        return sid

    def reader_items(self, session_id: str) -> list[dict[str, Any]]:
        """Items of a session ordered by position (with answers so far)."""
        stmt = select(ReaderItem).where(ReaderItem.session_id == session_id).order_by(ReaderItem.position)
        with self._session() as s:
            return [{"position": r.position, "image_ref": r.image_ref, "truth": r.truth,
                     "detector_score": r.detector_score, "answer": r.answer, "confidence": r.confidence,
                     "answered_at": _iso(r.answered_at)} for r in s.scalars(stmt)]

    def record_reader_answer(self, session_id: str, position: int, *, answer: int, confidence: int) -> None:
        """Store (or replace) the reader's answer (0 real, 1 fake) and confidence for one item."""
        if int(answer) not in (0, 1):
            raise ValueError(f"answer must be 0 (real) or 1 (fake), got {answer!r}")
        with self.session() as s:
            item = s.get(ReaderItem, (session_id, int(position)))
            if item is None:
                raise KeyError(f"no item at position {position} in reader session {session_id!r}")
            item.answer, item.confidence, item.answered_at = int(answer), int(confidence), utcnow()

    def finish_reader_session(self, session_id: str, summary: dict[str, Any]) -> None:
        with self.session() as s:
            sess = s.get(ReaderSession, session_id)
            if sess is None:
                raise KeyError(f"no reader session {session_id!r}")
            sess.status, sess.finished_at = "finished", utcnow()
            sess.summary = json.loads(json.dumps(summary, default=str))

    def reader_session(self, session_id: str) -> dict[str, Any] | None:
        """A session as a JSON-ready dict (without items; see :meth:`reader_items`), or None."""
        with self._session() as s:
            r = s.get(ReaderSession, session_id)
            if r is None:
                return None
            n_answered = s.scalar(select(func.count()).select_from(ReaderItem).where(
                ReaderItem.session_id == session_id, ReaderItem.answer.is_not(None))) or 0
            return {"id": r.id, "reader": r.reader, "detector": r.detector, "seed": r.seed, "n_items": r.n_items,
                    "n_answered": int(n_answered), "status": r.status, "created_at": _iso(r.created_at),
                    "finished_at": _iso(r.finished_at), "summary": r.summary}


def _opt(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """WAL (readers never block the writer) and a busy timeout: the store is shared by threads/processes."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()
