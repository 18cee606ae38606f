"""Detectors: one interface, one registry; each method in its own sub-package."""

from .base import Detector
from .registry import (
    create_detector,
    get_detector_class,
    list_detectors,
    load_detector,
    pretrained_dir,
    register_detector,
)

__all__ = ["Detector", "create_detector", "get_detector_class", "list_detectors", "load_detector", "pretrained_dir",
           "register_detector"]
