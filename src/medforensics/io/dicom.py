"""DICOM reader (pydicom 3 + pylibjpeg plugins).

Pipeline per frame: decode (``pydicom.pixels.pixel_array``; compressed transfer syntaxes via
the pylibjpeg plugins; YBR_FULL/YBR_FULL_422/YBR_ICT/YBR_RCT come back as RGB) →
palette colour through ``apply_color_lut`` → for grey data the modality LUT or rescale
slope/intercept (top level, else the enhanced Pixel Value Transformation functional group,
per frame) → :mod:`.intensity` (CT in HU → CT window; MR → percentile/z-score; others →
VOI window, else VOI LUT table, else bit range / min–max) → MONOCHROME1 inverted
(``1 - x``) so that high = bright.

Files with the ``DICM`` magic at byte 128 are read normally; a file without it is read with
``force=True`` only when it starts like a raw (ACR-NEMA style) data set, and must then carry
pixel data. Non-image objects (no pixel data, or SEG/RTDOSE/… modalities) are rejected.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from .budget import FLOAT32, FLOAT64, DecodeCost, current_budget, human_bytes, shape_text
from .intensity import IntensityConfig, canonical_modality, normalise_stack, pools_frames
from .raster import MAX_TOTAL_PIXELS, check_frame_size, check_total_size
from .files import open_regular
from .types import ImageMeta, MedImage, UnreadableImageError, reraise_fatal

Select = Callable[[int], list[int]]

#: DICOM (0008,0060) Modality → project modality; anything else (OT, SC, NM, PT, XC…) → None.
MODALITY_MAP = {
    "CT": "ct",
    "MR": "mri",
    "CR": "xray",
    "DX": "xray",
    "DR": "xray",
    "MG": "xray",
    "RG": "xray",
    "RF": "xray",
    "XA": "xray",
    "PX": "xray",
    "IO": "xray",
    "US": "ultrasound",
    "IVUS": "ultrasound",
    "ES": "endoscopy",
    "SM": "histopathology",
    "GM": "histopathology",
}
#: Modalities whose pixel data (if any) is not an image to scan.
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "KO", "PR", "REG", "FID", "ECG", "HD", "AU", "DOC"}
)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")


def has_dicm_magic(head: bytes) -> bool:
    """True when ``head`` (the first 132+ bytes of a file) has ``DICM`` at offset 128."""
    return head[128:132] == b"DICM"


def looks_like_raw_dicom(head: bytes) -> bool:
    """Heuristic for preamble-less (ACR-NEMA style) files: first tag in group 0002 or 0008."""
    if len(head) < 8:
        return False
    group_le, elem_le = struct.unpack("<HH", head[:4])
    group_be = struct.unpack(">H", head[:2])[0]
    return (group_le in (0x0002, 0x0008) and elem_le < 0x0100) or group_be == 0x0008


def map_modality(dicom_modality: str | None) -> str | None:
    """Project modality for a DICOM Modality value (``None`` when unmapped)."""
    return MODALITY_MAP.get((dicom_modality or "").strip().upper())


def _set_transfer_syntax(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit:
        ts = ImplicitVRLittleEndian
    else:
        ts = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts


_DEFLATE_HEADER_BYTES = 1 << 20  # inflated bytes kept to read a deflated file's header


def _deflated_start(path: Path) -> int | None:
    """Offset of the deflated data set when ``path`` uses Deflated Explicit VR LE, else None."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        with open_regular(path) as fp:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
            start = fp.tell()
    except Exception:  # unreadable meta: dcmread reports it
        return None
    ts = meta.get("TransferSyntaxUID")
    return start if ts is not None and UID(str(ts)) == DeflatedExplicitVRLittleEndian else None


