"""Benchmark report: every number (CSV + JSON), Markdown tables, plots and one HTML page.

Reads the finished units of a run folder (``<out>/units/**.json``, see :mod:`.runner`), so a
report always reflects every unit done so far, including those of earlier (resumed) runs.
Tables use :func:`medforensics.eval.tables.metric_table` (the paper's Table 2 layout: ``Acc/AP``
cells in percent and a ``Mean`` column; AUC cells with 95% bootstrap intervals); ROC/PR curves
come from :mod:`medforensics.eval.plots`; the degradation and few-shot curves are drawn here;
the page is :func:`medforensics.eval.report.write_eval_report`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Manifest
from ..eval.tables import MetricTable, _nanmean, metric_table
from .config import RunConfig
from .protocols import AXES, CLEAN_SEVERITY

METRICS = ("acc", "ap", "auc", "eer")


# =============================================================================== loading


def load_units(out: str | Path) -> list[dict[str, Any]]:
    """Every unit JSON of a run folder (finished or failed), sorted by unit id."""
    units = []
    for path in sorted((Path(out) / "units").rglob("*.json")):
        try:
            units.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return units


def _parts(unit_id: str) -> tuple[str, str, str]:
    bits = unit_id.split("/")
    return bits[0], bits[1] if len(bits) > 1 else "", "/".join(bits[2:])


# =============================================================================== records


def _value(m: Any, key: str = "point") -> float:
    if isinstance(m, Mapping):
        v = m.get(key, m.get("point", math.nan))
    else:
        v = m
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v


def _records_of(ctx: dict[str, Any], metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    rec = dict(ctx)
    for k in METRICS:
        if k in metrics:
            rec[k] = _value(metrics[k])
            rec[f"{k}_mean"] = _value(metrics[k], "mean")
            rec[f"{k}_lo"] = _value(metrics[k], "lo")
            rec[f"{k}_hi"] = _value(metrics[k], "hi")
    rec["n_real"], rec["n_fake"] = metrics.get("n_real"), metrics.get("n_fake")
    return [rec]


def _view_records(base: dict[str, Any], view_result: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    if "all" in view_result:
        out += _records_of({**base, "group_type": "all", "group": "all"}, view_result["all"])
    for mod, m in view_result.get("per_modality", {}).items():
        out += _records_of({**base, "group_type": "modality", "group": mod}, m)
    for gen, m in view_result.get("per_generator", {}).items():
        out += _records_of({**base, "group_type": "generator", "group": gen}, m)
    return out


def unit_records(unit: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat metric records (one per view × group) of a finished unit."""
    if unit.get("status") != "ok":
        return []
    protocol, det, part = _parts(unit["unit"])
    base = {"protocol": protocol, "detector": det, "holdout": part, "model": unit.get("model", "")}
    out: list[dict[str, Any]] = []
    if protocol == "published":
        for tset, views in unit.get("test_sets", {}).items():
            for view, res in views.items():
                out += _view_records({**base, "test_set": tset, "view": view}, res)
    elif protocol == "few_shot":
        for k, entry in unit.get("curve", {}).items():
            for view, res in entry["views"].items():
                out += _view_records({**base, "k": int(k), "view": view}, res)
    else:
        for view, res in unit.get("views", {}).items():
            out += _view_records({**base, "view": view}, res)
    return out


def write_records(records: list[dict[str, Any]], folder: Path) -> tuple[Path, Path]:
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "records.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(records)
    json_path = folder / "records.json"
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in records]
    json_path.write_text(json.dumps(clean, indent=1), encoding="utf-8")
    return csv_path, json_path


# =============================================================================== tables


def _ok(units: list[dict[str, Any]], protocol: str) -> list[dict[str, Any]]:
    return [u for u in units if u.get("status") == "ok" and u["unit"].split("/")[0] == protocol]


def _table(rows: dict[str, dict[str, Any]], title: str, *, intervals: str | None = None, mean: bool = True) -> MetricTable | None:
    rows = {k: v for k, v in rows.items() if v}
    if not rows:
        return None
    return metric_table(rows, intervals=intervals, estimate="point", mean=mean, title=title)


MIN_FAKES_FOR_INTERVAL = 5  # below this, a class-balanced bootstrap interval of one generator's AUC says nothing


