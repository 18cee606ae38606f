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


# --------------------------------------------------------------------------- walk robustness
import os  # noqa: E402
import signal  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from medforensics.io import check_regular_file, iter_entries, load  # noqa: E402


@contextmanager
def no_hang(seconds: int = 10):
    """Fail (instead of hanging the test run) if the block blocks, e.g. on a FIFO."""

    def alarm(signum, frame):
        raise TimeoutError("blocked: a non-regular file was opened")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _split(items):
    paths = [i for i in items if not isinstance(i, UnreadableImageError)]
    errors = {os.path.basename(e.path): e.reason for e in items if isinstance(e, UnreadableImageError)}
    return paths, errors


@pytest.fixture
def walk_tree(tmp_path, encoded):
    root = tmp_path / "w"
    grey = encoded(np.zeros((8, 8), np.uint8), "PNG")
    for rel in ("a.png", "b_locked/x.png", "c/y.png", "d/z.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(grey)
    return root


def test_unlistable_subfolder_is_reported_and_the_walk_goes_on(walk_tree, monkeypatch):
    locked = str(walk_tree / "b_locked")
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(iter_entries([walk_tree, walk_tree / "a.png"]))
    paths, errors = _split(items)
    assert [p.relative_to(walk_tree).as_posix() for p in paths] == ["a.png", "c/y.png", "d/z.png", "a.png"]
    assert errors == {"b_locked": "cannot list directory: Permission denied"}
    results = list(iter_images([walk_tree]))
    assert [p.name for p, _ in results] == ["a.png", "b_locked", "y.png", "z.png"]
    assert isinstance(results[1][1], UnreadableImageError)
    with pytest.raises(UnreadableImageError, match="cannot list directory"):
        list(iter_files([walk_tree]))  # iter_files raises at the first problem (documented)


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not apply to root")
def test_chmod_000_subfolder(walk_tree):
    locked = walk_tree / "b_locked"
    locked.chmod(0)
    try:
        paths, errors = _split(list(iter_entries([walk_tree])))
    finally:
        locked.chmod(0o755)
    assert "b_locked" in errors and len(paths) == 3


def test_dangling_links_loops_and_fifos_are_named(walk_tree):
    (walk_tree / "c" / "gone.png").symlink_to(walk_tree / "nowhere.png")
    (walk_tree / "c" / "self.png").symlink_to(walk_tree / "c" / "self.png")
    (walk_tree / "c" / "up").symlink_to(walk_tree)  # loop back to an ancestor
    os.mkfifo(walk_tree / "c" / "pipe.dcm")
    with no_hang():
        paths, errors = _split(list(iter_entries([walk_tree])))
        results = list(iter_images([walk_tree]))
    assert [p.relative_to(walk_tree).as_posix() for p in paths] == ["a.png", "b_locked/x.png", "c/y.png", "d/z.png"]
    assert errors["gone.png"].startswith("dangling symbolic link")
    assert errors["self.png"].startswith("symbolic link loop")
    assert errors["up"].startswith("symbolic link loop")
    assert errors["pipe.dcm"] == "not a regular file: FIFO (named pipe)"
    assert len(results) == 8 and sum(isinstance(r, UnreadableImageError) for _, r in results) == 4


def test_a_second_link_to_a_walked_folder_is_not_an_error(walk_tree):
    (walk_tree / "e_alias").symlink_to(walk_tree / "d")
    paths, errors = _split(list(iter_entries([walk_tree])))
    assert errors == {} and [p.name for p in paths].count("z.png") == 1


def test_problem_arguments_do_not_abort_the_walk(walk_tree, tmp_path):
    dangling = tmp_path / "dangling.dcm"
    dangling.symlink_to(tmp_path / "missing.dcm")
    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)
    with no_hang():
        items = list(iter_entries([dangling, fifo, "/dev/zero", walk_tree / "a.png", tmp_path / "nope"]))
        results = list(iter_images([dangling, fifo, walk_tree / "a.png"]))
    reasons = [i.reason if isinstance(i, UnreadableImageError) else "ok" for i in items]
    assert reasons[0].startswith("dangling symbolic link")
    assert reasons[1] == "not a regular file: FIFO (named pipe)"
    assert reasons[2] == "not a regular file: character device"
    assert reasons[3] == "ok"
    assert reasons[4] == "file not found"
    assert isinstance(results[0][1], UnreadableImageError) and isinstance(results[2][1], list)


def test_check_regular_file_and_loaders_never_open_special_files(tmp_path):
    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)
    (tmp_path / "ok.bin").write_bytes(b"12345")
    assert check_regular_file(tmp_path / "ok.bin") == 5
    with no_hang():
        for path, reason in [(fifo, "FIFO"), ("/dev/zero", "character device"), (tmp_path, "is a directory")]:
            with pytest.raises(UnreadableImageError, match=reason):
                check_regular_file(path)
            with pytest.raises(UnreadableImageError, match=reason):
                load(path)
            with pytest.raises(UnreadableImageError, match=reason):
                sniff_format(path)
