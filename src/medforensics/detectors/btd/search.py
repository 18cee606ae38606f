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

The statistics are a small JSON dict stored in the model's ``config.json`` (``window_norm``), next to the
calibrations of both window scores, so a model can be switched between them
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


def _box_means(v: torch.Tensor, win: int, ys: list[int], xs: list[int]) -> torch.Tensor:
    """Mean of N×H×W ``v`` over every window (integral image): N×(len(ys)·len(xs)), y-major."""
    s = F.pad(v.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
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
    bm, bs = np.searchsorted(m_edges, m, side="right"), np.searchsorted(s_edges, s, side="right")
    g_mu, g_sd = _robust(r)
    s_mu, s_sd = [], []
    for j in range(len(s_edges) + 1):
        sel = r[bs == j]
        mu, sd = _robust(sel) if sel.size >= min_count else (g_mu, g_sd)
        s_mu.append(mu)
        s_sd.append(sd)
    mu = np.zeros((len(m_edges) + 1, len(s_edges) + 1))
    sd, count = np.zeros_like(mu), np.zeros(mu.shape, dtype=np.int64)
    for i in range(mu.shape[0]):
        for j in range(mu.shape[1]):
            sel = r[(bm == i) & (bs == j)]
            count[i, j] = sel.size
            mu[i, j], sd[i, j] = _robust(sel) if sel.size >= min_count else (s_mu[j], s_sd[j])
    return {"version": NORM_VERSION, "features": ["window mean intensity", "log window intensity std"],
            "target": "log mean squared residual", "window": int(window), "stride": int(stride),
            "mean_edges": m_edges, "logstd_edges": s_edges,
            "median": np.round(mu, 6).tolist(), "spread": np.round(sd, 6).tolist(), "count": count.tolist(),
            "min_count": int(min_count), "n_windows": int(r.size),
            "global_median": round(g_mu, 6), "global_spread": round(g_sd, 6)}


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


def standardise(norm: dict[str, Any], r: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """z = (r − expected r) / spread at each window's (m, s) bin."""
    bm = np.searchsorted(np.asarray(norm["mean_edges"]), m, side="right")
    bs = np.searchsorted(np.asarray(norm["logstd_edges"]), s, side="right")
    mu, sd = np.asarray(norm["median"]), np.asarray(norm["spread"])
    return (r - mu[bm, bs]) / sd[bm, bs]


def max_map(values: torch.Tensor, positions: list[tuple[int, int]], win: int, shape: tuple[int, int],
            fill: float = -1e6) -> torch.Tensor:
    """Per pixel the maximum of the N×K window values whose window covers it: N×H×W."""
    out = torch.full((values.shape[0], *shape), float(fill), dtype=torch.float32)
    v = values.float()
    for k, (y, x) in enumerate(positions):
        block = out[:, y : y + win, x : x + win]
        block.copy_(torch.maximum(block, v[:, k].view(-1, 1, 1)))
    return out