def _published_by_generator(published: list[dict[str, Any]], tset: str, mismatched: set[str]) -> MetricTable | None:
    """One row per published generator (with its number of test fakes), one column per detector · view,
    and the mean AUC over all and over the anatomy-matched generators. Generators with fewer than
    ``MIN_FAKES_FOR_INTERVAL`` test fakes get their AUC without an interval."""
    per_gen: dict[str, dict[str, Any]] = {}
    aucs: dict[str, dict[str, float]] = {}  # column → generator → AUC point
    for u in published:
        det = _parts(u["unit"])[1]
        for view, res in u.get("test_sets", {}).get(tset, {}).items():
            col = f"{det} · {view}"
            for g, m in res.get("per_generator", {}).items():
                label = f"{g}{' †' if g in mismatched else ''} (n={m.get('n_fake', '?')})"
                if isinstance(m.get("n_fake"), int) and m["n_fake"] < MIN_FAKES_FOR_INTERVAL \
                        and isinstance(m.get("auc"), dict):
                    m = {**m, "auc": {k: v for k, v in m["auc"].items() if k not in ("lo", "hi")}}
                per_gen.setdefault(label, {})[col] = m
                aucs.setdefault(col, {})[g] = _value(m.get("auc"))
    rows = dict(sorted(per_gen.items()))
    for label, keep in (("mean over generators", lambda g: True),
                        ("mean, anatomy-matched", lambda g: g not in mismatched)):
        rows[label] = {col: {"auc": _nanmean([v for g, v in by_g.items() if keep(g)])} for col, by_g in aucs.items()}
    table = _table(rows, "published", intervals="auc", mean=False)
    if table is not None:
        table.header[0] = (f"Published generator († anatomy-mismatched; n = test fakes; no interval for "
                           f"n < {MIN_FAKES_FOR_INTERVAL})")
    return table


def build_tables(units: list[dict[str, Any]]) -> dict[str, MetricTable]:
    """Every result table of a run, keyed by section name."""
    tables: dict[str, MetricTable | None] = {}
    for protocol, title in (("in_distribution", "In-distribution"), ("ablations", "Ablations")):
        rows: dict[str, dict[str, Any]] = {}
        gen_rows: dict[str, dict[str, Any]] = {}
        for u in _ok(units, protocol):
            det = _parts(u["unit"])[1]
            for view, res in u["views"].items():
                rows[f"{det} · {view}"] = res.get("per_modality", {})
                gen_rows[f"{det} · {view}"] = res.get("per_generator", {})
        tables[f"{title}: Acc/AP per modality (Table 2 layout)"] = _table(rows, title)
        tables[f"{title}: AUC [95% CI] per modality"] = _table(rows, title, intervals="auc")
        tables[f"{title}: EER [95% CI] per modality"] = _table(rows, title, intervals="eer")
        if protocol == "in_distribution":
            tables[f"{title}: AUC [95% CI] per generator"] = _table(gen_rows, title, intervals="auc", mean=False)
    for protocol, title in (("logo", "Leave-one-generator-out"), ("lofo", "Leave-one-family-out")):
        rows = {}
        for u in _ok(units, protocol):
            _, det, part = _parts(u["unit"])
            for view, res in u["views"].items():
                if "all" in res:
                    rows.setdefault(f"{det} · {view}", {})[part] = res["all"]
        tables[f"{title}: Acc/AP on the held-out part"] = _table(rows, title)
        tables[f"{title}: AUC [95% CI] on the held-out part"] = _table(rows, title, intervals="auc")
    pooled: dict[str, dict[str, Any]] = {}
    mismatched: set[str] = set()
    published = _ok(units, "published")
    for u in published:
        det = _parts(u["unit"])[1]
        mismatched |= set(u.get("anatomy_mismatched", []))
        for tset, views in u.get("test_sets", {}).items():
            for view, res in views.items():
                if "all" in res:
                    pooled.setdefault(f"{det} · {view} · vs {tset}", {})["all published fakes"] = res["all"]
    tables["Factory → published generators: AUC [95% CI], all published fakes pooled (source-balanced)"] = _table(
        pooled, "published", intervals="auc", mean=False)
    tables["Factory → published generators: Acc/AP, all published fakes pooled (source-balanced)"] = _table(
        pooled, "published", mean=False)
    for tset in sorted({t for u in published for t in u.get("test_sets", {})}):
        tables[f"Factory → published generators: AUC [95% CI] per generator, vs {tset}"] = _published_by_generator(
            published, tset, mismatched)
    rows = {}
    for u in _ok(units, "few_shot"):
        _, det, g = _parts(u["unit"])
        for k, entry in sorted(u.get("curve", {}).items(), key=lambda kv: int(kv[0])):
            for view, res in entry["views"].items():
                if "all" in res:
                    rows.setdefault(f"{det} · {view} · {g}", {})[f"k={k}"] = res["all"]
    tables["Few-shot: AUC [95% CI] vs k samples of the new generator"] = _table(rows, "few-shot", intervals="auc",
                                                                                 mean=False)
    rows = {}
    for u in _ok(units, "robustness"):
        _, det, name = _parts(u["unit"])
        for view, res in u["views"].items():
            if "all" in res:
                rows.setdefault(f"{det} · {view}", {})[name] = res["all"]
    clean = {}
    for u in _ok(units, "in_distribution"):  # the clean reference column
        det = _parts(u["unit"])[1]
        for view, res in u["views"].items():
            if "all" in res:
                clean[f"{det} · {view}"] = res["all"]
    for key, cols in rows.items():  # columns in axis order, mildest first
        ordered = sorted(cols, key=_perturbation_order)
        rows[key] = {**({"clean": clean[key]} if key in clean else {}), **{c: cols[c] for c in ordered}}
    tables["Robustness: AUC per perturbation (applied to real and fake alike)"] = _table(rows, "robustness",
                                                                                          intervals="auc", mean=False)
    tables["Robustness: Acc/AP per perturbation"] = _table(rows, "robustness", mean=False)
    return {k: v for k, v in tables.items() if v is not None}


