"""Reproducible training machinery of the generator factory: seeds, batches, checkpoints.

Every random draw of training step ``s`` comes from generators seeded by ``(seed, s, ...)``
(:func:`derive_seed`), never from global state, so a run resumed from a checkpoint at step
``k`` continues exactly as the uninterrupted run would have.

A checkpoint is a folder ``<checkpoint_dir>/step-00000100/`` holding

* ``models.safetensors`` — every module's ``state_dict`` (``<module>.<key>``);
* ``optimizers.safetensors`` + ``optimizers.json`` — optimiser states: the nested
  ``state_dict`` is flattened into named tensors and a JSON skeleton that points at them
  (:func:`flatten_state` / :func:`unflatten_state`); nothing is ever pickled;
* ``state.json`` — step, loss log, seconds, data fingerprint; written last, so a folder
  without it is an incomplete checkpoint and is ignored.

Checkpoints are written to a temporary folder and renamed into place; the newest ``keep``
are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "state.json"
MODELS_FILE = "models.safetensors"
OPTIM_FILE = "optimizers.safetensors"
OPTIM_INDEX = "optimizers.json"


# --------------------------------------------------------------------------- seeds and batches
def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts (``numpy.random.SeedSequence`` mixing)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


def torch_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed` of ``parts``."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


def batch_indices(seed: int, step: int, k: int, n: int, batch_size: int) -> np.ndarray:
    """Indices of the ``k``-th batch of training step ``step`` (without replacement when n ≥ batch)."""
    rng = np.random.default_rng([int(seed), int(step), int(k), 0xBA7C])
    if n >= batch_size:
        return np.sort(rng.permutation(n)[:batch_size])
    return np.sort(rng.integers(0, n, batch_size))


def fingerprint(array: np.ndarray) -> str:
    """Short SHA-256 of an array's shape and bytes (identifies the training set)."""
    h = hashlib.sha256(str(array.shape).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- nested state ↔ tensors + JSON
def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested dict/list/tuple by ``{"__tensor__": name}``.

    The tensors go into ``tensors`` (cloned, contiguous); dict keys keep their type (int
    parameter ids stay ints) because dicts are encoded as ``{"__dict__": [[key, value], ...]}``.
    """
    if isinstance(obj, torch.Tensor):
        name = prefix
        if name in tensors:
            raise ValueError(f"duplicate tensor name {name!r} while flattening state")
        tensors[name] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, Mapping):
        items = []
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"cannot serialise state key {key!r} of type {type(key).__name__}")
            items.append([key, flatten_state(value, f"{prefix}.{key}", tensors)])
        return {"__dict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot serialise {prefix}: unsupported type {type(obj).__name__}")


def unflatten_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            name = obj["__tensor__"]
            if name not in tensors:
                raise KeyError(f"checkpoint is missing tensor {name!r}")
            return tensors[name]
        if "__dict__" in obj:
            return {key: unflatten_state(value, tensors) for key, value in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        raise ValueError(f"malformed state entry with keys {sorted(obj)}")
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def modules_state(modules: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """``<module>.<key>`` → tensor for every module (contiguous CPU copies, safetensors-ready)."""
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().cpu().clone().contiguous()
    return out


def load_modules_state(modules: Mapping[str, torch.nn.Module], tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Load :func:`modules_state` output back (strict: missing or unexpected keys raise)."""
    for name, module in modules.items():
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{where}: weights of module {name!r} do not fit this generator's config: {exc}") from exc
    known = tuple(n + "." for n in modules)
    stray = [k for k in tensors if not k.startswith(known)]
    if stray:
        raise ValueError(f"{where}: unexpected tensors for modules not in this generator: {stray[:5]}")


# --------------------------------------------------------------------------- checkpoints
def checkpoint_steps(checkpoint_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints in ``checkpoint_dir`` (ascending)."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    steps = []
    for sub in root.iterdir():
        if sub.is_dir() and sub.name.startswith(CHECKPOINT_PREFIX) and (sub / STATE_FILE).is_file():
            try:
                steps.append(int(sub.name[len(CHECKPOINT_PREFIX):]))
            except ValueError:
                continue
    return sorted(steps)


def checkpoint_path(checkpoint_dir: str | Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"{CHECKPOINT_PREFIX}{int(step):08d}"


def save_checkpoint(
    checkpoint_dir: str | Path,
    step: int,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write a checkpoint for ``step`` atomically; prune all but the newest ``keep``."""
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(modules_state(modules), str(tmp / MODELS_FILE))
    opt_tensors: dict[str, torch.Tensor] = {}
    skeleton = {name: flatten_state(opt.state_dict(), name, opt_tensors) for name, opt in optimizers.items()}
    save_file(opt_tensors, str(tmp / OPTIM_FILE))
    (tmp / OPTIM_INDEX).write_text(json.dumps(skeleton))
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": int(step)}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_steps(root)[: -max(1, keep)]:
        shutil.rmtree(checkpoint_path(root, old), ignore_errors=True)
    return final


def load_checkpoint(
    path: str | Path,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> dict[str, Any]:
    """Restore modules and optimisers from a checkpoint folder; return its ``state.json``."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        load_modules_state(modules, load_file(str(path / MODELS_FILE)), str(path))
        opt_tensors = load_file(str(path / OPTIM_FILE))
        skeleton = json.loads((path / OPTIM_INDEX).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint ({exc})") from exc
    missing = sorted(set(optimizers) - set(skeleton))
    if missing:
        raise ValueError(f"{path}: checkpoint has no state for optimiser(s) {missing}")
    for name, opt in optimizers.items():
        opt.load_state_dict(unflatten_state(skeleton[name], opt_tensors))
    return state
