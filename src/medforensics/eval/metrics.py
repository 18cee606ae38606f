"""Detection metrics on (label, score) arrays: accuracy, AP, AUC, EER, TPR at fixed FPR.

Conventions: label 0 = real, 1 = fake; score = probability of fake; a sample is predicted fake
iff ``score >= threshold``. Curve arithmetic is delegated to scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "DEFAULT_FPR_TARGETS",
    "compute_metrics",
    "equal_error_rate",
    "tpr_at_fpr",
    "tpr_key",
    "validate_inputs",
]

DEFAULT_FPR_TARGETS: tuple[float, ...] = (0.01, 0.05, 0.1)
NAN = float("nan")


def tpr_key(target: float) -> str:
    """Name of the TPR-at-fixed-FPR metric, e.g. ``tpr_key(0.01) == "tpr@fpr=0.01"``."""
    return f"tpr@fpr={target:g}"


def validate_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Return ``(labels, scores)`` as 1-D int/float arrays; raise ``ValueError`` on bad input.

    Checks: both 1-D (or scalars-free sequences), same non-zero length, labels in {0, 1},
    scores numeric and finite.
    """
    lab = np.asarray(labels)
    sc = np.asarray(scores)
    if lab.ndim != 1 or sc.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {lab.shape} and {sc.shape}")
    if lab.shape[0] != sc.shape[0]:
        raise ValueError(f"labels and scores differ in length: {lab.shape[0]} labels vs {sc.shape[0]} scores")
    if lab.shape[0] == 0:
        raise ValueError("labels and scores are empty")
    try:
        sc = sc.astype(np.float64)
        lab_f = lab.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"labels and scores must be numeric: {exc}") from None
    bad = ~np.isin(lab_f, (0.0, 1.0))
    if bad.any():
        found = sorted({str(v) for v in lab[bad][:5].tolist()})
        raise ValueError(f"labels must be 0 (real) or 1 (fake); found {', '.join(found)}")
    if not np.isfinite(sc).all():
        n_bad = int((~np.isfinite(sc)).sum())
        raise ValueError(f"scores must be finite; {n_bad} NaN/inf value(s) found")
    return lab_f.astype(np.int64), sc


