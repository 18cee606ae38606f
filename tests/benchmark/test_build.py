"""The benchmark builder: one pipeline, balance, patient-level split, format check, matched reals."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medforensics.benchmark.build import (
    BuildOptions,
    build_benchmark,
    format_features,
    format_statistics_check,
    load_fake_source,
    load_real_manifest,
    split_reals,
)
from medforensics.data import Manifest, ManifestRow, find_leakage


def _role(r: ManifestRow) -> str:
    return r.extra["role"]


def test_balanced_per_modality_and_split(toy_benchmark):
    m = toy_benchmark.manifest
    counts = Counter((r.split, r.modality, _role(r)) for r in m)
    for split in ("train", "test"):
        for mod in ("xray", "endoscopy"):
            assert counts[(split, mod, "real")] == counts[(split, mod, "factory")] > 0
    # round-robin over generators: every factory generator is present in both splits
    gens = {(r.generator, r.split) for r in m if _role(r) == "factory"}
    assert {g for g, _ in gens} == {f"{n}-{mod}" for n in ("ddpm", "dcgan", "vae") for mod in ("xray", "endoscopy")}
    assert all((g, "test") in gens and (g, "train") in gens for g, _ in gens)
    assert all(r.family in ("diffusion", "gan", "vae") for r in m if _role(r) == "factory")


def test_no_patient_leaks_across_splits(toy_benchmark):
    m = toy_benchmark.manifest
    assert find_leakage(m) == {}
    split_of: dict[str, set[str]] = {}
    for r in m:
        if r.label == "real":
            split_of.setdefault(r.patient_id, set()).add(r.split)
    assert split_of and all(len(s) == 1 for s in split_of.values())
    assert {s for v in split_of.values() for s in v} == {"train", "test"}


def test_one_pipeline_for_both_classes(toy_benchmark):
    m = toy_benchmark.manifest
    modes = {}
    for r in m:
        path = r.resolve(m.root)
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (32, 32)
            modes.setdefault(r.modality, set()).add(im.mode)
    assert modes == {"xray": {"L"}, "endoscopy": {"RGB"}}
    # reals got the fakes' native resolution (24 px) before the common resize; fakes are 24 px natively
    plain_reals = [r for r in m if _role(r) == "real"]
    assert all(r.extra["processing"].startswith("standardise 24 + 8-bit") for r in plain_reals)
    assert all(r.extra["native_size"] == "24x24" for r in m if _role(r) == "factory")


def test_published_fakes_and_history_matched_reals(toy_benchmark):
    m = toy_benchmark.manifest
    pub = [r for r in m if _role(r) == "published"]
    matched = [r for r in m if _role(r) == "matched_real"]
    assert len(pub) == 8 and len(matched) == 8
    assert all(r.split == "test" for r in pub + matched)
    pub_paths = {r.path for r in pub}
    for r in matched:
        assert r.extra["matched_to"] in pub_paths
        hist = json.loads(r.extra["history"])
        assert hist["jpeg_quality"] == 80 and hist["jpeg_source"] == "estimated"  # the JPEGs were saved at q80
        assert "JPEG q80" in r.extra["processing"]
        fake = next(p for p in pub if p.path == r.extra["matched_to"])
        assert fake.modality == r.modality


def test_format_check_passes_on_built_benchmark(toy_benchmark):
    fmt = toy_benchmark.report["format_check"]
    assert fmt["passed"], fmt["failures"]
    again = format_statistics_check(toy_benchmark.manifest)
    assert again.passed and set(again.feature_auc) >= {"format_png", "bit_depth", "png_zlib_level", "file_size"}


def _leaky(folder: Path, toy_inputs) -> Manifest:
    """Reals as 16-bit PNG, fakes as JPEG at their native size: file history gives the label away."""
    reals = load_real_manifest(toy_inputs["real"])
    fakes = Manifest.concat([load_fake_source(g) for g in toy_inputs["generators"]])
    rows = []
    for r in list(reals)[:12]:
        with Image.open(r.resolve(reals.root)) as im:
            arr = np.asarray(im.convert("L"), dtype=np.uint16) * 257
        p = folder / f"r_{len(rows)}.png"
        Image.fromarray(arr).save(p)
        rows.append(ManifestRow(path=p.name, label="real", modality=r.modality))
    for r in list(fakes)[:12]:
        with Image.open(r.resolve(fakes.root)) as im:
            p = folder / f"f_{len(rows)}.jpg"
            im.save(p, quality=75)
        rows.append(ManifestRow(path=p.name, label="fake", modality=r.modality, generator=r.generator))
    return Manifest(rows, folder)


def test_format_check_catches_a_leaky_benchmark(tmp_path, toy_inputs):
    rep = format_statistics_check(_leaky(tmp_path, toy_inputs))
    assert not rep.passed
    failing = " ".join(rep.failures)
    for feature in ("format_jpeg", "jpeg_quality", "bit_depth", "width"):
        assert feature in failing
    assert rep.container_lr_auc > 0.9


def test_format_features_of_png_and_jpeg(tmp_path):
    img = Image.fromarray(np.full((20, 30), 128, np.uint8))
    img.save(tmp_path / "a.png", compress_level=9)
    img.save(tmp_path / "b.jpg", quality=60)
    a, b = format_features(tmp_path / "a.png"), format_features(tmp_path / "b.jpg")
    assert (a["format_png"], a["width"], a["height"], a["bit_depth"], a["png_zlib_level"]) == (1, 30, 20, 8, 3)
    assert b["format_jpeg"] == 1 and b["jpeg_quality"] == 60 and b["png_zlib_level"] == -1


def test_matched_post_processing_on_both_classes_and_sources_pinned(tmp_path, toy_inputs):
    reals = load_real_manifest(toy_inputs["real"])
    fakes = [load_fake_source(g) for g in toy_inputs["generators"][:2]]  # ddpm-xray, ddpm-endoscopy
    # the test patient of xray is declared a generator training source: it must move to train, whole
    test_patient = next(r.patient_id for r in split_reals(reals) if r.split == "test" and r.modality == "xray")
    paths = {str(p) for r, p in zip(reals, reals.paths()) if r.patient_id == test_patient}
    pinned = split_reals(reals, pinned=paths)
    assert {r.split for r in pinned if r.patient_id == test_patient} == {"train"}
    assert any(r.split == "test" and r.modality == "xray" for r in pinned)  # another patient took its place
    res = build_benchmark(reals, fakes, tmp_path / "b", options=BuildOptions(size=32, jpeg_quality=70, resize=0.5),
                          sources={"ddpm-xray": paths}, show_progress=False)
    m = res.manifest
    assert all(r.extra["processing"].endswith("resize ×0.5 (bicubic) and back (bicubic) → JPEG q70") for r in m)
    assert {r.split for r in m if r.patient_id == test_patient} <= {"train"}
    assert res.report["generator_sources_in_test"] == {"ddpm-xray": 0}
    assert res.report["format_check"]["passed"]
    with pytest.raises(FileExistsError):
        build_benchmark(reals, fakes, tmp_path / "b", options=BuildOptions(size=32), show_progress=False)


def test_real_generator_factory_samples_into_the_builder(tmp_path, toy_inputs):
    from medforensics.synth.generators import TINY_CONFIGS, create_generator, load_training_images

    reals = load_real_manifest(toy_inputs["real"]).filter(modality="xray")
    gen = create_generator("vae", resolution=16, channels=1, seed=0, **TINY_CONFIGS["vae"])
    gen.fit(load_training_images(reals, 16, 1), steps=2, batch_size=4, progress=False, grid=0)
    gen.save(tmp_path / "vae-xray", grid=0)
    fakes = load_fake_source(tmp_path / "vae-xray", modality="xray", n_samples=6, sample_dir=tmp_path / "samples")
    assert len(fakes) == 6 and {r.generator for r in fakes} == {"vae-xray"} and {r.family for r in fakes} == {"vae"}
    with Image.open(fakes.paths()[0]) as im:
        assert im.size == (16, 16)  # sampled at native resolution; the builder does the one resize
    res = build_benchmark(reals, [fakes], tmp_path / "b", options=BuildOptions(size=32), show_progress=False)
    fake_rows = [r for r in res.manifest if r.label == "fake"]
    assert fake_rows and all(r.extra["native_size"] == "16x16" for r in fake_rows)
    assert all("standardise 16 + 8-bit" in r.extra["processing"] for r in res.manifest if r.label == "real")


def test_pins_match_a_built_benchmarks_rows_by_their_input_path(toy_benchmark):
    """A benchmark rebuilt from a built one keeps its pins: its reals are new files, matched by ``input_path``."""
    built = toy_benchmark.manifest.filter(label="real")
    cleared = built.with_rows([r.copy(split="") for r in built])
    test_patient = next(r.patient_id for r in split_reals(cleared) if r.split == "test" and r.modality == "xray")
    originals = {r.extra["input_path"] for r in built if r.patient_id == test_patient}
    assert originals and not originals & {str(p) for p in built.paths()}  # the pins name the original files only
    pinned = split_reals(cleared, pinned=originals)
    assert {r.split for r in pinned if r.patient_id == test_patient} == {"train"}
