"""Train (or load) the models that a list of transform specs needs and build the transforms."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...data.manifest import Manifest
from .models import AlignedAEGenerator, create_ae, load_ae, random_crops
from .transforms import AlignError, Transform, ae_transform, ddpm_transform, parse_transform, read_real, to_float

DDPM_DIR = "ddpm"
#: the factory's CPU diffusion preset at 64 px, one channel
DDPM_CONFIG: dict[str, Any] = {"base_width": 16, "attention": False}


def load_real_images(reals: Manifest, progress: bool = False) -> tuple[list[np.ndarray], list[str]]:
    """Float [0, 1] images (native size and bit depth) of the rows; unreadable ones come back as errors."""
    images, errors = [], []
    for path in reals.paths():
        try:
            images.append(to_float(read_real(path)[0]))
        except AlignError as exc:
            errors.append(str(exc))
    return images, errors


def train_ae(name: str, crops: np.ndarray, steps: int, batch_size: int = 16, out: Path | None = None,
             progress: bool = False, **overrides: Any) -> AlignedAEGenerator:
    """Train registry member ``name`` on single-channel crops (N×S×S); save to ``out`` when given.

    Checkpoints go to ``out/checkpoints`` so an interrupted training resumes.
    """
    gen = create_ae(name, resolution=int(crops.shape[-1]), **overrides)
    ckpt = out / "checkpoints" if out is not None else None
    gen.fit(crops, steps=steps, batch_size=batch_size, checkpoint_dir=ckpt, progress=progress, grid=0,
            checkpoint_every=max(50, steps // 4))
    if out is not None:
        gen.training_summary["registry_name"] = name
        gen.save(out, overwrite=True, grid=0)
    return gen


def train_ddpm(crops: np.ndarray, steps: int, batch_size: int = 16, out: Path | None = None, seed: int = 0,
               progress: bool = False, **config: Any):
    """A factory ``diffusion`` generator (CPU preset, one channel) trained on the crops."""
    from ..generators import create_generator

    gen = create_generator("diffusion", resolution=int(crops.shape[-1]), channels=1, seed=seed,
                           **{**DDPM_CONFIG, **config})
    ckpt = out / "checkpoints" if out is not None else None
    gen.fit(crops, steps=steps, batch_size=batch_size, checkpoint_dir=ckpt, progress=progress, grid=0,
            checkpoint_every=max(50, steps // 4))
    if out is not None:
        gen.save(out, overwrite=True, grid=0)
    return gen


def build_transforms(
    specs: Sequence[str],
    models_dir: str | Path,
    train_images: Callable[[], list[np.ndarray]],
    train_steps: int = 1000,
    batch_size: int = 16,
    crop: int = 64,
    n_crops: int = 4096,
    ddpm_t: int = 10,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> list[Transform]:
    """One :class:`Transform` per spec; models found in ``models_dir/<name>`` are loaded, others trained.

    ``train_images`` is called (once) only when something must be trained; training crops are
    ``n_crops`` random ``crop``-px crops at 8-px-aligned offsets (seed ``seed``).
    """
    from ..generators import load_generator

    parsed = [(s, *parse_transform(s)) for s in specs]
    models_dir = Path(models_dir)
    crops: np.ndarray | None = None

    def get_crops() -> np.ndarray:
        nonlocal crops
        if crops is None:
            crops = random_crops(train_images(), n_crops, crop, seed=seed)
        return crops

    out: list[Transform] = []
    ddpm = None
    for spec, kind, args in parsed:
        if kind == "ae":
            d = models_dir / args["name"]
            if (d / "config.json").is_file():
                gen = load_ae(d)
                log(f"loaded {args['name']} ({gen.step} steps) from {d}")
            else:
                log(f"training {args['name']} for {train_steps} steps …")
                gen = train_ae(args["name"], get_crops(), train_steps, batch_size, d, progress=progress)
                log(f"  {args['name']}: final {_final(gen)} → {d}")
            out.append(ae_transform(gen, args["name"]))
        else:
            if ddpm is None:
                d = models_dir / DDPM_DIR
                if (d / "config.json").is_file():
                    ddpm = load_generator(d)
                    log(f"loaded the diffusion model ({ddpm.step} steps) from {d}")
                else:
                    log(f"training the diffusion model for {train_steps} steps …")
                    ddpm = train_ddpm(get_crops(), train_steps, batch_size, d, seed=seed, progress=progress)
                    log(f"  ddpm: final {_final(ddpm)} → {d}")
            out.append(ddpm_transform(ddpm, steps=args["steps"], t=ddpm_t))
    return out


def _final(gen) -> str:
    losses = gen.training_summary.get("final_losses", {})
    return ", ".join(f"{k} {v:.4g}" for k, v in losses.items())


def warn_errors(errors: list[str], what: str) -> None:
    if errors:
        shown = "; ".join(errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
        warnings.warn(f"{what}: skipped {len(errors)}: {shown}", stacklevel=2)
