"""Many requests at once against a live uvicorn: every answer is the file's own (same score as when it is
sent alone), and a file sent by every request at the same moment is scored and stored once."""

from __future__ import annotations

import socket
import threading
import time

import pytest

N_REQUESTS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(base, headers, files, timeout=300):
    import httpx

    r = httpx.post(f"{base}/v1/scans", headers=headers, timeout=timeout,
                   files=[("files", (name, data, "application/octet-stream")) for name, data in files])
    r.raise_for_status()
    return r.json()


@pytest.fixture()
def live(make_served, tmp_path):
    """``live(**settings)`` → (Served, base URL) of the app under uvicorn in a thread."""
    import uvicorn

    servers = []

    def start(**overrides):
        served = make_served(**overrides)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(served.app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("uvicorn did not start")
            time.sleep(0.05)
        return served, f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=20)


def test_concurrent_requests_get_their_own_answers_and_a_shared_file_is_stored_once(live, tmp_path, png_bytes):
    distinct = [(f"img{i}.png", png_bytes(200 + i, (64 + 8 * (i % 4), 96))) for i in range(N_REQUESTS)]
    shared = ("same.png", png_bytes(999, (80, 80)))

    # reference: each image alone, one request after the other, on a service with its own store
    ref_served, ref_base = live(db_url=f"sqlite:///{tmp_path / 'ref.db'}", heatmap_dir=tmp_path / "ref-previews")
    alone = {}
    for name, data in [*distinct, shared]:
        item = _post(ref_base, ref_served.headers, [(name, data)])["items"][0]
        assert item["status"] == "ok", item
        alone[name] = item["scan"]
    assert len({round(s["score"], 9) for s in alone.values()}) == len(alone)  # the images are told apart

    served, base = live(db_url=f"sqlite:///{tmp_path / 'live.db'}", heatmap_dir=tmp_path / "live-previews")
    barrier = threading.Barrier(N_REQUESTS)
    answers: list = [None] * N_REQUESTS
    errors: list = []

    def client(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            answers[i] = _post(base, served.headers, [distinct[i], shared])
        except Exception as exc:  # reported below, with the request it came from
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(N_REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors

    own_ids = set()
    for i, body in enumerate(answers):
        assert (body["n"], body["n_ok"]) == (2, 2), body
        mine, same = body["items"]
        name = distinct[i][0]
        assert mine["filename"] == name and same["filename"] == shared[0]
        assert mine["scan"]["content_hash"] == alone[name]["content_hash"]
        assert mine["scan"]["score"] == pytest.approx(alone[name]["score"], abs=1e-5), name
        assert mine["scan"]["frames"] == pytest.approx(alone[name]["frames"], abs=1e-5)
        assert mine["scan"]["verdict"] == alone[name]["verdict"]
        assert same["scan"]["score"] == pytest.approx(alone[shared[0]]["score"], abs=1e-5)
        own_ids.add(mine["scan_id"])
    assert len(own_ids) == N_REQUESTS  # distinct answers, one row each

    store = served.app.state.service.store
    shared_rows = store.query(content_hash=alone[shared[0]]["content_hash"], limit=100)
    assert len(shared_rows) == 1, [r.id for r in shared_rows]  # sent 16 times at once, scored and stored once
    assert {body["items"][1]["scan_id"] for body in answers} == {shared_rows[0].id}
    assert sum(not body["items"][1]["cached"] for body in answers) <= 1
    assert store.count(source="api") == N_REQUESTS + 1
