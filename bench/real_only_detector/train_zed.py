"""Train the real-only ``zed`` coder on the shared reals' training split (all six modalities).

Split as ``train.recipes.prepare_supervised_data``: ``patient_split(test_fraction=0.2, seed=0)``, then
``train_val_split(val_fraction=0.1, seed=0)``; only real rows are used (the coder never sees a fake).
Images at the model's 256 px centre crop (the shared reals are 256×256, LC25000 224×224 → upscaled),
random 64 px training crops at every pyramid level; no history augmentation.
Calibrated on the real validation split. A fixed number of steps (deterministic; 1500 steps ≈ 0.5 s of
CPU each on one core ≈ 12.5 CPU minutes, + ~1.5 min loading and calibration: inside a 15-minute
one-core budget); ``--seconds`` is only a wall-time safety stop (a shared machine runs slower).

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/real_only_detector/train_zed.py --out runs/zed
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from medforensics.data import ImageDataset, Manifest, patient_split, shared_manifest, train_val_split
from medforensics.detectors import create_detector


def real_splits(seed: int = 0) -> dict[str, Manifest]:
    m = shared_manifest()
    split = patient_split(m, test_fraction=0.2, seed=seed)
    tv = train_val_split(split.subset("train"), val_fraction=0.1, seed=seed)
    parts = {"train": tv.subset("train"), "val": tv.subset("val"), "test": split.subset("test")}
    return {k: v.filter(label="real") for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/zed")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=1500.0, help="wall-time safety stop of the training loop")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0, c0 = time.time(), time.process_time()
    parts = real_splits(args.seed)
    det = create_detector("zed", seed=args.seed, steps=args.steps, max_seconds=args.seconds, progress=False)
    train = ImageDataset(parts["train"], det.preprocessing, seed=args.seed)
    val = ImageDataset(parts["val"], det.preprocessing, seed=args.seed)
    summary = det.fit(train, val)
    summary["split"] = {k: len(v) for k, v in parts.items()}
    summary["total_seconds"] = round(time.time() - t0, 1)
    summary["total_cpu_seconds"] = round(time.process_time() - c0, 1)
    det.training_summary = summary
    det.save(args.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    print("history (every 500 steps):", [h for h in summary["history"] if h["step"] % 500 == 0])


if __name__ == "__main__":
    main()
