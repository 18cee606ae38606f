"""Seconds per training epoch of DSKI (and UniFD feature extraction) on a pretrained backbone, CPU.

Draws ``--n`` shared images (half real, half fake, a seeded draw over all modalities), preprocessed
to 256×256 with the stored Preprocessing, and trains DSKI with ``--backbone`` (default
efficientnet-lite0, adapters on 3 blocks) for one epoch with the paper's recipe (SGD, batch 32).
Prints and writes JSON: seconds per epoch, per image, peak RSS. This is a speed check, not an
accuracy claim (one epoch on 200 images).

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python bench/timing/dski_epoch_time.py --json bench/results/dski_epoch_time.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import emit, peak_rss_mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from medforensics.data import ImageDataset, Manifest, shared_manifest
    from medforensics.detectors import create_detector

    m = shared_manifest()
    rng = np.random.default_rng(args.seed)
    real = [r for r in m if r.label == "real"]
    fake = [r for r in m if r.label == "fake"]
    rows = [real[i] for i in rng.choice(len(real), args.n // 2, replace=False)]
    rows += [fake[i] for i in rng.choice(len(fake), args.n - args.n // 2, replace=False)]
    det = create_detector("dski", seed=args.seed, backbone=args.backbone, epochs=args.epochs,
                          batch_size=args.batch_size, progress=False)
    ds = ImageDataset(Manifest.from_rows(rows, root=m.root), det.preprocessing, seed=args.seed, cache=True)
    t = time.time()
    for i in range(len(ds)):  # decode once (cached) so the epoch time is the model's
        ds[i]
    t_load = time.time() - t
    summary = det.fit(ds, None)
    epoch_s = [h["seconds"] for h in summary["history"]]
    t = time.time()
    det.score(torch.stack([ds[i]["image"] for i in range(64)]))
    score_s = time.time() - t
    emit({
        "backbone": args.backbone, "n_images": len(ds), "image_size": det.preprocessing.size,
        "blocks": det.blocks, "trainable_parameters": summary["trainable_parameters"],
        "batch_size": args.batch_size, "epochs": args.epochs, "seconds_per_epoch": epoch_s,
        "seconds_per_image_train": round(float(np.mean(epoch_s)) / len(ds), 4),
        "seconds_per_image_score": round(score_s / 64, 4), "decode_seconds_once": round(t_load, 1),
        "bank_build_and_fit_total_seconds": summary["seconds"], "torch_threads": torch.get_num_threads(),
        "device": summary["device"], "peak_rss_mib": peak_rss_mib(),
    }, args.json)


if __name__ == "__main__":
    main()
