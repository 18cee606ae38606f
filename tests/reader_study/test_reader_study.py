"""The blinded reader study through FastAPI's TestClient: blinding, answers, summary, persistence."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from medforensics.detectors import create_detector
from medforensics.eval import compute_metrics
from medforensics.reader_study import ReaderStudy, reader_score, select_split, summarise
from medforensics.store import ResultStore

N = 8


@pytest.fixture(scope="module")
def tiny_det():
    det = create_detector("forensic_cnn", seed=0, width=8, patch_size=64, patch_stride=64, progress=False)
    det.set_threshold(0.5, method="test")
    return det


@pytest.fixture()
def study(tiny_manifest, tiny_det, tmp_path):
    store = ResultStore(url=f"sqlite:///{tmp_path / 'rs.db'}")
    return ReaderStudy.prepare(tiny_manifest, tiny_det, store=store, n=N, seed=0, n_boot=50)


@pytest.fixture()
def client(study):
    from fastapi.testclient import TestClient

    from medforensics.reader_study.app import create_reader_app

    with TestClient(create_reader_app(study)) as c:
        yield c


def _secrets(manifest) -> set[str]:
    """Strings that would give an image's identity or label away."""
    out = {"truth", "detector_score", "image_ref", "label", str(manifest.root), "manifest"}
    for row in manifest.rows:
        out |= {row.path, row.path.rsplit("/", 1)[-1], row.path.rsplit("/", 1)[-1].rsplit(".", 1)[0], row.source}
        if row.generator:
            out.add(row.generator)
    return out


