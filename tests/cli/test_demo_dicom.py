"""The demo's tampered copies are DICOM files written back as an attacker would, and the reader maps
them to the original's intensities outside the tampered pixels (io.dicom_write.write_back_pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medforensics.io import IntensityConfig, load, sample_dicoms
from medforensics.io.dicom_write import WriteBackError, write_back_pixels

SAMPLES = sample_dicoms()
#: one of each write-back path: CT rescale, big-endian MR, JPEG-LS MR, YBR JPEG colour (written as RGB),
#: uncompressed YBR_FULL, multi-frame RLE MR (pooled percentiles), 12-bit NM JPEG (min–max), palette colour,
#: and one too small to tamper (skipped)
PICK = ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm",
        "SC_ybr_full_uncompressed.dcm", "emri_small_RLE.dcm", "JPGExtended.dcm", "examples_palette.dcm",
        "dicomdirtests/77654033/CR1/6154"]
#: header elements a write-back may change: group lengths (pydicom drops the retired ones on writing),
#: and for a colour image the decoder turned from YBR into RGB, its photometric interpretation
ALLOWED = {"PixelData", "PhotometricInterpretation", "PlanarConfiguration"}


def _header_diff(a: pydicom.Dataset, b: pydicom.Dataset) -> set[str]:
    tags = {e.tag for e in a} | {e.tag for e in b}
    out = set()
    for tag in tags:
        if tag.element == 0:  # group length
            continue
        if tag not in a or tag not in b or a[tag].value != b[tag].value:
            out.add(pydicom.datadict.keyword_for_tag(tag) or str(tag))
    return out


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory):
    missing = [n for n in PICK if n not in SAMPLES]
    if missing:
        pytest.skip(f"sample DICOMs not installed: {missing}")
    from medforensics.cli import demo as demo_mod

    out = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setattr(demo_mod, "sample_dicoms", lambda: {n: SAMPLES[n] for n in PICK})
    try:
        demo_mod.prepare_inputs(out, seed=0, max_frames=4)  # a scan reading 4 frames of a multi-frame file
    finally:
        mp.undo()
    return out


def test_tampered_copies_are_dicom_with_the_original_headers(demo_inputs: Path):
    fake = demo_inputs / "inputs" / "tampered"
    truth = json.loads((fake / "ground_truth.json").read_text())["copies"]
    files = sorted(p.name for p in fake.iterdir() if p.name != "ground_truth.json")
    assert files == sorted(c["file"] for c in truth)
    assert all(f.endswith(".dcm") for f in files) and not list(fake.glob("*.png"))
    # every picked sample but the 16×16 one has both copies
    assert sorted(c["file"] for c in truth) == sorted(f"{n.removesuffix('.dcm')}.{kind}.dcm"
                                                      for n in PICK[:-1] for kind in ("inject", "remove"))
    for c in truth:
        path = fake / c["file"]
        assert path.read_bytes()[128:132] == b"DICM"
        orig, copy = pydicom.dcmread(c["source"]), pydicom.dcmread(path)
        diff = _header_diff(orig, copy)
        assert "PixelData" in diff and diff <= ALLOWED, (c["file"], diff)
        if diff & {"PhotometricInterpretation", "PlanarConfiguration"}:
            assert orig.PhotometricInterpretation.startswith("YBR") and orig.file_meta.TransferSyntaxUID.is_compressed
            assert copy.PhotometricInterpretation == "RGB"
        assert copy.SOPInstanceUID == orig.SOPInstanceUID and copy.SeriesInstanceUID == orig.SeriesInstanceUID
        for key in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel"):
            assert copy.get(key) == orig.get(key), (c["file"], key)
        ts_in, ts_out = orig.file_meta.TransferSyntaxUID, copy.file_meta.TransferSyntaxUID
        assert str(ts_out) == c["transfer_syntax"]
        assert ts_out == ts_in or (ts_in.is_compressed and ts_out == pydicom.uid.ExplicitVRLittleEndian)
        assert c["header_changes"] == sorted(diff - {"PixelData"})


def test_reader_gives_the_original_intensities_outside_the_mask(demo_inputs: Path):
    fake = demo_inputs / "inputs" / "tampered"
    truth = json.loads((fake / "ground_truth.json").read_text())["copies"]
    for c in truth:
        mask = np.asarray(Image.open(demo_inputs / c["mask"])) > 0
        a = load(c["source"], frame=c["frame"]).pixels
        b = load(fake / c["file"], frame=c["frame"]).pixels
        assert a.shape == b.shape and mask.shape == a.shape[:2]
        differs = (a != b).any(axis=-1) if a.ndim == 3 else a != b
        assert np.array_equal(a[~mask], b[~mask]), c["file"]
        assert differs[mask].mean() > 0.5 and not differs[~mask].any(), c["file"]
        n = int(pydicom.dcmread(c["source"], stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
        if n > 1:  # the tampered frame is one the scan reads, nearest the middle; only it changed
            assert c["frame"] == {10: 6}[n]  # frame_indices(10, 4) == [1, 3, 6, 8]
            other = (c["frame"] + 1) % n
            assert np.array_equal(load(c["source"], frame=other).pixels, load(fake / c["file"], frame=other).pixels)


def test_monochrome1_window_edit_round_trips(tmp_path: Path):
    """MONOCHROME1 + rescale + VOI window: the edit reads back as written (up to one stored step)."""
    name = "dicomdirtests/77654033/CR1/6154"
    if name not in SAMPLES:
        pytest.skip("pydicom test file missing")
    src = SAMPLES[name]
    img = load(src)
    px = img.pixels.copy()
    mask = np.zeros(px.shape, bool)
    mask[4:10, 5:11] = True
    px[mask] = np.clip(1.0 - px[mask], 0.05, 0.95)
    info = write_back_pixels(src, px, mask, tmp_path / "cr.dcm")
    back = load(tmp_path / "cr.dcm").pixels
    assert np.array_equal(back[~mask], img.pixels[~mask])
    assert info["max_diff_inside"] < 0.02 and np.abs(back[mask] - px[mask]).max() < 0.02
    assert (back[mask] != img.pixels[mask]).any()


def test_statistics_pixels_are_kept_and_unwritable_edits_are_refused(tmp_path: Path):
    for name in ("JPGExtended.dcm", "MR_small.dcm"):
        if name not in SAMPLES:
            pytest.skip(f"{name} missing")
    # min–max scaled NM: painting over the brightest pixel would rescale the whole image, so it is kept
    src = SAMPLES["JPGExtended.dcm"]
    img = load(src)
    y, x = np.unravel_index(int(np.argmax(img.pixels)), img.pixels.shape)
    mask = np.zeros(img.pixels.shape, bool)
    mask[max(0, y - 3):y + 4, max(0, x - 3):x + 4] = True
    px = img.pixels.copy()
    px[mask] = 0.2
    info = write_back_pixels(src, px, mask, tmp_path / "nm.dcm")
    assert info["n_kept"] >= 1 and not info["mask"][y, x] and info["mask"].sum() + info["n_kept"] == mask.sum()
    back = load(tmp_path / "nm.dcm").pixels
    assert back[y, x] == img.pixels[y, x] == 1.0
    assert np.array_equal(back[~info["mask"]], img.pixels[~info["mask"]])
    # an edit that changes nothing is refused, nothing written
    m = np.zeros(img.pixels.shape, bool)
    m[:8, :8] = True
    with pytest.raises(WriteBackError, match="changed no pixel"):
        write_back_pixels(src, img.pixels, m, tmp_path / "same.dcm")
    assert not (tmp_path / "same.dcm").exists()
    # a reader setting whose statistics every edit moves (MRI z-score): the check refuses the copy
    mr = SAMPLES["MR_small.dcm"]
    cfg = IntensityConfig(mri_method="zscore")
    m = load(mr, intensity=cfg)
    mask = np.zeros(m.pixels.shape, bool)
    mask[20:30, 20:30] = True
    px = m.pixels.copy()
    px[mask] = 0.9
    with pytest.raises(WriteBackError, match="other intensities outside the edit"):
        write_back_pixels(mr, px, mask, tmp_path / "z.dcm", config=cfg)
    assert not (tmp_path / "z.dcm").exists()
