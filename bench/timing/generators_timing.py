"""Generator factory on the shared data: training time per 100 steps, sampling time per 100 images.

    OMP_NUM_THREADS=1 nice -n 10 python bench/timing/generators_timing.py [--modality ct] [--resolution 64]
        [--timing-steps 10] [--timing-samples 16] [--train diffusion=280,gan-bce=750,vae=800,latent_diffusion=1100]
        [--grids bench/results/grids] [--models runs/generators_bench] [--json out.json]

Real images: the modality's real rows of the shared manifest, train split of the patient-level
split (``patient_split(seed=0)``, as ``medforensics synth train`` does), resized to the resolution
with ``io.standardise``. Each family uses the package's CPU preset (``CPU_CONFIGS``); ``gan-bce``
is the same DCGAN with the BCE loss instead of WGAN-GP. Timing: one warm-up step, then
``--timing-steps`` steps of ``--batch-size`` images (scaled to 100 steps), and
``--timing-samples`` samples (scaled to 100 images). ``--train`` then trains each listed variant
for that many steps from scratch and writes a 4×4 sample grid (seed 0) per variant, plus a grid
of real training images, into ``--grids``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import emit, peak_rss_mib

from medforensics.data import patient_split, shared_manifest
from medforensics.synth.generators import CPU_CONFIGS, create_generator, load_training_images, save_grid

VARIANTS = {
    "diffusion": ("diffusion", dict(CPU_CONFIGS["diffusion"])),
    "latent_diffusion": ("latent_diffusion", dict(CPU_CONFIGS["latent_diffusion"])),
    "gan": ("gan", dict(CPU_CONFIGS["gan"])),
    "gan-bce": ("gan", {**CPU_CONFIGS["gan"], "loss": "bce"}),
    "vae": ("vae", dict(CPU_CONFIGS["vae"])),
}


def _make(name: str, resolution: int, channels: int, **extra):
    family, config = VARIANTS[name]
    return create_generator(family, resolution=resolution, channels=channels, seed=0, **{**config, **extra})


def time_variant(name: str, images: np.ndarray, args: argparse.Namespace) -> dict:
    extra = {"vae_steps": 1} if VARIANTS[name][0] == "latent_diffusion" else {}  # time the diffusion phase
    gen = _make(name, args.resolution, images.shape[-1] if images.ndim == 4 else 1, **extra)
    gen.fit(images, steps=1 + int(bool(extra)), batch_size=args.batch_size, progress=False)  # warm-up
    start = gen.step
    t0 = time.perf_counter()
    gen.fit(images, steps=start + args.timing_steps, batch_size=args.batch_size, progress=False)
    train_s = (time.perf_counter() - t0) / args.timing_steps
    t0 = time.perf_counter()
    gen.sample(args.timing_samples, seed=0, batch_size=args.batch_size)
    sample_s = (time.perf_counter() - t0) / args.timing_samples
    out = {
        "family": gen.family, "config": gen.config, "parameters": gen.n_parameters(), "sampler": gen.describe_sampler(),
        "train_s_per_100_steps": round(100 * train_s, 1), "sample_s_per_100_images": round(100 * sample_s, 2),
    }
    if VARIANTS[name][0] == "latent_diffusion":
        vae = _make(name, args.resolution, 1, vae_steps=args.timing_steps + 2)
        vae.fit(images, steps=1, batch_size=args.batch_size, progress=False)
        t0 = time.perf_counter()
        vae.fit(images, steps=1 + args.timing_steps, batch_size=args.batch_size, progress=False)
        out["vae_phase_s_per_100_steps"] = round(100 * (time.perf_counter() - t0) / args.timing_steps, 1)
    return out


def train_variant(name: str, steps: int, images: np.ndarray, args: argparse.Namespace) -> dict:
    gen = _make(name, args.resolution, 1)
    t0 = time.perf_counter()
    summary = gen.fit(images, steps=steps, batch_size=args.batch_size, progress=args.progress, grid=0,
                      checkpoint_dir=Path(args.models) / name / "checkpoints" if args.models else None)
    seconds = time.perf_counter() - t0
    grid = save_grid(gen.sample(16, seed=0, batch_size=16), Path(args.grids) / f"{name}_{args.modality}{args.resolution}.png")
    if args.models:
        gen.training_summary["data"] = {"modality": args.modality, "split": "train", "label": "real"}
        gen.save(Path(args.models) / name, overwrite=True, grid=0)
    return {"steps": steps, "seconds": round(seconds, 1), "final_losses": summary["final_losses"],
            "grid": str(grid)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modality", default="ct")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--timing-steps", type=int, default=10)
    ap.add_argument("--timing-samples", type=int, default=16)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--train", default="", help="name=steps,… to train briefly and save sample grids")
    ap.add_argument("--grids", default="bench/results/grids")
    ap.add_argument("--models", default="", help="also save the briefly trained models here (e.g. runs/…)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)

    manifest = patient_split(shared_manifest(), seed=0)
    channels = 3 if args.modality in ("endoscopy", "histopathology") else 1
    images = load_training_images(manifest, args.resolution, channels, modality=args.modality, split="train")
    result = {
        "modality": args.modality, "resolution": args.resolution, "batch_size": args.batch_size,
        "n_train_images": int(len(images)), "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""), "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "timing_steps": args.timing_steps, "timing_samples": args.timing_samples, "timing": {},
    }
    print(f"{len(images)} real {args.modality} train images at {args.resolution}px; "
          f"torch threads {torch.get_num_threads()}; load {result['load_average_at_start']}", flush=True)
    print(f"{'variant':18s} {'params':>10s} {'train s/100 steps':>18s} {'sample s/100 img':>17s}  sampler", flush=True)
    for name in [v for v in args.variants.split(",") if v]:
        r = time_variant(name, images, args)
        result["timing"][name] = r
        n_par = sum(v for k, v in r["parameters"].items() if k != "ema")
        extra = f"  (VAE phase {r['vae_phase_s_per_100_steps']} s/100 steps)" if "vae_phase_s_per_100_steps" in r else ""
        print(f"{name:18s} {n_par:10,d} {r['train_s_per_100_steps']:18.1f} {r['sample_s_per_100_images']:17.2f}  "
              f"{r['sampler']}{extra}", flush=True)
    if args.train:
        result["brief_training"] = {}
        save_grid(images[:16], Path(args.grids) / f"real_{args.modality}{args.resolution}.png")
        for item in args.train.split(","):
            name, steps = item.split("=")
            r = train_variant(name.strip(), int(steps), images, args)
            result["brief_training"][name.strip()] = r
            losses = ", ".join(f"{k} {v:.4g}" for k, v in r["final_losses"].items())
            print(f"trained {name} {r['steps']} steps in {r['seconds']} s ({losses}) → {r['grid']}", flush=True)
    result["peak_rss_mib"] = peak_rss_mib()
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    emit(result, args.json)


if __name__ == "__main__":
    main()
