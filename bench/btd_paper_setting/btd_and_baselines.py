"""BTD and the five reconstruction baselines in the BTD paper's setting, on the shared real CT and MRI.

Per modality: patient-level train/val/test split of the real PNGs (``btd_real_split``); every
detector is trained on patches of the training reals (one lesion-like-centred + random
foreground-centred patches per image) and calibrated on validation-real patches; the four BTD
attack sets (TM/FM injection, TB/FB removal incl. RePaint diffusion inpainting with the trained BTD
U-Net, plus lesion-size variants) are built from the test reals; all detectors score the same
patches. Prints Table 1 (AUC / EER, bootstrap mean and 95% CI), pixel AUC, the d-ablation, the
lesion-size ablation, training time and scoring images/s; writes JSON/CSV/Markdown to ``--out``
and models, attack sets and plots under ``--runs`` (gitignored).

CPU budget: the default run is sized for ≤ ~25 min wall-clock on a shared 2-core machine
(OMP_NUM_THREADS=1): at most 500 training steps per detector, with wall-time caps (BTD and
ddpm_ood 120 s, each autoencoder 30 s per modality) so a busy machine trains fewer steps rather
than overrunning — the steps actually done are printed and saved. ``--quick`` is a ~1-minute
smoke run.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/btd_paper_setting/btd_and_baselines.py
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message=".*CUDA is not available.*")

from medforensics.benchmark.btd_protocol import load_patches, merge_results, run_btd_protocol, training_patches  # noqa: E402
from medforensics.benchmark.records import peak_rss_mib  # noqa: E402
from medforensics.data import shared_manifest  # noqa: E402
from medforensics.detectors import create_detector  # noqa: E402
from medforensics.synth.attacks import RepaintModel, btd_real_split, build_attack_sets  # noqa: E402


DETECTORS = ("btd", "ddpm_ood", "ae", "unet_ae", "inpaint_ae", "oc_vae")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~1-minute smoke run (tiny models, few images)")
    p.add_argument("--steps", type=int, default=None, help="training steps of every detector (default 500; quick 8)")
    p.add_argument("--epochs", type=int, default=None, help="instead of --steps: epochs over the training patches")
    p.add_argument("--size", type=int, default=None, help="patch side in px at 256² (default 48; quick 32)")
    p.add_argument("--out", default="bench/results/btd_paper_setting", help="text results (JSON/CSV/Markdown)")
    p.add_argument("--runs", default="runs/btd_paper_setting", help="models, attack sets and plots (gitignored)")
    p.add_argument("--modalities", default="ct,mri")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap iterations (default 100; quick 10)")
    p.add_argument("--ablation-n", type=int, default=None, help="patches per class per column in the d-ablation (default 6)")
    p.add_argument("--d-values", default=None, help="comma list (default 1,2,5,10,50,100,400; quick 1,2,5)")
    p.add_argument("--radii", default="5,10,15", help="lesion radii (px at 256²) of the lesion-size ablation")
    p.add_argument("--max-per-set", type=int, default=None, help="cap per attack-set side (default none; quick 4)")
    p.add_argument("--repaint-steps", type=int, default=None, help="RePaint inference steps (default 50; quick 10)")
    p.add_argument("--diffusion-seconds", type=float, default=None,
                   help="wall-time cap of BTD / ddpm_ood training per modality (default 120; 0 = none)")
    p.add_argument("--ae-seconds", type=float, default=None,
                   help="wall-time cap of each autoencoder's training per modality (default 30; 0 = none)")
    return p.parse_args()


def settings(a: argparse.Namespace) -> dict:
    q = a.quick
    d_values = a.d_values or ("1,2,5" if q else "1,2,5,10,50,100,400")
    return {
        "steps": a.steps or (8 if q else 500),
        "epochs": a.epochs,
        "size": a.size or (32 if q else 48),
        "n_boot": a.n_boot or (10 if q else 100),
        "ablation_n": a.ablation_n or (3 if q else 6),
        "diffusion_seconds": (120.0 if a.diffusion_seconds is None else a.diffusion_seconds) or None,
        "ae_seconds": (30.0 if a.ae_seconds is None else a.ae_seconds) or None,
        "d_values": [int(v) for v in d_values.split(",")],
        "radii": [float(v) for v in a.radii.split(",") if v] if not q else [5.0],
        "max_per_set": a.max_per_set or (4 if q else None),
        "repaint_steps": a.repaint_steps or (10 if q else 50),
        "modalities": [m.strip() for m in a.modalities.split(",") if m.strip()],
        "seed": a.seed,
        "width": 4 if q else 8,
        "per_image_train": 2 if q else 3,
    }


def detector_configs(s: dict, n_train: int) -> dict[str, dict]:
    """Constructor options; all score the central size/2 square of each patch (lesion at the centre).
    ``--epochs`` is turned into steps (batch 16) so every detector sees the same number of batches."""
    common = {"seed": s["seed"], "preprocessing": {"size": s["size"], "channels": 1}, "progress": False,
              "center_patch": s["size"] // 2, "score_region": "center"}
    train = {"steps": s["epochs"] * math.ceil(n_train / 16) if s["epochs"] else s["steps"], "batch_size": 16}
    w = s["width"]
    ae = {**common, **train, "width": w, "depth": 4 if s["size"] % 16 == 0 else 3, "latent_channels": 16,
          "max_seconds": s["ae_seconds"]}
    diff = {**common, **train, "base_width": w, "max_seconds": s["diffusion_seconds"]}
    return {
        "btd": {**diff, "norm_num_groups": min(8, w), "patch_size": s["size"]},
        "ddpm_ood": {**diff, "levels": 3, "t_values": [250], "ddim_steps": 10},
        "ae": ae,
        "unet_ae": {**ae, "skip_levels": 2, "skip_dropout": 0.5},
        "inpaint_ae": {**ae, "skip_levels": 2},
        "oc_vae": {**{k: v for k, v in ae.items() if k != "latent_channels"}, "latent_dim": 32},
    }


def main() -> None:
    a = parse()
    s = settings(a)
    torch.set_num_threads(1)
    budget = "~1 min (smoke)" if a.quick else "≤ ~25 min wall-clock"
    print(f"BTD bench — CPU budget {budget} on a shared 2-core machine, OMP_NUM_THREADS=1, torch threads=1; "
          f"{'QUICK smoke run: numbers are not meaningful' if a.quick else 'full run'}", flush=True)
    print("settings:", json.dumps(s), flush=True)
    t_start = time.time()
    runs, out = Path(a.runs), Path(a.out)
    split = btd_real_split(shared_manifest(), modalities=s["modalities"], seed=s["seed"])
    split_counts = {f"{m}/{sp}": sum(1 for r in split if r.modality == m and r.split == sp)
                    for m in s["modalities"] for sp in ("train", "val", "test")}
    print("real images per split:", split_counts, flush=True)
    results, phases, train_info = {}, {}, {}
    for mod in s["modalities"]:
        label = mod.upper()
        sub = split.filter(modality=mod)
        t0 = time.time()
        limit = 12 if a.quick else None
        train_items = training_patches(sub, "train", size=s["size"], per_image=s["per_image_train"], seed=s["seed"],
                                       limit=limit, show_progress=False)
        val_items = training_patches(sub, "val", size=s["size"], per_image=2, seed=s["seed"], limit=limit,
                                     show_progress=False)
        phases[f"{label} patches"] = round(time.time() - t0, 1)
        print(f"[{label}] {len(train_items)} training / {len(val_items)} validation real patches "
              f"({phases[f'{label} patches']} s)", flush=True)
        dets, train_s = {}, {}
        configs = detector_configs(s, len(train_items))
        for name in DETECTORS:
            det = create_detector(name, **configs[name])
            t0 = time.time()
            summary = det.fit(train_items, val_items)
            train_s[name] = round(time.time() - t0, 1)
            det.save(runs / "models" / mod / name)
            dets[name] = det
            train_info[f"{name} ({label})"] = {"seconds": train_s[name], "steps": summary.get("steps"),
                                                "threshold": det.threshold,
                                                "achieved_fpr_val": det.calibration.get("achieved_fpr")}
            print(f"[{label}] trained {name:10s} in {train_s[name]:6.1f} s, {summary.get('steps')} steps (τ={det.threshold:.3f}, "
                  f"val FPR {det.calibration.get('achieved_fpr')})", flush=True)
        t0 = time.time()
        repaint = RepaintModel.from_detector(dets["btd"], num_inference_steps=s["repaint_steps"], jump_length=10,
                                             jump_n_sample=2)
        atk = build_attack_sets(sub, runs / "attacks" / mod, modalities=(mod,), seed=s["seed"], repaint=repaint,
                                lesion_radii=s["radii"], max_per_set=s["max_per_set"], overwrite=True, show_progress=False)
        phases[f"{label} attack sets"] = round(time.time() - t0, 1)
        print(f"[{label}] attack sets built in {phases[f'{label} attack sets']} s: {json.dumps(atk.counts)}", flush=True)
        patches = load_patches(atk.manifest, s["size"], show_progress=False)
        t0 = time.time()
        results[label] = run_btd_protocol(dets, patches, n_boot=s["n_boot"], seed=s["seed"], d_values=s["d_values"],
                                          ablation_per_class=s["ablation_n"], train_seconds=train_s, show_progress=False)
        phases[f"{label} protocol"] = round(time.time() - t0, 1)
        print(f"[{label}] protocol (scoring, bootstrap, d-ablation) in {phases[f'{label} protocol']} s", flush=True)
    merged = merge_results(results)
    total = round(time.time() - t_start, 1)
    merged.info.update(settings=s, split=split_counts, phases_seconds=phases, total_seconds=total, budget=budget,
                       training=train_info, peak_rss_mib=peak_rss_mib(), machine=platform.platform(),
                       torch=torch.__version__, quick=a.quick)
    written = merged.write(out, plots=False)
    plots = merged.write_plots(runs / "plots")
    print()
    print(merged.markdown())
    print(f"total wall-clock {total} s ({total / 60:.1f} min; budget {budget}); peak RSS {peak_rss_mib()} MiB")
    print("written:", ", ".join(str(p) for p in written.values()))
    print("plots:", ", ".join(str(p) for p in plots.values()))
    if not a.quick and total > 25 * 60:
        print(f"WARNING: over the 25-minute budget by {math.ceil(total / 60 - 25)} min", flush=True)


if __name__ == "__main__":
    main()
