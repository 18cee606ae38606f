"""Security and robustness of the service: query bounds, CSV formula escaping, access log without query
strings, private files for patient data, a corrupt token file."""

from __future__ import annotations

import csv
import io
import logging
import socket
import stat
import threading
import time

import pytest


def _upload(served, files, **params):
    return served.client.post("/v1/scans", headers=served.headers, params=params,
                              files=[("files", (name, data, "application/octet-stream")) for name, data in files])


@pytest.mark.parametrize("path,params", [
    ("/v1/scans", {"offset": 2**63}),
    ("/v1/scans", {"offset": 2**64 + 5}),
    ("/v1/scans", {"limit": 2**63}),
    ("/v1/scans.csv", {"offset": 2**63}),
    ("/v1/scans.csv", {"limit": 2**63}),
    ("/v1/scans.json", {"offset": 10**30}),
    ("/v1/scans.json", {"limit": 2**63}),
    ("/v1/scans/x/image.png", {"level": "inf"}),
    ("/v1/scans/x/image.png", {"width": "nan"}),
    ("/v1/scans/x/heatmap.png", {"alpha": "nan"}),
])
def test_absurd_query_numbers_are_422_not_500(served, path, params):
    r = served.client.get(path, headers=served.headers, params=params)
    assert r.status_code == 422, (path, params, r.status_code, r.text)
    assert "detail" in r.json() and "Traceback" not in r.text


def test_large_but_valid_offsets_still_answer(served):
    r = served.client.get("/v1/scans", headers=served.headers, params={"offset": 10**9})
    assert r.status_code == 200 and r.json()["items"] == []


def test_csv_cells_that_look_like_formulas_are_escaped(make_served, png_bytes):
    from medforensics.outputs import csv_safe

    assert [csv_safe(v) for v in ("=1+1", "+1", "-1", "@SUM(1)", "\tx", "\rx", "ok", "", 0.5, -0.5, None)] == \
        ["'=1+1", "'+1", "'-1", "'@SUM(1)", "'\tx", "'\rx", "ok", "", 0.5, -0.5, None]
    served = make_served(store_phi=True)
    names = ["@SUM(1+1)cmd.png", "=HYPERLINK(evil).png", "-2+3.png", "plain.png"]
    for i, name in enumerate(names):
        item = _upload(served, [(name, png_bytes(40 + i, (32, 32)))]).json()["items"][0]
        assert item["status"] == "ok" and item["scan"]["path"] == name  # stored and shown as sent
    text = served.client.get("/v1/scans.csv", headers=served.headers).text
    paths = {row["path"] for row in csv.DictReader(io.StringIO(text))}
    assert paths == {"'@SUM(1+1)cmd.png", "'=HYPERLINK(evil).png", "'-2+3.png", "plain.png"}
    # the JSON export is data, not a spreadsheet: unchanged
    exported = served.client.get("/v1/scans.json", headers=served.headers).json()
    assert {i["path"] for i in exported["items"]} == set(names)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_access_log_has_route_templates_not_query_strings_and_uvicorn_access_log_is_off(make_served):
    """Run the app under uvicorn with the options ``medforensics serve`` uses; send a token in the query."""
    import httpx
    import uvicorn

    from medforensics.serve.middleware import uvicorn_options

    served = make_served()
    names = ("medforensics", "medforensics.serve", "medforensics.serve.access", "uvicorn", "uvicorn.access",
             "uvicorn.error")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate,
                 logging.getLogger(n).disabled) for n in names}
    ours, theirs = _Records(), _Records()
    port = _free_port()
    try:
        server = uvicorn.Server(uvicorn.Config(served.app, host="127.0.0.1", port=port, **uvicorn_options("info")))
        logging.getLogger("medforensics").addHandler(ours)
        logging.getLogger("uvicorn").addHandler(theirs)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        # uvicorn writes its access line only when that logger has somewhere to go
        uvicorn_access_on = logging.getLogger("uvicorn.access").hasHandlers()
        base = f"http://127.0.0.1:{port}"
        r = httpx.get(f"{base}/v1/scans/abc123", params={"token": "mf_SECRETVALUE", "x": "PATIENTNAME"},
                      headers=served.headers)
        assert r.status_code == 404
        assert httpx.get(f"{base}/v1/scans", params={"token": "mf_SECRETVALUE"}).status_code == 401
        server.should_exit = True
        thread.join(timeout=10)
    finally:
        for n, (handlers, level, propagate, disabled) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
    access = [line for line in ours.lines if "→" in line]
    assert any(line.startswith("GET /v1/scans/{scan_id} → 404 (") for line in access), ours.lines
    assert any(line.startswith("GET /v1/scans → 401 (") for line in access), ours.lines
    assert not any("SECRET" in line or "PATIENT" in line or "abc123" in line for line in ours.lines)
    assert not uvicorn_access_on  # uvicorn's own access log (full URLs with query strings) is off
    assert not any("GET" in line for line in theirs.lines)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_results_db_and_previews_are_private(make_served, png_bytes, tmp_path, monkeypatch):
    monkeypatch.setattr("os.umask", lambda *_: 0o022)  # nothing below may rely on changing the umask
    served = make_served(db_url=f"sqlite:///{tmp_path / 'state' / 'db' / 'results.db'}",
                         heatmap_dir=tmp_path / "state" / "previews")
    item = _upload(served, [("a.png", png_bytes(7))]).json()["items"][0]
    assert item["status"] == "ok"
    db_dir = tmp_path / "state" / "db"
    files = [db_dir / "results.db", *[p for p in db_dir.iterdir() if p.name.endswith(("-wal", "-shm"))]]
    assert any(p.name.endswith("-wal") for p in files)  # WAL mode: the journal files exist and are checked
    for p in files:
        assert _mode(p) == 0o600, (p.name, oct(_mode(p)))
    assert _mode(db_dir) == 0o700 and _mode(tmp_path / "state") == 0o700
    previews = tmp_path / "state" / "previews"
    pngs = list(previews.rglob("*.png"))
    assert len(pngs) == 2  # image and heat-map
    for p in pngs:
        assert _mode(p) == 0o600, (p.name, oct(_mode(p)))
    for d in [previews, *{p.parent for p in pngs}]:
        assert _mode(d) == 0o700, (d, oct(_mode(d)))


