"""Load test of the REST service on loopback: requests/s and latency for N parallel clients.

Starts ``medforensics serve`` (uvicorn, one process, model loaded once) on 127.0.0.1 with a fresh
token, store and preview folder in a temporary directory, then — from this second process — runs
N client threads (httpx, one connection each) that upload real PNGs of the shared data set one per
request, for N in ``--clients``. Two modes per N:

- ``scored``: ``?force=true``, every request decodes, scores (with heat-map) and stores the image;
- ``cached``: the same images again without ``force``, answered from the results store.

Bounded in count (``--requests`` per mode and N) and time (``--max-seconds`` per mode and N).
Any non-200 response or per-item error counts as an error; the bench exits 1 if there is any.

    python bench/timing/service_load.py [--requests 200] [--clients 1 4 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _common import emit

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(n: int, seed: int) -> list[tuple[str, bytes]]:
    """``n`` real PNG files from the shared data (all modalities, seeded draw)."""
    from medforensics.data import shared_manifest

    man = shared_manifest()
    rows = [r for r in man.rows if r.path.lower().endswith(".png")]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [(Path(rows[i].path).name, rows[i].resolve(man.root).read_bytes()) for i in pick]


def _run(url: str, token: str, images: list[tuple[str, bytes]], clients: int, n_requests: int, max_s: float,
         force: bool) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    cached = 0
    lock = threading.Lock()
    counter = iter(range(n_requests))
    deadline = time.monotonic() + max_s

    def worker() -> None:
        nonlocal cached
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
            while time.monotonic() < deadline:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                name, data = images[k % len(images)]
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/scans", params={"force": "true"} if force else None,
                               files={"files": (name, data, "image/png")})
                    dt = time.perf_counter() - t0
                    ok = r.status_code == 200 and r.json()["items"][0]["status"] == "ok"
                    why = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                    hit = ok and r.json()["items"][0]["cached"]
                except httpx.HTTPError as exc:
                    dt, why, hit = time.perf_counter() - t0, f"{type(exc).__name__}: {exc}", False
                with lock:
                    latencies.append(dt)
                    cached += bool(hit)
                    if why:
                        errors.append(why)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"clients": clients, "mode": "scored" if force else "cached", "requests": len(latencies),
            "seconds": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "max_ms": round(float(lat.max()), 1), "errors": len(errors), "cached_answers": cached,
            "first_errors": errors[:3]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--requests", type=int, default=200, help="requests per mode and client count")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--images", type=int, default=64, help="distinct shared-data PNGs cycled through")
    ap.add_argument("--max-seconds", type=float, default=240.0, help="time cap per mode and client count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "service_load.json"))
    args = ap.parse_args()

    from medforensics.serve.auth import TokenStore

    images = _images(args.images, args.seed)
    with tempfile.TemporaryDirectory(prefix="mf-load-") as tmp:
        token = TokenStore(Path(tmp) / "tokens.json").create("bench")
        port = _free_port()
        env = dict(os.environ)  # torch's own thread count unless the caller sets OMP_NUM_THREADS
        cmd = [sys.executable, "-m", "medforensics.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--model", args.model, "--db", f"sqlite:///{tmp}/results.db", "--tokens-file", f"{tmp}/tokens.json",
               "--heatmap-dir", f"{tmp}/previews", "--log-level", "warning"]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            t0 = time.monotonic()
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() - t0 > 120:
                    raise SystemExit(f"server did not start: {server.stderr.read() if server.poll() is not None else 'timeout'}")
                time.sleep(0.2)
            startup_s = time.monotonic() - t0
            _run(url, token, images[:4], 1, 4, 60, force=True)  # warm-up
            runs = []
            for n in args.clients:
                for force in (True, False):
                    res = _run(url, token, images, n, args.requests, args.max_seconds, force)
                    runs.append(res)
                    print(f"N={n:2d} {res['mode']:6s}: {res['requests_per_s']:7.2f} req/s  p50 {res['p50_ms']:7.1f} ms"
                          f"  p95 {res['p95_ms']:7.1f} ms  errors {res['errors']}", file=sys.stderr)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    out = {"bench": "service_load", "model": args.model, "host": "127.0.0.1 (loopback)",
           "server": "medforensics serve, 1 uvicorn process, requests batched by the scan engine",
           "server_omp_threads": env.get("OMP_NUM_THREADS", "torch default"), "cpu_count": os.cpu_count(),
           "distinct_images": len(images), "image_bytes_mean": int(np.mean([len(b) for _, b in images])),
           "server_startup_s": round(startup_s, 1), "runs": runs,
           "total_errors": sum(r["errors"] for r in runs)}
    emit(out, args.json)
    raise SystemExit(1 if out["total_errors"] else 0)


if __name__ == "__main__":
    main()
