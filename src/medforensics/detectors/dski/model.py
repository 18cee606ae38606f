"""Pure-torch DSKI model: frozen backbone + CDFA adapters + text adapter (or linear head).

**CDFA** (cross-domain fine-trace adapter) sits *in parallel* with the MLP of chosen transformer
blocks: a forward hook on ``layer.mlp`` adds ``CDFA(mlp_input)`` to the MLP output, so the
frozen block computes ``h + MLP(LN(h)) + CDFA(LN(h))``. Hooks (not wrapper modules) keep the
backbone's own module tree and parameter names untouched. Inside the adapter:

1. tokens are projected to a light bottleneck width (linear ``down``);
2. patch tokens are reshaped to their 2-D grid (the class token is taken out, see 5);
3. **noise stream** — Bayar–Stamm constrained conv (centre −1, others sum to 1; re-imposed after
   every optimiser step) → ReLU → conv: the residual of each token against its neighbours;
4. **spatial stream** — ReLU → inception block (parallel 1×1 / 3×3 / 5×5 convs) → 1×1 conv;
5. fusion ``f = f_noise + λ·f_spatial`` (λ a learnable scalar) — naming convention: the
   *noise* stream is the constrained-conv one, the *spatial* stream the inception one (the
   paper's equations swap the two names); the **class token** receives the grid mean of ``f``
   (global pooling of the fine-trace features), so the image embedding sees them directly;
6. ``up`` projects back to the block width; it is initialised with a small normal
   (``init_std``) so gradients reach every adapter parameter from the first step while the
   frozen features are only slightly perturbed.

On EfficientNet the same adapter runs beside a whole MBConv block: input = the block input
(B×C_in×H×W, no tokens), output resized (average pooling) to the block's output grid and
projected to its channels, then added to the block output.

**Classifier.** CLIP: two linear layers (with a residual connection, CLIP-Adapter style:
``W′ = t + L₂(ReLU(L₁(t)))``) after the frozen text encoder applied once to the class prompts;
logits = s · cos(f′, W′) with CLIP's logit scale s. EfficientNet: a linear head whose L2-normalised
rows are W′ (cosine classifier, scale s), so the MFRM arithmetic is the same.

**Centring** (``center``; not in the paper): features are ``normalise(normalise(g) − μ)`` with μ a
buffer (``feature_mean``) set from training images by the detector — pooled features otherwise
share one dominant direction and every pair of images has cosine ≈ 1. In training mode μ follows
the features as a running mean (momentum 0.1 per batch, like BatchNorm's statistics), because
the adapters' output can itself add a common component.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones import Backbone, HookPoint
from ..layers import BayarConv2d, InceptionBlock

STREAMS = ("both", "noise", "spatial")


class CDFA(nn.Module):
    """Cross-domain fine-trace adapter (see module docstring)."""

    def __init__(self, in_dim: int, out_dim: int, bottleneck: int = 64, streams: str = "both",
                 noise_kernel: int = 3, lambda_init: float = 1.0, init_std: float = 0.01):
        super().__init__()
        if streams not in STREAMS:
            raise ValueError(f"streams must be one of {STREAMS}, got {streams!r}")
        self.streams = streams
        self.down = nn.Linear(in_dim, bottleneck)
        if streams in ("both", "noise"):
            self.noise_bayar = BayarConv2d(bottleneck, bottleneck, kernel_size=noise_kernel)
            self.noise_conv = nn.Conv2d(bottleneck, bottleneck, 3, padding=1)
        if streams in ("both", "spatial"):
            self.inception = InceptionBlock(bottleneck, max(1, math.ceil(bottleneck / 3)))
            self.spatial_proj = nn.Conv2d(self.inception.out_channels, bottleneck, 1)
        if streams == "both":
            self.lam = nn.Parameter(torch.tensor(float(lambda_init)))  # λ: weight of the spatial stream
        self.up = nn.Linear(bottleneck, out_dim)
        nn.init.normal_(self.up.weight, std=init_std)
        nn.init.zeros_(self.up.bias)

    def constrain_(self) -> None:
        """Re-impose the Bayar–Stamm constraint (call after each optimiser step)."""
        if hasattr(self, "noise_bayar"):
            self.noise_bayar.constrain_()

    def fuse(self, z: torch.Tensor) -> torch.Tensor:
        """B×C×h×w bottleneck grid → fused fine-trace features f (B×C×h×w)."""
        f_noise = self.noise_conv(F.relu(self.noise_bayar(z))) if self.streams != "spatial" else None
        f_spatial = self.spatial_proj(self.inception(F.relu(z))) if self.streams != "noise" else None
        if f_noise is None:
            return f_spatial
        if f_spatial is None:
            return f_noise
        return f_noise + self.lam * f_spatial  # f = f_noise + λ·f_spatial

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """ViT tokens B×(1+h·w)×D (class token first) → adapter output, same layout, width ``out_dim``."""
        b, n, _ = x.shape
        g = math.isqrt(n - 1)
        if g * g != n - 1:
            raise ValueError(f"{n - 1} patch tokens do not form a square grid")
        z = self.down(x[:, 1:])  # B×hw×C
        grid = z.transpose(1, 2).reshape(b, -1, g, g)
        f = self.fuse(grid)  # B×C×g×g
        cls = f.mean(dim=(2, 3))[:, None]  # class token: grid mean of the fused features
        patches = f.flatten(2).transpose(1, 2)
        return self.up(torch.cat([cls, patches], dim=1))

    def forward_map(self, x: torch.Tensor, out_hw: Sequence[int]) -> torch.Tensor:
        """Conv feature map B×C_in×H×W → B×C_out×H′×W′ (``out_hw``, the parallel block's output grid)."""
        z = self.down(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        f = self.fuse(z)
        if tuple(f.shape[-2:]) != tuple(out_hw):
            f = F.adaptive_avg_pool2d(f, tuple(out_hw))
        return self.up(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TextAdapter(nn.Module):
    """W′ = t + L₂(ReLU(L₁(t))): two linear layers after the frozen text embeddings t (K×D)."""

    def __init__(self, dim: int, hidden: int, init_std: float = 0.01):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.normal_(self.fc2.weight, std=init_std)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.fc2(F.relu(self.fc1(t)))


class DSKIModel(nn.Module):
    """Backbone (frozen) + CDFA adapters on ``blocks`` + classifier; see module docstring."""

    def __init__(self, backbone: Backbone, *, blocks: Sequence[int], use_cdfa: bool = True, bottleneck: int = 64,
                 streams: str = "both", noise_kernel: int = 3, lambda_init: float = 1.0, init_std: float = 0.01,
                 prompts: Sequence[str] = ("A real medical image", "A fake medical image"),
                 text_hidden: int | None = None, logit_scale: float | None = None, center: bool = True):
        super().__init__()
        self.backbone = backbone
        self.center = bool(center)
        self.center_momentum = 0.1  # running-mean update of μ per training batch
        points: list[HookPoint] = backbone.hook_points()
        bad = [b for b in blocks if not 0 <= b < len(points)]
        if bad:
            raise ValueError(f"adapter blocks {bad} out of range: the backbone has {len(points)} blocks (0-based)")
        self.blocks = sorted(set(int(b) for b in blocks)) if use_cdfa else []
        self.adapters = nn.ModuleDict({
            str(i): CDFA(points[i].in_dim, points[i].out_dim, bottleneck, streams, noise_kernel, lambda_init, init_std)
            for i in self.blocks
        })
        self._hooks = [points[i].module.register_forward_hook(self._hook(str(i), points[i].tokens)) for i in self.blocks]
        dim = backbone.feature_dim
        # μ: mean L2-normalised backbone feature of training images, subtracted before the final L2
        # normalisation (``center``); zeros until :meth:`set_feature_mean` (then centring is a no-op)
        self.register_buffer("feature_mean", torch.zeros(dim))
        if backbone.kind == "clip":
            if len(prompts) != 2:
                raise ValueError(f"need two prompts (real, fake), got {list(prompts)}")
            self.register_buffer("text_base", backbone.text_features(list(prompts)), persistent=False)
            self.classifier: nn.Module = TextAdapter(dim, text_hidden or max(8, dim // 4), init_std)
            self.logit_scale = float(logit_scale or backbone.logit_scale)
        else:
            self.text_base = None
            self.classifier = nn.Linear(dim, 2, bias=False)
            self.logit_scale = float(logit_scale or 30.0)

    def _hook(self, key: str, tokens: bool):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            adapter = self.adapters[key]
            x = inputs[0]
            extra = adapter.forward_tokens(x) if tokens else adapter.forward_map(x, output.shape[-2:])
            return output + extra.to(output.dtype)  # added to the (frozen) MLP / block output

        return hook

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ------------------------------------------------------------------ pieces
    def trainable(self) -> nn.ModuleDict:
        """The modules that train (adapters + classifier), as one module for optimisers / checkpoints."""
        return nn.ModuleDict({"adapters": self.adapters, "classifier": self.classifier})

    def constrain_(self) -> None:
        for a in self.adapters.values():
            a.constrain_()

    def refresh_text(self, prompts: Sequence[str]) -> None:
        """Recompute the frozen text embeddings (after the backbone weights were replaced)."""
        if self.text_base is not None:
            self.text_base = self.backbone.text_features(list(prompts)).to(self.text_base.device)

    def class_weights(self) -> torch.Tensor:
        """W′ (K×D, L2-normalised): adapted text embeddings, or the linear head's rows."""
        w = self.classifier(self.text_base) if self.text_base is not None else self.classifier.weight
        return F.normalize(w.float(), dim=-1)

    def set_feature_mean(self, mean: torch.Tensor) -> None:
        """Store μ (D,), the mean of :meth:`features` ``(center=False)`` over training images."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.feature_mean.numel():
            raise ValueError(f"feature mean has {mean.numel()} values, the features {self.feature_mean.numel()}")
        self.feature_mean.copy_(mean.to(self.feature_mean.device))

    def features(self, x: torch.Tensor, center: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted image features f′ (N×D) and per-location features (N×D×h×w), both L2-normalised.

        With centring (``self.center``, overridable by ``center``): f′ = normalise(normalise(g) − μ),
        the same μ for the per-location features. Pooled CNN/CLIP features share a large common
        component (cosine ≈ 1 between any two images), which centring removes.
        """
        g, local = self.backbone.forward_features(x)
        g, local = F.normalize(g.float(), dim=-1), F.normalize(local.float(), dim=1)
        if self.center if center is None else center:
            if self.training and torch.is_grad_enabled():  # track μ as the adapters move (BatchNorm-style)
                with torch.no_grad():
                    self.feature_mean.lerp_(g.detach().mean(0).to(self.feature_mean), self.center_momentum)
            mu = self.feature_mean.float().detach()
            g = F.normalize(g - mu, dim=-1)
            local = F.normalize(local - mu[None, :, None, None], dim=1)
        return g, local

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier logits s·f′·W′ᵀ (N×2, columns real/fake), without the retrieval bank."""
        f, _ = self.features(x)
        return self.logit_scale * f @ self.class_weights().T
