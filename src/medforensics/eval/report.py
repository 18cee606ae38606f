"""Self-contained HTML reports: per-file scan results and evaluation tables/plots.

Images are embedded as base64 PNG data URIs, styles are inline: the HTML file is the whole
report. Templates live in ``eval/templates`` and are rendered with autoescaping on, so paths,
error messages and any other user-supplied text are HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image

from .. import __version__
from ..results import ScanResult
from .tables import MetricTable

__all__ = ["array_to_data_uri", "overlay_heatmap", "write_eval_report", "write_scan_report"]

THUMB_SIZE = 128
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _render(template: str, path: str | Path, **context: Any) -> Path:
    context.setdefault("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    context.setdefault("version", __version__)
    html = _env().get_template(template).render(**context)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


# ---------------------------------------------------------------- images


def _to_rgb_uint8(image: ArrayLike) -> NDArray[np.uint8]:
    """H×W, H×W×1, H×W×3 or H×W×4 image (uint8, bool or float in [0, 1]) → H×W×3 uint8.

    Values outside [0, 1] (e.g. raw HU, uint16) are stretched min..max; NaN/inf become 0.
    """
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] in (1, 3, 4):
        a = a[..., :3] if a.shape[2] != 1 else a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or a.size == 0:
        raise ValueError(f"image must be H×W or H×W×C (C in 1, 3, 4), got shape {np.asarray(image).shape}")
    if a.dtype != np.uint8:
        f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(f.min()), float(f.max())
        if lo < 0.0 or hi > 1.0:
            f = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
        a = (np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a)


def _heat_float(heatmap: ArrayLike, size: tuple[int, int] | None = None) -> NDArray[np.float32]:
    """Heat map → H×W float32 in [0, 1], resized (bilinear) to ``size`` = (width, height) if given."""
    h = np.asarray(heatmap, dtype=np.float32)
    h = np.squeeze(h)
    if h.ndim == 3:
        h = h.mean(axis=2)
    if h.ndim != 2 or 0 in h.shape:
        raise ValueError(f"heatmap must be H×W, got shape {np.asarray(heatmap).shape}")
    h = np.clip(np.nan_to_num(h, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if size is not None and (h.shape[1], h.shape[0]) != tuple(size):
        h = np.asarray(Image.fromarray(np.ascontiguousarray(h, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR))
    return np.clip(h, 0.0, 1.0)


def colorize_heatmap(heatmap: ArrayLike, cmap: str = "inferno", size: tuple[int, int] | None = None) -> NDArray[np.uint8]:
    """Colour-map a [0, 1] heat map to H×W×3 uint8 (optionally resized to (width, height))."""
    hf = _heat_float(heatmap, size)
    lut = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]
    return lut[(hf * 255.0 + 0.5).astype(np.uint8)]


def overlay_heatmap(image: ArrayLike, heatmap: ArrayLike, *, alpha: float = 0.45, cmap: str = "inferno") -> NDArray[np.uint8]:
    """Blend a colour-mapped heat map (values in [0, 1]) over ``image``; H×W×3 uint8 RGB.

    ``image`` is grey or RGB(A), uint8 or float in [0, 1]; the heat map is resized (bilinear)
    to the image size. ``out = (1 - alpha) * image + alpha * cmap(heatmap)``.
    """
    rgb = _to_rgb_uint8(image)
    colour = colorize_heatmap(heatmap, cmap, size=(rgb.shape[1], rgb.shape[0]))
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _thumbnail(rgb: NDArray[np.uint8], size: int = THUMB_SIZE) -> NDArray[np.uint8]:
    img = Image.fromarray(rgb)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img)


def array_to_data_uri(rgb: ArrayLike) -> str:
    """PNG ``data:`` URI of an image array (any form accepted by :func:`overlay_heatmap`)."""
    buf = io.BytesIO()
    Image.fromarray(_to_rgb_uint8(rgb)).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_data_uri(path: str | Path) -> str:
    path = Path(path)
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"cannot embed {path}: unsupported image type {path.suffix!r}")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# ---------------------------------------------------------------- scan report


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def _verdict(r: ScanResult, threshold: float | None) -> str:
    if not r.ok:
        return "error"
    if r.verdict in ("fake", "real"):
        return r.verdict
    thr = r.threshold if r.threshold is not None else threshold
    if r.score is not None and thr is not None:
        return "fake" if r.score >= thr else "real"
    return "unknown"


def _row_images(r: ScanResult, cmap: str, alpha: float) -> tuple[str | None, str | None]:
    if not r.ok:
        return None, None
    try:
        thumb = _thumbnail(_to_rgb_uint8(r.thumbnail)) if r.thumbnail is not None else None
        if r.heatmap is None:
            overlay = None
        elif thumb is not None:
            overlay = overlay_heatmap(thumb, r.heatmap, alpha=alpha, cmap=cmap)
        else:
            overlay = _thumbnail(colorize_heatmap(r.heatmap, cmap))
    except (ValueError, TypeError):  # malformed arrays: report the row without pictures
        return None, None
    return (array_to_data_uri(thumb) if thumb is not None else None, array_to_data_uri(overlay) if overlay is not None else None)


def _scan_row(r: ScanResult, threshold: float | None, cmap: str, alpha: float, max_frames: int) -> dict[str, Any]:
    verdict = _verdict(r, threshold)
    thumb_uri, overlay_uri = _row_images(r, cmap, alpha)
    frames = [_fmt(float(f), 3) for f in r.frames[:max_frames]]
    if len(r.frames) > max_frames:
        frames.append(f"… (+{len(r.frames) - max_frames} more)")
    summary = ""
    if r.frames:
        i = int(np.argmax(r.frames))
        summary = f"{len(r.frames)} frames, max {float(r.frames[i]):.3f} (#{i})"
    return {
        "path": r.path,
        "modality": r.modality or "",
        "score": _fmt(r.score) if r.ok else "",
        "score_parts": (f"pixel {_fmt(r.pixel_score, 3)}, header {_fmt(r.header_score, 3)}"
                        if r.ok and r.header_score is not None else ""),
        "findings": [f"{f.get('severity', '')}: {f.get('message', f.get('code', ''))}" for f in r.findings or []],
        "verdict": verdict,
        "verdict_class": verdict,
        "frames": frames,
        "frames_summary": summary,
        "error": r.error or "",
        "thumb_uri": thumb_uri,
        "overlay_uri": overlay_uri,
    }


def _threshold_info(threshold: float | Mapping[str, Any] | None, note: str | None, results: Sequence[ScanResult], model_info: Mapping[str, Any]) -> tuple[float | None, str, str]:
    """(threshold value, display text, calibration note)."""
    if isinstance(threshold, Mapping):  # a calibrate() dict
        value = float(threshold["threshold"])
        if note is None and "target_fpr" in threshold:
            note = (
                f"calibrated on {threshold.get('n_real', '?')} real validation images for a target false-positive "
                f"rate of {float(threshold['target_fpr']):.2%} (achieved {float(threshold.get('achieved_fpr', math.nan)):.2%})"
            )
    elif threshold is not None:
        value = float(threshold)
    else:
        found = sorted({r.threshold for r in results if r.threshold is not None})
        value = found[0] if len(found) == 1 else None
        if len(found) > 1:
            return None, "varies per file: " + ", ".join(f"{t:.4g}" for t in found), note or "per-file thresholds"
    if note is None:
        cal = model_info.get("threshold_calibration", model_info.get("calibration"))
        note = str(cal) if cal else "not stated"
    return value, ("" if value is None else f"{value:.4g}"), note


def write_scan_report(
    results: Sequence[ScanResult],
    path: str | Path,
    *,
    title: str = "MedForensics scan report",
    model_info: Mapping[str, Any] | None = None,
    threshold: float | Mapping[str, Any] | None = None,
    threshold_note: str | None = None,
    cmap: str = "inferno",
    alpha: float = 0.45,
    max_frames: int = 200,
    series: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write a self-contained HTML scan report and return its path.

    ``series`` (records of :class:`medforensics.engine.series.SeriesAggregator`) adds a section
    per series: its verdict and a strip of the slices around its most suspicious region, with the
    region drawn on each slice that it spans.

    ``threshold`` may be a number or a :func:`~medforensics.eval.calibration.calibrate` dict
    (whose target/achieved FPR is then described); ``threshold_note`` overrides the description
    (else ``model_info["threshold_calibration"]`` is used). Rows with errors show the error and
    no images; others show a 128 px thumbnail and a heat-map overlay when available.
    """
    model_info = dict(model_info or {})
    thr, thr_text, note = _threshold_info(threshold, threshold_note, results, model_info)
    rows = [_scan_row(r, thr, cmap, alpha, max_frames) for r in results]
    models = sorted({r.model for r in results if r.model})
    summary = {
        "n_files": len(rows),
        "n_fake": sum(r["verdict"] == "fake" for r in rows),
        "n_real": sum(r["verdict"] == "real" for r in rows),
        "n_errors": sum(r["verdict"] == "error" for r in rows),
        "model": str(model_info.get("name") or ", ".join(models) or "unknown"),
        "threshold": thr_text or "unknown",
        "threshold_note": note,
    }
    info = [(str(k), _fmt(v) if isinstance(v, float) else str(v)) for k, v in model_info.items()]
    thumbs = {r.path: r.thumbnail for r in results if r.thumbnail is not None and not r.frames}
    series_rows = [_series_row(rec, thumbs) for rec in series]
    return _render("scan_report.html.j2", path, title=title, summary=summary, model_info=info, rows=rows,
                   series=series_rows)


