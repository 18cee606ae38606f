"""Every registered detector passes the same contract: fit on a handful, score shape/range, save→load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medforensics.detectors import Detector, create_detector, list_detectors, load_detector

#: tiny configs per detector so the contract runs in seconds: tests/detectors/tiny/<name>.json,
#: one file per detector (constructor keyword arguments; "preprocessing" may be a dict)
TINY_DIR = Path(__file__).parent / "tiny"


def tiny_config(name: str) -> dict:
    path = TINY_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("name", list_detectors())
def test_detector_contract(name, toy_sets, tmp_path):
    train, val = toy_sets
    det = create_detector(name, seed=0, **tiny_config(name))
    assert isinstance(det, Detector) and det.name == name
    summary = det.fit(train[:16], val[:8])
    assert isinstance(summary, dict)
    batch = np.stack([it["image"].numpy() for it in val[:6]])
    scores = det.score(batch)
    assert scores.shape == (6,)
    assert np.all((scores >= 0) & (scores <= 1))
    maps = det.anomaly_map(batch)
    if maps is not None:
        assert maps.shape == (6, 128, 128)
        assert np.all((maps >= 0) & (maps <= 1))
    det.save(tmp_path / "model")
    again = load_detector(tmp_path / "model")
    assert type(again) is type(det)
    np.testing.assert_array_equal(again.score(batch), scores)
    assert again.threshold == det.threshold
    assert again.preprocessing == det.preprocessing


def test_unknown_detector_name_lists_available():
    with pytest.raises(KeyError, match="forensic_cnn"):
        create_detector("no-such-detector")


def test_load_rejects_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"detector": "forensic_cnn"}')
    with pytest.raises(FileNotFoundError, match="weights.safetensors"):
        load_detector(tmp_path)
