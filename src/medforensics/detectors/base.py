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
#: a region-of-interest request: one centre (y, x) for every image, or one (y, x) / None per image
Roi = tuple[float, float] | Sequence[tuple[float, float] | None] | None


def roi_centres(roi: Roi, n: int, hw: tuple[int, int]) -> list[tuple[float, float] | None]:
    """One centre (y, x) or None per image, checked to lie inside the H×W (preprocessed) image."""
    if roi is None:
        return [None] * n
    seq = list(roi)
    if len(seq) == 2 and all(isinstance(v, (int, float, np.integer, np.floating)) for v in seq):
        centres: list = [(float(seq[0]), float(seq[1]))] * n
    else:
        if len(seq) != n:
            raise ValueError(f"got {len(seq)} ROI centres for {n} images")
        centres = [None if c is None else (float(c[0]), float(c[1])) for c in seq]
    h, w = hw
    for c in centres:
        if c is not None and not (0 <= c[0] < h and 0 <= c[1] < w):
            raise ValueError(f"ROI centre (y={c[0]:g}, x={c[1]:g}) lies outside the {h}×{w} image")
    return centres


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
    def score(self, images: ImageBatch, roi: Roi = None) -> np.ndarray:
        """Probability of fake for each image, shape (N,), float64 in [0, 1].

        ``roi``: score only the region of interest around a centre (y, x) in preprocessed pixels — one
        centre for every image, or one per image (None = the whole image); see :meth:`_roi_arrays`."""
        batch = self.prepare(images)
        if len(batch) == 0:
            return np.zeros(0)
        if roi is not None:
            scores, _ = self._roi_arrays(batch, roi_centres(roi, len(batch), tuple(batch.shape[-2:])), maps=False)
            return np.asarray(scores, dtype=np.float64).reshape(-1)
        return np.asarray(self._score_arrays(batch), dtype=np.float64).reshape(-1)

    @torch.no_grad()
    def anomaly_map(self, images: ImageBatch) -> np.ndarray | None:
        """Per-pixel evidence maps (N×H×W in [0, 1]) if the detector can localise, else None."""
        return self._anomaly_map_arrays(self.prepare(images))

    @torch.no_grad()
    def score_with_maps(self, images: ImageBatch, roi: Roi = None) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`score` and :meth:`anomaly_map` together; detectors that get both from one forward
        pass override :meth:`_score_and_map_arrays` (the default calls the two methods). ``roi`` as in
        :meth:`score`."""
        batch = self.prepare(images)
        if len(batch) == 0:
            return np.zeros(0), None
        if roi is not None:
            scores, maps = self._roi_arrays(batch, roi_centres(roi, len(batch), tuple(batch.shape[-2:])))
        else:
            scores, maps = self._score_and_map_arrays(batch)
        return np.asarray(scores, dtype=np.float64).reshape(-1), maps

    def _score_and_map_arrays(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        return self._score_arrays(batch), self._anomaly_map_arrays(batch)

    def _roi_arrays(self, batch: torch.Tensor, centres: list[tuple[float, float] | None], maps: bool = True
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (and maps) of the regions of interest around ``centres`` (preprocessed pixels, None = whole
        image). Default: the square of side ``roi_side()`` around the centre (shifted to stay inside) is
        cropped, resized back to the input size (bilinear) and scored as an image; its map is resized to the
        square and placed there (zero elsewhere). Detectors that can score a region natively override this."""
        n, _, h, w = batch.shape
        side = self.roi_side((h, w))
        crops, boxes = [], []
        for i, c in enumerate(centres):
            if c is None:
                crops.append(batch[i])
                boxes.append(None)
                continue
            y0 = min(max(0, int(round(float(c[0]) - side / 2))), h - side)
            x0 = min(max(0, int(round(float(c[1]) - side / 2))), w - side)
            crop = batch[i : i + 1, :, y0 : y0 + side, x0 : x0 + side]
            crops.append(torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0])
            boxes.append((y0, x0))
        stacked = torch.stack(crops)
        if not maps:
            return np.asarray(self._score_arrays(stacked)), None
        scores, crop_maps = self._score_and_map_arrays(stacked)
        if crop_maps is None:
            return np.asarray(scores), None
        crop_maps = np.asarray(crop_maps, dtype=np.float32)
        out = np.zeros((n, h, w), np.float32)
        for i, box in enumerate(boxes):
            if box is None:
                out[i] = crop_maps[i]
                continue
            small = torch.nn.functional.interpolate(torch.from_numpy(crop_maps[i])[None, None], size=(side, side),
                                                    mode="bilinear", align_corners=False)[0, 0].numpy()
            out[i, box[0] : box[0] + side, box[1] : box[1] + side] = small
        return np.asarray(scores), out

    def roi_side(self, hw: tuple[int, int]) -> int:
        """Side (preprocessed pixels) of the region of interest the default :meth:`_roi_arrays` scores:
        half the input's shorter side."""
        return max(1, min(hw) // 2)

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
