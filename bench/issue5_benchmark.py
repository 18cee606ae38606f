"""Issue 5: build the development benchmark from ../shared/data and run every protocol.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/issue5_benchmark.py --quick 1 \
        --out runs/bench/dev-quick --json bench/results/issue5_quick_run.json

Prints the generator training/sampling times, the format-statistics check and the result tables
(Markdown), and writes them as JSON. The run is resumable (``--resume``); ``--quick F`` uses the
config's ``quick_overrides`` scaled by F (see bench/dev_benchmark.yaml), no ``--quick`` = the full
development config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mib  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(Path(__file__).with_name("dev_benchmark.yaml")))
    ap.add_argument("--quick", type=float, default=None, help="quick factor (omit for the full config)")
    ap.add_argument("--out", default=None, help="run folder (default: the config's out, + '-quick')")
    ap.add_argument("--resume", action="store_true", help="continue an earlier run in --out")
    ap.add_argument("--json", default=None, help="write the summary JSON here")
    ap.add_argument("--tables", default=None, help="copy the Markdown tables here")
    args = ap.parse_args()

    from medforensics.benchmark.config import RunConfig
    from medforensics.benchmark.runner import run_config

    cfg = RunConfig.load(args.config, quick=args.quick)
    out = Path(args.out or (cfg.out + ("-quick" if args.quick else "")))
    t0 = time.time()
    summary = run_config(cfg, out, resume=args.resume, show_progress=False)
    wall = round(time.time() - t0, 1)

    gens = []
    for p in sorted((out / "generators").glob("*/bench_generator.json")):
        info = json.loads(p.read_text())
        k = info["key"]
        gens.append({"generator": info["name"], "family": k["family"], "modality": k["modality"],
                     "resolution": k["resolution"], "steps": k["steps"], "train_images": info["n_train_images"],
                     "train_s": info["train_seconds"], "s_per_step": round(info["train_seconds"] / max(1, k["steps"]), 3),
                     "samples": info["n_samples"], "sample_s": info["sample_seconds"],
                     "s_per_sample": info["seconds_per_sample"], "parameters": sum(info["parameters"].values())})
    build = json.loads((out / "benchmark" / "build.json").read_text()) if (out / "benchmark" / "build.json").is_file() else {}
    tables_md = (out / "results" / "tables.md").read_text()
    if args.tables:
        Path(args.tables).write_text(tables_md)
    print(tables_md)
    result = {
        "benchmark": "issue5_dev_benchmark",
        "config": args.config,
        "quick": args.quick,
        "out": str(out),
        "wall_s": wall,
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
               f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "peak_rss_mib": peak_rss_mib(),
        "run": {k: v for k, v in summary.items() if k != "report"},
        "generators": gens,
        "benchmark_counts": build.get("summary", {}),
        "format_check": {k: build.get("format_check", {}).get(k) for k in ("passed", "feature_auc", "container_lr_auc",
                                                                           "failures", "warnings")},
        "records": str(out / "results" / "records.csv"),
        "report": summary.get("report"),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
