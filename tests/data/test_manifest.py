"""Manifest reading/writing/validation, folder indexing and the shared manifest."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medforensics.data import Manifest, ManifestError, ManifestRow, concat, index_folder, shared_manifest
from medforensics.data.manifest import infer_family, is_dicom_file

CT_SMALL = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files" / "CT_small.dcm"


def _rewrite(src: Path, dst: Path, edit) -> Path:
    lines = src.read_text().splitlines()
    dst.write_text("\n".join(edit(lines)) + "\n")
    return dst


# ----------------------------------------------------------------- reading and round trip
def test_read_normalises_and_resolves(tiny_manifest: Manifest):
    m = tiny_manifest
    assert len(m) == 16
    assert m.root == m.path.parent.resolve()
    assert all(p.is_file() for p in m.paths())
    assert {r.patient_id for r in m if r.label == "fake"} == {""}  # "NA" → ""
    assert m[0].patient_id == "P0" and m[0].y == 0
    assert m.labels.tolist().count(1) == 6
    assert m.extra_columns == ["original_path", "mask", "notes"]
    assert m.column("notes")[6] == "colour, with a comma"


def test_round_trip_elsewhere_keeps_extras_and_paths(tiny_manifest: Manifest, tmp_path: Path):
    out = tmp_path / "elsewhere" / "deeper" / "copy.csv"
    tiny_manifest.write(out)
    back = Manifest.read(out)
    assert back.root == out.parent.resolve()
    assert back.columns() == tiny_manifest.columns()
    assert [r.path for r in back] != [r.path for r in tiny_manifest]  # rebased …
    assert back.paths() == tiny_manifest.paths()  # … to the same files
    assert all(p.is_file() for p in back.paths())
    for a, b in zip(tiny_manifest, back):
        da, db = a.to_dict(), b.to_dict()
        for key in ("path", "mask"):
            da.pop(key), db.pop(key)
        assert da == db
    masked = [r for r in back if r.extra["mask"]]
    assert len(masked) == 1 and masked[0].extra["mask"].startswith("../")
    assert (back.root / masked[0].extra["mask"]).is_file()
    # the header order of the original file is kept
    assert out.read_text().splitlines()[0] == tiny_manifest.path.read_text().splitlines()[0]


def test_write_refuses_overwrite(tiny_manifest: Manifest, tmp_path: Path):
    out = tmp_path / "m.csv"
    tiny_manifest.write(out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tiny_manifest.write(out)
    tiny_manifest[:3].write(out, overwrite=True)
    assert len(Manifest.read(out)) == 3


def test_missing_columns_are_listed(tiny_manifest: Manifest, tmp_path: Path):
    def drop(lines):
        return [",".join(x for x in ln.split(",")[:1] + ln.split(",")[3:]) for ln in lines]

    bad = _rewrite(tiny_manifest.path, tmp_path / "bad.csv", drop)
    with pytest.raises(ManifestError) as err:
        Manifest.read(bad)
    assert "label" in str(err.value) and "modality" in str(err.value)


def test_bad_label_names_row_and_value(tiny_manifest: Manifest, tmp_path: Path):
    def edit(lines):
        lines[3] = lines[3].replace(",real,", ",synthetic,", 1)
        return lines

    with pytest.raises(ManifestError, match=r"row 3 .*'synthetic'"):
        Manifest.read(_rewrite(tiny_manifest.path, tmp_path / "bad.csv", edit))


def test_empty_modality_names_row(tiny_manifest: Manifest, tmp_path: Path):
    def edit(lines):
        lines[5] = lines[5].replace(",xray,", ",,", 1)
        return lines

    with pytest.raises(ManifestError, match=r"row 5 .*modality"):
        Manifest.read(_rewrite(tiny_manifest.path, tmp_path / "bad.csv", edit))


def test_parquet_round_trip_or_clear_error(tiny_manifest: Manifest, tmp_path: Path):
    out = tmp_path / "m.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(ImportError, match="pyarrow"):
            tiny_manifest.write(out)
    else:
        tiny_manifest.write(out)
        back = Manifest.read(out)
        assert [r.to_dict() for r in back] == [r.to_dict() for r in tiny_manifest.with_rows(tiny_manifest._rebased(tmp_path.resolve()))]


# ----------------------------------------------------------------- selection
def test_filter_subset_getitem_summary(tiny_manifest: Manifest):
    m = tiny_manifest
    fakes = m.filter(label="fake")
    assert len(fakes) == 6 and set(fakes.labels) == {1}
    assert len(m.filter(modality={"endoscopy"}, label="real")) == 4
    assert len(m.filter(lambda r: r.patient_id.startswith("P"))) == 6
    assert len(m.filter(mask=lambda v: bool(v))) == 1
    assert isinstance(m[2:5], Manifest) and len(m[2:5]) == 3
    assert [r.path for r in m[[0, 15]]] == [m[0].path, m[15].path]
    rows = [r.copy(split="test" if i % 4 == 0 else "train") for i, r in enumerate(m)]
    split = m.with_rows(rows)
    assert len(split.subset("test")) == 4 and len(split.subset(["train", "test"])) == 16
    s = split.summary()
    assert s["total"] == 16 and s["fake"] == 6
    assert sum(n for lab in s["by_split_label_modality"].values() for mods in lab.values() for n in mods.values()) == 16
    assert s["by_generator"] == {"genX": 4, "genY": 2}
    json.dumps(s)


def test_concat_rebases_paths(tiny_manifest: Manifest, tmp_path: Path):
    other_dir = tmp_path / "other"
    (other_dir / "imgs").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(other_dir / "imgs" / "z.png")
    other = Manifest.from_rows([ManifestRow("imgs/z.png", "real", "ct", source="zz")], other_dir)
    joined = concat([tiny_manifest, other])
    assert len(joined) == 17 and joined.root == tiny_manifest.root
    assert all(p.is_file() for p in joined.paths())
    assert joined[-1].path == "../other/imgs/z.png"


def test_row_helpers():
    row = ManifestRow("a/b.png", "fake", "ct", patient_id="nan", extra={"x": "1"})
    assert row.patient_id == "" and row.y == 1
    assert row.resolve("/data") == Path("/data/a/b.png")
    assert ManifestRow("/abs/c.png", "real", "ct").resolve("/data") == Path("/abs/c.png")
    assert ManifestRow.from_dict(row.to_dict()) == row


# ----------------------------------------------------------------- folder indexing
def _png(path: Path, shape=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(shape, np.uint8)).save(path)


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _png(root / "real/xray/srcA/p1/a.png")
    _png(root / "real/xray/srcA/p2/deep/b.png")
    (root / "real/xray/srcA/patients.csv").write_text("path,patient_id\np1/a.png,PAT1\np2/deep/b.png,NA\n")
    (root / "real/xray/srcA/readme.txt").write_text("not an image")
    (root / "real/ct/dcm").mkdir(parents=True)
    shutil.copy(CT_SMALL, root / "real/ct/dcm/CT_small.dcm")
    shutil.copy(CT_SMALL, root / "real/ct/dcm/slice0001")  # DICOM without extension
    _png(root / "fake/xray/my_ddpm/s0.png")
    _png(root / "fake/xray/StyleGAN2/s0.png")
    _png(root / "fake/xray/custom/s0.png")
    (root / "fake/xray/custom/GENERATOR.json").write_text(json.dumps({"family": "tamper"}))
    (root / ".cache").mkdir()
    (root / "manifest.csv").write_text("")  # loose top-level files are fine
    return root


def test_index_folder(layout: Path):
    m = index_folder(layout)
    assert m.root == layout.resolve()
    assert [r.path for r in m] == sorted(r.path for r in m)
    by_path = {r.path: r for r in m}
    assert set(by_path) == {
        "fake/xray/StyleGAN2/s0.png", "fake/xray/custom/s0.png", "fake/xray/my_ddpm/s0.png",
        "real/ct/dcm/CT_small.dcm", "real/ct/dcm/slice0001",
        "real/xray/srcA/p1/a.png", "real/xray/srcA/p2/deep/b.png",
    }
    assert by_path["real/ct/dcm/slice0001"].patient_id == "1CT1"  # from the DICOM header
    assert by_path["real/ct/dcm/CT_small.dcm"].modality == "ct"
    assert by_path["real/xray/srcA/p1/a.png"].patient_id == "PAT1"  # from patients.csv
    assert by_path["real/xray/srcA/p2/deep/b.png"].patient_id == ""
    assert by_path["real/xray/srcA/p1/a.png"].source == "srcA" and by_path["real/xray/srcA/p1/a.png"].generator == ""
    fam = {r.generator: r.family for r in m if r.label == "fake"}
    assert fam == {"my_ddpm": "diffusion", "StyleGAN2": "gan", "custom": "tamper"}
    assert all(p.is_file() for p in m.paths())


def test_index_folder_matches_masks(tiny_manifest: Manifest):
    (tiny_manifest.path).unlink()
    m = index_folder(tiny_manifest.root)
    assert len(m) == 16  # masks/ is not indexed
    masks = {r.path: r.extra.get("mask", "") for r in m if r.extra.get("mask")}
    assert masks == {"fake/endoscopy/genY/y0.png": "fake/endoscopy/genY/masks/y0.png"}
    assert {r.generator for r in m if r.label == "fake"} == {"genX", "genY"}
    assert {r.family for r in m if r.generator == "genY"} == {""}  # no hint in the name, no GENERATOR.json


def test_index_folder_writes_manifest_relative_to_it(layout: Path, tmp_path: Path):
    out = tmp_path / "manifests" / "index.csv"
    m = index_folder(layout, manifest_path=out)
    assert out.is_file() and m.root == out.parent.resolve()
    back = Manifest.read(out)
    assert all(p.is_file() for p in back.paths()) and len(back) == 7
    assert back[0].path.startswith("../data/")


def test_index_folder_unknown_top_level(layout: Path):
    _png(layout / "misc/x/y/z.png")
    with pytest.raises(ManifestError, match="misc"):
        index_folder(layout)
    with pytest.warns(UserWarning, match="misc"):
        m = index_folder(layout, strict=False)
    assert len(m) == 7


def test_infer_family_and_dicom_magic(tmp_path: Path):
    assert infer_family("LungGen-DDPM_NIH") == "diffusion"
    assert infer_family("Diffusion-UKAN_GlaS") == "diffusion"
    assert infer_family("WGAN_EchoNet") == "gan"
    assert infer_family("beta_VAE") == "vae"
    assert infer_family("mystery") == ""
    assert is_dicom_file(CT_SMALL)
    _png(tmp_path / "a.png")
    assert not is_dicom_file(tmp_path / "a.png")


# ----------------------------------------------------------------- shared data
def test_shared_manifest_resolves(shared_data: Path):
    m = shared_manifest()
    assert m.root == shared_data.resolve()
    assert len(m) > 2000
    missing = [str(p) for p in m.paths() if not p.is_file()]
    assert not missing, missing[:5]
    assert set(m.column("label")) == {"real", "fake"}
    assert {"original_path", "license", "notes", "source_repo"} <= set(m.extra_columns)
    assert "NA" not in set(m.column("patient_id"))
