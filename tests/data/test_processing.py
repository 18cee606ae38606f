"""Tests for medforensics.data.processing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medforensics.data.processing import (
    ROBUSTNESS_PERTURBATIONS,
    History,
    MatchedProcessing,
    RandomPostProcess,
    estimate_jpeg_quality,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    quantise,
    resize,
    resize_roundtrip,
)


def image(rgb: bool = False, size: tuple[int, int] = (96, 128), seed: int = 0) -> np.ndarray:
    """Smooth structure + fine texture, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    base = 0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)
    base = base + 0.08 * ndimage.gaussian_filter(rng.standard_normal(size), 0.7)
    img = np.clip(base, 0, 1)
    if rgb:
        img = np.stack([img, np.clip(img * 0.8 + 0.1, 0, 1), np.clip(1 - img, 0, 1)], axis=2)
    return img.astype(np.float32)


def hf_energy(x: np.ndarray) -> float:
    g = x if x.ndim == 2 else x.mean(axis=2)
    return float(np.mean(ndimage.laplace(g.astype(np.float64)) ** 2))


def check_out(out: np.ndarray, x: np.ndarray) -> None:
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_jpeg(rgb: bool) -> None:
    x = image(rgb)
    before = x.copy()
    errs = []
    for q in (95, 75, 30):
        out = jpeg(x, q)
        check_out(out, x)
        errs.append(float(np.abs(out - x).mean()))
    np.testing.assert_array_equal(x, before)
    assert errs[0] > 0.0005
    assert errs[0] < errs[1] < errs[2]
    np.testing.assert_array_equal(jpeg(x, 75), jpeg(x, 75))
    with pytest.raises(ValueError):
        jpeg(x, 0)


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_resize_roundtrip(rgb: bool) -> None:
    x = image(rgb)
    ident = resize_roundtrip(x, scale=1.0)
    check_out(ident, x)
    assert np.abs(ident - x).max() < 1e-6
    half = resize_roundtrip(x, scale=0.5)
    check_out(half, x)
    assert hf_energy(half) < 0.5 * hf_energy(x)
    assert np.abs(half - x).mean() > 0.005
    # size= is equivalent to the matching scale=
    np.testing.assert_array_equal(resize_roundtrip(x, size=(48, 64)), half)
    for down in ("bicubic", "bilinear", "area", "nearest"):
        for up in ("bicubic", "bilinear", "nearest"):
            check_out(resize_roundtrip(x, scale=0.75, down=down, up=up), x)
    with pytest.raises(ValueError):
        resize_roundtrip(x)
    with pytest.raises(ValueError):
        resize_roundtrip(x, scale=0.5, down="magic")


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_resize(rgb: bool) -> None:
    x = image(rgb)
    out = resize(x, (50, 70))
    assert out.shape[:2] == (50, 70) and out.ndim == x.ndim and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert abs(float(out.mean()) - float(x.mean())) < 0.01
    assert resize(x, 40).shape[:2] == (40, 40)
    # float precision is kept (no 8-bit step)
    assert len(np.unique(resize(x * 0.01, (50, 70)))) > 256


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_blur_noise_quantise(rgb: bool) -> None:
    x = image(rgb)
    b = gaussian_blur(x, 1.0)
    check_out(b, x)
    assert hf_energy(b) < 0.5 * hf_energy(x)
    assert hf_energy(gaussian_blur(x, 2.0)) < hf_energy(b)
    np.testing.assert_array_equal(gaussian_blur(x, 0), x)
    if rgb:  # per channel: no mixing across channels
        np.testing.assert_allclose(b[..., 2], gaussian_blur(x[..., 2], 1.0), atol=1e-6)

    n1 = gaussian_noise(x, 0.01, np.random.default_rng(1))
    check_out(n1, x)
    np.testing.assert_array_equal(n1, gaussian_noise(x, 0.01, np.random.default_rng(1)))
    assert not np.array_equal(n1, gaussian_noise(x, 0.01, np.random.default_rng(2)))
    assert 0.007 < float((n1 - x).std()) < 0.013

    q8 = quantise(x, 8)
    check_out(q8, x)
    assert np.abs(q8 - x).max() <= 0.5 / 255 + 1e-6
    assert np.allclose(q8 * 255, np.round(q8 * 255), atol=1e-3)
    assert len(np.unique(q8)) <= 256
    assert np.abs(quantise(x, 16) - x).max() < np.abs(q8 - x).max()


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_history_apply_is_composition(rgb: bool) -> None:
    x = image(rgb, size=(120, 100))
    h = History(original_size=(60, 50), jpeg_quality=80, resample="bilinear")
    expected = resize(jpeg(resize(x, (60, 50), "bilinear"), 80), (120, 100), "bilinear")
    out = h.apply(x)
    check_out(out, x)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(History(jpeg_quality=80).apply(x), jpeg(x, 80))
    np.testing.assert_array_equal(History().apply(x), x)
    np.testing.assert_array_equal(History(original_size=(60, 50)).apply(x), resize_roundtrip(x, size=(60, 50)))
    d = json.loads(json.dumps(h.to_dict()))
    assert History.from_dict(d) == h
    assert History.from_dict(History().to_dict()) == History()


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_estimate_jpeg_quality(tmp_path: Path, quality: int, rgb: bool) -> None:
    x = image(rgb)
    p = tmp_path / f"q{quality}.jpg"
    Image.fromarray(np.rint(x * 255).astype(np.uint8)).save(p, format="JPEG", quality=quality)
    est = estimate_jpeg_quality(p)
    assert est is not None and abs(est - quality) <= 2
    with open(p, "rb") as fh:
        assert estimate_jpeg_quality(fh) == est


