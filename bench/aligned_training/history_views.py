"""Do the aligned-pair detectors keep our own decoders' trace through the benchmark's views?

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/aligned_training/history_views.py \
        aligned/forensic_cnn=runs/aligned/candidates/forensic_cnn cnn_history=runs/aligned/candidates_history/forensic_cnn ...

The held-out family's (``bilinear``) aligned test pairs: the test-split reals of the aligned set
(``prepare_aligned_data``, seed 0, the split every candidate used) and the bilinear fakes made from
them, scored by each model through ``benchmark.protocol.score_manifest`` in the plain, matched
(0.5× bicubic round trip + JPEG 85) and laundered (0.875× + JPEG 80) views — the unseen-generator
benchmark's chains, here on our own fakes. No published fake is read. Also: the native sizes of the
benchmark's test reals and anatomy-matched published fakes (what ``standardise`` does to each class
before a view's chain). Writes ``history_views.json`` beside this script.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def main() -> None:
    from medforensics.benchmark.protocol import VIEWS, score_manifest
    from medforensics.data import Manifest, ManifestRow, shared_manifest
    from medforensics.detectors import load_detector
    from medforensics.eval.metrics import compute_metrics
    from medforensics.train.aligned import prepare_aligned_data

    specs = [a.partition("=")[::2] for a in sys.argv[1:]]
    if not specs and (HERE / "history_views.json").is_file():  # no model named: only (re)measure the sizes
        out = json.loads((HERE / "history_views.json").read_text())
    else:
        data = prepare_aligned_data(Manifest.read(ROOT / "runs/aligned/set/manifest.csv"), ROOT / "runs/aligned/work",
                                    holdout_family="bilinear", reals=shared_manifest(), seed=0)
        pairs = [p for p in data.test_pairs if p.family == "bilinear"]
        real_paths = sorted({p.real for p in pairs})
        mod = {p.real: p.modality for p in pairs}
        rows = [ManifestRow(path=r, label="real", modality=mod[r]) for r in real_paths]
        rows += [ManifestRow(path=p.fake, label="fake", modality=p.modality, generator=p.generator) for p in pairs]
        man = Manifest.from_rows(rows, root="/")
        out = {"pairs": len(pairs), "reals": len(real_paths), "models": {}}
        for name, d in specs:
            det = load_detector(ROOT / d)
            out["models"][name] = {}
            for view in VIEWS:
                t0 = time.time()
                s = score_manifest(det, man, view=view, show_progress=False)
                auc = compute_metrics(s.labels, s.scores)["auc"]
                out["models"][name][view] = round(float(auc), 4)
                print(f"{name:28s} {view:10s} AUC {auc:.3f}  ({len(s.rows)} images, {time.time() - t0:.0f} s)",
                      flush=True)
    out["native_short_side"] = native_sizes()
    print(json.dumps(out["native_short_side"], indent=1))
    (HERE / "history_views.json").write_text(json.dumps(out, indent=1))


def native_sizes() -> dict:
    """Short side (px) of the benchmark's test reals and anatomy-matched published fakes, as read."""
    from medforensics.data import anatomy_matched, patient_split, shared_manifest
    from medforensics.data.shared import real_anatomies
    from medforensics.io.preprocess import Preprocessing

    full = shared_manifest()
    anatomies = real_anatomies(full)
    test = patient_split(full, test_fraction=0.2, seed=0).filter(lambda r: r.split == "test")
    pre = Preprocessing()
    sizes: dict = {}
    for r in test:
        if r.label == "fake" and not anatomy_matched(r, anatomies):
            continue
        shape = pre.read(r.resolve(test.root), max_frames=1, modality=r.modality)[0].pixels.shape
        key = "real" if r.label == "real" else "published fake (anatomy-matched)"
        sizes.setdefault(key, []).append(min(shape[:2]))
    return {k: {"n": len(v), "median": float(np.median(v)), "min": int(min(v)), "max": int(max(v)),
                "share_below_256": round(float(np.mean(np.array(v) < 256)), 3)} for k, v in sizes.items()}


if __name__ == "__main__":
    main()
