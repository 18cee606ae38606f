"""Threshold calibration on real validation scores."""

from __future__ import annotations

import numpy as np
import pytest

from medforensics.eval import calibrate, threshold_at_eer, threshold_at_fpr, verdicts


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.25, 0.5])
def test_hits_target_fpr_distinct_scores(target: float) -> None:
    real = np.random.default_rng(0).random(1000)
    cal = calibrate(real, target)
    achieved = float((real >= cal["threshold"]).mean())
    assert cal["achieved_fpr"] == pytest.approx(achieved)
    assert achieved <= target
    assert target - achieved < 1 / real.size
    assert cal["n_real"] == 1000 and cal["target_fpr"] == target


def test_ties_are_not_split() -> None:
    # 10 scores, target 0.2 -> 2 may be flagged, but the top three tie at 0.9
    real = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9, 0.9, 0.9]
    thr = threshold_at_fpr(real, 0.2)
    assert thr > 0.9  # strictly above the tie: nothing flagged
    assert calibrate(real, 0.2)["achieved_fpr"] == 0.0
    # target 0.3 admits the whole tie, threshold is the tied value itself
    assert threshold_at_fpr(real, 0.3) == 0.9
    assert calibrate(real, 0.3)["achieved_fpr"] == pytest.approx(0.3)


def test_ties_below_cut() -> None:
    real = [0.1, 0.2, 0.2, 0.2, 0.5, 0.9, 0.9, 0.3, 0.4, 0.6]
    cal = calibrate(real, 0.75)  # 7 allowed; the 7th..9th largest tie at 0.2 -> 6 flagged
    assert cal["threshold"] == 0.3
    assert cal["achieved_fpr"] == pytest.approx(0.6)


def test_many_ties_random() -> None:
    real = np.round(np.random.default_rng(1).random(500), 1)  # 11 distinct values
    for target in (0.05, 0.1, 0.33):
        thr = threshold_at_fpr(real, target)
        achieved = (real >= thr).mean()
        assert achieved <= target
        # no smaller threshold among the observed values would also satisfy the target
        lower = real[real < thr]
        if lower.size:
            assert (real >= lower.max()).mean() > target


def test_extremes_and_errors() -> None:
    real = [0.2, 0.4, 0.6]
    assert threshold_at_fpr(real, 1.0) == 0.2
    assert threshold_at_fpr(real, 0.0) > 0.6
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_at_fpr(real, 1.5)
    with pytest.raises(ValueError, match="empty"):
        threshold_at_fpr([], 0.1)
    with pytest.raises(ValueError, match="finite"):
        threshold_at_fpr([0.1, float("nan")], 0.1)


def test_threshold_at_eer_and_verdicts() -> None:
    assert threshold_at_eer([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8]) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        threshold_at_eer([0, 0], [0.1, 0.2])
    v = verdicts([0.1, 0.5, 0.9], 0.5)
    assert v.dtype == bool
    assert v.tolist() == [False, True, True]
