"""NPR baseline (Tan et al., CVPR 2024): neighbouring-pixel-relationship residual → small ResNet."""

from .detector import NPRDetector, ScratchCNNDetector
from .model import NPRNet, npr_residual

__all__ = ["NPRDetector", "NPRNet", "ScratchCNNDetector", "npr_residual"]
