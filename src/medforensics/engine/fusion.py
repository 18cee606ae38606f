"""Header and pixel evidence fused into one score, on the pixel model's scale.

The pixel detector's score ``p`` is calibrated on real validation images and flagged at its
operating point ``τ_p``; the header score ``h`` (:mod:`medforensics.headers`, noisy-OR of named
findings) is flagged at ``τ_h``, set on untouched real instances (≤ 1% flagged). The fused score
is the larger of ``p`` and ``h`` mapped piecewise-linearly onto the pixel scale so that ``τ_h``
lands on ``τ_p`` (0 → 0, τ_h → τ_p, 1 → 1)::

    fused = max(p, g(h)),   g(h) = h·τ_p/τ_h                      for h < τ_h
                            g(h) = τ_p + (h − τ_h)(1 − τ_p)/(1 − τ_h)  for h ≥ τ_h

Hence ``fused ≥ τ_p`` exactly when the pixels or the header are flagged at their own operating
points, and on untouched data the fused false-positive rate is at most the sum of the two.
"""

from __future__ import annotations


def header_on_pixel_scale(h: float, tau_pixel: float, tau_header: float) -> float:
    """``g(h)`` of the module docstring."""
    h = min(max(float(h), 0.0), 1.0)
    tp = min(max(float(tau_pixel), 1e-9), 1.0)
    th = min(max(float(tau_header), 1e-9), 1.0 - 1e-9)
    if h < th:
        return h * tp / th
    return tp + (h - th) * (1.0 - tp) / (1.0 - th)


def fuse(pixel: float, header: float | None, tau_pixel: float, tau_header: float) -> float:
    """The fused score (module docstring); the pixel score alone when there is no header evidence."""
    if header is None:
        return float(pixel)
    return max(float(pixel), header_on_pixel_scale(header, tau_pixel, tau_header))
