"""Training recipes: data preparation that keeps a supervised detector off the forensic shortcuts.

The shared fakes differ from the shared reals by *processing history* (odd-sized figure crops,
JPEG, upscaled thumbnails) and sometimes by *anatomy*. The default recipe therefore
1. splits by patient (crops of one figure stay together) before anything else;
2. drops anatomy-mismatched fakes from training (they are still evaluated, reported apart);
3. adds tampered copies of real images (same file history as their source, masks for patch labels);
4. gives native-size images (reals and tampered copies) the processing history of a random
   training fake — downscale to that fake's original size, JPEG at a similar quality when the
   fake's provenance says it was JPEG-compressed, upscale back — with probability ``p_history``;
5. applies the same randomised post-processing (resize round trips, JPEG, blur, noise) to every
   training image, real or fake.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import ImageDataset, Manifest, ManifestRow, anatomy_matched, patient_split, train_val_split
from ..data.manifest import resolve_path
from ..data.processing import History, RandomPostProcess
from ..io.preprocess import Preprocessing


@dataclass
class HistoryMatching:
    """Label-agnostic training transform (see module docstring, steps 4–5)."""

    histories: list[History]
    native_size: int = 256
    p_history: float = 0.5
    post: RandomPostProcess | None = field(default_factory=RandomPostProcess)

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator, row: ManifestRow | None = None) -> np.ndarray:
        h, w = pixels.shape[:2]
        if self.histories and min(h, w) >= self.native_size - 32 and rng.random() < self.p_history:
            pixels = self.histories[int(rng.integers(len(self.histories)))].apply(pixels)
        if self.post is not None:
            pixels = self.post(pixels, rng)
        return pixels


def fake_histories(manifest: Manifest, seed: int = 0) -> list[History]:
    """One History per fake row: its stored size, and a JPEG quality when its notes say JPEG."""
    rng = np.random.default_rng(seed)
    out = []
    for row in manifest:
        if row.label != "fake" or row.family == "tamper":
            continue
        try:
            with Image.open(row.resolve(manifest.root)) as im:
                w, h = im.size
        except OSError:
            continue
        jpeg = "jpeg" in row.extra.get("notes", "").lower() or "jpg" in row.extra.get("notes", "").lower()
        out.append(History(original_size=(h, w), jpeg_quality=int(rng.integers(75, 96)) if jpeg else None))
    return out


@dataclass
class PreparedData:
    train: Manifest
    val: Manifest
    test: Manifest
    summary: dict[str, Any]


def prepare_supervised_data(
    manifest: Manifest,
    workdir: str | Path,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    tamper_fraction: float = 0.5,
    drop_anatomy_mismatch: bool = True,
) -> PreparedData:
    """Split by patient, add tampered copies per split, drop anatomy-mismatched fakes from train/val."""
    from ..synth.tamper_set import make_tampered_set

    split = patient_split(manifest, test_fraction=test_fraction, seed=seed)
    train_all = train_val_split(split.subset("train"), val_fraction=val_fraction, seed=seed)
    parts = {"train": train_all.subset("train"), "val": train_all.subset("val"), "test": split.subset("test")}
    dropped = 0
    for name in ("train", "val"):
        keep = [r for r in parts[name] if r.label == "real" or anatomy_matched(r, manifest)]
        dropped += len(parts[name]) - len(keep)
        parts[name] = Manifest.from_rows(keep, root=parts[name].root)
    if tamper_fraction > 0:
        for name in parts:
            tampered = make_tampered_set(parts[name], Path(workdir) / "tampered" / name, fraction=tamper_fraction, seed=seed)
            parts[name] = Manifest.concat([parts[name], tampered])
    summary = {
        name: {
            "real": sum(r.label == "real" for r in m),
            "fake_published": sum(r.label == "fake" and r.family != "tamper" for r in m),
            "fake_tampered": sum(r.family == "tamper" for r in m),
        }
        for name, m in parts.items()
    }
    summary["anatomy_mismatched_fakes_dropped_from_train_val"] = dropped
    summary["seed"] = seed
    return PreparedData(parts["train"], parts["val"], parts["test"], summary)


def add_training_rows(data: PreparedData, extra: Manifest, *, source: str = "extra") -> PreparedData:
    """Add ``extra``'s training rows (its ``split == "train"`` rows, or all when it has no split) to ``data.train``.

    Typical use: a benchmark's factory fakes and their history-matched reals (``bench build``).
    Rows derived from a validation or test image of ``data`` (their ``input_path``) are dropped, so
    nothing held out leaks into training; validation and test are left as they are.
    """

    def key(path: str | Path) -> str:
        return os.path.realpath(str(path))

    held_out = {key(r.resolve(m.root)) for m in (data.val, data.test) for r in m}
    rows = [r for r in extra if r.split in ("", "train")]
    keep = [r for r in rows if not (r.get("input_path") and key(resolve_path(r.get("input_path"), extra.root)) in held_out)]
    added = {
        "manifest": source,
        "real": sum(r.label == "real" for r in keep),
        "fake": sum(r.label == "fake" for r in keep),
        "dropped_derived_from_val_test": len(rows) - len(keep),
        "skipped_not_train_split": len(extra) - len(rows),
    }
    summary = {**data.summary, "extra_train": [*data.summary.get("extra_train", []), added]}
    if not keep:
        return PreparedData(data.train, data.val, data.test, summary)
    return PreparedData(Manifest.concat([data.train, Manifest.from_rows(keep, root=extra.root)]), data.val, data.test,
                        summary)


def training_datasets(
    data: PreparedData, preprocessing: Preprocessing, *, seed: int = 0, p_history: float = 0.5, real_only: bool = False
) -> tuple[ImageDataset, ImageDataset]:
    """Train (history-matched, post-processed) and val (plain) datasets with tamper masks.

    ``real_only`` keeps only real rows (unsupervised detectors); the fakes still lend their history.
    """
    transform = HistoryMatching(fake_histories(data.train, seed), p_history=p_history)
    train_rows, val_rows = data.train, data.val
    if real_only:
        train_rows = Manifest.from_rows([r for r in data.train if r.label == "real"], root=data.train.root)
        val_rows = Manifest.from_rows([r for r in data.val if r.label == "real"], root=data.val.root)
    train = ImageDataset(train_rows, preprocessing, transform=transform, mask_column="mask", seed=seed)
    val = ImageDataset(val_rows, preprocessing, mask_column="mask", seed=seed)
    return train, val
