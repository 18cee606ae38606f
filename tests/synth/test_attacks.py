"""BTD attack sets: RePaint inpainting, the patient-level split and the four-set builder."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medforensics.data import Manifest, ManifestRow
from medforensics.detectors.reconstruction import make_unet2d
from medforensics.synth.attacks import (
    RepaintModel,
    btd_group_key,
    btd_real_split,
    build_attack_sets,
    lesion_like_center,
    lesion_pool,
    random_foreground_center,
    repaint_inpaint,
    repaint_region,
)

SIDE = 96


@pytest.fixture(scope="module")
def tiny_repaint() -> RepaintModel:
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    unet = make_unet2d(1, 32, base_width=4, levels=2)
    return RepaintModel(unet, DDPMScheduler(num_train_timesteps=1000), crop_size=32, num_inference_steps=10,
                        jump_length=5, jump_n_sample=2, name="tiny")


def _scan(rng: np.random.Generator) -> np.ndarray:
    """A body-like disc on black, with a few bright blobs and noise."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    img = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < 40**2, 0.35, 0.0) + rng.normal(0, 0.02, (SIDE, SIDE))
    for _ in range(3):
        cy, cx = rng.integers(28, 68, 2)
        img += 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2))
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def scan_manifest(tmp_path_factory) -> Manifest:
    """8 MRI patients × 2 slices and 12 IQ-OTH-like CT slices (no patient id, numbered names)."""
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    rows = []
    for p in range(8):
        for k in range(2):
            rel = f"mri/p{p}_{k}.png"
            (root / "mri").mkdir(exist_ok=True)
            Image.fromarray((_scan(rng) * 255).astype(np.uint8)).save(root / rel)
            rows.append(ManifestRow(rel, "real", "mri", "synth_mri", patient_id=f"P{p}"))
    for i in range(12):
        cls = "malignant" if i % 2 else "normal"
        rel = f"ct/iqoth_{cls}_{i:04d}.png"
        (root / "ct").mkdir(exist_ok=True)
        Image.fromarray((_scan(rng) * 255).astype(np.uint8)).save(root / rel)
        orig = f"{cls.title()} cases/{cls.title()} case ({i * 10 + 1}).jpg"
        rows.append(ManifestRow(rel, "real", "ct", "iq_othnccd", extra={"original_path": orig}))
    rows.append(ManifestRow("fake/x.png", "fake", "mri", "gen", generator="gen"))  # ignored: not real
    return Manifest(rows, root)


def test_repaint_keeps_known_region_and_changes_the_mask(tiny_repaint):
    rng = np.random.default_rng(0)
    image = torch.from_numpy(_scan(rng)[16:48, 16:48].copy())[None, None]
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 10:22, 10:22] = True
    out = repaint_inpaint(tiny_repaint, image, mask, seed=3)
    assert out.shape == image.shape
    known = ~mask[0]
    # at t = 0 the known part is the re-noised original with ᾱ = 1, i.e. the original itself
    assert torch.allclose(out[0, 0][known], image[0, 0][known], atol=1e-5)
    assert (out[0, 0][mask[0]] - image[0, 0][mask[0]]).abs().mean() > 0.02
    torch.testing.assert_close(repaint_inpaint(tiny_repaint, image, mask, seed=3), out, rtol=0, atol=0)
    assert not torch.equal(repaint_inpaint(tiny_repaint, image, mask, seed=4), out)


def test_repaint_region_changes_only_masked_pixels(tiny_repaint):
    img = _scan(np.random.default_rng(1))
    mask = np.zeros_like(img, dtype=bool)
    mask[40:52, 70:80] = True
    res = repaint_region(tiny_repaint, img, mask, (46, 75), seed=0)
    assert res.method == "repaint" and res.kind == "remove" and res.details["crop"] >= 32
    np.testing.assert_array_equal(res.pixels[~mask], img[~mask])
    assert np.abs(res.pixels[mask] - img[mask]).mean() > 0.02
    with pytest.raises(ValueError, match="empty mask"):
        repaint_region(tiny_repaint, img, np.zeros_like(mask), (46, 75))


