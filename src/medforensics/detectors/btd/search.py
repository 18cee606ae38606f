"""BTD search mode: window residuals normalised by real residual statistics.

The paper scores a region of interest it is given. Searching a whole slice for the tamper instead
needs window scores that are comparable across the image: a window of bone or body outline has a far
larger one-step residual than a window of soft tissue, so the maximum of raw window residuals finds
anatomy, not edits. Here every ``window``×``window`` window (every ``stride`` px) gets

* its residual energy ``log mean (x₀ − x′)²`` (``r``), and two features of the *input* window: its mean
  intensity ``m`` and ``log`` of its intensity standard deviation ``s``;
* the expected ``r`` and its spread for real windows of that intensity / texture: the real windows
  (fitted on real slices, :func:`fit_window_norm`) are binned by ``m`` and ``s`` (quantile bins); each
  bin stores the median of ``r`` and its robust spread (IQR / 1.349, floored); a bin with too few real
  windows falls back to its texture (``s``) bin over all intensities, then to all windows;
* ``z = (r − median) / spread`` — the standardised residual. Image score = max z over windows, map =
  per pixel the max z of the windows covering it.

**Two-sided search mode** (``window_score="z2"``): ``z`` only sees windows whose residual is *too large*.
An edit that leaves a window with *too little* texture (a lesion in-painted from its surroundings) can
hide from it, because the window's lower texture also moves it to a bin whose real windows expect a
small residual. So each window also gets a texture-deficit statistic ``q``: the log of the smallest
input standard deviation (``feature="input_std"``) or mean residual (``"residual"``) over its
``sub_window``×``sub_window`` sub-windows (every ``sub_stride`` px), compared with real windows of the
same bin (``binning="mean×logstd"``: the same bins as ``z``; ``"mean"``: intensity bins only):
``zq = −(q − median) / spread`` (positive = less local texture than real windows of that bin). The
window score is ``max(z, zq)``. Its statistics are the optional ``deficit`` entry of ``window_norm``
(:func:`fit_deficit`, fitted in the same pass as ``z``'s); a ``window_norm`` without it still reads, and
``z`` / ``residual`` are unchanged.

The statistics are a small JSON dict stored in the model's ``config.json`` (``window_norm``), next to the
calibrations of all window scores, so a model can be switched between them
(:meth:`BTDDetector.set_window_score`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .patches import window_positions

NORM_VERSION = 1
#: added to mean residuals before the log (residuals of constant background can be exactly 0)
LOG_EPS = 1e-10
#: added to the input standard deviation before the log
STD_EPS = 1e-4
#: floor of a bin's robust spread (log units), so a few near-identical windows cannot make z explode
MIN_SPREAD = 0.05
#: floor of the z-score spread in the probability map
MIN_Z_SCALE = 0.1


def search_positions(h: int, w: int, window: int, stride: int) -> tuple[int, list[int], list[int]]:
    """Window side (clamped to the image) and the window starts along y and x (the last one aligned with the end)."""
    win = int(min(window, h, w))
    return win, window_positions(h, win, stride), window_positions(w, win, stride)


def _integral(v: torch.Tensor) -> torch.Tensor:
    return F.pad(v.double().cumsum(1).cumsum(2), (1, 0, 1, 0))


def _box_means(v: torch.Tensor, win: int, ys: list[int], xs: list[int], integral: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Mean of N×H×W ``v`` over every window (integral image): N×(len(ys)·len(xs)), y-major."""
    s = _integral(v) if integral is None else integral
    y0, x0 = torch.tensor(ys), torch.tensor(xs)
    y1, x1 = y0 + win, x0 + win
    tot = (s[:, y1][:, :, x1] - s[:, y0][:, :, x1] - s[:, y1][:, :, x0] + s[:, y0][:, :, x0])
    return (tot / float(win * win)).reshape(v.shape[0], -1)


