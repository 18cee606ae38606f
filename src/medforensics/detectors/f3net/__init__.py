"""F3-Net-style baseline (Qian et al., ECCV 2020): FAD band images + local frequency statistics."""

from .detector import F3NetDetector
from .model import FAD, LFS, F3Net, dct2, dct_matrix, idct2

__all__ = ["FAD", "LFS", "F3Net", "F3NetDetector", "dct2", "dct_matrix", "idct2"]
