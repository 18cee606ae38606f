"""The blinded reader study (the paper's Table 3): humans vs a detector on the same images.

Design
    * ``n`` images, half real and half fake, **matched by modality** (each modality contributes
      as many real as fake images), drawn with ``seed`` from a manifest (by default only its
      held-out ``test`` split, so the detector is not judged on its own training images).
    * Every image is shown the same way whatever its class or file type: the middle frame,
      standardised like the detector's input (square centre crop) to :data:`DISPLAY_SIZE` px and
      re-encoded as an 8-bit RGB PNG without metadata — file format, size, bit depth or EXIF
      cannot give the answer away. Pages and API responses carry opaque positions only.
    * Each reader session gets its own random order; the reader answers real/fake with a
      confidence from 1 (guess) to 5 (certain).

Scoring
    The reader's answers become a score in [0, 1] — ``s = 0.5 + c/10`` for "fake" with confidence
    ``c`` and ``s = 0.5 − c/10`` for "real" — so accuracy is taken at 0.5 and AUC ranks by
    confidence. The detector's score is its probability of fake and its accuracy is taken at its
    calibrated threshold. Both get class-balanced bootstrap 95% intervals; agreement is reported
    as the fraction of equal verdicts and Cohen's κ.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..data import Manifest, ManifestRow, patient_split
from ..detectors import Detector
from ..io import load, standardise
from ..engine import ScanEngine, model_fingerprint

log = logging.getLogger("medforensics.reader_study")

DISPLAY_SIZE = 512
CONFIDENCE = (1, 2, 3, 4, 5)
READER_SCORE_RULE = "answer 'fake' with confidence c -> 0.5 + c/10; answer 'real' -> 0.5 - c/10"


@dataclass(frozen=True)
class StudyImage:
    """One image of the study (server side only: never sent to the page)."""

    image_ref: str  # absolute path
    truth: int  # 0 real, 1 fake
    modality: str
    detector_score: float


def reader_score(answer: int, confidence: int) -> float:
    """Reader's answer and confidence (1..5) → a score in [0, 1] (see the module docstring)."""
    if answer not in (0, 1) or confidence not in CONFIDENCE:
        raise ValueError(f"answer must be 0/1 and confidence 1..5, got {answer!r}, {confidence!r}")
    return 0.5 + (confidence / 10.0 if answer == 1 else -confidence / 10.0)


