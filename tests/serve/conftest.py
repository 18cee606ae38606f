"""Fixtures of the service tests: a tiny untrained model, an app on a temporary store, a token."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medforensics.detectors import load_detector


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir) -> Path:
    """A complete (untrained) tiny forensic_cnn model directory."""
    return tiny_model_dir


@pytest.fixture(scope="session")
def tiny_detector(tiny_model):
    return load_detector(tiny_model)


def _png_bytes(seed: int = 0, shape=(96, 128)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def png_bytes():
    """``png_bytes(seed=0, shape=(96, 128))`` → bytes of a random grey PNG."""
    return _png_bytes


@pytest.fixture(scope="session")
def corrupt_png() -> bytes:
    """A file with the PNG signature and a garbage body."""
    return b"\x89PNG\r\n\x1a\n" + b"definitely not a png body"


@dataclass
class Served:
    client: object
    app: object
    token: str
    settings: object
    root: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture()
def make_served(tmp_path, tiny_model, tiny_detector):
    """Factory: ``make_served(**setting_overrides)`` → :class:`Served` with a TestClient."""
    from fastapi.testclient import TestClient

    from medforensics.serve import ServeSettings, TokenStore
    from medforensics.serve.app import create_app
    from medforensics.serve.service import ScanService

    clients = []

    def make(**overrides) -> Served:
        tokens = TokenStore(tmp_path / "tokens.json")
        token = tokens.create(f"t{len(clients)}")
        settings = ServeSettings(**{"model": str(tiny_model), "db_url": f"sqlite:///{tmp_path / 'results.db'}",
                                    "tokens_file": tmp_path / "tokens.json", "heatmap_dir": tmp_path / "previews",
                                    **overrides})
        app = create_app(settings, service=ScanService(settings, detector=tiny_detector), tokens=tokens)
        client = TestClient(app)
        clients.append(client)
        return Served(client, app, token, settings, tmp_path)

    yield make
    for c in clients:
        c.close()
        c.app.state.service.close()  # the engine's thread and decode workers


@pytest.fixture()
def served(make_served) -> Served:
    return make_served()
