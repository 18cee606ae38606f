"""The Back-in-Time Diffusion evaluation protocol: Table 1, localisation and ablations.

Data (see :mod:`medforensics.synth.attacks`): the four attack sets of each modality, every image
reduced to the ``size``×``size`` patch centred on its (real, injected or removed) lesion centre —
the paper scores such regions of interest (CT 96×96, MRI 128×128). All detectors, BTD and the
baselines alike, see the same patches, train on patches of the same training reals, and are
compared on identical inputs.

Per attack set (column = scenario × modality × attack, e.g. ``injection·CT·inject``): the real
side of the scenario (TM or TB of that modality) against the fakes of that attack. Reported:

* **AUC and EER** from a class-balanced bootstrap (100 iterations; each iteration draws the same
  number of reals and fakes, and inside each class every source/scanner equally often; see
  :func:`medforensics.eval.bootstrap.bootstrap_metrics`): bootstrap mean and 95% percentile
  interval. Ranking metrics use the detectors' *raw* anomaly scores (their probabilities are a
  monotone map of them).
* **pixel AUC**: ``sklearn.metrics.roc_auc_score`` of the raw heat-map values against the tamper
  mask, over all pixels of the column's fake patches pooled.
* **d-ablation** (BTD's number of back-in-time steps, the paper's Figure 3) and **lesion-size
  ablation** (Fake-Malign re-injected with several radii at the same sites).

Outputs: CSV + JSON records and Markdown tables (``eval.tables``), plus PNG plots.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ..data.manifest import Manifest, ManifestRow, resolve_path
from ..detectors.components.progress import progress
from ..eval.bootstrap import bootstrap_metrics
from ..eval.tables import MetricTable, metric_table
from ..io import UnreadableImageError
from ..synth.attacks import ATTACK_SETS, image_rng, lesion_like_center, load_gray, random_foreground_center
from ..synth.tamper import foreground_mask

__all__ = [
    "BTDProtocolResult",
    "D_VALUES",
    "PatchSet",
    "ScoredPatches",
    "attack_columns",
    "crop_patch",
    "d_ablation",
    "detector_outputs",
    "evaluate_columns",
    "load_patches",
    "merge_results",
    "pixel_auc",
    "run_btd_protocol",
    "training_patches",
]

#: the paper's Figure 3 values of d
D_VALUES = (1, 2, 5, 10, 50, 100, 400)
TABLE_ATTACKS = ("inject", "remove", "repaint")
METRICS = ("auc", "eer", "acc", "ap")
_MOD_NAMES = {"ct": "CT", "mri": "MRI"}


# --------------------------------------------------------------------------- patches
def crop_patch(pixels: np.ndarray, center: tuple[int, int], size: int) -> np.ndarray:
    """``size``×``size`` window of H×W ``pixels`` centred on ``center`` = (y, x); zero-padded
    outside the image (the shared CT/MRI background is black)."""
    half, pad = size // 2, size // 2 + 1
    padded = np.pad(pixels, pad, mode="constant")
    y0, x0 = int(center[0]) - half + pad, int(center[1]) - half + pad
    return np.ascontiguousarray(padded[y0 : y0 + size, x0 : x0 + size])


@dataclass
class PatchSet:
    """Patches N×1×P×P (float32, [0, 1]) around each row's centre, masks N×P×P (bool) and labels."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    rows: list[ManifestRow]
    errors: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> np.ndarray:
        """A manifest column (standard or extra) as an object array aligned with the patches."""
        return np.asarray([r.get(name) for r in self.rows], dtype=object)

    def select(self, index: np.ndarray) -> "PatchSet":
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        return PatchSet(self.images[idx], self.masks[idx], self.labels[idx], [self.rows[int(i)] for i in idx], self.errors)


