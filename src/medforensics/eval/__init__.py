"""Evaluation: metrics, bootstrap intervals, threshold calibration, tables, plots and reports.

Works on plain arrays (label 0 = real, 1 = fake; score = probability of fake) and on
:class:`~medforensics.results.ScanResult` records; it knows nothing about detectors.
Plot and report functions import matplotlib/jinja2 lazily, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bootstrap import balanced_sample_indices, bootstrap_metrics
from .calibration import calibrate, threshold_at_eer, threshold_at_fpr, verdicts
from .metrics import compute_metrics, equal_error_rate, tpr_at_fpr, validate_inputs
from .tables import MetricTable, metric_table, per_generator_metrics, per_group_metrics, render_rich_table

if TYPE_CHECKING:
    from .plots import plot_pr, plot_roc, plot_score_histogram
    from .report import overlay_heatmap, write_eval_report, write_scan_report

__all__ = [
    "MetricTable",
    "balanced_sample_indices",
    "bootstrap_metrics",
    "calibrate",
    "compute_metrics",
    "equal_error_rate",
    "metric_table",
    "overlay_heatmap",
    "per_generator_metrics",
    "per_group_metrics",
    "plot_pr",
    "plot_roc",
    "plot_score_histogram",
    "render_rich_table",
    "threshold_at_eer",
    "threshold_at_fpr",
    "tpr_at_fpr",
    "validate_inputs",
    "verdicts",
    "write_eval_report",
    "write_scan_report",
]

_LAZY = {
    "plot_pr": "plots",
    "plot_roc": "plots",
    "plot_score_histogram": "plots",
    "overlay_heatmap": "report",
    "write_eval_report": "report",
    "write_scan_report": "report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
