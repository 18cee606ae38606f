"""Best-state selection: validation metrics, the selection key, and the kept copy of the best weights."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch


def validation_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``val_auc``, ``val_ap`` and ``val_bce`` (binary cross-entropy of the probabilities) on a validation set."""
    from ...eval.metrics import compute_metrics

    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    m = compute_metrics(y, s)
    bce = float(-np.mean(y * np.log(s + 1e-6) + (1 - y) * np.log(1 - s + 1e-6)))
    return {"val_auc": m["auc"], "val_ap": m["ap"], "val_bce": bce}


def selection_key(record: dict[str, Any]) -> tuple[float, ...]:
    """What the best epoch maximises: validation AUC (4 decimals; undefined counts as 0) with the
    validation BCE breaking ties when the record has them, else minus the training loss."""
    if "val_auc" in record:
        auc = record["val_auc"]
        return (round(auc, 4) if np.isfinite(auc) else 0.0, -record["val_bce"])
    return (-record["train_loss"],)


class BestState:
    """Keeps a copy of the best model state by a monitored value (higher is better).

    ``value`` may be a tuple compared lexicographically, e.g. ``(auc, -loss)`` so that ties of a
    saturated metric are broken by the loss. Non-finite values never win.
    """

    def __init__(self) -> None:
        self.value: tuple[float, ...] = (-np.inf,)
        self.epoch = -1
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, value: float | tuple[float, ...], epoch: int, module: torch.nn.Module) -> bool:
        value = tuple(float(v) for v in (value if isinstance(value, tuple) else (value,)))
        if all(np.isfinite(value)) and value > self.value:
            self.value, self.epoch = value, epoch
            self.state = copy.deepcopy(module.state_dict())
            return True
        return False

    def restore(self, module: torch.nn.Module) -> bool:
        """Load the kept state into ``module``; False when nothing was kept."""
        if self.state is None:
            return False
        module.load_state_dict(self.state)
        return True