def _inflated_header(prefix: bytes) -> Dataset | None:
    """The elements before the pixel data in the first inflated bytes (None if unreadable)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset as read_raw_dataset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_raw_dataset(
                DicomBytesIO(prefix), is_implicit_VR=False, is_little_endian=True,
                stop_when=lambda tag, vr, length: tag >= 0x7FE00008,
            )
    except Exception:
        return None


def _check_deflated(path: Path, start: int, budget: int) -> None:
    """Inflate a deflated data set in a stream (nothing kept but its header) and check the budget.

    pydicom inflates the whole data set into memory and then copies each element out of it,
    so reading it holds about twice the inflated size; the pixel decode comes on top of that
    (estimated from the header, as for any DICOM). Inflation stops as soon as the budget is
    passed, so a deflate bomb costs at most ``budget`` bytes of CPU work and no memory.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    prefix = bytearray()
    total = 0
    limit = budget // 2 + 1
    try:
        with open_regular(path) as fh:
            fh.seek(start)
            while total <= limit:
                chunk = fh.read(1 << 16)
                data = inflater.decompress(chunk, 1 << 20) if chunk else inflater.flush()
                while True:
                    total += len(data)
                    if len(prefix) < _DEFLATE_HEADER_BYTES:
                        prefix += data[: _DEFLATE_HEADER_BYTES - len(prefix)]
                    if total > limit or not inflater.unconsumed_tail:
                        break
                    data = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
                if not chunk or inflater.eof:
                    break
    except zlib.error as exc:
        raise UnreadableImageError(path, f"corrupt deflated DICOM data: {exc}") from exc
    header = _inflated_header(bytes(prefix))
    dims = _header_dims(header) if header is not None else None
    what = "deflated data set"
    if dims is not None:
        n, rows, cols, spp, bits = dims
        what += f" ({shape_text(n, rows, cols, spp)}, {bits}-bit)"
    if total > limit:
        cost = DecodeCost(f"{what} inflating to more than {human_bytes(limit)}")
        cost.add("inflated data set, read twice by pydicom", 2 * total)
        cost.check(path, budget)
    if header is not None and dims is not None:
        estimate = _decode_cost(header, path, dims, None, list(range(dims[0])), modality=None, config=None)
        estimate.what = f"{what}, inflated {human_bytes(total)}, decoded as {estimate.what}"
        estimate.parts["encoded pixel data"] = 2 * total
        estimate.check(path, budget)


def read_dataset(path: Path, *, stop_before_pixels: bool = False, budget: int | None = None) -> Dataset:
    """Read a DICOM data set, raising ``UnreadableImageError`` with a specific reason.

    A deflated data set is checked against the decode ``budget`` (default: the module budget)
    before pydicom inflates it.
    """
    try:
        with open_regular(path) as fh:
            head = fh.read(132)
    except OSError as exc:
        raise UnreadableImageError(path, f"cannot open file: {exc.strerror or exc}") from exc
    magic = has_dicm_magic(head)
    if not magic and not looks_like_raw_dicom(head):
        raise UnreadableImageError(path, "not a DICOM file (no DICM preamble and no DICOM header)")
    if magic:
        start = _deflated_start(path)
        if start is not None:
            _check_deflated(path, start, current_budget(budget))
    try:
        with warnings.catch_warnings(record=True) as caught, open_regular(path) as fh:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(fh, force=not magic, stop_before_pixels=stop_before_pixels)
    except UnreadableImageError:
        raise
    except Exception as exc:  # pydicom raises many types for corrupt headers
        what = "corrupt DICOM header" if magic else "not a DICOM file"
        raise UnreadableImageError(path, f"{what}: {exc}") from exc
    for w in caught:
        text = str(w.message)
        if "end of file" in text.lower() or "truncat" in text.lower():
            raise UnreadableImageError(path, f"truncated DICOM file: {text}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not magic and (len(ds) == 0 or not any(k in ds for k in PIXEL_KEYWORDS) or "Rows" not in ds):
        raise UnreadableImageError(path, "not a DICOM file (no DICM preamble and no image pixel data)")
    _set_transfer_syntax(ds)
    return ds


def series_key(path: Path) -> tuple[str, float] | None:
    """(SeriesInstanceUID, InstanceNumber) from the header of a file with the DICM magic.

    Cheap: reads only two tags. ``None`` for non-DICOM or unreadable files; a missing
    instance number sorts last (``inf``).
    """
    try:
        with open_regular(path) as fh:
            if not has_dicm_magic(fh.read(132)):
                return None
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(
                    fh, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "InstanceNumber"]
                )
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        num = ds.get("InstanceNumber", None)
        return uid, float(int(num)) if num not in (None, "") else float("inf")
    except Exception:
        return None


