from __future__ import annotations

import json
import logging
import threading

import pytest

from medforensics.results import ScanResult
from medforensics.store import ResultStore, ScanRecord, content_hash, default_db_url, patient_ref


@pytest.fixture()
def store(tmp_path):
    s = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


def _result(path="a.dcm", score=0.8, verdict="fake", **meta):
    return ScanResult(path=path, modality="ct", score=score, threshold=0.5, verdict=verdict, model="m1",
                      frames=[0.1, score], meta={"sop_instance_uid": "1.2.3.4", "study_uid": "1.2", "series_uid": "1.2.3",
                                                 **meta})


def test_content_hash_of_file_and_bytes(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"hello" * 100_000)
    assert content_hash(p) == content_hash(str(p)) == content_hash(b"hello" * 100_000)
    assert content_hash(b"hello") != content_hash(b"hellp") and len(content_hash(b"")) == 64


def test_default_url_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDFORENSICS_DB", str(tmp_path / "x.db"))
    assert default_db_url() == f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv("MEDFORENSICS_DB", "postgresql://u:secret@db/mf")
    assert default_db_url() == "postgresql://u:secret@db/mf"
    monkeypatch.delenv("MEDFORENSICS_DB")
    assert default_db_url().endswith("/.medforensics/results.db")


def test_add_get_find_dedup(store):
    h = content_hash(b"pixels")
    assert store.find(content_hash=h, detector="forensic_cnn", detector_version="1") is None
    rec = store.add(_result(), content_hash=h, detector="forensic_cnn", detector_version="1", source="dicom")
    assert isinstance(rec, ScanRecord) and len(rec.id) == 36 and rec.created_at.endswith("+00:00")
    assert rec.sop_instance_uid == "1.2.3.4" and rec.series_uid == "1.2.3" and rec.frames == [0.1, 0.8]
    got = store.get(rec.id)
    assert got == rec and json.loads(json.dumps(got.to_dict())) == rec.to_dict()
    assert store.find(content_hash=h, detector="forensic_cnn", detector_version="1") == rec
    assert store.find(content_hash=h, detector="forensic_cnn", detector_version="1", model_id="m1") == rec
    assert store.find(content_hash=h, detector="forensic_cnn", detector_version="1", model_id="other") is None
    assert store.find(content_hash=h, detector="forensic_cnn", detector_version="2") is None
    assert store.find(content_hash=h, detector="npr", detector_version="1") is None
    newer = store.add(_result(score=0.3, verdict="real"), content_hash=h, detector="forensic_cnn", detector_version="1")
    assert store.find(content_hash=h, detector="forensic_cnn", detector_version="1").id == newer.id  # newest wins
    # the record answers a re-scan, re-deriving the verdict at the caller's threshold
    res = newer.to_result(path="b.dcm", threshold=0.2)
    assert res.path == "b.dcm" and res.score == 0.3 and res.verdict == "fake"
    assert store.get("nope") is None


