"""The generator interface: ``fit`` on real images, ``sample`` fakes, ``save`` / ``load``.

A :class:`Generator` owns named torch modules (``self.modules``) and optimisers
(``self.optimizers``). Subclasses implement three hooks:

* ``_build()`` → modules, ``_build_optimizers()`` → optimisers;
* ``_train_step(data, step, g)`` → ``{"loss name": value}`` for one optimisation step;
* ``_sample_batch(z, g)`` → N×C×H×W images in [0, 1] from per-image noise ``z``.

Images enter as N×H×W (``channels=1``) or N×H×W×3 float32 in [0, 1] at ``resolution`` and
leave the same way. A *model directory* holds ``config.json`` (family, resolution, channels,
seed, config, training summary), ``weights.safetensors`` and ``samples.png`` (a grid).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import train_loop as tl

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
GRID_FILE = "samples.png"
FORMAT = "medforensics-generator"
FORMAT_VERSION = 1


class TrainingData:
    """The training images as an N×C×H×W tensor in [0, 1] plus deterministic batch drawing."""

    def __init__(self, images: torch.Tensor, seed: int, batch_size: int):
        self.images = images
        self.seed = int(seed)
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def indices(self, step: int, k: int = 0) -> torch.Tensor:
        """Indices of the ``k``-th batch of ``step`` (a pure function of seed, step, k)."""
        return torch.from_numpy(tl.batch_indices(self.seed, step, k, len(self), self.batch_size))

    def draw(self, step: int, k: int = 0) -> torch.Tensor:
        """The ``k``-th batch of images of ``step``: B×C×H×W in [0, 1]."""
        return self.images[self.indices(step, k)]


class Generator:
    """Base class of the generator families (see the module docstring)."""

    family: ClassVar[str] = ""
    #: config keys and defaults; ``None`` defaults are resolved by :meth:`_resolve_config`
    defaults: ClassVar[dict[str, Any]] = {}
    #: a short description of how samples are drawn (manifest column ``sampler``)
    sampler: ClassVar[str] = ""

    def __init__(self, resolution: int = 64, channels: int = 1, seed: int = 0, **config: Any):
        resolution, channels = int(resolution), int(channels)
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two ≥ 8 (e.g. 64, 128, 256), got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        unknown = sorted(set(config) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"unknown {self.family} option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(self.defaults))}"
            )
        self.resolution, self.channels, self.seed = resolution, channels, int(seed)
        self.config: dict[str, Any] = self._resolve_config({**self.defaults, **config})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tl.derive_seed(self.seed, 0x1217))
            self.modules: dict[str, torch.nn.Module] = self._build()
        self.optimizers: dict[str, torch.optim.Optimizer] = self._build_optimizers()
        self.step = 0
        self.seconds_trained = 0.0
        self.loss_log: list[dict[str, float]] = []
        self.training_summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ hooks
    def _resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return config

    def _build(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def _train_step(self, data: TrainingData, step: int, g: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    def _noise_shape(self) -> tuple[int, ...]:
        """Shape of the per-image noise a sample starts from."""
        raise NotImplementedError

    def _sample_batch(self, z: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _before_training(self, data: TrainingData) -> None:
        """Called once per :meth:`fit` before the first step (also after a resume)."""

    def _validate_fit(self, steps: int) -> None:
        """Family-specific checks of the ``steps`` target."""

    def describe_sampler(self) -> str:
        return self.sampler

    # ------------------------------------------------------------------ images
    def _images_to_tensor(self, images: np.ndarray) -> torch.Tensor:
        arr = np.asarray(images)
        want = "N×H×W" if self.channels == 1 else "N×H×W×3"
        shape_ok = arr.ndim == 3 if self.channels == 1 else (arr.ndim == 4 and arr.shape[-1] == 3)
        if not shape_ok:
            hint = " (grey images need channels=1, RGB channels=3; load_training_images(..., channels=...) converts)"
            raise ValueError(f"training images must be {want} for channels={self.channels}, got shape {arr.shape}{hint}")
        if arr.shape[0] == 0:
            raise ValueError("no training images")
        if arr.shape[1:3] != (self.resolution, self.resolution):
            raise ValueError(
                f"training images are {arr.shape[1]}×{arr.shape[2]} but the generator's resolution is "
                f"{self.resolution}; resize them with medforensics.io.standardise (load_training_images does)"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"training images must be float in [0, 1], got dtype {arr.dtype}")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise ValueError("training images contain NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(f"training images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        t = torch.from_numpy(np.clip(arr, 0.0, 1.0).copy())
        t = t[:, None] if self.channels == 1 else t.permute(0, 3, 1, 2)
        return t.contiguous()

    def _tensor_to_images(self, t: torch.Tensor) -> np.ndarray:
        arr = t.detach().clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
        return np.ascontiguousarray(arr[:, 0] if self.channels == 1 else arr.transpose(0, 2, 3, 1))

    # ------------------------------------------------------------------ training
    def _checkpoint_state(self, data_fp: str, batch_size: int) -> dict[str, Any]:
        return {
            "family": self.family, "resolution": self.resolution, "channels": self.channels, "seed": self.seed,
            "config": self.config, "batch_size": batch_size, "images_sha256": data_fp,
            "seconds_trained": self.seconds_trained, "loss_log": self.loss_log,
        }

    def _resume(self, checkpoint_dir: Path, data_fp: str, batch_size: int) -> int | None:
        steps = tl.checkpoint_steps(checkpoint_dir)
        if not steps:
            return None
        path = tl.checkpoint_path(checkpoint_dir, steps[-1])
        state = json.loads((path / tl.STATE_FILE).read_text())
        mine = self._checkpoint_state(data_fp, batch_size)
        for key in ("family", "resolution", "channels", "seed", "config", "batch_size"):
            if json.loads(json.dumps(mine[key])) != state.get(key):
                raise ValueError(
                    f"{path}: checkpoint was made with {key}={state.get(key)!r}, this run has {mine[key]!r}; "
                    "use another checkpoint_dir or resume=False"
                )
        if state.get("images_sha256") != data_fp:
            import warnings

            warnings.warn(f"{path}: resuming on training images that differ from the checkpoint's", stacklevel=3)
        state = tl.load_checkpoint(path, self.modules, self.optimizers)
        self.step = int(state["step"])
        self.seconds_trained = float(state.get("seconds_trained", 0.0))
        self.loss_log = list(state.get("loss_log", []))
        return self.step

    def fit(
        self,
        images: np.ndarray,
        steps: int,
        batch_size: int = 16,
        checkpoint_dir: str | Path | None = None,
        resume: bool = True,
        progress: bool = True,
        checkpoint_every: int | None = None,
        log_every: int = 10,
        grid: int = 16,
    ) -> dict[str, Any]:
        """Train until ``steps`` optimisation steps in total have been made; return a summary.

        ``steps`` is a *total*: a generator (or checkpoint) already at step k trains k+1…steps.
        With ``checkpoint_dir``, a checkpoint is written every ``checkpoint_every`` steps
        (default ``max(1, steps // 10)``) and at the end, and a sample grid
        (``samples-step-<n>.png``) after training; with ``resume`` the newest checkpoint there is
        loaded first, which continues exactly as an uninterrupted run would; without ``resume`` a
        ``checkpoint_dir`` holding checkpoints is refused (``FileExistsError``) rather than mixed.
        """
        steps, batch_size = int(steps), int(batch_size)
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self._validate_fit(steps)
        x = self._images_to_tensor(images)
        data_fp = tl.fingerprint(x.numpy())
        data = TrainingData(x, tl.derive_seed(self.seed, 0xDA7A), batch_size)
        resumed_from = None
        if checkpoint_dir is not None:
            checkpoint_dir = Path(checkpoint_dir)
            if resume:
                resumed_from = self._resume(checkpoint_dir, data_fp, batch_size)
            elif tl.checkpoint_steps(checkpoint_dir):
                raise FileExistsError(
                    f"{checkpoint_dir} holds checkpoints of an earlier run; resume from them (resume=True), "
                    "delete them or choose another checkpoint_dir"
                )
        if self.step > steps:
            raise ValueError(f"the generator is already at step {self.step} > steps={steps}")
        every = int(checkpoint_every) if checkpoint_every else max(1, steps // 10)
        start, t0 = self.step, time.perf_counter()
        for module in self.modules.values():
            module.train()
        self._before_training(data)
        window: dict[str, list[float]] = {}
        bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"train {self.family}",
                   disable=not progress, dynamic_ncols=True, leave=False)
        for step in bar:
            losses = self._train_step(data, step, tl.torch_generator(self.seed, step, 0x57E9))
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"{self.family}: loss {', '.join(bad)} is not finite at step {step + 1}")
            self.step = step + 1
            for k, v in losses.items():
                window.setdefault(k, []).append(float(v))
            if self.step % max(1, log_every) == 0 or self.step == steps:
                self.loss_log.append({"step": self.step, **{k: float(np.mean(v)) for k, v in window.items()}})
                bar.set_postfix({k: f"{np.mean(v):.4g}" for k, v in window.items()}, refresh=False)
                window = {}
            if checkpoint_dir is not None and (self.step % every == 0 or self.step == steps):
                self.seconds_trained += time.perf_counter() - t0
                t0 = time.perf_counter()
                tl.save_checkpoint(checkpoint_dir, self.step, self.modules, self.optimizers,
                                   self._checkpoint_state(data_fp, batch_size))
        bar.close()
        self.seconds_trained += time.perf_counter() - t0
        for module in self.modules.values():
            module.eval()
        self.training_summary = {
            "family": self.family,
            "steps": self.step,
            "steps_this_run": self.step - start,
            "resumed_from": resumed_from,
            "batch_size": batch_size,
            "n_images": len(data),
            "images_sha256": data_fp,
            "resolution": self.resolution,
            "channels": self.channels,
            "seconds": round(self.seconds_trained, 2),
            "final_losses": {k: v for k, v in (self.loss_log[-1] if self.loss_log else {}).items() if k != "step"},
            "loss_log": _thin(self.loss_log, 200),
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir is not None else None,
        }
        if checkpoint_dir is not None and grid > 0:
            self.save_grid(Path(checkpoint_dir) / f"samples-step-{self.step:08d}.png", n=grid)
        return self.training_summary

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed: int = 0, batch_size: int = 16, progress: bool = False) -> np.ndarray:
        """``n`` samples, N×H×W (grey) or N×H×W×3 float32 in [0, 1]; identical for identical seeds.

        Image ``i`` starts from noise seeded by ``(seed, i)``, so ``sample(10, s)[:5]`` starts from
        the same noise as ``sample(5, s)`` (see :meth:`sample_range`).
        """
        return self.sample_range(0, n, seed=seed, batch_size=batch_size, progress=progress)

    @torch.no_grad()
    def sample_range(self, start: int, count: int, seed: int = 0, batch_size: int = 16,
                     progress: bool = False) -> np.ndarray:
        """Samples ``start … start+count−1`` of the seed-``seed`` stream (batched by ``batch_size``).

        Batches begin at multiples of ``batch_size`` counted from ``start``; stochastic samplers
        (e.g. DDIM with eta > 0) draw their per-batch noise from ``(seed, batch start)``.
        """
        start, count, batch_size = int(start), int(count), max(1, int(batch_size))
        if start < 0 or count < 0:
            raise ValueError(f"start and count must be ≥ 0, got {start}, {count}")
        if count == 0:
            return self._tensor_to_images(torch.zeros((0, self.channels, self.resolution, self.resolution)))
        shape = self._noise_shape()
        modes = {name: m.training for name, m in self.modules.items()}
        for m in self.modules.values():
            m.eval()
        out = []
        try:
            bar = tqdm(total=count, desc=f"sample {self.family}", disable=not progress, leave=False, dynamic_ncols=True)
            for b0 in range(start, start + count, batch_size):
                idx = range(b0, min(start + count, b0 + batch_size))
                z = torch.stack([torch.randn(shape, generator=tl.torch_generator(seed, i, 0x5A3E)) for i in idx])
                x = self._sample_batch(z, tl.torch_generator(seed, b0, 0xB47C))
                out.append(self._tensor_to_images(x))
                bar.update(len(idx))
            bar.close()
        finally:
            for name, m in self.modules.items():
                m.train(modes[name])
        return np.concatenate(out, axis=0)

    def save_grid(self, path: str | Path, n: int = 16, seed: int = 0) -> Path:
        """Save a grid of ``n`` samples (seed ``seed``) as an 8-bit PNG."""
        from .folders import save_grid

        return save_grid(self.sample(n, seed=seed), path)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every module's tensors as ``<module>.<key>`` (what ``weights.safetensors`` holds)."""
        return tl.modules_state(self.modules)

    def load_state_dict(self, tensors: dict[str, torch.Tensor], where: str = "state dict") -> None:
        tl.load_modules_state(self.modules, tensors, where)

    def describe(self) -> dict[str, Any]:
        """The JSON written to ``config.json``."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "family": self.family,
            "resolution": self.resolution, "channels": self.channels, "seed": self.seed,
            "config": self.config, "step": self.step, "sampler": self.describe_sampler(),
            "training": self.training_summary,
        }

    def save(self, directory: str | Path, overwrite: bool = False, grid: int = 16) -> Path:
        """Write ``config.json`` + ``weights.safetensors`` (+ ``samples.png`` with ``grid`` samples)."""
        directory = Path(directory)
        if (directory / CONFIG_FILE).exists() and not overwrite:
            raise FileExistsError(f"{directory} already holds a model (config.json); pass overwrite=True to replace it")
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(self.describe(), indent=2, default=_json_default))
        if grid > 0:
            self.save_grid(directory / GRID_FILE, n=grid)
        return directory

    @classmethod
    def from_directory(cls, directory: str | Path, factory: Callable[..., "Generator"]) -> "Generator":
        directory = Path(directory)
        cfg_path = directory / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{directory}: not a generator directory (no {CONFIG_FILE})")
        try:
            info = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{cfg_path}: invalid JSON ({exc})") from exc
        if info.get("format") != FORMAT:
            raise ValueError(f"{cfg_path}: not a medforensics generator (format={info.get('format')!r})")
        if int(info.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{cfg_path}: format version {info['format_version']} is newer than this package's")
        gen = factory(info["family"], resolution=info["resolution"], channels=info["channels"], seed=info["seed"],
                      **info.get("config", {}))
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{directory}: {WEIGHTS_FILE} is missing")
        gen.load_state_dict(load_file(str(weights)), where=str(weights))
        gen.step = int(info.get("step", 0))
        gen.training_summary = info.get("training", {})
        for m in gen.modules.values():
            m.eval()
        return gen

    def n_parameters(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in m.parameters()) for name, m in self.modules.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resolution={self.resolution}, channels={self.channels}, step={self.step})"


def _thin(log: list[dict[str, float]], max_len: int) -> list[dict[str, float]]:
    if len(log) <= max_len:
        return list(log)
    idx = np.unique(np.linspace(0, len(log) - 1, max_len).round().astype(int))
    return [log[i] for i in idx]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def group_count(channels: int, preferred: int = 8) -> int:
    """Largest group count ≤ ``preferred`` that divides ``channels`` (for GroupNorm)."""
    for g in range(min(preferred, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1