STRIP_SLICES = 9


def series_strip(record: Mapping[str, Any], thumbs: Mapping[str, Any], n: int = STRIP_SLICES) -> NDArray[np.uint8] | None:
    """Up to ``n`` slice thumbnails around the series' top region, side by side, the region circled in red."""
    from PIL import Image, ImageDraw

    slices = record.get("slices") or []
    regions = record.get("regions") or []
    if not slices:
        return None
    if regions:
        top = regions[0]
        centre = (top["first_slice"] + top["last_slice"]) // 2
    else:
        top, centre = None, int(np.argmax(record.get("slice_scores") or [0]))
    lo = max(0, min(centre - n // 2, len(slices) - n))
    tiles = []
    for k in range(lo, min(len(slices), lo + n)):
        thumb = thumbs.get(slices[k]["path"]) if slices[k].get("frame") is None else None
        rgb = _to_rgb_uint8(thumb) if thumb is not None else np.full((THUMB_SIZE, THUMB_SIZE, 3), 40, np.uint8)
        tile = Image.fromarray(_thumbnail(rgb))
        draw = ImageDraw.Draw(tile)
        side = tile.size[0]
        if top is not None and top["first_slice"] <= k <= top["last_slice"]:
            fy, fx, fr = top["input_yxr"]
            r = max(3.0, fr * side)
            draw.ellipse([fx * side - r, fy * side - r, fx * side + r, fy * side + r], outline=(255, 40, 40), width=2)
        draw.text((3, 2), str(k), fill=(255, 255, 0))
        tiles.append(np.asarray(tile))
    return np.concatenate(tiles, axis=1)


def _series_row(record: Mapping[str, Any], thumbs: Mapping[str, Any]) -> dict[str, Any]:
    strip = series_strip(record, thumbs)
    verdict = record.get("verdict") or "error"
    return {
        "uid": record.get("series_uid") or record.get("key"), "modality": record.get("modality") or "",
        "n_slices": record.get("n_slices"), "score": _fmt(record.get("score")), "verdict": verdict,
        "verdict_class": verdict, "strip_uri": None if strip is None else array_to_data_uri(strip),
        "regions": [f"slices {r['first_slice']}–{r['last_slice']}, centre (y {r['y']:.0f}, x {r['x']:.0f}), "
                    f"radius {r['radius']:.0f} px, evidence {r['score']:.3f}" for r in record.get("regions") or []][:5],
        "findings": [f.get("message", str(f)) if isinstance(f, Mapping) else str(f)
                     for f in record.get("findings") or []],
    }


# ---------------------------------------------------------------- evaluation report

_SEP = re.compile(r"^:?-{3,}:?$")
_PIPE = re.compile(r"(?<!\\)\|")


def _parse_markdown_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 2 or not all(ln.startswith("|") and ln.endswith("|") for ln in lines):
        return None
    split = [[c.strip().replace("\\|", "|") for c in _PIPE.split(ln[1:-1])] for ln in lines]
    if not all(_SEP.match(c) for c in split[1]):
        return None
    return split[0], split[2:]


def _table_context(name: str, table: MetricTable | str | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if isinstance(table, MetricTable):
        return {"name": name or table.title or "", "header": table.header, "rows": table.cells, "text": ""}
    if isinstance(table, str):
        parsed = _parse_markdown_table(table)
        if parsed is None:
            return {"name": name, "header": [], "rows": [], "text": table}
        return {"name": name, "header": parsed[0], "rows": parsed[1], "text": ""}
    records = list(table)
    header: list[str] = []
    for rec in records:
        header += [str(k) for k in rec if str(k) not in header]
    rows = [[_fmt(rec.get(h)) for h in header] for rec in records]
    return {"name": name, "header": header, "rows": rows, "text": ""}


def write_eval_report(
    tables: Mapping[str, MetricTable | str | Sequence[Mapping[str, Any]]] | MetricTable | str,
    plot_paths: Sequence[str | Path] | Mapping[str, str | Path],
    path: str | Path,
    *,
    title: str = "MedForensics evaluation report",
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-contained HTML page with metric tables and embedded plots.

    ``tables`` maps a section name to a :class:`MetricTable`, a Markdown pipe table (text that
    is not a pipe table is shown preformatted) or a list of record dicts; a single table is also
    accepted. ``plot_paths`` is a list of image files or ``{caption: file}``; files are inlined
    as data URIs. ``info`` is shown as a key/value table (dataset, model, threshold...).
    """
    if isinstance(tables, (MetricTable, str)):
        tables = {"": tables}
    items = plot_paths.items() if isinstance(plot_paths, Mapping) else ((Path(p).stem, p) for p in plot_paths)
    plots = [{"caption": str(cap), "uri": _file_data_uri(p)} for cap, p in items]
    ctx_tables = [_table_context(str(name), t) for name, t in tables.items()]
    info_rows = [(str(k), _fmt(v) if isinstance(v, float) else str(v)) for k, v in (info or {}).items()]
    return _render("eval_report.html.j2", path, title=title, info=info_rows, tables=ctx_tables, plots=plots)
