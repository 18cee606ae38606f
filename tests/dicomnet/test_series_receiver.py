"""Series verdicts in the DICOM receiver: the tracker's rules, and a series sent by pynetdicom / dcmtk storescu."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom")

from medforensics.dicomnet.scp import DicomReceiver  # noqa: E402
from medforensics.dicomnet.series import SeriesTracker  # noqa: E402
from medforensics.results import ScanResult  # noqa: E402
from medforensics.store import ResultStore  # noqa: E402

needs_dcmtk = pytest.mark.requires_tool("storescu", package="dcmtk", version_contains="$dcmtk:")
SERIES, STUDY = "1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.7"


def _storescu() -> str:
    for folder in os.get_exec_path():
        path = shutil.which("storescu", path=folder)
        if path and "$dcmtk:" in subprocess.run([path, "--version"], capture_output=True, text=True).stdout:
            return path
    return "storescu"


# ---------------------------------------------------------------------- the tracker alone
class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _result(i: int, uid: str = SERIES, score: float = 0.9, hot: bool = True) -> ScanResult:
    ev = np.zeros((1, 64, 64), np.float32)
    if hot:
        ev[0, 20:30, 30:40] = score
    return ScanResult(path=f"dicom://A/{uid}.{i}", modality="ct", score=score, threshold=0.5,
                      verdict="fake" if score >= 0.5 else "real", pixel_score=score, frame_maps=ev,
                      frame_positions=[float(i * 5)],
                      meta={"series_uid": uid, "study_uid": STUDY, "sop_instance_uid": f"{uid}.{i}",
                            "instance_number": i + 1, "original_shape": [128, 128]})


def _tracker(clock, emitted, **kw) -> SeriesTracker:
    return SeriesTracker(emitted.append, threshold=0.5, quiet_s=kw.pop("quiet_s", 10.0), clock=clock, **kw)


def test_release_judges_a_series_once_its_instances_are_scored():
    clock, out = Clock(), []
    tr = _tracker(clock, out)
    for i in range(3):
        tr.expect(f"p{i}", SERIES)
    tr.done("p0", _result(0))
    tr.done("p1", _result(1))
    tr.release([SERIES])
    assert tr.judge() == 0  # one instance is still being scored
    tr.done("p2", _result(2))
    assert tr.judge() == 1 and tr.open_series == []
    (rec,) = out
    assert rec["series_uid"] == SERIES and rec["study_uid"] == STUDY and rec["n_slices"] == 3
    assert rec["verdict"] == "fake" and rec["threshold"] == 0.5
    (region,) = rec["regions"]
    assert (region["first_slice"], region["last_slice"]) == (0, 2)


def test_quiet_period_and_a_late_instance_reopens_the_series():
    clock, out = Clock(), []
    tr = _tracker(clock, out, quiet_s=10.0)
    tr.done("p0", _result(0, score=0.1, hot=False))  # resumed from the spool: never announced
    tr.done("p1", _result(1, score=0.1, hot=False))
    clock.t = 9.9
    assert tr.judge() == 0
    clock.t = 10.0
    assert tr.judge() == 1 and out[-1]["verdict"] == "real" and out[-1]["regions"] == []
    clock.t = 30.0
    tr.expect("p2", SERIES)  # a late instance: the judged series comes back with its evidence
    tr.done("p2", _result(2))
    clock.t = 40.0
    assert tr.judge() == 1
    rec = out[-1]
    assert rec["n_slices"] == 3 and rec["verdict"] == "fake" and rec["regions"][0]["first_slice"] == 2
    assert not any(f["code"] == "evidence_not_kept" for f in rec["findings"])


def test_single_instance_is_no_series_and_failures_are_not_awaited():
    clock, out = Clock(), []
    tr = _tracker(clock, out, quiet_s=0.0)
    tr.expect("a", "9.9")
    tr.expect("b", "9.9")
    tr.done("a", _result(0, uid="9.9"))
    tr.done("b", None)  # failed: no longer awaited
    assert tr.judge() == 0 and out == [] and tr.open_series == []  # judged, but one slice is not a series


def test_max_slices_caps_what_a_series_keeps():
    clock, out = Clock(), []
    tr = _tracker(clock, out, max_slices=3)
    for i in range(5):
        tr.done(i, _result(i))
    tr.stop()  # stop judges every open series
    (rec,) = out
    assert rec["n_slices"] == 3
    assert any(f["code"] == "slices_not_scored" and "2 instance(s)" in f["message"] for f in rec["findings"])


def test_evicted_series_is_reloaded_from_the_store_without_evidence():
    clock, out = Clock(), []
    stored = [dict(_result(i).__dict__) for i in range(2)]

    def reload(uid):
        assert uid == SERIES
        return [ScanResult(**{k: v for k, v in d.items() if k not in ("frame_maps", "frame_positions")})
                for d in stored]

    tr = _tracker(clock, out, keep_closed=0, reload=reload)
    tr.done("p2", _result(2))
    clock.t = 11.0
    assert tr.judge() == 1
    rec = out[-1]
    assert rec["n_slices"] == 3 and rec["regions"] == []  # the earlier slices' evidence maps were not kept
    assert any(f["code"] == "evidence_not_kept" and f["message"].startswith("2 earlier") for f in rec["findings"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="quiet_s"):
        SeriesTracker(print, threshold=0.5, quiet_s=-1)
    with pytest.raises(ValueError, match="max_slices"):
        SeriesTracker(print, threshold=0.5, max_slices=1)


# ---------------------------------------------------------------------- through the network
@pytest.fixture(scope="module")
def detector(tiny_detector):
    return tiny_detector


def write_series(folder: Path, n: int, *, series: str = SERIES, first: int = 0) -> list[Path]:
    """``n`` slices of one CT series from pydicom's CT_small.dcm, 5 mm apart along the slice normal."""
    src = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(first, first + n):
        ds = pydicom.dcmread(src)
        uid = f"{series}.{i + 1}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, STUDY
        ds.InstanceNumber = i + 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * i]
        ds.SliceLocation = z + 5.0 * i
        arr = ds.pixel_array.copy()
        arr[10:20, 10:20] += i  # distinct pixels per slice
        ds.PixelData = arr.tobytes()
        path = folder / f"{uid}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def _wait_for(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def _send(port: int, files: list[Path]) -> list[int]:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    scu = AE(ae_title="SCANNER")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", port, ae_title="MEDFORENSICS")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    finally:
        assoc.release()


