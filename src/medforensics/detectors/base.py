"""The small interface every detector implements (anomalib-style), and the model-directory format.

A *model directory* holds:

- ``config.json``  — detector name and version, its constructor config, preprocessing, the
  calibrated threshold and the FPR it was calibrated at, a training-data summary;
- ``weights.safetensors`` — every tensor the detector needs (no pickles, ever);
- ``MODEL_CARD.md`` — optional human-readable card.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..io.preprocess import Preprocessing
from ..io.types import MedImage

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "MODEL_CARD.md"
FORMAT_VERSION = 1

ImageBatch = Sequence[MedImage] | np.ndarray | torch.Tensor


class Detector(ABC):
    """Scores images with the probability that they are AI-generated or tampered (1 = fake).

    Subclasses set ``name`` (the registry key), ``version`` and ``supervised``, and implement
    :meth:`fit`, :meth:`_score_arrays`, :meth:`state_dict` and :meth:`load_state_dict`.
    Options are declared at class level: ``DEFAULTS`` (every option and its default; the constructor
    merges the given config over it and rejects unknown keys), ``DERIVED`` (informational keys the
    detector writes into its own config, accepted back and dropped when a saved model is loaded) and
    ``DEFAULT_PREPROCESSING`` (used when no ``preprocessing`` is given).
    ``train``/``val`` passed to :meth:`fit` are sequences (e.g. :class:`medforensics.data.ImageDataset`)
    whose items are dicts with ``image`` (C×H×W float tensor, already preprocessed with
    ``self.preprocessing``), ``label`` (0 real, 1 fake) and optionally ``mask`` (H×W, 1 = tampered).
    Unsupervised detectors ignore fake items (or are given real ones only).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    supervised: ClassVar[bool] = True
    #: every option with its default; None = options are not declared (the config is kept as given)
    DEFAULTS: ClassVar[dict[str, Any] | None] = None
    #: informational keys the detector writes into its own config (dropped when a saved model is loaded)
    DERIVED: ClassVar[tuple[str, ...]] = ()
    DEFAULT_PREPROCESSING: ClassVar[Preprocessing] = Preprocessing()

    def __init__(self, preprocessing: Preprocessing | dict | None = None, seed: int = 0, **config: Any):
        if isinstance(preprocessing, dict):
            preprocessing = Preprocessing.from_dict(preprocessing)
        self.preprocessing: Preprocessing = preprocessing or self.DEFAULT_PREPROCESSING
        self.seed = seed
        self.config: dict[str, Any] = (dict(config) if self.DEFAULTS is None
                                       else merge_config(self.name, self.DEFAULTS, config, self.DERIVED))
        self.threshold: float = 0.5
        self.calibration: dict[str, Any] = {"method": "default", "threshold": 0.5}
        self.training_summary: dict[str, Any] = {}
        #: inference runtime recorded in the model directory (see :mod:`medforensics.detectors.runtime`)
        self.runtime: dict[str, Any] | None = None
        #: the model directory this detector was loaded from (None when built in memory)
        self.model_dir: Path | None = None

    # ----------------------------------------------------------------- interface
    @abstractmethod
    def fit(self, train: Sequence[dict], val: Sequence[dict] | None = None) -> dict[str, Any]:
        """Train on ``train`` (and monitor ``val``); return a summary of the training run."""

    @abstractmethod
    def _score_arrays(self, batch: torch.Tensor) -> np.ndarray:
        """Probabilities (N,) in [0, 1] for a preprocessed N×C×H×W float tensor."""

    def _anomaly_map_arrays(self, batch: torch.Tensor) -> np.ndarray | None:
        """N×H×W evidence maps in [0, 1] at the preprocessed resolution, or None if unsupported."""
        return None

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors needed to reproduce scores (saved as safetensors)."""

    @abstractmethod
    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict`."""

    # ----------------------------------------------------------------- public API
    def prepare(self, images: ImageBatch) -> torch.Tensor:
        """Apply this detector's stored preprocessing; arrays/tensors are taken as already prepared."""
        if isinstance(images, torch.Tensor):
            return images.float()
        if isinstance(images, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return torch.from_numpy(np.stack([self.preprocessing(im) for im in images]))

    @torch.no_grad()
    def score(self, images: ImageBatch) -> np.ndarray:
        """Probability of fake for each image, shape (N,), float64 in [0, 1]."""
        batch = self.prepare(images)
        if len(batch) == 0:
            return np.zeros(0)
        return np.asarray(self._score_arrays(batch), dtype=np.float64).reshape(-1)

    @torch.no_grad()
    def anomaly_map(self, images: ImageBatch) -> np.ndarray | None:
        """Per-pixel evidence maps (N×H×W in [0, 1]) if the detector can localise, else None."""
        return self._anomaly_map_arrays(self.prepare(images))

    @torch.no_grad()
    def score_with_maps(self, images: ImageBatch) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`score` and :meth:`anomaly_map` together; detectors that get both from one forward
        pass override :meth:`_score_and_map_arrays` (the default calls the two methods)."""
        batch = self.prepare(images)
        if len(batch) == 0:
            return np.zeros(0), None
        scores, maps = self._score_and_map_arrays(batch)
        return np.asarray(scores, dtype=np.float64).reshape(-1), maps

    def _score_and_map_arrays(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        return self._score_arrays(batch), self._anomaly_map_arrays(batch)

    def predict(self, images: ImageBatch) -> tuple[np.ndarray, np.ndarray]:
        """Scores and verdicts (score >= threshold) at the calibrated operating point."""
        scores = self.score(images)
        return scores, scores >= self.threshold

    def set_threshold(self, threshold: float, **calibration: Any) -> None:
        """Fix the operating point; ``calibration`` records how it was chosen (e.g. target FPR)."""
        self.threshold = float(threshold)
        self.calibration = {"threshold": float(threshold), **calibration}

    def calibrate_on_real_val(self, labels: np.ndarray, scores: np.ndarray, target_fpr: float) -> bool:
        """Set τ so that ``target_fpr`` of the real (label 0) validation scores are flagged.

        The sorted real scores are kept in the calibration record, so the operating point can be
        moved later (``scan --fpr``) without re-scoring. Returns False when there is no real score.
        """
        from ..eval.calibration import calibrate

        labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
        real = scores[labels == 0]
        if real.size == 0:
            return False
        cal = calibrate(real, target_fpr)
        self.set_threshold(cal.pop("threshold"), **{**cal, "method": "fpr_on_real_val"},
                           real_val_scores=[round(float(v), 6) for v in np.sort(real)])
        return True

    # ----------------------------------------------------------------- persistence
    def get_config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "detector": self.name,
            "detector_version": self.version,
            "supervised": self.supervised,
            "seed": self.seed,
            "config": self.config,
            "preprocessing": self.preprocessing.to_dict(),
            "threshold": self.threshold,
            "calibration": self.calibration,
            "training": self.training_summary,
            **({"runtime": self.runtime} if self.runtime else {}),
        }

    def save(self, directory: str | Path, model_card: str | None = None) -> Path:
        """Write ``config.json`` + ``weights.safetensors`` (+ ``MODEL_CARD.md``) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"detector": self.name})
        (directory / CONFIG_FILE).write_text(json.dumps(self.get_config(), indent=2, default=_json_default))
        if model_card is not None:
            (directory / CARD_FILE).write_text(model_card)
        return directory

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Detector":
        det = cls(preprocessing=cfg.get("preprocessing"), seed=cfg.get("seed", 0), **cfg.get("config", {}))
        det.threshold = float(cfg.get("threshold", 0.5))
        det.calibration = dict(cfg.get("calibration", {}))
        det.training_summary = dict(cfg.get("training", {}))
        det.runtime = cfg.get("runtime") or None
        return det

    @classmethod
    def load(cls, directory: str | Path) -> "Detector":
        """Load a model directory written by :meth:`save` (safetensors only, nothing unpickled)."""
        from .registry import load_detector

        det = load_detector(directory)
        if cls is not Detector and not isinstance(det, cls):
            raise TypeError(f"{directory} holds a {det.name!r} detector, not {cls.name!r}")
        return det


def merge_config(name: str, defaults: dict[str, Any], config: dict[str, Any],
                 derived: Sequence[str] = ()) -> dict[str, Any]:
    """``defaults`` overridden by ``config``; unknown keys are a TypeError naming them.

    ``derived`` keys are informational values a detector writes into its own config (e.g. a
    backbone description); they are accepted back, and dropped, when a saved model is loaded.
    """
    config = {k: v for k, v in config.items() if k not in derived}
    unknown = set(config) - set(defaults)
    if unknown:
        raise TypeError(f"unknown {name} options: {', '.join(sorted(unknown))}; known: {', '.join(sorted(defaults))}")
    return {**defaults, **config}


def read_model_dir(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and validate a model directory's config and tensors."""
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory: {CONFIG_FILE} is missing")
    if not w_path.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory: {WEIGHTS_FILE} is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path}: invalid JSON ({exc})") from exc
    if "detector" not in cfg:
        raise ValueError(f"{cfg_path}: no 'detector' field")
    return cfg, load_file(str(w_path))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
