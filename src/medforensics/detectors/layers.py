"""Forensic building blocks shared by detectors (the fine-trace streams of DSKI's adapter).

- :class:`BayarConv2d` — constrained convolution (Bayar & Stamm 2016/2018): for every kernel the
  centre weight is −1 and the other weights sum to 1, so the layer learns prediction-error
  (noise-residual) filters instead of image content. The constraint is re-imposed with
  :meth:`BayarConv2d.constrain_` after every optimiser step (and at construction).
- :class:`SRMFilters` — three fixed high-pass SRM residual filters (Fridrich & Kodovský 2012).
- :class:`InceptionBlock` — parallel 1×1 / 3×3 / 5×5 convolutions, concatenated.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BayarConv2d(nn.Conv2d):
    """Conv2d whose kernels obey the Bayar–Stamm constraint (centre −1, off-centre sum 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, **kwargs):
        if kernel_size % 2 == 0:
            raise ValueError("BayarConv2d needs an odd kernel size")
        kwargs.setdefault("padding", kernel_size // 2)
        kwargs.setdefault("bias", False)
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)
        centre = torch.zeros(kernel_size, kernel_size, dtype=torch.bool)
        centre[kernel_size // 2, kernel_size // 2] = True
        self.register_buffer("_centre", centre, persistent=False)
        self.constrain_()

    @torch.no_grad()
    def constrain_(self) -> None:
        """Project the weights back onto the constraint set (call after each optimiser step)."""
        w = self.weight
        w[..., self._centre] = 0.0
        off_sum = w.sum(dim=(-2, -1), keepdim=True)
        # keep the sign of the sum, avoid dividing by ~0 (re-initialise degenerate kernels)
        bad = off_sum.abs() < 1e-6
        if bad.any():
            w.masked_fill_(bad.expand_as(w) & ~self._centre, 1.0)
            off_sum = w.sum(dim=(-2, -1), keepdim=True)
        w.div_(off_sum)
        w[..., self._centre] = -1.0


def _srm_kernels() -> torch.Tensor:
    k1 = torch.tensor(  # first-order horizontal residual, padded to 5×5
        [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, -1, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float32
    )
    k2 = torch.tensor(  # second-order
        [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float32
    ) / 2.0
    k3 = torch.tensor(  # "KV" 5×5 square
        [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
        dtype=torch.float32,
    ) / 12.0
    return torch.stack([k1, k2, k3])[:, None]  # 3×1×5×5


class SRMFilters(nn.Module):
    """Fixed SRM high-pass residuals of the luminance channel → 3 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernels", _srm_kernels(), persistent=False)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x if x.shape[1] == 1 else (x * self.luma).sum(1, keepdim=True)
        return F.conv2d(grey, self.kernels, padding=2)


class InceptionBlock(nn.Module):
    """Parallel 1×1, 3×3 and 5×5 convolutions, concatenated along channels."""

    def __init__(self, in_channels: int, branch_channels: int):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, branch_channels, k, padding=k // 2) for k in (1, 3, 5)
        )

    @property
    def out_channels(self) -> int:
        return 3 * self.branches[0].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)
