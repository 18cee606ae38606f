"""DICOM receiver throughput: dcmtk ``storescu`` sends N image instances over loopback to the Storage SCP.

The receiver runs in this process (pynetdicom threads) with a SQLite results store; ``storescu`` is a
separate process. N instances are drawn from the pydicom / pydicom-data sample images (CT, MR, CR,
US, SC; many transfer syntaxes), cycled with fresh SOP Instance UIDs when N exceeds them, so every
instance is new content and is really decoded and scored. A second pass re-sends the same instances
(answered from the store: content-hash dedup).

    python bench/timing/dicom_receiver.py [--n 200] [--model default] [--max-frames 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from _common import emit, peak_rss_mib

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
    files = []
    for i in range(n):
        src = sources[i % len(sources)]
        if i < len(sources):
            files.append(src)
            continue
        ds = pydicom.dcmread(src)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = folder / f"{i:05d}.dcm"
        ds.save_as(out)
        files.append(out)
    return files


def send(files: list[Path], cfg: Path, port: int) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(["storescu", "-xf", str(cfg), "MedForensics", "-nh", "-aec", "MEDFORENSICS", "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default="default", help="model name/dir, or 'tiny' for an untrained width-8 CNN")
    ap.add_argument("--max-frames", type=int, default=16)
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
        with DicomReceiver(det, store, max_frames=args.max_frames) as rx:
            rx.start("127.0.0.1", 0)
            first_s, first = send(files, cfg, rx.port)
            stats1 = rx.stats.to_dict()
            second_s, second = send(files, cfg, rx.port)
            stats2 = rx.stats.to_dict()
        mb = sum(f.stat().st_size for f in files) / 1e6
        result = {
            "model": args.model, "max_frames": args.max_frames, "instances": len(files),
            "distinct_sources": len(sources), "megabytes": round(mb, 1),
            "new_content": {"seconds": round(first_s, 2), "instances_per_s": round(len(files) / first_s, 2),
                            "MB_per_s": round(mb / first_s, 2), "received": stats1["received"],
                            "scored": stats1["scored"], "errors": stats1["errors"], "failed": stats1["failed"],
                            "model_seconds": round(stats1["seconds_scoring"], 2),
                            "storescu_rc": first.returncode},
            "resend_answered_from_store": {"seconds": round(second_s, 2),
                                           "instances_per_s": round(len(files) / second_s, 2),
                                           "cached": stats2["cached"] - stats1["cached"],
                                           "storescu_rc": second.returncode},
            "rows_in_store": store.count(),
            "peak_rss_mib": peak_rss_mib(),
        }
        store.close()
    emit(result, args.json)


if __name__ == "__main__":
    main()
