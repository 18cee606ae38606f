"""Tests for medforensics.synth.tamper on synthetic phantoms (no image files)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medforensics.io.types import ImageMeta, MedImage
from medforensics.synth.tamper import TamperResult, foreground_mask, inject_lesion, remove_region, tamper

NODULE = (0.4, 0.6)  # (y, x) as fractions of the size
NODULE_R = 0.04  # radius as a fraction of the size


def phantom(size: int = 256, rgb: bool = False, nodule: bool = True, seed: int = 0) -> np.ndarray:
    """A textured body ellipse on a black background, optionally with a bright round nodule."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.35) ** 2 <= 1
    img = np.where(body, 0.35, 0.0) + body * ndimage.gaussian_filter(rng.standard_normal((size, size)), 2) * 0.04
    img += rng.standard_normal((size, size)) * 0.01 * body
    if nodule:
        d = np.hypot(yy - NODULE[0], xx - NODULE[1]) * size
        img += 0.35 * ndimage.gaussian_filter((d <= size * NODULE_R).astype(float), 1.0)
    img = np.clip(img, 0, 1).astype(np.float32)
    if rgb:
        img = np.stack([img, img * 0.8, img * 0.6], axis=2).astype(np.float32)
    return img


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a != b
    return d if d.ndim == 2 else d.any(axis=2)


def _absdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a.astype(np.float64) - b)
    return d if d.ndim == 2 else d.mean(axis=2)


OPS = {  # name -> (op, phantom has a nodule)
    "inject-seamless": (lambda x, s: inject_lesion(x, rng=s), True),
    "inject-mixed": (lambda x, s: inject_lesion(x, rng=s, method="mixed"), True),
    "inject-no-donor": (lambda x, s: inject_lesion(x, rng=s), False),
    "remove-telea": (lambda x, s: remove_region(x, rng=s), True),
    "remove-ns": (lambda x, s: remove_region(x, rng=s, method="ns"), True),
    "remove-random": (lambda x, s: remove_region(x, rng=s), False),
}


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
@pytest.mark.parametrize("size", [64, 256])
def test_shape_range_mask_locality(name: str, rgb: bool, size: int) -> None:
    op, nodule = OPS[name]
    for seed in (0, 1, 2):
        x = phantom(size, rgb, nodule=nodule, seed=seed)
        before = x.copy()
        res = op(x, seed)
        np.testing.assert_array_equal(x, before)  # input never modified
        assert isinstance(res, TamperResult)
        assert res.pixels.shape == x.shape and res.pixels.dtype == np.float32
        assert res.pixels.min() >= 0.0 and res.pixels.max() <= 1.0
        assert res.mask.shape == x.shape[:2] and res.mask.dtype == bool
        assert res.mask.any()
        changed = _changed(res.pixels, x)
        assert not (changed & ~res.mask).any(), "a pixel outside the mask changed"
        outside = ~res.mask  # bit-identical outside the mask
        np.testing.assert_array_equal(res.pixels[outside], x[outside])
        # inside: a measurable change
        assert _absdiff(res.pixels, x)[res.mask].mean() > 0.003
        assert changed[res.mask].mean() > 0.5
        assert res.kind == name.split("-")[0]
        assert 0 <= res.center[0] < size and 0 <= res.center[1] < size and res.radius > 0


@pytest.mark.parametrize("kind", ["inject", "remove"])
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_deterministic_per_seed(kind: str, rgb: bool) -> None:
    x = phantom(128, rgb)
    fn = inject_lesion if kind == "inject" else remove_region
    a, b, c = fn(x, rng=7), fn(x, rng=7), fn(x, rng=8)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.center == b.center and a.radius == b.radius
    assert not np.array_equal(a.pixels, c.pixels)
    # a seeded Generator behaves like the int seed
    d = fn(x, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.pixels, d.pixels)


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
@pytest.mark.parametrize("method", ["telea", "ns"])
def test_removal_erases_the_bright_nodule(size: int, rgb: bool, method: str) -> None:
    x = phantom(size, rgb)
    ny, nx = round(NODULE[0] * size), round(NODULE[1] * size)
    res = remove_region(x, rng=0, method=method)
    # the default target is the nodule
    assert abs(res.center[0] - ny) <= 3 and abs(res.center[1] - nx) <= 3
    yy, xx = np.ogrid[:size, :size]
    core = (yy - NODULE[0] * size) ** 2 + (xx - NODULE[1] * size) ** 2 <= (0.8 * NODULE_R * size) ** 2
    assert res.mask[core].all()
    g0 = x if x.ndim == 2 else x[..., 0]
    g1 = res.pixels if x.ndim == 2 else res.pixels[..., 0]
    body_level = float(np.median(g0[foreground_mask(x)]))
    assert g0[core].mean() > body_level + 0.25
    assert abs(float(g1[core].mean()) - body_level) < 0.05  # back to background tissue level
    assert g1[core].std() < 0.05  # no leftover structure


