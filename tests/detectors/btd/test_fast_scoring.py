"""BTD's scoring fast path: precomputed reverse-step terms, all windows of a batch through ε_θ
together, one pass for score + map, and an inference runtime for ε_θ — scores identical to the
original implementation (``back_in_time`` per chunk of windows)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.btd.model import back_in_time, back_in_time_steps, predict_noise, reverse_steps, to_model_range
from medforensics.detectors.btd.patches import extract_windows, pad_to_min
from medforensics.detectors.runtime import onnxruntime_available

TINY = dict(base_width=8, channel_mult=[1, 2], patch_size=32, stride=16, progress=False,
            preprocessing={"size": 64, "channels": 1})


def _original_residuals(det, crops, d):
    """The implementation before the fast path (kept here as the reference)."""
    gen = det._generator()
    out = []
    for chunk in crops.split(max(1, int(det.config["window_batch"]))):
        x0 = to_model_range(chunk)
        x_prime = back_in_time(det.unet, det.scheduler, x0, d, stochastic=det.config["stochastic"], generator=gen)
        out.append((((x0 - x_prime) * 0.5) ** 2).mean(1))
    return torch.cat(out)


def _images(n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(n, 1, size // 8, size // 8, generator=g), size=(size, size),
                                           mode="bilinear", align_corners=False)
    return (0.8 * base + 0.2 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("d,stochastic", [(1, False), (3, False), (3, True)])
def test_fast_residuals_are_bit_identical_to_back_in_time(d, stochastic):
    det = create_detector("btd", **TINY, d=d, stochastic=stochastic, window_batch=5)
    x = _images(3)
    crops, _ = extract_windows(pad_to_min(x, det.window), det.window, det.stride)
    with torch.no_grad():
        new = det._residuals(crops, d)
        old = _original_residuals(det, crops, d)
    assert new.shape == (len(crops), 32, 32)
    torch.testing.assert_close(new, old, rtol=0, atol=0)


def test_reverse_steps_match_the_scheduler_terms():
    det = create_detector("btd", **TINY)
    steps = reverse_steps(det.scheduler, 3)
    assert [s.t for s in steps] == [3, 2, 1] and steps[-1].sigma == 0.0 and steps[0].sigma > 0
    x = to_model_range(_images(2, 32))
    with torch.no_grad():
        a = back_in_time_steps(lambda v, t: predict_noise(det.unet, v, t), steps, x)
        b = back_in_time(det.unet, det.scheduler, x, 3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_score_with_maps_is_one_pass_and_equals_score_and_anomaly_map():
    det = create_detector("btd", **TINY)
    x = _images(3)
    calls = {"n": 0}
    orig = det._residuals

    def counted(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)

    det._residuals = counted
    scores, maps = det.score_with_maps(x)
    assert calls["n"] == 1
    np.testing.assert_array_equal(scores, det.score(x))
    np.testing.assert_array_equal(maps, det.anomaly_map(x))
    assert maps.shape == (3, 64, 64)


@pytest.fixture(scope="module")
def btd_ct_images():
    from medforensics.io import load
    from medforensics.io.samples import pydicom_test_files

    folder = pydicom_test_files()
    if folder is None:
        pytest.skip("pydicom's test files are not installed")
    det = load_detector("btd-ct")
    arrays = [det.preprocessing(load(folder / name)) for name in ("CT_small.dcm", "MR_small.dcm")]
    return det, torch.from_numpy(np.stack(arrays))


def test_shipped_btd_ct_scores_unchanged(btd_ct_images):
    det, x = btd_ct_images
    crops, _ = extract_windows(pad_to_min(x, det.window), det.window, det.stride)
    with torch.no_grad():
        torch.testing.assert_close(det._residuals(crops), _original_residuals(det, crops, 1), rtol=0, atol=0)


needs_ort = pytest.mark.skipif(
    not onnxruntime_available() and os.environ.get("CI", "").lower() != "true",
    reason="onnx/onnxruntime not installed (pip install 'medforensics[runtime]'); required under CI=true",
)


@needs_ort
def test_onnx_runtime_for_the_noise_predictor_keeps_scores(tmp_path):
    from medforensics.detectors.btd.detector import RUNTIME_TOLERANCE_EPS
    from medforensics.detectors.runtime import build_runner, parity, save_runtime, select_runtime

    det = create_detector("btd", **TINY)
    det.calibrate([_images(1, seed=s)[0] for s in range(6)])
    det.save(tmp_path / "m")
    x = _images(3, seed=7)
    eager_scores, eager_maps = det.score_with_maps(x)
    spec = det.runtime_spec(x)
    built = build_runner("onnx_fp32", spec["module"], spec["example"])
    with torch.no_grad():
        p = parity(spec["module"](spec["example"]), built.runner(spec["example"]))
    assert p["max_abs_logit"] <= RUNTIME_TOLERANCE_EPS
    sel = select_runtime(spec["module"], spec["example"], None, spec["tolerance"], ("onnx_fp32",), repeats=1)
    sel.name, sel.runner, sel.onnx = "onnx_fp32", built.runner, built.onnx
    record = save_runtime(tmp_path / "m", sel, spec["digest"], spec["extra"])
    assert record["step"] == 1
    text = (tmp_path / "m" / "config.json").read_text()
    assert "Infinity" not in text and record["tolerance"]["prob"] is None  # strict JSON: no limit = null
    loaded = load_detector(tmp_path / "m")
    scores, maps = loaded.score_with_maps(x)
    assert loaded._runtime_runner is not None and loaded._runtime_runner.name == "onnx_fp32"
    np.testing.assert_allclose(scores, eager_scores, atol=1e-5)
    np.testing.assert_allclose(maps, eager_maps, atol=1e-4)
