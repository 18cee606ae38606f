"""ImageDataset: shapes/dtypes, shared preprocessing, deterministic transforms, masks, failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medforensics.data import ImageDataset, Manifest, ManifestRow, collate
from medforensics.io.preprocess import Preprocessing
from medforensics.io.types import UnreadableImageError

PRE = Preprocessing(size=32, fit="center_crop", channels=3)


def _index(m: Manifest, name: str) -> int:
    return next(i for i, r in enumerate(m) if r.path.endswith(name))


def test_items_shapes_and_dtypes(tiny_manifest: Manifest):
    ds = ImageDataset(tiny_manifest, PRE, mask_column="mask")
    assert len(ds) == 16
    for name, modality, label in [("p0_0.png", "xray", 0.0), ("s0_0.png", "endoscopy", 0.0),
                                  ("x0.png", "xray", 1.0), ("y1.png", "endoscopy", 1.0)]:
        i = _index(tiny_manifest, name)
        item = ds[i]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["label"].shape == () and item["label"].dtype == torch.float32 and item["label"].item() == label
        assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.float32
        assert item["index"] == i and item["modality"] == modality
        assert item["generator"] == tiny_manifest[i].generator
    grey = ds[_index(tiny_manifest, "p0_0.png")]["image"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # grey replicated
    rgb = ds[_index(tiny_manifest, "s0_0.png")]["image"]
    assert not torch.equal(rgb[0], rgb[1])
    one = ImageDataset(tiny_manifest, Preprocessing(size=24, channels=1))
    assert one[_index(tiny_manifest, "s0_0.png")]["image"].shape == (1, 24, 24)


def test_masks(tiny_manifest: Manifest):
    ds = ImageDataset(tiny_manifest, PRE, mask_column="mask")
    assert ds[_index(tiny_manifest, "p0_0.png")]["mask"].sum() == 0  # real: nothing manipulated
    assert ds[_index(tiny_manifest, "y1.png")]["mask"].min() == 1  # whole-image fake
    m = ds[_index(tiny_manifest, "y0.png")]["mask"]  # tampered region rows 8:20, cols 10:30 of 36×36
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert 0.1 < m.mean().item() < 0.3
    assert m[14 * 32 // 36, 20 * 32 // 36] == 1 and m[30, 2] == 0
    assert ImageDataset(tiny_manifest, PRE)[_index(tiny_manifest, "y0.png")]["mask"].min() == 1  # no mask column


def test_same_preprocessing_for_both_labels(tiny_manifest: Manifest, tmp_path: Path):
    real = tiny_manifest[_index(tiny_manifest, "p1_0.png")]
    copy = tmp_path / "fake_copy.png"
    shutil.copy(real.resolve(tiny_manifest.root), copy)
    rows = [real, ManifestRow(str(copy), "fake", "xray", generator="copy")]
    ds = ImageDataset(rows, PRE, root=tiny_manifest.root)
    a, b = ds[0], ds[1]
    assert a["label"].item() == 0 and b["label"].item() == 1
    assert torch.equal(a["image"], b["image"])


def test_transform_gets_per_epoch_deterministic_rng(tiny_manifest: Manifest):
    calls = []

    def transform(pixels: np.ndarray, rng: np.random.Generator, row: ManifestRow) -> np.ndarray:
        draw = float(rng.random())
        calls.append((row.path, draw, pixels.shape))
        return np.clip(pixels * 0.5 + draw * 0.5, 0, 1)

    ds = ImageDataset(tiny_manifest, PRE, transform=transform, seed=7)
    first = ds[3]["image"]
    again = ds[3]["image"]
    assert torch.equal(first, again) and calls[0][1] == calls[1][1]
    assert calls[0][0] == tiny_manifest[3].path and calls[0][2] == (40, 48)  # native resolution
    ds.set_epoch(1)
    other = ds[3]["image"]
    assert calls[2][1] != calls[0][1] and not torch.equal(first, other)
    ds.set_epoch(0)
    assert torch.equal(ds[3]["image"], first)
    ds[4]
    assert calls[-1][1] != calls[0][1]  # other index, other draw
    plain = ImageDataset(tiny_manifest, PRE)[3]["image"]
    assert not torch.equal(plain, first)
    reseeded = ImageDataset(tiny_manifest, PRE, transform=transform, seed=8)[3]["image"]
    assert not torch.equal(reseeded, first)


def test_transforms_with_fewer_arguments(tiny_manifest: Manifest):
    base = ImageDataset(tiny_manifest, PRE)[0]["image"]
    inverted = ImageDataset(tiny_manifest, PRE, transform=lambda p: 1.0 - p)[0]["image"]
    assert torch.allclose(inverted, 1.0 - base, atol=1e-5)  # resize is linear, crop commutes

    def two(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(pixels + rng.normal(0, 0.05, pixels.shape), 0, 1)

    ds = ImageDataset(tiny_manifest, PRE, transform=two, seed=1)
    assert torch.equal(ds[0]["image"], ds[0]["image"]) and not torch.equal(ds[0]["image"], base)
    processing = pytest.importorskip("medforensics.data.processing")
    rpp = ImageDataset(tiny_manifest, PRE, transform=processing.RandomPostProcess(p_jpeg=1.0), seed=1)
    assert rpp[6]["image"].shape == (3, 32, 32) and torch.equal(rpp[6]["image"], rpp[6]["image"])


def test_unreadable_raises_and_check_reports(tiny_manifest: Manifest):
    broken = tiny_manifest.root / "real/xray/srcA/broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    rows = list(tiny_manifest.rows) + [ManifestRow("real/xray/srcA/broken.png", "real", "xray", source="srcA"),
                                       ManifestRow("real/xray/srcA/missing.png", "real", "xray", source="srcA")]
    ds = ImageDataset(tiny_manifest.with_rows(rows), PRE)
    with pytest.raises(UnreadableImageError, match="broken.png"):
        ds[16]
    with pytest.raises(UnreadableImageError, match="missing.png"):
        ds[17]
    failures = ds.check(progress=False)
    assert [Path(p).name for p, _ in failures] == ["broken.png", "missing.png"]
    assert all("png" in err for _, err in failures)
    clean = ds.drop_unreadable(failures)
    assert len(clean) == 16 and clean.check(progress=False) == []
    assert clean.preprocessing == ds.preprocessing


def test_collate_with_dataloader(tiny_manifest: Manifest):
    ds = ImageDataset(tiny_manifest, PRE, mask_column="mask")
    batch = next(iter(DataLoader(ds, batch_size=5, shuffle=False, collate_fn=collate)))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["label"].shape == (5,)
    assert batch["mask"].shape == (5, 32, 32)
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["modality"] == [r.modality for r in tiny_manifest[:5]]
    assert isinstance(batch["generator"], list)


def test_cache_avoids_redecoding(tiny_manifest: Manifest):
    from medforensics.io import load

    count = []

    def counting_load(path, **kw):
        count.append(str(path))
        return load(path, **kw)

    ds = ImageDataset(tiny_manifest, PRE, cache=2, loader=counting_load)
    ds[0], ds[0], ds[1], ds[0]
    assert len(count) == 2
    ds[2], ds[3], ds[1]  # cache of 2: index 1 was evicted
    assert len(count) == 5
    uncached = ImageDataset(tiny_manifest, PRE, loader=counting_load)
    uncached[0], uncached[0]
    assert len(count) == 7
