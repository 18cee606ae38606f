"""Training recipe on aligned pairs: the classes differ only by a generator's last stage.

An aligned fake set (``medforensics synth align``; manifest column ``aligned_to`` = the real's
path, ``transform`` / ``transform_params`` = what made the fake) pairs every fake with the real it
was made from: same content, size, bit depth and file history. This recipe keeps it that way all
the way to the network:

1. **Pairs stay pairs.** An item of :class:`AlignedPairDataset` is one member of a (real crop,
   fake crop) pair cut at the SAME offset (a multiple of 8 px of the native image: the 8-px grid
   of JPEG blocks and of the decoders' tiles keeps its phase), and its batches
   (:meth:`AlignedPairDataset.batch_sampler`, used by
   :func:`~medforensics.detectors.components.loaders.balanced_loader`) always hold whole pairs.
2. **Native resolution.** Crops are cut from the image as read (the model's intensity config), no
   resize before the network except the random post-processing below. The crop side is the
   detector's training crop (``patch_size`` of ``forensic_cnn``, ``train_crop`` of the scratch CNNs).
3. **One post-processing draw per pair** (:class:`PairPostProcess`): resize ×0.5–1.5, Gaussian
   blur, Gaussian noise (the same noise field), bit-depth reduction, JPEG q60–100 and, when asked
   (``p_roundtrip`` > 0), a history round trip (down ×0.4–0.95 and back, then JPEG) — each with its
   own probability — applied identically to both members.
4. **A held-out transform family** (e.g. every ``bilinear`` decoder, all strides and bottlenecks)
   is used only for validation / model selection / the threshold; it never appears in training.
5. Reals are split by patient first (:func:`~medforensics.data.patient_split`, as the default
   recipe: the test split's reals are never touched); a fake goes where its real goes.
6. Tampered copies of training reals (``synth/tamper_set.py``, with masks) may be added as extra
   aligned fakes (same file history, mask-labelled crops).
7. ``shuffle_labels`` permutes the labels within each pair (seeded): the control run that must
   stay at chance.
8. The file-format statistics leak check
   (:func:`~medforensics.benchmark.build.format_check.format_statistics_check`) runs on the
   training files; a failure raises :class:`LeakCheckError`. ``reencode=True`` first writes every
   training file, real and fake, through one lossless PNG encoder (same pixels, one container).

Published fakes (``../shared/data``) are not used: they are the unseen-generator test.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..data import ImageDataset, Manifest, ManifestRow, patient_split, train_val_split
from ..data.dataset import collate as _collate
from ..data.processing import (MatchedProcessing, gaussian_blur, gaussian_noise, jpeg, quantise, resize,
                               resize_roundtrip)
from ..io.png import write_png
from ..io.preprocess import Preprocessing, to_channels

#: offsets of crops are multiples of this (JPEG blocks, decoder tiles)
GRID = 8
RESAMPLES = ("bicubic", "bilinear", "area", "lanczos")


class AlignedRecipeError(ValueError):
    """The aligned set cannot be used as asked (missing column, unknown family, size mismatch...)."""


class LeakCheckError(RuntimeError):
    """File-format statistics predict the label on the training set (see :func:`leak_check`)."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------- post-processing
