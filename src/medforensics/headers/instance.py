"""Per-instance header rules: what one DICOM file says about itself.

Every rule returns :class:`~.findings.Finding` objects; :func:`inspect_instance` never raises
(an unreadable header becomes an ``unreadable_header`` finding and ``InstanceReport.error``).
The attribute lists are the Type 1 / Type 2 attributes of the classic CT Image and MR Image IODs
(DICOM PS3.3 C.7.6.1 General Image, C.7.6.2 Image Plane, C.7.6.3 Image Pixel, C.8.2.1 CT Image,
C.8.3.1 MR Image) — small on purpose: a scanner writes them, a converter often forgets them.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..io.dicom import has_dicm_magic, read_dataset
from ..io.files import open_regular
from ..io.types import UnreadableImageError
from .findings import Finding, InstanceReport
from .uids import SCRIPTING_TOOLKITS, is_scanner_vendor, toolkit_of_uid, toolkit_of_version_name

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC and the multi-frame SC classes

_IMAGE_TYPE1 = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                "BitsStored", "HighBit", "PixelRepresentation", "PixelSpacing",
                "ImageOrientationPatient", "ImagePositionPatient", "ImageType")
#: SOP class → (Type 1 keywords, Type 2 keywords) checked for presence (Type 1 also non-empty).
REQUIRED_ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    CT_IMAGE_STORAGE: (_IMAGE_TYPE1 + ("RescaleIntercept", "RescaleSlope"),
                       ("KVP", "SliceThickness", "InstanceNumber", "AcquisitionNumber")),
    MR_IMAGE_STORAGE: (_IMAGE_TYPE1 + ("ScanningSequence", "SequenceVariant"),
                       ("EchoTime", "EchoTrainLength", "ScanOptions", "MRAcquisitionType",
                        "SliceThickness", "InstanceNumber")),
}
#: Largest single frame whose pixel statistics are computed (rows × columns × samples).
MAX_STAT_PIXELS = 64 * 1024 * 1024
_ENCODING_WARNING = re.compile(r"expected (explicit|implicit) VR|found (explicit|implicit) VR|"
                               r"transfer syntax|endian", re.IGNORECASE)


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _num(value: Any) -> float | None:
    try:
        if value is None or value == "":
            return None
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(ds: Dataset, keyword: str, n: int) -> list[float] | None:
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        vals = [float(v) for v in (value if not isinstance(value, (str, bytes)) else [value])]
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def read_header(path: Path, *, pixels: bool) -> tuple[Dataset, bool, list[str]]:
    """(data set, has the DICM preamble, encoding warnings pydicom raised while reading)."""
    with open_regular(path) as fh:  # raises UnreadableImageError for special files
        magic = has_dicm_magic(fh.read(132))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_dataset(path, stop_before_pixels=not pixels)
    notes = [str(w.message) for w in caught if _ENCODING_WARNING.search(str(w.message))]
    return ds, magic, notes


# ---------------------------------------------------------------- rules


def _required(ds: Dataset, sop_class: str) -> list[Finding]:
    lists = REQUIRED_ATTRIBUTES.get(sop_class)
    if lists is None:
        return []
    type1, type2 = lists
    name = "CT Image" if sop_class == CT_IMAGE_STORAGE else "MR Image"
    missing1 = [k for k in type1 if k not in ds or ds[k].value in (None, "", b"")]
    missing2 = [k for k in type2 if k not in ds]
    out = []
    if missing1:
        out.append(Finding("missing_type1_attribute", "medium",
                           f"The {name} IOD requires {', '.join(missing1)} with a value, but the file has none "
                           "(a scanner writes them; a converter or editor may not).",
                           {"sop_class": name, "missing": missing1}))
    if missing2:
        out.append(Finding("missing_type2_attribute", "low",
                           f"The {name} IOD requires {', '.join(missing2)} to be present (even if empty), "
                           "but the file lacks them.", {"sop_class": name, "missing": missing2}))
    return out


def _implausible(ds: Dataset, sop_class: str) -> list[Finding]:
    bad: dict[str, Any] = {}
    if sop_class == CT_IMAGE_STORAGE:
        slope = _num(ds.get("RescaleSlope"))
        if slope is not None and slope <= 0:
            bad["RescaleSlope"] = slope
        kvp = _num(ds.get("KVP"))
        if kvp is not None and not 40 <= kvp <= 160:
            bad["KVP"] = kvp
    if sop_class == MR_IMAGE_STORAGE:
        for key in ("EchoTime", "RepetitionTime", "MagneticFieldStrength"):
            v = _num(ds.get(key))
            if v is not None and v < 0:
                bad[key] = v
    spacing = _floats(ds, "PixelSpacing", 2)
    if spacing is not None and any(not 0 < s <= 50 for s in spacing):
        bad["PixelSpacing"] = spacing
    iop = _floats(ds, "ImageOrientationPatient", 6)
    if iop is not None:
        r, c = np.array(iop[:3]), np.array(iop[3:])
        if abs(np.linalg.norm(r) - 1) > 0.01 or abs(np.linalg.norm(c) - 1) > 0.01 or abs(float(r @ c)) > 0.01:
            bad["ImageOrientationPatient"] = iop
    thick = _num(ds.get("SliceThickness"))
    if thick is not None and thick < 0:
        bad["SliceThickness"] = thick
    if not bad:
        return []
    text = ", ".join(f"{k}={v}" for k, v in bad.items())
    return [Finding("implausible_attribute_value", "medium",
                    f"Attribute values no scanner writes: {text}.", {"values": bad})]


def _bits(ds: Dataset) -> list[Finding]:
    if "PixelData" not in ds and "Rows" not in ds:
        return []
    alloc, stored, high = _int(ds, "BitsAllocated"), _int(ds, "BitsStored"), _int(ds, "HighBit")
    rep, spp = _int(ds, "PixelRepresentation"), _int(ds, "SamplesPerPixel")
    photometric = _text(ds, "PhotometricInterpretation").upper()
    problems: list[str] = []
    severity = "low"
    if alloc is not None and alloc not in (1, 8, 16, 32, 64):
        problems.append(f"BitsAllocated {alloc} is not 1, 8, 16, 32 or 64")
        severity = "high"
    if alloc is not None and stored is not None and stored > alloc:
        problems.append(f"BitsStored {stored} exceeds BitsAllocated {alloc}")
        severity = "high"
    if rep is not None and rep not in (0, 1):
        problems.append(f"PixelRepresentation {rep} is not 0 or 1")
        severity = "high"
    need = 1 if photometric in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR") else (
        3 if photometric.startswith(("RGB", "YBR")) else None)
    if need is not None and spp is not None and spp != need:
        problems.append(f"SamplesPerPixel {spp} does not fit PhotometricInterpretation {photometric}")
        severity = "high"
    if stored is not None and high is not None and high != stored - 1 and severity != "high":
        problems.append(f"HighBit {high} is not BitsStored − 1 ({stored - 1})")
    if not problems:
        return []
    return [Finding("inconsistent_pixel_description", severity,
                    "The image pixel attributes contradict each other: " + "; ".join(problems) + ".",
                    {"BitsAllocated": alloc, "BitsStored": stored, "HighBit": high,
                     "PixelRepresentation": rep, "SamplesPerPixel": spp, "PhotometricInterpretation": photometric})]


def _pixel_data_structure(ds: Dataset, ts: UID | None) -> list[Finding]:
    """Pixel data length vs Rows×Columns×…, encapsulation vs transfer syntax (needs pixel data)."""
    if "PixelData" not in ds or ts is None:
        return []
    elem = ds["PixelData"]
    undefined = bool(getattr(elem, "is_undefined_length", False))
    try:
        encapsulated = ts.is_encapsulated
    except Exception:
        return []
    if encapsulated != undefined and ts != "1.2.840.10008.1.2.1.99":
        what = "compressed (encapsulated)" if encapsulated else "uncompressed (native)"
        return [Finding("transfer_syntax_encoding_mismatch", "high",
                        f"The transfer syntax {ts.name} says the pixel data is {what}, but it is stored "
                        f"{'as fragments' if undefined else 'with a defined length'}.",
                        {"transfer_syntax": str(ts), "undefined_length": undefined})]
    if encapsulated:
        return []
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    alloc, spp = _int(ds, "BitsAllocated"), _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    if not rows or not cols or not alloc:
        return []
    n = rows * cols * spp * frames
    expected = (n + 7) // 8 if alloc == 1 else n * alloc // 8
    try:
        actual = len(elem.value)
    except TypeError:
        return []
    if expected <= actual <= expected + 1:  # one byte of padding to an even length is legal
        return []
    severity = "high" if actual < expected else "medium"
    return [Finding("pixel_data_length_mismatch", severity,
                    f"The pixel data holds {actual} bytes but Rows×Columns×frames×samples×BitsAllocated "
                    f"needs {expected}.", {"actual_bytes": actual, "expected_bytes": expected,
                                           "rows": rows, "columns": cols, "frames": frames,
                                           "samples": spp, "bits_allocated": alloc})]


def _file_meta(ds: Dataset, magic: bool, encoding_notes: list[str]) -> list[Finding]:
    out: list[Finding] = []
    meta = getattr(ds, "file_meta", None)
    if not magic:
        out.append(Finding("no_file_meta", "low",
                           "The file has no DICOM preamble / file meta information (ACR-NEMA style), so "
                           "nothing records who wrote it.", {}))
        return out
    ms_inst, sop_inst = _text(meta, "MediaStorageSOPInstanceUID"), _text(ds, "SOPInstanceUID")
    if ms_inst and sop_inst and ms_inst != sop_inst:
        out.append(Finding("file_meta_sop_instance_mismatch", "high",
                           "The file meta MediaStorageSOPInstanceUID differs from the data set's SOPInstanceUID "
                           "(the data set was changed after the file meta was written).",
                           {"media_storage_sop_instance_uid": ms_inst, "sop_instance_uid": sop_inst}))
    ms_class, sop_class = _text(meta, "MediaStorageSOPClassUID"), _text(ds, "SOPClassUID")
    if ms_class and sop_class and ms_class != sop_class:
        out.append(Finding("file_meta_sop_class_mismatch", "high",
                           "The file meta MediaStorageSOPClassUID differs from the data set's SOPClassUID.",
                           {"media_storage_sop_class_uid": ms_class, "sop_class_uid": sop_class}))
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if ts is not None and implicit is not None:
        ts = UID(str(ts))
        try:
            want = (ts.is_implicit_VR, ts.is_little_endian)
        except Exception:
            want = None
        if want is not None and ts != "1.2.840.10008.1.2.1.99" and (bool(implicit), bool(little)) != want:
            encoding_notes = encoding_notes + [
                f"data set encoded as {'implicit' if implicit else 'explicit'} VR "
                f"{'little' if little else 'big'} endian"]
    if encoding_notes:
        out.append(Finding("transfer_syntax_encoding_mismatch", "high",
                           f"The data set is not encoded the way its transfer syntax {_text(meta, 'TransferSyntaxUID')} "
                           "says.", {"details": encoding_notes[:3]}))
    return out


def _toolkits(ds: Dataset) -> list[Finding]:
    out: list[Finding] = []
    manufacturer = _text(ds, "Manufacturer")
    sop_uid = _text(ds, "SOPInstanceUID")
    kit = toolkit_of_uid(sop_uid)
    if kit is not None:
        vendor = is_scanner_vendor(manufacturer)
        message = (f"The SOPInstanceUID was generated by {kit}, while the file claims the scanner vendor "
                   f"{manufacturer!r} made it." if vendor else
                   f"The SOPInstanceUID was generated by {kit}.")
        out.append(Finding("toolkit_sop_instance_uid", "medium" if vendor else "info", message,
                           {"toolkit": kit, "sop_instance_uid": sop_uid, "manufacturer": manufacturer}))
        series_uid = _text(ds, "SeriesInstanceUID")
        series_kit = toolkit_of_uid(series_uid)
        if vendor and kit in SCRIPTING_TOOLKITS and series_uid and series_kit != kit:
            out.append(Finding(
                "sop_uid_reissued_by_toolkit", "medium",
                f"Only this instance's identity is new: its SOPInstanceUID was generated by {kit}, but the "
                f"SeriesInstanceUID of the same file ({series_uid}) was not"
                + (f" (it carries {series_kit}'s root)" if series_kit else " (it carries another root)")
                + f" and the file claims the scanner vendor {manufacturer!r}. An anonymiser re-identifies a "
                "whole series with one root; a script that edits a slice and saves it as a new instance "
                "leaves exactly this.",
                {"toolkit": kit, "sop_instance_uid": sop_uid, "series_instance_uid": series_uid,
                 "series_uid_toolkit": series_kit, "manufacturer": manufacturer}))
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        impl = _text(meta, "ImplementationClassUID")
        version = _text(meta, "ImplementationVersionName")
        kit = toolkit_of_uid(impl) or toolkit_of_version_name(version)
        if kit is not None:
            out.append(Finding("toolkit_implementation_class", "low" if kit in SCRIPTING_TOOLKITS else "info",
                               f"The file was last written by {kit} (implementation class {impl or '—'}, "
                               f"version {version or '—'}), not by the device that made it.",
                               {"toolkit": kit, "implementation_class_uid": impl,
                                "implementation_version_name": version}))
    return out


# ---------------------------------------------------------------- pixel statistics


def _rescale(ds: Dataset) -> tuple[float, float] | None:
    slope, intercept = _num(ds.get("RescaleSlope")), _num(ds.get("RescaleIntercept"))
    if slope is None or intercept is None:
        try:
            item = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
            slope, intercept = _num(item.get("RescaleSlope")), _num(item.get("RescaleIntercept"))
        except Exception:
            return None
    if slope is None or intercept is None:
        return None
    return slope, intercept


def pixel_statistics(ds: Dataset) -> dict[str, Any] | None:
    """Statistics of the first frame of a grey image (``None`` for colour / no pixel data).

    ``noise``: robust noise floor — RMS of the second difference along rows (clipped at ±3 robust
    σ from 1.4826·MAD, so edges do not count), over every k-th row (≈128 rows), divided by √6,
    ignoring windows that touch the padding / minimum value; in rescaled units (HU for CT). ``vmin``/``vmax``: rescaled extremes excluding padding;
    ``p_low``/``p_high``: 0.5 / 99.5 percentiles on a 2×-strided copy; ``bits_used``: bits the
    stored values need (sign included); ``padding_fraction``: share of pixels at the padding
    value (PixelPaddingValue, else the minimum stored value).
    """
    from pydicom.pixels import pixel_array

    if "PixelData" not in ds:
        return None
    spp = _int(ds, "SamplesPerPixel") or 1
    rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    if spp != 1 or _text(ds, "PhotometricInterpretation").upper() == "PALETTE COLOR":
        return None
    if rows * cols <= 0 or rows * cols > MAX_STAT_PIXELS:
        return None
    frames = _int(ds, "NumberOfFrames") or 1
    raw = pixel_array(ds, index=0) if frames > 1 else pixel_array(ds)
    raw = np.asarray(raw)
    if raw.ndim != 2:
        return None
    smin, smax = int(raw.min()), int(raw.max())
    pad = _int(ds, "PixelPaddingValue")
    alloc, rep = _int(ds, "BitsAllocated") or 16, _int(ds, "PixelRepresentation") or 0
    if pad is not None and rep == 1 and pad >= 1 << (alloc - 1):
        pad -= 1 << alloc  # written as the unsigned bit pattern (e.g. GE's 63536 for -2000)
    elif pad is not None and rep == 0 and pad < 0:
        pad += 1 << alloc
    pad_value = pad if pad is not None else smin
    valid = raw != pad_value
    if smax >= 0:
        bits_used = max(smax.bit_length(), (-smin - 1).bit_length() if smin < 0 else 0) + (1 if smin < 0 else 0)
    else:
        bits_used = (-smin - 1).bit_length() + 1
    beyond = _bits_beyond_stored(ds, rows * cols)
    params = _rescale(ds)
    slope, intercept = params if params is not None else (1.0, 0.0)
    step = max(1, rows // 128)
    sub, vsub = raw[::step].astype(np.float64) * slope + intercept, valid[::step]
    d2 = sub[:, :-2] - 2 * sub[:, 1:-1] + sub[:, 2:]
    ok = vsub[:, :-2] & vsub[:, 1:-1] & vsub[:, 2:]
    d = d2[ok]
    noise = None
    if d.size >= 64:
        # MAD of integer data is quantised; a clipped RMS around the median (±3 robust σ, at least
        # ±3 stored steps) is continuous and as robust to edges
        centre = float(np.median(d))
        quantum = abs(params[0]) if params is not None else 1.0
        spread = max(1.4826 * float(np.median(np.abs(d - centre))), quantum)
        inside = d[np.abs(d - centre) <= 3 * spread]
        noise = float(np.sqrt(np.mean((inside - centre) ** 2)) / np.sqrt(6.0)) if inside.size else None
    # extremes of the non-padding values, in stored units, then rescaled (monotone unless slope < 0)
    any_valid = bool(valid.any())
    lo = float(np.min(raw, where=valid, initial=np.iinfo(raw.dtype).max if raw.dtype.kind in "iu" else np.inf))
    hi = float(np.max(raw, where=valid, initial=np.iinfo(raw.dtype).min if raw.dtype.kind in "iu" else -np.inf))
    ext = sorted((lo * slope + intercept, hi * slope + intercept))
    strided = raw[::2, ::2][valid[::2, ::2]].astype(np.float64) * slope + intercept
    p_low, p_high = (np.percentile(strided, [0.5, 99.5]).tolist() if strided.size else (None, None))
    kept_min, kept_max = (ext[0], ext[1]) if any_valid else (None, None)
    return {
        "noise": noise,
        "vmin": kept_min,
        "vmax": kept_max,
        "p_low": p_low,
        "p_high": p_high,
        "stored_min": smin,
        "stored_max": smax,
        "bits_used": int(bits_used),
        "padding_fraction": float(1.0 - valid.mean()),
        "rescaled": params is not None,
        "beyond_bits_stored": beyond,
    }


def _bits_beyond_stored(ds: Dataset, n: int) -> tuple[int, int] | None:
    """(min, max) of the first frame's stored values read WITHOUT masking to BitsStored, when
    some fall outside the BitsStored range (pydicom masks them away), else ``None``.

    Only for native (uncompressed) 8/16/32-bit grey data.
    """
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(meta.TransferSyntaxUID)) if meta is not None and meta.get("TransferSyntaxUID") else None
    alloc, stored, rep = _int(ds, "BitsAllocated"), _int(ds, "BitsStored"), _int(ds, "PixelRepresentation") or 0
    if ts is None or ts.is_encapsulated or ts == "1.2.840.10008.1.2.1.99" or alloc not in (8, 16, 32):
        return None
    if not stored or stored >= alloc:
        return None
    data = ds.PixelData
    size = alloc // 8
    if len(data) < n * size:
        return None
    dtype = np.dtype(f"{'<' if ts.is_little_endian else '>'}{'i' if rep == 1 else 'u'}{size}")
    arr = np.frombuffer(data, dtype=dtype, count=n).astype(np.int64)
    lo, hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if rep == 1 else (0, (1 << stored) - 1)
    amin, amax = int(arr.min()), int(arr.max())
    return (amin, amax) if amin < lo or amax > hi else None


def _pixel_rules(ds: Dataset, stats: dict[str, Any], sop_class: str) -> list[Finding]:
    out: list[Finding] = []
    stored, rep = _int(ds, "BitsStored"), _int(ds, "PixelRepresentation") or 0
    if stored and stats.get("beyond_bits_stored"):
        lo, hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if rep == 1 else (0, (1 << stored) - 1)
        smin, smax = stats["beyond_bits_stored"]
        out.append(Finding("pixel_values_exceed_bits_stored", "medium",
                           f"Stored pixel values {smin}…{smax} do not fit BitsStored {stored} (range {lo}…{hi}): "
                           "the pixels were written by something that ignored the header.",
                           {"stored_min": smin, "stored_max": smax, "bits_stored": stored,
                            "pixel_representation": rep}))
    modality = _text(ds, "Modality").upper()
    image_type = _text(ds, "ImageType").upper()
    is_sc = sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or modality in ("OT", "SC")
    acquisition_like = (
        stats["rescaled"] and stats["p_low"] is not None and stats["p_high"] is not None
        and -1200 <= stats["p_low"] <= -700 and stats["p_high"] >= 100
        and stats["noise"] is not None and stats["noise"] >= 2.0
    )
    if is_sc and acquisition_like:
        out.append(Finding("secondary_capture_with_acquisition_pixels", "high",
                           "A secondary-capture / derived object holds pixels that look acquired by a CT "
                           "scanner (calibrated HU from air to tissue with a scanner noise floor).",
                           {"sop_class": sop_class, "modality": modality, "image_type": image_type,
                            "p_low": stats["p_low"], "p_high": stats["p_high"], "noise": stats["noise"]}))
    return out


# ---------------------------------------------------------------- the instance


#: Header values that are normally the same for every instance of a series (compared by the
#: series rules).
CONSTANT_TAGS = ("Manufacturer", "ManufacturerModelName", "SoftwareVersions", "StationName",
                 "DeviceSerialNumber", "InstitutionName", "Modality", "SOPClassUID", "StudyInstanceUID",
                 "FrameOfReferenceUID", "ConvolutionKernel", "KVP", "MagneticFieldStrength")
CONSTANT_META_TAGS = ("ImplementationClassUID", "ImplementationVersionName", "SourceApplicationEntityTitle",
                      "TransferSyntaxUID")


def _facts(ds: Dataset, stats: dict[str, Any] | None) -> dict[str, Any]:
    meta = getattr(ds, "file_meta", None)
    constant = {k: _text(ds, k) for k in CONSTANT_TAGS}
    if meta is not None:
        constant.update({k: _text(meta, k) for k in CONSTANT_META_TAGS})
    return {
        "position": _floats(ds, "ImagePositionPatient", 3),
        "orientation": _floats(ds, "ImageOrientationPatient", 6),
        "geometry": {
            "Rows": _int(ds, "Rows"), "Columns": _int(ds, "Columns"),
            "PixelSpacing": tuple(round(v, 4) for v in (_floats(ds, "PixelSpacing", 2) or [])) or None,
            "BitsAllocated": _int(ds, "BitsAllocated"), "BitsStored": _int(ds, "BitsStored"),
            "PixelRepresentation": _int(ds, "PixelRepresentation"),
            "SamplesPerPixel": _int(ds, "SamplesPerPixel"),
            "PhotometricInterpretation": _text(ds, "PhotometricInterpretation") or None,
            "ImageOrientationPatient": tuple(round(v, 3) for v in (_floats(ds, "ImageOrientationPatient", 6) or []))
            or None,
            "PixelPaddingValue": _int(ds, "PixelPaddingValue"),
        },
        "instance_number": _int(ds, "InstanceNumber"),
        "times": {k: _text(ds, k) for k in ("AcquisitionTime", "ContentTime")},
        "constant": constant,
        "stats": stats,
    }


def inspect_dataset(ds: Dataset, path: str, *, magic: bool = True, encoding_notes: list[str] | None = None,
                    pixels: bool = True) -> InstanceReport:
    """Per-instance rules on an already-read data set (pixel rules only if ``pixels`` and present)."""
    sop_class = _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", Dataset()), "MediaStorageSOPClassUID")
    report = InstanceReport(path=path, sop_instance_uid=_text(ds, "SOPInstanceUID") or None,
                            series_instance_uid=_text(ds, "SeriesInstanceUID") or None,
                            modality=_text(ds, "Modality") or None)
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(meta.TransferSyntaxUID)) if meta is not None and meta.get("TransferSyntaxUID") else None
    rules = [
        lambda: _required(ds, sop_class),
        lambda: _implausible(ds, sop_class),
        lambda: _bits(ds),
        lambda: _file_meta(ds, magic, encoding_notes or []),
        lambda: _toolkits(ds),
        lambda: _pixel_data_structure(ds, ts) if pixels else [],
    ]
    for rule in rules:
        try:
            report.findings.extend(rule())
        except Exception as exc:  # a rule tripping over a malformed value is itself evidence
            report.findings.append(_malformed(exc))
    stats = None
    if pixels and "PixelData" in ds:
        try:
            stats = pixel_statistics(ds)
        except Exception as exc:
            report.findings.append(Finding(
                "pixel_data_undecodable", "medium",
                f"The pixel data cannot be decoded as the header describes it: {exc}.",
                {"error": f"{type(exc).__name__}: {exc}"}))
        if stats is not None:
            try:
                report.findings.extend(_pixel_rules(ds, stats, sop_class))
            except Exception as exc:
                report.findings.append(_malformed(exc))
    try:
        report.facts = _facts(ds, stats)
    except Exception as exc:
        report.findings.append(_malformed(exc))
        report.facts = {}
    report.findings = [Finding(f.code, f.severity, f.message, f.evidence, "instance", path) for f in report.findings]
    return report


def _malformed(exc: Exception) -> Finding:
    return Finding("malformed_attribute", "medium",
                   f"An attribute cannot be interpreted: {type(exc).__name__}: {exc}.",
                   {"error": f"{type(exc).__name__}: {exc}"})


def inspect_instance(path: str | Path, *, pixels: bool = True) -> InstanceReport:
    """Header forensics of one file; never raises (except KeyboardInterrupt / MemoryError).

    ``pixels=False`` reads the header only (``stop_before_pixels``) and skips the pixel rules.
    """
    p = Path(path)
    try:
        ds, magic, notes = read_header(p, pixels=pixels)
    except UnreadableImageError as exc:
        return _unreadable(p, exc.reason if hasattr(exc, "reason") else str(exc))
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        return _unreadable(p, f"{type(exc).__name__}: {exc}")
    meta = getattr(ds, "file_meta", None)
    if not any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "PixelData", "Rows")) and not (
            meta is not None and meta.get("MediaStorageSOPClassUID")):
        return _unreadable(p, "the DICOM file holds no data set (no SOP class or instance, no image)")
    return inspect_dataset(ds, str(p), magic=magic, encoding_notes=notes, pixels=pixels)


def _unreadable(path: Path, reason: str) -> InstanceReport:
    report = InstanceReport(path=str(path), error=reason)
    report.findings.append(Finding("unreadable_header", "high",
                                   f"The DICOM header cannot be read: {reason}.", {"reason": reason},
                                   "instance", str(path)))
    return report
