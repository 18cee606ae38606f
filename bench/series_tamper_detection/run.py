"""Series-level tamper detection: 3-D attacks (inject / remove / diffusion in-paint / inject + toolkit
re-save) on real CT/MR series, scanned with the engine's series mode and DICOM header forensics.

For each selected series of the shared volumes (a contiguous window of ``--slices`` slices of a DICOM
series copied to a temp folder, or a whole small NIfTI volume) it writes tampered copies with
:func:`medforensics.synth.tamper3d.tamper_series` (``--seeds`` seeds per attack; ``inject_resave`` =
``inject`` whose modified files are then re-saved as a pydicom script would: new SOPInstanceUID under
pydicom's UID root, pydicom's ImplementationClassUID), scans the original and the copies with
``ScanEngine(det, series=True, headers=True)`` + ``SeriesAggregator`` for each model (``--models``:
``default``, ``btd-search`` = the shipped BTD of the modality with the search-mode statistics fitted
by ``bench/btd_paper_setting/window_normalisation.py``, ``btd`` = the shipped BTD as shipped) and
reports, per attack × modality × scorer (header-only, pixel-only per model, fused per model —
:mod:`medforensics.engine.fusion`):

* series AUC — the series score of the tampered copies vs the originals' (all windows of the modality);
* slice AUC — slice scores of the tampered slices (files actually modified) vs every slice of the originals;
* localisation — *peak hit*: the voxel of maximal evidence in the series' 3-D evidence volume (the
  per-slice maps the aggregator stacks) lies in the true cube (its slice range, in-plane distance ≤ true
  radius + one map pixel); *region hit*: the top reported 3-D region overlaps the true cube (slice
  ranges intersect, centre distance ≤ true radius + region radius; no region = miss); *pixel AUC*:
  voxel AUC of the evidence volume against the true cube (pooled over the copies).

AUC with a class-balanced bootstrap 95 % interval (``medforensics.eval``). Writes ``results.json`` and
``results.md`` to ``--out``. Stops adding series after ``--max-seconds`` (the tables say what ran).
``--header-fp`` adds the genuine-corpus false-positive rate of the header rules
(``bench/header_forensics_false_positives/run.py``, re-run).

    .venv/bin/python bench/series_tamper_detection/run.py --out runs/series_tamper
    .venv/bin/python bench/series_tamper_detection/run.py --out runs/series_tamper_quick --quick
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
ATTACKS = ("inject", "remove", "inpaint", "inject_resave")
BTD_SEARCH = Path("runs/btd_window_norm")  # window_normalisation.py writes btd_ct / btd_mri here


def window_copy(src: Path, dst: Path, n: int) -> Path:
    """Copy a centred window of ``n`` slices (position order) of a DICOM series, files byte-identical."""
    from medforensics.synth.tamper3d import read_dicom_series

    s = read_dicom_series(src)
    start = max(0, (len(s.paths) - n) // 2)
    dst.mkdir(parents=True)
    for p in s.paths[start:start + n]:
        shutil.copyfile(p, dst / p.name)
    return dst


def scan_folder(engine, det, target: Path) -> tuple[dict, np.ndarray | None, dict]:
    """The series record, its 3-D evidence volume (S×64×64, position order) and per file (pixel, header) scores."""
    from medforensics.engine import SeriesAggregator

    agg = SeriesAggregator(det.threshold, fit=det.preprocessing.fit)
    files = {}
    for res in engine.scan([target]):
        files[res.path] = (res.pixel_score, res.header_score)
        agg.add(res)
    recs = agg.records()
    if len(recs) != 1:
        raise RuntimeError(f"{target}: expected one series record, got {len(recs)}")
    series = next(s for s in agg._series.values() if len(s.slices) >= 2)
    slices = sorted(series.slices, key=lambda t: t.order)
    vol = None if any(t.evidence is None for t in slices) else np.stack([t.evidence for t in slices])
    hw = [t.original_hw for t in slices]
    return {**recs[0], "_hw": hw}, vol, files


def resave_with_pydicom(folder: Path, files: list[dict]) -> int:
    """Re-save the modified files as a pydicom script would: new SOPInstanceUID under pydicom's root, file
    meta to match, pydicom's implementation class UID / version name. Returns the files rewritten."""
    import pydicom
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

    n = 0
    for f in files:
        if not f.get("modified"):
            continue
        path = folder / f["path"]
        ds = pydicom.dcmread(path)
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
        ds.save_as(path)
        n += 1
    return n


