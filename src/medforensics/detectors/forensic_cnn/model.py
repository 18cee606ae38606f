"""Pure-torch model of the forensic CNN: noise-residual front end → inception → residual trunk.

The network classifies one square *patch*; :func:`patchify` / :func:`patch_map` turn a whole
image into a grid of patches and the grid of patch probabilities back into a pixel map.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import BayarConv2d, InceptionBlock, SRMFilters


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


class ResBlock(nn.Module):
    """Basic residual block with a strided 1×1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


class ForensicCNN(nn.Module):
    """Patch classifier: [Bayar constrained conv ‖ SRM high-pass] → inception(1/3/5) → 4 res stages → logit."""

    def __init__(self, in_channels: int = 3, width: int = 32, bayar_channels: int = 6):
        super().__init__()
        self.bayar = BayarConv2d(in_channels, bayar_channels, kernel_size=5)
        self.srm = SRMFilters()
        self.inception = InceptionBlock(bayar_channels + 3, width // 2)
        c0 = self.inception.out_channels
        self.bn0 = _norm(c0)
        self.trunk = nn.Sequential(
            ResBlock(c0, width), ResBlock(width, 2 * width), ResBlock(2 * width, 4 * width), ResBlock(4 * width, 4 * width)
        )
        self.head = nn.Linear(4 * width, 1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """N×C×P×P patches in [0, 1] → N logits (1 = fake)."""
        x = patches * 255.0  # residual filters work in grey-level units
        residual = torch.cat([self.bayar(x), self.srm(x)], dim=1)
        h = F.relu(self.bn0(self.inception(residual)))
        h = self.trunk(h)
        return self.head(h.mean(dim=(2, 3))).squeeze(1)


def patchify(images: torch.Tensor, size: int, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """N×C×H×W → (N·gh·gw)×C×size×size patches on a regular grid, and the grid shape (gh, gw)."""
    n, c, h, w = images.shape
    if h < size or w < size:
        raise ValueError(f"image {h}×{w} is smaller than the patch size {size}")
    cols = F.unfold(images, kernel_size=size, stride=stride)  # N × (C·s·s) × L
    gh, gw = (h - size) // stride + 1, (w - size) // stride + 1
    patches = cols.transpose(1, 2).reshape(n * gh * gw, c, size, size)
    return patches, (gh, gw)


def patch_map(values: torch.Tensor, grid: tuple[int, int], image_hw: tuple[int, int], size: int, stride: int) -> torch.Tensor:
    """Per-patch values N×(gh·gw) → N×H×W map, each pixel the mean over the patches covering it."""
    n = values.shape[0]
    cols = values.reshape(n, 1, grid[0] * grid[1]).expand(n, size * size, grid[0] * grid[1])
    summed = F.fold(cols, output_size=image_hw, kernel_size=size, stride=stride)
    cover = F.fold(torch.ones_like(cols[:1]), output_size=image_hw, kernel_size=size, stride=stride)
    return (summed / cover.clamp_min(1.0)).squeeze(1)


def topk_mean(logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the top ``fraction`` of each row (N×P → N): sensitive to local tampering, robust to one patch."""
    k = max(1, int(round(fraction * logits.shape[1])))
    return logits.topk(k, dim=1).values.mean(dim=1)
