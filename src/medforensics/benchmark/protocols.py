"""The benchmark protocols: in-distribution, cross-generator (LOGO, LOFO, factory → published),
few-shot, robustness and ablations — each in the plain and the processing-matched view.

Every protocol is a set of *units* (one detector × one held-out part): a unit trains (or reuses
from the cache) a detector on a train subset of the benchmark, scores a test subset under each
view, and returns JSON-able metrics with the scores. Units run through a *context* (the
:class:`~medforensics.benchmark.runner.BenchmarkRunner`) which caches trained models by config
hash and skips units that already finished (resumable runs).

Rows of a built benchmark carry a ``role`` (see :mod:`.build`): ``real`` and ``factory`` rows
form the in-distribution benchmark; ``published`` fakes (imported from elsewhere, all in test)
and their history-matched reals (``matched_real``) are only used by the factory → published
protocol. A manifest without roles is read as reals and factory fakes.

Views (:mod:`.protocol`): ``plain`` — each image through the detector's own preprocessing;
``matched`` — every image, real or fake, through one identical processing chain first
(``MatchedProcessing``: 0.5× bicubic round trip, JPEG q85). Robustness perturbations are applied
on top of the view, to real and fake alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from ..data import ImageDataset, Manifest, ManifestRow, anatomy_matched
from ..data.processing import (
    ROBUSTNESS_PERTURBATIONS,
    Perturbation,
    content_seed,
    gaussian_blur,
    gaussian_noise,
    quantise,
    resize_roundtrip,
)
from ..detectors.base import Detector
from ..eval.tables import per_generator_metrics, per_group_metrics
from .config import DetectorSpec, RunConfig
from .protocol import ScoredSet, score_manifest

# =============================================================================== perturbations


def dicom_j2k_roundtrip(pixels: np.ndarray, ratio: float) -> np.ndarray:
    """Lossy JPEG 2000 round trip as a DICOM would store it: 16-bit MONOCHROME2 pixel data
    compressed with pydicom + pylibjpeg-openjpeg at compression ratio ``ratio`` (colour images:
    each channel as its own frame), decoded back. Falls back to Pillow's JPEG 2000 plugin when
    pydicom's encoder is unavailable."""
    img = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    chans = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[2])]
    out = [_j2k_channel(c, ratio) for c in chans]
    return out[0] if img.ndim == 2 else np.stack(out, axis=2)


def _j2k_channel(channel: np.ndarray, ratio: float) -> np.ndarray:
    arr = np.rint(channel * 65535.0).astype(np.uint16)
    try:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import JPEG2000, ExplicitVRLittleEndian

        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = arr.tobytes()
        ds.compress(JPEG2000, arr, j2k_cr=[float(ratio)])
        dec = np.asarray(ds.pixel_array, dtype=np.float32)
    except (ImportError, RuntimeError, NotImplementedError, ValueError):  # no encoder plugin
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[float(ratio)])
        buf.seek(0)
        with Image.open(buf) as im:
            dec = np.asarray(im, dtype=np.float32)
    return np.clip(dec / 65535.0, 0.0, 1.0).astype(np.float32)


def _det(fn: Callable[[np.ndarray], np.ndarray]) -> Perturbation:
    def f(pixels: np.ndarray, rng: Any = None) -> np.ndarray:
        return fn(pixels)

    return f


def _noise(sigma: float) -> Perturbation:
    def f(pixels: np.ndarray, rng: Any = None) -> np.ndarray:
        return gaussian_noise(pixels, sigma, rng if rng is not None else content_seed(pixels))

    return f


