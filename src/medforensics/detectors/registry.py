"""The single place detectors are registered, created by name, and loaded from disk (timm-style)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from .base import Detector, read_model_dir

_REGISTRY: dict[str, type[Detector]] = {}
D = TypeVar("D", bound=type[Detector])

#: Models shipped inside the package: name -> folder under ``medforensics/detectors/weights``.
PRETRAINED = {"default": "forensic_cnn_default"}


def register_detector(cls: D) -> D:
    """Class decorator: make ``cls`` available as ``create_detector(cls.name)``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"detector name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def _ensure_builtin() -> None:
    from . import forensic_cnn  # noqa: F401  (registers itself)


def list_detectors() -> list[str]:
    """Names of all registered detectors."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_detector_class(name: str) -> type[Detector]:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown detector {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def create_detector(name: str, **config: Any) -> Detector:
    """A new, untrained detector by registry name, e.g. ``create_detector("forensic_cnn", width=16)``."""
    return get_detector_class(name)(**config)


def pretrained_dir(name: str) -> Path:
    """Folder of a model shipped with the package (``"default"``)."""
    if name not in PRETRAINED:
        raise KeyError(f"no shipped model {name!r}; shipped: {', '.join(PRETRAINED)}")
    return Path(str(resources.files("medforensics.detectors") / "weights" / PRETRAINED[name]))


def load_detector(model: str | Path) -> Detector:
    """Load a detector from a model directory, or a shipped model by name (``"default"``)."""
    path = Path(model)
    if not path.exists() and str(model) in PRETRAINED:
        path = pretrained_dir(str(model))
    if not path.exists():
        raise FileNotFoundError(
            f"model {str(model)!r} is neither a model directory nor a shipped model ({', '.join(PRETRAINED)})"
        )
    cfg, tensors = read_model_dir(path)
    det = get_detector_class(cfg["detector"]).from_config(cfg)
    det.load_state_dict(tensors)
    return det
