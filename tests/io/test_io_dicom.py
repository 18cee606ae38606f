"""DICOM reading on real files from pydicom / pydicom-data."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing

from medforensics.io import IntensityConfig, UnreadableImageError, load, load_frames


def raw_array(path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


def assert_unit(pixels: np.ndarray) -> None:
    assert pixels.dtype == np.float32
    assert np.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


# --- transfer syntaxes -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ts_fragment",
    [
        ("MR_small_RLE.dcm", "RLE"),
        ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS"),
        ("MR_small_jp2klossless.dcm", "JPEG 2000"),
        ("MR_small_bigendian.dcm", "Big Endian"),
        ("MR_small_implicit.dcm", "Implicit"),
    ],
)
def test_lossless_transfer_syntaxes_match_uncompressed(pyd, name, ts_fragment):
    ref = load(pyd / "MR_small.dcm")
    img = load(pyd / name)
    assert ts_fragment in img.meta.extra["transfer_syntax"]
    assert img.pixels.shape == (64, 64)
    np.testing.assert_array_equal(img.pixels, ref.pixels)
    assert img.meta.intensity == ref.meta.intensity


def test_jpeg_baseline_decodes_close_to_dcmtk_decompressed(pyd, pdd):
    # +eb+cy+n1: JPEG baseline, YBR_FULL; the _dcmd file is dcmtk's decompressed version
    img = load(pyd / "SC_rgb_dcmtk_+eb+cy+n1.dcm")
    ref = load(pdd / "SC_rgb_dcmtk_ebcyn1_dcmd.dcm")
    assert img.meta.photometric == "YBR_FULL" and "JPEG Baseline" in img.meta.extra["transfer_syntax"]
    assert img.pixels.shape == (100, 100, 3)
    diff = np.abs(img.pixels - ref.pixels)
    assert diff.max() <= 3 / 255 and diff.mean() < 1 / 255
    # first rows of the test pattern are pure red → YBR was converted to RGB
    np.testing.assert_allclose(img.pixels[0, 0], [1.0, 0.0, 0.0], atol=3 / 255)


def test_native_ybr_converted_to_rgb(pyd, pdd):
    rgb = load(pdd / "SC_rgb.dcm").pixels
    for path in (pdd / "SC_ybr_full_uncompressed.dcm", pyd / "SC_ybr_full_422_uncompressed.dcm"):
        img = load(path)
        assert img.meta.photometric.startswith("YBR_FULL") and img.pixels.shape == (100, 100, 3)
        diff = np.abs(img.pixels - rgb)  # YBR quantisation: a few levels; unconverted YBR: ~100
        assert diff.max() <= 8 / 255 and diff.mean() < 1 / 255, path.name


def test_jpeg_baseline_multiframe_ybr(pyd):
    frames = load_frames(pyd / "examples_ybr_color.dcm")
    assert len(frames) == 30
    assert [f.meta.frame_index for f in frames] == list(range(30))
    assert all(f.meta.n_frames == 30 and f.pixels.shape == (240, 320, 3) for f in frames)
    assert frames[0].meta.modality == "ultrasound"
    for f in frames:
        assert_unit(f.pixels)


def test_j2k_lossless_equals_uncompressed(pdd):
    for a, b in [("MR2_J2KR.dcm", "MR2_UNCR.dcm"), ("US1_J2KR.dcm", "US1_UNCR.dcm"), ("693_J2KR.dcm", "693_UNCR.dcm")]:
        np.testing.assert_array_equal(load(pdd / a).pixels, load(pdd / b).pixels, err_msg=a)


def test_j2k_lossy_is_close_but_not_equal(pdd):
    lossy, orig = load(pdd / "US1_J2KI.dcm").pixels, load(pdd / "US1_UNCR.dcm").pixels
    assert lossy.shape == orig.shape == (480, 640, 3)
    diff = np.abs(lossy - orig)
    assert 0 < diff.mean() < 0.02
    mr_lossy, mr = load(pdd / "MR2_J2KI.dcm").pixels, load(pdd / "MR2_UNCR.dcm").pixels
    assert 0 < np.abs(mr_lossy - mr).mean() < 0.02


def test_multiframe_variants_agree(pdd):
    ref = load_frames(pdd / "emri_small.dcm")
    assert len(ref) == 10 and [f.meta.frame_index for f in ref] == list(range(10))
    for name in ("emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm"):
        other = load_frames(pdd / name)
        assert len(other) == 10
        for a, b in zip(ref, other):
            np.testing.assert_array_equal(a.pixels, b.pixels, err_msg=name)


# --- intensity ---------------------------------------------------------------------------


def test_ct_hu_window(pyd):
    path = pyd / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = load(path)
    assert img.meta.modality == "ct" and img.meta.dicom_modality == "CT"
    expected = np.clip((hu + 700.0) / 2700.0, 0, 1)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    assert "-700" in img.meta.intensity and "2000" in img.meta.intensity and "HU" in img.meta.intensity
    assert_unit(img.pixels)
    # a narrower window changes the mapping
    narrow = load(path, intensity=IntensityConfig(ct_window=(0.0, 100.0)))
    np.testing.assert_allclose(narrow.pixels, np.clip(hu / 100.0, 0, 1), atol=1e-6)
    assert "[0, 100]" in narrow.meta.intensity


def test_monochrome1_is_inverted_against_pydicom_windowing(pyd):
    path = pyd / "dicomdirtests" / "77654033" / "CR1" / "6154"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array
    values = apply_modality_lut(raw, ds)
    windowed = apply_windowing(values, ds)  # pydicom: output in [y_min, y_max]
    y_min = 0 * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    y_max = (2**ds.BitsStored - 1) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = 1.0 - (windowed - y_min) / (y_max - y_min)
    img = load(path)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-5)
    assert "MONOCHROME1" in img.meta.intensity and img.meta.modality == "xray"
    # high stored value → dark pixel
    hi, lo = np.unravel_index(raw.argmax(), raw.shape), np.unravel_index(raw.argmin(), raw.shape)
    assert img.pixels[hi] < img.pixels[lo]


def test_monochrome1_large_cr(pdd):
    path = pdd / "RG3_UNCR.dcm"
    raw = raw_array(path).astype(np.float64)
    img = load(path)
    assert img.meta.photometric == "MONOCHROME1" and img.pixels.shape == raw.shape
    assert np.corrcoef(raw.ravel()[::97], img.pixels.ravel()[::97])[0, 1] < -0.9
    assert "C=550 W=1024" in img.meta.intensity


def test_palette_colour(pyd):
    path = pyd / "examples_palette.dcm"
    ds = pydicom.dcmread(path)
    img = load(path)
    assert img.pixels.shape == (ds.Rows, ds.Columns, 3) and img.is_color
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64) / 65535.0
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    assert img.meta.photometric == "PALETTE COLOR" and "palette" in img.meta.intensity


def test_palette_without_preamble(pdd):
    img = load(pdd / "OT-PAL-8-face.dcm")
    assert img.pixels.shape == (480, 640, 3) and img.meta.source_format == "dicom"
    assert img.pixels.std() > 0.05


def test_rgb_16bit_matches_8bit(pdd):
    a, b = load(pdd / "SC_rgb.dcm"), load(pdd / "SC_rgb_16bit.dcm")
    assert b.meta.bit_depth == 16 and "65535" in b.meta.intensity
    np.testing.assert_allclose(a.pixels, b.pixels, atol=1 / 255)


def test_voi_window_used_for_other_modalities(pdd):
    img = load(pdd / "JPGLosslessP14SV1_1s_1f_8b.dcm")
    assert img.meta.modality == "ultrasound" and "C=127 W=254" in img.meta.intensity
    assert img.meta.extra["window"] == [127.0, 254.0, "LINEAR"]


# --- MRI statistics ----------------------------------------------------------------------


def test_mri_volume_scope_pools_frames(pdd):
    path = pdd / "emri_small.dcm"
    stack = raw_array(path).astype(np.float64)
    lo, hi = np.percentile(stack, [0.5, 99.5])
    frames = load_frames(path)
    expected = np.clip((stack - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(np.stack([f.pixels for f in frames]), expected, atol=1e-6)
    assert "volume (10 frames)" in frames[0].meta.intensity
    per_image = load_frames(path, intensity=IntensityConfig(mri_scope="image"))
    assert "over image" in per_image[0].meta.intensity
    assert any(not np.allclose(a.pixels, b.pixels) for a, b in zip(frames, per_image))


def test_mri_zscore(pdd):
    path = pdd / "emri_small.dcm"
    stack = raw_array(path).astype(np.float64)
    z = (stack - stack.mean()) / stack.std()
    frames = load_frames(path, intensity=IntensityConfig(mri_method="zscore", zscore_clip=2.0))
    np.testing.assert_allclose(np.stack([f.pixels for f in frames]), np.clip((z + 2) / 4, 0, 1), atol=1e-5)
    assert "z-score" in frames[0].meta.intensity


def test_load_frame_matches_load_frames(pdd):
    path = pdd / "emri_small.dcm"
    frames = load_frames(path)
    middle = load(path)
    assert middle.meta.frame_index == 5
    np.testing.assert_array_equal(middle.pixels, frames[5].pixels)
    np.testing.assert_array_equal(load(path, frame=2).pixels, frames[2].pixels)
    np.testing.assert_array_equal(load(path, frame=-1).pixels, frames[9].pixels)
    sub = load_frames(path, max_frames=3)
    assert [f.meta.frame_index for f in sub] == [1, 5, 8]
    np.testing.assert_array_equal(sub[1].pixels, frames[5].pixels)
    with pytest.raises(UnreadableImageError, match="out of range"):
        load(path, frame=10)


def test_modality_override(pyd):
    img = load(pyd / "MR_small.dcm", modality="ct")
    assert img.meta.modality == "ct" and img.meta.dicom_modality == "MR"
    assert "CT window" in img.meta.intensity


# --- metadata ----------------------------------------------------------------------------


def test_metadata_fields(pyd):
    path = pyd / "MR_small.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    m = load(path).meta
    assert m.source_format == "dicom" and m.path == str(path)
    assert m.modality == "mri" and m.dicom_modality == "MR"
    assert m.patient_id == str(ds.PatientID)
    assert m.study_uid == ds.StudyInstanceUID and m.series_uid == ds.SeriesInstanceUID
    assert m.sop_instance_uid == ds.SOPInstanceUID
    assert m.pixel_spacing == (0.3125, 0.3125)
    assert m.bit_depth == 16 and m.photometric == "MONOCHROME2"
    assert m.frame_index is None and m.n_frames == 1 and m.original_shape == (64, 64)
    assert m.extra["sop_class"] == "MR Image Storage"
    assert m.to_dict()["modality"] == "mri"


def test_metadata_multiframe_and_enhanced(pdd):
    frames = load_frames(pdd / "eCT_Supplemental.dcm")
    assert len(frames) == 2 and frames[1].meta.original_shape == (2, 512, 512)
    m = frames[0].meta
    assert m.modality == "ct" and m.pixel_spacing == (0.388672, 0.388672)
    assert m.extra["pixel_spacing_source"] == "PixelMeasuresSequence"
    assert "rescale" in m.intensity  # functional-group Rescale Intercept -1024 applied
    cr = load(pdd / "RG1_UNCR.dcm").meta
    assert cr.modality == "xray" and cr.bit_depth == 15 and cr.photometric == "MONOCHROME1"


# --- DICOM failures ----------------------------------------------------------------------


def test_no_pixel_data(pyd):
    with pytest.raises(UnreadableImageError, match=r"no pixel data \(SOP class Basic Text SR Storage\)") as ei:
        load(pyd / "reportsi.dcm")
    assert ei.value.path == str(pyd / "reportsi.dcm")


def test_non_image_dicom(pyd):
    with pytest.raises(UnreadableImageError, match="non-image DICOM \\(Modality SEG"):
        load(pyd / "liver_1frame.dcm")


def test_truncated_pixel_data(pyd, tmp_path):
    data = (pyd / "MR_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(UnreadableImageError, match="truncated DICOM pixel data") as ei:
        load(path)
    assert str(ei.value).startswith(str(path))


def test_truncated_before_pixel_data(pyd, tmp_path):
    data = (pyd / "MR_small.dcm").read_bytes()
    path = tmp_path / "header_only.dcm"
    path.write_bytes(data[:1000])
    with pytest.raises(UnreadableImageError, match=r"no pixel data \(SOP class MR Image Storage\); the file may be truncated"):
        load(path)


def test_truncated_encapsulated(pyd, tmp_path):
    data = (pyd / "MR_small_jp2klossless.dcm").read_bytes()
    path = tmp_path / "cut_j2k.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="truncated DICOM"):
        load(path)


def test_unsupported_transfer_syntax(pyd, tmp_path):
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(pyd / "MR_small.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder in pydicom
    ds.PixelData = encapsulate([b"\x00" * 64])
    path = tmp_path / "mpeg2.dcm"
    ds.save_as(path)
    with pytest.raises(UnreadableImageError, match="unsupported transfer syntax MPEG2"):
        load(path)


def test_dicom_header_too_large(pyd, tmp_path):
    ds = pydicom.dcmread(pyd / "MR_small.dcm")
    ds.Rows, ds.Columns = 20000, 20000
    path = tmp_path / "huge.dcm"
    ds.save_as(path)
    with pytest.raises(UnreadableImageError, match="image too large: 20000×20000"):
        load(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 512, 5000
    ds.save_as(path)
    with pytest.raises(UnreadableImageError, match="5000 frames"):
        load_frames(path)


def test_windowing_matches_pydicom_functions():
    from medforensics.io.intensity import apply_window

    ramp = np.arange(-100, 4200, dtype=np.float64)
    for func, c, w in [("LINEAR", 1000.0, 1500.0), ("LINEAR_EXACT", 300.0, 900.0), ("SIGMOID", 2000.0, 800.0)]:
        ds = Dataset()
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsStored, ds.PixelRepresentation = 12, 0
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = c, w, func
        ref = apply_windowing(ramp.copy(), ds) / 4095.0
        ours, desc = apply_window(ramp, (c, w, func))
        np.testing.assert_allclose(ours, np.clip(ref, 0, 1), atol=1e-6, err_msg=func)
        assert func in desc
