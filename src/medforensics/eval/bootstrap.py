"""Class-balanced (and optionally group-balanced) bootstrap confidence intervals.

Follows the evaluation protocol of the Back-in-Time Diffusion paper: every bootstrap iteration
draws, with replacement, the *same* number of real and fake samples, so accuracy-type metrics are
not dominated by the larger class.

Sampling scheme of one iteration (see :func:`balanced_sample_indices`), for each class c in
(real, fake) independently:

* without ``groups``: ``n_per_class`` indices drawn uniformly with replacement from class c;
* with ``groups``: ``n_per_class`` draws, each of which first picks one of the groups present in
  class c uniformly at random, then one sample of class c within that group uniformly at random.
  Every group of a class therefore contributes the same expected number of draws, whatever its
  size (a 5-sample scanner weighs as much as a 5000-sample one).

``n_per_class`` defaults to ``min(#real, #fake)``. If one class is absent the present class alone
is resampled (its own size per iteration); ranking metrics are then undefined and skipped.
All randomness comes from one ``np.random.default_rng(seed)``, so a run is reproducible while each
iteration draws fresh indices.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .metrics import metrics_unchecked, validate_inputs

__all__ = ["bootstrap_metrics", "balanced_sample_indices", "summarize"]

DEFAULT_METRICS: tuple[str, ...] = ("acc", "ap", "auc", "eer")
_BASE_METRICS = {"acc", "ap", "auc", "eer", "eer_threshold", "real_acc", "fake_acc"}
_TPR_RE = re.compile(r"^tpr@fpr=([0-9.eE+-]+)$")


def _class_sampler(idx: NDArray[np.int64], groups: np.ndarray | None):
    """Return ``draw(rng, n) -> indices`` for one class (``idx``: that class's sample indices)."""
    if groups is None:
        return lambda rng, n: idx[rng.integers(0, idx.size, size=n)]
    _, inv = np.unique(groups[idx], return_inverse=True)
    order = np.argsort(inv, kind="stable")
    sorted_idx = idx[order]
    sizes = np.bincount(inv)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))

    def draw(rng: np.random.Generator, n: int) -> NDArray[np.int64]:
        g = rng.integers(0, sizes.size, size=n)  # group, uniformly
        offset = (rng.random(n) * sizes[g]).astype(np.int64)  # sample within group, uniformly
        return sorted_idx[starts[g] + np.minimum(offset, sizes[g] - 1)]

    return draw


def balanced_sample_indices(
    labels: ArrayLike,
    rng: np.random.Generator,
    *,
    n_per_class: int | None = None,
    groups: ArrayLike | None = None,
) -> NDArray[np.int64]:
    """Indices of one class-balanced bootstrap draw (reals first, then fakes); see module doc."""
    lab = np.asarray(labels).astype(np.int64)
    grp = None if groups is None else np.asarray(groups)
    return _make_drawer(lab, grp, n_per_class)(rng)


def _make_drawer(lab: NDArray[np.int64], grp: np.ndarray | None, n_per_class: int | None):
    if grp is not None:
        if grp.ndim != 1 or grp.shape[0] != lab.shape[0]:
            raise ValueError(f"groups has shape {grp.shape} but there are {lab.shape[0]} labels")
        grp = grp.astype(str)  # None / mixed types become comparable labels
    by_class = [np.flatnonzero(lab == c) for c in (0, 1)]
    present = [i for i in by_class if i.size]
    if not present:
        raise ValueError("no samples to bootstrap")
    if n_per_class is None:
        n = min(i.size for i in present)
    elif int(n_per_class) < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    else:
        n = int(n_per_class)
    samplers = [_class_sampler(i, grp) for i in present]
    return lambda rng: np.concatenate([s(rng, n) for s in samplers])


def _fpr_targets(metrics: Sequence[str]) -> tuple[float, ...]:
    targets = []
    for m in metrics:
        match = _TPR_RE.match(m)
        if match:
            targets.append(float(match.group(1)))
        elif m not in _BASE_METRICS:
            raise ValueError(f"unknown metric {m!r}; known: {sorted(_BASE_METRICS)} and 'tpr@fpr=<x>'")
    return tuple(targets)


def summarize(values: ArrayLike, point: float, ci: float = 0.95) -> dict[str, float]:
    """Mean, percentile interval, std (ddof=1) and point estimate of bootstrap replicates.

    NaN replicates are dropped; ``n`` is how many were kept (all stats NaN when none).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        nan = float("nan")
        return {"mean": nan, "lo": nan, "hi": nan, "std": nan, "point": float(point), "n": 0}
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.percentile(v, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "std": std, "point": float(point), "n": int(v.size)}


def bootstrap_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n_iter: int = 100,
    seed: int = 0,
    threshold: float = 0.5,
    ci: float = 0.95,
    metrics: Sequence[str] = DEFAULT_METRICS,
    n_per_class: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Class-balanced bootstrap of ``metrics``: ``{metric: {mean, lo, hi, std, point, n}}``.

    ``lo``/``hi`` are the ``ci`` percentile interval of the replicates, ``point`` the metric on
    the full (unresampled) data, ``n`` the number of iterations in which the metric was defined.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    metrics = tuple(metrics)
    targets = _fpr_targets(metrics)
    lab, sc = validate_inputs(labels, scores)
    draw = _make_drawer(lab, None if groups is None else np.asarray(groups), n_per_class)
    rng = np.random.default_rng(seed)
    reps = {m: np.empty(n_iter) for m in metrics}
    for it in range(n_iter):
        idx = draw(rng)
        res = metrics_unchecked(lab[idx], sc[idx], threshold, targets)
        for m in metrics:
            reps[m][it] = res[m]
    point = metrics_unchecked(lab, sc, threshold, targets)
    return {m: summarize(reps[m], point[m], ci) for m in metrics}
