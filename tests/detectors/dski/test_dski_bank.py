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
