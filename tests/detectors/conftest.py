"""Tiny synthetic forensic task shared by detector tests.

Real: smooth random textures. Fake: the same kind of texture generated at half resolution and
upscaled with nearest neighbour (a crude generator's up-sampling trace), which a residual-based
detector must pick up. Tampered: a real texture with a blocky square pasted in (mask given).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    base = gaussian_filter(rng.random((size, size)), 2.0)
    base = (base - base.min()) / (np.ptp(base) + 1e-8)
    return np.clip(0.2 + 0.6 * base + rng.normal(0, 0.02, (size, size)), 0, 1).astype(np.float32)


def make_item(rng: np.random.Generator, label: int, size: int = 128, tampered: bool = False) -> dict:
    mask = np.zeros((size, size), np.float32)
    if label == 0:
        img = _texture(rng, size)
    elif not tampered:
        small = _texture(rng, size // 2)
        img = np.kron(small, np.ones((2, 2), np.float32))
        mask[:] = 1
    else:
        img = _texture(rng, size)
        patch = np.kron(_texture(rng, 24), np.ones((2, 2), np.float32))
        y, x = rng.integers(0, size - 48, 2)
        img[y : y + 48, x : x + 48] = patch
        mask[y : y + 48, x : x + 48] = 1
    image = torch.from_numpy(np.repeat(img[None], 3, axis=0))
    return {"image": image, "label": torch.tensor(float(label)), "mask": torch.from_numpy(mask)}


@pytest.fixture(scope="session")
def toy_sets() -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(0)
    train = [make_item(rng, i % 2, tampered=(i % 4 == 3)) for i in range(48)]
    val = [make_item(rng, i % 2) for i in range(16)]
    return train, val


@pytest.fixture(scope="session")
def make_toy_item():
    return make_item