def window_features(images: torch.Tensor, residuals: torch.Tensor, window: int, stride: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]], int]:
    """(r, m, s) per window, each N×K float64, the K window corners (y, x) and the window side.

    ``images``: N×H×W input in [0, 1] (channel-averaged); ``residuals``: N×H×W (x₀ − x′)²."""
    n, h, w = images.shape
    win, ys, xs = search_positions(h, w, window, stride)
    mean = _box_means(images, win, ys, xs)
    sq = _box_means(images * images, win, ys, xs)
    std = (sq - mean * mean).clamp_min(0).sqrt()
    res = _box_means(residuals, win, ys, xs).clamp_min(0)
    r = np.log(res.numpy() + LOG_EPS)
    s = np.log(std.numpy() + STD_EPS)
    return r, mean.numpy(), s, [(y, x) for y in ys for x in xs], win


#: the texture-deficit statistic of two-sided search mode (module docstring): what fit_window_norm fits
DEFICIT_DEFAULTS: dict[str, Any] = {"feature": "input_std", "sub_window": 16, "sub_stride": 8, "binning": "mean×logstd"}
DEFICIT_FEATURES = ("input_std", "residual")
DEFICIT_BINNINGS = ("mean×logstd", "mean")


def deficit_features(images: torch.Tensor, residuals: torch.Tensor, window: int, stride: int, *,
                     feature: str = "input_std", sub_window: int = 16, sub_stride: int = 8) -> np.ndarray:
    """``q`` per window (N×K float64, the windows of :func:`window_features`): log of the smallest input
    standard deviation (``feature="input_std"``) or mean squared residual (``"residual"``) over the
    ``sub_window`` sub-windows, every ``sub_stride`` px, inside each window."""
    if feature not in DEFICIT_FEATURES:
        raise ValueError(f"deficit feature must be one of {DEFICIT_FEATURES}, got {feature!r}")
    n, h, w = images.shape
    win, ys, xs = search_positions(h, w, window, stride)
    sub = int(min(sub_window, win))
    step = max(1, int(sub_stride))
    offsets = sorted(set(list(range(0, win - sub + 1, step)) + [win - sub]))
    if feature == "input_std":
        s1, s2 = _integral(images), _integral(images * images)
    else:
        s1 = _integral(residuals)
    out = None
    for oy in offsets:
        yy = [y + oy for y in ys]
        for ox in offsets:
            xx = [x + ox for x in xs]
            mean = _box_means(images, sub, yy, xx, s1) if feature == "input_std" else None
            if feature == "input_std":
                val = (_box_means(images, sub, yy, xx, s2) - mean * mean).clamp_min(0).sqrt()
            else:
                val = _box_means(residuals, sub, yy, xx, s1).clamp_min(0)
            out = val if out is None else torch.minimum(out, val)
    assert out is not None
    return np.log(out.numpy() + (STD_EPS if feature == "input_std" else LOG_EPS))


def _robust(v: np.ndarray) -> tuple[float, float]:
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return float(q50), float(max((q75 - q25) / 1.349, MIN_SPREAD))


def _interior_edges(v: np.ndarray, bins: int) -> list[float]:
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1]))
    return [float(e) for e in edges]


def fit_norm(r: np.ndarray, m: np.ndarray, s: np.ndarray, *, bins: int = 8, min_count: int = 30,
             window: int, stride: int) -> dict[str, Any]:
    """Fit the per-bin median and spread of real window residuals (module docstring)."""
    r, m, s = (np.asarray(a, dtype=np.float64).ravel() for a in (r, m, s))
    if r.size < min_count:
        raise ValueError(f"window statistics need at least {min_count} real windows, got {r.size}")
    m_edges, s_edges = _interior_edges(m, bins), _interior_edges(s, bins)
    binned = _fit_binned(r, m, s, m_edges, s_edges, min_count)
    return {"version": NORM_VERSION, "features": ["window mean intensity", "log window intensity std"],
            "target": "log mean squared residual", "window": int(window), "stride": int(stride),
            "mean_edges": m_edges, "logstd_edges": s_edges, **binned,
            "min_count": int(min_count), "n_windows": int(r.size)}