def test_group_key_blocks_numbered_series_and_pools():
    a = ManifestRow("a.png", "real", "ct", "iq", extra={"original_path": "Malignant cases/Malignant case (3).jpg"})
    b = ManifestRow("b.png", "real", "ct", "iq", extra={"original_path": "Malignant cases/Malignant case (17).jpg"})
    c = ManifestRow("c.png", "real", "ct", "iq", extra={"original_path": "Malignant cases/Malignant case (23).jpg"})
    assert btd_group_key(a) == btd_group_key(b) != btd_group_key(c)
    assert btd_group_key(ManifestRow("d.png", "real", "mri", "s", patient_id="P1")) == "patient:s:P1"
    assert lesion_pool(ManifestRow("x/iqoth_malignant_0001.png", "real", "ct", "iq")) == "malign"
    assert lesion_pool(ManifestRow("x/iqoth_bengin_0001.png", "real", "ct", "iq")) == "benign"
    pools = {lesion_pool(ManifestRow(f"m{i}.png", "real", "mri", "s", patient_id=f"P{i}")) for i in range(20)}
    assert pools == {"malign", "benign"}


def test_centres_lie_inside_the_body():
    img = _scan(np.random.default_rng(2))
    rng = np.random.default_rng(0)
    (cy, cx), radius, kind = lesion_like_center(img, rng)
    assert kind == "blob" and radius > 0 and (cy - 48) ** 2 + (cx - 48) ** 2 < 40**2
    y, x = random_foreground_center(img, rng)
    assert (y - 48) ** 2 + (x - 48) ** 2 < 40**2


def test_builder_makes_four_balanced_patient_disjoint_sets(scan_manifest, tiny_repaint, tmp_path):
    split = btd_real_split(scan_manifest, test_fraction=0.5, val_fraction=0.0, seed=0)
    assert all(r.label == "real" for r in split) and {r.split for r in split} == {"train", "test"}
    res = build_attack_sets(split, tmp_path / "sets", image_size=SIDE, repaint=tiny_repaint, lesion_radii=(4,),
                            show_progress=False)
    man = Manifest.read(tmp_path / "sets" / "manifest.csv")
    assert len(man) == len(res.manifest) and not res.errors
    train_groups = {btd_group_key(r) for r in split if r.split == "train"}
    sides: dict[tuple[str, str], set[str]] = defaultdict(set)
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for r in man:
        assert r.split == "test" and btd_group_key(r) not in train_groups  # patient-disjoint from training
        sides[(r.modality, r.extra["attack_set"])].add(btd_group_key(r))
        counts[(r.modality, r.extra["attack_set"], r.extra["attack"])] += 1
        assert 0 <= int(r.extra["center_y"]) < SIDE and 0 <= int(r.extra["center_x"]) < SIDE
        if r.label == "fake":
            assert r.family == "tamper" and r.generator == r.extra["attack"]
            mask = np.asarray(Image.open(Path(man.root) / r.extra["mask"])) > 0
            assert mask[int(r.extra["center_y"]), int(r.extra["center_x"])] and mask.mean() < 0.3
    for mod in ("ct", "mri"):
        assert {s for m, s in sides if m == mod} == {"true_malign", "fake_malign", "true_benign", "fake_benign"}
        assert counts[(mod, "true_malign", "none")] == counts[(mod, "fake_malign", "inject")] > 0
        assert counts[(mod, "true_benign", "none")] == counts[(mod, "fake_benign", "remove")] > 0
        assert counts[(mod, "fake_benign", "repaint")] == counts[(mod, "fake_benign", "remove")]
        assert counts[(mod, "fake_malign", "inject-r4")] == counts[(mod, "fake_malign", "inject")]
        # no patient on both sides of one scenario
        assert not sides[(mod, "true_malign")] & sides[(mod, "fake_malign")]
        assert not sides[(mod, "true_benign")] & sides[(mod, "fake_benign")]
    # CT pools follow the IQ-OTH case class
    for r in man.filter(modality="ct"):
        assert ("malignant" in Path(r.extra["original_path"]).name) == (r.extra["pool"] == "malign")
    with pytest.raises(FileExistsError):
        build_attack_sets(split, tmp_path / "sets", image_size=SIDE, show_progress=False)


def test_builder_is_deterministic(scan_manifest, tmp_path):
    split = btd_real_split(scan_manifest, test_fraction=0.5, val_fraction=0.0, seed=0)
    runs = [build_attack_sets(split, tmp_path / f"run{i}", image_size=SIDE, max_per_set=2, show_progress=False)
            for i in range(2)]
    a, b = ([(r.path, r.extra["center_y"], r.extra["center_x"]) for r in run.manifest] for run in runs)
    assert a == b
    for r in runs[0].manifest.filter(label="fake"):
        assert (tmp_path / "run0" / r.path).read_bytes() == (tmp_path / "run1" / r.path).read_bytes()
