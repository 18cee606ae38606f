"""NPR baseline (Tan et al., CVPR 2024): neighbouring-pixel-relationship residual → small ResNet."""

from ..components.scratch_cnn import ScratchCNNDetector
from .detector import NPRDetector
from .model import NPRNet, npr_residual

__all__ = ["NPRDetector", "NPRNet", "ScratchCNNDetector", "npr_residual"]
