"""Speed of the class-balanced bootstrap: vectorised ``bootstrap_metrics`` vs the former loop.

The former implementation (kept here verbatim in spirit as :func:`loop_bootstrap`) drew one
class-balanced sample per iteration and called scikit-learn (``metrics_unchecked``) on it; the
current one scores blocks of iterations at once with numpy (``batch_metrics``). Both are timed on
the same data: 1000 scores (500 real, 500 fake, scores on a 0.01 grid so there are ties),
100 iterations, default metrics (acc, ap, auc, eer) and the long list with tpr@fpr targets.

    OMP_NUM_THREADS=1 python bench/timing/bootstrap_speed.py [--repeat 5] [--json bench/results/bootstrap_speed.json]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from _common import emit, peak_rss_mib

from medforensics.eval.bootstrap import _fpr_targets, _make_drawer, bootstrap_metrics, summarize
from medforensics.eval.metrics import metrics_unchecked, validate_inputs

LONG = ("acc", "ap", "auc", "eer", "eer_threshold", "real_acc", "fake_acc", "tpr@fpr=0.01", "tpr@fpr=0.05", "tpr@fpr=0.1")


def loop_bootstrap(labels, scores, *, groups=None, n_iter=100, seed=0, threshold=0.5, metrics=("acc", "ap", "auc", "eer")):
    """The pre-vectorisation bootstrap: one draw and one scikit-learn metrics call per iteration."""
    targets = _fpr_targets(metrics)
    lab, sc = validate_inputs(labels, scores)
    draw, _ = _make_drawer(lab, None if groups is None else np.asarray(groups), None)
    rng = np.random.default_rng(seed)
    reps = {m: np.empty(n_iter) for m in metrics}
    for it in range(n_iter):
        idx = draw(rng, 1)[0]
        res = metrics_unchecked(lab[idx], sc[idx], threshold, targets)
        for m in metrics:
            reps[m][it] = res[m]
    point = metrics_unchecked(lab, sc, threshold, targets)
    return {m: summarize(reps[m], point[m]) for m in metrics}


def _best_ms(fn, repeat: int) -> tuple[float, dict]:
    times, res = [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(min(times), 2), res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--n", type=int, default=1000, help="number of scores (half real, half fake)")
    ap.add_argument("--n-iter", type=int, default=100)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(args.n // 2), np.ones(args.n - args.n // 2)].astype(int)
    scores = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), 2)
    groups = rng.choice(["s1", "s2", "s3", "s4"], size=labels.size, p=[0.6, 0.3, 0.08, 0.02])
    out: dict = {"n_scores": args.n, "n_iter": args.n_iter, "repeat (best of)": args.repeat,
                 "cpu": f"{platform.machine()}, OMP_NUM_THREADS=1 (shared 2-core machine)", "cases": {}}
    for name, metrics, grp in (("default metrics", ("acc", "ap", "auc", "eer"), None),
                               ("10 metrics incl. tpr@fpr", LONG, None),
                               ("default metrics, groups", ("acc", "ap", "auc", "eer"), groups)):
        kw = {"groups": grp, "n_iter": args.n_iter, "seed": 0, "metrics": metrics}
        before, r0 = _best_ms(lambda: loop_bootstrap(labels, scores, **kw), args.repeat)
        after, r1 = _best_ms(lambda: bootstrap_metrics(labels, scores, **kw), args.repeat)
        out["cases"][name] = {
            "before_ms": before, "after_ms": after, "speedup": round(before / after, 1),
            "auc_before": {k: round(r0["auc"][k], 4) for k in ("mean", "lo", "hi")},
            "auc_after": {k: round(r1["auc"][k], 4) for k in ("mean", "lo", "hi")},
        }
        print(f"{name:28s} before {before:8.1f} ms   after {after:6.1f} ms   ×{before / after:.1f}")
    out["peak_rss_mib"] = peak_rss_mib()
    emit(out, args.json)


if __name__ == "__main__":
    main()