def _roc(
    labels: NDArray[np.int64], scores: NDArray[np.float64], weight: NDArray[np.float64] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fpr, tpr, thr = roc_curve(labels, scores, sample_weight=weight, drop_intermediate=False)
    return fpr, tpr, thr


def _eer_from_roc(fpr: np.ndarray, tpr: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    """EER from an ROC (see :func:`equal_error_rate`)."""
    diff = (1.0 - tpr) - fpr  # FNR - FPR: +1 at the first point (thr=inf), -1 at the last
    i = int(np.argmax(diff <= 0))  # first ROC point at or past the crossing
    if diff[i] == 0 or i == 0:
        return float(fpr[i]), float(thr[i])
    d0, d1 = diff[i - 1], diff[i]
    t = d0 / (d0 - d1)  # fraction of the way from point i-1 to point i where FNR == FPR
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    if np.isfinite(thr[i - 1]):
        threshold = thr[i - 1] + t * (thr[i] - thr[i - 1])
    else:  # point i-1 is sklearn's (0, 0) start at threshold=inf: nothing to interpolate with
        threshold = thr[i]
    return float(eer), float(threshold)


def equal_error_rate(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs: ``(eer, threshold)``.

    The ROC (all thresholds, ``drop_intermediate=False``) is walked in order of decreasing
    threshold; FNR - FPR falls from +1 to -1. If an ROC point has FNR == FPR exactly, that rate
    and that point's threshold are returned. Otherwise the two consecutive points bracketing the
    sign change are joined by a straight line in (FPR, FNR) space and the crossing is returned;
    the threshold is linearly interpolated with the same weight (or is the lower point's
    threshold when the upper point is sklearn's synthetic ``inf`` start). Returns ``(nan, nan)``
    when only one class is present.
    """
    lab, sc = validate_inputs(labels, scores)
    if lab.min() == lab.max():
        return NAN, NAN
    return _eer_from_roc(*_roc(lab, sc))


def _tpr_at_fpr_from_roc(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def tpr_at_fpr(labels: ArrayLike, scores: ArrayLike, target_fpr: float) -> float:
    """Largest TPR among ROC points whose FPR is <= ``target_fpr`` (nan if one class only)."""
    lab, sc = validate_inputs(labels, scores)
    if lab.min() == lab.max():
        return NAN
    fpr, tpr, _ = _roc(lab, sc)
    return _tpr_at_fpr_from_roc(fpr, tpr, target_fpr)


def _safe_mean(x: np.ndarray, w: np.ndarray | None = None) -> float:
    if not x.size:
        return NAN
    return float(x.mean()) if w is None else float(np.average(x, weights=w))


def metrics_unchecked(
    lab: NDArray[np.int64],
    sc: NDArray[np.float64],
    threshold: float,
    fpr_targets: Iterable[float],
    sample_weight: NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """:func:`compute_metrics` without input validation (for already-validated arrays)."""
    w = sample_weight
    pred = sc >= threshold
    real, fake = lab == 0, lab == 1
    n_real, n_fake = int(real.sum()), int(fake.sum())
    out: dict[str, Any] = {
        "acc": _safe_mean(pred == fake, w),
        "ap": NAN,
        "auc": NAN,
        "eer": NAN,
        "eer_threshold": NAN,
    }
    targets = tuple(float(t) for t in fpr_targets)
    for t in targets:
        out[tpr_key(t)] = NAN
    if n_real and n_fake:
        fpr, tpr, thr = _roc(lab, sc, w)
        # rounding drops float noise of the trapezoid sums (a perfect ranking gives exactly 1.0)
        out["ap"] = round(float(average_precision_score(lab, sc, sample_weight=w)), 12)
        out["auc"] = round(float(roc_auc_score(lab, sc, sample_weight=w)), 12)
        eer, out["eer_threshold"] = _eer_from_roc(fpr, tpr, thr)
        out["eer"] = round(eer, 12)
        for t in targets:
            out[tpr_key(t)] = _tpr_at_fpr_from_roc(fpr, tpr, t)
    out["real_acc"] = _safe_mean(~pred[real], None if w is None else w[real])
    out["fake_acc"] = _safe_mean(pred[fake], None if w is None else w[fake])
    out["threshold"] = float(threshold)
    out["n_real"] = n_real
    out["n_fake"] = n_fake
    return out


def compute_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float = 0.5,
    fpr_targets: Iterable[float] = DEFAULT_FPR_TARGETS,
    sample_weight: ArrayLike | None = None,
) -> dict[str, Any]:
    """All detection metrics for one set of predictions.

    Keys: ``acc`` (accuracy at ``threshold``, fake iff score >= threshold), ``ap``, ``auc``,
    ``eer``, ``eer_threshold``, ``tpr@fpr=<t>`` for each target (largest TPR with FPR <= t),
    ``real_acc`` (specificity), ``fake_acc`` (recall), ``threshold``, ``n_real``, ``n_fake``.
    With only one class present the ranking metrics (ap, auc, eer, tpr@fpr) are NaN and the
    accuracy of the missing class is NaN. ``sample_weight`` (one non-negative weight per sample)
    weighs every metric, as scikit-learn's ``sample_weight`` does.
    """
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    lab, sc = validate_inputs(labels, scores)
    w = None
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != lab.shape:
            raise ValueError(f"sample_weight has shape {w.shape} but there are {lab.shape[0]} labels")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("sample_weight must be finite and non-negative")
        if any(lab[lab == c].size and w[lab == c].sum() <= 0 for c in (0, 1)):
            raise ValueError("sample_weight gives a present class zero total weight")
    return metrics_unchecked(lab, sc, float(threshold), fpr_targets, w)
