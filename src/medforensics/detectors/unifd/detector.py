"""``unifd``: UniFD — frozen backbone features + a single linear layer trained with BCE.

Re-implemented from Ojha, Li & Lee, *Towards Universal Fake Image Detectors that Generalize
Across Generative Models* (CVPR 2023): the image is embedded by a frozen CLIP image encoder
(the projected image embedding, 768-d for ViT-L/14) and a linear layer on that embedding is the
whole trainable detector. Here the backbone may also be EfficientNet-Lite (global-average-pooled
head features) or a tiny random CLIP for tests — any spec of :mod:`..backbones`.

Because the backbone is frozen, features are extracted once (training items as the training
dataset delivers them in epoch 0, i.e. with its augmentation drawn once) and the linear layer
is trained on the cached features with Adam; the epoch with the best validation AUC is kept,
and the threshold is calibrated at ``target_fpr`` on validation reals.

Heat-map: the linear layer applied to every per-location feature (CLIP: projected post-LN patch
tokens; EfficientNet: each location of the head feature map), sigmoid, bilinear upsampling. For
EfficientNet this is exactly a class-activation map (the image logit is its spatial mean); for
CLIP it is a heuristic read-out of patch tokens through a layer trained on the class token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..backbones import DEFAULT_CLIP, build_backbone, is_random, normalise_spec
from ..base import Detector
from ..components.device import resolve_device
from ..components.fit import fit_epochs, optimiser_step
from ..components.progress import progress
from ..components.seeding import seed_everything
from ..components.selection import validation_metrics
from ..registry import register_detector


@register_detector
class UniFDDetector(Detector):
    name = "unifd"
    version = "1"
    supervised = True
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "backbone": DEFAULT_CLIP,
        "image_size": None,  # None: CLIP native size, EfficientNet no resize
        "normalisation": "lite",  # EfficientNet only
        "epochs": 100,  # on cached features: cheap
        "batch_size": 256,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "target_fpr": 0.05,
        "score_batch": 32,
        "device": "auto",
        "progress": True,
    }
    DERIVED: ClassVar[tuple[str, ...]] = ("backbone_weights",)

    def __init__(self, **config: Any):
        super().__init__(**config)
        c = self.config
        c["backbone"] = normalise_spec(c["backbone"])
        self.device = resolve_device(c["device"])
        self.backbone = build_backbone(c["backbone"], image_size=c["image_size"], normalisation=c["normalisation"])
        c["backbone_weights"] = self.backbone.description
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.fc = nn.Linear(self.backbone.feature_dim, 1)
        self.backbone.to(self.device)
        self.fc.to(self.device).eval()

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def _features(self, batch: torch.Tensor, local: bool = False):
        out_g, out_l = [], []
        step = max(1, int(self.config["score_batch"]))
        for start in range(0, len(batch), step):
            g, loc = self.backbone.forward_features(batch[start : start + step].to(self.device))
            out_g.append(g.float())
            if local:
                out_l.append(loc.float())
        g = torch.cat(out_g) if out_g else torch.zeros(0, self.backbone.feature_dim, device=self.device)
        return (g, torch.cat(out_l)) if local else g

    def _dataset_features(self, dataset: Sequence[dict], desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        feats, ys = [], []
        step = max(1, int(self.config["score_batch"]))
        starts = range(0, len(dataset), step)
        for start in progress(starts, desc, total=len(starts), enabled=self.config["progress"]):
            items = [dataset[i] for i in range(start, min(len(dataset), start + step))]
            feats.append(self._features(torch.stack([it["image"] for it in items])))
            ys += [float(float(it["label"]) > 0.5) for it in items]
        return torch.cat(feats), torch.tensor(ys, device=self.device)

    # ------------------------------------------------------------------ scoring
    def _score_arrays(self, batch: torch.Tensor) -> np.ndarray:
        self.fc.eval()
        with torch.no_grad():
            return torch.sigmoid(self.fc(self._features(batch))[:, 0]).cpu().double().numpy()

    def _anomaly_map_arrays(self, batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            _, local = self._features(batch, local=True)
            logits = torch.einsum("ndhw,d->nhw", local, self.fc.weight[0]) + self.fc.bias[0]
            up = F.interpolate(torch.sigmoid(logits)[:, None], size=tuple(batch.shape[-2:]), mode="bilinear",
                               align_corners=False)
        return up[:, 0].clamp(0, 1).cpu().numpy()

    # ------------------------------------------------------------------ training
    def fit(self, train: Sequence[dict], val: Sequence[dict] | None = None) -> dict[str, Any]:
        """Cache frozen features, train the linear layer (BCE, Adam), keep the best-AUC epoch, calibrate τ."""
        c = self.config
        gen = seed_everything(self.seed)
        t0 = time.time()
        if hasattr(train, "set_epoch"):
            train.set_epoch(0)
        x_tr, y_tr = self._dataset_features(train, "unifd features (train)")
        has_val = val is not None and len(val) > 0
        if has_val:
            x_va, y_va = self._dataset_features(val, "unifd features (val)")
        n_pos = float(y_tr.sum())
        if n_pos == 0 or n_pos == len(y_tr):
            raise ValueError(f"unifd needs real and fake training images; got {len(y_tr) - n_pos:.0f} real, {n_pos:.0f} fake")
        pos_weight = torch.tensor((len(y_tr) - n_pos) / n_pos, device=self.device)  # balance the classes
        opt = torch.optim.Adam(self.fc.parameters(), lr=c["lr"], weight_decay=c["weight_decay"])

        def batches(_: int) -> list[torch.Tensor]:
            perm = torch.randperm(len(x_tr), generator=gen).to(self.device)
            return list(perm.split(c["batch_size"]))

        def step(_: int, idx: torch.Tensor) -> float:
            logits = self.fc(x_tr[idx])[:, 0]
            return optimiser_step(F.binary_cross_entropy_with_logits(logits, y_tr[idx], pos_weight=pos_weight), opt)

        def val_scores() -> np.ndarray:
            with torch.no_grad():
                return torch.sigmoid(self.fc(x_va)[:, 0]).cpu().double().numpy()

        def validate() -> dict[str, Any]:
            return validation_metrics(y_va.cpu().numpy().astype(int), val_scores())

        result = fit_epochs(self.fc, c["epochs"], batches, step, validate=validate if has_val else None,
                            desc="unifd linear", show_progress=bool(c["progress"]), print_records=False,
                            bar_over="epochs")
        summary: dict[str, Any] = {"n_train": len(train), "n_val": len(val) if val is not None else 0,
                                   "best_epoch": result.best_epoch, "history": result.history,
                                   "seconds": round(time.time() - t0, 1), "device": str(self.device)}
        if has_val and bool((y_va == 0).any()):
            self.calibrate_on_real_val(y_va.cpu().numpy(), val_scores(), c["target_fpr"])
        self.training_summary = summary
        return summary

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"fc.{k}": v for k, v in self.fc.state_dict().items()}
        if is_random(self.config["backbone"]):
            out.update({f"backbone.{k}": v for k, v in self.backbone.net_state().items()})
        return {k: v.detach().cpu() for k, v in out.items()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        net = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
        fc = {k[len("fc."):]: v for k, v in tensors.items() if k.startswith("fc.")}
        extra = set(tensors) - {f"backbone.{k}" for k in net} - {f"fc.{k}" for k in fc}
        if extra:
            raise ValueError(f"unexpected tensors in unifd weights: {sorted(extra)[:5]}")
        if is_random(self.config["backbone"]):
            if not net:
                raise ValueError("this model has a randomly initialised backbone but its weights are not in the file")
            self.backbone.load_net_state(net)
        elif net:
            raise ValueError("the weights hold backbone tensors but the config names a pretrained backbone")
        self.fc.load_state_dict(fc)
        self.backbone.to(self.device)
        self.fc.to(self.device).eval()
