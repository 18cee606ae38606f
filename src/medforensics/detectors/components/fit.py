"""The shared training loops.

* :func:`fit_epochs` — the one supervised loop: per epoch a pass over the batches (one ``step``
  hook per batch, returning its loss), optional extra record entries, a validation hook, best-epoch
  selection (:func:`~.selection.selection_key`), the epoch record printed unless ``progress=False``,
  and at the end the best state restored.
* :func:`fit_steps` — the step-based loop of the unsupervised detectors (a fixed number of random
  mini-batches, optionally stopped by a wall-time budget).
* :func:`optimiser_step` — zero grads, backward, optional clipping, optimiser and schedule step.
* :func:`time_aware_cosine` — the warm-up + cosine learning-rate factor that follows whichever of
  steps and wall time is further along.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .progress import format_record, progress
from .selection import BestState, selection_key


@dataclass
class EpochFit:
    """What :func:`fit_epochs` returns: the per-epoch records, the kept epoch (1-based) and its key."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_value: tuple[float, ...] = ()


def fit_epochs(
    model: nn.Module,
    epochs: int,
    batches: Callable[[int], Iterable[Any]],
    step: Callable[[int, Any], float],
    *,
    validate: Callable[[], dict[str, Any]] | None = None,
    extras: Callable[[], dict[str, Any]] | None = None,
    keep: nn.Module | None = None,
    desc: str = "epoch",
    show_progress: bool = True,
    print_records: bool = True,
    prefix: str = "  ",
    bar_over: str = "batches",
) -> EpochFit:
    """Train for ``epochs`` epochs and keep the best one.

    ``batches(epoch)`` gives the epoch's batches (e.g. a DataLoader; the place to call the dataset's
    ``set_epoch``); ``step(i, batch)`` trains on one batch and returns its loss. After the pass the
    record ``{"epoch", "train_loss", **extras(), **validate()}`` is made: ``validate`` (run with the
    model in eval mode) returns ``val_auc``/``val_bce`` (see :func:`~.selection.validation_metrics`)
    and anything else worth recording; without it the training loss selects the epoch. The state of
    ``keep`` (default: ``model``; e.g. only the trainable part) of the best epoch is restored at the
    end and ``model`` left in eval mode. With ``show_progress`` a bar runs over the batches
    (``bar_over="batches"``) or the epochs (``"epochs"``), and each record is printed after
    ``prefix`` when ``print_records``; with ``show_progress=False`` nothing is printed.
    """
    if bar_over not in ("batches", "epochs"):
        raise ValueError(f"bar_over must be 'batches' or 'epochs', got {bar_over!r}")
    keep = model if keep is None else keep
    best, history = BestState(), []
    for epoch in progress(range(epochs), desc, enabled=show_progress and bar_over == "epochs"):
        model.train()
        losses: list[float] = []
        bar = progress(batches(epoch), f"{desc} {epoch + 1}/{epochs}", enabled=show_progress and bar_over == "batches")
        for i, batch in enumerate(bar):
            losses.append(step(i, batch))
            if show_progress and bar_over == "batches":
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
        if extras is not None:
            record.update(extras())
        if validate is not None:
            model.eval()
            record.update(validate())
        best.update(selection_key(record), epoch + 1, keep)
        history.append(record)
        if show_progress and print_records:
            print(prefix + format_record(record), flush=True)
    best.restore(keep)
    model.eval()
    return EpochFit(history, best.epoch, best.value)


def optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched: Any = None, *,
                   clip: float | None = None, params: Iterable[torch.Tensor] | None = None) -> float:
    """Zero the gradients, back-propagate ``loss``, clip the gradient norm to ``clip`` (of ``params``),
    step the optimiser and then the schedule; return the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(params, float(clip))
    opt.step()
    if sched is not None:
        sched.step()
    return loss.item()


@dataclass
class StepFit:
    """What :func:`fit_steps` returns: the loss of every step done, and the wall time."""

    losses: list[float]
    seconds: float

    @property
    def steps(self) -> int:
        return len(self.losses)


def fit_steps(
    step: Callable[[int], float],
    steps: int,
    *,
    max_seconds: float | None = None,
    desc: str = "training",
    show_progress: bool = True,
    start: float | None = None,
) -> StepFit:
    """Run ``step(i)`` (one mini-batch, returns its loss) for ``i`` in ``range(steps)``; stop early
    once ``max_seconds`` of wall time (counted from ``start``, default now) are spent."""
    t0 = time.time() if start is None else start
    losses: list[float] = []
    bar = progress(range(steps), desc, enabled=show_progress)
    for i in bar:
        losses.append(step(i))
        if show_progress:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if max_seconds and time.time() - t0 > max_seconds:
            break
    return StepFit(losses, time.time() - t0)


def time_aware_cosine(steps: int, *, warmup: int = 0, floor: float = 0.0, max_seconds: float | None = None,
                      start: float | None = None) -> Callable[[int], float]:
    """Learning-rate factor for ``LambdaLR``: linear warm-up over ``warmup`` steps, then a cosine from 1
    down to ``floor`` over ``steps`` — or over ``max_seconds`` of wall time (from ``start``) when that
    is further along (then the schedule is machine-dependent)."""
    t0 = time.time() if start is None else start

    def factor(s: int) -> float:
        frac = s / max(1, steps)
        if max_seconds:
            frac = max(frac, (time.time() - t0) / max_seconds)
        ramp = min(1.0, (s + 1) / warmup) if warmup else 1.0
        return ramp * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))

    return factor
