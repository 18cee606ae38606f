"""Class- and group-balanced bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medforensics.eval import balanced_sample_indices, bootstrap_metrics, compute_metrics
from medforensics.eval import bootstrap as bootstrap_mod
from medforensics.eval.bootstrap import batch_metrics, draw_weights, summarize


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
    assert res["acc"]["point"] == pytest.approx(0.5)  # weighted as the draws are, not 1000/1010
    assert compute_metrics(labels, scores)["acc"] == pytest.approx(1000 / 1010)


def test_point_estimate_is_the_quantity_the_interval_is_for() -> None:
    # reals: one source; fakes: a big generator the detector misses, a small one it catches.
    # Pooled, the big generator dominates (AUC ≈ 0.2); group-balanced, each generator counts half.
    rng = np.random.default_rng(3)
    real = rng.normal(0.5, 0.1, 300)
    big, small = rng.normal(0.3, 0.1, 900), rng.normal(0.9, 0.05, 30)
    labels = np.r_[np.zeros(300), np.ones(930)].astype(int)
    scores = np.r_[real, big, small]
    groups = np.array(["r"] * 300 + ["big"] * 900 + ["small"] * 30)
    res = bootstrap_metrics(labels, scores, groups=groups, n_iter=200, seed=0, metrics=("auc", "ap", "acc"))
    pooled = compute_metrics(labels, scores)["auc"]
    assert pooled < 0.3
    for m in ("auc", "ap", "acc"):
        assert res[m]["lo"] <= res[m]["point"] <= res[m]["hi"], m
    w = draw_weights(labels, groups)
    assert w[labels == 1].sum() == pytest.approx(1) and w[-1] == pytest.approx(0.5 / 30)
    assert res["auc"]["point"] == pytest.approx(roc_auc_score(labels, scores, sample_weight=w))
    assert 0.5 < res["auc"]["point"] < 0.7 and not res["auc"]["lo"] <= pooled <= res["auc"]["hi"]


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


# ----------------------------------------------------------------------------- fast (vectorised) path
TARGETS = (0.01, 0.05, 0.1, 0.3)


def _tied(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels and scores with many ties (a coarse grid, some exact 0.5 at the threshold)."""
    labels = (rng.random(n) < 0.35).astype(int)
    scores = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1) * rng.choice([4, 10, 1000]), 0)
    scores = scores / scores.max() if scores.max() > 0 else scores
    return labels, scores


def test_batch_metrics_equal_sklearn_and_compute_metrics_with_ties() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(7)
    labels, scores = _tied(400, rng)
    idx = rng.integers(0, labels.size, size=(25, 300))  # 25 resamples (imbalanced, tied)
    idx[0] = np.arange(300)
    lab, sc = labels[idx], scores[idx]
    sc[1] = 0.5  # one resample where every score ties (at the threshold)
    fast = batch_metrics(lab, sc, threshold=0.5, fpr_targets=TARGETS)
    for b in range(idx.shape[0]):
        ref = compute_metrics(lab[b], sc[b], threshold=0.5, fpr_targets=TARGETS)
        for key, col in fast.items():
            assert col[b] == pytest.approx(ref[key], abs=1e-12, rel=0), (b, key)
        assert fast["auc"][b] == pytest.approx(roc_auc_score(lab[b], sc[b]), abs=1e-12, rel=0)
        assert fast["ap"][b] == pytest.approx(average_precision_score(lab[b], sc[b]), abs=1e-12, rel=0)
    assert fast["auc"][1] == 0.5 and fast["eer"][1] == pytest.approx(compute_metrics(lab[1], sc[1])["eer"])


