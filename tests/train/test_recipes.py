"""Training recipes: extra training rows (e.g. a benchmark's factory fakes) without held-out leakage."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from medforensics.data import Manifest
from medforensics.train.recipes import PreparedData, add_training_rows


def _split(tiny: Manifest) -> PreparedData:
    endo_real = [r for r in tiny if r.modality == "endoscopy" and r.label == "real"]
    return PreparedData(
        train=tiny.filter(lambda r: r.modality == "xray"),
        val=Manifest.from_rows(endo_real[:2], root=tiny.root),
        test=Manifest.from_rows(endo_real[2:], root=tiny.root),
        summary={"seed": 0},
    )


def test_add_training_rows_keeps_train_rows_and_drops_derivatives_of_held_out_images(tiny_manifest, tmp_path):
    data = _split(tiny_manifest)
    val_image = data.val.rows[0].resolve(data.val.root)
    train_image = data.train.rows[0].resolve(data.train.root)
    extra_dir = tmp_path / "bench"
    rng = np.random.default_rng(0)
    records = []
    for name, label, split, input_path in [
        ("fake_a.png", "fake", "train", ""),                       # factory fake: kept
        ("real_from_train.png", "real", "train", str(train_image)),  # derived from a train image: kept
        ("real_from_val.png", "real", "train", str(val_image)),     # derived from a validation image: dropped
        ("fake_test.png", "fake", "test", ""),                      # the benchmark's test split: skipped
    ]:
        (extra_dir / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(extra_dir / "img" / name)
        records.append({"path": f"img/{name}", "label": label, "modality": "xray", "source": "bench",
                        "generator": "ddpm-xray" if label == "fake" else "", "split": split, "input_path": input_path})
    with open(extra_dir / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)

    out = add_training_rows(data, Manifest.read(extra_dir / "manifest.csv"), source="bench")

    added = [r for r in out.train if r.source == "bench"]
    assert sorted(r.path.rsplit("/", 1)[-1] for r in added) == ["fake_a.png", "real_from_train.png"]
    assert all(r.resolve(out.train.root).is_file() for r in out.train)  # paths rebased onto the joined root
    assert len(out.train) == len(data.train) + 2
    assert out.val is data.val and out.test is data.test
    assert out.summary["extra_train"] == [{"manifest": "bench", "real": 1, "fake": 1,
                                          "dropped_derived_from_val_test": 1, "skipped_not_train_split": 1}]
    assert data.summary == {"seed": 0}  # the input is not modified