def load_patches(
    manifest: Manifest, size: int = 64, *, image_size: int = 256, show_progress: bool = True
) -> PatchSet:
    """Patches of every row of an attack-set manifest (``center_y``/``center_x`` columns, optional
    ``mask``); unreadable rows are recorded in ``errors`` and skipped."""
    images, masks, labels, rows, errors = [], [], [], [], []
    for row in progress(list(manifest), "loading patches", enabled=show_progress):
        path = row.resolve(manifest.root)
        try:
            center = (int(row.get("center_y")), int(row.get("center_x")))
        except ValueError:
            errors.append((str(path), "no center_y/center_x (not an attack-set manifest row)"))
            continue
        try:
            pixels = load_gray(path, row.modality, image_size)
            mask = np.zeros(pixels.shape, dtype=bool)
            if row.get("mask").strip():
                mask = load_gray(resolve_path(row.get("mask").strip(), manifest.root), row.modality, image_size) > 0.5
        except UnreadableImageError as err:
            errors.append((str(path), err.reason))
            continue
        images.append(crop_patch(pixels, center, size)[None])
        masks.append(crop_patch(mask.astype(np.float32), center, size) > 0.5)
        labels.append(row.y)
        rows.append(row)
    return PatchSet(
        np.asarray(images, dtype=np.float32).reshape(-1, 1, size, size),
        np.asarray(masks, dtype=bool).reshape(-1, size, size),
        np.asarray(labels, dtype=np.int64),
        rows,
        errors,
    )


def training_patches(
    manifest: Manifest,
    split: str = "train",
    *,
    size: int = 64,
    per_image: int = 3,
    image_size: int = 256,
    seed: int = 0,
    limit: int | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Real training/validation items for the detectors: ``per_image`` patches per real ``split``
    row — one centred on the lesion-like blob (the True-Malign rule), the rest on random
    foreground points (the True-Benign rule) — as ``{"image": 1×P×P, "label": 0, "mask", "modality"}``.
    ``limit`` keeps only the first rows (smoke runs)."""
    items: list[dict[str, Any]] = []
    rows = [r for r in manifest if r.label == "real" and r.split == split][:limit]
    for row in progress(rows, f"{split} patches", enabled=show_progress):
        try:
            pixels = load_gray(row.resolve(manifest.root), row.modality, image_size)
        except UnreadableImageError:
            continue
        rng = image_rng(f"train-patch:{row.path}", seed)
        fg = foreground_mask(pixels)
        centers = [lesion_like_center(pixels, rng, fg=fg)[0]]
        centers += [random_foreground_center(pixels, rng, fg=fg) for _ in range(per_image - 1)]
        for c in centers[:per_image]:
            items.append({
                "image": torch.from_numpy(crop_patch(pixels, c, size)[None]),
                "label": torch.tensor(0.0),
                "mask": torch.zeros(size, size),
                "modality": row.modality,
            })
    return items


# --------------------------------------------------------------------------- scoring
@dataclass
class ScoredPatches:
    """One detector's raw scores, probabilities (or None), raw heat-maps and timing on a PatchSet."""

    raw: np.ndarray
    probability: np.ndarray | None
    maps: np.ndarray | None
    seconds: float
    images_per_s: float


def detector_outputs(detector: Any, images: np.ndarray, *, maps: bool = True, batch_size: int = 32) -> ScoredPatches:
    """Raw scores (``raw_scores`` when the detector has it, else ``score``), probabilities
    (``probability(raw)`` when available) and raw maps (``residual_maps(normalise=False)`` /
    ``error_map`` / ``anomaly_map``), timing the scores alone (images/s)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    raw_fn: Callable[[torch.Tensor], np.ndarray] = getattr(detector, "raw_scores", None) or detector.score
    t0 = time.perf_counter()
    with torch.no_grad():
        raw = np.concatenate([np.asarray(raw_fn(b), dtype=np.float64) for b in x.split(batch_size)]) if len(x) else np.zeros(0)
    seconds = time.perf_counter() - t0
    prob = np.asarray(detector.probability(raw)) if hasattr(detector, "probability") else None
    out_maps = None
    if maps and len(x):
        with torch.no_grad():
            if hasattr(detector, "residual_maps"):
                parts = [detector.residual_maps(b, normalise=False) for b in x.split(batch_size)]
            elif hasattr(detector, "error_map"):
                parts = [detector.error_map(b) for b in x.split(batch_size)]
            else:
                parts = [detector.anomaly_map(b) for b in x.split(batch_size)]
        out_maps = None if any(p is None for p in parts) else np.concatenate([np.asarray(p) for p in parts])
    return ScoredPatches(raw, prob, out_maps, seconds, len(x) / max(seconds, 1e-9))


def pixel_auc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel-level ROC AUC of heat-map values against the tamper masks (pixels pooled); NaN when
    the masks hold one class only."""
    y = np.asarray(masks, dtype=bool).ravel()
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(maps, dtype=np.float64).ravel()))


def column_name(scenario: str, modality: str, attack: str) -> str:
    return f"{scenario}·{_MOD_NAMES.get(modality, modality.upper())}·{attack}"