def _perturbation_order(name: str) -> tuple[int, float, str]:
    from .protocols import perturbation_axis

    axis = perturbation_axis(name)
    if axis is None:
        return (len(AXES), 0.0, name)
    fam, sev = axis
    order = list(AXES)
    reverse = fam in ("jpeg", "resize", "quant")
    return (order.index(fam), -sev if reverse else sev, name)


def benchmark_tables(out: Path, manifest: Manifest) -> dict[str, list[dict[str, Any]]]:
    """Composition of the benchmark, generator timings, format check — as record lists."""
    tables: dict[str, list[dict[str, Any]]] = {}
    counts: dict[tuple[str, str, str], int] = {}
    for r in manifest:
        key = (r.split or "-", r.modality, r.extra.get("role", "") or r.label)
        counts[key] = counts.get(key, 0) + 1
    tables["Benchmark composition"] = [{"split": s, "modality": m, "role": role, "images": n}
                                       for (s, m, role), n in sorted(counts.items())]
    gens = []
    for info_path in sorted((out / "generators").glob("*/bench_generator.json")):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        k = info.get("key", {})
        gens.append({"generator": info.get("name"), "family": k.get("family"), "modality": k.get("modality"),
                     "resolution": k.get("resolution"), "steps": k.get("steps"), "train images": info.get("n_train_images"),
                     "train s": info.get("train_seconds"), "samples": info.get("n_samples"),
                     "sample s": info.get("sample_seconds"), "s/sample": info.get("seconds_per_sample"),
                     "parameters": sum((info.get("parameters") or {}).values()),
                     "final losses": ", ".join(f"{a}={b:.4g}" for a, b in (info.get("final_losses") or {}).items())})
    if gens:
        tables["Generators: training and sampling time (CPU)"] = gens
    build = _bench_dir(out, manifest) / "build.json"
    if build.is_file():
        info = json.loads(build.read_text())
        fmt = info.get("format_check", {})
        recs = [{"feature": k, "max(AUC, 1−AUC)": v} for k, v in fmt.get("feature_auc", {}).items()]
        recs.append({"feature": "logistic regression (container features, 5-fold CV AUC)",
                     "max(AUC, 1−AUC)": fmt.get("container_lr_auc")})
        recs.append({"feature": "PASSED" if fmt.get("passed") else "FAILED: " + "; ".join(fmt.get("failures", [])),
                     "max(AUC, 1−AUC)": ""})
        tables["Format-statistics check (does file format predict the label?)"] = recs
    return tables


