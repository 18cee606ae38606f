"""Fixtures shared by the whole test suite.

- ``shared_data``: the project's shared data folder (``$MEDFORENSICS_SHARED_DATA`` or
  ``<repo>/../shared/data``); tests using it are skipped where it is absent, except in CI
  (``CI=true``), where its absence is a failure.
- ``tiny_manifest``: a handful of small PNGs (real/fake × xray/endoscopy, several patients)
  written to ``tmp_path`` with a ``manifest.csv``; returns the :class:`Manifest` (its ``.path``
  is the CSV file, ``.root`` the folder).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_COLUMNS = ["path", "label", "modality", "source", "generator", "family", "patient_id", "split", "original_path", "mask", "notes"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared data folder (holding ``manifest.csv``)."""
    from medforensics.data.shared import shared_data_dir

    try:
        return shared_data_dir()
    except FileNotFoundError as exc:
        if _in_ci():
            pytest.fail(f"shared data is required in CI: {exc}")
        pytest.skip(f"shared data not available: {exc}")


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_tiny_dataset(folder: Path, seed: int = 0) -> Path:
    """Write 16 small PNGs and ``manifest.csv`` into ``folder``; return the manifest path.

    real/xray/srcA: 3 patients × 2 grey 40×48 images; real/endoscopy/srcB: 2 patients × 2 RGB
    36×36 images; fake/xray/genX (diffusion): 4 grey 32×32 images, two of them crops of one
    figure; fake/endoscopy/genY (gan): 2 RGB 36×36 images, one tampered with a mask PNG.
    """
    rng = np.random.default_rng(seed)
    records: list[dict[str, str]] = []

    def add(rel: str, pixels: np.ndarray, label: str, modality: str, source: str, **kw: str) -> None:
        _save(folder / rel, pixels)
        gen = source if label == "fake" else ""
        records.append({"path": rel, "label": label, "modality": modality, "source": source, "generator": gen,
                        "family": kw.get("family", ""), "patient_id": kw.get("patient_id", "NA"), "split": "",
                        "original_path": kw.get("original_path", ""), "mask": kw.get("mask", ""),
                        "notes": kw.get("notes", "")})

    for p in range(3):
        for k in range(2):
            add(f"real/xray/srcA/p{p}_{k}.png", rng.integers(0, 256, (40, 48), dtype=np.uint8), "real", "xray", "srcA",
                patient_id=f"P{p}")
    for p in range(2):
        for k in range(2):
            add(f"real/endoscopy/srcB/s{p}_{k}.png", rng.integers(0, 256, (36, 36, 3), dtype=np.uint8), "real",
                "endoscopy", "srcB", patient_id=f"S{p}", notes="colour, with a comma")
    for k in range(4):
        add(f"fake/xray/genX/x{k}.png", rng.integers(0, 256, (32, 32), dtype=np.uint8), "fake", "xray", "genX",
            family="diffusion", original_path="fig1.png#crop(x=0)" if k < 2 else f"sample{k}.png")
    mask = np.zeros((36, 36), np.uint8)
    mask[8:20, 10:30] = 255
    _save(folder / "fake/endoscopy/genY/masks/y0.png", mask)
    add("fake/endoscopy/genY/y0.png", rng.integers(0, 256, (36, 36, 3), dtype=np.uint8), "fake", "endoscopy", "genY",
        family="gan", mask="fake/endoscopy/genY/masks/y0.png")
    add("fake/endoscopy/genY/y1.png", rng.integers(0, 256, (36, 36, 3), dtype=np.uint8), "fake", "endoscopy", "genY",
        family="gan")

    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=TINY_COLUMNS)
        writer.writeheader()
        writer.writerows(records)
    return manifest


@pytest.fixture
def tiny_manifest(tmp_path: Path):
    """A small real/fake, two-modality :class:`~medforensics.data.Manifest` on disk."""
    from medforensics.data import Manifest

    return Manifest.read(write_tiny_dataset(tmp_path / "tiny"))
