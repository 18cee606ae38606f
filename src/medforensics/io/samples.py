"""Real DICOM files shipped by the ``pydicom`` and ``pydicom-data`` pip packages.

The folders are located directly (``pydicom/data/test_files`` next to the installed
``pydicom`` package, ``data_store/data`` of the installed ``pydicom-data`` distribution).
``pydicom.data.get_testdata_file(s)`` is deliberately not used: it downloads missing files
from the internet. Without pydicom-data only pydicom's own files are returned.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: name → (package, what the file demonstrates). Names are paths relative to the data folder.
SAMPLE_NOTES: dict[str, tuple[str, str]] = {
    # pydicom test_files
    "CT_small.dcm": ("pydicom", "CT 128×128, explicit VR LE, rescale intercept -1024 (HU)"),
    "MR_small.dcm": ("pydicom", "MR 64×64 16-bit, explicit VR LE"),
    "MR_small_RLE.dcm": ("pydicom", "MR_small, RLE lossless"),
    "MR_small_jpeg_ls_lossless.dcm": ("pydicom", "MR_small, JPEG-LS lossless"),
    "MR_small_jp2klossless.dcm": ("pydicom", "MR_small, JPEG 2000 lossless"),
    "MR_small_bigendian.dcm": ("pydicom", "MR_small, explicit VR big endian"),
    "JPGExtended.dcm": ("pydicom", "NM 1024×256 12-bit, JPEG extended (process 2/4)"),
    "JPEG2000.dcm": ("pydicom", "NM 1024×256 16-bit signed, JPEG 2000 lossy"),
    "SC_rgb_jpeg_dcmtk.dcm": ("pydicom", "OT RGB 100×100, JPEG baseline, YBR_FULL"),
    "SC_rgb_rle.dcm": ("pydicom", "OT RGB 100×100, RLE lossless"),
    "SC_rgb_jpeg_gdcm.dcm": ("pydicom", "OT RGB 100×100, JPEG lossless"),
    "examples_rgb_color.dcm": ("pydicom", "US RGB 240×320, uncompressed"),
    "examples_ybr_color.dcm": ("pydicom", "US 30 frames YBR_FULL_422, JPEG baseline"),
    "examples_palette.dcm": ("pydicom", "US palette colour 350×800"),
    "examples_jpeg2k.dcm": ("pydicom", "US YBR_RCT 480×640, JPEG 2000 lossless"),
    "image_dfl.dcm": ("pydicom", "OT 8-bit 512×512, deflated explicit VR LE"),
    "dicomdirtests/77654033/CR1/6154": ("pydicom", "CR 16×16 MONOCHROME1, rescale + VOI window"),
    # pydicom-data data_store/data
    "693_UNCI.dcm": ("pydicom-data", "CT 512×512 (CQ500 head), uncompressed, window 40/100"),
    "693_J2KR.dcm": ("pydicom-data", "693 CT, JPEG 2000 lossless"),
    "eCT_Supplemental.dcm": ("pydicom-data", "enhanced CT, 2 frames, functional-group rescale"),
    "MR2_UNCI.dcm": ("pydicom-data", "MR 1024×1024 12-bit, uncompressed"),
    "MR2_J2KR.dcm": ("pydicom-data", "MR2, JPEG 2000 lossless"),
    "MR2_J2KI.dcm": ("pydicom-data", "MR2, JPEG 2000 lossy"),
    "MR-SIEMENS-DICOM-WithOverlays.dcm": ("pydicom-data", "MR 484×484 12-bit with overlays"),
    "emri_small.dcm": ("pydicom-data", "MR 10 frames 64×64, uncompressed"),
    "emri_small_RLE.dcm": ("pydicom-data", "emri_small, RLE lossless"),
    "emri_small_jpeg_ls_lossless.dcm": ("pydicom-data", "emri_small, JPEG-LS lossless"),
    "emri_small_jpeg_2k_lossless.dcm": ("pydicom-data", "emri_small, JPEG 2000 lossless"),
    "US1_UNCI.dcm": ("pydicom-data", "US RGB 480×640, uncompressed"),
    "US1_J2KR.dcm": ("pydicom-data", "US1, JPEG 2000 lossless (YBR_RCT)"),
    "US1_J2KI.dcm": ("pydicom-data", "US1, JPEG 2000 lossy (YBR_ICT)"),
    "gdcm-US-ALOKA-16.dcm": ("pydicom-data", "US palette colour with 16-bit LUTs"),
    "OBXXXX1A.dcm": ("pydicom-data", "US palette colour 600×800"),
    "OBXXXX1A_rle_2frame.dcm": ("pydicom-data", "US palette colour, 2 frames, RLE"),
    "JPGLosslessP14SV1_1s_1f_8b.dcm": ("pydicom-data", "US 8-bit 768×1024, JPEG lossless SV1"),
    "JPEG-LL.dcm": ("pydicom-data", "NM 16-bit 1024×256, JPEG lossless"),
    "RG1_UNCI.dcm": ("pydicom-data", "CR MONOCHROME1 1955×1841 15-bit, uncompressed"),
    "RG1_J2KI.dcm": ("pydicom-data", "RG1 CR, JPEG 2000 lossy"),
    "RG3_UNCI.dcm": ("pydicom-data", "CR MONOCHROME1 1760×1760 10-bit, uncompressed"),
    "RG3_J2KR.dcm": ("pydicom-data", "RG3 CR, JPEG 2000 lossless"),
    "SC_rgb.dcm": ("pydicom-data", "OT RGB 8-bit 100×100, uncompressed"),
    "SC_rgb_16bit.dcm": ("pydicom-data", "OT RGB 16-bit 100×100, uncompressed"),
    "SC_ybr_full_uncompressed.dcm": ("pydicom-data", "OT YBR_FULL 100×100, uncompressed"),
    "OT-PAL-8-face.dcm": ("pydicom-data", "OT palette colour 480×640, no DICM preamble (ACR-NEMA style)"),
    "color3d_jpeg_baseline.dcm": ("pydicom-data", "US 120 frames YBR_FULL_422, JPEG baseline"),
}


def pydicom_test_files() -> Path | None:
    """``pydicom/data/test_files`` of the installed pydicom, or ``None``."""
    spec = importlib.util.find_spec("pydicom")
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "data" / "test_files"
    return folder if folder.is_dir() else None


def pydicom_data_folder() -> Path | None:
    """``data_store/data`` of the installed pydicom-data distribution, or ``None``."""
    try:
        spec = importlib.util.find_spec("data_store")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "data"
    return folder if folder.is_dir() else None


def _folders() -> dict[str, Path]:
    found = {"pydicom": pydicom_test_files(), "pydicom-data": pydicom_data_folder()}
    return {k: v for k, v in found.items() if v is not None}


def sample_dicoms() -> dict[str, Path]:
    """Curated name → path of representative sample DICOMs that are installed (see SAMPLE_NOTES)."""
    folders = _folders()
    out: dict[str, Path] = {}
    for name, (package, _note) in SAMPLE_NOTES.items():
        folder = folders.get(package)
        if folder is not None and (folder / name).is_file():
            out[name] = folder / name
    return out


def all_sample_dicoms() -> list[Path]:
    """Every DICOM-looking file in both folders (``.dcm`` or ``DICM`` magic), sorted.

    Includes deliberately odd files (no pixel data, truncated, SEG, SR, DICOMDIR…): useful to
    check that readers fail cleanly.
    """
    paths: list[Path] = []
    for folder in _folders().values():
        for p in sorted(folder.rglob("*")):
            if not p.is_file():
                continue
            if p.suffix.lower() == ".dcm":
                paths.append(p)
                continue
            try:
                with open(p, "rb") as fh:
                    if fh.read(132)[128:132] == b"DICM":
                        paths.append(p)
            except OSError:
                continue
    return paths
