"""The scan engine: order, batching, crash/hang isolation, bounded memory, concurrent callers, one key."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medforensics.engine import ScanEngine, ScanInput, content_key
from medforensics.engine import decode as decode_mod


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("engine")
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (40 + i, 56), dtype=np.uint8)).save(root / f"im{i:02d}.png")
    (root / "im03b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (root / "im06b_empty.png").write_bytes(b"")
    ct = Path(pydicom.__file__).parent / "data/test_files/CT_small.dcm"
    (root / "im08b_ct.dcm").write_bytes(ct.read_bytes())
    return root


def _scan(det, paths, **kw):
    with ScanEngine(det, **kw) as engine:
        return list(engine.scan(paths))


def test_pipelined_scan_matches_one_at_a_time_in_input_order(det, folder):
    alone = _scan(det, [folder], workers=0, batch_size=1)
    piped = _scan(det, [folder], workers=2, batch_size=4, with_maps=True)
    assert [r.path for r in piped] == [r.path for r in alone] == sorted(str(p) for p in folder.iterdir())
    errors = {Path(r.path).name: r.error for r in piped if not r.ok}
    assert set(errors) == {"im03b_broken.png", "im06b_empty.png"}
    assert "empty file" in errors["im06b_empty.png"]
    for a, b in zip(alone, piped):
        assert a.error == b.error
        if a.ok:
            assert b.score == pytest.approx(a.score, abs=1e-6)
            assert b.verdict == a.verdict
            assert b.heatmap.shape == (128, 128)
    ct = next(r for r in piped if r.path.endswith(".dcm"))
    assert ct.modality == "ct"
    assert ct.meta["sop_instance_uid"]


def _crashing_decode(seq, path, *args, **kwargs):
    name = Path(path).name
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)  # what a native decoder's segfault does to the worker
    if name.startswith("hang"):
        time.sleep(3600)  # an endless loop in a decoder
    return _REAL_DECODE(seq, path, *args, **kwargs)


_REAL_DECODE = decode_mod.decode_one


def test_a_crashing_or_hanging_decoder_costs_one_file(det, folder, tmp_path, monkeypatch):
    crash, hang = tmp_path / "crash.png", tmp_path / "hang.png"
    good = sorted(folder.glob("im0[0-2].png"))
    for p in (crash, hang):
        p.write_bytes(good[0].read_bytes())
    monkeypatch.setattr(decode_mod, "decode_one", _crashing_decode)  # inherited by the forked workers
    inputs = [good[0], crash, good[1], hang, good[2]]
    with ScanEngine(det, workers=1, decode_timeout=2.0, batch_size=2) as engine:
        results = list(engine.scan(inputs))
        restarts = engine.summary.decode_restarts
    assert [r.path for r in results] == [str(p) for p in inputs]
    assert "decoder crashed" in results[1].error
    assert "SIGSEGV" in results[1].error
    assert "timed out" in results[3].error
    assert all(results[i].ok for i in (0, 2, 4))
    assert restarts == 2


def test_memory_stays_bounded_on_a_long_stream(det, folder):
    """The engine never pulls more than its window ahead of what it has handed back."""
    one = next(folder.glob("im00.png"))
    pulled = 0
    max_ahead = 0
    handed = 0

    def stream():
        nonlocal pulled
        for _ in range(60):
            pulled += 1
            yield ScanInput(one)

    with ScanEngine(det, workers=1, batch_size=4, window=6) as engine:
        for res in engine.scan(stream()):
            handed += 1
            max_ahead = max(max_ahead, pulled - handed)
            assert res.ok
    assert handed == 60
    assert max_ahead <= 6


def test_concurrent_submissions_are_batched_and_answered_correctly(det, folder):
    files = sorted(folder.glob("im0?.png"))
    expected = {str(r.path): r.score for r in _scan(det, files, workers=0, batch_size=1)}
    got: dict[str, float] = {}
    lock = threading.Lock()
    calls = []
    with ScanEngine(det, workers=1, batch_size=8, max_wait=0.05) as engine:
        forward = engine._forward

        def counting(arrays):
            calls.append(len(arrays))
            return forward(arrays)

        engine._forward = counting

        def client(paths):  # a caller with several requests in flight, like a busy service
            futures = [(p, engine.submit(ScanInput(p, name=f"upload-{p.name}"))) for p in paths]
            for p, fut in futures:
                res = fut.result(timeout=120)
                with lock:
                    got[str(p)] = (res.path, res.score)

        threads = [threading.Thread(target=client, args=(files[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert set(got) == set(expected)
    for p, (name, score) in got.items():
        assert name == f"upload-{Path(p).name}"
        assert score == pytest.approx(expected[p], abs=1e-6)
    assert sum(calls) == len(files)
    assert max(calls) > 1  # concurrent requests shared a model batch


def test_content_key_is_the_same_across_lossless_transfer_syntaxes(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

    src = Path(pydicom.__file__).parent / "data/test_files/CT_small.dcm"
    plain = tmp_path / "plain.dcm"
    plain.write_bytes(src.read_bytes())
    ds = pydicom.dcmread(src)
    ds.compress(RLELossless, generate_instance_uid=False)  # transcoding keeps the instance
    rle = tmp_path / "rle.dcm"
    ds.save_as(rle)
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    big = tmp_path / "deflated.dcm"
    ds.save_as(big, enforce_file_format=True)
    assert rle.read_bytes() != plain.read_bytes()
    assert content_key(rle) == content_key(plain) == content_key(big)
    edited = pydicom.dcmread(src)
    arr = edited.pixel_array.copy()
    arr[10, 10] += 1
    edited.PixelData = arr.tobytes()
    changed = tmp_path / "changed.dcm"
    edited.save_as(changed)
    assert content_key(changed) != content_key(plain)  # tampered pixels are other content
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    import hashlib

    assert content_key(png) == hashlib.sha256(png.read_bytes()).hexdigest()
