"""How fast does medforensics scan, end to end, and does memory stay flat? (``make bench``)

One run prints side by side, and writes as JSON and a Markdown table:

- **decode limit**: files/s of decoding + preprocessing alone, through the engine's decode workers
  (what the machine can read; the scan cannot be faster);
- **scan, end to end**: the engine (``medforensics scan``'s path: series mode and DICOM header
  forensics on, as the CLI runs by default) over files on disk, score + heat-map, results streamed
  to a JSON file, start-up (model load, worker start) excluded — for the
  default model on 256×256 PNGs and on 512×512 CT DICOMs, and for ``btd-ct`` on the CT DICOMs;
  the ratio scan / decode limit;
- **peak RSS** of the scanning process and its decode workers at 1k and 10k files (must be flat);
- **service**: requests/s and p50/p95 latency at 1, 8 and 32 clients (``service_load.py``);
- **DICOM receiver**: instances/s sent with dcmtk's ``storescu`` (``dicom_receiver.py``).

Each measurement runs in its own process (clean RSS). Inputs: real PNGs and the CT series of the
shared data (``$MEDFORENSICS_SHARED_DATA``, default ``../shared/data``), linked (not copied) into a
temporary folder as many times as needed.

    python bench/timing/scan_speed.py [--quick] [--json bench/results/scan_speed.json] [--md …]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def shared_data() -> Path:
    return Path(os.environ.get("MEDFORENSICS_SHARED_DATA", REPO.parent / "shared" / "data"))


def corpus(kind: str, n: int, folder: Path) -> Path:
    """``n`` links to real files of ``kind`` ("png": 256×256 shared PNGs; "ct": 512×512 CT DICOM slices)."""
    data = shared_data()
    if kind == "png":
        sources = sorted(p for p in (data / "real").rglob("*.png"))
    else:
        series = ["NKI-RT__DecideDocker", "pyvista__vtk-data", "plotly__dash-vtk"]
        sources = sorted(p for s in series for p in (data / "volumes" / s).rglob("*") if p.is_file()
                         and p.suffix.lower() in (".dcm", "") and not p.name.startswith("."))
    if not sources:
        raise SystemExit(f"no {kind} inputs under {data}: set MEDFORENSICS_SHARED_DATA")
    out = folder / f"{kind}-{n}"
    if out.exists():
        return out
    out.mkdir(parents=True)
    for i in range(n):
        sub = out / f"d{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        src = sources[i % len(sources)]
        (sub / f"{i:06d}{src.suffix or '.dcm'}").symlink_to(src)
    return out


def peak_rss_mib_with_children() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + kids) / 1024, 1)


# --------------------------------------------------------------------------- child measurements
def child_decode(folder: Path, workers: int, headers: bool) -> dict:
    from medforensics.detectors import load_detector
    from medforensics.engine import DecodePool, expand_inputs
    from medforensics.engine.decode import DecodeOptions

    det = load_detector("default")
    files = [i.path for i in expand_inputs([folder])]
    with DecodePool(det.preprocessing, DecodeOptions(max_frames=16, headers=headers), workers=workers) as pool:
        pool.submit(-1, files[0])
        pool.get(timeout=60)  # warm-up: workers started
        t0 = time.perf_counter()
        sent = got = errors = 0
        while got < len(files):
            while sent < len(files) and pool.capacity > 0:
                pool.submit(sent, files[sent])
                sent += 1
            for d in pool.get(timeout=0.5):
                got += 1
                errors += d.error is not None
        dt = time.perf_counter() - t0
    return {"files": len(files), "errors": errors, "seconds": round(dt, 2), "files_per_s": round(len(files) / dt, 1),
            "decode_workers": workers, "header_forensics": headers}


def child_scan(folder: Path, model: str, workers: int | None, batch: int, maps: bool) -> dict:
    from medforensics.detectors import load_detector
    from medforensics.engine import ScanEngine
    from medforensics.outputs import StreamWriters

    det = load_detector(model)
    out = Path(tempfile.mkdtemp()) / "scan.json"
    with ScanEngine(det, with_maps=maps, workers=workers, batch_size=batch, series=True, headers=True) as engine:
        warm = next(iter(engine.scan([next(folder.rglob("*.*"))])))  # start-up: workers, first batch
        assert warm is not None
        t0 = time.perf_counter()
        n = errors = 0
        with StreamWriters(out, None, {"model": model, "detector": det.name, "threshold": engine.threshold}) as w:
            for res in engine.scan([folder]):
                w.write(res)
                n += 1
                errors += not res.ok
        dt = time.perf_counter() - t0
        workers_used = engine.workers
    import torch

    return {"model": model, "files": n, "errors": errors, "seconds": round(dt, 2), "files_per_s": round(n / dt, 1),
            "heatmaps": maps, "batch_size": batch, "decode_workers": workers_used,
            "torch_threads": torch.get_num_threads(), "peak_rss_mib": peak_rss_mib_with_children(),
            "runtime": (getattr(det, "runtime", None) or {}).get("name", "eager")}


def run_child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    print("  $", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_script(script: str, args: list[str], json_path: Path, timeout: float) -> dict:
    cmd = [sys.executable, str(HERE / script), *args, "--json", str(json_path)]
    print("  $", " ".join(cmd[1:]), flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if not json_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": tail[-1] if tail else f"exit {proc.returncode}"}
    return json.loads(json_path.read_text())


# --------------------------------------------------------------------------- table
def markdown(r: dict) -> str:
    def fmt(x, unit=""):
        return "—" if x is None else f"{x:,.1f}{unit}" if isinstance(x, float) else f"{x}{unit}"

    rows = ["| measurement | value | target |", "|---|---:|---:|"]
    dl = r.get("decode_limit_png", {})
    rows.append(f"| decode limit, 256² PNG (files/s, {dl.get('decode_workers', '?')} worker(s)) | "
                f"{fmt(dl.get('files_per_s'))} | — |")
    dc = r.get("decode_limit_ct", {})
    rows.append(f"| decode limit, 512² CT DICOM (files/s) | {fmt(dc.get('files_per_s'))} | — |")
    for key, label, target in (("scan_default_png", "scan default, PNG, score + heat-map (images/s)", "≥ 150"),
                               ("scan_default_ct", "scan default, 512² CT DICOM (images/s)", "≥ 100"),
                               ("scan_btd_ct", "scan btd-ct, 512² CT DICOM, whole image (images/s)", "≥ 10")):
        v = r.get(key, {})
        rows.append(f"| {label} | {fmt(v.get('files_per_s', v.get('error')))} | {target} |")
    png, lim = r.get("scan_default_png", {}).get("files_per_s"), dl.get("files_per_s")
    rows.append(f"| ratio scan / decode limit (PNG) | {fmt(png / lim if png and lim else None)} | ≥ 0.33 |")
    for n in ("1k", "10k"):
        v = r.get(f"rss_{n}", {})
        rows.append(f"| peak RSS, {n} files (MiB, scan + workers) | {fmt(v.get('peak_rss_mib', v.get('error')))} "
                    f"| < 1024, flat |")
    svc = r.get("service", {})
    for row in svc.get("runs", []) if isinstance(svc, dict) else []:
        if row.get("mode") == "scored":
            rows.append(f"| service, {row['clients']} client(s): requests/s, p50/p95 ms, errors | "
                        f"{fmt(row.get('requests_per_s'))}, {fmt(row.get('p50_ms'))}/{fmt(row.get('p95_ms'))}, "
                        f"{row.get('errors')} | ≥ 60 at 32, p95 < 1 s |")
    if isinstance(svc, dict) and "error" in svc:
        rows.append(f"| service | {svc['error']} | ≥ 60 at 32 |")
    rx = r.get("receiver", {})
    new = rx.get("new_content", {}) if isinstance(rx, dict) else {}
    rows.append(f"| DICOM receiver, storescu: acknowledged / scored (instances/s) | "
                f"{fmt(new.get('acknowledged_per_s', rx.get('error')))} / {fmt(new.get('scored_per_s'))} | ≥ 50 |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: the engine's)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip: service receiver rss btd")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "scan_speed.json"))
    ap.add_argument("--md", default=str(REPO / "bench" / "results" / "scan_speed.md"))
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "decode":
            print(json.dumps(child_decode(Path(rest[0]), int(rest[1]), rest[2] == "1")))
        else:
            folder, model, workers, batch, maps = rest
            print(json.dumps(child_scan(Path(folder), model, None if workers == "auto" else int(workers),
                                        int(batch), maps == "1")))
        return
    from medforensics.engine import default_workers

    workers = args.workers if args.workers is not None else default_workers()
    w = "auto" if args.workers is None else str(args.workers)
    n_png, n_ct, n_btd = (300, 100, 20) if args.quick else (2000, 400, 60)
    tmp = Path(tempfile.mkdtemp(prefix="scan-speed-"))
    r: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "quick": args.quick}
    try:
        print("decode limit", flush=True)
        r["decode_limit_png"] = run_child(["decode", str(corpus("png", n_png, tmp)), str(workers), "0"], 1800)
        r["decode_limit_ct"] = run_child(["decode", str(corpus("ct", n_ct, tmp)), str(workers), "1"], 1800)
        print("scan end to end", flush=True)
        r["scan_default_png"] = run_child(["scan", str(corpus("png", n_png, tmp)), "default", w, str(args.batch), "1"], 3600)
        r["scan_default_ct"] = run_child(["scan", str(corpus("ct", n_ct, tmp)), "default", w, str(args.batch), "1"], 3600)
        if "btd" not in args.skip:
            r["scan_btd_ct"] = run_child(["scan", str(corpus("ct", n_btd, tmp)), "btd-ct", w, "8", "1"], 3600)
        if "rss" not in args.skip:
            for n, label in ((1000, "1k"), (10000, "10k")):
                if args.quick and n > 1000:
                    continue
                print(f"peak RSS at {label} files", flush=True)
                r[f"rss_{label}"] = run_child(["scan", str(corpus("png", n, tmp)), "default", w, str(args.batch), "1"],
                                              7200)
        if "service" not in args.skip:
            print("service", flush=True)
            r["service"] = run_script("service_load.py", ["--clients", "1", "8", "32", "--requests",
                                                          "100" if args.quick else "300"], tmp / "service.json", 3600)
        if "receiver" not in args.skip:
            print("DICOM receiver", flush=True)
            r["receiver"] = run_script("dicom_receiver.py", ["--n", "100" if args.quick else "300"],
                                       tmp / "receiver.json", 3600)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = markdown(r)
    print()
    print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(r, indent=2))
    Path(args.md).write_text(table)
    print(f"JSON: {args.json}\nMarkdown: {args.md}")


if __name__ == "__main__":
    main()
