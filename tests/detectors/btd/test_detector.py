"""BTD detector: training on reals, determinism, calibration, persistence, patches and windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.btd import BTDDetector

TINY = dict(base_width=8, channel_mult=[1, 2], patch_size=32, stride=16, steps=60, batch_size=8, lr=2e-3,
            t_range=10, log_every=20, progress=False, preprocessing={"size": 64, "channels": 1})


def smooth(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    b = gaussian_filter(rng.random((size, size)), 3.0)
    return (0.2 + 0.6 * (b - b.min()) / (np.ptp(b) + 1e-8)).astype(np.float32)[None]


def items(rng, n, label=0):
    return [{"image": torch.from_numpy(smooth(rng)), "label": torch.tensor(float(label))} for _ in range(n)]


def with_artefact(x: np.ndarray, y0: int, x0: int, size: int = 16, seed: int = 1) -> np.ndarray:
    out = x.copy()
    out[..., y0 : y0 + size, x0 : x0 + size] = np.random.default_rng(seed).random((size, size))  # pasted noise
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train = items(rng, 12) + items(rng, 4, label=1)  # the fakes must be skipped
    val = items(rng, 20)
    test = np.stack([smooth(rng) for _ in range(4)])
    return train, val, test


@pytest.fixture(scope="module")
def trained(data):
    train, val, _ = data
    det = create_detector("btd", seed=0, target_fpr=0.1, **TINY)
    summary = det.fit(train, val)
    return det, summary


def test_trains_on_reals_only_and_reports(trained):
    det, summary = trained
    assert isinstance(det, BTDDetector) and det.supervised is False
    assert summary["n_train"] == 12 and summary["train_fakes_skipped"] == 4 and summary["n_val"] == 20
    assert summary["steps"] == 60 and summary["t_range"] == [1, 10]
    assert summary["seconds"] > 0 and summary["train_patches_per_s"] > 0 and summary["score_images_per_s"] > 0
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]


def test_altered_image_scores_higher(trained, data):
    det, _ = trained
    _, _, test = data
    altered = np.stack([with_artefact(x, 24, 24) for x in test])
    raw_real, raw_alt = det.raw_scores(test), det.raw_scores(altered)
    assert np.all(raw_alt > 2 * raw_real.max())
    s_real, s_alt = det.score(test), det.score(altered)
    assert np.all((s_real >= 0) & (s_real <= 1)) and np.all(s_alt > s_real.max())
    assert np.all(s_alt >= det.threshold)


def test_scoring_is_deterministic(trained, data):
    det, _ = trained
    x = data[2]
    assert np.array_equal(det.score(x), det.score(x))
    assert np.array_equal(det.anomaly_map(x), det.anomaly_map(x))
    # a stochastic multi-step run draws its noise from the detector's seed: repeatable too
    stoch = create_detector("btd", seed=3, stochastic=True, d=4, **{**TINY, "steps": 1})
    assert np.array_equal(stoch.raw_scores(x), stoch.raw_scores(x))


def test_threshold_hits_the_requested_fpr_on_val_reals(trained, data):
    det, _ = trained
    _, val, _ = data
    probs = det.score(np.stack([it["image"].numpy() for it in val]))
    fpr = float((probs >= det.threshold).mean())
    assert fpr <= 0.1 and fpr == pytest.approx(0.1, abs=1 / len(val))
    assert det.calibration["target_fpr"] == 0.1 and det.calibration["achieved_fpr"] == pytest.approx(fpr)
    assert det.calibration["method"] == "fpr_on_real_val"
    assert np.allclose(np.sort(probs), det.calibration["real_val_scores"], atol=1e-7)
    # τ in raw units is consistent with the monotone probability map
    raw = det.raw_scores(np.stack([it["image"].numpy() for it in val]))
    assert np.array_equal(raw >= det.raw_threshold() * (1 - 1e-9), probs >= det.threshold)


def test_save_load_reproduces_scores_maps_and_config(trained, data, tmp_path):
    det, _ = trained
    x = np.concatenate([data[2], with_artefact(data[2][:1], 10, 30)])
    det.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["detector"] == "btd" and cfg["scheduler_config"]["num_train_timesteps"] == 1000
    assert cfg["config"]["t_range"] == 10 and cfg["unet_config"]["block_out_channels"] == [8, 16]
    again = load_detector(tmp_path / "m")
    assert np.array_equal(again.score(x), det.score(x))
    assert np.array_equal(again.raw_scores(x), det.raw_scores(x))
    assert np.array_equal(again.anomaly_map(x), det.anomaly_map(x))
    assert again.threshold == det.threshold and again.map_scale == det.map_scale


def test_sliding_window_scores_maps_and_artefact_window(trained, data):
    det, _ = trained
    x = with_artefact(data[2][:1], 40, 40)  # artefact in the bottom-right quarter
    win, pos = det.window_scores(x)
    assert win.shape == (1, 9) and pos[0] == (0, 0) and pos[-1] == (32, 32)
    assert pos[int(np.argmax(win[0]))] == (32, 32)  # the window that holds the artefact
    assert det.raw_scores(x)[0] == pytest.approx(win.max())  # aggregate = max
    maps = det.anomaly_map(np.concatenate([data[2], x]))
    assert maps.shape == (5, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    heat = maps[-1]
    assert heat[40:56, 40:56].mean() > 3 * heat[:32, :32].mean()


def test_centre_patch_scoring(trained, data):
    det, _ = trained
    x = with_artefact(data[2][:2], 4, 4)  # artefact in the top-left corner
    on = det.score_patch(x, [(12, 12), (12, 12)])
    off = det.score_patch(x, (50, 50))
    assert on.shape == (2,) and np.all(on > off)
    maps = det.residual_maps(x, centers=[(12, 12), None], normalise=False)
    assert maps.shape == (2, 64, 64)
    assert np.all(maps[0, 32:, :] == 0) and np.all(maps[0, :, 32:] == 0)  # only the 32×32 patch at (0, 0)
    assert maps[1].min() > 0  # no centre → sliding windows over the whole image
    raw = det.raw_scores(x, centers=[(12, 12), None])
    assert raw[1] == pytest.approx(det.raw_scores(x[1:])[0])
    both = det.analyse(x, centers=[(12, 12), None])  # one pass: raw, probability and normalised map
    assert np.allclose(both["raw"], raw) and np.allclose(both["score"], det.probability(raw))
    assert both["map"].shape == (2, 64, 64) and both["map"].max() <= 1
    with pytest.raises(ValueError, match="outside"):
        det.score_patch(x, (70, 10))


def test_centre_region_and_d(trained, data):
    det, _ = trained
    x = with_artefact(data[2][:1], 24, 24)
    centre = BTDDetector(**{**TINY, "score_region": "center", "center_patch": 16})
    centre.load_state_dict(det.state_dict())
    full = det.raw_scores(x, centers=[(32, 32)])
    middle = centre.raw_scores(x, centers=[(32, 32)])
    assert middle[0] > full[0]  # the 16×16 centre holds the whole artefact
    assert det.raw_scores(x, d=3)[0] != pytest.approx(det.raw_scores(x, d=1)[0])


def test_reconstruct_and_ranges(trained, data):
    det, _ = trained
    x = torch.from_numpy(data[2][:2])
    x_prime = det.reconstruct(x, d=1)
    assert x_prime.shape == x.shape
    assert float((x - x_prime).abs().mean()) < 0.05
    torch.testing.assert_close(det.from_model_range(det.to_model_range(x)), x)
    rgb = x.repeat(1, 3, 1, 1)  # colour input is converted to the model's single channel
    assert np.allclose(det.score(rgb), det.score(x), atol=1e-5)


def test_config_errors():
    with pytest.raises(TypeError, match="unknown btd options"):
        create_detector("btd", bogus=1)
    with pytest.raises(ValueError, match="multiple of 2"):
        create_detector("btd", channel_mult=[1, 2], patch_size=33)
    with pytest.raises(ValueError, match="t_range"):
        create_detector("btd", t_range=0)
    det = create_detector("btd", **{**TINY, "steps": 1})
    with pytest.raises(ValueError, match="no readable real"):
        det.fit([{"image": torch.zeros(1, 64, 64), "label": torch.tensor(1.0)}])


def test_patch_size_follows_the_training_modality():
    rng = np.random.default_rng(1)
    train = [{"image": torch.from_numpy(smooth(rng, 128)), "label": torch.tensor(0.0), "modality": "mri"}
             for _ in range(2)]
    det = create_detector("btd", **{**TINY, "patch_size": None, "stride": None, "train_patch": 32, "steps": 1,
                                    "batch_size": 2})
    assert det.patch_size == 96
    summary = det.fit(train)
    assert det.config["patch_size"] == 128 and det.window == 128
    assert summary["train_patch"] == 32 and summary["patch_size"] == 128
    assert det.calibration["method"] == "fpr_on_real_train" and "warning" in det.calibration


@pytest.mark.parametrize("name, patch", [("btd-ct", 96), ("btd-mri", 128)])
def test_shipped_models_load_by_name(name, patch):
    from medforensics.detectors.registry import pretrained_dir

    det = load_detector(name)
    assert isinstance(det, BTDDetector) and det.patch_size == patch and det.preprocessing.channels == 1
    assert 0 < det.threshold < 1 and det.calibration["method"] == "fpr_on_real_val" and det.map_scale > 0
    assert "BTD measurements" in (pretrained_dir(name) / "MODEL_CARD.md").read_text()
    x = np.stack([smooth(np.random.default_rng(0), 256)])
    out = det.analyse(x)
    assert out["score"].shape == (1,) and 0 <= out["score"][0] <= 1 and out["map"].shape == (1, 256, 256)
