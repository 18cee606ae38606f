"""``npr``: NPR residual → small ResNet-style CNN, trained from scratch with BCE on whole images.

Training and scoring are those of :class:`~..components.scratch_cnn.ScratchCNNDetector` (shared
with ``f3net``): random training crops, class-balanced loader, best epoch by validation AUC,
τ calibrated on validation reals; the heat-map is the class-activation map of the last feature map.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..components.scratch_cnn import TRAINING_DEFAULTS, ScratchCNNDetector
from ..registry import register_detector
from .model import NPRNet


@register_detector
class NPRDetector(ScratchCNNDetector):
    """Neighbouring-pixel-relationship residual (Tan et al. 2024) into a small ResNet, from scratch."""

    name = "npr"
    version = "1"
    DEFAULTS: ClassVar[dict[str, Any]] = {"width": 16, "stages": 3, "residual_scale": 4.0, **TRAINING_DEFAULTS}

    def build_model(self) -> nn.Module:
        c = self.config
        return NPRNet(self.preprocessing.channels, c["width"], c["stages"], c["residual_scale"])