def cube_mask(gt: dict, n_slices: int, side: int, hw: list, fit: str) -> np.ndarray:
    """The true cube (slice range × in-plane disk) on the S×side×side evidence grid."""
    from medforensics.engine.series import source_coords

    g = gt["ground_truth"]
    mask = np.zeros((n_slices, side, side), bool)
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    for k in range(max(0, g["first_slice"]), min(n_slices - 1, g["last_slice"]) + 1):
        sy, sx = source_coords(yy, xx, side, hw[k], fit)
        mask[k] = np.hypot(sy - g["y"], sx - g["x"]) <= g["radius_px"]
    return mask


def peak_hit(vol: np.ndarray | None, gt: dict, hw: list, fit: str) -> bool | None:
    from medforensics.engine.series import source_coords

    if vol is None:
        return None
    g = gt["ground_truth"]
    k, y, x = np.unravel_index(int(np.argmax(vol)), vol.shape)
    side = vol.shape[-1]
    sy, sx = source_coords(y + 0.5, x + 0.5, side, hw[k], fit)
    pix = (min(hw[k]) if hw[k] else side) / side
    return bool(g["first_slice"] <= k <= g["last_slice"] and math.hypot(sy - g["y"], sx - g["x"]) <= g["radius_px"] + pix)


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
    ap.add_argument("--models", nargs="*", default=["default", "btd-search"],
                    help="default | btd-search (shipped BTD + search-mode statistics from --btd-search) | btd")
    ap.add_argument("--btd-search", type=Path, default=BTD_SEARCH,
                    help="folder with btd_ct / btd_mri written by bench/btd_paper_setting/window_normalisation.py")
    ap.add_argument("--header-fp", action="store_true", help="also re-run the genuine-corpus header false-positive "
                    "bench (bench/header_forensics_false_positives) and put its rates in the table")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 series, 6 slices, 1 seed")
    args = ap.parse_args(argv)
    if args.quick:
        args.series = args.series if args.series != DEFAULT_SERIES else DEFAULT_SERIES[:1] + DEFAULT_SERIES[-1:]
        args.slices, args.seeds, args.inpaint_seeds = min(args.slices, 6), 1, 1
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
    dets = {}
    for name in args.models:
        for mod in ("ct", "mri"):
            key = model_key(name, mod)
            if key in dets:
                continue
            if name == "btd-search":
                path = args.btd_search / f"btd_{mod}"
                if not (path / "config.json").exists():
                    print(f"error: {path} missing: run bench/btd_paper_setting/window_normalisation.py first",
                          file=sys.stderr)
                    return 2
                dets[key] = load_detector(path)
            else:
                dets[key] = load_detector(key)
            dets[key].config["progress"] = False
    engines = {name: ScanEngine(d, series=True, headers=True, max_frames=None, workers=args.workers)
               for name, d in dets.items()}
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
    if args.header_fp:
        header_fp(args)
    write(args, rows, done_series, time.time() - t0)
    return 0


def model_key(name: str, modality: str) -> str:
    """--models entry → detector key for a modality (BTD models are per modality)."""
    if name == "default":
        return "default"
    base = "btd-ct" if modality == "ct" else "btd-mri"
    return base + "-search" if name == "btd-search" else base


