"""Does normalising BTD's window residuals by real residual statistics (search mode) help? Shipped models.

For each shipped BTD model (``btd-ct``, ``btd-mri``):

1. **Fit** the real window-residual statistics (``BTDDetector.fit_window_norm``: window mean × log std bins,
   median and robust spread of log residual energy per bin) on real slices the model's test never sees:
   a stable subset of the shared manifest's *train* reals of the modality (the split the model was trained
   on, ``btd_real_split`` seed 0) plus every other slice of the shared volumes that the series benchmark
   does not attack (``HELD_OUT``: DICOM/NIfTI read through the scan pipeline's intensity normalisation);
   calibrate the search-mode score (τ at the model's target FPR) on the manifest's *val* reals plus the
   remaining slices of those volumes. The model with the statistics is written to
   ``--runs/btd_<modality>`` (``window_score="z"``; its residual calibration kept beside it).
2. **Measure**, on the same test reals and tampered copies as the model cards (stable subset of 48 test
   reals, ``make_tampered_set`` seed 0, classical injection / removal), both window scores from one
   back-in-time pass per image:
   * whole slice: test reals vs tampered copies (AUC, bootstrap 95 % interval), per attack;
   * the paper's ROI setting: the patch centred on the tamper vs the same patch of the untouched source
     (paired): residual over the whole patch, residual over its central 32×32, and the z of the central
     ``search_window`` square;
   * pixel AUC of the heat-map against the tamper mask (pooled, and per attack).

   Besides ``z``, the two-sided search score ``z2`` (per window max(z, texture-deficit z), fitted in the
   same pass; ``--deficit-*`` set its statistic) is measured the same way.

``--model ct=DIR`` measures another model directory instead of the shipped one (e.g. a newly trained
model, before deciding whether to ship it). Writes ``results.json`` / ``results.md`` to ``--out``; the
models with statistics go to ``--runs`` (default ``runs/btd_window_norm``, which the series benchmark reads).

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/btd_paper_setting/window_normalisation.py
    .venv/bin/python bench/btd_paper_setting/window_normalisation.py --quick   # smoke run, minutes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore", message=".*CUDA is not available.*")

from sklearn.metrics import roc_auc_score  # noqa: E402

from medforensics.data import ImageDataset, shared_manifest  # noqa: E402
from medforensics.detectors import load_detector  # noqa: E402
from medforensics.detectors.btd.search import DEFICIT_BINNINGS, DEFICIT_DEFAULTS, DEFICIT_FEATURES  # noqa: E402
from medforensics.eval.bootstrap import bootstrap_metrics  # noqa: E402
from medforensics.io import standardise  # noqa: E402
from medforensics.synth.attacks import btd_real_split  # noqa: E402
from medforensics.synth.tamper_set import make_tampered_set  # noqa: E402

VOLUMES = Path("/work/shared/data/volumes")
#: shared volumes the series benchmark does not attack: used for the statistics (even slices) and the
#: search-mode calibration (odd slices)
HELD_OUT = {
    "ct": ["neurolabusc__dcm_qa_ct/GE_tilt_CT", "wasserth__TotalSegmentator/example_ct.nii.gz",
           "wasserth__TotalSegmentator/pulmonary_ct_cropped.nii.gz", "pydicom__pydicom-data/eCT_Supplemental.dcm"],
    "mri": ["neurolabusc__dcm_qa_philips_enh/2001_fcMRI_Field_Mapping_e2_phMag.dcm"],
}
MODELS = {"ct": "btd-ct", "mri": "btd-mri"}


def stable_subset(rows: list, n: int, seed: int = 0) -> list:
    key = lambda r: hashlib.sha256(f"{seed}:{r.path}".encode()).hexdigest()  # noqa: E731
    return sorted(rows, key=key)[:n]


def volume_slices(rel: str, det, per_volume: int) -> list[torch.Tensor]:
    """Up to ``per_volume`` evenly spaced slices of a shared volume, preprocessed as the scan engine does."""
    src = VOLUMES / rel
    files = sorted(p for p in src.iterdir() if p.is_file()) if src.is_dir() else [src]
    out = []
    for f in files:
        try:
            loaded = det.preprocessing.load(f, max_frames=per_volume)
        except Exception as err:  # a file that does not read is reported, never fatal
            print(f"  {f.name}: skipped ({err})", flush=True)
            continue
        out += [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in loaded.arrays]
    if len(out) > per_volume:
        idx = np.linspace(0, len(out) - 1, per_volume).round().astype(int)
        out = [out[i] for i in idx]
    return out


def images_of(manifest, pre, masks: bool = False) -> tuple[list[torch.Tensor], list, list]:
    ds = ImageDataset(manifest, pre, mask_column="mask" if masks else None, seed=0)
    imgs, rows, mks = [], [], []
    for i in range(len(ds)):
        try:
            it = ds[i]
        except Exception as err:
            print(f"  skipped {manifest[i].path}: {err}", flush=True)
            continue
        imgs.append(it["image"])
        rows.append(manifest[i])
        mks.append(it.get("mask"))
    return imgs, rows, mks


def auc(neg, pos, seed: int = 0, n_boot: int = 200) -> dict | None:
    neg, pos = np.asarray(neg, float), np.asarray(pos, float)
    if not len(neg) or not len(pos):
        return None
    labels = np.r_[np.zeros(len(neg), int), np.ones(len(pos), int)]
    scores = np.r_[neg, pos]
    b = bootstrap_metrics(labels, scores, n_iter=n_boot, seed=seed, metrics=("auc",))["auc"]
    return {"auc": round(float(roc_auc_score(labels, scores)), 3), "lo": round(float(b["lo"]), 3),
            "hi": round(float(b["hi"]), 3), "n_real": int(len(neg)), "n_fake": int(len(pos))}


def analyse_all(det, imgs: list[torch.Tensor], batch: int = 4) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {}
    for s in range(0, len(imgs), batch):
        out = det.window_analysis(torch.stack(imgs[s : s + batch]))
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def run(mod: str, a: argparse.Namespace, runs: Path) -> dict:
    t0 = time.time()
    model = a.model.get(mod, MODELS[mod])
    det = load_detector(model)
    det.config["progress"] = False
    det.config["z_reference"] = a.z_reference
    det.config["search_window"], det.config["search_stride"] = a.search_window, a.search_stride
    split = btd_real_split(shared_manifest(), modalities=(mod,), seed=0)
    train, val, test = (split.subset(s) for s in ("train", "val", "test"))
    fit_imgs, _, _ = images_of(train.with_rows(stable_subset(list(train), a.n_fit)), det.preprocessing)
    val_imgs, _, _ = images_of(val.with_rows(stable_subset(list(val), a.n_val)), det.preprocessing)
    vol_fit, vol_val, vol_names = [], [], []
    for rel in HELD_OUT[mod]:
        sl = volume_slices(rel, det, a.per_volume)
        vol_fit += sl[0::2]
        vol_val += sl[1::2]
        vol_names.append(f"{rel} ({len(sl)} slices)")
    print(f"[{mod}] statistics on {len(fit_imgs)} manifest train reals + {len(vol_fit)} volume slices; "
          f"calibration on {len(val_imgs)} val reals + {len(vol_val)} volume slices", flush=True)
    summary = det.fit_window_norm(fit_imgs + vol_fit, val_imgs + vol_val, deficit=a.deficit,
                                  source=f"manifest {mod} train reals (stable subset {len(fit_imgs)}) + even slices of "
                                  + "; ".join(vol_names))
    print(f"[{mod}] fitted in {summary['seconds']} s: {json.dumps(summary)}", flush=True)
    det.config["progress"] = True
    det.save(runs / f"btd_{mod}")
    det.config["progress"] = False

    test_reals = test.with_rows(stable_subset(list(test), a.n_test))
    tampered = make_tampered_set(test_reals, runs / "tampered" / mod, fraction=1.0, seed=0, show_progress=False)
    r_imgs, r_rows, _ = images_of(test_reals, det.preprocessing)
    t_imgs, t_rows, t_masks = images_of(tampered, det.preprocessing, masks=True)
    R, T = analyse_all(det, r_imgs), analyse_all(det, t_imgs)
    kinds = np.array([r.generator for r in t_rows])
    res: dict = {"modality": mod, "model": str(model), "fit": summary, "deficit": det.config["window_norm"]["deficit"], "z_reference": a.z_reference, "n_test_reals": len(r_imgs),
                 "n_tampered": len(t_imgs), "whole_slice": {}, "roi": {}, "pixel_auc": {}}
    # both z references from the same windows: plain z, and z minus the image's median window z
    for X in (R, T):
        for key in ("z", "z2"):
            zw = X[f"{key}_windows_plain"]
            X[f"{key}_plain"] = zw.max(1)
            X[f"{key}_median"] = (zw - np.median(zw, axis=1, keepdims=True)).max(1)
    for kind in ("inject", "remove"):
        sel = kinds == f"tamper-{kind}"
        res["whole_slice"][kind] = {"residual": auc(R["residual"], T["residual"][sel]),
                                    "z": auc(R["z_plain"], T["z_plain"][sel]),
                                    "z − median": auc(R["z_median"], T["z_median"][sel]),
                                    "z2": auc(R["z2_plain"], T["z2_plain"][sel]),
                                    "z2 − median": auc(R["z2_median"], T["z2_median"][sel])}
    # pixel AUC of the maps vs the tamper masks; centres of the masks for the ROI setting
    centres, pix = [], {"residual": ([], [], []), "z": ([], [], []), "z2": ([], [], [])}
    for i, m in enumerate(t_masks):
        mask = m.numpy() if m is not None else None
        if mask is None:
            centres.append(None)
            continue
        if mask.shape != R["residual_map"].shape[1:]:
            mask = standardise(mask, R["residual_map"].shape[-1], fit=det.preprocessing.fit)
        mask = mask > 0.5
        ys, xs = np.nonzero(mask)
        centres.append((float(ys.mean()), float(xs.mean())) if len(ys) else None)
        for key, mkey in (("residual", "residual_map"), ("z", "z_map"), ("z2", "z2_map")):
            pix[key][0].append(T[mkey][i].ravel()[::4])
            pix[key][1].append(mask.ravel()[::4])
            pix[key][2].append(kinds[i])
    res["pixel_auc_by_attack"] = {"inject": {}, "remove": {}}
    for key, (maps, masks, ks) in pix.items():
        if masks:
            res["pixel_auc"][key] = round(float(roc_auc_score(np.concatenate(masks), np.concatenate(maps))), 3)
            for kind in ("inject", "remove"):
                sel = [j for j, k in enumerate(ks) if k == f"tamper-{kind}"]
                if sel:
                    res["pixel_auc_by_attack"][kind][key] = round(float(roc_auc_score(
                        np.concatenate([masks[j] for j in sel]), np.concatenate([maps[j] for j in sel]))), 3)
    # the paper's ROI setting, paired: tampered patch vs the same patch of its untouched source
    src_index = {str(r.resolve(test_reals.root)): i for i, r in enumerate(r_rows)}
    pairs = [(src_index.get(t.extra.get("original_path")), j, c) for j, (t, c) in enumerate(zip(t_rows, centres))]
    pairs = [(i, j, c) for i, j, c in pairs if i is not None and c is not None]
    sw = det.config["search_window"]
    settings = {"residual, whole patch": ("residual", "full", None, 32),
                "residual, central 32×32": ("residual", "center", None, 32),
                **({f"residual, central {sw}×{sw}": ("residual", "center", None, sw)} if sw != 32 else {}),
                f"z, central {sw}×{sw}": ("z", None, "none", 32),
                f"z − patch median z, central {sw}×{sw}": ("z", None, "median", 32),
                f"z2 (two-sided), central {sw}×{sw}": ("z2", None, "none", 32),
                f"z2 − patch median z2, central {sw}×{sw}": ("z2", None, "median", 32)}
    for name, (mode, region, ref, centre) in settings.items():
        det.set_window_score(mode)
        det.config["center_patch"] = centre
        if region:
            det.config["score_region"] = region
        if ref:
            det.config["z_reference"] = ref
        src = det.raw_scores(torch.stack([r_imgs[i] for i, _, _ in pairs]), centers=[c for _, _, c in pairs])
        cop = det.raw_scores(torch.stack([t_imgs[j] for _, j, _ in pairs]), centers=[c for _, _, c in pairs])
        det.config["score_region"], det.config["center_patch"] = "full", 32
        det.config["z_reference"] = a.z_reference
        k = np.array([kinds[j] for _, j, _ in pairs])
        res["roi"][name] = {kind: auc(src[k == f"tamper-{kind}"], cop[k == f"tamper-{kind}"]) for kind in ("inject", "remove")}
    det.set_window_score("z")
    res["seconds"] = round(time.time() - t0, 1)
    print(f"[{mod}] done in {res['seconds']} s", flush=True)
    return res


def fmt(m: dict | None) -> str:
    return "n/a" if not m else f"{m['auc']:.3f} [{m['lo']:.2f}, {m['hi']:.2f}]"


def markdown(results: list[dict]) -> str:
    lines = ["| modality | setting | score | inject AUC [95% CI] | remove AUC [95% CI] | n (real+fake per attack) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        keys = [("residual", "residual (paper, max of windows)"), ("z", "search mode: max window z"),
                ("z − median", "search mode: max window z − image median z"),
                ("z2", "two-sided search mode: max window z2"),
                ("z2 − median", "two-sided search mode: max window z2 − image median z2")]
        for key, name in keys:
            w = r["whole_slice"]
            lines.append(f"| {r['modality']} | whole slice | {name} | {fmt(w['inject'][key])} | {fmt(w['remove'][key])} "
                         f"| {w['inject'][key]['n_real']}+{w['inject'][key]['n_fake']} / "
                         f"{w['remove'][key]['n_real']}+{w['remove'][key]['n_fake']} |")
        for name, per in r["roi"].items():
            n = " / ".join(f"{per[k]['n_real']}+{per[k]['n_fake']}" if per[k] else "0" for k in ("inject", "remove"))
            lines.append(f"| {r['modality']} | ROI centred on the tamper (paired) | {name} | {fmt(per['inject'])} "
                         f"| {fmt(per['remove'])} | {n} |")
    lines += ["", "| modality | tamper masks | heat-map pixel AUC, residual | search-mode z | two-sided z2 |",
              "|---|---|---|---|---|"]
    for r in results:
        rows = [("both attacks", r["pixel_auc"])] + [(k, r["pixel_auc_by_attack"][k]) for k in ("inject", "remove")]
        for name, p in rows:
            lines.append(f"| {r['modality']} | {name} | {p.get('residual')} | {p.get('z')} | {p.get('z2')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: few images (numbers not meaningful)")
    ap.add_argument("--modalities", nargs="+", default=["ct", "mri"], choices=sorted(MODELS))
    ap.add_argument("--n-fit", type=int, default=None, help="manifest train reals for the statistics (default 48)")
    ap.add_argument("--n-val", type=int, default=None, help="manifest val reals for the calibration (default 40)")
    ap.add_argument("--per-volume", type=int, default=None, help="slices per held-out volume (default 24)")
    ap.add_argument("--n-test", type=int, default=None, help="test reals (stable subset; default 48, as the cards)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "window_normalisation")
    ap.add_argument("--runs", type=Path, default=Path("runs/btd_window_norm"))
    ap.add_argument("--search-window", type=int, default=32, help="search window side, px at 256² (default 32)")
    ap.add_argument("--search-stride", type=int, default=16, help="search window stride (default 16)")
    ap.add_argument("--model", nargs="+", default=[], metavar="MODALITY=DIR",
                    help="measure these model directories instead of the shipped btd-ct / btd-mri (e.g. ct=runs/x/btd_ct)")
    ap.add_argument("--deficit-feature", choices=DEFICIT_FEATURES, default=DEFICIT_DEFAULTS["feature"],
                    help="two-sided score: texture of the sub-windows (input std or residual)")
    ap.add_argument("--deficit-sub-window", type=int, default=DEFICIT_DEFAULTS["sub_window"])
    ap.add_argument("--deficit-sub-stride", type=int, default=DEFICIT_DEFAULTS["sub_stride"])
    ap.add_argument("--deficit-binning", choices=DEFICIT_BINNINGS, default=DEFICIT_DEFAULTS["binning"])
    ap.add_argument("--z-reference", choices=("none", "median"), default="median",
                    help="z reference of the saved models (both are measured: none also reports the median variant)")
    a = ap.parse_args()
    a.model = dict(m.split("=", 1) for m in a.model)
    a.deficit = {"feature": a.deficit_feature, "sub_window": a.deficit_sub_window, "sub_stride": a.deficit_sub_stride,
                 "binning": a.deficit_binning}
    q = a.quick
    a.n_fit = a.n_fit or (6 if q else 48)
    a.n_val = a.n_val or (6 if q else 40)
    a.per_volume = a.per_volume or (4 if q else 24)
    a.n_test = a.n_test or (6 if q else 48)
    torch.set_num_threads(1)
    t0 = time.time()
    results = [run(mod, a, a.runs) for mod in a.modalities]
    a.out.mkdir(parents=True, exist_ok=True)
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    (a.out / "results.json").write_text(json.dumps({"config": cfg, "seconds": round(time.time() - t0, 1),
                                                    "results": results}, indent=1, default=str))
    md = markdown(results)
    (a.out / "results.md").write_text(md)
    print(md)
    print(f"total {time.time() - t0:.0f} s; models with statistics under {a.runs}")


if __name__ == "__main__":
    main()
