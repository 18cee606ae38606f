"""Score a manifest with a detector and report the MedForensics-style tables, plain and matched.

Views:
- ``plain``   — each image through the detector's own preprocessing only;
- ``matched`` — every image, real or fake, is first standardised to the model size and then put
  through one identical processing chain (:class:`~medforensics.data.processing.MatchedProcessing`,
  by default a 0.5× bicubic resize round trip and JPEG q=85), so differences in file history
  between the classes are overwritten and a detector cannot win on them;
- ``laundered`` — like ``matched`` with the lighter chain :data:`LAUNDERING` (0.875× bicubic resize
  round trip, then JPEG q=80), the processing an image picks up when it is re-saved: a detector
  whose score rests on file history loses it, one that sees generation traces should not.

Fakes whose anatomy has no real counterpart in their modality (see
:func:`medforensics.data.anatomy_matched`) are reported apart: every table has an
"anatomy-matched" row beside the "all fakes" row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import ImageDataset, Manifest, anatomy_matched
from ..data.processing import MatchedProcessing
from ..detectors.base import Detector
from ..detectors.components.progress import progress
from ..eval.tables import metric_table, per_generator_metrics, per_group_metrics
from ..io import UnreadableImageError, standardise
from .config import VIEWS

#: the laundered view's chain, applied to every image of both classes (after standardising)
LAUNDERING = MatchedProcessing(scale=0.875, jpeg_quality=80)


@dataclass
class ScoredSet:
    """Scores of the readable rows of a manifest (``rows[i]`` ↔ ``scores[i]``) and the failures."""

    rows: list
    labels: np.ndarray
    scores: np.ndarray
    errors: list[tuple[str, str]] = field(default_factory=list)


class ViewTransform:
    """Test-time transform of a view: standardise to the model size, the identical processing chain
    (matched and laundered views; ``chain`` overrides the view's own), then an optional robustness
    perturbation — on real and fake alike."""

    def __init__(self, size: int, fit: str, view: str = "matched", chain: MatchedProcessing | None = None,
                 perturbation: Callable[[np.ndarray], np.ndarray] | None = None):
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r} ({' | '.join(VIEWS)})")
        self.size, self.fit, self.view = size, fit, view
        self.chain = chain or (LAUNDERING if view == "laundered" else MatchedProcessing())
        self.perturbation = perturbation

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = standardise(pixels, self.size, fit=self.fit)
        if self.view in ("matched", "laundered"):
            out = self.chain(out)
        return out if self.perturbation is None else self.perturbation(out)


def score_manifest(
    detector: Detector,
    manifest: Manifest,
    *,
    view: str = "plain",
    matched: MatchedProcessing | None = None,
    perturbation: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 16,
    show_progress: bool = True,
    description: str | None = None,
) -> ScoredSet:
    """Score every row of ``manifest`` under a view (and a perturbation), in batches of ``batch_size``;
    unreadable rows are recorded in ``errors`` and skipped. The one scoring loop of the benchmark.

    The plain view without a perturbation is the detector's own preprocessing only (no transform).
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r} ({' | '.join(VIEWS)})")
    pre = detector.preprocessing
    transform = None
    if view != "plain" or perturbation is not None:
        transform = ViewTransform(pre.size, pre.fit, view, matched, perturbation)
    dataset = ImageDataset(manifest, pre, transform=transform, seed=0)
    rows, labels, scores, errors = [], [], [], []
    pending: list[tuple[Any, dict]] = []

    def flush() -> None:
        if pending:
            batch = torch.stack([item["image"] for _, item in pending])
            scores.extend(detector.score(batch).tolist())
            for row, item in pending:
                rows.append(row)
                labels.append(int(item["label"]))
            pending.clear()

    for i in progress(range(len(dataset)), description or f"scoring ({view})", enabled=show_progress):
        row = manifest[i]
        try:
            pending.append((row, dataset[i]))
        except UnreadableImageError as err:
            errors.append((row.path, err.reason))
            continue
        if len(pending) >= batch_size:
            flush()
    flush()
    return ScoredSet(rows, np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64), errors)


@dataclass
class EvaluationResult:
    """Every number of an evaluation, plus Markdown tables for people."""

    detector: str
    threshold: float
    views: dict[str, dict[str, Any]]
    markdown: dict[str, str]
    n_errors: int

    def to_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "threshold": self.threshold, "views": self.views,
                "markdown": self.markdown, "n_errors": self.n_errors}


def evaluate_detector(
    detector: Detector,
    test: Manifest,
    *,
    reference: Manifest | None = None,
    views: tuple[str, ...] = ("plain", "matched"),
    threshold: float | None = None,
    n_boot: int = 100,
    seed: int = 0,
    show_progress: bool = True,
) -> EvaluationResult:
    """Per-modality and per-generator metrics (bootstrap mean and 95% interval) for each view.

    ``reference`` is the manifest used to decide anatomy matching (default: ``test`` itself).
    """
    tau = detector.threshold if threshold is None else float(threshold)
    reference = reference or test
    results: dict[str, dict[str, Any]] = {}
    modality_rows: dict[str, dict[str, dict]] = {}
    generator_rows: dict[str, dict[str, dict]] = {}
    n_errors = 0
    for view in views:
        scored = score_manifest(detector, test, view=view, show_progress=show_progress)
        n_errors = max(n_errors, len(scored.errors))
        matched_mask = np.array([r.label == "real" or anatomy_matched(r, reference) for r in scored.rows], dtype=bool)
        view_result: dict[str, Any] = {"errors": scored.errors, "n": len(scored.rows)}
        for subset, keep in (("all fakes", np.ones(len(scored.rows), bool)), ("anatomy-matched", matched_mask)):
            rows = [r for r, k in zip(scored.rows, keep) if k]
            lab, sc = scored.labels[keep], scored.scores[keep]
            per_mod = per_group_metrics(
                lab, sc, [r.modality for r in rows], threshold=tau, bootstrap=True, n_iter=n_boot, seed=seed,
                balance_groups=[r.source for r in rows],
            )
            view_result[subset] = {"per_modality": per_mod}
            # table columns are the modalities; "Mean" averages them (the pooled "all" stays in the JSON)
            modality_rows[f"{detector.name} · {view} · {subset}"] = {k: v for k, v in per_mod.items() if k != "all"}
        per_gen = per_generator_metrics(
            scored.labels, scored.scores, [r.modality for r in scored.rows],
            [r.generator if r.label == "fake" else "" for r in scored.rows], threshold=tau, bootstrap=True,
            n_iter=n_boot, seed=seed,
        )
        view_result["per_generator"] = per_gen
        mismatched = {r.generator for r, ok in zip(scored.rows, matched_mask) if not ok}
        for gen, metrics in per_gen.items():
            generator_rows.setdefault(gen + (" †" if gen in mismatched else ""), {})[view] = metrics
        view_result["scores"] = [
            {"path": r.path, "label": r.label, "modality": r.modality, "generator": r.generator, "score": float(s)}
            for r, s in zip(scored.rows, scored.scores)
        ]
        results[view] = view_result
    markdown = {
        "per_modality": metric_table(modality_rows, estimate="mean").markdown,
        "per_modality_auc": metric_table(modality_rows, intervals="auc", estimate="mean").markdown,
        "per_generator": metric_table(generator_rows, mean=False, estimate="mean").markdown
        + "\n† anatomy-mismatched: no real image of the same anatomy in its modality.\n",
    }
    return EvaluationResult(detector.name, tau, results, markdown, n_errors)
