"""The saved preprocessing chain: intensity config stored with the model, one ``load`` for a file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medforensics.io import IntensityConfig, Preprocessing, load, load_frames, standardise, to_channels
from medforensics.io.preprocess import LoadedFrames

NARROW = IntensityConfig(ct_window=(-160.0, 240.0))


def test_dict_round_trip_keeps_intensity():
    pre = Preprocessing(size=64, channels=1, intensity=IntensityConfig(ct_window=(-100, 300), mri_method="zscore"))
    data = json.loads(json.dumps(pre.to_dict()))
    assert data["intensity"]["ct_window"] == [-100.0, 300.0]
    back = Preprocessing.from_dict(data)
    assert back == pre
    assert back.intensity.mri_method == "zscore"


def test_old_config_without_intensity_gets_defaults():
    old = {"size": 256, "fit": "center_crop", "channels": 3}
    pre = Preprocessing.from_dict(old)
    assert pre.intensity == IntensityConfig()
    assert pre == Preprocessing()


def test_intensity_dict_accepted_and_validated():
    assert Preprocessing(intensity={"ct_window": [0, 100]}).intensity.ct_window == (0.0, 100.0)
    with pytest.raises(ValueError, match="ct_window"):
        Preprocessing.from_dict({"intensity": {"ct_window": [100, 0]}})
    with pytest.raises(TypeError, match="intensity"):
        Preprocessing(intensity=42)


def test_load_is_read_then_standardise_then_channels(pyd: Path):
    path = pyd / "CT_small.dcm"
    pre = Preprocessing(size=32, channels=3, intensity=NARROW)
    out = pre.load(path)
    assert isinstance(out, LoadedFrames)
    arrays, images = out
    assert len(arrays) == len(images) == 1
    expected_img = load(path, intensity=NARROW)
    np.testing.assert_array_equal(images[0].pixels, expected_img.pixels)
    expected = to_channels(standardise(expected_img.pixels, 32, fit="center_crop"), 3)
    np.testing.assert_array_equal(arrays[0], expected)
    assert arrays[0].shape == (3, 32, 32) and arrays[0].dtype == np.float32
    # the intensity config really is used: the default window gives other pixels
    assert not np.array_equal(images[0].pixels, load(path).pixels)


def test_load_max_frames_and_frame(pyd: Path):
    path = pyd / "examples_ybr_color.dcm"  # 30-frame ultrasound
    pre = Preprocessing(size=16)
    arrays, images = pre.load(path, max_frames=3)
    ref = load_frames(path, max_frames=3)
    assert [im.meta.frame_index for im in images] == [im.meta.frame_index for im in ref]
    assert len(arrays) == 3
    one, = pre.read(path, frame=4)
    np.testing.assert_array_equal(one.pixels, load(path, frame=4).pixels)
    middle, = pre.read(path, max_frames=1)
    assert middle.meta.frame_index == load(path).meta.frame_index


def _tiny_cnn(pre: Preprocessing):
    from medforensics.detectors import create_detector

    return create_detector("forensic_cnn", seed=0, width=8, patch_size=32, patch_stride=32, progress=False,
                           preprocessing=pre)


def test_saved_hu_window_changes_scores_and_survives_save_load(pyd: Path, tmp_path: Path):
    path = pyd / "CT_small.dcm"
    default = _tiny_cnn(Preprocessing(size=64))
    narrow = _tiny_cnn(Preprocessing(size=64, intensity=NARROW))
    narrow.load_state_dict(default.state_dict())  # same weights: only the HU window differs

    def score(det) -> float:
        arrays, _ = det.preprocessing.load(path)
        return float(det.score(np.stack(arrays))[0])

    s_default, s_narrow = score(default), score(narrow)
    assert s_default != pytest.approx(s_narrow, abs=1e-6)

    narrow.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["preprocessing"]["intensity"]["ct_window"] == [-160.0, 240.0]
    from medforensics.detectors import load_detector

    again = load_detector(tmp_path / "model")
    assert again.preprocessing == narrow.preprocessing
    assert score(again) == s_narrow


def test_dataset_reads_through_the_preprocessing_chain(pyd: Path, tmp_path: Path):
    from medforensics.data.dataset import ImageDataset
    from medforensics.data.manifest import ManifestRow

    src = pyd / "CT_small.dcm"
    row = ManifestRow(path=str(src), label="real", modality="ct")
    pre = Preprocessing(size=32, intensity=NARROW)
    item = ImageDataset([row], pre, root=tmp_path)[0]
    arrays, _ = pre.load(src, max_frames=1, modality="ct")
    np.testing.assert_array_equal(item["image"].numpy(), arrays[0])
    with pytest.raises(ValueError, match="preprocessing.intensity"):
        ImageDataset([row], pre, intensity=IntensityConfig())


def test_shipped_model_configs_load_with_the_default_intensity():
    import medforensics.detectors as det_pkg

    configs = sorted(Path(det_pkg.__file__).parent.joinpath("weights").glob("*/config.json"))
    assert configs
    for cfg in configs:
        pre = Preprocessing.from_dict(json.loads(cfg.read_text())["preprocessing"])
        assert pre.intensity == IntensityConfig(), cfg
