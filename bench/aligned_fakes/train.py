"""Train members of the aligned autoencoder family one after another, each for a CPU-time budget, and save them.

Training reals: the shared reals of the **train** part of the recipe's split —
``patient_split(shared manifest, test_fraction=0.2, seed=0)`` and then
``train_val_split(train, val_fraction=0.1, seed=0)`` — so neither the validation nor the test reals of
``medforensics train``'s default split are seen by a decoder. Crops: ``--n-crops`` random single-channel
``--crop``-px crops at 8-px-aligned offsets (seed 0). Each model first warms up for ``warmup_steps``,
then its cosine schedule's horizon is set from the measured seconds per step so that it ends within
its share of the budget (the smaller of ``--cpu-s-per-model`` CPU seconds and its share of the
wall-clock time left before ``--deadline``). Models already in ``--models`` are skipped.

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/aligned_fakes/train.py --models runs/aligned/models \\
        --cpu-s-per-model 225 --deadline 16:43
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import torch

from medforensics.data import patient_split, shared_manifest, train_val_split
from medforensics.synth.aligned import create_ae, psnr, random_crops, read_real
from medforensics.synth.aligned.transforms import AlignError, to_float

DEFAULT = [
    "ae-pixelshuffle-s4-kl-z16-w32",
    "ae-transposed-s4-kl-z16-w32",
    "ae-nearest-s4-kl-z16-w32",
    "ae-bilinear-s4-kl-z16-w32",
    "ae-pixelshuffle-s8-kl-z64-w32",
    "ae-nearest-s4-vq-z16-w32",
    "ae-transposed-s8-vq-z64-w32",
    "ae-bilinear-s4-kl-z16-w32-seed1",
    "ae-nearest-s4-kl-z16-w48",
]


def split_reals():
    """(train, val, test) real rows of the recipe's default split of the shared manifest."""
    split = patient_split(shared_manifest(), test_fraction=0.2, seed=0)
    tv = train_val_split(split.subset("train"), val_fraction=0.1, seed=0)
    return (tv.subset("train").filter(label="real"), tv.subset("val").filter(label="real"),
            split.subset("test").filter(label="real"))


def load_floats(rows, limit: int | None = None, every: int = 1) -> list[np.ndarray]:
    out = []
    for path in rows.paths()[::every]:
        if limit is not None and len(out) >= limit:
            break
        try:
            out.append(to_float(read_real(path)[0]))
        except AlignError:
            continue
    return out


def crop_psnr(gen, crops: np.ndarray) -> float:
    rec = gen.round_trip(torch.from_numpy(crops[:, None])).numpy()[:, 0]
    return float(np.mean([psnr(a, b) for a, b in zip(crops, rec)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=Path("runs/aligned/models"))
    ap.add_argument("--aes", default=",".join(DEFAULT))
    ap.add_argument("--cpu-s-per-model", type=float, default=225.0)
    ap.add_argument("--deadline", default=None, help="HH:MM UTC by which the last model must be done")
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-crops", type=int, default=8192)
    ap.add_argument("--max-steps", type=int, default=20000)
    args = ap.parse_args()
    torch.manual_seed(0)
    deadline = None
    if args.deadline:
        now = dt.datetime.now(dt.timezone.utc)
        hh, mm = map(int, args.deadline.split(":"))
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    train_rows, _, test_rows = split_reals()
    train = load_floats(train_rows)
    crops = random_crops(train, args.n_crops, args.crop, seed=0)
    mon = random_crops(load_floats(test_rows, every=4), 48, 64, seed=1)
    print(f"{len(train)} train reals → {len(crops)} crops of {args.crop} px; monitor: 48 held-out 64-px crops",
          flush=True)
    names = [n for n in args.aes.split(",") if n]
    log_path = args.models / "training_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else []
    for i, name in enumerate(names):
        out = args.models / name
        if (out / "config.json").is_file():
            print(f"{name}: already trained, skipped", flush=True)
            continue
        gen = create_ae(name, resolution=args.crop)
        warm = int(gen.config["warmup_steps"])
        c0, w0 = time.process_time(), time.time()
        gen.config["schedule_steps"] = args.max_steps  # warm-up does not depend on the horizon
        gen.fit(crops, steps=warm, batch_size=args.batch, progress=False, grid=0)
        cps, wps = (time.process_time() - c0) / warm, (time.time() - w0) / warm
        budget_c = args.cpu_s_per_model - (time.process_time() - c0)
        steps = budget_c / cps
        if deadline is not None:
            share = (deadline - time.time()) / (len(names) - i)
            steps = min(steps, share / wps)
        horizon = int(min(args.max_steps, max(warm + 50, warm + steps)))
        gen.config["schedule_steps"] = horizon
        gen.fit(crops, steps=horizon, batch_size=args.batch, progress=False, grid=0)
        p = crop_psnr(gen, mon)
        rec = {"name": name, "steps": gen.step, "cpu_s": round(time.process_time() - c0, 1),
               "wall_s": round(time.time() - w0, 1), "cpu_s_per_step": round(cps, 4),
               "heldout_crop_psnr": round(p, 2), "final_train_losses": gen.training_summary["final_losses"]}
        gen.training_summary.update({"registry_name": name, "heldout_crop_psnr": round(p, 2),
                                     "train_split": "patient_split(shared, 0.2, seed 0) → train_val_split(0.1, seed 0) train",
                                     "n_train_reals": len(train), "cpu_s": rec["cpu_s"]})
        gen.save(out, overwrite=True, grid=0)
        log = [r for r in log if r["name"] != name] + [rec]
        log_path.write_text(json.dumps(log, indent=1))
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