def _sop_class(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
    if not uid:
        return "unknown"
    uid = UID(str(uid))
    return f"{uid.name}" if uid.name != str(uid) else str(uid)


def _fg_item(ds: Dataset, seq: str, index: int) -> Dataset | None:
    """First item of functional-group ``seq`` for frame ``index`` (per-frame, else shared)."""
    groups: list[Any] = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(seq)
        if items:
            return items[0]
    return None


def slice_position(ds: Dataset, index: int) -> float | None:
    """Position (mm) of frame ``index`` along the slice normal: ImagePositionPatient · (row × column
    direction of ImageOrientationPatient), per-frame functional groups first; None when not given."""
    plane = _fg_item(ds, "PlanePositionSequence", index)
    orient = _fg_item(ds, "PlaneOrientationSequence", index)
    ipp = (plane.get("ImagePositionPatient") if plane is not None else None) or ds.get("ImagePositionPatient")
    iop = (orient.get("ImageOrientationPatient") if orient is not None else None) or ds.get("ImageOrientationPatient")
    try:
        pos = np.asarray([float(v) for v in ipp], dtype=np.float64)
        if pos.shape != (3,) or not np.isfinite(pos).all():
            return None
        if iop is not None and len(iop) == 6:
            d = np.asarray([float(v) for v in iop], dtype=np.float64)
            normal = np.cross(d[:3], d[3:])
            if np.isfinite(normal).all() and np.linalg.norm(normal) > 1e-6:
                return float(pos @ (normal / np.linalg.norm(normal)))
        return float(pos[2])  # no orientation: the patient z axis
    except (TypeError, ValueError):
        return None


def _rescale(ds: Dataset, index: int) -> tuple[float, float] | None:
    src: Dataset | None = ds if ("RescaleSlope" in ds or "RescaleIntercept" in ds) else None
    src = src or _fg_item(ds, "PixelValueTransformationSequence", index)
    if src is None:
        return None
    slope = src.get("RescaleSlope", None)
    intercept = src.get("RescaleIntercept", None)
    slope = float(slope) if slope not in (None, "") else 1.0
    intercept = float(intercept) if intercept not in (None, "") else 0.0
    return slope, intercept


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0]) if len(value) else None
    return float(value)


