"""The DICOM receiver under load and attack: admission, memory budget, spool + resume, one de-duplication key."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from medforensics.dicomnet.guard import DecodeBudget, PeerGate, RefusedInstance  # noqa: E402
from medforensics.dicomnet.scp import OUT_OF_RESOURCES, DicomReceiver, storescu_profile  # noqa: E402
from medforensics.store import ResultStore  # noqa: E402

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
STORESCU = shutil.which("storescu")


@pytest.fixture(scope="module")
def detector(tiny_detector):
    return tiny_detector


def _ct(tmp_path: Path, uid: str, ts=ExplicitVRLittleEndian) -> Path:
    ds = pydicom.dcmread(CT_SMALL)
    if ts == RLELossless:
        ds.compress(RLELossless, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    out = tmp_path / f"{uid}-{ts.name.replace(' ', '_')}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _scu(ae_title: str = "TESTSCU", syntaxes=(ExplicitVRLittleEndian,)):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, list(syntaxes))
    ae.add_requested_context(SecondaryCaptureImageStorage, list(syntaxes))
    return ae


def _send(port: int, *datasets, ae_title: str = "TESTSCU", syntaxes=(ExplicitVRLittleEndian,),
          bind: str | None = None) -> list:
    ae = _scu(ae_title, syntaxes)
    kw = {"bind_address": (bind, 0)} if bind else {}
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDFORENSICS", **kw)
    if not assoc.is_established:
        return []
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


# ---------------------------------------------------------------------------------------------- storescu profile
def test_storescu_profile_reports_a_broken_file_and_goes_on(tmp_path, caplog):
    good = _ct(tmp_path, "1.2.826.0.1.3680043.8.498.100")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 128 + b"DICM" + os.urandom(300))
    missing = tmp_path / "missing.dcm"
    with caplog.at_level("WARNING", logger="medforensics.dicomnet.scp"):
        cfg = storescu_profile([junk, good, missing], tmp_path / "scu.cfg")
    text = cfg.read_text()
    assert text.count("PresentationContext1 =") == 1 and "PresentationContext2" not in text
    assert f"{pydicom.uid.CTImageStorage}\\TS0" in text
    assert str(junk) in caplog.text and str(missing) in caplog.text


# ---------------------------------------------------------------------------------------------- admission
def test_idle_sockets_do_not_lock_out_a_sender(detector, tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'rx.db'}")
    with DicomReceiver(detector, store, max_frames=1, spool_dir=tmp_path / "spool", max_associations=4,
                       max_per_peer=2, acse_timeout=2.0) as rx:
        rx.start("127.0.0.1", 0)
        idle = []
        for _ in range(16):  # an attacker on 127.0.0.2 opens 16 connections and says nothing
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", rx.port))
            idle.append(s)
        deadline = time.monotonic() + 1.8
        while rx.gate.refused_busy < 14 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rx.gate.refused_busy == 14  # only max_per_peer of them got a slot
        # another sender is not locked out at all
        t0 = time.monotonic()
        (status,) = _send(rx.port, pydicom.dcmread(_ct(tmp_path, "1.2.826.0.1.3680043.8.498.101")))
        assert status.Status == 0 and time.monotonic() - t0 < 8  # (the old lock-out lasted the 30 s ACSE timeout)
        # a sender on the attacker's own address gets in once the idle ones time out (acse_timeout)
        t0 = time.monotonic()
        ds = pydicom.dcmread(_ct(tmp_path, "1.2.826.0.1.3680043.8.498.102"))
        while not (got := _send(rx.port, ds, bind="127.0.0.2")):
            assert time.monotonic() - t0 < 2.0 + 8, "locked out for much longer than the ACSE timeout"
            time.sleep(0.2)
        assert got[0].Status == 0
        # the idle sockets were closed by the receiver, the clients still hold theirs
        assert all(s.recv(1, socket.MSG_DONTWAIT) == b"" for s in idle[:2])
        assert rx.wait_idle(60)
        for s in idle:
            s.close()
    assert store.count() == 2
    store.close()


def test_calling_ae_and_peer_allow_lists(detector, tmp_path):
    with pytest.raises(ValueError, match="not-an-ip"):
        PeerGate(["10.0.0.0/8", "not-an-ip"])
    store = ResultStore(f"sqlite:///{tmp_path / 'rx.db'}")
    ds = pydicom.dcmread(_ct(tmp_path, "1.2.826.0.1.3680043.8.498.103"))
    with DicomReceiver(detector, store, max_frames=1, spool_dir=tmp_path / "spool", calling_aets=["GOODSCU"],
                       allowed_peers=["127.0.0.1/32", "::1"], max_decodes=1) as rx:
        rx.start("127.0.0.1", 0)
        assert rx.engine.workers == 1  # one decode process: one decode at a time
        assert _send(rx.port, ds, ae_title="BADSCU") == []  # A-ASSOCIATE-RJ: calling AE not recognised
        assert _send(rx.port, ds, ae_title="GOODSCU", bind="127.0.0.2") == []  # address not allowed
        assert rx.gate.refused_address == 1
        (status,) = _send(rx.port, ds, ae_title="GOODSCU")
        assert status.Status == 0
        assert rx.wait_idle(60)
        assert rx.stats.received == 1
    (rec,) = store.query(limit=None)
    assert rec.path == "dicom://GOODSCU/1.2.826.0.1.3680043.8.498.103" and rec.ok
    store.close()


# ---------------------------------------------------------------------------------------------- memory budget
def test_decode_budget_caps_bytes_and_concurrent_decodes():
    budget = DecodeBudget(total_bytes=100, slots=2)
    with pytest.raises(RefusedInstance, match="over the receiver's decode budget"):
        budget.acquire(101)
    assert budget.acquire(60) and not budget.acquire(50, timeout=0.05)  # bytes: 60 + 50 > 100
    assert budget.acquire(40) and not budget.acquire(0, timeout=0.05)  # slots: two decodes at once
    threading.Timer(0.1, budget.release, args=(60,)).start()
    assert budget.acquire(50, timeout=5) and budget.in_use == (2, 90)


def test_read_header_inflates_in_bounded_chunks_and_stops_at_the_stream_end():
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from medforensics.dicomnet.guard import read_header

    ds = Dataset()
    ds.PatientID, ds.Rows, ds.Columns = "P1", 1000, 1000
    ds.PixelData = bytes(1_000_000)
    ds["PixelData"].VR = "OB"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)  # explicit VR little endian (the encoding under the deflate)
    raw = buf.getvalue()
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = z.compress(raw) + z.flush()
    for data in (stream + b"\x00", stream[: len(stream) // 2]):  # padded to even length; truncated
        done: list = []
        t = threading.Thread(target=lambda d=data: done.append(read_header(d, DeflatedExplicitVRLittleEndian,
                                                                           inflate_limit=1 << 30)))
        t.start()
        t.join(10)
        assert not t.is_alive(), "read_header did not stop at the end of the deflate stream"
    assert done[0].inflated_bytes is not None
    header = read_header(stream + b"\x00", DeflatedExplicitVRLittleEndian, inflate_limit=1 << 30)
    assert header.inflated_bytes == len(raw) and header.dataset.Rows == 1000 and "PixelData" not in header.dataset
    with pytest.raises(RefusedInstance, match="inflates to more than"):
        read_header(stream, DeflatedExplicitVRLittleEndian, inflate_limit=100_000)


def _deflated_rgb(tmp_path: Path, side: int, uid: str) -> Path:
    """A deflated secondary capture, side×side RGB of one colour: tiny on the wire, big once decoded."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
    ds.Modality, ds.PatientID = "OT", "P1"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.full((side, side, 3), 200, np.uint8).tobytes()
    out = tmp_path / f"{uid}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_an_instance_over_the_decode_budget_is_refused_without_allocating(detector, tmp_path, monkeypatch):
    from pynetdicom import _config

    bomb = _deflated_rgb(tmp_path, 4000, "1.2.826.0.1.3680043.8.498.104")  # 48 MB of pixels
    assert bomb.stat().st_size < 200_000
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the sender streams the file as it is
    ds = bomb
    store = ResultStore(f"sqlite:///{tmp_path / 'rx.db'}")
    with DicomReceiver(detector, store, max_frames=1, spool_dir=tmp_path / "spool", decode_budget=64 << 20) as rx:
        rx.start("127.0.0.1", 0)
        tracemalloc.start()
        (status,) = _send(rx.port, ds, syntaxes=(DeflatedExplicitVRLittleEndian,))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert status.Status == OUT_OF_RESOURCES and "decode budget" in status.ErrorComment
        # the receiver parsed the header only: far less than the 48 MB of pixels (or the ~1.5 GB a decode needs)
        assert peak < 30e6, peak
        assert not list((tmp_path / "spool").glob("*.dcm"))
        (status,) = _send(rx.port, ds, syntaxes=(DeflatedExplicitVRLittleEndian,))  # sent again: no second row
        assert rx.stats.refused == 2
        ok = _ct(tmp_path, "1.2.826.0.1.3680043.8.498.105")
        assert _send(rx.port, ok)[0].Status == 0  # the receiver goes on
        assert rx.wait_idle(60)
    (bad,) = store.query(sop_instance_uid="1.2.826.0.1.3680043.8.498.104")
    assert not bad.ok and "over the receiver's decode budget of 64.0 MiB per instance" in bad.error
    assert store.count() == 2
    store.close()


