"""DICOM receiver throughput and memory: dcmtk ``storescu`` sends N image instances over loopback to the Storage SCP.

The receiver runs in this process (pynetdicom threads; the scan engine decodes in worker processes)
with a SQLite results store; ``storescu`` is a separate process. N instances are drawn from the
pydicom / pydicom-data sample images (CT, MR, CR, US, SC; many transfer syntaxes), cycled with fresh
SOP Instance UIDs when N exceeds them, so every instance is new content and is really decoded and
scored. Reported:

- ``acknowledged``: storescu's wall time — the receiver answers each C-STORE once the instance is
  spooled (fsync + rename), before scoring;
- ``scored``: time from the first send until every instance is recorded (decode + model + store);
- ``resend_answered_from_store``: the same instances again (one content key: answered, no new row);
- ``decode_bomb`` (``--bomb``): three 7000×7000 RGB deflated secondary-capture instances (about
  143 KB each, about 4.7 GB to decode) sent at once: their statuses and the receiver process's RSS
  growth while handling them.

    python bench/timing/dicom_receiver.py [--n 200] [--model default] [--max-frames 16] [--bomb] [--json out.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from _common import emit, peak_rss_mib

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medforensics.detectors import create_detector, load_detector
from medforensics.dicomnet.scp import DicomReceiver, image_storage_classes, storescu_profile
from medforensics.io import all_sample_dicoms, load_frames
from medforensics.store import ResultStore


def decodable_images() -> list[Path]:
    """Sample files that are image instances medforensics can decode."""
    accepted = set(image_storage_classes().values())
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in all_sample_dicoms():
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
                if str(ds.get("SOPClassUID", "")) not in accepted or "TransferSyntaxUID" not in ds.file_meta:
                    continue
                load_frames(p, max_frames=1)
            except Exception:
                continue
            out.append(p)
    return out


def make_instances(sources: list[Path], n: int, folder: Path) -> list[Path]:
    """N files: the sources in turn, each copy with a new SOP Instance UID (new content)."""
    files = list(sources[:n])
    writable = list(sources)
    i = len(files)
    while len(files) < n and writable:
        src = writable[i % len(writable)]
        ds = pydicom.dcmread(src)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = folder / f"{i:05d}.dcm"
        try:
            ds.save_as(out)
        except (TypeError, ValueError) as exc:  # a sample pydicom can read but not write back (e.g. unknown VR)
            print(f"skipping {src.name} as a copy source: {exc}", file=sys.stderr)
            writable.remove(src)
            out.unlink(missing_ok=True)
            continue
        files.append(out)
        i += 1
    return files


def send(files: list[Path], cfg: Path, port: int) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(["storescu", "-xf", str(cfg), "MedForensics", "-nh", "-aec", "MEDFORENSICS", "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def deflated_bomb(folder: Path, side: int = 7000) -> Path:
    """A side×side RGB secondary capture of one colour, deflated (the receiver must not decode it)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.full((side, side, 3), 200, np.uint8).tobytes()
    out = folder / "bomb.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def bomb_run(rx: DicomReceiver, folder: Path) -> dict:
    """Send three deflated 7000×7000 RGB instances at once (file bytes streamed as they are)."""
    from pynetdicom import AE, _config
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage

    bomb = deflated_bomb(folder)
    copies = []
    for i in range(3):
        ds = pydicom.dcmread(bomb)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        p = folder / f"bomb{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        copies.append(p)
    del ds
    _config.STORE_SEND_CHUNKED_DATASET = True  # the senders stream the deflated files, never inflate them
    statuses: list = [None] * 3
    before = rss_mib()
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.01)

    def one(i: int) -> None:
        ae = AE(ae_title=f"BOMB{i}")
        ae.add_requested_context(SecondaryCaptureImageStorage, DeflatedExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="MEDFORENSICS")
        try:
            st = assoc.send_c_store(copies[i])
            statuses[i] = (f"0x{int(st.Status):04X}", str(st.get("ErrorComment", "")))
        finally:
            assoc.release()

    w = threading.Thread(target=watch)
    w.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    rx.wait_idle(60)
    done.set()
    w.join()
    _config.STORE_SEND_CHUNKED_DATASET = False
    return {"file_bytes": bomb.stat().st_size, "decoded_bytes": 7000 * 7000 * 3, "statuses": statuses,
            "seconds": round(seconds, 2), "rss_before_mib": round(before, 1),
            "rss_growth_mib": round(peak[0] - before, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default="default", help="model name/dir, or 'tiny' for an untrained width-8 CNN")
    ap.add_argument("--max-frames", type=int, default=16)
    ap.add_argument("--bomb", action="store_true", help="also send three 7000×7000 deflated RGB instances at once")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    det = (create_detector("forensic_cnn", seed=0, width=8, patch_size=64, patch_stride=64, progress=False)
           if args.model == "tiny" else load_detector(args.model))
    sources = decodable_images()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_instances(sources, args.n, tmp)
        cfg = storescu_profile(files, tmp / "scu.cfg")
        store = ResultStore(f"sqlite:///{tmp / 'bench.db'}")
        with DicomReceiver(det, store, max_frames=args.max_frames, spool_dir=tmp / "spool") as rx:
            rx.start("127.0.0.1", 0)
            t0 = time.perf_counter()
            ack_s, first = send(files, cfg, rx.port)
            rx.wait_idle()
            scored_s = time.perf_counter() - t0
            stats1 = rx.stats.to_dict()
            t0 = time.perf_counter()
            second_ack_s, second = send(files, cfg, rx.port)
            rx.wait_idle()
            second_s = time.perf_counter() - t0
            stats2 = rx.stats.to_dict()
            bomb = bomb_run(rx, tmp) if args.bomb else None
            stats3 = rx.stats.to_dict()
        mb = sum(f.stat().st_size for f in files) / 1e6
        n = len(files)
        result = {
            "model": args.model, "max_frames": args.max_frames, "instances": n,
            "distinct_sources": len(sources), "megabytes": round(mb, 1),
            "new_content": {"acknowledged_seconds": round(ack_s, 2), "acknowledged_per_s": round(n / ack_s, 2),
                            "scored_seconds": round(scored_s, 2), "scored_per_s": round(n / scored_s, 2),
                            "MB_per_s": round(mb / scored_s, 2), "received": stats1["received"],
                            "scored": stats1["scored"], "cached": stats1["cached"], "errors": stats1["errors"],
                            "failed": stats1["failed"],
                            "storescu_rc": first.returncode},
            "resend_answered_from_store": {"acknowledged_seconds": round(second_ack_s, 2),
                                           "seconds": round(second_s, 2),
                                           "instances_per_s": round(n / second_s, 2),
                                           "cached": stats2["cached"] - stats1["cached"],
                                           "storescu_rc": second.returncode},
            "rows_in_store": store.count(),
            "peak_rss_mib": peak_rss_mib(),
        }
        if bomb is not None:
            bomb["refused"] = stats3["refused"] - stats2["refused"]
            result["decode_bomb"] = bomb
        store.close()
    emit(result, args.json)


if __name__ == "__main__":
    main()
