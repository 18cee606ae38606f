from __future__ import annotations

import pytest

from medforensics.detectors import create_detector, load_detector


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained tiny forensic_cnn model directory, τ = 0.5 (fast to load and run)."""
    det = create_detector("forensic_cnn", seed=0, width=8, patch_size=64, patch_stride=64, progress=False)
    det.set_threshold(0.5, method="test")
    return det.save(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def det(tiny_model_dir):
    return load_detector(tiny_model_dir)