# ---------------------------------------------------------------------------------------------- spool and resume
_BLOCKED_RECEIVER = textwrap.dedent("""
    import sys, time
    from medforensics.detectors import load_detector
    from medforensics.dicomnet.scp import DicomReceiver
    from medforensics.store import ResultStore

    det = load_detector(sys.argv[1])
    # the model never answers (whichever entry the engine uses): instances stay spooled
    det.score = det.score_with_maps = lambda batch: time.sleep(3600)
    rx = DicomReceiver(det, ResultStore(sys.argv[2]), max_frames=1, spool_dir=sys.argv[3])
    rx.start("127.0.0.1", 0)
    print(rx.port, flush=True)
    time.sleep(3600)
""")


def test_acknowledged_instances_survive_a_crash_and_are_scored_once(detector, tmp_path):
    model = detector.save(tmp_path / "model")
    url, spool = f"sqlite:///{tmp_path / 'rx.db'}", tmp_path / "spool"
    uids = [f"1.2.826.0.1.3680043.8.498.11{i}" for i in range(3)]
    proc = subprocess.Popen([sys.executable, "-c", _BLOCKED_RECEIVER, str(model), url, str(spool)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    watchdog = threading.Timer(300, os.killpg, args=(proc.pid, signal.SIGKILL))  # never hang the suite
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"the receiver did not start: {line!r}"
        port = int(line)
        statuses = _send(port, *(pydicom.dcmread(_ct(tmp_path, uid)) for uid in uids))
        assert [s.Status for s in statuses] == [0, 0, 0]  # acknowledged before any scoring
        spooled = sorted(spool.glob("*.dcm"))
        assert len(spooled) == 3
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in spooled)
        assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in spooled} == set(uids)
        copy = tmp_path / "copy.dcm"
        shutil.copy(spooled[0], copy)
    finally:
        watchdog.cancel()
        os.killpg(proc.pid, signal.SIGKILL)  # the receiver dies with three unscored instances
        proc.wait(30)
    store = ResultStore(url)
    assert store.count() == 0
    rx = DicomReceiver(detector, store, max_frames=1, spool_dir=spool)
    rx.start("127.0.0.1", 0)
    assert rx.wait_idle(120)
    rx.stop()
    assert rx.stats.resumed == 3 and rx.stats.scored == 3
    assert not list(spool.glob("*.dcm"))
    # died after recording but before removing the spool file: on the next start it is answered, not re-added
    shutil.copy(copy, spool / copy.name)
    with DicomReceiver(detector, store, max_frames=1, spool_dir=spool, keep_spooled=True) as rx:
        rx.start("127.0.0.1", 0)
        assert rx.wait_idle(120)
        assert rx.stats.resumed == 1 and rx.stats.cached == 1
    assert (spool / "done" / copy.name).exists() and not list(spool.glob("*.dcm"))
    rows = store.query(limit=None)
    assert sorted(r.sop_instance_uid for r in rows) == sorted(uids)  # exactly one row per instance
    assert all(r.ok and r.source == "dicom" for r in rows)
    store.close()


