"""Pure-torch F3-Net-style model (Qian et al., ECCV 2020, "Thinking in Frequency: Face Forgery
Detection by Mining Frequency-aware Clues"), re-implemented from the paper with simplifications.

Two frequency views of the image, each into its own small CNN, fused before the classifier:

- **FAD** (frequency-aware decomposition): the 2-D DCT of the whole image, ``X = D x Dᵀ``, is
  masked by ``K`` band filters and transformed back,
  ``y_i = D⁻¹{ D(x) ⊙ [f_base_i + σ(f_w_i)] }``, ``σ(t) = (1 − e⁻ᵗ)/(1 + e⁻ᵗ)``,
  with fixed binary bases ``f_base`` for the low, middle, high bands (a partition of the spectrum
  by the diagonal index ``i + j``: low ``< 1/16``, middle ``1/16…1/8``, high ``≥ 1/8`` of the
  index range ``0…2N−2``) plus an "all" band, and learnable residual filters ``f_w``. The band
  images (K·C channels) go to the FAD branch.
- **LFS** (local frequency statistics): a sliding window (size ``w``, stride ``s``) over the grey
  image; for each window the DCT is split into ``M`` bands (again fixed bases by ``i + j`` plus
  learnable ``σ(h_w)``) and ``q_m = log10 ‖D(p) ⊙ [h_base_m + σ(h_w_m)]‖₁``, giving an
  ``M``-channel map of size ``(H − w)/s + 1``.

Simplifications against the paper (documented in docs/baselines.md): a small ResNet-style CNN per
branch instead of two Xceptions, late fusion by concatenating the two last feature maps (LFS map
resized to the FAD map) instead of the MixBlock cross-attention, and learnable filters stored at
``filter_size``² and bilinearly resized to the input's DCT size (so a model trained on crops
scores whole images; a DCT index ``k`` of size ``N`` is the frequency ``k/2N``, so resizing the
filter keeps it on the same physical frequencies).

All DCTs are matrix products with an orthonormal DCT-II matrix built once per size and device
(identical to ``scipy.fft.dctn(x, norm="ortho")``), so the model runs on CPU and GPU alike.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from ..forensic_cnn.model import ResBlock
from ..npr.model import class_activation

FAD_BANDS = ("low", "mid", "high", "all")
#: FAD band edges as fractions of the diagonal index range i + j ∈ [0, 2N − 2]
FAD_EDGES = (1 / 16, 1 / 8)


@lru_cache(maxsize=32)
def _dct_matrix_cpu(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def dct_matrix(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (n×n): ``D @ v`` = ``scipy.fft.dct(v, norm="ortho")``, ``D⁻¹ = Dᵀ``."""
    return _dct_matrix_cpu(n).to(device=device, dtype=dtype)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """2-D orthonormal DCT-II over the last two axes (``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``)."""
    dh = dct_matrix(x.shape[-2], x.device, x.dtype)
    dw = dct_matrix(x.shape[-1], x.device, x.dtype)
    return dh @ x @ dw.T


