"""Patient-level, stratified, deterministic splits; leakage checks; anatomy annotations."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from medforensics.data import (
    ANATOMY_RULES,
    Manifest,
    ManifestRow,
    anatomy_matched,
    anatomy_of,
    annotate_anatomy,
    assert_no_leakage,
    default_group_key,
    find_leakage,
    patient_split,
    real_anatomies,
    shared_manifest,
    train_val_split,
)
from medforensics.data.split import stratum_of


@pytest.fixture(scope="module")
def shared(shared_data: Path) -> Manifest:
    return shared_manifest()


@pytest.fixture(scope="module")
def shared_split(shared: Manifest) -> Manifest:
    return patient_split(shared, test_fraction=0.2, seed=0)


def _by_path(m: Manifest) -> dict[str, str]:
    return {r.path: r.split for r in m}


# ----------------------------------------------------------------- shared manifest
def test_every_row_split_and_no_patient_in_both(shared_split: Manifest):
    assert set(shared_split.column("split")) == {"train", "test"}
    sides: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in shared_split:
        if r.patient_id:
            sides[(r.source, r.patient_id)].add(r.split)
    assert len(sides) > 300
    assert all(len(s) == 1 for s in sides.values())
    assert_no_leakage(shared_split)


def test_crops_of_one_figure_stay_together(shared_split: Manifest):
    sides: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in shared_split:
        if not r.patient_id:
            sides[(r.extra["source_repo"], r.extra["original_path"])].add(r.split)
    multi = {k for k, v in Counter((r.extra["source_repo"], r.extra["original_path"]) for r in shared_split if not r.patient_id).items() if v > 1}
    assert len(multi) >= 10  # e.g. figure grids cropped into several images
    assert all(len(sides[k]) == 1 for k in multi)
    # a figure shared by several generators (and a real reference) is one group
    polyp = {r.split for r in shared_split if r.extra["original_path"] == "figure.png"}
    assert len(polyp) == 1


def test_test_fraction_per_stratum(shared_split: Manifest):
    groups: dict[tuple, set[str]] = defaultdict(set)
    test_groups: dict[tuple, set[str]] = defaultdict(set)
    for r in shared_split:
        key = default_group_key(r)
        groups[stratum_of(r)].add(key)
        if r.split == "test":
            test_groups[stratum_of(r)].add(key)
    checked = 0
    for stratum, keys in groups.items():
        if len(keys) >= 20:
            frac = len(test_groups[stratum]) / len(keys)
            assert 0.15 <= frac <= 0.25, (stratum, frac)
            checked += 1
        elif len(keys) >= 2:
            assert 1 <= len(test_groups[stratum]) < len(keys), stratum
    assert checked >= 10
    rows_test = sum(r.split == "test" for r in shared_split) / len(shared_split)
    assert 0.15 <= rows_test <= 0.25


def test_split_is_deterministic_and_order_independent(shared: Manifest, shared_split: Manifest):
    again = patient_split(shared, test_fraction=0.2, seed=0)
    assert _by_path(again) == _by_path(shared_split)
    rows = list(shared.rows)
    random.Random(1).shuffle(rows)
    shuffled = patient_split(shared.with_rows(rows), test_fraction=0.2, seed=0)
    assert _by_path(shuffled) == _by_path(shared_split)
    other_seed = patient_split(shared, test_fraction=0.2, seed=1)
    assert _by_path(other_seed) != _by_path(shared_split)


def test_adding_rows_reshuffles_little(shared: Manifest, shared_split: Manifest):
    keep = [r for r in shared if int(default_group_key(r).encode().hex(), 16) % 10 != 0]  # drop ~10% of groups
    partial = _by_path(patient_split(shared.with_rows(keep), seed=0))
    full = _by_path(shared_split)
    changed = sum(partial[p] != full[p] for p in partial)
    assert changed / len(partial) < 0.1


def test_train_val_split(shared_split: Manifest):
    tv = train_val_split(shared_split, val_fraction=0.1, seed=0)
    assert Counter(tv.column("split"))["test"] == Counter(shared_split.column("split"))["test"]
    before, after = _by_path(shared_split), _by_path(tv)
    assert all(after[p] == "test" for p, s in before.items() if s == "test")
    assert all(after[p] in ("train", "val") for p, s in before.items() if s == "train")
    n_val, n_train = Counter(tv.column("split"))["val"], Counter(before.values())["train"]
    assert 0.06 <= n_val / n_train <= 0.14
    assert_no_leakage(tv)
    assert _by_path(train_val_split(tv, val_fraction=0.1, seed=0)) == after  # idempotent


# ----------------------------------------------------------------- synthetic cases
def _rows() -> list[ManifestRow]:
    rows = []
    for p in range(10):
        for k in range(3):
            rows.append(ManifestRow(f"r/{p}_{k}.png", "real", "ct", source="A", patient_id=f"P{p}"))
        rows.append(ManifestRow(f"f/{p}.png", "fake", "ct", source="A", generator="G", patient_id=f"P{p}"))
    rows += [ManifestRow(f"b/{p}.png", "real", "ct", source="B", patient_id=f"P{p}") for p in range(10)]
    return rows


def test_grouping_is_label_independent_and_namespaced():
    m = patient_split(Manifest(_rows(), "/tmp"), seed=3)
    split = {(r.source, r.patient_id, r.label): r.split for r in m}
    for p in range(10):  # the fake of patient P of source A follows that patient's reals
        assert split[("A", f"P{p}", "fake")] == split[("A", f"P{p}", "real")]
    # same ids in source B are other patients: assigned independently
    assert any(split[("A", f"P{p}", "real")] != split[("B", f"P{p}", "real")] for p in range(10))
    assert_no_leakage(m)


def test_existing_split_kept_and_group_follows():
    rows = _rows()
    rows[0].split = "test"  # patient P0 of A pinned to test via one image
    m = patient_split(Manifest(rows, "/tmp"), seed=0)
    assert {r.split for r in m if r.source == "A" and r.patient_id == "P0"} == {"test"}
    forced = patient_split(Manifest(rows, "/tmp"), seed=0, overwrite=True)
    assert forced[0].split in ("train", "test")
    assert rows[0].split == "test"  # input not modified


def test_assert_no_leakage_lists_keys():
    rows = [
        ManifestRow("a.png", "real", "ct", source="A", patient_id="X", split="train"),
        ManifestRow("b.png", "fake", "ct", source="A", patient_id="X", split="test"),
        ManifestRow("c.png", "real", "ct", source="B", patient_id="X", split="test"),
    ]
    m = Manifest(rows, "/tmp")
    assert find_leakage(m) == {"patient:A:X": ["test", "train"]}
    with pytest.raises(ValueError, match="patient:A:X"):
        assert_no_leakage(m)


def test_custom_group_key_and_fraction_bounds():
    rows = [ManifestRow(f"{i}.png", "real", "ct", source="A") for i in range(10)]
    m = patient_split(Manifest(rows, "/tmp"), group_key=lambda r: "one", seed=0)
    assert len(set(m.column("split"))) == 1
    assert set(patient_split(Manifest(rows, "/tmp"), test_fraction=0).column("split")) == {"train"}
    with pytest.raises(ValueError):
        patient_split(Manifest(rows, "/tmp"), test_fraction=1.5)


# ----------------------------------------------------------------- anatomy
def test_anatomy_rules_cover_shared_sources(shared: Manifest):
    for r in shared:
        text = f"{r.source} {r.generator}".lower()
        rules = ANATOMY_RULES[r.modality]
        assert any(pat in text for pat, _ in rules), (r.modality, r.source)
        assert anatomy_of(r)


def test_anatomy_matching_on_shared(shared: Manifest):
    reals = real_anatomies(shared)
    assert reals["ultrasound"] == {"breast"} and reals["xray"] == {"chest"} and reals["mri"] == {"brain"}
    echo = shared.filter(label="fake", modality="ultrasound")
    assert len(echo) > 400 and not any(anatomy_matched(r, reals) for r in echo)
    ddpm = shared.filter(generator="LungGen-DDPM_NIH")
    assert len(ddpm) == 40 and all(anatomy_matched(r, shared) for r in ddpm)
    mmg = shared.filter(label="fake", modality="xray", generator=lambda g: "MMG" in g)
    assert len(mmg) >= 10 and {anatomy_of(r) for r in mmg} == {"breast"}
    assert not any(anatomy_matched(r, reals) for r in mmg)
    mri = {r.generator: anatomy_matched(r, reals) for r in shared.filter(label="fake", modality="mri")}
    assert mri["SPADE_DukeBreastMRI"] is False and mri["medigan_00022_WGAN_CARDIAC_AGING_UKB"] is False
    assert mri["medigan_00007_INPAINT_GAN_BRAIN_MRI_BraTS"] is True
    assert all(anatomy_matched(r, reals) for r in shared.filter(label="real"))
    annotated = annotate_anatomy(shared)
    assert Counter(annotated.column("anatomy_matched"))["false"] == sum(
        not anatomy_matched(r, reals) for r in shared
    )


def test_anatomy_column_overrides():
    row = ManifestRow("x.png", "fake", "ultrasound", generator="WGAN_EchoNet", extra={"anatomy": "Breast"})
    assert anatomy_of(row) == "breast"
    assert anatomy_of(ManifestRow("y.png", "fake", "xray", generator="our_ddpm")) == "chest"  # default