def attack_columns(patches: PatchSet, attacks: Sequence[str] = TABLE_ATTACKS) -> dict[str, np.ndarray]:
    """Column name → indices of its reals (the scenario's real set of that modality) and its fakes."""
    sets, atk, mods = patches.column("attack_set"), patches.column("attack"), patches.column("modality")
    out: dict[str, np.ndarray] = {}
    for scenario in ("injection", "removal"):
        real_set = next(s for s, (sc, lab) in ATTACK_SETS.items() if sc == scenario and lab == "real")
        fake_set = next(s for s, (sc, lab) in ATTACK_SETS.items() if sc == scenario and lab == "fake")
        for modality in sorted(set(mods.tolist())):
            reals = np.flatnonzero((sets == real_set) & (mods == modality))
            for attack in attacks:
                fakes = np.flatnonzero((sets == fake_set) & (mods == modality) & (atk == attack))
                if len(reals) and len(fakes):
                    out[column_name(scenario, modality, attack)] = np.concatenate([reals, fakes])
    return out


def evaluate_columns(
    scored: Mapping[str, ScoredPatches],
    patches: PatchSet,
    columns: Mapping[str, np.ndarray],
    *,
    thresholds: Mapping[str, float] | None = None,
    n_boot: int = 100,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{detector: {column: metrics}}``: bootstrap AUC/EER (raw scores; groups = source), accuracy
    and AP at τ on probabilities when available, pixel AUC, and n_real / n_fake."""
    groups = patches.column("source").astype(str)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for det, s in scored.items():
        out[det] = {}
        for col, idx in columns.items():
            lab = patches.labels[idx]
            boot = bootstrap_metrics(lab, s.raw[idx], groups=groups[idx], n_iter=n_boot, seed=seed, metrics=("auc", "eer"))
            res: dict[str, Any] = dict(boot)
            if s.probability is not None and thresholds and det in thresholds:
                res.update(bootstrap_metrics(lab, s.probability[idx], groups=groups[idx], n_iter=n_boot, seed=seed,
                                             threshold=float(thresholds[det]), metrics=("acc", "ap")))
            fakes = idx[lab == 1]
            res["pixel_auc"] = pixel_auc(s.maps[fakes], patches.masks[fakes]) if s.maps is not None else float("nan")
            res["n_real"], res["n_fake"] = int((lab == 0).sum()), int((lab == 1).sum())
            out[det][col] = res
    return out


def d_ablation(
    detector: Any,
    patches: PatchSet,
    columns: Mapping[str, np.ndarray],
    d_values: Sequence[int] = D_VALUES,
    *,
    n_boot: int = 100,
    seed: int = 0,
    batch_size: int = 32,
    show_progress: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{f"d={d}": {column: metrics}}`` for BTD's ``raw_scores(images, d=d)`` over ``d_values``
    (only the patches used by ``columns`` are scored), with scoring seconds per d."""
    used = np.unique(np.concatenate(list(columns.values()))) if columns else np.zeros(0, np.int64)
    x = torch.from_numpy(patches.images[used])
    pos = {int(i): k for k, i in enumerate(used)}
    groups = patches.column("source").astype(str)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for d in progress(list(d_values), "d-ablation", enabled=show_progress):
        t0 = time.perf_counter()
        raw = np.concatenate([np.asarray(detector.raw_scores(b, d=int(d))) for b in x.split(batch_size)])
        sec = time.perf_counter() - t0
        row: dict[str, dict[str, Any]] = {}
        for col, idx in columns.items():
            sel = np.asarray([pos[int(i)] for i in idx])
            res = dict(bootstrap_metrics(patches.labels[idx], raw[sel], groups=groups[idx], n_iter=n_boot, seed=seed,
                                         metrics=("auc", "eer")))
            res["seconds"], res["n_real"], res["n_fake"] = round(sec, 2), int((patches.labels[idx] == 0).sum()), int(patches.labels[idx].sum())
            row[col] = res
        out[f"d={d}"] = row
    return out


def balanced_subset(columns: Mapping[str, np.ndarray], labels: np.ndarray, n_per_class: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Each column cut to at most ``n_per_class`` reals and fakes (seeded), e.g. for costly ablations."""
    rng = np.random.default_rng(seed)
    out = {}
    for col, idx in columns.items():
        parts = []
        for c in (0, 1):
            members = idx[labels[idx] == c]
            parts.append(np.sort(rng.choice(members, min(n_per_class, len(members)), replace=False)))
        out[col] = np.concatenate(parts)
    return out


# --------------------------------------------------------------------------- tables & outputs
def _pixel_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]], title: str) -> MetricTable:
    columns: list[str] = []
    for cols in results.values():
        columns += [c for c in cols if c not in columns]
    cells, records = [], []
    for det, cols in results.items():
        line = [det]
        for c in columns:
            v = cols.get(c, {}).get("pixel_auc", float("nan"))
            line.append(f"{v:.3f}" if math.isfinite(v) else "-")
            records.append({"detector": det, "column": c, "pixel_auc": v})
        cells.append(line)
    return MetricTable(["Detector", *columns], cells, records, title)


@dataclass
class BTDProtocolResult:
    """All numbers of a protocol run plus the rendered tables."""

    table1: dict[str, dict[str, dict[str, Any]]]
    lesion_size: dict[str, dict[str, dict[str, Any]]]
    d_ablation: dict[str, dict[str, dict[str, Any]]]
    timing: dict[str, dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)

    def tables(self) -> dict[str, MetricTable]:
        """Markdown-ready tables: Table 1 (AUC, EER), pixel AUC, lesion size, d-ablation."""
        out = {
            "table1_auc": metric_table(self.table1, intervals="auc", estimate="mean", title="Table 1 — AUC (bootstrap mean [95% CI])"),
            "table1_eer": metric_table(self.table1, intervals="eer", estimate="mean", title="Table 1 — EER (bootstrap mean [95% CI])"),
            "pixel_auc": _pixel_table(self.table1, "Localisation — pixel AUC of the heat-map vs the tamper mask"),
        }
        if self.lesion_size:
            out["lesion_size_auc"] = metric_table(self.lesion_size, intervals="auc", estimate="mean", title="Lesion-size ablation — AUC")
        if self.d_ablation:
            out["d_ablation_auc"] = metric_table(self.d_ablation, intervals="auc", estimate="mean", title="BTD d-ablation — AUC")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"info": self.info, "timing": self.timing, "table1": self.table1, "lesion_size": self.lesion_size,
                "d_ablation": self.d_ablation}

    def markdown(self) -> str:
        parts = []
        for t in self.tables().values():
            parts += [f"### {t.title}", "", t.markdown]
        if self.timing:
            parts += ["### Training time and scoring speed", "", "| Detector | train s | score images/s |", "|---|---:|---:|"]
            for det, tm in self.timing.items():
                parts.append(f"| {det} | {tm.get('train_seconds', float('nan')):.1f} | {tm.get('images_per_s', float('nan')):.1f} |")
            parts.append("")
        return "\n".join(parts)

    def write(self, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
        """``btd_protocol.json``, one CSV per table, ``btd_protocol.md`` (and PNG plots) in ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = {"json": out_dir / "btd_protocol.json", "markdown": out_dir / "btd_protocol.md"}
        written["json"].write_text(json.dumps(_clean(self.to_dict()), indent=2))
        written["markdown"].write_text(self.markdown())
        for name, table in self.tables().items():
            if name == "table1_eer":  # the same records as table1_auc (AUC, EER and intervals in each row)
                continue
            stem = "table1" if name == "table1_auc" else name
            written[stem] = table.to_csv(out_dir / f"{stem}.csv")
        if plots:
            written.update(self.write_plots(out_dir))
        return written

    def write_plots(self, out_dir: str | Path) -> dict[str, Path]:
        """PNG plots of the d-ablation and of the lesion-size ablation (one per detector)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        out: dict[str, Path] = {}
        if self.d_ablation:
            ds = sorted(self.d_ablation, key=lambda k: int(k.split("=")[1]))
            series = {col: [self.d_ablation[k][col]["auc"]["mean"] for k in ds] for col in self.d_ablation[ds[0]]}
            out["d_ablation_png"] = _line_plot([int(k.split("=")[1]) for k in ds], series, out_dir / "d_ablation.png",
                                               "d (back-in-time steps)", "AUC", "BTD: AUC vs d", log_x=True)
        if self.lesion_size:
            for det, cols in self.lesion_size.items():
                radii = sorted({float(c.rsplit("-r", 1)[1]) for c in cols})
                series: dict[str, list[float]] = {}
                for c, m in cols.items():
                    key = c.rsplit("·", 1)[0]
                    series.setdefault(key, [float("nan")] * len(radii))[radii.index(float(c.rsplit("-r", 1)[1]))] = m["auc"]["mean"]
                out[f"lesion_size_{det}_png"] = _line_plot(radii, series, out_dir / f"lesion_size_{det}.png",
                                                           "injected lesion radius (px at 256²)", "AUC", f"{det}: AUC vs lesion size")
        return out


def merge_results(results: Mapping[str, BTDProtocolResult]) -> BTDProtocolResult:
    """One result from several runs on disjoint columns (e.g. one per modality, each with its own
    trained detectors): tables are merged by detector, timing keys become ``"<detector> (<label>)"``."""
    merged = BTDProtocolResult({}, {}, {}, {}, {"runs": {}})
    for label, res in results.items():
        for target, source in ((merged.table1, res.table1), (merged.lesion_size, res.lesion_size), (merged.d_ablation, res.d_ablation)):
            for key, cols in source.items():
                overlap = set(target.get(key, {})) & set(cols)
                if overlap:
                    raise ValueError(f"runs overlap in columns {sorted(overlap)} of {key!r}")
                target.setdefault(key, {}).update(cols)
        for det, tm in res.timing.items():
            merged.timing[f"{det} ({label})"] = tm
        merged.info["runs"][label] = res.info
    return merged


def _line_plot(x: Sequence[float], series: Mapping[str, Sequence[float]], path: Path, xlabel: str, ylabel: str,
               title: str, log_x: bool = False) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", lw=1.5, label=name)
    if log_x:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.axhline(0.5, ls="--", c="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path, format="png")
    return path


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def run_btd_protocol(
    detectors: Mapping[str, Any],
    patches: PatchSet,
    *,
    n_boot: int = 100,
    seed: int = 0,
    table_attacks: Sequence[str] = TABLE_ATTACKS,
    size_attacks: Sequence[str] | None = None,
    ablation_detector: str | None = "btd",
    d_values: Sequence[int] = D_VALUES,
    ablation_per_class: int | None = None,
    train_seconds: Mapping[str, float] | None = None,
    show_progress: bool = True,
) -> BTDProtocolResult:
    """Score ``patches`` with every detector and compute Table 1, pixel AUC, the lesion-size
    ablation (``size_attacks``, default every ``inject-r*`` attack present) and BTD's d-ablation
    (on ``ablation_detector``, injection and removal columns of the classical attacks, optionally
    cut to ``ablation_per_class`` patches per class)."""
    scored = {}
    for name, det in detectors.items():
        if show_progress:
            print(f"scoring {len(patches)} patches with {name} ...", flush=True)
        scored[name] = detector_outputs(det, patches.images)
    thresholds = {n: float(d.threshold) for n, d in detectors.items()}
    cols = attack_columns(patches, table_attacks)
    table1 = evaluate_columns(scored, patches, cols, thresholds=thresholds, n_boot=n_boot, seed=seed)
    present = sorted(set(patches.column("attack").tolist()))
    size_attacks = [a for a in present if a.startswith("inject-r")] if size_attacks is None else list(size_attacks)
    size_attacks = sorted(size_attacks, key=lambda a: float(a.rsplit("-r", 1)[1]))
    lesion = evaluate_columns(scored, patches, attack_columns(patches, size_attacks), n_boot=n_boot, seed=seed) if size_attacks else {}
    ablation = {}
    if ablation_detector and ablation_detector in detectors and d_values:
        abl_cols = attack_columns(patches, ("inject", "remove"))
        if ablation_per_class:
            abl_cols = balanced_subset(abl_cols, patches.labels, ablation_per_class, seed)
        ablation = d_ablation(detectors[ablation_detector], patches, abl_cols, d_values, n_boot=n_boot, seed=seed,
                              show_progress=show_progress)
    timing = {n: {"score_seconds": round(s.seconds, 2), "images_per_s": round(s.images_per_s, 1),
                  "n_images": int(len(patches)), "train_seconds": float((train_seconds or {}).get(n, float("nan")))}
              for n, s in scored.items()}
    info = {"n_patches": len(patches), "patch_size": int(patches.images.shape[-1]) if len(patches) else None,
            "n_boot": n_boot, "seed": seed, "columns": {c: int(len(i)) for c, i in cols.items()},
            "errors": patches.errors, "thresholds": thresholds}
    return BTDProtocolResult(table1, lesion, ablation, timing, info)
