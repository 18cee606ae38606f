"""The one device resolver of every detector."""

from __future__ import annotations

import warnings

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else the CPU; any other name as given (``"cpu"``, ``"cuda"``,
    ``"cuda:1"``, ``"mps"``…). A CUDA device on a machine without CUDA falls back to the CPU with a
    warning, so that a model saved with ``device="cuda"`` still loads and scores on a CPU-only machine.
    An unknown device name is a ValueError naming it.
    """
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"unknown device {name!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device {str(name)!r} requested but CUDA is not available: using the CPU", stacklevel=3)
        return torch.device("cpu")
    return device
