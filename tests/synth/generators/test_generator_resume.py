"""Resumable training: 4 steps == 2 steps + resume to 4, checkpoints are safetensors + JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medforensics.synth.generators import TINY_CONFIGS, create_generator
from medforensics.synth.generators.train_loop import checkpoint_steps, flatten_state, unflatten_state

IMAGES = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)


def _new(family: str, **extra):
    return create_generator(family, resolution=16, channels=1, seed=0, **{**TINY_CONFIGS[family], **extra})


@pytest.mark.parametrize("family", ["diffusion", "gan", "vae", "latent_diffusion"])
def test_resume_gives_identical_weights(tmp_path, family):
    full = _new(family)
    full.fit(IMAGES, steps=4, batch_size=4, progress=False)
    part = _new(family)
    part.fit(IMAGES, steps=2, batch_size=4, checkpoint_dir=tmp_path, progress=False, grid=0)
    assert checkpoint_steps(tmp_path)[-1] == 2
    resumed = _new(family)
    summary = resumed.fit(IMAGES, steps=4, batch_size=4, checkpoint_dir=tmp_path, progress=False, grid=2)
    assert summary["resumed_from"] == 2 and summary["steps_this_run"] == 2 and resumed.step == 4
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    np.testing.assert_array_equal(full.sample(2, seed=5), resumed.sample(2, seed=5))
    assert (tmp_path / "samples-step-00000004.png").is_file()
    # the last checkpoint restores the optimiser too: a fresh generator resumed there has nothing left to do
    again = _new(family)
    assert again.fit(IMAGES, steps=4, batch_size=4, checkpoint_dir=tmp_path, progress=False, grid=0)["steps_this_run"] == 0


def test_checkpoint_layout_pruning_and_config_check(tmp_path):
    gen = _new("gan")
    gen.fit(IMAGES, steps=5, batch_size=4, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False, grid=0)
    assert checkpoint_steps(tmp_path) == [4, 5]  # newest two kept
    last = tmp_path / "step-00000005"
    assert sorted(p.name for p in last.iterdir()) == [
        "models.safetensors", "optimizers.json", "optimizers.safetensors", "state.json"]
    state = json.loads((last / "state.json").read_text())
    assert state["step"] == 5 and state["family"] == "gan"
    with pytest.raises(ValueError, match="batch_size"):
        _new("gan").fit(IMAGES, steps=6, batch_size=2, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="config"):
        _new("gan", gp_weight=5.0).fit(IMAGES, steps=6, batch_size=4, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="earlier run"):
        _new("gan").fit(IMAGES, steps=1, batch_size=4, checkpoint_dir=tmp_path, resume=False, progress=False)
    with pytest.raises(ValueError, match="already at step 5"):
        _new("gan").fit(IMAGES, steps=3, batch_size=4, checkpoint_dir=tmp_path, progress=False)


def test_optimiser_state_flattens_without_pickle():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=0.01, betas=(0.5, 0.9))
    p.sum().backward()
    opt.step()
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.loads(json.dumps(flatten_state(opt.state_dict(), "opt", tensors)))
    restored = unflatten_state(skeleton, tensors)
    original = opt.state_dict()
    assert restored["param_groups"][0]["betas"] == (0.5, 0.9)
    assert list(restored["state"]) == [0]
    for k, v in original["state"][0].items():
        assert torch.equal(restored["state"][0][k], v)
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.randn(3))], lr=0.5)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["lr"] == 0.01
