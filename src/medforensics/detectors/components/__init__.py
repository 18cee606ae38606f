"""The training layer below the detectors: seeding, device, progress, loaders, best-state selection,
the shared epoch/step loops (:mod:`.fit`) and the whole-image scratch-CNN base (:mod:`.scratch_cnn`).

Every detector's ``fit`` is built from these pieces; nothing here imports ``medforensics.train``
(which holds data recipes only) or any layer above ``detectors``.
"""

from .device import resolve_device
from .fit import EpochFit, StepFit, fit_epochs, fit_steps, optimiser_step, time_aware_cosine
from .loaders import balanced_loader, dataset_labels
from .progress import format_record, progress
from .seeding import seed_everything
from .selection import BestState, selection_key, validation_metrics

__all__ = [
    "BestState", "EpochFit", "StepFit", "balanced_loader", "dataset_labels", "fit_epochs", "fit_steps",
    "format_record", "optimiser_step", "progress", "resolve_device", "seed_everything", "selection_key",
    "time_aware_cosine", "validation_metrics",
]
