"""Series-level tamper detection: 3-D attacks (inject / remove / diffusion in-paint) on real CT/MR
series, scanned with the engine's series mode.

For each selected series of the shared volumes (a contiguous window of ``--slices`` slices of a DICOM
series copied to a temp folder, or a whole small NIfTI volume) it writes tampered copies with
:func:`medforensics.synth.tamper3d.tamper_series` (``--seeds`` seeds per attack), scans the original
and the copies with ``ScanEngine(det, series=True)`` + ``SeriesAggregator`` for each model (``default``
and ``btd-ct`` / ``btd-mri`` by modality) and reports, per attack × modality × model:

* series AUC — the series score of the tampered copies vs the originals' (all windows of the modality);
* slice AUC — slice scores of the tampered slices (files actually modified) vs every slice of the originals;
* localisation hit rate — the top 3-D region overlaps the true cube: slice ranges intersect and the
  in-plane centre distance is ≤ true radius + region radius (no region = miss).

AUC with a class-balanced bootstrap 95 % interval (``medforensics.eval``). Writes ``results.json`` and
``results.md`` to ``--out``. Stops adding series after ``--max-seconds`` (the tables say what ran).

    .venv/bin/python bench/series_tamper_detection/run.py --out runs/series_tamper
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOLUMES = Path("/work/shared/data/volumes")
DEFAULT_SERIES = [
    "drivendataorg__concept-to-clinic/LIDC-IDRI-0002_CT",
    "wasserth__TotalSegmentator/example_ct_dicom",
    "drivendataorg__concept-to-clinic/LIDC-IDRI-0001_CT",
    "niivue__niivue-demo-images/VS-SEG-001_MR_T1",
    "wasserth__TotalSegmentator/example_mr_sm.nii.gz",
]
ATTACKS = ("inject", "remove", "inpaint")


def window_copy(src: Path, dst: Path, n: int) -> Path:
    """Copy a centred window of ``n`` slices (position order) of a DICOM series, files byte-identical."""
    from medforensics.synth.tamper3d import read_dicom_series

    s = read_dicom_series(src)
    start = max(0, (len(s.paths) - n) // 2)
    dst.mkdir(parents=True)
    for p in s.paths[start:start + n]:
        shutil.copyfile(p, dst / p.name)
    return dst


def scan_folder(engine, det, target: Path) -> dict:
    from medforensics.engine import SeriesAggregator

    agg = SeriesAggregator(det.threshold, fit=det.preprocessing.fit)
    for res in engine.scan([target]):
        agg.add(res)
    recs = agg.records()
    if len(recs) != 1:
        raise RuntimeError(f"{target}: expected one series record, got {len(recs)}")
    return recs[0]


def hit(region: dict | None, gt: dict) -> bool:
    if not region:
        return False
    g = gt["ground_truth"]
    overlap = region["first_slice"] <= g["last_slice"] and region["last_slice"] >= g["first_slice"]
    dist = math.hypot(region["y"] - g["y"], region["x"] - g["x"])
    return bool(overlap and dist <= g["radius_px"] + region["radius"])


def auc_ci(neg: list[float], pos: list[float], seed: int = 0) -> dict:
    from medforensics.eval import bootstrap_metrics, compute_metrics

    if not neg or not pos:
        return {"auc": None, "lo": None, "hi": None, "n_real": len(neg), "n_fake": len(pos)}
    labels = [0] * len(neg) + [1] * len(pos)
    scores = list(neg) + list(pos)
    point = compute_metrics(labels, scores)["auc"]
    bs = bootstrap_metrics(labels, scores, n_iter=1000, seed=seed, metrics=("auc",))["auc"]
    return {"auc": round(float(point), 3), "lo": round(float(bs["lo"]), 3), "hi": round(float(bs["hi"]), 3),
            "n_real": len(neg), "n_fake": len(pos)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--series", nargs="*", default=DEFAULT_SERIES, help="paths relative to the volumes folder")
    ap.add_argument("--slices", type=int, default=12, help="slices per DICOM window (≤ 64)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--inpaint-seeds", type=int, default=1, help="seeds for the (slow, CPU) diffusion in-painting")
    ap.add_argument("--attacks", nargs="*", default=list(ATTACKS))
    ap.add_argument("--radius-mm", type=float, nargs=2, default=(4.0, 10.0), help="lesion radius range (mm)")
    ap.add_argument("--inpaint-radius-mm", type=float, default=4.0)
    ap.add_argument("--max-seconds", type=float, default=1500.0)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    rows: list[dict] = []
    done_series: list[dict] = []
    prev = args.out / "results.json"
    if prev.exists():  # resume: keep the series already measured, add the others
        old = json.loads(prev.read_text())
        rows, done_series = old["rows"], old["series"]
        print(f"resuming: {len(done_series)} series already in {prev}", flush=True)
    elif args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} exists, is not empty and has no results.json", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    done_names = {d["series"] for d in done_series}

    from medforensics.detectors import load_detector
    from medforensics.engine import ScanEngine

    manifest = {r["path"]: r for r in csv.DictReader(open(VOLUMES / "manifest.csv"))}
    dets = {name: load_detector(name) for name in ("default", "btd-ct", "btd-mri")}
    engines = {name: ScanEngine(d, series=True, max_frames=None, workers=args.workers) for name, d in dets.items()}
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="series_tamper_"))
    try:
        for rel in args.series:
            if time.time() - t0 > args.max_seconds:
                print(f"time cap reached: {rel} and later series not run", flush=True)
                break
            if rel in done_names:
                continue
            try:
                run_series(args, rel, tmp, manifest, dets, engines, rows, done_series, t0)
            except Exception as exc:  # one bad series never ends the run: it is reported
                print(f"{rel}: skipped: {exc}", flush=True)
                done_series.append({"series": rel, "error": str(exc)})
            write(args, rows, done_series, time.time() - t0)
    finally:
        for e in engines.values():
            e.close()
        shutil.rmtree(tmp, ignore_errors=True)
    write(args, rows, done_series, time.time() - t0)
    return 0


def run_series(args, rel, tmp, manifest, dets, engines, rows, done_series, t0) -> None:
    from medforensics.synth.tamper3d import is_nifti_path, tamper_series

    src = VOLUMES / rel
    modality = manifest.get(rel, {}).get("modality") or ("mri" if "MR" in rel else "ct")
    work = tmp / rel.replace("/", "__")
    if is_nifti_path(src):
        orig = work / "original"
        orig.mkdir(parents=True)
        shutil.copyfile(src, orig / src.name)
        orig_target = orig / src.name
    else:
        orig_target = window_copy(src, work / "original", args.slices)
    models = ["default", "btd-ct" if modality == "ct" else "btd-mri"]
    ts = time.time()
    copies = []
    for attack in args.attacks:
        for seed in range(args.inpaint_seeds if attack == "inpaint" else args.seeds):
            rng = np.random.default_rng([seed, len(attack)])
            r = args.inpaint_radius_mm if attack == "inpaint" else float(rng.uniform(*args.radius_mm))
            out = work / f"{attack}_s{seed}"
            gt = tamper_series(orig_target, out, attack, seed=seed, radius_mm=r,
                               model=dets[models[1]] if attack == "inpaint" else None)
            target = out / src.name if is_nifti_path(src) else out
            mod_slices = sorted(f["slice"] for f in gt["written"]["files"] if f.get("modified") and "slice" in f) \
                or list(gt["ground_truth"]["slices"])
            copies.append((attack, seed, target, gt, mod_slices))
            print(f"[{time.time() - t0:6.0f}s] {rel}: {attack} seed {seed} r={r:.1f} mm record={gt['record']}",
                  flush=True)
    t_attack = time.time() - ts
    for model in models:
        ts = time.time()
        rec0 = scan_folder(engines[model], dets[model], orig_target)
        base = {"series": rel, "modality": modality, "model": model, "n_slices": rec0["n_slices"]}
        rows.append({**base, "attack": "none", "seed": None, "label": 0, "series_score": rec0["score"],
                     "slice_scores": rec0["slice_scores"], "tampered_slices": [], "hit": None,
                     "top_region": (rec0["regions"] or [None])[0]})
        for attack, seed, target, gt, mod_slices in copies:
            rec = scan_folder(engines[model], dets[model], target)
            top = (rec["regions"] or [None])[0]
            rows.append({**base, "attack": attack, "seed": seed, "label": 1, "series_score": rec["score"],
                         "slice_scores": rec["slice_scores"], "tampered_slices": mod_slices,
                         "record": gt["record"], "hit": hit(top, gt), "top_region": top,
                         "n_regions": len(rec["regions"]),
                         "transfer_syntax": sorted({f.get("transfer_syntax", "") for f in gt["written"]["files"]
                                                    if f.get("modified")})})
        print(f"[{time.time() - t0:6.0f}s] {rel}: scanned with {model} in {time.time() - ts:.0f}s", flush=True)
    done_series.append({"series": rel, "modality": modality, "n_slices": rec0["n_slices"],
                        "attack_seconds": round(t_attack, 1)})


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    keys = sorted({(r["modality"], r["model"], r["attack"]) for r in rows if r["label"] == 1})
    for modality, model, attack in keys:
        orig = [r for r in rows if r["label"] == 0 and r["modality"] == modality and r["model"] == model]
        tam = [r for r in rows if r["label"] == 1 and r["modality"] == modality and r["model"] == model
               and r["attack"] == attack]
        s_auc = auc_ci([r["series_score"] for r in orig], [r["series_score"] for r in tam])
        neg = [v for r in orig for v in r["slice_scores"]]
        pos = [r["slice_scores"][k] for r in tam for k in r["tampered_slices"] if k < len(r["slice_scores"])]
        sl_auc = auc_ci(neg, pos)
        hits = [bool(r["hit"]) for r in tam]
        # paired view: each copy against its own original (same series, same model)
        base = {r["series"]: r for r in orig}
        d_series = [r["series_score"] - base[r["series"]]["series_score"] for r in tam if r["series"] in base]
        d_slice = [r["slice_scores"][k] - base[r["series"]]["slice_scores"][k] for r in tam if r["series"] in base
                   for k in r["tampered_slices"] if k < min(len(r["slice_scores"]), len(base[r["series"]]["slice_scores"]))]
        table.append({"modality": modality, "model": model, "attack": attack, "series_auc": s_auc,
                      "slice_auc": sl_auc, "hit_rate": round(float(np.mean(hits)), 3) if hits else None,
                      "hits": int(sum(hits)), "n_copies": len(tam), "n_originals": len(orig),
                      "with_region": int(sum(1 for r in tam if r["top_region"])),
                      "paired_series_delta_mean": round(float(np.mean(d_series)), 4) if d_series else None,
                      "paired_series_up": int(sum(d > 0 for d in d_series)),
                      "paired_slice_delta_mean": round(float(np.mean(d_slice)), 4) if d_slice else None,
                      "paired_slice_up_frac": round(float(np.mean([d > 0 for d in d_slice])), 3) if d_slice else None})
    return table


def fmt(a: dict) -> str:
    return "n/a" if a["auc"] is None else f"{a['auc']:.2f} [{a['lo']:.2f}, {a['hi']:.2f}]"


def write(args, rows, done, seconds) -> None:
    table = summarise(rows)
    (args.out / "results.json").write_text(json.dumps(
        {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
         "series": done, "seconds": round(seconds, 1), "summary": table, "rows": rows}, indent=1, default=str))
    lines = ["| modality | model | attack | series AUC [95% CI] | slice AUC [95% CI] | loc. hit | originals / copies "
             "| tampered slices | copies scoring above own original | mean Δ slice score (tampered slices) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['modality']} | {t['model']} | {t['attack']} | {fmt(t['series_auc'])} | {fmt(t['slice_auc'])} "
                     f"| {t['hits']}/{t['n_copies']} | {t['n_originals']} / {t['n_copies']} | {t['slice_auc']['n_fake']} "
                     f"| {t['paired_series_up']}/{t['n_copies']} | {t['paired_slice_delta_mean']:+.4f} "
                     f"({100 * t['paired_slice_up_frac']:.0f} % up) |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