def display_png(path: str | Path, size: int = DISPLAY_SIZE, fit: str = "center_crop") -> bytes:
    """The blinded rendering of an image file: middle frame, square, ``size`` px, 8-bit RGB PNG, no metadata."""
    img = load(path)
    view = standardise(img.pixels, size, fit=fit)
    if view.ndim == 2:
        view = np.repeat(view[..., None], 3, axis=2)
    buf = io.BytesIO()
    Image.fromarray((np.clip(view, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def select_split(manifest: Manifest, split: str, *, seed: int = 0, test_fraction: float = 0.2) -> Manifest:
    """Rows of ``split`` ("all", or a split name); an unsplit manifest is split by patient first,
    exactly like ``medforensics train`` does by default (``patient_split(test_fraction, seed)``)."""
    if split == "all":
        return manifest
    if not any(r.split for r in manifest.rows):
        manifest = patient_split(manifest, test_fraction=test_fraction, seed=seed)
    chosen = manifest.filter(split=split)
    if not len(chosen):
        raise ValueError(f"the manifest has no rows in split {split!r}")
    return chosen


def allocate_pairs(capacity: dict[str, int], n_pairs: int, rng: np.random.Generator) -> dict[str, int]:
    """Spread ``n_pairs`` (real, fake) pairs over modalities round-robin, within each one's capacity."""
    if sum(capacity.values()) < n_pairs:
        raise ValueError(f"only {sum(capacity.values())} modality-matched real/fake pairs are available, "
                         f"{n_pairs} needed; lower --n or use a larger manifest / --split all")
    alloc = {m: 0 for m in capacity}
    order = sorted(capacity)
    rng.shuffle(order)
    while sum(alloc.values()) < n_pairs:
        for m in order:
            if alloc[m] < capacity[m] and sum(alloc.values()) < n_pairs:
                alloc[m] += 1
    return alloc


def _finite(x: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, numpy scalars → Python."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def summarise(items: list[dict[str, Any]], *, detector_threshold: float, modalities: dict[str, str] | None = None,
              n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Reader vs detector metrics on answered ``items`` (store rows: truth, answer, confidence, detector_score)."""
    from sklearn.metrics import cohen_kappa_score

    from ..eval import bootstrap_metrics, compute_metrics

    done = [it for it in items if it.get("answer") is not None]
    if not done:
        raise ValueError("no answered items")
    y = np.array([int(it["truth"]) for it in done])
    r = np.array([reader_score(int(it["answer"]), int(it["confidence"])) for it in done])
    d = np.array([np.nan if it["detector_score"] is None else float(it["detector_score"]) for it in done])
    keep_d = np.isfinite(d)
    reader = compute_metrics(y, r, threshold=0.5)
    detector = compute_metrics(y[keep_d], d[keep_d], threshold=detector_threshold) if keep_d.any() else {}
    names = ("acc", "auc", "real_acc", "fake_acc")
    boot = {"reader": bootstrap_metrics(y, r, threshold=0.5, n_iter=n_boot, seed=seed, metrics=names)}
    if keep_d.any():
        boot["detector"] = bootstrap_metrics(y[keep_d], d[keep_d], threshold=detector_threshold, n_iter=n_boot,
                                             seed=seed, metrics=names)
    reader_fake = np.array([int(it["answer"]) for it in done])
    det_fake = (d >= detector_threshold).astype(int)
    agree = float((reader_fake[keep_d] == det_fake[keep_d]).mean()) if keep_d.any() else float("nan")
    kappa = float(cohen_kappa_score(reader_fake[keep_d], det_fake[keep_d])) if keep_d.sum() > 1 else float("nan")
    per_mod: dict[str, Any] = {}
    if modalities:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, it in enumerate(done):
            groups[modalities.get(it["image_ref"], "?")].append(i)
        for mod, idx in sorted(groups.items()):
            ix = np.array(idx)
            per_mod[mod] = {"n": len(idx), "reader_acc": float(((r[ix] >= 0.5) == y[ix]).mean()),
                            "detector_acc": float(((d[ix] >= detector_threshold) == y[ix]).mean())}
    conf = np.array([int(it["confidence"]) for it in done])
    correct = (r >= 0.5) == y
    out = {
        "n": len(done), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
        "reader_score_rule": READER_SCORE_RULE,
        "reader": reader, "detector": detector, "bootstrap": boot,
        "agreement": {"fraction": agree, "cohen_kappa": kappa},
        "confidence": {"mean_when_correct": float(conf[correct].mean()) if correct.any() else None,
                       "mean_when_wrong": float(conf[~correct].mean()) if (~correct).any() else None},
        "per_modality": per_mod,
        "items": [{"position": it["position"], "truth": "fake" if it["truth"] else "real",
                   "answer": "fake" if it["answer"] else "real", "confidence": it["confidence"],
                   "reader_score": float(r[i]), "detector_score": it["detector_score"],
                   "detector_verdict": None if not keep_d[i] else ("fake" if d[i] >= detector_threshold else "real"),
                   "modality": (modalities or {}).get(it["image_ref"])} for i, it in enumerate(done)],
    }
    return _finite(out)


class ReaderStudy:
    """A prepared set of blinded images with detector scores; sessions and answers live in the store."""

    def __init__(self, images: list[StudyImage], *, store: Any, detector_name: str, detector_threshold: float,
                 seed: int = 0, display_size: int = DISPLAY_SIZE, fit: str = "center_crop", n_boot: int = 1000):
        if not images:
            raise ValueError("a reader study needs images")
        self.images = list(images)
        self.store = store
        self.detector_name = detector_name
        self.detector_threshold = float(detector_threshold)
        self.seed = int(seed)
        self.display_size = display_size
        self.fit = fit
        self.n_boot = int(n_boot)
        self._png: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._n_sessions = 0

    # ------------------------------------------------------------------ building
    @classmethod
    def prepare(cls, manifest: Manifest, detector: Detector, *, store: Any, n: int = 50, seed: int = 0,
                detector_name: str | None = None, modality: str | None = None, max_frames: int = 16,
                n_boot: int = 1000, progress: Callable[[int, int], None] | None = None) -> "ReaderStudy":
        """Draw a modality-matched, balanced set of ``n`` readable images and score them with ``detector``."""
        if n < 2 or n % 2:
            raise ValueError(f"n must be an even number >= 2 (half real, half fake), got {n}")
        rows = [r for r in manifest.rows if r.label in ("real", "fake") and (modality is None or r.modality == modality)]
        by: dict[tuple[str, str], list[ManifestRow]] = defaultdict(list)
        for r in rows:
            by[(r.modality, r.label)].append(r)
        capacity = {m: min(len(by[(m, "real")]), len(by[(m, "fake")])) for m in {r.modality for r in rows}}
        capacity = {m: c for m, c in capacity.items() if c > 0}
        rng = np.random.default_rng(seed)
        alloc = allocate_pairs(capacity, n // 2, rng)
        tau = float(detector.threshold)
        model_id = detector_name or model_fingerprint(detector)
        engine = ScanEngine(detector, threshold=tau, max_frames=max_frames, model_id=model_id, workers=0)
        images: list[StudyImage] = []
        done = 0
        for mod in sorted(alloc):
            for label in ("real", "fake"):
                candidates = list(by[(mod, label)])
                order = rng.permutation(len(candidates))
                need, got = alloc[mod], 0
                for k in order:
                    if got == need:
                        break
                    path = candidates[k].resolve(manifest.root)
                    (res,) = engine.scan([path])
                    if not res.ok:
                        log.warning("skipping an image the detector could not score: %s", res.error)
                        continue
                    images.append(StudyImage(str(path), 1 if label == "fake" else 0, mod, float(res.score)))
                    got += 1
                    done += 1
                    if progress:
                        progress(done, n)
                if got < need:
                    raise ValueError(f"only {got} readable {label} {mod} images, {need} needed")
        return cls(images, store=store, detector_name=model_id, detector_threshold=tau, seed=seed,
                   fit=detector.preprocessing.fit, n_boot=n_boot)

    # ------------------------------------------------------------------ sessions
    def new_session(self, reader: str) -> str:
        """A session over all images in a fresh random order (seeded by the study seed and session count)."""
        reader = reader.strip()[:128] or "anonymous"
        with self._lock:
            k = self._n_sessions
            self._n_sessions += 1
        order = np.random.default_rng([self.seed, k]).permutation(len(self.images))
        items = [{"position": pos, "image_ref": self.images[i].image_ref, "truth": self.images[i].truth,
                  "detector_score": self.images[i].detector_score} for pos, i in enumerate(order)]
        return self.store.create_reader_session(reader=reader, detector=self.detector_name, items=items,
                                                seed=self.seed * 1_000_003 + k)

    def status(self, session_id: str) -> dict[str, Any]:
        """Blinded progress of a session: counts and the next unanswered position, nothing else."""
        sess = self.store.reader_session(session_id)
        if sess is None:
            raise KeyError(session_id)
        items = self.store.reader_items(session_id)
        pending = [it["position"] for it in items if it["answer"] is None]
        return {"session_id": session_id, "reader": sess["reader"], "n": sess["n_items"],
                "n_answered": sess["n_answered"], "next_position": pending[0] if pending else None,
                "status": sess["status"]}

    def image_png(self, session_id: str, position: int) -> bytes:
        """The blinded PNG shown at ``position`` of a session."""
        ref = next((it["image_ref"] for it in self.store.reader_items(session_id) if it["position"] == position), None)
        if ref is None:
            raise KeyError(position)
        with self._lock:
            cached = self._png.get(ref)
        if cached is None:
            cached = display_png(ref, self.display_size, self.fit)
            with self._lock:
                self._png[ref] = cached
        return cached

    def answer(self, session_id: str, position: int, *, answer: int, confidence: int) -> None:
        reader_score(answer, confidence)  # validates
        sess = self.store.reader_session(session_id)
        if sess is None:
            raise KeyError(session_id)
        if sess["status"] == "finished":
            raise PermissionError("this session is finished; answers can no longer change")
        self.store.record_reader_answer(session_id, position, answer=answer, confidence=confidence)

    def finish(self, session_id: str) -> dict[str, Any]:
        """Compute and store the reader-vs-detector summary; every item must be answered."""
        sess = self.store.reader_session(session_id)
        if sess is None:
            raise KeyError(session_id)
        if sess["status"] == "finished" and sess["summary"]:
            return sess["summary"]
        items = self.store.reader_items(session_id)
        missing = sum(it["answer"] is None for it in items)
        if missing:
            raise ValueError(f"{missing} of {len(items)} images are not answered yet")
        modalities = {im.image_ref: im.modality for im in self.images}
        summary = summarise(items, detector_threshold=self.detector_threshold, modalities=modalities,
                            n_boot=self.n_boot, seed=self.seed)
        summary = {"session_id": session_id, "reader_name": sess["reader"],
                   "detector_model": {"model_id": self.detector_name, "threshold": self.detector_threshold},
                   **summary}
        self.store.finish_reader_session(session_id, summary)
        return summary

    def summary(self, session_id: str) -> dict[str, Any] | None:
        sess = self.store.reader_session(session_id)
        if sess is None:
            raise KeyError(session_id)
        return sess["summary"] if sess["status"] == "finished" else None
