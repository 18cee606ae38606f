"""What the supervised CNN loops (``forensic_cnn``, ``npr``, ``f3net``) start from: a seeded,
class-balanced loader with AdamW and a one-cycle schedule, and the training-crop sampler that
centres crops on tampered regions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from .loaders import balanced_loader
from .seeding import seed_everything


class TrainingSetup(NamedTuple):
    """What a supervised training loop starts from (see :func:`supervised_setup`)."""

    rng: np.random.Generator
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def supervised_setup(model: torch.nn.Module, train: Sequence, config: dict[str, Any], seed: int) -> TrainingSetup:
    """Seed everything; a class-balanced loader over ``train``; AdamW with a one-cycle learning-rate
    schedule over every batch of every epoch. ``config`` gives ``batch_size``, ``num_workers``, ``lr``,
    ``weight_decay`` and ``epochs``; ``rng`` is a numpy generator seeded with ``seed`` for the loop."""
    generator = seed_everything(seed)
    rng = np.random.default_rng(seed)
    loader = balanced_loader(train, config["batch_size"], generator, config["num_workers"])
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config["lr"],
                                                total_steps=max(1, config["epochs"] * len(loader)))
    return TrainingSetup(rng, loader, opt, sched)


def crop_origin(rng: np.random.Generator, size: int, hw: tuple[int, int],
                around: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[int, int]:
    """Top-left (y, x) of a ``size`` square crop inside an H×W image: uniform, or — with ``around``
    (the (ys, xs) pixel coordinates of a tampered region) — centred on a random one of those pixels,
    jittered by up to a quarter of the crop and clipped to the image."""
    h, w = hw
    if around is None:
        return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    ys, xs = around
    t = rng.integers(len(ys))
    y0 = int(np.clip(ys[t] - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, h - size))
    x0 = int(np.clip(xs[t] - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, w - size))
    return y0, x0
