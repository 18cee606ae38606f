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

Replicates are computed for blocks of iterations at once (:func:`batch_metrics`: one sort per
iteration, numpy only). The point estimate is the metric on the full data *weighted as the draws
are* (:func:`draw_weights`: each class, and each group within a class, the same total weight),
so the interval and the point estimate describe one quantity. On class-balanced data without
groups that is plain :func:`~medforensics.eval.metrics.compute_metrics`; on a pooled set where a
large group dominates the unweighted metric, the unweighted number may lie outside the interval.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .metrics import metrics_unchecked, tpr_key, validate_inputs

__all__ = ["PairedDifference", "batch_metrics", "bootstrap_metrics", "balanced_sample_indices", "draw_weights",
           "paired_auc_bootstrap", "summarize"]

DEFAULT_METRICS: tuple[str, ...] = ("acc", "ap", "auc", "eer")
_BASE_METRICS = {"acc", "ap", "auc", "eer", "eer_threshold", "real_acc", "fake_acc"}
_TPR_RE = re.compile(r"^tpr@fpr=([0-9.eE+-]+)$")
_CHUNK_ELEMENTS = 1 << 20  # bootstrap samples scored per vectorised block (~8 MiB per float array)


def _class_sampler(idx: NDArray[np.int64], groups: np.ndarray | None):
    """Return ``draw(rng, (b, n)) -> b×n indices`` for one class (``idx``: that class's sample indices)."""
    if groups is None:
        return lambda rng, shape: idx[rng.integers(0, idx.size, size=shape)]
    _, inv = np.unique(groups[idx], return_inverse=True)
    order = np.argsort(inv, kind="stable")
    sorted_idx = idx[order]
    sizes = np.bincount(inv)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))

    def draw(rng: np.random.Generator, shape: tuple[int, int]) -> NDArray[np.int64]:
        g = rng.integers(0, sizes.size, size=shape)  # group, uniformly
        offset = (rng.random(shape) * sizes[g]).astype(np.int64)  # sample within group, uniformly
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
    return _make_drawer(lab, grp, n_per_class)[0](rng, 1)[0]


def _make_drawer(lab: NDArray[np.int64], grp: np.ndarray | None, n_per_class: int | None):
    """``(draw, m)``: ``draw(rng, b)`` is a b×m index matrix of ``b`` independent class-balanced draws."""
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
    return (lambda rng, b: np.concatenate([s(rng, (b, n)) for s in samplers], axis=1)), n * len(samplers)


def draw_weights(labels: ArrayLike, groups: ArrayLike | None = None) -> NDArray[np.float64]:
    """Per-sample weights of the balanced draw: each present class sums to 1, and within a class
    each group present in it gets an equal share (split evenly over its samples)."""
    lab = np.asarray(labels).astype(np.int64)
    grp = None if groups is None else np.asarray(groups).astype(str)
    w = np.zeros(lab.shape[0], dtype=np.float64)
    for c in (0, 1):
        idx = np.flatnonzero(lab == c)
        if not idx.size:
            continue
        if grp is None:
            w[idx] = 1.0 / idx.size
            continue
        _, inv, sizes = np.unique(grp[idx], return_inverse=True, return_counts=True)
        w[idx] = 1.0 / (sizes.size * sizes[inv])
    return w


def _fpr_targets(metrics: Sequence[str]) -> tuple[float, ...]:
    targets = []
    for m in metrics:
        match = _TPR_RE.match(m)
        if match:
            targets.append(float(match.group(1)))
        elif m not in _BASE_METRICS:
            raise ValueError(f"unknown metric {m!r}; known: {sorted(_BASE_METRICS)} and 'tpr@fpr=<x>'")
    return tuple(targets)


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(a, idx, axis=1)


