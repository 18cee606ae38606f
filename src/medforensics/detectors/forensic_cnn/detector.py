"""``forensic_cnn``: patch-level supervised detector, scored on the whole image.

Training draws square patches from each (preprocessed, 256×256) image. A patch is labelled fake
when the image is a whole-image fake, or — for tampered images with a mask — when at least
``min_mask_fraction`` of it lies inside the tampered region; half of a tampered image's patches
are drawn around the mask. At scoring time the image is cut into a regular grid of patches; the
image logit is the mean of the top ``topk`` fraction of patch logits, and the grid of patch
probabilities (overlap-averaged back to pixels) is the anomaly map. With ``topk="auto"`` the
fraction is chosen among ``TOPK_CANDIDATES`` by validation AUC (small fractions suit small
tampered regions, large ones whole-image fakes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from ..base import Detector
from ..components.fit import fit_epochs, optimiser_step
from ..components.selection import selection_key, validation_metrics
from ..components.supervised import crop_origin, supervised_setup
from ..registry import register_detector
from .model import ForensicCNN, PatchGrid, conv_grid_supported, patch_map, patchify, topk_mean

#: parity an inference runtime must keep with eager PyTorch on every patch logit / patch probability
#: (fp32 runtimes differ by ~1e-5; int8 is accepted only if it stays this close)
RUNTIME_TOLERANCE_LOGIT = 0.05
RUNTIME_TOLERANCE_PROB = 0.01
DEFAULT_TOPK = 0.25
#: image score = mean of the top fraction of patch logits; 0.0 = the single highest patch (max)
TOPK_CANDIDATES = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)

DEFAULTS: dict[str, Any] = {
    "width": 32,
    "bayar_channels": 6,
    "patch_size": 64,
    "patch_stride": 32,
    "topk": "auto",  # fraction of patch logits averaged; "auto" = chosen on validation AUC
    "epochs": 10,
    "batch_size": 16,
    "patches_per_image": 8,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "min_mask_fraction": 0.02,
    "target_fpr": 0.05,
    "num_workers": 0,
    "score_batch": 8,
    "grid": "conv",  # scoring: "conv" = one fully convolutional pass per image, "patches" = cut the patches
    "progress": True,
}


@register_detector
class ForensicCNNDetector(Detector):
    name = "forensic_cnn"
    version = "1"
    supervised = True
    DEFAULTS: ClassVar[dict[str, Any]] = DEFAULTS

    def __init__(self, **config: Any):
        super().__init__(**config)
        c = self.config
        torch.manual_seed(self.seed)
        self.model = ForensicCNN(self.preprocessing.channels, c["width"], c["bayar_channels"])
        self.model.eval()

    # ------------------------------------------------------------------ scoring
    def _patch_logits(self, batch: torch.Tensor, grid: str | None = None,
                      runner: Any = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """N×(gh·gw) patch logits and the grid shape (gh, gw).

        ``grid`` (default: the ``grid`` option): ``"conv"`` runs the network once over each whole image
        (:meth:`ForensicCNN.patch_grid`; images whose size is not a multiple of 16 fall back to cut
        patches), ``"patches"`` cuts the patches and scores each on its own. ``runner`` replaces the
        eager network on the conv path (an inference runtime, see :meth:`_runner`).
        """
        c = self.config
        self.model.eval()
        size, stride = c["patch_size"], c["patch_stride"]
        mode = grid or c.get("grid", "conv")
        if mode not in ("conv", "patches"):
            raise ValueError(f"forensic_cnn grid must be 'conv' or 'patches', got {mode!r}")
        if mode == "conv" and conv_grid_supported(tuple(batch.shape[-2:]), size, stride):
            net = runner or (lambda x: self.model.patch_grid(x, size, stride))
            out = torch.cat([net(chunk) for chunk in batch.split(max(1, c["score_batch"]))])
            return out.reshape(batch.shape[0], -1).float(), (out.shape[1], out.shape[2])
        patches, g = patchify(batch, size, stride)
        logits = torch.cat([self.model(p) for p in patches.split(c["score_batch"] * g[0] * g[1])])
        return logits.view(batch.shape[0], -1), g

    def _runner(self) -> Any:
        """The recorded inference runtime of the conv grid (built once), or None for eager PyTorch."""
        if not self.runtime or self.runtime.get("name", "eager") == "eager":
            return None
        if getattr(self, "_runtime_runner", False) is False:
            from ..runtime import load_runner, weights_digest
            from ..layers import SRMFilters

            self._runtime_runner = load_runner(self.runtime, self.grid_module(), self.model_dir,
                                               weights_digest(self.state_dict()), leaf_modules=(SRMFilters,))
        return self._runtime_runner

    def grid_module(self) -> PatchGrid:
        """The network as images → N×gh×gw patch logits (what an inference runtime runs)."""
        self.model.eval()
        return PatchGrid(self.model, self.config["patch_size"], self.config["patch_stride"]).eval()

    def runtime_spec(self, images: torch.Tensor) -> dict[str, Any]:
        """What :func:`~medforensics.detectors.runtime.optimise_model_dir` measures: the one-pass grid
        module, an example batch and int8 calibration batches from ``images`` (preprocessed reals)."""
        from ..layers import SRMFilters
        from ..runtime import Tolerance, weights_digest

        batch = images.float()
        return {"module": self.grid_module(), "example": batch[:8], "leaf_modules": (SRMFilters,),
                "calibration": [batch[i : i + 8] for i in range(0, len(batch), 8)],
                "parity": [batch[i : i + 8] for i in range(0, len(batch), 8)],
                "digest": weights_digest(self.state_dict()), "extra": {},
                "tolerance": Tolerance(logit=RUNTIME_TOLERANCE_LOGIT, prob=RUNTIME_TOLERANCE_PROB)}

    def _score_logits(self, logits: torch.Tensor) -> np.ndarray:
        topk = self.config["topk"]
        return torch.sigmoid(topk_mean(logits, DEFAULT_TOPK if topk == "auto" else topk)).numpy()

    def _map_of(self, logits: torch.Tensor, grid: tuple[int, int], hw: tuple[int, int]) -> np.ndarray:
        c = self.config
        return patch_map(torch.sigmoid(logits), grid, hw, c["patch_size"], c["patch_stride"]).numpy()

    def _score_arrays(self, batch: torch.Tensor) -> np.ndarray:
        logits, _ = self._patch_logits(batch, runner=self._runner())
        return self._score_logits(logits)

    def _anomaly_map_arrays(self, batch: torch.Tensor) -> np.ndarray:
        logits, grid = self._patch_logits(batch, runner=self._runner())
        return self._map_of(logits, grid, tuple(batch.shape[-2:]))

    def _score_and_map_arrays(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Score and heat-map from one pass of the network."""
        logits, grid = self._patch_logits(batch, runner=self._runner())
        return self._score_logits(logits), self._map_of(logits, grid, tuple(batch.shape[-2:]))

    # ------------------------------------------------------------------ training
    def _sample_patches(self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator):
        """K patches per image; labels from the image label and tamper mask (see module docstring)."""
        c = self.config
        p, k = c["patch_size"], c["patches_per_image"]
        n, _, h, w = images.shape
        out, out_y = [], []
        for i in range(n):
            m = masks[i]
            partial = bool(labels[i] > 0.5) and 0 < float(m.mean()) < 1
            tampered = np.nonzero(m.numpy() > 0.5) if partial else None
            for j in range(k):  # the first half centred on a random tampered pixel
                y0, x0 = crop_origin(rng, p, (h, w), tampered if partial and j < k // 2 else None)
                out.append(images[i, :, y0 : y0 + p, x0 : x0 + p])
                if labels[i] > 0.5 and partial:
                    out_y.append(float(m[y0 : y0 + p, x0 : x0 + p].mean() >= c["min_mask_fraction"]))
                else:
                    out_y.append(float(labels[i]))
        return torch.stack(out), torch.tensor(out_y)

    def fit(self, train: Sequence[dict], val: Sequence[dict] | None = None) -> dict[str, Any]:
        """Train with BCE on patches; keep the epoch with the best validation AUC; calibrate τ on val reals."""
        c = self.config
        rng, loader, opt, sched = supervised_setup(self.model, train, c, self.seed)
        has_val = val is not None and len(val) > 0
        t0 = time.time()

        def batches(epoch: int) -> Any:
            if hasattr(train, "set_epoch"):
                train.set_epoch(epoch)
            return loader

        def step(_: int, batch: dict) -> float:
            x, y = self._sample_patches(batch["image"], batch["label"], batch["mask"], rng)
            loss = optimiser_step(F.binary_cross_entropy_with_logits(self.model(x), y), opt, sched)
            self.model.bayar.constrain_()  # Bayar–Stamm: re-impose the constraint after each step
            return loss

        def validate() -> dict[str, Any]:
            frac, record = self._choose_aggregation(*self._val_logits(val))
            return {**record, "topk": frac}

        result = fit_epochs(self.model, c["epochs"], batches, step, validate=validate if has_val else None,
                            desc="epoch", show_progress=bool(c["progress"]))
        if c["topk"] == "auto":  # the aggregation chosen at the kept epoch
            c["topk"] = result.history[result.best_epoch - 1]["topk"] if has_val and result.best_epoch > 0 \
                else DEFAULT_TOPK
        summary: dict[str, Any] = {
            "n_train": len(train), "n_val": len(val) if val is not None else 0, "best_epoch": result.best_epoch,
            "topk": c["topk"], "history": result.history, "seconds": round(time.time() - t0, 1),
        }
        if has_val:
            self.calibrate_on_real_val(*self._scores_of(val), c["target_fpr"])
        self.training_summary = summary
        return summary

    def _val_logits(self, dataset: Sequence[dict]) -> tuple[np.ndarray, torch.Tensor]:
        """Labels and N×P patch logits of a dataset (computed once, re-aggregated cheaply)."""
        ys, logits = [], []
        step = self.config["score_batch"]
        with torch.no_grad():
            for start in range(0, len(dataset), step):
                items = [dataset[i] for i in range(start, min(len(dataset), start + step))]
                ys += [int(it["label"]) for it in items]
                logits.append(self._patch_logits(torch.stack([it["image"] for it in items]))[0])
        return np.asarray(ys), torch.cat(logits)

    def _choose_aggregation(self, y: np.ndarray, logits: torch.Tensor) -> tuple[float, dict[str, float]]:
        """Top-k fraction (fixed, or the best validation AUC among TOPK_CANDIDATES when "auto") and its
        validation metrics (``val_auc``, ``val_ap``, ``val_bce``)."""
        fixed = self.config["topk"]
        best: tuple[tuple[float, ...], float, dict[str, float]] | None = None
        for frac in TOPK_CANDIDATES if fixed == "auto" else (fixed,):
            record = validation_metrics(y, torch.sigmoid(topk_mean(logits, frac)).numpy())
            key = selection_key(record)
            if best is None or key > best[0]:
                best = (key, frac, record)
        return best[1], best[2]

    def _scores_of(self, dataset: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        ys, ss = [], []
        for start in range(0, len(dataset), self.config["score_batch"]):
            items = [dataset[i] for i in range(start, min(len(dataset), start + self.config["score_batch"]))]
            ys += [int(it["label"]) for it in items]
            ss.append(self.score(torch.stack([it["image"] for it in items])))
        return np.asarray(ys), np.concatenate(ss) if ss else np.zeros(0)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.model.state_dict())

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors)
        self.model.eval()
        self._runtime_runner = False  # rebuilt (or refused: other weights) at the next scoring call
