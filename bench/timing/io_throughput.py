"""I/O throughput alone: io.load (+ standardise to 256×256) on sample DICOMs and shared PNGs.

    python bench/timing/io_throughput.py [--repeat 3] [--png-limit 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import emit, peak_rss_mib

from medforensics.io import UnreadableImageError, all_sample_dicoms, load_frames, standardise


def _throughput(paths: list[Path], repeat: int) -> dict:
    n_img, errors, t0 = 0, 0, time.perf_counter()
    for _ in range(repeat):
        for p in paths:
            try:
                for im in load_frames(p, max_frames=16):
                    standardise(im.pixels, 256)
                    n_img += 1
            except UnreadableImageError:
                errors += 1
    dt = time.perf_counter() - t0
    return {"files": len(paths) * repeat, "images": n_img, "errors": errors, "seconds": round(dt, 3),
            "images_per_s": round(n_img / dt, 1) if dt else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--png-limit", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {"dicom": _throughput(all_sample_dicoms(), args.repeat)}
    try:
        from medforensics.data import shared_data_dir

        pngs = sorted(shared_data_dir().glob("real/**/*.png"))[: args.png_limit]
        out["png"] = _throughput(pngs, args.repeat)
    except FileNotFoundError as err:
        out["png"] = {"skipped": str(err)}
    out["peak_rss_mib"] = peak_rss_mib()
    emit(out, args.json)


if __name__ == "__main__":
    main()
