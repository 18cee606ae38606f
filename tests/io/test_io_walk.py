"""``iter_files`` / ``iter_images`` / ``group_series`` / ``sniff_format``."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from medforensics.io import (
    MedImage,
    UnreadableImageError,
    group_series,
    iter_files,
    iter_images,
    sniff_format,
)


@pytest.fixture
def tree(tmp_path, encoded, pyd):
    root = tmp_path / "scan"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".cache").mkdir()
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    (root / "b.png").write_bytes(encoded(grey, "PNG"))
    (root / "a.jpg").write_bytes(encoded(np.dstack([grey] * 3), "JPEG"))
    (root / ".hidden.png").write_bytes(encoded(grey, "PNG"))
    (root / ".cache" / "x.png").write_bytes(encoded(grey, "PNG"))
    (root / "notes.txt").write_text("hello")
    (root / "meta.json").write_text("{}")
    (root / "table.CSV").write_text("a,b")
    full = encoded(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), "PNG")
    (root / "broken.png").write_bytes(full[: len(full) // 2])
    (root / "weird.xyz").write_bytes(b"\x13\x37 not an image")
    shutil.copy(pyd / "MR_small.dcm", root / "sub" / "mr.dcm")
    shutil.copy(pyd / "dicomdirtests" / "DICOMDIR", root / "sub" / "DICOMDIR")
    (root / "sub" / "deeper" / "c.png").write_bytes(encoded(grey, "PNG"))
    return root


def test_iter_files_order_and_filters(tree):
    files = list(iter_files([tree]))
    rel = [p.relative_to(tree).as_posix() for p in files]
    assert rel == ["a.jpg", "b.png", "broken.png", "weird.xyz", "sub/mr.dcm", "sub/deeper/c.png"]
    assert list(iter_files([tree])) == files  # deterministic
    assert list(iter_files(str(tree))) == files  # a single path is accepted too


def test_explicit_files_are_always_yielded(tree):
    explicit = [tree / "notes.txt", tree / "b.png"]
    assert list(iter_files(explicit)) == explicit


def test_missing_path(tree):
    with pytest.raises(UnreadableImageError, match="file not found"):
        list(iter_files([tree / "b.png", tree / "gone"]))
    results = list(iter_images([tree / "gone", tree / "b.png"]))
    assert isinstance(results[0][1], UnreadableImageError) and results[0][0] == tree / "gone"
    assert isinstance(results[1][1], list)


def test_iter_images_reports_bad_files(tree):
    results = dict(iter_images([tree], max_frames=2))
    assert set(results) == set(iter_files([tree]))
    for name in ("broken.png", "weird.xyz"):
        err = results[tree / name]
        assert isinstance(err, UnreadableImageError) and err.path == str(tree / name)
    assert "truncated PNG" in results[tree / "broken.png"].reason
    assert "not a recognised image format" in results[tree / "weird.xyz"].reason
    for name in ("a.jpg", "b.png", "sub/mr.dcm", "sub/deeper/c.png"):
        frames = results[tree / name]
        assert isinstance(frames, list) and len(frames) == 1 and isinstance(frames[0], MedImage)
    assert results[tree / "sub/mr.dcm"][0].meta.modality == "mri"
    forced = dict(iter_images([tree / "b.png"], modality="xray"))
    assert forced[tree / "b.png"][0].meta.modality == "xray"


def _series_copy(src, dst, series_uid: str, instance: int) -> None:
    ds = pydicom.dcmread(src)
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.save_as(dst)


def test_dicom_series_ordered_by_instance_number(tmp_path, pyd, encoded):
    src = pyd / "MR_small.dcm"
    _series_copy(src, tmp_path / "a.dcm", "1.2.3.1", 3)
    _series_copy(src, tmp_path / "b.dcm", "1.2.3.1", 1)
    _series_copy(src, tmp_path / "d.dcm", "1.2.3.1", 2)
    _series_copy(src, tmp_path / "e.dcm", "1.2.3.2", 2)
    _series_copy(src, tmp_path / "f.dcm", "1.2.3.2", 1)
    (tmp_path / "c.png").write_bytes(encoded(np.zeros((4, 4), np.uint8), "PNG"))
    names = [p.name for p in iter_files([tmp_path])]
    assert names == ["b.dcm", "d.dcm", "a.dcm", "c.png", "f.dcm", "e.dcm"]
    groups = group_series([tmp_path])
    assert list(groups) == ["1.2.3.1", "1.2.3.2"]
    assert [p.name for p in groups["1.2.3.1"]] == ["b.dcm", "d.dcm", "a.dcm"]
    assert [p.name for p in groups["1.2.3.2"]] == ["f.dcm", "e.dcm"]


def test_group_series_on_real_folder(pyd):
    groups = group_series([pyd / "dicomdirtests" / "77654033"])
    assert groups and all(len(v) >= 1 for v in groups.values())
    for files in groups.values():
        numbers = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
        assert numbers == sorted(numbers)
    assert sum(len(v) for v in groups.values()) == 7  # CR1, CR2, CR3 + 4 CT2 files


def test_sniff_format(tmp_path, encoded, pyd):
    png = tmp_path / "x.dat"
    png.write_bytes(encoded(np.zeros((2, 2), np.uint8), "PNG"))
    assert sniff_format(png) == "png"
    assert sniff_format(pyd / "dicomdirtests" / "77654033" / "CR1" / "6154") == "dicom"
    tif = tmp_path / "y"
    tif.write_bytes(encoded(np.zeros((2, 2), np.uint16), "TIFF"))
    assert sniff_format(tif) == "tiff"
    (tmp_path / "z.foo").write_bytes(b"\x00\x01\x02\x03" * 10)
    with pytest.raises(UnreadableImageError, match="extension .foo does not match"):
        sniff_format(tmp_path / "z.foo")
