"""Inference runtimes chosen by measurement: parity of each runtime with eager PyTorch, the selection
rule (fastest that passes; eager when a runtime is missing, fails or breaks parity), and the record
in a model directory applied at load time."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

from medforensics.detectors import create_detector, load_detector
from medforensics.detectors.layers import SRMFilters
from medforensics.detectors.runtime import (
    ONNX_FILE,
    Built,
    Runner,
    RuntimeUnavailable,
    Tolerance,
    build_runner,
    onnxruntime_available,
    optimise_model_dir,
    parity,
    select_runtime,
)

needs_ort = pytest.mark.skipif(
    not onnxruntime_available() and os.environ.get("CI", "").lower() != "true",
    reason="onnx/onnxruntime not installed (pip install 'medforensics[runtime]'); required under CI=true",
)


def _det():
    torch.manual_seed(0)
    det = create_detector("forensic_cnn", width=8, bayar_channels=3, preprocessing={"size": 64, "channels": 3})
    with torch.no_grad():
        for m in det.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return det


def _images(n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size),
                                           mode="bilinear", align_corners=False)
    return (0.8 * base + 0.2 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_parity_measures_logits_and_probabilities():
    p = parity(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.5]))
    assert p["max_abs_logit"] == pytest.approx(0.5)
    assert p["max_abs_prob"] == pytest.approx(float(torch.sigmoid(torch.tensor(1.5)) - torch.sigmoid(torch.tensor(1.0))))
    assert Tolerance.of(0.02) == Tolerance(float("inf"), 0.02) and Tolerance.of((0.1, 0.2)) == Tolerance(0.1, 0.2)


def test_eager_fused_matches_eager():
    det = _det()
    x = _images(4)
    module = det.grid_module()
    built = build_runner("eager_fused", module, x, leaf_modules=(SRMFilters,))
    with torch.no_grad():
        ref = module(x)
    p = parity(ref, built.runner(x))
    assert p["max_abs_logit"] < 1e-4
    # the BN layers are gone from the fused copy; the original module still has them
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


@needs_ort
def test_onnx_fp32_matches_eager_on_other_sizes_and_batches():
    det = _det()
    module = det.grid_module()
    built = build_runner("onnx_fp32", module, _images(2))
    assert built.onnx and built.runner.name == "onnx_fp32"
    for x in (_images(1, seed=1), _images(5, seed=2), _images(2, size=128, seed=3)):  # dynamic N, H, W
        with torch.no_grad():
            p = parity(module(x), built.runner(x))
        assert p["max_abs_logit"] < 1e-4, p


@needs_ort
def test_onnx_int8_is_calibrated_and_close_but_not_exact():
    det = _det()
    module = det.grid_module()
    calib = [_images(4, seed=s) for s in range(3)]
    built = build_runner("onnx_int8", module, calib[0], calib)
    x = _images(4, seed=9)
    with torch.no_grad():
        ref = module(x)
    p = parity(ref, built.runner(x))
    assert 0 < p["max_abs_logit"]  # quantised: not bit-identical ...
    assert np.corrcoef(ref.flatten().numpy(), built.runner(x).flatten().numpy())[0, 1] > 0.9  # ... but the same net
    with pytest.raises(RuntimeUnavailable, match="calibration images"):
        build_runner("onnx_int8", module, x, [])


def test_select_keeps_the_fastest_passing_and_falls_back(monkeypatch, caplog):
    import medforensics.detectors.runtime as rt

    module = torch.nn.Linear(3, 1)
    x = torch.rand(4, 3)
    real_build = rt.build_runner

    def fake_build(name, module, example, calibration_batches=None, threads=None, leaf_modules=()):
        if name == "onnx_fp32":
            raise RuntimeUnavailable("onnxruntime missing (test)")
        if name == "onnx_int8":  # fast but wrong
            return Built(Runner(lambda t: module(t) + 1.0, name))
        if name == "eager_fused":
            return Built(Runner(lambda t: module(t), name))
        return real_build(name, module, example, calibration_batches, threads, leaf_modules)

    speeds = {"eager": 10.0, "eager_fused": 20.0, "onnx_int8": 100.0}
    monkeypatch.setattr(rt, "build_runner", fake_build)
    monkeypatch.setattr(rt, "images_per_second", lambda runner, batch, **kw: speeds[runner.name])
    with caplog.at_level(logging.WARNING, logger="medforensics.detectors.runtime"):
        sel = select_runtime(module, x, [x], Tolerance(0.01, 0.01))
    assert sel.name == "eager_fused"
    rows = {r["runtime"]: r for r in sel.report}
    assert rows["onnx_fp32"]["ok"] is False and "missing" in rows["onnx_fp32"]["reason"]
    assert rows["onnx_int8"]["ok"] is False and "parity" in rows["onnx_int8"]["reason"]
    assert "runtime onnx_fp32 not used: onnxruntime missing" in caplog.text
    speeds["eager_fused"] = 5.0
    assert select_runtime(module, x, [x], Tolerance(0.01, 0.01)).name == "eager"


@needs_ort
def test_optimise_records_the_runtime_and_load_applies_it(tmp_path, caplog):
    det = _det()
    det.save(tmp_path / "m")
    x = _images(8, seed=4)
    eager_scores = det.score(x)
    record = optimise_model_dir(tmp_path / "m", x, candidates=("eager", "onnx_fp32"), repeats=1)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["runtime"]["name"] == record["name"] in ("eager", "onnx_fp32")
    assert {r["runtime"] for r in cfg["runtime"]["measured"]} == {"eager", "onnx_fp32"}
    # force the ONNX runtime (the measured choice depends on this machine's load)
    from medforensics.detectors.runtime import save_runtime, select_runtime as sel_fn

    spec = det.runtime_spec(x)
    sel = sel_fn(spec["module"], spec["example"], spec["calibration"], spec["tolerance"], ("onnx_fp32",),
                 repeats=1, leaf_modules=spec["leaf_modules"])
    sel.name, built = "onnx_fp32", build_runner("onnx_fp32", spec["module"], spec["example"])
    sel.runner, sel.onnx = built.runner, built.onnx
    save_runtime(tmp_path / "m", sel, spec["digest"])
    assert (tmp_path / "m" / ONNX_FILE).is_file()
    loaded = load_detector(tmp_path / "m")
    assert loaded.runtime["name"] == "onnx_fp32"
    np.testing.assert_allclose(loaded.score(x), eager_scores, atol=1e-5)
    assert loaded._runtime_runner is not None and loaded._runtime_runner.name == "onnx_fp32"
    # other weights than the ones the runtime was chosen for → eager, with a log line
    with torch.no_grad():
        loaded.model.head.bias.add_(1.0)
    loaded.load_state_dict(loaded.state_dict())
    with caplog.at_level(logging.WARNING, logger="medforensics.detectors.runtime"):
        loaded.score(x)
    assert loaded._runtime_runner is None and "chosen for other weights" in caplog.text
    # a missing graph file → eager, with a log line
    (tmp_path / "m" / ONNX_FILE).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medforensics.detectors.runtime"):
        again = load_detector(tmp_path / "m")
        np.testing.assert_allclose(again.score(x), eager_scores, atol=1e-6)
    assert "is missing" in caplog.text


def test_optimise_refuses_no_images(tmp_path):
    _det().save(tmp_path / "m")
    with pytest.raises(ValueError, match="at least one real image"):
        optimise_model_dir(tmp_path / "m", torch.zeros(0, 3, 64, 64))


@needs_ort
def test_cli_models_optimise_records_a_runtime(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from medforensics.cli import app

    _det().save(tmp_path / "m")
    folder = tmp_path / "reals"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / f"r{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    runner = CliRunner()
    res = runner.invoke(app, ["models", "optimise", str(tmp_path / "m"), "--images", str(folder),
                              "--runtimes", "eager,onnx_fp32"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["runtime"]["name"] in ("eager", "onnx_fp32")
    assert len(cfg["runtime"]["measured"]) == 2 and cfg["runtime"]["measured"][0]["parity_images"] == 4
    assert runner.invoke(app, ["models", "optimise", str(tmp_path / "m"), "--runtimes", "tensorrt"]).exit_code == 2
    assert runner.invoke(app, ["models", "optimise", str(tmp_path / "nothing")]).exit_code == 2
    assert runner.invoke(app, ["models"]).exit_code == 0  # the listing still works without a sub-command
