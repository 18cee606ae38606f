"""Writing edited pixels back into a DICOM file, as an attacker's toolkit would.

The inverse of :mod:`.dicom`'s reader, used by the tampering tools (the 3-D series attacks of
:mod:`medforensics.synth.tamper3d` and the ``demo`` command's tampered copies):

* :func:`stored_range` / :func:`to_stored` — modality values → stored values (inverse rescale
  slope/intercept, rounded, clipped to the BitsStored range, the original dtype);
* :func:`encode_pixel_data` — put a stored array into a data set: a native (uncompressed) transfer
  syntax is kept (in its byte order and planar configuration); a compressed one is re-encoded with
  pydicom when it has a lossless encoder for it (RLE Lossless, JPEG 2000 Lossless, JPEG-LS
  Lossless), otherwise the pixels are written as Explicit VR Little Endian and the transfer syntax
  updated (a colour image that the decoder turned from YBR into RGB is then written as RGB, as
  :meth:`pydicom.dataset.Dataset.decompress` does);
* :func:`write_back_pixels` — one edited frame, as :func:`medforensics.io.load` returned it
  (float32 in [0, 1]), back into a copy of its file: the reader's intensity mapping (CT window,
  MRI percentiles / z-score, VOI window, bit range or min–max, MONOCHROME1 inversion, rescale) is
  inverted for the changed pixels only; every other stored value and every other header element is
  kept (palette colour: the index of the nearest palette colour). The copy is then read back through :func:`medforensics.io.load` and must give the same
  intensities as the original outside the edited pixels, else the copy is removed and
  :class:`WriteBackError` says why (e.g. the reader's per-image statistics moved).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from .intensity import IntensityConfig, canonical_modality, pools_frames
from .types import UnreadableImageError


class WriteBackError(ValueError):
    """The edited pixels cannot be written back into this file; the message says why."""


def stored_range(ds: Any, dtype: np.dtype) -> tuple[int, int]:
    """The stored values BitsStored / PixelRepresentation allow, within ``dtype``."""
    bits = int(ds.get("BitsStored", dtype.itemsize * 8) or dtype.itemsize * 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    info = np.iinfo(dtype)
    return max(lo, int(info.min)), min(hi, int(info.max))


def to_stored(values: np.ndarray, slope: float, intercept: float, ds: Any, dtype: np.dtype) -> np.ndarray:
    """Modality values → stored values: ``(v − intercept) / slope``, rounded, clipped, cast to ``dtype``."""
    lo, hi = stored_range(ds, np.dtype(dtype))
    vals = np.rint((np.asarray(values, dtype=np.float64) - intercept) / slope)
    return np.clip(vals, lo, hi).astype(dtype)


def _reencodable() -> set[str]:
    """Compressed transfer syntaxes pydicom can re-encode losslessly (when the encoder plug-in is installed)."""
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    return {str(RLELossless), str(JPEG2000Lossless), str(JPEGLSLossless)}


def _native_bytes(ds: Any, arr: np.ndarray, big_endian: bool) -> bytes:
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp > 1 and int(ds.get("PlanarConfiguration", 0) or 0) == 1:  # R-plane, G-plane, B-plane per frame
        arr = np.moveaxis(arr, -1, -3)
    if big_endian and arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder(">"))
    data = np.ascontiguousarray(arr).tobytes()
    return data + b"\x00" if len(data) % 2 else data


def encode_pixel_data(ds: Any, arr: np.ndarray, *, recompress: bool = True) -> str:
    """Put ``arr`` (the decoded stored values: frames × rows × columns [× samples]) into ``ds``
    keeping its transfer syntax where possible; returns the syntax written (module docstring)."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

    ts = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    if not ts.is_compressed:
        ds.PixelData = _native_bytes(ds, arr, big_endian=str(ts) == str(ExplicitVRBigEndian))
        return str(ts)
    if recompress and str(ts) in _reencodable():
        try:
            ds.compress(ts, arr, generate_instance_uid=False)
            return str(ts)
        except Exception:
            pass  # no encoder installed for it: fall back below
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp > 1:  # the decoders hand colour back as interleaved RGB
        if str(ds.get("PhotometricInterpretation", "")).upper().startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = _native_bytes(ds, arr, big_endian=False)
    ds["PixelData"].is_undefined_length = False
    ds["PixelData"].VR = "OW" if arr.dtype.itemsize > 1 else "OB"
    return str(ExplicitVRLittleEndian)


# --------------------------------------------------------------------------- one frame back into its file