def test_pynetdicom_series_gets_its_verdict_on_release_and_a_late_instance_updates_it(detector, tmp_path):
    store = ResultStore(f"sqlite:///{tmp_path / 'rx.db'}")
    files = write_series(tmp_path / "series", 4)
    late = write_series(tmp_path / "late", 1, first=4)
    seen = []
    # τ near 0: every voxel is evidence, so the whole series is one 3-D region (what we can check exactly)
    with DicomReceiver(detector, store, threshold=1e-6, max_frames=1, spool_dir=tmp_path / "spool",
                       series_quiet_s=600, on_series=seen.append) as rx:
        rx.start("127.0.0.1", 0)
        t0 = time.monotonic()
        assert _send(rx.port, files) == [0] * 4
        row = _wait_for(lambda: store.get_series(SERIES))  # long before the 600 s quiet period
        assert time.monotonic() - t0 < 120
        assert store.count() == 4 and store.count_series() == 1
        assert (row.n_slices, row.verdict, row.source, row.study_uid, row.model_id) == (
            4, "fake", "dicom", STUDY, rx.model_id)
        assert row.modality == "ct" and len(row.slice_scores) == 4 and row.threshold == pytest.approx(1e-6)
        (region,) = row.regions
        assert (region["first_slice"], region["last_slice"]) == (0, 3) and region["radius"] > 0
        assert seen and seen[0].series_uid == SERIES
        # a late instance, another association: the series is re-evaluated, its row updated
        assert _send(rx.port, late) == [0]
        updated = _wait_for(lambda: (r := store.get_series(SERIES)) and r.n_slices == 5 and r)
        assert updated.id == row.id and store.count_series() == 1 and updated.regions[0]["last_slice"] == 4
        assert rx.stats.series == 2 and rx.series.open_series == []
    store.close()


