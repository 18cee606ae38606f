"""Training arrays from manifests, sample folders (PNG + manifest), imported fakes, grids."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medforensics.data import Manifest
from medforensics.io import standardise
from medforensics.synth.generators import (
    TINY_CONFIGS,
    create_generator,
    import_fakes,
    load_training_images,
    make_grid,
    sample_to_folder,
)
from medforensics.synth.generators.folders import to_uint8


@pytest.fixture(scope="module")
def vae():
    gen = create_generator("vae", resolution=16, seed=0, **TINY_CONFIGS["vae"])
    gen.fit(np.random.default_rng(0).random((4, 16, 16)).astype(np.float32), steps=2, batch_size=2, progress=False)
    return gen


def test_load_training_images_uses_the_project_resize(tiny_manifest):
    arr = load_training_images(tiny_manifest, 16, 1, modality="xray")
    assert arr.shape == (6, 16, 16) and arr.dtype == np.float32 and 0 <= arr.min() <= arr.max() <= 1
    first = tiny_manifest.filter(label="real", modality="xray")[0]
    expected = standardise(np.asarray(Image.open(first.resolve(tiny_manifest.root)), np.float32) / 255.0, 16)
    np.testing.assert_allclose(arr[0], expected, atol=1e-6)
    rgb = load_training_images(tiny_manifest, 16, 3, modality="endoscopy")
    assert rgb.shape == (4, 16, 16, 3)
    assert load_training_images(tiny_manifest, 16, 1, modality="endoscopy").shape == (4, 16, 16)
    fakes = load_training_images(tiny_manifest, 8, 1, modality="xray", label="fake")
    assert fakes.shape == (4, 8, 8)
    with pytest.raises(ValueError, match="no rows"):
        load_training_images(tiny_manifest, 16, 1, modality="ct")


def test_unreadable_training_image_is_skipped_with_a_warning(tiny_manifest):
    bad = tiny_manifest.filter(label="real", modality="xray")[0].resolve(tiny_manifest.root)
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        arr = load_training_images(tiny_manifest, 16, 1, modality="xray")
    assert arr.shape == (5, 16, 16)


def test_sample_to_folder_writes_pngs_and_a_manifest(vae, tmp_path):
    out = tmp_path / "fakes"
    man = sample_to_folder(vae, 5, out, modality="ct", generator_name="vae-ct", seed=2, size=40, batch_size=2,
                           manifest_path=out / "manifest.csv", progress=False)
    assert len(man) == 5 and {r.label for r in man} == {"fake"}
    reread = Manifest.read(out / "manifest.csv")
    assert [r.path for r in reread] == [f"vae-ct_s2_{i:06d}.png" for i in range(5)]
    row = reread[0]
    assert (row.generator, row.source, row.family, row.modality, row.patient_id) == ("vae-ct", "vae-ct", "vae", "ct", "")
    assert row.extra["resolution"] == "16" and row.extra["steps"] == "2" and row.extra["seed"] == "2"
    samples = vae.sample(5, seed=2, batch_size=2)
    for i, path in enumerate(reread.paths()):
        with Image.open(path) as im:
            assert im.size == (40, 40) and im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), to_uint8(standardise(samples[i], 40)))
    before = (out / "vae-ct_s2_000000.png").read_bytes()
    with pytest.raises(FileExistsError, match="exist already"):
        sample_to_folder(vae, 2, out, modality="ct", generator_name="vae-ct", seed=2, size=40, progress=False)
    assert (out / "vae-ct_s2_000000.png").read_bytes() == before
    other = sample_to_folder(vae, 2, out, modality="ct", generator_name="vae-ct", seed=3, size=16, progress=False)
    assert len(other) == 2 and Image.open(out / "vae-ct_s3_000001.png").size == (16, 16)


def test_import_fakes_records_history(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "elsewhere"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(src / "a.jpg", quality=80)
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(src / "sub" / "b.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    man, errors = import_fakes(src, "stylegan-x", "xray")
    assert len(man) == 2 and len(errors) == 1 and "broken.png" in errors[0]
    a, b = man[0], man[1]
    assert a.path == "a.jpg" and b.path == "sub/b.png"
    assert (a.family, a.generator, a.label) == ("gan", "stylegan-x", "fake")
    assert a.extra["original_format"] == "jpeg" and a.extra["jpeg_quality"] == "80"
    assert (a.extra["original_height"], a.extra["original_width"], a.extra["original_channels"]) == ("48", "64", "3")
    assert b.extra["original_format"] == "png" and b.extra["jpeg_quality"] == ""


def test_make_grid_tiles_images():
    grid = make_grid(np.ones((5, 4, 4), np.float32), ncol=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1)
    assert grid[1:5, 1:5].min() == 1.0 and grid[0, 0] == 0.5
