"""Back-in-Time Diffusion attack sets: injection (True-/Fake-Malign) and removal (True-/Fake-Benign).

The BTD paper evaluates two scenarios on CT and MRI:

* **injection** — True-Malign (TM: real scans showing a real lesion) vs Fake-Malign (FM: scans
  with a lesion injected);
* **removal** — True-Benign (TB: real healthy scans) vs Fake-Benign (FB: scans whose lesion was
  removed), each scored on a patch centred on the (real, injected or removed) lesion.

**How our data maps onto those definitions.** The shared CT/MRI carry no lesion annotations, so:

* "malign" / "benign" name *pools of real scans*, not verified findings. CT from IQ-OTH/NCCD
  comes with a case-level class in the file name (``malignant`` → malign pool; ``normal`` and
  ``bengin`` (sic) → benign pool). TCGA lung CT and TCGA-LGG brain FLAIR come from cancer
  patients without slice labels; their patients are split 50/50 between the pools by a stable hash.
* TM = untouched real scans of the malign pool, centred on a *lesion-like* structure: the
  bright compact blob the removal tool would target (:func:`lesion_like_center`, away from the
  border) — the same rule that picks FB centres; it is not an annotated lesion.
* FM = scans of the benign pool with a lesion injected by :func:`~medforensics.synth.tamper.inject_lesion`
  (Poisson-blended copy-move or synthetic nodule) at a random foreground location.
* TB = untouched real scans of the benign pool, centred on a random foreground location
  (:func:`random_foreground_center`) — the rule the injection tool uses.
* FB = scans of the malign pool with the brightest lesion-like blob removed: classically by
  :func:`~medforensics.synth.tamper.remove_region` (attack ``remove``) and, when a trained noise
  predictor is given, by RePaint-style diffusion inpainting of the same mask (attack ``repaint``).

Patients: the real rows are split train/val/test by patient (:func:`btd_real_split`) and the sets
are built from the test split only, so no patient is both in the detectors' training data and in
a test set. Inside a modality the malign/benign pools are further split per patient between the
real and the tampered side of each scenario, so no patient's scans sit on both sides of one
comparison, and the sides are truncated to equal sizes (class-balanced).

Everything is deterministic given ``seed``: per-image random generators are derived from the
seed and the image path.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..data.manifest import Manifest, ManifestRow
from ..data.split import default_group_key, patient_split, train_val_split
from ..detectors.components.progress import progress
from ..io import UnreadableImageError, load, standardise, to_channels
from ..io.png import to_uint8, write_png
from .tamper import TamperResult, foreground_mask, inject_lesion, remove_region

__all__ = [
    "ATTACK_SETS",
    "AttackSetResult",
    "RepaintModel",
    "btd_group_key",
    "btd_real_split",
    "build_attack_sets",
    "image_rng",
    "lesion_like_center",
    "lesion_pool",
    "load_gray",
    "random_foreground_center",
    "repaint_inpaint",
    "repaint_region",
]

#: attack set → (scenario, label)
ATTACK_SETS: dict[str, tuple[str, str]] = {
    "true_malign": ("injection", "real"),
    "fake_malign": ("injection", "fake"),
    "true_benign": ("removal", "real"),
    "fake_benign": ("removal", "fake"),
}
_IQ_CLASS = re.compile(r"(malignant|normal|bengin|benign)", re.IGNORECASE)
_NUMBERED = re.compile(r"^(?P<stem>.*?)\s*\((?P<num>\d+)\)\.\w+$")
MANIFEST_FILE = "manifest.csv"


def _hash01(key: str, seed: int) -> float:
    """Stable pseudo-random number in [0, 1) for ``key``."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12


def image_rng(key: str, seed: int) -> np.random.Generator:
    """A numpy Generator derived from ``seed`` and ``key`` (e.g. an image path): stable across runs."""
    return np.random.default_rng([int(seed), int(_hash01("rng:" + key, seed) * 2**31)])


# --------------------------------------------------------------------------- split
def btd_group_key(row: ManifestRow, block: int = 20) -> str:
    """Patient-level group key for the BTD split.

    Rows with a patient id (or an original figure) use :func:`~medforensics.data.default_group_key`.
    Rows without one whose ``original_path`` is a numbered series (``"... case (17).jpg"``, as in
    IQ-OTH/NCCD, whose slices of one case are numbered consecutively) are grouped in blocks of
    ``block`` consecutive numbers, so neighbouring slices — likely one patient — never straddle
    the split. This is a conservative heuristic (a block may hold several patients), not an id.
    """
    if not row.patient_id:
        m = _NUMBERED.match(Path(row.extra.get("original_path", "").strip()).name)
        if m:
            folder = str(Path(row.extra["original_path"].strip()).parent)
            return f"block:{row.source}:{folder}/{m['stem']}:{int(m['num']) // block}"
    return default_group_key(row)


