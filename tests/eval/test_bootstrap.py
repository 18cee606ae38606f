"""Class- and group-balanced bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medforensics.eval import balanced_sample_indices, bootstrap_metrics


def _decent(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n), np.ones(n)].astype(int)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.15), 0, 1)
    return labels, scores


def test_reproducible_and_seed_dependent() -> None:
    labels, scores = _decent()
    a = bootstrap_metrics(labels, scores, n_iter=50, seed=3)
    b = bootstrap_metrics(labels, scores, n_iter=50, seed=3)
    c = bootstrap_metrics(labels, scores, n_iter=50, seed=4)
    assert a == b
    assert a["auc"]["mean"] != c["auc"]["mean"]
    assert a["auc"]["point"] == c["auc"]["point"]


def test_result_shape_and_interval_contains_point() -> None:
    labels, scores = _decent()
    res = bootstrap_metrics(labels, scores, n_iter=200, seed=0)
    assert set(res) == {"acc", "ap", "auc", "eer"}
    for name, s in res.items():
        assert {"mean", "lo", "hi", "std", "point"} <= set(s)
        assert s["lo"] <= s["point"] <= s["hi"], name
        assert s["lo"] <= s["mean"] <= s["hi"], name
        assert s["std"] > 0, name
        assert s["n"] == 200
    assert 0.8 < res["auc"]["point"] < 1.0


def test_iterations_differ() -> None:
    # iterations draw fresh indices: replicate values are spread out, not one repeated value
    labels, scores = _decent()
    res = bootstrap_metrics(labels, scores, n_iter=30, seed=0)
    assert res["auc"]["hi"] > res["auc"]["lo"]


def test_perfect_classifier_zero_width() -> None:
    labels = np.r_[np.zeros(40), np.ones(60)]
    scores = np.r_[np.linspace(0, 0.4, 40), np.linspace(0.6, 1, 60)]
    res = bootstrap_metrics(labels, scores, n_iter=40, seed=1, metrics=("auc", "acc", "eer", "tpr@fpr=0.01"))
    for key, expected in (("auc", 1.0), ("acc", 1.0), ("eer", 0.0), ("tpr@fpr=0.01", 1.0)):
        s = res[key]
        assert s["mean"] == s["lo"] == s["hi"] == s["point"] == expected, key
        assert s["std"] == 0.0


def test_balanced_sampling_balances_classes() -> None:
    labels = np.r_[np.zeros(10), np.ones(1000)].astype(int)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = balanced_sample_indices(labels, rng)
        assert idx.size == 20
        assert (labels[idx] == 0).sum() == (labels[idx] == 1).sum() == 10
    idx = balanced_sample_indices(labels, rng, n_per_class=64)
    assert np.bincount(labels[idx]).tolist() == [64, 64]


def test_balanced_accuracy_not_dominated_by_big_class() -> None:
    # classifier calls everything fake: plain accuracy ~0.99, balanced bootstrap ~0.5
    labels = np.r_[np.zeros(10), np.ones(1000)]
    scores = np.full(labels.size, 0.9)
    res = bootstrap_metrics(labels, scores, n_iter=20, metrics=("acc",))
    assert res["acc"]["mean"] == pytest.approx(0.5)
    assert res["acc"]["point"] == pytest.approx(1000 / 1010)


def test_group_balancing() -> None:
    # fakes: 1000 from generator "big", 10 from "small"; each group must get ~half of the draws
    labels = np.r_[np.zeros(1010), np.ones(1010)].astype(int)
    groups = np.array(["r"] * 1010 + ["big"] * 1000 + ["small"] * 10)
    rng = np.random.default_rng(0)
    drawn = np.concatenate([balanced_sample_indices(labels, rng, groups=groups) for _ in range(20)])
    fake_groups = groups[drawn][labels[drawn] == 1]
    frac_small = (fake_groups == "small").mean()
    assert abs(frac_small - 0.5) < 0.02
    assert (labels[drawn] == 0).sum() == (labels[drawn] == 1).sum()
    # only the 10 "small" samples are ever used for that group, all of them eventually
    small_idx = drawn[groups[drawn] == "small"]
    assert set(small_idx.tolist()) == set(range(2010, 2020))
    # without groups the small generator is drawn in proportion to its size
    drawn = np.concatenate([balanced_sample_indices(labels, rng) for _ in range(20)])
    assert (groups[drawn] == "small").mean() < 0.02


def test_groups_passed_to_bootstrap_metrics() -> None:
    labels, scores = _decent(100)
    groups = np.where(np.arange(labels.size) % 7 == 0, "a", "b")
    res = bootstrap_metrics(labels, scores, groups=groups, n_iter=20, seed=0)
    assert res["auc"]["n"] == 20
    with pytest.raises(ValueError, match="groups"):
        bootstrap_metrics(labels, scores, groups=groups[:-1], n_iter=2)


def test_undefined_metric_iterations_skipped() -> None:
    labels = np.ones(20)
    scores = np.linspace(0, 1, 20)
    res = bootstrap_metrics(labels, scores, n_iter=10)
    assert res["auc"]["n"] == 0 and math.isnan(res["auc"]["mean"]) and math.isnan(res["auc"]["point"])
    assert res["acc"]["n"] == 10 and 0 < res["acc"]["mean"] < 1


def test_bad_arguments() -> None:
    labels, scores = _decent(10)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_metrics(labels, scores, metrics=("f1",))
    with pytest.raises(ValueError, match="n_iter"):
        bootstrap_metrics(labels, scores, n_iter=0)
    with pytest.raises(ValueError, match="ci"):
        bootstrap_metrics(labels, scores, ci=95)
