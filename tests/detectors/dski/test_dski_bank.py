"""MFRM: arithmetic against hand-computed numbers, the bank API, save/load round trip, few-shot effect."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.dski import FeatureBank, mfrm_logits, retrieval_logits
from medforensics.io import ImageMeta, MedImage

TINY = {"backbone": {"tiny": {"vision": {"image_size": 32, "patch_size": 8}}}, "bottleneck": 8, "progress": False,
        "epochs": 1, "batch_size": 4, "bank_shots": 2}


def test_mfrm_arithmetic_matches_a_hand_computed_example():
    f = torch.tensor([[1.0, 0.0]])  # one query, already unit length
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # F: cosines with f = 1, 0, 0.6
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # L: real, fake, fake
    w = torch.tensor([[0.8, 0.6], [0.6, 0.8]])  # W′ rows: cosines with f = 0.8 (real), 0.6 (fake)
    # A = exp(−α(1 − f·Fᵀ)) with α = 0.1: [1, e^−0.1, e^−0.04]
    a1, a2, a3 = 1.0, math.exp(-0.1), math.exp(-0.04)
    # unbalanced (the paper's plain sum): logits = β·A·L + s·f·W′ᵀ with β = 10, s = 100
    expected = [10 * a1 + 100 * 0.8, 10 * (a2 + a3) + 100 * 0.6]
    got = mfrm_logits(f, w, keys, values, alpha=0.1, beta=10.0, logit_scale=100.0)
    np.testing.assert_allclose(got.numpy()[0], expected, rtol=1e-6)
    # class-balanced with n = 2: each column is n × its mean affinity → real 2·a1, fake (a2 + a3)
    expected_bal = [10 * 2 * a1 + 80.0, 10 * (a2 + a3) + 60.0]
    got = mfrm_logits(f, w, keys, values, alpha=0.1, beta=10.0, logit_scale=100.0, per_class=2)
    np.testing.assert_allclose(got.numpy()[0], expected_bal, rtol=1e-6)
    # with n real + n fake entries, balancing changes nothing (the paper's setting)
    keys4, values4 = torch.cat([keys, torch.tensor([[0.0, -1.0]])]), torch.cat([values, torch.tensor([[1.0, 0.0]])])
    torch.testing.assert_close(retrieval_logits(f, keys4, values4, alpha=0.1, beta=10.0, per_class=2),
                               retrieval_logits(f, keys4, values4, alpha=0.1, beta=10.0))
    # no bank: the classifier alone
    np.testing.assert_allclose(mfrm_logits(f, w, None, None, alpha=0.1, beta=10, logit_scale=100.0).numpy()[0],
                               [80.0, 60.0], rtol=1e-6)


def test_feature_bank_add_remove_and_checks():
    bank = FeatureBank(dim=2)
    assert bank.add(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), [0, 1], ["a", "b"]) == 2
    torch.testing.assert_close(bank.keys, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))  # keys L2-normalised
    torch.testing.assert_close(bank.values, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # one-hot labels
    bank.add(torch.ones(2, 2), [1, 1], ["b", "b"])
    assert bank.summary() == {"a": {"real": 1}, "b": {"fake": 3}}
    assert bank.remove("b") == 3 and len(bank) == 1 and bank.generators == ["a"]
    with pytest.raises(KeyError, match="holds: a"):
        bank.remove("zzz")
    with pytest.raises(ValueError, match="N×2"):
        bank.add(torch.ones(1, 3), [0], ["x"])
    with pytest.raises(ValueError, match="labels must be"):
        bank.add(torch.ones(1, 2), [2], ["x"])


@pytest.fixture(scope="module")
def trained(toy_sets):
    train, val = toy_sets
    det = create_detector("dski", seed=0, **TINY)
    det.fit(train[:8], val[:6])
    return det


def test_bank_api_save_load_round_trip(trained, toy_sets, tmp_path):
    _, val = toy_sets
    det = trained
    assert det.bank_size == 4 and len(det.bank_generators) == 4
    images = np.stack([it["image"].numpy() for it in val[6:9]])
    size = det.add_to_bank(images, [1, 1, 0], generator="genZ")
    assert size == 7 and det.bank_generators[-3:] == ["genZ"] * 3
    # MedImages are preprocessed with the stored preprocessing
    size = det.add_to_bank([MedImage(np.random.default_rng(0).random((40, 50), dtype=np.float32), ImageMeta())], "fake")
    assert size == 8 and det.bank_generators[-1] == "unnamed-fake"
    out = det.save(tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["bank"]["generators"] == det.bank_generators and cfg["bank"]["size"] == 8
    assert {"bank.keys", "bank.values"} <= set(load_file(str(out / "weights.safetensors")))
    again = load_detector(out)
    assert again.bank_generators == det.bank_generators
    torch.testing.assert_close(again.bank.keys, det.bank.keys)
    torch.testing.assert_close(again.bank.values, det.bank.values)
    batch = np.stack([it["image"].numpy() for it in val[:4]])
    np.testing.assert_array_equal(again.score(batch), det.score(batch))
    assert again.remove_from_bank("genZ") == 5 and "genZ" not in again.bank_generators
    with pytest.raises(KeyError):
        again.remove_from_bank("genZ")
    with pytest.raises(ValueError, match="labels"):
        again.add_to_bank(images, [1, 0])
    det.remove_from_bank("genZ")
    det.remove_from_bank("unnamed-fake")


def test_use_mfrm_switch_and_few_shot_effect(trained, toy_sets):
    _, val = toy_sets
    det = trained
    batch = np.stack([it["image"].numpy() for it in val[8:12]])
    with_bank = det.score(batch)
    det.config["use_mfrm"] = False
    try:
        without = det.score(batch)
    finally:
        det.config["use_mfrm"] = True
    assert not np.allclose(with_bank, without)  # MFRM on/off changes the scores
    n0 = det.bank_size
    for i in range(len(batch)):  # one labelled sample moves its own prediction toward its label
        det.add_to_bank(batch[i : i + 1], "fake", generator="new-gen")
        assert det.score(batch[i : i + 1])[0] > with_bank[i]
        det.remove_from_bank("new-gen")
        det.add_to_bank(batch[i : i + 1], "real", generator="new-real")
        assert det.score(batch[i : i + 1])[0] < with_bank[i]
        det.remove_from_bank("new-real")
    det.add_to_bank(batch, 1, generator="new-gen")  # a group of them: on average
    assert det.score(batch).mean() > with_bank.mean()
    det.remove_from_bank("new-gen")
    np.testing.assert_allclose(det.score(batch), with_bank, rtol=1e-6)
    assert det.bank_size == n0
    # an unbalanced bank does not shift unrelated queries wholesale (class-balanced retrieval)
    det.add_to_bank(np.stack([it["image"].numpy() for it in val[:6]]), 1, generator="many-fakes")
    others = np.stack([it["image"].numpy() for it in val[12:16]])
    shifted = det.score(others)
    det.remove_from_bank("many-fakes")
    det.config["bank_balance"] = False
    det.add_to_bank(np.stack([it["image"].numpy() for it in val[:6]]), 1, generator="many-fakes")
    plain = det.score(others)
    det.remove_from_bank("many-fakes")
    det.config["bank_balance"] = True
    base = det.score(others)
    assert np.abs(shifted - base).max() < np.abs(plain - base).max()


def test_save_bank_rewrites_only_the_bank(trained, toy_sets, tmp_path):
    _, val = toy_sets
    det = trained
    out = det.save(tmp_path / "m", model_card="# card\n")
    before = load_file(str(out / "weights.safetensors"))
    cfg_before = json.loads((out / "config.json").read_text())
    loaded = load_detector(out)
    loaded.add_to_bank(np.stack([it["image"].numpy() for it in val[:2]]), 1, generator="g")
    loaded.save_bank(out)
    after = load_file(str(out / "weights.safetensors"))
    cfg_after = json.loads((out / "config.json").read_text())
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith("bank."))
    assert after["bank.keys"].shape[0] == before["bank.keys"].shape[0] + 2
    assert {k: v for k, v in cfg_after.items() if k != "bank"} == {k: v for k, v in cfg_before.items() if k != "bank"}
    assert (out / "MODEL_CARD.md").read_text() == "# card\n"
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "config.json", "weights.safetensors"]
    assert load_detector(out).bank_generators[-2:] == ["g", "g"]
    # a directory holding a different model is refused
    other = create_detector("dski", seed=1, **TINY).save(tmp_path / "other")
    with pytest.raises(ValueError, match="different model weights"):
        loaded.save_bank(other)


def _new_generator_fakes(n: int, seed: int) -> np.ndarray:
    """A 'new generator' unlike the toy fakes: smooth textures with an 8-px checkerboard imprinted."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    checker = ((yy // 8) + (xx // 8)) % 2
    out = []
    for _ in range(n):
        t = gaussian_filter(rng.random((128, 128)), 2.0)
        t = 0.6 * (t - t.min()) / (np.ptp(t) + 1e-8) + 0.4 * checker
        out.append(np.repeat(t[None], 3, 0))
    return np.stack(out).astype(np.float32)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def test_centred_bank_keys_are_spread_and_new_generator_fakes_move_their_own_kind(trained, toy_sets):
    _, val = toy_sets
    det = trained
    assert det.config["center_features"] and det.model.feature_mean.abs().sum() > 0  # μ was fitted in fit()
    off = ~torch.eye(det.bank_size, dtype=torch.bool)
    keys = det.bank.keys
    assert (keys @ keys.T)[off].mean() < 0.9  # no longer ≈ 1 for every pair
    # the same images without centring: the collapse the centring removes (tiny random CLIP ≈ 0.98)
    raw = det.bank_features(np.stack([it["image"].numpy() for it in val[:8]]), center=False)
    off8 = ~torch.eye(8, dtype=torch.bool)
    assert (raw @ raw.T)[off8].mean() > 0.9
    cen = det.bank_features(np.stack([it["image"].numpy() for it in val[:8]]))
    assert (cen @ cen.T)[off8].mean() < 0.9
    # few-shot: fakes of the new generator in the bank raise the scores of *other* fakes of it more
    # than those of held-out reals (compared as logits fake − real, free of softmax saturation)
    new = _new_generator_fakes(8, seed=3)
    reals = np.stack([it["image"].numpy() for it in val if float(it["label"]) == 0][:6])
    before_new, before_real = _logit(det.score(new[4:])), _logit(det.score(reals))
    det.add_to_bank(new[:4], "fake", generator="new-gen")
    try:
        d_new = _logit(det.score(new[4:])) - before_new
        d_real = _logit(det.score(reals)) - before_real
    finally:
        det.remove_from_bank("new-gen")
    assert d_new.min() > 0 and d_new.mean() > 2 * d_real.mean() + 0.1