def btd_real_split(
    manifest: Manifest,
    *,
    modalities: Sequence[str] = ("ct", "mri"),
    test_fraction: float = 0.4,
    val_fraction: float = 0.15,
    seed: int = 0,
    extensions: Sequence[str] = (".png",),
) -> Manifest:
    """The real rows of ``modalities`` with ``split`` = train / val / test, grouped by patient.

    Only files with ``extensions`` are kept (default PNG: the shared CT also holds a few DICOMs
    of the same TCGA patients in a different intensity window; mixing them would give the real
    class two file histories). ``val_fraction`` is a fraction of the non-test groups.
    """
    exts = tuple(e.lower() for e in extensions)
    rows = [r for r in manifest if r.label == "real" and r.modality in set(modalities) and r.path.lower().endswith(exts)]
    if not rows:
        raise ValueError(f"no real {'/'.join(modalities)} rows with extension {'/'.join(exts)} in the manifest")
    reals = manifest.with_rows(r.copy(split="") for r in rows)
    split = patient_split(reals, test_fraction=test_fraction, seed=seed, group_key=btd_group_key, overwrite=True)
    return train_val_split(split, val_fraction, seed, group_key=btd_group_key)


def lesion_pool(row: ManifestRow, seed: int = 0) -> str:
    """``"malign"`` or ``"benign"``: the IQ-OTH/NCCD case class when the file name has one, else a
    stable 50/50 draw per patient group (see the module docstring for what this means)."""
    m = _IQ_CLASS.search(Path(row.path).name) or _IQ_CLASS.search(row.extra.get("original_path", ""))
    if m:
        return "malign" if m.group(1).lower() == "malignant" else "benign"
    return "malign" if _hash01("pool:" + btd_group_key(row), seed) < 0.5 else "benign"


# --------------------------------------------------------------------------- centres
def load_gray(path: str | Path, modality: str, size: int = 256) -> np.ndarray:
    """H×W float32 pixels in [0, 1] at ``size``×``size`` (project loader + standardise, colour → luma)."""
    image = load(path, modality=modality)
    return to_channels(standardise(image.pixels, size), 1)[0]


def random_foreground_center(
    pixels: np.ndarray, rng: np.random.Generator, margin: float = 16.0, fg: np.ndarray | None = None
) -> tuple[int, int]:
    """A random foreground location at least ``margin`` px inside the body and the image border
    (relaxed to half the largest available distance when nothing is that deep). ``fg``: a
    precomputed :func:`~medforensics.synth.tamper.foreground_mask` of ``pixels``."""
    fg = foreground_mask(pixels) if fg is None else fg
    dist = ndimage.distance_transform_edt(fg) if not fg.all() else np.full(fg.shape, np.inf)
    yy, xx = np.ogrid[: fg.shape[0], : fg.shape[1]]
    border = np.minimum(np.minimum(yy, fg.shape[0] - 1 - yy), np.minimum(xx, fg.shape[1] - 1 - xx)) + 1.0
    dist = np.minimum(dist, border)
    ok = dist > margin
    if not ok.any():
        ok = dist >= 0.5 * dist.max()
    ys, xs = np.nonzero(ok)
    i = int(rng.integers(ys.size))
    return int(ys[i]), int(xs[i])


def lesion_like_center(
    pixels: np.ndarray, rng: np.random.Generator, margin: float = 16.0, tries: int = 4, fg: np.ndarray | None = None
) -> tuple[tuple[int, int], float, str]:
    """Centre, radius and kind of the lesion-like structure the removal tool would target.

    The blob is found exactly as :func:`~medforensics.synth.tamper.remove_region` finds it (one of
    the brightest compact blobs; its inpainted pixels are discarded). A blob closer than
    ``margin`` px to the image border or outside the body is redrawn (``tries`` times); failing
    that, a random foreground point is returned with kind ``"random"`` and radius 0. ``fg``: a
    precomputed foreground mask of ``pixels``.
    """
    fg = foreground_mask(pixels) if fg is None else fg
    h, w = pixels.shape[:2]
    for _ in range(max(1, tries)):
        res = remove_region(pixels, rng=rng)
        (cy, cx), kind = res.center, str(res.details.get("target", ""))
        if kind != "blob":  # no blob candidate at all: redrawing cannot help
            break
        if margin <= cy < h - margin and margin <= cx < w - margin and bool(fg[cy, cx]):
            return (int(cy), int(cx)), float(res.radius), "blob"
    return random_foreground_center(pixels, rng, margin, fg), 0.0, "random"


