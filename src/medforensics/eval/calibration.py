"""Operating-point calibration: pick a decision threshold from validation scores."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .metrics import equal_error_rate

__all__ = ["calibrate", "threshold_at_eer", "threshold_at_fpr", "verdicts"]


def _real_scores(real_scores: ArrayLike) -> NDArray[np.float64]:
    s = np.asarray(real_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("real_scores is empty: need validation scores of real images")
    if not np.isfinite(s).all():
        raise ValueError("real_scores must be finite")
    return s


def _check_target(target_fpr: float) -> float:
    t = float(target_fpr)
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise ValueError(f"target_fpr must be in [0, 1], got {target_fpr!r}")
    return t


def threshold_at_fpr(real_scores: ArrayLike, target_fpr: float) -> float:
    """Threshold with empirical FPR ``mean(real >= thr) <= target_fpr``, as close as possible.

    Empirical-quantile rule: with ``n`` real scores, at most ``k = floor(target_fpr * n)`` may be
    flagged. Let ``v`` be the (k+1)-th largest score; every threshold ``<= v`` flags more than
    ``k``, every threshold ``> v`` flags exactly the scores ``> v``, the most allowed. The
    threshold returned is the smallest *observed* score strictly greater than ``v`` (so it is
    strictly above any tie at ``v``), or, when no score exceeds ``v``, the next float above ``v``
    (nothing flagged). ``target_fpr >= 1`` returns the minimum score (everything flagged).
    Achieved FPR is thus ``<= target_fpr`` and is the largest achievable; with distinct scores
    it is exactly ``k / n`` (within ``1/n`` of the target).
    """
    s = np.sort(_real_scores(real_scores))[::-1]  # descending
    t = _check_target(target_fpr)
    n = s.size
    k = int(math.floor(t * n + 1e-9))
    while k > 0 and k / n > t:  # guard the epsilon above against rounding past the target
        k -= 1
    if k >= n:
        return float(s[-1])
    v = s[k]
    above = s[s > v]
    return float(above.min()) if above.size else float(np.nextafter(v, np.inf))


def calibrate(real_scores: ArrayLike, target_fpr: float) -> dict[str, Any]:
    """Calibrate a threshold on real validation scores: threshold, target/achieved FPR, n_real."""
    s = _real_scores(real_scores)
    thr = threshold_at_fpr(s, target_fpr)
    return {
        "threshold": thr,
        "target_fpr": float(target_fpr),
        "achieved_fpr": float((s >= thr).mean()),
        "n_real": int(s.size),
        "method": "fpr",
    }


def threshold_at_eer(labels: ArrayLike, scores: ArrayLike) -> float:
    """Threshold at the equal error rate (see :func:`~medforensics.eval.metrics.equal_error_rate`)."""
    _, thr = equal_error_rate(labels, scores)
    if math.isnan(thr):
        raise ValueError("threshold_at_eer needs both real (0) and fake (1) samples")
    return thr


def verdicts(scores: ArrayLike, threshold: float) -> NDArray[np.bool_]:
    """Boolean verdicts, True = fake (``score >= threshold``)."""
    return np.asarray(scores, dtype=np.float64) >= float(threshold)
