"""``f3net``: F3-Net-style frequency detector (FAD band images ‖ LFS statistics → small CNNs),
trained from scratch with the shared whole-image loop of :class:`~..components.scratch_cnn.ScratchCNNDetector`
(random crops, balanced loader, best epoch by validation AUC, τ calibrated on validation reals).
The heat-map is the class-activation map of the fused last feature map.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..components.scratch_cnn import TRAINING_DEFAULTS, ScratchCNNDetector
from ..registry import register_detector
from .model import F3Net


@register_detector
class F3NetDetector(ScratchCNNDetector):
    """Frequency-aware decomposition + local frequency statistics (Qian et al. 2020), small CNNs."""

    name = "f3net"
    version = "1"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "width": 16,
        "stages": 3,
        "filter_size": 64,  # resolution of the learnable FAD filters (resized to the image's DCT size)
        "lfs_window": 10,
        "lfs_stride": 2,
        "lfs_bands": 6,
        "use_fad": True,
        "use_lfs": True,
        **TRAINING_DEFAULTS,
    }

    def build_model(self) -> nn.Module:
        c = self.config
        return F3Net(self.preprocessing.channels, c["width"], c["stages"], c["filter_size"], c["lfs_window"],
                     c["lfs_stride"], c["lfs_bands"], c["use_fad"], c["use_lfs"])
