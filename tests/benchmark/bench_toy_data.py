"""Toy inputs for the benchmark tests: real PNGs of two modalities and "generator" sample folders.

Reals: smooth textures with fine noise, 48×48, xray (grey, 4 patients × 3 images) and endoscopy
(RGB, 4 patients × 3 images). Fake "generators" (stand-ins for the factory until it is wired in):
blurred, noised 24×24 versions of textures — diffusion/gan/vae-named folders per modality, each
with a ``manifest.csv``, as ``sample_to_folder`` writes them. Published fakes: 40×40 JPEG files.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

COLS = ["path", "label", "modality", "source", "generator", "family", "patient_id", "split", "notes"]


def texture(rng: np.random.Generator, size: int, colour: bool, sigma: float = 2.0, noise: float = 0.04) -> np.ndarray:
    shape = (size, size, 3) if colour else (size, size)
    base = gaussian_filter(rng.random(shape), (sigma, sigma, 0) if colour else sigma)
    base = (base - base.min()) / (np.ptp(base) + 1e-8)
    return np.clip(0.2 + 0.6 * base + rng.normal(0, noise, shape), 0, 1)


def _png(path: Path, pixels: np.ndarray, fmt: str = "PNG", **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(pixels * 255).astype(np.uint8)).save(path, format=fmt, **kw)


def _write_manifest(folder: Path, records: list[dict]) -> Path:
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLS)
        w.writeheader()
        for r in records:
            w.writerow({c: r.get(c, "") for c in COLS})
    return path


def write_reals(folder: Path, seed: int = 0, patients: int = 4, per_patient: int = 3, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    recs = []
    for mod, colour, src in (("xray", False, "cxr_src"), ("endoscopy", True, "kvasir_src")):
        for p in range(patients):
            for k in range(per_patient):
                rel = f"real/{mod}/{src}/p{p}_{k}.png"
                _png(folder / rel, texture(rng, size, colour))
                recs.append({"path": rel, "label": "real", "modality": mod, "source": src, "patient_id": f"{mod}{p}"})
    return _write_manifest(folder, recs)


GENERATORS = (("ddpm", "diffusion", 1.0), ("dcgan", "gan", 0.5), ("vae", "vae", 2.0))


def write_generator_folders(folder: Path, seed: int = 1, n: int = 8, native: int = 24) -> list[Path]:
    """One sample folder (PNGs + manifest.csv) per (generator, modality)."""
    rng = np.random.default_rng(seed)
    out = []
    for name, family, sigma in GENERATORS:
        for mod, colour in (("xray", False), ("endoscopy", True)):
            gen = f"{name}-{mod}"
            gdir = folder / gen
            recs = []
            for i in range(n):
                rel = f"{gen}_{i:03d}.png"
                _png(gdir / rel, texture(rng, native, colour, sigma=sigma, noise=0.0))
                recs.append({"path": rel, "label": "fake", "modality": mod, "source": gen, "generator": gen,
                             "family": family})
            _write_manifest(gdir, recs)
            out.append(gdir)
    return out


def write_published(folder: Path, seed: int = 2, n: int = 4) -> Path:
    """Published-generator fakes: JPEG files at 40×40 (a different file history)."""
    rng = np.random.default_rng(seed)
    recs = []
    for mod, colour, gen in (("xray", False, "PubGAN_CXR"), ("endoscopy", True, "Polyp-DDPM")):
        for i in range(n):
            rel = f"fake/{mod}/{gen}/s{i}.jpg"
            _png(folder / rel, texture(rng, 40, colour, sigma=1.5), fmt="JPEG", quality=80)
            recs.append({"path": rel, "label": "fake", "modality": mod, "source": gen, "generator": gen,
                         "family": "gan" if "GAN" in gen else "diffusion", "notes": "JPEG sample"})
    return _write_manifest(folder, recs)
