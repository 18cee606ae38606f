"""Whole-image CNN detectors trained from scratch (the base of ``npr`` and ``f3net``).

Training: seeded, class-balanced loader, AdamW + one-cycle schedule, random training crops (a
tampered image's crop is labelled fake only if it overlaps the tampered region), BCE, best epoch by
validation AUC (BCE breaks ties), threshold calibrated on validation reals at ``target_fpr``.
Scores are computed on the whole image; the heat-map is the class-activation map (CAM) of the last
feature map — per-location logits ``w·F + b`` whose spatial mean *is* the image logit — through a
sigmoid and bilinearly up-sampled to the input size.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..base import Detector
from .device import resolve_device
from .fit import fit_epochs, optimiser_step
from .selection import validation_metrics
from .supervised import crop_origin, supervised_setup

#: options every ScratchCNNDetector understands (subclasses put their model's options in front)
TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 16,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "train_crop": 128,  # random square crop for training (None = whole image); scoring uses the whole image
    "min_mask_fraction": 0.02,
    "target_fpr": 0.05,
    "num_workers": 0,
    "score_batch": 16,
    "device": "cpu",  # "cpu", "cuda", "auto"
    "progress": True,
}


def cam_map(cam_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N×h×w CAM logits → N×H×W evidence map in [0, 1] (sigmoid, bilinear up-sampling)."""
    prob = torch.sigmoid(cam_logits)[:, None]
    return F.interpolate(prob, size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0.0, 1.0)


class ScratchCNNDetector(Detector):
    """Whole-image CNN detector trained from scratch (shared by ``npr`` and ``f3net``).

    Subclasses set ``DEFAULTS = {<model options>, **TRAINING_DEFAULTS}`` and implement
    :meth:`build_model`, returning a module with ``forward(images) -> N logits`` and
    ``cam(images) -> N×h×w`` per-location logits.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = TRAINING_DEFAULTS
    supervised = True

    def __init__(self, **config: Any):
        super().__init__(**config)
        crop = self.config["train_crop"]
        if crop is not None and (not isinstance(crop, int) or crop < 8):
            raise ValueError(f"train_crop must be None or an integer >= 8, got {crop!r}")
        torch.manual_seed(self.seed)
        self.model = self.build_model()
        self.model.eval()
        self.device = resolve_device(self.config["device"])
        self.model.to(self.device)

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The network, built from ``self.config`` and ``self.preprocessing``."""

    def after_step(self) -> None:
        """Hook run after each optimiser step (e.g. re-imposing a constraint)."""

    # ------------------------------------------------------------------ scoring
    def _chunks(self, batch: torch.Tensor):
        for part in batch.split(self.config["score_batch"]):
            yield part.to(self.device)

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            return torch.cat([self.model(p).float().cpu() for p in self._chunks(batch)])

    def _score_arrays(self, batch: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(self._logits(batch)).numpy()

    def _anomaly_map_arrays(self, batch: torch.Tensor) -> np.ndarray:
        self.model.eval()
        size = tuple(batch.shape[-2:])
        with torch.no_grad():
            maps = [cam_map(self.model.cam(p).float(), size).cpu() for p in self._chunks(batch)]
        return torch.cat(maps).numpy()

    # ------------------------------------------------------------------ training
    def _train_crops(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One random crop per image (even offsets keep the 2×2 pixel grid); crop labels from the masks."""
        c = self.config
        n, _, h, w = images.shape
        p = c["train_crop"]
        if p is None or (p >= h and p >= w):
            return images, labels.float()
        p = min(p, h, w)
        crops, ys = [], []
        for i in range(n):
            m = masks[i]
            partial = bool(labels[i] > 0.5) and 0 < float(m.mean()) < 1
            towards = partial and rng.random() < 0.5  # centre on a random tampered pixel
            y0, x0 = crop_origin(rng, p, (h, w), np.nonzero(m.numpy() > 0.5) if towards else None)
            y0, x0 = y0 - y0 % 2, x0 - x0 % 2
            crops.append(images[i, :, y0 : y0 + p, x0 : x0 + p])
            if partial:
                ys.append(float(m[y0 : y0 + p, x0 : x0 + p].mean() >= c["min_mask_fraction"]))
            else:
                ys.append(float(labels[i] > 0.5))
        return torch.stack(crops), torch.tensor(ys)

    def fit(self, train: Sequence[dict], val: Sequence[dict] | None = None) -> dict[str, Any]:
        """Train with BCE; keep the epoch with the best validation AUC; calibrate τ on val reals."""
        c = self.config
        rng, loader, opt, sched = supervised_setup(self.model, train, c, self.seed)
        val_x, val_y = _stack(val) if val is not None and len(val) else (None, None)
        t0 = time.time()

        def step(_: int, batch: dict) -> float:
            x, y = self._train_crops(batch["image"], batch["label"], batch["mask"], rng)
            loss = F.binary_cross_entropy_with_logits(self.model(x.to(self.device)), y.to(self.device))
            value = optimiser_step(loss, opt, sched)
            self.after_step()
            return value

        def validate() -> dict[str, Any]:
            return validation_metrics(val_y, self._score_arrays(val_x).astype(np.float64))

        result = fit_epochs(self.model, c["epochs"], lambda epoch: _epoch(train, loader, epoch), step,
                            validate=validate if val_x is not None else None, desc=f"{self.name} epoch",
                            show_progress=bool(c["progress"]), prefix=f"  {self.name}: ")
        summary: dict[str, Any] = {
            "n_train": len(train), "n_val": len(val) if val is not None else 0, "best_epoch": result.best_epoch,
            "history": result.history, "seconds": round(time.time() - t0, 1),
        }
        if val_x is not None and (val_y == 0).any():
            real = self._score_arrays(val_x[torch.from_numpy(val_y == 0)]).astype(np.float64)
            self.calibrate_on_real_val(np.zeros(len(real)), real, c["target_fpr"])
        self.training_summary = summary
        return summary

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors)
        self.model.to(self.device)
        self.model.eval()


def _epoch(train: Sequence[dict], loader: Any, epoch: int) -> Any:
    if hasattr(train, "set_epoch"):
        train.set_epoch(epoch)
    return loader


def _stack(dataset: Sequence[dict]) -> tuple[torch.Tensor, np.ndarray]:
    """All images (N×C×H×W) and labels of a (small) validation set, read once."""
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it["image"] for it in items]), np.asarray([int(it["label"]) for it in items])
