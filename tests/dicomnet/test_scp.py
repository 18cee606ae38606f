from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest

pytest.importorskip("pynetdicom")

from medforensics.dicomnet.scp import (  # noqa: E402
    CANNOT_UNDERSTAND, DicomReceiver, image_storage_classes, storescu_profile)
from medforensics.io import all_sample_dicoms  # noqa: E402
from medforensics.store import ResultStore  # noqa: E402

#: dcmtk's storescu/echoscu play the modality: tests marked with this are skipped without them (failed in CI).
#: Told apart by ``--version`` from pynetdicom's Python look-alikes of the same names in the virtualenv.
needs_dcmtk = pytest.mark.requires_tool("storescu", "echoscu", package="dcmtk", version_contains="$dcmtk:")


def _dcmtk(command: str) -> str:
    for folder in os.get_exec_path():
        path = shutil.which(command, path=folder)
        if path and "$dcmtk:" in subprocess.run([path, "--version"], capture_output=True, text=True).stdout:
            return path
    return command  # not installed: the tests using it are skipped by needs_dcmtk


STORESCU, ECHOSCU = _dcmtk("storescu"), _dcmtk("echoscu")
#: storescu's messages for files dcmtk itself cannot parse (they are never sent)
DCMTK_REFUSED = re.compile(r"E: (?:Bad DICOM file|No SOP Class or Instance UID in file): (.+?)(?::|$)", re.M)


def sample_images() -> list[Path]:
    """Every pydicom / pydicom-data file that is an image instance (image SOP class, pixel data, file meta)."""
    accepted = set(image_storage_classes().values())
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in all_sample_dicoms():
            try:
                ds = pydicom.dcmread(p, force=True, defer_size=256)
            except Exception:
                continue
            meta = getattr(ds, "file_meta", None)
            if (str(ds.get("SOPClassUID", "")) in accepted and meta is not None and "TransferSyntaxUID" in meta
                    and "PixelData" in ds):
                out.append(p)
    return out


@pytest.fixture(scope="module")
def detector(tiny_detector):
    return tiny_detector


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def webhook_url():
    Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


@needs_dcmtk
def test_storescu_every_sample_image_lands_in_the_store(detector, tmp_path, webhook_url):
    files = sample_images()
    assert len(files) > 100  # CT, MR, CR, US (multi-frame), SC, in many transfer syntaxes
    store = ResultStore(f"sqlite:///{tmp_path / 'scp.db'}")
    with DicomReceiver(detector, store, max_frames=1, webhook=webhook_url, spool_dir=tmp_path / "spool") as rx:
        rx.start("127.0.0.1", 0)
        echo = _run(ECHOSCU, "-aec", "MEDFORENSICS", "127.0.0.1", str(rx.port))
        assert echo.returncode == 0, echo.stderr
        cfg = storescu_profile(files, tmp_path / "scu.cfg")  # propose each file's own transfer syntax
        sent = _run(STORESCU, "-xf", str(cfg), "MedForensics", "-nh", "-aec", "MEDFORENSICS", "127.0.0.1",
                    str(rx.port), *map(str, files))
        assert sent.returncode == 0, sent.stderr[-3000:]
        refused = {Path(m).resolve() for m in DCMTK_REFUSED.findall(sent.stderr)}
        assert len(refused) <= 6, refused  # a few deliberately broken samples that dcmtk cannot parse
        assert "Store Failed" not in sent.stderr.replace("Store Failed, file", "")
        assert rx.wait_idle(300)  # acknowledged at once, scored asynchronously
        rx.webhook.flush(10)
        stats = rx.stats.to_dict()
    expected = {}
    for p in files:
        if p.resolve() not in refused:
            expected.setdefault(str(pydicom.dcmread(p, stop_before_pixels=True, force=True).SOPInstanceUID), p)
    stored = {rec.path.rsplit("/", 1)[-1]: rec for rec in store.query(limit=None)}  # dicom://<AE>/<SOP UID>
    missing = {uid: str(p) for uid, p in expected.items() if uid not in stored}
    assert not missing
    assert all(rec.source == "dicom" and len(rec.content_hash) == 64 for rec in stored.values())
    assert all(r.sop_instance_uid == uid for uid, r in stored.items() if r.ok)
    assert stats["echoes"] == 1 and stats["received"] == len(files) - len(refused) and stats["failed"] == 0
    assert not list((tmp_path / "spool").glob("*.dcm"))  # every recorded instance left the spool
    scored = [r for r in stored.values() if r.ok]
    assert len(scored) > 80 and {"ct", "mri", "xray", "ultrasound"} <= {r.modality for r in scored}
    assert all(0.0 <= r.score <= 1.0 for r in scored)
    # undecodable pixels are recorded with a reason, not dropped
    assert all(r.error for r in stored.values() if not r.ok)
    # flagged results went to the webhook, without patient names
    flagged = {r.sop_instance_uid for r in store.query(verdict="fake", limit=None)}
    results = [p for p in Hook.received if p["event"] != "medforensics.series"]  # series verdicts: their own tests
    hooked = {p["result"]["sop_instance_uid"] for p in results}
    assert flagged
    assert hooked == flagged and all(p["event"] == "medforensics.flagged" for p in results)
    assert all("patient_name" not in p["result"] for p in results)
    store.close()


