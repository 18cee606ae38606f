"""``medforensics bank add / show / remove`` on a tiny DSKI model directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.detectors import create_detector, load_detector
from medforensics.io import load

runner = CliRunner()
TINY = {"backbone": {"tiny": {"vision": {"image_size": 32, "patch_size": 8}}}, "bottleneck": 8, "progress": False,
        "epochs": 1, "batch_size": 4, "bank_shots": 2}


@pytest.fixture()
def dski_dir(toy_sets_cli, tmp_path):
    train, val = toy_sets_cli
    det = create_detector("dski", seed=0, **TINY)
    det.fit(train, val)
    return det.save(tmp_path / "model", model_card="# card\n")


@pytest.fixture(scope="module")
def toy_sets_cli():
    from scipy.ndimage import gaussian_filter
    import torch

    rng = np.random.default_rng(0)

    def item(label):
        img = gaussian_filter(rng.random((64, 64)), 2 if label == 0 else 0.5).astype(np.float32)
        img = (img - img.min()) / (np.ptp(img) + 1e-8)
        return {"image": torch.from_numpy(np.repeat(img[None], 3, 0)), "label": torch.tensor(float(label))}

    return [item(i % 2) for i in range(8)], [item(i % 2) for i in range(6)]


def _out(res) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(res.output.split())


def _pngs(folder, n, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"s{i}.png"
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_bank_add_moves_predictions_toward_the_label(dski_dir, tmp_path):
    det = load_detector(dski_dir)
    n0 = det.bank_size
    paths = _pngs(tmp_path / "newgen", 1, seed=5)
    before = det.score([load(p) for p in paths])
    card_before = (dski_dir / "MODEL_CARD.md").read_text()
    res = runner.invoke(app, ["bank", "add", "--model", str(dski_dir), *map(str, paths), "--label", "fake",
                              "--generator", "genNew"])
    assert res.exit_code == 0, res.output
    assert f"bank size: {n0 + 1}" in _out(res)
    again = load_detector(dski_dir)
    assert again.bank_size == n0 + 1 and again.bank_generators[-1:] == ["genNew"]
    after = again.score([load(p) for p in paths])
    assert np.all(after > before)
    assert (dski_dir / "MODEL_CARD.md").read_text() == card_before
    cfg = json.loads((dski_dir / "config.json").read_text())
    assert cfg["bank"]["history"][-1]["generator"] == "genNew"
    # a folder of several, one unreadable file: the good ones are added, exit status 1
    more = _pngs(tmp_path / "more", 2, seed=6)
    (tmp_path / "more" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    res = runner.invoke(app, ["bank", "add", "-m", str(dski_dir), str(tmp_path / "more"), "--label", "real"])
    assert res.exit_code == 1 and f"bank size: {n0 + 3}" in _out(res) and "broken.png" in _out(res)
    res = runner.invoke(app, ["bank", "show", "--model", str(dski_dir)])
    assert res.exit_code == 0 and "genNew" in _out(res) and "unnamed-real" in _out(res)
    res = runner.invoke(app, ["bank", "remove", "--model", str(dski_dir), "--generator", "genNew"])
    assert res.exit_code == 0 and f"bank size: {n0 + 2}" in _out(res)
    assert "genNew" not in load_detector(dski_dir).bank_generators


def test_bank_add_refuses_bad_input(dski_dir, tmp_path):
    png = _pngs(tmp_path / "x", 1, seed=1)[0]
    res = runner.invoke(app, ["bank", "add", "--model", str(dski_dir), str(png), "--label", "maybe"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["bank", "add", "--model", str(tmp_path / "nope"), str(png), "--label", "fake"])
    assert res.exit_code == 2 and "not a model directory" in _out(res)
    other = create_detector("forensic_cnn", width=8, patch_size=64, patch_stride=64, progress=False)
    other.save(tmp_path / "cnn")
    res = runner.invoke(app, ["bank", "add", "--model", str(tmp_path / "cnn"), str(png), "--label", "fake"])
    assert res.exit_code == 2 and "only dski models" in _out(res)
    (tmp_path / "bad.png").write_bytes(b"junk")
    res = runner.invoke(app, ["bank", "add", "--model", str(dski_dir), str(tmp_path / "bad.png"), "--label", "fake"])
    assert res.exit_code == 2 and "unchanged" in _out(res)
    res = runner.invoke(app, ["bank", "remove", "--model", str(dski_dir), "--generator", "nobody"])
    assert res.exit_code == 2 and "no bank entries" in _out(res)
