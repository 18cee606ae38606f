"""The single place detectors are registered, created by name, and loaded from disk (timm-style)."""

from __future__ import annotations

from importlib import import_module, resources
from pathlib import Path
from typing import Any, TypeVar

from .base import Detector, read_model_dir

_REGISTRY: dict[str, type[Detector]] = {}
D = TypeVar("D", bound=type[Detector])

#: Models shipped inside the package: name -> folder under ``medforensics/detectors/weights``.
PRETRAINED = {"default": "forensic_cnn_default", "btd-ct": "btd_ct", "btd-mri": "btd_mri"}


def register_detector(cls: D) -> D:
    """Class decorator: make ``cls`` available as ``create_detector(cls.name)``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"detector name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


#: Sub-packages of ``medforensics.detectors`` that register built-in detectors when imported.
#: Adding a detector = adding its module here (and a tiny test config, see tests/detectors/tiny/).
BUILTIN_MODULES = ("forensic_cnn", "dski", "unifd", "npr", "f3net", "btd", "reconstruction", "zed", "fusion")

#: Built-in detector modules that could not be imported (missing optional dependency): module -> reason.
UNAVAILABLE: dict[str, str] = {}
_loaded = False


def _ensure_builtin() -> None:
    """Import every built-in detector module once; a module whose optional dependency is missing
    is recorded in :data:`UNAVAILABLE` instead of failing the whole registry."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        try:
            import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{module}":
                continue  # not written yet / not part of this build
            UNAVAILABLE[module] = f"needs the optional package {exc.name!r} (pip install 'medforensics[all]')"


def list_detectors() -> list[str]:
    """Names of all registered detectors."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_detector_class(name: str) -> type[Detector]:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = "".join(f"; {m}: {why}" for m, why in UNAVAILABLE.items() if name.startswith(m) or m.startswith(name))
        raise KeyError(f"unknown detector {name!r}; available: {', '.join(sorted(_REGISTRY))}{hint}") from None


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
    det.model_dir = path  # where a recorded inference runtime's files live
    det.load_state_dict(tensors)
    return det