@dataclass(frozen=True)
class PairPostProcess:
    """Random post-processing drawn once per pair and applied identically to both members.

    Steps, in order, each with its probability: resize by a factor in ``scale_range`` (a resample
    kernel from ``resamples``), Gaussian blur (σ in ``blur_range``), Gaussian noise (σ in
    ``noise_range``; one seeded noise field for both members), bit-depth reduction (``bits_range``
    bits), JPEG (quality in ``quality_range``), and last the **history round trip**
    (``p_roundtrip``): down by a factor in ``roundtrip_scale_range`` and back up to the same size,
    each with its own kernel from ``roundtrip_resamples``, then (``p_roundtrip_jpeg``, given the
    round trip) JPEG with quality in ``roundtrip_quality_range`` — the history of a re-saved figure
    crop, and what the benchmark's matched (0.5× + JPEG 85) and laundered (0.875× + JPEG 80) views do.

    :meth:`draw` always consumes the same number of random values from its generator (the round
    trip's parameters come from a generator seeded by the draw's own noise seed), so a seeded
    generator gives a reproducible stream, and with ``p_roundtrip=0`` (the default) every draw, and
    every value drawn after it, is the one the recipe drew before the round trip existed.
    """

    p_resize: float = 0.3
    scale_range: tuple[float, float] = (0.5, 1.5)
    resamples: tuple[str, ...] = RESAMPLES
    p_blur: float = 0.2
    blur_range: tuple[float, float] = (0.3, 1.5)
    p_noise: float = 0.2
    noise_range: tuple[float, float] = (0.002, 0.02)
    p_bits: float = 0.2
    bits_range: tuple[int, int] = (5, 7)
    p_jpeg: float = 0.3
    quality_range: tuple[int, int] = (60, 100)
    p_roundtrip: float = 0.0
    roundtrip_scale_range: tuple[float, float] = (0.4, 0.95)
    roundtrip_resamples: tuple[str, ...] = RESAMPLES
    p_roundtrip_jpeg: float = 0.8
    roundtrip_quality_range: tuple[int, int] = (65, 95)

    def __post_init__(self) -> None:
        for name in ("p_resize", "p_blur", "p_noise", "p_bits", "p_jpeg", "p_roundtrip", "p_roundtrip_jpeg"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        lo, hi = self.roundtrip_scale_range
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"roundtrip_scale_range must satisfy 0 < low <= high < 1, got {self.roundtrip_scale_range}")
        qlo, qhi = self.roundtrip_quality_range
        if not 1 <= qlo <= qhi <= 100:
            raise ValueError(f"roundtrip_quality_range must satisfy 1 <= low <= high <= 100, got "
                             f"{self.roundtrip_quality_range}")

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """One draw: which steps fire and their parameters (JSON-able)."""
        u = rng.random(5)
        scale = float(rng.uniform(*self.scale_range))
        resample = self.resamples[int(rng.integers(len(self.resamples)))]
        blur = float(rng.uniform(*self.blur_range))
        noise = float(rng.uniform(*self.noise_range))
        noise_seed = int(rng.integers(2**62))
        bits = int(rng.integers(self.bits_range[0], self.bits_range[1] + 1))
        quality = int(rng.integers(self.quality_range[0], self.quality_range[1] + 1))
        # the round trip draws from its own stream (seeded by noise_seed): ``rng`` is left exactly where
        # it was before this step existed, so the offsets drawn after a draw do not move either
        hist = np.random.default_rng([noise_seed, 0x4157])
        v = hist.random(2)
        rt_scale = float(hist.uniform(*self.roundtrip_scale_range))
        rt_down = self.roundtrip_resamples[int(hist.integers(len(self.roundtrip_resamples)))]
        rt_up = self.roundtrip_resamples[int(hist.integers(len(self.roundtrip_resamples)))]
        rt_quality = int(hist.integers(self.roundtrip_quality_range[0], self.roundtrip_quality_range[1] + 1))
        roundtrip = bool(v[0] < self.p_roundtrip)
        return {
            "scale": scale if u[0] < self.p_resize else 1.0, "resample": resample,
            "blur": blur if u[1] < self.p_blur else 0.0,
            "noise": noise if u[2] < self.p_noise else 0.0, "noise_seed": noise_seed,
            "bits": bits if u[3] < self.p_bits else 0,
            "jpeg": quality if u[4] < self.p_jpeg else 0,
            "roundtrip": rt_scale if roundtrip else 1.0, "roundtrip_down": rt_down, "roundtrip_up": rt_up,
            "roundtrip_jpeg": rt_quality if roundtrip and v[1] < self.p_roundtrip_jpeg else 0,
        }

    @staticmethod
    def apply(pixels: np.ndarray, draw: dict[str, Any]) -> np.ndarray:
        """``pixels`` (H×W or H×W×3 in [0, 1]) through the steps of ``draw``; resizing by ``draw["scale"]``
        (the history round trip keeps the size). A draw without the round-trip keys skips it."""
        out = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
        if draw["scale"] != 1.0:
            h, w = out.shape[:2]
            out = resize(out, (max(1, round(h * draw["scale"])), max(1, round(w * draw["scale"]))), draw["resample"])
        if draw["blur"] > 0:
            out = gaussian_blur(out, draw["blur"])
        if draw["noise"] > 0:
            out = gaussian_noise(out, draw["noise"], np.random.default_rng(draw["noise_seed"]))
        if draw["bits"]:
            out = quantise(out, draw["bits"])
        if draw["jpeg"]:
            out = jpeg(out, draw["jpeg"])
        if draw.get("roundtrip", 1.0) != 1.0:  # the history round trip: down and back to the same size
            out = resize_roundtrip(out, scale=draw["roundtrip"], down=draw["roundtrip_down"], up=draw["roundtrip_up"])
        if draw.get("roundtrip_jpeg"):
            out = jpeg(out, draw["roundtrip_jpeg"])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _ceil8(x: float) -> int:
    return int(GRID * math.ceil(x / GRID))


