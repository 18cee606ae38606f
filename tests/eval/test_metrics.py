"""Metrics against hand-computed values on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medforensics.eval import compute_metrics, equal_error_rate, tpr_at_fpr
from medforensics.eval.metrics import tpr_key

LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_compute_metrics_tiny_hand_values() -> None:
    m = compute_metrics(LABELS, SCORES)
    # pairs (fake, real): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert m["auc"] == pytest.approx(0.75)
    # ranking 0.8(F) 0.4(R) 0.35(F) 0.1(R): AP = 0.5*1 + 0.5*2/3
    assert m["ap"] == pytest.approx(5 / 6)
    # at 0.5 only 0.8 is called fake: 0.1, 0.4 (real, right), 0.35 (fake, missed), 0.8 (right)
    assert m["acc"] == pytest.approx(0.75)
    assert m["real_acc"] == pytest.approx(1.0)
    assert m["fake_acc"] == pytest.approx(0.5)
    assert (m["n_real"], m["n_fake"], m["threshold"]) == (2, 2, 0.5)
    assert m["tpr@fpr=0.01"] == pytest.approx(0.5)
    assert set(m) >= {"eer", "eer_threshold", "tpr@fpr=0.05", "tpr@fpr=0.1"}


def test_threshold_changes_accuracy() -> None:
    m = compute_metrics(LABELS, SCORES, threshold=0.3)
    # 0.4 (real) flagged, 0.35 and 0.8 flagged: 3/4 right; real_acc 1/2, fake_acc 1
    assert m["acc"] == pytest.approx(0.75)
    assert m["real_acc"] == pytest.approx(0.5)
    assert m["fake_acc"] == pytest.approx(1.0)
    # score == threshold counts as fake
    assert compute_metrics([0, 1], [0.2, 0.5], threshold=0.5)["acc"] == 1.0


def test_eer_exact_crossing() -> None:
    # thr 0.6: FPR = 1/2 (0.6 flagged), FNR = 1/2 (0.4 missed) -> exact crossing
    eer, thr = equal_error_rate([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8])
    assert eer == pytest.approx(0.5)
    assert thr == pytest.approx(0.6)


def test_eer_interpolated() -> None:
    # ROC points (FPR, FNR): thr 0.6 -> (1/3, 1), thr 0.5 -> (1/3, 0). FNR - FPR goes 2/3 -> -1/3,
    # crossing 2/3 of the way: EER = 1/3, threshold = 0.6 + 2/3 * (0.5 - 0.6)
    eer, thr = equal_error_rate([0, 0, 0, 1], [0.2, 0.3, 0.6, 0.5])
    assert eer == pytest.approx(1 / 3)
    assert thr == pytest.approx(0.6 - 0.1 * 2 / 3)
    # (FPR, FNR) (0, 1/2) -> (1, 1/2): crossing at 1/2, halfway between thresholds 0.9 and 0.5
    eer, thr = equal_error_rate([0, 1, 1], [0.5, 0.4, 0.9])
    assert eer == pytest.approx(0.5)
    assert thr == pytest.approx(0.7)


def test_eer_perfect_and_inverted() -> None:
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])[0] == pytest.approx(0.0)
    assert equal_error_rate([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])[0] == pytest.approx(1.0)


def test_tpr_at_fixed_fpr() -> None:
    labels = [0] * 5 + [1] * 5
    scores = [0.1, 0.2, 0.3, 0.4, 0.95, 0.5, 0.6, 0.7, 0.8, 0.9]
    # one real (0.95) sits above every fake: FPR 0 only with TPR 0; FPR 0.2 allows TPR 1
    assert tpr_at_fpr(labels, scores, 0.1) == pytest.approx(0.0)
    assert tpr_at_fpr(labels, scores, 0.2) == pytest.approx(1.0)
    m = compute_metrics(labels, scores, fpr_targets=(0.05, 0.2))
    assert m[tpr_key(0.05)] == 0.0
    assert m["tpr@fpr=0.2"] == 1.0


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1]])
def test_one_class_gives_nan_ranking_metrics(labels: list[int]) -> None:
    scores = [0.7] * len(labels)
    m = compute_metrics(labels, scores)
    for key in ("auc", "ap", "eer", "eer_threshold", "tpr@fpr=0.01"):
        assert math.isnan(m[key]), key
    assert m["acc"] == (1.0 if labels[0] == 1 else 0.0)
    if labels[0] == 0:
        assert m["real_acc"] == 0.0 and math.isnan(m["fake_acc"])
    else:
        assert m["fake_acc"] == 1.0 and math.isnan(m["real_acc"])
    assert all(math.isnan(v) for v in equal_error_rate(labels, scores))
    assert math.isnan(tpr_at_fpr(labels, scores, 0.1))


def test_accepts_array_likes() -> None:
    m1 = compute_metrics(np.array([False, False, True, True]), np.array(SCORES, dtype=np.float32))
    m2 = compute_metrics((0.0, 0.0, 1.0, 1.0), tuple(SCORES))
    assert m1["auc"] == m2["auc"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 1, 1], [0.1, 0.2], "length"),
        ([0, 2], [0.1, 0.2], "0 \\(real\\) or 1 \\(fake\\)"),
        ([0, -1], [0.1, 0.2], "labels must be"),
        ([0, 1], [0.1, float("nan")], "finite"),
        ([0, 1], [0.1, float("inf")], "finite"),
        ([], [], "empty"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
        ([0, 1], ["a", "b"], "numeric"),
    ],
)
def test_validation_errors(labels, scores, match) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(labels, scores)


def test_validation_applies_to_eer_and_threshold() -> None:
    with pytest.raises(ValueError):
        equal_error_rate([0, 1], [0.1])
    with pytest.raises(ValueError, match="threshold"):
        compute_metrics([0, 1], [0.1, 0.9], threshold=float("nan"))


def test_integer_sample_weights_equal_repeating_samples() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60), 1)  # ties included
    weights = rng.integers(1, 4, 60)
    weighted = compute_metrics(labels, scores, 0.5, sample_weight=weights)
    repeated = compute_metrics(np.repeat(labels, weights), np.repeat(scores, weights), 0.5)
    for key in ("acc", "ap", "auc", "eer", "real_acc", "fake_acc", "tpr@fpr=0.1"):
        assert weighted[key] == pytest.approx(repeated[key], abs=1e-9), key
    with pytest.raises(ValueError, match="sample_weight"):
        compute_metrics(labels, scores, sample_weight=-weights)
