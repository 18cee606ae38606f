"""Compatibility re-exports: the training machinery lives in :mod:`medforensics.detectors.components`.

Kept so that existing imports (``from medforensics.train.common import progress``) keep working;
new code imports from :mod:`medforensics.detectors.components`. Nothing is defined here.
"""

from __future__ import annotations

from ..detectors.components.loaders import balanced_loader, dataset_labels
from ..detectors.components.progress import progress
from ..detectors.components.seeding import seed_everything
from ..detectors.components.selection import BestState
from ..detectors.components.supervised import TrainingSetup
from ..detectors.components.supervised import supervised_setup as supervised_training_setup

__all__ = ["BestState", "TrainingSetup", "balanced_loader", "dataset_labels", "progress", "seed_everything",
           "supervised_training_setup"]