def batch_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float = 0.5,
    fpr_targets: Sequence[float] = (),
    *,
    presorted: bool = False,
) -> dict[str, NDArray[np.float64]]:
    """Metrics of many (label, score) sets at once: row ``b`` of the B×N inputs is one set.

    Returns ``{metric: (B,) array}`` for ``acc``, ``real_acc``, ``fake_acc``, ``ap``, ``auc``,
    ``eer``, ``eer_threshold`` and ``tpr@fpr=<t>`` with the definitions of
    :func:`medforensics.eval.metrics.compute_metrics` (scikit-learn's ROC with all thresholds,
    ``average_precision_score``, ties included), computed from one sort per row instead of one
    scikit-learn call per metric and row. Ranking metrics are NaN in rows with one class only.
    ``presorted=True`` promises every row is already in non-increasing score order (skips the sort).

    Each row is sorted by decreasing score; tied scores form blocks and only block ends are ROC
    points (TP_k, FP_k). With P positives and Q negatives per row:

    * AUC = U / (P·Q), U (Mann–Whitney) = Σ over negatives of #positives ranked above it + ½·#tied;
    * AP = Σ_k (R_k − R_{k−1})·Prec_k = (1/P)·Σ over positives of TP/(TP+FP) at the end of its block;
    * EER: first ROC point with FNR − FPR ≤ 0, linearly interpolated with the point before it;
    * TPR@FPR=t: largest TPR among ROC points (incl. (0, 0)) with FPR ≤ t.
    """
    S = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    Y = np.atleast_2d(np.asarray(labels)) == 1
    if S.shape != Y.shape:
        raise ValueError(f"labels and scores differ in shape: {Y.shape} vs {S.shape}")
    b, n = S.shape
    nan = np.full(b, np.nan)
    pred = S >= threshold
    n_pos = Y.sum(axis=1)
    n_neg = n - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        out: dict[str, NDArray[np.float64]] = {
            "acc": (pred == Y).mean(axis=1),
            "real_acc": np.where(n_neg > 0, (~pred & ~Y).sum(axis=1) / n_neg, np.nan),
            "fake_acc": np.where(n_pos > 0, (pred & Y).sum(axis=1) / n_pos, np.nan),
        }
    targets = tuple(float(t) for t in fpr_targets)
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        out.update({"ap": nan, "auc": nan, "eer": nan, "eer_threshold": nan})
        out.update({tpr_key(t): nan.copy() for t in targets})
        return out
    S, Y = S[ok], Y[ok]
    P, Q = n_pos[ok].astype(np.float64)[:, None], n_neg[ok].astype(np.float64)[:, None]
    if presorted:
        s, y = S, Y.astype(np.float64)
    else:
        order = np.argsort(-S, axis=1, kind="stable")
        s, y = _take(S, order), _take(Y, order).astype(np.float64)
    pos = np.arange(n)
    tps = np.cumsum(y, axis=1)  # TP at each cut (integers, exact in float64)
    fps = (pos + 1.0) - tps
    last = np.ones_like(s, dtype=bool)  # end of a tie block = a ROC point
    last[:, :-1] = s[:, :-1] != s[:, 1:]
    # index of the end of each position's block, and of the previous block's end (-1: none)
    end = np.minimum.accumulate(np.where(last, pos, n)[:, ::-1], axis=1)[:, ::-1]
    prev = np.full_like(end, -1)
    prev[:, 1:] = np.maximum.accumulate(np.where(last, pos, -1), axis=1)[:, :-1]
    tp_end = _take(tps, end)
    tp_prev = np.where(prev >= 0, _take(tps, np.maximum(prev, 0)), 0.0)
    # AUC via the Mann–Whitney U (ties count ½); AP via precision at each positive's block end
    u = ((1.0 - y) * (tp_prev + 0.5 * (tp_end - tp_prev))).sum(axis=1)
    auc = u / (P[:, 0] * Q[:, 0])
    ap = (y * (tp_end / (end + 1.0))).sum(axis=1) / P[:, 0]
    # ROC at every cut, with sklearn's arithmetic (tpr = TP/P, fpr = FP/Q, FNR − FPR = (1 − tpr) − fpr)
    tpr, fpr = tps / P, fps / Q
    diff = (1.0 - tpr) - fpr
    rows = np.arange(S.shape[0])
    i = np.argmax(last & (diff <= 0), axis=1)  # first ROC point at or past the crossing (always exists)
    j = prev[rows, i]  # the ROC point before it; -1 = sklearn's (0, 0) start at threshold=inf
    d1, f1, t1 = diff[rows, i], fpr[rows, i], s[rows, i]
    has_prev = j >= 0
    jj = np.maximum(j, 0)
    d0 = np.where(has_prev, diff[rows, jj], 1.0)
    f0 = np.where(has_prev, fpr[rows, jj], 0.0)
    t0 = s[rows, jj]
    exact = d1 == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(exact, 0.0, d0 / (d0 - d1))
    eer = np.where(exact, f1, f0 + w * (f1 - f0))
    eer_thr = np.where(exact | ~has_prev, t1, t0 + w * (t1 - t0))
    full = {"ap": ap, "auc": auc, "eer": eer, "eer_threshold": eer_thr}
    for t in targets:
        full[tpr_key(t)] = np.where(last & (fpr <= t + 1e-12), tpr, 0.0).max(axis=1)
    for key in ("ap", "auc", "eer"):  # as in compute_metrics: drop float noise below 1e-12
        full[key] = np.round(full[key], 12)
    for key, val in full.items():
        col = nan.copy()
        col[ok] = val
        out[key] = col
    return out


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
    the full (unresampled) data weighted as the draws are (:func:`draw_weights`), ``n`` the
    number of iterations in which the metric was defined.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    metrics = tuple(metrics)
    targets = _fpr_targets(metrics)
    lab, sc = validate_inputs(labels, scores)
    draw, width = _make_drawer(lab, None if groups is None else np.asarray(groups), n_per_class)
    rng = np.random.default_rng(seed)
    reps = {m: np.empty(n_iter) for m in metrics}
    # sort once: a draw's samples are put in score order by sorting their integer ranks
    order = np.argsort(-sc, kind="stable")
    lab_sorted, sc_sorted = lab[order], sc[order]
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    chunk = max(1, _CHUNK_ELEMENTS // width)  # iterations per vectorised block (bounded memory)
    for start in range(0, n_iter, chunk):
        b = min(chunk, n_iter - start)
        idx = draw(rng, b)  # b fresh class-balanced draws, one per row
        key = np.sort(rank[idx], axis=1)
        res = batch_metrics(lab_sorted[key], sc_sorted[key], threshold, targets, presorted=True)
        for m in metrics:
            reps[m][start : start + b] = res[m]
    point = metrics_unchecked(lab, sc, threshold, targets, draw_weights(lab, groups))
    return {m: summarize(reps[m], point[m], ci) for m in metrics}


@dataclass(frozen=True)
class PairedDifference:
    """AUC(a) − AUC(b) on the same images: the point difference and its paired bootstrap draws."""

    point: float
    draws: NDArray[np.float64]
    n_real: int
    n_fake: int
    ci: float = 0.95

    def summary(self) -> dict[str, float]:
        """:func:`summarize` of the draws (mean, percentile interval, std, point, n) plus the class counts."""
        return {**summarize(self.draws, self.point, self.ci), "n_real": self.n_real, "n_fake": self.n_fake}


#: pair-comparison matrix cells (fakes × reals) handled at once; larger sets are done in slices of fakes
_PAIR_CELLS = 4_000_000


def _weighted_aucs(fake: np.ndarray, real: np.ndarray, w_fake: np.ndarray, w_real: np.ndarray) -> np.ndarray:
    """AUC (ties ½) of every row of weights: ``Σ_j Σ_i w_fake[k, j] · w_real[k, i] · [f_j > r_i]`` over
    ``Σ w_fake[k] · Σ w_real[k]``, the Mann–Whitney statistic of a draw given as counts."""
    num = np.zeros(w_fake.shape[0], dtype=np.float64)
    step = max(1, _PAIR_CELLS // max(1, real.size))
    for s in range(0, fake.size, step):
        f = fake[s:s + step, None]
        cmp = (f > real[None, :]).astype(np.float64) + 0.5 * (f == real[None, :])
        num += np.einsum("kf,kf->k", w_fake[:, s:s + step], w_real @ cmp.T)
    return num / (w_fake.sum(1) * w_real.sum(1))


def paired_auc_bootstrap(
    labels: ArrayLike,
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    *,
    n_iter: int = 1000,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    ci: float = 0.95,
) -> PairedDifference:
    """Paired, class-stratified bootstrap of the AUC difference of two detectors on the same images.

    Each draw resamples the reals (``rng.choice(real, n_real)``) and then the fakes
    (``rng.choice(fake, n_fake)``) with replacement, each class at its own size — unlike
    :func:`bootstrap_metrics`, which balances the classes — and scores the *same* drawn images
    with both detectors: the draw is ``AUC(a) − AUC(b)`` on it (ties count ½, as scikit-learn's
    ``roc_auc_score``; computed for all draws at once from each draw's counts). Pairing removes the between-image variance the two detectors share, so the
    interval is much narrower than the difference of two independent intervals.

    ``rng`` (instead of ``seed``) continues a caller's generator, so several differences can share
    one random stream. With one class only, the point and every draw are NaN.
    """
    lab, a = validate_inputs(labels, scores_a)
    _, b = validate_inputs(labels, scores_b)
    real, fake = np.flatnonzero(lab == 0), np.flatnonzero(lab == 1)
    if real.size == 0 or fake.size == 0:
        return PairedDifference(float("nan"), np.full(int(n_iter), np.nan), int(real.size), int(fake.size), ci)
    rng = np.random.default_rng(seed) if rng is None else rng
    # a draw as counts: how often each real and each fake was drawn (the stream of
    # rng.choice(real, n_real), rng.choice(fake, n_fake) per draw, as positions); blocks of draws
    # bound the memory whatever the set size
    n_r, n_f, n = real.size, fake.size, int(n_iter)
    draws = np.empty(n, dtype=np.float64)
    block = max(1, min(256, _PAIR_CELLS // max(1, n_r + n_f)))
    for start in range(0, n, block):
        k = min(block, n - start)
        counts_r, counts_f = np.empty((k, n_r)), np.empty((k, n_f))
        for i in range(k):
            counts_r[i] = np.bincount(rng.choice(n_r, n_r), minlength=n_r)
            counts_f[i] = np.bincount(rng.choice(n_f, n_f), minlength=n_f)
        draws[start:start + k] = (_weighted_aucs(a[fake], a[real], counts_f, counts_r)
                                  - _weighted_aucs(b[fake], b[real], counts_f, counts_r))
    ones_f, ones_r = np.ones((1, n_f)), np.ones((1, n_r))
    point = float(_weighted_aucs(a[fake], a[real], ones_f, ones_r)[0] - _weighted_aucs(b[fake], b[real], ones_f, ones_r)[0])
    return PairedDifference(point, draws, int(real.size), int(fake.size), ci)
