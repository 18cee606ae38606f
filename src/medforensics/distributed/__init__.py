"""Distributed batch scanning on Ray (optional extra ``medforensics[ray]``; imported lazily)."""

from __future__ import annotations

__all__ = ["RayScan", "ScoreWorker", "ensure_ray"]


def __getattr__(name: str):
    if name in __all__:
        from . import ray_scan

        return getattr(ray_scan, name)
    raise AttributeError(name)