def _fit_binned(v: np.ndarray, m: np.ndarray, s: np.ndarray, m_edges: list[float], s_edges: list[float],
                min_count: int) -> dict[str, Any]:
    """Median and robust spread of ``v`` per (m, s) bin; sparse bins fall back to their s bin, then to all."""
    bm, bs = np.searchsorted(m_edges, m, side="right"), np.searchsorted(s_edges, s, side="right")
    g_mu, g_sd = _robust(v)
    s_mu, s_sd = [], []
    for j in range(len(s_edges) + 1):
        sel = v[bs == j]
        mu, sd = _robust(sel) if sel.size >= min_count else (g_mu, g_sd)
        s_mu.append(mu)
        s_sd.append(sd)
    mu = np.zeros((len(m_edges) + 1, len(s_edges) + 1))
    sd, count = np.zeros_like(mu), np.zeros(mu.shape, dtype=np.int64)
    for i in range(mu.shape[0]):
        for j in range(mu.shape[1]):
            sel = v[(bm == i) & (bs == j)]
            count[i, j] = sel.size
            mu[i, j], sd[i, j] = _robust(sel) if sel.size >= min_count else (s_mu[j], s_sd[j])
    return {"median": np.round(mu, 6).tolist(), "spread": np.round(sd, 6).tolist(), "count": count.tolist(),
            "global_median": round(g_mu, 6), "global_spread": round(g_sd, 6)}


def fit_deficit(norm: dict[str, Any], q: np.ndarray, m: np.ndarray, s: np.ndarray, *, feature: str = "input_std",
                sub_window: int = 16, sub_stride: int = 8, binning: str = "mean×logstd",
                min_count: int | None = None) -> dict[str, Any]:
    """The texture-deficit statistics (``window_norm["deficit"]``): median and robust spread of the real
    windows' ``q`` (:func:`deficit_features`) in the bins of ``norm`` (``binning="mean×logstd"``) or in its
    intensity bins only (``"mean"``)."""
    if binning not in DEFICIT_BINNINGS:
        raise ValueError(f"deficit binning must be one of {DEFICIT_BINNINGS}, got {binning!r}")
    q, m, s = (np.asarray(a, dtype=np.float64).ravel() for a in (q, m, s))
    min_count = int(norm.get("min_count", 30) if min_count is None else min_count)
    s_edges = list(norm["logstd_edges"]) if binning == "mean×logstd" else []
    binned = _fit_binned(q, m, s, list(norm["mean_edges"]), s_edges, min_count)
    what = "input std" if feature == "input_std" else "mean squared residual"
    return {"target": f"log of the smallest sub-window {what} in the window", "feature": feature,
            "sub_window": int(sub_window), "sub_stride": int(sub_stride), "binning": binning, **binned,
            "min_count": min_count, "n_windows": int(q.size)}