#: every named perturbation: the foundation's ROBUSTNESS_PERTURBATIONS plus blur 1.5, resize 0.25,
#: noise 0.05, coarser quantisation (6 and 4 bits: the benchmark's PNGs are 8-bit already, so
#: ``quant8`` — the 16→8-bit step — is the identity on them) and DICOM JPEG 2000 at ratios 10–50
PERTURBATIONS: dict[str, Perturbation] = {
    **ROBUSTNESS_PERTURBATIONS,
    "blur1.5": _det(lambda p: gaussian_blur(p, 1.5)),
    "resize0.25": _det(lambda p: resize_roundtrip(p, scale=0.25)),
    "noise0.05": _noise(0.05),
    "quant6": _det(lambda p: quantise(p, 6)),
    "quant4": _det(lambda p: quantise(p, 4)),
    "j2k10": _det(lambda p: dicom_j2k_roundtrip(p, 10)),
    "j2k20": _det(lambda p: dicom_j2k_roundtrip(p, 20)),
    "j2k50": _det(lambda p: dicom_j2k_roundtrip(p, 50)),
}

#: degradation axes: perturbation family → (label of the clean point, [(name, severity)...]);
#: severity grows to the right (JPEG quality and scale are plotted reversed)
AXES: dict[str, tuple[str, list[tuple[str, float]]]] = {
    "jpeg": ("quality", [("jpeg95", 95), ("jpeg75", 75), ("jpeg50", 50), ("jpeg30", 30)]),
    "blur": ("σ", [("blur0.5", 0.5), ("blur1", 1.0), ("blur1.5", 1.5), ("blur2", 2.0)]),
    "resize": ("scale", [("resize0.75", 0.75), ("resize0.5", 0.5), ("resize0.25", 0.25)]),
    "noise": ("σ", [("noise0.01", 0.01), ("noise0.03", 0.03), ("noise0.05", 0.05)]),
    "quant": ("bits", [("quant8", 8), ("quant6", 6), ("quant4", 4)]),
    "j2k": ("ratio", [("j2k10", 10), ("j2k20", 20), ("j2k50", 50)]),
}
CLEAN_SEVERITY = {"jpeg": 100, "blur": 0.0, "resize": 1.0, "noise": 0.0, "quant": 16, "j2k": 1}


def perturbation_axis(name: str) -> tuple[str, float] | None:
    """(family, severity) of a named perturbation, None if it is on no axis."""
    for fam, (_, points) in AXES.items():
        for n, sev in points:
            if n == name:
                return fam, float(sev)
    return None


def check_perturbations(names: list[str]) -> None:
    bad = [n for n in names if n not in PERTURBATIONS]
    if bad:
        raise ValueError(f"unknown perturbation(s) {bad}; known: {', '.join(PERTURBATIONS)}")


def score_rows(
    detector: Detector,
    manifest: Manifest,
    *,
    view: str = "plain",
    perturbation: str | None = None,
    batch_size: int = 16,
    show_progress: bool = False,
) -> ScoredSet:
    """Score ``manifest`` under a view and a named perturbation (:data:`PERTURBATIONS`) with
    :func:`medforensics.benchmark.protocol.score_manifest`; unreadable rows go to ``errors``."""
    if perturbation is None:
        return score_manifest(detector, manifest, view=view, batch_size=batch_size, show_progress=show_progress)
    check_perturbations([perturbation])
    return score_manifest(detector, manifest, view=view, perturbation=PERTURBATIONS[perturbation],
                          batch_size=batch_size, show_progress=show_progress,
                          description=f"scoring ({view}, {perturbation})")


# =============================================================================== benchmark parts


def role_of(row: ManifestRow) -> str:
    """``real`` | ``factory`` | ``published`` | ``matched_real`` (rows without a role: by label)."""
    role = row.extra.get("role", "").strip()
    return role or ("factory" if row.label == "fake" else "real")


def in_distribution_rows(m: Manifest, split: str) -> Manifest:
    return m.filter(lambda r: r.split == split and role_of(r) in ("real", "factory"))


def factory_generators(m: Manifest) -> dict[str, dict[str, str]]:
    """Factory generator → {family, modality} (from the test split, where every generator is held out)."""
    out: dict[str, dict[str, str]] = {}
    for r in m:
        if role_of(r) == "factory":
            out.setdefault(r.generator, {"family": r.family or "unknown", "modality": r.modality})
    return dict(sorted(out.items()))


