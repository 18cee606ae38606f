"""Paper-style result tables (detector x modality/generator) and per-group evaluation.

Cells follow the MedForensics paper layout, ``"Acc/AP"`` in percent with one decimal
(``"97.3/99.1"``), with a ``Mean`` column averaging each detector's columns; with bootstrap
results cells may instead show an interval, ``"AUC 0.93 [0.90, 0.96]"``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from .bootstrap import DEFAULT_METRICS, bootstrap_metrics
from .metrics import DEFAULT_FPR_TARGETS, compute_metrics, validate_inputs

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "MetricTable",
    "metric_table",
    "per_generator_metrics",
    "per_group_metrics",
    "render_rich_table",
]

MEAN = "Mean"
ALL = "all"
_NOT_AVERAGED = {"n_real", "n_fake", "threshold"}
Rows = Mapping[str, Mapping[str, Mapping[str, Any]]]


@dataclass
class MetricTable:
    """A rendered table: ``header``/``cells`` (strings), ``records`` (long format), ``markdown``."""

    header: list[str]
    cells: list[list[str]]
    records: list[dict[str, Any]] = field(default_factory=list)
    title: str | None = None

    @property
    def markdown(self) -> str:
        """GitHub-flavoured Markdown pipe table."""

        def line(values: Iterable[str]) -> str:
            return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

        align = ["---"] + ["---:"] * (len(self.header) - 1)
        out = [line(self.header), "|" + "|".join(align) + "|", *(line(r) for r in self.cells)]
        return "\n".join(out) + "\n"

    def to_csv(self, path: str | Path) -> Path:
        """Write ``records`` as CSV (union of keys as columns)."""
        path = Path(path)
        keys: list[str] = []
        for rec in self.records:
            keys += [k for k in rec if k not in keys]
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.records)
        return path

    def to_json(self, path: str | Path) -> Path:
        """Write ``records`` as JSON (NaN becomes ``null``)."""
        path = Path(path)
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in self.records]
        path.write_text(json.dumps(clean, indent=2), encoding="utf-8")
        return path


def _stat(value: Any, estimate: str) -> tuple[float, float, float]:
    """(value, lo, hi) from a plain number or a bootstrap stats dict."""
    if isinstance(value, Mapping):
        v = value.get(estimate, value.get("point", math.nan))
        return float(v), float(value.get("lo", math.nan)), float(value.get("hi", math.nan))
    try:
        return float(value), math.nan, math.nan
    except (TypeError, ValueError):
        return math.nan, math.nan, math.nan


def _flatten(metrics: Mapping[str, Any], estimate: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out[key], out[f"{key}_lo"], out[f"{key}_hi"] = _stat(value, estimate)
            out[f"{key}_std"] = float(value.get("std", math.nan))
        else:
            out[key] = value
    return out


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _pct(v: float) -> str:
    return f"{100.0 * v:.1f}" if math.isfinite(v) else "-"


def _acc_ap_cell(acc: float, ap: float) -> str:
    return f"{_pct(acc)}/{_pct(ap)}"


def _interval_cell(name: str, v: float, lo: float, hi: float) -> str:
    if not math.isfinite(v):
        return "-"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{name.upper()} {v:.2f}"
    return f"{name.upper()} {v:.2f} [{lo:.2f}, {hi:.2f}]"


def metric_table(
    rows: Rows,
    *,
    intervals: str | None = None,
    estimate: str = "point",
    mean: bool = True,
    title: str | None = None,
) -> MetricTable:
    """Build a detector x column table from ``rows[detector][column] = metrics``.

    ``metrics`` is a :func:`compute_metrics` dict or a :func:`bootstrap_metrics` dict (then
    ``estimate`` picks ``"point"`` or ``"mean"``). Cells are ``"Acc/AP"`` in percent; with
    ``intervals="auc"`` (any metric name) they are ``"AUC 0.93 [0.90, 0.96]"`` instead. The
    ``Mean`` column averages a detector's columns (NaNs ignored); records hold one dict per
    (detector, column) plus a ``Mean`` record per detector, with bootstrap stats flattened to
    ``<metric>``, ``<metric>_lo``, ``<metric>_hi``, ``<metric>_std``.
    """
    columns: list[str] = []
    for cols in rows.values():
        columns += [c for c in cols if c not in columns]
    header = ["Detector", *columns, *([MEAN] if mean else [])]
    cells: list[list[str]] = []
    records: list[dict[str, Any]] = []
    for det, cols in rows.items():
        line = [str(det)]
        accs, aps, ivals = [], [], []
        det_records = []
        for col in columns:
            m = cols.get(col)
            if m is None:
                line.append("-")
                continue
            acc, ap = _stat(m.get("acc"), estimate)[0], _stat(m.get("ap"), estimate)[0]
            accs.append(acc)
            aps.append(ap)
            if intervals:
                iv = _stat(m.get(intervals), estimate)
                ivals.append(iv[0])
                line.append(_interval_cell(intervals, *iv))
            else:
                line.append(_acc_ap_cell(acc, ap))
            det_records.append({"detector": str(det), "column": str(col), **_flatten(m, estimate)})
        records += det_records
        if mean:
            line.append(_interval_cell(intervals, _nanmean(ivals), math.nan, math.nan) if intervals else _acc_ap_cell(_nanmean(accs), _nanmean(aps)))
            keys = [k for r in det_records for k in r if k not in ("detector", "column") and k not in _NOT_AVERAGED]
            mean_rec: dict[str, Any] = {"detector": str(det), "column": MEAN}
            for k in dict.fromkeys(keys):
                vals = [r[k] for r in det_records if isinstance(r.get(k), (int, float))]
                mean_rec[k] = _nanmean([float(v) for v in vals])
            records.append(mean_rec)
        cells.append(line)
    return MetricTable(header=header, cells=cells, records=records, title=title)


def render_rich_table(table: MetricTable | Rows, *, title: str | None = None, **kwargs: Any) -> Table:
    """A ``rich.table.Table`` of ``table`` (a :class:`MetricTable`, or rows for :func:`metric_table`)."""
    from rich.table import Table

    if not isinstance(table, MetricTable):
        table = metric_table(table, **kwargs)
    out = Table(title=title or table.title)
    for i, name in enumerate(table.header):
        out.add_column(name, justify="left" if i == 0 else "right", style="bold" if name == MEAN else None)
    for row in table.cells:
        out.add_row(*row)
    return out


def _keys(values: ArrayLike, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{what} has shape {arr.shape}, expected ({n},) to match labels")
    out = np.array(["unknown" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in arr], dtype=object)
    if (out == ALL).any():
        raise ValueError(f"{what} may not contain the reserved name {ALL!r}")
    return out


def _evaluate(lab: np.ndarray, sc: np.ndarray, threshold: float, bootstrap: bool, n_iter: int, seed: int, opts: dict[str, Any]) -> dict[str, Any]:
    if bootstrap:
        return bootstrap_metrics(lab, sc, n_iter=n_iter, seed=seed, threshold=threshold, **opts)
    return compute_metrics(lab, sc, threshold, opts.get("fpr_targets", DEFAULT_FPR_TARGETS))


def per_group_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    group_values: ArrayLike,
    threshold: float = 0.5,
    bootstrap: bool = False,
    n_iter: int = 100,
    seed: int = 0,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    ci: float = 0.95,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    balance_groups: ArrayLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics per group (e.g. modality) plus ``"all"``: ``{group: metrics}``, groups sorted.

    ``group_values`` gives each sample's group (``None`` becomes ``"unknown"``). Without
    ``bootstrap`` values are :func:`compute_metrics` dicts, with it :func:`bootstrap_metrics`
    dicts (same ``seed`` for every group). ``balance_groups`` (e.g. each sample's source or
    scanner) makes the bootstrap balance those groups within each class.
    """
    lab, sc = validate_inputs(labels, scores)
    grp = _keys(group_values, lab.size, "group_values")
    bal = None if balance_groups is None else _keys(balance_groups, lab.size, "balance_groups")

    def run(sel: np.ndarray) -> dict[str, Any]:
        opts: dict[str, Any] = {"metrics": metrics, "ci": ci} if bootstrap else {"fpr_targets": fpr_targets}
        if bootstrap and bal is not None:
            opts["groups"] = bal[sel]
        return _evaluate(lab[sel], sc[sel], threshold, bootstrap, n_iter, seed, opts)

    out = {str(g): run(grp == g) for g in sorted(set(grp))}
    out[ALL] = run(np.ones(lab.size, dtype=bool))
    return out


