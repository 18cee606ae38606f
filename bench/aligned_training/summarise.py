"""Collect the candidates' training records into results.json and results.md (this folder).

    .venv/bin/python bench/aligned_training/summarise.py [runs/aligned/candidates] [STEM]

STEM (default ``results``) names the output files: ``STEM.json`` and ``STEM.md`` in this folder (the history
candidates use ``results_history``).

Per model directory: detector, training pairs/steps/seconds, the best epoch and its validation AUC on the
held-out family, the threshold, the leak check, and the AUC on the aligned test pairs (test-split reals,
every family) from test_metrics.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(model_dir: Path) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())
    tr = cfg.get("training", {})
    data = tr.get("data", {})
    hist = tr.get("history", [])
    best = hist[tr["best_epoch"] - 1] if hist and tr.get("best_epoch", 0) > 0 else {}
    test = {}
    if (model_dir / "test_metrics.json").is_file():
        test = json.loads((model_dir / "test_metrics.json").read_text()).get("aligned_test_pairs", {})
    return {
        "model_dir": str(model_dir), "detector": cfg["detector"], "shuffle_labels": data.get("shuffle_labels"),
        "holdout_family": data.get("holdout_family"), "train_pairs": data.get("train", {}).get("pairs"),
        "train_pairs_tamper": data.get("train", {}).get("pairs_tamper"), "train_families": data.get("train", {}).get("families"),
        "val_pairs": data.get("val", {}).get("pairs"), "crop": data.get("crop"), "crops_per_pair": data.get("crops_per_pair"),
        "epochs": len(hist), "best_epoch": tr.get("best_epoch"), "train_seconds": tr.get("seconds"),
        "train_loss_per_epoch": [round(h["train_loss"], 4) for h in hist],
        "val_auc_per_epoch": [round(h.get("val_auc", float("nan")), 4) for h in hist],
        "val_auc_best": best.get("val_auc"), "threshold": cfg.get("threshold"),
        "leak_check": data.get("leak_check", {}), "config": cfg.get("config"),
        "aligned_test_pairs": test, "post_process": data.get("post_process"), "val_history": data.get("val_history"),
    }


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/aligned/candidates")
    stem = sys.argv[2] if len(sys.argv) > 2 else "results"
    rows = [one(d) for d in sorted(root.iterdir()) if (d / "config.json").is_file()]
    (HERE / f"{stem}.json").write_text(json.dumps(rows, indent=1, default=float))
    lines = ["| model | train pairs (tamper) | epochs (best) | train loss by epoch | val AUC held-out family by epoch "
             "| τ | test-pair AUC all | per family |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["aligned_test_pairs"]
        fams = ", ".join(f"{k} {v['auc']:.3f}" for k, v in t.get("per_family", {}).items())
        name = Path(r["model_dir"]).name
        lines.append(f"| {name} | {r['train_pairs']} ({r['train_pairs_tamper']}) | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['train_loss_per_epoch']} | {r['val_auc_per_epoch']} | {r['threshold']:.4f} | "
                     f"{t.get('auc', float('nan')):.3f} | {fams} |")
    (HERE / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