def _window(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    src: Dataset | None = ds if ("WindowCenter" in ds and "WindowWidth" in ds) else None
    src = src or _fg_item(ds, "FrameVOILUTSequence", index)
    if src is None:
        return None
    try:
        center, width = _first(src.get("WindowCenter")), _first(src.get("WindowWidth"))
    except (TypeError, ValueError):
        return None
    if center is None or width is None or not np.isfinite([center, width]).all():
        return None
    func = str(src.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    func = func if func in ("LINEAR_EXACT", "SIGMOID") else "LINEAR"  # unknown → default LINEAR
    if width <= 0 or (func == "LINEAR" and width < 1):
        return None
    return center, width, func


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    measures = _fg_item(ds, "PixelMeasuresSequence", 0)
    candidates = [
        ("PixelSpacing", ds.get("PixelSpacing")),
        ("PixelMeasuresSequence", measures.get("PixelSpacing") if measures is not None else None),
        ("ImagerPixelSpacing", ds.get("ImagerPixelSpacing")),
    ]
    for name, value in candidates:
        try:
            if value is not None and len(value) == 2 and float(value[0]) > 0 and float(value[1]) > 0:
                return (float(value[0]), float(value[1])), name
        except (TypeError, ValueError):
            continue
    return None, None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword, None)
    if value is None:
        return None
    return str(value).strip() or None


def _check_decoder(path: Path, ds: Dataset) -> UID:
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise UnreadableImageError(
            path, f"unsupported transfer syntax {ts.name} ({ts}): no decoder available"
        ) from exc
    if not decoder.is_available:
        missing = ", ".join(getattr(decoder, "missing_dependencies", []))
        raise UnreadableImageError(
            path, f"unsupported transfer syntax {ts.name} ({ts}): no decoder plugin installed ({missing})"
        )
    return ts


def _decode(ds: Dataset, indices: list[int], n: int) -> list[np.ndarray]:
    if n == 1:
        return [pixel_array(ds)]
    if indices == list(range(n)):
        return list(pixel_array(ds))
    return [pixel_array(ds, index=i) for i in indices]


def _grey_values(ds: Dataset, frame: np.ndarray, index: int, bits: int) -> tuple[np.ndarray, int, str]:
    """Modality LUT or rescale for one grey frame → (values, bit depth, description)."""
    if ds.get("ModalityLUTSequence"):
        out = apply_modality_lut(frame, ds)
        return out, int(ds.ModalityLUTSequence[0].LUTDescriptor[2]), "modality LUT"
    params = _rescale(ds, index)
    if params is not None and params != (1.0, 0.0):
        slope, intercept = params
        return frame.astype(np.float64) * slope + intercept, bits, f"rescale ×{slope:g} {intercept:+g}"
    return frame, bits, ""


def _frame_values(
    ds: Dataset, indices: list[int], raw: list[np.ndarray], photometric: str, spp: int, bits: int
) -> tuple[list[np.ndarray], list[str], str, int]:
    """Palette lookup / modality LUT per frame → (values, notes, intensity kind, bit depth)."""
    if photometric == "PALETTE COLOR":
        rgbs = [apply_color_lut(frame, ds) for frame in raw]
        depth = 8 if rgbs and rgbs[0].dtype == np.uint8 else 16
        return rgbs, ["palette colour LUT"] * len(rgbs), "display", depth
    if spp == 3:  # RGB, or YBR already converted to RGB by pydicom / the JPEG decoders
        return list(raw), [""] * len(raw), "display", bits
    values, notes, depth = [], [], bits
    for i, frame in zip(indices, raw):
        vals, depth, note = _grey_values(ds, frame, i, bits)
        values.append(vals)
        notes.append(note)
    return values, notes, "dicom", depth


def _header_dims(ds: Dataset) -> tuple[int, int, int, int, int] | None:
    """(frames, rows, columns, samples per pixel, bits allocated) from the header, or None."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        n = int(ds.get("NumberOfFrames") or 1)
        spp = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 8)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    if min(rows, cols, n, spp, bits) <= 0:
        return None
    return n, rows, cols, spp, bits


def _decode_cost(
    ds: Dataset,
    path: Path,
    dims: tuple[int, int, int, int, int],
    encoded: int | None,
    decode: list[int],
    *,
    modality: str | None,
    config: IntensityConfig | None,
) -> DecodeCost:
    """Peak bytes of :func:`read_dicom` decoding frames ``decode`` (see :mod:`.budget`).

    Decoded array: frames × rows × columns × samples × the decoder's dtype (BitsAllocated
    rounded up to 1/2/4/8 bytes; float pixel data 4/8). Then, for the decoded frames: palette
    → RGB of the LUT's dtype; YBR → RGB conversion temporaries; rescale / modality LUT →
    float64; pooled MRI statistics → a stacked copy, a sorted copy and the float64 scaling
    copy of the volume, else one frame's float64 working copy at a time; float32 frames out
    (twice for MONOCHROME1, which is inverted into a new array).
    """
    n, rows, cols, spp, bits = dims
    item = 1 if bits <= 8 else 2 if bits <= 16 else 4 if bits <= 32 else 8
    if "DoubleFloatPixelData" in ds:
        item = 8
    elif "FloatPixelData" in ds:
        item = 4
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    palette = photometric == "PALETTE COLOR"
    k = len(decode)
    out_spp = 3 if palette else spp
    frame_values = rows * cols * out_spp
    values = k * frame_values
    cost = DecodeCost(shape_text(k, rows, cols, spp, f"{bits}-bit"))
    if encoded:
        cost.add("encoded pixel data", encoded)
    cost.add("decoded array", k * rows * cols * spp * item)
    if k > 1 and k < n:
        cost.add("one frame decoded at a time", rows * cols * spp * item)
    value_item = item
    if palette:
        value_item = 2
        cost.add("palette RGB", values * value_item)
    elif spp == 3 and photometric.startswith("YBR"):
        cost.add("YBR → RGB conversion", frame_values * 2 * FLOAT32)
    elif spp == 1 and (ds.get("ModalityLUTSequence") or ds.get("RescaleSlope") not in (None, "", 1)
                       or ds.get("RescaleIntercept") not in (None, "", 0)
                       or ds.get("PerFrameFunctionalGroupsSequence") or ds.get("SharedFunctionalGroupsSequence")):
        value_item = FLOAT64
        cost.add("rescaled float64 values", values * FLOAT64)
    project = canonical_modality(modality) if modality is not None else map_modality(_text(ds, "Modality"))
    pooled = (not palette and spp == 1 and config is not None and pools_frames(project, kind="dicom", config=config))
    if pooled:
        cost.add("volume statistics (stack, sorted copy, float64 copy)", values * (2 * value_item + FLOAT64))
    else:  # VOI windowing makes two float64 temporaries, the plain scaling one (in place)
        windowed = "WindowCenter" in ds or ds.get("VOILUTSequence") or ds.get("SharedFunctionalGroupsSequence")
        cost.add("float64 working copies of one frame", frame_values * (2 if windowed else 1) * FLOAT64)
    cost.add("float32 frames", values * FLOAT32 * (2 if photometric == "MONOCHROME1" else 1))
    return cost


def _j2k_size(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG 2000 codestream's SIZ marker (JP2 boxes skipped)."""
    offset = 0
    if data.startswith(b"\x00\x00\x00\x0cjP  "):
        offset = 12
        while offset + 8 <= len(data):
            length = int.from_bytes(data[offset : offset + 4], "big")
            if data[offset + 4 : offset + 8] == b"jp2c":
                offset += 8
                break
            if length < 8:
                return None
            offset += length
    if data[offset : offset + 4] != b"\xff\x4f\xff\x51" or len(data) < offset + 42:
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, offset + 8)
    comps = struct.unpack_from(">H", data, offset + 40)[0]
    return max(0, ysiz - yo), max(0, xsiz - xo), comps