def per_generator_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    modalities: ArrayLike,
    generators: ArrayLike,
    threshold: float = 0.5,
    bootstrap: bool = False,
    n_iter: int = 100,
    seed: int = 0,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    ci: float = 0.95,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
) -> dict[str, dict[str, Any]]:
    """Metrics per generator plus ``"all"``, pairing each generator's fakes with matching reals.

    For generator ``g`` the evaluation set is the fakes whose generator is ``g`` together with
    every real sample whose modality is among the modalities of those fakes (reals of other
    modalities are left out, so a CT generator is not credited for easy MRI reals). The
    ``generators`` entries of real samples are ignored. ``"all"`` is the whole data set.
    """
    lab, sc = validate_inputs(labels, scores)
    mod = _keys(modalities, lab.size, "modalities")
    gen = _keys(generators, lab.size, "generators")
    opts: dict[str, Any] = {"metrics": metrics, "ci": ci} if bootstrap else {"fpr_targets": fpr_targets}
    fake, real = lab == 1, lab == 0
    out: dict[str, dict[str, Any]] = {}
    for g in sorted(set(gen[fake])):
        fakes = fake & (gen == g)
        mods = set(mod[fakes].tolist())
        reals = real & np.fromiter((m in mods for m in mod), dtype=bool, count=mod.size)
        sel = fakes | reals
        out[str(g)] = _evaluate(lab[sel], sc[sel], threshold, bootstrap, n_iter, seed, opts)
    out[ALL] = _evaluate(lab, sc, threshold, bootstrap, n_iter, seed, opts)
    return out