# --------------------------------------------------------------------------- RePaint
@dataclass
class RepaintModel:
    """A trained DDPM noise predictor for RePaint: a ``diffusers.UNet2DModel`` (ε-prediction), its
    ``DDPMScheduler``, and the maps between pixel [0, 1] and model range (default [−1, 1])."""

    unet: torch.nn.Module
    scheduler: Any
    to_model: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda x: x * 2.0 - 1.0)
    from_model: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda x: ((x + 1.0) / 2.0).clamp(0.0, 1.0))
    crop_size: int = 64  # side the U-Net was trained on; crops are at least this large
    num_inference_steps: int = 50
    jump_length: int = 10
    jump_n_sample: int = 2
    eta: float = 1.0
    name: str = ""

    @classmethod
    def from_detector(cls, detector: Any, **options: Any) -> "RepaintModel":
        """From a detector exposing ``unet``, ``scheduler`` (and optionally ``to_model_range`` /
        ``from_model_range``), e.g. ``btd`` or ``ddpm_ood``."""
        for attr in ("unet", "scheduler"):
            if not hasattr(detector, attr):
                raise TypeError(f"detector {getattr(detector, 'name', detector)!r} has no {attr!r}: not a diffusion model")
        kw: dict[str, Any] = {"crop_size": int(detector.preprocessing.size), "name": getattr(detector, "name", "")}
        if hasattr(detector, "to_model_range"):
            kw["to_model"] = detector.to_model_range
        if hasattr(detector, "from_model_range"):
            kw["from_model"] = detector.from_model_range
        return cls(detector.unet, detector.scheduler, **{**kw, **options})


@torch.no_grad()
def repaint_inpaint(
    model: RepaintModel,
    image: torch.Tensor,
    mask: torch.Tensor,
    *,
    seed: int = 0,
) -> torch.Tensor:
    """RePaint (Lugmayr et al., CVPR 2022) with ``diffusers.RePaintScheduler``.

    ``image`` N×C×H×W in [0, 1]; ``mask`` N×H×W (or N×1×H×W), 1/True = region to inpaint. At each
    reverse step the known region is re-noised from the original, x_{t−1}^known ~ q(x_{t−1} | x₀),
    and the masked region is denoised, x_{t−1}^unknown ~ p_θ(x_{t−1} | x_t); resampling jumps of
    ``jump_length`` are repeated ``jump_n_sample`` times. Returns N×C×H×W in [0, 1]; at t = 0 the
    known region is the original exactly (up to the model-range round trip). Deterministic in ``seed``.
    """
    from diffusers import RePaintScheduler

    sched_cfg = model.scheduler.config
    if getattr(sched_cfg, "prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"RePaint needs an ε-prediction model, got prediction_type={sched_cfg.prediction_type!r}")
    rp = RePaintScheduler(
        num_train_timesteps=sched_cfg.num_train_timesteps,
        trained_betas=model.scheduler.betas.float().numpy(),
        eta=model.eta,
        clip_sample=bool(getattr(sched_cfg, "clip_sample", True)),
    )
    rp.set_timesteps(model.num_inference_steps, model.jump_length, model.jump_n_sample)
    m = mask.float()
    if m.ndim == 3:
        m = m[:, None]
    known = (1.0 - m).expand_as(image)  # RePaintScheduler: 1 = keep the original
    x0 = model.to_model(image.float())
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(x0.shape, generator=gen)
    was_training = model.unet.training
    model.unet.eval()
    t_last = int(rp.timesteps[0]) + 1
    for t in rp.timesteps.tolist():
        if t < t_last:
            eps = model.unet(x, t).sample
            x = rp.step(eps, t, x, x0, known, generator=gen).prev_sample
        else:
            x = rp.undo_step(x, t_last, generator=gen)
        t_last = t
    model.unet.train(was_training)
    return model.from_model(x)


def repaint_region(
    model: RepaintModel,
    pixels: np.ndarray,
    mask: np.ndarray,
    center: tuple[int, int],
    *,
    seed: int = 0,
    multiple: int = 16,
) -> TamperResult:
    """Inpaint ``mask`` (H×W bool) of a grey image with RePaint on a crop around ``center``.

    The crop is the U-Net's training size, or larger (a multiple of ``multiple``) when the mask
    needs more context; it is reflect-padded at the image border. Only masked pixels change.
    """
    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"repaint_region expects grey H×W pixels, got shape {img.shape}")
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("repaint_region: empty mask")
    ys, xs = np.nonzero(mask)
    cy, cx = int(center[0]), int(center[1])
    extent = int(max(np.abs(ys - cy).max(), np.abs(xs - cx).max())) + 1
    side = max(int(model.crop_size), 2 * extent + 16)
    side = int(math.ceil(side / multiple) * multiple)
    half = side // 2
    pad_img = np.pad(img, half, mode="reflect")
    pad_mask = np.pad(mask, half)
    sl = (slice(cy, cy + side), slice(cx, cx + side))  # window centred on (cy, cx) in padded coordinates
    crop, crop_mask = pad_img[sl], pad_mask[sl]
    out = repaint_inpaint(model, torch.from_numpy(crop)[None, None], torch.from_numpy(crop_mask)[None], seed=seed)
    filled = out[0, 0].numpy()
    pad_out = pad_img.copy()
    pad_out[sl] = np.where(crop_mask, filled, crop)
    result = np.where(mask, pad_out[half : half + img.shape[0], half : half + img.shape[1]], img).astype(np.float32)
    radius = float(math.sqrt(mask.sum() / math.pi))
    return TamperResult(result, mask.copy(), "remove", (cy, cx), radius, "repaint",
                        {"crop": side, "model": model.name, "steps": model.num_inference_steps,
                         "jump_length": model.jump_length, "jump_n_sample": model.jump_n_sample})