def header_fp(args) -> None:
    """Re-run the genuine-corpus false-positive bench of the header rules; keep its group rates."""
    import subprocess

    out = args.out / "header_fp.json"
    script = Path(__file__).resolve().parents[1] / "header_forensics_false_positives" / "run.py"
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True)


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
    models = [model_key(m, modality) for m in args.models]
    ts = time.time()
    copies = []
    for attack in args.attacks:
        if attack == "inject_resave" and is_nifti_path(src):
            continue  # a NIfTI volume has no DICOM header to re-save
        for seed in range(args.inpaint_seeds if attack == "inpaint" else args.seeds):
            base_attack = "inject" if attack == "inject_resave" else attack
            rng = np.random.default_rng([seed, len(base_attack)])
            r = args.inpaint_radius_mm if attack == "inpaint" else float(rng.uniform(*args.radius_mm))
            out = work / f"{attack}_s{seed}"
            gt = tamper_series(orig_target, out, base_attack, seed=seed + (100 if attack == "inject_resave" else 0),
                               radius_mm=r, model=load_inpaint_model(modality) if attack == "inpaint" else None)
            if attack == "inject_resave":
                gt["resaved"] = resave_with_pydicom(out, gt["written"]["files"])
            target = out / src.name if is_nifti_path(src) else out
            mod_slices = sorted(f["slice"] for f in gt["written"]["files"] if f.get("modified") and "slice" in f) \
                or list(gt["ground_truth"]["slices"])
            copies.append((attack, seed, target, gt, mod_slices))
            print(f"[{time.time() - t0:6.0f}s] {rel}: {attack} seed {seed} r={r:.1f} mm record={gt['record']}",
                  flush=True)
    t_attack = time.time() - ts
    for model in models:
        ts = time.time()
        det = dets[model]
        rec0, vol0, files0 = scan_folder(engines[model], det, orig_target)
        base = {"series": rel, "modality": modality, "model": model, "n_slices": rec0["n_slices"],
                "threshold": det.threshold}
        rows.append({**base, "attack": "none", "seed": None, "label": 0, **scores_of(rec0, files0),
                     "tampered_slices": [], "hit": None, "top_region": (rec0["regions"] or [None])[0]})
        for attack, seed, target, gt, mod_slices in copies:
            rec, vol, files = scan_folder(engines[model], det, target)
            if gt["format"] == "nifti":  # the aggregator's original_hw of NIfTI frames is the on-disk shape[1:3];
                rec["_hw"] = [tuple(gt["shape"][1:3])] * len(rec["_hw"])  # the frames are the RAS display slices
            top = (rec["regions"] or [None])[0]
            pix = None
            if vol is not None:
                mask = cube_mask(gt, vol.shape[0], vol.shape[-1], rec["_hw"], det.preprocessing.fit)
                if 0 < mask.sum() < mask.size:
                    from sklearn.metrics import roc_auc_score

                    pix = round(float(roc_auc_score(mask.ravel(), vol.ravel())), 4)
            rows.append({**base, "attack": attack, "seed": seed, "label": 1, **scores_of(rec, files),
                         "tampered_slices": mod_slices, "record": gt["record"], "hit": hit(top, gt),
                         "peak_hit": peak_hit(vol, gt, rec["_hw"], det.preprocessing.fit), "top_region": top,
                         "n_regions": len(rec["regions"]), "pixel_auc": pix, "resaved": gt.get("resaved"),
                         "transfer_syntax": sorted({f.get("transfer_syntax", "") for f in gt["written"]["files"]
                                                    if f.get("modified")})})
        print(f"[{time.time() - t0:6.0f}s] {rel}: scanned with {model} in {time.time() - ts:.0f}s", flush=True)
    done_series.append({"series": rel, "modality": modality, "n_slices": rec0["n_slices"],
                        "attack_seconds": round(t_attack, 1)})


_INPAINT: dict = {}


def load_inpaint_model(modality: str):
    """The in-painting attack's U-Net: the shipped BTD of the modality (as in the first run of this bench)."""
    from medforensics.detectors import load_detector

    key = "btd-ct" if modality == "ct" else "btd-mri"
    if key not in _INPAINT:
        _INPAINT[key] = load_detector(key)
    return _INPAINT[key]


def scores_of(rec: dict, files: dict) -> dict:
    """Series pixel / header / fused scores and per slice (position order) the pixel and header scores."""
    heads = [files.get(sl["path"], (None, None))[1] if sl.get("frame") is None else None for sl in rec["slices"]]
    return {"series_score": rec["score"], "series_pixel": rec["pixel_score"], "series_header": rec["header_score"],
            "slice_scores": rec["slice_scores"], "slice_header": heads}


SCORERS = ("header-only", "pixel-only", "fused")


def _series_value(r: dict, scorer: str) -> float | None:
    if scorer == "header-only":
        return r.get("series_header")
    return r.get("series_pixel", r["series_score"]) if scorer == "pixel-only" else r["series_score"]


