"""Mutation fuzzing of every reader: N mutated files → ok / each error kind / crashes / hangs / seconds.

    python bench/timing/reader_fuzz.py [--n 10000] [--seed 0] [--timeout 30] [--json out.json] [--keep DIR]

Seeds are pydicom's test files (uncompressed, RLE, JPEG baseline/extended/lossless, JPEG 2000,
JPEG-LS, deflate) plus a PNG, a JPEG and a NIfTI drawn from ``--seed``
(:mod:`medforensics.io.mutation`). Each file is loaded with ``load_frames`` in a child process
that is restarted after a crash; anything but frames or an ``UnreadableImageError`` is listed
under ``problems`` with the file name (kept with ``--keep`` to reproduce it).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import emit

from medforensics.io.mutation import check_files, write_mutations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="mutated files to write and load")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds one file may take before it counts as a hang")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, help="write the files here (kept) instead of a temporary folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="reader_fuzz_") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        paths = write_mutations(folder, args.n, seed=args.seed)
        report = check_files(paths, timeout_s=args.timeout)
    out = {"n": args.n, "seed": args.seed, **report.to_dict()}
    out["crashes"] = report.outcomes.get("crash", 0)
    out["hangs"] = report.outcomes.get("hang", 0)
    emit(out, args.json)


if __name__ == "__main__":
    main()