def check_window_norm(norm: Any) -> None:
    """A clear error for a ``window_norm`` dict that is not one :func:`fit_norm` wrote."""
    if not isinstance(norm, dict):
        raise ValueError(f"window_norm must be a dict of fitted statistics, got {type(norm).__name__}")
    missing = [k for k in ("version", "window", "stride", "mean_edges", "logstd_edges", "median", "spread")
               if k not in norm]
    if missing:
        raise ValueError(f"window_norm lacks {', '.join(missing)}: not written by fit_window_norm")
    if norm["version"] != NORM_VERSION:
        raise ValueError(f"window_norm version {norm['version']} is not supported (this code reads {NORM_VERSION})")
    shape = (len(norm["mean_edges"]) + 1, len(norm["logstd_edges"]) + 1)
    for key in ("median", "spread"):
        if np.asarray(norm[key]).shape != shape:
            raise ValueError(f"window_norm[{key!r}] has shape {np.asarray(norm[key]).shape}, expected {shape}")
    d = norm.get("deficit")
    if d is None:
        return
    missing = [k for k in ("feature", "sub_window", "sub_stride", "binning", "median", "spread") if k not in d]
    if missing:
        raise ValueError(f"window_norm['deficit'] lacks {', '.join(missing)}: not written by fit_window_norm")
    if d["feature"] not in DEFICIT_FEATURES or d["binning"] not in DEFICIT_BINNINGS:
        raise ValueError(f"window_norm['deficit'] has feature {d['feature']!r} / binning {d['binning']!r}; "
                         f"this code reads {DEFICIT_FEATURES} / {DEFICIT_BINNINGS}")
    dshape = (shape[0], shape[1] if d["binning"] == "mean×logstd" else 1)
    for key in ("median", "spread"):
        if np.asarray(d[key]).shape != dshape:
            raise ValueError(f"window_norm['deficit'][{key!r}] has shape {np.asarray(d[key]).shape}, expected {dshape}")


def standardise(norm: dict[str, Any], r: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """z = (r − expected r) / spread at each window's (m, s) bin."""
    bm = np.searchsorted(np.asarray(norm["mean_edges"]), m, side="right")
    bs = np.searchsorted(np.asarray(norm["logstd_edges"]), s, side="right")
    mu, sd = np.asarray(norm["median"]), np.asarray(norm["spread"])
    return (r - mu[bm, bs]) / sd[bm, bs]


def standardise_deficit(norm: dict[str, Any], q: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """zq = −(q − expected q) / spread at each window's bin: positive where a window has less local texture
    than real windows of its bin (``norm["deficit"]``, :func:`fit_deficit`)."""
    d = norm["deficit"]
    bm = np.searchsorted(np.asarray(norm["mean_edges"]), m, side="right")
    bs = (np.searchsorted(np.asarray(norm["logstd_edges"]), s, side="right") if d["binning"] == "mean×logstd"
          else np.zeros_like(bm))
    mu, sd = np.asarray(d["median"]), np.asarray(d["spread"])
    return -(q - mu[bm, bs]) / sd[bm, bs]


def window_z(norm: dict[str, Any], images: torch.Tensor, residuals: torch.Tensor, *, two_sided: bool = False,
             window: int | None = None, stride: int | None = None
             ) -> tuple[np.ndarray, list[tuple[int, int]], int]:
    """Window scores N×K (``z``, or with ``two_sided`` ``max(z, zq)``), window corners and side."""
    window, stride = int(window or norm["window"]), int(stride or norm["stride"])
    r, m, s, positions, win = window_features(images, residuals, window, stride)
    z = standardise(norm, r, m, s)
    if two_sided:
        d = norm.get("deficit")
        if not d:
            raise ValueError("two-sided search mode needs texture-deficit statistics (window_norm['deficit']): "
                             "refit them with BTDDetector.fit_window_norm")
        q = deficit_features(images, residuals, window, stride, feature=d["feature"], sub_window=d["sub_window"],
                             sub_stride=d["sub_stride"])
        z = np.maximum(z, standardise_deficit(norm, q, m, s))
    return z, positions, win


def max_map(values: torch.Tensor, positions: list[tuple[int, int]], win: int, shape: tuple[int, int],
            fill: float = -1e6) -> torch.Tensor:
    """Per pixel the maximum of the N×K window values whose window covers it: N×H×W."""
    out = torch.full((values.shape[0], *shape), float(fill), dtype=torch.float32)
    v = values.float()
    for k, (y, x) in enumerate(positions):
        block = out[:, y : y + win, x : x + win]
        block.copy_(torch.maximum(block, v[:, k].view(-1, 1, 1)))
    return out