def _inverse_window(v: np.ndarray, window: tuple[float, float, str]) -> np.ndarray:
    """Inverse of :func:`.intensity.apply_window` for values inside (0, 1)."""
    center, width, func = window
    if func == "SIGMOID":
        vv = np.clip(v, 1e-6, 1 - 1e-6)
        return center - width / 4.0 * np.log(1.0 / vv - 1.0)
    if func == "LINEAR_EXACT":
        return (v - 0.5) * width + center
    if width == 1:
        raise WriteBackError("the DICOM VOI window is a threshold (LINEAR, width 1): it cannot be inverted")
    return (v - 0.5) * (width - 1) + center - 0.5


@dataclass(frozen=True)
class _Bounds:
    """What an edit may do without moving the percentiles (or min / max) the reader scales by:
    replace values inside [a, b] by values inside [a, b], taking away at most ``spare_a`` values equal
    to ``a`` and ``spare_b`` equal to ``b`` — the lowest and highest order statistics the percentiles
    interpolate between then keep their values (ties included)."""

    a: float
    b: float
    spare_a: int
    spare_b: int


def _order_bounds(arr: np.ndarray, q_lo: float, q_hi: float) -> _Bounds:
    flat = np.sort(arr, axis=None)
    n = flat.size
    low = min(int(np.floor(q_lo / 100.0 * (n - 1))) + (2 if q_lo > 0 else 1), n)  # ranks 0..low-1 used
    high = n - int(np.floor(q_hi / 100.0 * (n - 1)))  # ranks n-high..n-1 used
    a, b = float(flat[low - 1]), float(flat[n - high])
    return _Bounds(a, b, int(np.count_nonzero(flat <= a)) - low, int(np.count_nonzero(flat >= b)) - high)


def _within(old: np.ndarray, bounds: _Bounds) -> np.ndarray:
    """Which of these values (in raster order) may be edited under ``bounds``."""
    ok = (old > bounds.a) & (old < bounds.b)
    for value, spare in ((bounds.a, bounds.spare_a), (bounds.b, bounds.spare_b)):
        idx = np.flatnonzero(old == value)[: max(spare, 0)]
        ok.flat[idx] = True
    return ok


def _grey_inverse(
    ds: Dataset, values: list[np.ndarray], k: int, project: str | None, bits: int, config: IntensityConfig,
) -> tuple[Any, _Bounds | None]:
    """Invert :func:`.intensity.normalise_stack` for frame ``k``: a function [0, 1] → modality values,
    and, when the mapping depends on statistics of the values (MRI percentiles, min–max), the open
    limits an edit must keep to leave those statistics as they are."""
    from .dicom import _window

    if project == "ct":
        lo, hi = config.ct_window
        return (lambda v: lo + v * (hi - lo)), None
    if project == "mri":
        pooled = pools_frames(project, kind="dicom", config=config)
        arr = np.stack(values).astype(np.float64) if pooled else values[k].astype(np.float64)
        if config.mri_method == "zscore":
            mean, std, c = float(arr.mean()), float(arr.std()), float(config.zscore_clip)
            return (lambda v: mean + std * (2.0 * c * v - c)), None  # mean / std move: the check reports it
        plo, phi = config.mri_percentiles
        lo, hi = (float(x) for x in np.percentile(arr, [plo, phi]))
        return (lambda v: lo + v * (hi - lo)), _order_bounds(arr, plo, phi)
    window = _window(ds, k)
    if window is None and ds.get("VOILUTSequence"):
        raise WriteBackError("the reader applies the file's VOI LUT table, which cannot be inverted")
    if window is not None:
        return (lambda v: _inverse_window(v, window)), None
    arr = values[k]
    if arr.dtype.kind in "iub" and bits <= 8:
        lo, hi = 0, 2**bits - 1
        amin, amax = (float(arr.min()), float(arr.max()))
        if amin < 0 and arr.dtype.kind == "i":
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if lo <= amin and amax <= hi:
            return (lambda v: lo + v * (hi - lo)), None
    lo, hi = float(arr.min()), float(arr.max())
    return (lambda v: lo + v * (hi - lo)), _order_bounds(arr, 0.0, 100.0)


