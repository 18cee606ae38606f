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


# ----------------------------------------------------------------------------- a detector with a bank
import contextlib  # noqa: E402

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from medforensics.detectors.base import Detector  # noqa: E402

BANK_DETECTOR = "_bench_test_bank"


class BankDetector(Detector):
    """A tiny real detector with a retrieval bank (stands in for DSKI in the few-shot protocol).

    Features: mean and std of the high-pass residual (image − 3×3 box blur). Score: a logistic
    regression on the features, averaged with the label of the nearest bank entry when the bank
    is not empty.
    """

    name = BANK_DETECTOR
    supervised = True

    def __init__(self, **config):
        pre, seed = config.pop("preprocessing", None), config.pop("seed", 0)
        super().__init__(preprocessing=pre, seed=seed, **{"steps": 50, **config})
        self.w = torch.zeros(3)
        self.bank_x, self.bank_y = torch.zeros(0, 2), torch.zeros(0)
        self.bank_gen: list[str] = []

    @staticmethod
    def _features(batch: torch.Tensor) -> torch.Tensor:
        res = batch - F.avg_pool2d(batch, 3, stride=1, padding=1, count_include_pad=False)
        return torch.stack([res.abs().mean(dim=(1, 2, 3)) * 20, res.std(dim=(1, 2, 3)) * 20], dim=1)

    def fit(self, train, val=None):
        x = self._features(torch.stack([it["image"] for it in train]))
        y = torch.tensor([float(it["label"]) for it in train])
        w = torch.zeros(3, requires_grad=True)
        opt = torch.optim.SGD([w], lr=0.5)
        for _ in range(int(self.config["steps"])):
            loss = F.binary_cross_entropy_with_logits(x @ w[:2] + w[2], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.w = w.detach()
        return {"loss": float(loss.detach())}

    def _score_arrays(self, batch):
        f = self._features(batch)
        s = torch.sigmoid(f @ self.w[:2] + self.w[2])
        if len(self.bank_y):
            nearest = torch.cdist(f, self.bank_x).argmin(dim=1)
            s = 0.5 * (s + self.bank_y[nearest])
        return s.numpy()

    def add_to_bank(self, images, labels, generator=None):
        f = self._features(self.prepare(images))
        self.bank_x = torch.cat([self.bank_x, f])
        self.bank_y = torch.cat([self.bank_y, torch.as_tensor(np.asarray(labels), dtype=torch.float32)])
        self.bank_gen += [generator or ""] * len(f)

    def remove_from_bank(self, generator):
        keep = torch.tensor([g != generator for g in self.bank_gen], dtype=torch.bool)
        self.bank_x, self.bank_y = self.bank_x[keep], self.bank_y[keep]
        self.bank_gen = [g for g in self.bank_gen if g != generator]

    def state_dict(self):
        return {"w": self.w.clone(), "bank_x": self.bank_x.clone(), "bank_y": self.bank_y.clone()}

    def load_state_dict(self, tensors):
        self.w, self.bank_x, self.bank_y = tensors["w"], tensors["bank_x"], tensors["bank_y"]
        self.bank_gen = [""] * len(self.bank_y)


class RealOnlyDetector(BankDetector):
    """An unsupervised toy detector: distance of the residual features from the reals' mean."""

    name = "_bench_test_real_only"
    supervised = False

    def fit(self, train, val=None):
        labels = {int(it["label"]) for it in train}
        if labels != {0}:
            raise AssertionError(f"an unsupervised detector was given labels {labels}")
        self.w = torch.cat([self._features(torch.stack([it["image"] for it in train])).mean(dim=0), torch.zeros(1)])
        return {"n": len(train)}

    def _score_arrays(self, batch):
        return (self._features(batch) - self.w[:2]).norm(dim=1).numpy()


@contextlib.contextmanager
def bank_detector_registered(cls: type[Detector] = BankDetector):
    """Register a toy detector (:class:`BankDetector` by default) for the duration of a block (the
    global registry is left as found); yields its registry name."""
    from medforensics.detectors import registry

    registry._ensure_builtin()
    registry.register_detector(cls)
    try:
        yield cls.name
    finally:
        registry._REGISTRY.pop(cls.name, None)


TINY_FCNN = {"width": 4, "epochs": 1, "batch_size": 8, "patches_per_image": 2, "patch_size": 16, "patch_stride": 16,
             "progress": False, "preprocessing": {"size": 32}}