def test_aborted_association_is_judged_after_the_quiet_period(detector, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    store = ResultStore(f"sqlite:///{tmp_path / 'rx.db'}")
    files = write_series(tmp_path / "series", 3, series=SERIES + ".2")
    with DicomReceiver(detector, store, threshold=0.999999, max_frames=1, spool_dir=tmp_path / "spool",
                       series_quiet_s=1.0) as rx:
        rx.start("127.0.0.1", 0)
        scu = AE(ae_title="SCANNER")
        scu.add_requested_context(CTImageStorage)
        assoc = scu.associate("127.0.0.1", rx.port, ae_title="MEDFORENSICS")
        assert assoc.is_established
        assert [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files] == [0] * 3
        assoc.abort()  # no release: only the quiet period tells the series is complete
        row = _wait_for(lambda: store.get_series(SERIES + ".2"))
        assert row.n_slices == 3 and row.verdict == "real" and row.regions == []
    store.close()


@needs_dcmtk
def test_storescu_study_gets_a_series_verdict_right_after_release(detector, tmp_path, monkeypatch):
    import http.server
    import json
    import threading

    hooked = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            hooked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = ResultStore(f"sqlite:///{tmp_path / 'rx.db'}")
    files = write_series(tmp_path / "series", 5, series=SERIES + ".3")
    try:
        with DicomReceiver(detector, store, threshold=1e-6, max_frames=1, spool_dir=tmp_path / "spool",
                           series_quiet_s=600, webhook=f"http://127.0.0.1:{server.server_address[1]}/h") as rx:
            rx.start("127.0.0.1", 0)
            sent = subprocess.run([_storescu(), "-aec", "MEDFORENSICS", "127.0.0.1", str(rx.port),
                                   *map(str, files)], capture_output=True, text=True, timeout=120)
            assert sent.returncode == 0, sent.stderr
            row = _wait_for(lambda: store.get_series(SERIES + ".3"))
            assert row.n_slices == 5 and row.verdict == "fake" and len(row.regions) == 1
            rx.webhook.flush(10)
            events = [h for h in hooked if h["event"] == "medforensics.series"]
            assert len(events) == 1 and events[0]["series"]["series_uid"] == SERIES + ".3"
            assert events[0]["series"]["id"] == row.id and "patient" not in json.dumps(events[0]).lower()
    finally:
        server.shutdown()
    store.close()


def test_dicom_listen_prints_and_stores_series_verdicts(tmp_path, tiny_model_dir, free_port):
    import signal
    import socket
    import threading

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    from typer.testing import CliRunner

    from medforensics.cli import app

    model, port = tiny_model_dir, free_port
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    files = write_series(tmp_path / "series", 3, series=SERIES + ".4")
    statuses: list = []

    def client() -> None:  # a PACS sending one series over two associations (so only the quiet period ends it)
        try:
            deadline = time.monotonic() + 60
            ae = AE(ae_title="SCANNER")
            ae.add_requested_context(Verification)
            while True:
                assoc = ae.associate("127.0.0.1", port, ae_title="MEDFORENSICS")
                if assoc.is_established:
                    assoc.release()
                    break
                if time.monotonic() > deadline:
                    return
                time.sleep(0.2)
            from pynetdicom import AE as SCU
            from pynetdicom.sop_class import CTImageStorage

            scu = SCU(ae_title="SCANNER")
            scu.add_requested_context(CTImageStorage)
            for part in (files[:2], files[2:]):
                assoc = scu.associate("127.0.0.1", port, ae_title="MEDFORENSICS")
                statuses.extend(int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in part)
                assoc.abort()
            store = ResultStore(url)
            try:
                _wait_for(lambda: store.get_series(SERIES + ".4"), 60)
            finally:
                store.close()
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=client)
    thread.start()
    res = CliRunner().invoke(app, ["dicom-listen", "--host", "127.0.0.1", "--port", str(port), "--model", str(model),
                                   "--db", url, "--max-frames", "1", "--spool", str(tmp_path / "spool"),
                                   "--series-quiet-s", "0.5", "--max-slices", "8"])
    thread.join()
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert statuses == [0, 0, 0]
    # judged once (or, on a loaded machine, also after the first association and then updated)
    assert f"series {SERIES}.4" in out and "3 slices" in out and re.search(r" [12] series verdicts", out)
    store = ResultStore(url)
    row = store.get_series(SERIES + ".4")
    assert row.n_slices == 3 and row.source == "dicom" and row.verdict in ("fake", "real")
    store.close()
