"""Pure-torch NPR model (Tan et al., CVPR 2024, "Rethinking the up-sampling operations in
CNN-based generative network for generalizable deepfake detection"), re-implemented from the paper.

Generators up-sample feature maps (nearest, bilinear, transposed convolutions), which ties each
pixel to its neighbours inside small local blocks. The *neighbouring pixel relationships* (NPR)
expose that tie: with ``down``/``up`` the nearest-neighbour resampling by a factor 2,

    NPR(x) = x − up(down(x))                                  (paper, Eq. for the NPR residual)

so inside every 2×2 block the top-left pixel is subtracted from the four pixels (the top-left
entry is 0). Image content cancels almost entirely; what is left is how pixels inside a block
relate to each other. A small ResNet-style CNN trained from scratch classifies the residual.
"""

from __future__ import annotations

import torch
from torch import nn

from ..forensic_cnn.model import ResBlock


def npr_residual(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """x − up(down(x)) with nearest-neighbour resampling by ``factor`` (N×C×H×W, H and W any size).

    Rows/columns beyond the last full block (odd sizes) are compared with their block's top-left
    pixel too, so the output has the input's shape.
    """
    if x.ndim != 4:
        raise ValueError(f"npr_residual expects N×C×H×W, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    # nearest down-sampling by `factor` keeps the top-left pixel of each block (index factor·i)
    down = x[..., ::factor, ::factor]
    up = down.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)[..., :h, :w]
    return x - up


class NPRNet(nn.Module):
    """NPR residual → 3×3 stem at full resolution → residual stages (stride 2) → GAP → logit.

    ``features`` returns the last feature map, so a class-activation map (CAM) is the
    per-location logit ``w·F[:, :, i, j] + b`` whose spatial mean is exactly the image logit.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, stages: int = 3, residual_scale: float = 4.0):
        super().__init__()
        if stages < 1:
            raise ValueError("NPRNet needs at least one residual stage")
        self.residual_scale = residual_scale
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        chans = [width * min(2**i, 4) for i in range(stages + 1)]
        self.trunk = nn.Sequential(*(ResBlock(chans[i], chans[i + 1], stride=2) for i in range(stages)))
        self.out_channels = chans[-1]
        self.head = nn.Linear(self.out_channels, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """N×C×H×W images in [0, 1] → N×K×h×w features of the NPR residual."""
        r = npr_residual(images) * self.residual_scale  # residuals are small; keep BN inputs O(0.1–1)
        return self.trunk(self.stem(r))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """N logits (1 = fake)."""
        return self.head(self.features(images).mean(dim=(2, 3))).squeeze(1)

    def cam(self, images: torch.Tensor) -> torch.Tensor:
        """N×h×w class-activation logits (their spatial mean equals :meth:`forward`)."""
        return class_activation(self.features(images), self.head)


def class_activation(features: torch.Tensor, head: nn.Linear) -> torch.Tensor:
    """Per-location logits ``w·F + b`` (N×K×h×w → N×h×w) of a GAP → linear classifier."""
    return torch.einsum("nkhw,k->nhw", features, head.weight[0]) + head.bias[0]
