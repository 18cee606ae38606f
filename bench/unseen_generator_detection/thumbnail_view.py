"""Does the matched view's verdict on the aligned candidates come from image *size*, not generation?

The published fakes are mostly thumbnails (median short side 99 px, 85 % under 256 px) while the reals
are 256 px: every view first brings both to the model size, so the fakes alone arrive upsampled ~2.6×.
This scores the same test rows (reals and published fakes; no tampered copies) in one more
processing-matched view, **thumbnail**: every image, real or fake, is standardised to the model size,
then resized to 96×96 and back (bicubic; ``MatchedProcessing(size=(96, 96), jpeg_quality=None)``), so
both classes carry the same thumbnail-scale upsampling and neither has detail the other lacks.
The controls are oriented as in ``run.py`` (signs fitted on the train-split orientation sample, in this
view). Numbers: AUC per anatomy-matched generator and their mean, 1,000 bootstrap draws.

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/unseen_generator_detection/thumbnail_view.py \
        --model cnn_history=runs/aligned/candidates_history/forensic_cnn --model npr_history=runs/aligned/candidates_history/npr
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (the benchmark's own data, comparisons and metrics)

from medforensics.benchmark.protocol import score_manifest  # noqa: E402
from medforensics.data.processing import MatchedProcessing  # noqa: E402
from medforensics.detectors import load_detector  # noqa: E402

THUMBNAIL = MatchedProcessing(size=(96, 96), jpeg_quality=None)
SKIP = ("zed", "fusion", "aligned/dski_efficientnet_lite0")  # slow scorers, not the question here


def scored(det, manifest, cache: Path) -> dict[str, float]:
    rows_key = hashlib.sha256("\n".join(sorted(r.path for r in manifest)).encode()).hexdigest()[:16]
    if cache.is_file() and json.loads(cache.read_text()).get("rows_key") == rows_key:
        return json.loads(cache.read_text())["scores"]
    t0 = time.time()
    s = score_manifest(det, manifest, view="matched", matched=THUMBNAIL, show_progress=False)
    out = {r.path: float(v) for r, v in zip(s.rows, s.scores)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"rows_key": rows_key, "chain": THUMBNAIL.describe(), "scores": out}))
    print(f"    thumbnail: {len(out)} images in {time.time() - t0:.0f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(bench.ROOT / "runs"))
    ap.add_argument("--work", default=str(bench.ROOT / "runs" / "unseen_generator_detection"))
    ap.add_argument("--model", action="append", default=[], help="extra candidate NAME=DIR (repeatable)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default=str(HERE / "thumbnail_view.json"))
    args = ap.parse_args()
    runs, work = Path(args.runs), Path(args.work)
    data = bench.test_data(work)
    manifest = data["manifest"].filter(lambda r: r.family != "tamper")
    scores: dict[str, dict[str, float]] = {}
    for m in bench.discover_models(runs, args.model):
        if m["name"] in SKIP or m["name"].startswith(SKIP):
            continue
        print(f"[{m['name']}]", flush=True)
        key = f"{m['name'].replace('/', '__')}-{bench._files_key(Path(m['dir']))}"
        scores[m["name"]] = scored(load_detector(m["dir"]), manifest, work / "scores" / key / "thumbnail.json")
    orient = bench.orientation_data(data["split"], data["shared"], work)
    signs = {}
    for name, ctl in bench.controls().items():
        print(f"[{name}]", flush=True)
        scores[name] = scored(ctl, manifest, work / "scores" / f"control-{name}-v1" / "thumbnail.json")
        signs[name] = bench.fit_signs(orient, scored(ctl, orient, work / "scores" / f"control-{name}-v1-orientation"
                                                     / "thumbnail.json"))
    common = set.intersection(*(set(s) for s in scores.values()))
    rows = [r for r in manifest if r.path in common]
    comps = {k: c for k, c in bench.comparisons(rows, data["matched_generators"]).items() if c["kind"] != "tamper"}
    result = {"chain": THUMBNAIL.describe(), "n_real": sum(r.label == "real" for r in rows), "models": {}}
    print(f"\nthumbnail view ({THUMBNAIL.describe()}), anatomy-matched generators:")
    for name, s in scores.items():
        arr = np.array([s[r.path] for r in rows])
        res = bench.metrics(arr, comps, signs.get(name), args.n_boot, 0)
        per_gen = {c["generator"]: round(res["comparisons"][n]["auc"], 3) for n, c in comps.items()
                   if c["kind"] == "generator" and c["anatomy_matched"]}
        mean = res["summary"]["published_matched_mean"]
        result["models"][name] = {"published_matched_mean": round(mean, 4), "per_generator": per_gen}
        print(f"  {name:34s} mean {mean:.3f}  " + "  ".join(f"{g} {a:.2f}" for g, a in per_gen.items()))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
