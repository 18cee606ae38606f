"""The generator factory: train DDPM / latent DDPM / DCGAN(-WGAN-GP) / VAE models on real images and sample fakes.

```python
gen = create_generator("diffusion", resolution=64, channels=1, seed=0, base_width=32)
images = load_training_images(manifest, 64, 1, modality="ct", split="train")
gen.fit(images, steps=2000, batch_size=16, checkpoint_dir="run/ckpt")   # resumable
gen.save("run/model"); gen = load_generator("run/model")
fakes = sample_to_folder(gen, 1000, "out/", modality="ct", generator_name="ddpm-ct", size=256)
```
See ``docs/generators.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import CONFIG_FILE, GRID_FILE, WEIGHTS_FILE, Generator, TrainingData
from .diffusion import DiffusionGenerator, LatentDiffusionGenerator
from .folders import HISTORY_COLUMNS, import_fakes, load_training_images, make_grid, sample_to_folder, save_grid
from .gan import GANGenerator
from .vae import ConvVAE, VAEGenerator

FAMILIES: dict[str, type[Generator]] = {
    "diffusion": DiffusionGenerator,
    "gan": GANGenerator,
    "latent_diffusion": LatentDiffusionGenerator,
    "vae": VAEGenerator,
}

#: Tiny configurations (a few thousand parameters) for tests and toy runs at 16–32 px.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "diffusion": {"base_width": 8, "channel_mult": [1, 2], "attention": False, "num_train_timesteps": 100,
                  "sampling_steps": 4},
    "latent_diffusion": {"base_width": 8, "channel_mult": [1, 2], "attention": False, "num_train_timesteps": 100,
                         "sampling_steps": 4, "vae_steps": 1, "vae_width": 8, "vae_downsample": 1,
                         "latent_channels": 2},
    "gan": {"width": 8, "z_dim": 16, "n_critic": 2},
    "vae": {"width": 8, "latent_dim": 8},
}

#: CPU-friendly configurations at 64 px (used by ``bench/timing/generators_timing.py``): a few tenths of a
#: second to a second per step of 16 images on one CPU thread.
CPU_CONFIGS: dict[str, dict[str, Any]] = {
    "diffusion": {"base_width": 16},
    "latent_diffusion": {"base_width": 32, "vae_width": 16, "vae_steps": 500},
    "gan": {"width": 32},
    "vae": {"width": 16},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"tiny": TINY_CONFIGS, "cpu": CPU_CONFIGS}


def list_generator_families() -> list[str]:
    """Names accepted by :func:`create_generator`."""
    return sorted(FAMILIES)


def create_generator(family: str, resolution: int = 64, channels: int = 1, seed: int = 0, **config: Any) -> Generator:
    """A new, untrained generator of ``family`` (``diffusion``, ``gan``, ``vae``, ``latent_diffusion``).

    ``config`` holds family options (see each class's ``defaults``); unknown options raise
    ``ValueError``. Weights are initialised from ``seed``.
    """
    key = family.strip().lower().replace("-", "_")
    if key not in FAMILIES:
        raise KeyError(f"unknown generator family {family!r}; available: {', '.join(list_generator_families())}")
    return FAMILIES[key](resolution=resolution, channels=channels, seed=seed, **config)


def load_generator(directory: str | Path) -> Generator:
    """Load a model directory written by :meth:`Generator.save` (safetensors + JSON, nothing unpickled)."""
    return Generator.from_directory(directory, create_generator)


__all__ = [
    "CONFIG_FILE",
    "CPU_CONFIGS",
    "FAMILIES",
    "GRID_FILE",
    "HISTORY_COLUMNS",
    "PRESETS",
    "TINY_CONFIGS",
    "WEIGHTS_FILE",
    "ConvVAE",
    "DiffusionGenerator",
    "GANGenerator",
    "Generator",
    "LatentDiffusionGenerator",
    "TrainingData",
    "VAEGenerator",
    "create_generator",
    "import_fakes",
    "list_generator_families",
    "load_generator",
    "load_training_images",
    "make_grid",
    "sample_to_folder",
    "save_grid",
]