def test_corrupt_token_file_is_a_clear_503_and_still_fails_closed(served, caplog):
    served.client.get("/v1/models", headers=served.headers).raise_for_status()
    path = served.settings.tokens_file
    path.write_text('{"tokens": {"t0": ')  # truncated by a bad edit
    with caplog.at_level(logging.ERROR, logger="medforensics.serve"):
        for headers in (served.headers, {"Authorization": "Bearer mf_wrong"}):
            r = served.client.get("/v1/scans", headers=headers)
            assert r.status_code == 503, r.text
            detail = r.json()["detail"]
            assert f"tokens file {path} is not valid JSON" in detail
    assert any("is not valid JSON" in rec.getMessage() for rec in caplog.records)
    assert served.client.get("/v1/scans").status_code == 401  # no token at all: refused as always
    assert served.client.get("/healthz").status_code == 200  # the probe does not need tokens
    path.write_text('{"tokens": {"t0": "not a digest entry"}}')
    r = served.client.get("/v1/scans", headers=served.headers)
    assert r.status_code == 503 and "has no 'sha256' digest" in r.json()["detail"]


def _big_png(side: int) -> bytes:
    """A ``side``² RGBA PNG of zeros: a few KB on the wire, ``side``² × 4 bytes (and float copies) decoded."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 4), np.uint8), mode="RGBA").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_upload_over_the_decode_budget_is_refused_by_name_and_the_rest_is_scored(make_served, png_bytes):
    served = make_served(decode_budget="64M")
    bomb = _big_png(4000)
    assert len(bomb) < 200_000  # small upload, 64 MB of pixels before any float copy
    body = _upload(served, [("before.png", png_bytes(11)), ("huge.png", bomb), ("after.png", png_bytes(12))]).json()
    assert (body["n"], body["n_ok"], body["n_error"]) == (3, 2, 1)
    before, huge, after = body["items"]
    assert before["status"] == after["status"] == "ok"
    assert huge["filename"] == "huge.png" and huge["status"] == "error"
    assert "too large to decode" in huge["error"] and "4000×4000" in huge["error"]
    assert "decode budget of 64.0 MiB" in huge["error"]
    # the same file under the default budget (1 GiB) is decoded
    assert make_served().settings.decode_budget is None


def test_serve_refuses_to_start_on_a_corrupt_token_file(tmp_path):
    from typer.testing import CliRunner

    from medforensics.cli import app

    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    res = CliRunner().invoke(app, ["serve", "--tokens-file", str(path)])
    said = " ".join(res.output.split())  # the console wraps long lines
    assert res.exit_code == 2 and "is not valid JSON" in said and "Traceback" not in said
