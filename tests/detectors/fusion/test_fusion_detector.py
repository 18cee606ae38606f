"""fusion: p-value calibration on real images, the combined operating point, one self-contained model dir."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.fusion import FusionDetector, TailPValue, combine_p
from medforensics.io.preprocess import Preprocessing

ZED = {"width": 8, "layers": 1, "scales": 2, "steps": 5, "batch_size": 4, "crop": 16, "progress": False}


def test_tail_pvalue_is_an_upper_tail_ecdf_with_a_smooth_tail():
    real = (np.arange(100) - 50) / 10  # real logits −5.0 … 4.9
    pv = TailPValue(real, tail_fraction=0.1)  # tail: the 10 largest, u = 4.0, β = mean excess 0.45
    p = pv(expit(np.array([-5.05, 0.05, 3.95, 4.05])))
    np.testing.assert_allclose(p, [1.0, 50 / 101, 11 / 101, 10 / 101 * np.exp(-0.05 / 0.45)], rtol=1e-9)
    above = pv(expit(np.array([4.95, 6.0, 10.0, 30.0])))
    assert np.all(np.diff(above) < 0) and above[-1] > 0  # above every real: still ordered, never 0
    assert np.all(np.diff(pv(expit(np.linspace(-8, 30, 500)))) <= 0)  # monotone everywhere


def test_combine_fisher_and_min_p():
    p = np.array([[1.0, 1.0], [0.01, 1.0], [0.05, 0.05]])
    fisher = combine_p(p, "fisher")
    assert fisher[0] == pytest.approx(1.0) and fisher[2] < fisher[1]  # agreement adds up
    minp = combine_p(p, "min_p")
    np.testing.assert_allclose(minp, [1.0, 0.02, 0.1])
    with pytest.raises(ValueError, match="combine"):
        combine_p(p, "mean")


@pytest.fixture(scope="module")
def members(toy_sets):
    train, val = toy_sets
    reals = [it for it in train if int(it["label"]) == 0]
    out = []
    for seed in (0, 1):
        det = create_detector("zed", seed=seed, **ZED)
        det.preprocessing = Preprocessing(size=128, channels=1)
        det.fit(reals[:8], reals[8:16])
        out.append(det)
    return out


def test_fusion_fpr_on_calibration_reals_and_round_trip(members, toy_sets, make_toy_item, tmp_path):
    rng = np.random.default_rng(5)
    cal = [make_toy_item(rng, 0) for _ in range(40)] + [make_toy_item(rng, 1) for _ in range(5)]
    fused = FusionDetector.from_members(members, target_fpr=0.1, progress=False)
    assert fused.preprocessing == Preprocessing(size=128, channels=1)
    summary = fused.calibrate(cal)
    assert summary["calibration_images"] == 40  # fakes skipped
    real = np.stack([it["image"].numpy() for it in cal[:40]])
    scores = fused.score(real)
    fpr = float(np.mean(scores >= fused.threshold))
    assert fpr <= 0.1 and fpr >= 0.1 - 1 / 40  # the empirical-quantile rule: within 1/n below the target
    assert fused.calibration["achieved_fpr"] == pytest.approx(fpr)
    # the fused score is 1 − Fisher(p-values of the members' scores)
    member = fused.member_scores(fused.prepare(real))[0]
    np.testing.assert_allclose(scores, 1 - combine_p(fused.member_pvalues(member), "fisher"))
    # one self-contained model directory; identical scores and maps after loading
    path = fused.save(tmp_path / "fusion")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "weights.safetensors"]
    again = load_detector(path)
    assert isinstance(again, FusionDetector) and [m.name for m in again.members] == ["zed", "zed"]
    s1, m1 = fused.score_with_maps(real[:4])
    s2, m2 = again.score_with_maps(real[:4])
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(m1, m2)
    assert m1.shape == (4, 128, 128) and again.threshold == fused.threshold


def test_fusion_rejects_bad_members(members):
    other = create_detector("zed", **ZED)  # 256 px preprocessing: not the members' 128
    with pytest.raises(ValueError, match="same preprocessing"):
        FusionDetector.from_members([members[0], other])
    with pytest.raises(ValueError, match="at least two members"):
        FusionDetector.from_members(members[:1])
    with pytest.raises(RuntimeError, match="not calibrated"):
        FusionDetector.from_members(members).score(np.zeros((1, 1, 128, 128), np.float32))
    with pytest.raises(ValueError, match="combine"):
        create_detector("fusion", members=[{"detector": "zed"}, {"detector": "zed"}], combine="mean")
