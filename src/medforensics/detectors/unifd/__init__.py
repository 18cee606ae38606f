"""UniFD (Ojha et al. 2023): frozen pretrained image features + one linear layer."""

from .detector import UniFDDetector

__all__ = ["UniFDDetector"]
