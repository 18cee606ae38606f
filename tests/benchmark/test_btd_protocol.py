"""BTD protocol: patches, pixel AUC, Table 1 with bootstrap intervals, ablations, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medforensics.benchmark.btd_protocol import (
    PatchSet,
    attack_columns,
    crop_patch,
    load_patches,
    pixel_auc,
    run_btd_protocol,
    training_patches,
)
from medforensics.data import Manifest, ManifestRow

P = 16


class ToyDetector:
    """Raw score = mean of the central 8×8 (× ``gain``); map = the image itself; d scales nothing."""

    def __init__(self, gain: float = 1.0, threshold: float = 0.5):
        self.gain, self.threshold = gain, threshold
        self.seen_d: list[int] = []

    def raw_scores(self, x: torch.Tensor, d: int | None = None) -> np.ndarray:
        if d is not None:
            self.seen_d.append(d)
        return (self.gain * x[:, 0, 4:12, 4:12].mean(dim=(1, 2))).double().numpy()

    def probability(self, raw: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(np.asarray(raw) - 0.3) * 10))

    def error_map(self, x: torch.Tensor) -> np.ndarray:
        return x[:, 0].numpy()


def _toy_patches(n: int = 12) -> PatchSet:
    """Per modality and scenario n reals (dark) and n fakes per attack (a bright centre = its mask)."""
    rng = np.random.default_rng(0)
    images, masks, labels, rows = [], [], [], []
    plan = [("true_malign", "none"), ("fake_malign", "inject"), ("fake_malign", "inject-r4"), ("fake_malign", "inject-r8"),
            ("true_benign", "none"), ("fake_benign", "remove"), ("fake_benign", "repaint")]
    for modality in ("ct", "mri"):
        for attack_set, attack in plan:
            for i in range(n):
                img = rng.uniform(0.0, 0.3, (P, P)).astype(np.float32)
                mask = np.zeros((P, P), bool)
                fake = attack != "none"
                if fake:
                    mask[5:11, 5:11] = True
                    img[mask] += 0.6
                images.append(img[None])
                masks.append(mask)
                labels.append(int(fake))
                rows.append(ManifestRow(f"{modality}/{attack_set}/{attack}/{i}.png", "fake" if fake else "real", modality,
                                        source=f"src{i % 2}", extra={"attack_set": attack_set, "attack": attack}))
    return PatchSet(np.stack(images), np.stack(masks), np.asarray(labels), rows)


def test_crop_patch_centres_and_zero_pads():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    p = crop_patch(img, (5, 5), 4)
    np.testing.assert_array_equal(p, img[3:7, 3:7])
    corner = crop_patch(img, (0, 0), 4)
    assert corner.shape == (4, 4) and corner[0, 0] == 0 and corner[2, 2] == img[0, 0] and corner[:2].sum() == 0


def test_pixel_auc():
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:5, 2:5] = True
    assert pixel_auc(masks.astype(float), masks) == 1.0
    assert pixel_auc(1.0 - masks, masks) == 0.0
    assert 0.3 < pixel_auc(np.random.default_rng(0).random(masks.shape), masks) < 0.7
    assert np.isnan(pixel_auc(np.ones((1, 4, 4)), np.zeros((1, 4, 4), bool)))


def test_attack_columns_pair_each_attack_with_its_scenarios_reals():
    patches = _toy_patches(3)
    cols = attack_columns(patches)
    assert set(cols) == {f"{s}·{m}·{a}" for m in ("CT", "MRI") for s, a in
                         (("injection", "inject"), ("removal", "remove"), ("removal", "repaint"))}
    idx = cols["removal·MRI·repaint"]
    assert set(patches.column("attack_set")[idx]) == {"true_benign", "fake_benign"}
    assert set(patches.column("attack")[idx]) == {"none", "repaint"} and set(patches.column("modality")[idx]) == {"mri"}


def test_protocol_table_with_intervals_pixel_auc_and_ablations(tmp_path):
    patches = _toy_patches()
    btd, weak = ToyDetector(), ToyDetector(gain=-1.0)  # weak ranks everything backwards
    result = run_btd_protocol({"btd": btd, "weak": weak}, patches, n_boot=5, d_values=(1, 5), ablation_per_class=4,
                              train_seconds={"btd": 1.5}, show_progress=False)
    cell = result.table1["btd"]["injection·CT·inject"]
    assert cell["auc"]["mean"] == 1.0 and cell["eer"]["mean"] == 0.0 and cell["auc"]["n"] == 5
    assert cell["pixel_auc"] == 1.0 and cell["n_real"] == cell["n_fake"] == 12
    assert cell["acc"]["mean"] == 1.0  # probability at the detector's threshold
    assert result.table1["weak"]["removal·MRI·repaint"]["auc"]["mean"] == 0.0
    tables = result.tables()
    assert tables["table1_auc"].header[0] == "Detector" and "injection·CT·inject" in tables["table1_auc"].header
    assert "AUC 1.00 [1.00, 1.00]" in tables["table1_auc"].cells[0]
    assert "EER 0.00 [0.00, 0.00]" in tables["table1_eer"].cells[0]
    assert set(result.lesion_size["btd"]) == {"injection·CT·inject-r4", "injection·CT·inject-r8",
                                              "injection·MRI·inject-r4", "injection·MRI·inject-r8"}
    assert set(result.d_ablation) == {"d=1", "d=5"} and sorted(set(btd.seen_d)) == [1, 5] and not weak.seen_d
    assert result.d_ablation["d=5"]["removal·CT·remove"]["n_real"] == 4
    assert result.timing["btd"]["train_seconds"] == 1.5 and result.timing["btd"]["images_per_s"] > 0
    written = result.write(tmp_path)
    data = json.loads(written["json"].read_text())
    assert data["table1"]["btd"]["injection·MRI·inject"]["auc"]["mean"] == 1.0
    assert "Table 1" in written["markdown"].read_text() and written["d_ablation_png"].stat().st_size > 0
    assert written["table1"].read_text().startswith("detector,column") and "eer_lo" in written["table1"].read_text()
    assert not (tmp_path / "table1_eer.csv").exists()


def test_load_patches_and_training_patches(tmp_path):
    img = np.zeros((64, 64), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    img[(yy - 32) ** 2 + (xx - 32) ** 2 < 26**2] = 90
    img[(yy - 30) ** 2 + (xx - 36) ** 2 < 9] = 230
    Image.fromarray(img).save(tmp_path / "a.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[26:34, 32:40] = 255
    Image.fromarray(mask).save(tmp_path / "a.mask.png")
    extra = {"center_y": "30", "center_x": "36", "attack_set": "fake_malign", "attack": "inject", "mask": "a.mask.png"}
    man = Manifest([ManifestRow("a.png", "fake", "ct", "s", extra=extra),
                    ManifestRow("a.png", "real", "ct", "s", extra={**extra, "mask": ""}),
                    ManifestRow("missing.png", "real", "ct", "s", extra={**extra, "mask": ""})], tmp_path)
    patches = load_patches(man, 16, image_size=64, show_progress=False)
    assert patches.images.shape == (2, 1, 16, 16) and len(patches.errors) == 1
    assert patches.masks[0, 8, 8] and not patches.masks[1].any() and patches.images[0, 0, 8, 8] == pytest.approx(230 / 255)
    man.rows[1].split = "train"
    items = training_patches(man, "train", size=16, per_image=3, image_size=64, show_progress=False)
    assert len(items) == 3 and items[0]["image"].shape == (1, 16, 16) and all(int(i["label"]) == 0 for i in items)
