from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from medforensics.results import ScanResult
from medforensics.store import ResultStore, content_hash
from medforensics.store.models import Base

TABLES = {"runs", "scans", "series", "reader_sessions", "reader_items"}
HEAD = "0002"


def _tables(store: ResultStore) -> set[str]:
    return set(sa.inspect(store.engine).get_table_names()) - {"alembic_version"}


def test_migrations_create_schema_from_empty_and_match_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    empty = ResultStore(url, upgrade=False)
    assert empty.revision() is None and _tables(empty) == set()
    store = ResultStore(url)  # opening upgrades to head
    assert store.revision() == store.head() == HEAD and _tables(store) == TABLES
    with store.engine.connect() as conn:  # migrated schema == ORM models (no pending autogenerate diff)
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    empty.close(), store.close()


def test_downgrade_and_upgrade_roundtrip(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    store = ResultStore(url)
    store.add(ScanResult(path="a", score=0.2, verdict="real", threshold=0.5), content_hash=content_hash(b"a"),
              detector="d", detector_version="1")
    store.downgrade("base")
    assert store.revision() is None and _tables(store) == set()
    cfg = store.alembic_config()  # the alembic command API works without an alembic.ini
    command.upgrade(cfg, "head")
    assert store.revision() == HEAD and _tables(store) == TABLES and store.count() == 0
    reopened = ResultStore(url)  # re-opening an up-to-date database is a no-op
    assert reopened.revision() == HEAD
    store.close(), reopened.close()


def test_migrations_render_postgresql_ddl_offline():
    """`alembic upgrade --sql` for PostgreSQL (no server or driver needed); checked once against PostgreSQL 15."""
    import io

    from alembic.config import Config

    from medforensics.store.store import MIGRATIONS

    out = {}
    for name, run in (("up", lambda c: command.upgrade(c, "head", sql=True)),
                      ("down", lambda c: command.downgrade(c, f"{HEAD}:base", sql=True))):
        buf = io.StringIO()
        cfg = Config(output_buffer=buf)
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", "postgresql://user@host/db")
        run(cfg)
        out[name] = buf.getvalue()
    for table in TABLES:
        assert f"CREATE TABLE {table} (" in out["up"] and f"DROP TABLE {table};" in out["down"]
    assert "created_at TIMESTAMP WITH TIME ZONE NOT NULL" in out["up"] and "meta JSON NOT NULL" in out["up"]
    assert "CREATE INDEX ix_scans_dedup ON scans (content_hash, detector, detector_version, model_id)" in out["up"]


def test_upgrade_from_previous_head_adds_series_and_keeps_scans(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    old = ResultStore(url, upgrade=False)
    old.upgrade("0001")  # a database written before series verdicts existed
    assert old.revision() == "0001" and "series" not in _tables(old)
    old.add(ScanResult(path="a.dcm", score=0.9, verdict="fake", threshold=0.5, meta={"series_uid": "1.2.3"}),
            content_hash=content_hash(b"a"), detector="d", detector_version="1")
    old.close()
    store = ResultStore(url)  # opening upgrades to head
    assert store.revision() == HEAD and _tables(store) == TABLES
    assert store.count() == 1 and store.query()[0].series_uid == "1.2.3"
    rec = store.upsert_series({"series_uid": "1.2.3", "n_slices": 2, "score": 0.9, "verdict": "fake"},
                              model_id="m", threshold=0.5)
    assert store.get_series("1.2.3").id == rec.id
    store.downgrade("0001")  # and back: the series table goes, the scans stay
    assert "series" not in _tables(store) and store.count() == 1
    store.close()