def crop_window(shape: tuple[int, int], crop: int, scale: float) -> tuple[int, float]:
    """Side of the square source window (a multiple of 8) that resized by ``scale`` still covers
    ``crop`` px, and the scale actually used (raised when the image is too small for the window)."""
    h, w = shape
    room = GRID * (min(h, w) // GRID)
    if room < crop:
        raise AlignedRecipeError(f"a {h}×{w} image is smaller than the {crop}-px crop")
    if scale == 1.0:
        return crop, 1.0
    side = min(_ceil8(crop / scale + 2), room)
    if round(side * scale) < crop:  # not enough room for that downscale: scale down less
        scale = (crop + 0.5) / side
    return side, float(scale)


# --------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class AlignedPair:
    """A real and a fake made from it (absolute paths); ``mask`` for tampered copies (1 = altered)."""

    real: str
    fake: str
    modality: str
    generator: str
    family: str  # the transform family (upsampling kind of an autoencoder, "diffusion", "tamper")
    split: str = ""
    patient_id: str = ""
    source: str = ""
    mask: str = ""


def transform_family(row: ManifestRow) -> str:
    """The family a fake's transform belongs to: the autoencoder's upsampling kind (``transposed``,
    ``nearest``, ``bilinear``, ``pixelshuffle``), else the row's ``family`` (``diffusion``, ``tamper``)."""
    raw = row.extra.get("transform_params", "").strip()
    if raw:
        try:
            params = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise AlignedRecipeError(f"{row.path}: transform_params is not JSON ({exc})") from None
        if isinstance(params, dict) and params.get("upsampling"):
            return str(params["upsampling"])
    return row.family or row.generator or "unknown"


def _key(path: str | Path) -> str:
    return os.path.realpath(str(path))


def read_aligned_pairs(aligned: Manifest, reals: Manifest | None = None) -> list[AlignedPair]:
    """Every (real, fake) pair of an aligned-fakes manifest.

    The real's patient id, source and split come from its row in ``reals`` (matched by path) when
    it is there, else from the fake's row (``synth align`` copies them).
    """
    if "aligned_to" not in aligned.columns():
        raise AlignedRecipeError(f"{aligned.path or 'the manifest'} has no aligned_to column; it is not an aligned-"
                                 "fakes manifest (make one with `medforensics synth align`)")
    by_path = {_key(r.resolve(reals.root)): r for r in reals} if reals is not None else {}
    pairs = []
    for row in aligned:
        if row.label != "fake":
            continue
        target = row.extra.get("aligned_to", "").strip()
        if not target:
            raise AlignedRecipeError(f"{row.path}: empty aligned_to")
        real_path = Path(target) if Path(target).is_absolute() else row.resolve(aligned.root).parent / target
        ref = by_path.get(_key(real_path))
        pairs.append(AlignedPair(
            real=str(Path(real_path).resolve()), fake=str(row.resolve(aligned.root).resolve()), modality=row.modality,
            generator=row.generator or row.extra.get("transform", ""), family=transform_family(row),
            split=(ref.split if ref is not None and ref.split else row.split),
            patient_id=ref.patient_id if ref is not None else row.patient_id,
            source=ref.source if ref is not None else row.source,
        ))
    if not pairs:
        raise AlignedRecipeError("the aligned manifest holds no fake rows")
    return pairs


def _real_rows(pairs: Sequence[AlignedPair], reals: Manifest | None) -> list[ManifestRow]:
    """One real row per distinct real (its own manifest row when known: the split keys use its provenance)."""
    by_path = {_key(r.resolve(reals.root)): r for r in reals} if reals is not None else {}
    out, seen = [], set()
    for p in pairs:
        k = _key(p.real)
        if k in seen:
            continue
        seen.add(k)
        ref = by_path.get(k)
        row = ref.copy(path=str(Path(p.real).resolve()), split=p.split) if ref is not None else ManifestRow(
            path=str(Path(p.real).resolve()), label="real", modality=p.modality, source=p.source,
            patient_id=p.patient_id, split=p.split)
        out.append(row)
    return out


# --------------------------------------------------------------------------- data preparation
@dataclass
class AlignedData:
    """The recipe's data: training pairs, validation rows (held-out family), test reals, summary."""

    train: list[AlignedPair]
    val: Manifest
    test_pairs: list[AlignedPair]
    summary: dict[str, Any] = field(default_factory=dict)

    def train_manifest(self) -> Manifest:
        """The training files as a manifest (each real once, every fake): what the leak check reads."""
        rows, seen = [], set()
        for p in self.train:
            if p.real not in seen:
                seen.add(p.real)
                rows.append(ManifestRow(path=p.real, label="real", modality=p.modality, source=p.source))
            rows.append(ManifestRow(path=p.fake, label="fake", modality=p.modality, source=p.source,
                                    generator=p.generator, family=p.family))
        return Manifest.from_rows(rows, root="/")


def family_names(pairs: Sequence[AlignedPair]) -> dict[str, int]:
    return dict(sorted(Counter(p.family for p in pairs).items()))


def prepare_aligned_data(
    aligned: Manifest,
    workdir: str | Path,
    *,
    holdout_family: str,
    reals: Manifest | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    tamper_fraction: float = 0.0,
    max_val_pairs: int | None = None,
    max_train_pairs: int | None = None,
    reencode: bool = False,
) -> AlignedData:
    """Split the reals by patient, put each pair where its real goes, hold out one transform family.

    Training: train-split reals with their fakes of every family but ``holdout_family`` (plus
    tampered copies when ``tamper_fraction`` > 0). Validation: val-split reals with their
    ``holdout_family`` fakes (at most ``max_val_pairs`` pairs, a seeded choice). Test-split reals
    are set aside (``test_pairs``: every family). A split recorded in the aligned manifest (or the
    reals') is kept; rows without one are split here (``test_fraction``, then ``val_fraction`` of
    the rest, as ``medforensics train`` does). ``max_train_pairs`` keeps a seeded subset of the
    training pairs (tampered ones included). ``reencode`` writes every training file through one
    PNG encoder under ``workdir/reencoded`` first.
    """
    pairs = read_aligned_pairs(aligned, reals)
    families = family_names(pairs)
    held = [p for p in pairs if p.family == holdout_family or p.generator == holdout_family]
    if not held:
        raise AlignedRecipeError(f"no fake of family {holdout_family!r} to hold out; families in the set: "
                                 + ", ".join(f"{k} ({v})" for k, v in families.items()))
    if len(held) == len(pairs):
        raise AlignedRecipeError(f"every fake is of family {holdout_family!r}: nothing would be left to train on")
    real_rows = _real_rows(pairs, reals)
    split_of = _split_reals(real_rows, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    held_set = {id(p) for p in held}
    train = [p for p in pairs if split_of[_key(p.real)] == "train" and id(p) not in held_set]
    val_pairs = [p for p in pairs if split_of[_key(p.real)] == "val" and id(p) in held_set]
    test_pairs = [p for p in pairs if split_of[_key(p.real)] == "test"]
    if not train:
        raise AlignedRecipeError("no training pair: no train-split real has a fake outside the held-out family")
    if not val_pairs:
        raise AlignedRecipeError(f"no validation pair: no val-split real has a {holdout_family!r} fake")
    if max_val_pairs is not None and len(val_pairs) > max_val_pairs:
        pick = np.random.default_rng([seed, 0xA11]).choice(len(val_pairs), max_val_pairs, replace=False)
        val_pairs = [val_pairs[i] for i in sorted(pick)]
    workdir = Path(workdir)
    tampered = []
    if tamper_fraction > 0:
        tampered = tamper_pairs([r for r in real_rows if split_of[_key(r.path)] == "train"],
                                workdir / "tampered_aligned", fraction=tamper_fraction, seed=seed)
    train = train + tampered
    if max_train_pairs is not None and len(train) > max_train_pairs:
        pick = np.random.default_rng([seed, 0x7A1]).choice(len(train), max_train_pairs, replace=False)
        train = [train[i] for i in sorted(pick)]
    summary: dict[str, Any] = {
        "recipe": "aligned", "holdout_family": holdout_family, "families": families, "seed": seed,
        "reals": dict(sorted(Counter(split_of.values()).items())),
        "train": {"pairs": len(train), "pairs_tamper": sum(p.family == "tamper" for p in train),
                  "reals": len({p.real for p in train}), "families": family_names(train)},
        "val": {"pairs": len(val_pairs), "families": family_names(val_pairs)},
        "test_pairs_set_aside": len(test_pairs),
    }
    data = AlignedData(train, _val_manifest(val_pairs), test_pairs, summary)
    if reencode:
        data = reencode_training_files(data, workdir / "reencoded")
    return data


def _split_reals(rows: list[ManifestRow], *, seed: int, test_fraction: float, val_fraction: float) -> dict[str, str]:
    """real path key → "train" | "val" | "test"; recorded splits kept, the rest split by patient."""
    bad = sorted({r.split for r in rows if r.split not in ("train", "val", "test", "")})
    if bad:
        raise AlignedRecipeError(f"unknown split value(s) {bad}; expected train, val, test or empty")
    known = [r for r in rows if r.split]
    unknown = [r for r in rows if not r.split]
    man = Manifest.from_rows([r.copy(split="") for r in unknown], root="/")
    if len(man):
        man = patient_split(man, test_fraction=test_fraction, seed=seed)
    out = {_key(r.path): r.split for r in [*known, *man]}
    train_rows = [r for r in [*known, *man] if r.split == "train"]
    if train_rows and not any(r.split == "val" for r in known):  # no validation split yet: take one from train
        tv = train_val_split(Manifest.from_rows(train_rows, root="/"), val_fraction=val_fraction, seed=seed)
        out.update({_key(r.path): r.split for r in tv})
    return out


def _val_manifest(pairs: Sequence[AlignedPair]) -> Manifest:
    rows, seen = [], set()
    for p in pairs:
        if p.real not in seen:
            seen.add(p.real)
            rows.append(ManifestRow(path=p.real, label="real", modality=p.modality, source=p.source, split="val"))
        rows.append(ManifestRow(path=p.fake, label="fake", modality=p.modality, source=p.source,
                                generator=p.generator, family=p.family, split="val"))
    return Manifest.from_rows(rows, root="/")


def tamper_pairs(real_rows: Sequence[ManifestRow], out_dir: Path, *, fraction: float, seed: int) -> list[AlignedPair]:
    """Tampered copies (injection / removal, with masks) of a stable ``fraction`` of the reals, as pairs."""
    from ..synth.tamper_set import make_tampered_set

    out_dir = Path(out_dir).resolve()
    paths = [str(Path(r.path).resolve()) for r in real_rows]
    if not paths:
        return []
    root = Path(os.path.commonpath([os.path.dirname(q) for q in paths]))  # relative paths: copies stay under out_dir
    man = Manifest.from_rows([r.copy(path=os.path.relpath(q, root)) for r, q in zip(real_rows, paths)], root=root)
    tampered = make_tampered_set(man, out_dir, fraction=fraction, seed=seed, show_progress=False)
    return [AlignedPair(real=r.extra["original_path"], fake=str(r.resolve(tampered.root).resolve()), modality=r.modality,
                        generator=r.generator, family="tamper", split="train", patient_id=r.patient_id,
                        source=r.source, mask=r.extra["mask"])
            for r in tampered]


def reencode_training_files(data: AlignedData, out_dir: Path) -> AlignedData:
    """Every training file, real and fake, rewritten losslessly through one PNG encoder
    (:func:`medforensics.io.png.write_png`: zlib level 9, no metadata chunks) under ``out_dir``: same pixels, one container. Copies
    are kept (named by the source's path, size and modification time) and reused by later runs."""
    out_dir = Path(out_dir).resolve()  # absolute: the rows are read from anywhere
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}

    def one(path: str) -> str:
        if path in done:
            return done[path]
        st = os.stat(path)  # a rewritten source gets a new copy
        digest = hashlib.sha256(f"{_key(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        dest = out_dir / digest[:2] / f"{digest}.png"
        if not dest.exists():
            with Image.open(path) as im:
                before = np.asarray(im)
                mode = im.mode
            try:
                write_png(dest, before)  # the toolkit's one PNG writer: atomic, the shared corpus's container
            except ValueError as err:
                raise AlignedRecipeError(f"{path}: PNG re-encoding is not lossless for mode {mode} ({err})") from err
            with Image.open(dest) as check:
                if not np.array_equal(np.asarray(check), before):
                    dest.unlink()
                    raise AlignedRecipeError(f"{path}: PNG re-encoding is not lossless for mode {mode}")
        done[path] = str(dest)
        return done[path]

    train = [AlignedPair(**{**asdict(p), "real": one(p.real), "fake": one(p.fake)}) for p in data.train]
    summary = {**data.summary, "reencoded": {"dir": str(out_dir), "files": len(done), "encoder": "medforensics.io.png (zlib level 9)"}}
    return AlignedData(train, data.val, data.test_pairs, summary)


# --------------------------------------------------------------------------- leak check
def leak_check(data: AlignedData, tolerance: float = 0.6) -> dict[str, Any]:
    """The file-format statistics check on the training files; raises :class:`LeakCheckError` if it fails."""
    from ..benchmark.build.format_check import format_statistics_check

    manifest = data.train_manifest()
    report = format_statistics_check(manifest, tolerance=tolerance).to_dict()
    if report["errors"] or report["n"] != len(manifest):  # a check that read nothing must not pass
        raise LeakCheckError(f"the leak check could not read {len(manifest) - report['n']} of {len(manifest)} training "
                             "files: " + "; ".join(report["errors"][:3]), report)
    if not report["passed"]:
        raise LeakCheckError(
            "file-format statistics separate real from fake in the training set: "
            + "; ".join(report["failures"][:6])
            + (" — re-encode the training files through one encoder (reencode=True, CLI --reencode) or fix the "
               "fake writer" if any("png_zlib_level" in f or "metadata" in f for f in report["failures"]) else ""),
            report)
    return report


# --------------------------------------------------------------------------- datasets
class PairBatchSampler(Sampler[list[int]]):
    """Shuffled batches of whole pairs: pair ``k`` is items ``2k`` (real) and ``2k + 1`` (fake)."""

    def __init__(self, n_pairs: int, pairs_per_batch: int, generator: torch.Generator, drop_last: bool = False):
        if pairs_per_batch < 1:
            raise ValueError(f"a batch must hold at least one pair, got {pairs_per_batch}")
        self.n_pairs, self.pairs_per_batch, self.generator, self.drop_last = n_pairs, pairs_per_batch, generator, drop_last

    def __iter__(self):
        order = torch.randperm(self.n_pairs, generator=self.generator).tolist()
        for start in range(0, self.n_pairs, self.pairs_per_batch):
            chunk = order[start : start + self.pairs_per_batch]
            if self.drop_last and len(chunk) < self.pairs_per_batch:
                return
            yield [i for k in chunk for i in (2 * k, 2 * k + 1)]

    def __len__(self) -> int:
        full, rest = divmod(self.n_pairs, self.pairs_per_batch)
        return full + (1 if rest and not self.drop_last else 0)


def balanced_swaps(pairs: Sequence[AlignedPair], seed: int) -> np.ndarray:
    """Which pairs get their labels swapped in the shuffled-label control: exactly half (rounded down)
    of the pairs of every (family, modality) group, a seeded choice. A coin flip per pair would leave
    a net majority of unswapped pairs in a small set, and the detector would learn the trace from it."""
    rng = np.random.default_rng([seed, 0x5F1])
    out = np.zeros(len(pairs), bool)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault((p.family, p.modality), []).append(i)
    for key in sorted(groups):
        idx = np.asarray(groups[key])
        out[rng.permutation(idx)[: len(idx) // 2]] = True
    return out


class AlignedPairDataset(Dataset):
    """Crops of aligned pairs, one member per item; items ``2k`` and ``2k + 1`` are the real and the
    fake crop of pair-item ``k`` (pair ``k % n_pairs``: ``crops_per_pair`` crops of each pair per epoch).

    Both crops of a pair-item share the source offset (a multiple of 8, uniform; for a tampered
    pair half the time around a tampered pixel) and one :class:`PairPostProcess` draw, both from
    ``default_rng([seed, epoch, k])``. Items are dicts like :class:`~medforensics.data.ImageDataset`'s
    (``image`` C×crop×crop, ``label``, ``mask``, ``index``, ``modality``, ``generator``) plus ``pair``,
    ``member`` (0 real, 1 fake), ``offset`` (y, x) and ``draw``. With ``shuffle_labels`` the two
    labels of a pair are swapped for a seeded half of the pairs (:func:`balanced_swaps`; masks follow
    the labels).
    Decoded images are kept in memory (8-bit exact images as uint8).
    """

    def __init__(
        self,
        pairs: Sequence[AlignedPair],
        preprocessing: Preprocessing,
        crop: int,
        *,
        post: PairPostProcess | None = None,
        seed: int = 0,
        crops_per_pair: int = 1,
        shuffle_labels: bool = False,
        p_mask_centre: float = 0.5,
    ):
        if not pairs:
            raise AlignedRecipeError("no pairs to train on")
        if crop < GRID or crop % GRID:
            raise AlignedRecipeError(f"the crop side must be a positive multiple of {GRID}, got {crop}")
        self.pairs = list(pairs)
        self.preprocessing = preprocessing
        self.crop = int(crop)
        self.post = post
        self.seed = int(seed)
        self.crops_per_pair = int(crops_per_pair)
        self.shuffle_labels = bool(shuffle_labels)
        self.p_mask_centre = p_mask_centre
        self.epoch = 0
        self.swapped = balanced_swaps(self.pairs, self.seed) if shuffle_labels else np.zeros(len(self.pairs), bool)
        self._images: dict[str, np.ndarray] = {}
        self._last: tuple[tuple[int, int], list[dict[str, Any]]] | None = None

    # ------------------------------------------------------------------ basics
    @property
    def n_items(self) -> int:
        """Pair-items per epoch."""
        return len(self.pairs) * self.crops_per_pair

    def __len__(self) -> int:
        return 2 * self.n_items

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def labels(self) -> np.ndarray:
        pair_of = np.arange(self.n_items) % len(self.pairs)
        fake_first = self.swapped[pair_of]
        return np.stack([fake_first, ~fake_first], axis=1).reshape(-1).astype(np.int64)

    def batch_sampler(self, batch_size: int, generator: torch.Generator) -> PairBatchSampler:
        """Batches of ``batch_size // 2`` whole pairs (at least one)."""
        return PairBatchSampler(self.n_items, max(1, int(batch_size) // 2), generator)

    collate = staticmethod(_collate)

    # ------------------------------------------------------------------ loading
    def _read(self, path: str, modality: str) -> np.ndarray:
        if path in self._images:
            arr = self._images[path]
            return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr
        pixels = self.preprocessing.read(path, max_frames=1, modality=modality)[0].pixels.astype(np.float32)
        as8 = np.rint(pixels * 255.0)
        exact = np.array_equal(as8 / 255.0, pixels.astype(np.float64)) or np.abs(as8 / 255.0 - pixels).max() < 1e-6
        self._images[path] = as8.astype(np.uint8) if exact else pixels
        return pixels

    def _mask(self, path: str, shape: tuple[int, int]) -> np.ndarray:
        if not path:
            return np.zeros(shape, np.float32)
        key = "mask:" + path
        if key not in self._images:
            with Image.open(path) as im:
                m = np.asarray(im.convert("L")) > 0
            if m.shape != shape:
                raise AlignedRecipeError(f"mask {path} is {m.shape}, its image {shape}")
            self._images[key] = m.astype(np.uint8)
        return self._images[key].astype(np.float32)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Real pixels, fake pixels and the fake's mask (native size) of pair ``index``."""
        p = self.pairs[index]
        real, fake = self._read(p.real, p.modality), self._read(p.fake, p.modality)
        if real.shape != fake.shape:
            raise AlignedRecipeError(f"{p.fake} is {fake.shape} but the real it is aligned to ({p.real}) is "
                                     f"{real.shape}: not an aligned pair")
        mask = self._mask(p.mask, real.shape[:2]) if p.mask else np.ones(real.shape[:2], np.float32)
        return real, fake, mask

    # ------------------------------------------------------------------ items
    def pair_item(self, k: int) -> list[dict[str, Any]]:
        """Both items (real first) of pair-item ``k`` in the current epoch."""
        if self._last is not None and self._last[0] == (self.epoch, k):
            return self._last[1]
        p_index = k % len(self.pairs)
        pair = self.pairs[p_index]
        real, fake, mask = self.load_pair(p_index)
        rng = np.random.default_rng([self.seed, self.epoch, k])
        draw = self.post.draw(rng) if self.post is not None else {
            "scale": 1.0, "resample": "bicubic", "blur": 0.0, "noise": 0.0, "noise_seed": 0, "bits": 0, "jpeg": 0,
            "roundtrip": 1.0, "roundtrip_down": "bicubic", "roundtrip_up": "bicubic", "roundtrip_jpeg": 0}
        side, scale = crop_window(real.shape[:2], self.crop, draw["scale"])
        draw = {**draw, "scale": scale}
        centre = bool(pair.mask) and rng.random() < self.p_mask_centre and bool(mask.any())
        y0, x0 = self._origin(rng, real.shape[:2], side, mask if centre else None)
        out = []
        for member, pixels in ((0, real), (1, fake)):
            window = pixels[y0 : y0 + side, x0 : x0 + side]
            processed = PairPostProcess.apply(window, draw)[: self.crop, : self.crop]
            label = int(member != int(self.swapped[p_index]))  # swapped: the real is labelled fake
            if label and pair.mask and not self.swapped[p_index]:
                m = mask[y0 : y0 + side, x0 : x0 + side]
                if scale != 1.0:
                    m = resize(m, (round(side * scale),) * 2, "nearest")
                m = (m[: self.crop, : self.crop] >= 0.5).astype(np.float32)
            else:
                m = np.full((self.crop, self.crop), float(label), np.float32)
            out.append({
                "image": torch.from_numpy(to_channels(processed, self.preprocessing.channels)),
                "label": torch.tensor(float(label)),
                "mask": torch.from_numpy(m),
                "index": 2 * k + member,
                "modality": pair.modality,
                "generator": pair.generator if member else "",
                "pair": p_index,
                "member": member,
                "offset": (int(y0), int(x0)),
                "draw": dict(draw),
            })
        self._last = ((self.epoch, k), out)
        return out

    def _origin(self, rng: np.random.Generator, shape: tuple[int, int], side: int,
                around: np.ndarray | None) -> tuple[int, int]:
        h, w = shape
        max_y, max_x = (h - side) // GRID, (w - side) // GRID
        if around is None:
            return GRID * int(rng.integers(0, max_y + 1)), GRID * int(rng.integers(0, max_x + 1))
        ys, xs = np.nonzero(around > 0.5)
        t = int(rng.integers(len(ys)))
        y = int(np.clip(round((ys[t] - side // 2) / GRID), 0, max_y))
        x = int(np.clip(round((xs[t] - side // 2) / GRID), 0, max_x))
        return GRID * y, GRID * x

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.pair_item(index // 2)[index % 2]


def training_crop(config: dict[str, Any], preprocessing: Preprocessing) -> int:
    """The crop side a detector trains on: ``patch_size`` (patch detectors), ``train_crop`` (scratch
    CNNs), else the preprocessing size — rounded down to a multiple of 8."""
    for key in ("patch_size", "train_crop"):
        if config.get(key):
            return GRID * (int(config[key]) // GRID)
    return GRID * (preprocessing.size // GRID)


def aligned_training_datasets(
    data: AlignedData,
    preprocessing: Preprocessing,
    crop: int,
    *,
    seed: int = 0,
    crops_per_pair: int = 4,
    shuffle_labels: bool = False,
    post: PairPostProcess | None = None,
    val_history: MatchedProcessing | None = None,
) -> tuple[AlignedPairDataset, ImageDataset]:
    """Training pairs (cropped, post-processed together) and the validation set (held-out family).

    Validation images go through the model's own preprocessing, as a scan reads them, so the
    threshold calibrated on the validation reals is the deployed one. With ``val_history`` (a fixed
    chain, e.g. ``MatchedProcessing(scale=0.67, jpeg_quality=85)``) the validation set also holds a
    second copy of every validation image, real and fake alike, put through that chain at native
    resolution (rows marked ``val_history``): the best epoch, the top-k aggregation and τ are then
    chosen on plain and re-saved images together.
    """
    post = PairPostProcess() if post is None else post
    train = AlignedPairDataset(data.train, preprocessing, crop, post=post, seed=seed, crops_per_pair=crops_per_pair,
                               shuffle_labels=shuffle_labels)
    if val_history is None:
        return train, ImageDataset(data.val, preprocessing, seed=seed)
    rows = list(data.val.rows)
    copies = [r.copy() for r in rows]
    for r in copies:
        r.extra["val_history"] = val_history.describe()
    chain = val_history

    def history(pixels: np.ndarray, rng: np.random.Generator, row: ManifestRow) -> np.ndarray:
        return chain(pixels) if row.extra.get("val_history") else pixels

    return train, ImageDataset([*rows, *copies], preprocessing, root=data.val.root, seed=seed, transform=history)


def pair_scores(detector: Any, pairs: Sequence[AlignedPair], batch: int = 16) -> dict[str, Any]:
    """AUC of ``detector`` on whole images of ``pairs`` (reals once each), overall and per family."""
    from ..eval.metrics import compute_metrics

    modality = {p.real: p.modality for p in pairs}
    reals = sorted(modality)
    rows = [ManifestRow(path=r, label="real", modality=modality[r]) for r in reals]
    rows += [ManifestRow(path=p.fake, label="fake", modality=p.modality, generator=p.generator, family=p.family)
             for p in pairs]
    ds = ImageDataset(rows, detector.preprocessing, root="/")
    scores = []
    for start in range(0, len(ds), batch):
        items = [ds[i] for i in range(start, min(len(ds), start + batch))]
        scores.append(detector.score(torch.stack([it["image"] for it in items])))
    s = np.concatenate(scores)
    y = np.array([r.y for r in rows])
    s_real = s[: len(reals)]
    out: dict[str, Any] = {"n_real": len(reals), "n_fake": len(pairs), "auc": compute_metrics(y, s)["auc"],
                           "per_family": {}}
    for fam in sorted({p.family for p in pairs}):
        sel = np.array([p.family == fam for p in pairs])
        s_f = s[len(reals):][sel]
        out["per_family"][fam] = {"n_fake": int(sel.sum()), "auc": compute_metrics(
            np.r_[np.zeros(len(s_real)), np.ones(len(s_f))], np.r_[s_real, s_f])["auc"]}
    return out