def test_copies_of_one_instance_in_progress_together_are_one_row(detector, tmp_path):
    """Same SOP Instance UID at once (a re-send, another syntax): the second waits for the first's row."""
    import struct

    from medforensics.dicomnet.spool import Spool

    spool = Spool(tmp_path / "spool")
    for i in range(3):
        f = _ct(tmp_path, f"1.2.826.0.1.3680043.8.498.13{i}")
        raw, meta = f.read_bytes(), pydicom.dcmread(f).file_meta
        (group_length,) = struct.unpack("<I", raw[140:144])
        for _ in range(4):  # all twelve are handed to the engine at once on start
            spool.write(meta, raw[144 + group_length:])
    store = ResultStore(f"sqlite:///{tmp_path / 'rx.db'}")
    with DicomReceiver(detector, store, max_frames=1, spool_dir=spool.folder) as rx:
        rx.start("127.0.0.1", 0)
        assert rx.wait_idle(120)
        assert rx.stats.resumed == 12 and rx.stats.scored == 3 and rx.stats.cached == 9
    assert store.count() == 3
    store.close()


# ---------------------------------------------------------------------------------------------- one key
def test_one_instance_is_one_row_whatever_the_transfer_syntax_or_entry_point(detector, tmp_path):
    from medforensics.engine import ScanEngine, content_key

    uid = "1.2.826.0.1.3680043.8.498.120"
    explicit, implicit, rle = (_ct(tmp_path, uid, ts) for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                                                  RLELossless))
    assert len({content_key(p) for p in (explicit, implicit, rle)}) == 1
    store = ResultStore(f"sqlite:///{tmp_path / 'rx.db'}")
    with DicomReceiver(detector, store, max_frames=1, spool_dir=tmp_path / "spool") as rx:
        rx.start("127.0.0.1", 0)
        # back to back, without waiting for the first to be scored: the second must still find the first's row
        assert _send(rx.port, pydicom.dcmread(explicit))[0].Status == 0
        assert _send(rx.port, pydicom.dcmread(rle), syntaxes=(RLELossless,))[0].Status == 0
        assert _send(rx.port, pydicom.dcmread(implicit), syntaxes=(ImplicitVRLittleEndian,))[0].Status == 0
        if STORESCU:  # dcmtk sends the file in its own transfer syntax
            cfg = storescu_profile([rle], tmp_path / "scu.cfg")
            sent = subprocess.run([STORESCU, "-xf", str(cfg), "MedForensics", "-aec", "MEDFORENSICS", "127.0.0.1",
                                   str(rx.port), str(rle)], capture_output=True, text=True, timeout=60)
            assert sent.returncode == 0, sent.stderr
        assert rx.wait_idle(60)
        assert rx.stats.scored == 1 and rx.stats.cached == 2 + bool(STORESCU)
    engine = ScanEngine(detector, store=store, max_frames=1, workers=0)
    try:
        (from_disk,) = list(engine.scan([explicit]))
    finally:
        engine.close()
    assert from_disk.cached
    (row,) = store.query(limit=None)
    assert row.content_hash == content_key(rle) == from_disk.content_hash and row.source == "dicom"
    store.close()