# --------------------------------------------------------------------------- builder
@dataclass
class AttackSetResult:
    """The attack-set manifest, the images that could not be read, and per-set counts."""

    manifest: Manifest
    errors: list[tuple[str, str]]
    counts: dict[str, dict[str, int]]


def _halves(rows: list[ManifestRow], seed: int, salt: str) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """Split rows 50/50 by patient group (stable hash order; a group never straddles)."""
    groups: dict[str, list[ManifestRow]] = {}
    for r in rows:
        groups.setdefault(btd_group_key(r), []).append(r)
    keys = sorted(groups, key=lambda k: (_hash01(salt + k, seed), k))
    first, second = [], []
    for k in keys:  # greedy: each group joins the smaller side, so sizes stay close
        (first if len(first) <= len(second) else second).extend(groups[k])
    return first, second


def _stable_order(rows: list[ManifestRow], seed: int) -> list[ManifestRow]:
    return sorted(rows, key=lambda r: (_hash01("order:" + r.path, seed), r.path))


def build_attack_sets(
    manifest: Manifest,
    out_dir: str | Path,
    *,
    split: str = "test",
    seed: int = 0,
    modalities: Sequence[str] = ("ct", "mri"),
    image_size: int = 256,
    repaint: RepaintModel | None = None,
    lesion_radii: Sequence[float] = (),
    max_per_set: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> AttackSetResult:
    """Build TM / FM / TB / FB from the real ``split`` rows of ``manifest`` (see module docstring).

    Writes the tampered PNGs (8-bit, like the shared reals) and their masks under ``out_dir``
    and ``out_dir/manifest.csv``. Real rows point at the untouched originals (absolute paths; the
    shared data is never copied). Extra columns: ``attack_set``, ``scenario``, ``attack``,
    ``pool``, ``center_y``/``center_x``/``radius`` (at ``image_size``, the lesion or patch
    centre), ``center_rule``, ``mask`` and ``original_path``. ``lesion_radii`` adds, per radius r,
    a Fake-Malign variant ``inject-r<r>`` of the same scans (lesion-size ablation); ``repaint``
    adds the diffusion-inpainting Fake-Benign attack ``repaint``. ``max_per_set`` caps each side.
    Refuses to write into a folder holding a manifest unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    target = out_dir / MANIFEST_FILE
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to rebuild the attack sets there")
    pool_rows = [r for r in manifest if r.label == "real" and r.split == split and r.modality in set(modalities)]
    if not pool_rows:
        raise ValueError(f"no real rows with split={split!r} and modality in {list(modalities)}")
    jobs: list[tuple[str, ManifestRow]] = []
    for modality in modalities:
        rows = [r for r in pool_rows if r.modality == modality]
        malign = [r for r in rows if lesion_pool(r, seed) == "malign"]
        benign = [r for r in rows if lesion_pool(r, seed) == "benign"]
        tm, fb = _halves(malign, seed, "malign:")
        tb, fm = _halves(benign, seed, "benign:")
        for real_name, fake_name, real, fake in (("true_malign", "fake_malign", tm, fm), ("true_benign", "fake_benign", tb, fb)):
            n = min(len(real), len(fake), max_per_set or 10**9)
            jobs += [(real_name, r) for r in _stable_order(real, seed)[:n]]
            jobs += [(fake_name, r) for r in _stable_order(fake, seed)[:n]]

    out_rows: list[ManifestRow] = []
    errors: list[tuple[str, str]] = []
    for set_name, row in progress(jobs, "building attack sets", enabled=show_progress):
        src = row.resolve(manifest.root)
        try:
            pixels = load_gray(src, row.modality, image_size)
        except UnreadableImageError as err:
            errors.append((str(src), err.reason))
            continue
        out_rows += _attack_rows(set_name, row, src, pixels, out_dir, seed, repaint, lesion_radii)
    result = Manifest(out_rows, out_dir)
    result.write(target, overwrite=True)
    (out_dir / "errors.json").write_text(json.dumps([{"path": p, "error": e} for p, e in errors], indent=2))
    counts: dict[str, dict[str, int]] = {}
    for r in out_rows:
        key = f"{r.modality}/{r.extra['attack_set']}"
        counts.setdefault(key, {}).setdefault(r.extra["attack"], 0)
        counts[key][r.extra["attack"]] += 1
    return AttackSetResult(result, errors, counts)


def _attack_rows(
    set_name: str,
    row: ManifestRow,
    src: Path,
    pixels: np.ndarray,
    out_dir: Path,
    seed: int,
    repaint: RepaintModel | None,
    lesion_radii: Sequence[float],
) -> list[ManifestRow]:
    """The manifest rows (and written files) of one source image in one attack set."""
    scenario, _ = ATTACK_SETS[set_name]
    rng = image_rng(row.path, seed)
    base_extra = {k: v for k, v in row.extra.items() if k == "license"}
    base_extra.update(attack_set=set_name, scenario=scenario, pool=lesion_pool(row, seed), original_path=str(src))

    def real_row(center: tuple[int, int], radius: float, rule: str) -> ManifestRow:
        extra = {**base_extra, "attack": "none", "center_y": str(center[0]), "center_x": str(center[1]),
                 "radius": f"{radius:.2f}" if radius > 0 else "", "center_rule": rule, "mask": ""}
        return ManifestRow(str(src), "real", row.modality, row.source, "", "", row.patient_id, row.split, extra)

    def fake_row(res: TamperResult, attack: str, rule: str) -> ManifestRow:
        stem = Path(row.path).with_suffix("").name
        rel = Path(set_name) / row.modality / attack / f"{stem}.png"
        mask_rel = rel.with_name(f"{stem}.mask.png")
        write_png(out_dir / rel, to_uint8(res.pixels))
        write_png(out_dir / mask_rel, to_uint8(res.mask.astype(np.float32)))
        extra = {**base_extra, "attack": attack, "center_y": str(res.center[0]), "center_x": str(res.center[1]),
                 "radius": f"{res.radius:.2f}", "center_rule": rule, "mask": mask_rel.as_posix(),
                 "tamper_method": res.method, "tamper_details": json.dumps(res.details, default=str)}
        return ManifestRow(rel.as_posix(), "fake", row.modality, row.source, attack, "tamper", row.patient_id, row.split, extra)

    if set_name == "true_malign":
        center, radius, kind = lesion_like_center(pixels, rng)
        return [real_row(center, radius, f"lesion_like:{kind}")]
    if set_name == "true_benign":
        return [real_row(random_foreground_center(pixels, rng), 0.0, "random_foreground")]
    if set_name == "fake_malign":
        res = inject_lesion(pixels, rng=rng)
        rows = [fake_row(res, "inject", "injection_site")]
        for r in lesion_radii:
            sized = inject_lesion(pixels, center=res.center, radius=float(r), rng=image_rng(f"{row.path}:r{r}", seed))
            rows.append(fake_row(sized, f"inject-r{r:g}", "injection_site"))
        return rows
    # fake_benign: the lesion-like blob (same rule as True-Malign) is removed
    center, radius, kind = lesion_like_center(pixels, rng)
    res = remove_region(pixels, center=center, radius=radius or None, rng=rng)
    rows = [fake_row(res, "remove", f"lesion_like:{kind}")]
    if repaint is not None:
        rp = repaint_region(repaint, pixels, res.mask, res.center, seed=int(_hash01("repaint:" + row.path, seed) * 2**31))
        rows.append(fake_row(rp, "repaint", f"lesion_like:{kind}"))
    return rows
