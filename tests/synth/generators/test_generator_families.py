"""Every generator family: shapes, ranges, seeds, save/load, errors — tiny models, 16 px, 2 steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from medforensics.synth.generators import (
    TINY_CONFIGS,
    create_generator,
    list_generator_families,
    load_generator,
)

FAMILIES = ["diffusion", "gan", "vae", "latent_diffusion"]


def _images(n: int = 6, size: int = 16, rgb: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.4 * np.sin(6 * xx + rng.random((n, 1, 1)) * 3) * np.cos(4 * yy)
    arr = np.clip(base + 0.05 * rng.standard_normal((n, size, size)), 0, 1).astype(np.float32)
    return np.repeat(arr[..., None], 3, axis=-1) * np.array([1.0, 0.8, 0.6], np.float32) if rgb else arr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny trained grey generator per family (2 steps), saved to a model directory."""
    out = {}
    for fam in FAMILIES:
        gen = create_generator(fam, resolution=16, channels=1, seed=0, **TINY_CONFIGS[fam])
        summary = gen.fit(_images(), steps=2, batch_size=4, progress=False)
        model_dir = gen.save(tmp_path_factory.mktemp(fam) / "model", grid=4)
        out[fam] = (gen, summary, model_dir)
    return out


def test_families_are_listed():
    assert list_generator_families() == sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_shape_range_dtype_and_seeds(trained, family):
    gen, summary, _ = trained[family]
    assert summary["steps"] == 2 and summary["n_images"] == 6 and summary["family"] == family
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    a = gen.sample(5, seed=3, batch_size=2)
    assert a.shape == (5, 16, 16) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, gen.sample(5, seed=3, batch_size=2))
    assert not np.array_equal(a, gen.sample(5, seed=4, batch_size=2))
    assert not np.array_equal(a[0], a[1])  # per-image noise
    np.testing.assert_array_equal(gen.sample(2, seed=3, batch_size=2), a[:2])  # a prefix of the same stream


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(trained, family):
    gen, _, model_dir = trained[family]
    info = json.loads((model_dir / "config.json").read_text())
    assert info["family"] == family and info["resolution"] == 16 and info["step"] == 2
    assert info["training"]["steps"] == 2
    assert set(load_file(str(model_dir / "weights.safetensors"))) == set(gen.state_dict())
    with Image.open(model_dir / "samples.png") as im:
        assert im.mode == "L" and im.size[0] > 16
    loaded = load_generator(model_dir)
    assert loaded.family == family and loaded.step == 2 and loaded.config == json.loads(json.dumps(gen.config))
    np.testing.assert_array_equal(loaded.sample(3, seed=1), gen.sample(3, seed=1))
    with pytest.raises(FileExistsError, match="overwrite"):
        gen.save(model_dir)


@pytest.mark.parametrize("family", ["diffusion", "gan"])
def test_rgb_generators(family):
    gen = create_generator(family, resolution=16, channels=3, seed=1, **TINY_CONFIGS[family])
    gen.fit(_images(rgb=True), steps=1, batch_size=3, progress=False)
    out = gen.sample(2, seed=0)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1


def test_gan_bce_loss_and_32px():
    gen = create_generator("gan", resolution=32, seed=0, loss="bce", width=8, z_dim=8)
    summary = gen.fit(_images(size=32), steps=2, batch_size=4, progress=False)
    assert set(summary["final_losses"]) == {"d_loss", "g_loss"}
    assert gen.config["n_critic"] == 1 and gen.config["betas"] == [0.5, 0.999]
    assert gen.sample(2).shape == (2, 32, 32)


def test_diffusion_options_sampling_steps_and_epsilon_target():
    gen = create_generator("diffusion", resolution=16,
                           **{**TINY_CONFIGS["diffusion"], "sampling_steps": 2, "prediction_type": "epsilon"})
    assert gen.describe_sampler() == "ddim-2" and gen.ddpm.config.prediction_type == "epsilon"
    gen.fit(_images(), steps=1, batch_size=2, progress=False)
    assert gen.sample(1).shape == (1, 16, 16)
    with pytest.raises(ValueError, match="prediction_type"):
        create_generator("diffusion", resolution=16, prediction_type="sample")


def test_bad_inputs_give_clear_errors():
    with pytest.raises(KeyError, match="available"):
        create_generator("flow")
    with pytest.raises(ValueError, match="unknown gan option"):
        create_generator("gan", resolution=16, widht=8)
    with pytest.raises(ValueError, match="power of two"):
        create_generator("vae", resolution=48)
    with pytest.raises(ValueError, match="loss must be"):
        create_generator("gan", resolution=16, loss="hinge")
    gen = create_generator("vae", resolution=16, **TINY_CONFIGS["vae"])
    with pytest.raises(ValueError, match="resolution is 16"):
        gen.fit(_images(size=32), steps=1, progress=False)
    with pytest.raises(ValueError, match="channels=1"):
        gen.fit(_images(rgb=True), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gen.fit(_images() * 255, steps=1, progress=False)
    with pytest.raises(FileNotFoundError, match="not a generator directory"):
        load_generator(".")