def _nearest_palette_index(ds: Dataset, v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Stored indices whose palette colours (as the reader scales them) are nearest to ``v`` (m×3 in [0, 1])."""
    from pydicom.pixels import apply_color_lut
    from scipy.spatial import cKDTree

    lo, hi = stored_range(ds, np.dtype(dtype))
    if hi - lo >= 1 << 16:
        raise WriteBackError("palette colour with more than 16-bit indices is not supported for writing back")
    index = np.arange(lo, hi + 1).astype(dtype)
    try:
        colours = apply_color_lut(index, ds)
    except Exception as exc:
        raise WriteBackError(f"cannot read the palette colour lookup table: {exc}") from exc
    top = 255 if colours.dtype == np.uint8 else 65535  # the reader's bit range for palette output
    if int(colours.max()) > top:
        raise WriteBackError("palette colours outside their bit range (the reader min–max scales them)")
    _dist, nearest = cKDTree(colours.reshape(-1, 3).astype(np.float64) / top).query(np.asarray(v).reshape(-1, 3))
    return index[nearest]


def write_back_pixels(
    src: str | Path,
    pixels: np.ndarray,
    mask: np.ndarray,
    out: str | Path,
    *,
    frame: int | None = None,
    config: IntensityConfig | None = None,
    recompress: bool = True,
) -> dict[str, Any]:
    """Write the edited frame ``pixels`` (float32 in [0, 1], as ``load(src, frame=frame)`` gave it,
    edited where ``mask`` is True) into a copy of ``src`` at ``out`` (module docstring).

    ``frame``: the frame of a multi-frame file (default: the middle one, as :func:`~.walk.load`).
    Returns ``{"transfer_syntax", "transfer_syntax_in", "frame", "n_changed_stored", "n_kept",
    "max_diff_inside", "header_changes", "mask"}``: ``mask`` (bool, the frame's shape) marks the pixels
    written — the edited ones, less ``n_kept`` pixels left as they were because the reader's min–max or
    percentile statistics depend on them (their original value is an order statistic it uses, so
    changing it would shift every pixel's intensity). Raises :class:`WriteBackError` (nothing written) when the file's pixels
    cannot be written back: a modality LUT or VOI LUT table, float pixel data,
    subsampled YBR without a decoder round trip, an edit that rounds away, or a copy that the
    reader does not map to the original's intensities outside the edit.
    """
    import pydicom
    from pydicom.pixels import convert_color_space, pixel_array

    from .dicom import _frame_values, _rescale, map_modality, read_dataset
    from .walk import load

    src, out = Path(src), Path(out)
    config = config or IntensityConfig()
    ds = read_dataset(src)
    if "PixelData" not in ds:
        raise WriteBackError("no integer PixelData (float pixel data or none)")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    bits_alloc = int(ds.get("BitsAllocated", 0) or 0)
    bits = int(ds.get("BitsStored", 0) or bits_alloc)
    k = n // 2 if frame is None else (int(frame) + n if int(frame) < 0 else int(frame))
    if not 0 <= k < n:
        raise WriteBackError(f"frame {frame} out of range: the file has {n} frame(s)")
    if bits_alloc not in (8, 16, 32):
        raise WriteBackError(f"BitsAllocated {bits_alloc} is not supported for writing back")
    if spp == 1 and ds.get("ModalityLUTSequence"):
        raise WriteBackError("the reader applies the file's modality LUT, which cannot be inverted")
    ts_in = ds.file_meta.TransferSyntaxUID
    native_ybr = spp == 3 and photometric.startswith("YBR") and not ts_in.is_compressed
    if native_ybr and photometric != "YBR_FULL":
        raise WriteBackError(f"uncompressed {photometric} (chroma-subsampled) cannot be written back pixel by pixel")
    try:
        decoded = pixel_array(ds)  # what the reader decodes (YBR → RGB)
        stored = pixel_array(ds, raw=True) if native_ybr else decoded
    except Exception as exc:
        raise WriteBackError(f"cannot decode the original's pixel data: {exc}") from exc
    frames = decoded if n > 1 else decoded[None]
    stored_frames = np.array(stored if n > 1 else stored[None], copy=True)
    if stored_frames.dtype.kind not in "iu":
        raise WriteBackError(f"pixel data of dtype {stored_frames.dtype} is not integer")

    original = load(src, frame=k, intensity=config)
    px = np.asarray(pixels, dtype=np.float32)
    if px.shape != original.pixels.shape:
        raise WriteBackError(f"edited pixels {px.shape} do not match the frame's {original.pixels.shape}")
    diff = px != original.pixels
    diff_any = diff.any(axis=-1) if diff.ndim == 3 else diff
    changed = np.asarray(mask, bool) & diff_any
    if not changed.any():
        raise WriteBackError("the edit changed no pixel")
    v = np.clip(px[changed].astype(np.float64), 0.0, 1.0)

    if photometric == "PALETTE COLOR":  # each edited pixel gets the index of the nearest palette colour
        stored_frames[k][changed] = _nearest_palette_index(ds, v, stored_frames.dtype)
    elif spp == 3:
        depth = bits
        rng_hi = 2**depth - 1
        if int(frames.min()) < 0 or int(frames[k].max()) > rng_hi:
            raise WriteBackError("colour values outside their bit range (the reader min–max scales them)")
        rgb = np.clip(np.rint(v * rng_hi), 0, rng_hi)
        if native_ybr:
            rgb = convert_color_space(rgb.astype(np.float64)[None].round().astype(stored_frames.dtype),
                                      "RGB", "YBR_FULL")[0]
        stored_frames[k][changed] = np.asarray(rgb).astype(stored_frames.dtype)
    else:
        project = map_modality(str(ds.get("Modality", "") or ""))
        project = canonical_modality(project) if project else None
        values, _notes, _kind, _depth = _frame_values(ds, list(range(n)), list(frames), photometric, spp, bits)
        inverse, bounds = _grey_inverse(ds, values, k, project, bits, config)
        slope, inter = _rescale(ds, k) or (1.0, 0.0)
        if bounds is not None:  # statistics-based mapping: keep the order statistics it uses
            old_vals = np.asarray(values[k], dtype=np.float64)
            editable = np.zeros_like(changed)
            editable[changed] = _within(old_vals[changed], bounds)
            changed = editable
            if not changed.any():
                raise WriteBackError("every edited pixel holds a value the reader's min–max / percentile "
                                     "statistics depend on")
            v = np.clip(px[changed].astype(np.float64), 0.0, 1.0)
        norm = 1.0 - v if photometric == "MONOCHROME1" else v
        new_stored = to_stored(inverse(norm), slope, inter, ds, stored_frames.dtype)
        if bounds is not None:
            s_a, s_b = sorted(((bounds.a - inter) / slope, (bounds.b - inter) / slope))
            lo_s, hi_s = int(np.ceil(s_a - 1e-6)), int(np.floor(s_b + 1e-6))
            new_stored = np.clip(new_stored, lo_s, hi_s).astype(stored_frames.dtype)
        stored_frames[k][changed] = new_stored
    before = stored if n > 1 else stored[None]
    n_changed = int((stored_frames[k] != before[k]).sum())
    if n_changed == 0:
        raise WriteBackError("the edit rounds away in the stored values")

    new_ds = ds  # read fresh from the file: edited in place, then saved under the new name
    ts_out = encode_pixel_data(new_ds, stored_frames if n > 1 else stored_frames[0], recompress=recompress)
    out.parent.mkdir(parents=True, exist_ok=True)
    new_ds.save_as(out, enforce_file_format=False)
    try:
        check = load(out, frame=k, intensity=config)
    except UnreadableImageError as err:
        out.unlink(missing_ok=True)
        raise WriteBackError(f"the written copy is unreadable: {err.reason}") from err
    outside = ~changed
    if check.pixels.shape != original.pixels.shape or not np.array_equal(
        check.pixels[outside], original.pixels[outside]
    ):
        worst = (float(np.abs(check.pixels[outside] - original.pixels[outside]).max())
                 if check.pixels.shape == original.pixels.shape else float("nan"))
        out.unlink(missing_ok=True)
        raise WriteBackError(
            f"the reader maps the copy to other intensities outside the edit (max difference {worst:.3g}): "
            f"its {original.meta.intensity.split(' → ')[0] or 'normalisation'} depends on the pixel values"
        )
    orig_hdr = pydicom.dcmread(src, stop_before_pixels=True, force=True)
    new_hdr = pydicom.dcmread(out, stop_before_pixels=True, force=True)
    header_changes = sorted(  # group lengths aside: pydicom drops the retired ones when it writes
        {e.keyword or str(e.tag) for e in orig_hdr
         if e.tag.element != 0 and (e.tag not in new_hdr or new_hdr[e.tag].value != e.value)}
        | {e.keyword or str(e.tag) for e in new_hdr if e.tag.element != 0 and e.tag not in orig_hdr}
    )
    inside = float(np.abs(check.pixels[changed] - px[changed]).max())
    return {"transfer_syntax": ts_out, "transfer_syntax_in": str(ts_in), "frame": k if n > 1 else None,
            "n_changed_stored": n_changed, "n_kept": int((np.asarray(mask, bool) & diff_any & ~changed).sum()),
            "max_diff_inside": round(inside, 6), "header_changes": header_changes, "mask": changed}
