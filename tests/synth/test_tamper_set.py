"""Tampered copies of a manifest's reals: written under the output folder whatever the manifest's paths."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from medforensics.data.manifest import Manifest, ManifestRow
from medforensics.synth.tamper_set import make_tampered_set


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    body = ((yy - 48) ** 2 + (xx - 48) ** 2 < 40**2) * 150.0
    return np.clip(body + 40 * np.exp(-((yy - 40) ** 2 + (xx - 55) ** 2) / 30.0) + rng.normal(0, 6, body.shape),
                   0, 255).astype(np.uint8)


def test_copies_stay_inside_the_output_folder_and_sources_are_untouched(tmp_path):
    data = tmp_path / "data"
    sources = [data / "a" / "x.png", data / "b" / "x.png", data / "c" / "y.png"]
    for k, src in enumerate(sources):
        src.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_texture(k)).save(src)
    before = {src: hashlib.sha256(src.read_bytes()).hexdigest() for src in sources}
    root = tmp_path / "runs" / "exp"  # the manifest lives elsewhere: paths climb out of its folder
    root.mkdir(parents=True)
    rows = [ManifestRow(path="../../data/a/x.png", label="real", modality="ct", source="s", patient_id="p1"),
            ManifestRow(path="../../data/b/x.png", label="real", modality="ct", source="s", patient_id="p2"),
            ManifestRow(path=str(sources[2]), label="real", modality="ct", source="s", patient_id="p3")]
    out = tmp_path / "runs" / "exp" / "work" / "tampered"
    made = make_tampered_set(Manifest.from_rows(rows, root=root), out, fraction=1.0, seed=0, show_progress=False)
    assert len(made) == 3
    written = sorted(p for p in tmp_path.rglob("*.png") if p not in sources)
    assert written and all(out in p.parents for p in written)  # nothing outside the output folder
    images = [row.resolve(made.root) for row in made]
    assert len(set(images)) == 3  # the two x.png sources do not share a copy
    for row, img in zip(made, images):
        assert img.is_file() and out in img.parents
        mask = np.asarray(Image.open(row.extra["mask"]))
        assert mask.any() and out in type(img)(row.extra["mask"]).parents
    assert {src: hashlib.sha256(src.read_bytes()).hexdigest() for src in sources} == before
    again = make_tampered_set(Manifest.from_rows(rows, root=root), out, fraction=1.0, seed=0, show_progress=False)
    assert [r.path for r in again] == [r.path for r in made]  # deterministic: the same names are reused
