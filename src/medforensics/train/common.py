"""Seeds, loaders and progress bars used by every training loop."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm.auto import tqdm


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator for samplers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def dataset_labels(dataset: Sequence) -> np.ndarray:
    """Labels of a dataset without decoding images when it exposes ``labels``."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    return np.asarray([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=np.int64)


def balanced_loader(
    dataset: Sequence, batch_size: int, generator: torch.Generator, num_workers: int = 0, collate_fn: Any = None
) -> DataLoader:
    """A loader drawing real and fake with equal probability (with replacement), one epoch = len(dataset)."""
    labels = dataset_labels(dataset)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"balanced training needs both classes; got {int(counts[0])} real, {int(counts[1])} fake")
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
    )


def progress(iterable: Iterable, desc: str, total: int | None = None, enabled: bool = True) -> Any:
    """A tqdm progress bar (hidden when ``enabled`` is False)."""
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True)


class BestState:
    """Keeps a copy of the best model state by a monitored value (higher is better).

    ``value`` may be a tuple compared lexicographically, e.g. ``(auc, -loss)`` so that ties of a
    saturated metric are broken by the loss.
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


class TrainingSetup(NamedTuple):
    """What a supervised training loop starts from (see :func:`supervised_training_setup`)."""

    rng: np.random.Generator
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def supervised_training_setup(model: torch.nn.Module, train: Sequence, config: dict[str, Any], seed: int) -> TrainingSetup:
    """Seed everything; a class-balanced loader over ``train``; AdamW with a one-cycle learning-rate
    schedule over every batch of every epoch. ``config`` gives ``batch_size``, ``num_workers``, ``lr``,
    ``weight_decay`` and ``epochs``; ``rng`` is a numpy generator seeded with ``seed`` for the loop."""
    generator = seed_everything(seed)
    rng = np.random.default_rng(seed)
    loader = balanced_loader(train, config["batch_size"], generator, config["num_workers"],
                             collate_fn=getattr(train, "collate", None))
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config["lr"],
                                                total_steps=max(1, config["epochs"] * len(loader)))
    return TrainingSetup(rng, loader, opt, sched)
