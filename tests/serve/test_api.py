"""The REST API through FastAPI's TestClient: auth, limits, per-item errors, store, dedup, previews."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medforensics.io import sample_dicoms


def _upload(served, files, **params):
    return served.client.post("/v1/scans", headers=served.headers, params=params,
                              files=[("files", (name, data, "application/octet-stream")) for name, data in files])


def test_auth_required_everywhere_but_healthz_and_page(served):
    c = served.client
    assert c.get("/healthz").status_code == 200
    assert c.get("/healthz").json()["store"] is True
    assert c.get("/").status_code == 200
    for method, path in (("get", "/v1/models"), ("get", "/v1/scans"), ("get", "/v1/scans.csv"),
                         ("get", "/v1/scans/x"), ("post", "/v1/scans")):
        r = getattr(c, method)(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        r = getattr(c, method)(path, headers={"Authorization": "Bearer mf_wrong"})
        assert r.status_code == 401, path
    assert c.get("/v1/models", headers=served.headers).status_code == 200


def test_tokens_are_hashed_at_rest_and_created_by_the_cli(tmp_path):
    from typer.testing import CliRunner

    from medforensics.cli import app
    from medforensics.serve.auth import TokenStore, hash_token

    path = tmp_path / "tokens.json"
    res = CliRunner().invoke(app, ["serve", "--create-token", "alice", "--tokens-file", str(path)])
    assert res.exit_code == 0, res.output
    token = [line for line in res.stdout.splitlines() if line.startswith("mf_")][0]
    text = path.read_text()
    assert token not in text and hash_token(token) in text
    assert path.stat().st_mode & 0o077 == 0
    store = TokenStore(path)
    assert store.verify(token) == "alice" and store.verify(token + "x") is None and store.verify(None) is None
    res = CliRunner().invoke(app, ["serve", "--create-token", "alice", "--tokens-file", str(path)])
    assert res.exit_code == 2 and "already exists" in res.output
    # no tokens → the server refuses to start rather than run open
    res = CliRunner().invoke(app, ["serve", "--tokens-file", str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "--create-token" in res.output


def test_oversize_upload_is_413(make_served, png_bytes):
    served = make_served(max_upload_bytes=20_000, max_files=2)
    big = png_bytes(shape=(400, 400))
    assert len(big) > 20_000
    r = _upload(served, [("big.png", big)])
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # a streamed (chunked, no Content-Length) body is cut off too
    r = served.client.post("/v1/scans", headers={**served.headers, "content-type": "multipart/form-data; boundary=x"},
                           content=iter([b"x" * 8192] * 4))
    assert r.status_code == 413
    r = _upload(served, [(f"{i}.png", png_bytes(i, (16, 16))) for i in range(3)])
    assert r.status_code == 413 and "at most 2 files" in r.json()["detail"]
    assert _upload(served, [("small.png", png_bytes(shape=(32, 32)))]).status_code == 200


def test_batch_with_a_corrupt_file_is_scored_per_item_stored_and_deduplicated(served, png_bytes, corrupt_png):
    files = [("a.png", png_bytes(0)), ("broken.png", corrupt_png), ("c.png", png_bytes(1, (64, 64)))]
    r = _upload(served, files)
    assert r.status_code == 200
    body = r.json()
    assert (body["n"], body["n_ok"], body["n_error"]) == (3, 2, 1)
    ok, bad, ok2 = body["items"]
    assert [i["filename"] for i in body["items"]] == ["a.png", "broken.png", "c.png"]
    assert ok["status"] == "ok" and ok["scan"]["verdict"] in ("real", "fake") and 0 <= ok["scan"]["score"] <= 1
    assert ok2["status"] == "ok" and not ok["cached"]
    assert bad["status"] == "error" and "PNG" in bad["error"] and bad["scan"]["score"] is None
    # upload file names are not stored unless store_phi is on
    assert "a.png" not in ok["scan"]["path"]

    store = served.app.state.service.store
    assert store.count(source="api") == 3
    rec = store.get(ok["scan_id"])
    assert rec.score == pytest.approx(ok["scan"]["score"]) and rec.model_id == body["model"]["model_id"]

    r2 = _upload(served, files[:1]).json()  # same content → answered from the store
    assert r2["items"][0]["cached"] is True and r2["items"][0]["scan_id"] == ok["scan_id"]
    assert store.count(source="api") == 3
    r3 = _upload(served, files[:1], force="true").json()  # forced → scored again, same score
    assert r3["items"][0]["cached"] is False and r3["items"][0]["scan_id"] != ok["scan_id"]
    assert r3["items"][0]["scan"]["score"] == pytest.approx(ok["scan"]["score"], abs=1e-9)
    assert store.count(source="api") == 4

    got = served.client.get(f"/v1/scans/{ok['scan_id']}", headers=served.headers).json()
    assert got["id"] == ok["scan_id"] and got["score"] == pytest.approx(ok["scan"]["score"])
    assert served.client.get("/v1/scans/nope", headers=served.headers).status_code == 404

    listing = served.client.get("/v1/scans", headers=served.headers, params={"verdict": "error"}).json()
    assert listing["total"] == 1 and listing["items"][0]["error"] == bad["error"]
    rows = list(csv.DictReader(io.StringIO(served.client.get("/v1/scans.csv", headers=served.headers).text)))
    assert len(rows) == 4 and {r["id"] for r in rows} >= {ok["scan_id"], bad["scan_id"]}
    exported = served.client.get("/v1/scans.json", headers=served.headers, params={"limit": 2}).json()
    assert exported["total"] == 4 and len(exported["items"]) == 2


def test_models_endpoint(served):
    body = served.client.get("/v1/models", headers=served.headers).json()
    active = body["active"]
    assert active["detector"] == "forensic_cnn" and active["threshold"] == 0.5
    assert active["model_id"].startswith("forensic_cnn-v1-") and active["heatmaps"] is True
    assert "forensic_cnn" in body["registered_detectors"] and "default" in body["shipped"]
    assert "real_val_scores" not in json.dumps(body)


def test_heatmap_and_window_level_image_endpoints(served):
    ct = dict(sample_dicoms())["CT_small.dcm"]
    item = _upload(served, [("ct.dcm", ct.read_bytes())]).json()["items"][0]
    assert item["status"] == "ok", item
    scan = item["scan"]
    assert scan["modality"] == "ct" and scan["sop_instance_uid"]
    assert scan["display"]["units"] == "HU" and (scan["display"]["min"], scan["display"]["max"]) == (-700, 2000)
    assert scan["patient_ref"] != "1CT1" and "1CT1" not in json.dumps(scan)  # PHI hashed

    def png(url, **params):
        r = served.client.get(url, headers=served.headers, params=params)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        return np.asarray(Image.open(io.BytesIO(r.content)))

    overlay = png(scan["heatmap_url"])
    heat = png(scan["heatmap_url"], mode="map")
    base = png(scan["image_url"])
    assert overlay.shape == heat.shape == (512, 512, 3) and base.shape == (512, 512)
    assert not np.array_equal(overlay[..., 0], base)  # the heat-map is blended in
    soft = png(scan["image_url"], level=40, width=400)  # soft-tissue window
    assert soft.shape == base.shape and np.abs(soft.astype(int) - base).mean() > 5
    r = served.client.get(scan["image_url"], params={"level": 40, "width": 400})
    assert r.status_code == 401


def test_nifti_volume_upload_scores_frames(served, tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = (np.random.default_rng(0).random((48, 48, 5)) * 1000).astype(np.float32)
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    item = _upload(served, [("vol.nii.gz", path.read_bytes())]).json()["items"][0]
    assert item["status"] == "ok", item
    assert len(item["scan"]["frames"]) == 5 and item["scan"]["score"] == pytest.approx(max(item["scan"]["frames"]))


def test_server_paths_only_when_enabled_and_inside_allowed_roots(make_served, tmp_path, png_bytes):
    inside = tmp_path / "allowed"
    inside.mkdir()
    (inside / "x.png").write_bytes(png_bytes(3))
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png_bytes(4))
    off = make_served()
    assert off.client.post("/v1/scans", headers=off.headers, json={"paths": [str(inside / "x.png")]}).status_code == 403
    on = make_served(allow_server_paths=True, allowed_roots=[inside])
    body = on.client.post("/v1/scans", headers=on.headers, json={
        "paths": [str(inside / "x.png"), str(outside), str(inside / ".." / "elsewhere.png"), "relative.png"]}).json()
    statuses = [(i["status"], i["error"]) for i in body["items"]]
    assert statuses[0] == ("ok", None)
    assert all(s == "error" for s, _ in statuses[1:])
    assert "outside the allowed roots" in statuses[1][1] and "outside" in statuses[2][1]
    assert "absolute" in statuses[3][1]


def test_request_deadline_turns_slow_items_into_errors(make_served, monkeypatch, png_bytes):
    served = make_served(request_timeout_s=0.2)
    det = served.app.state.service.detector
    real = det.score_with_maps

    def slow(*a, **kw):
        time.sleep(0.5)
        return real(*a, **kw)

    monkeypatch.setattr(det, "score_with_maps", slow)
    files = [("a.png", png_bytes(5)), ("b.png", png_bytes(6))]
    body = _upload(served, files).json()
    assert [i["status"] for i in body["items"]] == ["error", "error"]
    assert all("timed out after 0.2 s" in i["error"] and i["scan_id"] is None for i in body["items"])
    # the scoring went on: the results are stored when they complete, and re-sending fetches them
    store = served.app.state.service.store
    deadline = time.monotonic() + 30
    while store.count(source="api") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    monkeypatch.undo()
    served.settings.request_timeout_s = 120.0
    again = _upload(served, files).json()
    assert [(i["status"], i["cached"]) for i in again["items"]] == [("ok", True), ("ok", True)], [i["error"] for i in again["items"]]
    assert store.count(source="api") == 2


def test_page_is_self_contained(served):
    r = served.client.get("/")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    static = Path(__file__).resolve().parents[2] / "src" / "medforensics" / "serve" / "static"
    for name in ("index.html", "app.js", "style.css"):
        text = served.client.get(f"/static/{name}").text
        assert text == (static / name).read_text()
        assert "http://" not in text and "https://" not in text  # no CDN, works offline
    assert served.client.get("/openapi.json").json()["paths"]["/v1/scans"]["post"]["requestBody"]


def test_upload_names_kept_only_with_store_phi_and_no_auth_only_on_loopback(make_served, tmp_path, png_bytes):
    served = make_served(store_phi=True)
    item = _upload(served, [("named.png", png_bytes(9))]).json()["items"][0]
    assert item["scan"]["path"] == "named.png"

    from typer.testing import CliRunner

    from medforensics.cli import app

    res = CliRunner().invoke(app, ["serve", "--no-auth", "--host", "0.0.0.0", "--tokens-file", str(tmp_path / "t.json")])
    assert res.exit_code == 2 and "loopback" in res.output


def test_api_docs_page_works_offline(served):
    """/docs takes Swagger UI from the swagger-ui-bundle package, not from a CDN."""
    page = served.client.get("/docs")
    assert page.status_code == 200
    assert "https://" not in page.text and "/docs-assets/swagger-ui-bundle.js" in page.text
    js = served.client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000


def test_a_stored_error_is_retried_and_a_repeated_failure_adds_no_row(served, png_bytes, corrupt_png):
    from medforensics.results import ScanResult
    from medforensics.store import content_hash

    svc = served.app.state.service
    good = png_bytes(21)
    # an earlier attempt at this file failed (e.g. the store was full, a decoder crashed)
    failed = svc.store.add(ScanResult(path="upload:x.png", error="decoder crashed (worker exited with signal SIGKILL)",
                                      threshold=svc.threshold, model=svc.model_id),
                           content_hash=content_hash(good), detector=svc.detector.name,
                           detector_version=svc.detector.version, source="api", model_id=svc.model_id)
    first = _upload(served, [("good.png", good), ("broken.png", corrupt_png)]).json()["items"]
    assert first[0]["status"] == "ok" and first[0]["cached"] is False and first[0]["scan_id"] != failed.id
    assert first[1]["status"] == "error" and first[1]["cached"] is False
    assert svc.store.count(source="api") == 3
    # the corrupt file fails again: its stored error answers, no second row
    again = _upload(served, [("broken.png", corrupt_png)]).json()["items"][0]
    assert again["status"] == "error" and again["scan_id"] == first[1]["scan_id"] and again["cached"] is True
    assert svc.store.count(source="api") == 3
