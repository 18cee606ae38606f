"""Initial schema: runs, scans, reader_sessions, reader_items.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("args_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("n_ok", sa.Integer(), nullable=False),
        sa.Column("n_error", sa.Integer(), nullable=False),
        sa.Column("n_cached", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("images_per_s", sa.Float(), nullable=True),
    )
    op.create_index("ix_runs_kind", "runs", ["kind"])
    op.create_index("ix_runs_args_key", "runs", ["args_key"])

    op.create_table(
        "scans",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=True),
        sa.Column("study_uid", sa.String(64), nullable=True),
        sa.Column("series_uid", sa.String(64), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(32), nullable=True),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("detector_version", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(256), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("verdict", sa.String(8), nullable=True),
        sa.Column("heatmap_path", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("frames", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("patient_ref", sa.String(128), nullable=True),
        sa.Column("patient_name", sa.String(256), nullable=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id"), nullable=True),
    )
    op.create_index("ix_scans_dedup", "scans", ["content_hash", "detector", "detector_version", "model_id"])
    op.create_index("ix_scans_created", "scans", ["created_at"])
    op.create_index("ix_scans_source", "scans", ["source"])
    op.create_index("ix_scans_sop_instance_uid", "scans", ["sop_instance_uid"])
    op.create_index("ix_scans_verdict", "scans", ["verdict"])
    op.create_index("ix_scans_patient_ref", "scans", ["patient_ref"])
    op.create_index("ix_scans_run_id", "scans", ["run_id"])

    op.create_table(
        "reader_sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("reader", sa.String(128), nullable=False),
        sa.Column("detector", sa.String(256), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
    )
    op.create_table(
        "reader_items",
        sa.Column("session_id", sa.String(36), sa.ForeignKey("reader_sessions.id"), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("image_ref", sa.Text(), nullable=False),
        sa.Column("truth", sa.Integer(), nullable=False),
        sa.Column("detector_score", sa.Float(), nullable=True),
        sa.Column("answer", sa.Integer(), nullable=True),
        sa.Column("confidence", sa.Integer(), nullable=True),
        sa.Column("answered_at", TS, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("reader_items")
    op.drop_table("reader_sessions")
    for name in ("ix_scans_run_id", "ix_scans_patient_ref", "ix_scans_verdict", "ix_scans_sop_instance_uid",
                 "ix_scans_source", "ix_scans_created", "ix_scans_dedup"):
        op.drop_index(name, table_name="scans")
    op.drop_table("scans")
    op.drop_index("ix_runs_args_key", table_name="runs")
    op.drop_index("ix_runs_kind", table_name="runs")
    op.drop_table("runs")
