"""ROC / PR curves and score histograms as PNG files.

Uses matplotlib's object API with the Agg canvas directly (no pyplot, no global backend switch),
so it is headless and safe to call from worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from .metrics import validate_inputs

__all__ = ["plot_pr", "plot_roc", "plot_score_histogram"]

Curves = Mapping[str, tuple[ArrayLike, ArrayLike]]


def _figure(size: tuple[float, float] = (5.0, 4.5)) -> Figure:
    fig = Figure(figsize=size, dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _two_class(curves: Curves):
    """Yield ``(name, labels, scores)`` for the curves that have both classes."""
    for name, (labels, scores) in curves.items():
        lab, sc = validate_inputs(labels, scores)
        if lab.min() != lab.max():
            yield name, lab, sc


def plot_roc(curves: Curves, path: str | Path, *, title: str = "ROC", log_fpr: bool = False) -> Path:
    """ROC curves of ``{name: (labels, scores)}`` (legend shows AUC) to a PNG at ``path``.

    Score sets with a single class have no ROC and are left out.
    """
    fig = _figure()
    ax = fig.add_subplot()
    for name, lab, sc in _two_class(curves):
        fpr, tpr, _ = roc_curve(lab, sc)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(lab, sc):.3f})")
    if log_fpr:
        ax.set_xscale("log")
        ax.set_xlim(1e-3, 1)
    else:
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate (real flagged fake)")
    ax.set_ylabel("True positive rate (fake detected)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pr(curves: Curves, path: str | Path, *, title: str = "Precision-recall") -> Path:
    """Precision-recall curves (fake = positive; legend shows AP) to a PNG at ``path``."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, lab, sc in _two_class(curves):
        precision, recall, _ = precision_recall_curve(lab, sc)
        ax.plot(recall, precision, lw=1.5, label=f"{name} (AP {average_precision_score(lab, sc):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_score_histogram(
    labels: ArrayLike,
    scores: ArrayLike,
    path: str | Path,
    *,
    threshold: float | None = None,
    bins: int = 40,
    title: str = "Score distribution",
) -> Path:
    """Histogram of real vs fake scores with an optional vertical threshold line."""
    lab, sc = validate_inputs(labels, scores)
    lo, hi = min(0.0, float(sc.min())), max(1.0, float(sc.max()))
    edges = np.linspace(lo, hi, bins + 1)
    fig = _figure((6.0, 3.5))
    ax = fig.add_subplot()
    for cls, name, colour in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        part = sc[lab == cls]
        if part.size:
            ax.hist(part, bins=edges, alpha=0.55, color=colour, label=f"{name} (n={part.size})")
    if threshold is not None:
        ax.axvline(float(threshold), color="black", ls="--", lw=1.2, label=f"threshold {float(threshold):.3g}")
    ax.set_xlabel("Score (probability of fake)")
    ax.set_ylabel("Count")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)