def _codestream_size(ts: UID, data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) a JPEG / JPEG-LS / JPEG 2000 frame declares, or None."""
    if "JPEG 2000" in ts.name or "HTJ2K" in ts.name:
        return _j2k_size(data)
    if "JPEG" in ts.name:
        try:
            from pydicom.pixels.utils import _get_jpg_parameters

            info = _get_jpg_parameters(data)
        except Exception:
            return None
        if "height" in info and "width" in info:
            return int(info["height"]), int(info["width"]), int(info.get("components", 1))
    return None


def _check_codestreams(path: Path, ds: Dataset, ts: UID, decode: list[int], n: int, rows: int, cols: int, spp: int) -> None:
    """Refuse a JPEG-family frame whose own header declares more pixels than the DICOM header.

    The decoders allocate what the codestream declares before pydicom compares it with
    Rows × Columns, so a 3 KB file whose SOF says 20000×20000 would cost gigabytes.
    """
    if not ts.is_encapsulated or "JPEG" not in ts.name and "HTJ2K" not in ts.name:
        return
    wanted = set(decode)
    try:
        from pydicom.encaps import generate_fragmented_frames

        for i, fragments in enumerate(generate_fragmented_frames(ds.PixelData, number_of_frames=n)):
            if i > max(wanted):
                break
            if i not in wanted or not fragments:
                continue
            size = _codestream_size(ts, bytes(fragments[0][:65536]))
            if size is not None and size[0] * size[1] * max(size[2], 1) > rows * cols * spp:
                raise UnreadableImageError(
                    path,
                    f"corrupt {ts.name} data: frame {i} declares {size[1]}×{size[0]}×{size[2]}, "
                    f"more than the DICOM header's {cols}×{rows}×{spp}",
                )
    except UnreadableImageError:
        raise
    except Exception:  # unparsable fragments: the decoder reports them
        return


def read_dicom(
    path: Path, select: Select, modality: str | None, config: IntensityConfig, *, budget: int | None = None
) -> list[MedImage]:
    """Decode the selected frames of a DICOM file (see the module docstring).

    The decode is checked against the byte ``budget`` (default :data:`.budget.DECODE_BUDGET_BYTES`)
    from the header, before any pixel is decoded.
    """
    budget = current_budget(budget)
    ds = read_dataset(path, budget=budget)
    dicom_modality = _text(ds, "Modality")
    sop = _sop_class(ds)
    if not any(k in ds for k in PIXEL_KEYWORDS):
        hint = "; the file may be truncated" if "Image Storage" in sop or "Rows" in ds else ""
        raise UnreadableImageError(path, f"DICOM file has no pixel data (SOP class {sop}){hint}")
    if (dicom_modality or "").upper() in NON_IMAGE_MODALITIES:
        raise UnreadableImageError(path, f"non-image DICOM (Modality {dicom_modality}, SOP class {sop})")
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) in (None, "")]
    if missing:
        raise UnreadableImageError(path, f"incomplete DICOM image pixel module: missing {', '.join(missing)}")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        n = int(ds.get("NumberOfFrames") or 1)
        spp = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. NumberOfFrames "1e308"
        raise UnreadableImageError(path, f"invalid DICOM image pixel module: {exc}") from exc
    if not 1 <= n <= MAX_TOTAL_PIXELS:
        raise UnreadableImageError(path, f"invalid DICOM image pixel module: NumberOfFrames {n}")
    check_frame_size(path, rows, cols)
    indices = select(n)
    project = canonical_modality(modality) if modality is not None else map_modality(dicom_modality)
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    palette = photometric == "PALETTE COLOR"
    colour = palette or spp == 3
    pooled = not colour and pools_frames(project, kind="dicom", config=config)
    decode = list(range(n)) if pooled else indices
    check_total_size(path, len(decode), rows, cols, spp)
    ts = _check_decoder(path, ds)
    dims = (n, rows, cols, spp, int(ds.BitsAllocated))
    encoded = path.stat().st_size  # the pixel data pydicom holds (the file, or its inflated data set)
    if ts == DeflatedExplicitVRLittleEndian:
        encoded = max(encoded, n * rows * cols * spp * -(-dims[4] // 8))
    _decode_cost(ds, path, dims, encoded, decode, modality=modality, config=config).check(path, budget)
    _check_codestreams(path, ds, ts, decode, n, rows, cols, spp)
    try:
        raw = _decode(ds, decode, n)
        values, notes, kind, depth = _frame_values(ds, decode, raw, photometric, spp, bits)
        windows = None
        if kind == "dicom" and project not in ("ct", "mri"):
            windows = [_window(ds, i) for i in decode]
            if all(w is None for w in windows) and ds.get("VOILUTSequence") and all(v.dtype.kind in "iu" for v in values):
                values = [apply_voi(v, ds) for v in values]
                kind, depth, windows = "display", 8 if values[0].dtype == np.uint8 else 16, None
                notes = [f"{note}; VOI LUT table" if note else "VOI LUT table" for note in notes]
        pixels, descs = normalise_stack(values, project, kind=kind, bit_depth=depth, config=config, windows=windows)
    except UnreadableImageError:
        raise
    except MemoryError as exc:
        raise UnreadableImageError(path, f"out of memory decoding DICOM pixel data ({ts.name})") from exc
    except Exception as exc:  # decoders raise ValueError/RuntimeError/… for corrupt data
        text = str(exc) or type(exc).__name__
        if "less than expected" in text or "truncat" in text.lower():
            raise UnreadableImageError(path, f"truncated DICOM pixel data: {text}") from exc
        raise UnreadableImageError(path, f"cannot decode DICOM pixel data ({ts.name}): {text}") from exc
    except BaseException as exc:  # e.g. pyo3 PanicException from a Rust decoder (not an Exception)
        reraise_fatal(exc)
        raise UnreadableImageError(
            path, f"pixel decoder crashed ({ts.name}): {type(exc).__name__}: {str(exc) or 'no message'}"
        ) from exc

    spacing, spacing_src = _spacing(ds)
    shape = ((n,) if n > 1 else ()) + (rows, cols) + ((spp,) if spp > 1 else ())
    base_extra = {
        "transfer_syntax": ts.name,
        "transfer_syntax_uid": str(ts),
        "sop_class": sop,
        "instance_number": _text(ds, "InstanceNumber"),
        "pixel_spacing_source": spacing_src,
    }
    images: list[MedImage] = []
    keep = {i: k for k, i in enumerate(decode)}
    for i in indices:
        k = keep[i]
        out, desc = pixels[k], descs[k]
        if notes[k]:
            desc = f"{notes[k]}; {desc}"
        if photometric == "MONOCHROME1":
            out = 1.0 - out
            desc += "; inverted (MONOCHROME1)"
        meta = ImageMeta(
            path=str(path),
            source_format="dicom",
            modality=project,
            dicom_modality=dicom_modality,
            patient_id=_text(ds, "PatientID"),
            study_uid=_text(ds, "StudyInstanceUID"),
            series_uid=_text(ds, "SeriesInstanceUID"),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
            pixel_spacing=spacing,
            bit_depth=bits,
            photometric=photometric or None,
            frame_index=i if n > 1 else None,
            n_frames=n,
            original_shape=shape,
            intensity=desc,
            extra={**base_extra, "window": list(windows[k]) if windows and windows[k] else None,
                   "slice_position": slice_position(ds, i)},
        )
        images.append(MedImage(np.ascontiguousarray(out, dtype=np.float32), meta))
    return images
