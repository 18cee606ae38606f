"""Series verdicts in the results store: upsert per (series UID, model), look-up, filtered queries."""

from __future__ import annotations

import threading

import pytest

from medforensics.store import ResultStore, SeriesRecord


@pytest.fixture
def store(tmp_path):
    s = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


def _record(uid="1.2.840.1", score=0.8, verdict="fake", n=3, **kw):
    rec = {"series_uid": uid, "key": f"uid:{uid}", "modality": "CT", "n_slices": n, "score": score,
           "verdict": verdict, "pixel_score": score, "header_score": None, "slice_scores": [0.1, score, 0.2][:n],
           "slices": [{"path": f"dicom://A/{i}", "frame": None} for i in range(n)],
           "regions": [{"first_slice": 1, "last_slice": 1, "y": 10.0, "x": 20.0, "radius": 3.0, "score": score}],
           "findings": [{"code": "position_gap", "severity": "warning", "message": "gap"}]}
    rec.update(kw)
    return rec


def test_upsert_inserts_then_updates_the_same_row(store):
    first = store.upsert_series(_record(n=2, score=0.3, verdict="real", regions=[]), model_id="m1",
                                source="dicom", threshold=0.5, study_uid="1.2.840")
    assert isinstance(first, SeriesRecord)
    assert (first.n_slices, first.verdict, first.threshold, first.study_uid, first.regions) == (2, "real", 0.5,
                                                                                                 "1.2.840", [])
    again = store.upsert_series(_record(n=3), model_id="m1", source="dicom", threshold=0.5)  # a late instance
    assert again.id == first.id and again.created_at == first.created_at and again.updated_at >= first.updated_at
    assert (again.n_slices, again.verdict, again.score) == (3, "fake", 0.8)
    assert again.study_uid == "1.2.840"  # not forgotten when the new record does not name it
    assert again.regions[0]["first_slice"] == 1 and again.findings[0]["code"] == "position_gap"
    assert store.count_series() == 1
    other_model = store.upsert_series(_record(), model_id="m2", source="api")
    assert other_model.id != first.id and store.count_series() == 2
    assert store.get_series("1.2.840.1", model_id="m1").id == first.id
    assert store.get_series(first.id).series_uid == "1.2.840.1"  # a row id works too
    assert store.get_series("no.such.uid") is None


def test_query_series_filters_and_paging(store):
    for i in range(5):
        store.upsert_series(_record(uid=f"1.2.{i}", score=0.9 if i % 2 else 0.1, verdict="fake" if i % 2 else "real"),
                            model_id="m", source="dicom" if i < 3 else "api", study_uid="9.9" if i == 4 else None)
    assert store.count_series(verdict="fake") == 2 and store.count_series(verdict="real") == 3
    assert {r.series_uid for r in store.query_series(verdict="fake")} == {"1.2.1", "1.2.3"}
    assert store.count_series(source="api") == 2 and [r.series_uid for r in store.query_series(study_uid="9.9")] == ["1.2.4"]
    page1 = store.query_series(limit=2)
    page2 = store.query_series(limit=2, offset=2)
    assert [r.series_uid for r in page1] == ["1.2.4", "1.2.3"]  # most recently updated first
    assert len(page2) == 2 and not {r.id for r in page1} & {r.id for r in page2}
    d = page1[0].to_dict()
    assert d["series_uid"] == "1.2.4" and isinstance(d["regions"], list) and isinstance(d["updated_at"], str)


@pytest.mark.parametrize("bad, message", [
    ({"series_uid": None, "key": None}, "needs a series_uid"),
    ({"verdict": "maybe"}, "verdict must be"),
    ({"score": float("nan")}, "finite number"),
])
def test_bad_series_record_is_refused_by_name(store, bad, message):
    with pytest.raises(ValueError, match=message):
        store.upsert_series(_record(**bad), model_id="m")
    assert store.count_series() == 0
    with pytest.raises(ValueError, match="source must be"):
        store.upsert_series(_record(), model_id="m", source="fax")


def test_concurrent_upserts_of_one_series_leave_one_row(store):
    errors = []

    def work(n):
        try:
            store.upsert_series(_record(n=n), model_id="m", source="dicom")
        except Exception as err:  # pragma: no cover - the assertion below shows it
            errors.append(err)

    threads = [threading.Thread(target=work, args=(2 + i % 2,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and store.count_series() == 1
