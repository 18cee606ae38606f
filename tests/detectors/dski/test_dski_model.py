"""DSKI on a tiny random CLIP: adapter placement, streams, constraint, frozen backbone, λ, text adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from medforensics.detectors import create_detector
from medforensics.detectors.dski import CDFA

TINY = {"backbone": {"tiny": {"vision": {"image_size": 32, "patch_size": 8}}}, "bottleneck": 8, "progress": False,
        "epochs": 1, "batch_size": 4, "bank_shots": 2}


def make(**over):
    return create_detector("dski", seed=0, **{**TINY, **over})


def _enlarge_adapters(det, std: float = 0.5) -> None:
    """Make adapter outputs large so comparisons are clear-cut (they start near zero)."""
    g = torch.Generator().manual_seed(1)
    for a in det.model.adapters.values():
        with torch.no_grad():
            a.up.weight.copy_(torch.randn(a.up.weight.shape, generator=g) * std)


def _train_steps(det, n: int = 3, lr: float = 0.5):
    """A few SGD steps of the detector's own loss on random images (big lr: effects are visible)."""
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0])
    params = [p for p in det.model.trainable().parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    det.model.train()
    for _ in range(n):
        logits = det.model(x)
        loss = F.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        det.model.constrain_()
    det.model.eval()


def test_adapters_sit_beside_the_mlp_of_the_chosen_blocks():
    det = make()
    layers = det.model.backbone.layers
    assert len(layers) == 4 and det.blocks == [0, 2, 3]  # 7, 15, 23 of 24 scaled to 4 blocks
    assert set(det.model.adapters) == {"0", "2", "3"}
    assert make(blocks=[1]).blocks == [1]
    with pytest.raises(ValueError, match="out of range"):
        make(blocks=[4])
    _enlarge_adapters(det)
    x = torch.randn(2, 17, 32)  # class token + 4×4 patch tokens, width 32
    adapter = det.model.adapters["2"]
    with torch.no_grad():
        hooked = layers[2].mlp(x)
        plain = layers[2].mlp.fc2(layers[2].mlp.activation_fn(layers[2].mlp.fc1(x)))
        extra = adapter.forward_tokens(x)
        assert extra.shape == (2, 17, 32)
        torch.testing.assert_close(hooked, plain + extra)  # added to the MLP output
        mlp1 = layers[1].mlp
        assert torch.equal(mlp1(x), mlp1.fc2(mlp1.activation_fn(mlp1.fc1(x))))  # block 1 has no adapter
        # the class token gets the grid mean of the fused fine-trace features
        z = adapter.down(x[:, 1:]).transpose(1, 2).reshape(2, 8, 4, 4)
        f = adapter.fuse(z)
        torch.testing.assert_close(extra[:, 0], adapter.up(f.mean(dim=(2, 3))))
        torch.testing.assert_close(extra[:, 1:], adapter.up(f.flatten(2).transpose(1, 2)))
    with pytest.raises(ValueError, match="square grid"):
        adapter.forward_tokens(torch.randn(1, 16, 32))


def test_stream_fusion_and_ablation_switches_change_the_computation():
    a = CDFA(16, 16, bottleneck=6, streams="both")
    z = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        f_noise = a.noise_conv(F.relu(a.noise_bayar(z)))
        f_spatial = a.spatial_proj(a.inception(F.relu(z)))
        a.lam.fill_(0.3)
        torch.testing.assert_close(a.fuse(z), f_noise + 0.3 * f_spatial)  # f = f_noise + λ·f_spatial
    noise, spatial = CDFA(16, 16, 6, streams="noise"), CDFA(16, 16, 6, streams="spatial")
    assert hasattr(noise, "noise_bayar") and not hasattr(noise, "inception") and not hasattr(noise, "lam")
    assert hasattr(spatial, "inception") and not hasattr(spatial, "noise_bayar")
    with pytest.raises(ValueError, match="streams"):
        CDFA(16, 16, 6, streams="frequency")

    x = torch.rand(3, 3, 32, 32)
    outs = {}
    for name, over in {"both": {}, "noise": {"streams": "noise"}, "spatial": {"streams": "spatial"},
                       "no_cdfa": {"use_cdfa": False}}.items():
        det = make(**over)
        _enlarge_adapters(det)
        with torch.no_grad():
            outs[name] = det.model.features(x)[0]
    for a_, b_ in [("both", "noise"), ("both", "spatial"), ("noise", "spatial"), ("both", "no_cdfa")]:
        assert not torch.allclose(outs[a_], outs[b_], atol=1e-4), (a_, b_)
    # without CDFA the features are exactly the frozen backbone's
    bare = make(use_cdfa=False)
    assert not bare.model.adapters and not bare.model._hooks
    with torch.no_grad():
        ref = F.normalize(bare.model.backbone(x), dim=-1)
    torch.testing.assert_close(outs["no_cdfa"], ref)


def test_training_step_keeps_backbone_frozen_learns_lambda_and_keeps_bayar_constraint():
    det = make()
    backbone_before = {k: v.clone() for k, v in det.model.backbone.state_dict().items()}
    lam_before = [a.lam.item() for a in det.model.adapters.values()]
    trainable_before = {k: v.clone() for k, v in det.model.trainable().state_dict().items()}
    _train_steps(det)
    assert all(p.grad is None for p in det.model.backbone.parameters())
    assert all(not p.requires_grad for p in det.model.backbone.parameters())
    for k, v in det.model.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k
    changed = [k for k, v in det.model.trainable().state_dict().items() if not torch.equal(v, trainable_before[k])]
    assert any(k.startswith("adapters.") for k in changed) and any(k.startswith("classifier.") for k in changed)
    assert [a.lam.item() for a in det.model.adapters.values()] != lam_before  # λ is learnt
    for a in det.model.adapters.values():
        w = a.noise_bayar.weight
        c = w.shape[-1] // 2
        torch.testing.assert_close(w[..., c, c], torch.full_like(w[..., c, c], -1.0))
        off = w.sum(dim=(-2, -1)) - w[..., c, c]
        torch.testing.assert_close(off, torch.ones_like(off), atol=1e-5, rtol=0)


def test_fit_trains_only_adapters(toy_sets):
    train, val = toy_sets
    det = make(bank_shots=3)
    before = {k: v.clone() for k, v in det.model.backbone.state_dict().items()}
    summary = det.fit(train[:8], val[:6])
    assert summary["trainable_parameters"] == sum(p.numel() for p in det.model.trainable().parameters())
    assert summary["bank_size"] == 6 and det.bank_generators.count("train:real") == 3
    assert det.calibration["method"] == "fpr_on_real_val"
    assert all(torch.equal(v, before[k]) for k, v in det.model.backbone.state_dict().items())


def test_text_adapter_logits_are_scaled_cosines():
    det = make()
    m = det.model
    with torch.no_grad():
        m.classifier.fc2.weight.normal_(0, 0.3)  # a non-trivial adapter
        t = m.backbone.text_features(["A real medical image", "A fake medical image"])
        torch.testing.assert_close(m.text_base, t)
        w_adapted = t + m.classifier.fc2(F.relu(m.classifier.fc1(t)))  # W′ = t + L₂(ReLU(L₁(t)))
        x = torch.rand(2, 3, 32, 32)
        f = F.normalize(m.backbone(x), dim=-1)
        expected = m.logit_scale * f @ F.normalize(w_adapted, dim=-1).T
        torch.testing.assert_close(m(x), expected)
        assert m.logit_scale == pytest.approx(m.backbone.clip.logit_scale.exp().item())
        # score without a bank = softmax of those logits
        det.config["use_mfrm"] = False
        np.testing.assert_allclose(det.score(x), torch.softmax(expected, 1)[:, 1].numpy(), rtol=1e-5)
    other = make(prompts=["An authentic scan", "A synthetic scan"])
    assert not torch.allclose(other.model.text_base, m.text_base)
    with pytest.raises(ValueError, match="two prompts"):
        make(prompts=["only one"])


def test_efficientnet_variant_has_adapters_beside_blocks_and_a_linear_head(toy_sets):
    eff = {"efficientnet": "efficientnet-lite0", "pretrained": False, "width_coefficient": 0.25,
           "depth_coefficient": 0.25}
    det = create_detector("dski", seed=0, backbone=eff, bottleneck=8, epochs=1, batch_size=4, bank_shots=2,
                          progress=False)
    blocks = det.model.backbone.blocks
    assert len(blocks) == 7 and det.blocks == [1, 4, 6]  # 7, 15, 23 of 24 scaled to 7 blocks
    assert det.model.text_base is None and det.model.classifier.weight.shape == (2, 1280)
    torch.testing.assert_close(det.model.class_weights(), F.normalize(det.model.classifier.weight, dim=-1))
    point = det.model.backbone.hook_points()[1]
    block = blocks[1]
    x = torch.rand(2, point.in_dim, 16, 16)
    _enlarge_adapters(det)
    with torch.no_grad():
        handle_free = block.forward(x)  # the block without its forward hook
        out = block(x)
        extra = det.model.adapters["1"].forward_map(x, out.shape[-2:])
    assert out.shape[-2:] == (8, 8) and out.shape[1] == point.out_dim  # a strided block: adapter pooled to 8×8
    assert extra.shape == out.shape
    torch.testing.assert_close(out, handle_free + extra)
    train, val = toy_sets
    # the head starts at the class prototypes (normalised class means of f′)
    det.init_head_from_prototypes(train[:8], shots=4)
    f = det.bank_features(torch.stack([it["image"] for it in train[:8]]))
    y = torch.tensor([int(it["label"]) for it in train[:8]])
    protos = torch.stack([F.normalize(f[y == k].mean(0), dim=0) for k in (0, 1)])
    torch.testing.assert_close(det.model.classifier.weight, protos)
    det.fit(train[:8], val[:4])
    maps = det.anomaly_map(torch.stack([it["image"] for it in val[:2]]))
    assert maps.shape == (2, 128, 128) and maps.min() >= 0 and maps.max() <= 1
