"""Training loaders: labels without decoding images, and the class-balanced sampler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler


def dataset_labels(dataset: Sequence) -> np.ndarray:
    """Labels of a dataset without decoding images when it exposes ``labels``."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    return np.asarray([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=np.int64)


def balanced_loader(
    dataset: Sequence, batch_size: int, generator: torch.Generator, num_workers: int = 0, collate_fn: Any = None
) -> DataLoader:
    """A loader drawing real and fake with equal probability (with replacement), one epoch = len(dataset).

    ``collate_fn`` defaults to the dataset's own ``collate`` when it has one. A dataset that groups
    its items itself — a ``batch_sampler(batch_size, generator)`` method returning a sampler of index
    lists, e.g. whole real/fake pairs, balanced by construction — is batched by that sampler instead.
    """
    make_batches = getattr(dataset, "batch_sampler", None)
    if callable(make_batches):
        return DataLoader(
            dataset, batch_sampler=make_batches(batch_size, generator), num_workers=num_workers,
            collate_fn=collate_fn if collate_fn is not None else getattr(dataset, "collate", None),
            persistent_workers=num_workers > 0,
        )
    labels = dataset_labels(dataset)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"balanced training needs both classes; got {int(counts[0])} real, {int(counts[1])} fake")
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_fn if collate_fn is not None else getattr(dataset, "collate", None),
        persistent_workers=num_workers > 0,
    )