def rank_key(seed: int, text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")


# =============================================================================== metrics


def _boot(lab: np.ndarray, sc: np.ndarray, groups: list[str], tau: float, n_boot: int, seed: int) -> dict[str, Any]:
    res = per_group_metrics(lab, sc, ["x"] * len(lab), threshold=tau, bootstrap=True, n_iter=n_boot, seed=seed,
                            balance_groups=groups)["all"]
    res["n_real"], res["n_fake"] = int((lab == 0).sum()), int((lab == 1).sum())
    return res


def scored_metrics(scored: ScoredSet, tau: float, n_boot: int, seed: int, *, by_generator: bool = True) -> dict[str, Any]:
    """Overall, per-modality and (optionally) per-generator bootstrap metrics of a scored set."""
    rows, lab, sc = scored.rows, scored.labels, scored.scores
    out: dict[str, Any] = {"n": len(rows), "errors": [list(e) for e in scored.errors]}
    if len(rows) == 0:
        return out
    src = [r.source or r.generator for r in rows]
    per_mod = per_group_metrics(lab, sc, [r.modality for r in rows], threshold=tau, bootstrap=True, n_iter=n_boot,
                                seed=seed, balance_groups=src)
    for name, m in per_mod.items():
        sel = np.ones(len(rows), bool) if name == "all" else np.array([r.modality == name for r in rows])
        m["n_real"], m["n_fake"] = int((lab[sel] == 0).sum()), int((lab[sel] == 1).sum())
    out["all"] = per_mod.pop("all")
    out["per_modality"] = per_mod
    if by_generator:
        gens = per_generator_metrics(lab, sc, [r.modality for r in rows],
                                     [r.generator if r.label == "fake" else "" for r in rows], threshold=tau,
                                     bootstrap=True, n_iter=n_boot, seed=seed)
        gens.pop("all", None)
        for g, m in gens.items():
            fake = [r for r in rows if r.label == "fake" and r.generator == g]
            mods = {r.modality for r in fake}
            m["n_fake"] = len(fake)
            m["n_real"] = sum(r.label == "real" and r.modality in mods for r in rows)
        out["per_generator"] = gens
    out["scores"] = [[r.path, int(y), round(float(s), 6)] for r, y, s in zip(rows, lab, sc)]
    return out


# =============================================================================== context


class Context(Protocol):
    """What a protocol needs from the runner."""

    config: RunConfig
    benchmark: Manifest

    def trained(self, spec: DetectorSpec, train: Manifest) -> tuple[Detector, str]: ...

    def load_model(self, model_id: str) -> Detector: ...

    def ablations(self) -> list[DetectorSpec]: ...

    def unit(self, unit_id: str, key: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]: ...

    def score(self, det: Detector, manifest: Manifest, view: str, perturbation: str | None = None) -> ScoredSet: ...


def _views(ctx: Context, det: Detector, test: Manifest, *, by_generator: bool = True,
           perturbation: str | None = None) -> dict[str, Any]:
    c = ctx.config
    return {view: scored_metrics(ctx.score(det, test, view, perturbation), det.threshold, c.n_boot, c.seed,
                                 by_generator=by_generator) for view in c.views}


def _model_info(det: Detector, model_id: str) -> dict[str, Any]:
    return {"model": model_id, "threshold": det.threshold, "calibration": {k: v for k, v in det.calibration.items()
                                                                          if k != "real_val_scores"}}


# =============================================================================== protocols


def run_in_distribution(ctx: Context, spec: DetectorSpec, protocol: str = "in_distribution") -> dict[str, Any]:
    """Train on the train split (reals + factory fakes), test on the test split: Table 2 layout."""
    m = ctx.benchmark
    train, test = in_distribution_rows(m, "train"), in_distribution_rows(m, "test")

    def work() -> dict[str, Any]:
        det, mid = ctx.trained(spec, train)
        return {**_model_info(det, mid), "views": _views(ctx, det, test)}

    return ctx.unit(f"{protocol}/{spec.label}", {"protocol": protocol, "detector": spec.key(), "test": len(test)}, work)


def logo_holdouts(ctx: Context) -> list[str]:
    gens = list(factory_generators(ctx.benchmark))
    wanted = ctx.config.protocols.logo_holdouts
    if wanted is None:
        return gens
    missing = [g for g in wanted if g not in gens]
    if missing:
        raise ValueError(f"logo_holdouts {missing} are not factory generators of the benchmark ({', '.join(gens)})")
    return list(wanted)


def _without(m: Manifest, drop: Callable[[ManifestRow], bool]) -> Manifest:
    return m.filter(lambda r: not (r.label == "fake" and drop(r)))


def _held_out_test(m: Manifest, keep_fake: Callable[[ManifestRow], bool]) -> Manifest:
    test = in_distribution_rows(m, "test")
    fakes = [r for r in test if r.label == "fake" and keep_fake(r)]
    mods = {r.modality for r in fakes}
    return test.filter(lambda r: (r.label == "real" and r.modality in mods) or (r.label == "fake" and keep_fake(r)))


def run_logo(ctx: Context, spec: DetectorSpec) -> list[dict[str, Any]]:
    """Leave-one-generator-out: train without generator g's fakes, test on g's fakes + reals of its modality."""
    m = ctx.benchmark
    train_all = in_distribution_rows(m, "train")
    out = []
    for g in logo_holdouts(ctx):
        train = _without(train_all, lambda r, g=g: r.generator == g)
        test = _held_out_test(m, lambda r, g=g: r.generator == g)

        def work(train: Manifest = train, test: Manifest = test) -> dict[str, Any]:
            det, mid = ctx.trained(spec, train)
            return {**_model_info(det, mid), "views": _views(ctx, det, test, by_generator=False)}

        out.append(ctx.unit(f"logo/{spec.label}/{g}", {"protocol": "logo", "detector": spec.key(), "holdout": g,
                                                       "test": len(test)}, work))
    return out


def run_lofo(ctx: Context, spec: DetectorSpec) -> list[dict[str, Any]]:
    """Leave-one-family-out: train without family f's fakes, test on f's fakes + reals of their modalities."""
    m = ctx.benchmark
    train_all = in_distribution_rows(m, "train")
    families = sorted({v["family"] for v in factory_generators(m).values()})
    out = []
    if len(families) < 2:
        return out
    for fam in families:
        train = _without(train_all, lambda r, f=fam: (r.family or "unknown") == f)
        test = _held_out_test(m, lambda r, f=fam: (r.family or "unknown") == f)

        def work(train: Manifest = train, test: Manifest = test) -> dict[str, Any]:
            det, mid = ctx.trained(spec, train)
            return {**_model_info(det, mid), "views": _views(ctx, det, test)}

        out.append(ctx.unit(f"lofo/{spec.label}/{fam}", {"protocol": "lofo", "detector": spec.key(), "holdout": fam,
                                                        "test": len(test)}, work))
    return out


def run_published(ctx: Context, spec: DetectorSpec) -> dict[str, Any] | None:
    """Train on factory fakes (the in-distribution model), test per published generator against
    (a) the plain test reals of its modality and (b) the reals given its file history."""
    m = ctx.benchmark
    published = m.filter(lambda r: role_of(r) == "published" and r.split == "test")
    if not len(published):
        return None
    mods = {r.modality for r in published}
    reals = m.filter(lambda r: role_of(r) == "real" and r.split == "test" and r.modality in mods)
    matched = m.filter(lambda r: role_of(r) == "matched_real" and r.split == "test")
    sets = {"plain reals": Manifest.concat([reals, published])}
    if len(matched):
        sets["history-matched reals"] = Manifest.concat([matched, published])
    train = in_distribution_rows(m, "train")

    def work() -> dict[str, Any]:
        det, mid = ctx.trained(spec, train)
        res: dict[str, Any] = {**_model_info(det, mid), "test_sets": {}}
        mismatched = sorted({r.generator for r in published if r.extra.get("anatomy_matched", "") == "false"
                             or not anatomy_matched(r, m)})
        for name, test in sets.items():
            res["test_sets"][name] = _views(ctx, det, test)
        res["anatomy_mismatched"] = mismatched
        return res

    return ctx.unit(f"published/{spec.label}", {"protocol": "published", "detector": spec.key(),
                                                "sets": {k: len(v) for k, v in sets.items()}}, work)


def run_few_shot(ctx: Context, spec: DetectorSpec) -> list[dict[str, Any]] | None:
    """For detectors with a retrieval bank: the LOGO model for g, plus k of g's train fakes
    added to the bank, tested on g's held-out test set — metrics vs k."""
    from ..detectors import create_detector

    probe = create_detector(spec.detector, seed=spec.seed, **spec.config)
    if not hasattr(probe, "add_to_bank"):
        return None
    m = ctx.benchmark
    p = ctx.config.protocols
    holdouts = p.few_shot_holdouts if p.few_shot_holdouts is not None else logo_holdouts(ctx)
    train_all = in_distribution_rows(m, "train")
    out = []
    for g in holdouts:
        train = _without(train_all, lambda r, g=g: r.generator == g)
        test = _held_out_test(m, lambda r, g=g: r.generator == g)
        support = sorted((r for r in train_all if r.label == "fake" and r.generator == g),
                         key=lambda r: rank_key(ctx.config.seed, r.path))

        def work(train: Manifest = train, test: Manifest = test, support: list = support, g: str = g) -> dict[str, Any]:
            _, mid = ctx.trained(spec, train)
            curve = {}
            for k in p.few_shot_ks:
                det = ctx.load_model(mid)
                k_used = min(int(k), len(support))
                if k_used > 0:
                    ds = ImageDataset(train_all.with_rows(support[:k_used]), det.preprocessing, seed=0)
                    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
                    det.add_to_bank(images, np.ones(k_used, dtype=np.int64), generator=g)
                curve[str(k)] = {"k_used": k_used, "views": _views(ctx, det, test, by_generator=False)}
            return {"model": mid, "curve": curve, "n_support_available": len(support)}

        out.append(ctx.unit(f"few_shot/{spec.label}/{g}", {"protocol": "few_shot", "detector": spec.key(),
                                                           "holdout": g, "ks": list(p.few_shot_ks)}, work))
    return out


def run_robustness(ctx: Context, spec: DetectorSpec) -> list[dict[str, Any]]:
    """The in-distribution model on the test split with each perturbation applied to every image."""
    m = ctx.benchmark
    check_perturbations(ctx.config.protocols.perturbations)
    train, test = in_distribution_rows(m, "train"), in_distribution_rows(m, "test")
    out = []
    for name in ctx.config.protocols.perturbations:

        def work(name: str = name) -> dict[str, Any]:
            det, mid = ctx.trained(spec, train)
            return {**_model_info(det, mid), "perturbation": name, "axis": perturbation_axis(name),
                    "views": _views(ctx, det, test, by_generator=False, perturbation=name)}

        out.append(ctx.unit(f"robustness/{spec.label}/{name}", {"protocol": "robustness", "detector": spec.key(),
                                                                "perturbation": name, "test": len(test)}, work))
    return out


def run_ablations(ctx: Context) -> list[dict[str, Any]]:
    """Each configured ablation variant through the in-distribution protocol."""
    return [run_in_distribution(ctx, spec, protocol="ablations") for spec in ctx.ablations()]


PROTOCOL_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "in_distribution": run_in_distribution,
    "logo": run_logo,
    "lofo": run_lofo,
    "published": run_published,
    "few_shot": run_few_shot,
    "robustness": run_robustness,
}
