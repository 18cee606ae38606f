"""SQLAlchemy 2.0 ORM tables of the results store (schema owned by the Alembic migrations).

``scans``          one row per scan result (file or DICOM instance × model)
``runs``           one row per batch run / receiver session, with its progress and throughput
``series``         one row per DICOM series / volume × model: the series verdict (updated when the series is
                   re-evaluated with more instances)
``reader_sessions`` / ``reader_items``  the blinded reader study (answers and the detector's scores)

Any change here needs a new migration in ``migrations/versions`` (``tests/store`` checks that the
migrated schema matches these tables).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # "scan" | "ray" | "dicom" | "api" | …
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    args_key: Mapped[str] = mapped_column(String(64), index=True)  # sha256 of canonical args (resume lookup)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | finished
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    n_ok: Mapped[int] = mapped_column(Integer, default=0)
    n_error: Mapped[int] = mapped_column(Integer, default=0)
    n_cached: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    images_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class Scan(Base):
    __tablename__ = "scans"
    __table_args__ = (
        Index("ix_scans_dedup", "content_hash", "detector", "detector_version", "model_id"),
        Index("ix_scans_created", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source: Mapped[str] = mapped_column(String(16), index=True)  # cli | api | dicom | ray
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    study_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(32), nullable=True)
    detector: Mapped[str] = mapped_column(String(64))
    detector_version: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    verdict: Mapped[str | None] = mapped_column(String(8), nullable=True, index=True)
    heatmap_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    frames: Mapped[list[float]] = mapped_column(JSON, default=list)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    patient_ref: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    patient_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("runs.id"), nullable=True, index=True)


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (
        UniqueConstraint("series_uid", "model_id", name="uq_series_uid_model"),
        Index("ix_series_updated", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(256), index=True)  # SeriesInstanceUID, or "file:<path>" (volume)
    study_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    modality: Mapped[str | None] = mapped_column(String(32), nullable=True)
    n_slices: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    pixel_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    header_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    verdict: Mapped[str] = mapped_column(String(8), index=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_id: Mapped[str] = mapped_column(String(256))
    regions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    slice_scores: Mapped[list[float]] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(String(16), index=True)  # cli | api | dicom | ray
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReaderSession(Base):
    __tablename__ = "reader_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    reader: Mapped[str] = mapped_column(String(128))
    detector: Mapped[str] = mapped_column(String(256))
    seed: Mapped[int] = mapped_column(Integer)
    n_items: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | finished
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ReaderItem(Base):
    __tablename__ = "reader_items"

    session_id: Mapped[str] = mapped_column(String(36), ForeignKey("reader_sessions.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_ref: Mapped[str] = mapped_column(Text)
    truth: Mapped[int] = mapped_column(Integer)  # 0 real, 1 fake
    detector_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    answer: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 0 real, 1 fake
    confidence: Mapped[int | None] = mapped_column(Integer, nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
