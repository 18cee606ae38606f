"""Does a real-only second opinion (zed) help the supervised default on published generators?

Scores the shared manifest's test split (patient split as ``train.recipes.prepare_supervised_data``:
``patient_split(test_fraction=0.2, seed=0)``) — published fakes vs the reals of the same modality —
with the members of a ``fusion`` model (the shipped ``default`` and a ``zed`` model) and the fusion
itself, in three views of ``benchmark.protocol.ViewTransform`` (every image, both classes, through the
same chain): ``plain`` (the models' own preprocessing), ``matched`` (standardised to 256 px, 0.5×
bicubic round trip, JPEG q85) and ``laundered`` (256 px, 0.875× round trip, JPEG q80).

Each image is read once per view and scored once by each member; the fusion's score is
``fusion.fuse(member scores)`` (checked against ``fusion.score`` on the first batch) and the min-p
variant uses the same calibrated p-values. zed is reported with pooled statistics (what ``scan``
uses) and with the image's modality known (``probability_from_gaps(..., modalities)``).
Anatomy-mismatched generators (``data.anatomy_matched``) are reported apart; the headline is the
mean AUC over anatomy-matched generators.

    medforensics models fuse default runs/zed --out runs/fusion_default_zed
    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/real_only_detector/run.py \\
        --fusion runs/fusion_default_zed --cache runs/real_only_detector
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medforensics.benchmark.protocol import ViewTransform
from medforensics.data import ImageDataset, anatomy_matched, patient_split, shared_manifest
from medforensics.detectors import load_detector
from medforensics.detectors.fusion import FusionDetector, combine_p
from medforensics.eval.bootstrap import bootstrap_metrics
from medforensics.eval.metrics import compute_metrics
from medforensics.io import UnreadableImageError

HERE = Path(__file__).parent
VIEWS = ("plain", "matched", "laundered")
VARIANTS = ("default", "zed", "zed_modality", "fusion", "fusion_min_p")


def test_rows():
    m = shared_manifest()
    test = patient_split(m, test_fraction=0.2, seed=0).subset("test")
    return m, test.filter(lambda r: r.label == "real" or r.family != "tamper")


def _view_dataset(pre, test, view: str) -> ImageDataset:
    transform = None if view == "plain" else ViewTransform(pre.size, pre.fit, view)
    return ImageDataset(test, pre, transform=transform, seed=0)


def score_member(member: str, det, test, view: str, cache: Path, batch_size: int,
                 fused: FusionDetector | None = None) -> dict:
    """One member's per-image results on one view (cached as JSON): ``default`` → its probability,
    ``zed`` → per-level actual/expected coding costs. With ``fused``, the first batch checks that the
    fusion model's own score equals the bench's arithmetic on these member scores."""
    path = cache / f"scores_{view}_{member}.json"
    if path.exists():
        return json.loads(path.read_text())
    ds = _view_dataset(det.preprocessing if fused is None else fused.preprocessing, test, view)
    rows, errors, t0 = [], [], time.time()
    pending: list = []
    checked = fused is None

    def flush() -> None:
        nonlocal checked
        x = torch.stack([it["image"] for _, it in pending]).float()
        with torch.no_grad():
            if member == "default":
                out = [{"default": float(v)} for v in det._score_arrays(x)]
            else:
                nll, ent, _ = det._costs(x, want_maps=False)
                out = [{"nll": [float(v) for v in n_], "entropy": [float(v) for v in e_]} for n_, e_ in zip(nll, ent)]
        if not checked:
            d = np.asarray(fused.members[0]._score_arrays(x), dtype=np.float64)
            z = fused.members[1].probability_from_gaps(nll - ent)
            np.testing.assert_allclose(fused.fuse(np.stack([d, z], 1)), fused.score(x), rtol=0, atol=1e-12)
            checked = True
        for (row, _), o in zip(pending, out):
            rows.append({"path": row.path, "label": row.label, "modality": row.modality, "generator": row.generator, **o})
        pending.clear()

    for i in range(len(ds)):
        try:
            pending.append((test[i], ds[i]))
        except UnreadableImageError as err:
            errors.append([test[i].path, err.reason])
            continue
        if len(pending) >= batch_size:
            flush()
        if i % 100 == 0:
            print(f"  {view} {member}: {i}/{len(ds)} ({time.time() - t0:.0f} s)", flush=True)
    if pending:
        flush()
    out = {"view": view, "member": member, "rows": rows, "errors": errors, "seconds": round(time.time() - t0, 1)}
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def score_view(fused: FusionDetector, test, view: str, cache: Path, batch_size: int) -> dict:
    d = score_member("default", fused.members[0], test, view, cache, batch_size)
    z = score_member("zed", fused.members[1], test, view, cache, batch_size, fused=fused)
    if [r["path"] for r in d["rows"]] != [r["path"] for r in z["rows"]]:
        raise RuntimeError(f"{view}: the members' cached rows differ (stale cache in {cache}?)")
    rows = [{**a, **b, "gap": [n - e for n, e in zip(b["nll"], b["entropy"])]} for a, b in zip(d["rows"], z["rows"])]
    return {"rows": rows, "errors": d["errors"], "seconds": round(d["seconds"] + z["seconds"], 1)}


def variant_scores(fused: FusionDetector, rows: list[dict]) -> dict[str, np.ndarray]:
    zed = fused.members[1]
    gaps = np.array([r["gap"] for r in rows])
    d = np.array([r["default"] for r in rows])
    z = zed.probability_from_gaps(gaps)
    member = np.stack([d, z], 1)
    pv = fused.member_pvalues(member)
    return {"default": d, "zed": z, "zed_modality": zed.probability_from_gaps(gaps, [r["modality"] for r in rows]),
            "fusion": fused.fuse(member), "fusion_min_p": 1 - combine_p(pv, "min_p")}


def auc(lab: np.ndarray, sc: np.ndarray, n_boot: int = 0) -> dict:
    res = {"auc": round(float(compute_metrics(lab, sc)["auc"]), 4), "n_real": int((lab == 0).sum()),
           "n_fake": int((lab == 1).sum())}
    if n_boot:
        b = bootstrap_metrics(lab, sc, n_iter=n_boot, seed=0, metrics=("auc",))["auc"]
        res["ci95"] = [round(float(b["lo"]), 3), round(float(b["hi"]), 3)]
    return res


def evaluate(fused: FusionDetector, manifest, scored: dict, n_boot: int) -> dict:
    rows = scored["rows"]
    scores = variant_scores(fused, rows)
    lab = np.array([r["label"] == "fake" for r in rows], dtype=np.int64)
    mods = np.array([r["modality"] for r in rows])
    gens = np.array([r["generator"] if r["label"] == "fake" else "" for r in rows])
    by_path = {r.path: r for r in manifest}
    matched_gen = {g: anatomy_matched(by_path[r["path"]], manifest) for r, g in zip(rows, gens) if g}
    thresholds = {"default": fused.members[0].threshold, "zed": fused.members[1].threshold,
                  "zed_modality": fused.members[1].calibration.get("modality_threshold"),
                  "fusion": fused.threshold}
    out: dict = {"n": len(rows), "errors": scored["errors"], "seconds": scored["seconds"], "variants": {}}
    for v, sc in scores.items():
        res: dict = {"per_modality": {}, "per_modality_anatomy_matched": {}, "per_generator": {}}
        for m in sorted(set(mods[lab == 1])):
            sel = mods == m
            res["per_modality"][m] = auc(lab[sel], sc[sel], n_boot)
            keep = sel & ((lab == 0) | np.array([matched_gen.get(g, False) for g in gens]))
            if (lab[keep] == 1).any():
                res["per_modality_anatomy_matched"][m] = auc(lab[keep], sc[keep], n_boot)
        for g in sorted(matched_gen):
            gm = mods[gens == g][0]
            sel = (gens == g) | ((lab == 0) & (mods == gm))
            res["per_generator"][g] = {**auc(lab[sel], sc[sel]), "modality": gm, "anatomy_matched": matched_gen[g]}
        am = [r["auc"] for r in res["per_generator"].values() if r["anatomy_matched"]]
        am5 = [r["auc"] for r in res["per_generator"].values() if r["anatomy_matched"] and r["n_fake"] >= 5]
        res["mean_auc_anatomy_matched_generators"] = round(float(np.mean(am)), 4)
        res["mean_auc_anatomy_matched_generators_n_fake_ge_5"] = round(float(np.mean(am5)), 4)
        tau = thresholds.get(v)
        if tau is not None:
            res["threshold"] = tau
            res["fpr_test_reals"] = round(float(np.mean(sc[lab == 0] >= tau)), 4)
            res["tpr_test_fakes"] = round(float(np.mean(sc[lab == 1] >= tau)), 4)
        out["variants"][v] = res
    return out


def markdown(results: dict) -> str:
    lines = []
    for view, res in results["views"].items():
        lines.append(f"\n### {view} view ({res['n']} images, {len(res['errors'])} unreadable)\n")
        mods = sorted(res["variants"]["default"]["per_modality"])
        lines.append("| detector | " + " | ".join(f"{m} (all fakes)" for m in mods)
                     + " | mean AUC, anatomy-matched generators (all / ≥5 fakes) | FPR test reals @τ | TPR @τ |")
        lines.append("|---" * (len(mods) + 4) + "|")
        for v, r in res["variants"].items():
            cells = [f"{r['per_modality'][m]['auc']:.3f} [{r['per_modality'][m]['ci95'][0]:.2f}, "
                     f"{r['per_modality'][m]['ci95'][1]:.2f}]" for m in mods]
            lines.append(f"| {v} | " + " | ".join(cells)
                         + f" | {r['mean_auc_anatomy_matched_generators']:.3f} / "
                           f"{r['mean_auc_anatomy_matched_generators_n_fake_ge_5']:.3f} | "
                         + (f"{r['fpr_test_reals']:.3f} | {r['tpr_test_fakes']:.3f} |" if "threshold" in r else "— | — |"))
        gens = res["variants"]["default"]["per_generator"]
        lines.append("\nPer generator (fakes vs the test reals of its modality; † anatomy-mismatched):\n")
        lines.append("| generator | modality | n fake | " + " | ".join(res["variants"]) + " |")
        lines.append("|---" * (3 + len(res["variants"])) + "|")
        for g, info in sorted(gens.items(), key=lambda kv: (not kv[1]["anatomy_matched"], kv[1]["modality"], kv[0])):
            name = g + ("" if info["anatomy_matched"] else " †")
            lines.append(f"| {name} | {info['modality']} | {info['n_fake']} | "
                         + " | ".join(f"{res['variants'][v]['per_generator'][g]['auc']:.3f}" for v in res["variants"])
                         + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fusion", default="runs/fusion_default_zed", help="fusion model dir (members: default, zed)")
    ap.add_argument("--cache", default="runs/real_only_detector", help="per-view score caches (JSON)")
    ap.add_argument("--views", default=",".join(VIEWS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--every", type=int, default=1, help="score every k-th test row only (smoke runs)")
    ap.add_argument("--default-only", action="store_true",
                    help="only cache the shipped default's scores (needs no zed/fusion model yet)")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.default_only:
        default = load_detector("default")
        _, test = test_rows()
        for view in args.views.split(","):
            score_member("default", default, test[:: args.every], view, Path(args.cache), args.batch_size)
        return
    fused = load_detector(args.fusion)
    if not isinstance(fused, FusionDetector) or [m.name for m in fused.members] != ["forensic_cnn", "zed"]:
        raise SystemExit(f"{args.fusion} must be a fusion of (forensic_cnn, zed), in that order")
    manifest, test = test_rows()
    test = test[:: args.every]
    results = {"fusion_model": args.fusion, "combine": fused.config["combine"],
               "zed_training": {k: v for k, v in fused.members[1].training_summary.items() if k != "history"},
               "fusion_calibration": {k: v for k, v in fused.calibration.items() if k != "real_val_scores"},
               "views": {}}
    for view in args.views.split(","):
        scored = score_view(fused, test, view, Path(args.cache), args.batch_size)
        results["views"][view] = evaluate(fused, manifest, scored, args.n_boot)
    Path(args.out).write_text(json.dumps(results, indent=1))
    md = markdown(results)
    Path(args.out).with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
