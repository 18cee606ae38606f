"""UniFD: frozen features + one linear layer; pretrained EfficientNet-Lite0 features learn the toy task."""

from __future__ import annotations

import numpy as np
import torch

from medforensics.detectors import create_detector, load_detector
from medforensics.eval.metrics import compute_metrics


def test_unifd_on_pretrained_efficientnet_features(toy_sets, tmp_path):
    train, val = toy_sets
    det = create_detector("unifd", seed=0, backbone="efficientnet-lite0", epochs=60, progress=False)
    before = {k: v.clone() for k, v in det.backbone.state_dict().items()}
    summary = det.fit(train[:32], val)
    assert summary["best_epoch"] >= 1 and det.calibration["method"] == "fpr_on_real_val"
    assert all(torch.equal(v, before[k]) for k, v in det.backbone.state_dict().items())  # backbone frozen
    batch = np.stack([it["image"].numpy() for it in val])
    y = np.array([int(it["label"]) for it in val])
    scores = det.score(batch)
    assert compute_metrics(y, scores)["auc"] > 0.8  # ImageNet features see the up-sampling trace
    # only the linear layer is stored for a pretrained backbone
    out = det.save(tmp_path / "m")
    assert set(det.state_dict()) == {"fc.weight", "fc.bias"}
    assert (out / "weights.safetensors").stat().st_size < 20_000
    np.testing.assert_array_equal(load_detector(out).score(batch), scores)
    # the heat-map is a class-activation map: the image logit is the mean of the per-location logits
    maps = det.anomaly_map(batch[:2])
    assert maps.shape == (2, 128, 128) and 0 <= maps.min() and maps.max() <= 1
    with torch.no_grad():
        _, local = det._features(torch.from_numpy(batch[:2]), local=True)
        per_loc = torch.einsum("ndhw,d->nhw", local, det.fc.weight[0]) + det.fc.bias[0]
    np.testing.assert_allclose(torch.sigmoid(per_loc.mean(dim=(1, 2))).numpy(), scores[:2], rtol=1e-5)


def test_unifd_random_backbone_is_saved_with_the_model(toy_sets, tmp_path):
    train, val = toy_sets
    det = create_detector("unifd", seed=0, backbone="tiny", epochs=3, progress=False)
    det.fit(train[:8], val[:4])
    assert any(k.startswith("backbone.") for k in det.state_dict())
    assert "RANDOMLY INITIALISED" in det.get_config()["config"]["backbone_weights"]
    again = load_detector(det.save(tmp_path / "m"))
    batch = np.stack([it["image"].numpy() for it in val[:4]])
    np.testing.assert_array_equal(again.score(batch), det.score(batch))
