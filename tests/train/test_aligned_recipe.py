"""The aligned-pairs training recipe (``medforensics.train.aligned``) on a tiny synthetic aligned set.

The reals are textured grey images with fine noise; the aligned fakes are made from them by
``synth.aligned.make_aligned_set`` with two hand-written decoder stages: 2×2 average pooling then
nearest-neighbour ×2 upsampling (family ``nearest``, the one trained on) or bilinear ×2 upsampling
(family ``bilinear``, held out for validation), sharpness matched to the real.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch.nn import functional as F

from medforensics.data import Manifest
from medforensics.detectors import create_detector
from medforensics.detectors.components.loaders import balanced_loader
from medforensics.io.png import write_png
from medforensics.io.preprocess import Preprocessing
from medforensics.synth.aligned import Transform, make_aligned_set
from medforensics.train.aligned import (
    GRID,
    AlignedRecipeError,
    LeakCheckError,
    PairPostProcess,
    aligned_training_datasets,
    leak_check,
    pair_scores,
    prepare_aligned_data,
    transform_family,
)

SIZE = 96
N_TRAIN, N_VAL, N_TEST = 16, 6, 16


def _pool_up(mode: str):
    def fn(t: torch.Tensor, seed: int, variant: int) -> torch.Tensor:
        small = F.avg_pool2d(t, 2)
        if mode == "nearest":
            return F.interpolate(small, scale_factor=2, mode="nearest")
        return F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False)

    return fn


def _transforms() -> list[Transform]:
    return [Transform(f"ae:pool2-{m}", "autoencoder", _pool_up(m), {"upsampling": m, "stride": 2}, tile=64, halo=16)
            for m in ("nearest", "bilinear")]


def _write_reals(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    splits = ["train"] * N_TRAIN + ["val"] * N_VAL + ["test"] * N_TEST
    for i, split in enumerate(splits):
        rng = np.random.default_rng(1000 + i)
        base = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 3.0 + i % 3)
        base = 0.25 + 0.5 * (base - base.min()) / np.ptp(base)
        img = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
        name = f"real_{i:02d}.png"
        write_png(folder / name, np.rint(img * 255).astype(np.uint8))  # the writer the aligned fakes go through
        records.append({"path": name, "label": "real", "modality": "ct", "source": "synthetic",
                        "patient_id": f"p{i}", "split": split})
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def aligned_set(tmp_path_factory) -> tuple[Manifest, Manifest, Path]:
    root = tmp_path_factory.mktemp("aligned")
    reals = Manifest.read(_write_reals(root / "reals"))
    fakes, errors, _ = make_aligned_set(reals, root / "set", _transforms(), per_real=1, progress=False)
    assert not errors
    return reals, Manifest.read(root / "set" / "manifest.csv"), root


def _data(aligned_set, **kw):
    reals, fakes, root = aligned_set
    return prepare_aligned_data(fakes, root / "work", holdout_family="bilinear", reals=reals, seed=0, **kw)


PRE = Preprocessing(size=SIZE, channels=1)


def test_families_and_holdout(aligned_set):
    reals, fakes, _ = aligned_set
    assert {transform_family(r) for r in fakes} == {"nearest", "bilinear"}
    data = _data(aligned_set)
    assert data.train and {p.family for p in data.train} == {"nearest"}  # held-out family never trained on
    assert set(data.val.column("family")) == {"", "bilinear"}
    test_reals = {str(r.resolve(reals.root)) for r in reals if r.split == "test"}
    val_reals = {str(r.resolve(reals.root)) for r in reals if r.split == "val"}
    assert not {p.real for p in data.train} & (test_reals | val_reals)  # recorded splits kept
    assert {p.real for p in data.test_pairs} == test_reals
    assert data.summary["train"]["pairs"] == N_TRAIN and data.summary["val"]["pairs"] == N_VAL
    # the split recorded in the aligned manifest alone (reals' manifest without one, or none) is kept too
    blank = reals.with_rows([r.copy(split="") for r in reals])
    for other in (prepare_aligned_data(fakes, aligned_set[2] / "work", holdout_family="bilinear", reals=blank),
                  prepare_aligned_data(fakes, aligned_set[2] / "work", holdout_family="bilinear")):
        assert {p.real for p in other.train} == {p.real for p in data.train}
        assert {p.real for p in other.test_pairs} == test_reals
    with pytest.raises(AlignedRecipeError, match="families in the set: bilinear"):
        prepare_aligned_data(fakes, aligned_set[2] / "work", holdout_family="transposed", reals=reals)


def test_pairs_share_crop_grid_and_post_processing(aligned_set):
    data = _data(aligned_set)
    post = PairPostProcess(p_resize=0.5, p_blur=0.5, p_noise=0.5, p_bits=0.5, p_jpeg=0.5)
    train, _ = aligned_training_datasets(data, PRE, 32, seed=3, crops_per_pair=4, post=post)
    assert len(train) == 2 * 4 * N_TRAIN
    fired = {k: False for k in ("scale", "blur", "noise", "bits", "jpeg")}
    for k in range(0, len(train) // 2, 3):
        real, fake = train[2 * k], train[2 * k + 1]
        assert (real["member"], fake["member"]) == (0, 1) and real["pair"] == fake["pair"]
        assert (float(real["label"]), float(fake["label"])) == (0.0, 1.0)
        assert real["image"].shape == fake["image"].shape == (1, 32, 32)
        assert real["image"].dtype == fake["image"].dtype == torch.float32
        assert real["offset"] == fake["offset"] and all(o % GRID == 0 for o in real["offset"])
        assert real["draw"] == fake["draw"]
        for key in fired:
            fired[key] |= real["draw"][key] not in (0, 0.0, 1.0)
        # the same draw applied to the same pixels gives the same output: one draw, both members
        pix = np.random.default_rng(k).random((48, 48)).astype(np.float32)
        assert np.array_equal(PairPostProcess.apply(pix, real["draw"]), PairPostProcess.apply(pix, fake["draw"]))
    assert all(fired.values()), fired
    # reproducible per (seed, epoch, item); another epoch draws anew
    again, _ = aligned_training_datasets(data, PRE, 32, seed=3, crops_per_pair=4, post=post)
    assert torch.equal(again[7]["image"], train[7]["image"]) and again[7]["draw"] == train[7]["draw"]
    again.set_epoch(1)
    assert any(again[2 * k]["offset"] != train[2 * k]["offset"] for k in range(8))
    # with no post-processing the crop is the native pixels at the offset
    plain, _ = aligned_training_datasets(data, PRE, 32, seed=0, post=PairPostProcess(0, p_blur=0, p_noise=0,
                                                                                      p_bits=0, p_jpeg=0))
    item = plain[1]
    pair = plain.pairs[item["pair"]]
    y, x = item["offset"]
    native = np.asarray(Image.open(pair.fake), dtype=np.float32)[y : y + 32, x : x + 32] / 255.0
    assert np.allclose(item["image"][0].numpy(), native, atol=1e-6)


def test_batches_hold_whole_pairs_and_shuffled_labels_permute_within_pairs(aligned_set):
    data = _data(aligned_set)
    train, _ = aligned_training_datasets(data, PRE, 32, seed=0, crops_per_pair=2)
    loader = balanced_loader(train, 6, torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        pairs = batch["pair"].tolist()
        members = batch["member"].tolist()
        assert len(pairs) % 2 == 0 and len(pairs) <= 6
        for i in range(0, len(pairs), 2):
            assert pairs[i] == pairs[i + 1] and members[i : i + 2] == [0, 1]
            assert batch["offset"][i] == batch["offset"][i + 1]
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(train)))  # an epoch visits every item once

    control, _ = aligned_training_datasets(data, PRE, 32, seed=0, crops_per_pair=2, shuffle_labels=True)
    labels = control.labels.reshape(-1, 2)
    assert (labels.sum(1) == 1).all()  # one real-labelled and one fake-labelled member per pair
    assert 0 < (labels[:, 0] == 1).mean() < 1  # some pairs swapped, not all
    swapped = next(k for k in range(len(labels)) if labels[k, 0] == 1)
    assert float(control[2 * swapped]["label"]) == 1.0 and control[2 * swapped]["member"] == 0
    assert np.array_equal(control.labels, aligned_training_datasets(data, PRE, 32, seed=0, crops_per_pair=2,
                                                                    shuffle_labels=True)[0].labels)  # seeded


def test_leak_check_runs_and_catches_a_container_leak(aligned_set, tmp_path):
    data = _data(aligned_set)
    # reals written by Pillow like the fakes: passes
    report = leak_check(data)
    assert report["passed"] and report["n"] == 2 * N_TRAIN
    # fakes as JPEG (q95) while reals are PNG: the container gives the label away
    leaky = []
    for p in data.train:
        dest = tmp_path / (Path(p.fake).stem + ".jpg")
        Image.open(p.fake).save(dest, quality=95)
        leaky.append(type(p)(**{**p.__dict__, "fake": str(dest)}))
    with pytest.raises(LeakCheckError, match="format_jpeg"):
        leak_check(type(data)(leaky, data.val, data.test_pairs, data.summary))


def test_reencode_keeps_pixels_and_unifies_the_container(aligned_set):
    data = _data(aligned_set, reencode=True)
    assert data.summary["reencoded"]["files"] == 2 * N_TRAIN
    p = data.train[0]
    assert "reencoded" in p.real and "reencoded" in p.fake
    orig = next(q for q in _data(aligned_set).train if q.generator == p.generator and Path(q.real).name)
    assert leak_check(data)["passed"]
    assert np.array(Image.open(p.fake)).shape == np.array(Image.open(orig.fake)).shape


def _train_and_score(aligned_set, shuffle: bool) -> float:
    data = _data(aligned_set)
    det = create_detector("forensic_cnn", preprocessing=PRE, seed=0, width=8, patch_size=32, patch_stride=16,
                          patches_per_image=1, epochs=3, batch_size=16, lr=3e-3, progress=False)
    train, val = aligned_training_datasets(data, det.preprocessing, 32, seed=0, crops_per_pair=4,
                                           shuffle_labels=shuffle, post=PairPostProcess(p_resize=0, p_jpeg=0.2))
    summary = det.fit(train, val)
    assert summary["n_train"] == len(train) and len(summary["history"]) == 3
    steps = 3 * len(train.batch_sampler(16, torch.Generator()))
    assert 24 <= steps <= 60  # "a few dozen" optimiser steps
    auc = pair_scores(det, data.test_pairs)["per_family"]["nearest"]["auc"]  # held-out images, whole-image scores
    return auc, summary["history"][-1]["train_loss"]


def test_a_real_decoder_trace_is_learnt_and_the_shuffled_control_is_not(aligned_set):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order: the same AUCs on every machine
    try:
        auc, loss = _train_and_score(aligned_set, shuffle=False)
        control, control_loss = _train_and_score(aligned_set, shuffle=True)
    finally:
        torch.set_num_threads(threads)
    record = json.dumps({"auc": auc, "loss": loss, "control_auc": control, "control_loss": control_loss})
    assert auc >= 0.75 and loss < 0.5, record
    # labels permuted within pairs: nothing to learn — the loss stays at ln 2 — and the control stays far
    # below the trained model. Its AUC on these 16 test pairs is the untrained network's ranking (0.17–0.94
    # across init seeds for this architecture), so the bound is relative to the trained model, not 0.5.
    assert control_loss > 0.66, record
    assert control <= auc - 0.25, record


def test_cli_aligned_recipe_writes_a_model_dir(aligned_set, tmp_path):
    from typer.testing import CliRunner

    from medforensics.cli import app
    from medforensics.detectors import load_detector

    reals, fakes, root = aligned_set
    base = ["train", "forensic_cnn", "--recipe", "aligned", "--aligned-manifest", str(fakes.path),
            "--manifest", str(reals.path), "--workdir", str(tmp_path / "work"), "--tamper-fraction", "0",
            "--set", "width=8", "--set", "patch_size=32", "--set", "patch_stride=32", "--set", "epochs=1",
            "--set", "progress=false", "--set", json.dumps({"size": SIZE, "channels": 1}).join(["preprocessing=", ""])]
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "m"), "--holdout-family", "bilinear",
                                 "--shuffle-labels", "--max-test-pairs", "4", "--max-train-pairs", "10"])
    assert result.exit_code == 0, result.output
    det = load_detector(tmp_path / "m")
    data = det.training_summary["data"]
    assert data["recipe"] == "aligned" and data["holdout_family"] == "bilinear" and data["shuffle_labels"]
    assert data["leak_check"]["passed"] and det.config["patches_per_image"] == 1 and data["train"]["pairs"] == 10
    assert det.calibration["method"] != "default"  # τ calibrated on the validation reals
    assert json.loads((tmp_path / "m" / "test_metrics.json").read_text())["aligned_test_pairs"]["n_fake"] == 4
    assert "--shuffle-labels" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "m2"), "--holdout-family", "diffusion"])
    assert bad.exit_code == 2 and "families in the set" in bad.output


def test_leak_check_refuses_files_it_cannot_read(aligned_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative work dir: the re-encoded copies must still be found from anywhere
    reals, fakes, root = aligned_set
    data = prepare_aligned_data(fakes, Path("work"), holdout_family="bilinear", reals=reals, reencode=True)
    assert all(Path(p.real).is_absolute() and Path(p.fake).is_absolute() for p in data.train)
    assert leak_check(data)["n"] == 2 * N_TRAIN
    missing = [type(p)(**{**p.__dict__, "fake": str(tmp_path / "gone.png")}) for p in data.train]
    with pytest.raises(LeakCheckError, match="could not read"):
        leak_check(type(data)(missing, data.val, data.test_pairs, data.summary))


# --------------------------------------------------------------------------- the history round trip
#: draws of the default PairPostProcess before the history round trip existed (recorded from that code), and the
#: next value its generator gave: the new step must leave both unchanged
PREVIOUS_DRAWS = [
    ([0, 0, 0], {"scale": 1.0, "resample": "area", "blur": 0.0, "noise": 0.011785249846377613,
                 "noise_seed": 4312260422999060475, "bits": 6, "jpeg": 0}, 0.002738500170148095),
    ([3, 1, 7], {"scale": 1.252168718963478, "resample": "lanczos", "blur": 0.0, "noise": 0.0,
                 "noise_seed": 1391165208270091961, "bits": 0, "jpeg": 0}, 0.8060212902361322),
    ([5, 2, 11], {"scale": 1.0, "resample": "lanczos", "blur": 0.9432202009594484, "noise": 0.0,
                  "noise_seed": 351071769865510835, "bits": 0, "jpeg": 0}, 0.39540591153498894),
]
HISTORY_ONLY = dict(p_resize=0, p_blur=0, p_noise=0, p_bits=0, p_jpeg=0)


@pytest.mark.parametrize("p_roundtrip", [0.0, 1.0])
def test_history_round_trip_leaves_the_previous_draws_and_the_stream_unchanged(p_roundtrip):
    post = PairPostProcess(p_roundtrip=p_roundtrip)
    for seed, previous, next_value in PREVIOUS_DRAWS:
        rng = np.random.default_rng(seed)
        draw = post.draw(rng)
        assert {k: draw[k] for k in previous} == previous
        assert rng.random() == next_value  # a fixed number of values consumed, whatever fires
        if p_roundtrip == 0:
            assert draw["roundtrip"] == 1.0 and draw["roundtrip_jpeg"] == 0
        else:
            assert 0.4 <= draw["roundtrip"] <= 0.95 and draw["roundtrip_down"] in post.roundtrip_resamples
    # the probability is honoured: about 60 % of 500 draws fire, 80 % of those with a JPEG in range
    draws = [PairPostProcess(p_roundtrip=0.6).draw(np.random.default_rng([9, i])) for i in range(500)]
    fired = [d for d in draws if d["roundtrip"] != 1.0]
    assert 0.53 < len(fired) / len(draws) < 0.67
    assert 0.7 < np.mean([d["roundtrip_jpeg"] > 0 for d in fired]) < 0.9
    assert not any(d["roundtrip_jpeg"] for d in draws if d["roundtrip"] == 1.0)
    assert all(65 <= d["roundtrip_jpeg"] <= 95 for d in fired if d["roundtrip_jpeg"])
    with pytest.raises(ValueError, match="roundtrip_scale_range"):
        PairPostProcess(roundtrip_scale_range=(0.5, 1.2))
    with pytest.raises(ValueError, match="p_roundtrip"):
        PairPostProcess(p_roundtrip=1.5)


def test_history_round_trip_p0_reproduces_the_previous_items(aligned_set):
    data = _data(aligned_set)
    post = PairPostProcess(p_resize=0.5, p_blur=0.5, p_noise=0.5, p_bits=0.5, p_jpeg=0.5)
    other = PairPostProcess(p_resize=0.5, p_blur=0.5, p_noise=0.5, p_bits=0.5, p_jpeg=0.5, p_roundtrip=0.0,
                            roundtrip_scale_range=(0.1, 0.2), roundtrip_quality_range=(10, 20))
    a, _ = aligned_training_datasets(data, PRE, 32, seed=3, crops_per_pair=2, post=post)
    b, _ = aligned_training_datasets(data, PRE, 32, seed=3, crops_per_pair=2, post=other)
    for i in range(len(a)):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["offset"] == b[i]["offset"]
    # an old draw (no round-trip keys) still applies, as before
    pix = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    old = {k: v for k, v in a[0]["draw"].items() if not k.startswith("roundtrip")}
    assert np.array_equal(PairPostProcess.apply(pix, old), PairPostProcess.apply(pix, a[0]["draw"]))


def test_history_round_trip_is_identical_for_both_members_and_changes_pixels(aligned_set):
    from medforensics.data.processing import resize_roundtrip

    data = _data(aligned_set)
    plain, _ = aligned_training_datasets(data, PRE, 32, seed=1, post=PairPostProcess(**HISTORY_ONLY))
    hist, _ = aligned_training_datasets(data, PRE, 32, seed=1, post=PairPostProcess(**HISTORY_ONLY, p_roundtrip=1.0))
    no_jpeg, _ = aligned_training_datasets(data, PRE, 32, seed=1, post=PairPostProcess(
        **HISTORY_ONLY, p_roundtrip=1.0, p_roundtrip_jpeg=0.0))
    kernels = set()
    for k in range(len(hist) // 2):
        real, fake = hist[2 * k], hist[2 * k + 1]
        assert real["draw"] == fake["draw"] and real["offset"] == fake["offset"]
        assert real["offset"] == plain[2 * k]["offset"]  # the round trip moves no crop
        d = real["draw"]
        assert d["roundtrip"] < 1.0
        kernels |= {d["roundtrip_down"], d["roundtrip_up"]}
        # it changes the pixels of both members, and differently from each other (a trace survives)
        for member in (0, 1):
            before, after = plain[2 * k + member]["image"], hist[2 * k + member]["image"]
            assert (after - before).abs().mean() > 1e-3
        assert not torch.equal(real["image"], fake["image"])
        # without its JPEG it is exactly the library's down-up round trip of the native crop
        item = no_jpeg[2 * k + 1]
        y, x = item["offset"]
        native = np.asarray(Image.open(no_jpeg.pairs[item["pair"]].fake), dtype=np.float32)[y : y + 32, x : x + 32] / 255
        expect = resize_roundtrip(native, scale=item["draw"]["roundtrip"], down=item["draw"]["roundtrip_down"],
                                  up=item["draw"]["roundtrip_up"])
        assert np.allclose(item["image"][0].numpy(), expect, atol=1e-6)
        assert not np.allclose(expect, native, atol=1e-3)
    assert len(kernels) >= 3  # the kernels are drawn, not fixed
    # one draw, both members: the same pixels through both draws give the same output
    pix = np.random.default_rng(5).random((48, 48)).astype(np.float32)
    assert np.array_equal(PairPostProcess.apply(pix, hist[0]["draw"]), PairPostProcess.apply(pix, hist[1]["draw"]))


def test_cli_history_options_are_used_and_recorded(aligned_set, tmp_path):
    from typer.testing import CliRunner

    from medforensics.cli import app
    from medforensics.detectors import load_detector

    reals, fakes, root = aligned_set
    base = ["train", "forensic_cnn", "--recipe", "aligned", "--aligned-manifest", str(fakes.path),
            "--manifest", str(reals.path), "--workdir", str(tmp_path / "work"), "--tamper-fraction", "0",
            "--holdout-family", "bilinear", "--max-test-pairs", "0", "--reencode",
            "--set", "width=8", "--set", "patch_size=32", "--set", "patch_stride=32", "--set", "epochs=1",
            "--set", "progress=false", "--set", json.dumps({"size": SIZE, "channels": 1}).join(["preprocessing=", ""])]
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "m"), "--history-p", "0.6",
                                 "--history-scale", "0.5,0.9", "--history-val", "0.67,85"])
    assert result.exit_code == 0, result.output
    det = load_detector(tmp_path / "m")
    data = det.training_summary["data"]
    post = data["post_process"]
    assert post["p_roundtrip"] == 0.6 and post["roundtrip_scale_range"] == [0.5, 0.9]
    assert post["p_resize"] == 0.3 and post["p_jpeg"] == 0.3  # the existing steps unchanged
    assert "0.67" in data["val_history"] and "JPEG q85" in data["val_history"]
    assert det.training_summary["n_val"] == 2 * 2 * N_VAL  # every validation image, plain and re-saved
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    assert "--history-p 0.6" in card and "--history-val 0.67,85" in card
    # off by default, and recorded as off
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "m0")])
    assert result.exit_code == 0, result.output
    off = load_detector(tmp_path / "m0").training_summary
    assert off["data"]["post_process"]["p_roundtrip"] == 0.0 and off["data"]["val_history"] is None
    assert off["n_val"] == 2 * N_VAL
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "m1"), "--history-scale", "0.5"])
    assert bad.exit_code == 2 and "LOW,HIGH" in bad.output
    bad = runner.invoke(app, ["train", "forensic_cnn", "--out", str(tmp_path / "m2"), "--history-p", "0.5"])
    assert bad.exit_code == 2 and "--recipe aligned" in bad.output