# =============================================================================== plots


def _figure(size: tuple[float, float] = (5.0, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    return fig


def plot_degradation(
    curves: Mapping[str, Sequence[tuple[float, float, float, float]]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    metric: str = "AUC",
    invert_x: bool = False,
) -> Path:
    """Metric vs perturbation severity, one line per ``name`` with ``(x, value, lo, hi)`` points;
    the 95% interval is shaded; a dashed line marks chance (0.5)."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, pts in curves.items():
        pts = sorted((p for p in pts if math.isfinite(p[1])), key=lambda p: p[0])
        if not pts:
            continue
        x, y, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
        ax.plot(x, y, marker="o", lw=1.5, label=name)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(x[ok], lo[ok], hi[ok], alpha=0.15)
    ax.axhline(0.5, ls="--", c="grey", lw=0.8)
    ax.set_ylim(0.0, 1.02)
    if invert_x:
        ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _point(m: Mapping[str, Any], metric: str) -> tuple[float, float, float]:
    v = m.get(metric, {})
    return _value(v), _value(v, "lo"), _value(v, "hi")


def degradation_plots(units: list[dict[str, Any]], folder: Path) -> dict[str, Path]:
    """One plot per perturbation axis and metric (AUC, AP): every detector × view as a line."""
    clean: dict[str, dict[str, Any]] = {}
    for u in _ok(units, "in_distribution"):
        det = _parts(u["unit"])[1]
        for view, res in u["views"].items():
            if "all" in res:
                clean[f"{det} · {view}"] = res["all"]
    by_axis: dict[str, dict[str, dict[str, list]]] = {}
    for u in _ok(units, "robustness"):
        axis = u.get("axis")
        if not axis:
            continue
        fam, sev = axis
        det = _parts(u["unit"])[1]
        for view, res in u["views"].items():
            if "all" not in res:
                continue
            for metric in ("auc", "ap"):
                by_axis.setdefault(fam, {}).setdefault(metric, {}).setdefault(f"{det} · {view}", []).append(
                    (float(sev), *_point(res["all"], metric)))
    plots = {}
    for fam, per_metric in sorted(by_axis.items()):
        for metric, curves in per_metric.items():
            for name in curves:
                if name in clean:
                    curves[name].append((float(CLEAN_SEVERITY[fam]), *_point(clean[name], metric)))
            label = AXES[fam][0]
            invert = fam in ("jpeg", "resize", "quant")
            plots[f"Robustness: {metric.upper()} vs {fam} ({label}; clean = {CLEAN_SEVERITY[fam]})"] = plot_degradation(
                curves, folder / f"degradation_{fam}_{metric}.png", title=f"{metric.upper()} under {fam}",
                xlabel=label, metric=metric.upper(), invert_x=invert)
    return plots


def few_shot_plot(units: list[dict[str, Any]], folder: Path) -> dict[str, Path]:
    curves: dict[str, list] = {}
    for u in _ok(units, "few_shot"):
        _, det, g = _parts(u["unit"])
        for k, entry in u.get("curve", {}).items():
            for view, res in entry["views"].items():
                if "all" in res:
                    curves.setdefault(f"{det} · {view} · {g}", []).append((float(k), *_point(res["all"], "auc")))
    if not curves:
        return {}
    return {"Few-shot: AUC vs k samples of the held-out generator": plot_degradation(
        curves, folder / "few_shot_auc.png", title="Few-shot", xlabel="k (samples added to the bank)")}


def curve_plots(units: list[dict[str, Any]], manifest: Manifest, folder: Path) -> dict[str, Path]:
    """ROC and PR curves of the in-distribution and the published-generator test sets."""
    from ..eval.plots import plot_pr, plot_roc

    plots: dict[str, Path] = {}
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for u in _ok(units, "in_distribution"):
        det = _parts(u["unit"])[1]
        for view, res in u["views"].items():
            sc = res.get("scores", [])
            if sc:
                curves[f"{det} · {view}"] = ([int(s[1]) for s in sc], [float(s[2]) for s in sc])
    if curves:
        plots["In-distribution ROC"] = plot_roc(curves, folder / "roc_in_distribution.png", title="ROC, in-distribution")
        plots["In-distribution precision-recall"] = plot_pr(curves, folder / "pr_in_distribution.png",
                                                            title="PR, in-distribution")
    curves = {}
    for u in _ok(units, "published"):
        det = _parts(u["unit"])[1]
        for tset, views in u.get("test_sets", {}).items():
            for view, res in views.items():
                sc = res.get("scores", [])
                if sc:
                    curves[f"{det} · {view} · vs {tset}"] = ([int(s[1]) for s in sc], [float(s[2]) for s in sc])
    if curves:
        plots["Published generators ROC"] = plot_roc(curves, folder / "roc_published.png",
                                                     title="ROC, factory → published")
    return plots


# =============================================================================== report


def write_report(
    out: str | Path,
    config: RunConfig | None = None,
    manifest: Manifest | None = None,
    *,
    stats: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<out>/results/``: records.csv/json, tables.md, one CSV per table, plots, report.html."""
    from ..eval.report import write_eval_report

    out = Path(out)
    res_dir = out / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    units = load_units(out)
    records = [r for u in units for r in unit_records(u)]
    write_records(records, res_dir)
    tables = build_tables(units)
    table_dir = res_dir / "tables"
    table_dir.mkdir(exist_ok=True)
    md = [f"# Benchmark results: {config.name if config else out.name}\n"]
    if manifest is not None and len(manifest):
        for name, recs in benchmark_tables(out, manifest).items():
            md.append(f"## {name}\n\n{_records_markdown(recs)}")
    for i, (name, table) in enumerate(tables.items()):
        table.to_csv(table_dir / f"{i:02d}_{_slug(name)}.csv")
        table.to_json(table_dir / f"{i:02d}_{_slug(name)}.json")
        md.append(f"## {name}\n\n{table.markdown}")
    failed = [u for u in units if u.get("status") != "ok"]
    if failed:
        md.append("## Failed units\n\n" + "\n".join(f"- `{u['unit']}`: {u.get('error')}" for u in failed) + "\n")
    (res_dir / "tables.md").write_text("\n".join(md), encoding="utf-8")

    plot_dir = res_dir / "plots"
    plots: dict[str, Path] = {}
    if manifest is not None:
        plots.update(curve_plots(units, manifest, plot_dir))
    plots.update(degradation_plots(units, plot_dir))
    plots.update(few_shot_plot(units, plot_dir))
    grids = sorted((_bench_dir(out, manifest) / "grids").glob("*.png")) if manifest is not None else []
    factory = {r.generator for r in manifest or [] if r.extra.get("role", "factory" if r.label == "fake" else "") == "factory"}
    for g in grids:  # reals and factory generators (published strips stay in the benchmark's grids/ folder)
        if g.stem.startswith("real-") or g.stem in factory:
            plots[f"Sample strip: {g.stem} (8 benchmark images, 256 px shown at 96 px)"] = g
    html_tables: dict[str, Any] = {}
    if manifest is not None and len(manifest):
        html_tables.update(benchmark_tables(out, manifest))
    html_tables.update(tables)
    if failed:
        html_tables["Failed units"] = [{"unit": u["unit"], "error": u.get("error")} for u in failed]
    info: dict[str, Any] = {"run": config.name if config else out.name, "units": len(units),
                            "finished": len(units) - len(failed), "failed": len(failed)}
    if config is not None:
        info.update({"views": ", ".join(config.views), "bootstrap iterations": config.n_boot,
                     "quick factor": config.quick if config.quick else "full", "config file": config.source or ""})
    for k, v in (stats or {}).items():
        if isinstance(v, (int, float, str)):
            info[k] = v
    return write_eval_report(html_tables, plots, res_dir / "report.html",
                             title=f"MedForensics benchmark — {info['run']}", info=info)


def _bench_dir(out: Path, manifest: Manifest) -> Path:
    """Folder of the benchmark: built by the run (``<out>/benchmark``) or the given manifest's folder."""
    built = out / "benchmark"
    return built if (built / "build.json").is_file() else manifest.root


def _slug(text: str) -> str:
    keep = "".join(c.lower() if c.isalnum() else "_" for c in text)
    return "_".join(p for p in keep.split("_") if p)[:60]


def _records_markdown(records: list[dict[str, Any]]) -> str:
    if not records:
        return "(none)\n"
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "-"
    return str(v).replace("|", "\\|")
