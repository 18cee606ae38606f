"""How does the default model score the demo's tampered copies when they are PNGs beside DICOM originals
(the old demo) and when they are written back into DICOM (the demo now)?

Reads the ``results.json`` of ``medforensics demo`` runs and writes per run: flagged counts (tampered /
untouched), ROC AUC tampered vs untouched, how many copies score above / equal to / below their own original, median
scores, and the counts per modality and per attack.

    python bench/demo_tampered_copies/compare.py png=runs/demo-before dicom=runs/demo-after \
        --out bench/demo_tampered_copies/results.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def summarise(folder: Path) -> dict:
    payload = json.loads((folder / "results.json").read_text())
    rows = [r for r in payload["results"] if r["score"] is not None]
    tampered = [r for r in rows if "/tampered/" in r["path"]]
    real = [r for r in rows if "/real/" in r["path"]]
    y = np.r_[np.ones(len(tampered)), np.zeros(len(real))]
    s = np.r_[[r["score"] for r in tampered], [r["score"] for r in real]]
    per = defaultdict(lambda: [0, 0])
    for r in tampered:
        name = Path(r["path"]).name
        attack = "inject" if ".inject." in name else "remove"
        for key in (f"modality={r['modality']}", f"attack={attack}"):
            per[key][0] += r["verdict"] == "fake"
            per[key][1] += 1
    real_per = defaultdict(lambda: [0, 0])
    for r in real:
        real_per[f"modality={r['modality']}"][0] += r["verdict"] == "fake"
        real_per[f"modality={r['modality']}"][1] += 1
    by_name = {Path(r["path"]).name: r["score"] for r in real}
    pairs = [(r["score"], by_name.get(Path(r["path"]).name.split(".")[0] + ".dcm")) for r in tampered]
    pairs = [(a, b) for a, b in pairs if b is not None]
    return {
        "model": payload.get("model"), "detector": payload.get("detector"), "threshold": payload.get("threshold"),
        "tampered_flagged": f"{sum(r['verdict'] == 'fake' for r in tampered)}/{len(tampered)}",
        "untouched_flagged": f"{sum(r['verdict'] == 'fake' for r in real)}/{len(real)}",
        "unreadable": sum(r["score"] is None for r in payload["results"]),
        "auc_tampered_vs_untouched": round(float(roc_auc_score(y, s)), 4),
        # a copy whose score equals its original's (|Δ| < 1e-6): the model did not see the tampering at all
        "copies_vs_their_original": {
            "above": sum(a - b >= 1e-6 for a, b in pairs), "equal": sum(abs(a - b) < 1e-6 for a, b in pairs),
            "below": sum(b - a >= 1e-6 for a, b in pairs)},
        "median_score_tampered": round(float(np.median([r["score"] for r in tampered])), 4),
        "median_score_untouched": round(float(np.median([r["score"] for r in real])), 4),
        "tampered_flagged_by": {k: f"{a}/{b}" for k, (a, b) in sorted(per.items())},
        "untouched_flagged_by": {k: f"{a}/{b}" for k, (a, b) in sorted(real_per.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="label=demo-output-folder")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    out = {}
    for item in args.runs:
        label, folder = item.split("=", 1)
        out[label] = summarise(Path(folder))
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
