"""``medforensics synth train|sample`` and ``data add-fakes`` end to end on tiny data."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from medforensics.cli import app
from medforensics.data import Manifest, patient_split

runner = CliRunner()
TINY_DIFFUSION = ["--set", "base_width=8", "--set", "channel_mult=[1,2]", "--set", "attention=false",
                  "--set", "num_train_timesteps=100", "--set", "sampling_steps=3"]


def test_synth_train_then_sample(tiny_manifest, tmp_path):
    model = tmp_path / "model"
    args = ["synth", "train", "--family", "diffusion", "--modality", "xray", "--manifest", str(tiny_manifest.path),
            "--out", str(model), "--resolution", "16", "--steps", "3", "--batch-size", "2", "--grid", "4",
            "--no-progress", *TINY_DIFFUSION]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    info = json.loads((model / "config.json").read_text())
    train_rows = patient_split(tiny_manifest).filter(label="real", modality="xray", split="train")
    data = info["training"]["data"]
    assert data["split"] == "train" and data["modality"] == "xray" and data["n_images"] == len(train_rows) < 6
    assert info["step"] == 3 and info["config"]["base_width"] == 8
    assert (model / "samples.png").is_file() and (model / "checkpoints" / "step-00000003" / "state.json").is_file()

    res = runner.invoke(app, args)  # the model exists: refused
    assert res.exit_code == 2 and "--force" in res.output

    fakes = tmp_path / "fakes"
    res = runner.invoke(app, ["synth", "sample", "--model", str(model), "-n", "3", "--out", str(fakes), "--size", "32",
                              "--seed", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    man = Manifest.read(fakes / "manifest.csv")
    assert len(man) == 3 and {r.generator for r in man} == {"model"} and {r.modality for r in man} == {"xray"}
    assert {r.family for r in man} == {"diffusion"} and man[0].extra["sampler"] == "ddim-3"
    for path in man.paths():
        with Image.open(path) as im:
            assert im.size == (32, 32) and im.mode == "L"
    res = runner.invoke(app, ["synth", "sample", "--model", str(model), "-n", "3", "--out", str(fakes), "--no-progress"])
    assert res.exit_code == 2 and "exists" in res.output


def test_synth_train_rejects_unknown_family_and_empty_modality(tiny_manifest, tmp_path):
    base = ["synth", "train", "--manifest", str(tiny_manifest.path), "--out", str(tmp_path / "m"), "--no-progress"]
    res = runner.invoke(app, [*base, "--family", "flow", "--modality", "xray"])
    assert res.exit_code == 2 and "unknown generator family" in res.output
    res = runner.invoke(app, [*base, "--family", "gan", "--modality", "ct"])
    assert res.exit_code == 2 and "no real images" in res.output


def test_data_add_fakes(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "fakes"
    src.mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(src / "x.jpg", quality=70)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src / "y.png")
    out = tmp_path / "imported.csv"
    res = runner.invoke(app, ["data", "add-fakes", str(src), "--generator", "ddpm-ext", "--modality", "ct",
                              "--manifest", str(out)])
    assert res.exit_code == 0, res.output
    man = Manifest.read(out)
    assert [r.path for r in man] == ["fakes/x.jpg", "fakes/y.png"]
    assert {r.family for r in man} == {"diffusion"} and {r.label for r in man} == {"fake"}
    x, y = man[0], man[1]
    assert x.extra["jpeg_quality"] == "70" and x.extra["original_height"] == "40" and x.extra["original_width"] == "50"
    assert y.extra["original_format"] == "png" and y.extra["original_channels"] == "3"
    assert man.paths()[0] == (src / "x.jpg").resolve()
    res = runner.invoke(app, ["data", "add-fakes", str(src), "--generator", "ddpm-ext", "--modality", "ct",
                              "--manifest", str(out)])
    assert res.exit_code == 2 and "exists" in res.output


def test_synth_train_preset_and_colour_modality(tiny_manifest, tmp_path):
    model = tmp_path / "gan"
    res = runner.invoke(app, ["synth", "train", "--family", "gan", "--preset", "tiny", "--modality", "endoscopy",
                              "--manifest", str(tiny_manifest.path), "--out", str(model), "--resolution", "16",
                              "--steps", "1", "--batch-size", "2", "--grid", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    info = json.loads((model / "config.json").read_text())
    assert info["channels"] == 3 and info["config"]["width"] == 8 and "--preset tiny" in info["training"]["command"]
    common = ["synth", "train", "--family", "gan", "--preset", "tiny", "--modality", "endoscopy", "--manifest",
              str(tiny_manifest.path), "--out", str(model), "--resolution", "16", "--batch-size", "2", "--grid", "0",
              "--no-progress", "--force"]
    res = runner.invoke(app, [*common, "--steps", "2"])  # continues from the step-1 checkpoint
    assert res.exit_code == 0, res.output
    training = json.loads((model / "config.json").read_text())["training"]
    assert training["resumed_from"] == 1 and training["steps"] == 2
    res = runner.invoke(app, [*common, "--steps", "1", "--no-resume"])  # starts over
    assert res.exit_code == 0, res.output
    training = json.loads((model / "config.json").read_text())["training"]
    assert training["resumed_from"] is None and training["steps"] == 1
    res = runner.invoke(app, ["synth", "train", "--family", "gan", "--preset", "huge", "--modality", "endoscopy",
                              "--manifest", str(tiny_manifest.path), "--out", str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 2 and "unknown preset" in res.output