def test_dicom_listen_rejects_a_bad_allow_list_entry(detector, tmp_path):
    from typer.testing import CliRunner

    from medforensics.cli import app

    model = detector.save(tmp_path / "model")
    res = CliRunner().invoke(app, ["dicom-listen", "--port", "0", "--model", str(model),
                                   "--db", f"sqlite:///{tmp_path / 'cli.db'}", "--spool", str(tmp_path / "spool"),
                                   "--calling-aet", "PACS1", "--allow-peer", "10.0.0.0/8", "--allow-peer", "10.0.0.300"])
    assert res.exit_code == 2
    assert "not an IP address or network: '10.0.0.300'" in " ".join(res.output.split())


def test_a_port_in_use_fails_before_anything_starts(detector, tmp_path):
    from sqlalchemy import select

    from medforensics.store.models import Run

    store = ResultStore(f"sqlite:///{tmp_path / 'rx.db'}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rx = DicomReceiver(detector, store, spool_dir=tmp_path / "spool")
        with pytest.raises(OSError):
            rx.start("127.0.0.1", busy.getsockname()[1])
    assert rx.engine is None and rx.run_id is None
    with store.session() as s:
        assert list(s.scalars(select(Run))) == []  # no run left "running"
    store.close()


def test_a_full_disk_is_a_refusal_the_sender_can_retry(detector, tmp_path, monkeypatch):
    import errno

    store = ResultStore(f"sqlite:///{tmp_path / 'rx.db'}")
    ds = pydicom.dcmread(_ct(tmp_path, "1.2.826.0.1.3680043.8.498.140"))
    with DicomReceiver(detector, store, max_frames=1, spool_dir=tmp_path / "spool") as rx:
        rx.start("127.0.0.1", 0)

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(rx.spool, "write", full)
        (status,) = _send(rx.port, ds)
        assert status.Status == OUT_OF_RESOURCES and "spool" in status.ErrorComment
        assert rx.stats.failed == 1 and store.count() == 0  # not acknowledged, not recorded
        monkeypatch.undo()
        (status,) = _send(rx.port, ds)  # the sender's retry once there is room
        assert status.Status == 0
        assert rx.wait_idle(60)
    assert store.count() == 1
    store.close()
