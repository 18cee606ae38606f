"""Series verdicts: one row per DICOM series / volume × model, updated when the series is re-evaluated;
an index on ``scans.series_uid`` (a series re-opened by a late instance reads its stored instances).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("series_uid", sa.String(256), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=True),
        sa.Column("modality", sa.String(32), nullable=True),
        sa.Column("n_slices", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("pixel_score", sa.Float(), nullable=True),
        sa.Column("header_score", sa.Float(), nullable=True),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("model_id", sa.String(256), nullable=False),
        sa.Column("regions", sa.JSON(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("slice_scores", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("series_uid", "model_id", name="uq_series_uid_model"),
    )
    op.create_index("ix_series_series_uid", "series", ["series_uid"])
    op.create_index("ix_series_study_uid", "series", ["study_uid"])
    op.create_index("ix_series_verdict", "series", ["verdict"])
    op.create_index("ix_series_source", "series", ["source"])
    op.create_index("ix_series_updated", "series", ["updated_at"])
    op.create_index("ix_scans_series_uid", "scans", ["series_uid"])


def downgrade() -> None:
    op.drop_index("ix_scans_series_uid", table_name="scans")
    for name in ("ix_series_updated", "ix_series_source", "ix_series_verdict", "ix_series_study_uid",
                 "ix_series_series_uid"):
        op.drop_index(name, table_name="series")
    op.drop_table("series")