def idct2(X: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2`."""
    dh = dct_matrix(X.shape[-2], X.device, X.dtype)
    dw = dct_matrix(X.shape[-1], X.device, X.dtype)
    return dh.T @ X @ dw


def diagonal_bands(h: int, w: int, edges: tuple[float, ...]) -> torch.Tensor:
    """Binary masks (len(edges)+1)×h×w partitioning the DCT plane by ``(i + j) / (h + w − 2)``."""
    i = torch.arange(h, dtype=torch.float32)[:, None]
    j = torch.arange(w, dtype=torch.float32)[None, :]
    r = (i + j) / max(h + w - 2, 1)
    bounds = (0.0, *edges, math.inf)
    return torch.stack([((r >= lo) & (r < hi)).float() for lo, hi in zip(bounds[:-1], bounds[1:])])


def sigma_norm(t: torch.Tensor) -> torch.Tensor:
    """σ(t) = (1 − e⁻ᵗ)/(1 + e⁻ᵗ) (= tanh(t/2)), the paper's normalisation of learnable filters into (−1, 1)."""
    return torch.tanh(t / 2)


class FAD(nn.Module):
    """Frequency-aware decomposition: N×C×H×W → N×(4·C)×H×W band images (low, mid, high, all)."""

    def __init__(self, filter_size: int = 64, learnable: bool = True):
        super().__init__()
        self.filter_size = filter_size
        self.learnable = learnable
        # learnable residual filters f_w (one per band), initialised small as in the paper
        self.weight = nn.Parameter(torch.randn(len(FAD_BANDS), filter_size, filter_size) * 0.1) if learnable else None

    def base_filters(self, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Fixed binary bases f_base: 4×h×w (low, mid, high partition the plane; "all" is ones)."""
        parts = diagonal_bands(h, w, FAD_EDGES)
        return torch.cat([parts, torch.ones(1, h, w)]).to(device)

    def filters(self, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
        base = self.base_filters(h, w, device)
        if self.weight is None:
            return base
        wt = self.weight
        if wt.shape[-2:] != (h, w):
            wt = F.interpolate(wt[None], size=(h, w), mode="bilinear", align_corners=True)[0]
        return base + sigma_norm(wt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        spec = dct2(x)  # N×C×H×W
        filt = self.filters(h, w, x.device)  # K×H×W
        bands = idct2(spec[:, None] * filt[None, :, None])  # N×K×C×H×W
        return bands.reshape(n, len(FAD_BANDS) * c, h, w)


class LFS(nn.Module):
    """Local frequency statistics: N×C×H×W → N×M×h'×w', ``h' = (H − window)/stride + 1``."""

    def __init__(self, window: int = 10, stride: int = 2, bands: int = 6, learnable: bool = True, scale: float = 255.0):
        super().__init__()
        if window < 2 or stride < 1 or bands < 1:
            raise ValueError("LFS needs window >= 2, stride >= 1, bands >= 1")
        self.window, self.stride, self.bands, self.scale = window, stride, bands, scale
        edges = tuple(k / bands for k in range(1, bands))
        self.register_buffer("base", diagonal_bands(window, window, edges), persistent=False)  # M×w×w
        self.weight = nn.Parameter(torch.randn(bands, window, window) * 0.1) if learnable else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        k, s = self.window, self.stride
        if h < k or w < k:
            raise ValueError(f"LFS window {k} is larger than the image ({h}×{w})")
        grey = x.mean(dim=1, keepdim=True) * self.scale
        cols = F.unfold(grey, kernel_size=k, stride=s)  # N × k² × L
        oh, ow = (h - k) // s + 1, (w - k) // s + 1
        patches = cols.transpose(1, 2).reshape(n, oh * ow, k, k)
        spec = dct2(patches).abs()  # |D(p)| per window
        filt = self.base if self.weight is None else self.base + sigma_norm(self.weight)
        q = torch.einsum("nlij,mij->nml", spec, filt.abs())  # q_m = log10 ‖D(p) ⊙ h_m‖₁
        # contiguous: the einsum leaves a channels-last-like layout, and torch 2.13's CPU backward of
        # conv → BN → residual add on such an input crashes (segfault) — keep the layout plain
        return torch.log10(q + 1e-3).reshape(n, self.bands, oh, ow).contiguous()


def _branch(cin: int, width: int, stages: int, stem_stride: int) -> tuple[nn.Sequential, int]:
    chans = [width * min(2**i, 4) for i in range(stages + 1)]
    layers: list[nn.Module] = [nn.Conv2d(cin, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    layers += [ResBlock(chans[i], chans[i + 1], stride=2) for i in range(stages)]
    return nn.Sequential(*layers), chans[-1]


class F3Net(nn.Module):
    """FAD branch ‖ LFS branch → concatenated last feature maps → GAP → linear logit."""

    def __init__(self, in_channels: int = 3, width: int = 16, stages: int = 3, filter_size: int = 64,
                 lfs_window: int = 10, lfs_stride: int = 2, lfs_bands: int = 6, use_fad: bool = True,
                 use_lfs: bool = True):
        super().__init__()
        if not (use_fad or use_lfs):
            raise ValueError("F3Net needs at least one of the FAD and LFS branches")
        self.fad = FAD(filter_size) if use_fad else None
        self.lfs = LFS(lfs_window, lfs_stride, lfs_bands) if use_lfs else None
        out = 0
        if use_fad:  # stride-2 stem: band images are full resolution
            self.fad_cnn, k = _branch(len(FAD_BANDS) * in_channels, width, stages, 2)
            out += k
        if use_lfs:  # LFS maps are already ≈ H/stride
            self.lfs_cnn, k = _branch(lfs_bands, width, stages, 1)
            out += k
        self.out_channels = out
        self.head = nn.Linear(out, 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """N×C×H×W in [0, 1] → N×K×h×w fused features (LFS map resized to the FAD map)."""
        feats = []
        if self.fad is not None:
            feats.append(self.fad_cnn(self.fad(images)))
        if self.lfs is not None:
            g = self.lfs_cnn(self.lfs(images))
            if feats and g.shape[-2:] != feats[0].shape[-2:]:
                g = F.adaptive_avg_pool2d(g, feats[0].shape[-2:]) if g.shape[-1] >= feats[0].shape[-1] else \
                    F.interpolate(g, size=feats[0].shape[-2:], mode="bilinear", align_corners=False)
            feats.append(g)
        return torch.cat(feats, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3))).squeeze(1)

    def cam(self, images: torch.Tensor) -> torch.Tensor:
        """N×h×w class-activation logits (spatial mean = :meth:`forward`)."""
        return class_activation(self.features(images), self.head)
