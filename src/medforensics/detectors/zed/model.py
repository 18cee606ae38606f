"""The lossless-coding model of the ``zed`` detector: a multi-resolution causal predictor of 8-bit pixels.

Pyramid: ``x_0`` is the 8-bit grey image, ``x_{s+1}`` the 2× average-pooled ``x_s`` rounded back to
8 bits (:func:`pyramid`). Level ``s`` is coded conditioned on ``x_{s+1}`` (what a multi-resolution
coder has already sent) and on the causal (raster-order) neighbourhood of each pixel in ``x_s``
(masked convolutions, PixelCNN-style, evaluated in parallel). One network serves every level (a
learned per-level bias tells it which); the coarsest level is not coded.

Per pixel the network outputs a 256-way categorical distribution over the grey levels (as the
original PixelCNN; a discretised-logistic mixture needs 256 CDF differences per component and pixel
for the entropy, which was ~25× slower on a CPU). :func:`level_log_prob` is the training
log-likelihood; :func:`coding_cost` gives, per pixel, the actual cost ``−log₂ P(x)`` and the expected
cost (the entropy ``−Σ P log₂ P`` of the predicted distribution), both in bits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 256
_LOG2 = math.log(2.0)


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels → 8-bit grey levels 0..255 (float)."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0)


def pyramid(levels: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``n`` levels of N×1×H×W 8-bit grey values: level 0 as given, then 2× average pooling, rounded.

    H and W must be divisible by 2^(n−1) (see :func:`crop_to_multiple`)."""
    out = [levels]
    for _ in range(n - 1):
        out.append(torch.round(F.avg_pool2d(out[-1], 2)))
    return out


def crop_to_multiple(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Top-left crop of an N×C×H×W tensor to multiples of ``factor`` (at least ``factor``, by edge padding)."""
    h, w = x.shape[-2:]
    ph, pw = max(0, factor - h), max(0, factor - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        h, w = x.shape[-2:]
    return x[..., : h - h % factor, : w - w % factor]


def model_range(levels: torch.Tensor) -> torch.Tensor:
    """Grey levels 0..255 → [−1, 1] (the bin centres of the discretised logistic)."""
    return levels / 127.5 - 1.0


class MaskedConv2d(nn.Conv2d):
    """Causal convolution: mask ``"A"`` sees only pixels strictly before the centre in raster order,
    mask ``"B"`` also the centre (used after an ``"A"`` layer)."""

    def __init__(self, mask: str, in_ch: int, out_ch: int, k: int):
        super().__init__(in_ch, out_ch, k, padding=k // 2)
        if mask not in ("A", "B"):
            raise ValueError(f"mask must be 'A' or 'B', got {mask!r}")
        m = torch.ones(k, k)
        c = k // 2
        m[c, c + (mask == "B") :] = 0
        m[c + 1 :] = 0
        self.register_buffer("mask", m[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class ZedNet(nn.Module):
    """Predicts the 256-level distribution (logits) of every pixel of level s from x_s (causally) and x_{s+1}."""

    def __init__(self, width: int = 24, layers: int = 3, levels: int = 3):
        super().__init__()
        self.ctx_in = MaskedConv2d("A", 1, width, 5)
        self.low = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
        self.level_bias = nn.Parameter(torch.zeros(levels, width))
        self.body = nn.ModuleList(MaskedConv2d("B", width, width, 3) for _ in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, LEVELS, 1))

    def forward(self, x: torch.Tensor, low: torch.Tensor, level: int) -> torch.Tensor:
        """x: N×1×H×W level-s grey levels, low: N×1×H/2×W/2 level-(s+1); returns N×256×H×W logits."""
        up = F.interpolate(model_range(low), scale_factor=2, mode="nearest")
        h = self.ctx_in(model_range(x)) + self.low(up) + self.level_bias[level].view(1, -1, 1, 1)
        for conv in self.body:
            h = h + conv(F.relu(h))
        return self.head(h)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """N×256×H×W logits → log-probabilities over the 256 grey levels (float32)."""
    return F.log_softmax(logits.float(), dim=1)


def level_log_prob(levels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Natural-log probability N×H×W of the observed grey levels (N×1×H×W): the training objective."""
    return log_probs(logits).gather(1, levels.long()).squeeze(1)


def coding_cost(levels: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(actual cost −log₂ P(x), expected cost H(P) = −Σ P log₂ P) per pixel, N×H×W each, in bits."""
    logp = log_probs(logits)
    nll = -logp.gather(1, levels.long()).squeeze(1) / _LOG2
    ent = -(logp.exp() * logp).sum(1) / _LOG2
    return nll.cpu(), ent.cpu()
