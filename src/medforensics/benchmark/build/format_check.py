"""Do file-format statistics predict the label? (the builder's leak check).

:func:`format_statistics_check` measures how well file-format statistics (dimensions, bit depth,
colour mode, container format, JPEG quality, PNG zlib level, metadata chunks; and, reported apart,
the content-dependent file size, bytes per pixel and IDAT chunk count) predict real vs fake; a
properly built benchmark passes it.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...data import Manifest
from ...data.processing import estimate_jpeg_quality

#: container features: must carry no information about the label in a proper benchmark
CONTAINER_FEATURES = ("format_png", "format_jpeg", "width", "height", "bit_depth", "channels", "jpeg_quality",
                      "png_zlib_level", "metadata_chunks")
#: content-dependent size features: reported apart (smooth images compress better, legitimately);
#: encoders split IDAT data into fixed-size chunks, so the IDAT count follows the compressed size
SIZE_FEATURES = ("file_size", "bytes_per_pixel", "png_idat_chunks")
_BITS = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "CMYK": 8, "I;16": 16, "I;16B": 16, "I;16L": 16,
         "I": 32, "F": 32}
_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}


def _png_chunks(data: bytes) -> tuple[int, int, int]:
    """(zlib FLEVEL of the first IDAT, number of IDAT chunks, number of ancillary chunks)."""
    pos, level, n_idat, n_anc = 8, -1, 0, 0
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if ctype == b"IDAT":
            if n_idat == 0 and len(body) >= 2:
                level = body[1] >> 6  # RFC 1950 FLG.FLEVEL: 0 fastest … 3 maximum compression
            n_idat += 1
        elif ctype not in _CRITICAL:
            n_anc += 1
        if ctype == b"IEND":
            break
        pos += 12 + length
    return level, n_idat, n_anc


def format_features(path: str | Path) -> dict[str, float]:
    """File-format statistics of one image file (no pixel decoding except the header)."""
    path = Path(path)
    data = path.read_bytes()
    feats: dict[str, float] = {"file_size": float(len(data))}
    with Image.open(path) as im:
        fmt, (w, h), mode = im.format or "", im.size, im.mode
        n_channels = len(im.getbands())
        info_keys = [k for k in im.info if k not in ("dpi",)]
    feats.update(
        format_png=float(fmt == "PNG"), format_jpeg=float(fmt == "JPEG"), width=float(w), height=float(h),
        bit_depth=float(_BITS.get(mode, 8)), channels=float(n_channels),
        bytes_per_pixel=len(data) / max(1, w * h * n_channels),
    )
    feats["jpeg_quality"] = float(estimate_jpeg_quality(path) or 0) if fmt == "JPEG" else 0.0
    if fmt == "PNG":
        level, n_idat, n_anc = _png_chunks(data)
        feats.update(png_zlib_level=float(level), png_idat_chunks=float(n_idat), metadata_chunks=float(n_anc))
    else:
        feats.update(png_zlib_level=-1.0, png_idat_chunks=0.0, metadata_chunks=float(len(info_keys)))
    return feats


@dataclass
class FormatReport:
    """Per-feature separability (max(AUC, 1−AUC)) and a cross-validated logistic regression."""

    n: int
    feature_auc: dict[str, float]
    container_lr_auc: float
    size_lr_auc: float
    per_modality: dict[str, dict[str, Any]]
    tolerance: float
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def _separability(y: np.ndarray, x: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if np.ptp(x) == 0 or y.min() == y.max():
        return 0.5
    auc = float(roc_auc_score(y, x))
    return max(auc, 1.0 - auc)


def _lr_auc(y: np.ndarray, X: np.ndarray, seed: int = 0) -> float:
    """5-fold (or fewer) cross-validated AUC of a standardised logistic regression; 0.5 if nothing varies."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = np.ptp(X, axis=0) > 0 if X.size else np.zeros(0, bool)
    n_min = int(min((y == 0).sum(), (y == 1).sum()))
    if not keep.any() or n_min < 2:
        return 0.5
    folds = min(5, n_min)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    prob = cross_val_predict(model, X[:, keep], y, cv=cv, method="predict_proba")[:, 1]
    from sklearn.metrics import roc_auc_score

    # one-sided: cross-validated predictions of uninformative features are anti-correlated with the
    # labels (each training fold holds the opposite class imbalance), so AUC < 0.5 means "no information"
    return float(roc_auc_score(y, prob)) if np.ptp(prob) > 0 else 0.5


def format_statistics_check(
    manifest: Manifest, *, tolerance: float = 0.6, size_warning: float = 0.8, min_per_class: int = 5
) -> FormatReport:
    """How well file-format statistics predict real vs fake (see :data:`CONTAINER_FEATURES`).

    Fails when any container feature, or a cross-validated logistic regression on all of them,
    separates the classes with AUC above ``tolerance`` — overall or within a modality with at
    least ``min_per_class`` images per class. File size, bytes per pixel and the number of PNG
    IDAT chunks (:data:`SIZE_FEATURES`) depend on image content as well as on the file history;
    above ``size_warning`` they produce a warning.
    """
    feats, labels, mods, errors = [], [], [], []
    for row in manifest:
        try:
            feats.append(format_features(row.resolve(manifest.root)))
        except (OSError, ValueError) as err:
            errors.append(f"{row.path}: {type(err).__name__}: {err}")
            continue
        labels.append(row.y)
        mods.append(row.modality)
    y = np.asarray(labels, dtype=np.int64)
    names = CONTAINER_FEATURES + SIZE_FEATURES
    X = np.array([[f[k] for k in names] for f in feats], dtype=np.float64).reshape(len(feats), len(names))
    nc = len(CONTAINER_FEATURES)
    failures, warns = [], []

    def assess(sel: np.ndarray, where: str) -> dict[str, Any]:
        ys, Xs = y[sel], X[sel]
        aucs = {k: round(_separability(ys, Xs[:, i]), 4) for i, k in enumerate(names)}
        lr_c = round(_lr_auc(ys, Xs[:, :nc]), 4)
        lr_s = round(_lr_auc(ys, Xs[:, nc:]), 4)
        for k in CONTAINER_FEATURES:
            if aucs[k] > tolerance:
                failures.append(f"{where}: {k} separates real/fake (AUC {aucs[k]:.3f} > {tolerance})")
        if lr_c > tolerance:
            failures.append(f"{where}: logistic regression on container features reaches AUC {lr_c:.3f} > {tolerance}")
        for k in SIZE_FEATURES:
            if aucs[k] > size_warning:
                warns.append(f"{where}: {k} separates real/fake (AUC {aucs[k]:.3f}); content-dependent — check that "
                             "both classes share resolution and post-processing")
        return {"feature_auc": aucs, "container_lr_auc": lr_c, "size_lr_auc": lr_s,
                "n_real": int((ys == 0).sum()), "n_fake": int((ys == 1).sum())}

    if len(y) == 0 or y.min() == y.max():
        return FormatReport(len(y), {}, 0.5, 0.5, {}, tolerance, [], ["one class only: nothing to check"], errors)
    overall = assess(np.ones(len(y), bool), "all")
    per_mod = {}
    for m in sorted(set(mods)):
        sel = np.array([x == m for x in mods])
        if min((y[sel] == 0).sum(), (y[sel] == 1).sum()) >= min_per_class:
            per_mod[m] = assess(sel, m)
    return FormatReport(len(y), overall["feature_auc"], overall["container_lr_auc"], overall["size_lr_auc"], per_mod,
                        tolerance, failures, warns, errors)
