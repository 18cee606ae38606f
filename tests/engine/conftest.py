from __future__ import annotations

import pytest

from medforensics.detectors import load_detector


@pytest.fixture(scope="module")
def det(tiny_model_dir):
    return load_detector(tiny_model_dir)
