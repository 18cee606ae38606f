"""``zed``: real-only detection from a lossless coder's surprise (actual − expected coding cost)."""

from .detector import ZedDetector
from .model import ZedNet, coding_cost, level_log_prob, pyramid

__all__ = ["ZedDetector", "ZedNet", "coding_cost", "level_log_prob", "pyramid"]
