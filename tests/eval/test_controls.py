"""Processing controls (sharpness-only, file-history-only), the laundered view, and the ship rule of
``bench/unseen_generator_detection/run.py`` on hand-made inputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medforensics.data.processing import gaussian_blur, jpeg, resize_roundtrip
from medforensics.eval.controls import (
    file_history_components,
    file_history_score,
    jpeg_blockiness,
    resampling_periodicity,
    sharpness_score,
)

RUN = Path(__file__).resolve().parents[2] / "bench" / "unseen_generator_detection" / "run.py"


def _image(seed: int = 0, size: int = 256) -> np.ndarray:
    """A seeded grey image without processing history: smooth structure plus fine texture."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(size, size)), 6.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return np.clip(0.15 + 0.7 * smooth + rng.normal(0, 0.04, (size, size)), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def run_module():
    spec = importlib.util.spec_from_file_location("unseen_generator_detection_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sharpness_ranks_a_blurred_copy_below_its_original(seed):
    img = _image(seed)
    assert sharpness_score(gaussian_blur(img, 1.0)) < 0.7 * sharpness_score(img)
    rgb = np.stack([img] * 3, axis=2)
    assert sharpness_score(rgb) == pytest.approx(sharpness_score(img))
    assert sharpness_score(np.moveaxis(rgb, 2, 0)) == pytest.approx(sharpness_score(img))  # C×H×W


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_file_history_ranks_jpeg_and_resampled_copies_above_the_original(seed):
    img = _image(seed)
    base = file_history_score(img)
    assert file_history_score(jpeg(img, 70)) > base
    assert file_history_score(resize_roundtrip(img, scale=0.875)) > base
    # the parts move as they should: the JPEG grid, and the period-8 interpolation peak
    assert jpeg_blockiness(jpeg(img, 70)) > jpeg_blockiness(img)
    assert resampling_periodicity(resize_roundtrip(img, scale=0.875)) > resampling_periodicity(img)


def test_file_history_of_files_uses_the_jpeg_quantisation_tables(tmp_path):
    img = _image(3)
    u8 = np.rint(img * 255).astype(np.uint8)
    Image.fromarray(u8).save(tmp_path / "a.png")
    Image.fromarray(u8).save(tmp_path / "a.jpg", quality=70)
    png, jpg = file_history_components(tmp_path / "a.png"), file_history_components(tmp_path / "a.jpg")
    assert png["jpeg_quality"] is None and jpg["jpeg_quality"] == 70
    assert jpg["score"] > png["score"]
    assert file_history_score(str(tmp_path / "a.jpg")) == pytest.approx(jpg["score"])


def test_controls_reject_bad_input():
    with pytest.raises(ValueError, match="too small"):
        file_history_score(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        file_history_score(np.full((32, 32), np.nan))
    with pytest.raises(ValueError, match="pixels"):
        sharpness_score(np.zeros((2, 2, 2, 2)))


class _MeanDetector:
    """Scores an image by a fingerprint of its pixels, so identical inputs give identical scores."""

    threshold = 0.5

    def __init__(self):
        from medforensics.io.preprocess import Preprocessing

        self.preprocessing = Preprocessing(size=64, fit="center_crop", channels=1)

    def score(self, batch):
        x = batch.numpy().astype(np.float64)
        return (x.mean(axis=(1, 2, 3)) + 10 * x.std(axis=(1, 2, 3))) % 1.0


def test_laundered_view_is_deterministic_and_identical_for_both_classes(tmp_path):
    from medforensics.benchmark.protocol import LAUNDERING, VIEWS, ViewTransform, score_manifest
    from medforensics.data import Manifest
    from medforensics.data.manifest import ManifestRow

    assert "laundered" in VIEWS and LAUNDERING.scale == 0.875 and LAUNDERING.jpeg_quality == 80
    img = _image(4, size=64)
    Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(tmp_path / "x.png")
    t = ViewTransform(64, "center_crop", "laundered")
    a, b = t(img), t(img.copy())
    assert np.array_equal(a, b)
    assert np.array_equal(a, LAUNDERING(img))
    assert not np.allclose(a, img, atol=1e-3)  # the chain was applied

    rows = [ManifestRow(path="x.png", label=label, modality="ct", source="s", generator="g" if label == "fake" else "",
                        family="", patient_id=f"p{label}") for label in ("real", "fake")]
    m = Manifest.from_rows(rows, root=tmp_path)
    det = _MeanDetector()
    laundered = score_manifest(det, m, view="laundered", show_progress=False)
    again = score_manifest(det, m, view="laundered", show_progress=False)
    plain = score_manifest(det, m, view="plain", show_progress=False)
    assert list(laundered.labels) == [0, 1]
    assert laundered.scores[0] == laundered.scores[1]  # both classes through the same chain
    assert np.array_equal(laundered.scores, again.scores)
    assert laundered.scores[0] != plain.scores[0]
    with pytest.raises(ValueError, match="laundered"):
        score_manifest(det, m, view="washed", show_progress=False)


def _summary(pub: dict[str, float], inject: float, remove: float) -> dict:
    return {"published_matched_mean": dict(pub),
            "tampered_auc": {"inject": {"plain": inject}, "remove": {"plain": remove}}}


def test_ship_rule_on_hand_made_inputs(run_module):
    m = run_module
    default = _summary({"plain": 0.90, "matched": 0.80, "laundered": 0.70}, 0.85, 0.60)
    controls = {"sharpness-only": _summary({"matched": 0.60, "laundered": 0.55}, 0.5, 0.5),
                "file-history-only": _summary({"matched": 0.65, "laundered": 0.50}, 0.5, 0.5),
                "shuffled-label": _summary({"matched": 0.50, "laundered": 0.52}, 0.5, 0.5)}
    good = _summary({"plain": 0.85, "matched": 0.86, "laundered": 0.84}, 0.845, 0.60)  # tamper −0.005: allowed
    assert m.ship_decision(good, default, controls)
    assert m.ship_failures(good, default, controls) == []

    worse_published = _summary({"plain": 0.99, "matched": 0.86, "laundered": 0.69}, 0.90, 0.70)
    failed = m.ship_failures(worse_published, default, controls)
    assert not m.ship_decision(worse_published, default, controls)
    assert len(failed) == 1 and "laundered view" in failed[0]

    worse_tamper = _summary({"plain": 0.85, "matched": 0.86, "laundered": 0.84}, 0.85, 0.585)  # remove −0.015
    failed = m.ship_failures(worse_tamper, default, controls)
    assert len(failed) == 1 and "remove" in failed[0]

    below_control = _summary({"plain": 0.85, "matched": 0.81, "laundered": 0.71}, 0.85, 0.60)
    strong = {**controls, "file-history-only": _summary({"matched": 0.82, "laundered": 0.60}, 0.5, 0.5)}
    failed = m.ship_failures(below_control, default, strong)
    assert len(failed) == 1 and "file-history-only" in failed[0] and "matched" in failed[0]

    missing = {"published_matched_mean": {"matched": float("nan")}, "tampered_auc": {}}
    assert len(m.ship_failures(missing, default, {})) == 4


def test_choose_default_picks_the_best_passing_candidate(run_module):
    m = run_module
    s = {"default": _summary({"matched": 0.80, "laundered": 0.70}, 0.85, 0.60),
         "a": _summary({"matched": 0.90, "laundered": 0.80}, 0.85, 0.60),
         "b": _summary({"matched": 0.85, "laundered": 0.88}, 0.85, 0.60),
         "c": _summary({"matched": 0.99, "laundered": 0.99}, 0.50, 0.60),  # fails on injection
         "lofo-x": _summary({"matched": 0.99, "laundered": 0.99}, 0.99, 0.99),  # never ships
         "sharpness-only": _summary({"matched": 0.60, "laundered": 0.60}, 0.5, 0.5)}
    kinds = {"default": "current", "a": "candidate", "b": "candidate", "c": "candidate", "lofo-x": "lofo",
             "sharpness-only": "control"}
    assert m.choose_default(s, kinds) == "b"
    s["sharpness-only"] = _summary({"matched": 0.95, "laundered": 0.95}, 0.5, 0.5)  # a control beats them all
    assert m.choose_default(s, kinds) == "default"
