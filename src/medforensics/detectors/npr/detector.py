"""``npr``: NPR residual → small ResNet-style CNN, trained from scratch with BCE on whole images.

:class:`ScratchCNNDetector` holds the training loop shared with ``f3net`` (modelled on
``forensic_cnn``): seeded, class-balanced loader, AdamW + one-cycle schedule, random training
crops (a tampered image's crop is labelled fake only if it overlaps the tampered region), best
epoch by validation AUC (BCE breaks ties), threshold calibrated on validation reals at
``target_fpr``. Scores are computed on the whole image; the heat-map is the class-activation map
(CAM) of the last feature map — per-location logits ``w·F + b`` whose spatial mean *is* the image
logit — through a sigmoid and bilinearly up-sampled to the input size.
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

from ...train.common import BestState, progress, supervised_training_setup
from ..base import Detector, merge_config
from ..registry import register_detector
from .model import NPRNet, cam_map

#: options every ScratchCNNDetector understands (subclasses add their model's options)
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


class ScratchCNNDetector(Detector):
    """Whole-image CNN detector trained from scratch (shared by ``npr`` and ``f3net``).

    Subclasses define ``MODEL_DEFAULTS`` and :meth:`build_model`, returning a module with
    ``forward(images) -> N logits`` and ``cam(images) -> N×h×w`` per-location logits.
    """

    MODEL_DEFAULTS: ClassVar[dict[str, Any]] = {}
    supervised = True

    def __init__(self, **config: Any):
        pre, seed = config.pop("preprocessing", None), config.pop("seed", 0)
        super().__init__(preprocessing=pre, seed=seed,
                         **merge_config(self.name, {**self.MODEL_DEFAULTS, **TRAINING_DEFAULTS}, config))
        crop = self.config["train_crop"]
        if crop is not None and (not isinstance(crop, int) or crop < 8):
            raise ValueError(f"train_crop must be None or an integer >= 8, got {crop!r}")
        torch.manual_seed(seed)
        self.model = self.build_model()
        self.model.eval()
        self.device = _resolve_device(self.config["device"])
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
            if partial and rng.random() < 0.5:  # centre on a random tampered pixel
                yy, xx = np.nonzero(m.numpy() > 0.5)
                t = rng.integers(len(yy))
                y0 = int(np.clip(yy[t] - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, h - p))
                x0 = int(np.clip(xx[t] - p // 2 + rng.integers(-p // 4, p // 4 + 1), 0, w - p))
            else:
                y0, x0 = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            y0, x0 = y0 - y0 % 2, x0 - x0 % 2
            crops.append(images[i, :, y0 : y0 + p, x0 : x0 + p])
            if partial:
                ys.append(float(m[y0 : y0 + p, x0 : x0 + p].mean() >= c["min_mask_fraction"]))
            else:
                ys.append(float(labels[i] > 0.5))
        return torch.stack(crops), torch.tensor(ys)

    def fit(self, train: Sequence[dict], val: Sequence[dict] | None = None) -> dict[str, Any]:
        """Train with BCE; keep the epoch with the best validation AUC; calibrate τ on val reals."""
        from ...eval.metrics import compute_metrics

        c = self.config
        rng, loader, opt, sched = supervised_training_setup(self.model, train, c, self.seed)
        val_x, val_y = _stack(val) if val is not None and len(val) else (None, None)
        best, history, t0 = BestState(), [], time.time()
        for epoch in range(c["epochs"]):
            if hasattr(train, "set_epoch"):
                train.set_epoch(epoch)
            self.model.train()
            losses = []
            bar = progress(loader, f"{self.name} epoch {epoch + 1}/{c['epochs']}", enabled=c["progress"])
            for batch in bar:
                x, y = self._train_crops(batch["image"], batch["label"], batch["mask"], rng)
                loss = F.binary_cross_entropy_with_logits(self.model(x.to(self.device)), y.to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                self.after_step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
            if val_x is not None:
                s = self._score_arrays(val_x).astype(np.float64)
                m = compute_metrics(val_y, s)
                bce = float(-np.mean(val_y * np.log(s + 1e-6) + (1 - val_y) * np.log(1 - s + 1e-6)))
                record.update(val_auc=m["auc"], val_ap=m["ap"], val_bce=bce)
                auc = m["auc"] if np.isfinite(m["auc"]) else 0.0
                best.update((round(auc, 4), -bce), epoch + 1, self.model)  # AUC first, BCE breaks ties
            else:
                best.update(-record["train_loss"], epoch + 1, self.model)
            history.append(record)
            if c["progress"]:
                print(f"  {self.name}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in record.items()), flush=True)
        if best.state is not None:
            self.model.load_state_dict(best.state)
        self.model.eval()
        summary: dict[str, Any] = {
            "n_train": len(train), "n_val": len(val) if val is not None else 0, "best_epoch": best.epoch,
            "history": history, "seconds": round(time.time() - t0, 1),
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


def _stack(dataset: Sequence[dict]) -> tuple[torch.Tensor, np.ndarray]:
    """All images (N×C×H×W) and labels of a (small) validation set, read once."""
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it["image"] for it in items]), np.asarray([int(it["label"]) for it in items])


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device='cpu'")
    return torch.device(name)


@register_detector
class NPRDetector(ScratchCNNDetector):
    """Neighbouring-pixel-relationship residual (Tan et al. 2024) into a small ResNet, from scratch."""

    name = "npr"
    version = "1"
    MODEL_DEFAULTS: ClassVar[dict[str, Any]] = {"width": 16, "stages": 3, "residual_scale": 4.0}

    def build_model(self) -> nn.Module:
        c = self.config
        return NPRNet(self.preprocessing.channels, c["width"], c["stages"], c["residual_scale"])