def test_removal_at_given_center_and_radius() -> None:
    x = phantom(128, nodule=False)
    res = remove_region(x, center=(60, 70), radius=8, rng=1)
    assert res.center == (60, 70) and res.radius == 8
    ys, xs = np.nonzero(res.mask)
    assert abs(ys.mean() - 60) < 2 and abs(xs.mean() - 70) < 2
    assert 0.6 * np.pi * 64 < res.mask.sum() < 1.6 * np.pi * 64


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_injection_copies_a_lesion(size: int, rgb: bool) -> None:
    x = phantom(size, rgb)
    f = size / 256
    for seed, center in enumerate([(170, 110), (185, 140), (150, 85)]):
        center = (round(center[0] * f), round(center[1] * f))
        res = inject_lesion(x, rng=seed, radius=15 * f, center=center)
        assert res.details["donor"] == "copy-move" and res.center == center
        dy, dx = res.details["donor_center"]
        assert abs(dy - NODULE[0] * size) <= 2 * f and abs(dx - NODULE[1] * size) <= 2 * f
        g0 = x if x.ndim == 2 else x[..., 0]
        g1 = res.pixels if x.ndim == 2 else res.pixels[..., 0]
        m = res.mask
        assert g1[m].max() > g0[m].max() + 0.2  # a bright structure appeared
        assert g1[m].std() > 2 * g0[m].std()
        assert np.hypot(res.center[0] - dy, res.center[1] - dx) > 2 * res.radius


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_injection_synthesises_without_donor(rgb: bool) -> None:
    x = phantom(256, rgb, nodule=False)
    res = inject_lesion(x, rng=3, center=(128, 100), radius=12)
    assert res.details["donor"] == "synthetic"
    assert res.center == (128, 100)
    g0 = x if x.ndim == 2 else x[..., 0]
    g1 = res.pixels if x.ndim == 2 else res.pixels[..., 0]
    assert g1[res.mask].max() > g0[res.mask].max() + 0.08
    assert g1[res.mask].std() > 2 * g0[res.mask].std()


def test_injection_from_source_image() -> None:
    x = phantom(192, nodule=False)
    src = phantom(256, rgb=True, seed=5)  # colour donor into a grey image
    res = inject_lesion(x, rng=0, source=src, radius=15)
    assert res.details["donor"] == "source"
    assert res.pixels.shape == x.shape
    assert res.pixels[res.mask].max() > x[res.mask].max() + 0.15
    np.testing.assert_array_equal(res.pixels[~res.mask], x[~res.mask])


def test_edge_center_and_full_foreground() -> None:
    rng = np.random.default_rng(0)
    x = ndimage.gaussian_filter(rng.random((96, 128)), 2).astype(np.float32)  # texture, no background
    assert foreground_mask(x).all()
    for fn in (inject_lesion, remove_region):
        res = fn(x, center=(0, 127), radius=10, rng=1)
        assert res.pixels.shape == x.shape and res.mask[0, 127]
        np.testing.assert_array_equal(res.pixels[~res.mask], x[~res.mask])


def test_foreground_mask_finds_body() -> None:
    x = phantom(128)
    fg = foreground_mask(x)
    yy, xx = np.mgrid[:128, :128] / 128
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.35) ** 2 <= 1
    assert (fg == body).mean() > 0.97
    inverted = 1.0 - x  # bright background (slide glass)
    assert (foreground_mask(inverted) == body).mean() > 0.97


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        inject_lesion(np.zeros((16, 16), np.float32), rng=0)
    with pytest.raises(ValueError):
        remove_region(np.zeros((64, 64, 4), np.float32), rng=0)
    with pytest.raises(ValueError):
        inject_lesion(phantom(64), rng=0, method="magic")


def test_default_center_is_inside_the_body() -> None:
    x = phantom(128)
    fg = foreground_mask(x)
    for seed in range(5):
        res = inject_lesion(x, rng=seed)
        assert fg[res.center]
        assert res.mask.sum() <= (fg & res.mask).sum() + 0.1 * res.mask.sum()  # mostly inside the body


@pytest.mark.parametrize("kind", ["inject", "remove"])
def test_tamper_medimage(kind: str) -> None:
    meta = ImageMeta(path="p.png", modality="ct", extra={"keep": 1})
    image = MedImage(pixels=phantom(128), meta=meta)
    out, mask = tamper(image, kind, 3)
    assert out.meta is not image.meta and out.meta.extra is not image.meta.extra
    assert "tamper" not in image.meta.extra
    info = out.meta.extra["tamper"]
    assert info["kind"] == kind and set(info) == {"kind", "center", "radius", "method"}
    assert out.meta.extra["keep"] == 1 and out.meta.modality == "ct"
    assert mask.shape == (128, 128) and mask.any()
    assert not _changed(out.pixels, image.pixels)[~mask].any()
    out2, mask2 = tamper(image, kind, 3)
    np.testing.assert_array_equal(out.pixels, out2.pixels)
    with pytest.raises(ValueError):
        tamper(image, "swap", 0)