def test_phi_hashed_by_default_and_kept_only_when_enabled(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    h = content_hash(b"x")
    s = ResultStore(f"sqlite:///{tmp_path / 'a.db'}")
    rec = s.add(_result(patient_id="PAT-0042", patient_name="Doe^Jane"), content_hash=h, detector="d", detector_version="1")
    assert rec.patient_ref == patient_ref("PAT-0042") and rec.patient_name is None
    assert "patient_id" not in rec.meta and "patient_name" not in rec.meta
    raw = (tmp_path / "a.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("a.db-*"))
    assert b"PAT-0042" not in raw and b"Doe^Jane" not in raw
    assert "PAT-0042" not in caplog.text and "Doe^Jane" not in caplog.text
    phi = ResultStore(f"sqlite:///{tmp_path / 'b.db'}", store_phi=True)
    rec2 = phi.add(_result(), content_hash=h, detector="d", detector_version="1", patient_id="PAT-0042",
                   patient_name="Doe^Jane")
    assert rec2.patient_ref == "PAT-0042" and rec2.patient_name == "Doe^Jane"
    s.close(), phi.close()


def test_query_filters_count_and_paging(store):
    run = store.start_run("scan", {"paths": ["x"]})
    for i in range(5):
        store.add(_result(path=f"f{i}", score=0.9 if i % 2 else 0.1, verdict="fake" if i % 2 else "real"),
                  content_hash=content_hash(bytes([i])), detector="d", detector_version="1", run_id=run)
    store.add(ScanResult(path="bad", error="truncated"), content_hash=content_hash(b"bad"), detector="d",
              detector_version="1", source="api")
    assert store.count() == 6 and store.count(run_id=run) == 5
    assert store.count(verdict="fake") == 2 and store.count(verdict="real") == 3 and store.count(verdict="error") == 1
    assert [r.path for r in store.query(source="api")] == ["bad"]
    assert {r.path for r in store.query(verdict="fake")} == {"f1", "f3"}
    page1, page2 = store.query(limit=4), store.query(limit=4, offset=4)
    assert len(page1) == 4 and len(page2) == 2 and not {r.id for r in page1} & {r.id for r in page2}
    assert store.query(path="f2")[0].score == 0.1 and store.count(sop_instance_uid="1.2.3.4") == 5
    with pytest.raises(ValueError, match="source"):
        store.add(_result(), content_hash=content_hash(b"z"), detector="d", detector_version="1", source="fax")
    with pytest.raises(ValueError, match="SHA-256"):
        store.add(_result(), content_hash="abc", detector="d", detector_version="1")


def test_runs_progress_resume_and_finish(store):
    args = {"paths": ["/data"], "model": "default"}
    rid = store.start_run("scan", args)
    assert store.find_open_run("scan", args) == rid and store.find_open_run("scan", {"paths": ["/other"]}) is None
    store.update_run(rid, n_ok=3, n_error=1)
    assert store.run(rid)["n_ok"] == 3 and store.run(rid)["status"] == "running"
    store.finish_run(rid, n_ok=10, n_error=1, seconds=2.0, images_per_s=5.5)
    r = store.run(rid)
    assert r["status"] == "finished" and r["images_per_s"] == 5.5 and r["finished_at"]
    assert store.find_open_run("scan", args) is None


def test_reader_session_roundtrip(store):
    items = [{"position": i, "image_ref": f"img{i}.png", "truth": i % 2, "detector_score": 0.1 * i} for i in range(4)]
    sid = store.create_reader_session(reader="dr-a", detector="forensic_cnn", items=items, seed=7)
    got = store.reader_items(sid)
    assert [g["position"] for g in got] == [0, 1, 2, 3] and got[1]["truth"] == 1 and got[2]["answer"] is None
    store.record_reader_answer(sid, 2, answer=1, confidence=4)
    store.record_reader_answer(sid, 2, answer=0, confidence=5)  # a changed mind replaces the answer
    assert store.reader_items(sid)[2]["answer"] == 0 and store.reader_items(sid)[2]["confidence"] == 5
    assert store.reader_session(sid)["n_answered"] == 1 and store.reader_session(sid)["status"] == "open"
    store.finish_reader_session(sid, {"reader_acc": 0.5, "detector_auc": 0.75})
    sess = store.reader_session(sid)
    assert sess["status"] == "finished" and sess["summary"]["detector_auc"] == 0.75 and sess["seed"] == 7
    with pytest.raises(KeyError):
        store.record_reader_answer(sid, 99, answer=1, confidence=1)
    with pytest.raises(ValueError):
        store.record_reader_answer(sid, 0, answer=3, confidence=1)
    assert store.reader_session("missing") is None


def test_thread_safe_concurrent_writes(store):
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(10):
                store.add(_result(path=f"t{k}-{i}"), content_hash=content_hash(f"{k}-{i}".encode()), detector="d",
                          detector_version="1", source="dicom")
                store.count()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and store.count(source="dicom") == 40


def test_new_sqlite_store_is_private_and_existing_modes_are_kept(tmp_path):
    import stat

    def mode(p):
        return stat.S_IMODE(p.stat().st_mode)

    db = tmp_path / "new" / "sub" / "r.db"
    with ResultStore(f"sqlite:///{db}") as s:
        s.add(_result(), content_hash="a" * 64, detector="d", detector_version="1")
        made = [db, *(p for p in db.parent.iterdir() if p.name.endswith(("-wal", "-shm")))]
        assert len(made) == 3, made
        assert all(mode(p) == 0o600 for p in made), [(p.name, oct(mode(p))) for p in made]
        assert mode(db.parent) == mode(db.parent.parent) == 0o700
    shared = tmp_path / "shared.db"  # an administrator's choice is left alone
    shared.touch(mode=0o640)
    shared.chmod(0o640)
    with ResultStore(f"sqlite:///{shared}"):
        assert mode(shared) == 0o640
