"""Scan throughput of a model on 256×256 inputs: images/s (score only, score + map) and peak RSS.

    python bench/timing/scan_throughput.py [--model default] [--n 128] [--batch 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import emit, peak_rss_mib

from medforensics.detectors import load_detector


def _scan_files(det, folder: str) -> dict:
    """End-to-end: walk, load, preprocess and score every file of ``folder`` (no maps)."""
    from medforensics.engine import ScanEngine

    t0 = time.perf_counter()
    with ScanEngine(det) as engine:
        results = list(engine.scan([folder]))
    dt = time.perf_counter() - t0
    return {"files": len(results), "file_errors": sum(not r.ok for r in results),
            "files_per_s_end_to_end": round(len(results) / dt, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--files", default=None, help="also time the full scan path (load → score) on this folder")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    det = load_detector(args.model)
    rng = np.random.default_rng(0)
    images = rng.random((args.n, det.preprocessing.channels, 256, 256), dtype=np.float32)
    det.score(images[:2])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, args.n, args.batch):
        det.score(images[i : i + args.batch])
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, args.n, args.batch):
        det.score(images[i : i + args.batch])
        det.anomaly_map(images[i : i + args.batch])
    map_s = time.perf_counter() - t0
    out = {
        "model": args.model, "detector": det.name, "n": args.n, "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "images_per_s_score": round(args.n / score_s, 2),
        "images_per_s_score_and_map": round(args.n / map_s, 2),
        **(_scan_files(det, args.files) if args.files else {}),
        "peak_rss_mib": peak_rss_mib(),
    }
    emit(out, args.json)


if __name__ == "__main__":
    main()
