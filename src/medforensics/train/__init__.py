"""Shared training machinery: seeding, class-balanced loaders, progress, best-checkpoint tracking."""

from .common import BestState, balanced_loader, progress, seed_everything

__all__ = ["BestState", "balanced_loader", "progress", "seed_everything"]
