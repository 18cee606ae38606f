"""Issue 5: should the shipped default model be retrained with the development benchmark's fakes?

    nice -n 5 env OMP_NUM_THREADS=1 .venv/bin/python bench/issue5_default_model.py \
        --benchmark runs/bench/dev-medium/benchmark --json bench/results/issue5_default_model.json

The shipped ``default`` model is ``medforensics train forensic_cnn`` on the shared data (reals,
published-generator fakes and tampered copies; patient-level split, seed 0). Two models are
trained here at one equal, reduced budget on that same split:

* ``recipe``: the shipped recipe as it is;
* ``recipe+factory``: the same, plus the benchmark's *train* rows — factory fakes (our DDPM / DCGAN /
  VAE) and, as many, the benchmark's reals with the factory's 64 px → 256 history (only reals
  whose original is in the shared train split, so nothing of the test split leaks in).

Both, and the shipped model, are scored on the shared test split (reals, published-generator
fakes, tampered copies) in the processing-matched view. The question of the issue is answered by
the published generators' per-generator AUC: does adding the factory fakes help on generators
the factory does not contain? The paired difference has a bootstrap interval.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mib  # noqa: E402


def _published_auc(labels: np.ndarray, scores: dict[str, np.ndarray], gens: list[str], mods: list[str],
                   n_boot: int, seed: int) -> dict:
    """Per published generator AUC (its fakes vs the test reals of its modality) for each model, and
    the paired bootstrap of the mean over generators of (recipe+factory − recipe)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    names = sorted({g for g, lab in zip(gens, labels) if lab == 1 and not g.startswith("tamper")})
    gens_a, mods_a = np.array(gens), np.array(mods)
    per_gen: dict[str, dict] = {}
    index = {}
    for g in names:
        fake = np.flatnonzero(gens_a == g)
        mod = mods_a[fake[0]]
        real = np.flatnonzero((labels == 0) & (mods_a == mod))
        index[g] = (real, fake)
        per_gen[g] = {"modality": str(mod), "n_fake": int(len(fake)), "n_real": int(len(real))}
        for model, sc in scores.items():
            per_gen[g][model] = float(roc_auc_score(np.r_[np.zeros(len(real)), np.ones(len(fake))],
                                                    np.r_[sc[real], sc[fake]]))
    models = list(scores)
    mean = {m: float(np.mean([per_gen[g][m] for g in names])) for m in models}
    diffs = []
    for _ in range(n_boot):
        d = []
        for g in names:
            real, fake = index[g]
            r, f = rng.choice(real, len(real)), rng.choice(fake, len(fake))
            y = np.r_[np.zeros(len(r)), np.ones(len(f))]
            a = roc_auc_score(y, np.r_[scores["recipe+factory"][r], scores["recipe+factory"][f]])
            b = roc_auc_score(y, np.r_[scores["recipe"][r], scores["recipe"][f]])
            d.append(a - b)
        diffs.append(np.mean(d))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"per_generator": per_gen, "mean_auc": mean,
            "delta_factory_minus_recipe": {"mean": float(np.mean(diffs)), "ci95": [float(lo), float(hi)]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", required=True, help="benchmark folder written by `bench run` / `bench build`")
    ap.add_argument("--workdir", default="runs/work-issue5-default")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--patches", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--models-out", default="runs/issue5-default-models", help="where the two models are saved")
    ap.add_argument("--reuse", action="store_true", help="load the models of an earlier run from --models-out")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from medforensics.benchmark.protocol import score_manifest
    from medforensics.data import Manifest, shared_manifest
    from medforensics.detectors import create_detector, load_detector, pretrained_dir
    from medforensics.train.recipes import PreparedData, prepare_supervised_data, training_datasets

    shared = shared_manifest()
    data = prepare_supervised_data(shared, args.workdir, seed=0, tamper_fraction=0.5)
    train_originals = {os.path.normpath(str(r.resolve(data.train.root))) for r in data.train if r.label == "real"}
    bench = Manifest.read(Path(args.benchmark) / "manifest.csv")
    bench_train = bench.filter(lambda r: r.split == "train")
    factory = [r for r in bench_train if r.label == "fake" and r.get("role") == "factory"]
    reals = [r for r in bench_train if r.label == "real"
             and os.path.normpath(r.get("input_path")) in train_originals]
    extra = Manifest.from_rows(factory + reals, root=bench.root)
    augmented = PreparedData(Manifest.concat([data.train, extra]), data.val, data.test,
                             {**data.summary, "extra_factory_fakes": len(factory), "extra_64px_reals": len(reals)})

    cfg = {"width": args.width, "epochs": args.epochs, "patches_per_image": args.patches, "batch_size": 16,
           "progress": False}
    test = data.test
    scores: dict[str, np.ndarray] = {}
    timing: dict[str, float] = {}
    labels = gens = mods = None
    runs = {"recipe": data, "recipe+factory": augmented}
    for name, d in runs.items():
        model_dir = Path(args.models_out) / name.replace("+", "_")
        if args.reuse and (model_dir / "config.json").is_file():  # an earlier run of this script
            det = load_detector(model_dir)
            timing[name] = float(det.training_summary.get("seconds", 0.0))
        else:
            det = create_detector("forensic_cnn", seed=0, **cfg)
            train_set, val_set = training_datasets(d, det.preprocessing, seed=0)
            t0 = time.time()
            det.fit(train_set, val_set)
            timing[name] = round(time.time() - t0, 1)
            shutil.rmtree(model_dir, ignore_errors=True)  # only this script writes here
            det.save(model_dir)
        print(f"[{name}] trained in {timing[name]} s on {len(d.train)} rows", flush=True)
        scored = score_manifest(det, test, view="matched", show_progress=False)
        scores[name] = scored.scores
        labels, gens, mods = scored.labels, [r.generator if r.label == "fake" else "" for r in scored.rows], \
            [r.modality for r in scored.rows]
    shipped = load_detector(pretrained_dir("default"))
    scored = score_manifest(shipped, test, view="matched", show_progress=False)
    assert list(scored.labels) == list(labels), "test rows scored in a different order"
    scores["shipped"] = scored.scores

    result = {
        "benchmark": "issue5_default_model",
        "budget": cfg,
        "train_rows": {"recipe": len(data.train), "recipe+factory": len(augmented.train)},
        "extra": {"factory_fakes": len(factory), "reals_64px_history": len(reals)},
        "train_seconds": timing,
        "test_rows": len(test),
        "view": "matched",
        **_published_auc(np.asarray(labels), scores, gens, mods, args.n_boot, seed=0),
        "cpu": f"{os.cpu_count()} logical cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "peak_rss_mib": peak_rss_mib(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