def _png_chunks(data: bytes) -> set[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = set(), 8
    while i < len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        out.add(data[i + 4:i + 8])
        i += 12 + length
    return out


def test_study_is_balanced_modality_matched_and_deterministic(study, tiny_manifest, tiny_det, tmp_path):
    assert len(study.images) == N
    for mod in {im.modality for im in study.images}:
        truths = [im.truth for im in study.images if im.modality == mod]
        assert truths.count(0) == truths.count(1)
    again = ReaderStudy.prepare(tiny_manifest, tiny_det, store=study.store, n=N, seed=0)
    assert [(i.image_ref, i.detector_score) for i in again.images] == [(i.image_ref, i.detector_score) for i in study.images]
    with pytest.raises(ValueError, match="even"):
        ReaderStudy.prepare(tiny_manifest, tiny_det, store=study.store, n=7)
    with pytest.raises(ValueError, match="pairs"):
        ReaderStudy.prepare(tiny_manifest, tiny_det, store=study.store, n=40)


def test_pages_and_api_are_blinded(client, study, tiny_manifest):
    secrets = _secrets(tiny_manifest)
    page = client.get("/").text + client.get("/static/reader.js").text
    for s in secrets - {"label", "manifest"}:  # (the page's HTML has <label> elements)
        assert s not in page, f"{s!r} in the page"
    texts = []
    r = client.post("/api/sessions", json={"reader": "dr-a"})
    sid = r.json()["session_id"]
    texts.append(r.text)
    shapes = set()
    for _ in range(N):
        status = client.get(f"/api/sessions/{sid}")
        texts.append(status.text)
        pos = status.json()["next_position"]
        img = client.get(f"/api/sessions/{sid}/items/{pos}/image.png")
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert _png_chunks(img.content) <= {b"IHDR", b"IDAT", b"IEND"}  # pixels only: no text/EXIF/time chunks
        with Image.open(io.BytesIO(img.content)) as im:
            shapes.add((im.size, im.mode))
        texts.append(client.post(f"/api/sessions/{sid}/items/{pos}/answer",
                                 json={"answer": "fake", "confidence": 3}).text)
    assert shapes == {((512, 512), "RGB")}  # every image looks the same on the wire, whatever its source
    for text in texts:
        for s in secrets:
            assert s not in text, f"{s!r} leaked"
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404


def test_answering_all_items_gives_reader_and_detector_metrics_persisted(client, study):
    sid = client.post("/api/sessions", json={"reader": "dr-b"}).json()["session_id"]
    truth = {it["position"]: it["truth"] for it in study.store.reader_items(sid)}  # server-side oracle
    assert client.post(f"/api/sessions/{sid}/finish").status_code == 409  # nothing answered yet
    assert client.post(f"/api/sessions/{sid}/items/0/answer", json={"answer": "fake", "confidence": 9}).status_code == 422
    for pos, t in truth.items():  # a perfect reader, less sure about real images
        r = client.post(f"/api/sessions/{sid}/items/{pos}/answer",
                        json={"answer": "fake" if t else "real", "confidence": 5 if t else 2})
        assert r.status_code == 200
    assert client.get(f"/api/sessions/{sid}").json()["next_position"] is None
    summary = client.post(f"/api/sessions/{sid}/finish").json()
    assert summary["n"] == N and summary["n_real"] == summary["n_fake"] == N // 2 and summary["reader_name"] == "dr-b"
    assert summary["reader"]["acc"] == 1.0 and summary["reader"]["auc"] == 1.0
    items = study.store.reader_items(sid)
    want = compute_metrics([it["truth"] for it in items], [it["detector_score"] for it in items], threshold=0.5)
    assert summary["detector"]["acc"] == pytest.approx(want["acc"])
    assert summary["detector"]["auc"] == pytest.approx(want["auc"])
    assert {"acc", "auc"} <= set(summary["bootstrap"]["reader"]) and "detector" in summary["bootstrap"]
    assert 0.0 <= summary["agreement"]["fraction"] <= 1.0
    assert set(summary["per_modality"]) == {im.modality for im in study.images}
    json.dumps(summary, allow_nan=False)

    stored = study.store.reader_session(sid)
    assert stored["status"] == "finished" and stored["summary"]["reader"]["acc"] == 1.0
    assert all(it["answer"] is not None and it["confidence"] for it in items)
    assert client.get(f"/api/sessions/{sid}/summary").json() == summary
    assert client.post(f"/api/sessions/{sid}/items/0/answer", json={"answer": "real", "confidence": 1}).status_code == 409
    assert client.get(f"/results/{sid}").status_code == 200
    assert client.get("/api/sessions/nope/summary").status_code == 404


def test_each_session_gets_its_own_order(client, study):
    a = client.post("/api/sessions", json={"reader": "a"}).json()["session_id"]
    b = client.post("/api/sessions", json={"reader": "b"}).json()["session_id"]
    order = lambda sid: [it["image_ref"] for it in study.store.reader_items(sid)]  # noqa: E731
    assert sorted(order(a)) == sorted(order(b)) and order(a) != order(b)


def test_reader_score_rule_and_summary_with_a_wrong_reader():
    assert reader_score(1, 5) == 1.0 and reader_score(0, 5) == 0.0 and reader_score(1, 1) == pytest.approx(0.6)
    items = [{"position": i, "image_ref": f"r{i}", "truth": t, "detector_score": s, "answer": 1 - t, "confidence": 4}
             for i, (t, s) in enumerate([(0, 0.1), (0, 0.2), (1, 0.9), (1, 0.8)])]
    out = summarise(items, detector_threshold=0.5, n_boot=20)
    assert out["reader"]["acc"] == 0.0 and out["reader"]["auc"] == 0.0
    assert out["detector"]["acc"] == 1.0 and out["agreement"]["fraction"] == 0.0


def test_select_split_uses_the_training_patient_split(tiny_manifest):
    test = select_split(tiny_manifest, "test")
    assert 0 < len(test) < len(tiny_manifest) and all(r.split == "test" for r in test.rows)
    assert len(select_split(tiny_manifest, "all")) == len(tiny_manifest)


def test_cli_refuses_an_odd_n(tiny_manifest, tmp_path):
    from typer.testing import CliRunner

    from medforensics.cli import app

    res = CliRunner().invoke(app, ["reader-study", "--manifest", str(tiny_manifest.path), "--n", "7", "--split", "all",
                                   "--db", str(tmp_path / "x.db")])
    assert res.exit_code == 2 and "even" in res.output
