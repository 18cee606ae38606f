"""Fast forensic CNN trained from scratch (the default detector)."""

from .detector import ForensicCNNDetector
from .model import ForensicCNN

__all__ = ["ForensicCNN", "ForensicCNNDetector"]