def _ct_file(tmp_path: Path, uid: str) -> Path:
    src = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    out = tmp_path / f"{uid}.dcm"
    ds.save_as(out)
    return out


def _broken_file(path: Path, uid: str) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    # (0008,1140) SQ of undefined length whose "item" has a wrong tag: no parser can go on from there
    with open(path, "ab") as fh:
        fh.write(b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff\x12\x34\x56\x78\x10\x00\x00\x00" + b"A" * 32)
    return path


@needs_dcmtk
def test_survives_garbage_aborts_and_malformed_datasets(detector, tmp_path, monkeypatch):
    from pynetdicom import AE, _config
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.sop_class import CTImageStorage

    store = ResultStore(f"sqlite:///{tmp_path / 'scp.db'}")
    with DicomReceiver(detector, store, max_frames=1, spool_dir=tmp_path / "spool") as rx:
        rx.start("127.0.0.1", 0)
        port = rx.port
        # 1. garbage bytes instead of an A-ASSOCIATE-RQ
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"\x01\x00\xff\xff\xff\xff" + os.urandom(2048))
            time.sleep(0.2)
        # 2. an association aborted half-way
        scu = AE(ae_title="ABORTER")
        scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", port, ae_title="MEDFORENSICS")
        try:
            assert assoc.is_established
        finally:
            assoc.abort()
        # 3. a wrong called AE title is rejected, not crashed on
        assoc = scu.associate("127.0.0.1", port, ae_title="SOMEONEELSE")
        assert not assoc.is_established
        # 4. a data set that cannot be parsed: valid file meta and UIDs, then a sequence with a broken item
        good = _ct_file(tmp_path, "1.2.826.0.1.3680043.8.498.1")
        bad = _broken_file(tmp_path / "bad.dcm", "1.2.826.0.1.3680043.8.498.1")
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as they are
        assoc = scu.associate("127.0.0.1", port, ae_title="MEDFORENSICS")
        try:
            assert assoc.is_established
            status = assoc.send_c_store(bad)
        finally:
            assoc.release()
        assert status is not None and status.Status == CANNOT_UNDERSTAND
        # the server is still alive: echo and a good store work
        assert _run(ECHOSCU, "-aec", "MEDFORENSICS", "127.0.0.1", str(port)).returncode == 0
        sent = _run(STORESCU, "-aec", "MEDFORENSICS", "127.0.0.1", str(port), str(good))
        assert sent.returncode == 0, sent.stderr
        assert rx.wait_idle(120)
    rec = store.query(sop_instance_uid="1.2.826.0.1.3680043.8.498.1")
    assert len(rec) == 2 and sorted(r.ok for r in rec) == [False, True]  # the bad one recorded with its error
    assert "cannot parse" in next(r.error for r in rec if not r.ok)
    assert next(r for r in rec if r.ok).modality == "ct"
    store.close()


@needs_dcmtk
def test_dicom_listen_cli(tmp_path, tiny_model_dir, free_port):
    from typer.testing import CliRunner

    from medforensics.cli import app

    model, port = tiny_model_dir, free_port
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    good = _ct_file(tmp_path, "1.2.826.0.1.3680043.8.498.2")
    sent: list[int] = []

    def client() -> None:  # a PACS: wait for the receiver, send one instance, then Ctrl-C the receiver
        try:
            deadline = time.monotonic() + 60
            while _run(ECHOSCU, "-aec", "MEDFORENSICS", "127.0.0.1", str(port)).returncode != 0:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.2)
            sent.append(_run(STORESCU, "-aec", "MEDFORENSICS", "127.0.0.1", str(port), str(good)).returncode)
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=client)
    thread.start()
    res = CliRunner().invoke(app, ["dicom-listen", "--host", "127.0.0.1", "--port", str(port), "--model", str(model),
                                   "--db", url, "--max-frames", "1", "--spool", str(tmp_path / "spool")])
    thread.join()
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())  # rich wraps lines
    assert sent == [0] and "1 instances received, 0 resumed from the spool (1 scored" in out and "1 echoes" in out
    store = ResultStore(url)
    (rec,) = store.query(sop_instance_uid="1.2.826.0.1.3680043.8.498.2")
    assert rec.ok and rec.patient_ref and rec.patient_name is None and rec.source == "dicom"
    assert rec.patient_ref not in out  # PHI (even hashed) is not printed
    from sqlalchemy import select

    from medforensics.store.models import Run

    with store.session() as s:  # the receiver's session is a finished run of kind "dicom"
        runs = [(r.kind, r.status, r.n_ok) for r in s.scalars(select(Run))]
    assert runs == [("dicom", "finished", 1)]
    store.close()


def test_webhook_delivery_and_failures_never_raise(webhook_url):
    from medforensics.dicomnet.webhook import WebhookSender, check_url

    with pytest.raises(ValueError, match="http"):
        check_url("ftp://example.org/x")
    ok = WebhookSender(webhook_url)
    ok.submit({"event": "medforensics.flagged", "result": {"id": "r1"}})
    ok.close()
    assert ok.sent == 1 and Hook.received == [{"event": "medforensics.flagged", "result": {"id": "r1"}}]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    bad = WebhookSender(dead, retries=1, backoff=0.01, timeout=1)
    bad.submit({"event": "medforensics.flagged", "result": {"id": "r2"}})
    bad.close()
    assert bad.sent == 0 and bad.failed == 1