def test_remove_unknown_generator_raises_key_error_listing_present_ones(trained):
    with pytest.raises(KeyError, match=r"no bank entries of generator 'nope'.*holds: train:"):
        trained.remove_from_bank("nope")


def test_centring_switch_and_weights(trained, tmp_path):
    det = trained
    out = det.save(tmp_path / "m")
    tensors = load_file(str(out / "weights.safetensors"))
    torch.testing.assert_close(tensors["feature_mean"], det.model.feature_mean)
    off = create_detector("dski", seed=0, **{**TINY, "center_features": False})
    assert "feature_mean" not in off.state_dict()
    x = torch.rand(3, 3, 32, 32)
    off.model.set_feature_mean(torch.ones(off.model.feature_mean.shape))  # ignored when the switch is off
    f_off, _ = off.model.features(x)
    f_raw, _ = off.model.features(x, center=False)
    torch.testing.assert_close(f_off, f_raw)


def test_feature_mean_tracks_training_batches_and_is_refitted_after_fit(toy_sets):
    train, val = toy_sets
    det = create_detector("dski", seed=0, **TINY)
    x = torch.rand(4, 3, 32, 32)
    mu = det.model.feature_mean.clone()
    with torch.no_grad():
        det.model.features(x)  # eval mode: μ fixed
    torch.testing.assert_close(det.model.feature_mean, mu)
    det.model.train()
    raw, _ = det.model.features(x, center=False)
    det.model.features(x)  # training mode: running mean, momentum 0.1
    det.model.eval()
    torch.testing.assert_close(det.model.feature_mean, 0.9 * mu + 0.1 * raw.detach().mean(0))
    summary = det.fit(train[:8], val[:4])
    assert summary["feature_mean_drift"] is not None
    # after fit, μ is the exact class-balanced mean of the kept model's uncentred features
    _, feats, ys = det._draw(train[:8], det.config["center_shots"], center=False)
    y = torch.tensor(ys)
    torch.testing.assert_close(det.model.feature_mean, (feats[y == 0].mean(0) + feats[y == 1].mean(0)) / 2)
