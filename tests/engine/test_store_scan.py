from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.detectors import create_detector, load_detector
from medforensics.engine import ScanEngine, content_key
from medforensics.store import ResultStore

N_IMAGES = 12


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture()
def images(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for i in range(N_IMAGES):
        sub = root / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(sub / f"im{i:02d}.png")
    return root


def _rows_per_file(store: ResultStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in store.query(limit=None):
        counts[rec.path] = counts.get(rec.path, 0) + 1
    return counts


def test_store_dedup_force_and_error_retry(model_dir, images, tmp_path):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    det = load_detector(model_dir)
    store = ResultStore(f"sqlite:///{tmp_path / 'r.db'}")
    first = _scan([images], det, store=store)
    assert len(first) == N_IMAGES + 1
    assert store.count() == N_IMAGES + 1
    assert store.count(verdict="error") == 1
    assert all(r.scan_id and r.content_hash == content_key(r.path) and not r.cached for r in first)
    again_batch = ScanEngine(det, store=store, workers=1)
    again = list(again_batch.scan([images]))
    again_batch.close()
    # everything answered from the store: same scores, no new rows (the broken file is retried, not duplicated)
    assert [r.score for r in again] == [r.score for r in first] and store.count() == N_IMAGES + 1
    assert all(r.cached for r in again) and again_batch.summary.n_cached == N_IMAGES + 1
    assert again_batch.summary.n_scored == 1  # only the broken file was tried again
    # the same content elsewhere is also answered from the store
    copy = tmp_path / "copy.png"
    copy.write_bytes(next(images.rglob("im00.png")).read_bytes())
    (hit,) = _scan([copy], det, store=store)
    assert hit.cached and hit.path == str(copy) and store.count() == N_IMAGES + 1
    forced = _scan([images], det, store=store, force=True)
    assert [r.score for r in forced] == [r.score for r in first] and store.count() == 2 * (N_IMAGES + 1)
    # a different model (other weights) is never answered with this one's scores
    other = create_detector("forensic_cnn", seed=1, width=8, patch_size=64, patch_stride=64, progress=False)
    assert not any(r.cached for r in _scan([images], other, store=store))
    store.close()


def _scan(paths, det, **kw):
    with ScanEngine(det, workers=kw.pop("workers", 1), **kw) as engine:
        return list(engine.scan(paths))


def test_streaming_without_store_matches_one_at_a_time(model_dir, images):
    det = load_detector(model_dir)
    with ScanEngine(det, workers=1, batch_size=5) as engine:
        got = [(r.path, r.score) for r in engine.scan([images])]
        summary = engine.summary
    alone = [(r.path, r.score) for r in _scan([images], det, workers=0, batch_size=1)]
    assert [p for p, _ in got] == [p for p, _ in alone]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in alone], rtol=0, atol=1e-6)
    assert summary.n_scored == N_IMAGES
    assert summary.images_per_s > 0


SLOW_SCAN = textwrap.dedent("""
    import sys, time
    from medforensics.detectors import load_detector
    from medforensics.engine import ScanEngine, run_args
    from medforensics.store import ResultStore

    model_dir, folder, url = sys.argv[1:4]
    det = load_detector(model_dir)
    score = det._score_arrays
    def slow(batch):  # a slow model, so that the scan can be killed half-way
        time.sleep(0.4)
        return score(batch)
    det._score_arrays = slow
    from medforensics.engine.series import DEFAULT_MAX_SLICES  # what `medforensics scan` uses by default

    engine = ScanEngine(det, store=ResultStore(url), workers=1, batch_size=1, max_frames=DEFAULT_MAX_SLICES)
    args = run_args([folder], engine.model_id, threshold=det.threshold, max_frames=DEFAULT_MAX_SLICES)
    for res in engine.scan([folder], run_args=args):
        print(res.path, flush=True)
""")


def _processes_with(text: str) -> list[int]:
    """PIDs whose command line contains ``text``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def test_killed_scan_resumes_without_loss_or_duplicates(model_dir, images, tmp_path):
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    store = ResultStore(url)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SCAN, str(model_dir), str(images), url], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while store.count() < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the slow scan committed nothing"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # its decode workers notice and exit: nothing is left behind
    deadline = time.monotonic() + 15
    while _processes_with(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_with(url), "decode workers outlived the killed scan"
    done = store.count()
    assert 3 <= done < N_IMAGES  # killed half-way
    (killed_run,) = [r for r in {rec.run_id for rec in store.query(limit=None)}]
    assert store.run(killed_run)["status"] == "running"

    out = tmp_path / "resumed.json"
    res = CliRunner().invoke(app, ["scan", str(images), "--model", str(model_dir), "--db", url, "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = _rows_per_file(store)
    files = sorted(str(p) for p in images.rglob("*.png"))
    assert sorted(rows) == files and set(rows.values()) == {1}  # every file exactly once
    assert store.count() == N_IMAGES and all(r.score is not None for r in store.query(limit=None))
    run = store.run(killed_run)  # the restart continued (and finished) the killed run
    assert run["status"] == "finished" and run["n_ok"] == N_IMAGES and run["n_cached"] == done
    assert "images/s" in res.output and f"{done} answered from the store" in res.output
    # the JSON output has every file, with the stored scores
    payload = json.loads(out.read_text())
    stored = {r.path: r.score for r in store.query(limit=None)}
    assert {r["path"]: r["score"] for r in payload["results"]} == stored
    store.close()


def test_cli_db_answers_from_store_and_force_rescans(model_dir, images, tmp_path):
    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    outs = []
    for i, extra in enumerate([[], [], ["--force"]]):
        out = tmp_path / f"r{i}.json"
        res = runner.invoke(app, ["scan", str(images), "--model", str(model_dir), "--db", url, "--json", str(out),
                                  *extra])
        assert res.exit_code == 0, res.output
        outs.append(json.loads(out.read_text())["results"])
    assert outs[0] == outs[1] == outs[2]
    store = ResultStore(url)
    assert store.count() == 2 * N_IMAGES and store.count(source="cli") == 2 * N_IMAGES
    assert not list(tmp_path.glob("*.partial"))
    res = runner.invoke(app, ["scan", str(images), "--model", str(model_dir), "--store-phi"])
    assert res.exit_code == 2 and "--db" in res.output
    store.close()


def test_identical_files_in_flight_together_are_scored_once(model_dir, images, tmp_path):
    """Copies of one file in the same batch window: one store row, every copy answered with its score."""
    det = load_detector(model_dir)
    src = next(images.rglob("im00.png"))
    copies = []
    for i in range(4):
        copies.append(tmp_path / f"copy{i}.png")
        copies[-1].write_bytes(src.read_bytes())
    store = ResultStore(f"sqlite:///{tmp_path / 'inflight.db'}")
    with ScanEngine(det, store=store, workers=2, batch_size=8) as engine:
        results = list(engine.scan(copies))
        summary = engine.summary
    assert [r.path for r in results] == [str(p) for p in copies]
    assert len({r.score for r in results}) == 1
    assert store.count() == 1
    assert sum(not r.cached for r in results) == 1
    assert {r.scan_id for r in results} == {results[0].scan_id}
    assert summary.n_scored == 1
    store.close()