def _slice_values(r: dict, scorer: str) -> list[float | None]:
    from medforensics.engine.fusion import fuse
    from medforensics.headers import DEFAULT_THRESHOLD

    pix = r["slice_scores"]
    heads = r.get("slice_header") or [None] * len(pix)
    if scorer == "header-only":
        return heads
    if scorer == "pixel-only":
        return pix
    return [fuse(p, h, r.get("threshold", 0.5), DEFAULT_THRESHOLD) for p, h in zip(pix, heads)]


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    mods = sorted({r["modality"] for r in rows})
    for modality in mods:
        models = sorted({r["model"] for r in rows if r["modality"] == modality})
        attacks = sorted({r["attack"] for r in rows if r["label"] == 1 and r["modality"] == modality})
        for attack in attacks:
            cells = [("header-only", models[0])] + [(sc, m) for m in models for sc in ("pixel-only", "fused")]
            for scorer, model in cells:
                orig = [r for r in rows if r["label"] == 0 and r["modality"] == modality and r["model"] == model]
                tam = [r for r in rows if r["label"] == 1 and r["modality"] == modality and r["model"] == model
                       and r["attack"] == attack]
                if scorer == "header-only":  # NIfTI volumes have no header
                    orig = [r for r in orig if r.get("series_header") is not None]
                    tam = [r for r in tam if r.get("series_header") is not None]
                s_auc = auc_ci([_series_value(r, scorer) for r in orig], [_series_value(r, scorer) for r in tam])
                neg = [v for r in orig for v in _slice_values(r, scorer) if v is not None]
                pos = [v for r in tam for k, v in enumerate(_slice_values(r, scorer))
                       if k in set(r["tampered_slices"]) and v is not None]
                cell = {"modality": modality, "attack": attack, "scorer": scorer,
                        "model": "—" if scorer == "header-only" else model, "series_auc": s_auc,
                        "slice_auc": auc_ci(neg, pos), "n_originals": len(orig), "n_copies": len(tam),
                        "flagged_copies": int(sum(_series_value(r, scorer) >= (0.5 if scorer == "header-only" else r.get("threshold", 0.5))
                                                  for r in tam if _series_value(r, scorer) is not None)),
                        "flagged_originals": int(sum(_series_value(r, scorer) >= (0.5 if scorer == "header-only" else r.get("threshold", 0.5))
                                                     for r in orig if _series_value(r, scorer) is not None))}
                if scorer != "header-only":
                    peaks = [r.get("peak_hit") for r in tam if r.get("peak_hit") is not None]
                    hits = [bool(r["hit"]) for r in tam]
                    px = [r["pixel_auc"] for r in tam if r.get("pixel_auc") is not None]
                    pauc = round(float(np.mean(px)), 3) if px else None  # mean over copies
                    cell.update(peak_hits=int(sum(peaks)), n_peak=len(peaks), region_hits=int(sum(hits)),
                                pixel_auc=pauc)
                table.append(cell)
    return table


def fmt(a: dict) -> str:
    return "n/a" if a["auc"] is None else f"{a['auc']:.2f} [{a['lo']:.2f}, {a['hi']:.2f}]"


def header_fp_lines(out: Path) -> list[str]:
    path = out / "header_fp.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    groups = data.get("groups", data if isinstance(data, list) else [])
    lines = ["", "| genuine corpus (header rules, τ = 0.5) | readable instances | flagged | FP rate |", "|---|---|---|---|"]
    for g in groups:
        if isinstance(g, dict) and "group" in g:
            lines.append(f"| {g['group']} | {g['readable']} | {g['flagged']} | {100 * (g['flagged_fraction'] or 0):.2f} % |")
    return lines


def write(args, rows, done, seconds) -> None:
    table = summarise(rows)
    (args.out / "results.json").write_text(json.dumps(
        {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
         "series": done, "seconds": round(seconds, 1), "summary": table,
         "rows": rows}, indent=1, default=str))
    lines = ["| modality | attack | scorer | model | series AUC [95% CI] | slice AUC [95% CI] | copies flagged (originals) "
             "| loc. peak hit | loc. region hit | pixel AUC | originals / copies |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        loc = (f"{t['peak_hits']}/{t['n_peak']}", f"{t['region_hits']}/{t['n_copies']}",
               "n/a" if t.get("pixel_auc") is None else f"{t['pixel_auc']:.2f}") if "peak_hits" in t else ("—", "—", "—")
        lines.append(f"| {t['modality']} | {t['attack']} | {t['scorer']} | {t['model']} | {fmt(t['series_auc'])} "
                     f"| {fmt(t['slice_auc'])} | {t['flagged_copies']}/{t['n_copies']} ({t['flagged_originals']}/{t['n_originals']}) "
                     f"| {loc[0]} | {loc[1]} | {loc[2]} | {t['n_originals']} / {t['n_copies']} |")
    lines += header_fp_lines(args.out)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