def test_batch_metrics_one_class_rows_are_nan() -> None:
    lab = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    sc = np.array([[0.1, 0.7, 0.6, 0.9], [0.1, 0.2, 0.6, 0.9], [0.1, 0.2, 0.6, 0.9]])
    res = batch_metrics(lab, sc, 0.5, (0.1,))
    assert res["auc"][0] == 0.75 and math.isnan(res["auc"][1]) and math.isnan(res["eer"][2])
    assert math.isnan(res["tpr@fpr=0.1"][1]) and math.isnan(res["real_acc"][1]) and math.isnan(res["fake_acc"][2])
    assert res["fake_acc"][1] == 0.5 and res["real_acc"][2] == 0.5 and res["acc"][1] == 0.5
    with pytest.raises(ValueError, match="shape"):
        batch_metrics(lab[:, :3], sc)


def test_presorted_rows_give_the_same_metrics() -> None:
    rng = np.random.default_rng(3)
    labels, scores = _tied(200, rng)
    idx = rng.integers(0, 200, size=(10, 150))
    order = np.argsort(-scores, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    key = np.sort(rank[idx], axis=1)
    a = batch_metrics(labels[idx], scores[idx], 0.5, TARGETS)
    b = batch_metrics(labels[order][key], scores[order][key], 0.5, TARGETS, presorted=True)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _reference_bootstrap(labels, scores, groups, n_iter, seed, metrics, chunk):
    """The bootstrap the slow way: replay the draws, one compute_metrics (scikit-learn) per iteration."""
    lab = np.asarray(labels).astype(np.int64)
    draw, _ = bootstrap_mod._make_drawer(lab, None if groups is None else np.asarray(groups), None)
    rng = np.random.default_rng(seed)
    rows = np.concatenate([draw(rng, min(chunk, n_iter - s)) for s in range(0, n_iter, chunk)])
    targets = bootstrap_mod._fpr_targets(metrics)
    reps = [compute_metrics(lab[r], np.asarray(scores)[r], 0.5, targets) for r in rows]
    # the point: every class, and every group within a class, weighted equally (as the draws are)
    weight = np.zeros(lab.size)
    for c in (0, 1):
        members = np.flatnonzero(lab == c)
        grp = np.zeros(lab.size, dtype=int) if groups is None else np.asarray(groups)
        names = sorted(set(grp[members].tolist()))
        for g in names:
            in_g = members[grp[members] == g]
            weight[in_g] = 1.0 / (len(names) * in_g.size)
    point = compute_metrics(lab, scores, 0.5, targets, sample_weight=weight)
    return {m: summarize([r[m] for r in reps], point[m]) for m in metrics}


@pytest.mark.parametrize("chunk_elements", [1 << 20, 1000])  # one block / many blocks of iterations
def test_bootstrap_equals_per_iteration_sklearn_reference(monkeypatch, chunk_elements: int) -> None:
    monkeypatch.setattr(bootstrap_mod, "_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(11)
    labels, scores = _tied(240, rng)
    groups = rng.choice(["a", "b", "c"], size=labels.size, p=[0.7, 0.25, 0.05])
    metrics = ("acc", "ap", "auc", "eer", "eer_threshold", "real_acc", "fake_acc", "tpr@fpr=0.05")
    width = 2 * min(int((labels == 0).sum()), int((labels == 1).sum()))
    for grp in (None, groups):
        fast = bootstrap_metrics(labels, scores, groups=grp, n_iter=30, seed=5, metrics=metrics)
        ref = _reference_bootstrap(labels, scores, grp, 30, 5, metrics, max(1, chunk_elements // width))
        for m in metrics:
            for stat in ("mean", "lo", "hi", "std", "point"):
                assert fast[m][stat] == pytest.approx(ref[m][stat], abs=1e-12, rel=0), (m, stat)
            assert fast[m]["n"] == ref[m]["n"] == 30


def test_paired_auc_bootstrap_hand_computed_case() -> None:
    """Two reals, one fake. Detector a: r1 0.1 < f 0.5 < r2 0.9 (AUC ½); b separates (AUC 1) on every draw.
    A draw picks the reals {r1,r1} (¼: AUC(a) 1), {r1,r2} or {r2,r1} (½: AUC(a) ½) or {r2,r2} (¼: AUC(a) 0),
    so the paired difference is 0, −½ or −1 with probabilities ¼, ½, ¼: mean −½, 95% interval [−1, 0]."""
    from medforensics.eval.bootstrap import paired_auc_bootstrap

    labels = [0, 0, 1]
    res = paired_auc_bootstrap(labels, [0.1, 0.9, 0.5], [0.0, 0.0, 1.0], n_iter=4000, seed=0)
    assert res.point == -0.5 and (res.n_real, res.n_fake) == (2, 1)
    values, counts = np.unique(res.draws, return_counts=True)
    assert values.tolist() == [-1.0, -0.5, 0.0]
    np.testing.assert_allclose(counts / 4000, [0.25, 0.5, 0.25], atol=0.03)
    s = res.summary()
    assert (s["lo"], s["hi"], s["n"]) == (-1.0, 0.0, 4000) and abs(s["mean"] + 0.5) < 0.03
    # swapping the detectors negates every draw
    swapped = paired_auc_bootstrap(labels, [0.0, 0.0, 1.0], [0.1, 0.9, 0.5], n_iter=4000, seed=0)
    np.testing.assert_array_equal(swapped.draws, -res.draws)


def test_paired_auc_bootstrap_identical_detectors_and_one_class() -> None:
    from medforensics.eval.bootstrap import paired_auc_bootstrap

    labels, scores = _decent(50)
    same = paired_auc_bootstrap(labels, scores, scores, n_iter=30, seed=1)
    assert same.point == 0.0 and not same.draws.any()  # pairing: identical detectors never differ
    # a shared generator continues one stream: two calls with rng equal one call with twice the draws
    rng = np.random.default_rng(5)
    other = np.clip(scores + np.random.default_rng(9).normal(0, 0.2, scores.size), 0, 1)
    first = paired_auc_bootstrap(labels, scores, other, n_iter=10, rng=rng).draws
    second = paired_auc_bootstrap(labels, scores, other, n_iter=10, rng=rng).draws
    both = paired_auc_bootstrap(labels, scores, other, n_iter=20, seed=5).draws
    np.testing.assert_array_equal(np.r_[first, second], both)
    one = paired_auc_bootstrap([1, 1], [0.2, 0.3], [0.1, 0.9], n_iter=5)
    assert math.isnan(one.point) and np.isnan(one.draws).all() and one.summary()["n"] == 0
    with pytest.raises(ValueError, match="differ in length"):
        paired_auc_bootstrap([0, 1], [0.2, 0.3], [0.1])


@pytest.mark.parametrize("cells", [4_000_000, 7])
def test_paired_auc_bootstrap_equals_scikit_learn_on_every_draw(monkeypatch, cells) -> None:
    """The draws are computed at once from counts; they must equal roc_auc_score on the resampled
    images of the same random stream (ties included), also when the pair matrix is sliced."""
    from sklearn.metrics import roc_auc_score

    from medforensics.eval import bootstrap

    monkeypatch.setattr(bootstrap, "_PAIR_CELLS", cells)
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(37), np.ones(11)]
    rng.shuffle(labels)
    a = np.round(rng.normal(size=labels.size) + labels, 1)  # coarse: many ties
    b = rng.normal(size=labels.size) + 0.3 * labels
    res = bootstrap.paired_auc_bootstrap(labels, a, b, n_iter=60, seed=7)
    real, fake = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    ref_rng, y = np.random.default_rng(7), np.r_[np.zeros(real.size), np.ones(fake.size)]
    expect = []
    for _ in range(60):
        idx = np.r_[ref_rng.choice(real, real.size), ref_rng.choice(fake, fake.size)]
        expect.append(roc_auc_score(y, a[idx]) - roc_auc_score(y, b[idx]))
    np.testing.assert_allclose(res.draws, expect, atol=1e-12)
    assert abs(res.point - (roc_auc_score(labels, a) - roc_auc_score(labels, b))) < 1e-12
