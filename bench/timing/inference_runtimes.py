"""Inference speed of the shipped models under each runtime, and the one-pass grid's score parity.

Two sub-commands:

``runtimes`` (default) — for the default model (``forensic_cnn``, whole 256² images → 7×7 patch-logit
grid in one pass) and ``btd-ct`` (its U-Net on the sliding 96² windows of a 256² image; and the
whole-image scorer on 256² and 512² inputs): images/s at batch 1/8/32 for every runtime
(:mod:`medforensics.detectors.runtime`) and the parity error against eager; a table on stdout and
JSON (``--out``)::

    .venv/bin/python bench/timing/inference_runtimes.py runtimes --out runs/timing/inference_runtimes.json

``val-threshold`` — the default model's τ at its card's target FPR on the recipe's real validation
images, per patch and in one pass (the shipped τ was calibrated per patch).

``grid-parity`` — the default model scored per patch (``grid="patches"``, the original path) and in
one fully convolutional pass (``grid="conv"``) on the same preprocessed images: max / mean |Δscore|
and the AUC of both on (a) a stratified sample of the shared manifest + pydicom's DICOMs and
(b) the shipped recipe's patient-level test split (``--test-split``; rebuilt from the manifest
and the seeded tampering, plain view)::

    .venv/bin/python bench/timing/inference_runtimes.py grid-parity --n 200 --test-split --out runs/timing/grid_parity.json

The CPU is shared with other jobs when this runs on a development machine: every images/s is the
best of a few timed calls, and still noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


# ------------------------------------------------------------------------------------ grid parity
def _load_prepared(det, paths: list[Path]) -> tuple[torch.Tensor, list[int]]:
    from medforensics.io import load

    arrays, kept = [], []
    for i, p in enumerate(paths):
        try:
            arrays.append(det.preprocessing(load(p)))
            kept.append(i)
        except Exception as exc:  # noqa: BLE001 - a bad file is reported and skipped
            print(f"  skipped {p}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return torch.from_numpy(np.stack(arrays)), kept


def _scores_both(det, batch: torch.Tensor, step: int = 16) -> dict[str, np.ndarray]:
    out: dict[str, list] = {"patches": [], "conv": [], "map_patches": [], "map_conv": []}
    with torch.no_grad():
        for s in range(0, len(batch), step):
            b = batch[s : s + step]
            for mode in ("patches", "conv"):
                logits, grid = det._patch_logits(b, grid=mode)
                out[mode].append(det._score_logits(logits))
                out["map_" + mode].append(det._map_of(logits, grid, tuple(b.shape[-2:])))
    return {k: np.concatenate(v) for k, v in out.items()}


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def _compare(name: str, y: np.ndarray, mods: list[str], sc: dict[str, np.ndarray], threshold: float) -> dict:
    d = np.abs(sc["conv"] - sc["patches"])
    dm = np.abs(sc["map_conv"] - sc["map_patches"])
    res = {"set": name, "n": int(len(y)), "real": int((y == 0).sum()), "fake": int((y == 1).sum()),
           "max_abs_dscore": float(d.max()), "mean_abs_dscore": float(d.mean()),
           "p99_abs_dscore": float(np.percentile(d, 99)),
           "max_abs_dmap_pixel": float(dm.max()), "mean_abs_dmap_pixel": float(dm.mean()),
           "verdict_flips_at_tau": int(((sc["conv"] >= threshold) != (sc["patches"] >= threshold)).sum()),
           "auc_patches": _auc(y, sc["patches"]), "auc_conv": _auc(y, sc["conv"]), "per_modality": {}}
    for m in sorted(set(mods)):
        idx = np.array([x == m for x in mods])
        res["per_modality"][m] = {"n": int(idx.sum()), "auc_patches": _auc(y[idx], sc["patches"][idx]),
                                  "auc_conv": _auc(y[idx], sc["conv"][idx]),
                                  "max_abs_dscore": float(d[idx].max())}
    aucs = [(v["auc_patches"], v["auc_conv"]) for v in res["per_modality"].values() if np.isfinite(v["auc_patches"])]
    if aucs:
        res["mean_modality_auc_patches"] = float(np.mean([a for a, _ in aucs]))
        res["mean_modality_auc_conv"] = float(np.mean([b for _, b in aucs]))
    print(f"[{name}] n={res['n']} (real {res['real']}, fake {res['fake']}): |Δscore| max {res['max_abs_dscore']:.4f} "
          f"mean {res['mean_abs_dscore']:.4f} p99 {res['p99_abs_dscore']:.4f}; map |Δ| max {res['max_abs_dmap_pixel']:.4f}; "
          f"verdict flips {res['verdict_flips_at_tau']}; AUC patches {res['auc_patches']:.4f} conv {res['auc_conv']:.4f}",
          flush=True)
    return res


def grid_parity(args: argparse.Namespace) -> dict:
    from medforensics.data import shared_manifest
    from medforensics.detectors import load_detector
    from medforensics.io.samples import pydicom_test_files

    det = load_detector("default")
    shared = shared_manifest()
    rng = np.random.default_rng(0)
    rows = list(shared)
    groups: dict[tuple[str, str], list] = {}
    for r in rows:
        groups.setdefault((r.modality, r.label), []).append(r)
    per = max(1, args.n // max(1, len(groups)))
    pick = []
    for key in sorted(groups):
        g = groups[key]
        pick += [g[i] for i in rng.choice(len(g), min(per, len(g)), replace=False)]
    pick = pick[: args.n]
    results = []
    t0 = time.time()
    if args.only_test:
        pick = []
    if pick:
        batch, kept = _load_prepared(det, [r.resolve(shared.root) for r in pick])
        y = np.array([int(pick[i].label == "fake") for i in kept])
        mods = [pick[i].modality for i in kept]
        results.append(_compare("manifest_sample", y, mods, _scores_both(det, batch), det.threshold))
    folder = pydicom_test_files()
    if folder is not None and not args.only_test:
        dcms = sorted(p for p in folder.rglob("*.dcm"))
        batch, kept = _load_prepared(det, dcms)
        sc = _scores_both(det, batch)
        d = np.abs(sc["conv"] - sc["patches"])
        results.append({"set": "pydicom_dicoms", "n": len(kept), "max_abs_dscore": float(d.max()),
                        "mean_abs_dscore": float(d.mean())})
        print(f"[pydicom_dicoms] n={len(kept)}: |Δscore| max {d.max():.4f} mean {d.mean():.4f}", flush=True)
    if args.test_split:
        from medforensics.data.split import patient_split
        from medforensics.synth.tamper_set import make_tampered_set
        from medforensics.data import Manifest

        test = patient_split(shared, test_fraction=0.2, seed=0).subset("test")  # the shipped recipe's split
        tampered = make_tampered_set(test, Path(args.workdir) / "tampered" / "test", fraction=0.5, seed=0)
        test = Manifest.concat([test, tampered])
        trows = list(test)
        if args.test_n and args.test_n < len(trows):  # a seeded subset, same share of every (modality, label)
            order = np.random.default_rng(0).permutation(len(trows))
            trows = [trows[i] for i in sorted(order[: args.test_n])]
        batch, kept = _load_prepared(det, [r.resolve(test.root) for r in trows])
        y = np.array([int(trows[i].label == "fake") for i in kept])
        mods = [trows[i].modality for i in kept]
        results.append(_compare("recipe_test_split_plain", y, mods, _scores_both(det, batch), det.threshold))
    return {"benchmark": "default_grid_parity", "model": "default", "results": results,
            "seconds": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads()}


def val_threshold(args: argparse.Namespace) -> dict:
    """τ at the card's target FPR on the shipped recipe's real validation images, per patch and one pass."""
    from medforensics.data import shared_manifest
    from medforensics.data.split import patient_split, train_val_split
    from medforensics.detectors import load_detector
    from medforensics.eval.calibration import calibrate

    det = load_detector("default")
    shared = shared_manifest()
    split = patient_split(shared, test_fraction=0.2, seed=0)
    val = train_val_split(split.subset("train"), val_fraction=0.1, seed=0).subset("val")  # the recipe's split
    reals = [r for r in val if r.label == "real"]
    batch, _ = _load_prepared(det, [r.resolve(val.root) for r in reals])
    sc = _scores_both(det, batch)
    target = float(det.calibration.get("target_fpr", 0.05))
    out = {"benchmark": "default_val_threshold", "n_real_val": int(len(batch)), "target_fpr": target,
           "shipped_threshold": det.threshold}
    for mode in ("patches", "conv"):
        cal = calibrate(sc[mode].astype(np.float64), target)
        out[mode] = {**{k: v for k, v in cal.items() if k != "real_val_scores"},
                     "fpr_at_shipped_threshold": float(np.mean(sc[mode] >= det.threshold)),
                     "real_val_scores": [round(float(v), 6) for v in np.sort(sc[mode])]}
        print(f"[{mode}] τ at FPR {target}: {cal['threshold']:.6f}; FPR at the shipped τ {det.threshold:.4f}: "
              f"{out[mode]['fpr_at_shipped_threshold']:.4f} (n={len(batch)})", flush=True)
    return out


# ------------------------------------------------------------------------------------ runtimes
def _real_batches(det, n: int, modality: str | None, channels_to) -> list[torch.Tensor]:
    """n real images of the shared manifest (seeded), preprocessed for ``det``."""
    from medforensics.data import shared_manifest

    shared = shared_manifest()
    rows = [r for r in shared if r.label == "real" and (modality is None or r.modality == modality)]
    rng = np.random.default_rng(1)
    pick = [rows[i] for i in rng.choice(len(rows), min(n, len(rows)), replace=False)]
    batch, _ = _load_prepared(det, [r.resolve(shared.root) for r in pick])
    return channels_to(batch)


def _bench_module(label: str, module, batch_fn, calib, candidates, batches, repeats, leaf=()) -> list[dict]:
    from medforensics.detectors.runtime import RuntimeUnavailable, build_runner, images_per_second, parity

    rows = []
    example = batch_fn(max(batches))
    with torch.inference_mode():
        ref = module(example)
    for name in candidates:
        row: dict = {"model": label, "runtime": name}
        try:
            t0 = time.perf_counter()
            built = build_runner(name, module, example, calib, leaf_modules=leaf)
            row["build_s"] = round(time.perf_counter() - t0, 1)
            row.update(parity(ref, built.runner(example)))
            for b in batches:
                row[f"ips_b{b}"] = round(images_per_second(built.runner, batch_fn(b), repeats=repeats), 2)
        except RuntimeUnavailable as exc:
            row["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}"
        print("  " + json.dumps(row), flush=True)
        rows.append(row)
    return rows


def runtimes(args: argparse.Namespace) -> dict:
    from medforensics.detectors import load_detector
    from medforensics.detectors.layers import SRMFilters

    candidates = args.runtimes.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    out: dict = {"benchmark": "inference_runtimes", "torch_threads": torch.get_num_threads(),
                 "cpu": f"{os.cpu_count()} logical cores (shared with other jobs: numbers are noisy)", "rows": []}
    # default model: images → patch-logit grid
    det = load_detector("default")
    reals = _real_batches(det, max(batches) + args.calib, None, lambda b: b)
    calib = [reals[i : i + 8] for i in range(max(batches), len(reals), 8)]
    grid = det.grid_module()

    def default_batch(b: int) -> torch.Tensor:
        return reals[:b]

    out["rows"] += _bench_module("default (forensic_cnn, 256², one pass)", grid, default_batch, calib, candidates,
                                 batches, args.repeats, leaf=(SRMFilters,))
    # btd-ct: ε_θ on the sliding windows
    btd = load_detector("btd-ct")
    creals = _real_batches(btd, 8, "ct", btd._to_model_channels)
    from medforensics.detectors.btd.patches import extract_windows, pad_to_min

    wins, _ = extract_windows(pad_to_min(creals, btd.window), btd.window, btd.stride)
    per_image = len(wins) // len(creals)
    noise_net = btd.noise_module()

    def btd_batch(b: int) -> torch.Tensor:  # b images' worth of windows
        reps = -(-b * per_image // len(wins))
        return torch.cat([wins] * reps)[: b * per_image] * 2.0 - 1.0

    rows = _bench_module(f"btd-ct ε_θ ({per_image} windows of {btd.window}² per 256² image)", noise_net, btd_batch,
                         [btd_batch(1)[i : i + 8] for i in range(0, per_image, 8)], candidates,
                         [1, 4], args.repeats)  # b images' worth of windows (16 per 256² image)
    out["rows"] += rows
    # whole detectors, score + heat-map: before (two calls) vs one pass, eager vs ONNX Runtime fp32
    out["rows"] += _detector_rows(det, reals, grid, batches, args.repeats, "default")
    out["rows"] += _detector_rows(btd, creals, noise_net, [1, 4], args.repeats, "btd-ct")
    big = torch.nn.functional.interpolate(creals[:2], size=(512, 512), mode="bilinear", align_corners=False)
    out["rows"] += _detector_rows(btd, big, noise_net, [1], args.repeats, "btd-ct 512²")
    return out


def _detector_rows(det, images: torch.Tensor, module, batches: list[int], repeats: int, label: str) -> list[dict]:
    """images/s of score + heat-map for a whole detector: the old way (score then anomaly_map; per-patch
    grid for forensic_cnn), one pass eager, one pass with ONNX Runtime fp32 (when installed)."""
    from medforensics.detectors.runtime import RuntimeUnavailable, build_runner, images_per_second

    def two_calls(x):
        det.score(x)
        det.anomaly_map(x)

    def one_pass(x):
        det.score_with_maps(x)

    ways = [("before: score + anomaly_map" + (", per patch" if "grid" in det.config else ""), two_calls, "patches", None),
            ("one pass, eager", one_pass, "conv", None)]
    try:
        built = build_runner("onnx_fp32", module, images[:1] if "grid" in det.config else module_example(det, images))
        ways.append(("one pass, onnx_fp32", one_pass, "conv", built.runner))
    except RuntimeUnavailable as exc:
        print(f"  {label}: onnx_fp32 not measured: {exc}")
    rows = []
    for name, fn, grid, runner in ways:
        if "grid" in det.config:
            det.config["grid"] = grid
        det.runtime = {"name": "onnx_fp32", "step": 1} if runner is not None else None
        det._runtime_runner = runner if runner is not None else False
        row = {"model": f"{label} detector ({tuple(images.shape[-2:])[0]}², score + map)", "runtime": name}
        for b in batches:
            x = images[:b] if len(images) >= b else images.repeat(-(-b // len(images)), 1, 1, 1)[:b]
            row[f"ips_b{b}"] = round(images_per_second(fn, x, warmup=1, repeats=repeats), 2)
        print("  " + json.dumps(row), flush=True)
        rows.append(row)
    det.runtime, det._runtime_runner = None, False
    if "grid" in det.config:
        det.config["grid"] = "conv"
    return rows


def module_example(det, images: torch.Tensor) -> torch.Tensor:
    from medforensics.detectors.btd.patches import extract_windows, pad_to_min

    wins, _ = extract_windows(pad_to_min(det._to_model_channels(images[:1]), det.window), det.window, det.stride)
    return wins * 2.0 - 1.0


def _table(rows: list[dict], batches: list[int]) -> str:
    head = ["model", "runtime", *[f"img/s b{b}" for b in batches], "max|Δlogit|", "max|Δprob|", "note"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        cells = [r["model"], r["runtime"], *[str(r.get(f"ips_b{b}", "")) for b in batches],
                 f"{r['max_abs_logit']:.2e}" if "max_abs_logit" in r else "",
                 f"{r['max_abs_prob']:.2e}" if "max_abs_prob" in r else "", r.get("error", "")[:80]]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="runtimes", choices=("runtimes", "grid-parity", "val-threshold"))
    ap.add_argument("--out", default=None, help="JSON output file")
    ap.add_argument("--runtimes", default="eager,eager_fused,onnx_fp32,onnx_int8",
                    help="comma-separated runtimes (add 'compile' to include torch.compile)")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calib", type=int, default=32, help="real images for int8 calibration")
    ap.add_argument("--n", type=int, default=200, help="grid-parity: manifest images (stratified by modality, label)")
    ap.add_argument("--test-split", action="store_true", help="grid-parity: also the shipped recipe's test split")
    ap.add_argument("--test-n", type=int, default=None, help="grid-parity: a seeded random subset of the test split")
    ap.add_argument("--only-test", action="store_true", help="grid-parity: only the test split")
    ap.add_argument("--workdir", default="runs/work-grid-parity", help="grid-parity: tampered test images go here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"grid-parity": grid_parity, "val-threshold": val_threshold, "runtimes": runtimes}[args.command](args)
    if args.command == "runtimes":
        print(_table(result["rows"], sorted(set([int(b) for b in args.batches.split(",")] + [4]))))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
