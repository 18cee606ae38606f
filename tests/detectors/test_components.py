"""The training layer below the detectors (detectors/components): loops, selection, device, schedule, layering."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import medforensics.detectors as detectors_pkg
from medforensics.detectors import create_detector
from medforensics.detectors.components import (
    BestState,
    fit_epochs,
    fit_steps,
    resolve_device,
    selection_key,
    time_aware_cosine,
    validation_metrics,
)


def _scripted_fit(aucs, show_progress):
    """A one-weight model whose weight is set to the epoch number; validation reports ``aucs``."""
    model = nn.Linear(1, 1, bias=False)
    seen = []

    def step(i, batch):
        with torch.no_grad():
            model.weight.fill_(float(batch))
        seen.append(model.training)
        return 1.0 / batch

    it = iter(aucs)
    result = fit_epochs(model, len(aucs), lambda epoch: [epoch + 1], step,
                        validate=lambda: {"val_auc": next(it), "val_bce": 0.5}, show_progress=show_progress)
    return model, result, seen


def test_fit_epochs_keeps_the_best_epoch_and_restores_it(capsys):
    model, result, seen = _scripted_fit([0.6, 0.9, 0.7], show_progress=False)
    assert result.best_epoch == 2 and model.weight.item() == 2.0  # epoch 2's state restored
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[0] == {"epoch": 1, "train_loss": 1.0, "val_auc": 0.6, "val_bce": 0.5}
    assert all(seen) and not model.training  # trained in train mode, left in eval mode
    assert capsys.readouterr().out == ""  # progress=False prints nothing


def test_fit_epochs_prints_records_when_progress_is_on(capsys):
    _scripted_fit([0.5, 0.5], show_progress=True)
    out = capsys.readouterr().out.splitlines()
    assert out == ["  epoch=1, train_loss=1.0000, val_auc=0.5000, val_bce=0.5000",
                   "  epoch=2, train_loss=0.5000, val_auc=0.5000, val_bce=0.5000"]


def test_fit_epochs_without_validation_selects_by_training_loss():
    model = nn.Linear(1, 1, bias=False)
    losses = [0.5, 0.2, 0.9]

    def step(i, epoch):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        return losses[epoch]

    result = fit_epochs(model, 3, lambda epoch: [epoch], step, show_progress=False)
    assert result.best_epoch == 2 and model.weight.item() == 1.0


def test_selection_key_auc_first_bce_breaks_ties_undefined_auc_counts_zero():
    assert selection_key({"val_auc": 0.91234, "val_bce": 0.3}) == (0.9123, -0.3)
    assert selection_key({"val_auc": 0.9, "val_bce": 0.2}) > selection_key({"val_auc": 0.9, "val_bce": 0.3})
    assert selection_key({"val_auc": float("nan"), "val_bce": 0.1}) == (0.0, -0.1)
    assert selection_key({"epoch": 1, "train_loss": 0.25}) == (-0.25,)


def test_validation_metrics_and_best_state_reject_non_finite():
    m = validation_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert m["val_auc"] == 1.0 and m["val_ap"] == 1.0
    assert m["val_bce"] == pytest.approx(-np.mean(np.log([0.9 + 1e-6, 0.8 + 1e-6, 0.8 + 1e-6, 0.9 + 1e-6])))
    best, module = BestState(), nn.Linear(1, 1)
    assert not best.update((float("nan"),), 1, module) and best.state is None
    assert not best.restore(module)
    assert best.update((0.5, -1.0), 2, module) and best.epoch == 2


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        assert resolve_device("cuda:0") == torch.device("cpu")  # a saved CUDA model still loads on a CPU
    with pytest.raises(ValueError, match="no-such-device"):
        resolve_device("no-such-device")


def test_time_aware_cosine_warmup_and_floor():
    f = time_aware_cosine(100, warmup=10, floor=0.05)
    assert f(0) == pytest.approx(0.1 * (0.05 + 0.95 * 0.5 * (1 + np.cos(0.0))))
    assert f(9) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + np.cos(0.09 * np.pi)))  # warm-up done at step 9
    assert f(50) == pytest.approx(0.05 + 0.95 * 0.5)
    assert f(100) == pytest.approx(0.05) and f(500) == pytest.approx(0.05)
    late = time_aware_cosine(100, max_seconds=1.0, start=time.time() - 5.0)  # time budget already spent
    assert late(0) == pytest.approx(0.0)


def test_fit_steps_stops_on_the_time_budget():
    run = fit_steps(lambda i: (time.sleep(0.02), float(i))[1], 1000, max_seconds=0.1, show_progress=False)
    assert 1 <= run.steps < 1000 and run.losses[:3] == [0.0, 1.0, 2.0][: run.steps]


def test_class_level_defaults_are_merged_and_checked_by_the_base():
    det = create_detector("npr", width=4)
    assert det.config["width"] == 4 and det.config["epochs"] == 10  # model option + a training default
    with pytest.raises(TypeError, match="unknown npr options: widht"):
        create_detector("npr", widht=4)
    btd = create_detector("btd", base_width=8, channel_mult=[1, 2])
    assert btd.preprocessing.channels == 1  # BTD's DEFAULT_PREPROCESSING
    assert create_detector("forensic_cnn", width=8).preprocessing.channels == 3
    # DERIVED keys (written by the detector) are accepted back and dropped
    unifd = create_detector("unifd", backbone={"tiny": {"vision": {"image_size": 32, "patch_size": 8}}},
                            backbone_weights="anything")
    assert unifd.config["backbone_weights"] != "anything"


def test_forensic_cnn_fit_prints_nothing_with_progress_off(toy_sets, capsys):
    train, val = toy_sets
    det = create_detector("forensic_cnn", seed=0, width=8, epochs=1, batch_size=8, patches_per_image=2,
                          patch_size=32, patch_stride=32, progress=False)
    det.fit(train[:16], val[:8])
    assert capsys.readouterr().out == ""


def test_detectors_never_import_train():
    root = Path(detectors_pkg.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                if mod.startswith("medforensics.train") or (node.level >= 2 and (node.module or "").startswith("train")):
                    offenders.append(f"{path.relative_to(root)}: {mod}")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(root)}: {a.name}" for a in node.names
                              if a.name.startswith("medforensics.train")]
    assert not offenders


@pytest.mark.parametrize("module", ["medforensics.detectors", "medforensics.synth.tamper_set",
                                    "medforensics.synth.attacks"])
def test_fresh_import_does_not_load_train(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('medforensics.train')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