def test_estimate_jpeg_quality_other_qualities_and_non_jpeg(tmp_path: Path) -> None:
    x = image()
    for q in (10, 30, 60, 85, 100):
        p = tmp_path / f"q{q}.jpg"
        Image.fromarray(np.rint(x * 255).astype(np.uint8)).save(p, format="JPEG", quality=q)
        assert abs(estimate_jpeg_quality(p) - q) <= 2
    png = tmp_path / "a.png"
    Image.fromarray(np.rint(x * 255).astype(np.uint8)).save(png)
    assert estimate_jpeg_quality(png) is None
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an image at all")
    assert estimate_jpeg_quality(junk) is None


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_random_postprocess(rgb: bool) -> None:
    x = image(rgb)
    before = x.copy()
    pp = RandomPostProcess()
    a = [pp(x, np.random.default_rng(s)) for s in range(12)]
    b = [pp(x, np.random.default_rng(s)) for s in range(12)]
    for u, v in zip(a, b):
        check_out(u, x)
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(x, before)
    # different seeds give different outputs; some pass through untouched, most do not
    assert len({u.tobytes() for u in a}) >= 10
    assert sum(not np.array_equal(u, x) for u in a) >= 8
    # probabilities are honoured
    never = RandomPostProcess(p_resize=0, p_jpeg=0, p_blur=0, p_noise=0)
    np.testing.assert_array_equal(never(x, np.random.default_rng(0)), x)
    always_jpeg = RandomPostProcess(p_resize=0, p_jpeg=1, p_blur=0, p_noise=0, quality_range=(70, 70))
    np.testing.assert_array_equal(always_jpeg(x, np.random.default_rng(0)), jpeg(x, 70))
    cfg = json.loads(json.dumps(pp.to_dict()))
    assert RandomPostProcess.from_dict(cfg) == pp
    custom = RandomPostProcess(p_blur=0.9, quality_range=(80, 90), down_choices=("nearest",))
    assert RandomPostProcess.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_matched_processing(rgb: bool) -> None:
    x = image(rgb)
    mp = MatchedProcessing()
    out = mp(x)
    check_out(out, x)
    np.testing.assert_array_equal(out, mp(x))
    np.testing.assert_array_equal(out, jpeg(resize_roundtrip(x, scale=0.5), 85))
    assert "0.5" in mp.describe() and "85" in mp.describe()
    assert MatchedProcessing.from_dict(json.loads(json.dumps(mp.to_dict()))) == mp
    sized = MatchedProcessing(size=(40, 40), jpeg_quality=None)
    np.testing.assert_array_equal(sized(x), resize_roundtrip(x, size=(40, 40)))
    assert MatchedProcessing.from_dict(sized.to_dict()) == sized
    assert MatchedProcessing(scale=None, jpeg_quality=None).describe() == "identity"
    np.testing.assert_array_equal(MatchedProcessing(scale=None, jpeg_quality=None)(x), x)


EXPECTED = {"jpeg95", "jpeg75", "jpeg50", "jpeg30", "blur0.5", "blur1", "blur2",
            "resize0.5", "resize0.75", "noise0.01", "noise0.03", "quant8"}  # fmt: skip


def test_perturbation_names() -> None:
    assert set(ROBUSTNESS_PERTURBATIONS) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_perturbations(name: str, rgb: bool) -> None:
    x = image(rgb)
    before = x.copy()
    f = ROBUSTNESS_PERTURBATIONS[name]
    out = f(x)
    check_out(out, x)
    np.testing.assert_array_equal(x, before)
    assert not np.array_equal(out, x)
    np.testing.assert_array_equal(out, f(x))  # deterministic, noise included
    if name.startswith("noise"):
        sigma = float(name[len("noise") :])
        assert 0.7 * sigma < float((out - x).std()) < 1.3 * sigma
        other = f(x, np.random.default_rng(123))
        assert not np.array_equal(out, other)
        np.testing.assert_array_equal(other, f(x, np.random.default_rng(123)))
        assert not np.array_equal(f(image(rgb, seed=1)) - image(rgb, seed=1), out - x)


def test_perturbation_strength_ordering() -> None:
    x = image()
    err = {k: float(np.abs(f(x) - x).mean()) for k, f in ROBUSTNESS_PERTURBATIONS.items()}
    assert err["jpeg95"] < err["jpeg75"] < err["jpeg50"] < err["jpeg30"]
    assert err["blur0.5"] < err["blur1"] < err["blur2"]
    assert err["noise0.01"] < err["noise0.03"]
    assert err["resize0.75"] < err["resize0.5"]
